//! `make bench`: Envoy with no filter, with an empty proxy-wasm filter (the floor every
//! wasm filter pays) and with the breaker (closed, every request succeeding), all in
//! front of the same upstream (a second Envoy answering directly), loaded by `wrk` in
//! alternating rounds. Prints each round and the medians: throughput and Envoy CPU time
//! per request, as ratios measured side by side, since absolute figures on a shared
//! machine mean little.

use std::path::{Path, PathBuf};
use std::process::Command;

use school_system::stack::{free_port, root, Envoy};

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

/// One Envoy set-up under test.
struct Variant {
    name: &'static str,
    what: &'static str,
    envoy: Envoy,
}

/// What one `wrk` round measured.
#[derive(Clone, Copy)]
struct Round {
    rps: f64,
    cpu_us_per_request: f64,
    p50_ms: f64,
}

struct Options {
    rounds: usize,
    seconds: u64,
    connections: u32,
    workers: u32,
}

fn option(name: &str, default: u64) -> u64 {
    school_system::arg(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run() -> Result<()> {
    let opts = Options {
        rounds: option("--rounds", 5) as usize,
        seconds: option("--seconds", 5),
        connections: option("--connections", 16) as u32,
        workers: option("--workers", 1) as u32,
    };
    which("wrk")?;
    let breaker_wasm = root().join("target/wasm32-wasip1/release/envoy_circuit_breaker.wasm");
    let empty_wasm = root().join("target/wasm32-wasip1/release/empty_filter.wasm");
    for p in [&breaker_wasm, &empty_wasm] {
        if !p.exists() {
            return Err(format!("{} is missing: run `make bench`", p.display()));
        }
    }
    println!(
        "make bench: {} rounds of {}s, wrk -t1 -c{}, Envoy --concurrency {}, on {}",
        opts.rounds,
        opts.seconds,
        opts.connections,
        opts.workers,
        machine()
    );
    let upstream = Envoy::start(&upstream_yaml(free_port().map_err(|e| e.to_string())?), 1)?;
    let upstream_port = port_of(&upstream.gateway);
    let breaker_json = r#"{"default": {"failure_threshold": 5, "open_duration": "30s"}}"#;
    let variants = vec![
        variant(
            "none",
            "Envoy, no wasm filter",
            upstream_port,
            None,
            opts.workers,
        )?,
        variant(
            "empty",
            "Envoy + empty proxy-wasm filter",
            upstream_port,
            Some(("empty", &empty_wasm, "")),
            opts.workers,
        )?,
        variant(
            "breaker",
            "Envoy + circuit breaker, closed, all succeeding",
            upstream_port,
            Some(("circuit_breaker", &breaker_wasm, breaker_json)),
            opts.workers,
        )?,
    ];
    for v in &variants {
        wrk(&v.envoy, 1, opts.connections)?;
    }
    let mut results: Vec<Vec<Option<Round>>> = vec![Vec::new(); variants.len()];
    println!(
        "\n{:<6} {:<8} {:>12} {:>14} {:>9}",
        "round", "variant", "requests/s", "CPU us/request", "p50 ms"
    );
    for round in 0..opts.rounds {
        for k in 0..variants.len() {
            // Rotate the order so no variant always runs right after another.
            let i = (k + round) % variants.len();
            let v = &variants[i];
            let measured = measure(&v.envoy, opts.seconds, opts.connections);
            match &measured {
                Ok(r) => println!(
                    "{:<6} {:<8} {:>12.0} {:>14.2} {:>9.3}",
                    round + 1,
                    v.name,
                    r.rps,
                    r.cpu_us_per_request,
                    r.p50_ms
                ),
                Err(e) => println!("{:<6} {:<8} round failed: {e}", round + 1, v.name),
            }
            results[i].push(measured.ok());
        }
    }
    report(&variants, &results);
    Ok(())
}

fn report(variants: &[Variant], results: &[Vec<Option<Round>>]) {
    println!("\nmedians over the rounds that succeeded");
    println!(
        "{:<8} {:<48} {:>12} {:>14} {:>9}",
        "variant", "", "requests/s", "CPU us/request", "p50 ms"
    );
    for (v, rounds) in variants.iter().zip(results) {
        let ok: Vec<Round> = rounds.iter().flatten().copied().collect();
        println!(
            "{:<8} {:<48} {:>12.0} {:>14.2} {:>9.3}",
            v.name,
            v.what,
            median(ok.iter().map(|r| r.rps)),
            median(ok.iter().map(|r| r.cpu_us_per_request)),
            median(ok.iter().map(|r| r.p50_ms)),
        );
    }
    let index = |name: &str| variants.iter().position(|v| v.name == name);
    println!(
        "\nratios (median of the per-round ratios, each round's variants measured back to back)"
    );
    for (a, b) in [("breaker", "none"), ("breaker", "empty"), ("empty", "none")] {
        let (Some(ia), Some(ib)) = (index(a), index(b)) else {
            continue;
        };
        let pairs = || {
            results[ia]
                .iter()
                .zip(&results[ib])
                .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
        };
        let throughput = median(pairs().map(|(x, y)| x.rps / y.rps));
        let cpu = median(pairs().map(|(x, y)| x.cpu_us_per_request / y.cpu_us_per_request));
        println!(
            "{a:>8} vs {b:<6} throughput {throughput:.3}   CPU per request {cpu:.3}   ({} paired rounds)",
            pairs().count()
        );
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn variant(
    name: &'static str,
    what: &'static str,
    upstream_port: u16,
    wasm: Option<(&str, &Path, &str)>,
    workers: u32,
) -> Result<Variant> {
    let port = free_port().map_err(|e| e.to_string())?;
    let filter = wasm
        .map(|(id, path, json)| wasm_filter(id, path, json))
        .unwrap_or_default();
    let envoy = Envoy::start(&proxy_yaml(port, upstream_port, &filter), workers)?;
    Ok(Variant { name, what, envoy })
}

/// CPU time Envoy's threads have used, in microseconds (from the scheduler, in ns).
fn cpu_us(pid: u32) -> Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1_000.0)
}

fn measure(envoy: &Envoy, seconds: u64, connections: u32) -> Result<Round> {
    let before = cpu_us(envoy.pid())?;
    let out = wrk(envoy, seconds, connections)?;
    let after = cpu_us(envoy.pid())?;
    let requests = out.requests.max(1) as f64;
    Ok(Round {
        rps: out.rps,
        cpu_us_per_request: (after - before) / requests,
        p50_ms: out.p50_ms,
    })
}

struct WrkOut {
    rps: f64,
    requests: u64,
    p50_ms: f64,
}

fn wrk(envoy: &Envoy, seconds: u64, connections: u32) -> Result<WrkOut> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
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
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        return Err(line.trim().to_string());
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().to_string())
        })
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no request count in wrk output:\n{text}"))?;
    let p50_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("50%"))
        .and_then(|v| parse_wrk_duration(v.trim()))
        .unwrap_or(f64::NAN);
    Ok(WrkOut {
        rps,
        requests,
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

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn upstream_yaml(port: u16) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: upstream
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/fail" }}
                direct_response: {{ status: 500, body: {{ inline_string: "fail" }} }}
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

fn wasm_filter(id: &str, path: &Path, json: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {id}
                root_id: {id}
                vm_config:
                  vm_id: {id}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{}" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{json}'
"#,
        path.display()
    )
}

fn proxy_yaml(port: u16, upstream_port: u16, filter: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
{filter}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
"#
    )
}
