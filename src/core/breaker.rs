//! Admission and recording, in the two steps a filter needs (gobreaker's `Allow`, then the
//! outcome later): [`admit`] when a request arrives, [`record`] when its stream ends. Both
//! work on a [`Record`] the caller loaded and say whether it must be written back, so the
//! common case (closed, success) can skip the shared-data write.

use super::outcome::Outcome;
use super::settings::Settings;
use super::state::{Cause, Record, State, Transition, TripReason};
use super::window::Bucket;

/// What a request was granted, carried until its outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Generation the request started in; outcomes from older generations are ignored.
    pub generation: u32,
    /// Whether it holds one of the half-open probe slots.
    pub probe: bool,
}

/// A refusal, with what the caller needs to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub state: State,
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
    fn clean(value: T) -> Self {
        Step {
            value,
            dirty: false,
            transition: None,
        }
    }
    fn dirty(value: T, transition: Option<Transition>) -> Self {
        Step {
            value,
            dirty: true,
            transition,
        }
    }
}

/// How long a caller refused in half-open (all probe slots busy) is told to wait: the
/// probes' outcome is not known in advance, so a short retry is the honest answer.
const HALF_OPEN_RETRY_MS: u64 = 1_000;

/// Decides whether a request may go upstream now.
pub fn admit(record: &mut Record, settings: &Settings, now_ms: u64) -> Step<Admission> {
    let mut transition = None;
    match record.state {
        State::Closed => {
            return Step::clean(Admission::Admitted(Ticket {
                generation: record.generation,
                probe: false,
            }))
        }
        State::Open if now_ms < record.open_until_ms => {
            return Step::clean(Admission::Rejected(Rejection {
                state: State::Open,
                retry_after_ms: record.open_until_ms - now_ms,
            }))
        }
        State::Open => transition = Some(record.transition(Cause::OpenElapsed, settings, now_ms)),
        State::HalfOpen => {}
    }
    if record.probes_in_flight < settings.half_open_max_requests {
        record.probes_in_flight += 1;
        return Step::dirty(
            Admission::Admitted(Ticket {
                generation: record.generation,
                probe: true,
            }),
            transition,
        );
    }
    let rejected = Admission::Rejected(Rejection {
        state: State::HalfOpen,
        retry_after_ms: HALF_OPEN_RETRY_MS,
    });
    match transition {
        Some(t) => Step::dirty(rejected, Some(t)),
        None => Step::clean(rejected),
    }
}

/// Records the outcome of a request admitted with `ticket`.
pub fn record(
    record: &mut Record,
    settings: &Settings,
    ticket: Ticket,
    outcome: Outcome,
    now_ms: u64,
) -> Step<()> {
    if ticket.generation != record.generation {
        return Step::clean(());
    }
    match (record.state, ticket.probe) {
        (State::Closed, false) => record_closed(record, settings, outcome, now_ms),
        (State::HalfOpen, true) => record_probe(record, settings, outcome, now_ms),
        _ => Step::clean(()),
    }
}

fn record_closed(
    record: &mut Record,
    settings: &Settings,
    outcome: Outcome,
    now_ms: u64,
) -> Step<()> {
    match outcome {
        Outcome::Ignored => Step::clean(()),
        Outcome::Success => {
            let counts = Bucket {
                successes: 1,
                failures: 0,
            };
            record.window.add(counts, now_ms, settings.window_ms);
            record.consecutive_failures = 0;
            Step::dirty((), None)
        }
        Outcome::Failure(_) => {
            let counts = Bucket {
                successes: 0,
                failures: 1,
            };
            record.window.add(counts, now_ms, settings.window_ms);
            record.consecutive_failures = record.consecutive_failures.saturating_add(1);
            let transition = trip_reason(record, settings, now_ms)
                .map(|reason| record.transition(Cause::Tripped(reason), settings, now_ms));
            Step::dirty((), transition)
        }
    }
}

fn record_probe(
    record: &mut Record,
    settings: &Settings,
    outcome: Outcome,
    now_ms: u64,
) -> Step<()> {
    record.probes_in_flight = record.probes_in_flight.saturating_sub(1);
    let transition = match outcome {
        Outcome::Ignored => None,
        Outcome::Success => {
            record.probe_successes = record.probe_successes.saturating_add(1);
            (record.probe_successes >= settings.success_threshold)
                .then(|| record.transition(Cause::Recovered, settings, now_ms))
        }
        Outcome::Failure(_) => {
            Some(record.transition(Cause::Tripped(TripReason::ProbeFailed), settings, now_ms))
        }
    };
    Step::dirty((), transition)
}

