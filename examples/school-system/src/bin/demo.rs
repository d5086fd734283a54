//! `make demo`: the sample stack plays seed 003's four steps and seed 004's manual tests,
//! printing a timeline per request (time, cluster, breaker state, request, answer,
//! latency) with the breaker's own log lines in between, and ends with a summary.
//! `demo --running` plays the same story against a stack that is already up, such as the
//! docker-compose one (`make demo-docker`), through the ports it publishes.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use school_system::client::{self, Response};
use school_system::stack::{self, is_rejection, root, Stack};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("\ndemo failed: {e}");
        std::process::exit(1);
    }
}

/// Where the stack the demo plays against listens, and where Envoy's log is.
struct Endpoints {
    gateway: String,
    control: String,
    admin: String,
    auth: String,
    school: String,
    student: String,
    envoy_log: PathBuf,
}

/// Everything the demo has sent, for the summary.
struct Demo {
    /// The stack the demo started, kept alive while it plays; none for `--running`.
    _stack: Option<Stack>,
    at: Endpoints,
    token: String,
    /// Where to save a picture of the dashboard while the school breaker is open.
    screenshot: Option<String>,
    /// Where to save a picture of the dashboard's timelines once the demo is over.
    history_screenshot: Option<String>,
    started: Instant,
    log_seen: usize,
    /// Latencies of answers from the upstream: successes, and failures.
    upstream_ok: Vec<Duration>,
    upstream_failed: Vec<Duration>,
    /// Latencies of the breaker's own refusals.
    refused: Vec<Duration>,
}

fn run() -> Result<()> {
    println!(
        "envoy-circuit-breaker demo: Envoy 1.40 with the breaker in front of the school system"
    );
    let (stack, at, token) = if std::env::args().any(|a| a == "--running") {
        let (at, token) = running()?;
        (None, at, token)
    } else {
        let (stack, at, token) = start()?;
        (Some(stack), at, token)
    };
    println!(
        "  gateway {}  control API {}  envoy admin {}",
        at.gateway, at.control, at.admin
    );
    println!("  envoy log {}", at.envoy_log.display());
    println!("  demo settings (envoy/demo-plugin.json): school and auth open after 5 consecutive");
    println!("  failures for 8s; student after 3 for 6s, with 2 probes that must both succeed.");
    let mut demo = Demo {
        _stack: stack,
        at,
        token,
        screenshot: school_system::arg("--screenshot"),
        history_screenshot: school_system::arg("--history-screenshot"),
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
    demo.operator()?;
    if let Some(path) = demo.history_screenshot.clone() {
        demo.take_screenshot("#breaker=school", &path)?;
    }
    demo.summary()
}

/// Starts the services and Envoy on free ports with the demo's settings.
fn start() -> Result<(Stack, Endpoints, String)> {
    let plugin = std::fs::read_to_string(root().join("envoy/demo-plugin.json"))
        .map_err(|e| format!("cannot read envoy/demo-plugin.json: {e}"))?;
    println!("  starting the auth, school and student services and Envoy (2 workers)...");
    let token = demo_token();
    let mut stack = Stack::start_with_env(
        Some(&plugin),
        2,
        &[("CIRCUIT_BREAKER_ADMIN_TOKEN", token.as_str())],
        |y| y,
    )?;
    stack.envoy.keep_files = true;
    let at = Endpoints {
        gateway: stack.envoy.gateway.clone(),
        control: stack
            .envoy
            .control
            .clone()
            .ok_or("the sample config has no control listener")?,
        admin: stack.envoy.admin.clone(),
        auth: stack.auth.addr.clone(),
        school: stack.school.addr.clone(),
        student: stack.student.addr.clone(),
        envoy_log: stack.envoy.log_path.clone(),
    };
    Ok((stack, at, token))
}

/// A stack that is already up: the compose stack's published ports unless a flag says
/// otherwise (`--gateway`, `--control`, `--admin`, `--auth`, `--school`, `--student`), the
/// file its Envoy logs to (`--envoy-log`), and the admin token it was started with
/// (`$CIRCUIT_BREAKER_ADMIN_TOKEN`). Waits up to a minute for it to answer.
fn running() -> Result<(Endpoints, String)> {
    let flag = |name: &str, default: &str| school_system::arg(name).unwrap_or(default.into());
    let at = Endpoints {
        gateway: flag("--gateway", "127.0.0.1:10000"),
        control: flag("--control", "127.0.0.1:9902"),
        admin: flag("--admin", "127.0.0.1:9901"),
        auth: flag("--auth", "127.0.0.1:8081"),
        school: flag("--school", "127.0.0.1:8082"),
        student: flag("--student", "127.0.0.1:8083"),
        envoy_log: PathBuf::from(
            school_system::arg("--envoy-log").ok_or("--running needs --envoy-log FILE")?,
        ),
    };
    let token = std::env::var("CIRCUIT_BREAKER_ADMIN_TOKEN").unwrap_or_default();
    if token.is_empty() {
        return Err("--running needs the stack's CIRCUIT_BREAKER_ADMIN_TOKEN".into());
    }
    println!("  playing against the running stack; waiting for it to answer...");
    let answers = |addr: &str, path: &str| {
        client::get(addr, path)
            .map(|r| r.status == 200)
            .unwrap_or(false)
    };
    stack::poll(Duration::from_secs(60), || {
        let up = answers(&at.gateway, "/students")
            && answers(&at.control, "/health")
            && answers(&at.school, "/health");
        up.then_some(())
    })
    .ok_or("the running stack did not answer within 60s")?;
    Ok((at, token))
}

/// Sets a service's fault switch (seed 003's `POST /simulate/failure`).
fn set_faults(addr: &str, body: &Value) -> Result<()> {
    let r = client::post_json(addr, "/simulate/failure", body).map_err(|e| e.to_string())?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!("fault switch said {}: {}", r.status, r.text()))
    }
}

