//! What etcd says, met with what this Envoy knows: a record under a decision key goes
//! through `core::fleet::merge` against the breaker's shadow and, when it wins, becomes the
//! local record, announced like a transition with the member that decided it; slot keys
//! update the known-taken probe slots, vote and member keys the votes (`votes.rs`);
//! damaged or foreign keys are ignored with one line.

use crate::core::breaker::Step;
use crate::core::fleet::keys::{self, FleetKey};
use crate::core::fleet::merge::{self, Decision};
use crate::core::fleet::quorum::{self, VoteChange};
use crate::core::fleet::record::{FleetCause, FleetRecord};
use crate::core::history::Event;
use crate::core::state::State;
use crate::core::store;

use crate::filter::host::Host;
use crate::filter::shared::{SharedData, CAS_ATTEMPTS};

use super::super::breakers::Breakers;
use super::metrics::Counter;
use super::shadows::update_shadow;
use super::shared_link::SharedLink;
use super::votes::load_tally;
use super::Fleet;

impl Fleet {
    /// A key and value read from etcd. Only decision keys matter here; a damaged record,
    /// or one for a breaker this Envoy does not have, is ignored with one log line.
    pub(super) fn stored(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        key: &[u8],
        value: &[u8],
        mod_revision: i64,
        now_ms: u64,
    ) {
        let name = match keys::parse(&self.settings.prefix, key) {
            Some(FleetKey::Decision(name)) => name,
            Some(slot @ FleetKey::Slot { .. }) => {
                return self.slot_seen(host, breakers, &slot, false)
            }
            Some(FleetKey::Member(member)) => return self.member_seen(host, &member),
            Some(FleetKey::Vote { breaker, member }) if self.votes() => {
                let about = (breaker.as_str(), member.as_str());
                return self.vote_seen(host, breakers, key, about, value, mod_revision, now_ms);
            }
            _ => return,
        };
        let record = match FleetRecord::decode(value) {
            Ok(r) => r,
            Err(e) => {
                let line = format!(
                    "[CIRCUIT_BREAKER] fleet: ignored the record under {} (revision {mod_revision}): {e}",
                    String::from_utf8_lossy(key)
                );
                self.warn_once(key, &line);
                return;
            }
        };
        let known = breakers.find(name.as_bytes()).is_some()
            || breakers.is_configured(&name)
            || Breakers::listed(host).contains(&name);
        let Some(i) = known
            .then(|| breakers.named(host, name.as_bytes()))
            .flatten()
        else {
            let line = format!(
                "[CIRCUIT_BREAKER] fleet: ignored the record of {name:?} from {}: no such breaker here",
                record.member
            );
            self.warn_once(key, &line);
            return;
        };
        if breakers.get(i).is_some_and(|b| b.settings.fleet) {
            self.meet(host, breakers, i, record, mod_revision, now_ms);
        }
    }

    /// A key deleted under the prefix: a freed probe slot, a withdrawn vote and a member
    /// gone matter; a decision key's deletion changes nothing (the next decision is created
    /// again).
    pub(super) fn deleted(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        key: &[u8],
        now_ms: u64,
    ) {
        match keys::parse(&self.settings.prefix, key) {
            Some(slot @ FleetKey::Slot { .. }) => self.slot_seen(host, breakers, &slot, true),
            Some(FleetKey::Member(member)) => self.member_gone(host, breakers, &member, now_ms),
            Some(FleetKey::Vote { breaker, member }) => {
                self.vote_gone(host, breakers, (&breaker, &member), now_ms)
            }
            _ => {}
        }
    }

    /// The merge rule against the shadow: adopt, rebase this Envoy's claim on it, or
    /// ignore it.
    fn meet(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        i: usize,
        record: FleetRecord,
        rev: i64,
        now_ms: u64,
    ) {
        let Some(name) = breakers.get(i).map(|b| b.name.clone()) else {
            return;
        };
        let decision = update_shadow(host, &name, |s| {
            let d = merge::on_stored(s, &record, rev);
            // Judged on what was seen before this record.
            let keep_own = quorum::keeps_own(s, &record);
            match d {
                Decision::Adopt => {
                    s.seen = Some((record.clone(), rev));
                    s.claim = None;
                }
                Decision::Rebase { .. } => s.seen = Some((record.clone(), rev)),
                Decision::Ignore => {}
            }
            (d, keep_own)
        });
        match decision {
            Some((Decision::Adopt, keep_own)) => {
                self.adopt(host, breakers, i, &record, keep_own, now_ms)
            }
            Some((Decision::Rebase { .. }, _)) => {
                self.owed.entry(name).or_default().due_ms = now_ms;
            }
            _ => {}
        }
    }

    /// Makes the local record follow a stored record that won: a local transition when the
    /// state changes, logged with the member that decided it (an open by quorum with the
    /// members that voted for it, whether or not it moved this one), and every worker told.
    /// With `keep_own`, a member open by its own failures takes only the mode. A member left
    /// closed withdraws its vote.
    pub(super) fn adopt(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        i: usize,
        record: &FleetRecord,
        keep_own: bool,
        now_ms: u64,
    ) {
        let Some(breaker) = breakers.get_mut(i) else {
            return;
        };
        let settings = breaker.settings.clone();
        let mut adopted = None;
        let result = store::update(&SharedData(host), &breaker.key, CAS_ATTEMPTS, |r| {
            adopted = Some(merge::adopt(r, record, &settings, now_ms, keep_own));
            Step {
                value: (),
                dirty: true,
                transition: None,
            }
        });
        let Ok(updated) = result else {
            breaker.metrics.store_give_up(host);
            return;
        };
        breaker.absorb(host, updated, now_ms);
        breaker.moved = true;
        let closed = breaker.last_seen.state == State::Closed;
        let name = breaker.name.clone();
        let said = matches!(
            record.cause,
            FleetCause::ModeChanged | FleetCause::QuorumReached
        );
        if let Some(a) = adopted.filter(|a| a.moved || said) {
            let voters = match record.cause {
                FleetCause::QuorumReached => load_tally(host, &name).voters(),
                _ => Vec::new(),
            };
            let line = record.log_line(&name, a.from, &voters);
            log::info!("{line}");
            if let Some(t) = record.transition(a.from).filter(|_| a.moved) {
                let event = Event::of(&name, &t).decided_by(&record.member, line);
                breaker.record_event(host, &t, event);
            }
            // The publisher of an open by quorum takes its own record: nothing propagated.
            if record.cause != FleetCause::QuorumReached || record.member != self.member {
                self.metrics.bump(Counter::Adopted);
                self.metrics.propagation(host, a.delay_ms);
            }
        }
        let member = record.member.clone();
        SharedLink::update(host, |c| c.last_member.clone_from(&member));
        if closed && self.votes() {
            self.change_vote(host, breakers, &name, VoteChange::Withdraw);
        }
        self.announce(host, breakers, i);
    }
}
