//! Starting the sample stack from a program: the services on free ports and the real
//! Envoy with the sample config rewritten to match. The integration tests, the demo and
//! the benchmark all use it; every process is killed when its handle drops.

use std::io::{self, BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, Response};

/// The repository root: `$ECB_ROOT`, or two levels above this crate.
pub fn root() -> PathBuf {
    std::env::var_os("ECB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The Envoy binary: `$ENVOY_BIN`, or the one `make` links into `.venv`.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/envoy"))
}

/// A loopback port nobody listens on right now, for a listener to be started a moment later.
/// It comes from below the kernel's ephemeral range: a port from inside it (what binding
/// port 0 gives) can be taken in that moment by any outgoing connection, and the tests make
/// thousands.
pub fn free_port() -> io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral_low.clamp(10_001, 65_535));
    // Spread processes apart (the pid) and calls within one apart (a counter).
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..200 {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
        let Ok(port) = u16::try_from(low + n % (high - low)) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free loopback port found in {low}..{high} after 200 tries"),
    ))
}

/// Whether a response is the breaker's own refusal (its default JSON 503).
pub fn is_rejection(r: &Response) -> bool {
    r.status == 503
        && r.json()
            .map(|j| j["error"] == "CIRCUIT_BREAKER_OPEN")
            .unwrap_or(false)
}

