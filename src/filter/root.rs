//! The root context, one per thread: checks the plugin JSON (refusing a bad one so Envoy
//! rejects the configuration), owns the thread's [`Worker`] and drives it from the timer.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::core::config::PluginConfig;

use super::host::wasm::Wasm;
use super::host::{Buffer, Host, Map};
use super::http::Stream;
use super::worker::{Worker, TICK_MS};

#[derive(Default)]
pub struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Root {
    /// Reads and checks the plugin configuration; false refuses it.
    pub fn configure(&mut self, host: &impl Host, size: usize) -> bool {
        let bytes = match host.buffer(Buffer::PluginConfiguration, size) {
            Ok(bytes) => bytes,
            Err(e) => {
                log::error!(
                    "[CIRCUIT_BREAKER] cannot read the plugin configuration (host status {})",
                    e.0
                );
                return false;
            }
        };
        let config = match PluginConfig::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("[CIRCUIT_BREAKER] {e}");
                return false;
            }
        };
        self.worker = Some(Rc::new(RefCell::new(Worker::new(host, config))));
        if let Err(e) = host.set_tick_period_ms(TICK_MS) {
            log::error!("[CIRCUIT_BREAKER] cannot start the timer (host status {}); open breakers will only move on traffic", e.0);
        }
        true
    }

    pub fn tick(&mut self, host: &impl Host) {
        if let Some(worker) = &self.worker {
            if let Ok(mut worker) = worker.try_borrow_mut() {
                worker.tick(host, host.now_ms());
            }
        }
    }

    /// Another worker made a transition: refresh this worker's copies.
    pub fn queue_ready(&mut self, host: &impl Host, token: u32) {
        if let Some(worker) = &self.worker {
            if let Ok(mut worker) = worker.try_borrow_mut() {
                worker.notified(host, token, host.now_ms());
            }
        }
    }

    /// Runs `f` on this thread's worker, unless it is busy (a callback inside a callback).
    fn with_worker(&self, f: impl FnOnce(&mut Worker)) {
        if let Some(worker) = &self.worker {
            if let Ok(mut worker) = worker.try_borrow_mut() {
                f(&mut worker);
            }
        }
    }

    /// The answer to an HTTP call: a health probe's or the webhook's.
    pub fn call_answered(&mut self, host: &impl Host, token: u32, headers: usize) {
        let status = (headers > 0)
            .then(|| super::host::header_u32(host, Map::CallResponseHeaders, ":status"))
            .flatten();
        if let Some(worker) = &self.worker {
            if let Ok(mut worker) = worker.try_borrow_mut() {
                worker.call_answered(host, token, status);
            }
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let host = Wasm;
        self.with_worker(|w| w.grpc_answered(&host, token, status, size, host.now_ms()));
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let host = Wasm;
        let body = host
            .buffer(super::host::Buffer::GrpcReceive, size)
            .unwrap_or_default();
        self.with_worker(|w| w.grpc_message(&host, token, &body, host.now_ms()));
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        let host = Wasm;
        self.with_worker(|w| w.grpc_closed(&host, token, status, host.now_ms()));
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        self.call_answered(&Wasm, token, headers);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        self.configure(&Wasm, plugin_configuration_size)
    }

    fn on_tick(&mut self) {
        #[cfg(all(feature = "test-hooks", target_arch = "wasm32"))]
        self.test_hooks();
        self.tick(&Wasm);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        self.queue_ready(&Wasm, queue_id);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A build for the fault tests only: the context holding the fleet's watch traps its VM
/// once a request has asked for it (shared data), so a test can watch the role pass to
/// another context. The main thread's context usually holds it, and no request reaches
/// that VM.
#[cfg(all(feature = "test-hooks", target_arch = "wasm32"))]
impl Root {
    fn test_hooks(&self) {
        let asked = matches!(Wasm.shared_data(super::shared::TRAP_HOLDER_KEY), Ok(Some((v, _))) if !v.is_empty());
        let holds = self
            .worker
            .as_ref()
            .and_then(|w| w.try_borrow().ok().map(|w| w.holds_fleet_watch()))
            .unwrap_or(false);
        if asked && holds {
            // Once only: the next holder must live.
            let _ = Wasm.set_shared_data(super::shared::TRAP_HOLDER_KEY, b"", 0);
            core::arch::wasm32::unreachable();
        }
    }
}
