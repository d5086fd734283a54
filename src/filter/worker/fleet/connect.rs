//! Keeping the link to etcd, for the context that holds the watch: the election on every
//! tick, the link's commands (connect, progress requests, keep-alives, the quorum probe,
//! disconnect), the streams' messages and closes. Everything the watch brings goes through
//! the same adoption as a failed publish's answer; the link's state goes to shared data
//! for every worker.

use crate::core::fleet::etcd::{self, method, WatchMessage};
use crate::core::fleet::keys;
use crate::core::fleet::link::Command;

use crate::filter::host::Host;

use super::super::breakers::Breakers;
use super::calls::Pending;
use super::shared_link::{LinkState, SharedLink};
use super::watch::{self, jitter, Watch, UNAUTHENTICATED};
use super::Fleet;

impl Fleet {
    /// The fleet's part of the timer: stats, the election, the holder's link, and the
    /// claims this worker still owes etcd.
    pub fn tick(&mut self, host: &impl Host, breakers: &mut Breakers, now_ms: u64) {
        self.metrics.flush(host);
        self.elect(host, now_ms);
        let commands = match &mut self.watch {
            Some(w) => w.link.tick(now_ms, jitter(now_ms)),
            None => Vec::new(),
        };
        let refused =
            self.credentials.is_some() && self.watch.as_ref().is_some_and(|w| w.link.connected());
        if refused && SharedLink::load(host).token.is_empty() && !self.calls.reauthenticating() {
            self.reauthenticate(host);
        }
        self.run(host, commands, now_ms);
        if self.holds() {
            self.vote_gauges(host, breakers, now_ms);
        }
        self.publish(host, breakers, now_ms);
    }

    /// One election step; taking or losing the role starts or ends the holder's work.
    fn elect(&mut self, host: &impl Host, now_ms: u64) {
        let holds = watch::elect(host, self.id, now_ms);
        match (&mut self.watch, holds) {
            (None, true) => {
                self.watch = Some(Watch::new(self.settings.timeout_ms, now_ms));
            }
            (Some(w), false) => {
                w.hang_up(host);
                self.watch = None;
            }
            _ => {}
        }
    }

    /// Asks etcd for a new token while connected (the last one was refused).
    fn reauthenticate(&mut self, host: &impl Host) {
        let Some((user, password)) = &self.credentials else {
            return;
        };
        let auth = etcd::authenticate(user, password);
        let to = (method::AUTH, method::AUTHENTICATE);
        let _ = self
            .calls
            .send(host, &self.settings, to, &auth, Pending::Reauth);
    }

