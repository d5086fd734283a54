//! Envoy stats for one cluster's breaker. The ABI has no labels, so labels ride in the stat
//! name (`circuit_breaker_requests_total.outcome=success.cluster=auth`) and the
//! `stats_tags` in Envoy's bootstrap turn them into Prometheus labels. Request counts are
//! kept locally and added on the timer, so the request path makes no metric call.

use crate::core::state::{State, Transition, TripReason};

use super::host::{self, MetricKind};

/// What a request counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Success = 0,
    Failure = 1,
    Rejected = 2,
    Ignored = 3,
}

const OUTCOMES: [&str; 4] = ["success", "failure", "rejected", "ignored"];
/// The transitions that can happen, in the order their stats are defined.
const MOVES: [(State, State); 4] = [
    (State::Closed, State::Open),
    (State::Open, State::HalfOpen),
    (State::HalfOpen, State::Closed),
    (State::HalfOpen, State::Open),
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

/// One cluster's stat ids and not-yet-published request counts.
pub struct Metrics {
    requests: [Option<u32>; 4],
    pending: [u64; 4],
    transitions: [Option<u32>; 4],
    trips: [Option<u32>; 3],
    state: Option<u32>,
    store_give_ups: Option<u32>,
}

impl Metrics {
    /// Defines the cluster's stats; a stat the host refuses is skipped, never fatal.
    pub fn define(cluster: &str) -> Metrics {
        let counter = |base: &str, labels: &[(&str, &str)]| {
            host::define_metric(MetricKind::Counter, &stat_name(base, labels, cluster)).ok()
        };
        Metrics {
            requests: OUTCOMES
                .map(|o| counter("circuit_breaker_requests_total", &[("outcome", o)])),
            pending: [0; 4],
            transitions: MOVES.map(|(from, to)| {
                counter(
                    "circuit_breaker_transitions_total",
                    &[("from", from.as_str()), ("to", to.as_str())],
                )
            }),
            trips: TripReason::ALL
                .map(|r| counter("circuit_breaker_trips_total", &[("reason", r.as_str())])),
            state: host::define_metric(
                MetricKind::Gauge,
                &stat_name("circuit_breaker_state", &[], cluster),
            )
            .ok(),
            store_give_ups: counter("circuit_breaker_store_give_ups_total", &[]),
        }
    }

    pub fn count(&mut self, what: Counted) {
        self.pending[what as usize] += 1;
    }

    /// Publishes the request counts gathered since the last flush.
    pub fn flush(&mut self) {
        for (pending, id) in self.pending.iter_mut().zip(self.requests) {
            if *pending > 0 {
                if let Some(id) = id {
                    let _ = host::increment_metric(id, *pending);
                }
                *pending = 0;
            }
        }
    }

    pub fn transition(&self, t: &Transition) {
        if let Some(i) = MOVES.iter().position(|m| *m == (t.from, t.to)) {
            bump(self.transitions[i]);
        }
        if let crate::core::state::Cause::Tripped(reason) = t.cause {
            if let Some(i) = TripReason::ALL.iter().position(|r| *r == reason) {
                bump(self.trips[i]);
            }
        }
        self.state(t.to);
    }

    pub fn state(&self, state: State) {
        if let Some(id) = self.state {
            let _ = host::record_metric(id, state.gauge());
        }
    }

    pub fn store_give_up(&self) {
        bump(self.store_give_ups);
    }
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        let _ = host::increment_metric(id, 1);
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
