//! The etcd launcher the fleet tests stand on, proven on real members: a three-member
//! cluster replicates, survives its leader's death, refuses TLS clients without the right
//! certificate, enforces authentication, and shows a frozen member and a lost quorum the
//! way the fleet will meet them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use school_system::etcd::{Etcd, Options};
use school_system::stack::poll;

fn three() -> Etcd {
    Etcd::start(&Options {
        members: 3,
        ..Options::default()
    })
    .unwrap()
}

#[test]
fn a_put_through_one_member_is_readable_from_every_member() {
    let etcd = three();
    etcd.ctl_at(0, &["put", "/ecb/test/k", "v1"]).unwrap();
    for i in 0..3 {
        let seen = poll(Duration::from_secs(5), || {
            (etcd.get_at(i, "/ecb/test/k").ok()? == "v1").then_some(())
        });
        assert!(seen.is_some(), "member {i} never held the value");
    }
    assert!(etcd.leader().is_some());
}

#[test]
fn killing_the_leader_leaves_a_working_cluster() {
    let mut etcd = three();
    etcd.ctl(&["put", "/ecb/test/before", "1"]).unwrap();
    let started = Instant::now();
    let old = etcd.kill_leader().unwrap();
    let new = poll(Duration::from_secs(15), || {
        etcd.leader().filter(|l| *l != old)
    })
    .expect("no new leader");
    let elected = started.elapsed();
    let survivor = (0..3).find(|i| *i != old).unwrap();
    etcd.ctl_at(survivor, &["put", "/ecb/test/after", "2"])
        .unwrap();
    for i in (0..3).filter(|i| *i != old) {
        let both = poll(Duration::from_secs(5), || {
            let a = etcd.get_at(i, "/ecb/test/before").ok()?;
            let b = etcd.get_at(i, "/ecb/test/after").ok()?;
            (a == "1" && b == "2").then_some(())
        });
        assert!(both.is_some(), "member {i} lost a write");
    }
    eprintln!("leader m{old} killed; m{new} elected after {elected:?}");
    // The killed member comes back on its data directory and catches up.
    etcd.restart(old).unwrap();
    etcd.wait_healthy(old, Duration::from_secs(20)).unwrap();
    let caught_up = poll(Duration::from_secs(10), || {
        (etcd.get_at(old, "/ecb/test/after").ok()? == "2").then_some(())
    });
    assert!(caught_up.is_some(), "the restarted member never caught up");
}

#[test]
fn without_quorum_writes_fail_and_with_it_back_they_succeed() {
    let mut etcd = three();
    let survivor = etcd.break_quorum().unwrap();
    let refused = etcd.ctl_at(survivor, &["put", "/ecb/test/q", "x"]);
    assert!(refused.is_err(), "a write without quorum was accepted");
    let back = (0..3).find(|i| *i != survivor).unwrap();
    etcd.restart(back).unwrap();
    let accepted = poll(Duration::from_secs(20), || {
        etcd.ctl_at(survivor, &["put", "/ecb/test/q", "y"]).ok()
    });
    assert!(accepted.is_some(), "quorum restored but writes still fail");
}

#[test]
fn a_frozen_member_answers_nothing_while_the_others_serve() {
    let mut etcd = three();
    let follower = (0..3).find(|i| Some(*i) != etcd.leader()).unwrap();
    etcd.freeze(follower).unwrap();
    let started = Instant::now();
    let frozen = etcd.ctl_at(follower, &["get", "/ecb/test/x", "--consistency=s"]);
    assert!(frozen.is_err(), "a frozen member answered: {frozen:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it failed fast instead of going silent: {:?}",
        started.elapsed()
    );
    let other = (0..3).find(|i| *i != follower).unwrap();
    etcd.ctl_at(other, &["put", "/ecb/test/x", "1"]).unwrap();
    etcd.thaw(follower).unwrap();
    let caught_up = poll(Duration::from_secs(10), || {
        (etcd.get_at(follower, "/ecb/test/x").ok()? == "1").then_some(())
    });
    assert!(caught_up.is_some(), "the thawed member never caught up");
}

#[test]
fn tls_with_client_certificates_refuses_strangers() {
    let etcd = Etcd::start(&Options {
        members: 1,
        tls: true,
        ..Options::default()
    })
    .unwrap();
    assert!(etcd.url(0).starts_with("https://"));
    etcd.ctl(&["put", "/ecb/test/tls", "ok"]).unwrap();
    assert_eq!(etcd.get_at(0, "/ecb/test/tls").unwrap(), "ok");
    let certs = etcd.certs.clone().unwrap();
    let base = |cmd: &mut std::process::Command| {
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.url(0)))
            .args(["--dial-timeout=2s", "--command-timeout=2s"])
            .arg(format!("--cacert={}", certs.ca.display()));
    };
    let mut no_cert = std::process::Command::new("etcdctl");
    base(&mut no_cert);
    let out = no_cert.args(["get", "/ecb/test/tls"]).output().unwrap();
    assert!(
        !out.status.success(),
        "a client without a certificate was served"
    );
    let mut stranger = std::process::Command::new("etcdctl");
    base(&mut stranger);
    let out = stranger
        .arg(format!("--cert={}", certs.stranger_cert.display()))
        .arg(format!("--key={}", certs.stranger_key.display()))
        .args(["get", "/ecb/test/tls"])
        .output()
        .unwrap();
    eprintln!(
        "untrusted client certificate: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(
        !out.status.success(),
        "a client certificate from an untrusted CA was accepted"
    );
}

#[test]
fn authentication_refuses_a_wrong_password_and_fences_a_user_to_its_prefix() {
    let etcd = Etcd::start(&Options {
        members: 1,
        root_password: Some("root-secret".into()),
        ..Options::default()
    })
    .unwrap();
    etcd.add_user("fleet", "fleet-secret", "/ecb/fleet/")
        .unwrap();
    let as_user = |user: &str, args: &[&str]| {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.url(0)))
            .args(["--dial-timeout=2s", "--command-timeout=2s"])
            .arg(format!("--user={user}"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = as_user("fleet:fleet-secret", &["put", "/ecb/fleet/b/school", "r"]);
    assert!(ok, "{err}");
    let (ok, err) = as_user("fleet:wrong", &["put", "/ecb/fleet/b/school", "r"]);
    assert!(!ok && err.contains("authentication failed"), "{err}");
    let (ok, err) = as_user("fleet:fleet-secret", &["put", "/elsewhere", "r"]);
    assert!(!ok && err.contains("permission denied"), "{err}");
    let anonymous = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url(0)))
        .args([
            "--dial-timeout=2s",
            "--command-timeout=2s",
            "get",
            "/ecb/fleet/b/school",
        ])
        .output()
        .unwrap();
    assert!(!anonymous.status.success(), "an anonymous read was served");
}
