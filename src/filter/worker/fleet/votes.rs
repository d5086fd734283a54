//! The members' votes in the shell (`fleet.trip_quorum` above 1): this member's own vote,
//! put with its lease when it trips on its own failures and deleted when it recovers; every
//! vote and member key the watch brings, kept per process in shared data and counted; and
//! the fleet's open, claimed by a member that voted once the votes reach the quorum. A
//! vote from a member not live, for a breaker this Envoy does not share, or not a vote at
//! all is ignored and counted.

use crate::core::fleet::departed::Departed;
use crate::core::fleet::etcd::{self, method};
use crate::core::fleet::keys;
use crate::core::fleet::quorum::{self, Members, QuorumStep, Tally, VoteChange};
use crate::core::fleet::vote::{Vote, VoteStep};
use crate::core::store;

use crate::filter::host::Host;
use crate::filter::shared::{fleet_key, SharedData, CAS_ATTEMPTS};

use super::super::breakers::Breakers;
use super::calls::Pending;
use super::metrics::Counter;
use super::publish::RETRY_MS;
use super::shadows::{load_shadow, update_shadow};
use super::shared_link::SharedLink;
use super::watch::UNAUTHENTICATED;
use super::{Fleet, OwedWrite};

fn tally_key(breaker: &str) -> String {
    fleet_key(&format!("votes/{breaker}"))
}

/// The votes this process has seen for `breaker`; junk reads as none.
pub fn load_tally(host: &impl Host, breaker: &str) -> Tally {
    match host.shared_data(&tally_key(breaker)) {
        Ok(Some((bytes, _))) => Tally::decode(&bytes).unwrap_or_default(),
        _ => Tally::default(),
    }
}

/// Changes a breaker's tally through compare-and-swap; what `change` said, or false.
fn update_tally(host: &impl Host, breaker: &str, change: impl Fn(&mut Tally) -> bool) -> bool {
    update(
        host,
        &tally_key(breaker),
        Tally::decode,
        Tally::encode,
        change,
    )
}

/// Changes what `key` holds by compare-and-swap, writing only when `change` says it
/// changed something; bytes `decode` refuses start from the empty value. False when
/// nothing changed or the store gave up.
fn update<T: Default>(
    host: &impl Host,
    key: &str,
    decode: fn(&[u8]) -> Option<T>,
    encode: fn(&T) -> Vec<u8>,
    change: impl Fn(&mut T) -> bool,
) -> bool {
    store::compare_and_swap(
        &SharedData(host),
        key,
        &encode(&T::default()),
        CAS_ATTEMPTS,
        |b| {
            let mut value = decode(b).unwrap_or_default();
            let changed = change(&mut value);
            (changed, changed.then(|| encode(&value)))
        },
    )
    .unwrap_or(false)
}

/// The members this process knows live.
pub fn load_members(host: &impl Host) -> Members {
    match host.shared_data(&fleet_key("members")) {
        Ok(Some((bytes, _))) => Members::decode(&bytes).unwrap_or_default(),
        _ => Members::default(),
    }
}

/// The members whose key left etcd, as this process saw them go.
pub fn load_departed(host: &impl Host) -> Departed {
    match host.shared_data(&fleet_key("departed")) {
        Ok(Some((bytes, _))) => Departed::decode(&bytes).unwrap_or_default(),
        _ => Departed::default(),
    }
}

fn update_departed(host: &impl Host, change: impl Fn(&mut Departed) -> bool) {
    let key = fleet_key("departed");
    update(host, &key, Departed::decode, Departed::encode, change);
}

fn update_members(host: &impl Host, change: impl Fn(&mut Members) -> bool) -> bool {
    let key = fleet_key("members");
    update(host, &key, Members::decode, Members::encode, change)
}

impl Fleet {
    /// Whether breakers open in the fleet by votes (a quorum above 1).
    pub(super) fn votes(&self) -> bool {
        self.settings.trip_quorum > 1
    }

    /// A local transition's change to this member's vote on `name`.
    pub(super) fn change_vote(
        &mut self,
        host: &impl Host,
        breakers: &Breakers,
        name: &str,
        change: VoteChange,
    ) {
        let cast = match change {
            VoteChange::Keep => return,
            VoteChange::Cast(v) => Some(v),
            VoteChange::Withdraw => None,
        };
        let lease = SharedLink::load(host).lease;
        let owes = update_shadow(host, name, |s| {
            s.vote.cast = cast;
            s.vote.owes(lease)
        });
        if owes == Some(true) {
            self.votes_owed
                .insert(name.to_string(), OwedWrite::default());
            breakers.wake_self(host, name);
        }
    }

