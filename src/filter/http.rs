//! One HTTP stream: ask the breaker when the request headers arrive, answer locally if it
//! is open, note what the response says (gRPC status, an upstream's Retry-After, a body
//! worth caching), and record the outcome in `on_log`, which Envoy calls for every stream,
//! also after resets and local replies. The callbacks take the host as an argument, so
//! the shell's tests drive them against an in-memory host.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::core::control::{self, Command};
use crate::core::reply::Answer;

use super::host::wasm::Wasm;
use super::host::{header_u32, Buffer, Host, Map};
use super::worker::fleet::probe::{Probe, ProbeSlotClaim};
use super::worker::{Admitted, Captured, Decision, Seen, Worker};

mod control_api;

/// Property paths, NUL-separated as the ABI wants them.
const CLUSTER_NAME: &[u8] = b"xds\0cluster_name";
const ROUTE_NAME: &[u8] = b"xds\0route_name";

/// What Envoy's access log shows as the response code details of the filter's answers.
const REFUSAL_DETAILS: &str = "circuit_breaker_open";

pub struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    admitted: Option<Admitted>,
    /// A control API command waiting for its request body.
    control: Option<Command>,
    /// A fleet probe slot being claimed while the request waits.
    claiming: Option<ProbeSlotClaim>,
    /// The first read of etcd this request waits for, and the cluster it asked for.
    first_read: Option<(u32, Vec<u8>)>,
}

impl Stream {
    pub fn new(worker: Option<Rc<RefCell<Worker>>>) -> Stream {
        Stream {
            worker,
            admitted: None,
            control: None,
            claiming: None,
            first_read: None,
        }
    }

    /// The request headers: pass through anything that is not ours to judge, serve the
    /// control API on its route, and ask the breaker about everything else.
    pub fn request_headers(&mut self, host: &impl Host, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        // No cluster: the control API's route, or a direct response that is not ours to judge.
        let Ok(Some(cluster)) = host.property(CLUSTER_NAME) else {
            let route = host.property(ROUTE_NAME).ok().flatten();
            if route.as_deref() == Some(control::ROUTE_NAME.as_bytes()) {
                return self.control_request(host, end_of_stream);
            }
            return Action::Continue;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        self.admit(host, &mut worker, &cluster)
    }

    fn admit(&mut self, host: &impl Host, worker: &mut Worker, cluster: &[u8]) -> Action {
        worker.listen(host);
        let Some(breaker) = worker.breaker_for(host, cluster) else {
            return Action::Continue;
        };
        if let Some(token) = worker.first_read(host, breaker) {
            self.first_read = Some((token, cluster.to_vec()));
            return Action::Pause;
        }
        let Some(wants) = Wants::read(host, worker, breaker) else {
            return Action::Continue;
        };
        // Only a refusal needs to know whether the caller speaks gRPC; the header is read
        // then, not on every request.
        let grpc = || {
            request_header(host, "content-type")
                .is_some_and(|ct| ct.starts_with(b"application/grpc"))
        };
        match worker.admit(host, wants.breaker, grpc, wants.cache_key.as_deref()) {
            Decision::Admitted(ticket) => {
                let needs_clock = wants.measures || wants.cache_key.is_some();
                let started_ms = if needs_clock { host.now_ms() } else { 0 };
                let capture = wants
                    .cache_key
                    .filter(|k| worker.wants_capture(wants.breaker, k, started_ms))
                    .map(|key| Captured {
                        key,
                        status: 0,
                        content_type: None,
                        body: Vec::new(),
                    });
                self.admitted = Some(Admitted {
                    breaker: wants.breaker,
                    ticket,
                    started_ms,
                    watch_retry_after: wants.watch_retry_after,
                    seen: Seen::default(),
                    retry_after: None,
                    capture,
                    probe_slot: None,
                });
                if !ticket.probe {
                    return Action::Continue;
                }
                let probe = worker.probe(host, wants.breaker);
                self.probe(host, worker, probe)
            }
            Decision::Pass => Action::Continue,
            Decision::Reject(reply) => answer(host, &reply, REFUSAL_DETAILS),
        }
    }

    /// What a probe does after its slot claim (or without one): go, wait, or be refused.
    fn probe(&mut self, host: &impl Host, worker: &mut Worker, probe: Probe) -> Action {
        match probe {
            Probe::Go(held) => {
                if let Some(a) = &mut self.admitted {
                    a.probe_slot = held;
                }
                Action::Continue
            }
            Probe::Wait(claim) => {
                self.claiming = Some(claim);
                Action::Pause
            }
            Probe::Refuse => {
                let Some(a) = self.admitted.take() else {
                    return Action::Continue;
                };
                match worker.refuse_probe(host, a.breaker, a.ticket, is_grpc(host)) {
                    Some(reply) => answer(host, &reply, REFUSAL_DETAILS),
                    None => Action::Continue,
                }
            }
        }
    }

    /// The answer to this stream's probe slot claim; the request waits for it.
    pub fn grpc_answered(&mut self, host: &impl Host, token: u32, status: u32, size: usize) {
        if let Some((_, cluster)) = self.first_read.take_if(|(t, _)| *t == token) {
            return self.first_read_answered(host, &cluster, status, size);
        }
        let Some(claim) = self.claiming.take_if(|c| c.token == token) else {
            return;
        };
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            // Busy (cannot happen between callbacks): no slot is safer than a guess.
            let _ = host.resume_request();
            return;
        };
        let next = worker.probe_answered(host, claim, status, size);
        if self.probe(host, &mut worker, next) == Action::Continue {
            let _ = host.resume_request();
        }
    }

