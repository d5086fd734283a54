//! `make bench-fleet`, second part: fleet mode at the scale of one machine. For each fleet
//! size (3 and 20 Envoy processes by default, `--concurrency 1`, one etcd member, all on
//! loopback): how long a trip on one Envoy takes to be refused by every other one (clients
//! polling each Envoy from the moment the tripping request's answer returns, and each
//! Envoy's own `circuit_breaker_fleet_propagation_ms`, from the publisher's clock); what
//! the fleet puts on etcd (etcd's own gRPC counters) and what each Envoy holds in memory,
//! idle and during a storm of trips and recoveries across 20 clusters, all with
//! `trip_quorum` 1 (any one Envoy's trip opens the breaker everywhere); then what each
//! `trip_quorum` costs in a service-wide outage (`quorum.rs`). What fleet mode adds to a
//! request is the first part (`bench --only closed,fleet`).

#[path = "fleet/quorum.rs"]
mod quorum;

use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use ecb_bench::envoy;
use ecb_bench::fleet::{
    by_label, cumulative_quantiles, envoy_memory, etcd_addr, etcd_cluster, etcd_metrics,
    fleet_block_with, start_etcd, unlabelled, wait_connected, FleetStats,
};
use ecb_bench::keep_alive::KeepAlive;
use ecb_bench::machine::{load_average, port, port_of};
use school_system::client;
use school_system::stack::{rss_kib, Envoy};

type Result<T> = std::result::Result<T, String>;

const TOKEN: &str = "bench-fleet";
/// The breaker the propagation trips are made on; it stays open (30 s) until reset.
const TRIP: &str = "p";
/// Consecutive failures that trip every breaker here.
const THRESHOLD: u32 = 5;
/// Clusters tripping and recovering over and over in the storm (open 1 s, one probe).
const STORM_CLUSTERS: usize = 20;
/// How long a poller waits for its Envoy to refuse before the trip counts as missed there.
const GIVE_UP: Duration = Duration::from_secs(2);

