//! The breakers one worker knows, by name: created on first sight with the configured
//! settings and registered in the process-wide list, their copies of the shared records
//! kept fresh by other workers' notices, and moved on by the timer.

use std::collections::{HashMap, HashSet};

use crate::core::breaker;
use crate::core::config::PluginConfig;
use crate::core::registry;
use crate::core::settings::Settings;
use crate::core::store;

use crate::filter::host::Host;
use crate::filter::shared::{SharedData, CAS_ATTEMPTS, REGISTRY_KEY};

use super::breaker::Breaker;
use super::notices::{Notices, MAX_DRAIN};

pub struct Breakers {
    config: PluginConfig,
    index: HashMap<Vec<u8>, usize>,
    list: Vec<Breaker>,
    /// Whether this worker has already said that the breaker list is full.
    warned_full: bool,
    /// The latest clock reading this worker made (at least every timer tick): good enough
    /// to refuse at a glance while a breaker is well inside its open time.
    pub clock_ms: u64,
    notices: Notices,
    /// When the process-wide list was last read for breakers other workers met.
    synced_at_ms: Option<u64>,
    /// The next copy the sweep reads again (see [`SWEEP_PASS_SYNCS`]).
    swept: usize,
}

/// How often the timer reads the process-wide list for breakers other workers met: a new
/// breaker needs nothing from this worker until its records say so, and it loads the
/// record itself at its first request.
const SYNC_EVERY_MS: u64 = 1_000;

/// Each sync also reads again a share of the copies the timer leaves alone, so that all
/// of them are read once in this many syncs (10 s). The worker that last wrote a record
/// keeps its timer on it while time can move it; this is the backstop for a worker that
/// died holding, say, a probe claim, whose record must still move on by time.
const SWEEP_PASS_SYNCS: usize = 10;

