//! `make bench`'s instruction-count mode: each variant's Envoy runs under callgrind, and the
//! instructions it executes for a fixed number of requests, after a warm-up, are counted
//! exactly. The closed-path and open-path targets are judged on these counts, since CPU-time
//! ratios on a shared machine swing more than the margins the targets allow.

use std::path::Path;
use std::time::{Duration, Instant};

use ecb_bench::machine::{port, port_of};
use school_system::stack::Envoy;

use crate::callgrind::{Counted, KeepAlive};
use crate::{proxy_config, upstream_yaml, Proxy, Result, CLOSED};

/// Requests sent before the counters are zeroed: V8's tier-up, the upstream connection and
/// the first calls of each kind fall in here, not in the count.
const WARM_UP: u32 = 1_000;
/// Requests counted, all on one keep-alive connection.
const COUNTED: u32 = 2_000;
/// An idle spell before the counted requests, to measure the instructions spent per second
/// whatever the load (timers). Under callgrind, 2,000 requests take 3 to 50 s depending on
/// the machine's load, so without taking these out a filter with a 100 ms tick counts up to
/// 4 % more in one run than in another; at real request rates they come to tens of
/// instructions per request.
const IDLE: Duration = Duration::from_secs(5);
/// Keeps Envoy's periodic stats flush (every 5 s by default) out of the counted window.
const NO_FLUSH: &str = "stats_flush_interval: 290s\n";

/// One configuration counted.
struct Variant {
    key: &'static str,
    what: &'static str,
    yaml: String,
    /// Whether every answer must be a 200 (else every answer must be a refusal).
    proxied: bool,
    /// The breaker with a fleet block: its link to etcd must be up before the counting
    /// and still up, never lost, after it.
    fleet: bool,
}

/// What this mode needs from the command line.
pub struct Options<'a> {
    pub breaker: &'a Path,
    pub empty: &'a Path,
    pub limit: &'a Path,
    /// `bench/host-call-probe`, for the variant that prices one shared-data read.
    pub probe: &'a Path,
    pub only: Option<&'a [String]>,
    /// Fresh Envoy processes counted per variant.
    pub runs: usize,
    /// The client port of the etcd the fleet variant links to (started only when asked for).
    pub etcd_port: Option<u16>,
}

/// Counts every wanted variant `runs` times and prints the counts, ratios and targets.
pub fn run(opts: &Options) -> Result<()> {
    which_valgrind()?;
    let upstream = Envoy::start(&upstream_yaml(port()?), 1)?;
    let up = port_of(&upstream.gateway);
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
        for n in 1..=opts.runs.max(1) {
            runs.push(count_logged(v, n, opts.runs)?);
        }
        counts.push((v, runs));
    }
    println!("counted in {:.0} s", started.elapsed().as_secs_f64());
    report(&counts);
    Ok(())
}

fn which_valgrind() -> Result<()> {
    for tool in ["valgrind", "vgdb"] {
        crate::which(tool)?;
    }
    Ok(())
}

fn variants(opts: &Options, up: u16) -> Result<Vec<Variant>> {
    let closed = CLOSED;
    let open = r#"{"default": {"mode": "forced_open"}}"#;
    let breaker = |json| Proxy::Filter("circuit_breaker", opts.breaker, json);
    // The last field: counted by default; the others only when `--only` names them.
    let specs = [
        ("none", "no wasm filter, proxied", Proxy::Plain, true, true),
        (
            "direct",
            "no upstream: Envoy's own direct_response",
            Proxy::Direct,
            true,
            true,
        ),
        (
            "empty",
            "empty proxy-wasm filter",
            Proxy::Filter("empty", opts.empty, ""),
            true,
            true,
        ),
        (
            "limit",
            "limit filter: cluster name + :status only",
            Proxy::Filter("limit", opts.limit, ""),
            true,
            true,
        ),
        (
            "closed",
            "breaker, closed, all succeeding",
            breaker(closed),
            true,
            true,
        ),
        (
            "open",
            "breaker, forced open, refusing",
            breaker(open),
            false,
            true,
        ),
        // What the shared-data read the closed path makes today costs over the limit.
        (
            "limit+read",
            "probe: the limit's two calls + 1 shared read",
            Proxy::Filter("probe", opts.probe, "cluster,shared,status"),
            true,
            false,
        ),
        // What fleet mode adds to the closed path: the same breaker and JSON plus a fleet
        // block, its link to a real etcd up (`make bench-fleet`).
        (
            "fleet",
            "breaker, closed, fleet block linked to etcd",
            Proxy::Fleet(opts.breaker, closed),
            true,
            false,
        ),
    ];
    let wanted = |key: &str, by_default: bool| {
        opts.only
            .map_or(by_default, |keys| keys.iter().any(|k| k == key))
    };
    let mut out = Vec::new();
    for (key, what, front, proxied, _) in specs.into_iter().filter(|s| wanted(s.0, s.4)) {
        let port = port()?;
        let yaml = proxy_config(front, port, up, opts.etcd_port)?;
        out.push(Variant {
            key,
            what,
            yaml: format!("{NO_FLUSH}{yaml}"),
            proxied,
            fleet: matches!(front, Proxy::Fleet(..)),
        });
    }
    if out.is_empty() {
        return Err(
            "--only names none of: none, direct, empty, limit, closed, open, limit+read, fleet"
                .into(),
        );
    }
    Ok(out)
}

