//! How the fleet converges: what an Envoy does with a record it reads from etcd, given what
//! it last saw there and any decision of its own not yet stored (its claim), and how an
//! adopted record becomes the local breaker's state. etcd's compare-and-swap orders every
//! stored record; this rule only settles a claim against a stored record, the same way on
//! every member, so two Envoys cannot flap.

use std::cmp::Ordering;

use super::record::{FleetCause, FleetRecord};
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
/// then the higher backoff step; all equal, the stored record (it needs no write).
pub fn claim_wins(claim: &FleetRecord, stored: &FleetRecord) -> bool {
    if claim.generation != stored.generation {
        return newer(claim.generation, stored.generation);
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
/// receiver whose clock is behind stays open the full time.
pub fn adopt(
    local: &mut Record,
    stored: &FleetRecord,
    settings: &Settings,
    now_ms: u64,
) -> Adopted {
    let from = local.state;
    let age = now_ms.saturating_sub(stored.published_at_ms);
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
mod tests {
    use super::super::record::tests::open_record;
    use super::*;
    use crate::core::state::{Counts, TripReason};
    use proptest::prelude::*;

    fn closed(generation: u32, member: &str) -> FleetRecord {
        FleetRecord {
            state: State::Closed,
            reason: None,
            cause: FleetCause::Reset,
            open_for_ms: 0,
            counts: Counts::default(),
            ..open_record(generation, member)
        }
    }

    fn seen(r: FleetRecord, rev: i64) -> Shadow {
        Shadow {
            seen: Some((r, rev)),
            claim: None,
            progress: None,
        }
    }

    fn half_open(generation: u32, successes: u32) -> FleetRecord {
        FleetRecord {
            state: State::HalfOpen,
            cause: FleetCause::OpenElapsed,
            open_for_ms: 0,
            probe_successes: successes,
            ..open_record(generation, "h")
        }
    }

    #[test]
    fn only_a_move_to_half_open_over_another_members_trip_waits() {
        let elapsed = |member: &str| FleetRecord {
            state: State::HalfOpen,
            cause: FleetCause::OpenElapsed,
            ..open_record(6, member)
        };
        let over = |r: FleetRecord| Shadow {
            seen: Some((r, 10)),
            claim: None,
            progress: None,
        };
        assert!(defers(&elapsed("b"), &over(open_record(5, "a")), "b"));
        assert!(
            !defers(&elapsed("a"), &over(open_record(5, "a")), "a"),
            "the member that tripped moves first"
        );
        assert!(
            !defers(&open_record(6, "b"), &over(open_record(5, "a")), "b"),
            "a trip"
        );
        assert!(!defers(&elapsed("b"), &over(closed(5, "a")), "b"));
        assert!(!defers(&elapsed("b"), &Shadow::default(), "b"));
    }

    #[test]
    fn successes_on_several_envoys_add_up_to_one_threshold() {
        let ended = Progress::default().with(7, 0, true);
        let shadow = Shadow {
            seen: Some((half_open(7, 1), 30)),
            claim: None,
            progress: Some(ended.clone()),
        };
        match progress_step(&shadow, 3) {
            ProgressStep::Publish {
                record,
                mod_revision,
                progress,
            } => {
                assert_eq!(
                    (record.probe_successes, record.generation, record.state),
                    (2, 7, State::HalfOpen)
                );
                assert_eq!((mod_revision, progress), (30, ended));
            }
            other => panic!("expected a publish, got {other:?}"),
        }
        assert_eq!(
            progress_step(&shadow, 2),
            ProgressStep::Close { successes: 2 },
            "one stored elsewhere and one here make two"
        );
    }

    #[test]
    fn progress_waits_for_a_claim_and_ends_with_its_episode() {
        let progress = Some(Progress::default().with(7, 1, true));
        let claimed = Shadow {
            seen: Some((half_open(7, 0), 30)),
            claim: Some(open_record(8, "a")),
            progress: progress.clone(),
        };
        assert_eq!(progress_step(&claimed, 2), ProgressStep::Nothing);
        let moved_on = Shadow {
            seen: Some((open_record(8, "b"), 31)),
            claim: None,
            progress,
        };
        assert_eq!(progress_step(&moved_on, 2), ProgressStep::Nothing);
    }

    #[test]
    fn progress_sent_is_taken_off_and_what_came_meanwhile_stays() {
        let sent = Progress::default().with(7, 0, true).with(7, 1, false);
        assert_eq!((sent.successes, sent.released.clone()), (1, vec![0, 1]));
        let meanwhile = sent.clone().with(7, 2, true);
        assert_eq!(
            meanwhile.after(&sent),
            Some(Progress {
                generation: 7,
                successes: 1,
                released: vec![2]
            })
        );
        assert_eq!(sent.clone().after(&sent), None);
        // A newer episode's progress is not what was sent.
        let newer = Progress::default().with(8, 0, true);
        assert_eq!(newer.clone().after(&sent), Some(newer.clone()));
        assert_eq!(
            sent.with(8, 0, true),
            newer,
            "an older episode's progress is dropped"
        );
    }

    #[test]
    fn newer_generation_wins() {
        assert!(claim_wins(&closed(6, "a"), &open_record(5, "b")));
        assert!(!claim_wins(&open_record(5, "a"), &closed(6, "b")));
    }

    #[test]
    fn open_beats_closed_for_the_same_generation() {
        assert!(claim_wins(&open_record(5, "a"), &closed(5, "b")));
        assert!(!claim_wins(&closed(5, "a"), &open_record(5, "b")));
        let half = FleetRecord {
            state: State::HalfOpen,
            cause: FleetCause::OpenElapsed,
            ..open_record(5, "h")
        };
        assert!(claim_wins(&half, &closed(5, "c")));
        assert!(claim_wins(&open_record(5, "o"), &half));
    }

    #[test]
    fn the_longer_open_time_wins_between_two_trips() {
        let short = open_record(5, "a");
        let long = FleetRecord {
            open_for_ms: 60_000,
            ..open_record(5, "b")
        };
        assert!(claim_wins(&long, &short));
        assert!(!claim_wins(&short, &long));
    }

    #[test]
    fn a_full_tie_keeps_the_stored_record() {
        let stored = open_record(5, "a");
        let claim = open_record(5, "b");
        assert!(!claim_wins(&claim, &stored));
        assert!(
            !claim_wins(&stored, &claim),
            "the same answer either way round"
        );
    }

    #[test]
    fn generations_compare_across_the_wrap() {
        assert!(newer(0, u32::MAX));
        assert!(newer(3, u32::MAX - 2));
        assert!(!newer(u32::MAX, 0));
        assert!(!newer(7, 7));
    }

    #[test]
    fn generation_never_goes_backwards() {
        let shadow = seen(open_record(9, "a"), 100);
        // A later revision that carries an older generation is somebody's stale write.
        assert_eq!(on_stored(&shadow, &closed(8, "b"), 101), Decision::Ignore);
        assert_eq!(on_stored(&shadow, &closed(10, "b"), 101), Decision::Adopt);
    }

    #[test]
    fn replays_and_duplicates_are_ignored() {
        let shadow = seen(open_record(9, "a"), 100);
        assert_eq!(
            on_stored(&shadow, &open_record(9, "a"), 100),
            Decision::Ignore
        );
        assert_eq!(
            on_stored(&shadow, &open_record(10, "a"), 99),
            Decision::Ignore
        );
    }

    #[test]
    fn two_envoys_tripping_at_once_end_in_one_record() {
        // Both saw G = 4 and both claim G = 5; A's compare-and-swap wins.
        let base = closed(4, "x");
        let a = open_record(5, "a");
        let b = FleetRecord {
            published_at_ms: 999,
            ..open_record(5, "b")
        };
        let b_shadow = Shadow {
            seen: Some((base.clone(), 10)),
            claim: Some(b),
            progress: None,
        };
        assert_eq!(on_stored(&b_shadow, &a, 11), Decision::Adopt);
        // Had B's won instead, A would adopt it too: the order decides, not the names.
        let a_shadow = Shadow {
            seen: Some((base, 10)),
            claim: Some(a),
            progress: None,
        };
        let b_stored = FleetRecord {
            published_at_ms: 999,
            ..open_record(5, "b")
        };
        assert_eq!(
            on_stored(&a_shadow, &b_stored, 11),
            Decision::Rebase {
                generation: 6,
                mod_revision: 11
            },
            "A's open time ends 1 ms later, so A's trip is the one kept"
        );
    }

    #[test]
    fn a_reset_racing_a_trip_loses_to_the_trip() {
        let shadow = Shadow {
            seen: Some((open_record(4, "x"), 10)),
            claim: Some(closed(5, "operator")),
            progress: None,
        };
        assert_eq!(
            on_stored(&shadow, &open_record(5, "t"), 11),
            Decision::Adopt
        );
    }

    #[test]
    fn a_claim_made_alone_counts_as_one_step() {
        let shadow = Shadow {
            seen: Some((open_record(4, "x"), 10)),
            claim: None,
            progress: None,
        };
        assert_eq!(claim_generation(&shadow), 5);
        assert_eq!(claim_generation(&Shadow::default()), 1);
        // The fleet moved two steps while this Envoy was cut off: the fleet wins.
        let back = Shadow {
            claim: Some(open_record(5, "alone")),
            ..shadow
        };
        assert_eq!(on_stored(&back, &closed(6, "fleet"), 20), Decision::Adopt);
    }

    #[test]
    fn adopting_a_trip_refuses_from_now_for_the_time_left() {
        let s = Settings::default();
        let mut local = Record::default();
        let stored = open_record(5, "gw-2"); // published at 1_000, open for 30 s
        let a = adopt(&mut local, &stored, &s, 1_004);
        assert_eq!(
            (a.from, a.to, a.moved, a.delay_ms),
            (State::Closed, State::Open, true, 4)
        );
        assert_eq!(local.state, State::Open);
        assert_eq!(local.open_until_ms, 31_000);
        assert_eq!(local.generation, 1, "in-flight tickets are now stale");
        assert_eq!(local.reason, Some(TripReason::ConsecutiveFailures));
    }

    #[test]
    fn two_moves_to_half_open_at_the_same_step_keep_the_stored_one() {
        let stored = FleetRecord {
            state: State::HalfOpen,
            cause: FleetCause::OpenElapsed,
            open_for_ms: 0,
            ..open_record(6, "a")
        };
        let later = FleetRecord {
            published_at_ms: stored.published_at_ms + 5,
            member: "b".into(),
            ..stored.clone()
        };
        assert!(!claim_wins(&later, &stored));
        assert!(!claim_wins(&stored, &later));
    }

    #[test]
    fn a_receiver_whose_clock_is_behind_stays_open_the_full_time() {
        let mut local = Record::default();
        let a = adopt(&mut local, &open_record(5, "gw"), &Settings::default(), 500);
        assert_eq!(a.delay_ms, 0);
        assert_eq!(local.open_until_ms, 30_500);
    }

    #[test]
    fn adopting_the_same_state_keeps_the_local_generation() {
        let mut local = Record {
            state: State::HalfOpen,
            generation: 3,
            probes_in_flight: 1,
            ..Record::default()
        };
        let stored = FleetRecord {
            state: State::HalfOpen,
            cause: FleetCause::OpenElapsed,
            probe_successes: 2,
            ..open_record(7, "gw")
        };
        let a = adopt(&mut local, &stored, &Settings::default(), 2_000);
        assert!(!a.moved);
        assert_eq!((local.generation, local.probes_in_flight), (3, 1));
        assert_eq!(
            local.probe_successes, 2,
            "the fleet's successes count here too"
        );
    }

    #[test]
    fn adopting_a_recovery_ramps_when_configured() {
        let s = Settings {
            recovery_duration_ms: 10_000,
            ..Settings::default()
        };
        let mut local = Record {
            state: State::HalfOpen,
            consecutive_failures: 3,
            ..Record::default()
        };
        let stored = FleetRecord {
            cause: FleetCause::Recovered,
            ..closed(8, "gw")
        };
        adopt(&mut local, &stored, &s, 5_000);
        assert_eq!(local.state, State::Closed);
        assert!(local.ramping);
        assert_eq!(local.consecutive_failures, 0);
    }

    fn any_record() -> impl Strategy<Value = FleetRecord> {
        (0usize..3, 0u32..8, 0u64..3, 0u32..3).prop_map(|(s, generation, end, trips)| {
            let state = State::ALL[s];
            FleetRecord {
                state,
                reason: (state != State::Closed).then_some(TripReason::FailureRate),
                generation,
                published_at_ms: end,
                open_for_ms: 0,
                trips_in_row: trips,
                ..open_record(0, "m")
            }
        })
    }

    proptest! {
        #[test]
        fn the_rule_is_antisymmetric(a in any_record(), b in any_record()) {
            // Whichever of two records is stored, the same one ends up stored: never both
            // "my claim wins".
            prop_assert!(!(claim_wins(&a, &b) && claim_wins(&b, &a)));
        }

        #[test]
        fn publishing_rounds_settle(claims in proptest::collection::vec(any_record(), 1..6)) {
            // Every Envoy holds a claim; each round one compare-and-swap lands, and the
            // others either adopt it or rebase. Rounds are bounded by the number of claims.
            let mut stored = (closed(0, "genesis"), 1i64);
            let mut pending: Vec<Shadow> = claims
                .into_iter()
                .map(|c| Shadow { seen: Some(stored.clone()), claim: Some(c), progress: None })
                .collect();
            let mut rounds = 0;
            while let Some(mut writer) = pending.pop() {
                rounds += 1;
                prop_assert!(rounds <= 64);
                let Some(claim) = writer.claim.take() else { continue };
                let generation = claim_generation(&writer);
                let landed = FleetRecord { generation, ..claim };
                prop_assert!(newer(landed.generation, stored.0.generation));
                stored = (landed, stored.1 + 1);
                let mut next = Vec::new();
                for mut s in pending {
                    match on_stored(&s, &stored.0, stored.1) {
                        Decision::Adopt => { s.claim = None; }
                        Decision::Rebase { .. } => {}
                        Decision::Ignore => prop_assert!(false, "a fresh record ignored"),
                    }
                    s.seen = Some(stored.clone());
                    next.push(s);
                }
                pending = next;
            }
        }
    }
}