fn main() {
    let started = Instant::now();
    if let Err(e) = run() {
        eprintln!("bench-fleet: {e}");
        std::process::exit(1);
    }
    println!(
        "\nbench-fleet took {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

struct Options {
    sizes: Vec<usize>,
    trips: usize,
    idle: Duration,
    storm: Duration,
    /// Pause between two polls of one Envoy: twenty pollers polling back to back would
    /// take both CPUs of the machine this was built on from the Envoys they measure.
    poll_gap: Duration,
    /// The `trip_quorum`s measured in a service-wide outage, and trials of each.
    quorums: Vec<u32>,
    quorum_trials: usize,
}

const USAGE: &str = "usage: fleet [--sizes 3,20|none] [--trips 100] [--idle 20] [--storm 30] [--poll-gap-us 500] [--quorums 1,2,3|none] [--quorum-trials 20]";

/// A comma-separated list of numbers, or `none`.
fn list<T: std::str::FromStr>(name: &str, default: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    let text = school_system::arg(name).unwrap_or_else(|| default.into());
    if text == "none" {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|s| s.trim().parse::<T>().map_err(|e| format!("{name}: {e}")))
        .collect()
}

fn options() -> Result<Options> {
    let known = [
        "--sizes",
        "--trips",
        "--idle",
        "--storm",
        "--poll-gap-us",
        "--quorums",
        "--quorum-trials",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match pair {
            [name, _] if known.contains(&name.as_str()) => {}
            _ => return Err(format!("unexpected {:?}\n{USAGE}", pair.join(" "))),
        }
    }
    let num = |name: &str, default: u64| -> Result<u64> {
        match school_system::arg(name) {
            Some(v) => v.parse().map_err(|e| format!("{name} {v:?}: {e}\n{USAGE}")),
            None => Ok(default),
        }
    };
    let sizes: Vec<usize> = list("--sizes", "3,20")?;
    let quorums: Vec<u32> = list("--quorums", "1,2,3")?;
    if quorums.iter().any(|&q| !(1..=3).contains(&q)) {
        return Err("--quorums: each from 1 to 3 (three Envoys)".into());
    }
    if sizes.iter().any(|&n| !(2..=40).contains(&n)) {
        return Err("--sizes: each fleet holds 2 to 40 Envoys".into());
    }
    Ok(Options {
        sizes,
        trips: num("--trips", 100)? as usize,
        idle: Duration::from_secs(num("--idle", 20)?),
        storm: Duration::from_secs(num("--storm", 30)?),
        poll_gap: Duration::from_micros(num("--poll-gap-us", 500)?),
        quorums,
        quorum_trials: num("--quorum-trials", 20)? as usize,
    })
}

fn run() -> Result<()> {
    let opts = options()?;
    println!(
        "bench-fleet: fleets of {:?} Envoys (--concurrency 1) on one etcd member, {} trips each, \
         {} s idle, {} s storm over {STORM_CLUSTERS} clusters; {} CPUs, load average {}",
        opts.sizes,
        opts.trips,
        opts.idle.as_secs(),
        opts.storm.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let upstream = Envoy::start(&upstream_yaml(port()?), 1)?;
    let up = port_of(&upstream.gateway);
    for &n in &opts.sizes {
        fleet_of(n, up, &opts)?;
    }
    if !opts.quorums.is_empty() {
        quorum::run(&opts.quorums, opts.quorum_trials, up)?;
    }
    Ok(())
}

/// One fleet of `n`: start it, then idle, propagation, storm, and idle again.
fn fleet_of(n: usize, up: u16, opts: &Options) -> Result<()> {
    println!("\n== fleet of {n} Envoys");
    let etcd = start_etcd()?;
    let etcd_at = etcd_addr(&etcd);
    let etcd_pid = etcd.members[0].pid().unwrap_or(0);
    let started = Instant::now();
    let mut envoys = Vec::new();
    for i in 0..n {
        let yaml = member_yaml(i, port()?, port()?, up, etcd.members[0].client_port, 1);
        envoys.push(Envoy::start_with_env(
            &yaml,
            1,
            &[("CIRCUIT_BREAKER_ADMIN_TOKEN", TOKEN)],
        )?);
    }
    for e in &envoys {
        wait_connected(&e.admin, Duration::from_secs(30))?;
    }
    println!(
        "started and linked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A breaker with the default settings exists in an Envoy only from that Envoy's first
    // request to its cluster, and a fleet record for a breaker an Envoy does not have yet is
    // ignored ("no such breaker here"): one request per cluster and Envoy first, so that
    // every Envoy adopts every storm cluster's transitions.
    for e in &envoys {
        let mut conn = KeepAlive::connect(&e.gateway)?;
        for c in 0..STORM_CLUSTERS {
            let status = conn.get_path(&format!("/c{c}/"))?;
            if status != 200 {
                return Err(format!("the first request to c{c} answered {status}"));
            }
        }
    }
    std::thread::sleep(Duration::from_secs(3));

    let before = Memory::read(&envoys, etcd_pid);
    let idle = EtcdLoad::over(&etcd_at, opts.idle, || Ok(()))?;
    let idle_mem = Memory::read(&envoys, etcd_pid);
    idle.print("idle", n);
    before.print("memory at start");
    idle_mem.print(&format!("memory after {} s idle", opts.idle.as_secs()));

    let mut seen = Vec::new();
    let trips = EtcdLoad::over(&etcd_at, Duration::ZERO, || {
        seen = propagation(&envoys, opts.trips, opts.poll_gap)?;
        Ok(())
    })?;
    report_propagation(&envoys, &seen, n, opts.poll_gap)?;
    trips.print(&format!("the {} trips and resets", seen.len()), n);
    println!(
        "  = {:.2} Txn and {:.1} watch messages sent per transition (a trip or a reset)",
        trips.count("Txn") / (2 * seen.len()).max(1) as f64,
        trips.watch_sent / (2 * seen.len()).max(1) as f64
    );

    // One trip and nothing else: the open time (1 s) runs out and the breaker goes
    // half-open on the timers alone; how many calls that costs etcd, for N Envoys.
    let one = EtcdLoad::over(&etcd_at, Duration::from_secs(3), || {
        let mut conn = KeepAlive::connect(&envoys[0].gateway)?;
        for _ in 0..THRESHOLD {
            conn.get_path("/c0/fail")?;
        }
        Ok(())
    })?;
    one.print("one trip, then half-open by the timers, no traffic", n);
    println!(
        "  = {:.0} Txn and {:.0} Raft proposals for 2 transitions (a trip, and half-open) with {n} Envoys",
        one.count("Txn"),
        one.proposals
    );
    // Recovered through a probe, so the storm starts from closed.
    wait_admitting_at(&envoys[1], "/c0/")?;

    let published_before: f64 = fleet_sum(&envoys, |s| s.published)?;
    let calls_before = etcd_calls(&envoys)?;
    let mut samples = Vec::new();
    let storm = EtcdLoad::over(&etcd_at, Duration::ZERO, || {
        let rounds;
        (rounds, samples) = trip_storm(&envoys, opts.storm, etcd_pid)?;
        println!(
            "storm: {rounds} rounds (a trip on one Envoy, refused then recovered through a probe \
             on another) over {STORM_CLUSTERS} clusters in {} s",
            opts.storm.as_secs()
        );
        Ok(())
    })?;
    let published = fleet_sum(&envoys, |s| s.published)? - published_before;
    let mut calls: Vec<f64> = etcd_calls(&envoys)?
        .iter()
        .zip(&calls_before)
        .map(|(a, b)| a - b)
        .collect();
    calls.sort_by(f64::total_cmp);
    println!(
        "  etcd calls (streams count once) made by each Envoy during the storm: min {:.0}, median {:.0}, max {:.0}",
        calls.first().copied().unwrap_or(f64::NAN),
        calls.get(calls.len() / 2).copied().unwrap_or(f64::NAN),
        calls.last().copied().unwrap_or(f64::NAN)
    );
    storm.print(&format!("storm ({published:.0} transitions published)"), n);
    println!(
        "  = {:.2} Txn and {:.1} watch messages sent per published transition",
        storm.count("Txn") / published.max(1.0),
        storm.watch_sent / published.max(1.0)
    );
    let storm_mem = Memory::read(&envoys, etcd_pid);
    let mut peak = Memory::default();
    for (_, m) in &samples {
        peak.keep_highest(m);
    }
    peak.print("memory, highest sample during the storm");
    let series: Vec<String> = samples
        .iter()
        .map(|(t, m)| format!("{:.2} ({t:.0} s)", mean(&m.allocated)))
        .collect();
    println!(
        "Envoy allocated mean MiB during the storm: {}",
        series.join(", ")
    );
    storm_mem.print("memory at the storm's end");
    // Breakers the storm left open still go half-open on their own (and stay there with no
    // traffic), so etcd's load settles over a few seconds: two spells show it.
    for (from, to) in [(0, 10), (10, 30)] {
        let after = EtcdLoad::over(&etcd_at, Duration::from_secs(to - from), || Ok(()))?;
        after.print(&format!("idle again, {from} to {to} s after the storm"), n);
    }
    Memory::read(&envoys, etcd_pid).print("memory 30 s after the storm");
    let failures = fleet_sum(&envoys, |s| s.publish_failures)?;
    let drops: usize = envoys
        .iter()
        .map(|e| e.log_lines("fleet: etcd unreachable").len())
        .sum();
    println!("publish failures {failures:.0}, disconnections logged {drops}, over the fleet");
    Ok(())
}

/// Each Envoy's requests to its `etcd` cluster so far (a unary call is one, a stream one).
fn etcd_calls(envoys: &[Envoy]) -> Result<Vec<f64>> {
    envoys
        .iter()
        .map(|e| {
            let text = client::get(
                &e.admin,
                "/stats?filter=^cluster[.]etcd[.]upstream_rq_total$",
            )
            .map_err(|e| e.to_string())?
            .text();
            text.lines()
                .find_map(|l| l.strip_prefix("cluster.etcd.upstream_rq_total:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no etcd request count in {text:?}"))
        })
        .collect()
}

fn fleet_sum(envoys: &[Envoy], f: fn(&FleetStats) -> f64) -> Result<f64> {
    let mut sum = 0.0;
    for e in envoys {
        sum += f(&FleetStats::read(&e.admin)?);
    }
    Ok(sum)
}

/// One trip after another on the propagation breaker, each made on the next Envoy in turn:
/// for each, how long after the tripping answer each other Envoy was first seen refusing
/// (`None`: not within [`GIVE_UP`]).
fn propagation(
    envoys: &[Envoy],
    trips: usize,
    gap: Duration,
) -> Result<Vec<Vec<Option<Duration>>>> {
    let mut all = Vec::new();
    for t in 0..trips {
        let tripper = t % envoys.len();
        all.push(trip_once(envoys, tripper, gap)?);
        reset(&envoys[tripper])?;
        for e in envoys {
            wait_admitting(e)?;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Ok(all)
}

fn trip_once(envoys: &[Envoy], tripper: usize, gap: Duration) -> Result<Vec<Option<Duration>>> {
    let fail = format!("/{TRIP}/fail");
    let ok = format!("/{TRIP}/");
    let mut conn = KeepAlive::connect(&envoys[tripper].gateway)?;
    let others: Vec<&Envoy> = envoys
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != tripper)
        .map(|(_, e)| e)
        .collect();
    let barrier = Barrier::new(others.len() + 1);
    let t0 = Mutex::new(None::<Instant>);
    let seen = std::thread::scope(|s| {
        let pollers: Vec<_> = others
            .iter()
            .map(|e| {
                let (barrier, t0, ok) = (&barrier, &t0, &ok);
                s.spawn(move || -> Result<Option<Duration>> {
                    let poll = KeepAlive::connect(&e.gateway);
                    barrier.wait();
                    let mut poll = poll?;
                    let start = t0.lock().map_err(|e| e.to_string())?.ok_or("no trip")?;
                    while start.elapsed() < GIVE_UP {
                        if poll.get_path(ok)? == 503 {
                            return Ok(Some(start.elapsed()));
                        }
                        std::thread::sleep(gap);
                    }
                    Ok(None)
                })
            })
            .collect();
        let tripped = (|| -> Result<()> {
            for k in 1..=THRESHOLD {
                let status = conn.get_path(&fail)?;
                if status != 500 {
                    return Err(format!("failure {k} of the trip answered {status}"));
                }
            }
            Ok(())
        })();
        if let Ok(mut at) = t0.lock() {
            *at = Some(Instant::now());
        }
        barrier.wait();
        let seen: Vec<Result<Option<Duration>>> = pollers
            .into_iter()
            .map(|p| p.join().unwrap_or_else(|_| Err("a poller died".into())))
            .collect();
        tripped.map(|()| seen)
    })?;
    if conn.get_path(&ok)? != 503 {
        return Err(format!(
            "Envoy {tripper} did not trip after {THRESHOLD} failures"
        ));
    }
    seen.into_iter().collect()
}

fn reset(e: &Envoy) -> Result<()> {
    let control = e.control.as_deref().ok_or("no control listener")?;
    let r = client::request(
        "POST",
        control,
        &format!("/circuit-breakers/{TRIP}/reset"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        None,
        Duration::from_secs(5),
    )
    .map_err(|e| e.to_string())?;
    match r.status {
        200 => Ok(()),
        s => Err(format!("reset answered {s}: {}", r.text())),
    }
}

/// Waits until `e` admits a request to the propagation breaker again (the reset adopted).
fn wait_admitting(e: &Envoy) -> Result<()> {
    wait_admitting_at(e, &format!("/{TRIP}/"))
}

fn wait_admitting_at(e: &Envoy, path: &str) -> Result<()> {
    let mut conn = KeepAlive::connect(&e.gateway)?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if conn.get_path(path)? == 200 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!("{} still refused {path} after 5 s", e.gateway))
}

fn report_propagation(
    envoys: &[Envoy],
    seen: &[Vec<Option<Duration>>],
    n: usize,
    gap: Duration,
) -> Result<()> {
    let ms = |d: &Duration| d.as_secs_f64() * 1_000.0;
    let each: Vec<f64> = seen.iter().flatten().flatten().map(ms).collect();
    let missed = seen.iter().flatten().filter(|d| d.is_none()).count();
    // The whole fleet refuses once its slowest Envoy does.
    let whole: Vec<f64> = seen
        .iter()
        .filter(|t| t.iter().all(Option::is_some))
        .map(|t| t.iter().flatten().map(ms).fold(0.0, f64::max))
        .collect();
    println!(
        "propagation, {} trips, from the tripping answer to the first refusal a client saw, \
         polling each other Envoy every {} µs plus the request's own time:",
        seen.len(),
        gap.as_micros()
    );
    println!("  {}", summary("each other Envoy", &each));
    println!("  {}", summary("all of the others (slowest)", &whole));
    if missed > 0 {
        println!(
            "  {missed} refusal(s) not seen within {} s",
            GIVE_UP.as_secs()
        );
    }
    // Envoy merges histograms on its stats flush (every 5 s).
    std::thread::sleep(Duration::from_millis(5_500));
    let (mut count, mut sum) = (0.0, 0.0);
    let (mut p50s, mut p99s, mut maxes) = (Vec::new(), Vec::new(), Vec::new());
    for e in envoys {
        let s = FleetStats::read(&e.admin)?;
        count += s.propagation_count;
        sum += s.propagation_sum;
        for (q, v) in cumulative_quantiles(&e.admin, "circuit_breaker_fleet_propagation_ms")? {
            let into = match q {
                x if (x - 0.5).abs() < 1e-9 => &mut p50s,
                x if (x - 0.99).abs() < 1e-9 => &mut p99s,
                x if (x - 1.0).abs() < 1e-9 => &mut maxes,
                _ => continue,
            };
            if v.is_finite() {
                into.push(v);
            }
        }
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.1} to {hi:.1}")
    };
    println!(
        "  circuit_breaker_fleet_propagation_ms (publisher's clock to adoption, trips and resets), \
         over the {n} Envoys: {count:.0} adoptions, mean {:.2} ms; per Envoy p50 {} ms, p99 {} ms, max {} ms",
        sum / count.max(1.0),
        range(&p50s),
        range(&p99s),
        range(&maxes)
    );
    Ok(())
}

/// `label: p50 …, p99 …, max … ms (count)`, nearest rank.
fn summary(label: &str, values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return format!("{label}: no sample");
    }
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "{label:<28} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} samples)",
        at(0.5),
        at(0.99),
        at(1.0),
        v.len()
    )
}

/// `STORM_CLUSTERS` clients, one per cluster, each tripping its cluster on one Envoy
/// (failures until a refusal), then asking another Envoy every 100 ms until a request
/// passes (the half-open probe, which closes the breaker fleet-wide), then again on the
/// next Envoy, until `length` is over. Memory is sampled every 2 s (seconds into the storm,
/// memory).
fn trip_storm(
    envoys: &[Envoy],
    length: Duration,
    etcd_pid: u32,
) -> Result<(usize, Vec<(f64, Memory)>)> {
    let start = Instant::now();
    let end = start + length;
    std::thread::scope(|s| {
        let drivers: Vec<_> = (0..STORM_CLUSTERS)
            .map(|c| s.spawn(move || drive(envoys, c, end)))
            .collect();
        let mut samples = Vec::new();
        while Instant::now() + Duration::from_secs(2) <= end {
            std::thread::sleep(Duration::from_secs(2));
            samples.push((
                start.elapsed().as_secs_f64(),
                Memory::read(envoys, etcd_pid),
            ));
        }
        let mut rounds = 0;
        for d in drivers {
            rounds += d
                .join()
                .unwrap_or_else(|_| Err("a storm driver died".into()))?;
        }
        Ok((rounds, samples))
    })
}

fn drive(envoys: &[Envoy], cluster: usize, end: Instant) -> Result<usize> {
    let fail = format!("/c{cluster}/fail");
    let ok = format!("/c{cluster}/");
    let status = |e: &Envoy, path: &str| client::get(&e.gateway, path).map(|r| r.status);
    let mut rounds = 0;
    let mut at = cluster;
    while Instant::now() < end {
        // Trip on one Envoy: failures until it refuses (an Envoy that has not yet adopted
        // the last recovery refuses from the start; it is asked again shortly).
        let e = &envoys[at % envoys.len()];
        let mut failed = 0;
        let mut tripped = false;
        for _ in 0..4 * THRESHOLD {
            match status(e, &fail).map_err(|e| e.to_string())? {
                500 => failed += 1,
                503 if failed > 0 => {
                    tripped = true;
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if !tripped {
            continue;
        }
        // Recover through another Envoy: once it has refused (it adopted the trip), the
        // first request it lets through is the probe.
        at += 1;
        let probe = &envoys[at % envoys.len()];
        let mut refused = false;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            match status(probe, &ok).map_err(|e| e.to_string())? {
                503 => refused = true,
                200 if refused => {
                    rounds += 1;
                    break;
                }
                _ => {}
            }
        }
    }
    Ok(rounds)
}

/// Memory of every Envoy (RSS and what Envoy's allocator holds) and of etcd, in MiB.
#[derive(Default, Clone)]
struct Memory {
    rss: Vec<f64>,
    allocated: Vec<f64>,
    etcd_rss: f64,
}

impl Memory {
    fn read(envoys: &[Envoy], etcd_pid: u32) -> Memory {
        let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
        Memory {
            rss: envoys.iter().map(|e| mib(rss_kib(e.pid()))).collect(),
            allocated: envoys
                .iter()
                .map(|e| envoy_memory(&e.admin).map_or(f64::NAN, |(a, _)| a as f64 / 1_048_576.0))
                .collect(),
            etcd_rss: mib(rss_kib(etcd_pid)),
        }
    }

    fn keep_highest(&mut self, other: &Memory) {
        let max = |a: &mut Vec<f64>, b: &[f64]| {
            if a.len() != b.len() {
                *a = b.to_vec();
            }
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.max(*y);
            }
        };
        max(&mut self.rss, &other.rss);
        max(&mut self.allocated, &other.allocated);
        self.etcd_rss = self.etcd_rss.max(other.etcd_rss);
    }

    fn print(&self, what: &str) {
        let stats = |v: &[f64]| (mean(v), v.iter().copied().fold(f64::NAN, f64::max));
        let (rss, rss_max) = stats(&self.rss);
        let (alloc, alloc_max) = stats(&self.allocated);
        println!(
            "{what:<40} Envoy RSS mean {rss:>6.1} MiB (max {rss_max:>6.1}), allocated mean {alloc:>6.2} MiB \
             (max {alloc_max:>6.2}); etcd RSS {:>6.1} MiB",
            self.etcd_rss
        );
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// What etcd received and sent over an interval, from its own gRPC counters.
struct EtcdLoad {
    seconds: f64,
    /// Messages received per method: unary calls, and every message on a stream (watch
    /// creations and progress requests, keep-alives).
    received: Vec<(String, f64)>,
    /// Messages sent on the watch streams (events and progress answers) and in all.
    watch_sent: f64,
    sent: f64,
    /// Raft proposals committed: the writes etcd's members had to agree on.
    proposals: f64,
}

impl EtcdLoad {
    /// Runs `during` (or sleeps `idle` when it is zero-length work), with etcd's counters
    /// read before and after.
    fn over(etcd: &str, idle: Duration, during: impl FnOnce() -> Result<()>) -> Result<EtcdLoad> {
        let before = etcd_metrics(etcd)?;
        let start = Instant::now();
        during()?;
        std::thread::sleep(idle);
        let seconds = start.elapsed().as_secs_f64();
        let after = etcd_metrics(etcd)?;
        let delta = |metric: &str| {
            let (a, b) = (
                by_label(&after, metric, "grpc_method"),
                by_label(&before, metric, "grpc_method"),
            );
            a.into_iter()
                .map(|(k, v)| {
                    let d = v - b.get(&k).copied().unwrap_or(0.0);
                    (k, d)
                })
                .filter(|(_, d)| *d > 0.0)
                .collect::<Vec<_>>()
        };
        let sent = delta("grpc_server_msg_sent_total");
        let committed = |text: &str| unlabelled(text, "etcd_server_proposals_committed_total");
        let proposals =
            committed(&after).unwrap_or(f64::NAN) - committed(&before).unwrap_or(f64::NAN);
        Ok(EtcdLoad {
            seconds,
            received: delta("grpc_server_msg_received_total"),
            watch_sent: sent
                .iter()
                .filter(|(k, _)| k == "Watch")
                .map(|(_, v)| v)
                .sum(),
            sent: sent.iter().map(|(_, v)| v).sum(),
            proposals,
        })
    }

    /// Messages received for one method over the interval.
    fn count(&self, method: &str) -> f64 {
        self.received
            .iter()
            .filter(|(k, _)| k == method)
            .map(|(_, v)| v)
            .sum()
    }

    fn print(&self, what: &str, n: usize) {
        let total: f64 = self.received.iter().map(|(_, v)| v).sum();
        let per_s = |v: f64| v / self.seconds.max(1e-9);
        let methods: Vec<String> = self
            .received
            .iter()
            .map(|(k, v)| format!("{k} {:.1}", per_s(*v)))
            .collect();
        println!(
            "etcd, {what}, {:.1} s: received {:.1} msg/s ({:.2} per Envoy): {}; sent {:.1} msg/s, \
             of which watch {:.1}/s; {:.0} Raft proposals committed",
            self.seconds,
            per_s(total),
            per_s(total) / n as f64,
            methods.join(", "),
            per_s(self.sent),
            per_s(self.watch_sent),
            self.proposals
        );
    }
}

/// The upstream every cluster points at: Envoy answering `ok`, or a 500 for any path
/// ending in `/fail`.
fn upstream_yaml(port: u16) -> String {
    envoy::upstream_yaml(port, r#"safe_regex: { regex: ".*/fail" }"#)
}

/// Fleet member `i`: the breaker (with a fleet block) on a gateway routing `/p/` to the
/// propagation cluster and `/cN/` to the storm's clusters, the control API on its own
/// listener, and the `etcd` cluster.
fn member_yaml(
    i: usize,
    gateway: u16,
    control_port: u16,
    up: u16,
    etcd: u16,
    trip_quorum: u32,
) -> String {
    let plugin = format!(
        r#"{{"default": {{"failure_threshold": {THRESHOLD}, "open_duration": "1s", "half_open_max_requests": 1, "success_threshold": 1}}, "clusters": {{"{TRIP}": {{"open_duration": "30s"}}}}, {}}}"#,
        fleet_block_with(trip_quorum)
    );
    let filter = envoy::wasm_filter(
        "circuit_breaker",
        "target/wasm32-wasip1/release/envoy_circuit_breaker.wasm",
        &plugin,
        &["CIRCUIT_BREAKER_ADMIN_TOKEN"],
    );
    let mut routes = String::new();
    let mut clusters = String::new();
    let names =
        std::iter::once(TRIP.to_string()).chain((0..STORM_CLUSTERS).map(|c| format!("c{c}")));
    for name in names {
        routes.push_str(&envoy::route(&format!("prefix: \"/{name}/\""), &name));
        clusters.push_str(&envoy::cluster(&name, up));
    }
    clusters.push_str(&etcd_cluster(etcd));
    let control = envoy::direct(
        Some("circuit_breaker_control"),
        r#"prefix: "/""#,
        503,
        "the circuit breaker filter is not running",
    );
    envoy::bootstrap(
        Some(&format!("bench-{i}")),
        &[
            envoy::Listener {
                name: "gateway",
                port: gateway,
                stat_prefix: "gateway",
                routes,
                filters: filter.clone(),
            },
            envoy::Listener {
                name: "control",
                port: control_port,
                stat_prefix: "circuit_breaker_control",
                routes: control,
                filters: filter,
            },
        ],
        &clusters,
    )
}
