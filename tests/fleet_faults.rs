//! Fleet mode under the faults issue 10 names, with real Envoys and real etcd members on
//! loopback: etcd behind TLS with client certificates (and Envoys without the right one),
//! a prober Envoy killed mid-probe, trips and resets made at the same moment on several
//! Envoys, and a three-member etcd losing its leader, a follower, or every member. Each
//! fault prints the times it measured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use envoy_circuit_breaker::core::fleet::record::FleetRecord;
use school_system::etcd::{Etcd, Options};
use serde_json::Value;

const SCHOOL_KEY: &str = "/ecb/fleet-test/b/school";

fn token() -> [(&'static str, &'static str); 1] {
    [("CIRCUIT_BREAKER_ADMIN_TOKEN", TOKEN)]
}

#[test]
fn over_tls_with_client_certificates_trips_propagate_and_a_wrong_certificate_stays_local() {
    let etcd = Etcd::start(&Options {
        members: 1,
        tls: true,
        ..Options::default()
    })
    .unwrap();
    let certs = etcd.certs.clone().unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let ca = path(&certs.ca);
    let plain = etcd_cluster(etcd_port(&etcd, 0));
    let trusted = with_upstream_tls(
        &plain,
        &ca,
        Some((&path(&certs.client_cert), &path(&certs.client_key))),
    );
    let f = fleet_on(etcd, &plugin_json("30s"), 2, &trusted);
    trip_through(&f.stack.envoy, &f.stack);
    f.others[0].wait_log("school circuit breaker OPENED by gateway-1", 1);
    let hits = f.stack.school.hits();
    for _ in 0..5 {
        assert!(is_rejection(&f.others[0].call("/schools")));
    }
    assert_eq!(
        f.stack.school.hits(),
        hits,
        "refused without an upstream call"
    );

    // An Envoy with a certificate from a CA etcd does not trust, and one with none.
    let stranger = with_upstream_tls(
        &plain,
        &ca,
        Some((&path(&certs.stranger_cert), &path(&certs.stranger_key))),
    );
    let anonymous = with_upstream_tls(&plain, &ca, None);
    for (node, cluster) in [("gateway-3", &stranger), ("gateway-4", &anonymous)] {
        let e = another_edited(&f.stack.envoy, node, &token(), |y| {
            assert!(y.contains(&trusted), "the etcd cluster moved");
            y.replace(&trusted, cluster)
        });
        let line = e.wait_log("fleet: etcd unreachable", 1).remove(0);
        eprintln!("{node}: {line}");
        assert!(
            line.contains("gRPC status 14")
                && line.contains("check the etcd cluster's address and TLS"),
            "{line}"
        );
        // The filter sees only gRPC status 14; Envoy's own stats say it was the handshake.
        let ssl = client::get(&e.admin, "/stats?filter=^cluster\\.etcd\\.ssl\\.")
            .unwrap()
            .text();
        let ssl: Vec<&str> = ssl.lines().filter(|l| !l.ends_with(": 0")).collect();
        eprintln!("{node}: Envoy's etcd TLS stats {ssl:?}");
        assert!(
            ssl.iter()
                .any(|l| l.starts_with("cluster.etcd.ssl.connection_error")),
            "{ssl:?}"
        );
        let health = api(&e, "GET", "/health", None, None).json().unwrap();
        assert_eq!(health["fleet"]["connected"], false, "{health}");
        assert!(
            health["fleet"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("status 14")),
            "{health}"
        );
        // Alone, it neither learnt the fleet's trip nor stops protecting: the school is
        // still down, so its own five failures trip it locally.
        let before = f.stack.school.hits();
        for _ in 0..5 {
            let r = e.call("/schools");
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(!is_rejection(&r), "the fleet's trip did not reach {node}");
        }
        assert!(is_rejection(&e.call("/schools")), "{node} protects itself");
        assert_eq!(f.stack.school.hits(), before + 5);
    }
}

/// etcd's copy of the school record and its `mod_revision`.
fn stored(etcd: &Etcd) -> Option<(FleetRecord, i64)> {
    let out = etcd.ctl(&["get", SCHOOL_KEY, "-w", "json"]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    let kv = &v["kvs"][0];
    let bytes = base64(kv["value"].as_str()?)?;
    Some((
        FleetRecord::decode(&bytes).ok()?,
        kv["mod_revision"].as_i64()?,
    ))
}

/// Standard base64 (etcdctl's JSON output), `None` on anything else.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Some(out)
}

