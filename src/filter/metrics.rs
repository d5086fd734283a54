//! Envoy stats for one breaker. The ABI has no labels, so labels ride in the stat name
//! (`circuit_breaker_requests_total.outcome=success.cluster=auth`) and the `stats_tags` in
//! Envoy's bootstrap turn them into Prometheus labels. Request counts are kept locally and
//! added on the timer, so the request path makes no metric call.

use crate::core::breaker::Call;
use crate::core::headroom::FAR;
use crate::core::outcome::Outcome;
use crate::core::settings::Settings;
use crate::core::state::{Cause, Counts, State, Transition, TripReason};
use crate::core::timeline::Traffic;

use super::host::{Host, MetricKind};

/// What a request counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Success = 0,
    Failure = 1,
    /// Succeeded, but slower than `slow_call_duration` (with the slow-call rule on).
    Slow = 2,
    Rejected = 3,
    Ignored = 4,
    /// Let through in `dry_run` where `enforce` would have refused it.
    WouldReject = 5,
    /// Took a half-open probe slot.
    Probe = 6,
    /// A failure or slow call whose trip was held back: it came from too few hosts.
    Confined = 7,
}

impl Counted {
    /// What a finished call counts as.
    pub fn of(call: &Call, settings: &Settings) -> Counted {
        match call.outcome {
            Outcome::Success if settings.is_slow(call.elapsed_ms) => Counted::Slow,
            Outcome::Success => Counted::Success,
            Outcome::Failure(_) => Counted::Failure,
            Outcome::Ignored => Counted::Ignored,
        }
    }
}

const OUTCOMES: [&str; 5] = ["success", "failure", "slow", "rejected", "ignored"];

/// Every transition that moves the breaker somewhere else, in stat order.
const MOVES: [(State, State); 6] = [
    (State::Closed, State::Open),
    (State::Open, State::HalfOpen),
    (State::HalfOpen, State::Closed),
    (State::HalfOpen, State::Open),
    (State::Open, State::Closed),
    (State::Closed, State::HalfOpen),
];

/// Stat name with labels appended; `cluster` goes last because its value may hold dots.
pub fn stat_name(base: &str, labels: &[(&str, &str)], cluster: &str) -> String {
    let mut name = String::from(base);
    for (k, v) in labels {
        name.push('.');
        name.push_str(k);
        name.push('=');
        name.push_str(v);
    }
    name.push_str(".cluster=");
    name.push_str(cluster);
    name
}

/// One breaker's stat ids and not-yet-published request counts.
pub struct Metrics {
    /// Ids of the request outcomes, then would-reject, probes and confined failures.
    counted: [Option<u32>; 8],
    pending: [u64; 8],
    transitions: [Option<u32>; 6],
    trips: [Option<u32>; 7],
    state: Option<u32>,
    failure_rate: Option<u32>,
    slow_rate: Option<u32>,
    failures_to_trip: Option<u32>,
    store_give_ups: Option<u32>,
    events_sent: Option<u32>,
    event_failures: Option<u32>,
    changed_at: Option<u32>,
}

impl Metrics {
    /// Defines the breaker's stats; a stat the host refuses is skipped, never fatal.
    pub fn define(host: &impl Host, cluster: &str) -> Metrics {
        let define = |kind, base: &str, labels: &[(&str, &str)]| {
            host.define_metric(kind, &stat_name(base, labels, cluster))
                .ok()
        };
        let counter =
            |base: &str, labels: &[(&str, &str)]| define(MetricKind::Counter, base, labels);
        let gauge = |base: &str| define(MetricKind::Gauge, base, &[]);
        let mut counted = [None; 8];
        for (i, o) in OUTCOMES.iter().enumerate() {
            counted[i] = counter("circuit_breaker_requests_total", &[("outcome", o)]);
        }
        counted[Counted::WouldReject as usize] =
            counter("circuit_breaker_dry_run_rejections_total", &[]);
        counted[Counted::Probe as usize] = counter("circuit_breaker_probes_total", &[]);
        counted[Counted::Confined as usize] =
            counter("circuit_breaker_confined_failures_total", &[]);
        Metrics {
            counted,
            pending: [0; 8],
            transitions: MOVES.map(|(from, to)| {
                counter(
                    "circuit_breaker_transitions_total",
                    &[("from", from.as_str()), ("to", to.as_str())],
                )
            }),
            trips: TripReason::ALL
                .map(|r| counter("circuit_breaker_trips_total", &[("reason", r.as_str())])),
            state: gauge("circuit_breaker_state"),
            failure_rate: gauge("circuit_breaker_failure_rate_percent"),
            slow_rate: gauge("circuit_breaker_slow_call_rate_percent"),
            failures_to_trip: gauge("circuit_breaker_failures_to_trip"),
            store_give_ups: counter("circuit_breaker_store_give_ups_total", &[]),
            events_sent: counter("circuit_breaker_events_delivered_total", &[]),
            event_failures: counter("circuit_breaker_event_delivery_failures_total", &[]),
            changed_at: gauge("circuit_breaker_last_state_change_seconds"),
        }
    }

