//! What the bench binaries share: the one Envoy configuration they all write, a keep-alive
//! HTTP client (exact request counts without connection set-ups in them) and fleet mode's
//! set-up (a real etcd, the Envoy cluster that
//! reaches it, the plugin's fleet block) with the readers of the stats the fleet benches
//! compare, and the protection bench's upstream model, open-loop users and variants.

pub mod envoy;
pub mod fleet;
pub mod keep_alive;
pub mod machine;
pub mod protection;
