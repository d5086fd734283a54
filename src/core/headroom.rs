//! How close a closed breaker is to tripping, in the terms people ask about: how many more
//! failures in a row would open it, and where the failure rate stands against its
//! threshold. Held-back trips (too few hosts) are not foreseen: the count is the rules'.

use serde_json::{json, Value};

use super::settings::{Mode, Settings};
use super::state::{Counts, Record, State};

/// Most failures looked ahead for the rate rule: beyond this, "far" is the honest answer,
/// and the gauge says this when no rule would ever trip.
pub const FAR: u32 = 1_000_000;

/// Where a breaker stands against its trip rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headroom {
    /// Failures from now on, and nothing else, that would open it; 0 while it is open;
    /// `None` when no rule counts failures or the breaker is disabled.
    pub failures_to_trip: Option<u32>,
    /// The same, said for a person.
    pub summary: String,
}

impl Headroom {
    pub fn of(r: &Record, s: &Settings, now_ms: u64) -> Headroom {
        let summary = if r.mode(s) == Mode::Disabled {
            "disabled: every call passes".to_string()
        } else {
            match r.state {
                State::Open => "open: calls are refused".to_string(),
                State::HalfOpen => "half-open: one failed probe opens it again".to_string(),
                State::Closed => closed_said(r.consecutive_failures, &r.counts(s, now_ms), s),
            }
        };
        Headroom {
            failures_to_trip: failures_to_trip(r, s, now_ms),
            summary,
        }
    }

    pub fn view(&self) -> Value {
        json!({"failures_to_trip": self.failures_to_trip, "summary": self.summary})
    }
}

/// [`Headroom::failures_to_trip`] alone, with nothing written out (the gauge's number).
pub fn failures_to_trip(r: &Record, s: &Settings, now_ms: u64) -> Option<u32> {
    if r.mode(s) == Mode::Disabled {
        return None;
    }
    match r.state {
        State::Open => Some(0),
        State::HalfOpen => Some(1),
        State::Closed => closed(r.consecutive_failures, &r.counts(s, now_ms), s),
    }
}

