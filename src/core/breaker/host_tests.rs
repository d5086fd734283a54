//! The trip rules and the hosts behind them: failures confined to fewer than
//! `trip_min_hosts` hosts do not trip; spread ones, hostless ones and a one-host
//! cluster's trip as before, and `trip_min_hosts: 1` is the breaker as it was.

use super::*;
use crate::core::hosts::{Hosts, Rule, CENSUS_MS, SAMPLE_EVERY};
use crate::core::outcome::Failure;
use crate::core::window::WindowSpec;
use proptest::prelude::*;

const FAIL: Outcome = Outcome::Failure(Failure::Status(503));
const OK: Outcome = Outcome::Success;

fn settings() -> Settings {
    Settings {
        failure_threshold: 5,
        failure_rate_threshold: 0.5,
        minimum_requests: 10,
        window: WindowSpec::Time { window_ms: 10_000 },
        open_duration_ms: 30_000,
        ..Settings::default()
    }
}

fn host(name: &str) -> Option<Address> {
    Address::new(name.as_bytes())
}

fn call(outcome: Outcome, elapsed_ms: u64) -> Call {
    Call {
        outcome,
        elapsed_ms,
        retry_after_ms: None,
    }
}

/// One admitted call answered by `from` (`None`: no host).
fn answer(
    r: &mut Record,
    s: &Settings,
    outcome: Outcome,
    from: Option<&str>,
    now: u64,
) -> Step<Option<Confined>> {
    let Admission::Admitted(ticket) = admit(r, s, now, 0).value else {
        panic!("refused at {now}: {:?}", r.state);
    };
    let answered = Answered {
        by: from.and_then(host),
        others_out: false,
    };
    record_from(r, s, ticket, call(outcome, 1), answered, now)
}

/// A cluster of `a:1`, `b:1`, `c:1` that has answered one success each.
fn three_hosts(s: &Settings) -> Record {
    let mut r = Record::default();
    for h in ["a:1", "b:1", "c:1"] {
        answer(&mut r, s, OK, Some(h), 0);
    }
    r
}

#[test]
fn a_streak_from_one_host_of_three_does_not_trip() {
    let s = settings();
    let mut r = three_hosts(&s);
    for i in 1..=4 {
        let step = answer(&mut r, &s, FAIL, Some("a:1"), i);
        assert_eq!(step.value, None, "under the threshold: nothing held back");
    }
    let step = answer(&mut r, &s, FAIL, Some("a:1"), 5);
    assert_eq!(step.transition, None);
    let held = step.value.expect("held back");
    assert_eq!(held.reason, TripReason::ConsecutiveFailures);
    assert_eq!((held.hosts, held.known), (vec![host("a:1").unwrap()], 3));
    assert!(held.started && held.counted);
    let again = answer(&mut r, &s, FAIL, Some("a:1"), 6).value.unwrap();
    assert!(!again.started && again.counted, "one log line per episode");
    assert_eq!(r.state, State::Closed);
    assert_eq!(
        next_timer_ms(&r, &s, 6),
        Some(10_000),
        "a held-back trip waits for its calls to leave the window, not for the timer"
    );
}

#[test]
fn a_failure_from_a_second_host_trips() {
    let s = settings();
    let mut r = three_hosts(&s);
    for i in 1..=5 {
        answer(&mut r, &s, FAIL, Some("a:1"), i);
    }
    let t = answer(&mut r, &s, FAIL, Some("b:1"), 6).transition;
    assert_eq!(
        t.map(|t| t.cause),
        Some(Cause::Tripped(TripReason::ConsecutiveFailures))
    );
}

#[test]
fn every_host_failing_trips_at_the_same_failure_as_before() {
    for min_hosts in [1, 2, 3, 1_000] {
        let s = Settings {
            trip_min_hosts: min_hosts,
            ..settings()
        };
        let mut r = three_hosts(&s);
        let rotation = ["a:1", "b:1", "c:1"];
        let tripped_at = (0..20).find(|i| {
            let h = rotation[*i % 3];
            answer(&mut r, &s, FAIL, Some(h), 10 + *i as u64)
                .transition
                .is_some()
        });
        assert_eq!(
            tripped_at,
            Some(4),
            "trip_min_hosts {min_hosts}: the fifth failure"
        );
    }
}

