//! The thin shell between Envoy and the core: host calls behind one trait, shared data,
//! stats, and the root and HTTP contexts. Each callback reads what it needs from the host
//! once and lets the core decide.

pub mod host;
pub mod http;
pub mod logger;
pub mod metrics;
pub mod root;
pub mod shared;
pub mod worker;

#[cfg(test)]
mod probe_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod host_tests;

#[cfg(all(target_arch = "wasm32", not(test)))]
proxy_wasm::main! {{
    logger::install();
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
