//! Admission and recording, in the two steps a filter needs (gobreaker's `Allow`, then the
//! outcome later): [`admit`] when a request arrives, [`record`] when its stream ends, and
//! [`tick`] when only time has passed. All three work on a [`Record`] the caller loaded and
//! say whether it must be written back, so the common case (closed, success) can skip the
//! shared-data write.

pub mod probe_due;
mod rules;
mod success_batch;
mod timer;

pub use rules::Confined;
pub use success_batch::SuccessBatch;
pub use timer::next_timer_ms;

use super::codec::RecordHeader;
use super::hosts::Address;
use super::outcome::Outcome;
use super::settings::{Mode, Settings, StoreFailure};
use super::state::{Cause, Record, State, Transition, TripReason};

use rules::{end_episode, verdict, Verdict};

/// What a request was granted, carried until its outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Generation the request started in; outcomes from older generations are ignored.
    pub generation: u32,
    /// Whether it holds one of the half-open probe slots.
    pub probe: bool,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    Open,
    /// Half-open, with every probe slot taken.
    HalfOpen,
    /// Closed, but still ramping traffic back up after a recovery.
    Recovering,
}

impl RejectKind {
    /// Value of the `x-circuit-breaker` header on a refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Open => "open",
            RejectKind::HalfOpen => "half_open",
            RejectKind::Recovering => "recovering",
        }
    }
}

/// A refusal, with what the caller needs to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    /// Why the breaker last opened.
    pub reason: Option<TripReason>,
    /// Time until a request may be admitted again, as well as it is known.
    pub retry_after_ms: u64,
}

impl Rejection {
    /// Seconds for a `Retry-After` header: rounded up, never 0.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms.div_ceil(1_000).max(1)
    }
}

/// The answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted(Ticket),
    Rejected(Rejection),
    /// Let through without tracking: the mode is `disabled`, or `dry_run` and the breaker
    /// would have refused (`would_reject`).
    Passed {
        would_reject: Option<Rejection>,
    },
}

/// Who answered a call, as far as the shell can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answered {
    /// The host (`upstream.address`); `None` when Envoy had none.
    pub by: Option<Address>,
    /// This worker had other calls to the same breaker out, whose hosts it cannot know yet.
    pub others_out: bool,
}

/// How a finished call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub outcome: Outcome,
    /// From request start to response end, as measured by the filter.
    pub elapsed_ms: u64,
    /// The wait an upstream asked for with `Retry-After` on a 429 or 503.
    pub retry_after_ms: Option<u64>,
}

/// The result of one decision: its value, whether the record changed and must be written
/// back, and the transition it made, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<T> {
    pub value: T,
    pub dirty: bool,
    pub transition: Option<Transition>,
}

impl<T> Step<T> {
    fn new(value: T, dirty: bool, transition: Option<Transition>) -> Self {
        Step {
            value,
            dirty: dirty || transition.is_some(),
            transition,
        }
    }

    /// The same step with its value replaced.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Step<U> {
        Step {
            value: f(self.value),
            dirty: self.dirty,
            transition: self.transition,
        }
    }
}

/// How long a caller refused in half-open or during the ramp is told to wait: which
/// requests get through next is not known in advance, so a short retry is the honest answer.
const SHORT_RETRY_MS: u64 = 1_000;

/// How much later than its last tick a worker's timer may be running: an open breaker is
/// refused at a glance only while its open time ends later than the last tick plus this.
pub const TIMER_SLACK_MS: u64 = 250;

/// The time as a caller knows it: a coarse reading it already holds (the worker's last
/// tick), and the clock, read at most once and only when a decision needs the exact time.
pub struct Now<F: FnMut() -> u64> {
    coarse_ms: u64,
    exact_ms: Option<u64>,
    read: F,
}

impl<F: FnMut() -> u64> Now<F> {
    pub fn new(coarse_ms: u64, read: F) -> Self {
        Now {
            coarse_ms,
            exact_ms: None,
            read,
        }
    }