    pub fn count(&mut self, what: Counted) {
        self.pending[what as usize] += 1;
    }

    /// Whether counts wait for the next flush.
    pub fn has_pending(&self) -> bool {
        self.pending.iter().any(|n| *n > 0)
    }

    /// Publishes the counts gathered since the last flush; gives them back for the
    /// breaker's timeline.
    pub fn flush(&mut self, host: &impl Host) -> Traffic {
        let n = |what: Counted| u32::try_from(self.pending[what as usize]).unwrap_or(u32::MAX);
        let tally = Traffic {
            successes: n(Counted::Success),
            failures: n(Counted::Failure),
            slow: n(Counted::Slow),
            refusals: n(Counted::Rejected),
            probes: n(Counted::Probe),
        };
        for (pending, id) in self.pending.iter_mut().zip(self.counted) {
            if *pending > 0 {
                if let Some(id) = id {
                    let _ = host.increment_metric(id, *pending);
                }
                *pending = 0;
            }
        }
        tally
    }

    pub fn transition(&self, host: &impl Host, t: &Transition) {
        if let Some(i) = MOVES.iter().position(|m| *m == (t.from, t.to)) {
            bump(host, self.transitions[i]);
        }
        if let Some(reason) = t.cause.reason() {
            if let Some(i) = TripReason::ALL.iter().position(|r| *r == reason) {
                bump(host, self.trips[i]);
            }
        }
        if t.cause == Cause::Reset {
            self.rates(host, &Counts::default());
        }
        self.state(host, t.to);
        set(host, self.changed_at, t.at_ms / 1_000);
    }

    pub fn state(&self, host: &impl Host, state: State) {
        set(host, self.state, state.gauge());
    }

    /// Counts one webhook delivery.
    pub fn event_delivered(&self, host: &impl Host, ok: bool) {
        let id = if ok {
            self.events_sent
        } else {
            self.event_failures
        };
        bump(host, id);
    }

    /// The window's failure and slow-call rates, in whole percent.
    pub fn rates(&self, host: &impl Host, counts: &Counts) {
        let percent = |share: f64| (share * 100.0).round() as u64;
        set(host, self.failure_rate, percent(counts.failure_rate()));
        set(host, self.slow_rate, percent(counts.slow_rate()));
    }

    /// Failures from now on that would open the breaker ([`FAR`] when none would).
    pub fn failures_to_trip(&self, host: &impl Host, failures: Option<u32>) {
        let n = failures.unwrap_or(FAR);
        set(host, self.failures_to_trip, u64::from(n));
    }

    pub fn store_give_up(&self, host: &impl Host) {
        bump(host, self.store_give_ups);
    }
}

fn bump(host: &impl Host, id: Option<u32>) {
    if let Some(id) = id {
        let _ = host.increment_metric(id, 1);
    }
}

fn set(host: &impl Host, id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = host.record_metric(id, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_ride_in_the_name_with_cluster_last() {
        assert_eq!(
            stat_name(
                "circuit_breaker_requests_total",
                &[("outcome", "success")],
                "auth"
            ),
            "circuit_breaker_requests_total.outcome=success.cluster=auth"
        );
        assert_eq!(
            stat_name("circuit_breaker_state", &[], "svc.ns.local"),
            "circuit_breaker_state.cluster=svc.ns.local"
        );
    }
}
