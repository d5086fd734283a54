//! The watch holder's own state: the one root context per process, elected in shared data
//! (`core::fleet::holder`), holds the watch and keep-alive streams and judges the link by
//! `core::fleet::link`. What it does with them is in `connect.rs`.

use std::hash::BuildHasher;

use crate::core::fleet::holder;
use crate::core::fleet::link::{Link, Timing};
use crate::core::store::StateStore;

use crate::filter::host::{Host, Saved};
use crate::filter::shared::{fleet_key, SharedData};

/// gRPC's UNAUTHENTICATED: etcd refused the token (expired, or authentication was
/// switched on); a new one is asked for.
pub const UNAUTHENTICATED: u32 = 16;

/// Most keys read when joining: every breaker (at most 512) with room for slots and
/// members.
pub const RANGE_LIMIT: i64 = 4_096;

/// The holder's streams and link.
pub struct Watch {
    pub link: Link,
    pub watch: Option<u32>,
    pub keep: Option<u32>,
    /// Counts connection attempts, so a late answer to an earlier attempt's first read
    /// cannot end the current one.
    pub attempt: u32,
}

impl Watch {
    pub fn new(timeout_ms: u64, now_ms: u64) -> Watch {
        let timing = Timing {
            join_timeout_ms: timeout_ms.max(Timing::default().join_timeout_ms),
            ..Timing::default()
        };
        Watch {
            link: Link::new(timing, now_ms),
            watch: None,
            keep: None,
            attempt: 0,
        }
    }

    /// Ends both streams; a cancel is followed by no close callback.
    pub fn hang_up(&mut self, host: &impl Host) {
        for token in [self.watch.take(), self.keep.take()].into_iter().flatten() {
            let _ = host.grpc_cancel(token);
        }
    }

    /// Forgets stream `token` if it is one of the holder's; true if it was.
    pub fn closed(&mut self, token: u32) -> bool {
        let ours = self.watch == Some(token) || self.keep == Some(token);
        if self.watch == Some(token) {
            self.watch = None;
        }
        if self.keep == Some(token) {
            self.keep = None;
        }
        ours
    }
}

/// Jitter for the reconnect backoff, uniform in [0, 1).
pub fn jitter(now_ms: u64) -> f64 {
    let r = std::collections::hash_map::RandomState::new().hash_one(now_ms);
    (r % 1_000) as f64 / 1_000.0
}

/// One election step: true when the context `me` holds the watch after it. The host has
/// no atomic create, so a missing key is first written empty.
pub fn elect(host: &impl Host, me: u64, now_ms: u64) -> bool {
    let k = fleet_key("holder");
    let store = SharedData(host);
    if let Ok(None) = store.load(&k) {
        let _ = host.set_shared_data(&k, b"", 0);
    }
    let Ok(Some((stored, cas))) = store.load(&k) else {
        return false;
    };
    match holder::step(Some(&stored), me, now_ms) {
        holder::Step::Hold(bytes) => {
            matches!(host.set_shared_data(&k, &bytes, cas), Ok(Saved::Done))
        }
        holder::Step::Follow { .. } => false,
    }
}
