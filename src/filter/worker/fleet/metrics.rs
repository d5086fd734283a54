//! The fleet's stats: one set per process (every VM defines the same names, Envoy adds
//! them up); counts wait for the timer like the breakers' request counts.

use std::collections::HashMap;

use crate::filter::host::{Host, MetricKind};
use crate::filter::metrics::stat_name;

/// The fleet's counters.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    Published = 0,
    Adopted = 1,
    PublishFailures = 2,
    Ignored = 3,
    IgnoredVotes = 4,
}

pub struct FleetMetrics {
    counters: [Option<u32>; 5],
    pending: [u64; 5],
    connected: Option<u32>,
    propagation: Option<u32>,
    /// The votes gauge of each breaker, defined on first use.
    votes: HashMap<String, Option<u32>>,
}

impl FleetMetrics {
    pub fn define(host: &impl Host) -> FleetMetrics {
        let counter = |name: &str| host.define_metric(MetricKind::Counter, name).ok();
        FleetMetrics {
            counters: [
                counter("circuit_breaker_fleet_published_total"),
                counter("circuit_breaker_fleet_adopted_total"),
                counter("circuit_breaker_fleet_publish_failures_total"),
                counter("circuit_breaker_fleet_ignored_records_total"),
                counter("circuit_breaker_fleet_ignored_votes_total"),
            ],
            pending: [0; 5],
            connected: host
                .define_metric(MetricKind::Gauge, "circuit_breaker_fleet_connected")
                .ok(),
            propagation: host
                .define_metric(
                    MetricKind::Histogram,
                    "circuit_breaker_fleet_propagation_ms",
                )
                .ok(),
            votes: HashMap::new(),
        }
    }

    /// `circuit_breaker_fleet_votes` of `breaker`: the votes that count now.
    pub fn votes(&mut self, host: &impl Host, breaker: &str, votes: u32) {
        let id = *self.votes.entry(breaker.to_string()).or_insert_with(|| {
            let name = stat_name("circuit_breaker_fleet_votes", &[], breaker);
            host.define_metric(MetricKind::Gauge, &name).ok()
        });
        if let Some(id) = id {
            let _ = host.record_metric(id, u64::from(votes));
        }
    }

    pub fn bump(&mut self, which: Counter) {
        if let Some(n) = self.pending.get_mut(which as usize) {
            *n += 1;
        }
    }

    pub fn flush(&mut self, host: &impl Host) {
        for (n, id) in self.pending.iter_mut().zip(self.counters) {
            if let (Some(id), true) = (id, *n > 0) {
                let _ = host.increment_metric(id, *n);
            }
            *n = 0;
        }
    }

    pub fn connected(&self, host: &impl Host, up: bool) {
        if let Some(id) = self.connected {
            let _ = host.record_metric(id, u64::from(up));
        }
    }

    pub fn propagation(&self, host: &impl Host, delay_ms: u64) {
        if let Some(id) = self.propagation {
            let _ = host.record_metric(id, delay_ms);
        }
    }
}
