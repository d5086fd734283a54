//! One thread's view of the breakers: the configured settings, the freshest record it has
//! seen per breaker, successes not yet written, answers cached for fallback, and pending
//! stats. Each callback reads the host once and hands the decision to the core;
//! transitions are announced here, once, by the worker whose compare-and-swap made them.

use std::collections::HashMap;

use crate::core::breaker::{self, Admission, Call, RejectKind, Rejection, Step, Tally, Ticket};
use crate::core::cache::{Entry, ResponseCache};
use crate::core::config::PluginConfig;
use crate::core::outcome::{Outcome, StreamEnd};
use crate::core::registry;
use crate::core::reply::RejectReply;
use crate::core::settings::{Mode, Settings};
use crate::core::state::{Record, State, Transition};
use crate::core::store::{self, StateStore, Updated};

use super::host::{self, Level};
use super::metrics::{Counted, Metrics};
use super::shared::{record_key, SharedData, REGISTRY_KEY};

/// Compare-and-swap attempts before a write gives up; contention between a handful of
/// workers settles in two or three.
const CAS_ATTEMPTS: u32 = 16;
/// Shortest gap between two dry-run summary lines for one breaker.
const DRY_RUN_LOG_EVERY_MS: u64 = 10_000;

/// A local answer.
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub grpc_status: Option<u32>,
}

/// What to do with a request.
pub enum Decision {
    Admitted(Ticket),
    /// Let through untracked: the mode is `disabled` or `dry_run`, or the state store
    /// failed while the breaker was last seen closed.
    Pass,
    Reject(Reply),
}

/// A response captured for the fallback cache.
pub struct Captured {
    pub key: String,
    pub status: u32,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// One breaker as this worker knows it.
struct Slot {
    name: String,
    key: String,
    settings: Settings,
    last_seen: Record,
    tally: Tally,
    metrics: Metrics,
    reply: RejectReply,
    cache: Option<ResponseCache>,
    dry_run_unlogged: u64,
    dry_run_logged_at_ms: u64,
}

pub struct Worker {
    config: PluginConfig,
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Slot>,
    /// Whether this worker has already said that the breaker list is full.
    warned_full: bool,
    rng: u64,
}

impl Worker {
    pub fn new(config: PluginConfig) -> Worker {
        let mut worker = Worker {
            config,
            index: HashMap::new(),
            slots: Vec::new(),
            warned_full: false,
            rng: host::now_ms() | 1,
        };
        let mut named: Vec<String> = worker.config.clusters.keys().cloned().collect();
        named.sort();
        for name in named {
            worker.slot_for(name.as_bytes());
        }
        worker
    }

    pub fn settings(&self, slot: usize) -> Option<&Settings> {
        self.slots.get(slot).map(|s| &s.settings)
    }

    /// The slot of the breaker named `name`, created (and registered process-wide) on
    /// first sight.
    pub fn slot_for(&mut self, name: &[u8]) -> Option<usize> {
        if let Some(i) = self.index.get(name) {
            return Some(*i);
        }
        let text = std::str::from_utf8(name).ok()?;
        let settings = self.settings_for_breaker(text).clone();
        if !self.register(text, "", usize::MAX) {
            return None;
        }
        Some(self.add_slot(text, settings))
    }

