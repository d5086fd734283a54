//! The breaker's shared record and its one transition function. Every state change goes
//! through [`Record::transition`], which returns a [`Transition`]; logs, metrics and
//! events are all derived from that value, so no view can disagree about what happened.

use std::fmt;

use super::duration::Millis;
use super::hosts::Hosts;
use super::probe_spec::{ProbeReport, ProbeResult};
use super::settings::{Mode, Settings};
use super::window::{Bucket, Window};

/// The three states. Open always means requests are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// Lower-case name used in metric labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Seed 004's upper-case name.
    pub fn shout(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
        }
    }

    /// Value of the state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    pub const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    /// The byte that stands for the state wherever it is stored: its place in [`State::ALL`].
    pub fn code(self) -> u8 {
        State::ALL
            .iter()
            .position(|s| *s == self)
            .map_or(0, |i| i as u8)
    }

    /// Inverse of [`State::code`].
    pub fn from_code(code: u8) -> Option<State> {
        State::ALL.get(usize::from(code)).copied()
    }
}

/// Why the breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    ConsecutiveFailures,
    FailureRate,
    SlowCallRate,
    /// The upstream answered 429 or 503 with `Retry-After`.
    UpstreamAsked,
    /// The mode is `forced_open`.
    Forced,
    ProbeFailed,
    /// Half-open lasted longer than `half_open_max_duration`.
    HalfOpenTimeout,
}

impl TripReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::ConsecutiveFailures => "consecutive_failures",
            TripReason::FailureRate => "failure_rate",
            TripReason::SlowCallRate => "slow_call_rate",
            TripReason::UpstreamAsked => "upstream_asked",
            TripReason::Forced => "forced",
            TripReason::ProbeFailed => "probe_failed",
            TripReason::HalfOpenTimeout => "half_open_timeout",
        }
    }

    pub const ALL: [TripReason; 7] = [
        TripReason::ConsecutiveFailures,
        TripReason::FailureRate,
        TripReason::SlowCallRate,
        TripReason::UpstreamAsked,
        TripReason::Forced,
        TripReason::ProbeFailed,
        TripReason::HalfOpenTimeout,
    ];

    fn code(self) -> u8 {
        TripReason::ALL
            .iter()
            .position(|r| *r == self)
            .map_or(0, |i| i as u8 + 1)
    }

    /// Inverse of the stored code; 0 is "no reason".
    pub fn from_code(code: u8) -> Option<Option<TripReason>> {
        match code {
            0 => Some(None),
            c => TripReason::ALL.get(usize::from(c) - 1).map(|r| Some(*r)),
        }
    }

    /// Stored code of an optional reason.
    pub fn code_of(reason: Option<TripReason>) -> u8 {
        reason.map_or(0, TripReason::code)
    }
}

/// What moved the breaker; the target state follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A trip rule fired: go to Open for the (backed-off, jittered) open time.
    Tripped(TripReason),
    /// The upstream asked for a pause: go to Open for that long.
    UpstreamAsked { wait_ms: u64 },
    /// The mode became `forced_open`: go to Open until it changes.
    Forced,
    /// The open time is up: go to HalfOpen.
    OpenElapsed,
    /// `forced_open` was lifted: probe in HalfOpen before closing.
    Released,
    /// Enough probes succeeded: go to Closed.
    Recovered,
    /// An operator reset the breaker: go to Closed, forgetting everything.
    Reset,
}

impl Cause {
    fn target(self) -> State {
        match self {
            Cause::Tripped(_) | Cause::UpstreamAsked { .. } | Cause::Forced => State::Open,
            Cause::OpenElapsed | Cause::Released => State::HalfOpen,
            Cause::Recovered | Cause::Reset => State::Closed,
        }
    }

    /// The trip reason behind a move to Open.
    pub fn reason(self) -> Option<TripReason> {
        match self {
            Cause::Tripped(r) => Some(r),
            Cause::UpstreamAsked { .. } => Some(TripReason::UpstreamAsked),
            Cause::Forced => Some(TripReason::Forced),
            _ => None,
        }
    }
}

/// The numbers a user asks about when a breaker moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub consecutive_failures: u32,
    /// Calls in the window.
    pub calls: u32,
    /// Failures in the window.
    pub failures: u32,
    /// Slow calls in the window.
    pub slow: u32,
    pub probe_successes: u32,
}

