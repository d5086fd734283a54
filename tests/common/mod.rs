//! Test-only helpers on top of `school_system::stack`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fleet;
pub mod pool;

use std::time::Duration;

use serde_json::{json, Value};

pub use school_system::client::{self, Response};
pub use school_system::stack::*;

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(timeout, check).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Test shorthands on a service.
pub trait ServiceExt {
    fn set_faults(&self, json: Value);
    fn fail_everything(&self);
    fn heal(&self);
    /// Healthy again, but every answer takes `ms`: a probe is then in flight a while.
    fn heal_slowly(&self, ms: u64);
    fn hits(&self) -> u64;
}

impl ServiceExt for Service {
    fn set_faults(&self, json: Value) {
        self.faults(&json).unwrap();
    }
    fn fail_everything(&self) {
        self.set_faults(json!({"is_healthy": false}));
    }
    fn heal(&self) {
        self.set_faults(json!({"is_healthy": true, "failure_rate": 0.0}));
    }
    fn heal_slowly(&self, ms: u64) {
        self.set_faults(json!({"is_healthy": true, "response_time_ms": ms}));
    }
    fn hits(&self) -> u64 {
        self.requests().unwrap()
    }
}

/// Test shorthands on Envoy.
pub trait EnvoyExt {
    fn call(&self, path: &str) -> Response;
    fn metrics(&self) -> String;
    fn wait_log(&self, needle: &str, n: usize) -> Vec<String>;
    fn wait_counter(&self, metric: &str, labels: &[(&str, &str)], expected: u64);
}

impl EnvoyExt for Envoy {
    fn call(&self, path: &str) -> Response {
        self.get(path).unwrap()
    }

    fn metrics(&self) -> String {
        self.prometheus().unwrap()
    }