#[test]
fn a_prober_killed_mid_probe_frees_its_slot_when_its_lease_expires() {
    let json = plugin_json_with(
        "1s",
        r#", "half_open_max_requests": 1, "success_threshold": 1"#,
    );
    let mut f = fleet_with(&json, 3);
    trip_through(&f.stack.envoy, &f.stack);
    state_everywhere(&f, "open");
    // Healthy but slow, so the probe through gateway-2 is in flight when it dies.
    f.stack.school.heal_slowly(4000);
    state_everywhere(&f, "half_open");
    let before = f.stack.school.hits();
    let prober = f.others[0].gateway.clone();
    let probe = std::thread::spawn(move || {
        client::request(
            "GET",
            &prober,
            "/schools",
            &[],
            None,
            Duration::from_secs(10),
        )
    });
    wait_for("the probe upstream", Duration::from_secs(5), || {
        (f.stack.school.hits() > before).then_some(())
    });
    let slots = || keys_under(&f.etcd, &format!("{PREFIX}/p/")).len();
    assert_eq!(slots(), 1, "the probe holds the fleet's one slot");
    for e in [&f.stack.envoy, &f.others[1]] {
        let r = e.call("/schools");
        assert!(is_rejection(&r), "{} {}", r.status, r.text());
    }
    assert_eq!(f.stack.school.hits(), before + 1, "one probe for the fleet");
    f.stack.school.heal();
    f.others[0].kill();
    let killed = Instant::now();
    let _ = probe.join();
    // Ask through gateway-1 until one request is let through as the new probe.
    let mut refused = 0;
    let next_probe = wait_for("another Envoy's probe", Duration::from_secs(15), || {
        let r = f.stack.envoy.call("/schools");
        if r.status == 200 {
            return Some(killed.elapsed());
        }
        assert!(is_rejection(&r), "{} {}", r.status, r.text());
        refused += 1;
        std::thread::sleep(Duration::from_millis(50));
        None
    });
    eprintln!(
        "prober killed: next probe admitted {next_probe:?} later ({refused} requests refused meanwhile; lease_ttl 2s)"
    );
    // The lease was last kept alive up to a second before the kill and lives 2 s after
    // that (etcd expires leases at about 0.5 s granularity).
    assert!(
        next_probe >= Duration::from_millis(800),
        "the slot was free before the lease could expire: {next_probe:?}"
    );
    assert!(next_probe < Duration::from_secs(6), "{next_probe:?}");
    for e in [&f.stack.envoy, &f.others[1]] {
        wait_for("closed", Duration::from_secs(5), || {
            (school_view(e)?["state"] == "closed").then_some(())
        });
    }
    assert_eq!(slots(), 0, "no slot left behind");
    let members = keys_under(&f.etcd, &format!("{PREFIX}/m/"));
    assert!(
        !members.iter().any(|m| m.ends_with("/gateway-2")),
        "{members:?}"
    );
}

/// Every Envoy's fleet generation of the school breaker, read over and over while a race
/// runs, so a step backwards would be seen.
struct Watcher {
    stop: AtomicBool,
    seen: Mutex<Vec<Vec<u64>>>,
}

