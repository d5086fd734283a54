//! Fleet mode in the real Envoy: three Envoys (different node ids, two workers each) in
//! front of the same services share the school breaker through a real etcd. A trip seen
//! by one is refused by the others without touching the upstream; etcd's loss leaves each
//! Envoy protecting itself; a new Envoy learns an open breaker before its first request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use school_system::etcd::{Etcd, Options};

#[test]
fn a_trip_through_one_envoy_is_refused_by_the_others_without_upstream_calls() {
    let f = fleet("30s", 3);
    trip_through(&f.stack.envoy, &f.stack);
    for other in &f.others {
        let line = other.wait_log(
            "[CIRCUIT_BREAKER] school circuit breaker OPENED by gateway-1",
            1,
        );
        assert!(line[0].contains("5 consecutive failures"), "{}", line[0]);
    }
    let hits = f.stack.school.hits();
    for other in &f.others {
        for _ in 0..20 {
            let r = other.call("/schools");
            assert!(is_rejection(&r), "{} {}", r.status, r.text());
        }
        assert_eq!(
            stat(other, "circuit_breaker_fleet_adopted_total"),
            Some(1.0)
        );
    }
    assert_eq!(
        f.stack.school.hits(),
        hits,
        "no upstream call on the others"
    );
    assert!(
        f.stack.envoy.log_lines("OPENED by").is_empty(),
        "the tripping Envoy adopts nothing"
    );
    for other in &f.others {
        let health = api(other, "GET", "/health", None, None).json().unwrap();
        assert_eq!(health["fleet"]["connected"], true, "{health}");
        assert_eq!(health["fleet"]["last_member"], "gateway-1", "{health}");
        let view = api(other, "GET", "/circuit-breakers/school", None, None)
            .json()
            .unwrap();
        assert_eq!(view["fleet"]["last_member"], "gateway-1", "{view}");
        assert_eq!(view["fleet"]["generation"], 1, "{view}");
        let adopted = view["transitions"]
            .as_array()
            .and_then(|t| t.iter().find(|e| e["to"] == "open"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(adopted["member"], "gateway-1", "{view}");
    }
    // From the publisher's clock to adoption; Envoy merges histograms on its stats flush.
    for other in &f.others {
        let sum = wait_for("the propagation histogram", Duration::from_secs(12), || {
            (stat(other, "circuit_breaker_fleet_propagation_ms_count")? >= 1.0)
                .then(|| stat(other, "circuit_breaker_fleet_propagation_ms_sum"))
                .flatten()
        });
        eprintln!("propagation to one other Envoy: {sum} ms (publisher's clock to adoption)");
        assert!(sum < 1_000.0, "{sum} ms");
    }
    let stored = keys_under(&f.etcd, PREFIX);
    assert!(stored.contains(&format!("{PREFIX}/b/school")), "{stored:?}");
    assert!(
        !stored.contains(&format!("{PREFIX}/b/auth")),
        "auth is kept local: {stored:?}"
    );
}

#[test]
fn with_etcd_frozen_each_envoy_protects_itself_and_a_trip_made_alone_reaches_the_fleet_later() {
    let mut f = fleet("30s", 3);
    f.etcd.freeze(0).unwrap();
    let frozen = Instant::now();
    let detected = all_disconnected(&f, frozen, Duration::from_secs(5));
    eprintln!("frozen etcd detected after {detected:?}");
    for d in &detected {
        assert!(*d < Duration::from_secs(3), "detected only after {d:?}");
    }
    for e in f.envoys() {
        e.wait_log("fleet: etcd unreachable", 1);
        let r = e.call("/schools");
        assert_eq!(r.status, 200, "etcd's loss fails no request: {}", r.text());
    }
    // Alone, gateway-2 trips by its own rules; the others have not seen it.
    trip_through(&f.others[0], &f.stack);
    f.stack.school.heal();
    assert!(is_rejection(&f.others[0].call("/schools")));
    let r = f.stack.envoy.call("/schools");
    assert_eq!(r.status, 200, "gateway-1 still decides alone: {}", r.text());
    f.etcd.thaw(0).unwrap();
    let thawed = Instant::now();
    for e in f.envoys() {
        wait_connected(e);
    }
    let converged = [&f.stack.envoy, &f.others[1]].map(|e| {
        wait_for(
            "the cut-off trip to reach the others",
            Duration::from_secs(5),
            || is_rejection(&e.call("/schools")).then(|| thawed.elapsed()),
        )
    });
    eprintln!("reconnected and converged after {converged:?}");
    f.stack
        .envoy
        .wait_log("school circuit breaker OPENED by gateway-2", 1);
}

#[test]
fn with_etcd_killed_requests_pass_and_the_link_comes_back_with_it() {
    let mut f = fleet("30s", 2);
    f.etcd.kill(0);
    let killed = Instant::now();
    for e in f.envoys() {
        let d = wait_disconnected(e, killed, Duration::from_secs(3));
        eprintln!("killed etcd detected after {d:?}");
    }
    for e in f.envoys() {
        for _ in 0..10 {
            assert_eq!(e.call("/schools").status, 200);
        }
    }
    f.etcd.restart(0).unwrap();
    for e in f.envoys() {
        wait_connected(e);
    }
    trip_through(&f.stack.envoy, &f.stack);
    wait_for(
        "the trip to reach gateway-2",
        Duration::from_secs(3),
        || (f.others[0].log_lines("OPENED by gateway-1").len() == 1).then_some(()),
    );
}

#[test]
fn an_envoy_started_while_the_fleet_breaker_is_open_refuses_from_its_first_request() {
    let f = fleet("30s", 1);
    trip_through(&f.stack.envoy, &f.stack);
    let hits = f.stack.school.hits();
    let late = another(&f.stack.envoy, "gateway-9");
    let r = late.call("/schools");
    assert!(is_rejection(&r), "first request: {} {}", r.status, r.text());
    assert_eq!(f.stack.school.hits(), hits, "nothing reached the upstream");
    late.wait_log("school circuit breaker OPENED by gateway-1", 1);
}

#[test]
fn damaged_records_under_the_prefix_are_ignored_with_one_line_and_then_replaced() {
    let f = fleet("30s", 2);
    let school = format!("{PREFIX}/b/school");
    f.etcd.ctl(&["put", &school, "junk"]).unwrap();
    f.etcd.ctl(&["put", &school, "more junk"]).unwrap();
    f.etcd
        .ctl(&["put", &format!("{PREFIX}/b/nosuch"), "junk"])
        .unwrap();
    for e in f.envoys() {
        e.wait_log(&format!("fleet: ignored the record under {school}"), 1);
        e.wait_log(
            &format!("fleet: ignored the record under {PREFIX}/b/nosuch"),
            1,
        );
        assert_eq!(e.call("/schools").status, 200, "junk changes nothing");
    }
    // The next decision replaces the junk and reaches the other Envoy as usual.
    trip_through(&f.stack.envoy, &f.stack);
    wait_for("the trip over the junk", Duration::from_secs(3), || {
        (f.others[0].log_lines("OPENED by gateway-1").len() == 1).then_some(())
    });
    assert!(is_rejection(&f.others[0].call("/schools")));
}

#[test]
fn half_open_admits_exactly_the_fleets_probes_across_envoys() {
    let json = plugin_json_with(
        "1s",
        r#", "half_open_max_requests": 2, "success_threshold": 1"#,
    );
    let f = fleet_with(&json, 3);
    let envoys = f.envoys();
    for cycle in 0..3 {
        trip_through(envoys[cycle % 3], &f.stack);
        state_everywhere(&f, "open");
        // Healthy again but slow, so both probes are in flight while the burst lands.
        f.stack.school.heal_slowly(1500);
        state_everywhere(&f, "half_open");
        let before = f.stack.school.hits();
        let responses: Vec<Response> = std::thread::scope(|s| {
            let handles: Vec<_> = envoys
                .iter()
                .map(|e| s.spawn(|| burst(&e.gateway, "/schools", 20)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let passed = responses.iter().filter(|r| r.status == 200).count();
        let refused = responses.iter().filter(|r| is_rejection(r)).count();
        let probes = f.stack.school.hits() - before;
        eprintln!("cycle {cycle}: {probes} probe(s) upstream, {passed} passed, {refused} refused");
        assert_eq!(
            probes, 2,
            "exactly half_open_max_requests for the whole fleet"
        );
        assert_eq!((passed, refused), (2, 58));
        // The first good probe closes the breaker everywhere.
        f.stack.school.heal();
        state_everywhere(&f, "closed");
    }
}

#[test]
fn successes_on_every_envoy_add_up_to_one_success_threshold() {
    let json = plugin_json_with(
        "1s",
        r#", "half_open_max_requests": 1, "success_threshold": 3, "half_open_max_duration": "30s""#,
    );
    let f = fleet_with(&json, 3);
    let envoys = f.envoys();
    trip_through(envoys[0], &f.stack);
    state_everywhere(&f, "open");
    f.stack.school.heal();
    state_everywhere(&f, "half_open");
    let before = f.stack.school.hits();
    // One probe through each Envoy in turn: each must find the slot the one before gave
    // back, and only the third success closes the breaker, everywhere.
    for (n, e) in envoys.iter().enumerate() {
        wait_for(
            &format!("a probe through gateway-{}", n + 1),
            Duration::from_secs(5),
            || {
                let r = e.call("/schools");
                if r.status == 200 {
                    return Some(());
                }
                assert!(is_rejection(&r), "{}", r.text());
                std::thread::sleep(Duration::from_millis(50));
                None
            },
        );
        if n < 2 {
            for other in &envoys {
                let v = api(other, "GET", "/circuit-breakers/school", None, None)
                    .json()
                    .unwrap();
                assert_eq!(v["state"], "half_open", "after {} success(es): {v}", n + 1);
            }
        }
    }
    state_everywhere(&f, "closed");
    assert_eq!(f.stack.school.hits() - before, 3, "three probes in all");
    let closed = envoys[2].wait_log("school circuit breaker CLOSED", 1);
    assert!(
        closed[0].contains("after 3 successful probes"),
        "{}",
        closed[0]
    );
    for e in &envoys[..2] {
        e.wait_log(
            "school circuit breaker CLOSED by gateway-3: recovery successful after 3 successful probes",
            1,
        );
    }
}

/// The thread id Envoy prints in a log line (`[time][thread][level]...`).
fn thread_of(line: &str) -> Option<u32> {
    line.split('[').nth(2)?.split(']').next()?.parse().ok()
}

/// The thread whose root context holds the watch: the one that said it connected.
fn holder_thread(e: &Envoy) -> u32 {
    let lines = e.wait_log("fleet: connected to etcd as member", 1);
    thread_of(&lines[0]).unwrap_or_else(|| panic!("no thread id in {}", lines[0]))
}

#[test]
fn the_watch_passes_to_another_context_when_its_holders_vm_dies() {
    let hooks = root().join("target/test-hooks/wasm32-wasip1/release/envoy_circuit_breaker.wasm");
    assert!(
        hooks.exists(),
        "{} is missing: `make test` builds it",
        hooks.display()
    );
    let f = fleet_with_edit(&plugin_json("30s"), 2, |y| {
        y.replace(
            "filename: target/wasm32-wasip1/release/envoy_circuit_breaker.wasm",
            &format!("filename: {}", hooks.display()),
        )
    });
    let e = &f.others[0];
    let holder = holder_thread(e);
    // The test-hooks build: this request asks the holder's context to trap on its tick.
    let asked = client::request(
        "GET",
        &e.gateway,
        "/students",
        &[("x-circuit-breaker-test-trap-holder", "1")],
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(asked.status, 200);
    let trapped_at = Instant::now();
    wait_for("the holder's VM to trap", Duration::from_secs(5), || {
        e.log_lines("on_tick")
            .iter()
            .any(|l| thread_of(l) == Some(holder))
            .then_some(())
    });
    // An operator's decision on the other Envoy must still reach this one: only a watch
    // held by another context of this process can bring it.
    let forced = api(
        &f.stack.envoy,
        "PUT",
        "/circuit-breakers/school/mode",
        Some(TOKEN),
        Some(r#"{"mode": "forced_open"}"#),
    );
    assert_eq!(forced.status, 200, "{}", forced.text());
    wait_for(
        "the forced-open breaker refused by the Envoy whose holder died",
        Duration::from_secs(10),
        || {
            if is_rejection(&e.call("/schools")) {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(50));
            None
        },
    );
    eprintln!(
        "holder (thread {holder}) trapped; the operator's decision refused there {} ms after the trap",
        trapped_at.elapsed().as_millis()
    );
}

#[test]
fn a_breaker_an_envoy_has_not_served_yet_learns_the_fleets_trip_on_its_first_request() {
    // `student` has no settings of its own: its breaker is made, with the defaults, on the
    // first request an Envoy sees for it; gateway-2 has seen none when gateway-1 trips it.
    let f = fleet("30s", 2);
    let (first, second) = (&f.stack.envoy, &f.others[0]);
    f.stack.student.fail_everything();
    for _ in 0..5 {
        assert_eq!(first.call("/students").status, 503);
    }
    assert!(is_rejection(&first.call("/students")));
    std::thread::sleep(Duration::from_millis(500));
    let before = f.stack.student.hits();
    let r = second.call("/students");
    assert!(is_rejection(&r), "{} {}", r.status, r.text());
    assert_eq!(f.stack.student.hits(), before, "no call upstream");
    second.wait_log("student circuit breaker OPENED by gateway-1", 1);
}

#[test]
fn without_a_fleet_block_etcd_is_never_called() {
    let etcd = Etcd::start(&Options {
        members: 1,
        ..Options::default()
    })
    .unwrap();
    let port = etcd_port(&etcd, 0);
    let json = r#"{"clusters": {"school": {"failure_threshold": 5, "open_duration": "30s"}}}"#;
    let stack = stack_with(Some(json), 2, |y| add_clusters(&y, &etcd_cluster(port)));
    trip_through(&stack.envoy, &stack);
    std::thread::sleep(Duration::from_millis(1_500));
    let stats = client::get(
        &stack.envoy.admin,
        "/stats?filter=^cluster\\.etcd\\.upstream_(rq|cx)_total$",
    )
    .unwrap()
    .text();
    assert!(
        stats.contains("cluster.etcd.upstream_cx_total: 0"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.etcd.upstream_rq_total: 0"),
        "{stats}"
    );
    assert!(stat(&stack.envoy, "circuit_breaker_fleet_connected").is_none());
    let health = api(&stack.envoy, "GET", "/health", None, None)
        .json()
        .unwrap();
    assert!(health.get("fleet").is_none(), "{health}");
}

#[test]
fn a_lost_quorum_is_detected_and_the_link_returns_with_it() {
    let mut etcd = Etcd::start(&Options {
        members: 3,
        ..Options::default()
    })
    .unwrap();
    // Envoy reaches member 0 only, the one `break_quorum` leaves alone: a member without
    // a leader, which still answers progress requests (docs/src/fleet-design.md).
    let port0 = etcd_port(&etcd, 0);
    let cluster = etcd_cluster(port0);
    let stack = stack_with(Some(&plugin_json("30s")), 2, |y| {
        format!("node: {{ id: gateway-1 }}\n{}", add_clusters(&y, &cluster))
    });
    wait_connected(&stack.envoy);
    let leader = etcd.leader();
    let survivor = etcd.break_quorum().unwrap();
    assert_eq!(survivor, 0, "the member Envoy reaches");
    let lost = Instant::now();
    let detected = wait_disconnected(&stack.envoy, lost, Duration::from_secs(6));
    let health = api(&stack.envoy, "GET", "/health", None, None)
        .json()
        .unwrap();
    let role = if leader == Some(survivor) {
        "leader"
    } else {
        "follower"
    };
    eprintln!(
        "quorum loss (m{survivor}, the {role}, left alone) detected after {detected:?}: {}",
        health["fleet"]["reason"]
    );
    // A member left alone, follower or leader, answers no linearizable read (the
    // holder's quorum probe, once a second), so its 2 s deadline runs from the loss. A
    // leader would renew leases by itself until it steps down, a second or two later.
    assert!(detected < Duration::from_secs(3), "{detected:?}");
    assert_eq!(stack.envoy.call("/schools").status, 200);
    let back = (0..3).find(|i| *i != survivor).unwrap();
    etcd.restart(back).unwrap();
    let back_up = poll(Duration::from_secs(30), || {
        (stat(&stack.envoy, "circuit_breaker_fleet_connected") == Some(1.0)).then_some(())
    });
    if back_up.is_none() {
        let clusters = client::get(&stack.envoy.admin, "/clusters").unwrap().text();
        let etcd_lines: Vec<&str> = clusters
            .lines()
            .filter(|l| l.starts_with("etcd::"))
            .collect();
        panic!(
            "no link after quorum returned; etcd hosts:\n{}",
            etcd_lines.join("\n")
        );
    }
}

#[test]
fn an_operators_mode_changes_reach_every_envoy() {
    let f = fleet("30s", 2);
    let other = &f.others[0];
    let put = |mode: &str| {
        let body = format!(r#"{{"mode": "{mode}"}}"#);
        let r = api(
            &f.stack.envoy,
            "PUT",
            "/circuit-breakers/school/mode",
            Some(TOKEN),
            Some(&body),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    put("dry_run");
    wait_for("dry run on gateway-2", Duration::from_secs(3), || {
        let v = api(other, "GET", "/circuit-breakers/school", None, None)
            .json()
            .ok()?;
        (v["mode_override"] == "dry_run").then_some(())
    });
    other.wait_log(
        "school circuit breaker MODE by gateway-1: set to dry_run",
        1,
    );
    put("forced_open");
    wait_for("forced open on gateway-2", Duration::from_secs(3), || {
        is_forced_refusal(&other.call("/schools")).then_some(())
    });
}

const FLEET_USER: [(&str, &str); 2] = [("ETCD_USER", "fleet"), ("ETCD_PASSWORD", "fleet-secret")];

/// An etcd with authentication on and a `fleet` user for the prefix.
fn etcd_with_auth() -> Etcd {
    let etcd = Etcd::start(&Options {
        members: 1,
        root_password: Some("root-secret".into()),
        ..Options::default()
    })
    .unwrap();
    etcd.add_user("fleet", "fleet-secret", &format!("{PREFIX}/"))
        .unwrap();
    etcd
}

/// Two Envoys of the fleet logging in to `etcd` as the `fleet` user.
fn logged_in_pair(etcd: &Etcd) -> (Stack, Envoy) {
    let port = etcd_port(etcd, 0);
    let json = plugin_json("30s").replace(
        r#""lease_ttl": "2s""#,
        r#""lease_ttl": "2s", "username_env": "ETCD_USER", "password_env": "ETCD_PASSWORD""#,
    );
    let stack = Stack::start_with_env(Some(&json), 2, &FLEET_USER, |y| {
        let y = y.replace(
            r#"host_env_keys: ["CIRCUIT_BREAKER_ADMIN_TOKEN"]"#,
            r#"host_env_keys: ["CIRCUIT_BREAKER_ADMIN_TOKEN", "ETCD_USER", "ETCD_PASSWORD"]"#,
        );
        format!(
            "node: {{ id: gateway-1 }}\n{}",
            add_clusters(&y, &etcd_cluster(port))
        )
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let other = another_with_env(&stack.envoy, "gateway-2", &FLEET_USER);
    (stack, other)
}

#[test]
fn an_etcd_that_forgot_the_token_is_logged_in_to_again() {
    let mut etcd = etcd_with_auth();
    let (stack, other) = logged_in_pair(&etcd);
    wait_connected(&stack.envoy);
    wait_connected(&other);
    // etcd keeps simple tokens in memory: once restarted, the fleet's token is unknown.
    etcd.kill(0);
    etcd.restart(0).unwrap();
    let restarted = Instant::now();
    trip_through(&stack.envoy, &stack);
    other.wait_log("school circuit breaker OPENED by gateway-1", 1);
    eprintln!(
        "trip adopted {} ms after etcd came back, past the forgotten token",
        restarted.elapsed().as_millis()
    );
    // The fleet did meet the forgotten token (else this test proves nothing).
    let log = std::fs::read_to_string(etcd.dir().join("m0.log")).unwrap();
    assert!(log.contains("invalid auth token"), "{log}");
    assert!(is_rejection(&other.call("/schools")));
}

#[test]
fn with_etcd_authentication_the_fleet_logs_in_and_a_wrong_password_is_said() {
    let etcd = etcd_with_auth();
    let (stack, other) = logged_in_pair(&etcd);
    wait_connected(&stack.envoy);
    wait_connected(&other);
    trip_through(&stack.envoy, &stack);
    other.wait_log("school circuit breaker OPENED by gateway-1", 1);
    assert!(is_rejection(&other.call("/schools")));
    let wrong = another_with_env(
        &stack.envoy,
        "gateway-3",
        &[("ETCD_USER", "fleet"), ("ETCD_PASSWORD", "wrong")],
    );
    wrong.wait_log("fleet: etcd unreachable (etcd call ended with gRPC status 3): check the etcd user and password", 1);
    let health = api(&wrong, "GET", "/health", None, None).json().unwrap();
    assert_eq!(health["fleet"]["connected"], false, "{health}");
}