#[test]
fn a_one_host_cluster_trips_as_before() {
    let s = settings();
    let mut r = Record::default();
    answer(&mut r, &s, OK, Some("only:1"), 0);
    for i in 1..=4 {
        assert_eq!(answer(&mut r, &s, FAIL, Some("only:1"), i).transition, None);
    }
    assert!(answer(&mut r, &s, FAIL, Some("only:1"), 5)
        .transition
        .is_some());
}

/// One admitted failure answered by `from` while this worker has other calls out.
fn failure_with_others_out(
    r: &mut Record,
    s: &Settings,
    from: &str,
    now: u64,
) -> Step<Option<Confined>> {
    let Admission::Admitted(ticket) = admit(r, s, now, 0).value else {
        panic!("refused at {now}");
    };
    let answered = Answered {
        by: host(from),
        others_out: true,
    };
    record_from(r, s, ticket, call(FAIL, 1), answered, now)
}

#[test]
fn right_after_start_a_trip_on_the_only_host_heard_waits_for_the_calls_still_out() {
    let s = settings();
    let mut r = Record::default();
    for i in 0..8 {
        let step = failure_with_others_out(&mut r, &s, "fast:1", 10 + i);
        assert_eq!(
            step.transition, None,
            "failure {i}: the others may be other hosts"
        );
        assert_eq!(step.value, None, "waiting is not holding back");
    }
    answer(&mut r, &s, OK, Some("slow:1"), 30);
    for i in 0..8 {
        let step = failure_with_others_out(&mut r, &s, "fast:1", 40 + i);
        assert_eq!(step.transition, None);
    }
    assert!(
        r.hosts.confined,
        "now one of two hosts: held back, and said so"
    );
}

#[test]
fn the_timer_settles_a_trip_that_waited() {
    let s = settings();
    let mut r = Record::default();
    for i in 0..5 {
        failure_with_others_out(&mut r, &s, "only:1", 10 + i);
    }
    assert_eq!(r.state, State::Closed);
    assert_eq!(
        next_timer_ms(&r, &s, 100),
        Some(100),
        "the timer is wanted at once"
    );
    let t = tick(&mut r, &s, 100).transition;
    assert_eq!(
        t.map(|t| t.cause),
        Some(Cause::Tripped(TripReason::ConsecutiveFailures)),
        "no call is out on the timer: one host it is"
    );
}

#[test]
fn once_the_picture_is_old_a_one_host_cluster_trips_at_once_whatever_is_out() {
    let s = settings();
    let mut r = Record::default();
    answer(&mut r, &s, OK, Some("only:1"), 1);
    for i in 0..4 {
        failure_with_others_out(&mut r, &s, "only:1", CENSUS_MS + i);
    }
    let t = failure_with_others_out(&mut r, &s, "only:1", CENSUS_MS + 5).transition;
    assert!(t.is_some());
}

#[test]
fn failures_with_no_host_trip_as_before() {
    let s = settings();
    let mut r = three_hosts(&s);
    for i in 1..=4 {
        answer(&mut r, &s, FAIL, Some("a:1"), i);
    }
    let t = answer(&mut r, &s, FAIL, None, 5).transition;
    assert!(t.is_some(), "no healthy host: the whole cluster");
}

#[test]
fn the_failure_rate_honours_the_hosts() {
    let s = Settings {
        failure_threshold: 0,
        ..settings()
    };
    let mut r = three_hosts(&s);
    for i in 0..20u64 {
        let (outcome, from) = if i % 3 == 2 {
            (OK, "b:1")
        } else {
            (FAIL, "a:1")
        };
        let step = answer(&mut r, &s, outcome, Some(from), 100 + i);
        assert_eq!(
            step.transition, None,
            "call {i}: two thirds failing, one host"
        );
    }
    let t = answer(&mut r, &s, FAIL, Some("c:1"), 200).transition;
    assert_eq!(
        t.map(|t| t.cause),
        Some(Cause::Tripped(TripReason::FailureRate))
    );
}