    /// The first read of etcd answered: decide as if the request had just arrived.
    fn first_read_answered(&mut self, host: &impl Host, cluster: &[u8], status: u32, size: usize) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            let _ = host.resume_request();
            return;
        };
        worker.first_read_answered(host, cluster, status, size);
        if self.admit(host, &mut worker, cluster) == Action::Continue {
            let _ = host.resume_request();
        }
    }

    pub fn response_headers(&mut self, host: &impl Host, end_of_stream: bool) {
        let Some(a) = &mut self.admitted else {
            return;
        };
        a.seen.status = header_u32(host, Map::ResponseHeaders, ":status").unwrap_or(0);
        if end_of_stream {
            a.seen.complete = true;
            // A gRPC error without a body is "trailers-only": its status rides here.
            a.seen.grpc_status = header_u32(host, Map::ResponseHeaders, "grpc-status");
        }
        let status = a.seen.status;
        if a.watch_retry_after && (status == 429 || status == 503) {
            a.retry_after = host
                .header(Map::ResponseHeaders, "retry-after")
                .ok()
                .flatten();
        }
        if let Some(c) = &mut a.capture {
            if status == 200 {
                c.status = status;
                c.content_type = host
                    .header(Map::ResponseHeaders, "content-type")
                    .ok()
                    .flatten()
                    .and_then(|v| String::from_utf8(v).ok());
            } else {
                a.capture = None;
            }
        }
    }

    pub fn response_body(&mut self, host: &impl Host, size: usize, end_of_stream: bool) {
        let Some(a) = &mut self.admitted else {
            return;
        };
        a.seen.complete |= end_of_stream;
        if let Some(c) = &mut a.capture {
            match host.buffer(Buffer::ResponseBody, size) {
                Ok(chunk) => c.body.extend_from_slice(&chunk),
                Err(_) => a.capture = None,
            }
        }
    }

    pub fn response_trailers(&mut self, host: &impl Host) {
        if let Some(a) = &mut self.admitted {
            a.seen.complete = true;
            if let Some(status) = header_u32(host, Map::ResponseTrailers, "grpc-status") {
                a.seen.grpc_status = Some(status);
            }
        }
    }

    /// The end of the stream, however it ended: the outcome is recorded here.
    pub fn log(&mut self, host: &impl Host) {
        let (Some(a), Some(worker)) = (self.admitted.take(), &self.worker) else {
            return;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return;
        };
        if self.claiming.take().is_some() {
            // The client left while its probe waited for a slot: it never went upstream.
            worker.give_back(host, a.breaker, a.ticket);
        } else {
            worker.record(host, a);
        }
    }
}

