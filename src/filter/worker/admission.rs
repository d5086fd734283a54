//! The request path: whether a request goes upstream ([`Worker::admit`]) and how it
//! ended ([`Worker::record`]). The core decides both; this side makes the host calls a
//! decision needs, and no more.

use crate::core::breaker::{self, Admission, Call, Now, SuccessBatch, Ticket};
use crate::core::cache::Entry;
use crate::core::codec;
use crate::core::outcome::{Outcome, StreamEnd};
use crate::core::reply::{Answer, RejectReply};
use crate::core::retry_after;
use crate::core::store;

use super::super::host::{property_u64, Host};
use super::super::metrics::Counted;
use super::super::shared::SharedData;
use super::fleet::Held;
use super::slot::{Slot, CAS_ATTEMPTS};
use super::Worker;

/// Property paths, NUL-separated as the ABI wants them.
const RESPONSE_CODE: &[u8] = b"response\0code";
const RESPONSE_FLAGS: &[u8] = b"response\0flags";

/// What to do with a request.
pub enum Decision {
    Admitted(Ticket),
    /// Let through untracked: the mode is `disabled` or `dry_run`, or the state store
    /// failed while the breaker was last seen closed.
    Pass,
    Reject(Answer),
}

/// What the filter saw of a response before `on_log`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    /// `:status` of the response headers; 0 if none passed the filter.
    pub status: u32,
    /// `grpc-status`, from the headers of a trailers-only answer or from the trailers.
    pub grpc_status: Option<u32>,
    /// Whether the response reached its end (an end-of-stream flag or trailers).
    pub complete: bool,
}

/// What an admitted request carries until its outcome is recorded.
pub struct Admitted {
    pub slot: usize,
    pub ticket: Ticket,
    /// When the request arrived, if the cluster measures latency or caches answers.
    pub started_ms: u64,
    /// Honour an upstream's Retry-After (the cluster asks for it).
    pub watch_retry_after: bool,
    pub seen: Seen,
    pub retry_after: Option<Vec<u8>>,
    pub capture: Option<Captured>,
    /// The fleet probe slot this probe holds, if it took one.
    pub fleet_slot: Option<Held>,
}

/// A response captured for the fallback cache.
pub struct Captured {
    pub key: String,
    pub status: u32,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Worker {
    fn roll(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 32) as u32
    }

    /// Decides whether a request to slot `i` goes upstream. `grpc` says whether the caller
    /// speaks gRPC (asked only to shape a refusal); `cache_key` is the path of a GET that
    /// a cached answer may serve.
    pub fn admit(
        &mut self,
        host: &impl Host,
        i: usize,
        grpc: impl FnOnce() -> bool,
        cache_key: Option<&str>,
    ) -> Decision {
        let roll = self.roll();
        let mut now = Now::new(self.clock_ms, || host.now_ms());
        // Until this worker's queue is listed, nobody can tell it of a transition.
        let listening = self.is_listening();
        let Some(slot) = self.slots.get_mut(i) else {
            return Decision::Pass;
        };
        let admission = slot.decide(host, listening, &mut now, roll);
        self.clock_ms = now.latest();
        self.tell_others(host, i);
        match self.slots.get_mut(i) {
            Some(slot) => slot.answer(admission, grpc, cache_key, now.latest()),
            None => Decision::Pass,
        }
    }

    /// Whether the response to a GET of `key` should be captured for the cache.
    pub fn wants_capture(&self, i: usize, key: &str, now_ms: u64) -> bool {
        self.slots
            .get(i)
            .and_then(|s| s.cache.as_ref())
            .is_some_and(|c| c.wants(key, now_ms))
    }

    /// Records how an admitted request ended.
    pub fn record(&mut self, host: &impl Host, admitted: Admitted) {
        let Admitted {
            slot: i,
            ticket,
            seen,
            started_ms,
            retry_after,
            capture,
            fleet_slot,
            ..
        } = admitted;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let outcome = slot.outcome(host, seen);
        let needs_clock = slot.settings.slow_call_rate_threshold > 0.0
            || retry_after.is_some()
            || capture.is_some();
        let now_ms = needs_clock.then(|| host.now_ms());
        let call = Call {
            outcome,
            elapsed_ms: now_ms.map_or(0, |now| now.saturating_sub(started_ms)),
            retry_after_ms: retry_after.as_deref().and_then(|v| {
                retry_after::parse(std::str::from_utf8(v).ok()?, now_ms.unwrap_or(0))
            }),
        };
        slot.metrics.count(Counted::of(&call, &slot.settings));
        if let (Some(c), Some(now)) = (capture, now_ms) {
            slot.keep(c, outcome, now);
        }
        if SuccessBatch::can_defer(&slot.glance, &slot.settings, ticket, &call) {
            slot.tally.defer(ticket.generation);
            return;
        }
        if outcome == Outcome::Ignored && !ticket.probe {
            return;
        }
        let now = now_ms.unwrap_or_else(|| host.now_ms());
        self.clock_ms = now;
        let _ = slot.write(host, now, |r, s| breaker::record(r, s, ticket, call, now));
        if let Some(held) = fleet_slot {
            self.fleet_probe_ended(host, i, held, ticket, outcome);
        }
        self.tell_others(host, i);
    }
}

