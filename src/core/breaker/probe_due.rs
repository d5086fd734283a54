//! When a breaker with a `probe` block wants its next probe, when a probe whose answer
//! never came is given up, and what a refused user is told to wait meanwhile.

use crate::core::probe_spec::ProbeSettings;
use crate::core::state::{Record, State, TripReason};

/// How long past its timeout a claimed probe may go unanswered before the breaker gives
/// it up as lost and reopens: Envoy ends every call at its timeout, so only a worker that
/// died holding the claim gets this late.
pub const LOST_AFTER_MS: u64 = 1_000;

/// Whether a probe was claimed in the breaker's current half-open episode: a claim sets
/// `probing_since_ms`, every transition sets `changed_at_ms`, and both are the same clock.
fn claimed_this_episode(r: &Record) -> bool {
    r.probing_since_ms > 0 && r.probing_since_ms >= r.changed_at_ms
}

/// When the next probe may be claimed: as soon as the open time ends, then `interval`
/// after the last claim of the episode; `None` while one is out, while closed or forced.
pub fn next_due_ms(r: &Record, probe: &ProbeSettings) -> Option<u64> {
    match r.state {
        State::Open if r.reason != Some(TripReason::Forced) => Some(r.open_until_ms),
        State::HalfOpen if r.probes_in_flight == 0 => Some(if claimed_this_episode(r) {
            r.probing_since_ms.saturating_add(probe.interval_ms)
        } else {
            r.changed_at_ms
        }),
        _ => None,
    }
}

/// When a claimed probe whose answer never came is given up (see [`LOST_AFTER_MS`]).
pub fn lost_at_ms(r: &Record, probe: &ProbeSettings) -> Option<u64> {
    (r.state == State::HalfOpen && r.probes_in_flight > 0).then(|| {
        r.probing_since_ms
            .saturating_add(probe.timeout_ms)
            .saturating_add(LOST_AFTER_MS)
    })
}

/// How long a user refused while the breaker probes is told to wait: until the next
/// probe goes (with one out, the one after it, should it pass below the threshold).
pub fn retry_after_ms(r: &Record, probe: &ProbeSettings, now_ms: u64) -> u64 {
    let next = match next_due_ms(r, probe) {
        Some(due) => due,
        None => r.probing_since_ms.saturating_add(probe.interval_ms),
    };
    next.saturating_sub(now_ms)
}