/// What one fresh Envoy process counted.
#[derive(Clone, Copy)]
struct Count {
    /// Instructions per request, the background for the window's length taken out.
    net: f64,
    /// Instructions per request as counted.
    raw: f64,
    /// Instructions per second with no request at all: timers (Envoy's, and a filter's
    /// 100 ms tick) that run whatever the load.
    background: f64,
    /// How long the counted requests took.
    window_s: f64,
}

/// [`count`], with a progress line before and after (each run takes about a minute). A run
/// that fails (Envoy under valgrind not starting in time, a dump not written, the fleet
/// link lost) is tried again, saying so, rather than losing the minutes already counted.
fn count_logged(v: &Variant, n: usize, runs: usize) -> Result<Count> {
    println!(
        "  {:<10} run {n}/{runs}: starting Envoy under callgrind ...",
        v.key
    );
    // Under callgrind on a loaded machine the fleet link's 2 s keep-alive deadline is
    // sometimes missed (Envoy runs some 50 times slower), and a count with the link lost
    // does not stand: the fleet variant gets two more tries.
    let tries = if v.fleet { 3 } else { 2 };
    let mut attempt = 1;
    let (c, start, warm) = loop {
        match count(v) {
            Ok(counted) => break counted,
            Err(e) if attempt < tries => {
                println!("  {:<10} run {n}/{runs} failed ({e}); once more", v.key);
                attempt += 1;
            }
            Err(e) => return Err(format!("{} run {n}, {tries} times: {e}", v.key)),
        }
    };
    println!(
        "  {:<10} run {n}/{runs}: {:>9.0} instructions per request ({:.0} as counted, \
         background {:.0}/s; start {start:.0} s, warm-up {warm:.0} s, counted {:.0} s)",
        v.key, c.net, c.raw, c.background, c.window_s
    );
    Ok(c)
}

/// Counts one fresh Envoy process; also returns how long its start and warm-up took (s).
fn count(v: &Variant) -> Result<(Count, f64, f64)> {
    let port = port_of(
        &school_system::stack::listener_of(&v.yaml, "gateway").ok_or("no gateway listener")?,
    );
    let mut clock = Instant::now();
    let mut lap = || {
        std::mem::replace(&mut clock, Instant::now())
            .elapsed()
            .as_secs_f64()
    };
    let mut envoy = Counted::start(&v.yaml, format!("127.0.0.1:{port}"))?;
    if v.fleet {
        ecb_bench::fleet::wait_connected(&envoy.admin()?, Duration::from_secs(120))?;
    }
    let start = lap();
    envoy.instrument()?;
    let mut conn = KeepAlive::connect(&envoy.gateway)?;
    send(&mut conn, WARM_UP, v.proxied)?;
    let warm = lap();
    // The link may drop and come back while V8 compiles under callgrind (the keep-alive
    // deadline is 2 s of wall-clock time); what counts is that it is up, and stays up, from
    // here on.
    let drops = if v.fleet { fleet_link_up(&envoy)? } else { 0 };
    envoy.zero()?;
    lap();
    std::thread::sleep(IDLE);
    let idle_s = lap();
    let background = envoy.dump()? as f64 / idle_s;
    lap();
    send(&mut conn, COUNTED, v.proxied)?;
    let window_s = lap();
    let total = envoy.dump()? as f64;
    if v.fleet && fleet_link_up(&envoy)? != drops {
        return Err("the fleet link dropped during the counted window".into());
    }
    let raw = total / f64::from(COUNTED);
    let net = (total - background * window_s) / f64::from(COUNTED);
    let c = Count {
        net,
        raw,
        background,
        window_s,
    };
    Ok((c, start, warm))
}

