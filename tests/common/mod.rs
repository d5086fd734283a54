//! The integration harness: the real Envoy from the virtualenv, loaded with the built
//! `.wasm` and the sample config (ports rewritten to free ones), in front of the real
//! school-system services. Every process is killed when its handle drops.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use school_system::client::{self, Response};
use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$ENVOY_BIN`, or the one `make` installs into `.venv`.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/envoy"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ecb-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Like [`wait_for`], but gives back `None` instead of panicking.
pub fn wait_for_or<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One of the school-system services, running.
pub struct Service {
    child: Child,
    pub addr: String,
}

impl Service {
    /// Starts `target/release/<bin>` on a free port.
    pub fn start(bin: &str, extra: &[&str]) -> Service {
        let path = root().join("target/release").join(bin);
        let mut child = Command::new(&path)
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (run `make build`)", path.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{bin} said {line:?}");
        Service { child, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Sets the fault switch (seed 003's `POST /simulate/failure`).
    pub fn faults(&self, json: Value) {
        let r = client::post_json(&self.addr, "/simulate/failure", &json).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    pub fn fail_everything(&self) {
        self.faults(serde_json::json!({"is_healthy": false}));
    }

    pub fn heal(&self) {
        self.faults(serde_json::json!({"is_healthy": true, "failure_rate": 0.0}));
    }

    /// API requests this service has received.
    pub fn requests(&self) -> u64 {
        let r = client::get(&self.addr, "/stats").unwrap();
        r.json().unwrap()["data"]["requests"].as_u64().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    /// The gateway listener, `127.0.0.1:port`.
    pub gateway: String,
    pub admin: String,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
}

impl Envoy {
    /// Starts Envoy with `yaml` and `workers` worker threads and waits until it serves.
    pub fn start(yaml: &str, workers: u32) -> Result<Envoy, String> {
        let dir = scratch_dir();
        let config_path = dir.join("envoy.yaml");
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin.txt");
        std::fs::write(&config_path, yaml).unwrap();
        let gateway = gateway_of(yaml);
        let mut child = Command::new(envoy_bin())
            .current_dir(root())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &workers.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"])
            .args(["--file-flush-interval-msec", "50"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start envoy: {e} (run `make test` to install it)"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("envoy exited with {status}:\n{log}"));
            }
            let admin = std::fs::read_to_string(&admin_path).unwrap_or_default();
            if !admin.trim().is_empty() {
                let ready = client::get(admin.trim(), "/ready")
                    .map(|r| r.status == 200)
                    .unwrap_or(false);
                if ready && TcpStream::connect(&gateway).is_ok() {
                    return Ok(Envoy {
                        child,
                        gateway,
                        admin: admin.trim().to_string(),
                        log_path,
                        config_path,
                    });
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("envoy did not become ready:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        client::get(&self.gateway, path).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Lines of Envoy's log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits until exactly `n` log lines contain `needle` and stay that many, and returns
    /// them: log lines reach the file a little after they are written.
    pub fn wait_log(&self, needle: &str, n: usize) -> Vec<String> {
        wait_for(
            &format!("{n} log line(s) with {needle:?}"),
            Duration::from_secs(5),
            || (self.log_lines(needle).len() >= n).then_some(()),
        );
        std::thread::sleep(Duration::from_millis(300));
        let lines = self.log_lines(needle);
        assert_eq!(lines.len(), n, "{lines:#?}");
        lines
    }

    /// Waits until a counter (see [`Envoy::counter`]) reaches `expected`; stats are
    /// published on the filter's timer.
    pub fn wait_counter(&self, metric: &str, labels: &[(&str, &str)], expected: u64) {
        let mut last = 0;
        let found = wait_for_or(Duration::from_secs(5), || {
            last = self.counter(metric, labels);
            (last == expected).then_some(())
        });
        assert!(
            found.is_some(),
            "{metric}{labels:?} stayed at {last}, expected {expected}"
        );
    }

    pub fn prometheus(&self) -> String {
        client::get(&self.admin, "/stats/prometheus")
            .unwrap()
            .text()
    }

    /// The value of one Prometheus sample, such as
    /// `circuit_breaker_state{cluster="school"}`; labels must be in Envoy's order.
    pub fn sample(&self, series: &str) -> Option<f64> {
        self.prometheus()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// The sum of a counter over its series whose labels include every `labels` pair.
    pub fn counter(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        self.prometheus()
            .lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn gateway_of(yaml: &str) -> String {
    let marker = "name: gateway";
    let at = yaml.find(marker).expect("a listener named gateway");
    let port_at = yaml[at..].find("port_value:").unwrap() + at + "port_value:".len();
    let port: String = yaml[port_at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    format!("127.0.0.1:{port}")
}

/// The sample config `envoy/envoy.yaml`, as shipped.
pub fn sample_yaml() -> String {
    std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap()
}

/// Rewrites the sample's fixed ports: `from` becomes `to` wherever it is a port_value.
pub fn with_port(yaml: &str, from: u16, to: u16) -> String {
    yaml.replace(
        &format!("port_value: {from} "),
        &format!("port_value: {to} "),
    )
    .replace(
        &format!("port_value: {from}\n"),
        &format!("port_value: {to}\n"),
    )
}

/// Replaces the plugin JSON of the (first) breaker filter in `yaml`.
pub fn with_plugin_json(yaml: &str, json: &str) -> String {
    let anchor = yaml
        .find("type.googleapis.com/google.protobuf.StringValue")
        .expect("a plugin configuration");
    let value_at = yaml[anchor..].find("value: |").unwrap() + anchor;
    let line_start = yaml[..value_at].rfind('\n').unwrap() + 1;
    let indent = value_at - line_start + 2;
    let body_start = yaml[value_at..].find('\n').unwrap() + value_at + 1;
    let mut body_end = body_start;
    for line in yaml[body_start..].split_inclusive('\n') {
        let leading = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && leading < indent {
            break;
        }
        body_end += line.len();
    }
    let pad = " ".repeat(indent);
    let block: String = json.lines().map(|l| format!("{pad}{l}\n")).collect();
    format!("{}{}{}", &yaml[..body_start], block, &yaml[body_end..])
}

/// The three services and an Envoy in front of them, built from the sample config.
pub struct Stack {
    pub envoy: Envoy,
    pub auth: Service,
    pub school: Service,
    pub student: Service,
}

impl Stack {
    /// The sample stack with `plugin_json` (or the sample's own JSON) and `workers` workers.
    pub fn start(plugin_json: Option<&str>, workers: u32) -> Stack {
        Stack::start_with(plugin_json, workers, |y| y)
    }

    /// Like [`Stack::start`], with a last edit of the YAML.
    pub fn start_with(
        plugin_json: Option<&str>,
        workers: u32,
        edit: impl FnOnce(String) -> String,
    ) -> Stack {
        let gateway_port = free_port();
        let gateway = format!("127.0.0.1:{gateway_port}");
        let auth = Service::start("auth-service", &[]);
        let school = Service::start("school-service", &[]);
        let student = Service::start("student-service", &["--gateway", &gateway]);
        let mut yaml = sample_yaml();
        yaml = with_port(&yaml, 10000, gateway_port);
        yaml = with_port(&yaml, 9901, 0);
        yaml = with_port(&yaml, 8081, auth.port());
        yaml = with_port(&yaml, 8082, school.port());
        yaml = with_port(&yaml, 8083, student.port());
        if let Some(json) = plugin_json {
            yaml = with_plugin_json(&yaml, json);
        }
        yaml = edit(yaml);
        let envoy = Envoy::start(&yaml, workers).unwrap_or_else(|e| panic!("{e}"));
        Stack {
            envoy,
            auth,
            school,
            student,
        }
    }
}

/// Sends `n` requests at once, each on its own connection, and returns the responses.
pub fn burst(addr: &str, path: &str, n: usize) -> Vec<Response> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    client::request("GET", addr, path, &[], None, Duration::from_secs(20)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Whether a response is the breaker's own refusal.
pub fn is_rejection(r: &Response) -> bool {
    r.status == 503
        && r.json()
            .map(|j| j["error"] == "CIRCUIT_BREAKER_OPEN")
            .unwrap_or(false)
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
