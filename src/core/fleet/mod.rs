//! Fleet mode's pure parts: many Envoys sharing each breaker's decisions through etcd v3
//! (design in docs/src/fleet-design.md). Messages and their bounded decoding, keys, the stored record,
//! the merge rule, the members' votes and the quorum that opens a breaker in the fleet,
//! what each Envoy remembers between events, the election of the one watch holder, its
//! link's life, and the `fleet` settings; no proxy-wasm, time always an argument.

pub mod departed;
pub mod etcd;
pub mod holder;
pub mod keys;
pub mod link;
pub mod merge;
pub mod quorum;
pub mod record;
pub mod settings;
pub mod shadow;
pub mod vote;
