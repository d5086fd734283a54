//! Every trip rule, recovery style, classifier option, mode and answer, in the real Envoy:
//! the parts that touch the host (timing, headers, trailers, local replies) proven there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn body(r: &Response) -> serde_json::Value {
    r.json().unwrap_or(serde_json::Value::Null)
}

#[test]
fn slow_calls_open_the_breaker() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {
            "failure_threshold": 0, "failure_rate_threshold": 0,
            "slow_call_duration": "200ms", "slow_call_rate_threshold": 0.5,
            "minimum_requests": 4, "open_duration": "30s"}}}"#,
        ),
        2,
    );
    stack.school.set_faults(json!({"response_time_ms": 300}));
    for _ in 0..4 {
        assert_eq!(
            stack.envoy.call("/schools").status,
            200,
            "slow, but answered"
        );
    }
    let r = stack.envoy.call("/schools");
    assert!(is_rejection(&r), "{}", r.text());
    assert_eq!(body(&r)["reason"], "slow_call_rate");
    stack
        .envoy
        .wait_log("OPENED: slow-call rate 100% (4 of the last 4 calls)", 1);
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "school"), ("outcome", "slow")],
        4,
    );
}

/// Issue 12's case: a probe that answers 200 but slower than `slow_call_duration` reopens
/// the breaker as a failed probe, and every view says so (it used to say slow_call_rate).
#[test]
fn a_slow_probe_reopens_as_probe_failed_everywhere() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {
            "failure_threshold": 1, "failure_rate_threshold": 0,
            "slow_call_duration": "200ms", "slow_call_rate_threshold": 0.5,
            "minimum_requests": 100, "open_duration": "1s"}}}"#,
        ),
        2,
    );
    stack.school.fail_everything();
    assert_eq!(stack.envoy.call("/schools").status, 503, "the one failure");
    assert!(is_rejection(&stack.envoy.call("/schools")));
    stack.school.heal();
    stack.school.set_faults(json!({"response_time_ms": 350}));
    std::thread::sleep(Duration::from_millis(1_300));
    let probe = stack.envoy.call("/schools");
    assert_eq!(probe.status, 200, "the probe is answered, slowly");
    let r = stack.envoy.call("/schools");
    assert!(is_rejection(&r), "{}", r.text());
    assert_eq!(body(&r)["reason"], "probe_failed");
    assert!(
        !body(&r)["message"].as_str().unwrap_or("").contains("slow"),
        "{}",
        r.text()
    );
    stack.envoy.wait_log("OPENED: a half-open probe failed", 1);
    stack.envoy.wait_log("OPENED: slow-call rate", 0);
    stack.envoy.wait_counter(
        "circuit_breaker_trips_total",
        &[("cluster", "school"), ("reason", "probe_failed")],
        1,
    );
    stack.envoy.wait_counter(
        "circuit_breaker_trips_total",
        &[("cluster", "school"), ("reason", "slow_call_rate")],
        0,
    );
}

#[test]
fn a_count_window_trips_on_the_failure_share_of_the_last_calls() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {
            "failure_threshold": 0, "failure_rate_threshold": 0.5, "minimum_requests": 10,
            "window_type": "count", "window_size": 10}}}"#,
        ),
        2,
    );
    for _ in 0..5 {
        assert_eq!(stack.envoy.call("/schools").status, 200);
    }
    // Let every worker's timer fold its batched successes into the shared window.
    std::thread::sleep(Duration::from_millis(300));
    stack.school.fail_everything();
    for _ in 0..5 {
        assert!(!is_rejection(&stack.envoy.call("/schools")));
    }
    let r = stack.envoy.call("/schools");
    assert!(is_rejection(&r), "5 failures in the last 10 calls");
    assert_eq!(body(&r)["reason"], "failure_rate");
    assert_eq!(stack.school.hits(), 10);
    stack
        .envoy
        .wait_log("OPENED: failure rate 50% (5 of the last 10 calls)", 1);
}

#[test]
fn repeated_trips_back_off() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {
            "failure_threshold": 2, "open_duration": "1s", "backoff_multiplier": 3,
            "max_open_duration": "20s"}}}"#,
        ),
        2,
    );
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 2);
    let first = stack.envoy.call("/schools");
    assert_eq!(first.header("retry-after"), Some("1"));
    std::thread::sleep(Duration::from_millis(1_100));
    let probe = stack.envoy.call("/schools");
    assert!(
        !is_rejection(&probe),
        "the probe reaches the failing upstream"
    );
    let second = stack.envoy.call("/schools");
    assert!(is_rejection(&second));
    assert_eq!(second.header("retry-after"), Some("3"), "1s x 3");
    stack.envoy.wait_log("open for 3s (trip 2 in a row)", 1);
}

