//! A real etcd for tests and demos: one or three members of Debian's `etcd` on free
//! loopback ports, optionally with TLS and client certificates (made with `openssl` into
//! the cluster's scratch directory) and with etcd authentication, plus the faults the fleet
//! must survive: kill a member, freeze it (SIGSTOP), find and kill the leader, lose quorum.
//! Every member is killed and the directory removed when the handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::stack::{free_port, poll, scratch_dir};

/// How to start a cluster.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// 1 or 3 members (any other count is refused).
    pub members: usize,
    /// Serve clients over TLS and require a client certificate signed by the test CA.
    pub tls: bool,
    /// Turn authentication on with a `root` user holding this password.
    pub root_password: Option<String>,
}

/// Paths of the certificates made for a TLS cluster.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Signed by the CA, for `clientAuth`; its CN (`ecb-client`) is no etcd user.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Signed by a CA etcd does not trust.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

/// One member process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    frozen: bool,
    pub log_path: PathBuf,
}

impl Member {
    /// Whether the process is running (frozen counts as running).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running etcd cluster.
pub struct Etcd {
    pub members: Vec<Member>,
    pub certs: Option<Certs>,
    pub root_password: Option<String>,
    dir: PathBuf,
}

fn spawn(args: &[String], log: &Path) -> Result<Child, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    Command::new("etcd")
        .args(args)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .map_err(|e| format!("cannot start etcd: {e} (run `make etcd-tools` to install it)"))
}

fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill {sig} {pid}: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("kill {sig} {pid} said {status}"))
}

impl Etcd {
    /// Starts the members and waits until every one answers a health check (with quorum),
    /// then turns authentication on if asked.
    pub fn start(opts: &Options) -> Result<Etcd, String> {
        if opts.members != 1 && opts.members != 3 {
            return Err(format!("1 or 3 members, not {}", opts.members));
        }
        static CLUSTER: AtomicU32 = AtomicU32::new(0);
        let dir = scratch_dir().map_err(|e| e.to_string())?;
        let certs = if opts.tls {
            Some(make_certs(&dir)?)
        } else {
            None
        };
        let scheme = if opts.tls { "https" } else { "http" };
        let mut ports = Vec::new();
        for _ in 0..opts.members {
            let c = free_port().map_err(|e| e.to_string())?;
            let p = free_port().map_err(|e| e.to_string())?;
            ports.push((c, p));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let token = format!(
            "ecb-{}-{}",
            std::process::id(),
            CLUSTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client = format!("{scheme}://127.0.0.1:{c}");
            let peer = format!("http://127.0.0.1:{p}");
            let mut args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                &dir.join(&name).to_string_lossy(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &token,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(c) = &certs {
                for (flag, path) in [
                    ("--cert-file", &c.server_cert),
                    ("--key-file", &c.server_key),
                    ("--trusted-ca-file", &c.ca),
                ] {
                    args.push(flag.into());
                    args.push(path.to_string_lossy().into_owned());
                }
                args.push("--client-cert-auth".into());
            }
            members.push(Member {
                name,
                client_port: *c,
                peer_port: *p,
                args,
                child: None,
                frozen: false,
                log_path: dir.join(format!("m{i}.log")),
            });
        }
        let mut etcd = Etcd {
            members,
            certs,
            root_password: None,
            dir,
        };
        for i in 0..etcd.members.len() {
            etcd.restart(i)?;
        }
        for i in 0..etcd.members.len() {
            etcd.wait_healthy(i, Duration::from_secs(30))?;
        }
        if let Some(pw) = &opts.root_password {
            etcd.ctl(&["user", "add", &format!("root:{pw}")])?;
            etcd.ctl(&["auth", "enable"])?;
            etcd.root_password = Some(pw.clone());
        }
        Ok(etcd)
    }

    /// `scheme://127.0.0.1:port` of member `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.certs.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Client URLs of every member, comma-separated, as etcdctl's `--endpoints` takes them.
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// An etcdctl command for `endpoints`, with the test CA, client certificate and root
    /// credentials when the cluster has them, and short timeouts.
    pub fn ctl_command(&self, endpoints: &str) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=2s", "--command-timeout=3s"]);
        if let Some(c) = &self.certs {
            cmd.arg(format!("--cacert={}", c.ca.display()))
                .arg(format!("--cert={}", c.client_cert.display()))
                .arg(format!("--key={}", c.client_key.display()));
        }
        if let Some(pw) = &self.root_password {
            cmd.arg(format!("--user=root:{pw}"));
        }
        cmd
    }

    /// Runs etcdctl against every member; its stdout, or its stderr as the error.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        run(self.ctl_command(&self.endpoints()).args(args))
    }

    /// Runs etcdctl against member `i` only.
    pub fn ctl_at(&self, i: usize, args: &[&str]) -> Result<String, String> {
        run(self.ctl_command(&self.url(i)).args(args))
    }

