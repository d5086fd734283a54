//! Webhook delivery of transition events: the timer sends what the worker's breakers
//! gathered, and the answers come back by token. Deliveries in flight are bounded.

use std::collections::HashMap;

use crate::core::config::EventsTarget;
use crate::core::history::Event;

use crate::filter::host::Host;

use super::breakers::Breakers;

/// Event deliveries awaiting an answer, at most; beyond, new events count as failed.
const MAX_DELIVERIES_IN_FLIGHT: usize = 1_024;

/// The webhook, if one is configured, and the deliveries awaiting its answer (the
/// breaker each was for, by delivery token).
#[derive(Default)]
pub struct Deliveries {
    target: Option<EventsTarget>,
    in_flight: HashMap<u32, usize>,
}

impl Deliveries {
    pub fn new(target: Option<EventsTarget>) -> Deliveries {
        Deliveries {
            target,
            in_flight: HashMap::new(),
        }
    }

    /// Sends the events made since the last call to the webhook, if one is configured.
    pub fn deliver(&mut self, host: &impl Host, breakers: &mut Breakers) {
        let Some(target) = self.target.clone() else {
            return;
        };
        for i in 0..breakers.len() {
            let Some(breaker) = breakers.get_mut(i) else {
                continue;
            };
            for event in std::mem::take(&mut breaker.outbox) {
                match self.send(host, &target, &event) {
                    Some(token) => {
                        self.in_flight.insert(token, i);
                    }
                    None => breaker.metrics.event_delivered(host, false),
                }
            }
        }
    }

    fn send(&self, host: &impl Host, target: &EventsTarget, event: &Event) -> Option<u32> {
        if self.in_flight.len() >= MAX_DELIVERIES_IN_FLIGHT {
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
    pub fn delivered(
        &mut self,
        host: &impl Host,
        token: u32,
        status: Option<u32>,
        breakers: &Breakers,
    ) {
        if let Some(i) = self.in_flight.remove(&token) {
            if let Some(breaker) = breakers.get(i) {
                let ok = status.is_some_and(|s| (200..300).contains(&s));
                breaker.metrics.event_delivered(host, ok);
            }
        }
    }
}
