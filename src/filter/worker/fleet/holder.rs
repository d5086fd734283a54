//! The watch holder: the one root context per process (elected in shared data) that
//! reads the prefix when it joins, watches it, keeps the lease alive and judges the link
//! by `core::fleet::link`. Everything it learns goes through the same adoption as a
//! failed publish's answer; the link's state goes to shared data for every worker.

use std::hash::BuildHasher;

use crate::core::fleet::etcd::{self, method, WatchMessage};
use crate::core::fleet::keys;
use crate::core::fleet::link::{Command, Link, Timing};

use super::super::Worker;
use super::conn::{self, Conn, Link as LinkState};
use super::{Fleet, Pending};
use crate::filter::host::{GrpcTarget, Host};

/// gRPC's UNAUTHENTICATED: etcd refused the token (expired, or authentication was
/// switched on); a new one is asked for.
pub(super) const UNAUTHENTICATED: u32 = 16;

/// Most keys read when joining: every breaker (at most 512) with room for slots and
/// members.
pub(super) const RANGE_LIMIT: i64 = 4_096;

/// The holder's streams and link.
pub struct Holder {
    link: Link,
    pub(super) watch: Option<u32>,
    pub(super) keep: Option<u32>,
    /// Counts connection attempts, so a late answer to an earlier attempt's first read
    /// cannot end the current one.
    attempt: u32,
}

impl Holder {
    fn new(timeout_ms: u64, now_ms: u64) -> Holder {
        let timing = Timing {
            join_timeout_ms: timeout_ms.max(Timing::default().join_timeout_ms),
            ..Timing::default()
        };
        Holder {
            link: Link::new(timing, now_ms),
            watch: None,
            keep: None,
            attempt: 0,
        }
    }

    /// Ends both streams; a cancel is followed by no close callback.
    fn hang_up(&mut self, host: &impl Host) {
        for token in [self.watch.take(), self.keep.take()].into_iter().flatten() {
            let _ = host.grpc_cancel(token);
        }
    }
}

/// Jitter for the reconnect backoff, uniform in [0, 1).
pub(super) fn jitter(now_ms: u64) -> f64 {
    let r = std::collections::hash_map::RandomState::new().hash_one(now_ms);
    (r % 1_000) as f64 / 1_000.0
}

impl Fleet {
    pub(super) fn target<'a>(&'a self, service: &'a str, name: &'a str) -> GrpcTarget<'a> {
        GrpcTarget {
            grpc_service: &self.settings.grpc_service,
            service,
            method: name,
        }
    }

    /// A unary call to etcd, remembered by what its answer is for.
    pub(super) fn call(
        &mut self,
        host: &impl Host,
        to: (&str, &str),
        message: &[u8],
        pending: Pending,
    ) -> Result<(), u32> {
        let timeout = u32::try_from(self.settings.timeout_ms).unwrap_or(u32::MAX);
        let auth = Conn::load(host).token;
        let token = host
            .grpc_call(
                self.target(to.0, to.1),
                &Fleet::metadata(&auth),
                message,
                timeout,
            )
            .map_err(|e| e.0)?;
        self.calls.insert(token, pending);
        Ok(())
    }

    /// The first read of a connection attempt.
    pub(super) fn read_all(&mut self, host: &impl Host, attempt: u32) -> Result<(), u32> {
        let range = etcd::range_prefix(
            keys::everything(&self.settings.prefix).as_bytes(),
            RANGE_LIMIT,
        );
        self.call(
            host,
            (method::KV, method::RANGE),
            &range,
            Pending::Range(attempt),
        )
    }

    /// Asks etcd for a new token while connected (the last one was refused).
    fn reauthenticate(&mut self, host: &impl Host) {
        let Some((user, password)) = &self.credentials else {
            return;
        };
        let auth = etcd::authenticate(user, password);
        let _ = self.call(
            host,
            (method::AUTH, method::AUTHENTICATE),
            &auth,
            Pending::Reauth,
        );
    }

    /// One election step; taking or losing the role starts or ends the holder's work.
    fn elect(&mut self, host: &impl Host, now_ms: u64) {
        let holds = conn::elect(host, self.id, now_ms);
        match (&mut self.holder, holds) {
            (None, true) => {
                self.holder = Some(Holder::new(self.settings.timeout_ms, now_ms));
            }
            (Some(h), false) => {
                h.hang_up(host);
                self.holder = None;
            }
            _ => {}
        }
    }
}

