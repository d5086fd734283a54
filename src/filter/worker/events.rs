//! Webhook delivery of transition events: the timer sends what the worker's slots
//! gathered, and the answers come back by token. Deliveries in flight are bounded.

use crate::core::config::EventsTarget;
use crate::core::history::Event;

use super::super::host::Host;
use super::Worker;

/// Event deliveries awaiting an answer, at most; beyond, new events count as failed.
const MAX_DELIVERIES_IN_FLIGHT: usize = 1_024;

/// An event sent to the webhook, by delivery token.
pub struct Delivery {
    slot: usize,
}

impl Worker {
    /// Sends the events made since the last call to the webhook, if one is configured.
    pub fn deliver_events(&mut self, host: &impl Host) {
        let Some(target) = self.config.events.clone() else {
            return;
        };
        for i in 0..self.slots.len() {
            let outbox = std::mem::take(&mut self.slots[i].outbox);
            for event in outbox {
                match self.send(host, &target, &event) {
                    Some(token) => {
                        self.deliveries.insert(token, Delivery { slot: i });
                    }
                    None => self.slots[i].metrics.event_delivered(host, false),
                }
            }
        }
    }

    fn send(&self, host: &impl Host, target: &EventsTarget, event: &Event) -> Option<u32> {
        if self.deliveries.len() >= MAX_DELIVERIES_IN_FLIGHT {
            return None;
        }
        let body = serde_json::to_vec(event).ok()?;
        let headers = [
            (":method", "POST"),
            (":path", target.path.as_str()),
            (":authority", target.cluster.as_str()),
            ("content-type", "application/json"),
            ("user-agent", "envoy-circuit-breaker"),
        ];
        let timeout = u32::try_from(target.timeout_ms).unwrap_or(u32::MAX);
        host.http_call(&target.cluster, &headers, &body, timeout)
            .ok()
    }

    /// Notes the answer to delivery `token`: a 2xx is delivered, anything else failed.
    pub fn delivered(&mut self, host: &impl Host, token: u32, status: Option<u32>) {
        if let Some(d) = self.deliveries.remove(&token) {
            if let Some(slot) = self.slots.get(d.slot) {
                let ok = status.is_some_and(|s| (200..300).contains(&s));
                slot.metrics.event_delivered(host, ok);
            }
        }
    }
}
