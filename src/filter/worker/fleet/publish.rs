//! A worker's side of the fleet: its transitions (and an operator's mode overrides) become
//! claims in the breaker's shadow and compare-and-swap writes to etcd from the worker's root
//! context; a lost swap's answer goes to `adopt.rs`, a failed call waits for the next tick.

use crate::core::fleet::etcd::{self, method, Delete, Expect, TxnOutcome};
use crate::core::fleet::keys;
use crate::core::fleet::merge::{self, Shadow, HALF_OPEN_DEFER_MS};
use crate::core::fleet::quorum;
use crate::core::fleet::record::{FleetCause, FleetRecord};
use crate::core::state::{Counts, Record, State};

use crate::filter::host::Host;

use super::super::breakers::Breakers;
use super::calls::Pending;
use super::metrics::Counter;
use super::shadows::{load_shadow, update_shadow};
use super::shared_link::SharedLink;
use super::watch::jitter;
use super::{Fleet, OwedWrite};

/// The record of an operator's mode override that moved no state: the fleet's state as it
/// is, so adopting it changes only the mode. With votes, a member open by its own failures
/// outside a fleet episode speaks for the fleet's state, not its own.
fn mode_record(
    r: &Record,
    shadow: &Shadow,
    votes: bool,
    generation: u32,
    member: &str,
    now_ms: u64,
) -> FleetRecord {
    let own = votes && !quorum::fleet_episode(shadow);
    let state = if own { State::Closed } else { r.state };
    FleetRecord {
        state,
        reason: r.reason.filter(|_| state != State::Closed),
        cause: FleetCause::ModeChanged,
        mode_override: r.mode_override,
        generation,
        published_at_ms: now_ms,
        open_for_ms: match state {
            State::Open if r.open_until_ms == u64::MAX => u64::MAX,
            State::Open => r.open_until_ms.saturating_sub(now_ms),
            _ => 0,
        },
        trips_in_row: r.trips_in_row,
        probe_successes: if own { 0 } else { r.probe_successes },
        counts: Counts::default(),
        member: member.to_string(),
    }
}

/// Publish rounds one claim may take between two ticks (lost swaps, then rebases).
const MAX_ROUNDS: u32 = 3;
/// Wait before a failed publish is tried again.
pub(super) const RETRY_MS: u64 = 250;

impl Fleet {
    /// What a worker does wherever it tells the others of a change of breaker `i`: the
    /// transition it just made becomes the breaker's claim, owed to etcd by this worker, or,
    /// with votes, only changes this member's vote (`quorum::route`).
    pub fn claim(&mut self, host: &impl Host, breakers: &mut Breakers, i: usize) {
        let now_ms = breakers.clock_ms;
        let Some(breaker) = breakers.get_mut(i) else {
            return;
        };
        let transition = breaker.unpublished.take();
        let mode_only = std::mem::take(&mut breaker.mode_unpublished);
        if !breaker.settings.fleet || (transition.is_none() && !mode_only) {
            return;
        }
        let name = breaker.name.clone();
        let member = self.member.clone();
        let votes = self.votes();
        match transition {
            Some((t, mode, reason)) => {
                let route = quorum::route(&t, self.settings.trip_quorum, &load_shadow(host, &name));
                self.change_vote(host, breakers, &name, route.vote);
                if route.publish {
                    self.claim_with(host, breakers, &name, now_ms, false, |g, _| {
                        FleetRecord::of_transition(&t, mode, g, &member, t.at_ms, reason)
                    });
                }
            }
            None if mode_only => {
                let r = breaker.last_seen.clone();
                self.claim_with(host, breakers, &name, now_ms, false, |g, s| {
                    mode_record(&r, s, votes, g, &member, now_ms)
                });
            }
            None => {}
        }
    }

    /// Claims breaker `i`'s move and tells the other workers of it.
    pub(super) fn announce(&mut self, host: &impl Host, breakers: &mut Breakers, i: usize) {
        self.claim(host, breakers, i);
        breakers.tell_others(host, i);
    }

    /// Makes `record(generation, shadow)` breaker `name`'s claim, owed to etcd by this
    /// worker; `defer` holds it back as a move to half-open over another member's trip is.
    pub(super) fn claim_with(
        &mut self,
        host: &impl Host,
        breakers: &Breakers,
        name: &str,
        now_ms: u64,
        defer: bool,
        record: impl Fn(u32, &Shadow) -> FleetRecord,
    ) {
        let member = self.member.clone();
        let claimed = update_shadow(host, name, |s| {
            let claim = record(merge::claim_generation(s), s);
            let defers = defer || merge::defers(&claim, s, &member);
            s.claim = Some(claim);
            defers
        });
        match claimed {
            Some(false) => {
                self.owed.insert(name.to_string(), OwedWrite::default());
                // An HTTP context cannot wait for the answer (its stream may end first):
                // the worker's root context publishes, woken by a notice to itself.
                breakers.wake_self(host, name);
            }
            Some(true) => {
                let spread = (jitter(now_ms) * HALF_OPEN_DEFER_MS as f64) as u64;
                let due_ms = now_ms
                    .saturating_add(HALF_OPEN_DEFER_MS)
                    .saturating_add(spread);
                // The tick publishes it then, unless the watch brings the same move first.
                self.owed
                    .insert(name.to_string(), OwedWrite { due_ms, rounds: 0 });
            }
            None => {}
        }
    }

