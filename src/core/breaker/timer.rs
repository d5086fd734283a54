//! When a breaker next needs the timer: the moment time alone could move its record or
//! change what it shows, so a worker can leave every other breaker alone on its tick.

use super::probe_due;
use crate::core::settings::{Mode, Settings};
use crate::core::state::{Record, State, TripReason};

use super::rules::{verdict, Verdict};

/// Whether a confined-failures episode is over and only waits for the timer to end it (a
/// count window never empties by time, so nothing else would call the timer back).
fn episode_over(record: &Record, settings: &Settings, now_ms: u64) -> bool {
    let counts = record.counts(settings, now_ms);
    record.hosts.confined
        && counts.failures == 0
        && counts.slow == 0
        && record.consecutive_failures == 0
}

/// The earliest time at which [`super::tick`] could change `record`, or its failure and
/// slow-call rates could change: its open time running out, a half-open episode's probes
/// timing out, the breaker's own probe falling due, the ramp after a recovery ending, the
/// oldest calls leaving a window that holds failures or slow calls (a rate rule may trip as
/// they go); `now_ms` while a
/// forced mode is still to be followed, or while a closed breaker's rules would trip on the
/// timer's own look (as a trip that waited for a worker's calls still out does) or end a
/// confined-failures episode. `None`: time alone changes nothing.
pub fn next_timer_ms(record: &Record, settings: &Settings, now_ms: u64) -> Option<u64> {
    let mode = record.mode(settings);
    let forced = record.state == State::Open && record.reason == Some(TripReason::Forced);
    let follow = matches!(
        (mode, forced),
        (Mode::ForcedOpen, false) | (Mode::Enforce | Mode::DryRun, true)
    );
    let settle = record.state == State::Closed
        && mode != Mode::Disabled
        && (matches!(verdict(record, settings, now_ms, false), Verdict::Trip(_))
            || episode_over(record, settings, now_ms));
    if follow || settle {
        return Some(now_ms);
    }
    let moves = match record.state {
        _ if mode == Mode::Disabled => None,
        State::Open if !forced => Some(record.open_until_ms),
        // The breaker's own probe: the next one due, or the one out given up as lost.
        State::HalfOpen if settings.probe.is_some() => settings.probe.as_ref().and_then(|p| {
            probe_due::next_due_ms(record, p).or_else(|| probe_due::lost_at_ms(record, p))
        }),
        State::HalfOpen
            if settings.half_open_max_duration_ms > 0 && record.probes_in_flight > 0 =>
        {
            Some(
                record
                    .probing_since_ms
                    .saturating_add(settings.half_open_max_duration_ms),
            )
        }
        _ => None,
    };
    let ramp_ends = (record.ramping && mode != Mode::Disabled).then(|| {
        record
            .changed_at_ms
            .saturating_add(settings.recovery_duration_ms)
    });
    // Calls leaving a window of successes only change no rate, and trip nothing.
    let counts = record.counts(settings, now_ms);
    let window = (counts.failures > 0 || counts.slow > 0)
        .then(|| record.window.next_change_ms(now_ms, settings.window))
        .flatten();
    [moves, ramp_ends, window].into_iter().flatten().min()
}
