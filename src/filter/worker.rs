//! One thread's filter: its breakers, the webhook deliveries, fleet mode when configured,
//! and the control API's token. Each callback of the root and HTTP contexts lands here,
//! reads the host once and hands the decision to the part whose job it is; a move of a
//! breaker made here is told to the other workers and claimed for the fleet in one place,
//! [`Worker::tell_others`].

mod admission;
mod breaker;
mod breakers;
mod control_api;
mod events;
pub mod fleet;
mod notices;
mod probes;

use crate::core::breaker::{Now, Ticket};
use crate::core::config::PluginConfig;
use crate::core::control::{self, ApiError, Command};
use crate::core::reply::Answer;
use crate::core::settings::Settings;

use super::host::Host;

pub use admission::{Admitted, Captured, Decision, Seen};
pub use control_api::ApiAnswer;

use admission::{Recorded, Rng};
use breakers::Breakers;
use events::Deliveries;
use fleet::probe::{Probe, ProbeSlotClaim};
use fleet::Fleet;
use probes::Probes;

/// Timer period while any breaker needs the timer: the longest an open breaker overstays
/// its open time when no request arrives, and the delay before batched counts reach stats
/// and the shared window.
pub const TICK_MS: u32 = 100;
/// Timer period while no breaker needs it: the first request, a notice or a control API
/// change brings back [`TICK_MS`] at once, so it only bounds how late this context meets
/// breakers other workers created.
pub const IDLE_TICK_MS: u32 = 1_000;

pub struct Worker {
    breakers: Breakers,
    /// Whether the timer runs at [`IDLE_TICK_MS`]: then the coarse clock may be that old,
    /// and must be read afresh before a decision trusts it.
    idle: bool,
    deliveries: Deliveries,
    /// Fleet mode's state in this VM, when the configuration has a `fleet` block.
    fleet: Option<Fleet>,
    /// The breakers' own health probes this context sends.
    probes: Probes,
    rng: Rng,
    /// The bearer token for control API changes, from the host environment.
    token: Option<String>,
}