    /// Sends every claim this worker owes whose time has come, while etcd is reachable;
    /// cut off, claims wait and the breakers decide locally.
    pub fn publish(&mut self, host: &impl Host, breakers: &mut Breakers, now_ms: u64) {
        if (self.owed.is_empty() && self.votes_owed.is_empty()) || !SharedLink::is_connected(host) {
            return;
        }
        self.send_votes(host, now_ms);
        let due: Vec<String> = self
            .owed
            .iter()
            .filter(|(_, o)| o.due_ms <= now_ms)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.send(host, breakers, &name, None, now_ms);
        }
    }

    /// Sends the breaker's claim, compared against the last record seen, or against
    /// `over` (the revision of damaged bytes under the key, which a valid record replaces).
    fn send(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        name: &str,
        over: Option<i64>,
        now_ms: u64,
    ) {
        let shadow = load_shadow(host, name);
        let Some(mut sent) = shadow.claim.clone() else {
            return self.send_progress(host, breakers, name, &shadow, now_ms);
        };
        sent.generation = merge::claim_generation(&shadow);
        let expect = match (over, &shadow.seen) {
            (Some(rev), _) => Expect::ModRevision(rev),
            (None, Some((_, rev))) => Expect::ModRevision(*rev),
            (None, None) => Expect::Absent,
        };
        let prefix = &self.settings.prefix;
        let slots = keys::slots(prefix, name);
        let deletes = if sent.state == State::HalfOpen {
            Vec::new()
        } else {
            vec![Delete::Prefix(slots.as_bytes())]
        };
        let key = keys::decision(prefix, name);
        let txn = etcd::txn_publish(key.as_bytes(), &sent.encode(), expect, &deletes);
        let pending = Pending::Publish {
            breaker: name.to_string(),
            sent,
        };
        self.send_owed(host, name, &txn, pending, now_ms);
    }

    /// Sends a write this worker owes for `name`, and sets when to look at it again.
    pub(super) fn send_owed(
        &mut self,
        host: &impl Host,
        name: &str,
        txn: &[u8],
        pending: Pending,
        now_ms: u64,
    ) {
        let timeout_ms = self.settings.timeout_ms;
        let to = (method::KV, method::TXN);
        let due_ms = match self.calls.send(host, &self.settings, to, txn, pending) {
            // In flight: the answer (or its timeout) decides what is next.
            Ok(()) => now_ms.saturating_add(timeout_ms).saturating_add(RETRY_MS),
            Err(_) => {
                self.metrics.bump(Counter::PublishFailures);
                now_ms.saturating_add(RETRY_MS)
            }
        };
        if let Some(o) = self.owed.get_mut(name) {
            o.due_ms = due_ms;
        }
    }

    pub(super) fn publish_failed(&mut self, breaker: &str, now_ms: u64) {
        self.metrics.bump(Counter::PublishFailures);
        if let Some(o) = self.owed.get_mut(breaker) {
            o.due_ms = now_ms.saturating_add(RETRY_MS);
        }
    }

    /// The answer to a claim's write: stored (settled, unless a newer claim waits), or
    /// lost to another record.
    pub(super) fn published(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        breaker: &str,
        sent: FleetRecord,
        body: &[u8],
        now_ms: u64,
    ) {
        let Ok(outcome) = etcd::txn_outcome(body) else {
            return self.publish_failed(breaker, now_ms);
        };
        if !outcome.succeeded {
            return self.lost(host, breakers, breaker, &outcome, now_ms);
        }
        let settled = update_shadow(host, breaker, |s| {
            s.seen = Some((sent.clone(), outcome.revision));
            let same = s.claim.as_ref().is_some_and(|c| {
                FleetRecord {
                    generation: sent.generation,
                    ..c.clone()
                } == sent
            });
            if same {
                s.claim = None;
            }
            // Progress left from the episode just ended is dropped on the next send.
            s.claim.is_none() && s.progress.is_none()
        });
        self.metrics.bump(Counter::Published);
        // The fleet's open by quorum is this member's too: its open time, and its log line.
        if let (FleetCause::QuorumReached, Some(i)) =
            (sent.cause, breakers.find(breaker.as_bytes()))
        {
            self.adopt(host, breakers, i, &sent, false, now_ms);
        }
        match settled {
            Some(true) => {
                self.owed.remove(breaker);
            }
            _ => {
                self.owed.insert(breaker.to_string(), OwedWrite::default());
            }
        }
    }

    /// A swap lost: the failure branch holds the record that won (or nothing, when the
    /// key is gone); what was owed is settled against it and sent again, a few rounds at
    /// once and then after a pause.
    pub(super) fn lost(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        breaker: &str,
        outcome: &TxnOutcome,
        now_ms: u64,
    ) {
        if let Some(o) = self.owed.get_mut(breaker) {
            o.rounds += 1;
            o.due_ms = if o.rounds >= MAX_ROUNDS {
                o.rounds = 0;
                now_ms.saturating_add(RETRY_MS)
            } else {
                now_ms
            };
        }
        match outcome.kvs.first() {
            Some(kv) if FleetRecord::decode(&kv.value).is_err() => {
                self.stored(host, breakers, &kv.key, &kv.value, kv.mod_revision, now_ms);
                self.send(host, breakers, breaker, Some(kv.mod_revision), now_ms);
            }
            Some(kv) => self.stored(host, breakers, &kv.key, &kv.value, kv.mod_revision, now_ms),
            None => {
                update_shadow(host, breaker, |s| s.seen = None);
            }
        }
    }
}
