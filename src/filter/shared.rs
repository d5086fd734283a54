//! Envoy's shared data as the breaker's state store: one process-wide map that every
//! worker's VM sees, written with compare-and-swap.

use crate::core::store::{StateStore, StoreError};

use super::host::{Host, Saved};

/// Prefix of every key this filter writes, versioned with the record format.
pub const KEY_PREFIX: &str = "circuit_breaker/v1/";
/// Compare-and-swap attempts before a write gives up; contention between a handful of
/// workers settles in two or three.
pub const CAS_ATTEMPTS: u32 = 16;

/// Key of the list of breakers.
pub const REGISTRY_KEY: &str = "circuit_breaker/v1/.breakers";

/// Key of the list of workers' queue tokens, and the prefix of the queues' names.
pub const QUEUES_KEY: &str = "circuit_breaker/v1/.queues";
/// Key of the counter that gives each worker's queue a name of its own.
pub const QUEUE_COUNTER_KEY: &str = "circuit_breaker/v1/.queue-counter";

/// The shared-data key of one cluster's record.
pub fn record_key(cluster: &str) -> String {
    format!("{KEY_PREFIX}record/{cluster}")
}

/// The shared-data key of one breaker's recent transitions.
pub fn history_key(cluster: &str) -> String {
    format!("{KEY_PREFIX}history/{cluster}")
}

/// The shared-data key of one breaker's last fifteen minutes in buckets.
pub fn timeline_key(cluster: &str) -> String {
    format!("{KEY_PREFIX}timeline/{cluster}")
}

/// The shared-data key of one breaker's last health probe.
pub fn probe_key(cluster: &str) -> String {
    format!("{KEY_PREFIX}probe/{cluster}")
}

/// The shared-data key of one piece of fleet state (`fleet/<name>`).
pub fn fleet_key(name: &str) -> String {
    format!("{KEY_PREFIX}fleet/{name}")
}

/// The host's shared data.
pub struct SharedData<'h, H: Host>(pub &'h H);

impl<H: Host> StateStore for SharedData<'_, H> {
    fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.shared_data(key).map_err(|e| StoreError::Host(e.0))
    }

    fn save(&self, key: &str, bytes: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match self.0.set_shared_data(key, bytes, cas.unwrap_or(0)) {
            Ok(Saved::Done) => Ok(()),
            Ok(Saved::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => Err(StoreError::Host(e.0)),
        }
    }
}

/// Where a request of the test-hooks build asks the fleet watch's holder to trap.
#[cfg(all(feature = "test-hooks", target_arch = "wasm32"))]
pub const TRAP_HOLDER_KEY: &str = "circuit_breaker/v1/.test-trap-holder";
