//! `make demo`: the sample stack plays seed 003's four steps and seed 004's manual tests,
//! printing a timeline per request (time, cluster, breaker state, request, answer,
//! latency) with the breaker's own log lines in between, and ends with a summary.

use std::io::Write;
use std::time::{Duration, Instant};

use school_system::client::{self, Response};
use school_system::stack::{root, Envoy, Stack};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("\ndemo failed: {e}");
        std::process::exit(1);
    }
}

/// Everything the demo has sent, for the summary.
struct Demo {
    stack: Stack,
    started: Instant,
    log_seen: usize,
    /// Latencies of answers from the upstream: successes, and failures.
    upstream_ok: Vec<Duration>,
    upstream_failed: Vec<Duration>,
    /// Latencies of the breaker's own refusals.
    refused: Vec<Duration>,
}

fn run() -> Result<()> {
    let plugin = std::fs::read_to_string(root().join("envoy/demo-plugin.json"))
        .map_err(|e| format!("cannot read envoy/demo-plugin.json: {e}"))?;
    println!(
        "envoy-circuit-breaker demo: Envoy 1.40 with the breaker in front of the school system"
    );
    println!("  starting the auth, school and student services and Envoy (2 workers)...");
    let mut stack = Stack::start(Some(&plugin), 2, |y| y)?;
    stack.envoy.keep_files = true;
    println!(
        "  gateway {}  envoy admin {}",
        stack.envoy.gateway, stack.envoy.admin
    );
    println!("  envoy log {}", stack.envoy.log_path.display());
    println!("  demo settings (envoy/demo-plugin.json): school and auth open after 5 consecutive");
    println!("  failures for 8s; student after 3 for 6s, with 2 probes that must both succeed.");
    let mut demo = Demo {
        stack,
        started: Instant::now(),
        log_seen: 0,
        upstream_ok: Vec::new(),
        upstream_failed: Vec::new(),
        refused: Vec::new(),
    };
    demo.normal_traffic()?;
    demo.some_failures()?;
    demo.outage()?;
    demo.cascade()?;
    demo.recovery()?;
    demo.probes_under_load()?;
    demo.summary()
}

impl Demo {
    fn step(&self, title: &str, detail: &str) {
        println!("\n== {title}");
        if !detail.is_empty() {
            println!("   {detail}");
        }
        println!(
            "   {:>7}  {:<8} {:<10} {:<28} {:<44} {:>9}",
            "time", "cluster", "now", "request", "answer", "latency"
        );
    }

