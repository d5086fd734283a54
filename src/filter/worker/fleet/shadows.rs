//! Each fleet breaker's state in shared data, so every worker of the process and a new
//! watch holder see the same: its shadow (the last record seen in etcd, any claim not yet
//! stored and probe progress not yet counted), the probe slots known taken in its current
//! half-open episode, and whether the process has read its decision by itself.

use crate::core::fleet::merge::Shadow;
use crate::core::fleet::shadow::{self, Slots};
use crate::core::store;

use crate::filter::host::Host;
use crate::filter::shared::{fleet_key, SharedData, CAS_ATTEMPTS};

/// The shared-data key of a breaker's shadow.
pub fn shadow_key(breaker: &str) -> String {
    fleet_key(&format!("shadow/{breaker}"))
}

/// Reads a breaker's shadow; junk reads as empty (etcd is read again on the next join).
pub fn load_shadow(host: &impl Host, breaker: &str) -> Shadow {
    match host.shared_data(&shadow_key(breaker)) {
        Ok(Some((bytes, _))) => shadow::decode(&bytes).unwrap_or_default(),
        _ => Shadow::default(),
    }
}

/// Changes a breaker's shadow through compare-and-swap and returns what `change` said;
/// `None` when the store gave up.
pub fn update_shadow<T>(
    host: &impl Host,
    breaker: &str,
    mut change: impl FnMut(&mut Shadow) -> T,
) -> Option<T> {
    let empty = shadow::encode(&Shadow::default());
    store::compare_and_swap(
        &SharedData(host),
        &shadow_key(breaker),
        &empty,
        CAS_ATTEMPTS,
        |b| {
            let mut s = shadow::decode(b).unwrap_or_default();
            let out = change(&mut s);
            (out, Some(shadow::encode(&s)))
        },
    )
    .ok()
}

/// The probe slots known taken in a breaker's current half-open episode.
pub fn load_slots(host: &impl Host, breaker: &str) -> Slots {
    match host.shared_data(&fleet_key(&format!("slots/{breaker}"))) {
        Ok(Some((bytes, _))) => Slots::decode(&bytes).unwrap_or_default(),
        _ => Slots::default(),
    }
}

/// Changes a breaker's known slots through compare-and-swap.
pub fn update_slots(host: &impl Host, breaker: &str, change: impl Fn(&mut Slots)) {
    let empty = Slots::default().encode();
    let _ = store::compare_and_swap(
        &SharedData(host),
        &fleet_key(&format!("slots/{breaker}")),
        &empty,
        CAS_ATTEMPTS,
        |b| {
            let mut s = Slots::decode(b).unwrap_or_default();
            change(&mut s);
            ((), Some(s.encode()))
        },
    );
}

/// Whether this process has read one breaker's decision by itself (a breaker it did not
/// have when it read the prefix, whose records it ignored then).
pub fn has_read_breaker(host: &impl Host, breaker: &str) -> bool {
    matches!(
        host.shared_data(&fleet_key(&format!("read/{breaker}"))),
        Ok(Some(_))
    )
}

/// Notes that this process has read the breaker's decision.
pub fn note_read_breaker(host: &impl Host, breaker: &str) {
    let _ = host.set_shared_data(&fleet_key(&format!("read/{breaker}")), b"1", 0);
}