impl Worker {
    /// The thread's filter for `config`, with the configured breakers loaded; in fleet
    /// mode each context reads etcd once from here, so a starting Envoy learns the fleet's
    /// decisions in its first milliseconds.
    pub fn new(host: &impl Host, config: PluginConfig) -> Worker {
        let now_ms = host.now_ms();
        let deliveries = Deliveries::new(config.events.clone());
        let fleet = config.fleet.clone().map(|s| Fleet::new(host, s));
        let mut worker = Worker {
            breakers: Breakers::new(host, config, now_ms),
            idle: false,
            deliveries,
            fleet,
            probes: Probes::default(),
            rng: Rng::new(now_ms),
            token: std::env::var(control::TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
        };
        if let Some(fleet) = &mut worker.fleet {
            fleet.start(host);
        }
        worker
    }

    pub fn settings(&self, breaker: usize) -> Option<&Settings> {
        self.breakers.get(breaker).map(|b| &b.settings)
    }

    /// The breaker named `name`, created (and registered process-wide) on first sight.
    pub fn breaker_for(&mut self, host: &impl Host, name: &[u8]) -> Option<usize> {
        self.breakers.named(host, name)
    }

    /// The breaker for `route` inside the cluster of breaker `cluster`; the cluster's own
    /// breaker when the route has no name or the cluster's cap is reached.
    pub fn route_breaker(&mut self, host: &impl Host, cluster: usize, route: &[u8]) -> usize {
        self.breakers.route(host, cluster, route)
    }

    /// Registers this worker's queue, once, from its first request.
    pub fn listen(&mut self, host: &impl Host) {
        self.breakers.listen(host);
    }

    /// The token of this worker's queue, once registered.
    pub fn queue(&self) -> Option<u32> {
        self.breakers.queue()
    }

    /// Decides whether a request to breaker `i` goes upstream. `grpc` says whether the
    /// caller speaks gRPC (asked only to shape a refusal); `cache_key` is the path of a
    /// GET that a cached answer may serve.
    pub fn admit(
        &mut self,
        host: &impl Host,
        i: usize,
        grpc: impl FnOnce() -> bool,
        cache_key: Option<&str>,
    ) -> Decision {
        self.wake(host);
        let roll = self.rng.roll();
        let mut now = Now::new(self.breakers.clock_ms, || host.now_ms());
        // Until this worker's queue is listed, nobody can tell it of a transition.
        let listening = self.breakers.is_listening();
        let Some(breaker) = self.breakers.get_mut(i) else {
            return Decision::Pass;
        };
        let decision = admission::admit(breaker, host, listening, &mut now, roll, grpc, cache_key);
        self.breakers.clock_ms = now.latest();
        self.tell_others(host, i);
        decision
    }

    /// Whether the response to a GET of `key` should be captured for the cache.
    pub fn wants_capture(&self, i: usize, key: &str, now_ms: u64) -> bool {
        self.breakers
            .get(i)
            .is_some_and(|b| admission::wants_capture(b, key, now_ms))
    }

    /// Records how an admitted request ended.
    pub fn record(&mut self, host: &impl Host, admitted: Admitted) {
        self.wake(host);
        let (i, ticket, probe_slot) = (admitted.breaker, admitted.ticket, admitted.probe_slot);
        let Some(breaker) = self.breakers.get_mut(i) else {
            return;
        };
        let Recorded::Written { now_ms, outcome } = admission::record(breaker, host, admitted)
        else {
            return;
        };
        self.breakers.clock_ms = now_ms;
        if let (Some(held), Some(fleet)) = (probe_slot, &mut self.fleet) {
            fleet.probe_ended(host, &self.breakers, i, held, ticket, outcome);
        }
        self.tell_others(host, i);
    }

    /// Tells every other worker that breaker `i` moved, if this worker moved it, and in
    /// fleet mode makes the move a claim owed to etcd.
    fn tell_others(&mut self, host: &impl Host, i: usize) {
        if let Some(fleet) = &mut self.fleet {
            fleet.claim(host, &mut self.breakers, i);
        }
        self.breakers.tell_others(host, i);
    }

    /// The timer: moves on the breakers that need it (in fleet mode, every breaker: the
    /// fleet's duties read every copy), sends the webhook's events and does the fleet's
    /// duties; then slows down to [`IDLE_TICK_MS`] when nothing will need it sooner.
    pub fn tick(&mut self, host: &impl Host, now_ms: u64) {
        let every = self.fleet.is_some();
        let looked = self.breakers.tick(host, now_ms, every);
        // A tick that found work keeps the pace: under steady traffic every tick finds
        // some, and slowing down only to be woken by the next request would cost the
        // request path two host calls each period.
        let worked = !looked.is_empty();
        for i in looked {
            self.tell_others(host, i);
        }
        for i in self
            .probes
            .tick(host, &mut self.breakers, self.fleet.as_mut(), now_ms)
        {
            self.tell_others(host, i);
        }
        self.deliveries.deliver(host, &mut self.breakers);
        if let Some(fleet) = &mut self.fleet {
            fleet.tick(host, &mut self.breakers, now_ms);
        }
        let soon = now_ms.saturating_add(u64::from(IDLE_TICK_MS));
        let idle = !every && !worked && !self.breakers.need_timer_by(soon);
        self.pace(host, idle);
    }

    /// Sets the timer's period for an idle context or a busy one, when it changes.
    fn pace(&mut self, host: &impl Host, idle: bool) {
        if idle == self.idle {
            return;
        }
        let period = if idle { IDLE_TICK_MS } else { TICK_MS };
        if host.set_tick_period_ms(period).is_ok() {
            self.idle = idle;
        }
    }

    /// Work arrived at an idle context: the coarse clock may be a slow period old, so it
    /// is read afresh, and the timer goes back to [`TICK_MS`] for the work to come.
    fn wake(&mut self, host: &impl Host) {
        if self.idle {
            self.breakers.clock_ms = self.breakers.clock_ms.max(host.now_ms());
            self.pace(host, false);
        }
    }

    /// The host woke this worker: another worker moved a breaker (or this one has fleet
    /// work its HTTP context could not do).
    pub fn notified(&mut self, host: &impl Host, token: u32, now_ms: u64) {
        self.wake(host);
        self.breakers.drain(host, token, now_ms);
        if let Some(fleet) = &mut self.fleet {
            fleet.publish(host, &mut self.breakers, now_ms);
        }
    }

    /// Runs a control API command against the shared state; the caller has checked the
    /// token for commands that change anything.
    pub fn control(
        &mut self,
        host: &impl Host,
        command: &Command,
        body: &[u8],
        now_ms: u64,
    ) -> Result<ApiAnswer, ApiError> {
        self.wake(host);
        let names = control_api::registered(host);
        control_api::check(command, &names)?;
        let (changed, result) =
            control_api::change(host, &mut self.breakers, command, body, &names, now_ms);
        for i in changed {
            self.tell_others(host, i);
        }
        result?;
        let fleet = self.fleet.as_ref();
        control_api::answer(host, &mut self.breakers, fleet, command, &names, now_ms)
    }

    /// Whether control API changes are allowed for a caller offering `authorization`.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        control::authorize(self.token.as_deref(), authorization)
    }

