//! The fleet trips on agreement, not on one voice (`fleet.trip_quorum`): a member that
//! trips on its own failures opens only itself and votes; the breaker opens in the fleet
//! once the votes of live members cast within the breaker's window reach the quorum (all
//! the live members when fewer are live). This file holds the rules: which of a member's
//! transitions are the fleet's and which only its vote's, how votes are counted, who
//! publishes the fleet's open, and what an adopted record may not undo. The votes and live
//! members each Envoy has seen are kept in bounded encodings, since a damaged VM may have
//! written them.

use std::collections::{BTreeMap, BTreeSet};

use super::merge::Shadow;
use super::record::{valid_member, FleetCause, FleetRecord};
use super::vote::Vote;
use crate::core::bytes::Reader;
use crate::core::settings::Settings;
use crate::core::state::{Cause, Counts, Record, State, Transition};
use crate::core::window::WindowSpec;

/// Most votes kept per breaker: more than the largest quorum.
pub const MAX_VOTES: usize = 1_024;
/// Most live members remembered: as many keys as an Envoy reads when it joins.
pub const MAX_MEMBERS: usize = 4_096;

const TALLY_MAGIC: u8 = 0xF6;
const MEMBERS_MAGIC: u8 = 0xF7;
const VERSION: u8 = 1;

/// The quorum in force: `trip_quorum`, or every live member when fewer are live (this
/// member always counts as live, so one Envoy alone still trips itself).
pub fn needed(trip_quorum: u32, live: usize) -> u32 {
    let live = u32::try_from(live.max(1)).unwrap_or(u32::MAX);
    trip_quorum.clamp(1, live)
}

/// How long a vote counts: the breaker's time window; a count window has no duration, so
/// there the base open time.
pub fn vote_life_ms(settings: &Settings) -> u64 {
    match settings.window {
        WindowSpec::Time { window_ms } => window_ms,
        WindowSpec::Count { .. } => settings.open_duration_ms,
    }
}

/// Whether the fleet's breaker is in an episode of its own (open or half-open, stored or
/// claimed here): then every member follows the fleet and its transitions are the fleet's.
pub fn fleet_episode(shadow: &Shadow) -> bool {
    let state = match (&shadow.claim, &shadow.seen) {
        (Some(claim), _) => claim.state,
        (None, Some((seen, _))) => seen.state,
        (None, None) => State::Closed,
    };
    state != State::Closed
}

/// What a local transition changes in this member's vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteChange {
    Keep,
    Cast(Vote),
    Withdraw,
}

/// Where a local transition goes: published as the breaker's record (the fleet's business)
/// or not, and what it does to this member's vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub publish: bool,
    pub vote: VoteChange,
}

/// The route of transition `t` made here. With a quorum of 1 every transition is the
/// fleet's, as without votes. Otherwise an operator's decision and every move inside the
/// fleet's own episode are published; a trip of this member's own opens only it and casts
/// (or refreshes) its vote; its own half-open is its own; any close withdraws the vote.
pub fn route(t: &Transition, trip_quorum: u32, shadow: &Shadow) -> Route {
    let vote = match (t.to, t.cause.reason()) {
        (State::Closed, _) => VoteChange::Withdraw,
        (State::Open, Some(reason)) if t.cause != Cause::Forced => VoteChange::Cast(Vote {
            reason,
            voted_at_ms: t.at_ms,
        }),
        _ => VoteChange::Keep,
    };
    if trip_quorum <= 1 {
        return Route {
            publish: true,
            vote: VoteChange::Keep,
        };
    }
    let operator = matches!(t.cause, Cause::Forced | Cause::Released | Cause::Reset);
    if operator || fleet_episode(shadow) {
        let vote = match vote {
            VoteChange::Cast(_) => VoteChange::Keep,
            other => other,
        };
        return Route {
            publish: true,
            vote,
        };
    }
    Route {
        publish: false,
        vote,
    }
}

/// Whether adopting `stored` must leave the local state alone: this member is open by its
/// own failures outside any fleet episode, and the record closes nothing it decided (only
/// an operator's reset closes such a member; a mode change or a close the member missed
/// while cut off does not).
pub fn keeps_own(shadow: &Shadow, stored: &FleetRecord) -> bool {
    shadow.vote.cast.is_some()
        && !fleet_episode(shadow)
        && stored.state == State::Closed
        && stored.cause != FleetCause::Reset
}

