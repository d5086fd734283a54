use super::*;
use crate::core::fleet::merge::{self, adopt};
use crate::core::fleet::record::tests::open_record;
use crate::core::fleet::vote::OwnVote;
use crate::core::state::TripReason;
use proptest::prelude::*;

fn vote(at: u64) -> Vote {
    Vote {
        reason: TripReason::ConsecutiveFailures,
        voted_at_ms: at,
    }
}

fn members(names: &[&str]) -> Members {
    let mut m = Members::default();
    for n in names {
        m.add(n);
    }
    m
}

fn voting() -> Shadow {
    Shadow {
        vote: OwnVote {
            cast: Some(vote(1_000)),
            stored: None,
        },
        ..Shadow::default()
    }
}

fn transition(cause: Cause, from: State, at_ms: u64) -> Transition {
    let s = Settings::default();
    let mut r = Record {
        state: from,
        ..Record::default()
    };
    r.transition(cause, &s, at_ms)
}

fn closed_record(cause: FleetCause) -> FleetRecord {
    FleetRecord {
        state: State::Closed,
        reason: None,
        cause,
        ..open_record(3, "gw-2")
    }
}

#[test]
fn the_quorum_shrinks_to_the_live_members_and_never_below_one() {
    assert_eq!(needed(2, 3), 2);
    assert_eq!(needed(3, 2), 2, "all the live members must agree");
    assert_eq!(needed(2, 1), 1, "one Envoy alone still trips itself");
    assert_eq!(needed(2, 0), 1);
    assert_eq!(needed(1, 50), 1);
}

#[test]
fn a_vote_lives_for_the_window_or_for_the_open_time_of_a_count_window() {
    let time = Settings::default();
    assert_eq!(vote_life_ms(&time), 10_000);
    let count = Settings {
        window: WindowSpec::Count { size: 100 },
        open_duration_ms: 30_000,
        ..Settings::default()
    };
    assert_eq!(vote_life_ms(&count), 30_000);
}

#[test]
fn with_a_quorum_of_one_every_transition_is_the_fleets_as_before() {
    let t = transition(
        Cause::Tripped(TripReason::ConsecutiveFailures),
        State::Closed,
        5,
    );
    let r = route(&t, 1, &Shadow::default());
    assert_eq!(
        r,
        Route {
            publish: true,
            vote: VoteChange::Keep
        }
    );
}

#[test]
fn an_own_trip_opens_only_this_member_and_casts_its_vote() {
    let trip = transition(Cause::Tripped(TripReason::FailureRate), State::Closed, 500);
    let r = route(&trip, 2, &Shadow::default());
    assert!(!r.publish);
    assert_eq!(
        r.vote,
        VoteChange::Cast(Vote {
            reason: TripReason::FailureRate,
            voted_at_ms: 500
        })
    );
    let half = transition(Cause::OpenElapsed, State::Open, 600);
    assert_eq!(
        route(&half, 2, &voting()),
        Route {
            publish: false,
            vote: VoteChange::Keep
        },
        "its own half-open is its own"
    );
    let again = transition(
        Cause::Tripped(TripReason::ProbeFailed),
        State::HalfOpen,
        700,
    );
    assert!(
        matches!(route(&again, 2, &voting()).vote, VoteChange::Cast(v) if v.voted_at_ms == 700),
        "a failed probe of its own refreshes the vote"
    );
    let asked = transition(Cause::UpstreamAsked { wait_ms: 5 }, State::Closed, 800);
    assert!(
        matches!(route(&asked, 2, &Shadow::default()).vote, VoteChange::Cast(v) if v.reason == TripReason::UpstreamAsked)
    );
    let healed = transition(Cause::Recovered, State::HalfOpen, 900);
    assert_eq!(
        route(&healed, 2, &voting()),
        Route {
            publish: false,
            vote: VoteChange::Withdraw
        },
        "a member that recovers withdraws its vote, and tells the fleet nothing else"
    );
}

