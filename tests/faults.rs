//! The fault suite: each way an upstream (or a client, or Envoy itself, or the filter's own
//! VM) can misbehave, provoked for real against the real Envoy, with the state the breaker
//! must reach and the time it may take to get there. Each case prints its figures, which
//! RELIABILITY.md records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// What a case expects: a breaker refusing (with a reason) or still closed.
enum Expect {
    Open(&'static str),
    Closed,
}

/// Sends GETs to `path` until the breaker refuses one or `limit` passes; returns the
/// refusal's reason and when it came.
fn until_refused(envoy: &Envoy, path: &str, limit: Duration) -> Option<(String, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(r) = client::get(&envoy.gateway, path) {
            if is_rejection(&r) {
                let reason = r.json().unwrap()["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                return Some((reason, started.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn report(case: &str, expect: &Expect, outcome: Option<(String, Duration)>, limit: Duration) {
    match (expect, outcome) {
        (Expect::Open(reason), Some((got, took))) => {
            println!(
                "fault case | {case} | open ({got}) | {} ms",
                took.as_millis()
            );
            assert_eq!(got, *reason, "{case}: opened for the wrong reason");
            assert!(took <= limit, "{case}: took {took:?}");
        }
        (Expect::Open(reason), None) => {
            panic!("{case}: never opened ({reason} expected within {limit:?})")
        }
        (Expect::Closed, Some((got, _))) => panic!("{case}: opened ({got}) but must not"),
        (Expect::Closed, None) => println!(
            "fault case | {case} | closed | held for {} ms",
            limit.as_millis()
        ),
    }
}

const QUICK: &str = r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "30s"}}}"#;

#[test]
fn upstream_killed_connection_refused() {
    let mut stack = stack(Some(QUICK), 2);
    stack.school.kill();
    let limit = Duration::from_secs(3);
    report(
        "upstream killed (connection refused)",
        &Expect::Open("consecutive_failures"),
        until_refused(&stack.envoy, "/schools", limit),
        limit,
    );
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "school"), ("outcome", "failure")],
        3,
    );
}

#[test]
fn upstream_killed_mid_response() {
    let stack = stack(Some(QUICK), 2);
    stack.school.set_faults(json!({"reset_mid_response": true}));
    let limit = Duration::from_secs(3);
    report(
        "killed mid-response (reset)",
        &Expect::Open("consecutive_failures"),
        until_refused(&stack.envoy, "/schools", limit),
        limit,
    );
}

#[test]
fn upstream_hanging_past_the_route_timeout() {
    let stack = stack_with(Some(QUICK), 2, |y| {
        y.replace(
            "route: { cluster: school, timeout: 5s }",
            "route: { cluster: school, timeout: 0.3s }",
        )
    });
    stack.school.set_faults(json!({"response_time_ms": 5000}));
    let limit = Duration::from_secs(3);
    let outcome = until_refused(&stack.envoy, "/schools", limit);
    report(
        "hanging past the route timeout",
        &Expect::Open("consecutive_failures"),
        outcome,
        limit,
    );
    stack.envoy.wait_log("3 consecutive failures", 1);
}

#[test]
fn upstream_slow_but_answering() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"slow_call_duration": "100ms", "slow_call_rate_threshold": 0.5, "minimum_requests": 5}}}"#,
        ),
        2,
    );
    stack.school.set_faults(json!({"response_time_ms": 150}));
    let limit = Duration::from_secs(3);
    report(
        "slow but answering",
        &Expect::Open("slow_call_rate"),
        until_refused(&stack.envoy, "/schools", limit),
        limit,
    );
}

#[test]
fn upstream_flapping() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"failure_threshold": 10, "failure_rate_threshold": 0.3, "minimum_requests": 10}}}"#,
        ),
        2,
    );
    let addr = stack.school.addr.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flapper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut healthy = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ =
                    client::post_json(&addr, "/simulate/failure", &json!({"is_healthy": healthy}));
                healthy = !healthy;
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    let limit = Duration::from_secs(5);
    let outcome = until_refused(&stack.envoy, "/schools", limit);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flapper.join().unwrap();
    report(
        "flapping healthy/failing every 60 ms",
        &Expect::Open("failure_rate"),
        outcome,
        limit,
    );
}

#[test]
fn all_endpoints_of_a_cluster_gone() {
    let stack = stack_with(Some(QUICK), 2, |y| {
        let at = y.find("cluster_name: school\n").unwrap();
        let end = y[at..].find("\n  - name:").map_or(y.len(), |e| e + at);
        format!(
            "{}cluster_name: school\n      endpoints: []\n{}",
            &y[..at],
            &y[end + 1..]
        )
    });
    let limit = Duration::from_secs(2);
    report(
        "all endpoints of a cluster gone",
        &Expect::Open("consecutive_failures"),
        until_refused(&stack.envoy, "/schools", limit),
        limit,
    );
}