    /// The exact time, reading the clock on first use.
    pub fn exact(&mut self) -> u64 {
        match self.exact_ms {
            Some(t) => t,
            None => {
                let t = (self.read)();
                self.exact_ms = Some(t);
                t
            }
        }
    }

    /// The best reading made so far, without reading the clock.
    pub fn latest(&self) -> u64 {
        self.exact_ms.unwrap_or(self.coarse_ms)
    }
}

impl Now<fn() -> u64> {
    /// A time known exactly already.
    pub fn fixed(now_ms: u64) -> Self {
        Now {
            coarse_ms: now_ms,
            exact_ms: Some(now_ms),
            read: || 0,
        }
    }
}

/// The decision for the common cases, made from a [`RecordHeader`] with no write: a closed
/// breaker that is not ramping admits, a disabled one passes, and an open one whose open
/// time ends well after the coarse time refuses. The coarse time is a clock the caller
/// already has, so admitting needs no clock read; it can only be late by
/// [`TIMER_SLACK_MS`] in letting a breaker leave open, never early. A refusal tells the
/// caller the time left to the millisecond, so only it reads the exact clock.
/// `None` means the full [`admit`] must decide.
pub fn admit_at_a_glance(
    g: &RecordHeader,
    settings: &Settings,
    now: &mut Now<impl FnMut() -> u64>,
) -> Option<Admission> {
    let mode = g.mode_override.unwrap_or(settings.mode);
    let forced = g.reason == Some(TripReason::Forced);
    match mode {
        Mode::Disabled => Some(Admission::Passed { would_reject: None }),
        Mode::ForcedOpen if g.state == State::Open && forced => {
            Some(Admission::Rejected(Rejection {
                kind: RejectKind::Open,
                reason: g.reason,
                retry_after_ms: settings.open_duration_ms,
            }))
        }
        Mode::ForcedOpen => None,
        Mode::Enforce | Mode::DryRun => match g.state {
            State::Closed if !g.ramping => Some(Admission::Admitted(Ticket {
                generation: g.generation,
                probe: false,
            })),
            State::Open
                if !forced && now.coarse_ms.saturating_add(TIMER_SLACK_MS) < g.open_until_ms =>
            {
                let refusal = Rejection {
                    kind: RejectKind::Open,
                    reason: g.reason,
                    retry_after_ms: g.open_until_ms.saturating_sub(now.exact()),
                };
                Some(if mode == Mode::DryRun {
                    Admission::Passed {
                        would_reject: Some(refusal),
                    }
                } else {
                    Admission::Rejected(refusal)
                })
            }
            _ => None,
        },
    }
}

/// Longest a worker's copy of a record may go unconfirmed before it is not trusted at
/// all: ten timer periods, so a worker whose timer stalls goes back to reading the shared
/// record on every request.
pub const MAX_COPY_AGE_MS: u64 = 1_000;

/// Whether a worker may decide from its own copy of a record, last confirmed against the
/// shared one at `confirmed_at_ms`, instead of reading the shared record. Another worker's
/// transition reaches the copy by a notice within milliseconds and by the timer within a
/// period; until then the copy lags. A closed copy is trusted only while no trip made since
/// it was confirmed could have reached half-open already, whose probe limit must hold
/// exactly; an open copy can only refuse; half-open is never decided from a copy.
pub fn trusts_copy(
    copy: &RecordHeader,
    settings: &Settings,
    confirmed_at_ms: u64,
    coarse_now_ms: u64,
) -> bool {
    let age = coarse_now_ms
        .saturating_sub(confirmed_at_ms)
        .saturating_add(TIMER_SLACK_MS);
    if age > MAX_COPY_AGE_MS {
        return false;
    }
    match copy.state {
        // An upstream's Retry-After can open the breaker for as little as a millisecond.
        State::Closed => !settings.honor_retry_after && age < settings.shortest_open_ms(),
        State::Open => true,
        State::HalfOpen => false,
    }
}

