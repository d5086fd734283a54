//! Joining etcd: the one read every context makes when it starts, and the holder's
//! steps before its link is up (token, first read, watch and keep-alive streams, lease and
//! member key). What a read holds goes through the same adoption as a watch event.

use crate::core::fleet::etcd::{self, method};
use crate::core::fleet::keys;

use super::super::Worker;
use super::conn::{self, load_shadow, Conn, Link as LinkState};
use super::holder::RANGE_LIMIT;
use super::{Fleet, Pending};
use crate::filter::host::Host;

impl Worker {
    /// Reads the prefix once when the VM starts, before any election: the first holder is
    /// only elected on a timer tick, and a root context configured on the main thread
    /// before Envoy runs may never tick, so every context takes what etcd holds now.
    pub fn fleet_start(&mut self, host: &impl Host) {
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        let range = etcd::range_prefix(
            keys::everything(&fleet.settings.prefix).as_bytes(),
            RANGE_LIMIT,
        );
        let _ = fleet.call(host, (method::KV, method::RANGE), &range, Pending::Peek);
    }

    /// The answer to [`Worker::fleet_start`]: adopt what etcd holds; the link is the
    /// holder's business.
    pub(super) fn fleet_peeked(&mut self, host: &impl Host, body: &[u8], now_ms: u64) {
        if let Ok((_, kvs)) = etcd::range_answer(body) {
            for kv in &kvs {
                self.fleet_stored(host, &kv.key, &kv.value, kv.mod_revision, now_ms);
            }
            conn::note_read(host);
        }
    }

    /// Until this process has read etcd once, a request to a fleet breaker reads the
    /// breaker's decision itself and waits for it (bounded by `fleet.timeout`), so an Envoy
    /// started while the fleet's breaker is open refuses from its first request. So does
    /// the first request to a breaker the process did not have when it read etcd (one made
    /// with the default settings on first sight): its records were ignored then. Returns
    /// the call's token; `None`: decide now. Once settled, a slot costs one flag per request.
    pub fn fleet_first_read(&mut self, host: &impl Host, i: usize) -> Option<u32> {
        let fleet = self.fleet.as_ref()?;
        let slot = self.slots.get_mut(i)?;
        if !slot.settings.fleet || slot.fleet_settled {
            return None;
        }
        let ask = if conn::has_read(host) {
            Conn::load(host).link == LinkState::Connected
                && load_shadow(host, &slot.name).seen.is_none()
                && !conn::has_read_breaker(host, &slot.name)
        } else {
            !self.first_read_done
        };
        if !ask {
            slot.fleet_settled = true;
            return None;
        }
        let key = keys::decision(&fleet.settings.prefix, &slot.name);
        let range = etcd::RangeRequest {
            key: key.into_bytes(),
            ..etcd::RangeRequest::default()
        };
        let auth = Conn::load(host).token;
        let timeout = u32::try_from(fleet.settings.timeout_ms).unwrap_or(u32::MAX);
        let sent = host
            .grpc_call(
                fleet.target(method::KV, method::RANGE),
                &Fleet::metadata(&auth),
                &prost::Message::encode_to_vec(&range),
                timeout,
            )
            .ok();
        slot.fleet_settled = sent.is_none();
        sent
    }

    /// The answer to [`Worker::fleet_first_read`] for breaker `name`: adopt what it holds.
    /// Whatever the answer, this worker waits on etcd for that breaker no more, and after
    /// a failed read, for no breaker until the process has read etcd.
    pub fn fleet_first_read_answered(
        &mut self,
        host: &impl Host,
        name: &[u8],
        status: u32,
        size: usize,
    ) {
        if let Some(slot) = self.index.get(name).and_then(|i| self.slots.get_mut(*i)) {
            slot.fleet_settled = true;
        }
        if status != 0 {
            self.first_read_done = true;
            return;
        }
        let body = host
            .buffer(crate::filter::host::Buffer::GrpcReceive, size)
            .unwrap_or_default();
        let now_ms = host.now_ms();
        if let Ok((_, kvs)) = etcd::range_answer(&body) {
            for kv in &kvs {
                self.fleet_stored(host, &kv.key, &kv.value, kv.mod_revision, now_ms);
            }
            if let Ok(name) = std::str::from_utf8(name) {
                conn::note_read_breaker(host, name);
            }
        }
    }