impl Counts {
    /// Failure share of the window's calls, 0 when it is empty.
    pub fn failure_rate(&self) -> f64 {
        share(self.failures, self.calls)
    }

    /// Slow share of the window's calls, 0 when it is empty.
    pub fn slow_rate(&self) -> f64 {
        share(self.slow, self.calls)
    }
}

fn share(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

/// One state change, as made by the worker whose compare-and-swap won.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub cause: Cause,
    pub at_ms: u64,
    /// Generation of the new state.
    pub generation: u32,
    /// Counts just before the change.
    pub counts: Counts,
    /// For a move to Open: when half-open may start (`u64::MAX` while forced).
    pub open_until_ms: u64,
    /// Trips in a row, after this one.
    pub trips_in_row: u32,
    /// The breaker's own health probe whose answer made this transition, if one did.
    pub probe: Option<ProbeReport>,
}

impl Transition {
    /// The log line, in the shape the school system's gateway used:
    /// `[CIRCUIT_BREAKER] auth circuit breaker OPENED: 5 consecutive failures`.
    pub fn log_line(&self, breaker: &str) -> String {
        format!("[CIRCUIT_BREAKER] {breaker} circuit breaker {self}")
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        match self.cause {
            Cause::Tripped(TripReason::ConsecutiveFailures) => {
                write!(f, "OPENED: {} consecutive failures", c.consecutive_failures)
            }
            Cause::Tripped(TripReason::FailureRate) => write!(
                f,
                "OPENED: failure rate {:.0}% ({} of the last {} calls)",
                c.failure_rate() * 100.0,
                c.failures,
                c.calls
            ),
            Cause::Tripped(TripReason::SlowCallRate) => write!(
                f,
                "OPENED: slow-call rate {:.0}% ({} of the last {} calls)",
                c.slow_rate() * 100.0,
                c.slow,
                c.calls
            ),
            Cause::Tripped(TripReason::ProbeFailed) => match &self.probe {
                Some(p) => write!(f, "OPENED: the health probe {}", probe_said(p)),
                None => write!(f, "OPENED: a half-open probe failed"),
            },
            Cause::Tripped(TripReason::HalfOpenTimeout) => {
                write!(f, "OPENED: half-open probes did not finish in time")
            }
            Cause::Tripped(TripReason::UpstreamAsked) | Cause::UpstreamAsked { .. } => {
                write!(f, "OPENED: the upstream asked to retry later (Retry-After)")
            }
            Cause::Tripped(TripReason::Forced) | Cause::Forced => {
                return write!(f, "OPENED: forced open by its mode")
            }
            Cause::OpenElapsed => write!(f, "HALF_OPEN: attempting recovery"),
            Cause::Released => write!(f, "HALF_OPEN: no longer forced open, probing"),
            Cause::Recovered => {
                let n = c.probe_successes;
                let plural = if n == 1 { "" } else { "s" };
                match &self.probe {
                    Some(p) => write!(
                        f,
                        "CLOSED: recovery successful after {n} passing health probe{plural} (the last {})",
                        probe_said(p)
                    ),
                    None => write!(f, "CLOSED: recovery successful after {n} successful probe{plural}"),
                }
            }
            Cause::Reset => write!(f, "CLOSED: reset by an operator"),
        }?;
        if self.to == State::Open {
            write!(
                f,
                ", open for {}",
                Millis(self.open_until_ms.saturating_sub(self.at_ms))
            )?;
            if self.trips_in_row > 1 {
                write!(f, " (trip {} in a row)", self.trips_in_row)?;
            }
        }
        Ok(())
    }
}

/// What a health probe's answer was, for a log line: `answered 500 in 3ms`.
fn probe_said(p: &ProbeReport) -> String {
    match (p.result, p.status) {
        (ProbeResult::Timeout, _) => format!("timed out after {}", Millis(p.latency_ms)),
        (_, Some(status)) => format!("answered {status} in {}", Millis(p.latency_ms)),
        (_, None) => format!("got no answer ({} in)", Millis(p.latency_ms)),
    }
}