/// What a request gets when the state store gave up (every compare-and-swap lost, or a host
/// error): a breaker last seen closed passes it untracked or refuses it, as configured; one
/// last seen open or half-open refuses it, so the probe limit holds whatever happens.
pub fn when_store_fails(last_seen: &RecordHeader, settings: &Settings) -> Admission {
    let refuse = |kind| {
        Admission::Rejected(Rejection {
            kind,
            reason: last_seen.reason,
            retry_after_ms: SHORT_RETRY_MS,
        })
    };
    match (last_seen.state, settings.store_failure) {
        (State::Closed, StoreFailure::Pass) => Admission::Passed { would_reject: None },
        (State::Closed, StoreFailure::Refuse) | (State::Open, _) => refuse(RejectKind::Open),
        (State::HalfOpen, _) => refuse(RejectKind::HalfOpen),
    }
}

/// Decides whether a request may go upstream now. `roll` is a uniform random number, used
/// only while ramping traffic back up.
pub fn admit(record: &mut Record, settings: &Settings, now_ms: u64, roll: u32) -> Step<Admission> {
    let mode = record.mode(settings);
    if mode == Mode::Disabled {
        return Step::new(Admission::Passed { would_reject: None }, false, None);
    }
    let transition = follow_mode(record, settings, mode, now_ms)
        .or_else(|| follow_time(record, settings, now_ms));
    let mut took_probe = false;
    let decision = match record.state {
        State::Closed => match ramp_share(record, settings, now_ms) {
            Some(share) if f64::from(roll) >= share * 4_294_967_296.0 => {
                Admission::Rejected(Rejection {
                    kind: RejectKind::Recovering,
                    reason: None,
                    retry_after_ms: SHORT_RETRY_MS,
                })
            }
            _ => Admission::Admitted(Ticket {
                generation: record.generation,
                probe: false,
            }),
        },
        State::Open => Admission::Rejected(Rejection {
            kind: RejectKind::Open,
            reason: record.reason,
            retry_after_ms: if record.reason == Some(TripReason::Forced) {
                settings.open_duration_ms
            } else {
                record.open_until_ms.saturating_sub(now_ms)
            },
        }),
        // The breaker probes by itself: users wait for its verdict.
        State::HalfOpen if settings.probe.is_some() => Admission::Rejected(Rejection {
            kind: RejectKind::HalfOpen,
            reason: record.reason,
            retry_after_ms: settings.probe.as_ref().map_or(SHORT_RETRY_MS, |p| {
                probe_due::retry_after_ms(record, p, now_ms)
            }),
        }),
        State::HalfOpen if record.probes_in_flight < settings.half_open_max_requests => {
            if record.probes_in_flight == 0 {
                record.probing_since_ms = now_ms;
            }
            record.probes_in_flight += 1;
            took_probe = true;
            Admission::Admitted(Ticket {
                generation: record.generation,
                probe: true,
            })
        }
        State::HalfOpen => Admission::Rejected(Rejection {
            kind: RejectKind::HalfOpen,
            reason: record.reason,
            retry_after_ms: SHORT_RETRY_MS,
        }),
    };
    let decision = match decision {
        Admission::Rejected(r) if mode == Mode::DryRun => Admission::Passed {
            would_reject: Some(r),
        },
        other => other,
    };
    Step::new(decision, took_probe, transition)
}

/// Share of requests to admit while ramping up after a recovery; `None` when not ramping.
fn ramp_share(record: &Record, settings: &Settings, now_ms: u64) -> Option<f64> {
    let elapsed = now_ms.saturating_sub(record.changed_at_ms);
    (record.ramping && elapsed < settings.recovery_duration_ms)
        .then(|| elapsed as f64 / settings.recovery_duration_ms as f64)
}

/// Moves the breaker to match its mode: into Open while forced, out of it when lifted.
fn follow_mode(record: &mut Record, s: &Settings, mode: Mode, now_ms: u64) -> Option<Transition> {
    let forced = record.state == State::Open && record.reason == Some(TripReason::Forced);
    match (mode, forced) {
        (Mode::ForcedOpen, false) => Some(record.transition(Cause::Forced, s, now_ms)),
        (Mode::Enforce | Mode::DryRun, true) => Some(record.transition(Cause::Released, s, now_ms)),
        _ => None,
    }
}