    /// The slot of the breaker for `route` inside the cluster of slot `cluster`; the
    /// cluster's own breaker when the route has no name or the cluster's cap is reached.
    pub fn route_slot(&mut self, cluster: usize, route: &[u8]) -> usize {
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
        if !self.register(&name, &prefix, limit as usize) {
            return cluster;
        }
        self.add_slot(&name, settings)
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

    fn add_slot(&mut self, name: &str, settings: Settings) -> usize {
        let key = record_key(name);
        let last_seen = store::load(&SharedData, &key)
            .map(|l| l.record)
            .unwrap_or_default();
        let slot = Slot {
            name: name.to_string(),
            reply: RejectReply::new(name, settings.fallback.as_ref()),
            cache: settings.cache.map(ResponseCache::new),
            metrics: Metrics::define(name),
            settings,
            last_seen,
            tally: Tally::default(),
            key,
            dry_run_unlogged: 0,
            dry_run_logged_at_ms: 0,
        };
        slot.metrics.state(slot.last_seen.state);
        self.slots.push(slot);
        let i = self.slots.len() - 1;
        self.index.insert(name.as_bytes().to_vec(), i);
        i
    }

    /// Adds `name` to the process-wide list; false if it cannot be tracked.
    fn register(&mut self, name: &str, prefix: &str, limit: usize) -> bool {
        let result = store::compare_and_swap(&SharedData, REGISTRY_KEY, b"", CAS_ATTEMPTS, |b| {
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
                    host::log(
                        Level::Warn,
                        &format!(
                            "[CIRCUIT_BREAKER] {} breakers exist already; {name} passes through unprotected",
                            registry::MAX_BREAKERS
                        ),
                    );
                }
                false
            }
            Ok(Err(_)) => false,
            // The list only serves timers and views; the breaker itself still works.
            Err(_) => true,
        }
    }

    fn roll(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 32) as u32
    }

    /// Decides whether a request to slot `i` goes upstream. `grpc` shapes a refusal for a
    /// gRPC caller; `cache_key` is the path of a GET that a cached answer may serve.
    pub fn admit(
        &mut self,
        i: usize,
        now_ms: u64,
        grpc: bool,
        cache_key: Option<&str>,
    ) -> Decision {
        let roll = self.roll();
        let Some(slot) = self.slots.get_mut(i) else {
            return Decision::Pass;
        };
        let settings = &slot.settings;
        let result = store::update(&SharedData, &slot.key, CAS_ATTEMPTS, |r| {
            breaker::admit(r, settings, now_ms, roll)
        });
        let admission = match result {
            Ok(updated) => {
                let admission = updated.value;
                slot.absorb(updated);
                admission
            }
            Err(_) => {
                slot.metrics.store_give_up();
                match slot.last_seen.state {
                    State::Closed => return Decision::Pass,
                    state => Admission::Rejected(Rejection {
                        kind: if state == State::Open {
                            RejectKind::Open
                        } else {
                            RejectKind::HalfOpen
                        },
                        reason: slot.last_seen.reason,
                        retry_after_ms: 1_000,
                    }),
                }
            }
        };
        match admission {
            Admission::Admitted(ticket) => {
                if ticket.probe {
                    slot.metrics.count(Counted::Probe);
                }
                Decision::Admitted(ticket)
            }
            Admission::Passed { would_reject } => {
                if would_reject.is_some() {
                    slot.metrics.count(Counted::WouldReject);
                    slot.dry_run_unlogged += 1;
                }
                Decision::Pass
            }
            Admission::Rejected(rejection) => {
                slot.metrics.count(Counted::Rejected);
                let cached = match (&slot.cache, cache_key) {
                    (Some(cache), Some(key)) if !grpc => cache.get(key, now_ms),
                    _ => None,
                };
                if let Some((entry, age_secs)) = cached {
                    return Decision::Reject(cached_reply(entry, age_secs, &rejection));
                }
                let answer = slot.reply.render(&rejection, grpc);
                Decision::Reject(Reply {
                    status: answer.status,
                    headers: answer.headers,
                    body: answer.body.into_bytes(),
                    grpc_status: answer.grpc_status,
                })
            }
        }
    }

    /// Whether the response to a GET of `key` should be captured for the cache.
    pub fn wants_capture(&self, i: usize, key: &str, now_ms: u64) -> bool {
        self.slots
            .get(i)
            .and_then(|s| s.cache.as_ref())
            .is_some_and(|c| c.wants(key, now_ms))
    }

