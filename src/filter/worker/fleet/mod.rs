//! Fleet mode in the shell: one breaker for many Envoys through etcd v3 (design in
//! docs/fleet.md). Each worker publishes the transitions it makes and adopts what etcd
//! answers back; one root context per process, elected in shared data, holds the watch
//! and the lease. The pure rules live in `core::fleet`; this module makes the host calls.

mod adopt;
mod conn;
mod holder;
mod join;
mod probe;
mod progress;
mod publish;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;

use crate::core::fleet::merge::Progress;
use crate::core::fleet::record::FleetRecord;
use crate::core::fleet::settings::FleetSettings;

use super::Worker;
use crate::filter::host::{node_id, Host, MetricKind};

pub use conn::{Conn, Link as LinkState};
use holder::Holder;
pub use probe::{Held, Probe, SlotClaim};

/// The member name when neither `fleet.member` nor the Envoy node id is set.
const FALLBACK_MEMBER: &str = "envoy";

/// A unary call in flight, by what its answer is for.
#[derive(Debug, Clone)]
enum Pending {
    /// A claim sent as this record, for this breaker.
    Publish {
        breaker: String,
        sent: FleetRecord,
    },
    /// Probes that ended here, sent as the half-open record with the fleet's new count.
    Progress {
        breaker: String,
        sent: FleetRecord,
        progress: Progress,
    },
    /// The holder's first read of the prefix, in its connection attempt.
    Range(u32),
    /// A context's one read of the prefix when it starts.
    Peek,
    LeaseGrant,
    /// The member key's put; its answer only matters as a sign of life.
    Member,
    /// The holder's quorum probe (a linearizable read).
    Quorum,
    /// `Authenticate` before the first read of this connection attempt.
    Auth(u32),
    /// `Authenticate` again while connected, after etcd refused the token.
    Reauth,
}

/// A claim this worker made and must see stored: when to try next, and how many rounds
/// it has gone since the last tick.
#[derive(Debug, Clone, Copy, Default)]
struct Owed {
    due_ms: u64,
    rounds: u32,
}

/// Fleet mode's state in one VM (one per worker thread, and the main thread's).
pub struct Fleet {
    pub settings: FleetSettings,
    pub member: String,
    /// This context's id in the holder election, drawn at random when the VM starts.
    id: u64,
    holder: Option<Holder>,
    calls: HashMap<u32, Pending>,
    owed: BTreeMap<String, Owed>,
    /// Keys already said to be damaged or unknown, so each is logged once.
    warned: HashSet<Vec<u8>>,
    metrics: FleetMetrics,
    /// The etcd user and password, read from the environment variables the settings name.
    credentials: Option<(String, String)>,
}

impl Fleet {
    pub fn new(host: &impl Host, settings: FleetSettings) -> Fleet {
        let member = settings
            .member
            .clone()
            .or_else(|| node_id(host))
            .filter(|m| crate::core::fleet::record::valid_member(m))
            .unwrap_or_else(|| FALLBACK_MEMBER.to_string());
        // Context ids repeat from VM to VM and workers start in the same millisecond, so
        // the election id comes from WASI's random_get through std's hasher keys.
        let id = std::collections::hash_map::RandomState::new().hash_one(host.now_ms());
        let credentials = settings.credentials_env.as_ref().and_then(|(u, p)| {
            let read = std::env::var(u).ok().zip(std::env::var(p).ok());
            if read.is_none() {
                log::error!("[CIRCUIT_BREAKER] fleet: {u} or {p} is not in the VM's environment (list both in vm_config.environment_variables.host_env_keys); etcd will refuse this Envoy");
            }
            read
        });
        Fleet {
            settings,
            member,
            id,
            holder: None,
            calls: HashMap::new(),
            owed: BTreeMap::new(),
            warned: HashSet::new(),
            metrics: FleetMetrics::define(host),
            credentials,
        }
    }

    /// The initial metadata of every etcd call: the authentication token, if any.
    pub(super) fn metadata(token: &str) -> Vec<(&str, &[u8])> {
        if token.is_empty() {
            Vec::new()
        } else {
            vec![(crate::core::fleet::etcd::TOKEN_METADATA, token.as_bytes())]
        }
    }

