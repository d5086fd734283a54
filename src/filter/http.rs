//! One HTTP stream: ask the breaker when the request headers arrive, answer locally if it
//! is open, note what the response says (gRPC status, an upstream's Retry-After, a body
//! worth caching), and record the outcome in `on_log`, which Envoy calls for every stream,
//! also after resets and local replies.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::core::breaker::Ticket;
use crate::core::control::{self, ApiError, Command};

use super::host::{self, Level, Map};
use super::worker::{Captured, Decision, Reply, Seen, Worker};

/// Property paths, NUL-separated as the ABI wants them.
const CLUSTER_NAME: &[u8] = b"xds\0cluster_name";
const ROUTE_NAME: &[u8] = b"xds\0route_name";

/// What an admitted request carries until its outcome is recorded.
struct Admitted {
    slot: usize,
    ticket: Ticket,
    /// When the request arrived, if the cluster measures latency (slow-call rule on).
    started_ms: u64,
    /// Honour an upstream's Retry-After (the cluster asks for it).
    watch_retry_after: bool,
    seen: Seen,
    retry_after: Option<Vec<u8>>,
    capture: Option<Captured>,
}

pub struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    admitted: Option<Admitted>,
    /// A control API command waiting for its request body.
    control: Option<Command>,
}

impl Stream {
    pub fn new(worker: Option<Rc<RefCell<Worker>>>) -> Stream {
        Stream {
            worker,
            admitted: None,
            control: None,
        }
    }

    /// A request on the control API's route: decide, check the token, and answer (or wait
    /// for the body first).
    fn control_request(&mut self, end_of_stream: bool) -> Action {
        let method = request_header(":method").unwrap_or_default();
        let path = request_header(":path").unwrap_or_default();
        let command = control::route(
            &String::from_utf8_lossy(&method),
            &String::from_utf8_lossy(&path),
        );
        let command = match command {
            Ok(c) => c,
            Err(e) => return api_error(&e),
        };
        if command.mutates() {
            let authorization = request_header("authorization");
            let allowed = self.worker.as_ref().and_then(|w| {
                w.try_borrow()
                    .ok()
                    .map(|w| w.authorize(authorization.as_deref()))
            });
            match allowed {
                Some(Ok(())) => {}
                Some(Err(e)) => return api_error(&e),
                None => return api_error(&ApiError::unavailable("the breaker is not configured")),
            }
        }
        if command.needs_body() && !end_of_stream {
            // Envoy turns a pause here into "stop everything", body included, so the
            // headers go on to the buffer filter behind this one, which holds the request
            // back from the router while the body arrives here.
            self.control = Some(command);
            return Action::Continue;
        }
        self.run_control(&command, &[])
    }

