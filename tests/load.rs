//! The breaker under load: with four workers and hundreds of connections its counts match
//! what the upstream actually saw, half-open never lets through more probes than allowed
//! over many trip and recovery cycles, and Envoy's memory stays flat over a soak. Short
//! forms run in `make test`; `make soak` runs the long ones (SOAK_SECS, CYCLES).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn view(envoy: &Envoy, name: &str) -> Value {
    api(
        envoy,
        "GET",
        &format!("/circuit-breakers/{name}"),
        None,
        None,
    )
    .json()
    .unwrap()
}

#[test]
fn counts_match_what_the_upstream_saw_under_load() {
    // No rule can trip (so no generation discards anything); a count window larger than
    // the load keeps every call, so its totals must equal the upstream's, exactly.
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"failure_threshold": 0, "failure_rate_threshold": 1,
            "minimum_requests": 1000000, "window_type": "count", "window_size": 1000}}}"#,
        ),
        4,
    );
    stack.school.set_faults(json!({"failure_rate": 0.1}));
    let (connections, per_connection) = (200, 4);
    let gateway = stack.envoy.gateway.clone();
    let failed_answers = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..connections {
            let (gateway, failed) = (gateway.clone(), failed_answers.clone());
            s.spawn(move || {
                for _ in 0..per_connection {
                    let r = client::get(&gateway, "/schools/1").unwrap();
                    assert!(!is_rejection(&r));
                    if r.status == 500 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let sent = (connections * per_connection) as u64;
    assert_eq!(stack.school.hits(), sent, "the upstream saw every request");
    // Successes batched per worker reach the shared window on each worker's timer.
    let v = wait_for(
        "every outcome in the window",
        Duration::from_secs(5),
        || {
            let v = view(&stack.envoy, "school");
            (v["counts"]["calls"] == sent).then_some(v)
        },
    );
    let failed = failed_answers.load(Ordering::Relaxed);
    assert_eq!(
        v["counts"]["failures"], failed,
        "failures in the shared window"
    );
    let e = &stack.envoy;
    e.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "school"), ("outcome", "failure")],
        failed,
    );
    e.wait_counter(
        "circuit_breaker_requests_total",
        &[("cluster", "school"), ("outcome", "success")],
        sent - failed,
    );
    let give_ups = e.counter(
        "circuit_breaker_store_give_ups_total",
        &[("cluster", "school")],
    );
    assert_eq!(give_ups, 0);
    println!("load | {connections} connections x {per_connection} on 4 workers | {sent} sent, {sent} seen by the upstream, {sent} in the window, {failed} failures in both | store give-ups {give_ups}");
}

/// One trip and recovery of the student breaker; returns how many requests of the burst
/// reached the upstream while it was half-open.
fn cycle(stack: &Stack, burst_size: usize) -> u64 {
    stack.student.fail_everything();
    let tripped = Instant::now();
    while !is_rejection(&stack.envoy.call("/students")) {
        assert!(tripped.elapsed() < Duration::from_secs(5), "never tripped");
    }
    stack.student.heal_slowly(400);
    // Wait for half-open: the timer moves it there with no traffic.
    wait_for("half-open", Duration::from_secs(5), || {
        (view(&stack.envoy, "student")["state"] == "half_open").then_some(())
    });
    let before = stack.student.hits();
    let answers = burst(&stack.envoy.gateway, "/students", burst_size);
    let reached = stack.student.hits() - before;
    assert_eq!(
        answers.iter().filter(|r| r.status == 200).count() as u64,
        reached
    );
    stack.student.heal();
    wait_for("closed again", Duration::from_secs(5), || {
        let closed = view(&stack.envoy, "student")["state"] == "closed";
        if !closed {
            let _ = stack.envoy.get("/students");
        }
        closed.then_some(())
    });
    reached
}

#[test]
fn half_open_never_lets_more_probes_through_over_many_cycles() {
    let cycles = env_number("CYCLES", 8);
    // A flat open time: with the default doubling, cycles back to back would soon wait
    // longer for half-open than each cycle allows, and this test is about the gate alone.
    let stack = stack(
        Some(
            r#"{"clusters": {"student": {"failure_threshold": 3, "open_duration": "300ms",
            "half_open_max_requests": 2, "success_threshold": 2, "backoff_multiplier": 1}}}"#,
        ),
        4,
    );
    let started = Instant::now();
    let mut excess = 0;
    let mut probes = 0;
    for done in 1..=cycles {
        let reached = cycle(&stack, 60);
        probes += reached;
        excess += reached.saturating_sub(2);
        if cycles > 20 && done % 20 == 0 {
            eprintln!("half-open | {done} of {cycles} cycles | {excess} beyond the limit so far");
        }
    }
    println!(
        "half-open | {cycles} trip/recover cycles, 60 concurrent requests each, 4 workers | {probes} probes, {excess} beyond the limit | {} s",
        started.elapsed().as_secs()
    );
    assert_eq!(excess, 0, "half-open let more than 2 probes through");
}

#[test]
fn memory_stays_flat_over_a_soak_of_mixed_traffic_with_trips() {
    let seconds = env_number("SOAK_SECS", 20);
    let stack = stack(
        Some(
            r#"{"clusters": {"school": {"failure_threshold": 5, "open_duration": "500ms"},
            "student": {"failure_threshold": 3, "open_duration": "400ms", "half_open_max_requests": 2}}}"#,
        ),
        2,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..16)
        .map(|i| {
            let (gateway, stop, sent) = (stack.envoy.gateway.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let paths = ["/schools", "/students", "/auth/validate", "/nowhere"];
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let path = format!("{}?n={n}", paths[n % paths.len()]);
                    let _ = client::get(&gateway, &path);
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += 16;
                }
            })
        })
        .collect();
    // The school service fails for 2 s in every 5, so the breaker keeps tripping and healing.
    let pid = stack.envoy.pid();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut warm = None;
    while started.elapsed() < Duration::from_secs(seconds) {
        let t = started.elapsed().as_secs();
        let failing = t % 5 < 2;
        let _ = stack.school.faults(&json!({"is_healthy": !failing}));
        let _ = stack
            .student
            .faults(&json!({"failure_rate": if failing { 0.5 } else { 0.0 }}));
        std::thread::sleep(Duration::from_millis(500));
        if warm.is_none() && started.elapsed() >= Duration::from_secs(seconds.min(60) / 4) {
            warm = Some(rss_kib(pid).unwrap_or(0));
        }
        samples.push(rss_kib(pid).unwrap_or(0));
        if seconds > 60 && samples.len() % 60 == 0 {
            eprintln!(
                "soak | {} of {seconds} s | {} requests | RSS {} KiB",
                started.elapsed().as_secs(),
                sent.load(Ordering::Relaxed),
                samples.last().copied().unwrap_or(0)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let after = rss_kib(pid).unwrap_or(0);
    let warm = warm.unwrap_or(after);
    let trips = stack.envoy.counter("circuit_breaker_trips_total", &[]);
    let peak = samples.iter().copied().max().unwrap_or(after);
    println!(
        "soak | {seconds} s, {} requests, {trips} trips | RSS after warm-up {} KiB, at the end {} KiB, peak {} KiB, growth {} KiB",
        sent.load(Ordering::Relaxed),
        warm,
        after,
        peak,
        after as i64 - warm as i64
    );
    assert!(trips >= 2, "the soak must include trips ({trips})");
    assert!(
        after <= warm + 8 * 1024,
        "Envoy grew by {} KiB after warm-up",
        after as i64 - warm as i64
    );
}