    /// Whether this context holds the watch.
    pub fn holds(&self) -> bool {
        self.holder.is_some()
    }

    /// Logs `line` the first time `key` is met; false when it was said before.
    fn warn_once(&mut self, key: &[u8], line: &str) -> bool {
        if self.warned.len() < 4_096 && self.warned.insert(key.to_vec()) {
            log::warn!("{line}");
            self.metrics.bump(stat::IGNORED);
            return true;
        }
        false
    }
}

impl Worker {
    /// The link as the control API and `/health` show it; `None` without fleet mode.
    pub fn fleet_view(&self, host: &impl Host) -> Option<serde_json::Value> {
        let fleet = self.fleet.as_ref()?;
        let c = Conn::load(host);
        Some(serde_json::json!({
            "member": fleet.member,
            "prefix": fleet.settings.prefix,
            "connected": c.link == LinkState::Connected,
            "link": c.link,
            "since_ms": c.since_ms,
            "reason": (!c.reason.is_empty()).then_some(c.reason),
            "last_member": (!c.last_member.is_empty()).then_some(c.last_member),
            "last_revision": c.revision,
        }))
    }

    /// One breaker's fleet view: whether it is shared, the last record seen in etcd (its
    /// member, generation and revision) and whether a decision made here is not stored yet.
    pub fn fleet_breaker_view(
        &self,
        host: &impl Host,
        name: &str,
        shared: bool,
    ) -> Option<serde_json::Value> {
        self.fleet.as_ref()?;
        let shadow = conn::load_shadow(host, name);
        let seen = shadow.seen.as_ref();
        Some(serde_json::json!({
            "shared": shared,
            "last_member": seen.map(|(r, _)| r.member.clone()),
            "generation": seen.map(|(r, _)| r.generation),
            "revision": seen.map(|(_, rev)| *rev),
            "unpublished": shadow.claim.is_some(),
        }))
    }
}

/// Indexes of the fleet's counters, shared by the call sites.
mod stat {
    pub const PUBLISHED: usize = 0;
    pub const ADOPTED: usize = 1;
    pub const PUBLISH_FAILURES: usize = 2;
    pub const IGNORED: usize = 3;
}

/// The fleet's stats: one set per process (every VM defines the same names, Envoy adds
/// them up); counts wait for the timer like the breakers' request counts.
struct FleetMetrics {
    counters: [Option<u32>; 4],
    pending: [u64; 4],
    connected: Option<u32>,
    propagation: Option<u32>,
}

impl FleetMetrics {
    fn define(host: &impl Host) -> FleetMetrics {
        let counter = |name: &str| host.define_metric(MetricKind::Counter, name).ok();
        FleetMetrics {
            counters: [
                counter("circuit_breaker_fleet_published_total"),
                counter("circuit_breaker_fleet_adopted_total"),
                counter("circuit_breaker_fleet_publish_failures_total"),
                counter("circuit_breaker_fleet_ignored_records_total"),
            ],
            pending: [0; 4],
            connected: host
                .define_metric(MetricKind::Gauge, "circuit_breaker_fleet_connected")
                .ok(),
            propagation: host
                .define_metric(
                    MetricKind::Histogram,
                    "circuit_breaker_fleet_propagation_ms",
                )
                .ok(),
        }
    }

    fn bump(&mut self, which: usize) {
        if let Some(n) = self.pending.get_mut(which) {
            *n += 1;
        }
    }

    fn flush(&mut self, host: &impl Host) {
        for (n, id) in self.pending.iter_mut().zip(self.counters) {
            if let (Some(id), true) = (id, *n > 0) {
                let _ = host.increment_metric(id, *n);
            }
            *n = 0;
        }
    }

    fn connected(&self, host: &impl Host, up: bool) {
        if let Some(id) = self.connected {
            let _ = host.record_metric(id, u64::from(up));
        }
    }

    fn propagation(&self, host: &impl Host, delay_ms: u64) {
        if let Some(id) = self.propagation {
            let _ = host.record_metric(id, delay_ms);
        }
    }
}
