//! `make bench-idle`: what the breaker costs while nothing happens. Envoys with 2 workers
//! and one cluster per breaker (1, 30 and 300, and 300 of which one keeps busy), without
//! the filter, with the empty proxy-wasm filter and with the breaker, each sent one
//! request per cluster and then left alone; their CPU time over the same window, measured
//! side by side so the machine's own noise falls on all three alike. `--seconds N` sets
//! the window (20 s); `--breaker <path>` measures another build of the filter.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ecb_bench::envoy::{self, Listener};
use ecb_bench::keep_alive::KeepAlive;
use ecb_bench::machine::{cpu_us, port, port_of};
use school_system::stack::{root, Envoy};

type Result<T> = std::result::Result<T, String>;

/// The goal: 300 idle breakers add at most this much of a core to Envoy's own idle cost.
const GOAL_PERCENT: f64 = 0.3;
/// Requests a second to the busy cluster, in the scenario with one busy breaker.
const BUSY_RPS: u64 = 50;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-idle failed: {e}");
        std::process::exit(1);
    }
}

/// One scenario: how many breakers, and whether the first is kept busy.
struct Scenario {
    breakers: usize,
    busy: bool,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        breakers: 1,
        busy: false,
    },
    Scenario {
        breakers: 30,
        busy: false,
    },
    Scenario {
        breakers: 300,
        busy: false,
    },
    Scenario {
        breakers: 300,
        busy: true,
    },
];

/// What sits in front of the upstream.
#[derive(Clone, Copy)]
enum Filter {
    None,
    Empty,
    Breaker,
}

const FILTERS: [(Filter, &str); 3] = [
    (Filter::None, "no filter"),
    (Filter::Empty, "empty filter"),
    (Filter::Breaker, "breaker"),
];

fn run() -> Result<()> {
    let seconds = school_system::arg("--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20u64);
    let wasm = root().join("target/wasm32-wasip1/release");
    // `--breaker <path>`: another build of the filter, say an older one to compare with.
    let breaker = school_system::arg("--breaker")
        .map_or_else(|| wasm.join("envoy_circuit_breaker.wasm"), Into::into);
    let empty = wasm.join("empty_filter.wasm");
    for path in [&breaker, &empty] {
        if !path.exists() {
            return Err(format!(
                "{} is missing: run `make bench-idle`",
                path.display()
            ));
        }
    }
    let upstream = Envoy::start(&envoy::upstream_yaml(port()?, r#"prefix: "/fail""#), 1)?;
    let up = port_of(&upstream.gateway);
    println!("make bench-idle: Envoy with 2 workers, one request per cluster, then {seconds} s");
    println!("measured with the busy load running (busy: {BUSY_RPS} requests/s to one cluster)\n");
    println!(
        "| breakers | {} | {} | {} | breaker − none |",
        FILTERS[0].1, FILTERS[1].1, FILTERS[2].1
    );
    println!("|---|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    for s in &SCENARIOS {
        let percents = scenario(s, up, &breaker, &empty, seconds)?;
        let above = percents[2] - percents[0];
        let label = if s.busy {
            format!("{} (1 busy)", s.breakers)
        } else {
            s.breakers.to_string()
        };
        println!(
            "| {label} | {:.2} % | {:.2} % | {:.2} % | {above:+.2} % |",
            percents[0], percents[1], percents[2]
        );
        if s.breakers == 300 && !s.busy {
            verdicts.push(above);
        }
    }
    println!("\n(% of one core over the window; each row's three Envoys measured at once)");
    for above in verdicts {
        let met = if above <= GOAL_PERCENT {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "target: 300 idle breakers at most {GOAL_PERCENT} % of a core above no filter: \
             {above:+.2} % ({met})"
        );
    }
    Ok(())
}

/// The three Envoys of one scenario, measured over the same window: % of a core each.
fn scenario(s: &Scenario, up: u16, breaker: &Path, empty: &Path, seconds: u64) -> Result<[f64; 3]> {
    let mut envoys = Vec::new();
    for (filter, _) in FILTERS {
        let yaml = proxy_yaml(port()?, up, s.breakers, filter, breaker, empty);
        envoys.push(Envoy::start(&yaml, 2)?);
    }
    for envoy in &envoys {
        for i in 0..s.breakers {
            let mut client = KeepAlive::connect(&envoy.gateway)?;
            let status = client.get_path(&format!("/c{i}/"))?;
            if status != 200 {
                return Err(format!("cluster c{i} answered {status}"));
            }
        }
    }
    // Batched counts, stats and first-request work settle before the window opens.
    std::thread::sleep(Duration::from_secs(2));
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<JoinHandle<()>> = if s.busy {
        envoys
            .iter()
            .map(|e| keep_busy(e.gateway.clone(), stop.clone()))
            .collect()
    } else {
        Vec::new()
    };
    let before: Vec<f64> = envoys
        .iter()
        .map(|e| cpu_us(e.pid()).unwrap_or(f64::NAN))
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let after: Vec<f64> = envoys
        .iter()
        .map(|e| cpu_us(e.pid()).unwrap_or(f64::NAN))
        .collect();
    let window_us = started.elapsed().as_secs_f64() * 1e6;
    stop.store(true, Ordering::Relaxed);
    for handle in busy {
        let _ = handle.join();
    }
    let percent = |i: usize| (after[i] - before[i]) / window_us * 100.0;
    Ok([percent(0), percent(1), percent(2)])
}

/// A client sending [`BUSY_RPS`] requests a second to the first cluster until `stop`.
fn keep_busy(gateway: String, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut client) = KeepAlive::connect(&gateway) else {
            return;
        };
        let gap = Duration::from_micros(1_000_000 / BUSY_RPS);
        while !stop.load(Ordering::Relaxed) {
            if client.get_path("/c0/").is_err() {
                return;
            }
            std::thread::sleep(gap);
        }
    })
}

/// A gateway on `port` with `n` clusters `c0`.. (all to the upstream on `up`), reached by
/// path prefix `/c<i>/`, behind `filter`.
fn proxy_yaml(
    port: u16,
    up: u16,
    n: usize,
    filter: Filter,
    breaker: &Path,
    empty: &Path,
) -> String {
    let routes: String = (0..n)
        .map(|i| envoy::route(&format!(r#"prefix: "/c{i}/""#), &format!("c{i}")))
        .collect();
    let clusters: String = (0..n)
        .map(|i| envoy::cluster(&format!("c{i}"), up))
        .collect();
    let filters = match filter {
        Filter::None => String::new(),
        Filter::Empty => envoy::wasm_filter("empty", &empty.display().to_string(), "", &[]),
        Filter::Breaker => envoy::wasm_filter(
            "circuit_breaker",
            &breaker.display().to_string(),
            r#"{"default": {"failure_threshold": 5}}"#,
            &[],
        ),
    };
    let listener = Listener {
        name: "gateway",
        port,
        stat_prefix: "idle",
        routes,
        filters,
    };
    envoy::bootstrap(None, &[listener], &clusters)
}
