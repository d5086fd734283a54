//! A proxy-wasm HTTP filter that does nothing. Envoy still calls into the VM for every
//! callback, so this is the floor below which no wasm filter can go; the benchmark
//! measures the breaker against it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

pub struct Root;
pub struct Stream;

impl Context for Root {}
impl Context for Stream {}
impl HttpContext for Stream {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}