    fn run_control(&mut self, command: &Command, body: &[u8]) -> Action {
        let Some(worker) = &self.worker else {
            return api_error(&ApiError::unavailable("the breaker is not configured"));
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return api_error(&ApiError::unavailable("busy, try again"));
        };
        match worker.control(command, body, host::now_ms()) {
            Ok((status, content_type, body)) => answer(
                Reply {
                    status,
                    headers: vec![
                        ("content-type".into(), content_type.into()),
                        ("cache-control".into(), "no-store".into()),
                    ],
                    body: body.into_bytes(),
                    grpc_status: None,
                },
                CONTROL_DETAILS,
            ),
            Err(e) => api_error(&e),
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        // A build for the fault tests only: traps this worker's VM on request, so a test can
        // watch FAIL_RELOAD bring it back with the shared state intact; or overwrites a
        // breaker's record with junk, so a test can watch the filter recover from it.
        #[cfg(all(feature = "test-hooks", target_arch = "wasm32"))]
        {
            if request_header("x-circuit-breaker-test-trap").is_some() {
                core::arch::wasm32::unreachable();
            }
            if let Some(name) = request_header("x-circuit-breaker-test-damage") {
                let key = super::shared::record_key(&String::from_utf8_lossy(&name));
                let _ = host::set_shared_data(&key, b"\x02junk that is no record", 0);
            }
        }
        let Some(worker) = &self.worker else {
            return Action::Continue;
        };
        // No cluster: the control API's route, or a direct response that is not ours to judge.
        let Ok(Some(cluster)) = host::property(CLUSTER_NAME) else {
            let route = host::property(ROUTE_NAME).ok().flatten();
            if route.as_deref() == Some(control::ROUTE_NAME.as_bytes()) {
                return self.control_request(end_of_stream);
            }
            return Action::Continue;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(mut slot) = worker.slot_for(&cluster) else {
            return Action::Continue;
        };
        let Some(settings) = worker.settings(slot) else {
            return Action::Continue;
        };
        let per_route = settings.max_route_breakers.is_some();
        let wants_path = !settings.exclude_paths.is_empty() || settings.cache.is_some();
        let path = if wants_path {
            request_header(":path")
        } else {
            None
        };
        if let Some(path) = &path {
            if settings.excludes(path) {
                return Action::Continue;
            }
        }
        let watch_retry_after = settings.honor_retry_after;
        let caches = settings.cache.is_some();
        let measures = settings.slow_call_rate_threshold > 0.0;
        if per_route {
            if let Ok(Some(route)) = host::property(ROUTE_NAME) {
                slot = worker.route_slot(slot, &route);
            }
        }
        let cache_key = match (caches, &path) {
            (true, Some(p)) if request_header(":method").as_deref() == Some(b"GET") => {
                String::from_utf8(p.clone()).ok()
            }
            _ => None,
        };
        // Only a refusal needs to know whether the caller speaks gRPC; the header is read
        // then, not on every request.
        match worker.admit(slot, is_grpc_request, cache_key.as_deref()) {
            Decision::Admitted(ticket) => {
                let needs_clock = measures || cache_key.is_some();
                let now_ms = if needs_clock { host::now_ms() } else { 0 };
                let capture = cache_key
                    .filter(|k| worker.wants_capture(slot, k, now_ms))
                    .map(|key| Captured {
                        key,
                        status: 0,
                        content_type: None,
                        body: Vec::new(),
                    });
                self.admitted = Some(Admitted::new(
                    slot,
                    ticket,
                    now_ms,
                    watch_retry_after,
                    capture,
                ));
                Action::Continue
            }
            Decision::Pass => Action::Continue,
            Decision::Reject(reply) => answer(reply, REFUSAL_DETAILS),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(command) = &self.control else {
            return Action::Continue;
        };
        if body_size > control::MAX_BODY {
            self.control = None;
            return api_error(&ApiError::too_large());
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let command = command.clone();
        self.control = None;
        match host::request_body(body_size) {
            Ok(body) => self.run_control(&command, &body),
            Err(_) => api_error(&ApiError::unavailable("could not read the request body")),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(a) = &mut self.admitted else {
            return Action::Continue;
        };
        a.seen.status = header_u32(Map::ResponseHeaders, ":status").unwrap_or(0);
        if end_of_stream {
            a.seen.complete = true;
            // A gRPC error without a body is "trailers-only": its status rides here.
            a.seen.grpc_status = header_u32(Map::ResponseHeaders, "grpc-status");
        }
        let status = a.seen.status;
        if a.watch_retry_after && (status == 429 || status == 503) {
            a.retry_after = host::header(Map::ResponseHeaders, "retry-after")
                .ok()
                .flatten();
        }
        if let Some(c) = &mut a.capture {
            if status == 200 {
                c.status = status;
                c.content_type = host::header(Map::ResponseHeaders, "content-type")
                    .ok()
                    .flatten()
                    .and_then(|v| String::from_utf8(v).ok());
            } else {
                a.capture = None;
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(a) = &mut self.admitted else {
            return Action::Continue;
        };
        a.seen.complete |= end_of_stream;
        if let Some(c) = &mut a.capture {
            match host::response_body(body_size) {
                Ok(chunk) => c.body.extend_from_slice(&chunk),
                Err(_) => a.capture = None,
            }
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if let Some(a) = &mut self.admitted {
            a.seen.complete = true;
            if let Some(status) = header_u32(Map::ResponseTrailers, "grpc-status") {
                a.seen.grpc_status = Some(status);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(a), Some(worker)) = (self.admitted.take(), &self.worker) else {
            return;
        };
        if let Ok(mut worker) = worker.try_borrow_mut() {
            worker.record(
                a.slot,
                a.ticket,
                a.seen,
                a.started_ms,
                a.retry_after.as_deref(),
                a.capture,
            );
        }
    }
}

impl Admitted {
    fn new(
        slot: usize,
        ticket: Ticket,
        started_ms: u64,
        watch_retry_after: bool,
        capture: Option<Captured>,
    ) -> Admitted {
        Admitted {
            slot,
            ticket,
            started_ms,
            watch_retry_after,
            seen: Seen::default(),
            retry_after: None,
            capture,
        }
    }
}

fn is_grpc_request() -> bool {
    request_header("content-type").is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

fn request_header(name: &str) -> Option<Vec<u8>> {
    host::header(Map::RequestHeaders, name).ok().flatten()
}

fn header_u32(map: Map, name: &str) -> Option<u32> {
    let value = host::header(map, name).ok().flatten()?;
    std::str::from_utf8(&value).ok()?.trim().parse().ok()
}

fn api_error(e: &ApiError) -> Action {
    let reply = Reply {
        status: e.status,
        headers: e
            .headers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        body: e.body().into_bytes(),
        grpc_status: None,
    };
    answer(reply, CONTROL_DETAILS)
}

/// What Envoy's access log shows as the response code details of the filter's answers.
const REFUSAL_DETAILS: &str = "circuit_breaker_open";
const CONTROL_DETAILS: &str = "circuit_breaker_control";

fn answer(reply: Reply, details: &str) -> Action {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    match host::send_local_response(
        reply.status,
        details,
        &headers,
        &reply.body,
        reply.grpc_status,
    ) {
        Ok(()) => Action::Pause,
        Err(e) => {
            host::log(
                Level::Warn,
                &format!(
                    "[CIRCUIT_BREAKER] could not send the local reply (host status {}); letting the request through",
                    e.0
                ),
            );
            Action::Continue
        }
    }
}
