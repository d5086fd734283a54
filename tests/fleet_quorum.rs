//! The fleet trips on agreement, not on one voice (`fleet.trip_quorum`), in the real Envoy
//! with a real etcd: a gateway whose own path to the upstream is broken opens only itself
//! while the others keep serving; when the upstream fails for everyone, the second
//! member's trip opens the breaker on every Envoy; a voter that dies takes its vote with
//! it; a bad quorum is refused naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;

/// Quorum 2, a 60 s window (so a vote counts that long), open 3 s.
fn quorum_json() -> String {
    plugin_json_quorum("3s", r#", "window": "60s""#, 2)
}

fn standing(e: &Envoy) -> String {
    school_view(e)
        .map(|v| v["fleet"]["standing"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn vote_key(member: &str) -> String {
    format!("{PREFIX}/v/school/{member}")
}

/// Trips gateway-1 alone through its dead endpoint: five connection failures, then refusals.
fn trip_the_broken_gateway(f: &Fleet) {
    let g1 = &f.stack.envoy;
    for _ in 0..5 {
        let r = g1.call("/schools");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(!is_rejection(&r), "the connection failures come first");
    }
    assert!(is_rejection(&g1.call("/schools")));
}

#[test]
fn one_broken_gateway_opens_only_itself_and_a_service_wide_failure_opens_the_fleet() {
    let f = fleet_with_one_broken_path(&quorum_json());
    let (g1, g2, g3) = (&f.stack.envoy, &f.others[0], &f.others[1]);
    trip_the_broken_gateway(&f);
    g1.wait_log("school circuit breaker OPENED: 5 consecutive failures", 1);
    wait_for("gateway-1's vote in etcd", Duration::from_secs(3), || {
        keys_under(&f.etcd, PREFIX)
            .contains(&vote_key("gateway-1"))
            .then_some(())
    });
    // Open 3 s: a machine that stalls (every process on it was once seen frozen for 17 s)
    // lets the open time run out before this read, and half-open on its own is as right.
    let alone = standing(g1);
    assert!(
        [
            "open here by its own failures, 1 of 2 votes",
            "half-open here on its own, 1 of 2 votes"
        ]
        .contains(&alone.as_str()),
        "{alone}: {:?}",
        school_view(g1)
    );
    let list: serde_json::Value = api(g1, "GET", "/circuit-breakers", None, None)
        .json()
        .unwrap();
    assert_eq!(
        list["fleet"]["members"],
        serde_json::json!(["gateway-1", "gateway-2", "gateway-3"]),
        "the live members, for the dashboard's fleet panel"
    );
    let dashboard = format!(
        "http://{}/circuit-breakers/dashboard",
        g1.control.clone().unwrap()
    );
    let dom = browser_dom(&dashboard, 3_000);
    assert!(
        dom.contains(r#"data-members="gateway-1,gateway-2,gateway-3""#),
        "the fleet panel: {dom}"
    );
    assert!(
        dom.contains("1 of 2 votes"),
        "the breaker's standing on its card"
    );
    // Ten seconds of traffic through the two healthy gateways: no refusal at all.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(10) {
        for e in [g2, g3] {
            let r = e.call("/schools");
            assert_eq!(r.status, 200, "{} {}", r.status, r.text());
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{served} requests served by gateway-2 and gateway-3 while gateway-1 refused");
    for e in [g2, g3] {
        assert!(e.log_lines("circuit breaker OPENED").is_empty());
        assert_eq!(standing(e), "closed");
        let votes = stat(e, "circuit_breaker_fleet_votes.cluster=school")
            .or_else(|| school_view(e)?["fleet"]["votes"].as_f64());
        assert_eq!(votes, Some(1.0), "gateway-1's vote is seen");
    }
    // Now the upstream fails for everyone: gateway-2's trip is the second vote.
    f.stack.school.fail_everything();
    for _ in 0..5 {
        assert_eq!(g2.call("/schools").status, 503);
    }
    let hits = f.stack.school.hits();
    let line = g3.wait_log("school circuit breaker OPENED in the fleet", 1);
    assert!(
        line[0].contains("votes from gateway-1, gateway-2"),
        "{}",
        line[0]
    );
    for _ in 0..20 {
        let r = g3.call("/schools");
        assert!(is_rejection(&r), "{} {}", r.status, r.text());
    }
    assert_eq!(
        f.stack.school.hits(),
        hits,
        "no upstream call from gateway-3"
    );
    let sum = wait_for("the propagation histogram", Duration::from_secs(12), || {
        (stat(g3, "circuit_breaker_fleet_propagation_ms_count")? >= 1.0)
            .then(|| stat(g3, "circuit_breaker_fleet_propagation_ms_sum"))
            .flatten()
    });
    eprintln!("the fleet's open reached gateway-3 {sum} ms after gateway-2 published it");
    assert!(sum < 1_000.0, "{sum} ms");
    // Open 3 s: by now the fleet's breaker may be half-open already, in the fleet still.
    for e in f.envoys() {
        let s = standing(e);
        assert!(s.ends_with("in the fleet"), "{s}: {:?}", school_view(e));
    }
    g1.wait_log("school circuit breaker OPENED in the fleet", 1);
    // Recovery through the fleet's probe gate, as before votes: half-open everywhere, then
    // one good probe through gateway-3 closes the breaker on every Envoy.
    state_everywhere(&f, "half_open");
    for e in f.envoys() {
        let probes = &school_view(e).unwrap()["fleet"]["probes_in_flight"];
        assert_eq!(probes, 0, "no probe out across the fleet yet");
    }
    f.stack.school.heal();
    wait_for("a probe through gateway-3", Duration::from_secs(5), || {
        (g3.call("/schools").status == 200).then_some(())
    });
    state_everywhere(&f, "closed");
    assert!(school_view(g3).unwrap()["fleet"]["probes_in_flight"].is_null());
    wait_for("every vote withdrawn", Duration::from_secs(5), || {
        (!keys_under(&f.etcd, PREFIX)
            .iter()
            .any(|k| k.starts_with(&format!("{PREFIX}/v/"))))
        .then_some(())
    });
}

#[test]
fn a_voter_that_dies_takes_its_vote_with_it() {
    let mut f = fleet_with_one_broken_path(&quorum_json());
    trip_the_broken_gateway(&f);
    wait_for("gateway-1's vote in etcd", Duration::from_secs(3), || {
        keys_under(&f.etcd, PREFIX)
            .contains(&vote_key("gateway-1"))
            .then_some(())
    });
    f.stack.envoy.kill();
    let killed = Instant::now();
    let gone = wait_for(
        "the dead voter's vote to go",
        Duration::from_secs(10),
        || {
            (!keys_under(&f.etcd, PREFIX).contains(&vote_key("gateway-1")))
                .then(|| killed.elapsed())
        },
    );
    eprintln!("the dead voter's vote left with its lease {gone:?} after the kill");
    let (g2, g3) = (&f.others[0], &f.others[1]);
    for e in [g2, g3] {
        wait_for(
            "the vote gone from the tally",
            Duration::from_secs(3),
            || (school_view(e)?["fleet"]["voters"] == serde_json::json!([])).then_some(()),
        );
    }
    let list: serde_json::Value = api(g2, "GET", "/circuit-breakers", None, None)
        .json()
        .unwrap();
    assert_eq!(
        list["fleet"]["members"],
        serde_json::json!(["gateway-2", "gateway-3"])
    );
    let departed = &list["fleet"]["departed"];
    assert_eq!(departed[0]["member"], "gateway-1", "{list}");
    assert!(departed[0]["last_seen"].as_str().unwrap().ends_with('Z'));
    let dashboard = format!(
        "http://{}/circuit-breakers/dashboard",
        g2.control.clone().unwrap()
    );
    let dom = browser_dom(&dashboard, 3_000);
    assert!(
        dom.contains(r#"data-departed="gateway-1""#),
        "the fleet panel names the member gone: {dom}"
    );
    // gateway-2 trips alone: one vote of the two live members, so the fleet stays closed.
    trip_through(g2, &f.stack);
    wait_for("gateway-2's vote", Duration::from_secs(3), || {
        keys_under(&f.etcd, PREFIX)
            .contains(&vote_key("gateway-2"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let alone = standing(g2);
    assert!(
        [
            "open here by its own failures, 1 of 2 votes",
            "half-open here on its own, 1 of 2 votes"
        ]
        .contains(&alone.as_str()),
        "{alone}"
    );
    assert!(g3.log_lines("OPENED").is_empty(), "gateway-3 never opened");
    f.stack.school.heal();
    let r = g3.call("/schools");
    assert_eq!(r.status, 200, "gateway-3 serves: {}", r.text());
}

#[test]
fn a_quorum_that_is_not_a_count_from_1_to_1000_is_refused_naming_the_field() {
    for bad in ["0", "-1", "\"2\"", "1001"] {
        let json = plugin_json_quorum("3s", "", 1)
            .replace(r#""trip_quorum": 1"#, &format!(r#""trip_quorum": {bad}"#));
        let yaml = with_port(&sample_yaml().unwrap(), 10000, free_port().unwrap());
        let yaml = with_plugin_json(&with_port(&yaml, 9901, 0), &json).unwrap();
        let yaml = add_clusters(&yaml, &etcd_cluster(free_port().unwrap()));
        match Envoy::start(&yaml, 1) {
            Ok(_) => panic!("envoy accepted trip_quorum {bad}"),
            Err(log) => {
                let line = log
                    .lines()
                    .find(|l| l.contains("[CIRCUIT_BREAKER] invalid plugin configuration"))
                    .unwrap_or_else(|| panic!("no refusal line for {bad}:\n{log}"));
                assert!(line.contains("fleet.trip_quorum"), "{bad}: {line}");
            }
        }
    }
}
