//! The fleet's count of successful probes in a half-open episode: probes that ended on
//! this Envoy with the breaker still half-open are stored in etcd as the half-open record
//! with a higher count, compare-and-swapped, their slots deleted in the same `Txn`, so
//! other probes may go and successes on every Envoy add up to one `success_threshold`.
//! The Envoy whose count reaches it closes, as a local transition published like any
//! other.

use crate::core::breaker;
use crate::core::fleet::etcd::{self, Delete, Expect};
use crate::core::fleet::keys;
use crate::core::fleet::merge::{self, Progress, ProgressStep, Shadow};
use crate::core::fleet::record::FleetRecord;

use crate::filter::host::Host;

use super::super::breakers::Breakers;
use super::calls::Pending;
use super::shadows::update_shadow;
use super::Fleet;

impl Fleet {
    /// Sends this Envoy's progress on breaker `name`, closes it when the fleet's count is
    /// reached, or, with nothing (left) to send, stops owing it.
    pub(super) fn send_progress(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        name: &str,
        shadow: &Shadow,
        now_ms: u64,
    ) {
        let i = breakers.find(name.as_bytes());
        let threshold = i
            .and_then(|i| breakers.get(i))
            .map_or(u32::MAX, |s| s.settings.success_threshold);
        match (merge::progress_step(shadow, threshold), i) {
            (
                ProgressStep::Publish {
                    record,
                    mod_revision,
                    progress,
                },
                _,
            ) => {
                let p = &self.settings.prefix;
                let slots: Vec<String> = progress
                    .released
                    .iter()
                    .map(|n| keys::slot(p, name, progress.generation, *n))
                    .collect();
                let deletes: Vec<Delete> =
                    slots.iter().map(|k| Delete::Key(k.as_bytes())).collect();
                let key = keys::decision(p, name);
                let txn = etcd::txn_publish(
                    key.as_bytes(),
                    &record.encode(),
                    Expect::ModRevision(mod_revision),
                    &deletes,
                );
                let pending = Pending::Progress {
                    breaker: name.to_string(),
                    sent: record,
                    progress,
                };
                self.send_owed(host, name, &txn, pending, now_ms);
            }
            (ProgressStep::Close { successes }, Some(i)) => {
                update_shadow(host, name, |s| s.progress = None);
                if let Some(b) = breakers.get_mut(i) {
                    let _ = b.write(host, now_ms, |r, s| {
                        breaker::fleet_successes(r, s, successes, now_ms)
                    });
                }
                // The close is this worker's transition: told, claimed and published.
                self.announce(host, breakers, i);
            }
            _ => {
                update_shadow(host, name, |s| {
                    if s.claim.is_none() {
                        s.progress = None;
                    }
                });
                self.owed.remove(name);
            }
        }
    }

    /// The answer to a progress write: stored, or lost to another record.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn progressed(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        breaker: &str,
        sent: &FleetRecord,
        progress: &Progress,
        body: &[u8],
        now_ms: u64,
    ) {
        let Ok(outcome) = etcd::txn_outcome(body) else {
            return self.publish_failed(breaker, now_ms);
        };
        if !outcome.succeeded {
            return self.lost(host, breakers, breaker, &outcome, now_ms);
        }
        let left = update_shadow(host, breaker, |s| {
            s.seen = Some((sent.clone(), outcome.revision));
            s.progress = s.progress.take().and_then(|p| p.after(progress));
            s.progress.is_some() || s.claim.is_some()
        });
        if let Some(i) = breakers.find(breaker.as_bytes()) {
            if let Some(b) = breakers.get_mut(i) {
                // Below the threshold (else this would have closed): the count only.
                let count = sent.probe_successes;
                let _ = b.write(host, now_ms, |r, s| {
                    breaker::fleet_successes(r, s, count, now_ms)
                });
            }
            self.announce(host, breakers, i);
        }
        match left {
            Some(true) => self.owed.entry(breaker.to_string()).or_default().due_ms = now_ms,
            _ => {
                self.owed.remove(breaker);
            }
        }
    }
}