/// Every vote this Envoy has seen for one breaker, by member, with the `mod_revision`
/// that stored it (etcd's order of the votes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tally {
    votes: BTreeMap<String, (Vote, i64)>,
}

impl Tally {
    /// Takes a vote stored at `revision`; false when it changes nothing, or when the tally
    /// is full and the member new (the caller counts it as ignored).
    pub fn put(&mut self, member: &str, vote: Vote, revision: i64) -> bool {
        if !valid_member(member) {
            return false;
        }
        let full = self.votes.len() >= MAX_VOTES;
        match self.votes.get_mut(member) {
            Some(held) if held.1 >= revision => false,
            Some(held) => {
                *held = (vote, revision);
                true
            }
            None if full => false,
            None => {
                self.votes.insert(member.to_string(), (vote, revision));
                true
            }
        }
    }

    /// Forgets a member's vote (deleted in etcd); true if there was one.
    pub fn remove(&mut self, member: &str) -> bool {
        self.votes.remove(member).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.votes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.votes.len()
    }

    /// Every member with a vote, in etcd's order.
    pub fn voters(&self) -> Vec<String> {
        let mut v: Vec<(&String, i64)> = self.votes.iter().map(|(m, (_, r))| (m, *r)).collect();
        v.sort_by_key(|(_, r)| *r);
        v.into_iter().map(|(m, _)| m.clone()).collect()
    }

    /// Magic, version, count (u16), then each vote: name length, name, the vote's bytes,
    /// the revision.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TALLY_MAGIC, VERSION];
        out.extend_from_slice(&(self.votes.len() as u16).to_le_bytes());
        for (member, (vote, rev)) in &self.votes {
            out.push(member.len() as u8);
            out.extend_from_slice(member.as_bytes());
            out.extend_from_slice(&vote.encode());
            out.extend_from_slice(&rev.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Tally> {
        let mut r = Reader::new(bytes);
        if r.u8()? != TALLY_MAGIC || r.u8()? != VERSION {
            return None;
        }
        let n = usize::from(u16::from_le_bytes(r.array::<2>()?));
        if n > MAX_VOTES {
            return None;
        }
        let mut tally = Tally::default();
        for _ in 0..n {
            let member = name(&mut r)?;
            let vote = Vote::decode(r.take(super::vote::VOTE_BYTES)?)?;
            let rev = r.i64()?;
            tally
                .votes
                .insert(member, (vote, rev))
                .is_none()
                .then_some(())?;
        }
        r.is_done().then_some(tally)
    }
}

/// The members this Envoy knows live: their keys (`P/m/<member>`, under each process's
/// lease) as seen on the watch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    names: BTreeSet<String>,
}

impl Members {
    /// Adds a member; false when known already, invalid, or past [`MAX_MEMBERS`].
    pub fn add(&mut self, member: &str) -> bool {
        valid_member(member)
            && self.names.len() < MAX_MEMBERS
            && self.names.insert(member.to_string())
    }

    pub fn remove(&mut self, member: &str) -> bool {
        self.names.remove(member)
    }

    /// The members, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn contains(&self, member: &str) -> bool {
        self.names.contains(member)
    }

    /// How many are live, counting `me` whether or not its key was seen yet.
    pub fn live_with(&self, me: &str) -> usize {
        self.names.len() + usize::from(!self.names.contains(me))
    }

