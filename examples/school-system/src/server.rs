//! The loop every service runs: a pool of threads answering HTTP, with the fault switch,
//! `GET /health` and a request counter built in, so each service only writes its API.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fault::{FaultSwitch, Faults, Verdict};

/// Threads answering requests; enough for the concurrency tests' slow upstreams.
const THREADS: usize = 64;
/// Largest request body read.
const MAX_BODY: u64 = 64 * 1024;

/// One request as a service handler sees it.
pub struct Incoming {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub authorization: Option<String>,
}

impl Incoming {
    pub fn json(&self) -> Result<Value, Reply> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Reply::error(400, "INVALID_JSON", &format!("the body is not JSON: {e}")))
    }
}

/// A JSON answer.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(status: u16, data: Value) -> Reply {
        Reply {
            status,
            body: json!({"success": true, "data": data}),
        }
    }

    /// Seed 004's error shape: `{"error": CODE, "message": ...}`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply {
            status,
            body: json!({"success": false, "error": code, "message": message}),
        }
    }

    pub fn not_found() -> Reply {
        Reply::error(404, "NOT_FOUND", "no such resource")
    }
}

/// Runs a service until the process is killed. Reads `--host` and `--port`; prints
/// `<name> listening on <addr>` once bound, so a parent can use port 0 and learn the port.
pub fn run(
    name: &'static str,
    default_port: u16,
    handler: impl Fn(&Incoming) -> Reply + Send + Sync + 'static,
) -> std::io::Result<()> {
    let host = crate::arg("--host").unwrap_or_else(|| "127.0.0.1".into());
    let port = crate::arg("--port")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(default_port);
    let server = tiny_http::Server::http((host.as_str(), port)).map_err(|e| {
        std::io::Error::other(format!("{name}: cannot listen on {host}:{port}: {e}"))
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("{name} listening on {addr}");
    let server = Arc::new(server);
    let service = Arc::new(Service {
        name,
        faults: FaultSwitch::default(),
        served: AtomicU64::new(0),
        handler: Box::new(handler),
    });
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        let server = Arc::clone(&server);
        let service = Arc::clone(&service);
        threads.push(thread::spawn(move || {
            while let Ok(request) = server.recv() {
                service.answer(request);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

type Handler = Box<dyn Fn(&Incoming) -> Reply + Send + Sync>;

struct Service {
    name: &'static str,
    faults: FaultSwitch,
    served: AtomicU64,
    handler: Handler,
}

impl Service {
    fn answer(&self, mut request: tiny_http::Request) {
        let mut body = Vec::new();
        let _ = request.as_reader().take(MAX_BODY).read_to_end(&mut body);
        let incoming = Incoming {
            method: request.method().as_str().to_ascii_uppercase(),
            path: request
                .url()
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string(),
            body,
            authorization: request
                .headers()
                .iter()
                .find(|h| h.field.equiv("authorization"))
                .map(|h| h.value.as_str().to_string()),
        };
        let reply = self.route(&incoming);
        respond(request, reply);
    }

    fn route(&self, req: &Incoming) -> Reply {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/health") => self.health(),
            ("GET", "/simulate/failure") => Reply::ok(200, json!(self.faults.get())),
            ("POST", "/simulate/failure") => self.simulate(req),
            ("GET", "/stats") => Reply::ok(
                200,
                json!({"service": self.name, "requests": self.served.load(Ordering::Relaxed)}),
            ),
            _ => self.serve_api(req),
        }
    }

    fn health(&self) -> Reply {
        let faults = self.faults.get();
        let (status, word) = if faults.is_healthy {
            (200, "healthy")
        } else {
            (503, "unhealthy")
        };
        Reply {
            status,
            body: json!({"service": self.name, "status": word, "faults": faults}),
        }
    }

    fn simulate(&self, req: &Incoming) -> Reply {
        let faults: Faults = match serde_json::from_slice(&req.body) {
            Ok(f) => f,
            Err(e) => return Reply::error(400, "INVALID_FAULTS", &e.to_string()),
        };
        match self.faults.set(faults) {
            Ok(()) => Reply::ok(
                200,
                json!({"message": "fault settings updated", "faults": self.faults.get()}),
            ),
            Err(e) => Reply::error(400, "INVALID_FAULTS", &e),
        }
    }

    fn serve_api(&self, req: &Incoming) -> Reply {
        self.served.fetch_add(1, Ordering::Relaxed);
        let (verdict, delay_ms) = self.faults.judge();
        if delay_ms > 0 {
            thread::sleep(Duration::from_millis(delay_ms));
        }
        match verdict {
            Verdict::Serve => (self.handler)(req),
            Verdict::Fail => Reply::error(500, "SIMULATED_FAILURE", "simulated failure"),
            Verdict::Down => Reply::error(
                503,
                "SERVICE_UNAVAILABLE",
                &format!("{} is down (simulated)", self.name),
            ),
        }
    }
}

fn respond(request: tiny_http::Request, reply: Reply) {
    let body = reply.body.to_string();
    let mut response = tiny_http::Response::from_string(body).with_status_code(reply.status);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"content-type"[..], &b"application/json"[..]) {
        response.add_header(h);
    }
    let _ = request.respond(response);
}
