//! One breaker as a worker knows it: its settings, its copy of the shared record, batched
//! successes, stats and replies; and the one place a transition this worker made is
//! announced (log line, stats, stored history, webhook event).

use crate::core::breaker::{next_timer_ms, Step, SuccessBatch};
use crate::core::cache::ResponseCache;
use crate::core::codec::RecordHeader;
use crate::core::headroom;
use crate::core::history::{self, Event};
use crate::core::limits::TIMELINE_WRITE_EVERY_MS;
use crate::core::reply::RejectReply;
use crate::core::settings::{Mode, Settings};
use crate::core::state::{Record, State, Transition};
use crate::core::store::{self, Updated};
use crate::core::timeline::{Timeline, Traffic};

use crate::filter::host::Host;
use crate::filter::metrics::Metrics;
use crate::filter::shared::{history_key, record_key, timeline_key, SharedData, CAS_ATTEMPTS};
/// Shortest gap between two dry-run summary lines for one breaker.
const DRY_RUN_LOG_EVERY_MS: u64 = 10_000;

pub struct Breaker {
    pub name: String,
    pub key: String,
    pub settings: Settings,
    pub last_seen: Record,
    /// This worker's copy of the record's header: refreshed by every read or write of the
    /// shared record, every timer tick and every notice from another worker.
    pub header: RecordHeader,
    /// When [`Breaker::header`] was last confirmed against the shared record (worker clock).
    pub confirmed_at_ms: u64,
    /// When time alone could next move [`Breaker::last_seen`] or its rates (see
    /// [`next_timer_ms`]); `None`: not before some worker writes the record again, and the
    /// worker that writes it has the fresh copy and so the timer.
    timer_at_ms: Option<u64>,
    /// Set when this worker made a transition the other workers have not been told of.
    pub moved: bool,
    /// Fleet mode: this worker need not read the breaker's decision from etcd before a
    /// request (the process has it, or etcd is out of reach).
    pub fleet_settled: bool,
    /// Successes admitted here and not yet written to the shared record.
    pub batch: SuccessBatch,
    /// Counted here and not yet added to the breaker's timeline, and when it is due.
    untold: Traffic,
    untold_due_ms: u64,
    /// Requests this worker admitted (not as probes) whose outcome is not recorded yet.
    pub in_flight: u32,
    pub metrics: Metrics,
    pub reply: RejectReply,
    pub cache: Option<ResponseCache>,
    pub dry_run_unlogged: u64,
    dry_run_logged_at_ms: u64,
    /// Events this worker made, waiting for the timer to deliver them.
    pub outbox: Vec<Event>,
    /// The latest transition this worker made and has not yet handed to the fleet, with
    /// the record's mode override and trip reason after it.
    pub unpublished: Option<(
        Transition,
        Option<Mode>,
        Option<crate::core::state::TripReason>,
    )>,
    /// An operator changed the mode override here without a change of state, and the fleet
    /// has not been told.
    pub mode_unpublished: bool,
    events_on: bool,
}

impl Breaker {
    /// A breaker as stored now, with its stats defined.
    pub fn load(
        host: &impl Host,
        name: &str,
        settings: Settings,
        events_on: bool,
        now_ms: u64,
    ) -> Breaker {
        let key = record_key(name);
        let last_seen = store::load(&SharedData(host), &key)
            .map(|l| l.record)
            .unwrap_or_default();
        let mut breaker = Breaker {
            header: RecordHeader::of(&last_seen),
            confirmed_at_ms: now_ms,
            timer_at_ms: None,
            moved: false,
            fleet_settled: false,
            name: name.to_string(),
            reply: RejectReply::new(name, settings.fallback.as_ref()),
            cache: settings.cache.map(ResponseCache::new),
            metrics: Metrics::define(host, name),
            settings,
            last_seen,
            batch: SuccessBatch::default(),
            untold: Traffic::default(),
            untold_due_ms: 0,
            in_flight: 0,
            key,
            dry_run_unlogged: 0,
            dry_run_logged_at_ms: 0,
            outbox: Vec::new(),
            unpublished: None,
            mode_unpublished: false,
            events_on,
        };
        breaker.metrics.state(host, breaker.last_seen.state);
        breaker.aim_timer(now_ms);
        breaker
    }