/// Resident memory of process `pid` in KiB (`VmRSS`), if it can be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Chromium, as Debian installs it, if it is there.
pub fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A headless Chromium command with a throw-away profile in `profile` and nothing that
/// reaches beyond loopback; the caller adds what to do (`--dump-dom`, `--screenshot`) and
/// the URL.
pub fn headless_chromium(browser: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// A fresh directory for one process's config and logs.
pub fn scratch_dir() -> io::Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ecb-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Polls `check` every 25 ms until it returns `Some`, or gives `None` after `timeout`.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
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

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// One of the school-system services, running.
pub struct Service {
    child: Child,
    pub addr: String,
}

impl Service {
    /// Starts `target/release/<bin>` on a free port.
    pub fn start(bin: &str, extra: &[&str]) -> io::Result<Service> {
        let path = root().join("target/release").join(bin);
        let mut child = Command::new(&path)
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                other(format!(
                    "cannot start {}: {e} (run `make build`)",
                    path.display()
                ))
            })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        if !addr.starts_with("127.0.0.1:") {
            let _ = child.kill();
            return Err(other(format!("{bin} said {line:?}")));
        }
        Ok(Service { child, addr })
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Sets the fault switch (seed 003's `POST /simulate/failure`).
    pub fn faults(&self, json: &Value) -> io::Result<()> {
        let r = client::post_json(&self.addr, "/simulate/failure", json)?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(other(format!(
                "fault switch said {}: {}",
                r.status,
                r.text()
            )))
        }
    }

    /// API requests this service has received.
    pub fn requests(&self) -> io::Result<u64> {
        let r = client::get(&self.addr, "/stats")?;
        r.json()?["data"]["requests"]
            .as_u64()
            .ok_or_else(|| other(format!("unexpected /stats answer {}", r.text())))
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
    /// The Docker container it runs in, under `$ENVOY_DOCKER_IMAGE`.
    container: Option<ContainerName>,
    /// The gateway listener, `127.0.0.1:port`.
    pub gateway: String,
    /// The control API listener, if the config has one.
    pub control: Option<String>,
    pub admin: String,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    /// Keep the config and log when dropped (always kept if a test is failing).
    pub keep_files: bool,
}

impl Envoy {
    /// Starts Envoy with `yaml` and `workers` worker threads and waits until it serves.
    /// A refusal comes back as an error holding Envoy's log.
    pub fn start(yaml: &str, workers: u32) -> Result<Envoy, String> {
        Envoy::start_with_env(yaml, workers, &[])
    }

    /// Like [`Envoy::start`], with extra environment variables for the Envoy process.
    pub fn start_with_env(yaml: &str, workers: u32, env: &[(&str, &str)]) -> Result<Envoy, String> {
        let gateway = listener_of(yaml, "gateway").ok_or("no listener named gateway")?;
        Envoy::start_serving(yaml, workers, env, gateway)
    }

    /// Starts Envoy and waits until `gateway` (`host:port`) accepts connections: for
    /// configs whose listeners come from elsewhere (a watched LDS file).
    pub fn start_serving(
        yaml: &str,
        workers: u32,
        env: &[(&str, &str)],
        gateway: String,
    ) -> Result<Envoy, String> {
        let dir = scratch_dir().map_err(|e| e.to_string())?;
        let config_path = dir.join("envoy.yaml");
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin.txt");
        std::fs::write(&config_path, yaml).map_err(|e| e.to_string())?;
        let control = listener_of(yaml, "control");
        let (mut command, container) = envoy_command(&dir, env)?;
        let mut child = command
            .current_dir(root())
            .env_remove("CIRCUIT_BREAKER_ADMIN_TOKEN")
            .envs(env.iter().copied())
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
            .map_err(|e| match &container {
                Some(_) => format!("cannot start docker: {e} (run `make test-docker`)"),
                None => format!("cannot start envoy: {e} (run `make envoy` to install it)"),
            })?;
        let mut container = container.map(ContainerName);
        let read_log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "envoy exited with {status}:\n{}",
                    read_log(&log_path)
                ));
            }
            let admin = std::fs::read_to_string(&admin_path).unwrap_or_default();
            let admin = admin.trim();
            if !admin.is_empty() {
                let ready = client::get(admin, "/ready")
                    .map(|r| r.status == 200)
                    .unwrap_or(false);
                if ready && TcpStream::connect(&gateway).is_ok() {
                    return Ok(Envoy {
                        child,
                        container: container.take(),
                        gateway,
                        control,
                        admin: admin.to_string(),
                        log_path,
                        config_path,
                        keep_files: false,
                    });
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "envoy did not become ready:\n{}",
                    read_log(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, path: &str) -> io::Result<Response> {
        client::get(&self.gateway, path)
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

    pub fn prometheus(&self) -> io::Result<String> {
        Ok(client::get(&self.admin, "/stats/prometheus")?.text())
    }

    /// The value of one Prometheus sample, such as `circuit_breaker_state{cluster="school"}`.
    pub fn sample(&self, series: &str) -> Option<f64> {
        self.prometheus()
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// The sum of a counter over its series whose labels include every `labels` pair.
    pub fn counter(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        counter_in(&self.prometheus().unwrap_or_default(), metric, labels)
    }

    /// Envoy's process id: in a container, as the host sees it.
    pub fn pid(&self) -> u32 {
        self.container
            .as_ref()
            .and_then(ContainerName::pid)
            .unwrap_or_else(|| self.child.id())
    }

    pub fn kill(&mut self) {
        // Dropping the container's name removes the container.
        drop(self.container.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy image to run instead of the binary, from `$ENVOY_DOCKER_IMAGE` (such as
/// `envoyproxy/envoy:v1.40.0`), for users with Docker and no Python.
pub fn envoy_image() -> Option<String> {
    std::env::var("ENVOY_DOCKER_IMAGE")
        .ok()
        .filter(|i| !i.trim().is_empty())
}

/// The command that starts Envoy, and the container's name when it runs in one. In a
/// container it runs on the host's network, as the calling user, with the repository and
/// `dir` mounted at their own paths, so every path and port in a config means the same as
/// for the binary; `env`'s variables are passed through by name.
fn envoy_command(dir: &Path, env: &[(&str, &str)]) -> Result<(Command, Option<String>), String> {
    let Some(image) = envoy_image() else {
        return Ok((Command::new(envoy_bin()), None));
    };
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !present.success() {
        return Err(format!(
            "no image {image} (or no Docker engine): `make test-docker` provides both"
        ));
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "ecb-envoy-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let repo = root()
        .canonicalize()
        .map_err(|e| format!("repository root: {e}"))?;
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--name", &name, "--network", "host"])
        // As the caller, so its files stay the caller's; ENVOY_UID=0 keeps the image's
        // entrypoint from switching to its own user when the caller is root.
        .args(["--user", &caller_ids(), "-e", "ENVOY_UID=0"])
        .arg("-v")
        .arg(format!("{0}:{0}:ro", repo.display()))
        .arg("-v")
        .arg(format!("{0}:{0}", dir.display()))
        .arg("-w")
        .arg(&repo);
    for (key, _) in env {
        cmd.args(["-e", key]);
    }
    cmd.arg(image).arg("envoy");
    Ok((cmd, Some(name)))
}

/// `uid:gid` of this process, so files Envoy writes in a container stay the caller's.
fn caller_ids() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let id = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("0")
            .to_string()
    };
    format!("{}:{}", id("Uid:"), id("Gid:"))
}

/// A container started for one Envoy; removed when that Envoy is killed or dropped, and
/// when a start fails (killing the `docker run` client would leave it running).
struct ContainerName(String);

impl ContainerName {
    fn pid(&self) -> Option<u32> {
        let out = Command::new("docker")
            .args(["inspect", "--format", "{{.State.Pid}}", &self.0])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

impl Drop for ContainerName {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("envoy log kept: {}", self.log_path.display());
        } else if !self.keep_files {
            if let Some(dir) = self.log_path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// The sum of a counter in Prometheus text over its series whose labels include every
/// `labels` pair.
pub fn counter_in(text: &str, metric: &str, labels: &[(&str, &str)]) -> u64 {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `127.0.0.1:<port>` of the listener called `name` in an Envoy config.
pub fn listener_of(yaml: &str, name: &str) -> Option<String> {
    let at = yaml.find(&format!("name: {name}\n"))?;
    let port_at = yaml[at..].find("port_value:")? + at + "port_value:".len();
    let port: String = yaml[port_at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(format!("127.0.0.1:{port}"))
}

/// The sample config `envoy/envoy.yaml`, as shipped.
pub fn sample_yaml() -> io::Result<String> {
    std::fs::read_to_string(root().join("envoy/envoy.yaml"))
}

/// Rewrites one of the sample's fixed ports wherever it is a `port_value`.
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

/// Replaces the plugin JSON of the first breaker filter in `yaml`.
pub fn with_plugin_json(yaml: &str, json: &str) -> Option<String> {
    let (body_start, body_end, indent) = plugin_json_span(yaml)?;
    let pad = " ".repeat(indent);
    let block: String = json.lines().map(|l| format!("{pad}{l}\n")).collect();
    Some(format!(
        "{}{}{}",
        &yaml[..body_start],
        block,
        &yaml[body_end..]
    ))
}

/// The plugin JSON of the first breaker filter in `yaml`, unindented.
pub fn plugin_json_of(yaml: &str) -> Option<String> {
    let (body_start, body_end, indent) = plugin_json_span(yaml)?;
    Some(
        yaml[body_start..body_end]
            .lines()
            .map(|l| format!("{}\n", l.get(indent..).unwrap_or("").trim_end()))
            .collect(),
    )
}

/// Where the plugin JSON's block scalar lies in `yaml`: its first byte, the byte after it,
/// and its indent.
fn plugin_json_span(yaml: &str) -> Option<(usize, usize, usize)> {
    let anchor = yaml.find("type.googleapis.com/google.protobuf.StringValue")?;
    let value_at = yaml[anchor..].find("value: |")? + anchor;
    let line_start = yaml[..value_at].rfind('\n')? + 1;
    let indent = value_at - line_start + 2;
    let body_start = yaml[value_at..].find('\n')? + value_at + 1;
    let mut body_end = body_start;
    for line in yaml[body_start..].split_inclusive('\n') {
        let leading = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && leading < indent {
            break;
        }
        body_end += line.len();
    }
    Some((body_start, body_end, indent))
}

/// The three services and an Envoy in front of them, built from the sample config.
pub struct Stack {
    pub envoy: Envoy,
    pub auth: Service,
    pub school: Service,
    pub student: Service,
}

impl Stack {
    /// The sample stack with `plugin_json` (or the sample's own), `workers` workers, and
    /// a last `edit` of the YAML.
    pub fn start(
        plugin_json: Option<&str>,
        workers: u32,
        edit: impl FnOnce(String) -> String,
    ) -> Result<Stack, String> {
        Stack::start_with_env(plugin_json, workers, &[], edit)
    }

    /// Like [`Stack::start`], with extra environment variables for Envoy (such as the
    /// control API's admin token).
    pub fn start_with_env(
        plugin_json: Option<&str>,
        workers: u32,
        env: &[(&str, &str)],
        edit: impl FnOnce(String) -> String,
    ) -> Result<Stack, String> {
        let err = |e: io::Error| e.to_string();
        let gateway_port = free_port().map_err(err)?;
        let gateway = format!("127.0.0.1:{gateway_port}");
        let auth = Service::start("auth-service", &[]).map_err(err)?;
        let school = Service::start("school-service", &[]).map_err(err)?;
        let student = Service::start("student-service", &["--gateway", &gateway]).map_err(err)?;
        let mut yaml = sample_yaml().map_err(err)?;
        yaml = with_port(&yaml, 10000, gateway_port);
        yaml = with_port(&yaml, 9901, 0);
        yaml = with_port(&yaml, 9902, free_port().map_err(err)?);
        yaml = with_port(&yaml, 8081, auth.port());
        yaml = with_port(&yaml, 8082, school.port());
        yaml = with_port(&yaml, 8083, student.port());
        if let Some(json) = plugin_json {
            yaml = with_plugin_json(&yaml, json).ok_or("the sample has no plugin JSON")?;
        }
        let envoy = Envoy::start_with_env(&edit(yaml), workers, env)?;
        Ok(Stack {
            envoy,
            auth,
            school,
            student,
        })
    }
}
