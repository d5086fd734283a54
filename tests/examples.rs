//! The shipped examples, run: each config loads into the real Envoy and does what its
//! README says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn example(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// Sends probes until the breaker has closed `times` times in all.
fn probe_until_closed(envoy: &Envoy, times: usize) {
    for _ in 0..40 {
        envoy.call("/schools");
        std::thread::sleep(Duration::from_millis(150));
        if envoy.log_lines("school circuit breaker CLOSED").len() >= times {
            return;
        }
    }
    panic!(
        "never closed:\n{}",
        envoy.log_lines("[CIRCUIT_BREAKER]").join("\n")
    );
}

fn reason_of(envoy: &Envoy) -> String {
    envoy.call("/schools").json().unwrap()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn mixed_rules_trip_on_each_rule_back_off_and_ramp_up() {
    let stack = stack(Some(&example("examples/mixed-rules/plugin.json")), 2);
    let (envoy, school) = (&stack.envoy, &stack.school);

    // 1. Consecutive failures; the excluded health path neither counts nor is refused.
    school.fail_everything();
    calls(envoy, "/schools/health", 6);
    calls(envoy, "/schools", 4);
    assert_eq!(reason_of(envoy), "consecutive_failures");
    assert!(!is_rejection(&envoy.call("/schools/health")));
    school.heal();
    std::thread::sleep(Duration::from_millis(1_200));
    probe_until_closed(envoy, 1);

    // 2. Right after closing, the ramp refuses most requests.
    let early = calls(envoy, "/schools", 10);
    assert!(early
        .iter()
        .any(|r| r.header("x-circuit-breaker") == Some("recovering")));
    std::thread::sleep(Duration::from_millis(2_100));

    // 3. Failure rate: two failures in three never make 4 in a row, but soon pass half of
    //    the window (which still holds the successes the ramp let through).
    let mut refused = None;
    for i in 0..40 {
        if i % 3 == 2 {
            school.heal();
        } else {
            school.fail_everything();
        }
        let r = envoy.call("/schools");
        if is_rejection(&r) {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the failure rate opened the breaker");
    assert_eq!(refused.json().unwrap()["reason"], "failure_rate");
    let second_open = envoy.wait_log("school circuit breaker OPENED: failure rate", 1);
    assert!(
        second_open[0].contains("(trip 2 in a row)"),
        "{}",
        second_open[0]
    );

    // 4. Slow calls, after the (doubled, jittered) open time and another recovery.
    school.heal();
    std::thread::sleep(Duration::from_millis(2_400));
    probe_until_closed(envoy, 2);
    std::thread::sleep(Duration::from_millis(2_100));
    school.set_faults(json!({"response_time_ms": 400}));
    for _ in 0..10 {
        assert_eq!(envoy.call("/schools").status, 200);
    }
    assert_eq!(reason_of(envoy), "slow_call_rate");
    envoy.wait_log("OPENED: slow-call rate", 1);
}
