//! The fleet's part of the control API's views: the link as this process knows it, and
//! one breaker's last record seen in etcd.

use crate::filter::host::Host;

use super::shadows::load_shadow;
use super::shared_link::{LinkState, SharedLink};
use super::Fleet;

impl Fleet {
    /// The link as the control API and `/health` show it.
    pub fn view(&self, host: &impl Host) -> serde_json::Value {
        let c = SharedLink::load(host);
        serde_json::json!({
            "member": self.member,
            "prefix": self.settings.prefix,
            "connected": c.link == LinkState::Connected,
            "link": c.link,
            "since_ms": c.since_ms,
            "reason": (!c.reason.is_empty()).then_some(c.reason),
            "last_member": (!c.last_member.is_empty()).then_some(c.last_member),
            "last_revision": c.revision,
        })
    }

    /// One breaker's fleet view: whether it is shared, the last record seen in etcd (its
    /// member, generation and revision) and whether a decision made here is not stored yet.
    pub fn breaker_view(&self, host: &impl Host, name: &str, shared: bool) -> serde_json::Value {
        let shadow = load_shadow(host, name);
        let seen = shadow.seen.as_ref();
        serde_json::json!({
            "shared": shared,
            "last_member": seen.map(|(r, _)| r.member.clone()),
            "generation": seen.map(|(r, _)| r.generation),
            "revision": seen.map(|(_, rev)| *rev),
            "unpublished": shadow.claim.is_some(),
        })
    }
}
