//! The breaker's own probe, one behaviour per test, on a fake clock.

use super::*;
use crate::core::breaker::probe_due::lost_at_ms;
use crate::core::breaker::{admit, next_timer_ms, tick, Admission, RejectKind};
use crate::core::outcome::StatusSet;
use crate::core::probe_spec::{judge, ProbeMethod};
use crate::core::state::Transition;
use proptest::prelude::*;

fn probe() -> ProbeSettings {
    ProbeSettings {
        path: "/health".into(),
        method: ProbeMethod::Get,
        headers: vec![("x-probe".into(), "1".into())],
        authority: None,
        timeout_ms: 1_000,
        expect_status: StatusSet::empty().with_range(200, 299),
        interval_ms: 2_000,
    }
}

fn settings() -> Settings {
    Settings {
        failure_threshold: 1,
        open_duration_ms: 10_000,
        backoff_multiplier: 2.0,
        max_open_duration_ms: 100_000,
        success_threshold: 1,
        probe: Some(probe()),
        ..Settings::default()
    }
}

/// A breaker that tripped at `at` and is open for 10 s.
fn tripped(s: &Settings, at: u64) -> Record {
    let mut r = Record::default();
    r.transition(Cause::Tripped(TripReason::ConsecutiveFailures), s, at);
    r
}

fn passed(latency_ms: u64) -> ProbeReport {
    judge(&probe(), Some(200), latency_ms)
}

fn claimed(r: &mut Record, s: &Settings, now: u64) -> ProbeTicket {
    claim(r, s, now).value.expect("a probe is due")
}

fn answer(r: &mut Record, s: &Settings, t: ProbeTicket, p: ProbeReport, now: u64) -> Transition {
    answered(r, s, t, p, now).transition.expect("a transition")
}

#[test]
fn the_probe_goes_when_the_open_time_ends_and_a_pass_closes() {
    let s = settings();
    let mut r = tripped(&s, 1_000);
    assert_eq!(claim(&mut r, &s, 10_999).value, None, "still open");
    let step = claim(&mut r, &s, 11_000);
    assert_eq!(r.state, State::HalfOpen, "{step:?}");
    let ticket = step.value.expect("claimed at once");
    assert!(step.dirty && r.probes_in_flight == 1);
    let t = answer(&mut r, &s, ticket, passed(12), 11_012);
    assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
    assert_eq!(
        t.to_string(),
        "CLOSED: recovery successful after 1 passing health probe (the last answered 200 in 12ms)"
    );
}

#[test]
fn users_are_refused_while_it_probes_and_told_when_the_next_probe_goes() {
    let s = settings();
    let mut r = tripped(&s, 0);
    let ticket = claimed(&mut r, &s, 10_000);
    for (now, wait) in [(10_000, 2_000), (10_500, 1_500)] {
        match admit(&mut r, &s, now, 0).value {
            Admission::Rejected(no) => {
                assert_eq!((no.kind, no.retry_after_ms), (RejectKind::HalfOpen, wait));
            }
            other => panic!("a user got {other:?}"),
        }
    }
    let step = answered(&mut r, &s_two(), ticket, passed(5), 10_600);
    assert!(step.transition.is_none(), "one of two passes");
    match admit(&mut r, &s, 11_000, 0).value {
        Admission::Rejected(no) => assert_eq!(no.retry_after_ms, 1_000, "next at 12s"),
        other => panic!("a user got {other:?}"),
    }
}

fn s_two() -> Settings {
    Settings {
        success_threshold: 2,
        ..settings()
    }
}

#[test]
fn passes_below_the_threshold_space_the_probes_by_the_interval() {
    let s = s_two();
    let mut r = tripped(&s, 0);
    let first = claimed(&mut r, &s, 10_000);
    assert_eq!(claim(&mut r, &s, 10_100).value, None, "one out at a time");
    answered(&mut r, &s, first, passed(30), 10_030);
    assert_eq!((r.state, r.probe_successes), (State::HalfOpen, 1));
    assert_eq!(next_due_ms(&r, &probe()), Some(12_000));
    assert_eq!(claim(&mut r, &s, 11_999).value, None);
    let second = claimed(&mut r, &s, 12_000);
    let t = answer(&mut r, &s, second, passed(30), 12_030);
    assert_eq!(t.to, State::Closed);
    assert!(
        t.to_string().contains("after 2 passing health probes"),
        "{t}"
    );
}

