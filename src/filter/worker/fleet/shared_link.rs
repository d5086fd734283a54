//! The link to etcd as every context of the process shares it, in shared data: its state
//! (for views, `/health` and the workers' retries), the highest revision seen, the member
//! adopted last, the lease and the authentication token; and whether the process has read
//! etcd once. The watch holder writes most of it.

use serde::{Deserialize, Serialize};

use crate::core::store;

use crate::filter::host::Host;
use crate::filter::shared::{fleet_key, SharedData, CAS_ATTEMPTS};

/// The link's state as the process knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Started, first read of etcd not answered yet.
    #[default]
    Joining,
    Connected,
    Disconnected,
}

/// The link to etcd as stored in shared data, written by the holder.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedLink {
    pub link: LinkState,
    /// Wall clock (Unix ms) of the last change of `link`.
    pub since_ms: u64,
    /// Why the link is down, when it is.
    pub reason: String,
    /// The highest etcd revision seen.
    pub revision: i64,
    /// The member whose record was adopted last.
    pub last_member: String,
    /// The lease this process binds its keys to (0: none yet).
    pub lease: i64,
    /// etcd's authentication token, when the fleet authenticates (empty: none yet, or
    /// refused and to be asked again).
    pub token: String,
}

impl SharedLink {
    pub fn load(host: &impl Host) -> SharedLink {
        match host.shared_data(&fleet_key("conn")) {
            Ok(Some((bytes, _))) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => SharedLink::default(),
        }
    }

    /// Changes the stored state through compare-and-swap, so the holder's writes and a
    /// worker's "last member" do not undo each other.
    pub fn update(host: &impl Host, change: impl Fn(&mut SharedLink)) {
        let _ = store::compare_and_swap(
            &SharedData(host),
            &fleet_key("conn"),
            b"{}",
            CAS_ATTEMPTS,
            |b| {
                let mut link: SharedLink = serde_json::from_slice(b).unwrap_or_default();
                change(&mut link);
                ((), serde_json::to_vec(&link).ok())
            },
        );
    }

    /// Whether the link is up.
    pub fn is_connected(host: &impl Host) -> bool {
        SharedLink::load(host).link == LinkState::Connected
    }
}

/// Whether this process has read etcd once (any context's start-up read or the holder's
/// first read answered).
pub fn has_read(host: &impl Host) -> bool {
    matches!(host.shared_data(&fleet_key("read")), Ok(Some(_)))
}

/// Notes that this process has read etcd once.
pub fn note_read(host: &impl Host) {
    let _ = host.set_shared_data(&fleet_key("read"), b"1", 0);
}