    fn send(
        &mut self,
        cluster: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Response> {
        let bytes = body.as_ref().map(|b| b.to_string().into_bytes());
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("content-type", "application/json")]
        } else {
            &[]
        };
        let r = client::request(
            method,
            &self.stack.envoy.gateway,
            path,
            headers,
            bytes.as_deref(),
            Duration::from_secs(15),
        )
        .map_err(|e| format!("{method} {path}: {e}"))?;
        if is_rejection(&r) {
            self.refused.push(r.elapsed);
        } else if r.status >= 500 {
            self.upstream_failed.push(r.elapsed);
        } else {
            self.upstream_ok.push(r.elapsed);
        }
        std::thread::sleep(Duration::from_millis(60));
        let state = state_of(&self.stack.envoy, cluster);
        println!(
            "   {:>6.1}s  {:<8} {:<10} {:<28} {:<44} {:>6.1} ms",
            self.started.elapsed().as_secs_f64(),
            cluster,
            state,
            format!("{method} {path}"),
            describe(&r),
            r.elapsed.as_secs_f64() * 1000.0
        );
        self.show_breaker_log();
        Ok(r)
    }

    /// Prints the breaker's log lines written since the last call.
    fn show_breaker_log(&mut self) {
        let lines = self.stack.envoy.log_lines("[CIRCUIT_BREAKER]");
        for line in lines.iter().skip(self.log_seen) {
            let text = line.split("[CIRCUIT_BREAKER]").nth(1).unwrap_or(line);
            println!("   >>> breaker log: [CIRCUIT_BREAKER]{text}");
        }
        self.log_seen = lines.len();
    }

    fn faults(&self, service: &str, body: Value) -> Result<()> {
        let svc = match service {
            "auth" => &self.stack.auth,
            "school" => &self.stack.school,
            _ => &self.stack.student,
        };
        println!(
            "   {:>6.1}s  fault switch: POST {}/simulate/failure {body}",
            self.started.elapsed().as_secs_f64(),
            svc.addr
        );
        svc.faults(&body).map_err(|e| e.to_string())
    }

    /// Waits `secs`, printing a dot per second so a long wait is never silent.
    fn wait(&mut self, secs: u64, why: &str) {
        print!("   waiting {secs}s {why} ");
        for _ in 0..secs {
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_secs(1));
            print!(".");
        }
        println!(" done");
        self.show_breaker_log();
    }

    fn normal_traffic(&mut self) -> Result<()> {
        self.step("1. Normal traffic", "every request reaches its service");
        let login = json!({"email": "test@example.com", "password": "test123"});
        self.send("auth", "POST", "/auth/login", Some(login))?;
        self.send("school", "GET", "/schools", None)?;
        self.send("student", "GET", "/students", None)?;
        let student = json!({"name": "Grace Hopper", "email": "grace@school.test", "school_id": 1});
        self.send("student", "POST", "/students", Some(student))?;
        Ok(())
    }

    fn some_failures(&mut self) -> Result<()> {
        self.step(
            "2. Failures injected (seed 003 step 2)",
            "the school service now fails 70% of requests; five in a row would open its breaker",
        );
        self.faults("school", json!({"failure_rate": 0.7, "is_healthy": true}))?;
        for _ in 0..4 {
            self.send("school", "GET", "/schools", None)?;
        }
        Ok(())
    }

    fn outage(&mut self) -> Result<()> {
        self.step(
            "3. The school service goes down, and slow (seed 003 step 3, seed 004 test 1)",
            "every request now fails after 1.5s; 5 failures in a row (step 2's count on) open the breaker",
        );
        self.faults(
            "school",
            json!({"failure_rate": 1.0, "is_healthy": false, "response_time_ms": 1500}),
        )?;
        println!("   while the breaker is still closed, creating a student waits on the failing school call:");
        let student = json!({"name": "Alan Turing", "email": "alan@school.test", "school_id": 2});
        self.send("student", "POST", "/students", Some(student))?;
        let mut sent = 0;
        while state_of(&self.stack.envoy, "school") == "closed" && sent < 8 {
            self.send("school", "GET", "/schools", None)?;
            sent += 1;
        }
        for _ in 0..3 {
            self.send("school", "GET", "/schools", None)?;
        }
        Ok(())
    }

    fn cascade(&mut self) -> Result<()> {
        self.step(
            "4. The cascade: creating a student needs the school service",
            "the same call as in step 3; now the open school breaker answers the student service at once",
        );
        let student = json!({"name": "Alan Turing", "email": "alan@school.test", "school_id": 2});
        self.send("student", "POST", "/students", Some(student))?;
        self.send("student", "GET", "/students", None)?;
        Ok(())
    }

    fn recovery(&mut self) -> Result<()> {
        self.step(
            "5. Recovery (seed 003 step 4, seed 004 test 3)",
            "the school service is healthy again; after the open time one probe decides",
        );
        self.faults("school", json!({"failure_rate": 0.0, "is_healthy": true}))?;
        let r = self.send("school", "GET", "/schools", None)?;
        let left = r
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(8);
        self.wait(
            left,
            "for the open time to pass (the breaker's timer moves it to half-open)",
        );
        self.send("school", "GET", "/schools", None)?;
        self.send("school", "GET", "/schools", None)?;
        let student = json!({"name": "Alan Turing", "email": "alan@school.test", "school_id": 2});
        self.send("student", "POST", "/students", Some(student))?;
        Ok(())
    }

    fn probes_under_load(&mut self) -> Result<()> {
        self.step(
            "6. Half-open under load: the student breaker lets exactly 2 probes through",
            "the student service fails 3 times, recovers slowly (800ms), then 20 requests arrive at once",
        );
        self.faults("student", json!({"is_healthy": false}))?;
        for _ in 0..4 {
            self.send("student", "GET", "/students", None)?;
        }
        self.faults(
            "student",
            json!({"is_healthy": true, "response_time_ms": 800}),
        )?;
        self.wait(6, "for the open time to pass");
        let before = self.stack.student.requests().map_err(|e| e.to_string())?;
        let gateway = self.stack.envoy.gateway.clone();
        let burst: Vec<Response> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..20)
                .map(|_| {
                    s.spawn(|| {
                        client::request(
                            "GET",
                            &gateway,
                            "/students",
                            &[],
                            None,
                            Duration::from_secs(10),
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok()?.ok())
                .collect()
        });
        let reached = self.stack.student.requests().map_err(|e| e.to_string())? - before;
        let probes_ok = burst.iter().filter(|r| r.status == 200).count();
        let refused = burst.iter().filter(|r| is_rejection(r)).count();
        println!(
            "   {:>6.1}s  20 concurrent GET /students: {probes_ok} answered 200 by the upstream (the probes), {refused} refused at once",
            self.started.elapsed().as_secs_f64()
        );
        println!("            the student service saw {reached} of the 20 requests");
        std::thread::sleep(Duration::from_millis(200));
        self.show_breaker_log();
        self.faults(
            "student",
            json!({"is_healthy": true, "response_time_ms": 0}),
        )?;
        self.send("student", "GET", "/students", None)?;
        Ok(())
    }

    fn summary(&mut self) -> Result<()> {
        println!("\n== Summary");
        let envoy = &self.stack.envoy;
        std::thread::sleep(Duration::from_millis(250));
        for cluster in ["auth", "school", "student"] {
            let count = |outcome: &str| {
                envoy.counter(
                    "circuit_breaker_requests_total",
                    &[("cluster", cluster), ("outcome", outcome)],
                )
            };
            let trips = envoy.counter("circuit_breaker_trips_total", &[("cluster", cluster)]);
            println!(
                "   {cluster:<8} {:>3} succeeded  {:>3} failed  {:>3} refused by the breaker  {trips} trip(s)  now {}",
                count("success"),
                count("failure"),
                count("rejected"),
                state_of(envoy, cluster)
            );
        }
        println!("   latency (median / slowest):");
        for (what, samples) in [
            ("answered by a healthy upstream", &mut self.upstream_ok),
            ("failed by a failing upstream", &mut self.upstream_failed),
            ("refused by an open breaker", &mut self.refused),
        ] {
            let (median, slowest) = median_and_max_ms(samples);
            println!(
                "   {what:<32} {median:>8.1} ms / {slowest:>7.1} ms  ({} requests)",
                samples.len()
            );
        }
        println!("\n   Where to look next:");
        println!("   - metrics:  curl -s {}/stats/prometheus | grep circuit_breaker_  (while `make run` is up: 127.0.0.1:9901)", envoy.admin);
        println!(
            "   - the breaker's log lines: grep CIRCUIT_BREAKER {}",
            envoy.log_path.display()
        );
        println!("   - your own run: `make run`, then the fault switches on ports 8081-8083 (see README)");
        Ok(())
    }
}