#[test]
fn a_half_open_whose_probe_never_finishes_opens_again() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {
            "failure_threshold": 2, "open_duration": "500ms",
            "half_open_max_duration": "300ms"}}}"#,
        ),
        2,
    );
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 2);
    stack.school.heal_slowly(2500);
    std::thread::sleep(Duration::from_millis(600));
    let gateway = stack.envoy.gateway.clone();
    let probe = std::thread::spawn(move || client::get(&gateway, "/schools").unwrap());
    stack
        .envoy
        .wait_log("OPENED: half-open probes did not finish in time", 1);
    let late = probe.join().unwrap();
    assert_eq!(late.status, 200, "the probe itself was answered, too late");
    stack.envoy.wait_counter(
        "circuit_breaker_trips_total",
        &[("cluster", "school"), ("reason", "half_open_timeout")],
        1,
    );
}

#[test]
fn recovery_ramps_traffic_back_up() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {
            "failure_threshold": 2, "open_duration": "400ms", "recovery_duration": "3s"}}}"#,
        ),
        2,
    );
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 2);
    stack.school.heal();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stack.envoy.call("/schools").status,
        200,
        "the probe closes it"
    );
    let early = calls(&stack.envoy, "/schools", 20);
    let refused: Vec<_> = early.iter().filter(|r| is_rejection(r)).collect();
    assert!(
        refused.len() >= 10,
        "only {} of 20 refused right after closing",
        refused.len()
    );
    assert!(refused
        .iter()
        .all(|r| r.header("x-circuit-breaker") == Some("recovering")
            && r.header("retry-after") == Some("1")));
    std::thread::sleep(Duration::from_millis(3_100));
    assert!(calls(&stack.envoy, "/schools", 20)
        .iter()
        .all(|r| r.status == 200));
}

#[test]
fn an_upstreams_retry_after_is_honoured() {
    let stack = stack(
        Some(r#"{"clusters": {"school": {"honor_retry_after": true, "failure_threshold": 50}}}"#),
        2,
    );
    stack
        .school
        .set_faults(json!({"is_healthy": false, "retry_after": "2"}));
    let asked = stack.envoy.call("/schools");
    assert_eq!(
        (asked.status, asked.header("retry-after")),
        (503, Some("2"))
    );
    let r = stack.envoy.call("/schools");
    assert!(is_rejection(&r), "one answer with Retry-After opens it");
    assert_eq!(body(&r)["reason"], "upstream_asked");
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    stack.school.heal();
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(stack.envoy.call("/schools").status, 200);
}

#[test]
fn a_429_with_retry_after_opens_only_when_honoured() {
    let stack = stack(
        Some(r#"{"clusters": {"auth": {"honor_retry_after": true}}}"#),
        2,
    );
    for svc in [&stack.school, &stack.auth] {
        svc.set_faults(json!({"is_healthy": false, "failure_status": 429, "retry_after": "30"}));
    }
    for r in calls(&stack.envoy, "/schools", 8) {
        assert_eq!(
            r.status, 429,
            "school does not honour it and 429 is no failure"
        );
    }
    assert_eq!(stack.envoy.call("/auth/validate").status, 429);
    let r = stack.envoy.call("/auth/validate");
    assert!(is_rejection(&r));
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&secs), "{secs}");
}

#[test]
fn failure_status_lists_decide_what_counts() {
    let stack = stack(
        Some(
            r#"{"clusters": {
            "school": {"failure_threshold": 3, "failure_status": [429, "502-504"]},
            "student": {"failure_threshold": 3, "ignore_status": ["503"]}}}"#,
        ),
        2,
    );
    stack
        .school
        .set_faults(json!({"is_healthy": false, "failure_status": 500}));
    assert!(
        calls(&stack.envoy, "/schools", 6)
            .iter()
            .all(|r| r.status == 500),
        "500 is not listed"
    );
    stack
        .school
        .set_faults(json!({"is_healthy": false, "failure_status": 429}));
    calls(&stack.envoy, "/schools", 3);
    assert!(is_rejection(&stack.envoy.call("/schools")), "429 is listed");

    stack.student.fail_everything();
    for r in calls(&stack.envoy, "/students", 8) {
        assert!(!is_rejection(&r), "503 is ignored");
    }
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "student"), ("outcome", "ignored")],
        8,
    );
}

#[test]
fn router_failures_can_be_made_neutral() {
    let dead = free_port().unwrap();
    let stack = stack_with(
        Some(
            r#"{"clusters": {"auth": {"failure_threshold": 2, "count_connect_failures": false}}}"#,
        ),
        2,
        |y| point_cluster(&y, "auth", dead),
    );
    for r in calls(&stack.envoy, "/auth/validate", 6) {
        assert_eq!(r.status, 503);
        assert!(!is_rejection(&r), "refused connections do not count here");
    }
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "auth"), ("outcome", "ignored")],
        6,
    );
}

