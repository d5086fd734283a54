//! The breaker's rules, one behaviour per test, on a fake clock.

use super::*;
use crate::core::codec::RecordHeader;
use crate::core::outcome::Failure;
use crate::core::window::WindowSpec;
use proptest::prelude::*;

const FAIL: Outcome = Outcome::Failure(Failure::Status(503));
const OK: Outcome = Outcome::Success;

fn settings() -> Settings {
    Settings {
        failure_threshold: 3,
        failure_rate_threshold: 0.5,
        minimum_requests: 10,
        window: WindowSpec::Time { window_ms: 10_000 },
        open_duration_ms: 30_000,
        backoff_multiplier: 1.0,
        half_open_max_requests: 2,
        success_threshold: 2,
        ..Settings::default()
    }
}

fn quick(outcome: Outcome) -> Call {
    Call {
        outcome,
        elapsed_ms: 1,
        retry_after_ms: None,
    }
}

fn admitted(step: Step<Admission>) -> Ticket {
    match step.value {
        Admission::Admitted(t) => t,
        other => panic!("expected admission, got {other:?}"),
    }
}

fn rejected(step: Step<Admission>) -> Rejection {
    match step.value {
        Admission::Rejected(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Asserts that the request was refused because the breaker is forced open.
fn refused_as_forced(step: Step<Admission>) {
    let rej = rejected(step);
    assert_eq!(
        (rej.kind, rej.reason),
        (RejectKind::Open, Some(TripReason::Forced))
    );
}

fn call_with(r: &mut Record, s: &Settings, c: Call, now: u64) -> Option<Transition> {
    let ticket = admitted(admit(r, s, now, 0));
    record(r, s, ticket, c, now).transition
}

fn call(r: &mut Record, s: &Settings, outcome: Outcome, now: u64) -> Option<Transition> {
    call_with(r, s, quick(outcome), now)
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
    let step = admit(&mut r, &s, 0, 0);
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
fn a_glance_admits_only_where_no_clock_is_needed() {
    let s = settings();
    let mut r = Record::default();
    let at = |r: &Record, now| admit_at_a_glance(&RecordHeader::of(r), &s, &mut Now::fixed(now));
    assert_eq!(
        at(&r, 0),
        Some(Admission::Admitted(Ticket {
            generation: 0,
            probe: false
        }))
    );
    r.ramping = true;
    assert_eq!(at(&r, 0), None, "the ramp needs the clock");
    r.ramping = false;
    r.mode_override = Some(Mode::Disabled);
    assert_eq!(at(&r, 0), Some(Admission::Passed { would_reject: None }));
    r.mode_override = Some(Mode::ForcedOpen);
    assert_eq!(at(&r, 0), None, "forcing open is a write");
    r.mode_override = None;
    open(&mut r, &s, 0);
    let refused = at(&r, 1_000);
    assert!(
        matches!(
            refused,
            Some(Admission::Rejected(Rejection {
                kind: RejectKind::Open,
                retry_after_ms: 29_000,
                ..
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(
        at(&r, 30_000 - TIMER_SLACK_MS),
        None,
        "close to half-open: ask the clock"
    );
}

proptest! {
    #[test]
    fn a_glance_never_contradicts_the_full_admission(
        state in 0u8..3, ramping: bool, mode in 0usize..5, forced: bool,
        coarse in 0u64..100_000, late in 0u64..TIMER_SLACK_MS,
    ) {
        let s = settings();
        let mut r = Record {
            state: [State::Closed, State::Open, State::HalfOpen][state as usize],
            ramping,
            changed_at_ms: 0,
            open_until_ms: 50_000,
            reason: Some(if forced { TripReason::Forced } else { TripReason::FailureRate }),
            mode_override: mode.checked_sub(1).map(|i| Mode::ALL[i]),
            ..Record::default()
        };
        // The real clock is the coarse one plus however late the timer runs.
        let now = coarse + late;
        if let Some(quick) = admit_at_a_glance(&RecordHeader::of(&r), &s, &mut Now::new(coarse, || now)) {
            let full = admit(&mut r, &s, now, 0);
            let same = match (quick, full.value) {
                (Admission::Rejected(a), Admission::Rejected(b)) => a.kind == b.kind && a.reason == b.reason,
                (Admission::Passed { would_reject: a }, Admission::Passed { would_reject: b }) => a.is_some() == b.is_some(),
                (a, b) => a == b,
            };
            prop_assert!(same, "glance {:?} vs full {:?}", quick, full.value);
            prop_assert!(!full.dirty);
        }
    }
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
    call(&mut r, &s, OK, 0);
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
        let outcome = if i % 2 == 0 { FAIL } else { OK };
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
        assert_eq!(call(&mut r, &s, OK, 20_000 + i), None);
    }
    assert_eq!(call(&mut r, &s, FAIL, 20_010), None, "1 of 10 is below 50%");
}

#[test]
fn the_count_window_trips_on_the_last_n_calls() {
    let s = Settings {
        failure_threshold: 0,
        window: WindowSpec::Count { size: 10 },
        ..settings()
    };
    let mut r = Record::default();
    for _ in 0..4 {
        call(&mut r, &s, FAIL, 0);
    }
    for _ in 0..10 {
        call(&mut r, &s, OK, 0);
    }
    for _ in 0..4 {
        assert_eq!(
            call(&mut r, &s, FAIL, 1_000_000),
            None,
            "old failures left the ring"
        );
    }
    let t = call(&mut r, &s, FAIL, 1_000_000).expect("5 of the last 10");
    assert_eq!(t.cause, Cause::Tripped(TripReason::FailureRate));
}

#[test]
fn slow_calls_trip_on_their_rate() {
    let s = Settings {
        failure_threshold: 0,
        failure_rate_threshold: 0.0,
        slow_call_duration_ms: 500,
        slow_call_rate_threshold: 0.5,
        ..settings()
    };
    let mut r = Record::default();
    let slow = Call {
        outcome: OK,
        elapsed_ms: 800,
        retry_after_ms: None,
    };
    for i in 0..9 {
        let c = if i % 2 == 0 { slow } else { quick(OK) };
        assert_eq!(call_with(&mut r, &s, c, i), None);
    }
    let t = call_with(&mut r, &s, slow, 10).expect("6 slow of 10");
    assert_eq!(t.cause, Cause::Tripped(TripReason::SlowCallRate));
    assert_eq!((t.counts.slow, t.counts.calls), (6, 10));
    assert!(t.to_string().contains("slow-call rate 60%"), "{t}");
}

#[test]
fn slow_calls_need_the_minimum_too() {
    let s = Settings {
        slow_call_duration_ms: 100,
        slow_call_rate_threshold: 0.1,
        ..settings()
    };
    let mut r = Record::default();
    let slow = Call {
        outcome: OK,
        elapsed_ms: 5_000,
        retry_after_ms: None,
    };
    for i in 0..9 {
        assert_eq!(call_with(&mut r, &s, slow, i), None);
    }
}

#[test]
fn a_slow_probe_reopens_as_a_failed_probe() {
    let s = Settings {
        slow_call_duration_ms: 100,
        slow_call_rate_threshold: 0.5,
        ..settings()
    };
    let mut r = Record::default();
    open(&mut r, &s, 0);
    let ticket = admitted(admit(&mut r, &s, 30_000, 0));
    let slow = Call {
        outcome: OK,
        elapsed_ms: 200,
        retry_after_ms: None,
    };
    let t = record(&mut r, &s, ticket, slow, 30_200).transition.unwrap();
    assert_eq!(t.cause, Cause::Tripped(TripReason::ProbeFailed));
    assert_eq!(r.reason, Some(TripReason::ProbeFailed));
    assert!(
        t.to_string()
            .starts_with("OPENED: a half-open probe failed"),
        "{t}"
    );
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
    let step = admit(&mut r, &s, 1_001, 0);
    assert!(!step.dirty);
    let rej = rejected(step);
    assert_eq!(rej.kind, RejectKind::Open);
    assert_eq!(rej.reason, Some(TripReason::ConsecutiveFailures));
    assert_eq!(rej.retry_after_ms, 29_999);
    assert_eq!(rej.retry_after_secs(), 30);
}

#[test]
fn retry_after_is_never_zero() {
    let rej = |ms| Rejection {
        kind: RejectKind::Open,
        reason: None,
        retry_after_ms: ms,
    };
    assert_eq!(rej(0).retry_after_secs(), 1);
    assert_eq!(rej(1_001).retry_after_secs(), 2);
}

#[test]
fn the_first_request_after_the_open_time_becomes_a_probe() {
    let s = settings();
    let mut r = Record::default();
    open(&mut r, &s, 0);
    let step = admit(&mut r, &s, 30_000, 0);
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
    assert!(admitted(admit(&mut r, &s, 30_001, 0)).probe);
    assert!(admitted(admit(&mut r, &s, 30_002, 0)).probe);
    let step = admit(&mut r, &s, 30_003, 0);
    assert!(!step.dirty);
    assert_eq!(rejected(step).kind, RejectKind::HalfOpen);
}

#[test]
fn enough_successful_probes_close_the_breaker() {
    let s = settings();
    let mut r = Record::default();
    open(&mut r, &s, 0);
    let t1 = admitted(admit(&mut r, &s, 30_000, 0));
    let t2 = admitted(admit(&mut r, &s, 30_000, 0));
    assert_eq!(record(&mut r, &s, t1, quick(OK), 30_010).transition, None);
    let t = record(&mut r, &s, t2, quick(OK), 30_020)
        .transition
        .expect("closes");
    assert_eq!(t.to, State::Closed);
    assert_eq!(r.consecutive_failures, 0);
    assert_eq!(r.counts(&s, 30_020).calls, 0, "the window starts afresh");
}

#[test]
fn one_failed_probe_reopens() {
    let s = settings();
    let mut r = Record::default();
    open(&mut r, &s, 0);
    let t1 = admitted(admit(&mut r, &s, 30_000, 0));
    let t = record(&mut r, &s, t1, quick(FAIL), 30_100)
        .transition
        .unwrap();
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
    let t1 = admitted(admit(&mut r, &s, 30_000, 0));
    rejected(admit(&mut r, &s, 30_000, 0));
    record(&mut r, &s, t1, quick(Outcome::Ignored), 30_001);
    assert!(admitted(admit(&mut r, &s, 30_002, 0)).probe);
}

#[test]
fn a_half_open_whose_probes_never_finish_opens_again() {
    let s = Settings {
        half_open_max_duration_ms: 5_000,
        ..settings()
    };
    let mut r = Record::default();
    open(&mut r, &s, 0);
    admitted(admit(&mut r, &s, 30_000, 0));
    admitted(admit(&mut r, &s, 30_000, 0));
    assert!(!tick(&mut r, &s, 34_999).dirty);
    let t = tick(&mut r, &s, 35_000)
        .transition
        .expect("gives up on the probes");
    assert_eq!(
        (t.to, t.cause),
        (State::Open, Cause::Tripped(TripReason::HalfOpenTimeout))
    );
    assert_eq!(t.trips_in_row, 2, "counts as another trip for the backoff");
}

#[test]
fn a_half_open_with_no_probe_out_waits_for_traffic() {
    let s = Settings {
        half_open_max_duration_ms: 5_000,
        ..settings()
    };
    let mut r = Record::default();
    open(&mut r, &s, 0);
    tick(&mut r, &s, 30_000);
    assert!(!tick(&mut r, &s, 90_000).dirty, "nothing to wait for yet");
    admitted(admit(&mut r, &s, 90_000, 0));
    assert!(
        !tick(&mut r, &s, 94_999).dirty,
        "the clock starts with the probe"
    );
    assert_eq!(
        tick(&mut r, &s, 95_000).transition.map(|t| t.to),
        Some(State::Open)
    );
}

#[test]
fn a_half_open_without_a_limit_waits_for_its_probes() {
    let s = Settings {
        half_open_max_duration_ms: 0,
        ..settings()
    };
    let mut r = Record::default();
    open(&mut r, &s, 0);
    admitted(admit(&mut r, &s, 30_000, 0));
    assert!(!tick(&mut r, &s, 10_000_000).dirty);
    assert_eq!(r.state, State::HalfOpen);
}

#[test]
fn repeated_trips_back_off_exponentially() {
    let s = Settings {
        open_duration_ms: 1_000,
        backoff_multiplier: 2.0,
        max_open_duration_ms: 5_000,
        ..settings()
    };
    let mut r = Record::default();
    open(&mut r, &s, 0);
    let mut now = 0;
    let mut open_times = vec![r.open_until_ms - now];
    for _ in 0..4 {
        now = r.open_until_ms;
        let ticket = admitted(admit(&mut r, &s, now, 0));
        record(&mut r, &s, ticket, quick(FAIL), now);
        open_times.push(r.open_until_ms - now);
    }
    assert_eq!(open_times, [1_000, 2_000, 4_000, 5_000, 5_000]);
}

#[test]
fn the_ramp_admits_a_growing_share_after_recovery() {
    let s = Settings {
        recovery_duration_ms: 10_000,
        half_open_max_requests: 1,
        success_threshold: 1,
        ..settings()
    };
    let mut r = Record::default();
    open(&mut r, &s, 0);
    let probe = admitted(admit(&mut r, &s, 30_000, 0));
    record(&mut r, &s, probe, quick(OK), 30_000);
    assert!(r.ramping);
    let share_at = |r: &mut Record, now: u64| {
        let admitted = (0..1_000u32)
            .filter(|i| {
                let roll = i.wrapping_mul(4_294_967);
                matches!(admit(r, &s, now, roll).value, Admission::Admitted(_))
            })
            .count();
        admitted as f64 / 1_000.0
    };
    assert!(share_at(&mut r, 30_000) < 0.01);
    assert!((share_at(&mut r, 32_500) - 0.25).abs() < 0.02);
    assert!((share_at(&mut r, 37_500) - 0.75).abs() < 0.02);
    let rej = rejected(admit(&mut r, &s, 31_000, u32::MAX));
    assert_eq!(
        (rej.kind, rej.retry_after_ms),
        (RejectKind::Recovering, 1_000)
    );
    assert_eq!(share_at(&mut r, 40_000), 1.0);
    assert!(
        tick(&mut r, &s, 40_000).dirty,
        "the timer clears the finished ramp"
    );
    assert!(!r.ramping);
}

#[test]
fn a_failure_rate_trip_during_the_ramp_reopens() {
    let s = Settings {
        failure_threshold: 0,
        minimum_requests: 4,
        recovery_duration_ms: 60_000,
        half_open_max_requests: 1,
        success_threshold: 1,
        ..settings()
    };
    let mut r = Record::default();
    for _ in 0..4 {
        call(&mut r, &s, FAIL, 0);
    }
    assert_eq!(r.state, State::Open);
    let probe = admitted(admit(&mut r, &s, 30_000, 0));
    record(&mut r, &s, probe, quick(OK), 30_000);
    for i in 0..4 {
        let ticket = admitted(admit(&mut r, &s, 40_000 + i, 0));
        record(&mut r, &s, ticket, quick(FAIL), 40_000 + i);
    }
    assert_eq!(
        (r.state, r.reason),
        (State::Open, Some(TripReason::FailureRate))
    );
}

#[test]
fn an_upstream_retry_after_opens_for_that_long_when_honoured() {
    let asked = Call {
        outcome: FAIL,
        elapsed_ms: 1,
        retry_after_ms: Some(7_000),
    };
    let s = Settings {
        honor_retry_after: true,
        ..settings()
    };
    let mut r = Record::default();
    let t = call_with(&mut r, &s, asked, 100).expect("one answer is enough");
    assert_eq!(t.cause, Cause::UpstreamAsked { wait_ms: 7_000 });
    assert_eq!(r.open_until_ms, 7_100);
    assert_eq!(
        rejected(admit(&mut r, &s, 200, 0)).reason,
        Some(TripReason::UpstreamAsked)
    );

    let ignored = settings();
    let mut r = Record::default();
    assert_eq!(
        call_with(&mut r, &ignored, asked, 100),
        None,
        "off by default"
    );
}

#[test]
fn a_probe_answered_with_retry_after_reopens_for_that_long() {
    let s = Settings {
        honor_retry_after: true,
        ..settings()
    };
    let mut r = Record::default();
    open(&mut r, &s, 0);
    let probe = admitted(admit(&mut r, &s, 30_000, 0));
    let asked = Call {
        outcome: FAIL,
        elapsed_ms: 1,
        retry_after_ms: Some(2_000),
    };
    let t = record(&mut r, &s, probe, asked, 30_000).transition.unwrap();
    assert_eq!((t.to, r.open_until_ms), (State::Open, 32_000));
}

#[test]
fn dry_run_decides_but_never_refuses() {
    let s = Settings {
        mode: Mode::DryRun,
        ..settings()
    };
    let mut r = Record::default();
    open(&mut r, &s, 0);
    match admit(&mut r, &s, 1_000, 0).value {
        Admission::Passed {
            would_reject: Some(rej),
        } => assert_eq!(rej.kind, RejectKind::Open),
        other => panic!("{other:?}"),
    }
    assert!(
        admitted(admit(&mut r, &s, 30_000, 0)).probe,
        "probes are still tracked"
    );
}

#[test]
fn forced_open_refuses_everything_and_lifting_it_probes_first() {
    let mut s = Settings {
        mode: Mode::ForcedOpen,
        ..settings()
    };
    let mut r = Record::default();
    let step = admit(&mut r, &s, 0, 0);
    assert_eq!(step.transition.map(|t| t.cause), Some(Cause::Forced));
    refused_as_forced(step);
    assert!(
        !tick(&mut r, &s, 1_000_000_000).dirty,
        "the timer never ends it"
    );
    s.mode = Mode::Enforce;
    let step = admit(&mut r, &s, 1_000_000_001, 0);
    assert_eq!(
        step.transition.map(|t| (t.cause, t.to)),
        Some((Cause::Released, State::HalfOpen))
    );
    assert!(admitted(step).probe);
}

#[test]
fn a_runtime_override_wins_over_the_configured_mode() {
    let s = settings();
    let mut r = Record {
        mode_override: Some(Mode::ForcedOpen),
        ..Record::default()
    };
    refused_as_forced(admit(&mut r, &s, 0, 0));
    r.mode_override = Some(Mode::Disabled);
    assert_eq!(
        admit(&mut r, &s, 1, 0).value,
        Admission::Passed { would_reject: None }
    );
}

#[test]
fn a_reset_closes_from_anywhere_and_forgets_the_backoff() {
    let s = settings();
    let mut r = Record::default();
    open(&mut r, &s, 0);
    let step = reset(&mut r, &s, 10);
    let t = step.transition.unwrap();
    assert_eq!(
        (t.from, t.to, t.cause),
        (State::Open, State::Closed, Cause::Reset)
    );
    assert_eq!((r.trips_in_row, r.consecutive_failures), (0, 0));
    admitted(admit(&mut r, &s, 11, 0));
}

#[test]
fn a_reset_does_not_lift_a_forced_open() {
    let s = Settings {
        mode: Mode::ForcedOpen,
        ..settings()
    };
    let mut r = Record::default();
    refused_as_forced(admit(&mut r, &s, 0, 0));
    let t = reset(&mut r, &s, 5).transition.unwrap();
    assert_eq!(t.cause, Cause::Forced);
    refused_as_forced(admit(&mut r, &s, 6, 0));
}

#[test]
fn a_mode_override_takes_effect_in_the_same_step() {
    let s = settings();
    let mut r = Record::default();
    let t = set_mode(&mut r, &s, Some(Mode::ForcedOpen), 0)
        .transition
        .unwrap();
    assert_eq!(t.cause, Cause::Forced);
    refused_as_forced(admit(&mut r, &s, 1, 0));
    let t = set_mode(&mut r, &s, None, 2).transition.unwrap();
    assert_eq!((t.cause, t.to), (Cause::Released, State::HalfOpen));
    assert!(set_mode(&mut r, &s, Some(Mode::DryRun), 3)
        .transition
        .is_none());
    assert_eq!(r.mode_override, Some(Mode::DryRun));
}

#[test]
fn disabled_passes_everything_and_moves_nothing() {
    let s = Settings {
        mode: Mode::Disabled,
        ..settings()
    };
    let mut r = Record {
        state: State::Open,
        open_until_ms: 10,
        ..Record::default()
    };
    assert_eq!(
        admit(&mut r, &s, 0, 0).value,
        Admission::Passed { would_reject: None }
    );
    assert!(!tick(&mut r, &s, 100).dirty);
    assert_eq!(r.state, State::Open);
}

#[test]
fn outcomes_from_an_older_generation_are_ignored() {
    let s = settings();
    let mut r = Record::default();
    let early = admitted(admit(&mut r, &s, 0, 0));
    open(&mut r, &s, 0);
    tick(&mut r, &s, 30_000);
    let probe = admitted(admit(&mut r, &s, 30_000, 0));
    let before = r.clone();
    let step = record(&mut r, &s, early, quick(FAIL), 30_001);
    assert!(!step.dirty);
    assert_eq!(r, before, "a failure from before the trip changes nothing");
    assert!(record(&mut r, &s, probe, quick(OK), 30_002).dirty);
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
    let mut tally = SuccessBatch::default();
    for _ in 0..10 {
        let ticket = admitted(admit(&mut r, &s, 0, 0));
        assert!(SuccessBatch::can_defer(
            &RecordHeader::of(&r),
            &s,
            ticket,
            &quick(OK)
        ));
        tally.defer(ticket.generation);
    }
    assert!(tally.fold_into(&mut r, &s, 0));
    for _ in 0..9 {
        assert_eq!(call(&mut r, &s, FAIL, 1), None, "9 of 19 is below 50%");
    }
    assert!(call(&mut r, &s, FAIL, 2).is_some(), "10 of 20 trips");
}

#[test]
fn only_plain_fast_successes_are_deferred() {
    let s = Settings {
        slow_call_duration_ms: 100,
        slow_call_rate_threshold: 0.5,
        honor_retry_after: true,
        ..settings()
    };
    let mut r = Record::default();
    let ticket = admitted(admit(&mut r, &s, 0, 0));
    assert!(SuccessBatch::can_defer(
        &RecordHeader::of(&r),
        &s,
        ticket,
        &quick(OK)
    ));
    assert!(!SuccessBatch::can_defer(
        &RecordHeader::of(&r),
        &s,
        ticket,
        &quick(FAIL)
    ));
    let slow = Call {
        outcome: OK,
        elapsed_ms: 100,
        retry_after_ms: None,
    };
    assert!(!SuccessBatch::can_defer(
        &RecordHeader::of(&r),
        &s,
        ticket,
        &slow
    ));
    let asked = Call {
        outcome: OK,
        elapsed_ms: 1,
        retry_after_ms: Some(1),
    };
    assert!(!SuccessBatch::can_defer(
        &RecordHeader::of(&r),
        &s,
        ticket,
        &asked
    ));
    call(&mut r, &s, FAIL, 0);
    assert!(
        !SuccessBatch::can_defer(&RecordHeader::of(&r), &s, ticket, &quick(OK)),
        "a streak is open"
    );
}

#[test]
fn the_timer_trips_when_folded_successes_complete_the_minimum() {
    let s = Settings {
        failure_threshold: 0,
        ..settings()
    };
    let mut r = Record::default();
    let mut tally = SuccessBatch::default();
    tally.defer(0);
    for i in 0..5 {
        assert_eq!(call(&mut r, &s, FAIL, 0), None);
        if i < 4 {
            assert_eq!(call(&mut r, &s, OK, 0), None);
        }
    }
    assert_eq!(
        r.counts(&s, 0).calls,
        9,
        "one success still waits in the tally"
    );
    assert!(tally.fold_into(&mut r, &s, 50));
    let t = tick(&mut r, &s, 100)
        .transition
        .expect("5 of 10 once folded");
    assert_eq!(t.cause, Cause::Tripped(TripReason::FailureRate));
}

#[test]
fn the_timer_never_trips_a_disabled_breaker() {
    let s = Settings {
        failure_threshold: 0,
        minimum_requests: 1,
        ..settings()
    };
    let mut r = Record::default();
    r.window.add_call(true, false, 0, s.window);
    let disabled = Settings {
        mode: Mode::Disabled,
        ..s.clone()
    };
    assert!(!tick(&mut r, &disabled, 1).dirty);
    assert!(tick(&mut r, &s, 1).transition.is_some());
}

#[test]
fn a_tally_from_before_a_trip_is_dropped() {
    let s = settings();
    let mut r = Record::default();
    let mut tally = SuccessBatch::default();
    tally.defer(0);
    open(&mut r, &s, 0);
    assert!(!tally.fold_into(&mut r, &s, 1));
}

/// A step of a random schedule: admit a request, finish one in flight, or let time pass.
#[derive(Debug, Clone)]
enum Event {
    Arrive(u32),
    Finish(usize, u8),
    Wait(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => any::<u32>().prop_map(Event::Arrive),
        3 => (any::<usize>(), 0u8..3).prop_map(|(i, o)| Event::Finish(i, o)),
        1 => (0u64..20_000).prop_map(Event::Wait),
    ]
}

proptest! {
    #[test]
    fn half_open_never_admits_more_than_its_limit(
        limit in 1u32..5,
        successes in 1u32..4,
        ramp in prop_oneof![Just(0u64), Just(3_000u64)],
        events in proptest::collection::vec(event(), 1..400),
    ) {
        let s = Settings {
            half_open_max_requests: limit,
            success_threshold: successes,
            failure_threshold: 2,
            open_duration_ms: 5_000,
            half_open_max_duration_ms: 10_000,
            recovery_duration_ms: ramp,
            backoff_multiplier: 1.5,
            ..Settings::default()
        };
        let mut r = Record::default();
        let mut now = 0u64;
        let mut in_flight: Vec<Ticket> = Vec::new();
        for e in events {
            match e {
                Event::Arrive(roll) => {
                    if let Admission::Admitted(t) = admit(&mut r, &s, now, roll).value {
                        in_flight.push(t);
                    }
                }
                Event::Finish(i, o) if !in_flight.is_empty() => {
                    let t = in_flight.swap_remove(i % in_flight.len());
                    let outcome = match o { 0 => OK, 1 => FAIL, _ => Outcome::Ignored };
                    record(&mut r, &s, t, quick(outcome), now);
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

#[test]
fn a_failed_store_passes_or_refuses_as_configured_but_never_adds_probes() {
    let pass = settings();
    let refuse = Settings {
        store_failure: crate::core::settings::StoreFailure::Refuse,
        ..settings()
    };
    let closed = RecordHeader::default();
    assert_eq!(
        when_store_fails(&closed, &pass),
        Admission::Passed { would_reject: None }
    );
    assert!(matches!(
        when_store_fails(&closed, &refuse),
        Admission::Rejected(_)
    ));
    for state in [State::Open, State::HalfOpen] {
        let g = RecordHeader {
            state,
            ..RecordHeader::default()
        };
        assert!(
            matches!(when_store_fails(&g, &pass), Admission::Rejected(_)),
            "{state:?}"
        );
    }
}

#[test]
fn a_closed_copy_is_trusted_only_while_no_trip_could_be_half_open_yet() {
    let s = settings();
    let closed = RecordHeader::of(&Record::default());
    assert!(trusts_copy(&closed, &s, 1_000, 1_100));
    assert!(
        !trusts_copy(&closed, &s, 1_000, 1_000 + MAX_COPY_AGE_MS),
        "too old"
    );
    let short = Settings {
        open_duration_ms: 200,
        ..settings()
    };
    assert!(
        !trusts_copy(&closed, &short, 1_000, 1_000),
        "open shorter than the slack"
    );
    let honours = Settings {
        honor_retry_after: true,
        ..settings()
    };
    assert!(!trusts_copy(&closed, &honours, 1_000, 1_000));
}

#[test]
fn an_open_copy_refuses_and_a_half_open_one_is_never_trusted() {
    let s = settings();
    let mut r = Record::default();
    open(&mut r, &s, 0);
    assert!(trusts_copy(&RecordHeader::of(&r), &s, 0, 100));
    r.state = State::HalfOpen;
    assert!(!trusts_copy(&RecordHeader::of(&r), &s, 0, 0));
}

proptest! {
    /// However the shared record moved after the copy was confirmed, a trusted closed copy
    /// never admits while the shared record is half-open: no probe limit is overrun.
    #[test]
    fn a_trusted_closed_copy_is_never_behind_a_half_open_breaker(
        open_ms in 1u64..5_000, jitter in 0.0f64..0.5, trip_after in 0u64..2_000,
        coarse_after in 0u64..2_000, late in 0u64..TIMER_SLACK_MS,
    ) {
        let s = Settings { open_duration_ms: open_ms, jitter, ..settings() };
        let copy = RecordHeader::of(&Record::default());
        let confirmed = 10_000;
        let mut shared = Record { consecutive_failures: s.failure_threshold, ..Record::default() };
        let trip_at = confirmed + trip_after;
        let _ = shared.transition(Cause::Tripped(TripReason::ConsecutiveFailures), &s, trip_at);
        let coarse = confirmed + coarse_after;
        let now = coarse + late;
        if trusts_copy(&copy, &s, confirmed, coarse) && now >= trip_at {
            let _ = admit(&mut shared, &s, now, 0);
            prop_assert_ne!(shared.state, State::HalfOpen);
        }
    }
}

#[test]
fn the_fleets_successes_close_half_open_and_never_count_down() {
    let s = Settings {
        success_threshold: 3,
        ..settings()
    };
    let mut r = Record::default();
    assert!(
        !fleet_successes(&mut r, &s, 5, 0).dirty,
        "closed: nothing to count"
    );
    open(&mut r, &s, 0);
    tick(&mut r, &s, 30_000);
    assert_eq!(r.state, State::HalfOpen);
    let step = fleet_successes(&mut r, &s, 2, 30_001);
    assert!(step.dirty && step.transition.is_none());
    assert_eq!(r.probe_successes, 2);
    assert!(
        !fleet_successes(&mut r, &s, 1, 30_002).dirty,
        "a lower count is older news"
    );
    let t = fleet_successes(&mut r, &s, 3, 30_003).transition;
    assert_eq!(
        t.map(|t| (t.from, t.to, t.cause)),
        Some((State::HalfOpen, State::Closed, Cause::Recovered))
    );
}

#[test]
fn an_idle_closed_breaker_with_an_empty_window_needs_no_timer() {
    let s = settings();
    assert_eq!(next_timer_ms(&Record::default(), &s, 1_000), None);
}

#[test]
fn a_closed_breaker_needs_the_timer_when_its_oldest_failures_leave_the_window() {
    let s = settings();
    let mut r = Record::default();
    call_with(&mut r, &s, quick(FAIL), 2_500);
    call_with(&mut r, &s, quick(OK), 2_600);
    // Slices of 1 s in a 10 s window: the calls of 2.5 s leave at 12 s.
    assert_eq!(next_timer_ms(&r, &s, 3_000), Some(12_000));
    assert!(tick(&mut r, &s, 12_000).transition.is_none());
    assert_eq!(next_timer_ms(&r, &s, 12_000), None);
}

#[test]
fn a_closed_breaker_with_successes_only_needs_no_timer() {
    let s = settings();
    let mut r = Record::default();
    call_with(&mut r, &s, quick(OK), 2_500);
    assert_eq!(
        next_timer_ms(&r, &s, 3_000),
        None,
        "no rate moves as they leave"
    );
}

#[test]
fn an_open_breaker_needs_the_timer_when_its_open_time_runs_out() {
    let s = settings();
    let mut r = Record::default();
    for _ in 0..3 {
        call_with(&mut r, &s, quick(FAIL), 1_000);
    }
    assert_eq!(r.state, State::Open);
    let until = r.open_until_ms;
    // The failures leave the 10 s window at 11 s, before the open time ends.
    assert_eq!(next_timer_ms(&r, &s, 1_000), Some(until.min(11_000)));
    assert!(
        tick(&mut r, &s, until - 1).transition.is_none(),
        "not before"
    );
    let t = tick(&mut r, &s, until).transition;
    assert_eq!(t.map(|t| t.to), Some(State::HalfOpen), "at its time");
}

#[test]
fn a_half_open_breaker_needs_the_timer_only_while_probes_can_time_out() {
    let s = Settings {
        half_open_max_duration_ms: 5_000,
        window: WindowSpec::Count { size: 10 },
        ..settings()
    };
    let mut r = Record::default();
    for _ in 0..3 {
        call_with(&mut r, &s, quick(FAIL), 1_000);
    }
    let opened = r.open_until_ms;
    assert!(tick(&mut r, &s, opened).transition.is_some());
    assert_eq!(next_timer_ms(&r, &s, opened), None, "waiting for traffic");
    admitted(admit(&mut r, &s, opened + 10, 0));
    assert_eq!(next_timer_ms(&r, &s, opened + 10), Some(opened + 5_010));
}

#[test]
fn a_forced_mode_not_yet_followed_needs_the_timer_at_once() {
    let s = Settings {
        mode: Mode::ForcedOpen,
        ..settings()
    };
    let mut r = Record::default();
    assert_eq!(next_timer_ms(&r, &s, 7), Some(7));
    assert!(tick(&mut r, &s, 7).transition.is_some());
    assert_eq!(
        next_timer_ms(&r, &s, 7),
        None,
        "held open by its mode, not by time"
    );
}
