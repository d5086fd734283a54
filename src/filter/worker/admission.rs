//! The request path of one breaker: whether a request goes upstream ([`admit`]) and how
//! it ended ([`record`]). The core decides both; this side makes the host calls a
//! decision needs, and no more.

use crate::core::breaker::{
    self, Admission, Answered, Call, Confined, Now, RejectKind, Rejection, SuccessBatch, Ticket,
};
use crate::core::cache::Entry;
use crate::core::codec;
use crate::core::hosts::Address;
use crate::core::outcome::{Outcome, StreamEnd};
use crate::core::reply::{Answer, RejectReply};
use crate::core::retry_after;
use crate::core::store;

use crate::filter::host::{property_u64, Host};
use crate::filter::metrics::Counted;
use crate::filter::shared::{SharedData, CAS_ATTEMPTS};

use super::breaker::Breaker;
use super::fleet::probe::ProbeSlot;

/// Property paths, NUL-separated as the ABI wants them.
const RESPONSE_CODE: &[u8] = b"response\0code";
const RESPONSE_FLAGS: &[u8] = b"response\0flags";
const UPSTREAM_ADDRESS: &[u8] = b"upstream\0address";

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
    /// The breaker's place in this worker's list.
    pub breaker: usize,
    pub ticket: Ticket,
    /// When the request arrived, if the cluster measures latency or caches answers.
    pub started_ms: u64,
    /// Honour an upstream's Retry-After (the cluster asks for it).
    pub watch_retry_after: bool,
    pub seen: Seen,
    pub retry_after: Option<Vec<u8>>,
    pub capture: Option<Captured>,
    /// The fleet probe slot this probe holds, if it took one.
    pub probe_slot: Option<ProbeSlot>,
}

/// A response captured for the fallback cache.
pub struct Captured {
    pub key: String,
    pub status: u32,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// A small random number source for the ramp after a recovery (xorshift).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn roll(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 32) as u32
    }
}

/// Decides whether a request to `breaker` goes upstream. `listening` says whether other
/// workers' transitions reach this worker by notice (else its copy is never trusted);
/// `grpc` says whether the caller speaks gRPC (asked only to shape a refusal); `cache_key`
/// is the path of a GET that a cached answer may serve.
pub fn admit(
    breaker: &mut Breaker,
    host: &impl Host,
    listening: bool,
    now: &mut Now<impl FnMut() -> u64>,
    roll: u32,
    grpc: impl FnOnce() -> bool,
    cache_key: Option<&str>,
) -> Decision {
    let admission = decide(breaker, host, listening, now, roll);
    answer(breaker, admission, grpc, cache_key, now.latest())
}

/// Whether the response to a GET of `key` should be captured for the cache.
pub fn wants_capture(breaker: &Breaker, key: &str, now_ms: u64) -> bool {
    breaker.cache.as_ref().is_some_and(|c| c.wants(key, now_ms))
}

/// What recording an outcome did.
pub enum Recorded {
    /// Nothing was written: the success waits in the batch, or the outcome counts for
    /// nothing.
    Kept,
    /// The outcome was written to the shared record at `now_ms`.
    Written { now_ms: u64, outcome: Outcome },
}

/// Records how a request admitted to `breaker` ended.
pub fn record(breaker: &mut Breaker, host: &impl Host, admitted: Admitted) -> Recorded {
    let Admitted {
        ticket,
        seen,
        started_ms,
        retry_after,
        capture,
        ..
    } = admitted;
    if !ticket.probe {
        breaker.in_flight = breaker.in_flight.saturating_sub(1);
    }
    let outcome = outcome(breaker, host, seen);
    let needs_clock = breaker.settings.slow_call_rate_threshold > 0.0
        || retry_after.is_some()
        || capture.is_some();
    let now_ms = needs_clock.then(|| host.now_ms());
    let call = Call {
        outcome,
        elapsed_ms: now_ms.map_or(0, |now| now.saturating_sub(started_ms)),
        retry_after_ms: retry_after
            .as_deref()
            .and_then(|v| retry_after::parse(std::str::from_utf8(v).ok()?, now_ms.unwrap_or(0))),
    };
    breaker.metrics.count(Counted::of(&call, &breaker.settings));
    if let (Some(c), Some(now)) = (capture, now_ms) {
        keep(breaker, c, outcome, now);
    }
    if SuccessBatch::can_defer(&breaker.header, &breaker.settings, ticket, &call) {
        breaker.batch.defer(ticket.generation);
        if breaker.batch.wants_host() {
            breaker.batch.sample(answered_by(host));
        }
        return Recorded::Kept;
    }
    if outcome == Outcome::Ignored && !ticket.probe {
        return Recorded::Kept;
    }
    let now = now_ms.unwrap_or_else(|| host.now_ms());
    // Only the closed state's rules ask who answered; a probe's host is not read.
    let answered = Answered {
        by: if ticket.probe {
            None
        } else {
            answered_by(host)
        },
        others_out: breaker.in_flight > 0,
    };
    let held = breaker.write_with(host, now, |r, s| {
        breaker::record_from(r, s, ticket, call, answered, now)
    });
    if let Some(confined) = held.flatten() {
        held_back(breaker, &confined);
    }
    Recorded::Written {
        now_ms: now,
        outcome,
    }
}

