//! `make bench-protection`: every scenario against every variant (all variants of one
//! scenario at once, each with its own Envoy and its own upstream hosts, on one clock), with
//! the mesh's retries and then without; figures to target/bench-protection/results.json, a
//! picture per scenario beside it, a table on stdout.

use std::thread;
use std::time::{Duration, Instant};

use ecb_bench::machine::load_average;
use ecb_bench::protection::plot::{self, Lines, BUCKET_MS};
use ecb_bench::protection::scenario::{self, Action, Scenario};
use ecb_bench::protection::summary::{self, Answer, Figures, Outcome, Run, Timeline};
use ecb_bench::protection::upstream::Host;
use ecb_bench::protection::{load, variants};
use school_system::client;
use school_system::stack::{free_port, root, Envoy};
use serde_json::{json, Map, Value};

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-protection: {e}");
        std::process::exit(1);
    }
}

/// One variant set up for one scenario: its hosts and its Envoy.
struct Setup {
    variant: &'static str,
    hosts: Vec<Host>,
    hosts_epoch: Instant,
    envoy: Envoy,
}

/// What one variant's run left, ready for the figures and the picture.
struct Played {
    variant: &'static str,
    figures: Figures,
    lines: Lines,
    last_10s_success: f64,
}

fn run() -> Result<()> {
    let only = option("--only");
    let retries_only = std::env::args().any(|a| a == "--retries-only");
    let variants = chosen_variants()?;
    let names: Vec<&str> = match &only {
        Some(list) => list.split(',').collect(),
        None => scenario::NAMES.to_vec(),
    };
    let wasm = root().join("target/wasm32-wasip1/release/envoy_circuit_breaker.wasm");
    if !wasm.exists() {
        return Err(format!("{} is missing: run `make build`", wasm.display()));
    }
    let out = root().join("target/bench-protection");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let pictures = plot::font_ready();
    if !pictures {
        println!("no DejaVu Sans font: figures only, no pictures (install fonts-dejavu-core)");
    }
    println!(
        "bench-protection on {}, load average {}",
        machine(),
        load_average()
    );
    let mut results = Map::new();
    let mut no_retries = Map::new();
    for name in names {
        let s = scenario::named(name).ok_or(format!(
            "no scenario {name:?}; known: {:?}",
            scenario::NAMES
        ))?;
        println!("\n{name}: {}", s.describe());
        let outcomes = play(&s, true, &wasm, &variants)?;
        print_table(&outcomes);
        if name == "brownout" {
            check_collapse(&outcomes);
        }
        if pictures {
            let lines: Vec<Lines> = outcomes.iter().map(|o| o.lines.clone()).collect();
            let fault = (s.fault_start_ms as f64 / 1e3, s.fault_end_ms as f64 / 1e3);
            let title = format!("{name}: users at {}/s, fault shaded (retries on)", s.rate);
            plot::draw(&out.join(format!("{name}.png")), &title, fault, &lines)?;
        }
        results.insert(name.to_string(), entries(&outcomes));
        if !retries_only {
            println!("{name} without retries:");
            let outcomes = play(&s, false, &wasm, &variants)?;
            print_table(&outcomes);
            no_retries.insert(name.to_string(), entries(&outcomes));
        }
        write(&out, &results, &no_retries)?;
    }
    println!("\nwrote {}", out.join("results.json").display());
    Ok(())
}

fn entries(outcomes: &[Played]) -> Value {
    let mut m = Map::new();
    for o in outcomes {
        m.insert(o.variant.to_string(), summary::to_json(&o.figures));
    }
    Value::Object(m)
}

