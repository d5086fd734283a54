//! The limit a per-cluster breaker's closed path can reach: a filter that makes only the two
//! host calls no such breaker can avoid (which cluster the request goes to; the response
//! status) and nothing else. `make bench-instructions` counts the breaker against it.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

pub struct Root;
pub struct Stream;

impl Context for Root {}
impl Context for Stream {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // black_box: the value is unused here, and the call must not be optimised away.
        let _ = std::hint::black_box(hostcalls::get_property(vec!["xds", "cluster_name"]));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let _ = std::hint::black_box(hostcalls::get_map_value(
            MapType::HttpResponseHeaders,
            ":status",
        ));
        Action::Continue
    }
}

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}