impl Breakers {
    /// The configured breakers, loaded as stored now.
    pub fn new(host: &impl Host, config: PluginConfig, now_ms: u64) -> Breakers {
        let mut breakers = Breakers {
            config,
            index: HashMap::new(),
            list: Vec::new(),
            warned_full: false,
            clock_ms: now_ms,
            notices: Notices::default(),
            synced_at_ms: None,
            swept: 0,
        };
        let mut named: Vec<String> = breakers.config.clusters.keys().cloned().collect();
        named.sort();
        for name in named {
            breakers.named(host, name.as_bytes());
        }
        breakers
    }

    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    pub fn get(&self, i: usize) -> Option<&Breaker> {
        self.list.get(i)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Breaker> {
        self.list.get_mut(i)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The place of the breaker named `name`, if this worker has met it.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The breaker named `name`, created (and registered process-wide) on first sight.
    pub fn named(&mut self, host: &impl Host, name: &[u8]) -> Option<usize> {
        if let Some(i) = self.index.get(name) {
            return Some(*i);
        }
        let text = std::str::from_utf8(name).ok()?;
        let settings = self.settings_for_breaker(text).clone();
        if !self.register(host, text, "", usize::MAX) {
            return None;
        }
        Some(self.add(host, text, settings))
    }

    /// The breaker for `route` inside the cluster of breaker `cluster`; the cluster's own
    /// breaker when the route has no name or the cluster's cap is reached.
    pub fn route(&mut self, host: &impl Host, cluster: usize, route: &[u8]) -> usize {
        let Some(parent) = self.list.get(cluster) else {
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
        self.add(host, &name, settings)
    }

    /// Whether `name` has settings of its own in the configuration.
    pub fn is_configured(&self, name: &str) -> bool {
        self.config.clusters.contains_key(name)
    }

    /// The Envoy cluster breaker `name` guards: its own name, or for a route breaker
    /// (`<cluster>/<route>`) the cluster it belongs to, found as its settings are.
    pub fn cluster_of<'a>(&self, name: &'a str) -> &'a str {
        if self.is_configured(name) {
            return name;
        }
        name.match_indices('/')
            .map(|(at, _)| &name[..at])
            .find(|c| self.config.settings_for(c).max_route_breakers.is_some())
            .unwrap_or(name)
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

    fn add(&mut self, host: &impl Host, name: &str, settings: Settings) -> usize {
        let events_on = self.config.events.is_some();
        let breaker = Breaker::load(host, name, settings, events_on, self.clock_ms);
        self.list.push(breaker);
        let i = self.list.len() - 1;
        self.index.insert(name.as_bytes().to_vec(), i);
        i
    }

    /// Adds `name` to the process-wide list; false if it cannot be tracked.
    fn register(&mut self, host: &impl Host, name: &str, prefix: &str, limit: usize) -> bool {
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
    pub fn listed(host: &impl Host) -> Vec<String> {
        match host.shared_data(REGISTRY_KEY) {
            Ok(Some((bytes, _))) => registry::names(&bytes),
            _ => Vec::new(),
        }
    }

    /// Registers this worker's queue, once, from its first request: the main thread's root
    /// contexts tick but never serve requests, so they never register and never need to be
    /// told.
    pub fn listen(&mut self, host: &impl Host) {
        if self.notices.listen(host) {
            // A transition made before the queue was listed was told to no one here: every
            // copy must be read again before it is trusted.
            for breaker in &mut self.list {
                breaker.confirmed_at_ms = 0;
            }
        }
    }

    /// Whether other workers' transitions reach this worker by notice, so its copies may
    /// be trusted at all.
    pub fn is_listening(&self) -> bool {
        self.notices.own().is_some()
    }

    /// The token of this worker's queue, once registered.
    pub fn queue(&self) -> Option<u32> {
        self.notices.own()
    }

    /// Tells every other worker that breaker `i` moved, if this worker moved it.
    pub fn tell_others(&mut self, host: &impl Host, i: usize) {
        let Some(breaker) = self.list.get_mut(i) else {
            return;
        };
        // Without a fleet nobody claims the move; with one, the claim took these already.
        breaker.unpublished = None;
        breaker.mode_unpublished = false;
        if std::mem::take(&mut breaker.moved) {
            self.notices.tell(host, &breaker.name);
        }
    }

    /// Wakes this worker's own root context about breaker `name`.
    pub fn wake_self(&self, host: &impl Host, name: &str) {
        self.notices.wake_self(host, name);
    }

    /// The host woke this worker: refresh the copies of the breakers named on the queue.
    pub fn drain(&mut self, host: &impl Host, token: u32, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        for _ in 0..MAX_DRAIN {
            let Ok(Some(name)) = host.dequeue(token) else {
                return;
            };
            if let Some(breaker) = self.index.get(&name).and_then(|i| self.list.get_mut(*i)) {
                breaker.refresh(host, now_ms);
            }
        }
    }

    /// The timer: publishes stats, writes batched successes and lets time and modes move
    /// the breakers that need it (every breaker when `every`); an idle breaker costs
    /// nothing. Returns the breakers it looked at, for the caller to tell the others of any
    /// move.
    pub fn tick(&mut self, host: &impl Host, now_ms: u64, every: bool) -> Vec<usize> {
        self.clock_ms = now_ms;
        if self
            .synced_at_ms
            .map_or(true, |at| now_ms.saturating_sub(at) >= SYNC_EVERY_MS)
        {
            self.synced_at_ms = Some(now_ms);
            self.sync(host);
            self.sweep(host, now_ms);
        }
        let mut looked = Vec::new();
        for (i, breaker) in self.list.iter_mut().enumerate() {
            if !every && !breaker.needs_timer(now_ms) {
                continue;
            }
            let counted = breaker.metrics.flush(host);
            breaker.add_to_timeline(host, &counted, now_ms);
            let _ = breaker.write(host, now_ms, |r, s| breaker::tick(r, s, now_ms));
            breaker.publish_gauges(host, now_ms);
            breaker.log_dry_run(now_ms);
            looked.push(i);
        }
        looked
    }

    /// Whether any breaker needs the timer before `at_ms`.
    pub fn need_timer_by(&self, at_ms: u64) -> bool {
        self.list.iter().any(|b| b.needs_timer(at_ms))
    }

    /// Reads again the next share of the copies (see [`SWEEP_PASS_SYNCS`]).
    fn sweep(&mut self, host: &impl Host, now_ms: u64) {
        let n = self.list.len();
        for _ in 0..n.div_ceil(SWEEP_PASS_SYNCS) {
            self.swept = if self.swept + 1 < n {
                self.swept + 1
            } else {
                0
            };
            if let Some(breaker) = self.list.get_mut(self.swept) {
                if !breaker.needs_timer(now_ms) {
                    breaker.refresh(host, now_ms);
                }
            }
        }
    }

    /// Meets the breakers other workers listed, and lists again any of this worker's that
    /// the list lost.
    fn sync(&mut self, host: &impl Host) {
        let listed = Breakers::listed(host);
        for name in &listed {
            self.named(host, name.as_bytes());
        }
        let listed: HashSet<&str> = listed.iter().map(String::as_str).collect();
        let unlisted: Vec<String> = self
            .list
            .iter()
            .filter(|b| !listed.contains(b.name.as_str()))
            .map(|b| b.name.clone())
            .collect();
        for name in unlisted {
            self.register(host, &name, "", usize::MAX);
        }
    }
}
