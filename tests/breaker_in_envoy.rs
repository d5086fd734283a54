//! The breaker loaded into the real Envoy in front of the real services: trips, fast JSON
//! refusals, exact half-open probing across workers, recovery and the config refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Short durations so a test sees a whole trip and recovery in a few seconds.
const FAST: &str = r#"{
  "default": { "failure_threshold": 5, "open_duration": "1500ms" },
  "clusters": {
    "school":  { "failure_threshold": 5, "open_duration": "1500ms" },
    "student": { "failure_threshold": 3, "open_duration": "1500ms",
                 "half_open_max_requests": 2, "success_threshold": 2 }
  }
}"#;

#[test]
fn healthy_traffic_passes_through_untouched() {
    let stack = stack(None, 2);
    let r = stack.envoy.call("/schools");
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["data"][0]["name"], "Riverside High");
    let login = client::post_json(
        &stack.envoy.gateway,
        "/auth/login",
        &json!({"email": "test@example.com", "password": "test123"}),
    )
    .unwrap();
    assert_eq!(login.status, 200);
    assert_eq!(login.json().unwrap()["data"]["user"]["role"], "teacher");
    assert_eq!(stack.envoy.call("/students").status, 200);
    assert!(r.header("retry-after").is_none());
    assert_eq!(stack.school.hits(), 1);
}

#[test]
fn trips_after_the_threshold_and_answers_json_503_without_the_upstream() {
    let stack = stack(None, 2);
    trip_school(&stack);
    let seen_by_upstream = stack.school.hits();
    for _ in 0..10 {
        let r = stack.envoy.call("/schools");
        assert!(is_rejection(&r), "{} {}", r.status, r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json().unwrap();
        assert_eq!(body["cluster"], "school");
        let secs = body["retry_after_seconds"].as_u64().unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
        assert_eq!(r.header("retry-after"), Some(secs.to_string().as_str()));
    }
    assert_eq!(
        stack.school.hits(),
        seen_by_upstream,
        "nothing reached the upstream"
    );
    let opened = stack
        .envoy
        .wait_log("[CIRCUIT_BREAKER] school circuit breaker OPENED", 1);
    assert!(
        opened[0].contains("5 consecutive failures"),
        "{}",
        opened[0]
    );
}

#[test]
fn a_trip_on_one_worker_rejects_on_every_worker() {
    let stack = stack(None, 4);
    trip_school(&stack);
    // Forty fresh connections land on all four workers' listeners.
    let responses = burst(&stack.envoy.gateway, "/schools", 40);
    assert!(responses.iter().all(is_rejection));
    // Logged once per process, by the worker whose compare-and-swap made the move.
    stack.envoy.wait_log("school circuit breaker OPENED", 1);
}

#[test]
fn one_open_cluster_leaves_the_others_alone() {
    let stack = stack(None, 2);
    trip_school(&stack);
    assert_eq!(stack.envoy.call("/students").status, 200);
    let login = client::post_json(
        &stack.envoy.gateway,
        "/auth/login",
        &json!({"email": "admin@school.test", "password": "admin123"}),
    )
    .unwrap();
    assert_eq!(login.status, 200);
}

#[test]
fn half_open_admits_exactly_the_allowed_probes_under_concurrency() {
    let stack = stack(Some(FAST), 4);
    stack.student.fail_everything();
    for _ in 0..3 {
        stack.envoy.call("/students");
    }
    assert!(is_rejection(&stack.envoy.call("/students")));
    // Healthy again but slow, so the probes are still in flight while the burst lands.
    stack.student.heal_slowly(1500);
    let before = stack.student.hits();
    std::thread::sleep(Duration::from_millis(1700));
    let responses = burst(&stack.envoy.gateway, "/students", 60);
    let passed = responses.iter().filter(|r| r.status == 200).count();
    let rejected = responses.iter().filter(|r| is_rejection(r)).count();
    assert_eq!(
        stack.student.hits() - before,
        2,
        "exactly half_open_max_requests probes"
    );
    assert_eq!((passed, rejected), (2, 58));
    assert!(responses
        .iter()
        .filter(|r| is_rejection(r))
        .all(|r| r.header("x-circuit-breaker") == Some("half_open")));
    // Both probes succeeded, which is success_threshold: closed again.
    stack.student.heal();
    assert_eq!(stack.envoy.call("/students").status, 200);
    stack.envoy.wait_log("student circuit breaker CLOSED", 1);
}

#[test]
fn recovers_to_closed_after_the_open_time_and_a_good_probe() {
    let stack = stack(Some(FAST), 2);
    trip_school(&stack);
    stack.school.heal();
    assert!(is_rejection(&stack.envoy.call("/schools")));
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        stack.envoy.call("/schools").status,
        200,
        "the probe goes through"
    );
    for _ in 0..5 {
        assert_eq!(stack.envoy.call("/schools").status, 200);
    }
    let log = stack.envoy.wait_log("school circuit breaker", 3);
    assert!(log[0].contains("OPENED"));
    assert!(log[1].contains("HALF_OPEN"));
    assert!(log[2].contains("CLOSED: recovery successful"));
}