#[test]
fn envoys_own_overflow_never_trips() {
    let stack = stack_with(Some(QUICK), 2, |y| {
        y.replace(
            "  - name: school\n    type: STATIC\n    connect_timeout: 1s\n",
            "  - name: school\n    type: STATIC\n    connect_timeout: 1s\n    circuit_breakers:\n      thresholds: [{ max_connections: 1, max_pending_requests: 1, max_requests: 1 }]\n",
        )
    });
    stack.school.set_faults(json!({"response_time_ms": 400}));
    let answers = burst(&stack.envoy.gateway, "/schools", 30);
    let overflowed = answers
        .iter()
        .filter(|r| r.status == 503 && !is_rejection(r))
        .count();
    assert!(overflowed >= 10, "only {overflowed} of 30 overflowed");
    assert!(answers.iter().all(|r| !is_rejection(r)));
    stack.school.heal();
    let limit = Duration::from_secs(1);
    report(
        "Envoy's own overflow (UO)",
        &Expect::Closed,
        until_refused(&stack.envoy, "/schools", limit),
        limit,
    );
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "school"), ("outcome", "failure")],
        0,
    );
    assert!(
        stack.envoy.counter(
            "circuit_breaker_requests_total",
            &[("cluster", "school"), ("outcome", "ignored")]
        ) >= overflowed as u64
    );
}

#[test]
fn clients_that_hang_up_never_count() {
    let stack = stack(Some(QUICK), 2);
    stack.school.set_faults(json!({"response_time_ms": 800}));
    for _ in 0..6 {
        let mut s = TcpStream::connect(&stack.envoy.gateway).unwrap();
        s.write_all(b"GET /schools HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(1_000));
    stack.school.heal();
    let limit = Duration::from_secs(1);
    report(
        "clients hanging up before the answer",
        &Expect::Closed,
        until_refused(&stack.envoy, "/schools", limit),
        limit,
    );
    stack.envoy.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "school"), ("outcome", "ignored")],
        6,
    );
    assert_eq!(
        stack.envoy.counter(
            "circuit_breaker_requests_total",
            &[("cluster", "school"), ("outcome", "failure")]
        ),
        0
    );
}

/// An Envoy whose listeners come from a watched file, so their filter config can change
/// at run time as it does under a control plane.
fn dynamic_yaml(stack_yaml: &str, dir: &std::path::Path) -> String {
    let listeners_at = stack_yaml.find("  listeners:\n").unwrap();
    let clusters_at = stack_yaml.find("  clusters:\n").unwrap();
    let head = &stack_yaml[..listeners_at];
    let clusters = &stack_yaml[clusters_at..];
    format!(
        "node: {{ id: reload-test, cluster: reload-test }}\ndynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source:\n      path: {}\n      watched_directory: {{ path: {} }}\n{head}{clusters}",
        dir.join("lds.yaml").display(),
        dir.display()
    )
}

/// The listeners of `stack_yaml` as an LDS file.
fn lds_file(stack_yaml: &str) -> String {
    let listeners_at = stack_yaml.find("  listeners:\n").unwrap() + "  listeners:\n".len();
    let clusters_at = stack_yaml.find("  clusters:\n").unwrap();
    let mut out = String::from("resources:\n");
    for line in stack_yaml[listeners_at..clusters_at].lines() {
        let line = line.strip_prefix("  ").unwrap_or(line);
        match line.strip_prefix("- name: ") {
            Some(name) => out.push_str(&format!(
                "- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: {name}"
            )),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[test]
fn a_config_reload_keeps_the_state_and_applies_new_thresholds() {
    let before = r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "60s"}, "auth": {"failure_threshold": 50}}}"#;
    let after = r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "60s"}, "auth": {"failure_threshold": 2}}}"#;
    // The stack gives the services and ports; this test runs its own Envoy over them,
    // with the listeners in a watched file.
    let mut stack = stack(Some(before), 1);
    let yaml = std::fs::read_to_string(&stack.envoy.config_path).unwrap();
    stack.envoy.kill();
    let dir = scratch_dir().unwrap();
    std::fs::write(dir.join("lds.yaml"), lds_file(&yaml)).unwrap();
    let gateway = listener_of(&yaml, "gateway").unwrap();
    let envoy = Envoy::start_serving(&dynamic_yaml(&yaml, &dir), 2, &[], gateway)
        .unwrap_or_else(|e| panic!("{e}"));
    stack.school.fail_everything();
    stack.auth.fail_everything();
    calls(&envoy, "/schools", 3);
    assert!(
        is_rejection(&envoy.call("/schools")),
        "school open before the reload"
    );
    for r in calls(&envoy, "/auth/validate", 4) {
        assert!(
            !is_rejection(&r),
            "auth's threshold is 50 before the reload"
        );
    }
    let reloads = envoy.counter("envoy_listener_manager_lds_update_success", &[]);
    let next = lds_file(&with_plugin_json(&yaml, after).unwrap());
    std::fs::write(dir.join("lds.yaml.tmp"), next).unwrap();
    std::fs::rename(dir.join("lds.yaml.tmp"), dir.join("lds.yaml")).unwrap();
    let started = Instant::now();
    wait_for("the listener update", Duration::from_secs(10), || {
        (envoy.counter("envoy_listener_manager_lds_update_success", &[]) > reloads).then_some(())
    });
    // Old connections drain; new ones go through the new filter config.
    std::thread::sleep(Duration::from_millis(300));
    let r = envoy.call("/schools");
    assert!(
        is_rejection(&r),
        "school is still open after the reload: {}",
        r.text()
    );
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        secs > 50,
        "its open time is the one it tripped with ({secs}s left)"
    );
    calls(&envoy, "/auth/validate", 2);
    assert!(
        is_rejection(&envoy.call("/auth/validate")),
        "the new threshold (2) applies"
    );
    println!(
        "fault case | config reload (LDS) | state kept, new thresholds live | {} ms",
        started.elapsed().as_millis()
    );
}

