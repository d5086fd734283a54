//! `make bench-fleet`, third part: what `fleet.trip_quorum` costs in a service-wide outage,
//! three Envoys on one etcd member, for each quorum asked (1, 2, 3 by default). Two ways an
//! outage meets the fleet: one gateway at a time (the traffic that meets it first trips
//! its gateway, then the next gateway's traffic meets it) and evenly (all three at once).
//! Counted: the calls the upstream failed before every Envoy refused, and, one gateway at
//! a time, how long after the quorum's last vote (the completing gateway's fifth failure
//! answered) each Envoy that had not voted first refused.

use std::time::{Duration, Instant};

use ecb_bench::fleet::{start_etcd, wait_connected};
use ecb_bench::keep_alive::KeepAlive;
use school_system::stack::Envoy;

use super::{member_yaml, port, reset, summary, wait_admitting, Result, THRESHOLD, TOKEN, TRIP};

/// The upstream's answer on the failing path, and a refusal's.
const FAILED: u16 = 500;
const REFUSED: u16 = 503;
/// Pause between two requests of one client in the even outage: about 500 requests a
/// second per Envoy, so propagation has time to matter.
const EVEN_GAP: Duration = Duration::from_millis(2);

/// One quorum's figures over its trials.
struct Figures {
    one_at_a_time: Vec<f64>,
    evenly: Vec<f64>,
    after_quorum_ms: Vec<f64>,
}

pub fn run(quorums: &[u32], trials: usize, up: u16) -> Result<()> {
    println!(
        "\n== trip_quorum in a service-wide outage: 3 Envoys, failure_threshold {THRESHOLD}, {trials} trials each"
    );
    for &q in quorums {
        let f = quorum_of(q, trials, up)?;
        let line = |label: &str, v: &[f64]| {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            let at = |i: usize| s.get(i).copied().unwrap_or(f64::NAN);
            format!(
                "  {label:<40} min {:.0}, median {:.0}, max {:.0}",
                at(0),
                at(s.len() / 2),
                at(s.len().saturating_sub(1))
            )
        };
        println!("trip_quorum {q}:");
        println!(
            "{}",
            line("failed calls, one gateway at a time:", &f.one_at_a_time)
        );
        println!("{}", line("failed calls, all three at once:", &f.evenly));
        if f.after_quorum_ms.is_empty() {
            println!("  after the quorum: every Envoy voted, none left to tell");
        } else {
            println!(
                "  {}",
                summary("after the quorum, refused in", &f.after_quorum_ms)
            );
        }
    }
    Ok(())
}

fn quorum_of(q: u32, trials: usize, up: u16) -> Result<Figures> {
    let etcd = start_etcd()?;
    let mut envoys = Vec::new();
    for i in 0..3 {
        let yaml = member_yaml(i, port()?, port()?, up, etcd.members[0].client_port, q);
        envoys.push(Envoy::start_with_env(
            &yaml,
            1,
            &[("CIRCUIT_BREAKER_ADMIN_TOKEN", TOKEN)],
        )?);
    }
    for e in &envoys {
        wait_connected(&e.admin, Duration::from_secs(30))?;
        wait_admitting(e)?;
    }
    let mut f = Figures {
        one_at_a_time: Vec::new(),
        evenly: Vec::new(),
        after_quorum_ms: Vec::new(),
    };
    for t in 0..trials {
        let first = t % envoys.len();
        let order: Vec<&Envoy> = (0..envoys.len())
            .map(|k| &envoys[(first + k) % envoys.len()])
            .collect();
        let (failed, after) = one_at_a_time(&order, q as usize)?;
        f.one_at_a_time.push(failed as f64);
        f.after_quorum_ms.extend(after);
        settle(&envoys)?;
        f.evenly.push(evenly(&envoys)? as f64);
        settle(&envoys)?;
    }
    Ok(f)
}

/// Closes the breaker everywhere and waits until every Envoy admits, and the votes are
/// withdrawn (a withdrawn vote must not count in the next trial). A reset made while a
/// trip of the same step is still on its way loses to it (open beats closed), so the reset
/// is made again until every Envoy admits.
fn settle(envoys: &[Envoy]) -> Result<()> {
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        reset(&envoys[0])?;
        if envoys
            .iter()
            .all(|e| admits_within(e, Duration::from_secs(2)))
        {
            std::thread::sleep(Duration::from_millis(300));
            return Ok(());
        }
    }
    Err("the breaker did not close on every Envoy after five resets".into())
}

fn admits_within(e: &Envoy, within: Duration) -> bool {
    let Ok(mut conn) = KeepAlive::connect(&e.gateway) else {
        return false;
    };
    let start = Instant::now();
    while start.elapsed() < within {
        if conn.get_path(&format!("/{TRIP}/")) == Ok(200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Failing requests to `e` until it refuses; how many failed.
fn drive_until_refused(e: &Envoy, gap: Duration) -> Result<usize> {
    let mut conn = KeepAlive::connect(&e.gateway)?;
    let fail = format!("/{TRIP}/fail");
    let start = Instant::now();
    let mut failed = 0;
    while start.elapsed() < Duration::from_secs(10) {
        match conn.get_path(&fail)? {
            FAILED => failed += 1,
            REFUSED => return Ok(failed),
            other => return Err(format!("the failing path answered {other}")),
        }
        std::thread::sleep(gap);
    }
    Err(format!("{} never refused", e.gateway))
}

/// The outage meets the gateways one after the other: each is driven until it refuses.
/// The first `q` trip on their own; the others are then polled on a path that still
/// succeeds, to time the fleet's open reaching them (a failing path would trip them on
/// their own meanwhile). Returns the failed calls and those times.
fn one_at_a_time(order: &[&Envoy], q: usize) -> Result<(usize, Vec<f64>)> {
    let mut failed = 0;
    for e in &order[..q.min(order.len())] {
        failed += drive_until_refused(e, Duration::ZERO)?;
    }
    let quorum_at = Instant::now();
    let mut after = Vec::new();
    for e in &order[q.min(order.len())..] {
        let mut conn = KeepAlive::connect(&e.gateway)?;
        let ok = format!("/{TRIP}/");
        loop {
            match conn.get_path(&ok)? {
                REFUSED => break,
                _ if quorum_at.elapsed() > Duration::from_secs(5) => {
                    return Err(format!("{} did not refuse within 5 s", e.gateway))
                }
                _ => std::thread::sleep(Duration::from_micros(500)),
            }
        }
        after.push(quorum_at.elapsed().as_secs_f64() * 1_000.0);
    }
    Ok((failed, after))
}

/// The outage meets all three gateways at once, each with its own steady client.
fn evenly(envoys: &[Envoy]) -> Result<usize> {
    std::thread::scope(|s| {
        let clients: Vec<_> = envoys
            .iter()
            .map(|e| s.spawn(move || drive_until_refused(e, EVEN_GAP)))
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap_or_else(|_| Err("a client died".into())))
            .sum()
    })
}
