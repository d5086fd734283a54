//! The breakers' own health probes, sent from this root context. On the timer, a breaker
//! with a `probe` whose probe is due is claimed in its shared record (one context of the
//! process wins), takes the fleet's probe slot in fleet mode, and its probe goes to the
//! breaker's cluster as an HTTP call; the answer comes back by token and the core says
//! what it means. Its result reaches the stats, the views (the last probe, in shared
//! data) and, when it moves the breaker, the transition's log line.

use std::collections::HashMap;

use crate::core::breaker::probe_due;
use crate::core::duration::Millis;
use crate::core::probe::{self, LastProbe, ProbeTicket};
use crate::core::probe_spec::{self, ProbeReport, ProbeResult};
use crate::core::store;

use crate::filter::host::{Host, MetricKind};
use crate::filter::metrics::stat_name;
use crate::filter::shared::{probe_key, SharedData, CAS_ATTEMPTS};

use super::breakers::Breakers;
use super::fleet::probe::{Probe, ProbeSlotClaim};
use super::fleet::Fleet;

/// A probe sent and not yet answered.
struct Sent {
    breaker: usize,
    ticket: ProbeTicket,
    sent_ms: u64,
}

/// A probe waiting for its fleet slot claim's answer.
struct Claiming {
    breaker: usize,
    ticket: ProbeTicket,
    claim: ProbeSlotClaim,
}

/// One breaker's probe stats: results by kind, and the latency in milliseconds of those
/// that were sent (the name has no unit, as Envoy's own millisecond histograms: a `_ms`
/// suffix is against Prometheus' naming rules, and seconds would not fit its integers).
struct ProbeMetrics {
    results: [Option<u32>; 4],
    latency: Option<u32>,
}

impl ProbeMetrics {
    fn define(host: &impl Host, name: &str) -> ProbeMetrics {
        ProbeMetrics {
            results: ProbeResult::ALL.map(|r| {
                let stat = stat_name(
                    "circuit_breaker_probes_total",
                    &[("result", r.as_str())],
                    name,
                );
                host.define_metric(MetricKind::Counter, &stat).ok()
            }),
            latency: host
                .define_metric(
                    MetricKind::Histogram,
                    &stat_name("circuit_breaker_probe_latency", &[], name),
                )
                .ok(),
        }
    }

    fn count(&self, host: &impl Host, report: &ProbeReport) {
        let at = ProbeResult::ALL.iter().position(|r| *r == report.result);
        if let Some(id) = at.and_then(|i| self.results[i]) {
            let _ = host.increment_metric(id, 1);
        }
        if let (Some(id), false) = (self.latency, report.result == ProbeResult::Error) {
            let _ = host.record_metric(id, report.latency_ms);
        }
    }
}

/// This context's probes in flight, and the probe stats of the breakers that have one.
#[derive(Default)]
pub struct Probes {
    sent: HashMap<u32, Sent>,
    claiming: HashMap<u32, Claiming>,
    metrics: HashMap<usize, ProbeMetrics>,
}

impl Probes {
    /// Sends the probes that are due; returns the breakers whose record this moved.
    pub fn tick(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        mut fleet: Option<&mut Fleet>,
        now_ms: u64,
    ) -> Vec<usize> {
        let mut moved = Vec::new();
        for i in 0..breakers.len() {
            let Some(b) = breakers.get(i) else {
                continue;
            };
            let Some(p) = &b.settings.probe else {
                continue;
            };
            self.metrics
                .entry(i)
                .or_insert_with(|| ProbeMetrics::define(host, &b.name));
            let r = &b.last_seen;
            let due = probe_due::next_due_ms(r, p).or_else(|| probe_due::lost_at_ms(r, p));
            if !due.is_some_and(|at| now_ms >= at) {
                continue;
            }
            if let Some(ticket) = claim(host, breakers, i, now_ms) {
                let gate = match fleet.as_deref_mut() {
                    Some(f) => f.own_probe(host, breakers, i),
                    None => Probe::Go(None),
                };
                self.gated(host, breakers, fleet.as_deref_mut(), i, ticket, gate);
            }
            moved.push(i);
        }
        moved
    }

    /// What a claimed probe does after the fleet's gate: go, wait for the slot claim's
    /// answer, or give the claim back (another Envoy probes).
    fn gated(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        fleet: Option<&mut Fleet>,
        i: usize,
        ticket: ProbeTicket,
        gate: Probe,
    ) {
        match gate {
            Probe::Go(slot) => {
                if let (Some(f), Some(slot), Some(b)) = (fleet, slot, breakers.get(i)) {
                    f.hold_probe_slot(host, &b.name, slot);
                }
                self.send(host, breakers, i, ticket);
            }
            Probe::Wait(claim) => {
                let waiting = Claiming {
                    breaker: i,
                    ticket,
                    claim,
                };
                self.claiming.insert(waiting.claim.token, waiting);
            }
            Probe::Refuse => {
                if let Some(b) = breakers.get_mut(i) {
                    let key = b.key.clone();
                    let result = store::update(&SharedData(host), &key, CAS_ATTEMPTS, |r| {
                        probe::unsent(r, ticket)
                    });
                    if let Ok(updated) = result {
                        b.absorb(host, updated, host.now_ms());
                    }
                }
            }
        }
    }