/// Moves the breaker on with time alone: an open breaker whose time is up goes half-open,
/// a half-open one whose probes never finished goes back to open. A half-open breaker with
/// no probe out is not stuck, only waiting for traffic, so it stays.
fn follow_time(record: &mut Record, s: &Settings, now_ms: u64) -> Option<Transition> {
    match record.state {
        // A forced breaker waits for its mode, never for the clock.
        State::Open
            if now_ms >= record.open_until_ms && record.reason != Some(TripReason::Forced) =>
        {
            Some(record.transition(Cause::OpenElapsed, s, now_ms))
        }
        State::HalfOpen if probe_lost(record, s, now_ms) => {
            Some(record.transition(Cause::Tripped(TripReason::HalfOpenTimeout), s, now_ms))
        }
        _ => None,
    }
}

/// Whether the half-open probe out the longest has been out too long to wait for: past
/// `half_open_max_duration`, or for the breaker's own probe, past its timeout and a grace.
fn probe_lost(record: &Record, s: &Settings, now_ms: u64) -> bool {
    if record.probes_in_flight == 0 {
        return false;
    }
    match &s.probe {
        Some(p) => probe_due::lost_at_ms(record, p).is_some_and(|at| now_ms >= at),
        None => {
            s.half_open_max_duration_ms > 0
                && now_ms.saturating_sub(record.probing_since_ms) >= s.half_open_max_duration_ms
        }
    }
}

/// The timer's step: mode and time move the breaker, a finished ramp is cleared, and the
/// rate rules are checked again, since successes folded in from worker batches can bring
/// the window up to `minimum_requests` without any new failure being written.
pub fn tick(record: &mut Record, settings: &Settings, now_ms: u64) -> Step<()> {
    let mode = record.mode(settings);
    if mode == Mode::Disabled {
        return Step::new((), false, None);
    }
    let transition = follow_mode(record, settings, mode, now_ms)
        .or_else(|| follow_time(record, settings, now_ms));
    let mut dirty = false;
    let transition = match transition {
        Some(t) => Some(t),
        None if record.state == State::Closed => match verdict(record, settings, now_ms, false) {
            Verdict::Trip(reason) => {
                Some(record.transition(Cause::Tripped(reason), settings, now_ms))
            }
            // Only a recorded call starts an episode, so that its log line is written.
            Verdict::Held(_) => None,
            Verdict::Quiet => {
                dirty = end_episode(record, settings, now_ms);
                None
            }
        },
        None => None,
    };
    let ramp_over = record.ramping && ramp_share(record, settings, now_ms).is_none();
    if ramp_over {
        record.ramping = false;
    }
    Step::new((), ramp_over || dirty, transition)
}

/// An operator's reset: closed, counts and backoff forgotten, from whatever state. A
/// breaker held open by `forced_open` stays forced; the mode decides that, not a reset.
pub fn reset(record: &mut Record, settings: &Settings, now_ms: u64) -> Step<()> {
    let t = record.transition(Cause::Reset, settings, now_ms);
    let forced = follow_mode(record, settings, record.mode(settings), now_ms);
    Step::new((), true, forced.or(Some(t)))
}

/// An operator's mode override (`None` goes back to the configured mode), applied at once:
/// forcing open or releasing happens in the same step.
pub fn set_mode(
    record: &mut Record,
    settings: &Settings,
    mode: Option<Mode>,
    now_ms: u64,
) -> Step<()> {
    record.mode_override = mode;
    let effective = record.mode(settings);
    let t = if effective == Mode::Disabled {
        None
    } else {
        follow_mode(record, settings, effective, now_ms)
    };
    Step::new((), true, t)
}

/// Records how a request admitted with `ticket` ended, when which host answered is not
/// known: as a call with no host, which trips as it always did.
pub fn record(
    record: &mut Record,
    settings: &Settings,
    ticket: Ticket,
    call: Call,
    now_ms: u64,
) -> Step<()> {
    let unknown = Answered::default();
    record_from(record, settings, ticket, call, unknown, now_ms).map(|_| ())
}

