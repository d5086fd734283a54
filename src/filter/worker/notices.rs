//! Telling the other workers at once. Each worker keeps a copy of every breaker's record
//! so the request path need not read shared data; a worker whose compare-and-swap made a
//! transition enqueues the breaker's name on every other worker's shared queue, and each
//! refreshes its copy when the host wakes it. The timer refreshes every copy as well, so a
//! lost notice costs one period at most.

use crate::core::registry;
use crate::core::store;

use super::super::host::Host;
use super::super::shared::{SharedData, QUEUES_KEY, QUEUE_COUNTER_KEY};
use super::slot::CAS_ATTEMPTS;
use super::Worker;

/// Notices drained per wake-up, at most; the rest wait for the next one.
const MAX_DRAIN: usize = 1_024;

/// This worker's queue, once registered.
#[derive(Debug, Default)]
pub struct Notices {
    own: Option<u32>,
    tried: bool,
}

impl Worker {
    /// Registers this worker's queue, once, from its first request: the main thread's root
    /// contexts tick but never serve requests, so they never register and never need to be
    /// told. The queue's token joins the process-wide list the notices go to.
    pub fn listen(&mut self, host: &impl Host) {
        if self.notices.tried {
            return;
        }
        self.notices.tried = true;
        let shared = SharedData(host);
        let n = store::compare_and_swap(&shared, QUEUE_COUNTER_KEY, b"0", CAS_ATTEMPTS, |b| {
            let n = std::str::from_utf8(b)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
                .wrapping_add(1);
            (n, Some(n.to_string().into_bytes()))
        });
        let Ok(n) = n else {
            return;
        };
        let Ok(token) = host.register_queue(&format!("{QUEUES_KEY}/{n}")) else {
            log::warn!("[CIRCUIT_BREAKER] cannot register a shared queue; this worker learns of other workers' transitions on its timer only");
            return;
        };
        let listed =
            store::compare_and_swap(
                &shared,
                QUEUES_KEY,
                b"",
                CAS_ATTEMPTS,
                |b| match registry::with(b, &token.to_string()) {
                    Ok(write) => (true, write),
                    Err(_) => (false, None),
                },
            );
        if listed == Ok(true) {
            self.notices.own = Some(token);
            // A transition made before the queue was listed was told to no one here: every
            // copy must be read again before it is trusted.
            for slot in &mut self.slots {
                slot.confirmed_at_ms = 0;
            }
        }
    }

    /// Whether other workers' transitions reach this worker by notice, so its copies may
    /// be trusted at all.
    pub(super) fn is_listening(&self) -> bool {
        self.notices.own.is_some()
    }

    /// The token of this worker's queue, once registered.
    pub fn queue(&self) -> Option<u32> {
        self.notices.own
    }

    /// Tells every other worker that slot `i` moved, if this worker moved it.
    pub(crate) fn tell_others(&mut self, host: &impl Host, i: usize) {
        self.fleet_claim(host, i);
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if !std::mem::take(&mut slot.moved) {
            return;
        }
        let Ok(Some((list, _))) = host.shared_data(QUEUES_KEY) else {
            return;
        };
        for token in registry::names(&list) {
            let Ok(token) = token.parse::<u32>() else {
                continue;
            };
            if Some(token) != self.notices.own {
                let _ = host.enqueue(token, slot.name.as_bytes());
            }
        }
    }

    /// The host woke this worker: refresh the copies of the breakers named on the queue.
    pub fn notified(&mut self, host: &impl Host, token: u32, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.drain(host, token, now_ms);
        self.fleet_publish(host, now_ms);
    }

    fn drain(&mut self, host: &impl Host, token: u32, now_ms: u64) {
        for _ in 0..MAX_DRAIN {
            let Ok(Some(name)) = host.dequeue(token) else {
                return;
            };
            if let Some(slot) = self.index.get(&name).and_then(|i| self.slots.get_mut(*i)) {
                slot.refresh(host, now_ms);
            }
        }
    }

    /// Wakes this worker's own root context (a notice to itself), so that work an HTTP
    /// context cannot do, such as publishing to the fleet, happens at once rather than on
    /// the next tick.
    pub(crate) fn wake_self(&self, host: &impl Host, name: &str) {
        if let Some(own) = self.notices.own {
            let _ = host.enqueue(own, name.as_bytes());
        }
    }
}
