//! The breaker's own health probe in the real Envoy: recovery with no user traffic at all,
//! users refused while it probes, timeouts, failures and backoff, one probe per interval
//! across workers and across a fleet, a probe path that lies, a cluster Envoy does not
//! know, and bad `probe` blocks refused at start-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use serde_json::json;

/// The school breaker trips on `failures` consecutive failures, stays open `open`, and
/// probes with `probe` (a JSON object's fields).
fn school_json(failures: u32, open: &str, extra: &str, probe: &str) -> String {
    format!(
        r#"{{"clusters": {{"school": {{"failure_threshold": {failures}, "failure_rate_threshold": 0,
            "open_duration": "{open}"{extra}, "probe": {{{probe}}}}}}}}}"#
    )
}

fn school_state(e: &Envoy) -> Option<serde_json::Value> {
    api(e, "GET", "/circuit-breakers/school", None, None)
        .json()
        .ok()
}

/// `n` user failures through `e` with the school service failing: the breaker trips.
fn trip(e: &Envoy, stack: &Stack, n: u32) -> Instant {
    stack.school.fail_everything();
    for _ in 0..n {
        assert!(!is_rejection(&e.call("/schools")));
    }
    let tripped = Instant::now();
    assert!(is_rejection(&e.call("/schools")), "tripped");
    tripped
}

