//! A filter that makes, per request, exactly the host calls its configuration names and
//! nothing else, so the benchmark can price each call against the empty filter. The names
//! are the calls the breaker makes on its common path: `cluster` (the `xds.cluster_name`
//! property), `shared` (a shared-data read), `status` (the response `:status` header),
//! `code` and `flags` (the `response.code` and `response.flags` properties), `clock`.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

#[derive(Default, Clone, Copy)]
pub struct Calls {
    /// How many times each named call is made per request (`x10` in the config: 10).
    times: u32,
    cluster: bool,
    shared: bool,
    status: bool,
    code: bool,
    flags: bool,
    clock: bool,
}

#[derive(Default)]
pub struct Root {
    calls: Rc<Calls>,
}

pub struct Stream {
    calls: Rc<Calls>,
}

impl Context for Root {}
impl Context for Stream {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&config);
        let has = |name: &str| text.split([',', ' ']).any(|w| w == name);
        self.calls = Rc::new(Calls {
            times: if has("x10") { 10 } else { 1 },
            cluster: has("cluster"),
            shared: has("shared"),
            status: has("status"),
            code: has("code"),
            flags: has("flags"),
            clock: has("clock"),
        });
        let _ = hostcalls::set_shared_data("probe", Some(&[0u8; 180]), None);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            calls: Rc::clone(&self.calls),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> proxy_wasm::types::Action {
        for _ in 0..self.calls.times {
            if self.calls.cluster {
                let _ = std::hint::black_box(hostcalls::get_property(vec!["xds", "cluster_name"]));
            }
            if self.calls.shared {
                let _ = std::hint::black_box(hostcalls::get_shared_data("probe"));
            }
            if self.calls.clock {
                let _ = std::hint::black_box(hostcalls::get_current_time());
            }
        }
        proxy_wasm::types::Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> proxy_wasm::types::Action {
        for _ in 0..self.calls.times {
            if self.calls.status {
                let _ = std::hint::black_box(hostcalls::get_map_value(
                    MapType::HttpResponseHeaders,
                    ":status",
                ));
            }
        }
        proxy_wasm::types::Action::Continue
    }

    fn on_log(&mut self) {
        for _ in 0..self.calls.times {
            if self.calls.code {
                let _ = std::hint::black_box(hostcalls::get_property(vec!["response", "code"]));
            }
            if self.calls.flags {
                let _ = std::hint::black_box(hostcalls::get_property(vec!["response", "flags"]));
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}