/// Records how a request admitted with `ticket` ended, and who answered it. The value
/// says whether a trip rule was held back because the failures behind it came from too
/// few hosts.
pub fn record_from(
    record: &mut Record,
    settings: &Settings,
    ticket: Ticket,
    call: Call,
    answered: Answered,
    now_ms: u64,
) -> Step<Option<Confined>> {
    if ticket.generation != record.generation {
        return Step::new(None, false, None);
    }
    let asked = call.retry_after_ms.filter(|_| settings.honor_retry_after);
    match (record.state, ticket.probe) {
        (State::Closed, false) => {
            if let Some(wait_ms) = asked {
                let t = record.transition(Cause::UpstreamAsked { wait_ms }, settings, now_ms);
                return Step::new(None, true, Some(t));
            }
            record_closed(record, settings, call, answered, now_ms)
        }
        (State::HalfOpen, true) => {
            record.probes_in_flight = record.probes_in_flight.saturating_sub(1);
            let slow = settings.is_slow(call.elapsed_ms);
            let cause = match (call.outcome, asked) {
                (_, Some(wait_ms)) => Some(Cause::UpstreamAsked { wait_ms }),
                (Outcome::Failure(_), None) => Some(Cause::Tripped(TripReason::ProbeFailed)),
                // A probe that succeeded but slowly says the upstream has not recovered: it
                // failed as a probe, whatever the (empty) window's slow-call rate says.
                (Outcome::Success, None) if slow => Some(Cause::Tripped(TripReason::ProbeFailed)),
                (Outcome::Success, None) => {
                    record.probe_successes = record.probe_successes.saturating_add(1);
                    (record.probe_successes >= settings.success_threshold)
                        .then_some(Cause::Recovered)
                }
                (Outcome::Ignored, None) => None,
            };
            let t = cause.map(|c| record.transition(c, settings, now_ms));
            Step::new(None, true, t)
        }
        _ => Step::new(None, false, None),
    }
}

/// Takes in the fleet's count of successful probes in this half-open episode (this
/// Envoy's and the others', as stored in etcd): reaching `success_threshold` closes as
/// the local probes would have. The count never goes down here.
pub fn fleet_successes(
    record: &mut Record,
    settings: &Settings,
    successes: u32,
    now_ms: u64,
) -> Step<()> {
    if record.state != State::HalfOpen || successes <= record.probe_successes {
        return Step::new((), false, None);
    }
    record.probe_successes = successes;
    let t = (successes >= settings.success_threshold)
        .then(|| record.transition(Cause::Recovered, settings, now_ms));
    Step::new((), true, t)
}

fn record_closed(
    record: &mut Record,
    s: &Settings,
    call: Call,
    answered: Answered,
    now_ms: u64,
) -> Step<Option<Confined>> {
    let slow = s.is_slow(call.elapsed_ms);
    let failed = match call.outcome {
        Outcome::Ignored => return Step::new(None, false, None),
        Outcome::Success => {
            record.consecutive_failures = 0;
            record.hosts.end_streak();
            false
        }
        Outcome::Failure(_) => {
            record.consecutive_failures = record.consecutive_failures.saturating_add(1);
            true
        }
    };
    record.window.add_call(failed, slow, now_ms, s.window);
    record
        .hosts
        .record(answered.by, failed, slow, now_ms, s.window);
    match verdict(record, s, now_ms, answered.others_out) {
        Verdict::Trip(reason) => {
            let t = record.transition(Cause::Tripped(reason), s, now_ms);
            Step::new(None, true, Some(t))
        }
        Verdict::Held(mut confined) => {
            confined.started = !record.hosts.confined;
            confined.counted = failed || slow;
            record.hosts.confined = true;
            Step::new(Some(confined), true, None)
        }
        Verdict::Quiet => {
            end_episode(record, s, now_ms);
            Step::new(None, true, None)
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod host_tests;