#[test]
fn slow_calls_from_one_host_do_not_trip() {
    let s = Settings {
        failure_threshold: 0,
        failure_rate_threshold: 0.0,
        slow_call_rate_threshold: 0.5,
        slow_call_duration_ms: 100,
        ..settings()
    };
    let mut r = three_hosts(&s);
    let slow = |r: &mut Record, from: &str, now| {
        let Admission::Admitted(ticket) = admit(r, &s, now, 0).value else {
            panic!("refused");
        };
        let answered = Answered {
            by: host(from),
            others_out: false,
        };
        record_from(r, &s, ticket, call(OK, 500), answered, now)
    };
    let mut held = None;
    for i in 0..12 {
        let step = slow(&mut r, "a:1", 10 + i);
        assert_eq!(step.transition, None);
        held = held.or(step.value);
    }
    let held = held.expect("the slow-call rule was held back");
    assert_eq!(held.reason, TripReason::SlowCallRate);
    assert!(held
        .log_line("school")
        .contains("slow calls confined to 1 of 3 hosts (a:1)"));
    assert!(slow(&mut r, "b:1", 30).transition.is_some());
}

#[test]
fn a_host_that_recovers_and_another_that_fails_later_are_counted_per_window() {
    let s = settings();
    let mut r = three_hosts(&s);
    for i in 1..=6 {
        assert_eq!(answer(&mut r, &s, FAIL, Some("a:1"), i).transition, None);
    }
    answer(&mut r, &s, OK, Some("a:1"), 100);
    // a's failures leave the window before b's begin.
    for i in 0..6 {
        let step = answer(&mut r, &s, FAIL, Some("b:1"), 11_000 + i);
        assert_eq!(step.transition, None, "b alone in the window");
    }
    let step = answer(&mut r, &s, FAIL, Some("b:1"), 11_100);
    assert_eq!(
        step.value.map(|c| c.hosts),
        Some(vec![host("b:1").unwrap()])
    );
}

#[test]
fn the_same_failures_inside_one_window_trip() {
    let s = settings();
    let mut r = three_hosts(&s);
    for i in 1..=6 {
        answer(&mut r, &s, FAIL, Some("a:1"), i);
    }
    answer(&mut r, &s, OK, Some("a:1"), 100);
    let tripped = (0..6).any(|i| {
        answer(&mut r, &s, FAIL, Some("b:1"), 5_000 + i)
            .transition
            .is_some()
    });
    assert!(tripped, "a's failures are still in the window: two hosts");
}

#[test]
fn an_episode_ends_when_its_failures_are_gone() {
    let s = settings();
    let mut r = three_hosts(&s);
    for i in 1..=5 {
        answer(&mut r, &s, FAIL, Some("a:1"), i);
    }
    assert!(r.hosts.confined);
    answer(&mut r, &s, OK, Some("b:1"), 6);
    assert!(r.hosts.confined, "the failures are still in the window");
    assert!(!tick(&mut r, &s, 5_000).dirty);
    let step = tick(&mut r, &s, 11_000);
    assert!(step.dirty && !r.hosts.confined, "the window emptied");
    for i in 0..5 {
        answer(&mut r, &s, FAIL, Some("a:1"), 20_000 + i);
    }
    assert!(r.hosts.confined);
}

#[test]
fn the_timer_holds_a_confined_rate_back_too() {
    let s = Settings {
        failure_threshold: 0,
        ..settings()
    };
    let mut r = three_hosts(&s);
    for i in 0..5 {
        answer(&mut r, &s, FAIL, Some("a:1"), i);
    }
    let mut batch = SuccessBatch::default();
    batch.defer(r.generation);
    batch.defer(r.generation);
    batch.fold_into(&mut r, &s, 10);
    let step = tick(&mut r, &s, 10);
    assert_eq!(step.transition, None, "5 of 10, but one host");
    assert!(!r.hosts.confined, "only a recorded call starts an episode");
    let t = tick(
        &mut Record {
            hosts: Hosts::default(),
            ..r.clone()
        },
        &s,
        10,
    )
    .transition;
    assert!(
        t.is_some(),
        "the same rate with nothing known of the hosts trips"
    );
}

#[test]
fn a_trip_or_a_reset_ends_the_episode() {
    let s = settings();
    let mut r = three_hosts(&s);
    for i in 1..=5 {
        answer(&mut r, &s, FAIL, Some("a:1"), i);
    }
    r.transition(Cause::Tripped(TripReason::ConsecutiveFailures), &s, 10);
    assert!(!r.hosts.confined);
    reset(&mut r, &s, 20);
    assert!(r.hosts.behind(Rule::Failures, 20, s.window).0.is_empty());
    assert_eq!(r.hosts.known(20, s.window), 3, "the hosts stay known");
}