/// The breaker state from the state gauge, as Prometheus shows it.
fn state_of(envoy: &Envoy, cluster: &str) -> &'static str {
    let gauge = envoy.sample(&format!("circuit_breaker_state{{cluster=\"{cluster}\"}}"));
    match gauge.map(|v| v as u64) {
        Some(1) => "OPEN",
        Some(2) => "HALF_OPEN",
        Some(_) => "closed",
        None => "?",
    }
}

fn is_rejection(r: &Response) -> bool {
    r.status == 503
        && r.json()
            .map(|j| j["error"] == "CIRCUIT_BREAKER_OPEN")
            .unwrap_or(false)
}

/// A short description of an answer: status, error code or a hint at the data.
fn describe(r: &Response) -> String {
    let body = r.json().unwrap_or(Value::Null);
    let text = if let Some(code) = body["error"].as_str() {
        match r.header("retry-after") {
            Some(secs) if code == "CIRCUIT_BREAKER_OPEN" => format!("{code}, retry in {secs}s"),
            _ => code.to_string(),
        }
    } else if let Some(items) = body["data"].as_array() {
        format!("{} items", items.len())
    } else if let Some(id) = body["data"]["id"].as_u64() {
        format!("created id {id}")
    } else if body["data"]["token"].is_string() {
        "token issued".to_string()
    } else {
        String::new()
    };
    let mut out = format!("{} {text}", r.status);
    if out.len() > 44 {
        out.truncate(41);
        out.push_str("...");
    }
    out
}

fn median_and_max_ms(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    (ms(samples.get(samples.len() / 2)), ms(samples.last()))
}
