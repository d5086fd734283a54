//! Half-open across the fleet: a request that passed the local probe gate takes one of the
//! fleet's probe slots in etcd before it goes upstream, so `half_open_max_requests` holds
//! for the whole fleet, not per Envoy. The request waits (one `Txn`, bounded by
//! `fleet.timeout`, at most one round per slot); without a slot it is refused as half-open,
//! never sent as a probe. With etcd unreachable the local gate alone decides, as without a
//! fleet. A probe that ends with the breaker still half-open gives its slot back and adds
//! its success to the fleet's count (published from `publish.rs`), so successes on every
//! Envoy add up to one `success_threshold`.

use crate::core::breaker::Ticket;
use crate::core::fleet::etcd::{self, method};
use crate::core::fleet::keys::{self, FleetKey};
use crate::core::fleet::quorum;
use crate::core::outcome::Outcome;
use crate::core::state::State;

use crate::filter::host::{Buffer, Host};

use super::super::breakers::Breakers;
use super::calls::{metadata, target};
use super::shadows::{load_shadow, load_slots, update_shadow, update_slots};
use super::shared_link::{LinkState, SharedLink};
use super::Fleet;

/// A probe slot claim in flight for one paused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSlotClaim {
    /// The call's token; its answer comes to the stream's context.
    pub token: u32,
    breaker: String,
    generation: u32,
    slot: u32,
    /// The `mod_revision` of the half-open record the claim is for.
    revision: i64,
    rounds: u32,
}

/// The fleet probe slot a request holds while it probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSlot {
    generation: u32,
    slot: u32,
}

/// What a probe admitted by the local gate does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Go upstream as a probe, holding a fleet slot or (etcd out of reach, or the breaker
    /// kept local) on the local gate alone.
    Go(Option<ProbeSlot>),
    /// Wait for the claim's answer.
    Wait(ProbeSlotClaim),
    /// No slot: refuse as half-open.
    Refuse,
}

impl Fleet {
    /// Whether the probe admitted to breaker `i` may go, must wait for a slot, or is
    /// refused.
    pub fn probe(&mut self, host: &impl Host, breakers: &Breakers, i: usize) -> Probe {
        let Some(breaker) = breakers.get(i) else {
            return Probe::Go(None);
        };
        if !breaker.settings.fleet {
            return Probe::Go(None);
        }
        let conn = SharedLink::load(host);
        if conn.link != LinkState::Connected {
            return Probe::Go(None);
        }
        let shadow = load_shadow(host, &breaker.name);
        // With votes, a member half-open on its own probes on its own gate.
        if self.votes() && !quorum::fleet_episode(&shadow) {
            return Probe::Go(None);
        }
        let max = breaker.settings.half_open_max_requests;
        match (&shadow.seen, &shadow.claim, conn.lease) {
            // A decision of this Envoy's not yet in etcd, or no lease to bind a slot to:
            // wait for them rather than probe without a slot.
            (_, Some(_), _) | (_, _, 0) => Probe::Refuse,
            (Some((record, revision)), None, lease) if record.state == State::HalfOpen => {
                let name = breaker.name.clone();
                let Some(n) = load_slots(host, &name).next_free(record.generation, max) else {
                    return Probe::Refuse;
                };
                let claim = ProbeSlotClaim {
                    token: 0,
                    breaker: name,
                    generation: record.generation,
                    slot: n,
                    revision: *revision,
                    rounds: 0,
                };
                self.send_claim(host, claim, lease)
            }
            _ => Probe::Refuse,
        }
    }

    /// The fleet gate of a breaker's own health probe: its one slot (slot 0) for the whole
    /// fleet, kept by this Envoy from one probe of an episode to the next, so no other
    /// Envoy probes until the episode ends (publishing its end deletes the slot) or this
    /// Envoy's lease does.
    pub fn own_probe(&mut self, host: &impl Host, breakers: &Breakers, i: usize) -> Probe {
        let Some(breaker) = breakers.get(i) else {
            return Probe::Go(None);
        };
        let conn = SharedLink::load(host);
        if !breaker.settings.fleet || conn.link != LinkState::Connected {
            return Probe::Go(None);
        }
        let name = breaker.name.clone();
        let shadow = load_shadow(host, &name);
        match (&shadow.seen, &shadow.claim, conn.lease) {
            (_, Some(_), _) | (_, _, 0) => Probe::Refuse,
            (Some((record, revision)), None, lease) if record.state == State::HalfOpen => {
                let slots = load_slots(host, &name);
                // Held under this lease: a slot of an expired lease is gone from etcd.
                let held = load_held(host, &name).filter(|(h, l)| {
                    h.generation == record.generation
                        && *l == lease
                        && slots.next_free(record.generation, 1).is_none()
                });
                if let Some((slot, _)) = held {
                    return Probe::Go(Some(slot));
                }
                if slots.next_free(record.generation, 1).is_none() {
                    return Probe::Refuse;
                }
                let claim = ProbeSlotClaim {
                    token: 0,
                    breaker: name,
                    generation: record.generation,
                    slot: 0,
                    revision: *revision,
                    rounds: 0,
                };
                self.send_claim(host, claim, lease)
            }
            _ => Probe::Refuse,
        }
    }

    /// Notes that this Envoy holds `slot` for breaker `name`'s own probe.
    pub fn hold_probe_slot(&self, host: &impl Host, name: &str, slot: ProbeSlot) {
        let lease = SharedLink::load(host).lease;
        let mut bytes = [slot.generation.to_le_bytes(), slot.slot.to_le_bytes()].concat();
        bytes.extend_from_slice(&lease.to_le_bytes());
        let _ = host.set_shared_data(&held_key(name), &bytes, 0);
    }

