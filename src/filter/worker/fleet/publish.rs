//! A worker's side of the fleet: its transitions (and an operator's mode overrides) become
//! claims in the breaker's shadow and compare-and-swap writes to etcd from the worker's root
//! context; a lost swap's answer goes to `adopt.rs`, a failed call waits for the next tick.

use crate::core::fleet::etcd::{self, method, Delete, Expect, TxnOutcome};
use crate::core::fleet::keys;
use crate::core::fleet::merge::{self, HALF_OPEN_DEFER_MS};
use crate::core::fleet::record::{FleetCause, FleetRecord};
use crate::core::state::{Counts, Record, State};

use super::super::Worker;
use super::conn::{load_shadow, update_shadow, Conn, Link as LinkState};
use super::{stat, Owed, Pending};
use crate::filter::host::{Buffer, Host};

/// The record of an operator's mode override that moved no state: the state as it is, so
/// adopting it changes only the mode.
fn mode_record(r: &Record, generation: u32, member: &str, now_ms: u64) -> FleetRecord {
    FleetRecord {
        state: r.state,
        reason: r.reason.filter(|_| r.state != State::Closed),
        cause: FleetCause::ModeChanged,
        mode_override: r.mode_override,
        generation,
        published_at_ms: now_ms,
        open_for_ms: match r.state {
            State::Open if r.open_until_ms == u64::MAX => u64::MAX,
            State::Open => r.open_until_ms.saturating_sub(now_ms),
            _ => 0,
        },
        trips_in_row: r.trips_in_row,
        probe_successes: r.probe_successes,
        counts: Counts::default(),
        member: member.to_string(),
    }
}

/// Publish rounds one claim may take between two ticks (lost swaps, then rebases).
const MAX_ROUNDS: u32 = 3;
/// Wait before a failed publish is tried again.
const RETRY_MS: u64 = 250;

impl super::Fleet {
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
        let due_ms = match self.call(host, (method::KV, method::TXN), txn, pending) {
            // In flight: the answer (or its timeout) decides what is next.
            Ok(()) => now_ms.saturating_add(timeout_ms).saturating_add(RETRY_MS),
            Err(_) => {
                self.metrics.bump(stat::PUBLISH_FAILURES);
                now_ms.saturating_add(RETRY_MS)
            }
        };
        if let Some(o) = self.owed.get_mut(name) {
            o.due_ms = due_ms;
        }
    }
}

