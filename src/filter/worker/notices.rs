//! Telling the other workers at once. Each worker keeps a copy of every breaker's record
//! so the request path need not read shared data; a worker whose compare-and-swap made a
//! transition enqueues the breaker's name on every other worker's shared queue, and each
//! refreshes its copy when the host wakes it. The timer confirms the copies of the breakers
//! this worker is busy with; any other copy ages out of trust within a second
//! (`MAX_COPY_AGE_MS`) and the next request then reads the shared record, so a lost
//! notice costs a busy breaker one period and a quiet one at most that second.

use crate::core::registry;
use crate::core::store;

use crate::filter::host::Host;
use crate::filter::shared::{SharedData, CAS_ATTEMPTS, QUEUES_KEY, QUEUE_COUNTER_KEY};

/// Notices drained per wake-up, at most; the rest wait for the next one.
pub const MAX_DRAIN: usize = 1_024;

/// This worker's queue, once registered.
#[derive(Debug, Default)]
pub struct Notices {
    own: Option<u32>,
    tried: bool,
}

impl Notices {
    /// Registers this worker's queue, once: true when it was listed just now. The queue's
    /// token joins the process-wide list the notices go to.
    pub fn listen(&mut self, host: &impl Host) -> bool {
        if self.tried {
            return false;
        }
        self.tried = true;
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
            return false;
        };
        let Ok(token) = host.register_queue(&format!("{QUEUES_KEY}/{n}")) else {
            log::warn!("[CIRCUIT_BREAKER] cannot register a shared queue; this worker learns of other workers' transitions on its timer only");
            return false;
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
            self.own = Some(token);
            return true;
        }
        false
    }

    /// The token of this worker's queue, once registered.
    pub fn own(&self) -> Option<u32> {
        self.own
    }

    /// Enqueues `name` on every other worker's queue.
    pub fn tell(&self, host: &impl Host, name: &str) {
        let Ok(Some((list, _))) = host.shared_data(QUEUES_KEY) else {
            return;
        };
        for token in registry::names(&list) {
            let Ok(token) = token.parse::<u32>() else {
                continue;
            };
            if Some(token) != self.own {
                let _ = host.enqueue(token, name.as_bytes());
            }
        }
    }

    /// Wakes this worker's own root context (a notice to itself), so that work an HTTP
    /// context cannot do, such as publishing to the fleet, happens at once rather than on
    /// the next tick.
    pub fn wake_self(&self, host: &impl Host, name: &str) {
        if let Some(own) = self.own {
            let _ = host.enqueue(own, name.as_bytes());
        }
    }
}