#[test]
fn a_batch_reads_the_host_of_one_success_in_so_many() {
    let mut batch = SuccessBatch::default();
    let mut reads = 0;
    for _ in 0..SAMPLE_EVERY * 3 {
        batch.defer(1);
        if batch.wants_host() {
            reads += 1;
            batch.sample(host("a:1"));
        }
    }
    assert_eq!(reads, 3, "the first, then one in {SAMPLE_EVERY}");
    let taken = batch.take();
    assert_eq!(taken.sampled, host("a:1"));
    assert!(batch.is_empty() && batch.sampled.is_none());
    batch.defer(1);
    assert!(
        batch.wants_host(),
        "the pace survives a fold: the 97th is due"
    );
    batch.sample(None);
    batch.defer(1);
    assert!(
        !batch.wants_host(),
        "a read that found no host still sets the pace"
    );
}

#[test]
fn a_folded_sample_makes_its_host_known() {
    let s = settings();
    let mut r = Record::default();
    let mut batch = SuccessBatch::default();
    batch.defer(0);
    batch.sample(host("b:1"));
    assert!(batch.fold_into(&mut r, &s, 0));
    assert_eq!(r.hosts.known(0, s.window), 1);
    assert_eq!(r.window.totals(0, s.window).successes, 1);
}

fn event() -> impl Strategy<Value = (bool, Option<u8>, u64, bool)> {
    (
        any::<bool>(),
        proptest::option::weighted(0.9, 0u8..4),
        0u64..800,
        any::<bool>(),
    )
}

proptest! {
    /// With `trip_min_hosts: 1` the hosts change nothing: the same calls move the breaker
    /// exactly as the breaker that never heard of hosts.
    #[test]
    fn one_host_is_the_breaker_as_it_was(events in proptest::collection::vec(event(), 0..300)) {
        let s = Settings { trip_min_hosts: 1, ..settings() };
        let mut with = Record::default();
        let mut without = Record::default();
        let mut now = 0;
        for (failed, from, step, ticks) in events {
            now += step;
            let outcome = if failed { FAIL } else { OK };
            let from = from.map(|h| format!("h{h}:1"));
            for r in [&mut with, &mut without] {
                let _ = admit(r, &s, now, 0);
            }
            let ticket = Ticket { generation: with.generation, probe: with.state == State::HalfOpen };
            let answered = Answered { by: from.as_deref().and_then(host), others_out: failed };
            let a = record_from(&mut with, &s, ticket, call(outcome, 1), answered, now);
            let b = record(&mut without, &s, ticket, call(outcome, 1), now);
            prop_assert_eq!(a.transition, b.transition);
            prop_assert_eq!(a.value, None);
            if ticks {
                prop_assert_eq!(tick(&mut with, &s, now).transition, tick(&mut without, &s, now).transition);
            }
            prop_assert_eq!(RecordHeader::of(&with), RecordHeader::of(&without));
        }
    }

    /// Failures that all come from one host of several never open the breaker.
    #[test]
    fn one_bad_host_never_trips(
        calls in proptest::collection::vec((any::<bool>(), 0u8..3, 0u64..200), 0..400),
    ) {
        let s = settings();
        let mut r = three_hosts(&s);
        let mut now = 1;
        for (failed, other, step) in calls {
            now += step;
            let (outcome, from) = if failed { (FAIL, "a:1".to_string()) } else { (OK, format!("h{other}:1")) };
            let step = answer(&mut r, &s, outcome, Some(&from), now);
            prop_assert_eq!(step.transition, None);
            let _ = tick(&mut r, &s, now);
            prop_assert_eq!(r.state, State::Closed);
        }
    }
}

#[test]
fn the_log_line_names_the_hosts_and_the_breaker() {
    let c = Confined {
        reason: TripReason::FailureRate,
        hosts: vec![host("10.0.0.7:8080").unwrap()],
        known: 3,
        started: true,
        counted: true,
    };
    assert_eq!(
        c.log_line("school"),
        "[CIRCUIT_BREAKER] failures confined to 1 of 3 hosts (10.0.0.7:8080): not tripping the school breaker; outlier detection ejects single hosts"
    );
    let many = Confined {
        reason: TripReason::SlowCallRate,
        hosts: (0..6).map(|i| host(&format!("h{i}:1")).unwrap()).collect(),
        known: 16,
        ..c
    };
    assert!(
        many.log_line("s").starts_with(
            "[CIRCUIT_BREAKER] slow calls confined to 6 of 16 hosts (h0:1, h1:1, h2:1, h3:1, 2 more)"
        ),
        "{}",
        many.log_line("s")
    );
}
