//! The control API's requests on the stream: route the method and path, check the token
//! for changes, wait for a body where a command needs one, and answer from the worker.

use proxy_wasm::types::Action;

use crate::core::control::{self, ApiError, Command};
use crate::core::reply::Answer;

use super::super::host::{Buffer, Host};
use super::{answer, request_header, Stream};

/// What Envoy's access log shows as the response code details of the control API's answers.
const CONTROL_DETAILS: &str = "circuit_breaker_control";

impl Stream {
    /// A request on the control API's route: decide, check the token, and answer (or wait
    /// for the body first).
    pub(super) fn control_request(&mut self, host: &impl Host, end_of_stream: bool) -> Action {
        let method = request_header(host, ":method").unwrap_or_default();
        let path = request_header(host, ":path").unwrap_or_default();
        let command = control::route(
            &String::from_utf8_lossy(&method),
            &String::from_utf8_lossy(&path),
        );
        let command = match command {
            Ok(c) => c,
            Err(e) => return api_error(host, &e),
        };
        if command.mutates() {
            let authorization = request_header(host, "authorization");
            let allowed = self.worker.as_ref().and_then(|w| {
                w.try_borrow()
                    .ok()
                    .map(|w| w.authorize(authorization.as_deref()))
            });
            match allowed {
                Some(Ok(())) => {}
                Some(Err(e)) => return api_error(host, &e),
                None => {
                    let e = ApiError::unavailable("the breaker is not configured");
                    return api_error(host, &e);
                }
            }
        }
        if command.needs_body() && !end_of_stream {
            // Envoy turns a pause here into "stop everything", body included, so the
            // headers go on to the buffer filter behind this one, which holds the request
            // back from the router while the body arrives here.
            self.control = Some(command);
            return Action::Continue;
        }
        self.run_control(host, &command, &[])
    }

    fn run_control(&mut self, host: &impl Host, command: &Command, body: &[u8]) -> Action {
        let Some(worker) = &self.worker else {
            return api_error(
                host,
                &ApiError::unavailable("the breaker is not configured"),
            );
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return api_error(host, &ApiError::unavailable("busy, try again"));
        };
        match worker.control(host, command, body, host.now_ms()) {
            Ok((status, content_type, body)) => {
                let reply = Answer {
                    status,
                    headers: vec![
                        ("content-type".into(), content_type.into()),
                        ("cache-control".into(), "no-store".into()),
                    ],
                    body: body.into_bytes(),
                    grpc_status: None,
                };
                answer(host, &reply, CONTROL_DETAILS)
            }
            Err(e) => api_error(host, &e),
        }
    }

    /// The request body: only a control API command waiting for it reads it.
    pub fn request_body(&mut self, host: &impl Host, size: usize, end_of_stream: bool) -> Action {
        let Some(command) = &self.control else {
            return Action::Continue;
        };
        if size > control::MAX_BODY {
            self.control = None;
            return api_error(host, &ApiError::too_large());
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let command = command.clone();
        self.control = None;
        match host.buffer(Buffer::RequestBody, size) {
            Ok(body) => self.run_control(host, &command, &body),
            Err(_) => {
                let e = ApiError::unavailable("could not read the request body");
                api_error(host, &e)
            }
        }
    }
}

fn api_error(host: &impl Host, e: &ApiError) -> Action {
    let reply = Answer {
        status: e.status,
        headers: e
            .headers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        body: e.body().into_bytes(),
        grpc_status: None,
    };
    answer(host, &reply, CONTROL_DETAILS)
}