    pub(super) fn fleet_joined(&mut self, host: &impl Host, body: &[u8], now_ms: u64) {
        let Ok((revision, kvs)) = etcd::range_answer(body) else {
            return self.fleet_down(host, 2, now_ms);
        };
        for kv in &kvs {
            self.fleet_stored(host, &kv.key, &kv.value, kv.mod_revision, now_ms);
        }
        conn::note_read(host);
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        let everything = keys::everything(&fleet.settings.prefix);
        let auth = Conn::load(host).token;
        let mut metadata = Fleet::metadata(&auth);
        let keep = host.grpc_stream(
            fleet.target(method::LEASE, method::LEASE_KEEP_ALIVE),
            &metadata,
        );
        metadata.push((etcd::HAS_LEADER.0, etcd::HAS_LEADER.1.as_bytes()));
        let watch = host.grpc_stream(fleet.target(method::WATCH, method::WATCH_STREAM), &metadata);
        let (Ok(watch), Ok(keep)) = (watch, keep) else {
            return self.fleet_down(host, 14, now_ms);
        };
        let create = etcd::watch_create(everything.as_bytes(), revision + 1, false);
        let _ = host.grpc_send(watch, &create);
        if let Some(h) = &mut fleet.holder {
            h.watch = Some(watch);
            h.keep = Some(keep);
        }
        let lease = Conn::load(host).lease;
        if lease == 0 {
            let grant = etcd::lease_grant(fleet.settings.lease_ttl_secs());
            let _ = fleet.call(
                host,
                (method::LEASE, method::LEASE_GRANT),
                &grant,
                Pending::LeaseGrant,
            );
        } else {
            let _ = host.grpc_send(keep, &etcd::lease_keep_alive(lease));
        }
    }

    /// The token for this connection attempt: share it, then read the prefix.
    pub(super) fn fleet_authenticated(
        &mut self,
        host: &impl Host,
        body: &[u8],
        attempt: Option<u32>,
        now_ms: u64,
    ) {
        let Ok(token) = etcd::auth_token(body) else {
            return self.fleet_down(host, 2, now_ms);
        };
        Conn::update(host, |c| c.token.clone_from(&token));
        let Some(attempt) = attempt else {
            return;
        };
        let sent = match &mut self.fleet {
            Some(fleet) => fleet.read_all(host, attempt),
            None => return,
        };
        if let Err(status) = sent {
            self.fleet_down(host, status, now_ms);
        }
    }

    /// A lease was granted: share it, and put this member's key with it.
    pub(super) fn fleet_leased(&mut self, host: &impl Host, body: &[u8], now_ms: u64) {
        let Ok((id, _ttl)) = etcd::lease_granted(body) else {
            return self.fleet_down(host, 2, now_ms);
        };
        Conn::update(host, |c| c.lease = id);
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        let heartbeat = format!(
            "{{\"build\":\"{}\",\"started_ms\":{now_ms}}}",
            env!("CARGO_PKG_VERSION")
        );
        let key = keys::member(&fleet.settings.prefix, &fleet.member);
        let put = etcd::put(key.as_bytes(), heartbeat.as_bytes(), id);
        let _ = fleet.call(host, (method::KV, method::PUT), &put, Pending::Member);
        if let Some(k) = fleet.holder.as_ref().and_then(|h| h.keep) {
            let _ = host.grpc_send(k, &etcd::lease_keep_alive(id));
        }
    }
}
