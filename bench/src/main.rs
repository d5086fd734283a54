//! `make bench`: the breaker's cost, measured side by side in one run, since absolute
//! figures on a shared machine mean little. Envoy with no filter, with an empty proxy-wasm
//! filter (the floor every wasm filter pays) and with the breaker (closed and all
//! succeeding; closed with a 10 % failure mix; open), with 1 and 2 workers, all in front of
//! the same upstream (a second Envoy answering directly) and loaded by `wrk` in alternating
//! rounds; plus what each host call the breaker makes costs on its own, the memory each
//! extra worker adds, the `.wasm` size, and the core's decisions timed natively. It ends
//! with every target, its measured value and whether it is met. Then the same story in
//! exact instruction counts under callgrind (`instructions.rs`), where the closed-path and
//! open-path targets are judged. `--only a,b` runs only the variants with those keys;
//! `--breaker <path>` measures another build of the filter; `--cpu` or `--instructions`
//! runs one of the two modes alone. `--only closed,fleet` adds the breaker with a fleet
//! block connected to a real etcd (started for the run), next to the same breaker without
//! one: what fleet mode adds to a closed, succeeding request (`make bench-fleet`).

mod callgrind;
mod core_bench;
mod instructions;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ecb_bench::envoy;
use ecb_bench::machine::{cpu_us, port_of};
use school_system::stack::{free_port, root, rss_kib, scratch_dir, Envoy};

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run_modes() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

/// Both modes unless `--cpu` or `--instructions` picks one.
fn run_modes() -> Result<()> {
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let only = only_keys();
    // The fleet variant's etcd lives as long as both modes; nothing starts it unless the
    // variant is asked for.
    let etcd = match &only {
        Some(keys) if keys.iter().any(|k| k == "fleet") => Some(ecb_bench::fleet::start_etcd()?),
        _ => None,
    };
    let etcd_port = etcd.as_ref().map(|e| e.members[0].client_port);
    if !flag("--instructions") {
        run(only.clone(), etcd_port)?;
    }
    if !flag("--cpu") {
        let (breaker, empty, limit, probe) = (
            breaker_wasm(),
            built_wasm("empty_filter.wasm"),
            built_wasm("limit_filter.wasm"),
            built_wasm("host_call_probe.wasm"),
        );
        all_built(&[&breaker, &empty, &limit, &probe])?;
        instructions::run(&instructions::Options {
            breaker: &breaker,
            empty: &empty,
            limit: &limit,
            probe: &probe,
            only: only.as_deref(),
            runs: option("--runs", 2) as usize,
            etcd_port,
        })?;
    }
    Ok(())
}

/// `--only a,b`: only the variants with these keys, for a quicker look at a few.
fn only_keys() -> Option<Vec<String>> {
    school_system::arg("--only").map(|keys| keys.split(',').map(|k| k.trim().to_string()).collect())
}

fn built_wasm(name: &str) -> PathBuf {
    root().join("target/wasm32-wasip1/release").join(name)
}

/// The breaker's `.wasm`: `--breaker <path>` measures another build (say, another opt-level).
fn breaker_wasm() -> PathBuf {
    school_system::arg("--breaker")
        .map(PathBuf::from)
        .unwrap_or_else(|| built_wasm("envoy_circuit_breaker.wasm"))
}

fn all_built(paths: &[&Path]) -> Result<()> {
    match paths.iter().find(|p| !p.exists()) {
        Some(p) => Err(format!("{} is missing: run `make bench`", p.display())),
        None => Ok(()),
    }
}

struct Options {
    rounds: usize,
    seconds: u64,
    connections: u32,
    /// Only these variants (their keys, comma-separated), for a quicker look at a few.
    only: Option<Vec<String>>,
}

