//! One thread's view of the breakers: the configured settings, the freshest record it has
//! seen per cluster, successes not yet written, and pending stats. Each callback reads the
//! host once and hands the decision to the core; transitions are announced here, once, by
//! the worker whose compare-and-swap made them.

use std::collections::HashMap;

use crate::core::breaker::{self, Admission, Rejection, Step, Tally, Ticket};
use crate::core::config::PluginConfig;
use crate::core::outcome::Outcome;
use crate::core::registry;
use crate::core::reply::{Answer, RejectReply};
use crate::core::settings::Settings;
use crate::core::state::{Record, State, Transition};
use crate::core::store::{self, StateStore, Updated};

use super::host::{self, Level};
use super::metrics::{Counted, Metrics};
use super::shared::{record_key, SharedData, REGISTRY_KEY};

/// Compare-and-swap attempts before a write gives up; contention between a handful of
/// workers settles in two or three.
const CAS_ATTEMPTS: u32 = 16;

/// What to do with a request.
pub enum Decision {
    Admitted(Ticket),
    Rejected(Answer),
    /// The state store failed and the breaker was last seen closed: let it through
    /// untracked rather than refuse traffic over a bookkeeping fault.
    Untracked,
}

/// One cluster's breaker as this worker knows it.
struct Slot {
    name: String,
    key: String,
    settings: Settings,
    last_seen: Record,
    tally: Tally,
    metrics: Metrics,
    reply: RejectReply,
}

pub struct Worker {
    config: PluginConfig,
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Slot>,
    /// Whether this worker has already said that the breaker list is full.
    warned_full: bool,
}

impl Worker {
    pub fn new(config: PluginConfig) -> Worker {
        let mut worker = Worker {
            config,
            index: HashMap::new(),
            slots: Vec::new(),
            warned_full: false,
        };
        let mut named: Vec<String> = worker.config.clusters.keys().cloned().collect();
        named.sort();
        for name in named {
            worker.slot_for(name.as_bytes());
        }
        worker
    }

    /// The slot of `cluster`, created (and registered process-wide) on first sight.
    pub fn slot_for(&mut self, cluster: &[u8]) -> Option<usize> {
        if let Some(i) = self.index.get(cluster) {
            return Some(*i);
        }
        let name = std::str::from_utf8(cluster).ok()?;
        if !self.register(name) {
            return None;
        }
        let key = record_key(name);
        let last_seen = store::load(&SharedData, &key)
            .map(|l| l.record)
            .unwrap_or_default();
        let slot = Slot {
            name: name.to_string(),
            settings: self.config.settings_for(name).clone(),
            last_seen,
            tally: Tally::default(),
            metrics: Metrics::define(name),
            reply: RejectReply::new(name),
            key,
        };
        slot.metrics.state(slot.last_seen.state);
        self.slots.push(slot);
        let i = self.slots.len() - 1;
        self.index.insert(cluster.to_vec(), i);
        Some(i)
    }

    /// Adds `name` to the process-wide list; false if it cannot be tracked.
    fn register(&mut self, name: &str) -> bool {
        let result = store::compare_and_swap(&SharedData, REGISTRY_KEY, b"", CAS_ATTEMPTS, |b| {
            match registry::with(b, name) {
                Ok(write) => (Ok(()), write),
                Err(refused) => (Err(refused), None),
            }
        });
        match result {
            Ok(Ok(())) => true,
            Ok(Err(registry::Refused::Full)) => {
                if !self.warned_full {
                    self.warned_full = true;
                    host::log(
                        Level::Warn,
                        &format!(
                            "[CIRCUIT_BREAKER] {} breakers exist already; cluster {name} passes through unprotected",
                            registry::MAX_BREAKERS
                        ),
                    );
                }
                false
            }
            Ok(Err(registry::Refused::BadName)) => false,
            // The list only serves timers and views; the breaker itself still works.
            Err(_) => true,
        }
    }