    /// The answer to one of this context's HTTP calls: a health probe's or a webhook
    /// delivery's (`status` `None` when no response came).
    pub fn call_answered(&mut self, host: &impl Host, token: u32, status: Option<u32>) {
        self.wake(host);
        if self.probes.sent(token) {
            if let Some(i) = self
                .probes
                .answered(host, &mut self.breakers, token, status)
            {
                self.tell_others(host, i);
            }
            return;
        }
        self.deliveries
            .delivered(host, token, status, &self.breakers);
    }

    /// In fleet mode, the call to etcd a request to breaker `i` must wait for before it is
    /// decided (see [`Fleet::first_read`]); `None`: decide now.
    pub fn first_read(&mut self, host: &impl Host, i: usize) -> Option<u32> {
        self.fleet.as_mut()?.first_read(host, &mut self.breakers, i)
    }

    /// The answer to [`Worker::first_read`] for breaker `name`.
    pub fn first_read_answered(&mut self, host: &impl Host, name: &[u8], status: u32, size: usize) {
        if let Some(fleet) = &mut self.fleet {
            fleet.first_read_answered(host, &mut self.breakers, name, status, size);
        }
    }

    /// Whether the probe admitted to breaker `i` may go, must wait for a fleet probe slot,
    /// or is refused.
    pub fn probe(&mut self, host: &impl Host, i: usize) -> Probe {
        match &mut self.fleet {
            Some(fleet) => fleet.probe(host, &self.breakers, i),
            None => Probe::Go(None),
        }
    }

    /// The answer to a fleet probe slot claim: go, wait for the next, or refuse.
    pub fn probe_answered(
        &mut self,
        host: &impl Host,
        claim: ProbeSlotClaim,
        status: u32,
        size: usize,
    ) -> Probe {
        match &mut self.fleet {
            Some(fleet) => fleet.probe_answered(host, &self.breakers, claim, status, size),
            None => Probe::Refuse,
        }
    }

    /// Gives a local probe back without an outcome (its fleet slot claim failed, or the
    /// client left while it waited), so the local gate admits another.
    pub fn give_back(&mut self, host: &impl Host, i: usize, ticket: Ticket) {
        self.wake(host);
        if let Some(breaker) = self.breakers.get_mut(i) {
            admission::give_back(breaker, host, ticket);
        }
        self.tell_others(host, i);
    }

    /// Gives the probe back and shapes the refusal of a request that found no fleet probe
    /// slot.
    pub fn refuse_probe(
        &mut self,
        host: &impl Host,
        i: usize,
        ticket: Ticket,
        grpc: bool,
    ) -> Option<Answer> {
        self.give_back(host, i, ticket);
        let breaker = self.breakers.get_mut(i)?;
        Some(admission::half_open_refusal(breaker, grpc))
    }

    /// The answer to one of the fleet's unary calls made from this root context.
    pub fn grpc_answered(
        &mut self,
        host: &impl Host,
        token: u32,
        status: u32,
        size: usize,
        now_ms: u64,
    ) {
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        if self.probes.claiming(token) {
            let b = &mut self.breakers;
            if let Some(i) = self
                .probes
                .slot_answered(host, b, fleet, token, status, size)
            {
                self.tell_others(host, i);
            }
            return;
        }
        fleet.answered(host, &mut self.breakers, token, status, size, now_ms);
    }

    /// A message on one of the fleet's streams.
    pub fn grpc_message(&mut self, host: &impl Host, token: u32, body: &[u8], now_ms: u64) {
        if let Some(fleet) = &mut self.fleet {
            fleet.message(host, &mut self.breakers, token, body, now_ms);
        }
    }

    /// One of the fleet's streams closed.
    pub fn grpc_closed(&mut self, host: &impl Host, token: u32, status: u32, now_ms: u64) {
        if let Some(fleet) = &mut self.fleet {
            fleet.closed(host, token, status, now_ms);
        }
    }

    /// Whether this context holds the fleet's watch (for the test-hooks build).
    #[cfg(all(feature = "test-hooks", target_arch = "wasm32"))]
    pub fn holds_fleet_watch(&self) -> bool {
        self.fleet.as_ref().is_some_and(Fleet::holds)
    }
}