fn write(
    out: &std::path::Path,
    results: &Map<String, Value>,
    no_retries: &Map<String, Value>,
) -> Result<()> {
    let doc = json!({
        "machine": machine(),
        "scenarios": results,
        "scenarios_without_retries": no_retries,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(out.join("results.json"), text).map_err(|e| e.to_string())?;
    let tables = format!(
        "With retries:\n\n{}\nWithout retries:\n\n{}",
        summary::markdown(results),
        summary::markdown(no_retries)
    );
    std::fs::write(out.join("table.md"), tables).map_err(|e| e.to_string())
}

/// The variants `--variants` names (default: all of [`variants::ALL`]).
fn chosen_variants() -> Result<Vec<&'static str>> {
    let Some(list) = option("--variants") else {
        return Ok(variants::ALL.to_vec());
    };
    let known = || variants::ALL.iter().chain(variants::EXTRA.iter());
    list.split(',')
        .map(|name| {
            known().find(|v| **v == name.trim()).copied().ok_or(format!(
                "no variant {name:?}; known: {:?}",
                known().collect::<Vec<_>>()
            ))
        })
        .collect()
}

/// Plays `s` against the variants at once and computes their figures.
fn play(
    s: &Scenario,
    retries: bool,
    wasm: &std::path::Path,
    variants: &[&'static str],
) -> Result<Vec<Played>> {
    let mut setups = Vec::new();
    for &variant in variants {
        let hosts_epoch = Instant::now();
        let hosts = (0..s.hosts)
            .map(|i| Host::start(i, s.capacity, hosts_epoch))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        for h in &hosts {
            h.set_slow_factor(s.slow_factor);
        }
        let ports: Vec<u16> = hosts.iter().map(|h| h.port).collect();
        let port = free_port().map_err(|e| e.to_string())?;
        let yaml = variants::yaml(variant, port, &ports, s.balancing, retries, wasm);
        let envoy = Envoy::start(&yaml, 2).map_err(|e| format!("{variant}: {e}"))?;
        setups.push(Setup {
            variant,
            hosts,
            hosts_epoch,
            envoy,
        });
    }
    // Every Envoy answers once and then all rest a moment, so no variant starts its warm-up
    // while another is still compiling the filter (a slow start fails calls on time-outs).
    for st in &setups {
        let ok = client::get(&st.envoy.gateway, "/").is_ok_and(|r| r.status == 200);
        if !ok {
            return Err(format!(
                "{}: the healthy service did not answer 200",
                st.variant
            ));
        }
    }
    let start = Instant::now() + Duration::from_millis(1_500);
    let length = Duration::from_millis(s.end_ms);
    let loads: Vec<_> = setups
        .iter()
        .map(|st| {
            let (addr, rate) = (st.envoy.gateway.clone(), s.rate);
            thread::spawn(move || load::run(&addr, rate, start, length))
        })
        .collect();
    let connect_fails = drive(s, &setups, start);
    let mut outcomes = Vec::new();
    for ((st, handle), fails) in setups.into_iter().zip(loads).zip(connect_fails) {
        let answers = handle.join().map_err(|_| "a load thread panicked")?;
        let early = answers
            .iter()
            .filter(|a| a.sent_ms < s.fault_start_ms as f64 && a.outcome != Outcome::Success)
            .count();
        if early > 0 {
            println!(
                "  note: {} had {early} failed or refused answers before the fault",
                st.variant
            );
        }
        outcomes.push(outcome(s, &st, &answers, start, fails));
    }
    Ok(outcomes)
}

/// Applies the scenario's actions on time; returns each variant's connections refused by
/// the upstream during the fault (from Envoy's stats: the model cannot count them).
fn drive(s: &Scenario, setups: &[Setup], start: Instant) -> Vec<u64> {
    let mut times: Vec<(u64, Option<Action>)> =
        s.actions.iter().map(|&(t, a)| (t, Some(a))).collect();
    times.push((s.fault_start_ms, None));
    times.push((s.fault_end_ms, None));
    times.sort_by_key(|(t, a)| (*t, a.is_some()));
    let mut fails_at_start = vec![0; setups.len()];
    let mut fails = vec![0; setups.len()];
    for (at, action) in times {
        let due = start + Duration::from_millis(at);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        match action {
            Some(a) => setups.iter().for_each(|st| apply(&st.hosts, a)),
            None if at == s.fault_start_ms => {
                for (i, st) in setups.iter().enumerate() {
                    fails_at_start[i] = stat(&st.envoy, "cluster.service.upstream_cx_connect_fail");
                }
            }
            None => {
                for (i, st) in setups.iter().enumerate() {
                    fails[i] = stat(&st.envoy, "cluster.service.upstream_cx_connect_fail")
                        .saturating_sub(fails_at_start[i]);
                }
            }
        }
    }
    fails
}

fn apply(hosts: &[Host], action: Action) {
    match action {
        Action::Mode(from, to, mode) => hosts[from..to].iter().for_each(|h| h.set_mode(mode)),
        Action::FailNext(host, n) => hosts[host].fail_next(n),
    }
}

/// The sum of Envoy's stats whose names start with `prefix`.
fn stat(envoy: &Envoy, prefix: &str) -> u64 {
    let text = client::get(&envoy.admin, &format!("/stats?filter=^{prefix}"))
        .map(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

fn outcome(
    s: &Scenario,
    st: &Setup,
    answers: &[Answer],
    start: Instant,
    refused_connects: u64,
) -> Played {
    let shift = start
        .saturating_duration_since(st.hosts_epoch)
        .as_secs_f64()
        * 1_000.0;
    let arrivals: Vec<f64> = st
        .hosts
        .iter()
        .flat_map(|h| h.arrivals())
        .map(|a| f64::from(a) - shift)
        .collect();
    let end = s.end_ms as f64;
    let mut serviceable = vec![(0.0, s.fault_start_ms as f64), (s.fault_end_ms as f64, end)];
    serviceable.extend(
        s.serviceable_in_fault
            .iter()
            .map(|&(a, b)| (a as f64, b as f64)),
    );
    let timeline = Timeline {
        fault_start: s.fault_start_ms as f64,
        fault_end: s.fault_end_ms as f64,
        end,
        serviceable,
    };
    let trips = stat(&st.envoy, "wasmcustom.circuit_breaker_trips_total");
    let run = Run {
        answers,
        arrivals: &arrivals,
        refused_connects,
        trips,
    };
    let sent = |o: Outcome| {
        answers
            .iter()
            .filter(move |a| a.outcome == o)
            .map(|a| a.sent_ms)
    };
    let last: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent_ms >= end - 10_000.0)
        .collect();
    let served = last
        .iter()
        .filter(|a| a.outcome == Outcome::Success)
        .count();
    Played {
        variant: st.variant,
        figures: summary::figures(&run, &timeline),
        lines: Lines {
            variant: st.variant,
            success: summary::rate_series(sent(Outcome::Success), BUCKET_MS, end),
            calls: summary::rate_series(arrivals.iter().copied(), BUCKET_MS, end),
            refused: summary::rate_series(sent(Outcome::Refused), BUCKET_MS, end),
        },
        last_10s_success: served as f64 / last.len().max(1) as f64,
    }
}

fn print_table(outcomes: &[Played]) {
    println!(
        "  {:<17} {:>7} | {:>6} {:>6} {:>6} | {:>6} {:>7} | {:>8} {:>9} {:>6} {:>6} {:>6} {:>5}",
        "variant",
        "calls",
        "ok",
        "fail",
        "refuse",
        "p50ms",
        "p99ms",
        "1st ref",
        "recovery",
        "coll.",
        "back1s",
        "h-open",
        "trips"
    );
    for o in outcomes {
        let f = &o.figures;
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
        println!(
            "  {:<17} {:>7} | {:>6} {:>6} {:>6} | {:>6.1} {:>7.1} | {:>8} {:>9} {:>6} {:>6} {:>6} {:>5}",
            o.variant,
            f.upstream_calls_during_fault,
            f.success,
            f.upstream_failure,
            f.refused,
            f.p50_ms,
            f.p99_ms,
            opt(f.first_refusal_ms, "ms"),
            opt(f.recovery_s, "s"),
            f.collateral_refusals,
            f.calls_first_second_back,
            f.half_open_calls,
            f.trips
        );
    }
}

/// A brownout that `none` survives reproduced no metastable failure: say so.
fn check_collapse(outcomes: &[Played]) {
    if let Some(none) = outcomes.iter().find(|o| o.variant == "none") {
        let pct = none.last_10s_success * 100.0;
        if pct < 50.0 {
            println!("  none collapsed: {pct:.0} % of users served over the last 10 s (a metastable overload)");
        } else {
            println!("  WARNING: none served {pct:.0} % of users over the last 10 s: the overload did not persist, so this run shows no metastable failure");
        }
    }
}

fn option(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}