/// API requests a service has received.
fn requests_of(addr: &str) -> Result<u64> {
    let r = client::get(addr, "/stats").map_err(|e| e.to_string())?;
    r.json().map_err(|e| e.to_string())?["data"]["requests"]
        .as_u64()
        .ok_or_else(|| format!("unexpected /stats answer {}", r.text()))
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
            &self.at.gateway,
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
        let state = self.state_of(cluster);
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
        let log = std::fs::read_to_string(&self.at.envoy_log).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("[CIRCUIT_BREAKER]"))
            .collect();
        for line in lines.iter().skip(self.log_seen) {
            let text = line.split("[CIRCUIT_BREAKER]").nth(1).unwrap_or(line);
            println!("   >>> breaker log: [CIRCUIT_BREAKER]{text}");
        }
        self.log_seen = lines.len();
    }

    fn faults(&self, service: &str, body: Value) -> Result<()> {
        let addr = match service {
            "auth" => &self.at.auth,
            "school" => &self.at.school,
            _ => &self.at.student,
        };
        println!(
            "   {:>6.1}s  fault switch: POST {addr}/simulate/failure {body}",
            self.started.elapsed().as_secs_f64(),
        );
        set_faults(addr, &body)
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
            "2. Failures injected",
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
            "3. The school service goes down, and slow",
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
        while self.state_of("school") == "closed" && sent < 8 {
            self.send("school", "GET", "/schools", None)?;
            sent += 1;
        }
        for _ in 0..3 {
            self.send("school", "GET", "/schools", None)?;
        }
        self.show_view("school")?;
        if let Some(path) = self.screenshot.clone() {
            self.take_screenshot("", &path)?;
        }
        Ok(())
    }

    /// Prints what the control API says about one breaker.
    fn show_view(&self, cluster: &str) -> Result<()> {
        let v = self.view(cluster)?;
        println!(
            "   control API: GET /circuit-breakers/{cluster} -> state {}, reason {}, half-open in {}s, failures {}/{} in the window",
            v["state"], v["reason"], v["seconds_to_half_open"], v["counts"]["failures"], v["counts"]["calls"]
        );
        Ok(())
    }

    fn view(&self, cluster: &str) -> Result<Value> {
        let r = client::get(&self.at.control, &format!("/circuit-breakers/{cluster}"))
            .map_err(|e| format!("control API: {e}"))?;
        r.json().map_err(|e| format!("control API: {e}"))
    }

    /// The breaker's state as the control API shows it now.
    fn state_of(&self, cluster: &str) -> String {
        match self.view(cluster) {
            Ok(v) if v["recovering"] == true => "recovering".into(),
            Ok(v) => match v["state"].as_str() {
                Some("open") => "OPEN".into(),
                Some("half_open") => "HALF_OPEN".into(),
                Some(other) => other.into(),
                None => "?".into(),
            },
            Err(_) => "?".into(),
        }
    }

    /// A picture of the dashboard (`fragment`: `#breaker=NAME` for one breaker's view).
    fn take_screenshot(&self, fragment: &str, path: &str) -> Result<()> {
        let url = format!(
            "http://{}/circuit-breakers/dashboard{fragment}",
            self.at.control
        );
        let browser = stack::chromium().ok_or("chromium is not installed")?;
        let profile = stack::scratch_dir().map_err(|e| e.to_string())?;
        let out = stack::headless_chromium(&browser, &profile)
            .args([
                "--hide-scrollbars",
                "--window-size=1280,800",
                "--virtual-time-budget=4000",
            ])
            .arg(format!("--screenshot={path}"))
            .arg(&url)
            .output()
            .map_err(|e| format!("chromium: {e}"))?;
        let _ = std::fs::remove_dir_all(profile);
        if !out.status.success() {
            return Err(format!(
                "chromium failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        println!("   dashboard screenshot saved to {path}");
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
            "5. Recovery",
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
        let before = requests_of(&self.at.student)?;
        let gateway = self.at.gateway.clone();
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
        let reached = requests_of(&self.at.student)?.saturating_sub(before);
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

    fn operator(&mut self) -> Result<()> {
        self.step(
            "7. An operator steps in through the control API",
            "forcing the auth breaker open for maintenance, then handing it back; every worker obeys at once",
        );
        self.change(
            "PUT",
            "/circuit-breakers/auth/mode",
            Some(json!({"mode": "forced_open"})),
        )?;
        let login = json!({"email": "test@example.com", "password": "test123"});
        self.send("auth", "POST", "/auth/login", Some(login.clone()))?;
        self.change(
            "PUT",
            "/circuit-breakers/auth/mode",
            Some(json!({"mode": null})),
        )?;
        self.change("POST", "/circuit-breakers/auth/reset", None)?;
        self.send("auth", "POST", "/auth/login", Some(login))?;
        Ok(())
    }

    fn change(&mut self, method: &str, path: &str, body: Option<Value>) -> Result<()> {
        let auth = format!("Bearer {}", self.token);
        let bytes = body.as_ref().map(|b| b.to_string().into_bytes());
        let r = client::request(
            method,
            &self.at.control,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            bytes.as_deref(),
            Duration::from_secs(5),
        )
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let shown = body.map(|b| format!(" {b}")).unwrap_or_default();
        let v = r.json().unwrap_or(Value::Null);
        println!(
            "   {:>6.1}s  control API: {method} {path}{shown} -> {} (state {}, mode {})",
            self.started.elapsed().as_secs_f64(),
            r.status,
            v["state"].as_str().unwrap_or("-"),
            v["mode"].as_str().unwrap_or("-")
        );
        std::thread::sleep(Duration::from_millis(60));
        self.show_breaker_log();
        Ok(())
    }

    fn summary(&mut self) -> Result<()> {
        println!("\n== Summary");
        std::thread::sleep(Duration::from_millis(250));
        let metrics = client::get(&self.at.admin, "/stats/prometheus")
            .map(|r| r.text())
            .map_err(|e| format!("envoy admin: {e}"))?;
        for cluster in ["auth", "school", "student"] {
            let count = |outcome: &str| {
                stack::counter_in(
                    &metrics,
                    "circuit_breaker_requests_total",
                    &[("cluster", cluster), ("outcome", outcome)],
                )
            };
            let trips = stack::counter_in(
                &metrics,
                "circuit_breaker_trips_total",
                &[("cluster", cluster)],
            );
            println!(
                "   {cluster:<8} {:>3} succeeded  {:>3} failed  {:>3} refused by the breaker  {trips} trip(s)  now {}",
                count("success"),
                count("failure"),
                count("rejected"),
                self.state_of(cluster)
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
        println!(
            "\n   Where to look next (this stack stops with the demo; `make run` keeps one up):"
        );
        println!(
            "   - metrics:     curl -s 127.0.0.1:9901/stats/prometheus | grep circuit_breaker_"
        );
        println!("   - control API: curl -s 127.0.0.1:9902/health ; curl -s 127.0.0.1:9902/circuit-breakers");
        println!("   - dashboard:   http://127.0.0.1:9902/circuit-breakers/dashboard");
        println!("   - faults:      curl -XPOST 127.0.0.1:8082/simulate/failure -d '{{\"is_healthy\": false}}'");
        println!(
            "   - this run's Envoy log: grep CIRCUIT_BREAKER {}",
            self.at.envoy_log.display()
        );
        Ok(())
    }
}

/// A token for this run's control API, different every run.
fn demo_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("demo-{:x}-{:x}", nanos, std::process::id())
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
