//! The merge rule's cases, one behaviour per test, and its convergence as properties.

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
        vote: Default::default(),
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
        vote: Default::default(),
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
        vote: Default::default(),
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
        vote: Default::default(),
    };
    assert_eq!(progress_step(&claimed, 2), ProgressStep::Nothing);
    let moved_on = Shadow {
        seen: Some((open_record(8, "b"), 31)),
        claim: None,
        progress,
        vote: Default::default(),
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
        vote: Default::default(),
    };
    assert_eq!(on_stored(&b_shadow, &a, 11), Decision::Adopt);
    // Had B's won instead, A would adopt it too: the order decides, not the names.
    let a_shadow = Shadow {
        seen: Some((base, 10)),
        claim: Some(a),
        progress: None,
        vote: Default::default(),
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
        vote: Default::default(),
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
        vote: Default::default(),
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
    let a = adopt(&mut local, &stored, &s, 1_004, false);
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
    let a = adopt(
        &mut local,
        &open_record(5, "gw"),
        &Settings::default(),
        500,
        false,
    );
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
    let a = adopt(&mut local, &stored, &Settings::default(), 2_000, false);
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
    adopt(&mut local, &stored, &s, 5_000, false);
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
            .map(|c| Shadow { seen: Some(stored.clone()), claim: Some(c), progress: None, vote: Default::default() })
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