/// What the filter needs to know and keep of one request for its breaker, read from the
/// host only as far as the cluster's settings need it.
struct Wants {
    /// The breaker: the cluster's, or a route's inside it.
    breaker: usize,
    /// The path of a GET a cached answer may serve.
    cache_key: Option<String>,
    /// Whether the cluster's slow-call rule needs the request's start time.
    measures: bool,
    watch_retry_after: bool,
}

impl Wants {
    /// `None` when the request's path is excluded from the breaker.
    fn read(host: &impl Host, worker: &mut Worker, breaker: usize) -> Option<Wants> {
        let settings = worker.settings(breaker)?;
        let wants_path = !settings.exclude_paths.is_empty() || settings.cache.is_some();
        let path = wants_path.then(|| request_header(host, ":path")).flatten();
        if path.as_deref().is_some_and(|p| settings.excludes(p)) {
            return None;
        }
        let cache_key = match (settings.cache.is_some(), path) {
            (true, Some(p)) if request_header(host, ":method").as_deref() == Some(b"GET") => {
                String::from_utf8(p).ok()
            }
            _ => None,
        };
        let mut wants = Wants {
            breaker,
            cache_key,
            measures: settings.slow_call_rate_threshold > 0.0,
            watch_retry_after: settings.honor_retry_after,
        };
        if settings.max_route_breakers.is_some() {
            if let Ok(Some(route)) = host.property(ROUTE_NAME) {
                wants.breaker = worker.route_breaker(host, breaker, &route);
            }
        }
        Some(wants)
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        self.grpc_answered(&Wasm, token, status, size);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        #[cfg(all(feature = "test-hooks", target_arch = "wasm32"))]
        test_hooks();
        self.request_headers(&Wasm, end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.request_body(&Wasm, body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.response_headers(&Wasm, end_of_stream);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.response_body(&Wasm, body_size, end_of_stream);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        self.response_trailers(&Wasm);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.log(&Wasm);
    }
}

/// A build for the fault tests only: traps this worker's VM on request, so a test can
/// watch FAIL_RELOAD bring it back with the shared state intact; overwrites a breaker's
/// record with junk, so a test can watch the filter recover from it; or asks the fleet
/// watch's holder to trap (see `root.rs`).
#[cfg(all(feature = "test-hooks", target_arch = "wasm32"))]
fn test_hooks() {
    if request_header(&Wasm, "x-circuit-breaker-test-trap").is_some() {
        core::arch::wasm32::unreachable();
    }
    if request_header(&Wasm, "x-circuit-breaker-test-trap-holder").is_some() {
        let _ = Wasm.set_shared_data(super::shared::TRAP_HOLDER_KEY, b"1", 0);
    }
    if let Some(name) = request_header(&Wasm, "x-circuit-breaker-test-damage") {
        let key = super::shared::record_key(&String::from_utf8_lossy(&name));
        let _ = Wasm.set_shared_data(&key, b"\x02junk that is no record", 0);
    }
}

fn is_grpc(host: &impl Host) -> bool {
    request_header(host, "content-type").is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

fn request_header(host: &impl Host, name: &str) -> Option<Vec<u8>> {
    host.header(Map::RequestHeaders, name).ok().flatten()
}

fn answer(host: &impl Host, reply: &Answer, details: &str) -> Action {
    match host.send_local_response(reply, details) {
        Ok(()) => Action::Pause,
        Err(e) => {
            log::warn!(
                "[CIRCUIT_BREAKER] could not send the local reply (host status {}); letting the request through",
                e.0
            );
            Action::Continue
        }
    }
}