#[test]
fn operator_decisions_and_moves_inside_the_fleets_episode_are_published() {
    for (cause, from) in [
        (Cause::Forced, State::Closed),
        (Cause::Released, State::Open),
        (Cause::Reset, State::Open),
    ] {
        let r = route(&transition(cause, from, 5), 3, &voting());
        assert!(r.publish, "{cause:?}");
        assert_ne!(r.vote, VoteChange::Cast(vote(5)), "{cause:?} is no vote");
    }
    let reset = route(&transition(Cause::Reset, State::Open, 5), 3, &voting());
    assert_eq!(reset.vote, VoteChange::Withdraw);
    let in_fleet = Shadow {
        seen: Some((
            FleetRecord {
                state: State::HalfOpen,
                cause: FleetCause::OpenElapsed,
                ..open_record(4, "gw-1")
            },
            9,
        )),
        ..Shadow::default()
    };
    let failed = transition(Cause::Tripped(TripReason::ProbeFailed), State::HalfOpen, 5);
    assert_eq!(
        route(&failed, 2, &in_fleet),
        Route {
            publish: true,
            vote: VoteChange::Keep
        },
        "a fleet probe that fails reopens the fleet, as before"
    );
    let claimed = Shadow {
        claim: Some(open_record(2, "me")),
        ..Shadow::default()
    };
    assert!(fleet_episode(&claimed));
    assert!(route(&transition(Cause::OpenElapsed, State::Open, 9), 2, &claimed).publish);
}

#[test]
fn only_a_reset_closes_a_member_open_by_its_own_failures() {
    let own = voting();
    assert!(keeps_own(&own, &closed_record(FleetCause::ModeChanged)));
    assert!(keeps_own(&own, &closed_record(FleetCause::Recovered)));
    assert!(!keeps_own(&own, &closed_record(FleetCause::Reset)));
    assert!(
        !keeps_own(&own, &open_record(3, "gw-2")),
        "the fleet's open is taken"
    );
    assert!(!keeps_own(
        &Shadow::default(),
        &closed_record(FleetCause::Recovered)
    ));
    let in_fleet = Shadow {
        seen: Some((open_record(2, "gw-2"), 5)),
        ..voting()
    };
    assert!(
        !keeps_own(&in_fleet, &closed_record(FleetCause::Recovered)),
        "the fleet's recovery closes a member that followed it"
    );
    let mut local = Record {
        state: State::Open,
        open_until_ms: 9_000,
        ..Record::default()
    };
    let mode = FleetRecord {
        mode_override: Some(crate::core::settings::Mode::DryRun),
        ..closed_record(FleetCause::ModeChanged)
    };
    let a = adopt(&mut local, &mode, &Settings::default(), 1_000, true);
    assert!(!a.moved);
    assert_eq!((local.state, local.open_until_ms), (State::Open, 9_000));
    assert_eq!(local.mode_override, mode.mode_override, "the mode is taken");
}

#[test]
fn votes_are_counted_from_live_members_within_their_life_in_etcds_order() {
    let mut t = Tally::default();
    assert!(t.put("gw-2", vote(1_000), 12));
    assert!(t.put("gw-1", vote(900), 10));
    assert!(t.put("ghost", vote(1_000), 11));
    let live = members(&["gw-1", "gw-2", "gw-3"]);
    let c = count(&t, &live, "gw-1", 2, 10_000, 2_000);
    assert_eq!((c.votes, c.needed), (2, 2));
    assert_eq!(
        c.voters,
        ["gw-1", "gw-2"],
        "the unknown member is not counted"
    );
    assert_eq!(c.completer.as_deref(), Some("gw-2"));
    let later = count(&t, &live, "gw-1", 2, 10_000, 10_950);
    assert_eq!(later.voters, ["gw-2"], "gw-1's vote outlived the window");
    assert_eq!(later.completer, None);
    let skewed = count(&t, &live, "gw-1", 2, 10_000, 0);
    assert_eq!(skewed.votes, 2, "votes from a clock ahead are fresh");
}

#[test]
fn this_members_vote_counts_before_its_key_is_seen() {
    let mut t = Tally::default();
    t.put("me", vote(5), 3);
    let c = count(&t, &Members::default(), "me", 2, 1_000, 5);
    assert_eq!(
        (c.votes, c.needed),
        (1, 1),
        "alone, it trips the fleet of one"
    );
    let c = count(&t, &members(&["other"]), "me", 2, 1_000, 5);
    assert_eq!((c.votes, c.needed), (1, 2));
}