fn grpc_stack(plugin: &str) -> (Stack, GrpcSchool) {
    let grpc = GrpcSchool::start();
    let port = grpc.port();
    let stack = stack_with(Some(plugin), 2, |y| {
        let y = add_routes(
            &y,
            "              - match: { prefix: \"/school.SchoolService/\" }\n                route: { cluster: grpc_school, timeout: 5s }\n",
        );
        add_clusters(&y, &h2_cluster("grpc_school", port))
    });
    (stack, grpc)
}

#[test]
fn grpc_failures_in_trailers_trip_and_grpc_callers_are_refused_the_grpc_way() {
    let (stack, grpc) = grpc_stack(r#"{"clusters": {"grpc_school": {"failure_threshold": 3}}}"#);
    let gw = &stack.envoy.gateway;
    assert_eq!(
        grpc_calls(gw, "ok", 2)
            .iter()
            .filter(|c| c["code"] == "OK")
            .count(),
        2
    );
    let failed = grpc_calls(gw, "fail-trailers:14", 3);
    assert!(failed
        .iter()
        .all(|c| c["code"] == "UNAVAILABLE" && c["details"] == "school service failing"));
    let reached = grpc.served();
    let refused = grpc_calls(gw, "ok", 3);
    for c in &refused {
        assert_eq!(c["code"], "UNAVAILABLE");
        let details = c["details"].as_str().unwrap();
        assert!(details.contains("circuit breaker is open"), "{details}");
    }
    assert_eq!(grpc.served(), reached, "refused calls reached no server");
    let raw = client::request(
        "POST",
        gw,
        "/school.SchoolService/ValidateSchool",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        Some(b"\0\0\0\0\x02ok"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(raw.status, 200, "gRPC answers ride on HTTP 200");
    assert_eq!(raw.header("grpc-status"), Some("14"));
    assert!(raw.header("grpc-message").unwrap().contains("circuit"));
}

#[test]
fn grpc_status_in_headers_is_judged_by_the_configured_codes() {
    let (stack, _grpc) = grpc_stack(
        r#"{"clusters": {"grpc_school": {"failure_threshold": 3, "grpc_failure_codes": ["INTERNAL"]}}}"#,
    );
    let gw = &stack.envoy.gateway;
    // NOT_FOUND and UNAVAILABLE are not failures here; trailers-only answers carry them.
    for payload in ["fail-headers:5", "fail-headers:14"] {
        for c in grpc_calls(gw, payload, 4) {
            assert!(!c["details"].as_str().unwrap().contains("circuit"), "{c}");
        }
    }
    grpc_calls(gw, "fail-headers:13", 3);
    let c = &grpc_calls(gw, "ok", 1)[0];
    assert!(
        c["details"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{c}"
    );
}

#[test]
fn dry_run_counts_and_logs_but_refuses_nothing() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"mode": "dry_run", "failure_threshold": 3, "open_duration": "60s"}}}"#,
        ),
        2,
    );
    stack.school.fail_everything();
    for r in calls(&stack.envoy, "/schools", 10) {
        assert!(!is_rejection(&r));
    }
    assert_eq!(stack.school.hits(), 10, "everything reached the upstream");
    stack.envoy.wait_log(
        "OPENED: 3 consecutive failures, open for 60s [dry run: nothing is refused]",
        1,
    );
    stack.envoy.wait_counter(
        "circuit_breaker_dry_run_rejections_total",
        &[("cluster", "school")],
        7,
    );
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "school"), ("outcome", "rejected")],
        0,
    );
}

#[test]
fn forced_open_refuses_everything() {
    let stack = stack(
        Some(r#"{"clusters": {"school": {"mode": "forced_open"}}}"#),
        2,
    );
    assert!(is_forced_refusal(&stack.envoy.call("/schools")));
    assert_eq!(stack.school.hits(), 0);
    assert_eq!(
        stack.envoy.call("/students").status,
        200,
        "other clusters untouched"
    );
    stack
        .envoy
        .wait_log("school circuit breaker OPENED: forced open by its mode", 1);
    stack.envoy.wait_counter(
        "circuit_breaker_trips_total",
        &[("cluster", "school"), ("reason", "forced")],
        1,
    );
}

#[test]
fn disabled_passes_and_counts_nothing() {
    let stack = stack(
        Some(r#"{"clusters": {"school": {"mode": "disabled", "failure_threshold": 2}}}"#),
        2,
    );
    stack.school.fail_everything();
    for r in calls(&stack.envoy, "/schools", 8) {
        assert!(!is_rejection(&r));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stack
            .envoy
            .counter("circuit_breaker_requests_total", &[("cluster", "school")]),
        0
    );
}

#[test]
fn excluded_paths_are_never_counted_nor_refused() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"failure_threshold": 3, "exclude_paths": ["/schools/health"]}}}"#,
        ),
        2,
    );
    stack.school.fail_everything();
    for r in calls(&stack.envoy, "/schools/health", 5) {
        assert!(!is_rejection(&r));
    }
    calls(&stack.envoy, "/schools", 3);
    assert!(is_rejection(&stack.envoy.call("/schools")));
    let before = stack.school.hits();
    for r in calls(&stack.envoy, "/schools/health", 3) {
        assert_eq!(r.status, 503);
        assert!(!is_rejection(&r), "excluded paths pass even while open");
    }
    assert_eq!(stack.school.hits(), before + 3);
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "school"), ("outcome", "failure")],
        3,
    );
}

