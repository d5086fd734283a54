//! envoy-circuit-breaker: a per-cluster circuit breaker for Envoy as a proxy-wasm HTTP
//! filter. `core` decides; `filter` is the thin shell that talks to the host.

pub mod core;
pub mod filter;
