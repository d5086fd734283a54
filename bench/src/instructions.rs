//! `make bench`'s instruction-count mode: each variant's Envoy runs under callgrind, and the
//! instructions it executes for a fixed number of requests, after a warm-up, are counted
//! exactly. The closed-path and open-path targets are judged on these counts, since CPU-time
//! ratios on a shared machine swing more than the margins the targets allow.

use std::path::Path;
use std::time::{Duration, Instant};

use school_system::stack::{free_port, Envoy};

use crate::callgrind::{Counted, KeepAlive};
use crate::{proxy_yaml, upstream_yaml, wasm_filter, Proxy, Result};

/// Requests sent before the counters are zeroed: V8's tier-up, the upstream connection and
/// the first calls of each kind fall in here, not in the count.
const WARM_UP: u32 = 1_000;
/// Requests counted, all on one keep-alive connection.
const COUNTED: u32 = 2_000;
/// Keeps Envoy's periodic stats flush (every 5 s by default) out of the counted window.
const NO_FLUSH: &str = "stats_flush_interval: 290s\n";

/// One configuration counted.
struct Variant {
    key: &'static str,
    what: &'static str,
    yaml: String,
    /// Whether every answer must be a 200 (else every answer must be a refusal).
    proxied: bool,
}

/// What this mode needs from the command line.
pub struct Options<'a> {
    pub breaker: &'a Path,
    pub empty: &'a Path,
    pub limit: &'a Path,
    pub only: Option<&'a [String]>,
    /// Fresh Envoy processes counted per variant.
    pub runs: usize,
}

/// Counts every wanted variant `runs` times and prints the counts, ratios and targets.
pub fn run(opts: &Options) -> Result<()> {
    which_valgrind()?;
    let upstream = Envoy::start(&upstream_yaml(port()?), 1)?;
    let up = crate::port_of(&upstream.gateway);
    let variants = variants(opts, up)?;
    println!(
        "\ninstructions per request: callgrind, all Envoy threads, --concurrency 1, {COUNTED} requests \
         on one keep-alive connection after {WARM_UP} of warm-up; {} variant(s) x {} run(s), \
         about a minute each",
        variants.len(),
        opts.runs
    );
    let started = Instant::now();
    let mut counts = Vec::new();
    for v in &variants {
        let mut runs = Vec::new();
        for n in 1..=opts.runs {
            runs.push(count_logged(v, n, opts.runs)?);
        }
        counts.push((v, runs));
    }
    println!("counted in {:.0} s", started.elapsed().as_secs_f64());
    report(&counts);
    Ok(())
}

fn which_valgrind() -> Result<()> {
    for tool in ["valgrind", "callgrind_control"] {
        crate::which(tool)?;
    }
    Ok(())
}

fn port() -> Result<u16> {
    free_port().map_err(|e| e.to_string())
}

fn variants(opts: &Options, up: u16) -> Result<Vec<Variant>> {
    let closed = r#"{"default": {"failure_threshold": 5, "failure_rate_threshold": 0.5, "minimum_requests": 20}}"#;
    let open = r#"{"default": {"mode": "forced_open"}}"#;
    let breaker = |json| Proxy::Filter("circuit_breaker", opts.breaker, json);
    let specs = [
        ("none", "no wasm filter, proxied", Proxy::Plain, true),
        (
            "direct",
            "no upstream: Envoy's own direct_response",
            Proxy::Direct,
            true,
        ),
        (
            "empty",
            "empty proxy-wasm filter",
            Proxy::Filter("empty", opts.empty, ""),
            true,
        ),
        (
            "limit",
            "limit filter: cluster name + :status only",
            Proxy::Filter("limit", opts.limit, ""),
            true,
        ),
        (
            "closed",
            "breaker, closed, all succeeding",
            breaker(closed),
            true,
        ),
        (
            "open",
            "breaker, forced open, refusing",
            breaker(open),
            false,
        ),
    ];
    let wanted = |key: &str| opts.only.is_none_or(|keys| keys.iter().any(|k| k == key));
    let mut out = Vec::new();
    for (key, what, front, proxied) in specs.into_iter().filter(|s| wanted(s.0)) {
        let port = port()?;
        let yaml = match front {
            Proxy::Plain => proxy_yaml(port, up, ""),
            Proxy::Filter(id, path, json) => proxy_yaml(port, up, &wasm_filter(id, path, json)),
            Proxy::Direct => upstream_yaml(port),
        };
        out.push(Variant {
            key,
            what,
            yaml: format!("{NO_FLUSH}{yaml}"),
            proxied,
        });
    }
    if out.is_empty() {
        return Err("--only names none of: none, direct, empty, limit, closed, open".into());
    }
    Ok(out)
}