#[test]
fn the_timer_moves_open_to_half_open_without_traffic() {
    let stack = stack(Some(FAST), 2);
    trip_school(&stack);
    let gauge = r#"circuit_breaker_state{cluster="school"}"#;
    wait_for("the gauge to say open", Duration::from_secs(2), || {
        (stack.envoy.sample(gauge) == Some(1.0)).then_some(())
    });
    wait_for(
        "half-open with no request sent",
        Duration::from_secs(5),
        || (stack.envoy.sample(gauge) == Some(2.0)).then_some(()),
    );
    // Every worker ticks; the compare-and-swap lets only one of them make the move.
    stack.envoy.wait_log("school circuit breaker HALF_OPEN", 1);
}

#[test]
fn a_failed_probe_opens_the_breaker_again() {
    let stack = stack(Some(FAST), 2);
    trip_school(&stack);
    std::thread::sleep(Duration::from_millis(1600));
    let probe = stack.envoy.call("/schools");
    assert_eq!(probe.status, 503);
    assert!(
        !is_rejection(&probe),
        "the probe reached the failing upstream"
    );
    let r = stack.envoy.call("/schools");
    assert!(is_rejection(&r));
    assert_eq!(r.header("x-circuit-breaker"), Some("open"));
    stack.envoy.wait_log("OPENED: a half-open probe failed", 1);
}

#[test]
fn a_refused_connection_counts_as_a_failure() {
    let dead_port = free_port().unwrap();
    // The auth cluster points at a port nobody listens on.
    let stack = stack_with(None, 2, |y| point_cluster(&y, "auth", dead_port));
    for _ in 0..5 {
        let r = stack.envoy.call("/auth/validate");
        assert_eq!(r.status, 503);
        assert!(!is_rejection(&r));
    }
    let started = Instant::now();
    let r = stack.envoy.call("/auth/validate");
    assert!(is_rejection(&r), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(1));
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "auth"), ("outcome", "failure")],
        5,
    );
}

#[test]
fn requests_without_a_cluster_pass_through() {
    let stack = stack_with(None, 2, |y| {
        y.replace(
            "              - match: { prefix: \"/auth\" }",
            "              - match: { prefix: \"/direct\" }\n                direct_response: { status: 200, body: { inline_string: \"direct\" } }\n              - match: { prefix: \"/auth\" }",
        )
    });
    for _ in 0..10 {
        let r = stack.envoy.call("/direct");
        assert_eq!((r.status, r.text().as_str()), (200, "direct"));
    }
    assert_eq!(stack.envoy.call("/nowhere").status, 404);
    assert_eq!(stack.envoy.call("/schools").status, 200);
    // Only the one routed request is counted, once the timer has published it.
    stack
        .envoy
        .wait_counter("circuit_breaker_requests_total", &[], 1);
}

#[test]
fn prometheus_shows_the_counters_with_their_labels() {
    let stack = stack(None, 2);
    for _ in 0..3 {
        assert_eq!(stack.envoy.call("/students").status, 200);
    }
    trip_school(&stack);
    wait_for("stats flushed by the timer", Duration::from_secs(3), || {
        let e = &stack.envoy;
        let ok = e.counter(
            "circuit_breaker_requests_total",
            &[("cluster", "student"), ("outcome", "success")],
        ) == 3
            && e.counter(
                "circuit_breaker_requests_total",
                &[("cluster", "school"), ("outcome", "failure")],
            ) == 5
            && e.counter(
                "circuit_breaker_requests_total",
                &[("cluster", "school"), ("outcome", "rejected")],
            ) == 1;
        ok.then_some(())
    });
    let text = stack.envoy.metrics();
    assert!(text.contains("# TYPE circuit_breaker_requests_total counter"));
    assert!(
        text.contains(
            r#"circuit_breaker_transitions_total{cluster="school",from="closed",to="open"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"circuit_breaker_trips_total{cluster="school",reason="consecutive_failures"} 1"#
    ));
    assert!(text.contains("# TYPE circuit_breaker_state gauge"));
    assert!(text.contains(r#"circuit_breaker_state{cluster="school"} 1"#));
    assert!(text.contains(r#"circuit_breaker_state{cluster="auth"} 0"#));
}

#[test]
fn bad_plugin_json_makes_envoy_refuse_to_start_and_say_why() {
    let cases = [
        (
            r#"{"default": {"failure_treshold": 5}}"#,
            "unknown field `failure_treshold`",
        ),
        (
            r#"{"default": {"failure_threshold": "five"}}"#,
            "default.failure_threshold",
        ),
        (
            r#"{"clusters": {"auth": {"open_duration": "60 seconds"}}}"#,
            "clusters.auth.open_duration",
        ),
        (
            r#"{"clusters": {"student": {"success_threshold": 0}}}"#,
            "must be between 1 and 10000, but was 0",
        ),
        (
            r#"{"default": {"failure_rate_threshold": 2}}"#,
            "default.failure_rate_threshold",
        ),
        (r#"{"default": "#, "invalid plugin configuration"),
    ];
    for (json, expected) in cases {
        let yaml = with_port(&sample_yaml().unwrap(), 10000, free_port().unwrap());
        let yaml = with_plugin_json(&with_port(&yaml, 9901, 0), json).unwrap();
        match Envoy::start(&yaml, 2) {
            Ok(_) => panic!("envoy accepted {json}"),
            Err(log) => {
                let line = log
                    .lines()
                    .find(|l| l.contains("[CIRCUIT_BREAKER] invalid plugin configuration"))
                    .unwrap_or_else(|| panic!("no refusal line for {json}:\n{log}"));
                assert!(line.contains(expected), "{json}: {line}");
            }
        }
    }
}