    /// Sends the vote writes whose time has come: one put or delete per breaker.
    pub(super) fn send_votes(&mut self, host: &impl Host, now_ms: u64) {
        let due: Vec<String> = self
            .votes_owed
            .iter()
            .filter(|(_, o)| o.due_ms <= now_ms)
            .map(|(n, _)| n.clone())
            .collect();
        let lease = SharedLink::load(host).lease;
        for name in due {
            let key = keys::vote(&self.settings.prefix, &name, &self.member);
            let (to, message, pending) = match load_shadow(host, &name).vote.step(lease) {
                VoteStep::Nothing => {
                    self.votes_owed.remove(&name);
                    continue;
                }
                VoteStep::Put(vote) => (
                    (method::KV, method::PUT),
                    etcd::put(key.as_bytes(), &vote.encode(), lease),
                    Pending::Vote {
                        breaker: name.clone(),
                        sent: vote,
                        lease,
                    },
                ),
                VoteStep::Delete => (
                    (method::KV, method::DELETE_RANGE),
                    etcd::delete_key(key.as_bytes()),
                    Pending::Unvote {
                        breaker: name.clone(),
                    },
                ),
            };
            let sent = self.calls.send(host, &self.settings, to, &message, pending);
            let wait = match sent {
                Ok(()) => self.settings.timeout_ms.saturating_add(RETRY_MS),
                Err(_) => RETRY_MS,
            };
            if let Some(o) = self.votes_owed.get_mut(&name) {
                o.due_ms = now_ms.saturating_add(wait);
            }
        }
    }