impl Worker {
    /// Whether this context holds the fleet's watch (for the test-hooks build).
    #[cfg(all(feature = "test-hooks", target_arch = "wasm32"))]
    pub fn holds_fleet_watch(&self) -> bool {
        self.fleet.as_ref().is_some_and(|f| f.holder.is_some())
    }

    /// The fleet's part of the timer: stats, the election, the holder's link, and the
    /// claims this worker still owes etcd.
    pub fn fleet_tick(&mut self, host: &impl Host, now_ms: u64) {
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        fleet.metrics.flush(host);
        fleet.elect(host, now_ms);
        let commands = match &mut fleet.holder {
            Some(h) => h.link.tick(now_ms, jitter(now_ms)),
            None => Vec::new(),
        };
        let refused = fleet.credentials.is_some()
            && fleet.holder.as_ref().is_some_and(|h| h.link.connected());
        if refused
            && Conn::load(host).token.is_empty()
            && !fleet.calls.values().any(|p| matches!(p, Pending::Reauth))
        {
            fleet.reauthenticate(host);
        }
        self.fleet_run(host, commands, now_ms);
        self.fleet_publish(host, now_ms);
    }

    fn fleet_run(&mut self, host: &impl Host, commands: Vec<Command>, now_ms: u64) {
        for command in commands {
            let Some(fleet) = &mut self.fleet else {
                return;
            };
            let Some(h) = &mut fleet.holder else {
                return;
            };
            match command {
                Command::Connect => {
                    h.hang_up(host);
                    h.attempt = h.attempt.wrapping_add(1);
                    let attempt = h.attempt;
                    let sent = match &fleet.credentials {
                        Some((user, password)) if Conn::load(host).token.is_empty() => {
                            let auth = etcd::authenticate(user, password);
                            fleet.call(
                                host,
                                (method::AUTH, method::AUTHENTICATE),
                                &auth,
                                Pending::Auth(attempt),
                            )
                        }
                        _ => fleet.read_all(host, attempt),
                    };
                    if let Err(status) = sent {
                        self.fleet_down(host, status, now_ms);
                    }
                }
                Command::SendProgress => {
                    if let Some(w) = h.watch {
                        let _ = host.grpc_send(w, &etcd::watch_progress());
                    }
                }
                Command::SendKeepAlive => {
                    let lease = Conn::load(host).lease;
                    if let (Some(k), true) = (h.keep, lease != 0) {
                        let _ = host.grpc_send(k, &etcd::lease_keep_alive(lease));
                    }
                }
                Command::SendQuorumCheck => {
                    let key = keys::member(&fleet.settings.prefix, &fleet.member);
                    let probe = etcd::range_quorum(key.as_bytes());
                    // Unanswered, it is silence: the link's deadline decides.
                    let _ = fleet.call(host, (method::KV, method::RANGE), &probe, Pending::Quorum);
                }
                Command::Disconnect { why, log } => {
                    h.hang_up(host);
                    fleet.metrics.connected(host, false);
                    Conn::update(host, |c| {
                        c.link = LinkState::Disconnected;
                        c.since_ms = now_ms;
                        c.reason = format!("{why}{}", why.hint());
                    });
                    if log {
                        let hint = why.hint();
                        log::warn!("[CIRCUIT_BREAKER] fleet: etcd unreachable ({why}){hint}; every breaker decides locally until it answers again");
                    }
                }
            }
        }
    }

    /// A holder's call or stream failed with `status`: the link decides what follows.
    pub(super) fn fleet_down(&mut self, host: &impl Host, status: u32, now_ms: u64) {
        if status == UNAUTHENTICATED {
            Conn::update(host, |c| c.token.clear());
        }
        let commands = match self.fleet.as_mut().and_then(|f| f.holder.as_mut()) {
            Some(h) => h.link.on_closed(status, now_ms, jitter(now_ms)),
            None => return,
        };
        self.fleet_run(host, commands, now_ms);
    }

