//! Joining etcd: the one read every context makes when it starts, the read a first request
//! waits for, and the holder's steps before its link is up (token, first read, watch and
//! keep-alive streams, lease and member key). What a read holds goes through the same
//! adoption as a watch event.

use crate::core::fleet::etcd::{self, method};
use crate::core::fleet::keys;

use crate::filter::host::{Buffer, Host};

use super::super::breakers::Breakers;
use super::calls::{metadata, target, Pending};
use super::shadows::{has_read_breaker, load_shadow, note_read_breaker};
use super::shared_link::{has_read, note_read, SharedLink};
use super::Fleet;

impl Fleet {
    /// Reads the prefix once when the VM starts, before any election: the first holder is
    /// only elected on a timer tick, and a root context configured on the main thread
    /// before Envoy runs may never tick, so every context takes what etcd holds now.
    pub fn start(&mut self, host: &impl Host) {
        let _ = self.calls.read_all(host, &self.settings, Pending::Peek);
    }

    /// The answer to [`Fleet::start`]: adopt what etcd holds; the link is the holder's
    /// business.
    pub(super) fn peeked(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        body: &[u8],
        now_ms: u64,
    ) {
        if let Ok((_, kvs)) = etcd::range_answer(body) {
            for kv in &kvs {
                self.stored(host, breakers, &kv.key, &kv.value, kv.mod_revision, now_ms);
            }
            note_read(host);
        }
    }

    /// Until this process has read etcd once, a request to a fleet breaker reads the
    /// breaker's decision itself and waits for it (bounded by `fleet.timeout`), so an Envoy
    /// started while the fleet's breaker is open refuses from its first request. So does
    /// the first request to a breaker the process did not have when it read etcd (one made
    /// with the default settings on first sight): its records were ignored then. Returns
    /// the call's token; `None`: decide now. Once settled, a breaker costs one flag per
    /// request.
    pub fn first_read(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        i: usize,
    ) -> Option<u32> {
        let breaker = breakers.get_mut(i)?;
        if !breaker.settings.fleet || breaker.fleet_settled {
            return None;
        }
        let ask = if has_read(host) {
            SharedLink::is_connected(host)
                && load_shadow(host, &breaker.name).seen.is_none()
                && !has_read_breaker(host, &breaker.name)
        } else {
            !self.first_read_done
        };
        if !ask {
            breaker.fleet_settled = true;
            return None;
        }
        let key = keys::decision(&self.settings.prefix, &breaker.name);
        let range = etcd::RangeRequest {
            key: key.into_bytes(),
            ..etcd::RangeRequest::default()
        };
        let auth = SharedLink::load(host).token;
        let timeout = u32::try_from(self.settings.timeout_ms).unwrap_or(u32::MAX);
        let sent = host
            .grpc_call(
                target(&self.settings, method::KV, method::RANGE),
                &metadata(&auth),
                &prost::Message::encode_to_vec(&range),
                timeout,
            )
            .ok();
        breaker.fleet_settled = sent.is_none();
        sent
    }

    /// The answer to [`Fleet::first_read`] for breaker `name`: adopt what it holds.
    /// Whatever the answer, this worker waits on etcd for that breaker no more, and after
    /// a failed read, for no breaker until the process has read etcd.
    pub fn first_read_answered(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        name: &[u8],
        status: u32,
        size: usize,
    ) {
        if let Some(breaker) = breakers.find(name).and_then(|i| breakers.get_mut(i)) {
            breaker.fleet_settled = true;
        }
        if status != 0 {
            self.first_read_done = true;
            return;
        }
        let body = host.buffer(Buffer::GrpcReceive, size).unwrap_or_default();
        let now_ms = host.now_ms();
        if let Ok((_, kvs)) = etcd::range_answer(&body) {
            for kv in &kvs {
                self.stored(host, breakers, &kv.key, &kv.value, kv.mod_revision, now_ms);
            }
            if let Ok(name) = std::str::from_utf8(name) {
                note_read_breaker(host, name);
            }
        }
    }

    /// The holder's first read answered: adopt what it holds, then watch from the next
    /// revision and keep the lease alive (granting one if the process has none).
    pub(super) fn joined(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        body: &[u8],
        now_ms: u64,
    ) {
        let Ok((revision, kvs)) = etcd::range_answer(body) else {
            return self.down(host, 2, now_ms);
        };
        if self.votes() {
            self.forget_votes(host, &kvs);
        }
        for kv in &kvs {
            self.stored(host, breakers, &kv.key, &kv.value, kv.mod_revision, now_ms);
        }
        note_read(host);
        let everything = keys::everything(&self.settings.prefix);
        let auth = SharedLink::load(host).token;
        let mut metadata = metadata(&auth);
        let keep = host.grpc_stream(
            target(&self.settings, method::LEASE, method::LEASE_KEEP_ALIVE),
            &metadata,
        );
        metadata.push((etcd::HAS_LEADER.0, etcd::HAS_LEADER.1.as_bytes()));
        let watch = host.grpc_stream(
            target(&self.settings, method::WATCH, method::WATCH_STREAM),
            &metadata,
        );
        let (Ok(watch), Ok(keep)) = (watch, keep) else {
            return self.down(host, 14, now_ms);
        };
        let create = etcd::watch_create(everything.as_bytes(), revision + 1, false);
        let _ = host.grpc_send(watch, &create);
        if let Some(w) = &mut self.watch {
            w.watch = Some(watch);
            w.keep = Some(keep);
        }
        let lease = SharedLink::load(host).lease;
        if lease == 0 {
            let grant = etcd::lease_grant(self.settings.lease_ttl_secs());
            let to = (method::LEASE, method::LEASE_GRANT);
            let _ = self
                .calls
                .send(host, &self.settings, to, &grant, Pending::LeaseGrant);
        } else {
            let _ = host.grpc_send(keep, &etcd::lease_keep_alive(lease));
        }
    }

    /// The token for this connection attempt: share it, then read the prefix.
    pub(super) fn authenticated(
        &mut self,
        host: &impl Host,
        body: &[u8],
        attempt: Option<u32>,
        now_ms: u64,
    ) {
        let Ok(token) = etcd::auth_token(body) else {
            return self.down(host, 2, now_ms);
        };
        SharedLink::update(host, |c| c.token.clone_from(&token));
        let Some(attempt) = attempt else {
            return;
        };
        let sent = self
            .calls
            .read_all(host, &self.settings, Pending::Range(attempt));
        if let Err(status) = sent {
            self.down(host, status, now_ms);
        }
    }

    /// A lease was granted: share it, and put this member's key with it.
    pub(super) fn leased(&mut self, host: &impl Host, body: &[u8], now_ms: u64) {
        let Ok((id, _ttl)) = etcd::lease_granted(body) else {
            return self.down(host, 2, now_ms);
        };
        SharedLink::update(host, |c| c.lease = id);
        if self.votes() {
            self.revote(host);
        }
        let heartbeat = format!(
            "{{\"build\":\"{}\",\"started_ms\":{now_ms}}}",
            env!("CARGO_PKG_VERSION")
        );
        let key = keys::member(&self.settings.prefix, &self.member);
        let put = etcd::put(key.as_bytes(), heartbeat.as_bytes(), id);
        let to = (method::KV, method::PUT);
        let _ = self
            .calls
            .send(host, &self.settings, to, &put, Pending::Member);
        if let Some(k) = self.watch.as_ref().and_then(|w| w.keep) {
            let _ = host.grpc_send(k, &etcd::lease_keep_alive(id));
        }
    }
}
