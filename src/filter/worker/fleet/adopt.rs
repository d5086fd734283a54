//! What etcd says, met with what this Envoy knows: a record under a decision key goes
//! through `core::fleet::merge` against the breaker's shadow and, when it wins, becomes the
//! local record, announced like a transition with the member that decided it; slot keys
//! update the known-taken probe slots; damaged or foreign keys are ignored with one line.

use crate::core::breaker::Step;
use crate::core::fleet::keys::{self, FleetKey};
use crate::core::fleet::merge::{self, Decision};
use crate::core::fleet::record::{FleetCause, FleetRecord};
use crate::core::history::Event;
use crate::core::store;

use crate::filter::host::Host;
use crate::filter::shared::{SharedData, CAS_ATTEMPTS};

use super::super::breakers::Breakers;
use super::metrics::Counter;
use super::shadows::update_shadow;
use super::shared_link::SharedLink;
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

    /// A key deleted under the prefix: a freed probe slot matters; a decision key's
    /// deletion changes nothing (the next decision is created again).
    pub(super) fn deleted(&mut self, host: &impl Host, breakers: &Breakers, key: &[u8]) {
        if let Some(slot @ FleetKey::Slot { .. }) = keys::parse(&self.settings.prefix, key) {
            self.slot_seen(host, breakers, &slot, true);
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
            match d {
                Decision::Adopt => {
                    s.seen = Some((record.clone(), rev));
                    s.claim = None;
                }
                Decision::Rebase { .. } => s.seen = Some((record.clone(), rev)),
                Decision::Ignore => {}
            }
            d
        });
        match decision {
            Some(Decision::Adopt) => self.adopt(host, breakers, i, &record, now_ms),
            Some(Decision::Rebase { .. }) => {
                self.owed.entry(name).or_default().due_ms = now_ms;
            }
            _ => {}
        }
    }

    /// Makes the local record follow a stored record that won: a local transition when the
    /// state changes, logged with the member that decided it, and every worker told.
    fn adopt(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        i: usize,
        record: &FleetRecord,
        now_ms: u64,
    ) {
        let Some(breaker) = breakers.get_mut(i) else {
            return;
        };
        let settings = breaker.settings.clone();
        let mut adopted = None;
        let result = store::update(&SharedData(host), &breaker.key, CAS_ATTEMPTS, |r| {
            adopted = Some(merge::adopt(r, record, &settings, now_ms, false));
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
        if let Some(a) = adopted.filter(|a| a.moved || record.cause == FleetCause::ModeChanged) {
            let line = record.log_line(&breaker.name, a.from, &[]);
            log::info!("{line}");
            if let Some(t) = record.transition(a.from) {
                let event = Event::of(&breaker.name, &t).decided_by(&record.member, line);
                breaker.record_event(host, &t, event);
            }
            self.metrics.bump(Counter::Adopted);
            self.metrics.propagation(host, a.delay_ms);
        }
        let member = record.member.clone();
        SharedLink::update(host, |c| c.last_member.clone_from(&member));
        self.announce(host, breakers, i);
    }
}
