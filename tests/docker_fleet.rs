//! Fleet mode under Docker, with the faults loopback cannot make: the shipped
//! `envoy/docker-compose.fleet.yml` (three etcd members, three gateways, the services) built
//! and run, then the etcd leader killed (`docker kill`), a member frozen (`docker pause`) and
//! one gateway cut off from etcd (`docker network disconnect`) and reconnected. For each, the
//! time until the gateways' control API says the fleet link is down, the time until a trip
//! made through one gateway is refused by the others again, and the users' requests sent all
//! along through every gateway: none may fail. Needs a Docker engine and the images, which
//! `make test-docker` provides; `make test` skips it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/compose.rs"]
mod compose;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use compose::Compose;
use serde_json::{json, Value};

/// A project name of its own, so cleaning up never touches anything else.
const PROJECT: &str = "ecb-fleet-test";
const FILE: &str = "envoy/docker-compose.fleet.yml";
/// The compose network between the gateways and etcd.
const STORE: &str = "ecb-fleet-test_store";
const SCHOOL: &str = "127.0.0.1:18082";
/// What the fleet compose file publishes on loopback.
const PORTS: [u16; 15] = [
    10001, 10002, 10003, 9911, 9912, 9913, 9921, 9922, 9923, 18081, 18082, 18083, 23791, 23792,
    23793,
];

/// The gateways' breaker lines, shown before a failed test takes the stack down.
fn show_breaker_lines(stack: &Compose) {
    for g in &GATEWAYS {
        let logs = stack.command(&["logs", "--no-color", g.name]);
        let text = String::from_utf8_lossy(&logs.stdout);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("CIRCUIT_BREAKER") || l.contains("[error]"))
            .collect();
        eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
    }
}

/// One gateway's published ports.
struct Gateway {
    name: &'static str,
    gateway: &'static str,
    admin: &'static str,
    control: &'static str,
}

const GATEWAYS: [Gateway; 3] = [
    Gateway {
        name: "gateway-1",
        gateway: "127.0.0.1:10001",
        admin: "127.0.0.1:9911",
        control: "127.0.0.1:9921",
    },
    Gateway {
        name: "gateway-2",
        gateway: "127.0.0.1:10002",
        admin: "127.0.0.1:9912",
        control: "127.0.0.1:9922",
    },
    Gateway {
        name: "gateway-3",
        gateway: "127.0.0.1:10003",
        admin: "127.0.0.1:9913",
        control: "127.0.0.1:9923",
    },
];

/// The etcd members and their published client ports.
const ETCD: [(&str, &str); 3] = [
    ("etcd-1", "127.0.0.1:23791"),
    ("etcd-2", "127.0.0.1:23792"),
    ("etcd-3", "127.0.0.1:23793"),
];

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fleet part of a gateway's `/health` on its control API, if it answers.
fn fleet_health(g: &Gateway) -> Option<Value> {
    let r = client::request(
        "GET",
        g.control,
        "/health",
        &[],
        None,
        Duration::from_secs(2),
    )
    .ok()?;
    Some(r.json().ok()?.get("fleet")?.clone())
}

fn connected(g: &Gateway) -> Option<bool> {
    fleet_health(g)?["connected"].as_bool()
}

/// `circuit_breaker_fleet_connected` on a gateway's admin port.
fn connected_gauge(g: &Gateway) -> Option<f64> {
    client::get(g.admin, "/stats/prometheus")
        .ok()?
        .text()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("circuit_breaker_fleet_connected")?;
            let rest = rest.strip_prefix("{}").unwrap_or(rest);
            rest.trim().parse().ok()
        })
}

fn all_connected() -> bool {
    GATEWAYS.iter().all(|g| connected(g) == Some(true))
}

fn school_state(g: &Gateway) -> Option<String> {
    let v = client::get(g.control, "/circuit-breakers/school")
        .ok()?
        .json()
        .ok()?;
    Some(v["state"].as_str()?.to_string())
}