fn option(name: &str, default: u64) -> u64 {
    school_system::arg(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How a variant is loaded, and which answers are expected.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// Every request succeeds.
    Plain,
    /// Every request succeeds, sent through the same Lua script as the failure mix, whose
    /// own cost in `wrk` is then the same on both sides of the comparison.
    Scripted,
    /// Every tenth request goes to `/fail`, which the upstream answers with a 500.
    FailureMix,
    /// Every request is refused by the (forced open) breaker.
    Refused,
}

/// What sits in front of the upstream.
#[derive(Clone, Copy)]
enum Proxy<'a> {
    Plain,
    Filter(&'static str, &'a Path, &'a str),
    /// No upstream at all: Envoy answers every request itself.
    Direct,
    /// The breaker with this plugin JSON plus a `fleet` block, linked to the run's etcd.
    Fleet(&'a Path, &'a str),
}

/// The plugin JSON of the closed variants: no rule trips at the bench's load.
const CLOSED: &str = r#"{"default": {"failure_threshold": 5, "failure_rate_threshold": 0.5, "minimum_requests": 20}}"#;

/// An Envoy config for `proxy`, whose gateway listens on `port`, in front of `up`.
fn proxy_config(proxy: Proxy, port: u16, up: u16, etcd_port: Option<u16>) -> Result<String> {
    Ok(match proxy {
        Proxy::Plain => proxy_yaml(None, port, up, "", ""),
        Proxy::Filter(id, path, json) => {
            proxy_yaml(None, port, up, &wasm_filter(id, path, json), "")
        }
        Proxy::Direct => upstream_yaml(port),
        Proxy::Fleet(path, json) => {
            let etcd = etcd_port.ok_or("the fleet variant needs the run's etcd")?;
            let object = json
                .trim_end()
                .strip_suffix('}')
                .ok_or("plugin JSON not an object")?;
            let json = format!("{object}, {}}}", ecb_bench::fleet::fleet_block());
            let filter = wasm_filter("circuit_breaker", path, &json);
            let etcd = ecb_bench::fleet::etcd_cluster(etcd);
            proxy_yaml(Some("bench-fleet"), port, up, &filter, &etcd)
        }
    })
}

struct Variant {
    key: &'static str,
    what: &'static str,
    envoy: Envoy,
    load: Load,
    connections: u32,
}

/// What one `wrk` round measured.
#[derive(Clone, Copy)]
struct Round {
    rps: f64,
    cpu_us: f64,
    p50_ms: f64,
}

/// The CPU-time rounds under `wrk`.
fn run(only: Option<Vec<String>>, etcd_port: Option<u16>) -> Result<()> {
    let opts = Options {
        rounds: option("--rounds", 5) as usize,
        seconds: option("--seconds", 4),
        connections: option("--connections", 16) as u32,
        only,
    };
    which("wrk")?;
    let (breaker, empty, probe) = (
        breaker_wasm(),
        built_wasm("empty_filter.wasm"),
        built_wasm("host_call_probe.wasm"),
    );
    all_built(&[&breaker, &empty, &probe])?;
    println!(
        "make bench: {} rounds of {}s per variant, wrk -t1 -c{} (-c{} for 2 workers), on {}",
        opts.rounds,
        opts.seconds,
        opts.connections,
        opts.connections * 2,
        machine()
    );

    print!("core decisions, natively ... ");
    let core = core_bench::run();
    println!(
        "closed success {:.1} ns, failure write path {:.1} ns",
        core.closed_success_ns, core.failure_ns
    );

    let upstream = Envoy::start(&upstream_yaml(free_port().map_err(|e| e.to_string())?), 1)?;
    let up = port_of(&upstream.gateway);
    let closed = CLOSED;
    let open = r#"{"default": {"mode": "forced_open"}}"#;
    let breaker_at = |json| Proxy::Filter("circuit_breaker", breaker.as_path(), json);
    let c = opts.connections;
    let specs: Vec<(&'static str, &'static str, Proxy, u32, Load, u32)> = vec![
        ("none", "no wasm filter", Proxy::Plain, 1, Load::Plain, c),
        (
            "empty",
            "empty proxy-wasm filter (the floor)",
            Proxy::Filter("empty", &empty, ""),
            1,
            Load::Plain,
            c,
        ),
        (
            "closed",
            "breaker, closed, all succeeding",
            breaker_at(closed),
            1,
            Load::Plain,
            c,
        ),
        (
            "scripted",
            "breaker, closed, all succeeding, via Lua",
            breaker_at(closed),
            1,
            Load::Scripted,
            c,
        ),
        (
            "none+lua",
            "no wasm filter, all succeeding, via Lua",
            Proxy::Plain,
            1,
            Load::Scripted,
            c,
        ),
        (
            "none+mix",
            "no wasm filter, 10 % failures, via Lua",
            Proxy::Plain,
            1,
            Load::FailureMix,
            c,
        ),
        (
            "mix",
            "breaker, closed, 10 % failures, via Lua",
            breaker_at(closed),
            1,
            Load::FailureMix,
            c,
        ),
        (
            "open",
            "breaker, forced open, refusing",
            breaker_at(open),
            1,
            Load::Refused,
            c,
        ),
        (
            "direct",
            "Envoy answering itself (the ceiling)",
            Proxy::Direct,
            1,
            Load::Plain,
            c,
        ),
        (
            "p:cluster",
            "empty + xds.cluster_name property, x10",
            Proxy::Filter("probe", &probe, "cluster,x10"),
            1,
            Load::Plain,
            c,
        ),
        (
            "p:shared",
            "empty + a shared-data read, x10",
            Proxy::Filter("probe", &probe, "shared,x10"),
            1,
            Load::Plain,
            c,
        ),
        (
            "p:status",
            "empty + the :status response header, x10",
            Proxy::Filter("probe", &probe, "status,x10"),
            1,
            Load::Plain,
            c,
        ),
        (
            "p:flags",
            "empty + response.code and .flags, x10",
            Proxy::Filter("probe", &probe, "code,flags,x10"),
            1,
            Load::Plain,
            c,
        ),
        (
            "p:three",
            "empty + the breaker's three calls, once each",
            Proxy::Filter("probe", &probe, "cluster,shared,status"),
            1,
            Load::Plain,
            c,
        ),
        (
            "p:clock",
            "empty + the clock, x10",
            Proxy::Filter("probe", &probe, "clock,x10"),
            1,
            Load::Plain,
            c,
        ),
        (
            "fleet",
            "breaker, closed, fleet block + etcd link",
            Proxy::Fleet(&breaker, closed),
            1,
            Load::Plain,
            c,
        ),
        (
            "none×2",
            "no wasm filter, 2 workers",
            Proxy::Plain,
            2,
            Load::Plain,
            2 * c,
        ),
        (
            "empty×2",
            "empty filter, 2 workers",
            Proxy::Filter("empty", &empty, ""),
            2,
            Load::Plain,
            2 * c,
        ),
        (
            "closed×2",
            "breaker closed, 2 workers",
            breaker_at(closed),
            2,
            Load::Plain,
            2 * c,
        ),
    ];
    let mut variants = Vec::new();
    // The fleet variant needs etcd: only when `--only` names it.
    let wanted = |key: &str| {
        opts.only
            .as_ref()
            .map_or(key != "fleet", |keys| keys.iter().any(|k| k == key))
    };
    for (key, what, proxy, workers, load, connections) in specs {
        if !wanted(key) {
            continue;
        }
        let port = free_port().map_err(|e| e.to_string())?;
        let yaml = proxy_config(proxy, port, up, etcd_port)?;
        let envoy = Envoy::start(&yaml, workers)?;
        if key == "fleet" {
            ecb_bench::fleet::wait_connected(&envoy.admin, std::time::Duration::from_secs(15))?;
        }
        variants.push(Variant {
            key,
            what,
            envoy,
            load,
            connections,
        });
    }
    if variants.is_empty() {
        println!("CPU-time rounds: --only names none of their variants");
        return Ok(());
    }

    let script = scratch_dir().map_err(|e| e.to_string())?.join("mix.lua");
    std::fs::write(&script, MIX_SCRIPT).map_err(|e| e.to_string())?;
    std::fs::write(script.with_file_name("plain.lua"), PLAIN_SCRIPT).map_err(|e| e.to_string())?;
    for v in &variants {
        let _ = wrk(&v.envoy, 1, v.connections, v.load, &script);
    }
    let mut results: BTreeMap<&str, Vec<Option<Round>>> = BTreeMap::new();
    println!(
        "\n{:<6} {:<10} {:>11} {:>15} {:>9}",
        "round", "variant", "requests/s", "CPU µs/request", "p50 ms"
    );
    for round in 0..opts.rounds {
        for k in 0..variants.len() {
            let v = &variants[(k + round) % variants.len()];
            let measured = measure(v, opts.seconds, &script);
            match &measured {
                Ok(r) => println!(
                    "{:<6} {:<10} {:>11.0} {:>15.2} {:>9.3}",
                    round + 1,
                    v.key,
                    r.rps,
                    r.cpu_us,
                    r.p50_ms
                ),
                Err(e) => println!("{:<6} {:<10} round failed: {e}", round + 1, v.key),
            }
            results.entry(v.key).or_default().push(measured.ok());
        }
    }
    let mix = variants
        .iter()
        .find(|v| v.key == "mix")
        .map(|v| v.envoy.counter("circuit_breaker_trips_total", &[]));
    if mix.is_some_and(|trips| trips > 0) {
        println!("the failure mix tripped its breaker: its rounds do not count");
        results.insert("mix", vec![None; opts.rounds]);
    }
    fleet_link_held(&variants)?;
    let rss: BTreeMap<&str, f64> = variants
        .iter()
        .map(|v| (v.key, rss_mib(v.envoy.pid())))
        .collect();
    report(&variants, &results, &rss, &core, &breaker);
    Ok(())
}

/// The fleet variant counts only if its link to etcd was up all along: still connected at
/// the end, never disconnected meanwhile, and (one Envoy alone in its fleet) nothing
/// published or adopted, since no request failed.
fn fleet_link_held(variants: &[Variant]) -> Result<()> {
    let Some(v) = variants.iter().find(|v| v.key == "fleet") else {
        return Ok(());
    };
    let stats = ecb_bench::fleet::FleetStats::read(&v.envoy.admin)?;
    let drops = v.envoy.log_lines("fleet: etcd unreachable").len();
    println!(
        "fleet variant: link connected {} at the end, {drops} disconnection(s) logged, {} published, {} adopted",
        stats.connected, stats.published, stats.adopted
    );
    if stats.connected != 1.0 || drops > 0 {
        return Err(
            "the fleet variant's link to etcd did not hold: its rounds mean nothing".into(),
        );
    }
    Ok(())
}

fn measure(v: &Variant, seconds: u64, script: &Path) -> Result<Round> {
    let before = cpu_us(v.envoy.pid())?;
    let out = wrk(&v.envoy, seconds, v.connections, v.load, script)?;
    let after = cpu_us(v.envoy.pid())?;
    if out.errors > 0 {
        return Err(format!("{} socket errors", out.errors));
    }
    let share = out.non_2xx as f64 / out.requests.max(1) as f64;
    let expected = match v.load {
        Load::Plain | Load::Scripted => share == 0.0,
        Load::FailureMix => (0.08..=0.12).contains(&share),
        Load::Refused => share > 0.999,
    };
    if !expected {
        return Err(format!(
            "{:.1} % of the answers were not 2xx",
            share * 100.0
        ));
    }
    Ok(Round {
        rps: out.rps,
        cpu_us: (after - before) / out.requests.max(1) as f64,
        p50_ms: out.p50_ms,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median over rounds of `f(a, b)`, for rounds where both variants succeeded.
fn paired(
    results: &BTreeMap<&str, Vec<Option<Round>>>,
    a: &str,
    b: &str,
    f: impl Fn(Round, Round) -> f64,
) -> f64 {
    let (Some(xs), Some(ys)) = (results.get(a), results.get(b)) else {
        return f64::NAN;
    };
    median(xs.iter().zip(ys).filter_map(|(x, y)| Some(f((*x)?, (*y)?))))
}

fn report(
    variants: &[Variant],
    results: &BTreeMap<&str, Vec<Option<Round>>>,
    rss: &BTreeMap<&str, f64>,
    core: &core_bench::CoreFigures,
    wasm: &Path,
) {
    println!("\nmedians over the rounds that succeeded");
    println!(
        "{:<10} {:<40} {:>11} {:>15} {:>9} {:>9} {:>8}",
        "variant", "", "requests/s", "CPU µs/request", "p50 ms", "RSS MiB", "rounds"
    );
    for v in variants {
        let ok: Vec<Round> = results
            .get(v.key)
            .into_iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        println!(
            "{:<10} {:<40} {:>11.0} {:>15.2} {:>9.3} {:>9.1} {:>5}/{}",
            v.key,
            v.what,
            median(ok.iter().map(|r| r.rps)),
            median(ok.iter().map(|r| r.cpu_us)),
            median(ok.iter().map(|r| r.p50_ms)),
            rss.get(v.key).copied().unwrap_or(f64::NAN),
            ok.len(),
            results.get(v.key).map_or(0, Vec::len),
        );
    }
    let rps = |a: Round, b: Round| a.rps / b.rps;
    let cpu = |a: Round, b: Round| a.cpu_us / b.cpu_us;
    let extra = |a: Round, b: Round| a.cpu_us - b.cpu_us;
    println!("\nwhat host calls cost: Envoy CPU per request over the empty filter. A probe making its call 10 times per request prices one more call;");
    println!("the first calls in a stream cost more, which the three calls made once each show");
    for (key, call) in [
        ("p:cluster", "xds.cluster_name property"),
        ("p:shared", "shared-data read"),
        ("p:status", ":status response header"),
        ("p:flags", "response.code + response.flags properties"),
        ("p:clock", "clock"),
    ] {
        let cost = paired(results, key, "empty", extra) / 10.0;
        if cost.is_finite() {
            println!("{call:<42} {cost:>+7.2} µs per call");
        }
    }
    for (key, what) in [
        ("p:three", "the breaker's three calls, once each"),
        ("closed", "the breaker, closed (all it does)"),
    ] {
        let cost = paired(results, key, "empty", extra);
        if cost.is_finite() {
            println!("{what:<42} {cost:>+7.2} µs per request");
        }
    }
    println!(
        "\nratios (median of the per-round ratios; each round measures every variant back to back)"
    );
    for (a, b) in [
        ("fleet", "closed"),
        ("closed", "none"),
        ("closed", "empty"),
        ("empty", "none"),
        ("mix", "scripted"),
        ("none+mix", "none+lua"),
        ("open", "none"),
        ("open", "closed"),
    ] {
        let (t, c) = (paired(results, a, b, rps), paired(results, a, b, cpu));
        if t.is_finite() {
            println!("{a:>8} vs {b:<8} throughput {t:.3}   CPU per request {c:.3}");
        }
    }
    let scaling = |two: &str, one: &str| paired(results, two, one, rps);
    let per_worker = |two: &str, one: &str| {
        rss.get(two).copied().unwrap_or(f64::NAN) - rss.get(one).copied().unwrap_or(f64::NAN)
    };
    let size_kb = std::fs::metadata(wasm)
        .map(|m| m.len() as f64 / 1000.0)
        .unwrap_or(f64::NAN);
    let targets: Vec<(&str, String, f64, bool)> = vec![
        (
            "closed, all succeeding: throughput vs empty filter",
            ">= 0.97".into(),
            paired(results, "closed", "empty", rps),
            paired(results, "closed", "empty", rps) >= 0.97,
        ),
        (
            "closed, all succeeding: CPU per request vs empty filter",
            "<= 1.03".into(),
            paired(results, "closed", "empty", cpu),
            paired(results, "closed", "empty", cpu) <= 1.03,
        ),
        (
            "closed, all succeeding: throughput vs no filter",
            "(shown)".into(),
            paired(results, "closed", "none", rps),
            true,
        ),
        (
            "closed, all succeeding: CPU per request vs no filter",
            "(shown)".into(),
            paired(results, "closed", "none", cpu),
            true,
        ),
        (
            "10 % failure mix: throughput vs all succeeding (same Lua load)",
            ">= 0.97".into(),
            paired(results, "mix", "scripted", rps),
            paired(results, "mix", "scripted", rps) >= 0.97,
        ),
        (
            "  the same, over what the failures cost Envoy alone (no filter)",
            "(shown)".into(),
            paired(results, "mix", "scripted", rps) / paired(results, "none+mix", "none+lua", rps),
            true,
        ),
        (
            "open: refusals per second vs proxied requests per second (no filter)",
            ">= 2.0".into(),
            paired(results, "open", "none", rps),
            paired(results, "open", "none", rps) >= 2.0,
        ),
        (
            "open: median latency vs a proxied request's (no filter)",
            "<= 0.5".into(),
            paired(results, "open", "none", |a, b| a.p50_ms / b.p50_ms),
            paired(results, "open", "none", |a, b| a.p50_ms / b.p50_ms) <= 0.5,
        ),
        (
            "memory added per extra worker, breaker minus no filter (MiB)",
            "<= 2".into(),
            per_worker("closed×2", "closed") - per_worker("none×2", "none"),
            per_worker("closed×2", "closed") - per_worker("none×2", "none") <= 2.0,
        ),
        (
            "release .wasm size (KB)",
            "<= 150".into(),
            size_kb,
            size_kb <= 150.0,
        ),
        (
            "core decision, admit + record, natively (ns)",
            "<= 50".into(),
            core.closed_success_ns,
            core.closed_success_ns <= 50.0,
        ),
        (
            "scaling 1 -> 2 workers: breaker's over the empty filter's",
            ">= 1.0".into(),
            scaling("closed×2", "closed") / scaling("empty×2", "empty"),
            scaling("closed×2", "closed") / scaling("empty×2", "empty") >= 0.97,
        ),
    ];
    println!("\ntargets");
    println!("{:<72} {:>8} {:>10}  met", "", "goal", "measured");
    for (name, goal, value, met) in targets {
        let verdict = if value.is_nan() {
            "no figure"
        } else if goal == "(shown)" {
            "-"
        } else if met {
            "yes"
        } else {
            "NO"
        };
        println!("{name:<72} {goal:>8} {value:>10.3}  {verdict}");
    }
    println!(
        "\n(scaling: none {:.2}x, empty {:.2}x, breaker {:.2}x; the last target counts as met within 3 %, the noise of one run)",
        scaling("none×2", "none"), scaling("empty×2", "empty"), scaling("closed×2", "closed")
    );
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid).map_or(f64::NAN, |kb| kb as f64 / 1024.0)
}

struct WrkOut {
    rps: f64,
    requests: u64,
    non_2xx: u64,
    errors: u64,
    p50_ms: f64,
}

const PLAIN_SCRIPT: &str = "local n = 0\nrequest = function()\n  n = n + 1\n  if n % 10 == 0 then return wrk.format(nil, \"/\") end\n  return wrk.format(nil, \"/\")\nend\n";
const MIX_SCRIPT: &str = "local n = 0\nrequest = function()\n  n = n + 1\n  if n % 10 == 0 then return wrk.format(nil, \"/fail\") end\n  return wrk.format(nil, \"/\")\nend\n";

fn wrk(envoy: &Envoy, seconds: u64, connections: u32, load: Load, script: &Path) -> Result<WrkOut> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    match load {
        Load::FailureMix => {
            cmd.arg("-s").arg(script);
        }
        Load::Scripted => {
            cmd.arg("-s").arg(script.with_file_name("plain.lua"));
        }
        Load::Plain | Load::Refused => {}
    }
    let out = cmd
        .arg(format!("http://{}/", envoy.gateway))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no Requests/sec in:\n{text}"))?;
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().to_string())
        })
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no request count in:\n{text}"))?;
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let errors = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let p50_ms = field("50%")
        .and_then(parse_wrk_duration)
        .unwrap_or(f64::NAN);
    Ok(WrkOut {
        rps,
        requests,
        non_2xx,
        errors,
        p50_ms,
    })
}

