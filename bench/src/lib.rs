//! What the bench binaries share: the one Envoy configuration they all write, a keep-alive
//! HTTP client (exact request counts without connection set-ups in them) and fleet mode's
//! set-up (a real etcd, the Envoy cluster that
//! reaches it, the plugin's fleet block) with the readers of the stats the fleet benches
//! compare.

pub mod envoy;
pub mod fleet;
pub mod keep_alive;