impl Watcher {
    /// Reads until told to stop, then once more, so the last value seen is the final one.
    fn run(&self, envoys: &[&Envoy]) {
        let started = Instant::now();
        loop {
            let last =
                self.stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60);
            for (i, e) in envoys.iter().enumerate() {
                let g = school_view(e).and_then(|v| v["fleet"]["generation"].as_u64());
                if let Some(g) = g {
                    let mut seen = self.seen.lock().unwrap();
                    if seen[i].last() != Some(&g) {
                        seen[i].push(g);
                    }
                }
            }
            if last {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// etcdctl watching the school key from the first revision: every value it stored, in
/// order, however late the watch is set up.
struct KeyHistory {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl KeyHistory {
    fn start(etcd: &Etcd) -> KeyHistory {
        let mut child = etcd
            .ctl_command(&etcd.endpoints())
            .args(["watch", SCHOOL_KEY, "--rev", "1", "-w", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        KeyHistory { child, lines }
    }

    /// (generation, state) of each stored value so far.
    fn records(&self) -> Vec<(u32, String)> {
        self.lines
            .try_iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .flat_map(|v| v["Events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| {
                let r = FleetRecord::decode(&base64(e["kv"]["value"].as_str()?)?).ok()?;
                Some((r.generation, format!("{:?}", r.state)))
            })
            .collect()
    }
}

impl Drop for KeyHistory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `act` on every Envoy at the same moment, each from its own thread.
fn at_once<T: Send>(envoys: &[&Envoy], act: impl Fn(&Envoy) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(envoys.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = envoys
            .iter()
            .map(|e| {
                let (barrier, act) = (&barrier, &act);
                s.spawn(move || {
                    barrier.wait();
                    act(e)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Waits until every Envoy shows `state` and the same fleet record as etcd; returns its
/// generation.
fn one_record(f: &Fleet, state: &str) -> u32 {
    wait_for(
        &format!("one {state} record on every Envoy and in etcd"),
        Duration::from_secs(10),
        || {
            let (record, revision) = stored(&f.etcd)?;
            for e in f.envoys() {
                let v = school_view(e)?;
                let same = v["state"] == state
                    && v["fleet"]["generation"] == record.generation
                    && v["fleet"]["revision"] == revision
                    && v["fleet"]["unpublished"] == false;
                if !same {
                    return None;
                }
            }
            Some(record.generation)
        },
    )
}

#[test]
fn trips_and_resets_made_at_the_same_moment_end_in_one_record() {
    let f = fleet("30s", 3);
    let history = KeyHistory::start(&f.etcd);
    let envoys = f.envoys();
    let watcher = Watcher {
        stop: AtomicBool::new(false),
        seen: Mutex::new(vec![Vec::new(); envoys.len()]),
    };
    let mut last_generation = 0;
    let mut raced = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| watcher.run(&envoys));
        for round in 0..3 {
            // Each Envoy one failure short of its own trip, then the fifth at once.
            f.stack.school.fail_everything();
            for e in &envoys {
                for _ in 0..4 {
                    assert_eq!(e.call("/schools").status, 503);
                }
            }
            let fifth = at_once(&envoys, |e| e.call("/schools"));
            let tripped = fifth.iter().filter(|r| !is_rejection(r)).count();
            let hits = f.stack.school.hits();
            let opened = one_record(&f, "open");
            for e in &envoys {
                assert!(is_rejection(&e.call("/schools")), "no lost trip");
            }
            assert_eq!(
                f.stack.school.hits(),
                hits,
                "open everywhere, no upstream call"
            );
            assert!(opened > last_generation, "{opened} after {last_generation}");
            last_generation = opened;

            // Three operators reset the breaker at the same moment on three Envoys.
            f.stack.school.heal();
            let answers = at_once(&envoys, |e| {
                api(
                    e,
                    "POST",
                    "/circuit-breakers/school/reset",
                    Some(TOKEN),
                    None,
                )
                .status
            });
            assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
            let closed = one_record(&f, "closed");
            assert!(closed > last_generation, "{closed} after {last_generation}");
            last_generation = closed;
            for e in &envoys {
                assert_eq!(e.call("/schools").status, 200);
            }
            eprintln!(
                "round {round}: {tripped} Envoys tripped at once -> open at generation {opened}; 3 resets at once -> closed at generation {closed}"
            );
            raced.push(tripped);
        }
        watcher.stop.store(true, Ordering::Relaxed);
    });
    assert!(
        raced.iter().any(|n| *n >= 2),
        "never two trips at the same moment: {raced:?}"
    );
    for (i, seen) in watcher.seen.lock().unwrap().iter().enumerate() {
        eprintln!("gateway-{}: fleet generations seen {seen:?}", i + 1);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last().copied(), Some(u64::from(last_generation)));
    }
    let stored: Vec<(u32, String)> = wait_for("etcdctl's watch", Duration::from_secs(5), || {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            all.extend(history.records());
            std::thread::sleep(Duration::from_millis(50));
        }
        (all.last().map(|r| r.0) == Some(last_generation)).then_some(all)
    });
    eprintln!("stored in etcd, in order: {stored:?}");
    assert_eq!(stored.first().map(|r| r.0), Some(1), "{stored:?}");
    assert!(
        stored.windows(2).all(|w| w[0].0 < w[1].0),
        "every stored value a newer generation: {stored:?}"
    );
}

/// Three etcd members behind the `etcd` cluster and three Envoys.
fn three_member_fleet() -> Fleet {
    let etcd = Etcd::start(&Options {
        members: 3,
        ..Options::default()
    })
    .unwrap();
    let ports: Vec<u16> = (0..3).map(|i| etcd_port(&etcd, i)).collect();
    let cluster = etcd_cluster_of_members(&ports);
    assert!(cluster.contains("grpc_health_check"), "{cluster}");
    fleet_on(etcd, &plugin_json("30s"), 3, &cluster)
}

/// How long from `since` until gateway-2 and gateway-3 refuse gateway-1's trip.
fn trip_reaches_the_others(f: &Fleet, since: Instant, within: Duration) -> Vec<Duration> {
    trip_through(&f.stack.envoy, &f.stack);
    f.others
        .iter()
        .map(|e| {
            wait_for("the trip on another Envoy", within, || {
                (e.log_lines("OPENED by gateway-1").len() == 1).then(|| since.elapsed())
            })
        })
        .collect()
}

/// Each Envoy's reasons for losing its link, from its log, since it started.
fn outages(f: &Fleet) -> Vec<Vec<String>> {
    f.envoys()
        .iter()
        .map(|e| {
            e.log_lines("fleet: etcd unreachable (")
                .iter()
                .filter_map(|l| {
                    let why = l.split("unreachable (").nth(1)?.split("; every").next()?;
                    let why = why.split("): check").next()?;
                    Some(why.strip_suffix(')').unwrap_or(why).to_string())
                })
                .collect()
        })
        .collect()
}

fn one_member_killed(leader: bool) {
    let mut f = three_member_fleet();
    let at_start = f.etcd.leader().expect("a leader");
    let victim = if leader {
        at_start
    } else {
        (0..3).find(|i| *i != at_start).unwrap()
    };
    f.etcd.kill(victim);
    let killed = Instant::now();
    let reached = trip_reaches_the_others(&f, killed, Duration::from_secs(15));
    for e in f.envoys() {
        wait_connected(e);
    }
    let all_connected = killed.elapsed();
    let what = if leader { "leader" } else { "follower" };
    eprintln!(
        "etcd {what} m{victim} killed: trip through gateway-1 refused by gateway-2/3 after {reached:?}; every link up by {all_connected:?}; outages per Envoy: {:?}",
        outages(&f)
    );
    // A new election (1 to 3 s), then the keep-alives through the followers answer again.
    for d in &reached {
        assert!(*d < Duration::from_secs(10), "{d:?}");
    }
    let hits = f.stack.school.hits();
    for e in &f.others {
        assert!(is_rejection(&e.call("/schools")));
    }
    assert_eq!(f.stack.school.hits(), hits);
}

#[test]
fn with_three_members_the_leader_killed_leaves_the_fleet_working() {
    one_member_killed(true);
}

#[test]
fn with_three_members_a_follower_killed_leaves_the_fleet_working() {
    one_member_killed(false);
}

#[test]
fn with_all_three_members_killed_each_envoy_protects_itself_and_the_fleet_converges_on_their_return(
) {
    let mut f = three_member_fleet();
    for i in 0..3 {
        f.etcd.kill(i);
    }
    let killed = Instant::now();
    let detected = all_disconnected(&f, killed, Duration::from_secs(5));
    eprintln!("all members killed: detected after {detected:?}");
    for d in &detected {
        assert!(*d < Duration::from_secs(3), "{d:?}");
    }
    for e in f.envoys() {
        assert_eq!(e.call("/schools").status, 200, "no request fails");
    }
    // Alone, gateway-2 trips; gateway-1 still decides by itself.
    trip_through(&f.others[0], &f.stack);
    f.stack.school.heal();
    assert_eq!(f.stack.envoy.call("/schools").status, 200);
    for i in 0..3 {
        f.etcd.restart(i).unwrap();
    }
    let restarted = Instant::now();
    let linked = all_connected(&f, restarted, Duration::from_secs(20));
    let converged: Vec<Duration> = [&f.stack.envoy, &f.others[1]]
        .iter()
        .map(|e| {
            wait_for("gateway-2's trip", Duration::from_secs(10), || {
                is_rejection(&e.call("/schools")).then(|| restarted.elapsed())
            })
        })
        .collect();
    eprintln!(
        "all members restarted: links back after {linked:?}, gateway-2's trip refused by gateway-1/3 after {converged:?}"
    );
    f.stack
        .envoy
        .wait_log("school circuit breaker OPENED by gateway-2", 1);
}

/// When member `i` no longer calls itself the leader, from `since`: it answers its own
/// status locally even without quorum.
fn stepped_down(etcd: &Etcd, i: usize, since: Instant) -> Option<Duration> {
    poll(Duration::from_secs(4), || {
        let out = etcd
            .ctl_at(
                i,
                &[
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                    "--command-timeout=300ms",
                ],
            )
            .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        let status = &v[0]["Status"];
        let me = status["header"]["member_id"].as_u64()?;
        (status["leader"].as_u64() != Some(me)).then(|| since.elapsed())
    })
}

#[test]
fn a_lost_quorum_with_the_leader_left_alone_is_detected_and_the_link_returns_with_it() {
    let etcd = Etcd::start(&Options {
        members: 3,
        ..Options::default()
    })
    .unwrap();
    // Both Envoys reach the leader only: the member that keeps answering longest.
    let leader = etcd.leader().expect("a leader");
    let cluster = etcd_cluster(etcd_port(&etcd, leader));
    let mut f = fleet_on(etcd, &plugin_json("30s"), 2, &cluster);
    // Both followers at the same moment, as a partition would cut them off.
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let pids: Vec<String> = followers
        .iter()
        .map(|i| f.etcd.members[*i].pid().unwrap().to_string())
        .collect();
    let lost = Instant::now();
    let killed = std::process::Command::new("kill")
        .arg("-KILL")
        .args(&pids)
        .status()
        .unwrap();
    assert!(killed.success());
    let stepped = stepped_down(&f.etcd, leader, lost);
    let detected = all_disconnected(&f, lost, Duration::from_secs(6));
    let health = api(&f.stack.envoy, "GET", "/health", None, None)
        .json()
        .unwrap();
    eprintln!(
        "quorum loss (leader m{leader} left alone): it stepped down after {stepped:?}; detected after {detected:?}: {}",
        health["fleet"]["reason"]
    );
    // The leader renews leases by itself until it steps down (etcd's check-quorum, 1 to
    // 2 election timeouts of 1 s), but stops answering linearizable reads at once: the
    // quorum probe's 2 s deadline runs from the loss, within the issue's 3 s.
    for d in &detected {
        assert!(*d < Duration::from_secs(3), "{d:?}");
    }
    for e in f.envoys() {
        assert_eq!(e.call("/schools").status, 200, "no request fails");
    }
    for i in &followers {
        f.etcd.kill(*i);
    }
    f.etcd.restart(followers[0]).unwrap();
    let back = Instant::now();
    let linked = all_connected(&f, back, Duration::from_secs(20));
    let reached = trip_reaches_the_others(&f, back, Duration::from_secs(10));
    eprintln!(
        "one follower back: links up after {linked:?}, a trip reached gateway-2 after {reached:?}"
    );
}

#[test]
fn with_three_members_the_leader_frozen_leaves_the_fleet_working() {
    let mut f = three_member_fleet();
    let leader = f.etcd.leader().expect("a leader");
    f.etcd.freeze(leader).unwrap();
    let frozen = Instant::now();
    let reached = trip_reaches_the_others(&f, frozen, Duration::from_secs(15));
    for e in f.envoys() {
        wait_for("the link back", Duration::from_secs(15), || {
            connected(e).then_some(())
        });
    }
    let all_connected = frozen.elapsed();
    eprintln!(
        "etcd leader m{leader} frozen: trip through gateway-1 refused by gateway-2/3 after {reached:?}; every link up by {all_connected:?}; outages per Envoy: {:?}",
        outages(&f)
    );
    for d in &reached {
        assert!(*d < Duration::from_secs(10), "{d:?}");
    }
    f.etcd.thaw(leader).unwrap();
}

#[test]
fn with_three_members_a_lost_quorum_is_detected_and_one_member_back_brings_the_fleet_back() {
    let mut f = three_member_fleet();
    let leader = f.etcd.leader();
    let survivor = f.etcd.break_quorum().unwrap();
    let lost = Instant::now();
    let detected = all_disconnected(&f, lost, Duration::from_secs(6));
    let role = if leader == Some(survivor) {
        "leader"
    } else {
        "follower"
    };
    eprintln!("quorum lost (m{survivor}, the {role}, left): detected after {detected:?}");
    for d in &detected {
        assert!(*d < Duration::from_secs(3), "{d:?}");
    }
    for e in f.envoys() {
        assert_eq!(e.call("/schools").status, 200, "no request fails");
    }
    let back = (0..3).find(|i| *i != survivor).unwrap();
    f.etcd.restart(back).unwrap();
    let restarted = Instant::now();
    let linked = all_connected(&f, restarted, Duration::from_secs(20));
    let reached = trip_reaches_the_others(&f, restarted, Duration::from_secs(10));
    eprintln!(
        "one member back: links up after {linked:?}, a trip through gateway-1 refused by gateway-2/3 after {reached:?}; outages per Envoy: {:?}",
        outages(&f)
    );
}