#[test]
fn a_tally_keeps_the_latest_vote_per_member_and_is_bounded() {
    let mut t = Tally::default();
    assert!(t.put("a", vote(1), 5));
    assert!(!t.put("a", vote(0), 4), "an older revision is a replay");
    assert!(!t.put("a", vote(1), 5));
    assert!(t.put("a", vote(2), 6));
    assert!(!t.put("bad\nname", vote(2), 7));
    assert!(!t.put("", vote(2), 7));
    for i in 1..MAX_VOTES {
        assert!(t.put(&format!("m{i}"), vote(1), 10 + i as i64));
    }
    assert!(!t.put("one-more", vote(1), 99_999), "full");
    assert_eq!(t.len(), MAX_VOTES);
    assert!(t.remove("a"));
    assert!(!t.remove("a"));
    assert!(t.put("one-more", vote(1), 99_999));
}

#[test]
fn tallies_and_member_sets_round_trip_and_refuse_junk() {
    let mut t = Tally::default();
    t.put("gw-1", vote(7), 3);
    t.put("gw-é", vote(8), -1);
    let bytes = t.encode();
    assert_eq!(Tally::decode(&bytes), Some(t.clone()));
    assert_eq!(Tally::decode(&bytes[..bytes.len() - 1]), None);
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(Tally::decode(&longer), None);
    let m = members(&["gw-1", "gw-2"]);
    let bytes = m.encode();
    assert_eq!(Members::decode(&bytes), Some(m.clone()));
    let mut twice = bytes.clone();
    twice.truncate(4);
    twice[2] = 2;
    twice.extend_from_slice(&[4, b'g', b'w', b'-', b'1', 4, b'g', b'w', b'-', b'1']);
    assert_eq!(Members::decode(&twice), None, "a member twice");
    assert_eq!(Members::decode(b""), None);
    assert_eq!(Tally::decode(&Members::default().encode()), None);
}

#[test]
fn members_are_bounded_and_checked() {
    let mut m = Members::default();
    assert!(m.add("gw-1"));
    assert!(!m.add("gw-1"));
    assert!(!m.add(&"x".repeat(65)));
    assert_eq!(m.live_with("gw-1"), 1);
    assert_eq!(m.live_with("gw-2"), 2);
    for i in 1..MAX_MEMBERS {
        assert!(m.add(&format!("m{i}")));
    }
    assert!(!m.add("late"));
    assert!(m.remove("gw-1"));
    assert!(!m.contains("gw-1"));
}

#[test]
fn only_a_voter_claims_the_fleets_open_and_the_completer_at_once() {
    let mut t = Tally::default();
    t.put("gw-1", vote(1_000), 10);
    t.put("gw-2", vote(1_000), 11);
    let live = members(&["gw-1", "gw-2", "gw-3"]);
    let c = count(&t, &live, "gw-1", 2, 10_000, 1_000);
    assert_eq!(
        step(&c, "gw-1", &voting()),
        QuorumStep::Claim { now: false }
    );
    assert_eq!(step(&c, "gw-2", &voting()), QuorumStep::Claim { now: true });
    assert_eq!(
        step(&c, "gw-3", &Shadow::default()),
        QuorumStep::Nothing,
        "a member that saw nothing wrong does not speak"
    );
    let open = Shadow {
        seen: Some((open_record(1, "gw-2"), 12)),
        ..voting()
    };
    assert_eq!(step(&c, "gw-1", &open), QuorumStep::Nothing, "open already");
    let short = count(&t, &live, "gw-1", 3, 10_000, 1_000);
    assert_eq!(step(&short, "gw-2", &voting()), QuorumStep::Nothing);
}

#[test]
fn the_fleets_open_lasts_what_is_left_of_the_voters_own_and_at_least_the_base_time() {
    let s = Settings {
        open_duration_ms: 30_000,
        ..Settings::default()
    };
    let local = Record {
        state: State::Open,
        open_until_ms: 100_000,
        trips_in_row: 2,
        ..Record::default()
    };
    let r = open_record_of(&local, &s, 40_000);
    assert_eq!((r.open_for_ms, r.trips_in_row), (60_000, 2));
    let r = open_record_of(&local, &s, 90_000);
    assert_eq!(r.open_for_ms, 30_000);
    let half = Record {
        state: State::HalfOpen,
        ..local
    };
    assert_eq!(open_record_of(&half, &s, 1).open_for_ms, 30_000);
    let back = FleetRecord::decode(&r.encode()).unwrap();
    assert_eq!(back.cause, FleetCause::QuorumReached);
}

fn open_record_of(local: &Record, s: &Settings, now_ms: u64) -> FleetRecord {
    super::open_record(local, &vote(now_ms), s, 4, "gw-2", now_ms)
}