/// Checks the fleet variant's link is up, and (a fleet of one, no request failing) that
/// nothing was published or adopted; returns the disconnections logged so far, which must
/// not change while counting.
fn fleet_link_up(envoy: &Counted) -> Result<usize> {
    let stats = ecb_bench::fleet::FleetStats::read(&envoy.admin()?)?;
    let drops = envoy.log_lines("fleet: etcd unreachable");
    if stats.connected != 1.0 || stats.published + stats.adopted > 0.0 {
        return Err(format!(
            "the fleet link is not up under callgrind: connected {}, {drops} \
             disconnection(s) logged, {} published, {} adopted",
            stats.connected, stats.published, stats.adopted
        ));
    }
    Ok(drops)
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

fn report(counts: &[(&Variant, Vec<Count>)]) {
    println!(
        "\n{:<10} {:<44} {:>9} {:>7} {:>9} {:>7} {:>12}  per run",
        "variant", "instructions per request", "net", "spread", "counted", "spread", "background/s"
    );
    for (v, runs) in counts {
        let field = |f: fn(&Count) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let (net, raw) = (field(|c| c.net), field(|c| c.raw));
        let each: Vec<String> = net.iter().map(|c| format!("{c:.0}")).collect();
        println!(
            "{:<10} {:<44} {:>9.0} {:>6.2}% {:>9.0} {:>6.2}% {:>12.0}  {}",
            v.key,
            v.what,
            mean(&net),
            spread(&net) * 100.0,
            mean(&raw),
            spread(&raw) * 100.0,
            mean(&field(|c| c.background)),
            each.join(" ")
        );
    }
    println!(
        "(net: as counted, less the background per second times the counted requests' duration)"
    );
    let of = |key: &str, f: fn(&Count) -> f64| {
        counts
            .iter()
            .find(|(v, _)| v.key == key)
            .map_or(f64::NAN, |(_, runs)| {
                mean(&runs.iter().map(f).collect::<Vec<_>>())
            })
    };
    let net = |key: &str| of(key, |c| c.net);
    let raw = |key: &str| of(key, |c| c.raw);
    differences(&net);
    fleet_ratio(&net, &raw, &|key| of(key, |c| c.background));
    targets(&net, &raw);
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
        ("limit+read", "limit", "one shared-data read"),
        ("fleet", "closed", "fleet mode on the closed path"),
        (
            "closed",
            "limit+read",
            "the breaker's own code on the closed path",
        ),
    ] {
        let d = of(a) - of(b);
        if d.is_finite() {
            println!("  {a:>10} - {b:<10} {d:>+9.0}  {what}");
        }
    }
}

/// Issue 10: fleet mode adds nothing to the request path. The link's own work (the 100 ms
/// tick's holder election, a progress request and a keep-alive each second, their answers)
/// runs whatever the load, so it is in the background, not in the net count.
fn fleet_ratio(net: &dyn Fn(&str) -> f64, raw: &dyn Fn(&str) -> f64, bg: &dyn Fn(&str) -> f64) {
    let (n, r) = (net("fleet") / net("closed"), raw("fleet") / raw("closed"));
    if n.is_finite() {
        println!(
            "\nfleet / closed: {n:.4} net, {r:.4} as counted; background {:+.0} instructions/s \
             with the fleet link (fleet {:.0}/s, closed {:.0}/s)",
            bg("fleet") - bg("closed"),
            bg("fleet"),
            bg("closed")
        );
    }
}

/// The two ratios issue 12 sets goals for, from a table of counts per variant.
fn ratios(of: &dyn Fn(&str) -> f64) -> [f64; 2] {
    let open_floor = of("direct") + (of("limit") - of("none"));
    [of("closed") / of("limit"), of("open") / open_floor]
}

/// Judged on the net counts; the ratios as counted are shown beside them, since they hold
/// the timers' work for however long the counted requests took under callgrind.
fn targets(net: &dyn Fn(&str) -> f64, raw: &dyn Fn(&str) -> f64) {
    let names = [
        "breaker closed / limit filter",
        "breaker open / (direct_response + (limit - no filter))",
    ];
    println!("\ntargets (net instructions per request)");
    println!(
        "{:<56} {:>7} {:>9}  met  {:>11}",
        "", "goal", "measured", "as counted"
    );
    let goals = [1.02, 1.05];
    for (i, (value, counted)) in ratios(net).into_iter().zip(ratios(raw)).enumerate() {
        let verdict = match (value.is_nan(), value <= goals[i]) {
            (true, _) => "n/a",
            (false, true) => "yes",
            (false, false) => "NO ",
        };
        println!(
            "{:<56} {:>7} {value:>9.3}  {verdict}  {counted:>11.3}",
            names[i],
            format!("<= {:.2}", goals[i])
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
