//! One thread's view of the breakers: the configured settings, the freshest record it has
//! seen per breaker, successes not yet written, answers cached for fallback, and pending
//! stats. Each callback reads the host once and hands the decision to the core;
//! transitions are announced here, once, by the worker whose compare-and-swap made them.

use std::collections::HashMap;

use crate::core::breaker::{self, Admission, Call, Rejection, Step, Tally, Ticket};
use crate::core::cache::{Entry, ResponseCache};
use crate::core::codec::{self, Glance};
use crate::core::config::{EventsTarget, PluginConfig};
use crate::core::control::{self, ApiError, Command};
use crate::core::history::{self, Event};
use crate::core::outcome::{Outcome, StreamEnd};
use crate::core::registry;
use crate::core::reply::RejectReply;
use crate::core::settings::{Mode, Settings};
use crate::core::state::{Record, State, Transition, TripReason};
use crate::core::store::{self, StateStore, Updated};
use crate::core::view;

use super::host::{self, Level};
use super::metrics::{Counted, Metrics};
use super::shared::{history_key, record_key, SharedData, REGISTRY_KEY};

/// Compare-and-swap attempts before a write gives up; contention between a handful of
/// workers settles in two or three.
const CAS_ATTEMPTS: u32 = 16;
/// Shortest gap between two dry-run summary lines for one breaker.
const DRY_RUN_LOG_EVERY_MS: u64 = 10_000;
/// Event deliveries awaiting an answer, at most; beyond, new events count as failed.
const MAX_DELIVERIES_IN_FLIGHT: usize = 1_024;

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

/// What the filter saw of a response before `on_log`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    /// `:status` of the response headers; 0 if none passed the filter.
    pub status: u32,
    /// `grpc-status`, from the headers of a trailers-only answer or from the trailers.
    pub grpc_status: Option<u32>,
    /// Whether the response reached its end (an end-of-stream flag or trailers).
    pub complete: bool,
}

/// Property paths, NUL-separated as the ABI wants them.
const RESPONSE_CODE: &[u8] = b"response\0code";
const RESPONSE_FLAGS: &[u8] = b"response\0flags";

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
    /// The freshest header of the record: updated by every admission, read or write.
    glance: Glance,
    tally: Tally,
    metrics: Metrics,
    reply: RejectReply,
    cache: Option<ResponseCache>,
    dry_run_unlogged: u64,
    dry_run_logged_at_ms: u64,
    /// Events this worker made, waiting for the timer to deliver them.
    outbox: Vec<Event>,
    events_on: bool,
}

/// An event sent to the webhook, by delivery token.
struct Delivery {
    slot: usize,
}

pub struct Worker {
    config: PluginConfig,
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Slot>,
    /// Whether this worker has already said that the breaker list is full.
    warned_full: bool,
    rng: u64,
    /// The bearer token for control API changes, from the host environment.
    token: Option<String>,
    /// The latest clock reading this worker made (at least every timer tick): good enough
    /// to refuse at a glance while a breaker is well inside its open time.
    clock_ms: u64,
    deliveries: HashMap<u32, Delivery>,
}