#[test]
fn a_claimed_open_by_quorum_settles_on_any_stored_open_of_its_step() {
    let stored = open_record(5, "gw-1");
    let claim = FleetRecord {
        cause: FleetCause::QuorumReached,
        published_at_ms: 9_000_000,
        ..open_record(5, "gw-2")
    };
    assert!(!merge::claim_wins(&claim, &stored));
    let shadow = Shadow {
        seen: Some((open_record(4, "gw-1"), 7)),
        claim: Some(claim.clone()),
        ..Shadow::default()
    };
    assert_eq!(
        merge::on_stored(&shadow, &stored, 8),
        merge::Decision::Adopt
    );
    let closed_same_step = FleetRecord {
        generation: 5,
        ..closed_record(FleetCause::Reset)
    };
    assert!(
        merge::claim_wins(&claim, &closed_same_step),
        "open still beats closed"
    );
}

proptest! {
    /// The danger the quorum is for: with at least two members live and a quorum of two or
    /// more, one member's vote (however often it votes) never opens the fleet.
    #[test]
    fn one_voice_never_opens_the_fleet(
        q in 2u32..10,
        live in 2usize..20,
        votes in proptest::collection::vec((0u64..20_000, 1i64..1_000), 1..20),
        now in 0u64..30_000,
    ) {
        let names: Vec<String> = (0..live).map(|i| format!("gw-{i}")).collect();
        let m = members(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let mut t = Tally::default();
        for (at, rev) in &votes {
            t.put("gw-0", vote(*at), *rev);
        }
        let c = count(&t, &m, "gw-1", q, 10_000, now);
        prop_assert!(c.votes <= 1);
        prop_assert!(c.needed >= 2);
        prop_assert_eq!(step(&c, "gw-0", &voting()), QuorumStep::Nothing);
    }

    /// Counting is bounded by the live members and the quorum by 1 and `trip_quorum`; a
    /// completer exists exactly when the votes reach the quorum, and it is one of them.
    #[test]
    fn counts_stay_within_their_bounds(
        q in 1u32..8,
        live in 0usize..8,
        votes in proptest::collection::vec((0usize..12, 0u64..20_000, -5i64..100), 0..30),
        now in 0u64..30_000,
        life in 0u64..15_000,
    ) {
        let names: Vec<String> = (0..live).map(|i| format!("gw-{i}")).collect();
        let m = members(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let mut t = Tally::default();
        for (who, at, rev) in &votes {
            t.put(&format!("gw-{who}"), vote(*at), *rev);
        }
        let c = count(&t, &m, "gw-0", q, life, now);
        prop_assert!(c.needed >= 1 && c.needed <= q);
        prop_assert!(c.votes as usize <= m.live_with("gw-0"));
        prop_assert_eq!(c.completer.is_some(), c.votes >= c.needed);
        if let Some(who) = &c.completer {
            prop_assert!(c.voters.contains(who));
        }
        prop_assert_eq!(Tally::decode(&t.encode()), Some(t));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Tally::decode(&bytes);
        let _ = Members::decode(&bytes);
        let mut tally = vec![0xF6, 1];
        tally.extend_from_slice(&bytes);
        let _ = Tally::decode(&tally);
        let mut set = vec![0xF7, 1];
        set.extend_from_slice(&bytes);
        let _ = Members::decode(&set);
    }
}

#[test]
fn views_say_whether_a_breaker_is_open_here_or_in_the_fleet() {
    let mut t = Tally::default();
    t.put("gw-1", vote(1_000), 10);
    let c = count(
        &t,
        &members(&["gw-1", "gw-2", "gw-3"]),
        "gw-1",
        2,
        10_000,
        1_000,
    );
    assert_eq!(
        standing(State::Open, &voting(), &c, true),
        "open here by its own failures, 1 of 2 votes"
    );
    assert_eq!(
        standing(State::HalfOpen, &voting(), &c, true),
        "half-open here on its own, 1 of 2 votes"
    );
    let in_fleet = Shadow {
        seen: Some((open_record(2, "gw-2"), 5)),
        ..voting()
    };
    assert_eq!(
        standing(State::Open, &in_fleet, &c, true),
        "open in the fleet"
    );
    assert_eq!(
        standing(State::Open, &voting(), &c, false),
        "open in the fleet"
    );
    assert_eq!(standing(State::Closed, &voting(), &c, true), "closed");
}