/// Which closed-state rule, if any, says the breaker must open now.
fn trip_reason(record: &Record, settings: &Settings, now_ms: u64) -> Option<TripReason> {
    if settings.failure_threshold > 0 && record.consecutive_failures >= settings.failure_threshold {
        return Some(TripReason::ConsecutiveFailures);
    }
    let counts = record.counts(settings, now_ms);
    let rate_on = settings.failure_rate_threshold > 0.0;
    if rate_on
        && counts.calls >= settings.minimum_requests
        && counts.failure_rate() >= settings.failure_rate_threshold
    {
        return Some(TripReason::FailureRate);
    }
    None
}

/// Moves the breaker on with time alone: an open breaker whose time is up goes half-open.
pub fn tick(record: &mut Record, settings: &Settings, now_ms: u64) -> Step<()> {
    if record.state == State::Open && now_ms >= record.open_until_ms {
        let t = record.transition(Cause::OpenElapsed, settings, now_ms);
        return Step::dirty((), Some(t));
    }
    Step::clean(())
}

/// Successes a worker has seen but not yet written to the shared record. A closed breaker
/// with no failure streak gains nothing from hearing about each success at once, so they
/// are batched and folded in on the next write, keeping shared-data writes off the
/// success path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    generation: u32,
    successes: u32,
}

impl Tally {
    /// Whether the outcome may wait in the tally instead of being written now, judged
    /// against the freshest record this worker has seen.
    pub fn can_defer(last_seen: &Record, ticket: Ticket, outcome: Outcome) -> bool {
        outcome == Outcome::Success
            && !ticket.probe
            && last_seen.state == State::Closed
            && last_seen.generation == ticket.generation
            && last_seen.consecutive_failures == 0
    }

    /// Adds one success from `generation`; successes from an older generation are dropped.
    pub fn defer(&mut self, generation: u32) {
        if self.generation != generation {
            *self = Tally {
                generation,
                successes: 0,
            };
        }
        self.successes = self.successes.saturating_add(1);
    }

    pub fn is_empty(&self) -> bool {
        self.successes == 0
    }

