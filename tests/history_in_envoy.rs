//! A breaker's last fifteen minutes and its headroom, in the real Envoy: what the timeline
//! endpoint shows after traffic, a trip and a recovery, and the gauge that says how close a
//! breaker is to tripping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn get(stack: &Stack, path: &str) -> Value {
    let r = api(&stack.envoy, "GET", path, None, None);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json().unwrap()
}

/// The gauge's value for school, once Envoy shows it.
fn failures_to_trip(stack: &Stack) -> Option<u64> {
    let text = stack.envoy.metrics();
    text.lines()
        .find(|l| {
            l.starts_with("circuit_breaker_failures_to_trip{") && l.contains("cluster=\"school\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn dashboard_url(stack: &Stack) -> String {
    format!(
        "http://{}/circuit-breakers/dashboard",
        stack.envoy.control.clone().unwrap()
    )
}

/// Every value of `attribute` in the page, in document order.
fn attribute_values(dom: &str, attribute: &str) -> Vec<String> {
    dom.split(&format!("{attribute}=\""))
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

/// The state band, left to right, reads closed, open (red), half-open (yellow), closed
/// (green), after the time before the breaker existed (grey).
fn the_band_goes_red_yellow_green(dom: &str, where_: &str) {
    let drawn = dom.split(r#"class="band""#).nth(1).unwrap_or_default();
    let band: Vec<String> =
        attribute_values(drawn.split("</g>").next().unwrap_or_default(), "data-state")
            .into_iter()
            .filter(|s| s != "unknown")
            .collect();
    assert_eq!(
        band,
        ["closed", "open", "half_open", "closed"],
        "{where_}: {dom}"
    );
}

fn total(buckets: &[Value], field: &str) -> u64 {
    buckets.iter().map(|b| b[field].as_u64().unwrap()).sum()
}

#[test]
fn the_timeline_shows_traffic_a_trip_and_the_recovery() {
    let stack = stack(
        Some(r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "1500ms"}}}"#),
        2,
    );
    assert!(calls(&stack.envoy, "/schools", 10)
        .iter()
        .all(|r| r.status == 200));
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 3);
    let refused = calls(&stack.envoy, "/schools", 4);
    assert!(refused.iter().all(is_rejection));
    std::thread::sleep(Duration::from_millis(1_600));
    stack.school.heal();
    wait_for("the probe to close it", Duration::from_secs(5), || {
        (stack.envoy.call("/schools").status == 200).then_some(())
    });
    // Counts reach the timeline on the workers' timers.
    let h = wait_for("the counts in the timeline", Duration::from_secs(5), || {
        let h = get(&stack, "/circuit-breakers/school/history");
        let buckets = h["buckets"].as_array().unwrap().clone();
        (total(&buckets, "successes") >= 11 && total(&buckets, "refusals") >= 4).then_some(h)
    });
    assert_eq!(h["name"], "school");
    assert_eq!(h["bucket_seconds"], 10);
    let buckets = h["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 90, "fifteen minutes of 10 s buckets");
    assert_eq!(total(buckets, "failures"), 3);
    assert_eq!(total(buckets, "refusals"), 4);
    assert_eq!(total(buckets, "probes"), 1);
    assert_eq!(
        total(buckets, "calls"),
        total(buckets, "successes") + total(buckets, "failures") + total(buckets, "slow")
    );
    let seen: Vec<&str> = buckets
        .iter()
        .flat_map(|b| b["states"].as_array().unwrap())
        .map(|s| s.as_str().unwrap())
        .collect();
    for state in ["closed", "open", "half_open"] {
        assert!(seen.contains(&state), "{state} in {seen:?}");
    }
    assert_eq!(buckets[89]["state"], "closed");
    assert_eq!(
        buckets[0]["state"],
        Value::Null,
        "nothing before the breaker"
    );
    let moves: Vec<(&str, &str)> = h["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["from"].as_str().unwrap(), t["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        moves,
        [
            ("half_open", "closed"),
            ("open", "half_open"),
            ("closed", "open")
        ]
    );
    let dom = browser_dom(&dashboard_url(&stack), 4_000);
    the_band_goes_red_yellow_green(&dom, "");
    let bars = attribute_values(&dom, "data-failures");
    assert!(
        bars.iter().any(|n| n != "0"),
        "failures drawn under the band: {bars:?}"
    );
    assert!(
        dom.contains("more consecutive failures to trip"),
        "headroom on the card"
    );
    let detail = browser_dom(&format!("{}#breaker=school", dashboard_url(&stack)), 4_000);
    assert!(detail.contains(r#"class="detail""#), "the detail view");
    the_band_goes_red_yellow_green(&detail, "in the detail view");
    // Unknown names are refused, naming the name.
    let r = api(
        &stack.envoy,
        "GET",
        "/circuit-breakers/nope/history",
        None,
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("nope"), "{}", r.text());
}

#[test]
fn headroom_counts_down_to_the_trip() {
    let stack = stack(
        Some(r#"{"clusters": {"school": {"failure_threshold": 5, "open_duration": "60s"}}}"#),
        2,
    );
    let view = get(&stack, "/circuit-breakers/school");
    assert_eq!(view["headroom"]["failures_to_trip"], 5);
    stack.school.fail_everything();
    calls(&stack.envoy, "/schools", 3);
    let view = get(&stack, "/circuit-breakers/school");
    assert_eq!(view["headroom"]["failures_to_trip"], 2);
    let summary = view["headroom"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(
            "2 more consecutive failures to trip; failure rate 100 % of 50 % over 3 of 20 calls"
        ),
        "{summary}"
    );
    wait_for("the gauge at 2", Duration::from_secs(5), || {
        failures_to_trip(&stack).filter(|n| *n == 2)
    });
    calls(&stack.envoy, "/schools", 2);
    wait_for("the gauge at 0 once open", Duration::from_secs(5), || {
        failures_to_trip(&stack).filter(|n| *n == 0)
    });
    let view = get(&stack, "/circuit-breakers/school");
    assert_eq!(view["headroom"]["summary"], "open: calls are refused");
}