fn named_school_routes(yaml: String) -> String {
    yaml.replace(
        "              - match: { prefix: \"/schools\" }\n                route: { cluster: school, timeout: 5s }\n",
        "              - name: school_item\n                match: { prefix: \"/schools/\" }\n                route: { cluster: school, timeout: 5s }\n              - name: school_list\n                match: { path: \"/schools\" }\n                route: { cluster: school, timeout: 5s }\n              - name: school_create\n                match: { prefix: \"/schools\" }\n                route: { cluster: school, timeout: 5s }\n",
    )
}

#[test]
fn per_route_breakers_trip_alone_and_are_capped() {
    let stack = stack_with(
        Some(
            r#"{"clusters": {"school": {"per_route": true, "max_route_breakers": 1, "failure_threshold": 3}}}"#,
        ),
        2,
        named_school_routes,
    );
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools/1", 3);
    let r = stack.envoy.call("/schools/2");
    assert!(is_rejection(&r));
    assert_eq!(body(&r)["cluster"], "school/school_item");
    // The cap is 1: the list route shares the cluster's own breaker, still closed.
    for r in calls(&stack.envoy, "/schools", 2) {
        assert!(!is_rejection(&r));
    }
    stack
        .envoy
        .wait_log("school/school_item circuit breaker OPENED", 1);
    let text = stack.envoy.metrics();
    assert!(
        text.contains(r#"circuit_breaker_state{cluster="school/school_item"} 1"#),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("cluster=\"school/school_list\"")),
        "no breaker beyond the cap: {:?}",
        text.lines()
            .filter(|l| l.contains("school/"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_fallback_answers_with_the_configured_status_body_and_headers() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"failure_threshold": 2, "open_duration": "45s",
            "fallback": {"status": 200,
                         "body": "{\"schools\": [], \"degraded\": true, \"source\": \"{cluster}\", \"retry\": {retry_after}}",
                         "headers": {"x-fallback": "{cluster}", "cache-control": "no-store"}}}}}"#,
        ),
        2,
    );
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 2);
    let r = stack.envoy.call("/schools");
    assert_eq!(r.status, 200);
    let b = body(&r);
    assert_eq!(
        (b["degraded"].as_bool(), b["source"].as_str()),
        (Some(true), Some("school"))
    );
    let retry = b["retry"].as_u64().unwrap();
    assert!((44..=45).contains(&retry), "{retry}");
    assert_eq!(r.header("x-fallback"), Some("school"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("retry-after"), Some(retry.to_string().as_str()));
    assert_eq!(r.header("x-circuit-breaker"), Some("open"));
}

#[test]
fn the_last_good_get_is_served_from_cache_while_open() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"failure_threshold": 2,
            "fallback_cache": {"max_entries": 10, "max_age": "1m"}}}}"#,
        ),
        2,
    );
    let fresh = burst(&stack.envoy.gateway, "/schools/1", 20);
    for r in &fresh {
        assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
    }
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools/2", 2);
    std::thread::sleep(Duration::from_millis(1_100));
    for r in burst(&stack.envoy.gateway, "/schools/1", 10) {
        assert_eq!(r.status, 200, "served from cache");
        assert_eq!(r.header("x-circuit-breaker-cache"), Some("hit"));
        assert_eq!(r.header("x-circuit-breaker"), Some("open"));
        let age: u64 = r.header("age").unwrap().parse().unwrap();
        assert!(age >= 1, "{age}");
        assert_eq!(r.body, fresh[0].body);
    }
    assert!(
        is_rejection(&stack.envoy.call("/schools/2")),
        "never cached"
    );
    let post = client::post_json(&stack.envoy.gateway, "/schools", &json!({"name": "x"})).unwrap();
    assert!(is_rejection(&post), "only GETs are served from cache");
}