/// Everything one breaker remembers, shared by all workers through the state store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub state: State,
    /// Bumped on every transition; outcomes carry the generation they started in.
    pub generation: u32,
    pub changed_at_ms: u64,
    /// While open: when half-open may start.
    pub open_until_ms: u64,
    /// While half-open: when the oldest probe still in flight was admitted.
    pub probing_since_ms: u64,
    /// Why it last opened.
    pub reason: Option<TripReason>,
    pub consecutive_failures: u32,
    pub probes_in_flight: u32,
    pub probe_successes: u32,
    /// Trips since the breaker last stayed closed for `max_open_duration`: the backoff step.
    pub trips_in_row: u32,
    /// Closed after a recovery and still ramping traffic up.
    pub ramping: bool,
    /// A runtime override of the configured mode.
    pub mode_override: Option<Mode>,
    pub window: Window,
    /// The hosts heard from, and which of them failed in the window.
    pub hosts: Hosts,
}

impl Record {
    /// Counts as of `now_ms`.
    pub fn counts(&self, settings: &Settings, now_ms: u64) -> Counts {
        let totals: Bucket = self.window.totals(now_ms, settings.window);
        Counts {
            consecutive_failures: self.consecutive_failures,
            calls: totals.calls(),
            failures: totals.failures,
            slow: totals.slow,
            probe_successes: self.probe_successes,
        }
    }

    /// The mode in force: the runtime override, else the configured one.
    pub fn mode(&self, settings: &Settings) -> Mode {
        self.mode_override.unwrap_or(settings.mode)
    }

    /// The one place a breaker changes state.
    pub fn transition(&mut self, cause: Cause, settings: &Settings, now_ms: u64) -> Transition {
        let counts = self.counts(settings, now_ms);
        let from = self.state;
        let to = cause.target();
        self.state = to;
        self.generation = self.generation.wrapping_add(1);
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        self.ramping = false;
        self.hosts.confined = false;
        match cause {
            Cause::Tripped(reason) => {
                if from == State::Closed
                    && now_ms.saturating_sub(self.changed_at_ms) >= settings.max_open_duration_ms
                {
                    self.trips_in_row = 0;
                }
                self.trips_in_row = self.trips_in_row.saturating_add(1);
                self.reason = Some(reason);
                let draw = unit_draw(now_ms, self.generation);
                let open_ms = settings.open_time(self.trips_in_row, draw);
                self.open_until_ms = now_ms.saturating_add(open_ms);
            }
            Cause::UpstreamAsked { wait_ms } => {
                self.reason = Some(TripReason::UpstreamAsked);
                let wait = wait_ms.clamp(1, settings.max_open_duration_ms.max(1));
                self.open_until_ms = now_ms.saturating_add(wait);
            }
            Cause::Forced => {
                self.reason = Some(TripReason::Forced);
                self.open_until_ms = u64::MAX;
            }
            Cause::OpenElapsed | Cause::Released => {}
            Cause::Recovered => {
                self.reason = None;
                self.consecutive_failures = 0;
                self.window.clear();
                self.hosts.clear_marks();
                self.ramping = settings.recovery_duration_ms > 0;
            }
            Cause::Reset => {
                self.reason = None;
                self.consecutive_failures = 0;
                self.trips_in_row = 0;
                self.window.clear();
                self.hosts.clear_marks();
            }
        }
        self.changed_at_ms = now_ms;
        Transition {
            from,
            to,
            cause,
            at_ms: now_ms,
            generation: self.generation,
            counts,
            open_until_ms: self.open_until_ms,
            trips_in_row: self.trips_in_row,
            probe: None,
        }
    }
}