    /// Records how a request admitted with `ticket` ended.
    pub fn record(
        &mut self,
        i: usize,
        ticket: Ticket,
        end: StreamEnd,
        started_ms: u64,
        retry_after: Option<&[u8]>,
        captured: Option<Captured>,
    ) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let outcome = slot.settings.classifier.classify(end);
        let needs_clock = slot.settings.slow_call_rate_threshold > 0.0
            || retry_after.is_some()
            || captured.is_some();
        let mut now_ms = needs_clock.then(host::now_ms);
        let call = Call {
            outcome,
            elapsed_ms: now_ms.map_or(0, |now| now.saturating_sub(started_ms)),
            retry_after_ms: retry_after.and_then(|v| {
                let now = now_ms.unwrap_or(0);
                crate::core::retry_after::parse(std::str::from_utf8(v).ok()?, now)
            }),
        };
        slot.metrics.count(match outcome {
            Outcome::Success if slot.settings.is_slow(call.elapsed_ms) => Counted::Slow,
            Outcome::Success => Counted::Success,
            Outcome::Failure(_) => Counted::Failure,
            Outcome::Ignored => Counted::Ignored,
        });
        if let (Some(c), Some(cache), Outcome::Success, Some(now)) =
            (captured, &mut slot.cache, outcome, now_ms)
        {
            cache.put(
                &c.key,
                Entry {
                    stored_at_ms: now,
                    status: c.status,
                    content_type: c.content_type,
                    body: c.body,
                },
            );
        }
        if Tally::can_defer(&slot.last_seen, &slot.settings, ticket, &call) {
            slot.tally.defer(ticket.generation);
            return;
        }
        if outcome == Outcome::Ignored && !ticket.probe {
            return;
        }
        let now = *now_ms.get_or_insert_with(host::now_ms);
        slot.write(now, |r, s| breaker::record(r, s, ticket, call, now));
    }

    /// The timer: publishes stats, writes batched successes and lets time and modes move
    /// every breaker in the process, including ones this worker has not served.
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
            slot.metrics
                .rates(&slot.last_seen.counts(&slot.settings, now_ms));
            slot.log_dry_run(now_ms);
        }
        let unlisted: Vec<String> = self
            .slots
            .iter()
            .filter(|s| !listed.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        for name in unlisted {
            self.register(&name, "", usize::MAX);
        }
    }
}

fn cached_reply(entry: &Entry, age_secs: u64, rejection: &Rejection) -> Reply {
    let mut headers = vec![
        (
            "x-circuit-breaker".to_string(),
            rejection.kind.as_str().to_string(),
        ),
        ("x-circuit-breaker-cache".to_string(), "hit".to_string()),
        ("age".to_string(), age_secs.to_string()),
    ];
    if let Some(ct) = &entry.content_type {
        headers.push(("content-type".to_string(), ct.clone()));
    }
    Reply {
        status: entry.status,
        headers,
        body: entry.body.clone(),
        grpc_status: None,
    }
}

impl Slot {
    /// Writes a change through compare-and-swap, folding in the batched successes first.
    fn write(&mut self, now_ms: u64, decide: impl Fn(&mut Record, &Settings) -> Step<()>) {
        let pending = std::mem::take(&mut self.tally);
        let settings = &self.settings;
        let result = store::update(&SharedData, &self.key, CAS_ATTEMPTS, |r| {
            let folded = pending.fold_into(r, settings, now_ms);
            let mut step = decide(r, settings);
            step.dirty |= folded;
            step
        });
        match result {
            Ok(updated) => self.absorb(updated),
            Err(_) => {
                self.tally.restore(pending);
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
            self.announce(t, updated.record.mode(&self.settings));
        }
        self.last_seen = updated.record;
    }

    fn announce(&self, t: &Transition, mode: Mode) {
        let mut line = t.log_line(&self.name);
        if mode == Mode::DryRun && t.to != State::Closed {
            line.push_str(" [dry run: nothing is refused]");
        }
        host::log(Level::Info, &line);
        self.metrics.transition(t);
    }

    fn log_dry_run(&mut self, now_ms: u64) {
        if self.dry_run_unlogged == 0
            || now_ms.saturating_sub(self.dry_run_logged_at_ms) < DRY_RUN_LOG_EVERY_MS
        {
            return;
        }
        host::log(
            Level::Info,
            &format!(
                "[CIRCUIT_BREAKER] {} circuit breaker [dry run] would have refused {} request(s) since the last report; state {}",
                self.name,
                self.dry_run_unlogged,
                self.last_seen.state.shout()
            ),
        );
        self.dry_run_unlogged = 0;
        self.dry_run_logged_at_ms = now_ms;
    }
}