impl Worker {
    /// Called wherever a worker tells the others of a change: the transition this worker
    /// just made becomes the breaker's claim, owed to etcd by this worker.
    pub(crate) fn fleet_claim(&mut self, host: &impl Host, i: usize) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let transition = slot.unpublished.take();
        let mode_only = std::mem::take(&mut slot.mode_unpublished);
        let (Some(fleet), true) = (&self.fleet, slot.settings.fleet) else {
            return;
        };
        let member = fleet.member.clone();
        match transition {
            Some((t, mode, reason)) => self.fleet_claim_with(host, i, |g| {
                FleetRecord::of_transition(&t, mode, g, &member, t.at_ms, reason)
            }),
            None if mode_only => {
                let r = slot.last_seen.clone();
                let now_ms = self.clock_ms;
                self.fleet_claim_with(host, i, |g| mode_record(&r, g, &member, now_ms));
            }
            None => {}
        }
    }

    /// Makes `record(generation)` slot `i`'s claim, owed to etcd by this worker.
    fn fleet_claim_with(
        &mut self,
        host: &impl Host,
        i: usize,
        record: impl Fn(u32) -> FleetRecord,
    ) {
        let (Some(slot), Some(fleet)) = (self.slots.get(i), &mut self.fleet) else {
            return;
        };
        let name = slot.name.clone();
        let member = fleet.member.clone();
        let claimed = update_shadow(host, &name, |s| {
            let claim = record(merge::claim_generation(s));
            let defers = merge::defers(&claim, s, &member);
            s.claim = Some(claim);
            defers
        });
        match claimed {
            Some(false) => {
                fleet.owed.insert(name.clone(), Owed::default());
                // An HTTP context cannot wait for the answer (its stream may end first):
                // the worker's root context publishes, woken by a notice to itself.
                self.wake_self(host, &name);
            }
            Some(true) => {
                let spread =
                    (super::holder::jitter(self.clock_ms) * HALF_OPEN_DEFER_MS as f64) as u64;
                let due_ms = self
                    .clock_ms
                    .saturating_add(HALF_OPEN_DEFER_MS)
                    .saturating_add(spread);
                // The tick publishes it then, unless the watch brings the same move first.
                fleet.owed.insert(name, Owed { due_ms, rounds: 0 });
            }
            None => {}
        }
    }

    /// Sends every claim this worker owes whose time has come, while etcd is reachable;
    /// cut off, claims wait and the breakers decide locally.
    pub fn fleet_publish(&mut self, host: &impl Host, now_ms: u64) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        if fleet.owed.is_empty() || Conn::load(host).link != LinkState::Connected {
            return;
        }
        let due: Vec<String> = fleet
            .owed
            .iter()
            .filter(|(_, o)| o.due_ms <= now_ms)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.fleet_send(host, &name, None, now_ms);
        }
    }

    /// Sends the breaker's claim, compared against the last record seen, or against
    /// `over` (the revision of damaged bytes under the key, which a valid record replaces).
    fn fleet_send(&mut self, host: &impl Host, name: &str, over: Option<i64>, now_ms: u64) {
        let shadow = load_shadow(host, name);
        let Some(mut sent) = shadow.claim.clone() else {
            return self.fleet_send_progress(host, name, &shadow, now_ms);
        };
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        sent.generation = merge::claim_generation(&shadow);
        let expect = match (over, &shadow.seen) {
            (Some(rev), _) => Expect::ModRevision(rev),
            (None, Some((_, rev))) => Expect::ModRevision(*rev),
            (None, None) => Expect::Absent,
        };
        let prefix = &fleet.settings.prefix;
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
        fleet.send_owed(host, name, &txn, pending, now_ms);
    }

    /// The answer to one of this context's unary calls (`status` 0: `body` is the message).
    pub fn fleet_answered(
        &mut self,
        host: &impl Host,
        token: u32,
        status: u32,
        size: usize,
        now_ms: u64,
    ) {
        let Some(pending) = self.fleet.as_mut().and_then(|f| f.calls.remove(&token)) else {
            return;
        };
        let body = if status == 0 {
            host.buffer(Buffer::GrpcReceive, size).unwrap_or_default()
        } else {
            Vec::new()
        };
        match (pending, status) {
            (Pending::Publish { breaker, sent }, 0) => {
                self.fleet_published(host, &breaker, sent, &body, now_ms)
            }
            (
                Pending::Progress {
                    breaker,
                    sent,
                    progress,
                },
                0,
            ) => self.fleet_progressed(host, &breaker, &sent, &progress, &body, now_ms),
            (Pending::Publish { breaker, .. } | Pending::Progress { breaker, .. }, status) => {
                if status == super::holder::UNAUTHENTICATED {
                    Conn::update(host, |c| c.token.clear());
                }
                self.fleet_publish_failed(&breaker, now_ms)
            }
            (Pending::Range(attempt) | Pending::Auth(attempt), _)
                if !self.fleet_attempt_is(attempt) => {}
            (Pending::Auth(attempt), 0) => {
                self.fleet_authenticated(host, &body, Some(attempt), now_ms)
            }
            (Pending::Reauth, 0) => self.fleet_authenticated(host, &body, None, now_ms),
            (Pending::Reauth, _) => {}
            (Pending::Range(_), 0) => self.fleet_joined(host, &body, now_ms),
            (Pending::LeaseGrant, 0) => self.fleet_leased(host, &body, now_ms),
            (Pending::Peek, 0) => self.fleet_peeked(host, &body, now_ms),
            (Pending::Quorum, 0) => self.fleet_quorum_confirmed(now_ms),
            (Pending::Quorum, super::holder::UNAUTHENTICATED) => {
                // etcd forgot the token (restarted, or it expired): log in again on the
                // next tick, before the probe's silence ends the link.
                Conn::update(host, |c| c.token.clear());
            }
            (Pending::Member | Pending::Peek | Pending::Quorum, _) => {}
            (Pending::Range(_) | Pending::Auth(_) | Pending::LeaseGrant, status) => {
                self.fleet_down_from_call(host, status, now_ms)
            }
        }
        self.fleet_publish(host, now_ms);
    }

    pub(super) fn fleet_publish_failed(&mut self, breaker: &str, now_ms: u64) {
        if let Some(fleet) = &mut self.fleet {
            fleet.metrics.bump(stat::PUBLISH_FAILURES);
            if let Some(o) = fleet.owed.get_mut(breaker) {
                o.due_ms = now_ms.saturating_add(RETRY_MS);
            }
        }
    }

    fn fleet_published(
        &mut self,
        host: &impl Host,
        breaker: &str,
        sent: FleetRecord,
        body: &[u8],
        now_ms: u64,
    ) {
        let Ok(outcome) = etcd::txn_outcome(body) else {
            return self.fleet_publish_failed(breaker, now_ms);
        };
        if outcome.succeeded {
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
            let Some(fleet) = &mut self.fleet else {
                return;
            };
            fleet.metrics.bump(stat::PUBLISHED);
            match settled {
                Some(true) => {
                    fleet.owed.remove(breaker);
                }
                _ => {
                    fleet.owed.insert(breaker.to_string(), Owed::default());
                }
            }
            return;
        }
        self.fleet_lost(host, breaker, &outcome, now_ms);
    }

    /// A swap lost: the failure branch holds the record that won (or nothing, when the
    /// key is gone); what was owed is settled against it and sent again, a few rounds at
    /// once and then after a pause.
    pub(super) fn fleet_lost(
        &mut self,
        host: &impl Host,
        breaker: &str,
        outcome: &TxnOutcome,
        now_ms: u64,
    ) {
        if let Some(o) = self.fleet.as_mut().and_then(|f| f.owed.get_mut(breaker)) {
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
                self.fleet_stored(host, &kv.key, &kv.value, kv.mod_revision, now_ms);
                self.fleet_send(host, breaker, Some(kv.mod_revision), now_ms);
            }
            Some(kv) => self.fleet_stored(host, &kv.key, &kv.value, kv.mod_revision, now_ms),
            None => {
                update_shadow(host, breaker, |s| s.seen = None);
            }
        }
    }

    fn fleet_down_from_call(&mut self, host: &impl Host, status: u32, now_ms: u64) {
        // A failed first read or lease grant ends the link like a closed stream.
        let code = if status == 0 { 2 } else { status };
        self.fleet_down(host, code, now_ms);
    }
}