#[test]
fn a_failed_probe_reopens_with_backoff() {
    let s = settings();
    let mut r = tripped(&s, 0);
    let ticket = claimed(&mut r, &s, 10_000);
    let report = judge(&probe(), Some(500), 3);
    assert_eq!(report.result, ProbeResult::Failure);
    let t = answer(&mut r, &s, ticket, report, 10_003);
    assert_eq!(
        (t.to, t.cause.reason()),
        (State::Open, Some(TripReason::ProbeFailed))
    );
    assert_eq!(
        t.open_until_ms, 30_003,
        "twice the open time: trip 2 in a row"
    );
    assert_eq!(
        t.to_string(),
        "OPENED: the health probe answered 500 in 3ms, open for 20s (trip 2 in a row)"
    );
    assert_eq!(claim(&mut r, &s, 30_002).value, None);
    assert!(
        claim(&mut r, &s, 30_003).value.is_some(),
        "probes again after the new open time"
    );
}

#[test]
fn a_probe_at_its_timeout_timed_out_and_reopens() {
    let s = settings();
    let mut r = tripped(&s, 0);
    let ticket = claimed(&mut r, &s, 10_000);
    let report = judge(&probe(), Some(504), 1_000);
    assert_eq!(report.result, ProbeResult::Timeout);
    assert_eq!(
        judge(&probe(), Some(200), 1_000).result,
        ProbeResult::Timeout
    );
    assert_eq!(judge(&probe(), None, 10).result, ProbeResult::Failure);
    assert_eq!(judge(&probe(), Some(504), 899).result, ProbeResult::Failure);
    assert_eq!(
        judge(&probe(), Some(504), 900).result,
        ProbeResult::Timeout,
        "Envoy's own"
    );
    assert_eq!(judge(&probe(), None, 990).result, ProbeResult::Timeout);
    assert_eq!(judge(&probe(), Some(200), 990).result, ProbeResult::Success);
    let t = answer(&mut r, &s, ticket, report, 11_000);
    assert_eq!(t.to, State::Open);
    assert!(
        t.to_string()
            .starts_with("OPENED: the health probe timed out after 1s"),
        "{t}"
    );
}

#[test]
fn a_probe_that_cannot_be_sent_is_tried_again_after_the_interval() {
    let s = settings();
    let mut r = tripped(&s, 0);
    let ticket = claimed(&mut r, &s, 10_000);
    let error = ProbeReport {
        result: ProbeResult::Error,
        status: None,
        latency_ms: 0,
    };
    let step = answered(&mut r, &s, ticket, error, 10_000);
    assert!(step.dirty && step.transition.is_none());
    assert_eq!((r.state, r.probes_in_flight), (State::HalfOpen, 0));
    assert_eq!(claim(&mut r, &s, 11_999).value, None);
    let again = claimed(&mut r, &s, 12_000);
    assert!(unsent(&mut r, again).dirty, "another Envoy probes");
    assert_eq!(next_due_ms(&r, &probe()), Some(14_000));
}

#[test]
fn a_late_answer_from_an_older_episode_changes_nothing() {
    let s = settings();
    let mut r = tripped(&s, 0);
    let old = claimed(&mut r, &s, 10_000);
    // Its worker died: the claim is given up after the timeout and a grace.
    assert_eq!(lost_at_ms(&r, &probe()), Some(12_000));
    assert!(tick(&mut r, &s, 11_999).transition.is_none());
    let t = tick(&mut r, &s, 12_000).transition.expect("lost");
    assert_eq!(t.cause, Cause::Tripped(TripReason::HalfOpenTimeout));
    let before = r.clone();
    let step = answered(&mut r, &s, old, passed(5), 12_001);
    assert!(!step.dirty && step.transition.is_none());
    assert_eq!(r, before);
    assert!(!unsent(&mut r, old).dirty);
}