impl Slot {
    /// The admission for one request. The worker's own copy of the record settles the
    /// common cases with no host call at all, while the core trusts it; else a glance at
    /// the shared record does, with one read; only the rest read the clock and go through
    /// compare-and-swap.
    fn decide(
        &mut self,
        host: &impl Host,
        listening: bool,
        now: &mut Now<impl FnMut() -> u64>,
        roll: u32,
    ) -> Admission {
        let coarse_ms = now.latest();
        let trusted = listening
            && breaker::trusts_copy(
                &self.glance,
                &self.settings,
                self.confirmed_at_ms,
                coarse_ms,
            );
        let from_copy = trusted
            .then(|| breaker::admit_at_a_glance(&self.glance, &self.settings, now))
            .flatten();
        let quick = from_copy.or_else(|| match host.shared_data(&self.key) {
            Ok(Some((bytes, _))) => codec::glance(&bytes).and_then(|g| {
                self.glance = g;
                self.confirmed_at_ms = coarse_ms;
                breaker::admit_at_a_glance(&g, &self.settings, now)
            }),
            _ => None,
        });
        if let Some(admission) = quick {
            return admission;
        }
        let now_ms = now.exact();
        let settings = &self.settings;
        let result = store::update(&SharedData(host), &self.key, CAS_ATTEMPTS, |r| {
            breaker::admit(r, settings, now_ms, roll)
        });
        match result {
            Ok(updated) => {
                let admission = updated.value;
                self.absorb(host, updated, now_ms);
                admission
            }
            Err(_) => {
                self.metrics.store_give_up(host);
                breaker::when_store_fails(&self.glance, &self.settings)
            }
        }
    }

    /// What the filter does with an admission: counts it, and shapes a refusal (the last
    /// good answer from the cache, or the configured or default refusal).
    fn answer(
        &mut self,
        admission: Admission,
        grpc: impl FnOnce() -> bool,
        cache_key: Option<&str>,
        now_ms: u64,
    ) -> Decision {
        match admission {
            Admission::Admitted(ticket) => {
                if ticket.probe {
                    self.metrics.count(Counted::Probe);
                }
                Decision::Admitted(ticket)
            }
            Admission::Passed { would_reject } => {
                if would_reject.is_some() {
                    self.metrics.count(Counted::WouldReject);
                    self.dry_run_unlogged += 1;
                }
                Decision::Pass
            }
            Admission::Rejected(rejection) => {
                self.metrics.count(Counted::Rejected);
                let grpc = grpc();
                let cached = match (&self.cache, cache_key) {
                    (Some(cache), Some(key)) if !grpc => cache.get(key, now_ms),
                    _ => None,
                };
                Decision::Reject(match cached {
                    Some((entry, age_secs)) => RejectReply::cached(entry, age_secs, &rejection),
                    None => self.reply.render(&rejection, grpc),
                })
            }
        }
    }

    /// How a stream ended. The response flags (and code, if no response headers came by)
    /// are read only when what was seen does not already say success.
    fn outcome(&self, host: &impl Host, seen: Seen) -> Outcome {
        let classifier = &self.settings.classifier;
        classifier
            .success_without_flags(seen.status, seen.grpc_status, seen.complete)
            .unwrap_or_else(|| {
                let status = match seen.status {
                    0 => property_u64(host, RESPONSE_CODE)
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(0),
                    s => s,
                };
                classifier.classify(StreamEnd {
                    status,
                    flags: property_u64(host, RESPONSE_FLAGS).unwrap_or(0),
                    grpc_status: seen.grpc_status,
                })
            })
    }

    /// Keeps a captured answer for the cache, if the call succeeded.
    fn keep(&mut self, captured: Captured, outcome: Outcome, now_ms: u64) {
        if let (Some(cache), Outcome::Success) = (&mut self.cache, outcome) {
            let entry = Entry {
                stored_at_ms: now_ms,
                status: captured.status,
                content_type: captured.content_type,
                body: captured.body,
            };
            cache.put(&captured.key, entry);
        }
    }
}
