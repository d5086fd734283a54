//! The closed-state trip rules, and the hosts behind them: which rule says the breaker
//! must open now, and which is held back because its calls came from too few hosts.

use crate::core::hosts::{Address, Rule, Spread};
use crate::core::settings::Settings;
use crate::core::state::{Record, TripReason};

/// Addresses named in a log line; the rest are counted.
const SHOWN: usize = 4;

/// A trip rule held back because the calls behind it came from too few hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    /// The rule that would have tripped.
    pub reason: TripReason,
    /// The hosts behind it.
    pub hosts: Vec<Address>,
    /// Hosts the breaker knows of.
    pub known: usize,
    /// This decision started the episode: the one place its log line comes from.
    pub started: bool,
    /// The call being recorded was itself a failure or a slow call that was held back.
    pub counted: bool,
}

impl Confined {
    /// `[CIRCUIT_BREAKER] failures confined to 1 of 3 hosts (10.0.0.7:8080): not tripping
    /// the school breaker; outlier detection ejects single hosts`.
    pub fn log_line(&self, breaker: &str) -> String {
        format!(
            "[CIRCUIT_BREAKER] {}: not tripping the {breaker} breaker; outlier detection ejects single hosts",
            self.summary()
        )
    }

    /// `failures confined to 1 of 3 hosts (10.0.0.7:8080)`, as logs and views say it.
    pub fn summary(&self) -> String {
        let what = match self.reason {
            TripReason::SlowCallRate => "slow calls",
            _ => "failures",
        };
        let mut named: Vec<&str> = self.hosts.iter().take(SHOWN).map(Address::as_str).collect();
        let more = format!("{} more", self.hosts.len().saturating_sub(SHOWN));
        if self.hosts.len() > SHOWN {
            named.push(&more);
        }
        format!(
            "{what} confined to {} of {} hosts ({})",
            self.hosts.len(),
            self.known,
            named.join(", ")
        )
    }
}

/// What the closed-state rules say now.
pub(super) enum Verdict {
    /// Nothing would trip.
    Quiet,
    Trip(TripReason),
    /// A rule would trip, but the calls behind it came from too few hosts.
    Held(Confined),
}

/// Which closed-state rule, if any, says the breaker must open now: the first that fires
/// on calls spread over enough hosts. A rule that fires on calls confined to too few hosts
/// is held back, and said so. One that fires only because every host known failed waits,
/// while the breaker's picture of the cluster is young and this worker has other calls
/// out (`others_out`): their hosts may be the ones not heard from yet. The timer, which
/// has no call out, settles it within a period.
pub(super) fn verdict(record: &Record, s: &Settings, now_ms: u64, others_out: bool) -> Verdict {
    let mut held = None;
    for (reason, rule) in firing(record, s, now_ms).into_iter().flatten() {
        if s.trip_min_hosts <= 1 {
            return Verdict::Trip(reason);
        }
        match record
            .hosts
            .spread(rule, s.trip_min_hosts, now_ms, s.window)
        {
            Spread::Enough => return Verdict::Trip(reason),
            Spread::EveryKnownHost if others_out && record.hosts.young(now_ms) => {}
            Spread::EveryKnownHost => return Verdict::Trip(reason),
            Spread::Confined(hosts, known) => {
                held = held.or(Some(Confined {
                    reason,
                    hosts,
                    known,
                    started: false,
                    counted: false,
                }))
            }
        }
    }
    held.map_or(Verdict::Quiet, Verdict::Held)
}

/// The closed-state rules whose thresholds are met, in the order they are reported, with
/// the calls each stands on.
fn firing(record: &Record, s: &Settings, now_ms: u64) -> [Option<(TripReason, Rule)>; 3] {
    let streak = (s.failure_threshold > 0 && record.consecutive_failures >= s.failure_threshold)
        .then_some((TripReason::ConsecutiveFailures, Rule::Streak));
    let counts = record.counts(s, now_ms);
    if counts.calls < s.minimum_requests {
        return [streak, None, None];
    }
    let rate = (s.failure_rate_threshold > 0.0
        && counts.failure_rate() >= s.failure_rate_threshold)
        .then_some((TripReason::FailureRate, Rule::Failures));
    let slow = (s.slow_call_rate_threshold > 0.0
        && counts.slow_rate() >= s.slow_call_rate_threshold)
        .then_some((TripReason::SlowCallRate, Rule::Slow));
    [streak, rate, slow]
}

/// Ends an episode of held-back trips once the failures behind it are gone (nothing in
/// the window, no streak), not as soon as a rate dips under its threshold, so a rate
/// hovering at the threshold does not log a line each time it crosses. Reports whether
/// the record changed.
pub(super) fn end_episode(record: &mut Record, s: &Settings, now_ms: u64) -> bool {
    let counts = record.counts(s, now_ms);
    let over = counts.failures == 0 && counts.slow == 0 && record.consecutive_failures == 0;
    let ends = record.hosts.confined && over;
    if ends {
        record.hosts.confined = false;
    }
    ends
}