/// Gives a local probe back without an outcome (its fleet slot claim failed, or the client
/// left while it waited), so the local gate admits another.
pub fn give_back(breaker: &mut Breaker, host: &impl Host, ticket: Ticket) {
    let now_ms = host.now_ms();
    let call = Call {
        outcome: Outcome::Ignored,
        elapsed_ms: 0,
        retry_after_ms: None,
    };
    let _ = breaker.write(host, now_ms, |r, s| {
        breaker::record(r, s, ticket, call, now_ms)
    });
}

/// The refusal of a request that found no fleet probe slot, shaped like any other.
pub fn half_open_refusal(breaker: &mut Breaker, grpc: bool) -> Answer {
    breaker.metrics.count(Counted::Rejected);
    let rejection = Rejection {
        kind: RejectKind::HalfOpen,
        reason: breaker.last_seen.reason,
        retry_after_ms: 1_000,
    };
    breaker.reply.render(&rejection, grpc)
}

/// The admission for one request. The worker's own copy of the record settles the
/// common cases with no host call at all, while the core trusts it; else a glance at
/// the shared record does, with one read; only the rest read the clock and go through
/// compare-and-swap.
fn decide(
    b: &mut Breaker,
    host: &impl Host,
    listening: bool,
    now: &mut Now<impl FnMut() -> u64>,
    roll: u32,
) -> Admission {
    let coarse_ms = now.latest();
    let trusted =
        listening && breaker::trusts_copy(&b.header, &b.settings, b.confirmed_at_ms, coarse_ms);
    let from_copy = trusted
        .then(|| breaker::admit_at_a_glance(&b.header, &b.settings, now))
        .flatten();
    let quick = from_copy.or_else(|| match host.shared_data(&b.key) {
        Ok(Some((bytes, _))) => codec::glance(&bytes).and_then(|g| {
            b.header = g;
            b.confirmed_at_ms = coarse_ms;
            breaker::admit_at_a_glance(&g, &b.settings, now)
        }),
        _ => None,
    });
    if let Some(admission) = quick {
        return admission;
    }
    let now_ms = now.exact();
    let settings = &b.settings;
    let result = store::update(&SharedData(host), &b.key, CAS_ATTEMPTS, |r| {
        breaker::admit(r, settings, now_ms, roll)
    });
    match result {
        Ok(updated) => {
            let admission = updated.value;
            b.absorb(host, updated, now_ms);
            admission
        }
        Err(_) => {
            b.metrics.store_give_up(host);
            breaker::when_store_fails(&b.header, &b.settings)
        }
    }
}

/// What the filter does with an admission: counts it, and shapes a refusal (the last
/// good answer from the cache, or the configured or default refusal).
fn answer(
    b: &mut Breaker,
    admission: Admission,
    grpc: impl FnOnce() -> bool,
    cache_key: Option<&str>,
    now_ms: u64,
) -> Decision {
    match admission {
        Admission::Admitted(ticket) => {
            if ticket.probe {
                b.metrics.count(Counted::Probe);
            } else {
                b.in_flight = b.in_flight.saturating_add(1);
            }
            Decision::Admitted(ticket)
        }
        Admission::Passed { would_reject } => {
            if would_reject.is_some() {
                b.metrics.count(Counted::WouldReject);
                b.dry_run_unlogged += 1;
            }
            Decision::Pass
        }
        Admission::Rejected(rejection) => {
            b.metrics.count(Counted::Rejected);
            let grpc = grpc();
            let cached = match (&b.cache, cache_key) {
                (Some(cache), Some(key)) if !grpc => cache.get(key, now_ms),
                _ => None,
            };
            Decision::Reject(match cached {
                Some((entry, age_secs)) => RejectReply::cached(entry, age_secs, &rejection),
                None => b.reply.render(&rejection, grpc),
            })
        }
    }
}

/// How a stream ended. The response flags (and code, if no response headers came by)
/// are read only when what was seen does not already say success.
fn outcome(b: &Breaker, host: &impl Host, seen: Seen) -> Outcome {
    let classifier = &b.settings.classifier;
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

/// A trip held back because the failures behind it came from too few hosts: counted,
/// and logged once per episode, by the worker whose write started it.
fn held_back(b: &mut Breaker, confined: &Confined) {
    if confined.counted {
        b.metrics.count(Counted::Confined);
    }
    if confined.started {
        log::info!("{}", confined.log_line(&b.name));
    }
}

/// Keeps a captured answer for the cache, if the call succeeded.
fn keep(b: &mut Breaker, captured: Captured, outcome: Outcome, now_ms: u64) {
    if let (Some(cache), Outcome::Success) = (&mut b.cache, outcome) {
        let entry = Entry {
            stored_at_ms: now_ms,
            status: captured.status,
            content_type: captured.content_type,
            body: captured.body,
        };
        cache.put(&captured.key, entry);
    }
}

/// The host that answered the stream (`upstream.address`); `None` when Envoy chose none,
/// or cannot say, which the breaker takes as a failure of the whole cluster.
fn answered_by(host: &impl Host) -> Option<Address> {
    let bytes = host.property(UPSTREAM_ADDRESS).ok().flatten()?;
    Address::new(&bytes)
}