    /// The first read answered: adopt what it holds, then watch from the next revision
    /// and keep the lease alive (granting one if the process has none).
    /// Whether `attempt` is the holder's current connection attempt.
    pub(super) fn fleet_attempt_is(&self, attempt: u32) -> bool {
        self.fleet
            .as_ref()
            .and_then(|f| f.holder.as_ref())
            .is_some_and(|h| h.attempt == attempt)
    }

    /// A message on one of the holder's streams.
    pub fn fleet_message(&mut self, host: &impl Host, token: u32, body: &[u8], now_ms: u64) {
        let Some(h) = self.fleet.as_mut().and_then(|f| f.holder.as_mut()) else {
            return;
        };
        if h.keep == Some(token) {
            match etcd::lease_kept(body) {
                Ok(ttl) if ttl > 0 => h.link.on_keep_alive(now_ms),
                // The lease expired (etcd said TTL 0): grant a new one.
                Ok(_) => {
                    Conn::update(host, |c| c.lease = 0);
                    if let Some(fleet) = &mut self.fleet {
                        let grant = etcd::lease_grant(fleet.settings.lease_ttl_secs());
                        let _ = fleet.call(
                            host,
                            (method::LEASE, method::LEASE_GRANT),
                            &grant,
                            Pending::LeaseGrant,
                        );
                    }
                }
                Err(_) => {}
            }
            return;
        }
        if h.watch != Some(token) {
            return;
        }
        match etcd::watch_message(body) {
            Ok(WatchMessage::Created { revision, .. }) => {
                h.link.on_watch(revision, now_ms);
                h.link.on_joined(revision, now_ms);
                self.fleet_up(host, revision, now_ms);
            }
            Ok(WatchMessage::Progress { revision }) => h.link.on_watch(revision, now_ms),
            Ok(WatchMessage::Events { revision, events }) => {
                h.link.on_watch(revision, now_ms);
                for (deleted, kv) in &events {
                    if *deleted {
                        self.fleet_deleted(host, &kv.key);
                    } else {
                        self.fleet_stored(host, &kv.key, &kv.value, kv.mod_revision, now_ms);
                    }
                }
                Conn::update(host, |c| c.revision = c.revision.max(revision));
            }
            // Compacted past our revision, or refused: read everything again.
            Ok(WatchMessage::Canceled { .. }) => self.fleet_down(host, 0, now_ms),
            Err(_) => {}
        }
    }

    fn fleet_up(&mut self, host: &impl Host, revision: i64, now_ms: u64) {
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        let before = Conn::load(host);
        Conn::update(host, |c| {
            c.link = LinkState::Connected;
            c.since_ms = now_ms;
            c.reason.clear();
            c.revision = c.revision.max(revision);
        });
        fleet.metrics.connected(host, true);
        if before.link != LinkState::Connected {
            log::info!(
                "[CIRCUIT_BREAKER] fleet: connected to etcd as member {} at revision {revision}",
                fleet.member
            );
        }
    }

    /// The quorum probe answered: the member reached is in touch with a quorum.
    pub(super) fn fleet_quorum_confirmed(&mut self, now_ms: u64) {
        if let Some(h) = self.fleet.as_mut().and_then(|f| f.holder.as_mut()) {
            h.link.on_quorum(now_ms);
        }
    }

    /// One of the holder's streams closed (a cancelled one never gets here).
    pub fn fleet_closed(&mut self, host: &impl Host, token: u32, status: u32, now_ms: u64) {
        let ours = self
            .fleet
            .as_mut()
            .and_then(|f| f.holder.as_mut())
            .is_some_and(|h| {
                let ours = h.watch == Some(token) || h.keep == Some(token);
                if h.watch == Some(token) {
                    h.watch = None;
                }
                if h.keep == Some(token) {
                    h.keep = None;
                }
                ours
            });
        if ours {
            self.fleet_down(host, status, now_ms);
        }
    }
}