    /// The answer to this member's vote put (`sent` with `lease`) or delete (`sent` none):
    /// the shadow knows what etcd holds, the tally has it at once, and what is still owed
    /// goes again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn vote_answered(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        breaker: &str,
        sent: Option<(Vote, i64)>,
        status: u32,
        body: &[u8],
        now_ms: u64,
    ) {
        let revision = match (status, &sent) {
            (0, Some(_)) => etcd::put_revision(body).ok(),
            (0, None) => Some(0),
            _ => None,
        };
        let Some(revision) = revision else {
            if status == UNAUTHENTICATED {
                SharedLink::update(host, |c| c.token.clear());
            }
            self.metrics.bump(Counter::PublishFailures);
            if let Some(o) = self.votes_owed.get_mut(breaker) {
                o.due_ms = now_ms.saturating_add(RETRY_MS);
            }
            return;
        };
        let lease = SharedLink::load(host).lease;
        let owes = update_shadow(host, breaker, |s| {
            match &sent {
                Some((vote, l)) => s.vote.put_done(vote, *l),
                None if s.vote.cast.is_none() => s.vote.gone(),
                None => {}
            }
            s.vote.owes(lease)
        });
        match owes {
            Some(false) => {
                self.votes_owed.remove(breaker);
            }
            _ => {
                self.votes_owed
                    .entry(breaker.to_string())
                    .or_default()
                    .due_ms = now_ms
            }
        }
        let me = self.member.clone();
        match sent {
            Some((vote, _)) => {
                update_tally(host, breaker, |t| t.put(&me, vote, revision));
            }
            None => {
                update_tally(host, breaker, |t| t.remove(&me));
            }
        }
        self.recount(host, breakers, breaker, now_ms);
    }

    /// A vote key read from etcd: taken into the breaker's tally when it is a vote, from a
    /// live member, for a breaker this Envoy shares; otherwise ignored, said once per key
    /// and counted.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn vote_seen(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        key: &[u8],
        (breaker, member): (&str, &str),
        value: &[u8],
        revision: i64,
        now_ms: u64,
    ) {
        let why = match Vote::decode(value) {
            None => Some("not a vote"),
            Some(_) if member != self.member && !load_members(host).contains(member) => {
                Some("no such member is live")
            }
            Some(_) if !self.shares(host, breakers, breaker) => Some("no such fleet breaker here"),
            Some(vote) => {
                if !update_tally(host, breaker, |t| t.put(member, vote, revision))
                    && load_tally(host, breaker).len() >= quorum::MAX_VOTES
                {
                    Some("too many votes")
                } else {
                    None
                }
            }
        };
        match why {
            Some(why) => self.ignore_vote(key, member, breaker, why),
            None => {
                self.tallied.insert(breaker.to_string());
                self.recount(host, breakers, breaker, now_ms);
            }
        }
    }

    fn ignore_vote(&mut self, key: &[u8], member: &str, breaker: &str, why: &str) {
        self.metrics.bump(Counter::IgnoredVotes);
        if self.warned.len() < 4_096 && self.warned.insert(key.to_vec()) {
            log::warn!(
                "[CIRCUIT_BREAKER] fleet: ignored the vote of {member:?} on {breaker:?}: {why}"
            );
        }
    }

    /// Whether `breaker` is one this Envoy has, or may have, and shares with the fleet.
    fn shares(&self, host: &impl Host, breakers: &mut Breakers, breaker: &str) -> bool {
        let known = breakers.find(breaker.as_bytes()).is_some()
            || breakers.is_configured(breaker)
            || Breakers::listed(host).iter().any(|n| n == breaker);
        known
            && breakers
                .named(host, breaker.as_bytes())
                .and_then(|i| breakers.get(i))
                .is_some_and(|b| b.settings.fleet)
    }

    /// A vote key deleted: withdrawn, or gone with its member's lease. This member's own
    /// vote gone under it is put again (with a new lease, once there is one).
    pub(super) fn vote_gone(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        (breaker, member): (&str, &str),
        now_ms: u64,
    ) {
        if member == self.member {
            let lease = SharedLink::load(host).lease;
            let owes = update_shadow(host, breaker, |s| {
                s.vote.gone();
                s.vote.owes(lease)
            });
            if owes == Some(true) {
                self.votes_owed
                    .insert(breaker.to_string(), OwedWrite::default());
            }
        }
        if update_tally(host, breaker, |t| t.remove(member)) {
            self.recount(host, breakers, breaker, now_ms);
        }
    }

    /// A member key put (a member started, or its lease was granted again).
    pub(super) fn member_seen(&mut self, host: &impl Host, member: &str) {
        update_members(host, |m| m.add(member));
        update_departed(host, |d| d.back(member));
    }

    /// A member key deleted: its process is gone. Fewer members may now make the quorum.
    pub(super) fn member_gone(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        member: &str,
        now_ms: u64,
    ) {
        update_departed(host, |d| d.left(member, now_ms));
        if update_members(host, |m| m.remove(member)) {
            for name in Breakers::listed(host) {
                self.recount(host, breakers, &name, now_ms);
            }
        }
    }

    /// A read of the whole prefix (joining, or after an outage): the members and votes it
    /// holds replace what the process knew, since deletes made meanwhile never come on the
    /// watch. Members first, so votes find their members.
    pub(super) fn forget_votes(&mut self, host: &impl Host, kvs: &[etcd::KeyValue]) {
        let prefix = &self.settings.prefix;
        let mut live = Members::default();
        let mut mine = Vec::new();
        for kv in kvs {
            match keys::parse(prefix, &kv.key) {
                Some(keys::FleetKey::Member(m)) => {
                    live.add(&m);
                }
                Some(keys::FleetKey::Vote { breaker, member }) if member == self.member => {
                    mine.push(breaker);
                }
                _ => {}
            }
        }
        update_members(host, |m| {
            let changed = *m != live;
            *m = live.clone();
            changed
        });
        let lease = SharedLink::load(host).lease;
        for name in Breakers::listed(host) {
            update_tally(host, &name, |t| {
                let changed = !t.is_empty();
                *t = Tally::default();
                changed
            });
            // This member's own vote, gone while it was away (its lease expired).
            let kept = mine.contains(&name);
            let owes = update_shadow(host, &name, |s| {
                if !kept {
                    s.vote.gone();
                }
                s.vote.owes(lease)
            });
            if owes == Some(true) {
                self.votes_owed.insert(name, OwedWrite::default());
            }
        }
    }

    /// Counts the votes on breaker `name` and, when this member voted and they reach the
    /// quorum, claims the fleet's open: at once if its vote completed the quorum, else
    /// after the pause that lets the completer's record arrive first.
    pub(super) fn recount(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        name: &str,
        now_ms: u64,
    ) {
        let Some(i) = breakers.find(name.as_bytes()) else {
            return;
        };
        let Some(breaker) = breakers.get_mut(i) else {
            return;
        };
        if !self.votes() || !breaker.settings.fleet {
            return;
        }
        let life = quorum::vote_life_ms(&breaker.settings);
        let tally = load_tally(host, name);
        let count = quorum::count(
            &tally,
            &load_members(host),
            &self.member,
            self.settings.trip_quorum,
            life,
            now_ms,
        );
        self.metrics.votes(host, name, count.votes);
        let shadow = load_shadow(host, name);
        let (QuorumStep::Claim { now }, Some(vote)) = (
            quorum::step(&count, &self.member, &shadow),
            shadow.vote.cast,
        ) else {
            return;
        };
        breaker.refresh(host, now_ms);
        let local = breaker.last_seen.clone();
        let settings = breaker.settings.clone();
        let member = self.member.clone();
        self.claim_with(host, breakers, name, now_ms, !now, |g, _| {
            quorum::open_record(&local, &vote, &settings, g, &member, now_ms)
        });
    }

    /// The holder's tick: the votes gauge of every breaker with votes, as they age out.
    pub(super) fn vote_gauges(&mut self, host: &impl Host, breakers: &Breakers, now_ms: u64) {
        if self.tallied.is_empty() {
            return;
        }
        let names: Vec<String> = self.tallied.iter().cloned().collect();
        let members = load_members(host);
        for name in names {
            let tally = load_tally(host, &name);
            let life = breakers
                .find(name.as_bytes())
                .and_then(|i| breakers.get(i))
                .map_or(0, |b| quorum::vote_life_ms(&b.settings));
            let q = self.settings.trip_quorum;
            let count = quorum::count(&tally, &members, &self.member, q, life, now_ms);
            self.metrics.votes(host, &name, count.votes);
            if tally.is_empty() {
                self.tallied.remove(&name);
            }
        }
    }

    /// The lease changed (granted anew after it expired, taking this member's votes with
    /// it): every vote still cast is put again.
    pub(super) fn revote(&mut self, host: &impl Host) {
        let lease = SharedLink::load(host).lease;
        for name in Breakers::listed(host) {
            if load_shadow(host, &name).vote.owes(lease) {
                self.votes_owed.insert(name, OwedWrite::default());
            }
        }
    }
}
