//! A docker-compose project a test runs: brought up with `--build`, and taken down with its
//! volumes and networks, checked gone; after a failure, taken down anyway once the logs
//! that explain it are shown.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Instant;

use school_system::stack::root;

/// The running compose project; taken down, volumes included, when dropped (so also when
/// a check fails).
pub struct Compose {
    /// A project name of its own, so cleaning up never touches anything else.
    project: &'static str,
    file: &'static str,
    /// The control API's token, made up for this run.
    token: String,
    /// Docker's volumes before the project came up: after, exactly these are left.
    volumes_before: Vec<String>,
    down: bool,
    /// What to print before a failed test takes the project down.
    on_failure: fn(&Compose),
}

impl Compose {
    /// `docker-compose` (through tools/docker/compose.sh) on this project.
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(root().join("tools/docker/compose.sh"))
            .args(["-p", self.project, "-f", self.file])
            .args(args)
            .current_dir(root())
            .env("CIRCUIT_BREAKER_ADMIN_TOKEN", &self.token)
            .output()
            .expect("tools/docker/compose.sh")
    }

    /// Builds and starts the project with a control API token of its own, after checking
    /// nothing listens on the loopback `ports` it publishes.
    pub fn up(
        project: &'static str,
        file: &'static str,
        ports: &[u16],
        on_failure: fn(&Compose),
    ) -> Compose {
        for port in ports {
            assert!(
                TcpStream::connect(("127.0.0.1", *port)).is_err(),
                "127.0.0.1:{port} is taken; {file} publishes it. Stop what listens there."
            );
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let stack = Compose {
            project,
            file,
            token: format!("{project}-{nanos:x}"),
            volumes_before: lines_of(&["volume", "ls", "--quiet"]),
            down: false,
            on_failure,
        };
        let started = Instant::now();
        let out = stack.command(&["up", "-d", "--build"]);
        assert!(
            out.status.success(),
            "compose up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "compose up --build took {:.1}s",
            started.elapsed().as_secs_f64()
        );
        stack
    }

    /// The token the control API wants (`CIRCUIT_BREAKER_ADMIN_TOKEN` in the project).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn containers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        lines_of(&["ps", "--all", "--quiet", "--filter", &label])
    }

    /// The container id of a compose service.
    pub fn container(&self, service: &str) -> String {
        let out = self.command(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    /// Takes the project down and checks nothing of it is left.
    pub fn down(&mut self) {
        let out = self.command(&["down", "--volumes", "--remove-orphans"]);
        self.down = true;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(self.containers(), Vec::<String>::new(), "containers left");
        let left: Vec<String> = lines_of(&["volume", "ls", "--quiet"])
            .into_iter()
            .filter(|v| !self.volumes_before.contains(v))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "volumes left");
        assert!(
            !lines_of(&["network", "ls", "--format", "{{.Name}}"])
                .iter()
                .any(|n| n.starts_with(self.project)),
            "networks left"
        );
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if !self.down {
            eprintln!("taking {} down after a failure", self.project);
            (self.on_failure)(self);
            self.command(&["down", "--volumes", "--remove-orphans"]);
        }
    }
}

/// The lines `docker <args>` prints.
pub fn lines_of(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