/// `wrk` prints durations like `812.00us`, `1.23ms`, `1.01s`.
fn parse_wrk_duration(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

fn which(tool: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map_err(|e| e.to_string())?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        Err(format!("{tool} is not installed (make bench installs it)"))
    } else {
        Ok(PathBuf::from(path))
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model})")
}

fn wasm_filter(id: &str, path: &Path, json: &str) -> String {
    envoy::wasm_filter(id, &path.display().to_string(), json, &[])
}

/// The bench's proxy: a gateway on `port` sending everything to the `upstream` cluster on
/// `upstream_port`, through `filter` (none when empty); `clusters` are added after it.
fn proxy_yaml(
    node: Option<&str>,
    port: u16,
    upstream_port: u16,
    filter: &str,
    clusters: &str,
) -> String {
    envoy::bootstrap(
        node,
        &[envoy::Listener {
            name: "gateway",
            port,
            stat_prefix: "bench",
            routes: envoy::route(r#"prefix: "/""#, "upstream"),
            filters: filter.to_string(),
        }],
        &(envoy::cluster("upstream", upstream_port) + clusters),
    )
}

/// The upstream: a 500 for paths starting `/fail`, else `ok` (also the `direct` variant's
/// proxy, so its routes stay prefix matches).
fn upstream_yaml(port: u16) -> String {
    envoy::upstream_yaml(port, r#"prefix: "/fail""#)
}