impl Worker {
    pub fn new(config: PluginConfig) -> Worker {
        let mut worker = Worker {
            config,
            index: HashMap::new(),
            slots: Vec::new(),
            warned_full: false,
            rng: host::now_ms() | 1,
            token: std::env::var(control::TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
            deliveries: HashMap::new(),
            clock_ms: host::now_ms(),
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
            glance: Glance::of(&last_seen),
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
            outbox: Vec::new(),
            events_on: self.config.events.is_some(),
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

    /// Decides whether a request to slot `i` goes upstream. A glance at the stored record
    /// settles the common cases with one shared-data read and the clock of the last tick;
    /// only the others read the clock and go through compare-and-swap. `grpc` says whether
    /// the caller speaks gRPC (asked only to shape a refusal); `cache_key` is the path of a
    /// GET that a cached answer may serve.
    pub fn admit(
        &mut self,
        i: usize,
        grpc: impl FnOnce() -> bool,
        cache_key: Option<&str>,
    ) -> Decision {
        let roll = self.roll();
        let coarse_ms = self.clock_ms;
        let Some(slot) = self.slots.get_mut(i) else {
            return Decision::Pass;
        };
        let quick = match SharedData.load(&slot.key) {
            Ok(Some((bytes, _))) => codec::glance(&bytes).and_then(|g| {
                slot.glance = g;
                breaker::admit_at_a_glance(&g, &slot.settings, coarse_ms)
            }),
            _ => None,
        };
        let (admission, now_ms) = match quick {
            // The glance settled it; a refusal still tells the caller the time left to the
            // millisecond, so it reads the clock (a read, not a write).
            Some(Admission::Rejected(mut refusal))
                if slot.glance.reason != Some(TripReason::Forced) =>
            {
                let now_ms = host::now_ms();
                self.clock_ms = now_ms;
                refusal.retry_after_ms = slot.glance.open_until_ms.saturating_sub(now_ms);
                (Admission::Rejected(refusal), now_ms)
            }
            Some(admission) => (admission, coarse_ms),
            None => {
                let now_ms = host::now_ms();
                self.clock_ms = now_ms;
                let settings = &slot.settings;
                let result = store::update(&SharedData, &slot.key, CAS_ATTEMPTS, |r| {
                    breaker::admit(r, settings, now_ms, roll)
                });
                match result {
                    Ok(updated) => {
                        let admission = updated.value;
                        slot.absorb(updated);
                        (admission, now_ms)
                    }
                    Err(_) => {
                        slot.metrics.store_give_up();
                        (
                            breaker::when_store_fails(&slot.glance, &slot.settings),
                            now_ms,
                        )
                    }
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
                let grpc = grpc();
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

    /// Records how a request admitted with `ticket` ended. The response flags (and code, if
    /// no response headers came by) are read only when what was seen does not already say
    /// success.
    pub fn record(
        &mut self,
        i: usize,
        ticket: Ticket,
        seen: Seen,
        started_ms: u64,
        retry_after: Option<&[u8]>,
        captured: Option<Captured>,
    ) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let classifier = &slot.settings.classifier;
        let outcome = classifier
            .success_without_flags(seen.status, seen.grpc_status, seen.complete)
            .unwrap_or_else(|| {
                let status = match seen.status {
                    0 => host::property_u64(RESPONSE_CODE)
                        .ok()
                        .flatten()
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(0),
                    s => s,
                };
                let flags = host::property_u64(RESPONSE_FLAGS)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                classifier.classify(StreamEnd {
                    status,
                    flags,
                    grpc_status: seen.grpc_status,
                })
            });
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
        if Tally::can_defer(&slot.glance, &slot.settings, ticket, &call) {
            slot.tally.defer(ticket.generation);
            return;
        }
        if outcome == Outcome::Ignored && !ticket.probe {
            return;
        }
        let now = *now_ms.get_or_insert_with(host::now_ms);
        self.clock_ms = now;
        let _ = slot.write(now, |r, s| breaker::record(r, s, ticket, call, now));
    }

    /// Runs a control API command against the shared state; the caller has checked the
    /// token for commands that change anything. Answers with status, content type, body.
    pub fn control(
        &mut self,
        command: &Command,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(u32, &'static str, String), ApiError> {
        let names = self.registered();
        if let Some(name) = command.breaker() {
            if !names.iter().any(|n| n == name) {
                return Err(ApiError::not_found(format!(
                    "no circuit breaker named {name:?}; known: {}",
                    names.join(", ")
                )));
            }
        }
        let json = |v: serde_json::Value| Ok((200, "application/json", v.to_string()));
        match command {
            Command::Dashboard => Ok((
                200,
                "text/html; charset=utf-8",
                control::DASHBOARD_HTML.to_string(),
            )),
            Command::Health => {
                let mut rows = Vec::new();
                for name in &names {
                    if let Some((record, settings, _)) = self.current(name) {
                        rows.push((name.clone(), record, settings));
                    }
                }
                json(view::health(&rows, now_ms))
            }
            Command::List => {
                let views: Vec<_> = names.iter().filter_map(|n| self.view(n, now_ms)).collect();
                json(serde_json::json!({ "circuit_breakers": views }))
            }
            Command::Show(name) => json(self.view(name, now_ms).unwrap_or_default()),
            Command::Reset(name) => {
                self.change(name, now_ms, |r, s| breaker::reset(r, s, now_ms))?;
                json(self.view(name, now_ms).unwrap_or_default())
            }
            Command::ResetAll => {
                for name in &names {
                    self.change(name, now_ms, |r, s| breaker::reset(r, s, now_ms))?;
                }
                json(serde_json::json!({ "reset": names }))
            }
            Command::SetMode(name) => {
                let mode = control::parse_mode(body)?;
                self.change(name, now_ms, |r, s| breaker::set_mode(r, s, mode, now_ms))?;
                json(self.view(name, now_ms).unwrap_or_default())
            }
        }
    }

    /// Whether control API changes are allowed for a caller offering `authorization`.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        control::authorize(self.token.as_deref(), authorization)
    }

    fn registered(&self) -> Vec<String> {
        let mut names = match SharedData.load(REGISTRY_KEY) {
            Ok(Some((bytes, _))) => registry::names(&bytes),
            _ => Vec::new(),
        };
        names.sort();
        names
    }

    /// The record as stored now, with the breaker's settings and history.
    fn current(&mut self, name: &str) -> Option<(Record, Settings, Vec<Event>)> {
        let i = self.slot_for(name.as_bytes())?;
        let slot = &self.slots[i];
        let record = store::load(&SharedData, &slot.key).ok()?.record;
        let history = match SharedData.load(&history_key(name)) {
            Ok(Some((bytes, _))) => history::read(&bytes),
            _ => Vec::new(),
        };
        Some((record, slot.settings.clone(), history))
    }

    fn view(&mut self, name: &str, now_ms: u64) -> Option<serde_json::Value> {
        let (record, settings, history) = self.current(name)?;
        Some(view::breaker(name, &record, &settings, &history, now_ms))
    }

    fn change(
        &mut self,
        name: &str,
        now_ms: u64,
        decide: impl Fn(&mut Record, &Settings) -> Step<()>,
    ) -> Result<(), ApiError> {
        let i = self
            .slot_for(name.as_bytes())
            .ok_or_else(|| ApiError::not_found(format!("no circuit breaker named {name:?}")))?;
        if self.slots[i].write(now_ms, decide) {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "the shared state could not be updated; nothing was changed, try again",
            ))
        }
    }

    /// Sends the events made since the last call to the webhook, if one is configured.
    pub fn deliver_events(&mut self) {
        let Some(target) = self.config.events.clone() else {
            return;
        };
        for i in 0..self.slots.len() {
            for event in std::mem::take(&mut self.slots[i].outbox) {
                match self.send(&target, &event) {
                    Some(token) => {
                        self.deliveries.insert(token, Delivery { slot: i });
                    }
                    None => self.slots[i].metrics.event_delivered(false),
                }
            }
        }
    }

    fn send(&self, target: &EventsTarget, event: &Event) -> Option<u32> {
        if self.deliveries.len() >= MAX_DELIVERIES_IN_FLIGHT {
            return None;
        }
        let body = serde_json::to_vec(event).ok()?;
        let headers = [
            (":method", "POST"),
            (":path", target.path.as_str()),
            (":authority", target.cluster.as_str()),
            ("content-type", "application/json"),
            ("user-agent", "envoy-circuit-breaker"),
        ];
        let timeout = u32::try_from(target.timeout_ms).unwrap_or(u32::MAX);
        host::http_call(&target.cluster, &headers, &body, timeout).ok()
    }

    /// Notes the answer to delivery `token`: a 2xx is delivered, anything else failed.
    pub fn delivered(&mut self, token: u32, status: Option<u32>) {
        if let Some(d) = self.deliveries.remove(&token) {
            if let Some(slot) = self.slots.get(d.slot) {
                slot.metrics
                    .event_delivered(status.is_some_and(|s| (200..300).contains(&s)));
            }
        }
    }

    /// The timer: publishes stats, writes batched successes and lets time and modes move
    /// every breaker in the process, including ones this worker has not served.
    pub fn tick(&mut self, now_ms: u64) {
        self.clock_ms = now_ms;
        let listed = match SharedData.load(REGISTRY_KEY) {
            Ok(Some((bytes, _))) => registry::names(&bytes),
            _ => Vec::new(),
        };
        for name in &listed {
            self.slot_for(name.as_bytes());
        }
        for slot in &mut self.slots {
            slot.metrics.flush();
            let _ = slot.write(now_ms, |r, s| breaker::tick(r, s, now_ms));
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
        self.deliver_events();
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
    /// Writes a change through compare-and-swap, folding in the batched successes first;
    /// false if the store gave up.
    fn write(&mut self, now_ms: u64, decide: impl Fn(&mut Record, &Settings) -> Step<()>) -> bool {
        let pending = std::mem::take(&mut self.tally);
        let settings = &self.settings;
        let result = store::update(&SharedData, &self.key, CAS_ATTEMPTS, |r| {
            let folded = pending.fold_into(r, settings, now_ms);
            let mut step = decide(r, settings);
            step.dirty |= folded;
            step
        });
        match result {
            Ok(updated) => {
                self.absorb(updated);
                true
            }
            Err(_) => {
                self.tally.restore(pending);
                self.metrics.store_give_up();
                false
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
        self.glance = Glance::of(&updated.record);
        self.last_seen = updated.record;
    }

    /// Everything that hangs off a transition: the log line, stats, the stored history and
    /// the webhook event. Only the worker whose compare-and-swap made it gets here.
    fn announce(&mut self, t: &Transition, mode: Mode) {
        let mut line = t.log_line(&self.name);
        if mode == Mode::DryRun && t.to != State::Closed {
            line.push_str(" [dry run: nothing is refused]");
        }
        host::log(Level::Info, &line);
        self.metrics.transition(t);
        let event = Event::of(&self.name, t);
        let _ = store::compare_and_swap(
            &SharedData,
            &history_key(&self.name),
            b"[]",
            CAS_ATTEMPTS,
            |b| ((), Some(history::with(b, &event))),
        );
        if self.events_on {
            self.outbox.push(event);
        }
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
