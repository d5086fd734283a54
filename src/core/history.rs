//! What happened to a breaker, for people and other programs: each transition as an
//! [`Event`] (the webhook's body, the control API's "last transitions"), and the short
//! history of them kept in the state store.

use serde::{Deserialize, Serialize};

use super::duration::rfc3339;
use super::state::{Cause, State, Transition};

/// Transitions kept per breaker.
pub const KEPT: usize = 20;

/// One transition, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The breaker: the cluster name, or `<cluster>/<route>` for a route breaker.
    pub cluster: String,
    pub from: String,
    pub to: String,
    /// The trip reason for a move to open; what moved it otherwise.
    pub reason: String,
    /// RFC 3339 UTC.
    pub time: String,
    pub time_ms: u64,
    pub generation: u32,
    pub counts: EventCounts,
    /// For a move to open: RFC 3339 time half-open may start (absent while forced).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub open_until: Option<String>,
    pub trips_in_row: u32,
    /// The log line, word for word.
    pub message: String,
    /// In fleet mode, for a decision adopted from another Envoy: the member that made it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub member: Option<String>,
}

/// Counts just before the transition.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EventCounts {
    pub consecutive_failures: u32,
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
}

impl Event {
    pub fn of(cluster: &str, t: &Transition) -> Event {
        let c = &t.counts;
        Event {
            cluster: cluster.to_string(),
            from: t.from.as_str().to_string(),
            to: t.to.as_str().to_string(),
            reason: cause_name(t.cause).to_string(),
            time: rfc3339(t.at_ms),
            time_ms: t.at_ms,
            generation: t.generation,
            counts: EventCounts {
                consecutive_failures: c.consecutive_failures,
                calls: c.calls,
                failures: c.failures,
                slow: c.slow,
                failure_rate: round3(c.failure_rate()),
                slow_call_rate: round3(c.slow_rate()),
            },
            open_until: (t.to == State::Open && t.open_until_ms != u64::MAX)
                .then(|| rfc3339(t.open_until_ms)),
            trips_in_row: t.trips_in_row,
            message: t.log_line(cluster),
            member: None,
        }
    }

    /// The same event as decided by another member of the fleet, with its log line.
    pub fn decided_by(self, member: &str, message: String) -> Event {
        Event {
            member: Some(member.to_string()),
            message,
            ..self
        }
    }
}

/// The name of what caused a transition: the trip reason, or the move's own name.
pub fn cause_name(cause: Cause) -> &'static str {
    match cause {
        Cause::OpenElapsed => "open_elapsed",
        Cause::Released => "released",
        Cause::Recovered => "recovered",
        Cause::Reset => "reset",
        other => other.reason().map_or("unknown", |r| r.as_str()),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

/// The stored history with `event` added at the front, keeping the newest [`KEPT`].
/// Unreadable stored bytes start a fresh history.
pub fn with(stored: &[u8], event: &Event) -> Vec<u8> {
    let mut events = read(stored);
    events.insert(0, event.clone());
    events.truncate(KEPT);
    serde_json::to_vec(&events).unwrap_or_default()
}

/// The stored history, newest first; nothing if the bytes are unreadable.
pub fn read(stored: &[u8]) -> Vec<Event> {
    serde_json::from_slice(stored).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::Settings;
    use crate::core::state::{Record, TripReason};

    fn trip(at: u64) -> Transition {
        let mut r = Record {
            consecutive_failures: 5,
            ..Record::default()
        };
        r.transition(
            Cause::Tripped(TripReason::ConsecutiveFailures),
            &Settings::default(),
            at,
        )
    }

    #[test]
    fn an_event_says_who_what_why_and_when() {
        let e = Event::of("auth", &trip(784_111_777_000));
        assert_eq!((e.from.as_str(), e.to.as_str()), ("closed", "open"));
        assert_eq!(e.reason, "consecutive_failures");
        assert_eq!(e.time, "1994-11-06T08:49:37.000Z");
        assert_eq!(e.open_until.as_deref(), Some("1994-11-06T08:49:42.000Z"));
        assert_eq!(e.counts.consecutive_failures, 5);
        assert!(e
            .message
            .starts_with("[CIRCUIT_BREAKER] auth circuit breaker OPENED"));
        let json: serde_json::Value = serde_json::to_value(&e).unwrap();
        for key in ["cluster", "from", "to", "reason", "time", "counts"] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn the_history_keeps_the_newest_first_and_is_bounded() {
        let mut stored = b"[]".to_vec();
        for i in 0..(KEPT as u64 + 5) {
            stored = with(&stored, &Event::of("a", &trip(i)));
        }
        let events = read(&stored);
        assert_eq!(events.len(), KEPT);
        assert_eq!(events[0].time_ms, KEPT as u64 + 4);
    }

    #[test]
    fn unreadable_history_starts_over() {
        assert!(read(b"\xff not json").is_empty());
        let stored = with(b"garbage", &Event::of("a", &trip(1)));
        assert_eq!(read(&stored).len(), 1);
    }
}