/// A number in [0, 1) drawn from the trip's time and generation: different for every trip
/// and every Envoy instance (their clocks differ in the milliseconds), the same on a
/// replay, so tests stay deterministic.
pub fn unit_draw(now_ms: u64, generation: u32) -> f64 {
    let mut x = now_ms ^ (u64::from(generation) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_starts_a_new_generation() {
        let s = Settings::default();
        let mut r = Record::default();
        let t = r.transition(Cause::Tripped(TripReason::ConsecutiveFailures), &s, 1_000);
        assert_eq!(
            (t.from, t.to, t.generation),
            (State::Closed, State::Open, 1)
        );
        assert_eq!(r.open_until_ms, 6_000);
        let t = r.transition(Cause::OpenElapsed, &s, 6_000);
        assert_eq!(
            (t.from, t.to, t.generation),
            (State::Open, State::HalfOpen, 2)
        );
        let t = r.transition(Cause::Recovered, &s, 6_500);
        assert_eq!(
            (t.from, t.to, t.generation),
            (State::HalfOpen, State::Closed, 3)
        );
        assert_eq!(r.reason, None);
    }

    #[test]
    fn log_lines_say_why() {
        let s = Settings::default();
        let mut r = Record {
            consecutive_failures: 5,
            ..Record::default()
        };
        let t = r.transition(Cause::Tripped(TripReason::ConsecutiveFailures), &s, 0);
        assert_eq!(
            t.log_line("auth"),
            "[CIRCUIT_BREAKER] auth circuit breaker OPENED: 5 consecutive failures, open for 5s"
        );
        let t = r.transition(Cause::OpenElapsed, &s, 5_000);
        assert_eq!(
            t.log_line("auth"),
            "[CIRCUIT_BREAKER] auth circuit breaker HALF_OPEN: attempting recovery"
        );
        r.probe_successes = 2;
        let t = r.transition(Cause::Recovered, &s, 60_100);
        assert_eq!(
            t.log_line("student"),
            "[CIRCUIT_BREAKER] student circuit breaker CLOSED: recovery successful after 2 successful probes"
        );
        let t = r.transition(Cause::Forced, &s, 60_200);
        assert_eq!(t.to_string(), "OPENED: forced open by its mode");
        let t = r.transition(Cause::UpstreamAsked { wait_ms: 7_000 }, &s, 61_000);
        assert_eq!(
            t.to_string(),
            "OPENED: the upstream asked to retry later (Retry-After), open for 7s"
        );
    }

    #[test]
    fn repeated_trips_back_off_and_a_long_calm_starts_over() {
        let s = Settings {
            open_duration_ms: 1_000,
            backoff_multiplier: 2.0,
            max_open_duration_ms: 8_000,
            ..Settings::default()
        };
        let mut r = Record::default();
        let probe_failed = Cause::Tripped(TripReason::ProbeFailed);
        let t = r.transition(Cause::Tripped(TripReason::ConsecutiveFailures), &s, 0);
        assert_eq!(t.open_until_ms, 1_000);
        r.transition(Cause::OpenElapsed, &s, 1_000);
        assert_eq!(r.transition(probe_failed, &s, 1_000).open_until_ms, 3_000);
        r.transition(Cause::OpenElapsed, &s, 3_000);
        let t = r.transition(probe_failed, &s, 3_000);
        assert_eq!((t.open_until_ms, t.trips_in_row), (7_000, 3));
        assert!(
            t.to_string().ends_with("open for 4s (trip 3 in a row)"),
            "{t}"
        );
        r.transition(Cause::OpenElapsed, &s, 7_000);
        r.transition(Cause::Recovered, &s, 7_000);
        let t = r.transition(Cause::Tripped(TripReason::FailureRate), &s, 8_000);
        assert_eq!(t.trips_in_row, 4, "closed for only 1s: still backing off");
        r.transition(Cause::OpenElapsed, &s, 16_000);
        r.transition(Cause::Recovered, &s, 16_000);
        let t = r.transition(Cause::Tripped(TripReason::FailureRate), &s, 24_000);
        assert_eq!(
            (t.trips_in_row, t.open_until_ms),
            (1, 25_000),
            "8s closed: starts over"
        );
    }

    #[test]
    fn the_upstream_cannot_ask_for_more_than_the_cap() {
        let s = Settings {
            max_open_duration_ms: 30_000,
            ..Settings::default()
        };
        let mut r = Record::default();
        let t = r.transition(Cause::UpstreamAsked { wait_ms: 3_600_000 }, &s, 0);
        assert_eq!(t.open_until_ms, 30_000);
        assert_eq!(r.reason, Some(TripReason::UpstreamAsked));
    }

    #[test]
    fn forced_open_never_expires() {
        let mut r = Record::default();
        r.transition(Cause::Forced, &Settings::default(), 5);
        assert_eq!(r.open_until_ms, u64::MAX);
    }

    #[test]
    fn reasons_round_trip_through_their_codes() {
        for r in TripReason::ALL {
            assert_eq!(
                TripReason::from_code(TripReason::code_of(Some(r))),
                Some(Some(r))
            );
        }
        assert_eq!(TripReason::from_code(0), Some(None));
        assert_eq!(TripReason::from_code(99), None);
    }

    #[test]
    fn draws_spread_over_the_unit_interval() {
        let draws: Vec<f64> = (0..1000).map(|t| unit_draw(t, 1)).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((400..600).contains(&low), "{low}");
    }
}
