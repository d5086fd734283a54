//! The docker-compose stack exactly as shipped, built and run for real: what `make demo`
//! shows natively, checked through the ports the stack publishes on loopback, and the
//! breaker's alert through Prometheus's API. Needs a Docker engine and the images, which
//! `make test-docker` provides before it runs this; `make test` skips it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/compose.rs"]
mod compose;

use std::time::{Duration, Instant};

use common::*;
use compose::Compose;
use serde_json::{json, Value};

/// A project name of its own, so cleaning up can never touch a user's `make demo-docker`.
const PROJECT: &str = "ecb-docker-test";
const FILE: &str = "envoy/docker-compose.yml";
/// What the compose file publishes on loopback.
const PORTS: [u16; 7] = [8081, 8082, 8083, 10000, 9901, 9902, 9090];

/// Envoy's last lines, shown before a failed test takes the stack down.
fn show_envoy_log(stack: &Compose) {
    let logs = stack.command(&["logs", "--no-color", "--tail", "40", "envoy"]);
    eprintln!("envoy's log:\n{}", String::from_utf8_lossy(&logs.stdout));
}
const GATEWAY: &str = "127.0.0.1:10000";
const ADMIN: &str = "127.0.0.1:9901";
const CONTROL: &str = "127.0.0.1:9902";
const PROMETHEUS: &str = "127.0.0.1:9090";
const AUTH: &str = "127.0.0.1:8081";
const SCHOOL: &str = "127.0.0.1:8082";
/// The shipped config's open time for the school breaker.
const SCHOOL_OPEN: Duration = Duration::from_secs(60);