    /// Whether this worker's timer has work on this breaker at `now_ms`: successes or
    /// counts to hand on, requests out (whose copy the timer keeps confirmed), a dry-run
    /// summary owed, events to deliver, or time moving the record.
    pub fn needs_timer(&self, now_ms: u64) -> bool {
        !self.batch.is_empty()
            || self.metrics.has_pending()
            || (!self.untold.is_empty() && self.untold_due_ms <= now_ms)
            || self.in_flight > 0
            || self.dry_run_unlogged > 0
            || !self.outbox.is_empty()
            || self.timer_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Works out, from a fresh copy, when time alone next moves the record.
    fn aim_timer(&mut self, now_ms: u64) {
        self.timer_at_ms = next_timer_ms(&self.last_seen, &self.settings, now_ms);
    }

    /// Writes a change through compare-and-swap, folding in the batched successes first;
    /// false if the store gave up.
    pub fn write(
        &mut self,
        host: &impl Host,
        now_ms: u64,
        decide: impl Fn(&mut Record, &Settings) -> Step<()>,
    ) -> bool {
        self.write_with(host, now_ms, decide).is_some()
    }

    /// [`Breaker::write`], giving back the decision's value; `None` if the store gave up.
    pub fn write_with<T>(
        &mut self,
        host: &impl Host,
        now_ms: u64,
        decide: impl Fn(&mut Record, &Settings) -> Step<T>,
    ) -> Option<T> {
        let pending = self.batch.take();
        let settings = &self.settings;
        let result = store::update(&SharedData(host), &self.key, CAS_ATTEMPTS, |r| {
            let folded = pending.fold_into(r, settings, now_ms);
            let mut step = decide(r, settings);
            step.dirty |= folded;
            step
        });
        match result {
            Ok(updated) => Some(self.absorb(host, updated, now_ms)),
            Err(_) => {
                self.batch.restore(pending);
                self.metrics.store_give_up(host);
                None
            }
        }
    }

    /// Reads the shared record again into this worker's copy (another worker said it moved).
    pub fn refresh(&mut self, host: &impl Host, now_ms: u64) {
        if let Ok(loaded) = store::load(&SharedData(host), &self.key) {
            self.header = RecordHeader::of(&loaded.record);
            self.last_seen = loaded.record;
            self.confirmed_at_ms = now_ms;
            self.aim_timer(now_ms);
            self.metrics.state(host, self.last_seen.state);
        }
    }

    /// Takes in what a store call returned at `now_ms`: the freshest record, and any
    /// transition; gives back the decision's value.
    pub fn absorb<T>(&mut self, host: &impl Host, updated: Updated<T>, now_ms: u64) -> T {
        if let Some(damage) = &updated.damaged {
            log::warn!(
                "[CIRCUIT_BREAKER] {} state in shared data was unreadable ({damage}); starting again from closed",
                self.name
            );
            // The other workers' copies still hold what the junk replaced.
            self.moved = true;
        }
        if let Some(t) = &updated.transition {
            self.announce(host, t, updated.record.mode(&self.settings));
            self.moved = true;
            self.unpublished = Some((*t, updated.record.mode_override, updated.record.reason));
        }
        // A failure streak that starts here must reach the other workers too: a worker
        // whose copy shows no streak batches its successes instead of writing them, and
        // only a written success breaks the streak. The count is one only just after the
        // write that started a streak; this worker's own copy cannot say so, since another
        // worker's success may have ended the streak it last saw.
        if updated.record.consecutive_failures == 1 {
            self.moved = true;
        }
        self.header = RecordHeader::of(&updated.record);
        self.confirmed_at_ms = now_ms;
        self.last_seen = updated.record;
        self.aim_timer(now_ms);
        updated.value
    }

    /// Everything that hangs off a transition: the log line, stats, the stored history and
    /// the webhook event. Only the worker whose compare-and-swap made it gets here.
    fn announce(&mut self, host: &impl Host, t: &Transition, mode: Mode) {
        let dry_run = if mode == Mode::DryRun && t.to != State::Closed {
            " [dry run: nothing is refused]"
        } else {
            ""
        };
        log::info!("{}{dry_run}", t.log_line(&self.name));
        self.record_transition(host, t);
    }

    /// Stats, stored history and webhook event of a transition, whoever decided it (this
    /// worker, or another Envoy of the fleet whose decision was adopted here).
    pub fn record_transition(&mut self, host: &impl Host, t: &Transition) {
        let event = Event::of(&self.name, t);
        self.record_event(host, t, event);
    }

    /// Stats, stored history and webhook event of a transition, reported as `event`.
    pub fn record_event(&mut self, host: &impl Host, t: &Transition, event: Event) {
        self.metrics.transition(host, t);
        let _ = store::compare_and_swap(
            &SharedData(host),
            &history_key(&self.name),
            b"[]",
            CAS_ATTEMPTS,
            |b| ((), Some(history::with(b, &event))),
        );
        let _ = self.change_timeline(host, |timeline| timeline.moved(t.at_ms, t.to));
        if self.events_on {
            self.outbox.push(event);
        }
    }

    /// Adds what this worker counted to the breaker's timeline, once a second at most
    /// while the breaker is busy; a quiet breaker's timeline is not touched.
    pub fn add_to_timeline(&mut self, host: &impl Host, counted: &Traffic, now_ms: u64) {
        if self.untold.is_empty() {
            self.untold_due_ms = now_ms.saturating_add(TIMELINE_WRITE_EVERY_MS);
        }
        self.untold.absorb(counted);
        if self.untold.is_empty() || now_ms < self.untold_due_ms {
            return;
        }
        let (untold, state) = (std::mem::take(&mut self.untold), self.last_seen.state);
        if !self.change_timeline(host, |timeline| timeline.add(now_ms, &untold, state)) {
            // Kept for the next tick: the store gave up this time.
            self.untold = untold;
        }
    }

    /// Changes the stored timeline; false if the store gave up.
    fn change_timeline(&self, host: &impl Host, change: impl Fn(&mut Timeline)) -> bool {
        store::compare_and_swap(
            &SharedData(host),
            &timeline_key(&self.name),
            b"",
            CAS_ATTEMPTS,
            |b| ((), Some(Timeline::with(b, &change))),
        )
        .is_ok()
    }

    /// The state, the window's rates and how far the breaker is from tripping, as gauges.
    pub fn publish_gauges(&self, host: &impl Host, now_ms: u64) {
        let (record, settings) = (&self.last_seen, &self.settings);
        self.metrics.state(host, record.state);
        self.metrics.rates(host, &record.counts(settings, now_ms));
        let failures = headroom::failures_to_trip(record, settings, now_ms);
        self.metrics.failures_to_trip(host, failures);
    }

    /// Says, at most every ten seconds, how many requests dry run let through that
    /// enforcing would have refused.
    pub fn log_dry_run(&mut self, now_ms: u64) {
        if self.dry_run_unlogged == 0
            || now_ms.saturating_sub(self.dry_run_logged_at_ms) < DRY_RUN_LOG_EVERY_MS
        {
            return;
        }
        log::info!(
            "[CIRCUIT_BREAKER] {} circuit breaker [dry run] would have refused {} request(s) since the last report; state {}",
            self.name,
            self.dry_run_unlogged,
            self.last_seen.state.shout()
        );
        self.dry_run_unlogged = 0;
        self.dry_run_logged_at_ms = now_ms;
    }
}
