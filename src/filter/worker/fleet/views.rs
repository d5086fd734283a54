//! The fleet's part of the control API's views: the link as this process knows it, and
//! one breaker's standing in the fleet (its votes, the last record seen in etcd).

use crate::filter::host::Host;

use crate::core::duration::rfc3339;
use crate::core::fleet::quorum;
use crate::core::settings::Settings;
use crate::core::state::State;

use super::shadows::{load_shadow, load_slots};
use super::shared_link::{LinkState, SharedLink};
use super::votes::{load_departed, load_members, load_tally};
use super::Fleet;

impl Fleet {
    /// The link as the control API and `/health` show it, with the members whose lease
    /// etcd last said was alive, and the latest to leave with when this process saw them go.
    pub fn view(&self, host: &impl Host) -> serde_json::Value {
        let c = SharedLink::load(host);
        let members = load_members(host);
        serde_json::json!({
            "member": self.member,
            "prefix": self.settings.prefix,
            "connected": c.link == LinkState::Connected,
            "link": c.link,
            "since_ms": c.since_ms,
            "reason": (!c.reason.is_empty()).then_some(c.reason),
            "last_member": (!c.last_member.is_empty()).then_some(c.last_member),
            "last_revision": c.revision,
            "members": members.names().collect::<Vec<_>>(),
            "departed": load_departed(host)
                .iter()
                .filter(|(m, _)| !members.contains(m))
                .map(|(m, at)| serde_json::json!({"member": m, "last_seen": rfc3339(at)}))
                .collect::<Vec<_>>(),
        })
    }

    /// One breaker's fleet view: whether it is shared, where it stands (open here by its
    /// own failures, with the votes, or in the fleet), the last record seen in etcd (its
    /// member, generation and revision), whether a decision made here is not stored yet,
    /// and while the fleet is half-open, the probe slots taken across the fleet.
    pub fn breaker_view(
        &self,
        host: &impl Host,
        name: &str,
        state: State,
        settings: &Settings,
        now_ms: u64,
    ) -> serde_json::Value {
        let shadow = load_shadow(host, name);
        let seen = shadow.seen.as_ref();
        let q = self.settings.trip_quorum;
        let count = quorum::count(
            &load_tally(host, name),
            &load_members(host),
            &self.member,
            q,
            quorum::vote_life_ms(settings),
            now_ms,
        );
        let votes_on = self.votes() && settings.fleet;
        serde_json::json!({
            "shared": settings.fleet,
            "standing": settings.fleet.then(|| quorum::standing(state, &shadow, &count, votes_on)),
            "trip_quorum": q,
            "votes": votes_on.then_some(count.votes),
            "votes_needed": votes_on.then_some(count.needed),
            "voters": votes_on.then_some(count.voters),
            "voted": votes_on.then_some(shadow.vote.cast.is_some()),
            "last_member": seen.map(|(r, _)| r.member.clone()),
            "generation": seen.map(|(r, _)| r.generation),
            "revision": seen.map(|(_, rev)| *rev),
            "unpublished": shadow.claim.is_some(),
            "probes_in_flight": seen
                .filter(|(r, _)| r.state == State::HalfOpen)
                .map(|(r, _)| {
                    let slots = load_slots(host, name);
                    if slots.generation == r.generation { slots.taken() } else { 0 }
                }),
        })
    }
}
