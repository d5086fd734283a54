//! The breaker's shared record and its one transition function. Every state change goes
//! through [`Record::transition`], which returns a [`Transition`]; logs, metrics and
//! events are all derived from that value, so no view can disagree about what happened.

use std::fmt;

use super::duration::Millis;
use super::settings::Settings;
use super::window::Window;

/// The three states. Open always means requests are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// Lower-case name used in metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
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
}

/// Why the breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    ConsecutiveFailures,
    FailureRate,
    ProbeFailed,
}

impl TripReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::ConsecutiveFailures => "consecutive_failures",
            TripReason::FailureRate => "failure_rate",
            TripReason::ProbeFailed => "probe_failed",
        }
    }

    pub const ALL: [TripReason; 3] = [
        TripReason::ConsecutiveFailures,
        TripReason::FailureRate,
        TripReason::ProbeFailed,
    ];
}

/// What moved the breaker; the target state follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A trip rule fired: go to Open.
    Tripped(TripReason),
    /// The open time is up: go to HalfOpen.
    OpenElapsed,
    /// Enough probes succeeded: go to Closed.
    Recovered,
}

impl Cause {
    fn target(self) -> State {
        match self {
            Cause::Tripped(_) => State::Open,
            Cause::OpenElapsed => State::HalfOpen,
            Cause::Recovered => State::Closed,
        }
    }
}

/// The numbers a user asks about when a breaker moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub consecutive_failures: u32,
    /// Calls in the sliding window.
    pub calls: u32,
    /// Failures in the sliding window.
    pub failures: u32,
    pub probe_successes: u32,
}

impl Counts {
    /// Failure share of the window's calls, 0 when it is empty.
    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(self.failures) / f64::from(self.calls)
        }
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
    /// For a move to Open: when half-open may start.
    pub open_until_ms: u64,
}

impl Transition {
    /// The log line, in the shape the school system's gateway used:
    /// `[CIRCUIT_BREAKER] auth circuit breaker OPENED: 5 consecutive failures`.
    pub fn log_line(&self, cluster: &str) -> String {
        format!("[CIRCUIT_BREAKER] {cluster} circuit breaker {self}")
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
            Cause::Tripped(TripReason::ProbeFailed) => {
                write!(f, "OPENED: a half-open probe failed")
            }
            Cause::OpenElapsed => write!(f, "HALF_OPEN: attempting recovery"),
            Cause::Recovered => write!(
                f,
                "CLOSED: recovery successful after {} successful probe{}",
                c.probe_successes,
                if c.probe_successes == 1 { "" } else { "s" }
            ),
        }?;
        if self.to == State::Open {
            write!(
                f,
                ", open for {}",
                Millis(self.open_until_ms.saturating_sub(self.at_ms))
            )?;
        }
        Ok(())
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
    /// Why it last opened.
    pub reason: Option<TripReason>,
    pub consecutive_failures: u32,
    pub probes_in_flight: u32,
    pub probe_successes: u32,
    pub window: Window,
}

impl Record {
    /// Counts as of `now_ms`.
    pub fn counts(&self, settings: &Settings, now_ms: u64) -> Counts {
        let totals = self.window.totals(now_ms, settings.window_ms);
        Counts {
            consecutive_failures: self.consecutive_failures,
            calls: totals.calls(),
            failures: totals.failures,
            probe_successes: self.probe_successes,
        }
    }

    /// The one place a breaker changes state.
    pub fn transition(&mut self, cause: Cause, settings: &Settings, now_ms: u64) -> Transition {
        let counts = self.counts(settings, now_ms);
        let from = self.state;
        let to = cause.target();
        self.state = to;
        self.generation = self.generation.wrapping_add(1);
        self.changed_at_ms = now_ms;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        match cause {
            Cause::Tripped(reason) => {
                self.reason = Some(reason);
                self.open_until_ms = now_ms.saturating_add(settings.open_duration_ms);
            }
            Cause::OpenElapsed => {}
            Cause::Recovered => {
                self.reason = None;
                self.consecutive_failures = 0;
                self.window.clear();
            }
        }
        Transition {
            from,
            to,
            cause,
            at_ms: now_ms,
            generation: self.generation,
            counts,
            open_until_ms: self.open_until_ms,
        }
    }
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
        assert_eq!(r.open_until_ms, 61_000);
        let t = r.transition(Cause::OpenElapsed, &s, 61_000);
        assert_eq!(
            (t.from, t.to, t.generation),
            (State::Open, State::HalfOpen, 2)
        );
        let t = r.transition(Cause::Recovered, &s, 61_500);
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
            "[CIRCUIT_BREAKER] auth circuit breaker OPENED: 5 consecutive failures, open for 60s"
        );
        let t = r.transition(Cause::OpenElapsed, &s, 60_000);
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
    }
}
