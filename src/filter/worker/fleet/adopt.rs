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

use super::super::slot::CAS_ATTEMPTS;
use super::super::Worker;
use super::conn::{update_shadow, Conn};
use super::stat;
use crate::filter::host::Host;
use crate::filter::shared::SharedData;

impl Worker {
    /// A key and value read from etcd. Only decision keys matter here; a damaged record,
    /// or one for a breaker this Envoy does not have, is ignored with one log line.
    pub(super) fn fleet_stored(
        &mut self,
        host: &impl Host,
        key: &[u8],
        value: &[u8],
        mod_revision: i64,
        now_ms: u64,
    ) {
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        let name = match keys::parse(&fleet.settings.prefix, key) {
            Some(FleetKey::Decision(name)) => name,
            Some(slot @ FleetKey::Slot { .. }) => return self.fleet_slot_seen(host, &slot, false),
            _ => return,
        };
        let record = match FleetRecord::decode(value) {
            Ok(r) => r,
            Err(e) => {
                let line = format!(
                    "[CIRCUIT_BREAKER] fleet: ignored the record under {} (revision {mod_revision}): {e}",
                    String::from_utf8_lossy(key)
                );
                fleet.warn_once(key, &line);
                return;
            }
        };
        let known = self.index.contains_key(name.as_bytes())
            || self.config.clusters.contains_key(&name)
            || Worker::listed(host).contains(&name);
        let Some(i) = known
            .then(|| self.slot_for(host, name.as_bytes()))
            .flatten()
        else {
            if let Some(fleet) = &mut self.fleet {
                let line = format!(
                    "[CIRCUIT_BREAKER] fleet: ignored the record of {name:?} from {}: no such breaker here",
                    record.member
                );
                fleet.warn_once(key, &line);
            }
            return;
        };
        if self.slots.get(i).is_some_and(|s| s.settings.fleet) {
            self.fleet_meet(host, i, record, mod_revision, now_ms);
        }
    }

    /// A key deleted under the prefix: a freed probe slot matters; a decision key's
    /// deletion changes nothing (the next decision is created again).
    pub(super) fn fleet_deleted(&mut self, host: &impl Host, key: &[u8]) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        if let Some(slot @ FleetKey::Slot { .. }) = keys::parse(&fleet.settings.prefix, key) {
            self.fleet_slot_seen(host, &slot, true);
        }
    }

    /// The merge rule against the shadow: adopt, rebase this Envoy's claim on it, or
    /// ignore it.
    fn fleet_meet(
        &mut self,
        host: &impl Host,
        i: usize,
        record: FleetRecord,
        rev: i64,
        now_ms: u64,
    ) {
        let Some(name) = self.slots.get(i).map(|s| s.name.clone()) else {
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
            Some(Decision::Adopt) => self.fleet_adopt(host, i, &record, now_ms),
            Some(Decision::Rebase { .. }) => {
                if let Some(fleet) = &mut self.fleet {
                    fleet.owed.entry(name).or_default().due_ms = now_ms;
                }
            }
            _ => {}
        }
    }

    /// Makes the local record follow a stored record that won: a local transition when the
    /// state changes, logged with the member that decided it, and every worker told.
    fn fleet_adopt(&mut self, host: &impl Host, i: usize, record: &FleetRecord, now_ms: u64) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let settings = slot.settings.clone();
        let mut adopted = None;
        let result = store::update(&SharedData(host), &slot.key, CAS_ATTEMPTS, |r| {
            adopted = Some(merge::adopt(r, record, &settings, now_ms));
            Step {
                value: (),
                dirty: true,
                transition: None,
            }
        });
        let Ok(updated) = result else {
            slot.metrics.store_give_up(host);
            return;
        };
        slot.absorb(host, updated, now_ms);
        slot.moved = true;
        if let Some(a) = adopted.filter(|a| a.moved || record.cause == FleetCause::ModeChanged) {
            let line = record.log_line(&slot.name, a.from);
            log::info!("{line}");
            if let Some(t) = record.transition(a.from) {
                let event = Event::of(&slot.name, &t).decided_by(&record.member, line);
                slot.record_event(host, &t, event);
            }
            if let Some(fleet) = &mut self.fleet {
                fleet.metrics.bump(stat::ADOPTED);
                fleet.metrics.propagation(host, a.delay_ms);
            }
        }
        let member = record.member.clone();
        Conn::update(host, |c| c.last_member.clone_from(&member));
        self.tell_others(host, i);
    }
}
