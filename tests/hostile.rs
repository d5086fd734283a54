//! Hostile and bad input through the real Envoy: requests cannot create breakers or grow
//! memory, the control API refuses or neutralises what it should, and nothing an upstream
//! or a cluster name holds can inject a header into the breaker's answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn breaker_names(envoy: &Envoy) -> Vec<String> {
    let list = api(envoy, "GET", "/circuit-breakers", None, None)
        .json()
        .unwrap();
    list["circuit_breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn no_request_can_create_a_breaker_or_grow_memory() {
    let stack = stack_with(
        Some(
            r#"{"clusters": {"school": {"fallback_cache": {"max_entries": 20, "max_bytes": 20000},
            "per_route": true, "max_route_breakers": 2, "exclude_paths": ["/schools/health"]}}}"#,
        ),
        2,
        |y| {
            y.replace(
                "              - match: { prefix: \"/schools\" }\n",
                "              - name: schools_route\n                match: { prefix: \"/schools\" }\n",
            )
        },
    );
    let before = breaker_names(&stack.envoy);
    // Warm up, then measure memory across many distinct paths, hosts and odd headers.
    for _ in 0..200 {
        let _ = stack.envoy.get("/schools/1");
    }
    let rss_before = rss_kib(stack.envoy.pid()).unwrap_or(0);
    let n = 3_000;
    std::thread::scope(|s| {
        for t in 0..8 {
            let gateway = stack.envoy.gateway.clone();
            s.spawn(move || {
                for i in (t..n).step_by(8) {
                    let path = match i % 4 {
                        0 => format!("/schools/{i}?x={i}"),
                        1 => format!("/students/{i}/{}", "z".repeat(i % 200)),
                        2 => format!("/auth/{i}%2F..%2F{i}"),
                        _ => format!("/nowhere/{i}"),
                    };
                    let host = format!("host-{i}.example");
                    let cluster_hint = format!("cluster-{i}");
                    let _ = client::request(
                        "GET",
                        &gateway,
                        &path,
                        &[
                            ("host", host.as_str()),
                            ("x-envoy-cluster", cluster_hint.as_str()),
                            ("x-route", cluster_hint.as_str()),
                        ],
                        None,
                        Duration::from_secs(5),
                    );
                }
            });
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = breaker_names(&stack.envoy);
    let rss_after = rss_kib(stack.envoy.pid()).unwrap_or(0);
    println!(
        "key space | {n} requests with distinct paths, hosts and headers | breakers {before:?} -> {after:?} | RSS {rss_before} -> {rss_after} KiB"
    );
    // The only breakers are the configured clusters and the one named route (a config item).
    assert_eq!(after, ["auth", "school", "school/schools_route", "student"]);
    assert!(
        rss_after < rss_before + 6 * 1024,
        "Envoy grew by {} KiB",
        rss_after - rss_before
    );
}

/// A control API request and the status it must get: method, path, token, body, status.
type ApiCase<'a> = (&'a str, String, Option<&'a str>, Option<String>, u16);

#[test]
fn the_control_api_refuses_hostile_requests_and_changes_nothing() {
    let stack = stack_with_token(None, 2);
    let e = &stack.envoy;
    let long_token = "x".repeat(10_000);
    let cases: Vec<ApiCase> = vec![
        (
            "POST",
            "/circuit-breakers/school/reset".into(),
            Some(long_token.as_str()),
            None,
            401,
        ),
        (
            "POST",
            "/circuit-breakers/school/reset".into(),
            Some("test-token-7f3"),
            None,
            401,
        ),
        (
            "POST",
            "/circuit-breakers/school/reset".into(),
            // HTTP trims the spaces around a header value, so a longer guess stands in for
            // "the token and then some".
            Some("test-token-7f3aa"),
            None,
            401,
        ),
        (
            "GET",
            "/circuit-breakers/..%2F..%2Fetc%2Fpasswd".into(),
            None,
            None,
            404,
        ),
        ("GET", "/circuit-breakers/%2e%2e".into(), None, None, 404),
        (
            "GET",
            "/circuit-breakers/school%0d%0aset-cookie:%20x".into(),
            None,
            None,
            404,
        ),
        ("GET", "/circuit-breakers/%ff%fe".into(), None, None, 400),
        ("GET", "/circuit-breakers/%zz".into(), None, None, 400),
        (
            "PUT",
            "/circuit-breakers/school/mode".into(),
            Some(TOKEN),
            Some(format!("{{\"mode\": \"{}\"}}", "a".repeat(5_000))),
            413,
        ),
        (
            "PUT",
            "/circuit-breakers/school/mode".into(),
            Some(TOKEN),
            Some("{\"mode\": \"disabled\", \"mode\": 5}".into()),
            400,
        ),
        (
            "PUT",
            "/circuit-breakers/school/mode".into(),
            Some(TOKEN),
            Some("\u{0}\u{1}".into()),
            400,
        ),
        (
            "DELETE",
            "/circuit-breakers/school".into(),
            Some(TOKEN),
            None,
            405,
        ),
    ];
    for (method, path, token, body, expected) in &cases {
        let r = api(e, method, path, *token, body.as_deref());
        assert_eq!(r.status, *expected, "{method} {path}: {}", r.text());
        assert!(r.json().is_ok(), "refusals are JSON: {}", r.text());
        assert!(
            !r.headers.iter().any(|(k, _)| k == "set-cookie"),
            "no header from the path"
        );
    }
    let v = api(e, "GET", "/circuit-breakers/school", None, None)
        .json()
        .unwrap();
    assert_eq!(
        (v["state"].as_str(), v["mode"].as_str()),
        (Some("closed"), Some("enforce"))
    );
    assert_eq!(breaker_names(e), ["auth", "school", "student"]);
    println!(
        "control API | {} hostile requests refused, nothing changed",
        cases.len()
    );
}

#[test]
fn upstream_retry_after_values_are_neutralised() {
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"honor_retry_after": true, "failure_threshold": 50, "open_duration": "10s", "max_open_duration": "30s"},
                              "student": {"honor_retry_after": true, "failure_threshold": 50}}}"#,
        ),
        2,
    );
    // Garbage and dates in the past ask for nothing.
    for garbage in [
        "soon",
        "-5",
        "1.5",
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "99999999999999999999",
        "<script>",
    ] {
        stack
            .student
            .set_faults(json!({"is_healthy": false, "retry_after": garbage}));
        let r = stack.envoy.call("/students");
        assert!(!is_rejection(&r), "{garbage:?} opened the breaker");
    }
    // A huge wait is capped by max_open_duration, and only a number goes out.
    stack
        .school
        .set_faults(json!({"is_healthy": false, "retry_after": "999999999"}));
    let _ = stack.envoy.call("/schools");
    let r = stack.envoy.call("/schools");
    assert!(is_rejection(&r));
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&secs), "{secs}");
    assert_eq!(r.json().unwrap()["retry_after_seconds"], secs);
}

#[test]
fn odd_cluster_names_stay_inside_their_answers() {
    let evil = "we\\\"ird cluster";
    let plugin = format!(
        r#"{{"clusters": {{"{evil}": {{"failure_threshold": 1,
            "fallback": {{"status": 503, "body": "{{cluster}}", "headers": {{"x-cluster": "{{cluster}}"}}}}}}}}}}"#
    );
    let name = "we\"ird cluster";
    let stack = stack_with(Some(&plugin), 2, |y| {
        y.replace(
            "route: { cluster: school, timeout: 5s }",
            &format!("route: {{ cluster: '{name}', timeout: 5s }}"),
        )
        .replace("  - name: school\n", &format!("  - name: '{name}'\n"))
        .replace(
            "cluster_name: school\n",
            &format!("cluster_name: '{name}'\n"),
        )
    });
    stack.school.fail_everything();
    let _ = stack.envoy.call("/schools");
    let r = stack.envoy.call("/schools");
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), name);
    assert_eq!(r.header("x-cluster"), Some(name));
    let v = api(
        &stack.envoy,
        "GET",
        "/circuit-breakers/we%22ird%20cluster",
        None,
        None,
    )
    .json()
    .unwrap();
    assert_eq!(v["name"], name);
}
