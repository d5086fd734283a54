//! One thread's view of the breakers: the configured settings and a [`Slot`] per breaker
//! it has met, registration in the process-wide list, and the timer that moves every
//! breaker on. Admission and recording, the control API and event delivery are the
//! submodules' jobs; each callback reads the host once and hands the decision to the core.

mod admission;
mod control_api;
mod events;
pub mod fleet;
mod notices;
pub(crate) mod slot;

use std::collections::HashMap;

use crate::core::breaker;
use crate::core::config::PluginConfig;
use crate::core::control;
use crate::core::registry;
use crate::core::settings::Settings;
use crate::core::store;

use super::host::Host;
use super::shared::{SharedData, REGISTRY_KEY};

pub use admission::{Admitted, Captured, Decision, Seen};
use events::Delivery;
use fleet::Fleet;
use notices::Notices;
use slot::{Slot, CAS_ATTEMPTS};

pub struct Worker {
    pub(crate) config: PluginConfig,
    pub(crate) index: HashMap<Vec<u8>, usize>,
    pub(crate) slots: Vec<Slot>,
    /// Whether this worker has already said that the breaker list is full.
    warned_full: bool,
    rng: u64,
    /// The bearer token for control API changes, from the host environment.
    token: Option<String>,
    /// The latest clock reading this worker made (at least every timer tick): good enough
    /// to refuse at a glance while a breaker is well inside its open time.
    pub(crate) clock_ms: u64,
    deliveries: HashMap<u32, Delivery>,
    notices: Notices,
    /// Fleet mode's state in this VM, when the configuration has a `fleet` block.
    pub(crate) fleet: Option<Fleet>,
    /// Whether a request of this worker already waited for a first read of etcd.
    pub(crate) first_read_done: bool,
}

impl Worker {
    pub fn new(host: &impl Host, config: PluginConfig) -> Worker {
        let now_ms = host.now_ms();
        let mut worker = Worker {
            config,
            index: HashMap::new(),
            slots: Vec::new(),
            warned_full: false,
            rng: now_ms | 1,
            token: std::env::var(control::TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
            deliveries: HashMap::new(),
            clock_ms: now_ms,
            notices: Notices::default(),
            fleet: None,
            first_read_done: false,
        };
        worker.fleet = worker
            .config
            .fleet
            .clone()
            .map(|settings| Fleet::new(host, settings));
        let mut named: Vec<String> = worker.config.clusters.keys().cloned().collect();
        named.sort();
        for name in named {
            worker.slot_for(host, name.as_bytes());
        }
        worker
    }

    pub fn settings(&self, slot: usize) -> Option<&Settings> {
        self.slots.get(slot).map(|s| &s.settings)
    }

    /// The slot of the breaker named `name`, created (and registered process-wide) on
    /// first sight.
    pub fn slot_for(&mut self, host: &impl Host, name: &[u8]) -> Option<usize> {
        if let Some(i) = self.index.get(name) {
            return Some(*i);
        }
        let text = std::str::from_utf8(name).ok()?;
        let settings = self.settings_for_breaker(text).clone();
        if !self.register(host, text, "", usize::MAX) {
            return None;
        }
        Some(self.add_slot(host, text, settings))
    }

    /// The slot of the breaker for `route` inside the cluster of slot `cluster`; the
    /// cluster's own breaker when the route has no name or the cluster's cap is reached.
    pub fn route_slot(&mut self, host: &impl Host, cluster: usize, route: &[u8]) -> usize {
        let Some(parent) = self.slots.get(cluster) else {
            return cluster;
        };
        let (Ok(route), Some(limit)) = (
            std::str::from_utf8(route),
            parent.settings.max_route_breakers,
        ) else {
            return cluster;
        };
        if route.is_empty() {
            return cluster;
        }
        let name = format!("{}/{route}", parent.name);
        if let Some(i) = self.index.get(name.as_bytes()) {
            return *i;
        }
        let prefix = format!("{}/", parent.name);
        let settings = parent.settings.clone();
        if !self.register(host, &name, &prefix, limit as usize) {
            return cluster;
        }
        self.add_slot(host, &name, settings)
    }

    /// Settings of a breaker by name: a configured cluster, else the cluster a route
    /// breaker belongs to, else the default.
    fn settings_for_breaker(&self, name: &str) -> &Settings {
        if let Some(s) = self.config.clusters.get(name) {
            return s;
        }
        for (at, _) in name.match_indices('/') {
            let s = self.config.settings_for(&name[..at]);
            if s.max_route_breakers.is_some() {
                return s;
            }
        }
        &self.config.default
    }

    fn add_slot(&mut self, host: &impl Host, name: &str, settings: Settings) -> usize {
        let events_on = self.config.events.is_some();
        let slot = Slot::load(host, name, settings, events_on, self.clock_ms);
        self.slots.push(slot);
        let i = self.slots.len() - 1;
        self.index.insert(name.as_bytes().to_vec(), i);
        i
    }

    /// Adds `name` to the process-wide list; false if it cannot be tracked.
    pub(crate) fn register(
        &mut self,
        host: &impl Host,
        name: &str,
        prefix: &str,
        limit: usize,
    ) -> bool {
        let result =
            store::compare_and_swap(&SharedData(host), REGISTRY_KEY, b"", CAS_ATTEMPTS, |b| {
                match registry::with_limited(b, name, prefix, limit) {
                    Ok(write) => (Ok(()), write),
                    Err(refused) => (Err(refused), None),
                }
            });
        match result {
            Ok(Ok(())) => true,
            Ok(Err(registry::Refused::Full)) if prefix.is_empty() => {
                if !self.warned_full {
                    self.warned_full = true;
                    log::warn!(
                        "[CIRCUIT_BREAKER] {} breakers exist already; {name} passes through unprotected",
                        registry::MAX_BREAKERS
                    );
                }
                false
            }
            Ok(Err(_)) => false,
            // The list only serves timers and views; the breaker itself still works.
            Err(_) => true,
        }
    }

    /// The names in the process-wide list, as stored.
    pub(crate) fn listed(host: &impl Host) -> Vec<String> {
        match host.shared_data(REGISTRY_KEY) {
            Ok(Some((bytes, _))) => registry::names(&bytes),
            _ => Vec::new(),
        }
    }

    /// The timer: publishes stats, writes batched successes and lets time and modes move
    /// every breaker in the process, including ones this worker has not served.
    pub fn tick(&mut self, host: &impl Host, now_ms: u64) {
        self.clock_ms = now_ms;
        let listed = Worker::listed(host);
        for name in &listed {
            self.slot_for(host, name.as_bytes());
        }
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            slot.metrics.flush(host);
            let _ = slot.write(host, now_ms, |r, s| breaker::tick(r, s, now_ms));
            slot.metrics.state(host, slot.last_seen.state);
            slot.metrics
                .rates(host, &slot.last_seen.counts(&slot.settings, now_ms));
            slot.log_dry_run(now_ms);
            self.tell_others(host, i);
        }
        let unlisted: Vec<String> = self
            .slots
            .iter()
            .filter(|s| !listed.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        for name in unlisted {
            self.register(host, &name, "", usize::MAX);
        }
        self.deliver_events(host);
        self.fleet_tick(host, now_ms);
    }
}