#[test]
fn the_timer_wakes_for_the_next_probe_and_for_a_lost_one() {
    let s = s_two();
    let mut r = tripped(&s, 0);
    assert_eq!(next_timer_ms(&r, &s, 5_000), Some(10_000));
    let ticket = claimed(&mut r, &s, 10_000);
    assert_eq!(next_timer_ms(&r, &s, 10_000), Some(12_000), "lost at");
    answered(&mut r, &s, ticket, passed(5), 10_005);
    assert_eq!(next_timer_ms(&r, &s, 10_005), Some(12_000), "next due");
}

#[test]
fn without_a_probe_block_half_open_admits_users_as_before() {
    let s = Settings {
        probe: None,
        ..settings()
    };
    let mut r = tripped(&s, 0);
    assert_eq!(claim(&mut r, &s, 10_000).value, None);
    assert_eq!(r.state, State::HalfOpen, "time still moves it");
    assert!(matches!(admit(&mut r, &s, 10_000, 0).value, Admission::Admitted(t) if t.probe));
}

#[test]
fn a_disabled_or_forced_breaker_sends_no_probe() {
    let s = Settings {
        mode: Mode::ForcedOpen,
        ..settings()
    };
    let mut r = Record::default();
    assert_eq!(claim(&mut r, &s, 0).value, None);
    assert_eq!(claim(&mut r, &s, 1_000_000).value, None);
    assert_eq!(r.state, State::Open);
    let s = Settings {
        mode: Mode::Disabled,
        ..settings()
    };
    let mut r = tripped(&s, 0);
    assert_eq!(claim(&mut r, &s, 20_000).value, None);
}

#[test]
fn the_request_names_method_path_authority_and_headers() {
    let p = probe();
    assert_eq!(
        p.request_headers("school"),
        [
            (":method", "GET"),
            (":path", "/health"),
            (":authority", "school"),
            ("user-agent", "envoy-circuit-breaker-probe"),
            ("x-probe", "1"),
        ]
    );
    let p = ProbeSettings {
        authority: Some("school.internal".into()),
        headers: vec![("user-agent".into(), "mine".into())],
        ..probe()
    };
    assert_eq!(
        p.request_headers("school"),
        [
            (":method", "GET"),
            (":path", "/health"),
            (":authority", "school.internal"),
            ("user-agent", "mine"),
        ]
    );
    assert_eq!(p.target(), "GET /health");
}

#[test]
fn the_last_probe_round_trips_and_junk_reads_as_none() {
    let last = LastProbe {
        at_ms: 1_700_000_000_000,
        report: judge(&probe(), Some(503), 7),
    };
    assert_eq!(LastProbe::decode(&last.encode()), Some(last));
    assert_eq!(LastProbe::decode(b"junk"), None);
    assert_eq!(LastProbe::decode(&[b' '; 300]), None);
}

proptest! {
    /// Whatever order claims, answers and ticks come in, at most one probe is ever out,
    /// and no user is admitted while half-open.
    #[test]
    fn one_probe_at_most_and_no_user_while_probing(
        steps in proptest::collection::vec((0u8..5, 0u64..3_000), 1..80),
    ) {
        let s = s_two();
        let mut r = tripped(&s, 0);
        let mut now = 0;
        let mut out: Vec<ProbeTicket> = Vec::new();
        for (what, dt) in steps {
            now += dt;
            match what {
                0 => if let Some(t) = claim(&mut r, &s, now).value { out.push(t) },
                1 => if let Some(t) = out.pop() { answered(&mut r, &s, t, passed(1), now); },
                2 => if let Some(t) = out.pop() {
                    answered(&mut r, &s, t, judge(&probe(), Some(500), 1), now);
                },
                3 => { tick(&mut r, &s, now); },
                _ => {
                    let a = admit(&mut r, &s, now, 0).value;
                    prop_assert!(r.state != State::HalfOpen || !matches!(a, Admission::Admitted(_)));
                }
            }
            prop_assert!(r.probes_in_flight <= 1);
            let live = out.iter().filter(|t| holds(&r, **t)).count();
            prop_assert!(live <= 1, "{live} claims hold");
        }
    }
}