    /// Sends breaker `i`'s probe to its cluster; a call Envoy refuses (say, no such
    /// cluster) ends at once as an error.
    fn send(&mut self, host: &impl Host, breakers: &mut Breakers, i: usize, ticket: ProbeTicket) {
        let Some(b) = breakers.get(i) else {
            return;
        };
        let Some(p) = &b.settings.probe else {
            return;
        };
        let cluster = breakers.cluster_of(&b.name);
        let headers = p.request_headers(cluster);
        let timeout = u32::try_from(p.timeout_ms).unwrap_or(u32::MAX);
        let sent_ms = host.now_ms();
        match host.http_call(cluster, &headers, b"", timeout) {
            Ok(token) => {
                self.sent.insert(
                    token,
                    Sent {
                        breaker: i,
                        ticket,
                        sent_ms,
                    },
                );
            }
            Err(e) => {
                let report = ProbeReport {
                    result: ProbeResult::Error,
                    status: None,
                    latency_ms: 0,
                };
                let name = b.name.clone();
                let target = p.target();
                let cluster = cluster.to_string();
                let interval = Millis(p.interval_ms);
                if self.finish(host, breakers, i, ticket, report, sent_ms) {
                    log::warn!(
                        "[CIRCUIT_BREAKER] {name} circuit breaker cannot send its health probe {target} to cluster {cluster:?} (host status {}: Envoy may know no such cluster); it stays half-open, refusing requests, and tries again every {interval}",
                        e.0
                    );
                }
            }
        }
    }

    /// Whether the HTTP call with `token` is one of this context's probes.
    pub fn sent(&self, token: u32) -> bool {
        self.sent.contains_key(&token)
    }

    /// Whether the gRPC call with `token` is one of this context's fleet slot claims.
    pub fn claiming(&self, token: u32) -> bool {
        self.claiming.contains_key(&token)
    }

    /// The answer to a probe: `status` `None` when none came. Returns the breaker it was
    /// for, for the caller to tell the others of a move.
    pub fn answered(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        token: u32,
        status: Option<u32>,
    ) -> Option<usize> {
        let sent = self.sent.remove(&token)?;
        let b = breakers.get(sent.breaker)?;
        let p = b.settings.probe.as_ref()?;
        let now_ms = host.now_ms();
        let report = probe_spec::judge(p, status, now_ms.saturating_sub(sent.sent_ms));
        self.finish(host, breakers, sent.breaker, sent.ticket, report, now_ms);
        Some(sent.breaker)
    }

    /// The answer to a fleet slot claim made for a probe. Returns the breaker it was for.
    pub fn slot_answered(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        fleet: &mut Fleet,
        token: u32,
        status: u32,
        size: usize,
    ) -> Option<usize> {
        let Claiming {
            breaker,
            ticket,
            claim,
        } = self.claiming.remove(&token)?;
        let gate = fleet.probe_answered(host, breakers, claim, status, size);
        self.gated(host, breakers, Some(fleet), breaker, ticket, gate);
        Some(breaker)
    }

    /// Takes a probe's end into the breaker's record, its stats and its last-probe view;
    /// true when it is an error the previous probe did not have (worth one log line).
    fn finish(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        i: usize,
        ticket: ProbeTicket,
        report: ProbeReport,
        now_ms: u64,
    ) -> bool {
        let Some(b) = breakers.get_mut(i) else {
            return false;
        };
        let settings = b.settings.clone();
        let result = store::update(&SharedData(host), &b.key, CAS_ATTEMPTS, |r| {
            probe::answered(r, &settings, ticket, report, now_ms)
        });
        match result {
            Ok(updated) => b.absorb(host, updated, now_ms),
            Err(_) => b.metrics.store_give_up(host),
        }
        if let Some(m) = self.metrics.get(&i) {
            m.count(host, &report);
        }
        let key = probe_key(&b.name);
        let before = match host.shared_data(&key) {
            Ok(Some((bytes, _))) => LastProbe::decode(&bytes),
            _ => None,
        };
        let last = LastProbe {
            at_ms: now_ms,
            report,
        };
        let _ = host.set_shared_data(&key, &last.encode(), 0);
        report.result == ProbeResult::Error
            && !before.is_some_and(|l| l.report.result == ProbeResult::Error)
    }
}

/// Claims breaker `i`'s probe in its shared record, moving it on with time as the timer
/// would; `None` when no probe is due after all (another context claimed it).
fn claim(host: &impl Host, breakers: &mut Breakers, i: usize, now_ms: u64) -> Option<ProbeTicket> {
    let b = breakers.get_mut(i)?;
    let settings = &b.settings;
    match store::update(&SharedData(host), &b.key, CAS_ATTEMPTS, |r| {
        probe::claim(r, settings, now_ms)
    }) {
        Ok(updated) => {
            let ticket = updated.value;
            b.absorb(host, updated, now_ms);
            ticket
        }
        Err(_) => {
            b.metrics.store_give_up(host);
            None
        }
    }
}

/// The last probe of breaker `name`, as stored.
pub fn last_probe(host: &impl Host, name: &str) -> Option<LastProbe> {
    match host.shared_data(&probe_key(name)) {
        Ok(Some((bytes, _))) => LastProbe::decode(&bytes),
        _ => None,
    }
}
