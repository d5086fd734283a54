//! Fleet mode in the shell: one breaker for many Envoys through etcd v3 (design in
//! docs/src/fleet-design.md). Each worker publishes the transitions it makes and adopts what etcd
//! answers back; one root context per process, elected in shared data, holds the watch
//! and the lease. The pure rules live in `core::fleet`; [`Fleet`] makes the host calls,
//! its methods spread by job over the files beside this one (joining, keeping the link,
//! publishing, adopting, votes, probes, progress, answers, views).

mod adopt;
mod answers;
mod calls;
mod connect;
mod join;
mod metrics;
pub mod probe;
mod progress;
mod publish;
mod shadows;
mod shared_link;
mod views;
mod votes;
mod watch;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vote_tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::BuildHasher;

use crate::core::fleet::settings::FleetSettings;

use crate::filter::host::{node_id, Host};

use calls::Calls;
use metrics::{Counter, FleetMetrics};
use watch::Watch;

/// The member name when neither `fleet.member` nor the Envoy node id is set.
const FALLBACK_MEMBER: &str = "envoy";

/// A write this worker owes etcd for one breaker (a claim to see stored, or probe
/// progress to count): when to send it next, and how many rounds it has gone since the
/// last tick.
#[derive(Debug, Clone, Copy, Default)]
struct OwedWrite {
    due_ms: u64,
    rounds: u32,
}

/// Fleet mode's state in one VM (one per worker thread, and the main thread's).
pub struct Fleet {
    settings: FleetSettings,
    member: String,
    /// This context's id in the holder election, drawn at random when the VM starts.
    id: u64,
    /// The watch, while this context holds it.
    watch: Option<Watch>,
    calls: Calls,
    owed: BTreeMap<String, OwedWrite>,
    /// Writes of this member's own votes owed to etcd, by breaker.
    votes_owed: BTreeMap<String, OwedWrite>,
    /// Breakers with votes seen here, whose votes gauge the holder keeps up as they age.
    tallied: BTreeSet<String>,
    /// Keys already said to be damaged or unknown, so each is logged once.
    warned: HashSet<Vec<u8>>,
    metrics: FleetMetrics,
    /// The etcd user and password, read from the environment variables the settings name.
    credentials: Option<(String, String)>,
    /// Whether a request of this worker already waited for a first read of etcd.
    first_read_done: bool,
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
            watch: None,
            calls: Calls::default(),
            owed: BTreeMap::new(),
            votes_owed: BTreeMap::new(),
            tallied: BTreeSet::new(),
            warned: HashSet::new(),
            metrics: FleetMetrics::define(host),
            credentials,
            first_read_done: false,
        }
    }

    /// Whether this context holds the watch.
    pub fn holds(&self) -> bool {
        self.watch.is_some()
    }

    /// Logs `line` the first time `key` is met; false when it was said before.
    fn warn_once(&mut self, key: &[u8], line: &str) -> bool {
        if self.warned.len() < 4_096 && self.warned.insert(key.to_vec()) {
            log::warn!("{line}");
            self.metrics.bump(Counter::Ignored);
            return true;
        }
        false
    }
}