/// The failures in the school breaker's timeline, as the control API shows them.
fn timeline_failures(stack: &Stack) -> u64 {
    let h: serde_json::Value = api(
        &stack.envoy,
        "GET",
        "/circuit-breakers/school/history",
        None,
        None,
    )
    .json()
    .unwrap();
    h["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["failures"].as_u64().unwrap())
        .sum()
}

/// The sample stack on the test-hooks build of the filter.
fn hooks_stack(plugin_json: &str) -> Stack {
    let wasm = root().join("target/test-hooks/wasm32-wasip1/release/envoy_circuit_breaker.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: `make test` builds it",
        wasm.display()
    );
    stack_with(Some(plugin_json), 2, |y| {
        y.replace(
            "filename: target/wasm32-wasip1/release/envoy_circuit_breaker.wasm",
            &format!("filename: {}", wasm.display()),
        )
    })
}

#[test]
fn a_trapped_vm_comes_back_under_fail_reload_with_the_state_intact() {
    let stack = hooks_stack(QUICK);
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 3);
    assert!(is_rejection(&stack.envoy.call("/schools")));
    wait_for(
        "the failures in the timeline",
        Duration::from_secs(5),
        || (timeline_failures(&stack) == 3).then_some(()),
    );
    let started = Instant::now();
    // Each worker that takes one of these traps its VM.
    for _ in 0..6 {
        let _ = client::request(
            "GET",
            &stack.envoy.gateway,
            "/schools",
            &[("x-circuit-breaker-test-trap", "1")],
            None,
            Duration::from_secs(5),
        );
    }
    // Envoy reloads a failed VM on the first request after a backoff of about a second,
    // answering 503 itself until then; so keep asking until every answer is the breaker's.
    let mut last = Vec::new();
    let healed = poll(Duration::from_secs(15), || {
        last = burst(&stack.envoy.gateway, "/schools", 20)
            .iter()
            .map(|r| (r.status, is_rejection(r)))
            .collect();
        if last.iter().all(|&(_, refused)| refused) {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    assert!(
        healed.is_some(),
        "the reloaded VMs still see the breaker open (status, refused by the breaker): {last:?}"
    );
    assert!(
        stack
            .envoy
            .counter("envoy_wasm_circuit_breaker_vm_reload_success", &[])
            >= 1,
        "a VM was reloaded"
    );
    assert_eq!(stack.envoy.call("/students").status, 200, "traffic flows");
    assert_eq!(
        timeline_failures(&stack),
        3,
        "the reloaded VMs read the same fifteen minutes"
    );
    let reloads = stack
        .envoy
        .counter("envoy_wasm_circuit_breaker_vm_reload_success", &[]);
    println!(
        "fault case | VM trap under FAIL_RELOAD | reloaded ({reloads}), state intact | {} ms",
        started.elapsed().as_millis()
    );
}

#[test]
fn a_damaged_record_in_shared_data_starts_again_from_closed_and_says_so() {
    let stack = hooks_stack(QUICK);
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 3);
    assert!(is_rejection(&stack.envoy.call("/schools")));
    let started = Instant::now();
    let _ = client::request(
        "GET",
        &stack.envoy.gateway,
        "/students",
        &[("x-circuit-breaker-test-damage", "school")],
        None,
        Duration::from_secs(5),
    );
    // Workers decide from their own copies, so the junk is met by the first timer tick
    // (within a period), which replaces it and tells the other workers.
    stack
        .envoy
        .wait_log("state in shared data was unreadable", 1);
    // The junk reads as a fresh, closed breaker: the next request reaches the (still
    // failing) upstream, and the rule trips it again from a clean count.
    let r = stack.envoy.call("/schools");
    assert!(
        !is_rejection(&r) && r.text().contains("simulated"),
        "{}",
        r.text()
    );
    calls(&stack.envoy, "/schools", 2);
    assert!(is_rejection(&stack.envoy.call("/schools")));
    println!(
        "fault case | junk bytes over a record in shared data | logged, closed, tripped again | {} ms",
        started.elapsed().as_millis()
    );
}
