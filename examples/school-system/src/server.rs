//! The loop every service runs: a small HTTP/1.1 server (a thread per keep-alive
//! connection, each response in one write with Nagle off) with the fault switch,
//! `GET /health` and a request counter built in, so each service only writes its API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fault::{FaultSwitch, Faults, Verdict};

/// Connections served at once (a thread each); more are closed at once.
const MAX_CONNECTIONS: u64 = 2_048;
/// A keep-alive connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
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
    pub headers: Vec<(String, String)>,
    /// Send only half the body, then drop the connection (the `reset_mid_response` fault).
    pub truncate: bool,
}

impl Reply {
    pub fn ok(status: u16, data: Value) -> Reply {
        Reply {
            status,
            body: json!({"success": true, "data": data}),
            headers: Vec::new(),
            truncate: false,
        }
    }

    /// Seed 004's error shape: `{"error": CODE, "message": ...}`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply {
            status,
            body: json!({"success": false, "error": code, "message": message}),
            headers: Vec::new(),
            truncate: false,
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
    let listener = TcpListener::bind((host.as_str(), port)).map_err(|e| {
        std::io::Error::other(format!("{name}: cannot listen on {host}:{port}: {e}"))
    })?;
    println!("{name} listening on {}", listener.local_addr()?);
    let service = Arc::new(Service {
        name,
        faults: FaultSwitch::default(),
        served: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        handler: Box::new(handler),
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if service.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        let service = Arc::clone(&service);
        service.connections.fetch_add(1, Ordering::Relaxed);
        thread::spawn(move || {
            let _ = service.serve_connection(stream);
            service.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

type Handler = Box<dyn Fn(&Incoming) -> Reply + Send + Sync>;

struct Service {
    name: &'static str,
    faults: FaultSwitch,
    served: AtomicU64,
    connections: AtomicU64,
    handler: Handler,
}

impl Service {
    /// Answers requests on one keep-alive connection until the peer closes it.
    fn serve_connection(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        while let Some((incoming, keep_alive)) = read_request(&mut reader)? {
            let reply = self.route(&incoming);
            let bytes = encode(&reply, keep_alive);
            if reply.truncate {
                let cut = bytes.len() - reply.body.to_string().len() / 2;
                writer.write_all(&bytes[..cut])?;
                writer.flush()?;
                thread::sleep(Duration::from_millis(20));
                return writer.shutdown(std::net::Shutdown::Both);
            }
            writer.write_all(&bytes)?;
            if !keep_alive {
                break;
            }
        }
        Ok(())
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
            headers: Vec::new(),
            truncate: false,
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
        let (verdict, faults) = self.faults.judge();
        if faults.response_time_ms > 0 {
            thread::sleep(Duration::from_millis(faults.response_time_ms));
        }
        let mut reply = match verdict {
            Verdict::Serve => {
                let mut reply = (self.handler)(req);
                reply.truncate = faults.reset_mid_response;
                return reply;
            }
            Verdict::Fail => Reply::error(500, "SIMULATED_FAILURE", "simulated failure"),
            Verdict::Down => Reply::error(
                503,
                "SERVICE_UNAVAILABLE",
                &format!("{} is down (simulated)", self.name),
            ),
        };
        if let Some(status) = faults.failure_status {
            reply.status = status;
        }
        if let Some(wait) = faults.retry_after {
            reply.headers.push(("retry-after".into(), wait));
        }
        reply
    }
}

/// Reads one request; `None` when the peer closed the connection between requests.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<(Incoming, bool)>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), version) = (words.next(), words.next(), words.next()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let mut keep_alive = version != Some("HTTP/1.0");
    let (mut length, mut chunked, mut authorization) = (0u64, false, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            "authorization" => authorization = Some(value.to_string()),
            _ => {}
        }
    }
    let body = if chunked {
        crate::client::read_chunked(reader)?
    } else {
        let mut body = Vec::new();
        reader.take(length.min(MAX_BODY)).read_to_end(&mut body)?;
        body
    };
    let incoming = Incoming {
        method: method.to_ascii_uppercase(),
        path: target.split('?').next().unwrap_or_default().to_string(),
        body,
        authorization,
    };
    Ok(Some((incoming, keep_alive)))
}

/// The whole response in one buffer, so it leaves in one write.
fn encode(reply: &Reply, keep_alive: bool) -> Vec<u8> {
    let body = reply.body.to_string();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        reply.status,
        reason(reply.status),
        body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