fn get(addr: &str, path: &str) -> Response {
    client::get(addr, path).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

/// API requests a service has received, asked on its own published port.
fn hits(service: &str) -> u64 {
    get(service, "/stats").json().unwrap()["data"]["requests"]
        .as_u64()
        .unwrap()
}

fn school_hits() -> u64 {
    hits(SCHOOL)
}

fn set_faults(addr: &str, faults: Value) {
    let r = client::post_json(addr, "/simulate/failure", &faults).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

fn view(cluster: &str) -> Value {
    get(CONTROL, &format!("/circuit-breakers/{cluster}"))
        .json()
        .unwrap()
}

fn control(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let bytes = body.map(|b| b.to_string().into_bytes());
    client::request(
        method,
        CONTROL,
        path,
        &headers,
        bytes.as_deref(),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// One Prometheus sample line from Envoy's admin, such as `circuit_breaker_state{cluster="school"}`.
fn sample(series: &str) -> Option<f64> {
    get(ADMIN, "/stats/prometheus")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn login() -> Response {
    client::post_json(
        GATEWAY,
        "/auth/login",
        &json!({"email": "test@example.com", "password": "test123"}),
    )
    .unwrap()
}

#[test]
#[ignore = "needs a Docker engine and the images: run `make test-docker`"]
fn the_shipped_compose_stack_passes_trips_refuses_cascades_recovers_and_alerts() {
    let mut stack = Compose::up(PROJECT, FILE, &PORTS, show_envoy_log);
    let token = stack.token().to_string();
    assert_eq!(stack.containers().len(), 5, "five containers run");

    wait_for(
        "the gateway, control API and Prometheus on the published ports",
        Duration::from_secs(90),
        || {
            let ok = |addr: &str, path: &str| {
                client::get(addr, path)
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            };
            (ok(GATEWAY, "/students") && ok(CONTROL, "/health") && ok(PROMETHEUS, "/-/ready"))
                .then_some(())
        },
    );

    // Pass-through: each service answers through the gateway, untouched.
    let before = school_hits();
    let r = get(GATEWAY, "/schools");
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["data"][0]["name"], "Riverside High");
    assert!(r.header("retry-after").is_none());
    assert_eq!(
        school_hits(),
        before + 1,
        "the request reached the school service"
    );
    let logins = hits(AUTH);
    let r = login();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["data"]["user"]["role"], "teacher");
    assert_eq!(hits(AUTH), logins + 1, "the login reached the auth service");

    // A trip after the threshold: five upstream failures, then JSON 503s that reach no one.
    set_faults(SCHOOL, json!({"is_healthy": false}));
    for _ in 0..5 {
        let r = get(GATEWAY, "/schools");
        assert_eq!(r.status, 503);
        assert!(!is_rejection(&r), "the upstream's own 503s come first");
    }
    let tripped = Instant::now();
    let seen = school_hits();
    for _ in 0..10 {
        let r = get(GATEWAY, "/schools");
        assert!(is_rejection(&r), "{} {}", r.status, r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json().unwrap()["cluster"], "school");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "retry-after {retry}");
    }
    assert_eq!(school_hits(), seen, "refusals reached no service");

    // The cascade: the student service asks the school service through the gateway, by its
    // compose service name, and is refused at once instead of waiting.
    let started = Instant::now();
    let r = client::post_json(
        GATEWAY,
        "/students",
        &json!({"name": "Alan Turing", "email": "alan@school.test", "school_id": 2}),
    )
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json().unwrap();
    assert_eq!(body["error"], "SCHOOL_SERVICE_UNAVAILABLE");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open"),
        "{body}"
    );
    assert_eq!(
        school_hits(),
        seen,
        "the cascade's school check reached no service"
    );

    // The breaker's metrics, with their labels, on Envoy's admin port.
    wait_for(
        "the refusals in the metrics",
        Duration::from_secs(5),
        || {
            (sample(r#"circuit_breaker_requests_total{cluster="school",outcome="rejected"}"#)
                >= Some(11.0))
            .then_some(())
        },
    );
    let text = get(ADMIN, "/stats/prometheus").text();
    for line in [
        r#"circuit_breaker_state{cluster="school"} 1"#,
        r#"circuit_breaker_state{cluster="auth"} 0"#,
        r#"circuit_breaker_requests_total{cluster="school",outcome="failure"} 5"#,
        r#"circuit_breaker_trips_total{cluster="school",reason="consecutive_failures"} 1"#,
        r#"circuit_breaker_transitions_total{cluster="school",from="closed",to="open"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }

    // The control API and dashboard, with the token from the compose environment.
    let v = view("school");
    assert_eq!(v["state"], "open", "{v}");
    assert_eq!(v["reason"], "consecutive_failures", "{v}");
    let page = get(CONTROL, "/circuit-breakers/dashboard");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let forced = Some(json!({"mode": "forced_open"}));
    let r = control("PUT", "/circuit-breakers/auth/mode", None, forced.clone());
    assert_eq!(r.status, 401, "no token, no change: {}", r.text());
    let r = control(
        "PUT",
        "/circuit-breakers/auth/mode",
        Some("wrong"),
        forced.clone(),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = control("PUT", "/circuit-breakers/auth/mode", Some(&token), forced);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(is_rejection(&login()), "forced open refuses logins");
    let r = control(
        "PUT",
        "/circuit-breakers/auth/mode",
        Some(&token),
        Some(json!({"mode": null})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = control("POST", "/circuit-breakers/auth/reset", Some(&token), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(login().status, 200, "handed back, logins pass");

    // Prometheus, scraping with the shipped config, holds the shipped CircuitBreakerOpen
    // alert for the school breaker (pending: its `for` is 5 minutes) before the open time
    // ends.
    let alert = poll(SCHOOL_OPEN.saturating_sub(tripped.elapsed()), || {
        let alerts = get(PROMETHEUS, "/api/v1/alerts").json().ok()?;
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "CircuitBreakerOpen"
                    && a["labels"]["cluster"] == "school"
            })
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no CircuitBreakerOpen alert for school; targets: {}",
            get(PROMETHEUS, "/api/v1/targets").text()
        )
    });
    assert!(
        alert["state"] == "pending" || alert["state"] == "firing",
        "{alert}"
    );
    eprintln!(
        "CircuitBreakerOpen {} {:.1}s after the trip",
        alert["state"],
        tripped.elapsed().as_secs_f64()
    );

    // Recovery through half-open: the school heals, the timer moves the breaker to
    // half-open after the open time, and one good probe closes it.
    set_faults(SCHOOL, json!({"is_healthy": true, "failure_rate": 0.0}));
    wait_for(
        "the school breaker to go half-open by its timer",
        SCHOOL_OPEN.saturating_sub(tripped.elapsed()) + Duration::from_secs(15),
        || (view("school")["state"] == "half_open").then_some(()),
    );
    let seen = school_hits();
    let r = get(GATEWAY, "/schools");
    assert_eq!(r.status, 200, "the probe passes: {}", r.text());
    assert_eq!(school_hits(), seen + 1);
    assert_eq!(view("school")["state"], "closed");
    wait_for(
        "the state gauge back at closed",
        Duration::from_secs(5),
        || (sample(r#"circuit_breaker_state{cluster="school"}"#) == Some(0.0)).then_some(()),
    );

    stack.down();
}