/// [`count`], with a progress line before and after (each run takes about a minute).
fn count_logged(v: &Variant, n: usize, runs: usize) -> Result<f64> {
    println!(
        "  {:<7} run {n}/{runs}: starting Envoy under callgrind ...",
        v.key
    );
    let (per_request, phases) = count(v).map_err(|e| format!("{} run {n}: {e}", v.key))?;
    let [start, warm, counted] = phases.map(|p| p.as_secs_f64());
    println!(
        "  {:<7} run {n}/{runs}: {per_request:>9.0} instructions per request \
         (start {start:.0} s, warm-up {warm:.0} s, counted requests {counted:.0} s)",
        v.key
    );
    Ok(per_request)
}

/// Instructions per request for one fresh Envoy process, and how long its start, warm-up
/// and counted requests took.
fn count(v: &Variant) -> Result<(f64, [Duration; 3])> {
    let port = crate::port_of(
        &school_system::stack::listener_of(&v.yaml, "gateway").ok_or("no gateway listener")?,
    );
    let mut clock = Instant::now();
    let mut lap = || std::mem::replace(&mut clock, Instant::now()).elapsed();
    let envoy = Counted::start(&v.yaml, format!("127.0.0.1:{port}"))?;
    let start = lap();
    envoy.instrument()?;
    let mut conn = KeepAlive::connect(&envoy.gateway)?;
    send(&mut conn, WARM_UP, v.proxied)?;
    let warm = lap();
    envoy.zero()?;
    send(&mut conn, COUNTED, v.proxied)?;
    let total = envoy.dump()?;
    Ok((total as f64 / f64::from(COUNTED), [start, warm, lap()]))
}

/// Sends `n` requests one after the other; each answer must be what the variant gives.
fn send(conn: &mut KeepAlive, n: u32, proxied: bool) -> Result<()> {
    for i in 0..n {
        let status = conn.get()?;
        if (status == 200) != proxied {
            return Err(format!("request {i} answered {status}"));
        }
    }
    Ok(())
}

fn report(counts: &[(&Variant, Vec<f64>)]) {
    println!(
        "\n{:<7} {:<42} {:>10} {:>8}  runs",
        "variant", "", "mean", "spread"
    );
    for (v, runs) in counts {
        let all: Vec<String> = runs.iter().map(|c| format!("{c:.0}")).collect();
        println!(
            "{:<7} {:<42} {:>10.0} {:>7.2}%  {}",
            v.key,
            v.what,
            mean(runs),
            spread(runs) * 100.0,
            all.join(" ")
        );
    }
    let of = |key: &str| {
        counts
            .iter()
            .find(|(v, _)| v.key == key)
            .map_or(f64::NAN, |(_, runs)| mean(runs))
    };
    differences(&of);
    targets(&of);
}

fn differences(of: &dyn Fn(&str) -> f64) {
    println!("\nwhat each step adds, instructions per request");
    for (a, b, what) in [
        ("empty", "none", "a proxy-wasm filter that does nothing"),
        ("limit", "empty", "the two unavoidable host calls"),
        ("limit", "none", "the limit filter, all of it"),
        (
            "closed",
            "limit",
            "the breaker's closed path over the limit",
        ),
        (
            "open",
            "direct",
            "a breaker refusal over Envoy's own local answer",
        ),
    ] {
        let d = of(a) - of(b);
        if d.is_finite() {
            println!("  {a:>6} - {b:<6} {d:>+9.0}  {what}");
        }
    }
}

fn targets(of: &dyn Fn(&str) -> f64) {
    let closed = of("closed") / of("limit");
    let open_floor = of("direct") + (of("limit") - of("none"));
    let open = of("open") / open_floor;
    println!("\ntargets (instruction counts)");
    println!("{:<64} {:>7} {:>9}  met", "", "goal", "measured");
    for (name, goal, value) in [
        ("breaker closed / limit filter", 1.02, closed),
        (
            "breaker open / (direct_response + (limit - no filter))",
            1.05,
            open,
        ),
    ] {
        let verdict = match (value.is_nan(), value <= goal) {
            (true, _) => "no figure (a variant it needs was not run)",
            (false, true) => "yes",
            (false, false) => "NO",
        };
        println!(
            "{name:<64} {:>7} {value:>9.3}  {verdict}",
            format!("<= {goal:.2}")
        );
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// (largest - smallest) / mean: how far apart the runs of one variant came out.
fn spread(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::MIN, f64::max);
    let min = xs.iter().copied().fold(f64::MAX, f64::min);
    (max - min) / mean(xs)
}