/// Watches the upstream's request count until `done` says so: the moments it went up.
fn upstream_hits_until(
    stack: &Stack,
    within: Duration,
    mut done: impl FnMut() -> bool,
) -> Vec<Instant> {
    let start = Instant::now();
    let mut seen = stack.school.hits();
    let mut at = Vec::new();
    while start.elapsed() < within {
        let now = stack.school.hits();
        for _ in seen..now {
            at.push(Instant::now());
        }
        seen = now;
        if done() {
            return at;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("not done after {within:?}; upstream hits at {at:?}");
}

fn probes(e: &Envoy, cluster: &str, result: &str) -> u64 {
    e.counter(
        "circuit_breaker_probes_total",
        &[("cluster", cluster), ("result", result)],
    )
}

#[test]
fn with_no_user_traffic_the_breaker_closes_once_the_service_answers_its_probe() {
    let json = school_json(
        3,
        "1s",
        "",
        r#""path": "/schools", "interval": "1s", "timeout": "500ms""#,
    );
    let stack = stack(Some(&json), 2);
    trip(&stack.envoy, &stack, 3);
    let before = stack.school.hits();
    // Still failing: every probe fails and reopens; no user sends anything from here on.
    stack
        .envoy
        .wait_log("OPENED: the health probe answered 503", 1);
    std::thread::sleep(Duration::from_millis(1_500));
    stack.school.heal();
    let healed = Instant::now();
    let hits = upstream_hits_until(&stack, Duration::from_secs(5), || {
        school_state(&stack.envoy).is_some_and(|v| v["state"] == "closed")
    });
    let took = healed.elapsed();
    // open_duration + interval + the probe's latency, and the view's own round trip.
    assert!(
        took < Duration::from_millis(2_000 + 500),
        "closed {took:?} after the heal"
    );
    let upstream = stack.school.hits() - before;
    let sent: u64 = ["success", "failure", "timeout"]
        .iter()
        .map(|r| probes(&stack.envoy, "school", r))
        .sum();
    assert_eq!(
        upstream, sent,
        "the upstream saw the probes and nothing else"
    );
    assert_eq!(probes(&stack.envoy, "school", "success"), 1);
    assert!(probes(&stack.envoy, "school", "failure") >= 1);
    assert!(!hits.is_empty());
    let closed = stack.envoy.wait_log("school circuit breaker CLOSED", 1);
    assert!(
        closed[0]
            .contains("recovery successful after 1 passing health probe (the last answered 200 in"),
        "{}",
        closed[0]
    );
    let v = school_state(&stack.envoy).unwrap();
    assert_eq!(v["probe"]["target"], "GET /schools");
    assert_eq!(v["probe"]["last"]["result"], "success");
    assert_eq!(v["probe"]["last"]["status"], 200);
    assert!(
        v["probe"]["last"]["latency_ms"].as_u64().unwrap() < 500,
        "{v}"
    );
    assert!(
        v["probe"]["last"]["at"].as_str().unwrap().ends_with('Z'),
        "{v}"
    );
    assert_eq!(
        stack.envoy.call("/schools").status,
        200,
        "users go through again"
    );
    let url = format!(
        "http://{}/circuit-breakers/dashboard",
        stack.envoy.control.clone().unwrap()
    );
    let dom = browser_dom(&url, 4_000);
    assert!(
        dom.contains(r#"<dd data-probe="success">success (200) in "#),
        "the dashboard:\n{dom}"
    );
}

#[test]
fn users_sending_while_it_probes_are_all_refused_until_it_closes() {
    let json = school_json(
        3,
        "1s",
        r#", "success_threshold": 2"#,
        r#""path": "/schools", "interval": "1s", "timeout": "500ms""#,
    );
    let stack = stack(Some(&json), 2);
    trip(&stack.envoy, &stack, 3);
    stack.school.heal();
    let before = stack.school.hits();
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    // Users keep calling until one gets through: that one went after the close.
    loop {
        assert!(Instant::now() < deadline, "never closed: {answers:?}");
        let r = stack.envoy.call("/schools");
        if r.status == 200 {
            break;
        }
        assert!(is_rejection(&r), "{}", r.text());
        let kind = r.header("x-circuit-breaker").unwrap_or("").to_string();
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        answers.push((kind, wait));
        std::thread::sleep(Duration::from_millis(20));
    }
    let probed = answers.iter().filter(|(k, _)| k == "half_open").count();
    assert!(probed > 10, "users met the probing breaker: {answers:?}");
    assert!(
        answers
            .iter()
            .all(|(k, w)| k == "open" || (k == "half_open" && *w <= 1)),
        "half-open refusals say the next probe is at most an interval away: {answers:?}"
    );
    let upstream = stack.school.hits() - before;
    assert_eq!(probes(&stack.envoy, "school", "success"), 2);
    assert_eq!(
        upstream, 3,
        "two probes, then the one user request after the close"
    );
    stack
        .envoy
        .wait_log("recovery successful after 2 passing health probes", 1);
}

#[test]
fn a_probe_that_hangs_times_out_and_one_answering_500_reopens_with_backoff() {
    let json = school_json(
        3,
        "1s",
        r#", "backoff_multiplier": 2, "max_open_duration": "20s""#,
        r#""path": "/schools", "interval": "1s", "timeout": "300ms""#,
    );
    let stack = stack(Some(&json), 2);
    trip(&stack.envoy, &stack, 3);
    stack.school.heal_slowly(3_000);
    let line = stack
        .envoy
        .wait_log("OPENED: the health probe timed out after", 1);
    assert!(
        line[0].contains("open for 2s (trip 2 in a row)"),
        "{}",
        line[0]
    );
    stack
        .school
        .set_faults(json!({"is_healthy": true, "failure_rate": 1.0}));
    let line = stack
        .envoy
        .wait_log("OPENED: the health probe answered 500", 1);
    assert!(
        line[0].contains("open for 4s (trip 3 in a row)"),
        "{}",
        line[0]
    );
    stack.envoy.wait_counter(
        "circuit_breaker_probes_total",
        &[("cluster", "school"), ("result", "timeout")],
        1,
    );
    stack.envoy.wait_counter(
        "circuit_breaker_probes_total",
        &[("cluster", "school"), ("result", "failure")],
        1,
    );
    let v = school_state(&stack.envoy).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("open"), Some("probe_failed"))
    );
    assert_eq!(v["probe"]["last"]["status"], 500);
    // Envoy merges histograms on its stats flush, every 5 s by default.
    let text = wait_for(
        "both answered probes in the latency histogram",
        Duration::from_secs(12),
        || {
            let text = stack.envoy.metrics();
            text.contains(r#"circuit_breaker_probe_latency_count{cluster="school"} 2"#)
                .then_some(text)
        },
    );
    let out = run_with_input(
        std::process::Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
    );
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "promtool:\n{report}"
    );
    for line in report.lines().filter(|l| l.starts_with("circuit_breaker_")) {
        assert!(
            line.ends_with("no help text"),
            "a lint problem of ours: {line}"
        );
    }
}

/// The moments of `hits` are at least `gap` apart.
fn spaced(hits: &[Instant], gap: Duration) {
    for pair in hits.windows(2) {
        let between = pair[1] - pair[0];
        assert!(between >= gap, "two probes {between:?} apart: {hits:?}");
    }
}

#[test]
fn four_workers_send_one_probe_per_interval_not_four() {
    let json = school_json(
        3,
        "1s",
        r#", "success_threshold": 3"#,
        r#""path": "/schools", "interval": "1s", "timeout": "500ms""#,
    );
    let stack = stack(Some(&json), 4);
    trip(&stack.envoy, &stack, 3);
    stack.school.heal();
    let hits = upstream_hits_until(&stack, Duration::from_secs(8), || {
        school_state(&stack.envoy).is_some_and(|v| v["state"] == "closed")
    });
    assert_eq!(hits.len(), 3, "success_threshold probes, one at a time");
    spaced(&hits, Duration::from_millis(900));
    stack.envoy.wait_counter(
        "circuit_breaker_probes_total",
        &[("cluster", "school"), ("result", "success")],
        3,
    );
}

#[test]
fn a_probe_path_that_passes_while_the_real_path_fails_closes_and_trips_again() {
    let json = school_json(
        3,
        "1s",
        "",
        r#""path": "/health", "interval": "1s", "timeout": "500ms""#,
    );
    let stack = stack(Some(&json), 2);
    // /health answers 200 while every API call fails with 500.
    stack
        .school
        .set_faults(json!({"is_healthy": true, "failure_rate": 1.0}));
    for _ in 0..3 {
        assert_eq!(stack.envoy.call("/schools").status, 500);
    }
    assert!(is_rejection(&stack.envoy.call("/schools")));
    stack.envoy.wait_log("passing health probe", 1);
    for _ in 0..3 {
        assert_eq!(
            stack.envoy.call("/schools").status,
            500,
            "users meet the real failure"
        );
    }
    assert!(is_rejection(&stack.envoy.call("/schools")));
    stack.envoy.wait_log("OPENED: 3 consecutive failures", 2);
}

#[test]
fn a_probe_to_a_cluster_envoy_does_not_know_keeps_refusing_and_says_so_once() {
    let json = r#"{"clusters": {"ghost": {"open_duration": "1s",
        "probe": {"path": "/health", "interval": "300ms", "timeout": "100ms"}}}}"#;
    let stack = stack_with_token(Some(json), 2);
    let put = |mode: &str| {
        let body = format!(r#"{{"mode": {mode}}}"#);
        let r = api(
            &stack.envoy,
            "PUT",
            "/circuit-breakers/ghost/mode",
            Some(TOKEN),
            Some(&body),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    // Forced open, then released: half-open, where the breaker probes by itself.
    put(r#""forced_open""#);
    put("null");
    wait_for("three tries", Duration::from_secs(5), || {
        (probes(&stack.envoy, "ghost", "error") >= 3).then_some(())
    });
    let line = stack.envoy.wait_log("cannot send its health probe", 1);
    assert!(
        line[0].contains(r#"GET /health to cluster "ghost""#),
        "{}",
        line[0]
    );
    let v = api(&stack.envoy, "GET", "/circuit-breakers/ghost", None, None)
        .json()
        .unwrap();
    assert_eq!(v["state"], "half_open", "{v}");
    assert_eq!(v["probe"]["last"]["result"], "error", "{v}");
}

#[test]
fn bad_probe_blocks_are_refused_at_start_naming_the_field() {
    let cases = [
        (
            r#"{"path": "health"}"#,
            "clusters.school.probe.path: must be a path starting with \"/\"",
        ),
        (
            r#"{"path": "/h", "headers": {"bad name": "1"}}"#,
            "clusters.school.probe.headers",
        ),
        (
            r#"{"path": "/h", "headers": {"x-a": "tab\tbad"}}"#,
            "must be printable ASCII",
        ),
        (
            r#"{"path": "/h", "timeout": "2s", "interval": "1s"}"#,
            "probe.timeout: must not be longer than interval (1s)",
        ),
        (
            r#"{"path": "/h", "timeout": "90s", "interval": "1h"}"#,
            "clusters.school.probe.timeout: must be between",
        ),
        (
            r#"{"path": "/h", "timeout": "2s"}"#,
            "probe.timeout: must not be longer than open_duration (1s)",
        ),
        (
            r#"{"path": "/h", "method": "BREW"}"#,
            "clusters.school.probe.method: unknown variant `BREW`",
        ),
        (
            r#"{"path": "/h", "expect_status": []}"#,
            "clusters.school.probe.expect_status: must name at least one status",
        ),
    ];
    for (probe, expected) in cases {
        let json =
            format!(r#"{{"clusters": {{"school": {{"open_duration": "1s", "probe": {probe}}}}}}}"#);
        let yaml = with_port(&sample_yaml().unwrap(), 10000, free_port().unwrap());
        let yaml = with_plugin_json(&with_port(&yaml, 9901, 0), &json).unwrap();
        match Envoy::start(&yaml, 1) {
            Ok(_) => panic!("envoy accepted {probe}"),
            Err(log) => {
                let line = log
                    .lines()
                    .find(|l| l.contains("[CIRCUIT_BREAKER] invalid plugin configuration"))
                    .unwrap_or_else(|| panic!("no refusal line for {probe}:\n{log}"));
                assert!(line.contains(expected), "{probe}: {line}");
            }
        }
    }
}

#[test]
fn a_fleet_of_three_sends_one_probe_per_interval() {
    let json = plugin_json_with(
        "1s",
        r#", "success_threshold": 3, "probe": {"path": "/schools", "interval": "1s", "timeout": "500ms"}"#,
    );
    let f = fleet_with(&json, 3);
    let envoys = f.envoys();
    trip_through(envoys[1], &f.stack);
    state_everywhere(&f, "open");
    f.stack.school.heal();
    let hits = upstream_hits_until(&f.stack, Duration::from_secs(12), || {
        envoys
            .iter()
            .all(|e| school_view(e).is_some_and(|v| v["state"] == "closed"))
    });
    assert_eq!(
        hits.len(),
        3,
        "success_threshold probes for the whole fleet"
    );
    spaced(&hits, Duration::from_millis(900));
    let sent: u64 = envoys.iter().map(|e| probes(e, "school", "success")).sum();
    assert_eq!(sent, 3);
}