    /// Waits until exactly `n` log lines contain `needle` and stay that many: log lines
    /// reach the file a little after they are written.
    fn wait_log(&self, needle: &str, n: usize) -> Vec<String> {
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

    /// Waits until a counter reaches `expected`; stats are published on the filter's timer.
    fn wait_counter(&self, metric: &str, labels: &[(&str, &str)], expected: u64) {
        let mut last = 0;
        let found = poll(Duration::from_secs(5), || {
            last = self.counter(metric, labels);
            (last == expected).then_some(())
        });
        assert!(
            found.is_some(),
            "{metric}{labels:?} stayed at {last}, expected {expected}"
        );
    }
}

/// The sample stack with `plugin_json` (or the sample's own) and `workers` workers.
pub fn stack(plugin_json: Option<&str>, workers: u32) -> Stack {
    Stack::start(plugin_json, workers, |y| y).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`stack`], with a last edit of the YAML.
pub fn stack_with(
    plugin_json: Option<&str>,
    workers: u32,
    edit: impl FnOnce(String) -> String,
) -> Stack {
    Stack::start(plugin_json, workers, edit).unwrap_or_else(|e| panic!("{e}"))
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

/// Five upstream failures through `envoy` (the sample's school breaker trips at five),
/// each the upstream's own 503, then the breaker's refusal.
pub fn trip_through(envoy: &Envoy, stack: &Stack) {
    stack.school.fail_everything();
    for _ in 0..5 {
        let r = envoy.call("/schools");
        assert_eq!(r.status, 503);
        assert!(!is_rejection(&r), "the upstream's own 503s come first");
    }
    assert!(is_rejection(&envoy.call("/schools")));
}

/// [`trip_through`] the stack's own Envoy.
pub fn trip_school(stack: &Stack) {
    trip_through(&stack.envoy, stack);
}

/// Runs `command` with `input` on its standard input and waits for it to end.
pub fn run_with_input(command: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Whether a response is the breaker's refusal while forced open.
pub fn is_forced_refusal(r: &Response) -> bool {
    is_rejection(r) && r.json().is_ok_and(|j| j["reason"] == "forced")
}

/// Inserts routes (YAML list items at the sample's route indentation) before `/auth`.
pub fn add_routes(yaml: &str, routes: &str) -> String {
    let anchor = "              - match: { prefix: \"/auth\" }";
    assert!(yaml.contains(anchor), "the sample's /auth route moved");
    yaml.replacen(anchor, &format!("{routes}{anchor}"), 1)
}

/// Appends clusters (YAML list items at the sample's cluster indentation).
pub fn add_clusters(yaml: &str, clusters: &str) -> String {
    assert!(
        yaml.trim_end().ends_with('}'),
        "the sample no longer ends with its clusters"
    );
    format!("{}\n{clusters}", yaml.trim_end())
}

/// An HTTP/1.1 cluster named `name` pointing at `port` on loopback.
pub fn static_cluster(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
    )
}

/// An HTTP/2 cluster named `name` pointing at `port`.
pub fn h2_cluster(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"
    )
}

/// The Python in the virtualenv `make` sets up (it has grpcio for the gRPC peer).
pub fn venv_python() -> std::path::PathBuf {
    root().join(".venv/bin/python")
}

/// The real gRPC peer of `tests/grpc/school_grpc.py`, running.
pub struct GrpcSchool {
    child: std::process::Child,
    pub addr: String,
}

impl GrpcSchool {
    pub fn start() -> GrpcSchool {
        use std::io::BufRead;
        let mut child = std::process::Command::new(venv_python())
            .arg(root().join("tests/grpc/school_grpc.py"))
            .arg("serve")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python from .venv (run `make test`)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{line:?}");
        GrpcSchool { child, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Calls that reached this server.
    pub fn served(&self) -> u64 {
        let out = std::process::Command::new(venv_python())
            .arg(root().join("tests/grpc/school_grpc.py"))
            .args(["count", &self.addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for GrpcSchool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `n` gRPC calls to `addr` with `payload`; one JSON object per call.
pub fn grpc_calls(addr: &str, payload: &str, n: usize) -> Vec<Value> {
    let out = std::process::Command::new(venv_python())
        .arg(root().join("tests/grpc/school_grpc.py"))
        .args(["call", addr, payload, &n.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sends `n` GETs one after another and returns the responses.
pub fn calls(envoy: &Envoy, path: &str, n: usize) -> Vec<Response> {
    (0..n).map(|_| envoy.call(path)).collect()
}

/// Points the endpoint of cluster `name` at `port`.
pub fn point_cluster(yaml: &str, name: &str, port: u16) -> String {
    let at = yaml
        .find(&format!("cluster_name: {name}\n"))
        .unwrap_or_else(|| panic!("no cluster {name}"));
    let value_at = yaml[at..].find("port_value: ").unwrap() + at + "port_value: ".len();
    let digits = yaml[value_at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .count();
    format!("{}{port}{}", &yaml[..value_at], &yaml[value_at + digits..])
}

/// The admin token the control tests hand to Envoy.
pub const TOKEN: &str = "test-token-7f3a";

/// The sample stack with the control API's admin token set.
pub fn stack_with_token(plugin_json: Option<&str>, workers: u32) -> Stack {
    Stack::start_with_env(
        plugin_json,
        workers,
        &[("CIRCUIT_BREAKER_ADMIN_TOKEN", TOKEN)],
        |y| y,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A control API request; `token` becomes `Authorization: Bearer <token>`.
pub fn api(
    envoy: &Envoy,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    let control = envoy.control.clone().expect("a control listener");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    client::request(
        method,
        &control,
        path,
        &headers,
        body.map(str::as_bytes),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// Loads `url` in headless Chromium, lets its scripts run for `budget_ms` of virtual
/// time, and returns the resulting DOM.
pub fn browser_dom(url: &str, budget_ms: u32) -> String {
    let browser = chromium().expect("chromium (make test installs it)");
    let profile = scratch_dir().unwrap();
    let out = headless_chromium(&browser, &profile)
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