    fn run(&mut self, host: &impl Host, commands: Vec<Command>, now_ms: u64) {
        for command in commands {
            let Some(w) = &mut self.watch else {
                return;
            };
            match command {
                Command::Connect => {
                    w.hang_up(host);
                    w.attempt = w.attempt.wrapping_add(1);
                    let attempt = w.attempt;
                    if let Err(status) = self.connect(host, attempt) {
                        self.down(host, status, now_ms);
                    }
                }
                Command::SendProgress => {
                    if let Some(token) = w.watch {
                        let _ = host.grpc_send(token, &etcd::watch_progress());
                    }
                }
                Command::SendKeepAlive => {
                    let lease = SharedLink::load(host).lease;
                    if let (Some(k), true) = (w.keep, lease != 0) {
                        let _ = host.grpc_send(k, &etcd::lease_keep_alive(lease));
                    }
                }
                Command::SendQuorumCheck => {
                    let key = keys::member(&self.settings.prefix, &self.member);
                    let probe = etcd::range_quorum(key.as_bytes());
                    let to = (method::KV, method::RANGE);
                    // Unanswered, it is silence: the link's deadline decides.
                    let _ = self
                        .calls
                        .send(host, &self.settings, to, &probe, Pending::Quorum);
                }
                Command::Disconnect { why, log } => {
                    w.hang_up(host);
                    self.metrics.connected(host, false);
                    SharedLink::update(host, |c| {
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

    /// A connection attempt's first step: a token when the fleet authenticates and has
    /// none, else the first read.
    fn connect(&mut self, host: &impl Host, attempt: u32) -> Result<(), u32> {
        match &self.credentials {
            Some((user, password)) if SharedLink::load(host).token.is_empty() => {
                let auth = etcd::authenticate(user, password);
                let to = (method::AUTH, method::AUTHENTICATE);
                self.calls
                    .send(host, &self.settings, to, &auth, Pending::Auth(attempt))
            }
            _ => self
                .calls
                .read_all(host, &self.settings, Pending::Range(attempt)),
        }
    }

    /// A holder's call or stream failed with `status`: the link decides what follows.
    pub(super) fn down(&mut self, host: &impl Host, status: u32, now_ms: u64) {
        if status == UNAUTHENTICATED {
            SharedLink::update(host, |c| c.token.clear());
        }
        let commands = match &mut self.watch {
            Some(w) => w.link.on_closed(status, now_ms, jitter(now_ms)),
            None => return,
        };
        self.run(host, commands, now_ms);
    }

    /// Whether `attempt` is the holder's current connection attempt.
    pub(super) fn attempt_is(&self, attempt: u32) -> bool {
        self.watch.as_ref().is_some_and(|w| w.attempt == attempt)
    }

    /// A message on one of the holder's streams.
    pub fn message(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        token: u32,
        body: &[u8],
        now_ms: u64,
    ) {
        let Some(w) = &mut self.watch else {
            return;
        };
        if w.keep == Some(token) {
            return self.kept(host, body, now_ms);
        }
        if w.watch != Some(token) {
            return;
        }
        match etcd::watch_message(body) {
            Ok(WatchMessage::Created { revision, .. }) => {
                w.link.on_watch(revision, now_ms);
                w.link.on_joined(revision, now_ms);
                self.up(host, revision, now_ms);
            }
            Ok(WatchMessage::Progress { revision }) => w.link.on_watch(revision, now_ms),
            Ok(WatchMessage::Events { revision, events }) => {
                w.link.on_watch(revision, now_ms);
                for (deleted, kv) in &events {
                    if *deleted {
                        self.deleted(host, breakers, &kv.key, now_ms);
                    } else {
                        self.stored(host, breakers, &kv.key, &kv.value, kv.mod_revision, now_ms);
                    }
                }
                SharedLink::update(host, |c| c.revision = c.revision.max(revision));
                // What the events made owed goes now: the holder may be the main thread's
                // context, which no notice wakes.
                self.publish(host, breakers, now_ms);
            }
            // Compacted past our revision, or refused: read everything again.
            Ok(WatchMessage::Canceled { .. }) => self.down(host, 0, now_ms),
            Err(_) => {}
        }
    }

    /// A message on the keep-alive stream: the lease lives on, or (etcd said TTL 0) it
    /// expired and a new one is granted.
    fn kept(&mut self, host: &impl Host, body: &[u8], now_ms: u64) {
        match etcd::lease_kept(body) {
            Ok(ttl) if ttl > 0 => {
                if let Some(w) = &mut self.watch {
                    w.link.on_keep_alive(now_ms);
                }
            }
            Ok(_) => {
                SharedLink::update(host, |c| c.lease = 0);
                let grant = etcd::lease_grant(self.settings.lease_ttl_secs());
                let to = (method::LEASE, method::LEASE_GRANT);
                let _ = self
                    .calls
                    .send(host, &self.settings, to, &grant, Pending::LeaseGrant);
            }
            Err(_) => {}
        }
    }

    fn up(&mut self, host: &impl Host, revision: i64, now_ms: u64) {
        let before = SharedLink::load(host);
        SharedLink::update(host, |c| {
            c.link = LinkState::Connected;
            c.since_ms = now_ms;
            c.reason.clear();
            c.revision = c.revision.max(revision);
        });
        self.metrics.connected(host, true);
        if before.link != LinkState::Connected {
            log::info!(
                "[CIRCUIT_BREAKER] fleet: connected to etcd as member {} at revision {revision}",
                self.member
            );
        }
    }

    /// The quorum probe answered: the member reached is in touch with a quorum.
    pub(super) fn quorum_confirmed(&mut self, now_ms: u64) {
        if let Some(w) = &mut self.watch {
            w.link.on_quorum(now_ms);
        }
    }

    /// One of the holder's streams closed (a cancelled one never gets here).
    pub fn closed(&mut self, host: &impl Host, token: u32, status: u32, now_ms: u64) {
        if self.watch.as_mut().is_some_and(|w| w.closed(token)) {
            self.down(host, status, now_ms);
        }
    }
}
