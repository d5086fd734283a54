//! `make demo-fleet`: fleet mode's story, played for real. Three Envoy gateways (node ids
//! gateway-1..3, two workers each) run `envoy/envoy.fleet.yaml` with the demo's short open
//! times (`envoy/demo-fleet-plugin.json`) in front of one school system, sharing breaker
//! decisions through a three-member etcd on loopback. Each step checks what it claims and
//! the demo exits non-zero, saying which claim failed, when one does not hold.
//! `--plugin FILE` plays it with other plugin JSON (the test of a failing claim uses it).

use std::io::Write;
use std::time::{Duration, Instant};

use school_system::client::{self, Response};
use school_system::etcd::{Etcd, Options};
use school_system::fleet::{with_ports, ETCD_PORTS, GATEWAYS};
use school_system::stack::{self, is_rejection, root, with_plugin_json, Envoy, Service};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, String>;

/// The school breaker's settings in `envoy/demo-fleet-plugin.json`, which the story relies
/// on; `start` checks the file still says so.
const OPEN_SECS: u64 = 10;
const PROBES: usize = 2;
const THRESHOLD: usize = 5;
/// Requests in the half-open burst, spread evenly over the gateways.
const BURST: usize = 30;

fn main() {
    let started = Instant::now();
    match run() {
        Ok(()) => println!(
            "\ndemo-fleet: every claim above held ({:.1}s)",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("\ndemo-fleet FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// One gateway: its Envoy and the control API's address.
struct Gateway {
    name: &'static str,
    envoy: Envoy,
    control: String,
    log_seen: usize,
}

/// The running fleet and what the demo measured.
struct Demo {
    etcd: Etcd,
    gateways: Vec<Gateway>,
    school: Service,
    // Kept running for the gateways' routes; the story only uses the school service.
    _auth: Service,
    _student: Service,
    started: Instant,
    /// Trip on gateway-1 to the breaker open on each other gateway (control API).
    trip_to_open: Vec<(String, Duration)>,
    /// Reconnection after etcd's restart, per gateway.
    link_back: Vec<(String, Duration)>,
    /// Each gateway's propagation histogram before etcd is stopped.
    live: Vec<Option<Histogram>>,
}

fn run() -> Result<()> {
    println!("envoy-circuit-breaker fleet demo: three Envoy gateways share the school breaker through etcd");
    let mut demo = start()?;
    demo.normal_traffic()?;
    demo.trip_on_gateway_one()?;
    demo.others_refuse()?;
    demo.leader_killed()?;
    demo.half_open_across_the_fleet()?;
    demo.recovery()?;
    demo.etcd_gone()?;
    demo.etcd_back()?;
    demo.summary()
}

/// Starts etcd, the services and the three gateways on free loopback ports.
fn start() -> Result<Demo> {
    let config = read("envoy/envoy.fleet.yaml")?;
    let plugin_path =
        school_system::arg("--plugin").unwrap_or_else(|| "envoy/demo-fleet-plugin.json".into());
    let plugin = read(&plugin_path)?;
    check_plugin(&plugin_path, &plugin)?;
    println!("  starting a three-member etcd (Debian etcd-server) on loopback...");
    let etcd = Etcd::start(&Options {
        members: 3,
        ..Options::default()
    })?;
    for (i, m) in etcd.members.iter().enumerate() {
        println!(
            "    etcd {}: client 127.0.0.1:{} (pid {}){}",
            m.name,
            m.client_port,
            m.pid().unwrap_or(0),
            if etcd.leader() == Some(i) {
                "  leader"
            } else {
                ""
            }
        );
    }
    let err = |e: std::io::Error| e.to_string();
    let ports: Vec<u16> = (0..GATEWAYS.len())
        .map(|_| stack::free_port())
        .collect::<std::io::Result<_>>()
        .map_err(err)?;
    let first_gateway = format!("127.0.0.1:{}", ports[0]);
    let auth = Service::start("auth-service", &[]).map_err(err)?;
    let school = Service::start("school-service", &[]).map_err(err)?;
    let student = Service::start("student-service", &["--gateway", &first_gateway]).map_err(err)?;
    println!(
        "  services: auth {}  school {}  student {}",
        auth.addr, school.addr, student.addr
    );
    let base = with_plugin_json(&config, &plugin).ok_or("envoy.fleet.yaml has no plugin JSON")?;
    // One pass: a port given to one process may be a number the config holds elsewhere.
    let mut moves = vec![
        (8081, auth.port()),
        (8082, school.port()),
        (8083, student.port()),
    ];
    for ((shipped, _), member) in ETCD_PORTS.iter().zip(&etcd.members) {
        moves.push((*shipped, member.client_port));
    }
    println!("  starting gateway-1, gateway-2 and gateway-3 (Envoy 1.40, --concurrency 2 each)...");
    let mut gateways = Vec::new();
    for (g, port) in GATEWAYS.iter().zip(&ports) {
        let first = &GATEWAYS[0];
        // Histograms reach /stats on Envoy's stats flush: every second here, not 5 s, so the
        // propagation figures of the steps with etcd up can be read before etcd goes.
        let mut gateway_moves = moves.clone();
        gateway_moves.extend([
            (first.gateway, *port),
            (first.admin, 0),
            (first.control, stack::free_port().map_err(err)?),
        ]);
        let yaml = format!(
            "node: {{ id: {} }}\nstats_flush_interval: 1s\n{}",
            g.node,
            with_ports(&base, &gateway_moves)
        );
        let mut envoy = Envoy::start(&yaml, 2)?;
        envoy.keep_files = true;
        let control = envoy
            .control
            .clone()
            .ok_or("the fleet config has no control listener")?;
        gateways.push(Gateway {
            name: g.node,
            envoy,
            control,
            log_seen: 0,
        });
    }
    let mut demo = Demo {
        etcd,
        gateways,
        school,
        _auth: auth,
        _student: student,
        started: Instant::now(),
        trip_to_open: Vec::new(),
        link_back: Vec::new(),
        live: Vec::new(),
    };
    for i in 0..demo.gateways.len() {
        demo.wait_link(i, true, Duration::from_secs(15))?;
        let g = &demo.gateways[i];
        println!(
            "    {}: gateway {}  control API {}  admin {}  log {}",
            g.name,
            g.envoy.gateway,
            g.control,
            g.envoy.admin,
            g.envoy.log_path.display()
        );
    }
    println!(
        "  school breaker (envoy/demo-fleet-plugin.json): opens after {THRESHOLD} consecutive failures for {OPEN_SECS}s,"
    );
    println!("  then {PROBES} probes for the whole fleet; one success closes it.");
    demo.show_logs();
    Ok(demo)
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(root().join(path)).map_err(|e| format!("cannot read {path}: {e}"))
}

/// The story's counts come from the plugin JSON; refuse one that says otherwise.
fn check_plugin(path: &str, plugin: &str) -> Result<()> {
    let v: Value = serde_json::from_str(plugin).map_err(|e| format!("{path}: {e}"))?;
    let school = &v["clusters"]["school"];
    let expected = json!({
        "failure_threshold": THRESHOLD,
        "open_duration": format!("{OPEN_SECS}s"),
        "half_open_max_requests": PROBES,
        "success_threshold": 1,
    });
    let matches = expected
        .as_object()
        .is_some_and(|e| e.iter().all(|(k, want)| school[k] == *want));
    if !matches || v["fleet"].is_null() {
        return Err(format!(
            "{path}: the school breaker is {school}; the story expects {expected} and a fleet block"
        ));
    }
    Ok(())
}

/// Fails the demo with `claim` unless `held`; prints it as checked when it holds.
fn check(held: bool, claim: &str) -> Result<()> {
    if held {
        println!("   [ok] {claim}");
        Ok(())
    } else {
        Err(format!("this claim did not hold: {claim}"))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Polls `f` every 2 ms until it gives `Some`, or `None` after `timeout`. Faster than
/// `stack::poll`, for measuring how soon a gateway adopts a decision.
fn poll_fast<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Demo {
    fn step(&self, title: &str, detail: &str) {
        println!("\n== {title}");
        if !detail.is_empty() {
            println!("   {detail}");
        }
        println!(
            "   {:>7}  {:<9} {:<10} {:<14} {:<40} {:>9}",
            "time", "gateway", "now", "request", "answer", "latency"
        );
    }

    fn at(&self) -> String {
        format!("{:>6.1}s", self.started.elapsed().as_secs_f64())
    }

    /// Sends `GET path` through gateway `i` and prints one timeline line.
    fn send(&mut self, i: usize, path: &str) -> Result<Response> {
        let g = &self.gateways[i];
        let r = client::request(
            "GET",
            &g.envoy.gateway,
            path,
            &[],
            None,
            Duration::from_secs(10),
        )
        .map_err(|e| format!("GET {path} through {}: {e}", g.name))?;
        let now = self.state(i).unwrap_or_else(|_| "?".into());
        println!(
            "   {}  {:<9} {:<10} {:<14} {:<40} {:>6.1} ms",
            self.at(),
            g.name,
            now,
            format!("GET {path}"),
            describe(&r),
            ms(r.elapsed)
        );
        self.show_logs();
        Ok(r)
    }

    /// Prints every gateway's breaker log lines written since the last call, in time order
    /// (Envoy's lines start with their timestamp).
    fn show_logs(&mut self) {
        let mut fresh: Vec<(String, &str, String)> = Vec::new();
        for g in &mut self.gateways {
            let log = g.envoy.log();
            // Whole lines only: the file may end in one still being written.
            let complete = log.rfind('\n').map_or("", |end| &log[..end]);
            let lines: Vec<&str> = complete
                .lines()
                .filter(|l| l.contains("[CIRCUIT_BREAKER]"))
                .collect();
            for line in lines.iter().skip(g.log_seen) {
                let text = line.split("[CIRCUIT_BREAKER]").nth(1).unwrap_or(line);
                let stamp = line.get(..25).unwrap_or_default().to_string();
                fresh.push((stamp, g.name, text.to_string()));
            }
            g.log_seen = lines.len();
        }
        fresh.sort();
        for (_, name, text) in fresh {
            println!("   >>> {name} log: [CIRCUIT_BREAKER]{text}");
        }
    }

    /// Lets log lines reach their files (Envoy flushes every 50 ms here), then shows them.
    fn settle_logs(&mut self) {
        std::thread::sleep(Duration::from_millis(150));
        self.show_logs();
    }

    fn view(&self, i: usize) -> Result<Value> {
        let g = &self.gateways[i];
        client::get(&g.control, "/circuit-breakers/school")
            .and_then(|r| r.json())
            .map_err(|e| format!("{}'s control API: {e}", g.name))
    }

    fn health(&self, i: usize) -> Result<Value> {
        let g = &self.gateways[i];
        client::get(&g.control, "/health")
            .and_then(|r| r.json())
            .map_err(|e| format!("{}'s control API: {e}", g.name))
    }

    /// The school breaker's state on gateway `i`, as its control API says.
    fn state(&self, i: usize) -> Result<String> {
        let v = self.view(i)?;
        Ok(match v["state"].as_str() {
            Some("open") => "OPEN".into(),
            Some("half_open") => "HALF_OPEN".into(),
            Some(other) => other.into(),
            None => "?".into(),
        })
    }

    fn connected(&self, i: usize) -> bool {
        self.health(i)
            .map(|h| h["fleet"]["connected"] == true)
            .unwrap_or(false)
    }

    /// Waits until gateway `i`'s fleet link is up (or down); how long that took.
    fn wait_link(&self, i: usize, up: bool, timeout: Duration) -> Result<Duration> {
        let since = Instant::now();
        poll_fast(timeout, || {
            (self.connected(i) == up).then(|| since.elapsed())
        })
        .ok_or_else(|| {
            format!(
                "{}'s fleet link did not go {} within {timeout:?}: {}",
                self.gateways[i].name,
                if up { "up" } else { "down" },
                self.health(i)
                    .map(|h| h["fleet"].to_string())
                    .unwrap_or_default()
            )
        })
    }

    /// Waits until the school breaker is `state` (control API spelling) on every gateway.
    fn wait_state_everywhere(&self, state: &str, timeout: Duration) -> Result<()> {
        for i in 0..self.gateways.len() {
            stack::poll(timeout, || {
                (self.view(i).ok()?["state"] == state).then_some(())
            })
            .ok_or_else(|| {
                format!(
                    "the school breaker is not {state} on {} after {timeout:?}: {}",
                    self.gateways[i].name,
                    self.view(i).map(|v| v.to_string()).unwrap_or_default()
                )
            })?;
        }
        Ok(())
    }

    fn school_requests(&self) -> Result<u64> {
        self.school
            .requests()
            .map_err(|e| format!("school service: {e}"))
    }

    fn faults(&self, body: Value) -> Result<()> {
        println!(
            "   {}  fault switch: POST {}/simulate/failure {body}",
            self.at(),
            self.school.addr
        );
        self.school.faults(&body).map_err(|e| e.to_string())
    }

    fn normal_traffic(&mut self) -> Result<()> {
        self.step(
            "1. Normal traffic",
            "every gateway is connected to etcd; each answers from the school service",
        );
        let before = self.school_requests()?;
        let mut ok = true;
        for i in 0..self.gateways.len() {
            ok &= self.send(i, "/schools")?.status == 200;
        }
        let seen = self.school_requests()?.saturating_sub(before);
        check(
            ok && seen == 3,
            &format!("3 of 3 answered 200; the school service counted {seen} calls"),
        )
    }

    fn trip_on_gateway_one(&mut self) -> Result<()> {
        self.step(
            "2. The school service fails behind gateway-1; gateway-1 trips",
            "the school service now answers 503 to everything; only gateway-1 is sent traffic",
        );
        self.faults(json!({"is_healthy": false}))?;
        let mut upstream_failures = 0;
        for _ in 0..THRESHOLD {
            let r = self.send(0, "/schools")?;
            if r.status == 503 && !is_rejection(&r) {
                upstream_failures += 1;
            }
        }
        // The fifth failure's answer leaves Envoy after the trip and its publish are made.
        let tripped = Instant::now();
        // Both polled in turn every 2 ms, each time kept from its first OPEN.
        let mut open_at: Vec<Option<Duration>> = vec![None; self.gateways.len()];
        poll_fast(Duration::from_secs(5), || {
            for (i, at) in open_at.iter_mut().enumerate().skip(1) {
                if at.is_none() && self.view(i).is_ok_and(|v| v["state"] == "open") {
                    *at = Some(tripped.elapsed());
                }
            }
            open_at.iter().skip(1).all(Option::is_some).then_some(())
        });
        let open_at: Vec<(String, Option<Duration>)> = self
            .gateways
            .iter()
            .zip(open_at)
            .skip(1)
            .map(|(g, d)| (g.name.to_string(), d))
            .collect();
        check(
            upstream_failures == THRESHOLD && self.state(0)? == "OPEN",
            &format!(
                "{upstream_failures} failures from the school service, then gateway-1's breaker is OPEN"
            ),
        )?;
        self.settle_logs();
        for (name, d) in &open_at {
            match d {
                Some(d) => println!(
                    "   {name}'s control API said OPEN {:.1} ms after gateway-1's fifth failure answered",
                    ms(*d)
                ),
                None => println!("   {name} did not adopt the trip within 5 s"),
            }
        }
        let adopted: Vec<(String, Duration)> = open_at
            .into_iter()
            .filter_map(|(n, d)| Some((n, d?)))
            .collect();
        check(
            adopted.len() == 2 && adopted.iter().all(|(_, d)| *d < Duration::from_secs(1)),
            "gateway-2 and gateway-3 adopted gateway-1's trip within 1 s (the bound this demo checks)",
        )?;
        self.trip_to_open = adopted;
        Ok(())
    }

    fn others_refuse(&mut self) -> Result<()> {
        self.step(
            "3. Gateways 2 and 3 refuse at once, without the school service seeing a call",
            "they never called the school service: the decision came through etcd",
        );
        let before = self.school_requests()?;
        let mut refused = 0;
        for _ in 0..3 {
            for i in 1..self.gateways.len() {
                refused += usize::from(is_rejection(&self.send(i, "/schools")?));
            }
        }
        let after = self.school_requests()?;
        println!("   school service request counter: before {before}, after {after}");
        check(
            refused == 6 && before == after,
            &format!(
                "{refused} of 6 refused by gateways 2 and 3; the school service saw {} calls",
                after.saturating_sub(before)
            ),
        )
    }

    fn leader_killed(&mut self) -> Result<()> {
        self.step(
            "4. The etcd leader is killed; nothing changes for users",
            "SIGKILL to the member that leads; the breaker stays open on every gateway",
        );
        let before = self.school_requests()?;
        let leader = self.etcd.kill_leader()?;
        let killed = Instant::now();
        println!(
            "   {}  killed etcd {} (the leader, client port {})",
            self.at(),
            self.etcd.members[leader].name,
            self.etcd.members[leader].client_port
        );
        let mut refused = 0;
        let mut sent = 0;
        // Three seconds of traffic: a gateway whose keep-alives went to the dead leader
        // notices after its 2 s deadline, and users must see nothing of that either.
        while killed.elapsed() < Duration::from_secs(3) {
            let i = sent % self.gateways.len();
            refused += usize::from(is_rejection(&self.send(i, "/schools")?));
            sent += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
        let new_leader = stack::poll(Duration::from_secs(10), || {
            self.etcd.leader().filter(|l| *l != leader)
        })
        .ok_or("no new etcd leader within 10 s")?;
        println!(
            "   {}  etcd's new leader: {}",
            self.at(),
            self.etcd.members[new_leader].name
        );
        // Up, and as many connections as outages plus the first: no drop still pending.
        let outages = |g: &Gateway| g.envoy.log_lines("fleet: etcd unreachable").len();
        let settled =
            |g: &Gateway| g.envoy.log_lines("fleet: connected to etcd").len() == outages(g) + 1;
        let links_back = stack::poll(Duration::from_secs(20), || {
            (0..self.gateways.len())
                .all(|i| self.connected(i) && settled(&self.gateways[i]))
                .then_some(())
        })
        .is_some();
        self.settle_logs();
        for g in &self.gateways {
            match outages(g) {
                0 => println!("   {}: its link to etcd stayed up", g.name),
                n => println!(
                    "   {}: its link to etcd dropped {n} time(s) and is up again",
                    g.name
                ),
            }
        }
        let after = self.school_requests()?;
        check(
            refused == sent && before == after,
            &format!(
                "{refused} of {sent} requests refused as before the kill; the school service saw {} calls",
                after.saturating_sub(before)
            ),
        )?;
        check(
            links_back,
            "every gateway's link to etcd is up, through the two members left",
        )
    }

    fn half_open_across_the_fleet(&mut self) -> Result<()> {
        self.step(
            "5. Half-open across the fleet: 30 requests at once through three gateways",
            &format!("the school service is healthy again but slow (1.5 s), so the probes are still in flight when the burst lands; the fleet allows {PROBES} probes"),
        );
        self.faults(json!({"is_healthy": true, "response_time_ms": 1500}))?;
        print!("   waiting for the open time to pass (a dot a second) ");
        // Quarter-second checks, bounded by the open time and 10 s more.
        for tick in 1..=(OPEN_SECS + 10) * 4 {
            let all = (0..self.gateways.len()).all(|i| {
                self.view(i)
                    .map(|v| v["state"] == "half_open")
                    .unwrap_or(false)
            });
            if all {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            if tick % 4 == 0 {
                print!(".");
                let _ = std::io::stdout().flush();
            }
        }
        println!(" done");
        self.settle_logs();
        for i in 0..self.gateways.len() {
            check(
                self.state(i)? == "HALF_OPEN" && self.connected(i),
                &format!(
                    "{} is HALF_OPEN and connected to etcd",
                    self.gateways[i].name
                ),
            )?;
        }
        let before = self.school_requests()?;
        let addrs: Vec<String> = self
            .gateways
            .iter()
            .map(|g| g.envoy.gateway.clone())
            .collect();
        let answers: Vec<(usize, std::io::Result<Response>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..BURST)
                .map(|n| {
                    let addr = &addrs[n % addrs.len()];
                    let at = n % addrs.len();
                    s.spawn(move || {
                        let r = client::request(
                            "GET",
                            addr,
                            "/schools",
                            &[],
                            None,
                            Duration::from_secs(10),
                        );
                        (at, r)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let seen = self.school_requests()?.saturating_sub(before);
        let mut per_gateway = vec![(0usize, 0usize); self.gateways.len()];
        let (mut reached, mut refused, mut other) = (0, 0, 0);
        for (at, r) in &answers {
            match r {
                Ok(r) if r.status == 200 => {
                    reached += 1;
                    per_gateway[*at].0 += 1;
                }
                Ok(r) if is_rejection(r) => {
                    refused += 1;
                    per_gateway[*at].1 += 1;
                }
                _ => other += 1,
            }
        }
        println!(
            "   {}  {BURST} concurrent GET /schools, {} per gateway:",
            self.at(),
            BURST / self.gateways.len()
        );
        for (g, (p, r)) in self.gateways.iter().zip(&per_gateway) {
            println!(
                "            {:<9} {p} answered by the school service (probe), {r} refused",
                g.name
            );
        }
        println!(
            "            in all: {reached} reached the school service, {refused} refused, {other} other; the school service counted {seen} calls"
        );
        self.settle_logs();
        check(
            reached == PROBES && seen == PROBES as u64 && refused == BURST - PROBES && other == 0,
            &format!(
                "exactly {PROBES} probes for the whole fleet: {reached} answers from upstream, {seen} calls counted by the school service, {refused} refused"
            ),
        )
    }

    fn recovery(&mut self) -> Result<()> {
        self.step(
            "6. Recovery closes all three",
            "a successful probe closed the breaker on its gateway; the others adopt it",
        );
        self.faults(json!({"is_healthy": true, "response_time_ms": 0}))?;
        self.wait_state_everywhere("closed", Duration::from_secs(5))?;
        let mut ok = 0;
        for i in 0..self.gateways.len() {
            ok += usize::from(self.send(i, "/schools")?.status == 200);
        }
        check(
            ok == 3,
            &format!("closed on every gateway; {ok} of 3 answered 200 by the school service"),
        )?;
        self.live = self
            .gateways
            .iter()
            .map(|g| flushed_histogram(&g.envoy))
            .collect();
        Ok(())
    }

    fn etcd_gone(&mut self) -> Result<()> {
        self.step(
            "7. All of etcd is stopped: each gateway protects alone",
            "the two members left are killed too; gateway-2 alone sees the school service fail",
        );
        let stopped = Instant::now();
        for i in 0..self.etcd.members.len() {
            self.etcd.kill(i);
        }
        println!("   {}  killed every etcd member", self.at());
        let mut detected = Vec::new();
        for i in 0..self.gateways.len() {
            self.wait_link(i, false, Duration::from_secs(5))?;
            detected.push(stopped.elapsed());
        }
        self.settle_logs();
        for (g, d) in self.gateways.iter().zip(&detected) {
            println!(
                "   {} says disconnected ({:.0} ms after the kill, at the latest)",
                g.name,
                ms(*d)
            );
        }
        check(
            detected.iter().all(|d| *d < Duration::from_secs(3)),
            "every gateway saw etcd gone within 3 s",
        )?;
        self.faults(json!({"is_healthy": false}))?;
        let mut failures = 0;
        for _ in 0..THRESHOLD {
            let r = self.send(1, "/schools")?;
            failures += usize::from(r.status == 503 && !is_rejection(&r));
        }
        self.faults(json!({"is_healthy": true}))?;
        let mut answers = Vec::new();
        for i in [1, 0, 2] {
            answers.push((i, self.send(i, "/schools")?));
        }
        self.settle_logs();
        let slowest = answers
            .iter()
            .map(|(_, r)| r.elapsed)
            .max()
            .unwrap_or_default();
        let refused_by_two = answers.iter().any(|(i, r)| *i == 1 && is_rejection(r));
        let others_pass = answers
            .iter()
            .filter(|(i, _)| *i != 1)
            .all(|(_, r)| r.status == 200);
        let states: Vec<String> = (0..self.gateways.len())
            .map(|i| self.state(i))
            .collect::<Result<_>>()?;
        println!(
            "   states: gateway-1 {}, gateway-2 {}, gateway-3 {}",
            states[0], states[1], states[2]
        );
        check(
            failures == THRESHOLD && refused_by_two && states[1] == "OPEN",
            "gateway-2 tripped alone after 5 failures and refuses",
        )?;
        check(
            others_pass && states[0] == "closed" && states[2] == "closed",
            "gateway-1 and gateway-3 do not know (closed) and answer 200 from the school service",
        )?;
        check(
            slowest < Duration::from_secs(1),
            &format!(
                "every gateway answered without waiting on etcd (slowest {:.1} ms)",
                ms(slowest)
            ),
        )
    }

    fn etcd_back(&mut self) -> Result<()> {
        self.step(
            "8. etcd comes back; the fleet converges",
            "the three members restart on their data; gateway-2's decision, made alone, reaches the others",
        );
        let restarted = Instant::now();
        for i in 0..self.etcd.members.len() {
            self.etcd.restart(i)?;
        }
        println!("   {}  started the three etcd members again", self.at());
        for i in 0..self.etcd.members.len() {
            self.etcd.wait_healthy(i, Duration::from_secs(30))?;
        }
        let healthy = restarted.elapsed();
        println!(
            "   {}  etcd has a leader again ({:.0} ms)",
            self.at(),
            ms(healthy)
        );
        for i in 0..self.gateways.len() {
            self.wait_link(i, true, Duration::from_secs(30))?;
            let d = restarted.elapsed();
            println!(
                "   {} reconnected {:.0} ms after the restart",
                self.gateways[i].name,
                ms(d)
            );
            self.link_back.push((self.gateways[i].name.to_string(), d));
        }
        let before = self.school_requests()?;
        let converged = stack::poll(Duration::from_secs(5), || {
            let views: Vec<Value> = (0..self.gateways.len())
                .map(|i| self.view(i))
                .collect::<Result<_>>()
                .ok()?;
            let first = &views[0];
            views
                .iter()
                .all(|v| {
                    v["state"] == first["state"]
                        && v["fleet"]["generation"] == first["fleet"]["generation"]
                        && v["fleet"]["last_member"] == "gateway-2"
                })
                .then_some(())
        });
        self.settle_logs();
        println!("   each gateway's view (control API GET /circuit-breakers/school and /health):");
        for i in 0..self.gateways.len() {
            let v = self.view(i)?;
            let h = self.health(i)?;
            println!(
                "     {:<9} state {:<10} fleet generation {} revision {} last member {}  link {} (etcd revision {})",
                self.gateways[i].name,
                v["state"].as_str().unwrap_or("?"),
                v["fleet"]["generation"],
                v["fleet"]["revision"],
                v["fleet"]["last_member"],
                h["fleet"]["link"],
                h["fleet"]["last_revision"]
            );
        }
        check(
            converged.is_some(),
            "every gateway holds the same record: gateway-2's decision, same state and generation",
        )?;
        // gateway-2's open time (10 s) outlasts etcd's restart and the reconnections
        // (under 3 s in every run seen), so the decision that reaches the others is the trip.
        let mut refused = 0;
        for i in [0, 2] {
            refused += usize::from(is_rejection(&self.send(i, "/schools")?));
        }
        let after = self.school_requests()?;
        check(
            refused == 2 && after == before,
            &format!(
                "gateway-1 and gateway-3 now refuse gateway-2's trip too ({refused} of 2); the school service saw {} calls",
                after.saturating_sub(before)
            ),
        )
    }

    fn summary(&mut self) -> Result<()> {
        println!("\n== Propagation delays");
        println!("   measured by the demo (a trip's last answer to OPEN in the other gateway's control API):");
        for (name, d) in &self.trip_to_open {
            println!("     gateway-1 -> {name:<9} {:>7.1} ms", ms(*d));
        }
        println!("   reconnection after etcd's restart (to the link up in /health):");
        for (name, d) in &self.link_back {
            println!("     {name:<9} {:>7.0} ms", ms(*d));
        }
        println!("   measured by each Envoy (circuit_breaker_fleet_propagation_ms: the publisher's transition");
        println!(
            "   to this Envoy's adoption; percentiles as Envoy's /stats interpolates them, in ms):"
        );
        println!("     steps 1-6, etcd up:");
        for (g, h) in self.gateways.iter().zip(&self.live) {
            print_histogram(g.name, h.as_ref());
        }
        println!(
            "     the whole run, with the adoptions after etcd's return (a decision made alone is"
        );
        println!("     stamped when it was made, so these count the outage):");
        for g in &self.gateways {
            print_histogram(g.name, flushed_histogram(&g.envoy).as_ref());
        }
        println!("\n   The stack stops with the demo; `make run-fleet` keeps one up.");
        Ok(())
    }
}

/// A stat without labels, as Envoy's Prometheus page shows it.
fn stat(e: &Envoy, name: &str) -> Option<f64> {
    e.prometheus().ok()?.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.trim().parse().ok()
    })
}

/// The propagation histogram's cumulative figures from Envoy's text `/stats`.
struct Histogram {
    count: u64,
    p50: String,
    p90: String,
    p99: String,
    max: String,
}

/// The histogram once Envoy's flush has caught up with every adoption counted so far.
fn flushed_histogram(e: &Envoy) -> Option<Histogram> {
    let adopted = stat(e, "circuit_breaker_fleet_adopted_total").unwrap_or(0.0);
    stack::poll(Duration::from_secs(3), || {
        let h = histogram(e)?;
        (h.count as f64 >= adopted).then_some(h)
    })
    .or_else(|| histogram(e))
}

fn print_histogram(name: &str, h: Option<&Histogram>) {
    match h {
        Some(h) => println!(
            "       {name:<9} {:>2} adoption(s)  P50 {:>6}  P90 {:>6}  P99 {:>6}  max {:>6}",
            h.count, h.p50, h.p90, h.p99, h.max
        ),
        None => println!("       {name:<9} no adoption recorded"),
    }
}

fn histogram(e: &Envoy) -> Option<Histogram> {
    let count = stat(e, "circuit_breaker_fleet_propagation_ms_count")? as u64;
    if count == 0 {
        return None;
    }
    let text = client::get(
        &e.admin,
        "/stats?filter=circuit_breaker_fleet_propagation_ms",
    )
    .ok()?
    .text();
    let line = text.lines().find(|l| l.contains("propagation_ms:"))?;
    // `P50(interval,cumulative)`: the cumulative figure covers the whole run.
    let cumulative = |p: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{p}(")))
            .and_then(|w| w.trim_end_matches(')').split(',').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or("?".into(), |v| format!("{v:.1}"))
    };
    Some(Histogram {
        count,
        p50: cumulative("P50"),
        p90: cumulative("P90"),
        p99: cumulative("P99"),
        max: cumulative("P100"),
    })
}

/// A short description of an answer: status and error code, or a hint at the data.
fn describe(r: &Response) -> String {
    let body = r.json().unwrap_or(Value::Null);
    let text = if let Some(code) = body["error"].as_str() {
        match r.header("retry-after") {
            Some(secs) if code == "CIRCUIT_BREAKER_OPEN" => format!("{code}, retry in {secs}s"),
            _ => code.to_string(),
        }
    } else if let Some(items) = body["data"].as_array() {
        format!("{} items", items.len())
    } else {
        String::new()
    };
    let mut out = format!("{} {text}", r.status);
    if out.len() > 40 {
        out.truncate(37);
        out.push_str("...");
    }
    out
}
