//! Envoy run under valgrind's callgrind, and a keep-alive client to load it: callgrind
//! counts the instructions Envoy executes, which repeat within a fraction of a percent where
//! CPU time on this shared machine swings 5-20 % between rounds.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use school_system::stack::{envoy_bin, poll, root, scratch_dir};

pub use ecb_bench::keep_alive::KeepAlive;

use crate::Result;

/// Envoy under callgrind is some 50 times slower: starting it (V8 included) takes 15-50 s,
/// more when the machine is busy.
const START_TIMEOUT: Duration = Duration::from_secs(400);

/// One Envoy process under callgrind, killed (and its files removed) when dropped.
pub struct Counted {
    child: Child,
    dir: PathBuf,
    /// The number of the last dump read: callgrind numbers its dump files from 1.
    dumps: u32,
    /// Keep the files when dropped, for a look after a failure.
    keep: bool,
    pub gateway: String,
}

impl Counted {
    /// Starts Envoy with `yaml` (whose gateway listens on `gateway`) and one worker, and
    /// waits until it serves.
    pub fn start(yaml: &str, gateway: String) -> Result<Counted> {
        let dir = scratch_dir().map_err(|e| e.to_string())?;
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(dir.join("valgrind.log")).map_err(|e| e.to_string())?;
        let child = Command::new("valgrind")
            .current_dir(root())
            // Counting starts switched off: Envoy starts about three times faster, and
            // nothing before the counters are zeroed is kept anyway.
            .args(["--tool=callgrind", "--smc-check=all", "--instr-atstart=no"])
            .arg(format!(
                "--callgrind-out-file={}",
                dir.join("callgrind.%p").display()
            ))
            .arg(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "warn", "--log-path"])
            .arg(dir.join("envoy.log"))
            .arg("--admin-address-path")
            .arg(dir.join("admin.txt"))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start valgrind: {e} (make bench installs it)"))?;
        let mut counted = Counted {
            child,
            dir,
            dumps: 0,
            keep: false,
            gateway,
        };
        counted.wait_ready()?;
        Ok(counted)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "envoy under valgrind exited with {status}: {}",
                    self.logs()
                ));
            }
            let admin = std::fs::read_to_string(self.dir.join("admin.txt")).unwrap_or_default();
            let ready = !admin.trim().is_empty()
                && school_system::client::get(admin.trim(), "/ready")
                    .is_ok_and(|r| r.status == 200);
            if ready && TcpStream::connect(&self.gateway).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!(
            "envoy under valgrind did not become ready: {}",
            self.logs()
        ))
    }

    /// The admin listener's `host:port`, once Envoy has written it.
    pub fn admin(&self) -> Result<String> {
        let admin = std::fs::read_to_string(self.dir.join("admin.txt")).unwrap_or_default();
        match admin.trim() {
            "" => Err("envoy under valgrind wrote no admin address".into()),
            a => Ok(a.to_string()),
        }
    }

    /// How many lines of Envoy's log (level warn and above) contain `needle`.
    pub fn log_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.join("envoy.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}\n{}", read("envoy.log"), read("valgrind.log"))
    }

    /// Switches counting on; to be called before the warm-up, which then runs through the
    /// freshly instrumented code before anything is counted.
    pub fn instrument(&self) -> Result<()> {
        self.control(&["instrumentation", "on"])
    }

    /// Sets every counter to zero: what came before (start, warm-up) is not counted.
    pub fn zero(&self) -> Result<()> {
        self.control(&["zero"])
    }

    /// Writes the counters out and returns the instructions executed since [`Counted::zero`]
    /// or the last dump (a dump zeroes them too), summed over all of Envoy's threads.
    pub fn dump(&mut self) -> Result<u64> {
        self.control(&["dump"])?;
        let after = self.dumps;
        match poll(Duration::from_secs(60), || self.newest_dump(after)) {
            Some((n, total)) => {
                self.dumps = n;
                Ok(total)
            }
            None => {
                self.keep = true;
                Err(format!(
                    "no complete callgrind dump after `vgdb dump` in {} (kept)",
                    self.dir.display()
                ))
            }
        }
    }

    /// The complete dump numbered highest above `after`, with its total.
    fn newest_dump(&self, after: u32) -> Option<(u32, u64)> {
        let prefix = format!("callgrind.{}.", self.child.id());
        let n = std::fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
            .filter(|&n: &u32| n > after)
            .max()?;
        let file = self.dir.join(format!("{prefix}{n}"));
        Some((n, summary(&file)?))
    }

    /// A callgrind monitor command, sent through vgdb (what `callgrind_control` wraps, but
    /// with its exit status kept).
    fn control(&self, command: &[&str]) -> Result<()> {
        let out = Command::new("vgdb")
            .arg(format!("--pid={}", self.child.id()))
            .arg("--cmd-time-out=60")
            .args(command)
            .output()
            .map_err(|e| format!("cannot run vgdb: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "vgdb {} failed: {}{}",
                command.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `summary:` total of a callgrind dump, once the dump is complete (its `totals:` line,
/// the last, is written).
fn summary(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    if !text.lines().any(|l| l.starts_with("totals:")) {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
