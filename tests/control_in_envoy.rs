//! The control API, dashboard, events and metrics, answered from the one shared state by
//! the real Envoy: what it shows, what it changes on every worker, and what it refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn body(r: &Response) -> Value {
    r.json()
        .unwrap_or_else(|_| panic!("not JSON: {} {}", r.status, r.text()))
}

#[test]
fn health_has_seed_004s_shape() {
    let stack = stack(None, 2);
    let h = body(&api(&stack.envoy, "GET", "/health", None, None));
    assert_eq!(h["message"], "All services are healthy");
    trip_school(&stack);
    let r = api(&stack.envoy, "GET", "/health", None, None);
    assert_eq!(r.status, 200);
    let h = body(&r);
    assert_eq!(h["data"]["school"]["circuit_breaker"]["state"], "OPEN");
    assert_eq!(h["data"]["school"]["circuit_breaker"]["failure_count"], 5);
    assert_eq!(h["data"]["school"]["status"], "unhealthy");
    assert_eq!(h["data"]["auth"]["status"], "healthy");
    assert_eq!(h["data"]["auth"]["circuit_breaker"]["state"], "CLOSED");
    assert!(h["message"].as_str().unwrap().contains("unhealthy: school"));
}

#[test]
fn views_show_state_reason_counts_and_transitions() {
    let stack = stack(None, 2);
    trip_school(&stack);
    let list = body(&api(&stack.envoy, "GET", "/circuit-breakers", None, None));
    let names: Vec<&str> = list["circuit_breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["auth", "school", "student"]);
    let v = body(&api(
        &stack.envoy,
        "GET",
        "/circuit-breakers/school",
        None,
        None,
    ));
    assert_eq!(v["state"], "open");
    assert_eq!(v["reason"], "consecutive_failures");
    assert_eq!(v["mode"], "enforce");
    let left = v["seconds_to_half_open"].as_u64().unwrap();
    assert!((55..=60).contains(&left), "{left}");
    assert_eq!(v["counts"]["consecutive_failures"], 5);
    assert_eq!(v["counts"]["failures"], 5);
    assert_eq!(v["failure_rate"], 1.0);
    let t = &v["transitions"][0];
    assert_eq!(
        (t["from"].as_str(), t["to"].as_str()),
        (Some("closed"), Some("open"))
    );
    assert!(t["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["settings"]["failure_threshold"], 5);
}

#[test]
fn changes_are_refused_without_a_configured_token_and_nothing_changes() {
    let stack = stack(None, 2);
    trip_school(&stack);
    for (method, path, body) in [
        ("POST", "/circuit-breakers/school/reset", None),
        ("POST", "/circuit-breakers/reset-all", None),
        (
            "PUT",
            "/circuit-breakers/school/mode",
            Some(r#"{"mode": "disabled"}"#),
        ),
    ] {
        let r = api(&stack.envoy, method, path, Some("anything"), body);
        assert_eq!(r.status, 403, "{path}");
        assert!(
            body_text(&r).contains("CIRCUIT_BREAKER_ADMIN_TOKEN"),
            "{}",
            r.text()
        );
    }
    assert!(is_rejection(&stack.envoy.call("/schools")), "still open");
}

fn body_text(r: &Response) -> String {
    r.json()
        .map(|j| j["message"].to_string())
        .unwrap_or_default()
}

#[test]
fn wrong_tokens_unknown_breakers_and_bad_bodies_are_refused() {
    let stack = stack_with_token(None, 2);
    trip_school(&stack);
    let e = &stack.envoy;
    let r = api(e, "POST", "/circuit-breakers/school/reset", None, None);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(
        api(
            e,
            "POST",
            "/circuit-breakers/school/reset",
            Some("wrong"),
            None
        )
        .status,
        401
    );
    let r = api(e, "POST", "/circuit-breakers/nope/reset", Some(TOKEN), None);
    assert_eq!(r.status, 404);
    assert!(
        body_text(&r).contains("known: auth, school, student"),
        "{}",
        r.text()
    );
    assert_eq!(
        api(e, "GET", "/circuit-breakers/nope", None, None).status,
        404
    );
    let r = api(
        e,
        "PUT",
        "/circuit-breakers/school/mode",
        Some(TOKEN),
        Some(r#"{"mode": "off"}"#),
    );
    assert_eq!(r.status, 400);
    assert!(
        body_text(&r).contains("\\\"off\\\" is not one of"),
        "{}",
        r.text()
    );
    let r = api(
        e,
        "PUT",
        "/circuit-breakers/school/mode",
        Some(TOKEN),
        Some("not json"),
    );
    assert_eq!(r.status, 400);
    let big = format!(r#"{{"mode": "enforce", "pad": "{}"}}"#, "x".repeat(10_000));
    assert_eq!(
        api(
            e,
            "PUT",
            "/circuit-breakers/school/mode",
            Some(TOKEN),
            Some(&big)
        )
        .status,
        413
    );
    let r = api(
        e,
        "GET",
        "/circuit-breakers/school/reset",
        Some(TOKEN),
        None,
    );
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(api(e, "GET", "/nowhere", None, None).status, 404);
    // None of that changed anything.
    let v = body(&api(e, "GET", "/circuit-breakers/school", None, None));
    assert_eq!(
        (v["state"].as_str(), v["mode"].as_str()),
        (Some("open"), Some("enforce"))
    );
}

#[test]
fn a_reset_closes_the_breaker_on_every_worker() {
    let stack = stack_with_token(None, 4);
    trip_school(&stack);
    stack.school.heal();
    let r = api(
        &stack.envoy,
        "POST",
        "/circuit-breakers/school/reset",
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body(&r)["state"], "closed");
    assert!(burst(&stack.envoy.gateway, "/schools", 40)
        .iter()
        .all(|r| r.status == 200));
    stack
        .envoy
        .wait_log("school circuit breaker CLOSED: reset by an operator", 1);
}

#[test]
fn reset_all_closes_every_breaker() {
    let stack = stack_with_token(None, 2);
    trip_school(&stack);
    stack.student.fail_everything();
    calls(&stack.envoy, "/students", 5);
    let r = api(
        &stack.envoy,
        "POST",
        "/circuit-breakers/reset-all",
        Some(TOKEN),
        None,
    );
    assert_eq!(body(&r)["reset"], json!(["auth", "school", "student"]));
    let h = body(&api(&stack.envoy, "GET", "/health", None, None));
    assert_eq!(h["message"], "All services are healthy");
}

#[test]
fn a_mode_override_is_obeyed_by_every_worker_at_once() {
    let stack = stack_with_token(None, 4);
    let set = |mode: &str| {
        let r = api(
            &stack.envoy,
            "PUT",
            "/circuit-breakers/school/mode",
            Some(TOKEN),
            Some(mode),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        body(&r)
    };
    let v = set(r#"{"mode": "forced_open"}"#);
    assert_eq!(
        (v["mode"].as_str(), v["mode_override"].as_str()),
        (Some("forced_open"), Some("forced_open"))
    );
    let refused = burst(&stack.envoy.gateway, "/schools", 40);
    assert!(refused.iter().all(is_forced_refusal));
    assert_eq!(stack.school.hits(), 0);
    set(r#"{"mode": "disabled"}"#);
    assert!(burst(&stack.envoy.gateway, "/schools", 40)
        .iter()
        .all(|r| r.status == 200));
    let v = set(r#"{"mode": null}"#);
    assert_eq!(
        (v["mode"].as_str(), v["mode_override"].is_null()),
        (Some("enforce"), true)
    );
}

#[test]
fn the_dashboard_shows_a_tripped_cluster_as_open_in_a_real_browser() {
    let stack = stack(None, 2);
    let page = api(
        &stack.envoy,
        "GET",
        "/circuit-breakers/dashboard",
        None,
        None,
    );
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no outside assets"
    );
    trip_school(&stack);
    let url = format!(
        "http://{}/circuit-breakers/dashboard",
        stack.envoy.control.clone().unwrap()
    );
    let dom = browser_dom(&url, 4_000);
    assert!(
        dom.contains(r#"data-cluster="school" data-state="open""#),
        "the rendered page:\n{dom}"
    );
    assert!(dom.contains(r#"data-cluster="auth" data-state="closed""#));
    assert!(dom.contains("OPEN"), "the badge says so");
}

fn sink_plugin(port_name: &str) -> String {
    format!(
        r#"{{"clusters": {{"school": {{"failure_threshold": 2, "open_duration": "500ms"}}}},
            "events": {{"cluster": "{port_name}", "path": "/events", "timeout": "1s"}}}}"#
    )
}

#[test]
fn every_transition_is_posted_to_the_webhook_once() {
    let sink = Service::start("event-sink", &[]).unwrap();
    let port = sink.port();
    let stack = stack_with(Some(&sink_plugin("event_sink")), 2, |y| {
        add_clusters(&y, &static_cluster("event_sink", port))
    });
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 2);
    stack.school.heal();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(stack.envoy.call("/schools").status, 200);
    wait_for("three events at the sink", Duration::from_secs(5), || {
        let list = client::get(&sink.addr, "/events").unwrap().json().unwrap()["data"].clone();
        (list.as_array().unwrap().len() >= 3).then_some(())
    });
    // Anything sent twice would arrive within this pause.
    std::thread::sleep(Duration::from_millis(300));
    let events = client::get(&sink.addr, "/events").unwrap().json().unwrap()["data"].clone();
    let moves: Vec<(String, String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
                e["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            (
                "closed".into(),
                "open".into(),
                "consecutive_failures".into()
            ),
            ("open".into(), "half_open".into(), "open_elapsed".into()),
            ("half_open".into(), "closed".into(), "recovered".into()),
        ],
        "each once, in order: {events}"
    );
    let first = &events[0];
    assert_eq!(first["cluster"], "school");
    assert_eq!(first["counts"]["consecutive_failures"], 2);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    stack.envoy.wait_counter(
        "circuit_breaker_events_delivered_total",
        &[("cluster", "school")],
        3,
    );
}

#[test]
fn failed_deliveries_are_counted_and_never_touch_traffic() {
    let dead = free_port().unwrap();
    let stack = stack_with(Some(&sink_plugin("event_sink")), 2, |y| {
        add_clusters(&y, &static_cluster("event_sink", dead))
    });
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 2);
    assert!(is_rejection(&stack.envoy.call("/schools")));
    assert_eq!(stack.envoy.call("/students").status, 200);
    stack.envoy.wait_counter(
        "circuit_breaker_event_delivery_failures_total",
        &[("cluster", "school")],
        1,
    );
}

#[test]
fn promtool_accepts_envoys_prometheus_output() {
    let stack = stack(None, 2);
    trip_school(&stack);
    // Gauges follow the shared record on the timer.
    let gauge = r#"circuit_breaker_failure_rate_percent{cluster="school"} 100"#;
    let text = wait_for("the failure-rate gauge", Duration::from_secs(5), || {
        let text = stack.envoy.metrics();
        text.contains(gauge).then_some(text)
    });
    // promtool comes with `make test-tools`.
    let out = run_with_input(
        std::process::Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 0: clean; 3: lint findings only. Anything else is a parse error.
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "promtool could not parse:\n{report}"
    );
    for line in report.lines().filter(|l| l.starts_with("circuit_breaker_")) {
        assert!(
            line.ends_with("no help text"),
            "a lint problem of ours: {line}"
        );
    }
    for metric in [
        "circuit_breaker_requests_total",
        "circuit_breaker_state",
        "circuit_breaker_transitions_total",
        "circuit_breaker_trips_total",
        "circuit_breaker_dry_run_rejections_total",
        "circuit_breaker_probes_total",
        "circuit_breaker_failure_rate_percent",
        "circuit_breaker_slow_call_rate_percent",
        "circuit_breaker_last_state_change_seconds",
        "circuit_breaker_events_delivered_total",
        "circuit_breaker_event_delivery_failures_total",
        "circuit_breaker_store_give_ups_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {metric} ")),
            "{metric} missing"
        );
    }
}