fn set_faults(faults: Value) {
    let r = client::post_json(SCHOOL, "/simulate/failure", &faults).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Trips the school breaker through `g` by its own rules, then heals the school service, so
/// a gateway that has not adopted the trip answers 200 (it cannot trip by itself).
fn trip_through(g: &Gateway) -> Instant {
    set_faults(json!({"is_healthy": false}));
    for _ in 0..5 {
        let r = client::get(g.gateway, "/schools").unwrap();
        assert_eq!(r.status, 503);
        assert!(!is_rejection(&r), "the upstream's own 503s come first");
    }
    let tripped = Instant::now();
    assert!(is_rejection(&client::get(g.gateway, "/schools").unwrap()));
    set_faults(json!({"is_healthy": true, "failure_rate": 0.0}));
    tripped
}

/// How long after `since` each of `others` refuses the school (the trip adopted).
fn adopted_by(others: &[&Gateway], since: Instant, within: Duration) -> Vec<Duration> {
    others
        .iter()
        .map(|g| {
            wait_for(
                &format!("{} to adopt the trip", g.name),
                within.saturating_sub(since.elapsed()),
                || {
                    let r = client::get(g.gateway, "/schools").ok()?;
                    is_rejection(&r).then(|| since.elapsed())
                },
            )
        })
        .collect()
}

/// Resets the school breaker through gateway-1's control API; the reset is a fleet decision,
/// so every gateway closes.
fn reset_everywhere(token: &str) {
    let auth = format!("Bearer {token}");
    let r = client::request(
        "POST",
        GATEWAYS[0].control,
        "/circuit-breakers/school/reset",
        &[("authorization", &auth)],
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for g in &GATEWAYS {
        wait_for(
            &format!("{} closed after the reset", g.name),
            Duration::from_secs(10),
            || (school_state(g).as_deref() == Some("closed")).then_some(()),
        );
    }
}

/// The member whose `/metrics` says it leads.
fn leader() -> Option<usize> {
    ETCD.iter().position(|(_, addr)| {
        client::get(addr, "/metrics")
            .map(|r| r.text().lines().any(|l| l == "etcd_server_is_leader 1"))
            .unwrap_or(false)
    })
}

fn member_healthy(i: usize) -> bool {
    client::get(ETCD[i].1, "/health")
        .map(|r| r.status == 200 && r.text().contains("\"true\""))
        .unwrap_or(false)
}

/// The etcd members a gateway's fleet streams (watch, keep-alive) are open on, from its
/// admin `/clusters` (`rq_active` per host) and the members' addresses on the store network.
fn members_in_use(g: &Gateway, ips: &[String]) -> Vec<usize> {
    let text = client::get(g.admin, "/clusters").unwrap().text();
    let mut used: Vec<usize> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("etcd::")?;
            let (host, count) = rest.split_once("::rq_active::")?;
            let ip = host.rsplit_once(':')?.0;
            (count.trim().parse::<u64>().ok()? > 0).then(|| ips.iter().position(|i| i == ip))?
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    used
}

fn member_ips(stack: &Compose) -> Vec<String> {
    ETCD.iter()
        .map(|(name, _)| {
            let id = stack.container(name);
            let out = Command::new("docker")
                .args([
                    "inspect",
                    "-f",
                    &format!("{{{{(index .NetworkSettings.Networks \"{STORE}\").IPAddress}}}}"),
                    &id,
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect()
}

/// What each gateway's link did after a fault at `since`: when its control API first said
/// disconnected, and when connected again, watched for `window` (or until every gateway
/// that went down is back and `settle` passed with no one down).
struct LinkTimes {
    down: Vec<Option<Duration>>,
    back: Vec<Option<Duration>>,
}

fn watch_links(since: Instant, window: Duration, settle: Duration) -> LinkTimes {
    let mut down = vec![None; 3];
    let mut back = vec![None; 3];
    let mut quiet_since = Instant::now();
    while since.elapsed() < window {
        let mut anyone_down = false;
        for (i, g) in GATEWAYS.iter().enumerate() {
            match connected(g) {
                Some(false) => {
                    anyone_down = true;
                    if down[i].is_none() {
                        down[i] = Some(since.elapsed());
                    }
                    back[i] = None;
                }
                Some(true) if down[i].is_some() && back[i].is_none() => {
                    back[i] = Some(since.elapsed());
                }
                _ => {}
            }
        }
        if anyone_down {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= settle {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    LinkTimes { down, back }
}

/// When the last gateway that went down was connected again.
fn converged(t: &LinkTimes) -> String {
    match t.back.iter().flatten().max() {
        Some(d) => format!("{d:.2?}"),
        None => "(none went down)".to_string(),
    }
}

fn describe(t: &LinkTimes) -> String {
    GATEWAYS
        .iter()
        .enumerate()
        .map(|(i, g)| match (t.down[i], t.back[i]) {
            (Some(d), Some(b)) => format!("{}: down at {d:.2?}, back at {b:.2?}", g.name),
            (Some(d), None) => format!("{}: down at {d:.2?}, not back", g.name),
            _ => format!("{}: stayed connected", g.name),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Users' requests through every gateway, one every 20 ms in turn, for as long as the test
/// runs (bounded: 15 minutes, 45,000 requests); each must be answered 200.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Traffic {
    fn start() -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let (mut sent, mut failed) = (0u64, Vec::new());
            for i in 0..45_000usize {
                if flag.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(900) {
                    break;
                }
                let g = &GATEWAYS[i % 3];
                sent += 1;
                match client::get(g.gateway, "/students") {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failed.push(format!(
                        "{} at {:.1?}: {} {}",
                        g.name,
                        started.elapsed(),
                        r.status,
                        r.text()
                    )),
                    Err(e) => failed.push(format!("{} at {:.1?}: {e}", g.name, started.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (sent, failed)
        });
        Traffic { stop, handle }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

#[test]
#[ignore = "needs a Docker engine and the images: run `make test-docker`"]
fn the_fleet_stack_survives_a_killed_leader_a_frozen_member_and_a_partition_losing_nothing() {
    let mut stack = Compose::up(PROJECT, FILE, &PORTS, show_breaker_lines);
    let token = stack.token().to_string();
    assert_eq!(stack.containers().len(), 9, "nine containers run");

    wait_for(
        "three gateways connected to etcd",
        Duration::from_secs(120),
        || all_connected().then_some(()),
    );
    for g in &GATEWAYS {
        let fleet = fleet_health(g).unwrap();
        assert_eq!(
            fleet["member"], g.name,
            "the node id is the member: {fleet}"
        );
        assert_eq!(connected_gauge(g), Some(1.0), "{}", g.name);
    }
    let mut ips = member_ips(&stack);
    let traffic = Traffic::start();

    // Healthy fleet: a trip through gateway-1 reaches the two others.
    let tripped = trip_through(&GATEWAYS[0]);
    let healthy = adopted_by(
        &[&GATEWAYS[1], &GATEWAYS[2]],
        tripped,
        Duration::from_secs(5),
    );
    eprintln!("healthy fleet: trip refused by the others after {healthy:.2?}");
    reset_everywhere(&token);

    // 1. The etcd leader killed.
    let lead = wait_for("an etcd leader", Duration::from_secs(10), leader);
    let on_leader: Vec<&str> = GATEWAYS
        .iter()
        .filter(|g| members_in_use(g, &ips).contains(&lead))
        .map(|g| g.name)
        .collect();
    let killed = Instant::now();
    docker(&["kill", &stack.container(ETCD[lead].0)]);
    // The links are watched from the kill on, the election beside them.
    let (new_leader, links) = std::thread::scope(|s| {
        let election = s.spawn(|| {
            wait_for("a new etcd leader", Duration::from_secs(15), || {
                leader()
                    .filter(|l| *l != lead)
                    .map(|l| (l, killed.elapsed()))
            })
        });
        let links = watch_links(killed, Duration::from_secs(30), Duration::from_secs(4));
        (election.join().unwrap(), links)
    });
    eprintln!(
        "leader {} killed (streams on it: {on_leader:?}); new leader {} after {:.2?}; {}",
        ETCD[lead].0,
        ETCD[new_leader.0].0,
        new_leader.1,
        describe(&links)
    );
    for (i, g) in GATEWAYS.iter().enumerate() {
        if on_leader.contains(&g.name) {
            let d = links.down[i].unwrap_or_else(|| panic!("{} never saw the kill", g.name));
            assert!(d < Duration::from_secs(3), "{}: {d:?}", g.name);
        }
    }
    wait_for(
        "every gateway connected again after the kill",
        Duration::from_secs(30),
        || all_connected().then_some(()),
    );
    let converged_at = killed.elapsed();
    let tripped = trip_through(&GATEWAYS[1]);
    let after_kill = adopted_by(
        &[&GATEWAYS[0], &GATEWAYS[2]],
        tripped,
        Duration::from_secs(5),
    );
    eprintln!(
        "after the kill: the last link back {} after it (all connected seen {converged_at:.2?}); a trip through gateway-2 refused by the others after {after_kill:.2?}",
        converged(&links)
    );
    reset_everywhere(&token);
    docker(&["start", &stack.container(ETCD[lead].0)]);
    wait_for("the killed member back", Duration::from_secs(30), || {
        member_healthy(lead).then_some(())
    });
    // Started again, it may have another address.
    ips = member_ips(&stack);

    // 2. A member frozen: the one gateway-1's streams are open on.
    let frozen_member = members_in_use(&GATEWAYS[0], &ips)
        .first()
        .copied()
        .unwrap_or(lead);
    let on_frozen: Vec<&str> = GATEWAYS
        .iter()
        .filter(|g| members_in_use(g, &ips).contains(&frozen_member))
        .map(|g| g.name)
        .collect();
    let was_leader = leader() == Some(frozen_member);
    let frozen_id = stack.container(ETCD[frozen_member].0);
    let frozen = Instant::now();
    docker(&["pause", &frozen_id]);
    let links = watch_links(frozen, Duration::from_secs(45), Duration::from_secs(4));
    eprintln!(
        "{} frozen (leader: {was_leader}; streams on it: {on_frozen:?}); {}",
        ETCD[frozen_member].0,
        describe(&links)
    );
    for (i, g) in GATEWAYS.iter().enumerate() {
        if on_frozen.contains(&g.name) {
            let d = links.down[i].unwrap_or_else(|| panic!("{} never saw the freeze", g.name));
            assert!(d < Duration::from_secs(4), "{}: {d:?}", g.name);
        }
    }
    wait_for(
        "every gateway connected again, to the members that answer",
        Duration::from_secs(40),
        || all_connected().then_some(()),
    );
    let converged_at = frozen.elapsed();
    let tripped = trip_through(&GATEWAYS[2]);
    let while_frozen = adopted_by(
        &[&GATEWAYS[0], &GATEWAYS[1]],
        tripped,
        Duration::from_secs(5),
    );
    eprintln!(
        "while frozen: the last link back {} after the freeze (all connected seen {converged_at:.2?}); a trip through gateway-3 refused by the others after {while_frozen:.2?}",
        converged(&links)
    );
    reset_everywhere(&token);
    docker(&["unpause", &frozen_id]);
    wait_for("the frozen member back", Duration::from_secs(30), || {
        member_healthy(frozen_member).then_some(())
    });

    // 3. gateway-3 cut off from etcd while it serves its users, then reconnected.
    let cut = &GATEWAYS[2];
    let cut_id = stack.container(cut.name);
    let parted = Instant::now();
    docker(&["network", "disconnect", STORE, &cut_id]);
    let detected = wait_for(
        "gateway-3 to see the partition",
        Duration::from_secs(10),
        || (connected(cut) == Some(false)).then(|| parted.elapsed()),
    );
    let health = fleet_health(cut).unwrap();
    eprintln!("partition of gateway-3 detected after {detected:.2?}: {health}");
    assert!(detected < Duration::from_secs(4), "{detected:?}");
    wait_for(
        "the disconnected gauge on gateway-3",
        Duration::from_secs(5),
        || (connected_gauge(cut) == Some(0.0)).then_some(()),
    );
    assert!(
        connected(&GATEWAYS[0]) == Some(true) && connected(&GATEWAYS[1]) == Some(true),
        "the others stay connected"
    );
    // The fleet moves on without gateway-3, which keeps deciding alone.
    let tripped = trip_through(&GATEWAYS[0]);
    let among_connected = adopted_by(&[&GATEWAYS[1]], tripped, Duration::from_secs(5));
    for _ in 0..5 {
        let r = client::get(cut.gateway, "/schools").unwrap();
        assert_eq!(
            r.status,
            200,
            "cut off, gateway-3 has not heard: {}",
            r.text()
        );
    }
    assert_eq!(school_state(cut).as_deref(), Some("closed"));
    let reconnected = Instant::now();
    docker(&["network", "connect", STORE, &cut_id]);
    let back = wait_for("gateway-3 connected again", Duration::from_secs(30), || {
        (connected(cut) == Some(true)).then(|| reconnected.elapsed())
    });
    let caught_up = adopted_by(&[cut], reconnected, Duration::from_secs(30));
    eprintln!(
        "partition: trip refused by gateway-2 after {among_connected:.2?}; gateway-3 reconnected {back:.2?} after the reconnect and refused the fleet's trip after {caught_up:.2?}"
    );
    reset_everywhere(&token);

    let (sent, failed) = traffic.finish();
    eprintln!(
        "users' requests through the three gateways during all of it: {sent}, failed: {}",
        failed.len()
    );
    assert!(sent > 100, "{sent}");
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "no request failed because of etcd"
    );
    stack.down();
}
