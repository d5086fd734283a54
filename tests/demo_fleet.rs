//! `make demo-fleet` end to end: the demo binary starts three Envoys and a three-member etcd,
//! plays fleet mode's story and checks each claim itself; this runs it and checks its exit
//! status and the lines that say each claim held. A run with the school breaker kept local
//! must fail, naming the claim, so the demo's checks are seen to bite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use school_system::stack::{root, scratch_dir};

/// Runs `demo-fleet` with `args` in its own process group, killed whole after `limit`;
/// its exit code (None when killed) and everything it printed.
fn demo(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let dir = scratch_dir().unwrap();
    let out_path = dir.join("demo.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(root().join("target/release/demo-fleet"))
        .args(args)
        .current_dir(root())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .process_group(0)
        .spawn()
        .expect("target/release/demo-fleet (make test builds it)");
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            // The demo's etcd members and Envoys are in its process group.
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap();
    eprintln!(
        "demo-fleet {args:?} ran {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
    (code, text)
}

/// Removes the Envoy log directories the demo keeps for its users (it prints their paths).
fn remove_kept_logs(text: &str) {
    for path in text.lines().filter_map(|l| l.split(" log ").nth(1)) {
        let log = std::path::Path::new(path.trim());
        if log.ends_with("envoy.log") && log.starts_with(std::env::temp_dir()) {
            if let Some(dir) = log.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

#[test]
fn the_fleet_demo_plays_every_step_and_every_claim_holds() {
    let (code, text) = demo(&[], Duration::from_secs(180));
    assert_eq!(code, Some(0), "demo-fleet failed:\n{text}");
    for line in [
        "[ok] 3 of 3 answered 200; the school service counted 3 calls",
        "[ok] 5 failures from the school service, then gateway-1's breaker is OPEN",
        "gateway-2 log: [CIRCUIT_BREAKER] school circuit breaker OPENED by gateway-1: 5 consecutive failures",
        "gateway-3 log: [CIRCUIT_BREAKER] school circuit breaker OPENED by gateway-1: 5 consecutive failures",
        "[ok] gateway-2 and gateway-3 adopted gateway-1's trip within 1 s",
        "[ok] 6 of 6 refused by gateways 2 and 3; the school service saw 0 calls",
        "(the leader, client port",
        "requests refused as before the kill; the school service saw 0 calls",
        "[ok] every gateway's link to etcd is up, through the two members left",
        "[ok] exactly 2 probes for the whole fleet: 2 answers from upstream, 2 calls counted by the school service, 28 refused",
        "[ok] closed on every gateway; 3 of 3 answered 200 by the school service",
        "[ok] every gateway saw etcd gone within 3 s",
        "[ok] gateway-2 tripped alone after 5 failures and refuses",
        "[ok] gateway-1 and gateway-3 do not know (closed) and answer 200 from the school service",
        "[ok] every gateway holds the same record: gateway-2's decision, same state and generation",
        "school circuit breaker OPENED by gateway-2",
        "[ok] gateway-1 and gateway-3 now refuse gateway-2's trip too (2 of 2); the school service saw 0 calls",
        "== Propagation delays",
        "gateway-1 -> gateway-2",
        "demo-fleet: every claim above held",
    ] {
        assert!(text.contains(line), "no line with {line:?}:\n{text}");
    }
    // gateway-2 and gateway-3 adopted gateway-1's trip while etcd was up, so their
    // propagation histograms hold it (gateway-1 may have made every later decision itself).
    let live = text
        .split("steps 1-6, etcd up:")
        .nth(1)
        .and_then(|t| t.split("the whole run").next())
        .unwrap_or_default();
    for gateway in ["gateway-2", "gateway-3"] {
        let line = live
            .lines()
            .find(|l| l.trim_start().starts_with(gateway))
            .unwrap_or_default();
        assert!(
            line.contains("adoption(s)  P50"),
            "{gateway}: {line:?}\n{text}"
        );
    }
    remove_kept_logs(&text);
}

#[test]
fn the_fleet_demo_fails_naming_the_claim_when_the_school_breaker_is_not_shared() {
    let json = std::fs::read_to_string(root().join("envoy/demo-fleet-plugin.json")).unwrap();
    let local = json.replacen(
        r#""success_threshold": 1 },"#,
        r#""success_threshold": 1, "fleet": false },"#,
        1,
    );
    assert_ne!(local, json, "the demo's plugin JSON changed shape");
    let dir = scratch_dir().unwrap();
    let path = dir.join("local-school.json");
    std::fs::write(&path, local).unwrap();
    let (code, text) = demo(
        &["--plugin", path.to_str().unwrap()],
        Duration::from_secs(120),
    );
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("demo-fleet FAILED: this claim did not hold: gateway-2 and gateway-3 adopted gateway-1's trip within 1 s"),
        "{text}"
    );
    assert!(!text.contains("every claim above held"), "{text}");
    remove_kept_logs(&text);
}