    fn send_claim(&self, host: &impl Host, mut claim: ProbeSlotClaim, lease: i64) -> Probe {
        let p = &self.settings.prefix;
        let b = &claim.breaker;
        let txn = etcd::txn_claim_slot(
            keys::slot(p, b, claim.generation, claim.slot).as_bytes(),
            self.member.as_bytes(),
            lease,
            keys::decision(p, b).as_bytes(),
            claim.revision,
            keys::episode_slots(p, b, claim.generation).as_bytes(),
        );
        let timeout = u32::try_from(self.settings.timeout_ms).unwrap_or(u32::MAX);
        let auth = SharedLink::load(host).token;
        match host.grpc_call(
            target(&self.settings, method::KV, method::TXN),
            &metadata(&auth),
            &txn,
            timeout,
        ) {
            Ok(token) => {
                claim.token = token;
                Probe::Wait(claim)
            }
            Err(_) => Probe::Refuse,
        }
    }

    /// The answer to a slot claim: go, try the next free slot, or refuse.
    pub fn probe_answered(
        &mut self,
        host: &impl Host,
        breakers: &Breakers,
        claim: ProbeSlotClaim,
        status: u32,
        size: usize,
    ) -> Probe {
        let body = match status {
            0 => host.buffer(Buffer::GrpcReceive, size).unwrap_or_default(),
            _ => return Probe::Refuse,
        };
        let Ok(outcome) = etcd::txn_outcome(&body) else {
            return Probe::Refuse;
        };
        let prefix = self.settings.prefix.clone();
        let max = max_probes(breakers, &claim.breaker);
        let b = claim.breaker.clone();
        if outcome.succeeded {
            let key = FleetKey::Slot {
                breaker: b.clone(),
                generation: claim.generation,
                slot: claim.slot,
            };
            update_slots(host, &b, |s| {
                s.on_event(&key, false, &b, max);
            });
            return Probe::Go(Some(ProbeSlot {
                generation: claim.generation,
                slot: claim.slot,
            }));
        }
        let mut decision_revision = None;
        for kv in &outcome.kvs {
            match keys::parse(&prefix, &kv.key) {
                Some(key @ FleetKey::Slot { .. }) => update_slots(host, &b, |s| {
                    s.on_event(&key, false, &b, max);
                }),
                Some(FleetKey::Decision(_)) => decision_revision = Some(kv.mod_revision),
                _ => {}
            }
        }
        // The breaker moved on (the watch brings the new record), or every round is spent.
        if decision_revision != Some(claim.revision) || claim.rounds + 1 >= max {
            return Probe::Refuse;
        }
        let Some(n) = load_slots(host, &b).next_free(claim.generation, max) else {
            return Probe::Refuse;
        };
        let next = ProbeSlotClaim {
            slot: n,
            rounds: claim.rounds + 1,
            ..claim
        };
        self.send_claim(host, next, SharedLink::load(host).lease)
    }

    /// A probe that held fleet slot `held` ended with `outcome`. While the breaker stays
    /// half-open (no transition here), its slot is given back and a success is added to
    /// the fleet's count, both owed to etcd; a transition ends the episode, and publishing
    /// it deletes every slot.
    pub fn probe_ended(
        &mut self,
        host: &impl Host,
        breakers: &Breakers,
        i: usize,
        held: ProbeSlot,
        ticket: Ticket,
        outcome: Outcome,
    ) {
        let Some(breaker) = breakers.get(i) else {
            return;
        };
        let r = &breaker.last_seen;
        if r.state != State::HalfOpen || r.generation != ticket.generation {
            return;
        }
        let name = breaker.name.clone();
        let succeeded = outcome == Outcome::Success;
        let noted = update_shadow(host, &name, |s| {
            let progress = s.progress.take().unwrap_or_default();
            s.progress = Some(progress.with(held.generation, held.slot, succeeded));
        });
        if noted.is_none() {
            return;
        }
        self.owed.entry(name.clone()).or_default();
        breakers.wake_self(host, &name);
    }

    /// A slot key seen on the watch or in the first read: which slots are taken.
    pub(super) fn slot_seen(
        &self,
        host: &impl Host,
        breakers: &Breakers,
        key: &FleetKey,
        deleted: bool,
    ) {
        if let FleetKey::Slot { breaker, .. } = key {
            let max = max_probes(breakers, breaker);
            update_slots(host, breaker, |s| {
                s.on_event(key, deleted, breaker, max);
            });
        }
    }
}

/// The probe limit of breaker `name` (1 for one this worker does not have, or one that
/// sends its own probe).
fn max_probes(breakers: &Breakers, name: &str) -> u32 {
    breakers
        .find(name.as_bytes())
        .and_then(|i| breakers.get(i))
        .filter(|b| b.settings.probe.is_none())
        .map_or(1, |b| b.settings.half_open_max_requests)
}

/// The shared-data key of the slot this Envoy holds for a breaker's own probe.
fn held_key(name: &str) -> String {
    crate::filter::shared::fleet_key(&format!("own-probe/{name}"))
}

/// The slot this Envoy last held for breaker `name`'s own probe, and the lease it was
/// held under.
fn load_held(host: &impl Host, name: &str) -> Option<(ProbeSlot, i64)> {
    let Ok(Some((bytes, _))) = host.shared_data(&held_key(name)) else {
        return None;
    };
    let mut rd = crate::core::bytes::Reader::new(&bytes);
    let slot = ProbeSlot {
        generation: rd.u32()?,
        slot: rd.u32()?,
    };
    let lease = rd.i64()?;
    rd.is_done().then_some((slot, lease))
}