/// The nearer of the two failure rules for a closed breaker.
fn closed(streak: u32, counts: &Counts, s: &Settings) -> Option<u32> {
    let by_streak = (s.failure_threshold > 0).then(|| s.failure_threshold.saturating_sub(streak));
    let by_rate = (s.failure_rate_threshold > 0.0)
        .then(|| failures_to_rate(counts, s))
        .flatten();
    match (by_streak, by_rate) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where each failure rule of a closed breaker stands, for a person.
fn closed_said(streak: u32, counts: &Counts, s: &Settings) -> String {
    let mut said = Vec::new();
    if s.failure_threshold > 0 {
        let n = s.failure_threshold.saturating_sub(streak);
        said.push(format!(
            "{n} more consecutive failure{} to trip",
            if n == 1 { "" } else { "s" }
        ));
    }
    if s.failure_rate_threshold > 0.0 {
        said.push(rate_said(counts, s));
    }
    if said.is_empty() {
        "no rule counts failures".to_string()
    } else {
        said.join("; ")
    }
}

/// `failure rate 31 % of 50 % over 14 of 20 calls` (fewer calls than the rule needs) or
/// `failure rate 12 % of 50 % over 240 calls`.
fn rate_said(c: &Counts, s: &Settings) -> String {
    let percent = |x: f64| (x * 100.0).round();
    let over = if c.calls < s.minimum_requests {
        format!("{} of {} calls", c.calls, s.minimum_requests)
    } else {
        format!("{} calls", c.calls)
    };
    format!(
        "failure rate {} % of {} % over {over}",
        percent(c.failure_rate()),
        percent(s.failure_rate_threshold)
    )
}

/// The fewest further failures, with no success between, that bring the window to at
/// least `minimum_requests` calls at a failure rate at or over the threshold; `None`
/// beyond [`FAR`] (a threshold of 100 % after a success is never reached).
fn failures_to_rate(c: &Counts, s: &Settings) -> Option<u32> {
    let t = s.failure_rate_threshold;
    let reaches = |k: u32| {
        let after = Counts {
            calls: c.calls.saturating_add(k),
            failures: c.failures.saturating_add(k),
            ..*c
        };
        after.calls >= s.minimum_requests && after.failure_rate() >= t
    };
    if t >= 1.0 {
        let needed = s.minimum_requests.saturating_sub(c.calls);
        return (c.failures >= c.calls).then_some(needed);
    }
    // (f + k) / (c + k) >= t  <=>  k >= (t c - f) / (1 - t): the answer is within a step
    // or two of that (floating point), or the calls the rule needs, whichever is more.
    let estimate = ((t * f64::from(c.calls) - f64::from(c.failures)) / (1.0 - t)).floor();
    if estimate > f64::from(FAR) {
        return None;
    }
    let start = (estimate.max(0.0) as u32)
        .saturating_sub(1)
        .max(s.minimum_requests.saturating_sub(c.calls));
    (start..=start.saturating_add(4)).find(|k| reaches(*k))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed breaker's headroom with this streak and window.
    fn closed_headroom(streak: u32, counts: &Counts, s: &Settings) -> Headroom {
        Headroom {
            failures_to_trip: closed(streak, counts, s),
            summary: closed_said(streak, counts, s),
        }
    }

    fn settings(threshold: u32, rate: f64, minimum: u32) -> Settings {
        Settings {
            failure_threshold: threshold,
            failure_rate_threshold: rate,
            minimum_requests: minimum,
            ..Settings::default()
        }
    }

    fn counts(calls: u32, failures: u32) -> Counts {
        Counts {
            calls,
            failures,
            ..Counts::default()
        }
    }

    #[test]
    fn a_streak_counts_down_to_its_threshold() {
        let h = closed_headroom(3, &counts(3, 3), &settings(5, 0.0, 20));
        assert_eq!(h.failures_to_trip, Some(2));
        assert_eq!(h.summary, "2 more consecutive failures to trip");
        let h = closed_headroom(4, &counts(4, 4), &settings(5, 0.0, 20));
        assert_eq!(h.summary, "1 more consecutive failure to trip");
    }

    #[test]
    fn the_rate_rule_says_where_it_stands_and_how_far_it_is() {
        let s = settings(0, 0.5, 20);
        let h = closed_headroom(0, &counts(14, 4), &s);
        assert_eq!(h.summary, "failure rate 29 % of 50 % over 14 of 20 calls");
        // 6 more calls are needed anyway, and 10 failures of 20 is 50 %.
        assert_eq!(h.failures_to_trip, Some(6));
        let h = closed_headroom(0, &counts(100, 10), &s);
        assert_eq!(h.summary, "failure rate 10 % of 50 % over 100 calls");
        // (10 + 80) / (100 + 80) = 50 %, and 79 more fall short.
        assert_eq!(h.failures_to_trip, Some(80));
    }

    #[test]
    fn the_nearer_rule_is_the_count() {
        let h = closed_headroom(1, &counts(100, 45), &settings(5, 0.5, 20));
        assert_eq!(h.failures_to_trip, Some(4));
        assert!(h
            .summary
            .starts_with("4 more consecutive failures to trip; failure rate 45 %"));
        let h = closed_headroom(0, &counts(100, 49), &settings(5, 0.5, 20));
        assert_eq!(h.failures_to_trip, Some(2));
    }

    #[test]
    fn every_count_given_is_exact() {
        for (calls, failures, rate, minimum) in [
            (0, 0, 0.5, 20),
            (7, 7, 0.9, 5),
            (1_000, 1, 0.33, 10),
            (40, 40, 1.0, 50),
            (50, 30, 0.6, 10),
        ] {
            let s = settings(0, rate, minimum);
            let c = counts(calls, failures);
            let Some(k) = failures_to_rate(&c, &s) else {
                panic!("{calls} {failures} {rate}");
            };
            let at = |k: u32| {
                let a = counts(calls + k, failures + k);
                a.calls >= minimum && a.failure_rate() >= rate
            };
            assert!(at(k), "{k} reaches it");
            assert!(k == 0 || !at(k - 1), "{k} is the fewest");
        }
    }

    #[test]
    fn a_full_rate_after_a_success_is_never_reached() {
        assert_eq!(
            failures_to_rate(&counts(40, 39), &settings(0, 1.0, 20)),
            None
        );
    }

    #[test]
    fn open_half_open_and_disabled_say_so() {
        let s = Settings::default();
        let open = Record {
            state: State::Open,
            ..Record::default()
        };
        assert_eq!(Headroom::of(&open, &s, 0).failures_to_trip, Some(0));
        let half = Record {
            state: State::HalfOpen,
            ..Record::default()
        };
        assert_eq!(Headroom::of(&half, &s, 0).failures_to_trip, Some(1));
        let off = Settings {
            mode: Mode::Disabled,
            ..Settings::default()
        };
        assert_eq!(
            Headroom::of(&Record::default(), &off, 0).failures_to_trip,
            None
        );
    }
}