    /// The value of `key` as member `i` holds it locally (a serializable read, so it is
    /// that member's copy, not one forwarded to the leader).
    pub fn get_at(&self, i: usize, key: &str) -> Result<String, String> {
        self.ctl_at(i, &["get", key, "--print-value-only", "--consistency=s"])
            .map(|s| s.trim_end().to_string())
    }

    /// Waits until member `i` reports itself healthy (which needs a leader).
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> Result<(), String> {
        let mut last = String::new();
        poll(timeout, || match self.ctl_at(i, &["endpoint", "health"]) {
            Ok(_) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        })
        .ok_or_else(|| {
            format!(
                "member {i} not healthy: {last}\n{}",
                std::fs::read_to_string(&self.members[i].log_path).unwrap_or_default()
            )
        })
    }

    /// The index of the member that is leader, asking the running, unfrozen members.
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if !m.running() || m.frozen {
                continue;
            }
            let Ok(out) = self.ctl_at(i, &["endpoint", "status", "-w", "json"]) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&out) else {
                continue;
            };
            let status = &v[0]["Status"];
            let (Some(me), Some(leader)) = (
                status["header"]["member_id"].as_u64(),
                status["leader"].as_u64(),
            ) else {
                continue;
            };
            if leader == 0 {
                continue;
            }
            if me == leader {
                return Some(i);
            }
            return self.index_of_member_id(i, leader);
        }
        None
    }

    /// Which member has etcd's member ID `id`, as member `via` lists them.
    fn index_of_member_id(&self, via: usize, id: u64) -> Option<usize> {
        let out = self.ctl_at(via, &["member", "list", "-w", "json"]).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        let name = v["members"]
            .as_array()?
            .iter()
            .find(|m| m["ID"].as_u64() == Some(id))?["name"]
            .as_str()?
            .to_string();
        self.members.iter().position(|m| m.name == name)
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut child) = m.child.take() {
            if m.frozen {
                let _ = signal(child.id(), "-CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        m.frozen = false;
    }

    /// Starts member `i` again on its data directory and ports (or for the first time).
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].running() {
            return Ok(());
        }
        let m = &mut self.members[i];
        m.child = Some(spawn(&m.args, &m.log_path)?);
        Ok(())
    }

    /// Freezes member `i` (SIGSTOP): its sockets stay open and nothing answers, which is
    /// how a hung or partitioned etcd looks to a client.
    pub fn freeze(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.members[i];
        let pid = m.pid().ok_or("member is not running")?;
        signal(pid, "-STOP")?;
        m.frozen = true;
        Ok(())
    }

    /// Thaws member `i` (SIGCONT).
    pub fn thaw(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.members[i];
        let pid = m.pid().ok_or("member is not running")?;
        signal(pid, "-CONT")?;
        m.frozen = false;
        Ok(())
    }

    /// Kills the leader; returns which member it was.
    pub fn kill_leader(&mut self) -> Result<usize, String> {
        let leader = self.leader().ok_or("no leader")?;
        self.kill(leader);
        Ok(leader)
    }

    /// Kills all members but one, so the survivor has no quorum; returns the survivor.
    pub fn break_quorum(&mut self) -> Result<usize, String> {
        if self.members.len() < 3 {
            return Err("a single member cannot lose quorum".into());
        }
        let survivor = self
            .members
            .iter()
            .position(|m| m.running() && !m.frozen)
            .ok_or("no member running")?;
        for i in 0..self.members.len() {
            if i != survivor {
                self.kill(i);
            }
        }
        Ok(survivor)
    }

    /// Adds a user with read and write rights under `prefix` only (needs authentication
    /// on, so the root credentials are known).
    pub fn add_user(&self, name: &str, password: &str, prefix: &str) -> Result<(), String> {
        let role = format!("{name}-role");
        self.ctl(&["role", "add", &role])?;
        self.ctl(&[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "readwrite",
            prefix,
        ])?;
        self.ctl(&["user", "add", &format!("{name}:{password}")])?;
        self.ctl(&["user", "grant-role", name, &role])?;
        Ok(())
    }

    /// The scratch directory holding data, logs and certificates.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("etcd logs kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run etcdctl: {e} (run `make etcd-tools`)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "etcdctl {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A CA and a key pair it signed with `ext` (an openssl extensions file's contents).
fn signed(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) -> Result<(), String> {
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).map_err(|e| e.to_string())?;
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ],
    )
}

fn make_ca(dir: &Path, name: &str) -> Result<(), String> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    )
}

/// A throw-away CA, a server certificate for 127.0.0.1, a client certificate, and a
/// client certificate from a CA etcd does not trust.
fn make_certs(dir: &Path) -> Result<Certs, String> {
    make_ca(dir, "ca")?;
    make_ca(dir, "stranger-ca")?;
    signed(
        dir,
        "ca",
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )?;
    let client_ext = "extendedKeyUsage=clientAuth\n";
    signed(dir, "ca", "client", "ecb-client", client_ext)?;
    signed(dir, "stranger-ca", "stranger", "ecb-client", client_ext)?;
    Ok(Certs {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        stranger_cert: dir.join("stranger.crt"),
        stranger_key: dir.join("stranger.key"),
    })
}
