//! How the fleet converges: what an Envoy does with a record it reads from etcd, given what
//! it last saw there and any decision of its own not yet stored (its claim), and how an
//! adopted record becomes the local breaker's state. etcd's compare-and-swap orders every
//! stored record; this rule only settles a claim against a stored record, the same way on
//! every member, so two Envoys cannot flap.

use std::cmp::Ordering;

use super::record::{FleetCause, FleetRecord};
use super::vote::OwnVote;
use crate::core::settings::Settings;
use crate::core::state::{Record, State};

/// Whether generation `a` is newer than `b`, in serial-number arithmetic (RFC 1982), so the
/// u32 may wrap: a generation is never more than 2^31 steps ahead of another that matters.
pub fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// One breaker's fleet view on this Envoy, kept beside its local record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shadow {
    /// The last stored record seen, with its `mod_revision`.
    pub seen: Option<(FleetRecord, i64)>,
    /// A decision made here and not yet stored.
    pub claim: Option<FleetRecord>,
    /// Probes of the current half-open episode that ended here and are not yet in etcd.
    pub progress: Option<Progress>,
    /// This member's vote to open the breaker in the fleet (`fleet.trip_quorum` above 1).
    pub vote: OwnVote,
}

/// Probes that ended on this Envoy in one half-open episode (fleet generation), not yet
/// stored: their successes, added to the stored record's count, make the fleet's one
/// `success_threshold`; their slots, once deleted in etcd, let other probes in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    pub generation: u32,
    pub successes: u32,
    /// The slots the ended probes held, at most `MAX_RELEASED`.
    pub released: Vec<u32>,
}

/// Most slots one progress record deletes; the rest go with the episode.
pub const MAX_RELEASED: usize = 64;

/// What to do with the progress a shadow holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressStep {
    /// No progress, or only for an episode that has ended (its slots went with it).
    Nothing,
    /// The fleet's successes reach `success_threshold`: close, as a local transition
    /// published like any other.
    Close { successes: u32 },
    /// Store the half-open record with the fleet's new count, compare-and-swapped on
    /// `mod_revision`, deleting the released slots.
    Publish {
        record: FleetRecord,
        mod_revision: i64,
        progress: Progress,
    },
}

impl Progress {
    /// Adds one ended probe of episode `generation`; progress of an older episode is
    /// dropped first.
    pub fn with(self, generation: u32, slot: u32, succeeded: bool) -> Progress {
        let mut p = if self.generation == generation {
            self
        } else {
            Progress {
                generation,
                ..Progress::default()
            }
        };
        p.successes = p.successes.saturating_add(u32::from(succeeded));
        if p.released.len() < MAX_RELEASED && !p.released.contains(&slot) {
            p.released.push(slot);
        }
        p
    }

    /// What is left once `sent` is stored (another worker of this Envoy may have added
    /// to it meanwhile); `None` when nothing is.
    pub fn after(self, sent: &Progress) -> Option<Progress> {
        if self.generation != sent.generation {
            return Some(self);
        }
        let left = Progress {
            generation: self.generation,
            successes: self.successes.saturating_sub(sent.successes),
            released: self
                .released
                .into_iter()
                .filter(|n| !sent.released.contains(n))
                .collect(),
        };
        (left.successes > 0 || !left.released.is_empty()).then_some(left)
    }
}

/// The next step for a shadow's progress: nothing while a claim of this Envoy's waits (it
/// decides the episode's end anyway) or once the episode is over; else close or publish.
pub fn progress_step(shadow: &Shadow, success_threshold: u32) -> ProgressStep {
    let (Some(progress), None, Some((seen, rev))) = (&shadow.progress, &shadow.claim, &shadow.seen)
    else {
        return ProgressStep::Nothing;
    };
    if seen.state != State::HalfOpen || seen.generation != progress.generation {
        return ProgressStep::Nothing;
    }
    let successes = seen.probe_successes.saturating_add(progress.successes);
    if successes >= success_threshold {
        return ProgressStep::Close { successes };
    }
    ProgressStep::Publish {
        record: FleetRecord {
            probe_successes: successes,
            ..seen.clone()
        },
        mod_revision: *rev,
        progress: progress.clone(),
    }
}

/// What to do with a stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Already seen, or older than what was seen: nothing.
    Ignore,
    /// Take it as the breaker's state; any claim is dropped.
    Adopt,
    /// The claim beats it: publish the claim as `generation`, compare-and-swapped on
    /// `mod_revision`.
    Rebase { generation: u32, mod_revision: i64 },
}