    /// Magic, version, count (u16), then each name behind its length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MEMBERS_MAGIC, VERSION];
        out.extend_from_slice(&(self.names.len() as u16).to_le_bytes());
        for n in &self.names {
            out.push(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Members> {
        let mut r = Reader::new(bytes);
        if r.u8()? != MEMBERS_MAGIC || r.u8()? != VERSION {
            return None;
        }
        let n = usize::from(u16::from_le_bytes(r.array::<2>()?));
        if n > MAX_MEMBERS {
            return None;
        }
        let mut names = BTreeSet::new();
        for _ in 0..n {
            names.insert(name(&mut r)?).then_some(())?;
        }
        r.is_done().then_some(Members { names })
    }
}

fn name(r: &mut Reader) -> Option<String> {
    let n = usize::from(r.u8()?);
    let text = std::str::from_utf8(r.take(n)?).ok()?;
    valid_member(text).then(|| text.to_string())
}

/// Where one breaker's votes stand on this Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    /// Votes that count: from live members (or this one), cast within the vote's life.
    pub votes: u32,
    /// The quorum in force.
    pub needed: u32,
    /// The members whose votes count, in etcd's order.
    pub voters: Vec<String>,
    /// The member whose vote completed the quorum (the `needed`-th in etcd's order): the
    /// one that publishes the fleet's open at once; the other voters wait and stand in.
    pub completer: Option<String>,
}

/// Counts the votes of `tally` at `now_ms` for member `me`. A vote from the future (its
/// member's clock is ahead) is as fresh as now.
pub fn count(
    tally: &Tally,
    members: &Members,
    me: &str,
    trip_quorum: u32,
    life_ms: u64,
    now_ms: u64,
) -> Count {
    let needed = needed(trip_quorum, members.live_with(me));
    let mut counted: Vec<(&String, i64)> = tally
        .votes
        .iter()
        .filter(|(m, (v, _))| {
            (m.as_str() == me || members.contains(m))
                && now_ms.saturating_sub(v.voted_at_ms) <= life_ms
        })
        .map(|(m, (_, rev))| (m, *rev))
        .collect();
    counted.sort_by_key(|(_, rev)| *rev);
    let voters: Vec<String> = counted.iter().map(|(m, _)| (*m).clone()).collect();
    let completer = voters.get(needed as usize - 1).cloned();
    Count {
        votes: u32::try_from(voters.len()).unwrap_or(u32::MAX),
        needed,
        voters,
        completer,
    }
}

/// What this member does about the fleet's open after a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumStep {
    Nothing,
    /// Claim the fleet's open: at once (`now`, this member's vote completed the quorum),
    /// or after a pause in which the completer's record usually arrives and settles it.
    Claim {
        now: bool,
    },
}

/// Only a member that voted claims the fleet's open (a member that saw nothing wrong does
/// not speak for the others), and only while the fleet is not in an episode already.
pub fn step(count: &Count, me: &str, shadow: &Shadow) -> QuorumStep {
    if shadow.vote.cast.is_none() || fleet_episode(shadow) || count.votes < count.needed {
        return QuorumStep::Nothing;
    }
    QuorumStep::Claim {
        now: count.completer.as_deref() == Some(me),
    }
}

/// Where a breaker stands, for views: `"open in the fleet"`, or, for a member open by its
/// own failures, `"open here by its own failures, 1 of 2 votes"`.
pub fn standing(state: State, shadow: &Shadow, count: &Count, votes_on: bool) -> String {
    let what = match state {
        State::Closed => return "closed".to_string(),
        State::Open => "open",
        State::HalfOpen => "half-open",
    };
    if !votes_on || fleet_episode(shadow) {
        return format!("{what} in the fleet");
    }
    let by = match state {
        State::Open => "by its own failures",
        _ => "on its own",
    };
    format!(
        "{what} here {by}, {} of {} votes",
        count.votes, count.needed
    )
}

/// The fleet's open, as a member that voted publishes it: open for what is left of its own
/// open time, and at least the base open time.
pub fn open_record(
    local: &Record,
    vote: &Vote,
    settings: &Settings,
    generation: u32,
    member: &str,
    now_ms: u64,
) -> FleetRecord {
    let left = match local.state {
        State::Open => local.open_until_ms.saturating_sub(now_ms),
        _ => 0,
    };
    FleetRecord {
        state: State::Open,
        reason: Some(vote.reason),
        cause: FleetCause::QuorumReached,
        mode_override: local.mode_override,
        generation,
        published_at_ms: now_ms,
        open_for_ms: left.max(settings.open_duration_ms),
        trips_in_row: local.trips_in_row.max(1),
        probe_successes: 0,
        counts: Counts {
            consecutive_failures: local.consecutive_failures,
            ..Counts::default()
        },
        member: member.to_string(),
    }
}

#[cfg(test)]
mod tests;