    /// Folds the tally into `record` and empties it; reports whether the record changed.
    pub fn fold_into(&mut self, record: &mut Record, settings: &Settings, now_ms: u64) -> bool {
        let pending = std::mem::take(self);
        if pending.successes == 0
            || pending.generation != record.generation
            || record.state != State::Closed
        {
            return false;
        }
        let counts = Bucket {
            successes: pending.successes,
            failures: 0,
        };
        record.window.add(counts, now_ms, settings.window_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outcome::Failure;
    use proptest::prelude::*;

    const FAIL: Outcome = Outcome::Failure(Failure::Status(503));

    fn settings() -> Settings {
        Settings {
            failure_threshold: 3,
            failure_rate_threshold: 0.5,
            minimum_requests: 10,
            window_ms: 10_000,
            open_duration_ms: 30_000,
            half_open_max_requests: 2,
            success_threshold: 2,
        }
    }

    fn admitted(step: Step<Admission>) -> Ticket {
        match step.value {
            Admission::Admitted(t) => t,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    fn call(r: &mut Record, s: &Settings, outcome: Outcome, now: u64) -> Option<Transition> {
        let ticket = admitted(admit(r, s, now));
        record(r, s, ticket, outcome, now).transition
    }

    fn open(r: &mut Record, s: &Settings, now: u64) {
        for _ in 0..s.failure_threshold {
            call(r, s, FAIL, now);
        }
        assert_eq!(r.state, State::Open);
    }

    #[test]
    fn closed_admits_without_touching_the_record() {
        let s = settings();
        let mut r = Record::default();
        let step = admit(&mut r, &s, 0);
        assert!(!step.dirty);
        assert_eq!(
            step.value,
            Admission::Admitted(Ticket {
                generation: 0,
                probe: false
            })
        );
    }

    #[test]
    fn trips_after_the_consecutive_failure_threshold() {
        let s = settings();
        let mut r = Record::default();
        assert_eq!(call(&mut r, &s, FAIL, 0), None);
        assert_eq!(call(&mut r, &s, FAIL, 1), None);
        let t = call(&mut r, &s, FAIL, 2).expect("third failure trips");
        assert_eq!(t.cause, Cause::Tripped(TripReason::ConsecutiveFailures));
        assert_eq!(t.counts.consecutive_failures, 3);
        assert_eq!(r.state, State::Open);
    }

    #[test]
    fn a_success_breaks_the_failure_streak() {
        let s = settings();
        let mut r = Record::default();
        for _ in 0..2 {
            call(&mut r, &s, FAIL, 0);
        }
        call(&mut r, &s, Outcome::Success, 0);
        for _ in 0..2 {
            call(&mut r, &s, FAIL, 0);
        }
        assert_eq!(r.state, State::Closed);
    }

    #[test]
    fn trips_on_failure_rate_once_the_window_holds_enough_calls() {
        let s = Settings {
            failure_threshold: 0,
            ..settings()
        };
        let mut r = Record::default();
        for i in 0..9 {
            let outcome = if i % 2 == 0 { FAIL } else { Outcome::Success };
            assert_eq!(call(&mut r, &s, outcome, i * 100), None, "call {i}");
        }
        let t = call(&mut r, &s, FAIL, 1_000).expect("the tenth call brings 6/10");
        assert_eq!(t.cause, Cause::Tripped(TripReason::FailureRate));
        assert_eq!((t.counts.failures, t.counts.calls), (6, 10));
    }

    #[test]
    fn failures_that_aged_out_do_not_count_toward_the_rate() {
        let s = Settings {
            failure_threshold: 0,
            ..settings()
        };
        let mut r = Record::default();
        for _ in 0..9 {
            call(&mut r, &s, FAIL, 0);
        }
        for i in 0..9 {
            assert_eq!(call(&mut r, &s, Outcome::Success, 20_000 + i), None);
        }
        assert_eq!(call(&mut r, &s, FAIL, 20_010), None, "1 of 10 is below 50%");
    }

    #[test]
    fn switched_off_rules_never_trip() {
        let s = Settings {
            failure_threshold: 0,
            failure_rate_threshold: 0.0,
            ..settings()
        };
        let mut r = Record::default();
        for i in 0..1_000 {
            call(&mut r, &s, FAIL, i);
        }
        assert_eq!(r.state, State::Closed);
    }

    #[test]
    fn open_rejects_with_the_time_left_rounded_up() {
        let s = settings();
        let mut r = Record::default();
        open(&mut r, &s, 1_000);
        let step = admit(&mut r, &s, 1_001);
        assert!(!step.dirty);
        match step.value {
            Admission::Rejected(rej) => {
                assert_eq!(rej.state, State::Open);
                assert_eq!(rej.retry_after_ms, 29_999);
                assert_eq!(rej.retry_after_secs(), 30);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_is_never_zero() {
        let rej = Rejection {
            state: State::Open,
            retry_after_ms: 0,
        };
        assert_eq!(rej.retry_after_secs(), 1);
        let rej = Rejection {
            state: State::Open,
            retry_after_ms: 1_001,
        };
        assert_eq!(rej.retry_after_secs(), 2);
    }

    #[test]
    fn the_first_request_after_the_open_time_becomes_a_probe() {
        let s = settings();
        let mut r = Record::default();
        open(&mut r, &s, 0);
        let step = admit(&mut r, &s, 30_000);
        assert!(step.dirty);
        assert_eq!(step.transition.map(|t| t.to), Some(State::HalfOpen));
        assert!(admitted(step).probe);
        assert_eq!(r.probes_in_flight, 1);
    }

    #[test]
    fn half_open_admits_only_its_probe_limit() {
        let s = settings();
        let mut r = Record::default();
        open(&mut r, &s, 0);
        tick(&mut r, &s, 30_000);
        assert!(admitted(admit(&mut r, &s, 30_001)).probe);
        assert!(admitted(admit(&mut r, &s, 30_002)).probe);
        let step = admit(&mut r, &s, 30_003);
        assert!(!step.dirty);
        assert!(matches!(
            step.value,
            Admission::Rejected(Rejection {
                state: State::HalfOpen,
                ..
            })
        ));
    }

    #[test]
    fn enough_successful_probes_close_the_breaker() {
        let s = settings();
        let mut r = Record::default();
        open(&mut r, &s, 0);
        let t1 = admitted(admit(&mut r, &s, 30_000));
        let t2 = admitted(admit(&mut r, &s, 30_000));
        assert_eq!(
            record(&mut r, &s, t1, Outcome::Success, 30_010).transition,
            None
        );
        let t = record(&mut r, &s, t2, Outcome::Success, 30_020)
            .transition
            .expect("second success closes");
        assert_eq!(t.to, State::Closed);
        assert_eq!(r.consecutive_failures, 0);
        assert_eq!(r.counts(&s, 30_020).calls, 0, "the window starts afresh");
    }

    #[test]
    fn one_failed_probe_reopens() {
        let s = settings();
        let mut r = Record::default();
        open(&mut r, &s, 0);
        let t1 = admitted(admit(&mut r, &s, 30_000));
        let t = record(&mut r, &s, t1, FAIL, 30_100).transition.unwrap();
        assert_eq!(t.cause, Cause::Tripped(TripReason::ProbeFailed));
        assert_eq!(r.open_until_ms, 60_100);
    }

    #[test]
    fn an_ignored_probe_frees_its_slot() {
        let s = Settings {
            half_open_max_requests: 1,
            ..settings()
        };
        let mut r = Record::default();
        open(&mut r, &s, 0);
        let t1 = admitted(admit(&mut r, &s, 30_000));
        assert!(matches!(
            admit(&mut r, &s, 30_000).value,
            Admission::Rejected(_)
        ));
        record(&mut r, &s, t1, Outcome::Ignored, 30_001);
        assert!(admitted(admit(&mut r, &s, 30_002)).probe);
    }

    #[test]
    fn outcomes_from_an_older_generation_are_ignored() {
        let s = settings();
        let mut r = Record::default();
        let early = admitted(admit(&mut r, &s, 0));
        open(&mut r, &s, 0);
        tick(&mut r, &s, 30_000);
        let probe = admitted(admit(&mut r, &s, 30_000));
        let before = r.clone();
        let step = record(&mut r, &s, early, FAIL, 30_001);
        assert!(!step.dirty);
        assert_eq!(r, before, "a failure from before the trip changes nothing");
        assert!(record(&mut r, &s, probe, Outcome::Success, 30_002).dirty);
    }

    #[test]
    fn tick_moves_open_to_half_open_only_when_time_is_up() {
        let s = settings();
        let mut r = Record::default();
        open(&mut r, &s, 0);
        assert!(!tick(&mut r, &s, 29_999).dirty);
        let step = tick(&mut r, &s, 30_000);
        assert_eq!(step.transition.map(|t| t.to), Some(State::HalfOpen));
        assert!(!tick(&mut r, &s, 30_001).dirty, "only once");
    }

    #[test]
    fn deferred_successes_count_toward_the_rate_once_folded() {
        let s = Settings {
            failure_threshold: 0,
            ..settings()
        };
        let mut r = Record::default();
        let mut tally = Tally::default();
        for _ in 0..10 {
            let ticket = admitted(admit(&mut r, &s, 0));
            assert!(Tally::can_defer(&r, ticket, Outcome::Success));
            tally.defer(ticket.generation);
        }
        assert!(tally.fold_into(&mut r, &s, 0));
        assert!(tally.is_empty());
        for _ in 0..9 {
            assert_eq!(call(&mut r, &s, FAIL, 1), None, "9 of 19 is below 50%");
        }
        assert!(call(&mut r, &s, FAIL, 2).is_some(), "10 of 20 trips");
    }

    #[test]
    fn successes_are_not_deferred_while_a_failure_streak_is_open() {
        let s = settings();
        let mut r = Record::default();
        call(&mut r, &s, FAIL, 0);
        let ticket = admitted(admit(&mut r, &s, 0));
        assert!(!Tally::can_defer(&r, ticket, Outcome::Success));
        assert!(!Tally::can_defer(&r, ticket, FAIL));
    }

    #[test]
    fn a_tally_from_before_a_trip_is_dropped() {
        let s = settings();
        let mut r = Record::default();
        let mut tally = Tally::default();
        tally.defer(0);
        open(&mut r, &s, 0);
        assert!(!tally.fold_into(&mut r, &s, 1));
        assert!(tally.is_empty());
    }

    /// A step of a random schedule: admit a request, or finish the n-th one in flight.
    #[derive(Debug, Clone)]
    enum Event {
        Arrive,
        Finish(usize, u8),
        Wait(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => Just(Event::Arrive),
            3 => (any::<usize>(), 0u8..3).prop_map(|(i, o)| Event::Finish(i, o)),
            1 => (0u64..20_000).prop_map(Event::Wait),
        ]
    }

    proptest! {
        #[test]
        fn half_open_never_admits_more_than_its_limit(
            limit in 1u32..5,
            successes in 1u32..4,
            events in proptest::collection::vec(event(), 1..400),
        ) {
            let s = Settings {
                half_open_max_requests: limit,
                success_threshold: successes,
                failure_threshold: 2,
                open_duration_ms: 5_000,
                ..Settings::default()
            };
            let mut r = Record::default();
            let mut now = 0u64;
            let mut in_flight: Vec<Ticket> = Vec::new();
            for e in events {
                match e {
                    Event::Arrive => {
                        if let Admission::Admitted(t) = admit(&mut r, &s, now).value {
                            in_flight.push(t);
                        }
                    }
                    Event::Finish(i, o) if !in_flight.is_empty() => {
                        let t = in_flight.swap_remove(i % in_flight.len());
                        let outcome = match o {
                            0 => Outcome::Success,
                            1 => FAIL,
                            _ => Outcome::Ignored,
                        };
                        record(&mut r, &s, t, outcome, now);
                    }
                    Event::Finish(..) => {}
                    Event::Wait(ms) => {
                        now += ms;
                        tick(&mut r, &s, now);
                    }
                }
                let live_probes = in_flight
                    .iter()
                    .filter(|t| t.probe && t.generation == r.generation)
                    .count() as u32;
                if r.state == State::HalfOpen {
                    prop_assert!(live_probes <= limit);
                    prop_assert_eq!(live_probes, r.probes_in_flight);
                } else {
                    prop_assert_eq!(live_probes, 0);
                }
            }
        }
    }
}