    /// Decides whether a request to slot `i` goes upstream.
    pub fn admit(&mut self, i: usize, now_ms: u64) -> Decision {
        let Some(slot) = self.slots.get_mut(i) else {
            return Decision::Untracked;
        };
        let settings = &slot.settings;
        let result = store::update(&SharedData, &slot.key, CAS_ATTEMPTS, |r| {
            breaker::admit(r, settings, now_ms)
        });
        match result {
            Ok(updated) => {
                let admission = updated.value;
                slot.absorb(updated);
                match admission {
                    Admission::Admitted(ticket) => Decision::Admitted(ticket),
                    Admission::Rejected(rejection) => {
                        slot.metrics.count(Counted::Rejected);
                        Decision::Rejected(slot.reply.render(&rejection))
                    }
                }
            }
            Err(_) => {
                slot.metrics.store_give_up();
                if slot.last_seen.state == State::Closed {
                    Decision::Untracked
                } else {
                    slot.metrics.count(Counted::Rejected);
                    Decision::Rejected(slot.reply.render(&Rejection {
                        state: slot.last_seen.state,
                        retry_after_ms: 1_000,
                    }))
                }
            }
        }
    }

    /// Records how a request admitted with `ticket` ended.
    pub fn record(&mut self, i: usize, ticket: Ticket, outcome: Outcome) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        slot.metrics.count(match outcome {
            Outcome::Success => Counted::Success,
            Outcome::Failure(_) => Counted::Failure,
            Outcome::Ignored => Counted::Ignored,
        });
        if Tally::can_defer(&slot.last_seen, ticket, outcome) {
            slot.tally.defer(ticket.generation);
            return;
        }
        if outcome == Outcome::Ignored && !ticket.probe {
            return;
        }
        let now_ms = host::now_ms();
        slot.write(now_ms, |r, s| {
            breaker::record(r, s, ticket, outcome, now_ms)
        });
    }

    /// The timer: publishes stats, writes batched successes and lets time move every
    /// breaker in the process, including ones this worker has not served.
    pub fn tick(&mut self, now_ms: u64) {
        let listed = match SharedData.load(REGISTRY_KEY) {
            Ok(Some((bytes, _))) => registry::names(&bytes),
            _ => Vec::new(),
        };
        for name in &listed {
            self.slot_for(name.as_bytes());
        }
        for slot in &mut self.slots {
            slot.metrics.flush();
            slot.write(now_ms, |r, s| breaker::tick(r, s, now_ms));
            slot.metrics.state(slot.last_seen.state);
        }
        let unlisted: Vec<String> = self
            .slots
            .iter()
            .filter(|s| !listed.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        for name in unlisted {
            self.register(&name);
        }
    }
}

impl Slot {
    /// Writes a change through compare-and-swap, folding in the batched successes first.
    fn write(&mut self, now_ms: u64, decide: impl Fn(&mut Record, &Settings) -> Step<()>) {
        let pending = std::mem::take(&mut self.tally);
        let settings = &self.settings;
        let result = store::update(&SharedData, &self.key, CAS_ATTEMPTS, |r| {
            let mut batch = pending;
            let folded = batch.fold_into(r, settings, now_ms);
            let mut step = decide(r, settings);
            step.dirty |= folded;
            step
        });
        match result {
            Ok(updated) => self.absorb(updated),
            Err(_) => {
                self.tally = pending;
                self.metrics.store_give_up();
            }
        }
    }

    /// Takes in what a store call returned: the freshest record, and any transition.
    fn absorb<T>(&mut self, updated: Updated<T>) {
        if let Some(damage) = &updated.damaged {
            host::log(
                Level::Warn,
                &format!(
                    "[CIRCUIT_BREAKER] {} state in shared data was unreadable ({damage}); starting again from closed",
                    self.name
                ),
            );
        }
        if let Some(t) = &updated.transition {
            self.announce(t);
        }
        self.last_seen = updated.record;
    }

    fn announce(&self, t: &Transition) {
        host::log(Level::Info, &t.log_line(&self.name));
        self.metrics.transition(t);
    }
}
