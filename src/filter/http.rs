//! One HTTP stream: ask the breaker when the request headers arrive, answer locally if it
//! is open, and record the outcome in `on_log`, which Envoy calls for every stream, also
//! after resets and local replies.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::core::breaker::Ticket;
use crate::core::outcome::{classify, StreamEnd};

use super::host::{self, Level};
use super::worker::{Decision, Worker};

/// Property paths, NUL-separated as the ABI wants them.
const CLUSTER_NAME: &[u8] = b"xds\0cluster_name";
const RESPONSE_CODE: &[u8] = b"response\0code";
const RESPONSE_FLAGS: &[u8] = b"response\0flags";

pub struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    /// Slot and ticket of an admitted request; `None` for anything not to be recorded.
    admitted: Option<(usize, Ticket)>,
}

impl Stream {
    pub fn new(worker: Option<Rc<RefCell<Worker>>>) -> Stream {
        Stream {
            worker,
            admitted: None,
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = &self.worker else {
            return Action::Continue;
        };
        // No cluster (a direct response, an unknown route): not ours to judge.
        let Ok(Some(cluster)) = host::property(CLUSTER_NAME) else {
            return Action::Continue;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(slot) = worker.slot_for(&cluster) else {
            return Action::Continue;
        };
        match worker.admit(slot, host::now_ms()) {
            Decision::Admitted(ticket) => {
                self.admitted = Some((slot, ticket));
                Action::Continue
            }
            Decision::Untracked => Action::Continue,
            Decision::Rejected(answer) => {
                let headers: Vec<(&str, &str)> = answer
                    .headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                match host::send_local_response(
                    answer.status,
                    "circuit_breaker_open",
                    &headers,
                    answer.body.as_bytes(),
                ) {
                    Ok(()) => Action::Pause,
                    Err(e) => {
                        host::log(
                            Level::Warn,
                            &format!("[CIRCUIT_BREAKER] could not send the local reply (host status {}); letting the request through", e.0),
                        );
                        Action::Continue
                    }
                }
            }
        }
    }

    fn on_log(&mut self) {
        let (Some((slot, ticket)), Some(worker)) = (self.admitted.take(), &self.worker) else {
            return;
        };
        let end = StreamEnd {
            status: host::property_u64(RESPONSE_CODE)
                .ok()
                .flatten()
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0),
            flags: host::property_u64(RESPONSE_FLAGS)
                .ok()
                .flatten()
                .unwrap_or(0),
        };
        if let Ok(mut worker) = worker.try_borrow_mut() {
            worker.record(slot, ticket, classify(end));
        }
    }
}