/// Which of a claim and a stored record wins. The order: the newer generation; then the
/// more protective state (open, half-open, closed); then the later end of the open time;
/// then the higher backoff step; all equal, the stored record (it needs no write). A claim
/// of the fleet's open by quorum only wants the fleet open: a stored open of the same step
/// settles it, whatever its end.
pub fn claim_wins(claim: &FleetRecord, stored: &FleetRecord) -> bool {
    if claim.generation != stored.generation {
        return newer(claim.generation, stored.generation);
    }
    if claim.cause == FleetCause::QuorumReached && stored.state == State::Open {
        return false;
    }
    // Only an open record has an end; between two half-open or closed records of the same
    // step, a later timestamp is no reason to replace the stored one (and would start a
    // new probe episode under probes already admitted).
    let end = |r: &FleetRecord| match r.state {
        State::Open => r.published_at_ms.saturating_add(r.open_for_ms),
        _ => 0,
    };
    let by = |r: &FleetRecord| (protection(r.state), end(r), r.trips_in_row);
    by(claim).cmp(&by(stored)) == Ordering::Greater
}

fn protection(s: State) -> u8 {
    match s {
        State::Closed => 0,
        State::HalfOpen => 1,
        State::Open => 2,
    }
}

/// How long an Envoy waits before publishing its own move from open to half-open when
/// another member published the trip: that member's timer makes the same move at about the
/// same moment and the watch brings it within milliseconds, so waiting lets the fleet spend
/// one write on the move instead of one per Envoy (every losing compare-and-swap is a Raft
/// proposal too). If that member is gone, the others publish after this, spread by jitter.
pub const HALF_OPEN_DEFER_MS: u64 = 200;

/// Whether a claim should wait [`HALF_OPEN_DEFER_MS`] before it is published: a move to
/// half-open by time, over a trip another member published.
pub fn defers(claim: &FleetRecord, shadow: &Shadow, member: &str) -> bool {
    claim.cause == FleetCause::OpenElapsed
        && shadow
            .seen
            .as_ref()
            .is_some_and(|(r, _)| r.state == State::Open && r.member != member)
}

/// The generation the next claim is published as: one past the last stored record seen,
/// however many local transitions were made meanwhile (a time cut off from etcd counts as
/// one step), or 1 for a breaker never seen in etcd.
pub fn claim_generation(shadow: &Shadow) -> u32 {
    shadow
        .seen
        .as_ref()
        .map_or(1, |(r, _)| r.generation.wrapping_add(1))
}

/// The decision for a stored record read at `mod_revision` (from the watch, a Range, or
/// the failure branch of a lost compare-and-swap).
pub fn on_stored(shadow: &Shadow, stored: &FleetRecord, mod_revision: i64) -> Decision {
    if let Some((seen, seen_rev)) = &shadow.seen {
        if mod_revision <= *seen_rev || newer(seen.generation, stored.generation) {
            return Decision::Ignore;
        }
    }
    match &shadow.claim {
        Some(claim) if claim_wins(claim, stored) => Decision::Rebase {
            generation: stored.generation.wrapping_add(1),
            mod_revision,
        },
        _ => Decision::Adopt,
    }
}

/// What adopting a stored record changed in the local record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub from: State,
    pub to: State,
    /// Whether the local state changed (and with it the local generation).
    pub moved: bool,
    /// From the publisher's timestamp to now, for the propagation histogram; 0 when the
    /// clocks say the record comes from the future.
    pub delay_ms: u64,
}

/// Makes `local` follow `stored`. A change of state is a new local generation, so outcomes
/// of requests admitted before it are ignored, as after any transition; the open time is
/// carried as a duration and shortened by the record's age, never lengthened past it, so a
/// receiver whose clock is behind stays open the full time. With `keep_own` (see
/// `quorum::keeps_own`) only the mode override is taken: the member stays open by its own
/// failures.
pub fn adopt(
    local: &mut Record,
    stored: &FleetRecord,
    settings: &Settings,
    now_ms: u64,
    keep_own: bool,
) -> Adopted {
    let from = local.state;
    let age = now_ms.saturating_sub(stored.published_at_ms);
    if keep_own {
        local.mode_override = stored.mode_override;
        return Adopted {
            from,
            to: from,
            moved: false,
            delay_ms: age,
        };
    }
    local.mode_override = stored.mode_override;
    local.reason = stored.reason;
    local.trips_in_row = stored.trips_in_row;
    // Only a half-open record's count is a running one; any other state starts from none.
    local.probe_successes = match stored.state {
        State::HalfOpen => stored.probe_successes,
        _ => 0,
    };
    if stored.state == State::Open {
        local.open_until_ms = if stored.open_for_ms == u64::MAX {
            u64::MAX
        } else {
            now_ms.saturating_add(stored.open_for_ms.saturating_sub(age))
        };
    }
    let moved = from != stored.state;
    if moved {
        local.state = stored.state;
        local.generation = local.generation.wrapping_add(1);
        local.changed_at_ms = now_ms;
        local.probes_in_flight = 0;
        local.ramping = false;
        if stored.state == State::Closed {
            local.consecutive_failures = 0;
            local.window.clear();
            local.ramping =
                stored.cause == FleetCause::Recovered && settings.recovery_duration_ms > 0;
        }
    }
    Adopted {
        from,
        to: stored.state,
        moved,
        delay_ms: age,
    }
}

#[cfg(test)]
mod tests;
