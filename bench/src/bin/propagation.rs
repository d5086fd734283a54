//! `make bench-propagation`: how long a trip made on one worker goes unseen by the others.
//! Workers decide from their own copies of the record and learn of another worker's
//! transition through a shared-queue notice (the timer is the backstop), so for a short
//! while after a trip another worker can still admit a request. This measures that while:
//! clients send back-to-back requests, each on its own connection (so they land on every
//! worker), to an upstream that fails everything; after each trip, the requests admitted
//! after the first refusal are the ones a stale copy let through, and the last of them
//! bounds how long the slowest worker took to adopt the trip.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use school_system::client;
use school_system::stack::{is_rejection, Stack};

type Result<T> = std::result::Result<T, String>;

const TOKEN: &str = "bench-propagation";
const PLUGIN: &str =
    r#"{"clusters": {"school": {"failure_threshold": 5, "open_duration": "30s"}}}"#;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-propagation: {e}");
        std::process::exit(1);
    }
}

/// One request as a client saw it: when it was sent, relative to the cycle's start, and
/// whether the breaker refused it.
#[derive(Clone, Copy)]
struct Sent {
    at: Duration,
    refused: bool,
}

/// What one trip looked like from the clients.
struct Cycle {
    /// Requests admitted (they reached the failing upstream) that were sent after the first
    /// refusal was sent.
    stale: usize,
    /// From the first refusal's send time to the last stale admission's.
    window: Duration,
}

fn run() -> Result<()> {
    let cycles = option("--cycles", 40);
    println!("bench-propagation: {cycles} trips per row; requests sent back to back, one connection each");
    println!(
        "{:>7} {:>7} | {:>12} {:>12} {:>12} | {:>10} {:>10}",
        "workers", "clients", "window p50", "window p99", "window max", "stale mean", "stale max"
    );
    for (workers, clients) in [(2, 2), (2, 16), (4, 4), (4, 16)] {
        let rows = measure(workers, clients, cycles)?;
        let mut windows: Vec<Duration> = rows.iter().map(|c| c.window).collect();
        windows.sort();
        let pick = |q: f64| windows[((windows.len() - 1) as f64 * q).round() as usize];
        let stale: Vec<usize> = rows.iter().map(|c| c.stale).collect();
        println!(
            "{workers:>7} {clients:>7} | {:>9.2} ms {:>9.2} ms {:>9.2} ms | {:>10.1} {:>10}",
            ms(pick(0.5)),
            ms(pick(0.99)),
            ms(pick(1.0)),
            stale.iter().sum::<usize>() as f64 / stale.len() as f64,
            stale.iter().max().copied().unwrap_or(0),
        );
    }
    Ok(())
}

fn measure(workers: u32, clients: usize, cycles: u64) -> Result<Vec<Cycle>> {
    let stack = Stack::start_with_env(
        Some(PLUGIN),
        workers,
        &[("CIRCUIT_BREAKER_ADMIN_TOKEN", TOKEN)],
        |y| y,
    )?;
    let control = stack.envoy.control.clone().ok_or("no control listener")?;
    stack
        .school
        .faults(&serde_json::json!({"is_healthy": false}))
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for _ in 0..cycles {
        reset(&control)?;
        std::thread::sleep(Duration::from_millis(30));
        let sent = traffic(&stack.envoy.gateway, clients, Duration::from_millis(300));
        if let Some(cycle) = judge(&sent) {
            rows.push(cycle);
        }
    }
    if rows.is_empty() {
        return Err("the breaker never tripped".into());
    }
    Ok(rows)
}

fn reset(control: &str) -> Result<()> {
    let auth = format!("Bearer {TOKEN}");
    let r = client::request(
        "POST",
        control,
        "/circuit-breakers/school/reset",
        &[("authorization", &auth)],
        None,
        Duration::from_secs(5),
    )
    .map_err(|e| e.to_string())?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!("reset answered {}", r.status))
    }
}

/// `clients` threads sending requests back to back for `length`.
fn traffic(gateway: &str, clients: usize, length: Duration) -> Vec<Sent> {
    let sent = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < length {
                    let at = start.elapsed();
                    if let Ok(r) = client::get(gateway, "/schools") {
                        mine.push(Sent {
                            at,
                            refused: is_rejection(&r),
                        });
                    }
                }
                if let Ok(mut all) = sent.lock() {
                    all.extend(mine);
                }
            });
        }
        std::thread::sleep(length);
        stop.store(true, Ordering::Relaxed);
    });
    sent.into_inner().unwrap_or_default()
}

fn judge(sent: &[Sent]) -> Option<Cycle> {
    let first_refusal = sent.iter().filter(|s| s.refused).map(|s| s.at).min()?;
    let stale: Vec<Duration> = sent
        .iter()
        .filter(|s| !s.refused && s.at > first_refusal)
        .map(|s| s.at)
        .collect();
    let last = stale.iter().max().copied().unwrap_or(first_refusal);
    Some(Cycle {
        stale: stale.len(),
        window: last - first_refusal,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn option(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
