//! What the fleet keeps in shared data, so every worker of the process and a new watch
//! holder see the same: the holder election, the link's state (for views, `/health` and
//! the workers' retries), the lease, and each breaker's shadow (last record seen in etcd
//! and any claim not yet stored).

use serde::{Deserialize, Serialize};

use crate::core::fleet::merge::Shadow;
use crate::core::fleet::{holder, shadow};
use crate::core::store::{self, StateStore};

use super::super::slot::CAS_ATTEMPTS;
use crate::filter::host::{Host, Saved};
use crate::filter::shared::{SharedData, KEY_PREFIX};

fn key(name: &str) -> String {
    format!("{KEY_PREFIX}fleet/{name}")
}

/// The shared-data key of a breaker's shadow.
pub fn shadow_key(breaker: &str) -> String {
    key(&format!("shadow/{breaker}"))
}

/// The link as the process knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// Started, first read of etcd not answered yet.
    #[default]
    Joining,
    Connected,
    Disconnected,
}

/// The link's state in shared data, written by the holder.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Conn {
    pub link: Link,
    /// Wall clock (Unix ms) of the last change of `link`.
    pub since_ms: u64,
    /// Why the link is down, when it is.
    pub reason: String,
    /// The highest etcd revision seen.
    pub revision: i64,
    /// The member whose record was adopted last.
    pub last_member: String,
    /// The lease this process binds its keys to (0: none yet).
    pub lease: i64,
    /// etcd's authentication token, when the fleet authenticates (empty: none yet, or
    /// refused and to be asked again).
    pub token: String,
}

impl Conn {
    pub fn load(host: &impl Host) -> Conn {
        match host.shared_data(&key("conn")) {
            Ok(Some((bytes, _))) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => Conn::default(),
        }
    }

    /// Changes the stored state through compare-and-swap, so the holder's writes and a
    /// worker's "last member" do not undo each other.
    pub fn update(host: &impl Host, change: impl Fn(&mut Conn)) {
        let _ =
            store::compare_and_swap(&SharedData(host), &key("conn"), b"{}", CAS_ATTEMPTS, |b| {
                let mut conn: Conn = serde_json::from_slice(b).unwrap_or_default();
                change(&mut conn);
                ((), serde_json::to_vec(&conn).ok())
            });
    }
}

/// Whether this process has read etcd once (any context's start-up read or the holder's
/// first read answered).
pub fn has_read(host: &impl Host) -> bool {
    matches!(host.shared_data(&key("read")), Ok(Some(_)))
}

/// Notes that this process has read etcd once.
pub fn note_read(host: &impl Host) {
    let _ = host.set_shared_data(&key("read"), b"1", 0);
}

/// Whether this process has read one breaker's decision by itself (a breaker it did not
/// have when it read the prefix, whose records it ignored then).
pub fn has_read_breaker(host: &impl Host, breaker: &str) -> bool {
    matches!(
        host.shared_data(&key(&format!("read/{breaker}"))),
        Ok(Some(_))
    )
}

/// Notes that this process has read the breaker's decision.
pub fn note_read_breaker(host: &impl Host, breaker: &str) {
    let _ = host.set_shared_data(&key(&format!("read/{breaker}")), b"1", 0);
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
pub fn load_slots(host: &impl Host, breaker: &str) -> shadow::Slots {
    match host.shared_data(&key(&format!("slots/{breaker}"))) {
        Ok(Some((bytes, _))) => shadow::Slots::decode(&bytes).unwrap_or_default(),
        _ => shadow::Slots::default(),
    }
}

/// Changes a breaker's known slots through compare-and-swap.
pub fn update_slots(host: &impl Host, breaker: &str, change: impl Fn(&mut shadow::Slots)) {
    let empty = shadow::Slots::default().encode();
    let _ = store::compare_and_swap(
        &SharedData(host),
        &key(&format!("slots/{breaker}")),
        &empty,
        CAS_ATTEMPTS,
        |b| {
            let mut s = shadow::Slots::decode(b).unwrap_or_default();
            change(&mut s);
            ((), Some(s.encode()))
        },
    );
}

/// One election step (`core::fleet::holder`): true when this context holds the watch
/// after it. The host has no atomic create, so a missing key is first written empty.
pub fn elect(host: &impl Host, me: u64, now_ms: u64) -> bool {
    let k = key("holder");
    let store = SharedData(host);
    if let Ok(None) = store.load(&k) {
        let _ = host.set_shared_data(&k, b"", 0);
    }
    let Ok(Some((stored, cas))) = store.load(&k) else {
        return false;
    };
    match holder::step(Some(&stored), me, now_ms) {
        holder::Step::Hold(bytes) => {
            matches!(host.set_shared_data(&k, &bytes, cas), Ok(Saved::Done))
        }
        holder::Step::Follow { .. } => false,
    }
}
