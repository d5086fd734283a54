//! Which hosts a breaker knows of and which failed: bounds, memory, and the spread a trip
//! needs.

use super::*;
use proptest::prelude::*;

const TIME: WindowSpec = WindowSpec::Time { window_ms: 10_000 };

fn a(text: &str) -> Option<Address> {
    Address::new(text.as_bytes())
}

/// Hosts that each answered one success, then `failing` failed once each at `now`.
fn heard(ok: &[&str], failing: &[&str], now: u64) -> Hosts {
    let mut h = Hosts::default();
    for host in ok {
        h.record(a(host), false, false, now, TIME);
    }
    for host in failing {
        h.record(a(host), true, false, now, TIME);
    }
    h
}

#[test]
fn addresses_are_bounded_and_printable() {
    assert_eq!(a(""), None);
    assert_eq!(a("10.0.0.7:8080").unwrap().as_str(), "10.0.0.7:8080");
    assert_eq!(a("bad\nhost\u{7f}").unwrap().as_str(), "bad?host?");
    let long = |c: &str| a(&format!("/var/run/{}/upstream.sock", c.repeat(100))).unwrap();
    assert_eq!(long("x").as_bytes().len(), MAX_ADDRESS_BYTES);
    assert!(long("x").as_str().starts_with("/var/run/xxx"));
    assert_ne!(long("x"), long("y"), "long addresses stay apart");
    let mut nearly = "x".repeat(200);
    let first = a(&nearly).unwrap();
    nearly.push('z');
    assert_ne!(first, a(&nearly).unwrap(), "told apart by their tails too");
}

#[test]
fn stored_addresses_are_only_what_new_makes() {
    assert_eq!(Address::stored(b"127.0.0.1:1"), a("127.0.0.1:1"));
    assert_eq!(Address::stored(b""), None);
    assert_eq!(Address::stored(b"a b"), None);
    assert_eq!(Address::stored(&[b'x'; MAX_ADDRESS_BYTES + 1]), None);
}

#[test]
fn failures_from_one_host_of_three_are_confined() {
    let h = heard(&["a:1", "b:1", "c:1"], &["a:1", "a:1", "a:1"], 1_000);
    assert_eq!(h.known(1_000, TIME), 3);
    let held = h.spread(Rule::Failures, 2, 1_000, TIME);
    assert_eq!(held, Spread::Confined(vec![a("a:1").unwrap()], 3));
    assert!(matches!(
        h.spread(Rule::Streak, 2, 1_000, TIME),
        Spread::Confined(..)
    ));
    assert_eq!(
        h.spread(Rule::Failures, 1, 1_000, TIME),
        Spread::Enough,
        "1: any host"
    );
}

#[test]
fn failures_from_enough_hosts_are_spread() {
    let h = heard(&["a:1", "b:1", "c:1"], &["a:1", "b:1"], 1_000);
    assert_eq!(h.spread(Rule::Failures, 2, 1_000, TIME), Spread::Enough);
    assert!(matches!(
        h.spread(Rule::Failures, 3, 1_000, TIME),
        Spread::Confined(..)
    ));
}

#[test]
fn a_cluster_whose_known_hosts_all_failed_is_spread() {
    let h = heard(&["a:1", "b:1"], &["a:1", "b:1"], 0);
    assert_eq!(h.spread(Rule::Failures, 5, 0, TIME), Spread::EveryKnownHost);
    let one = heard(&["a:1"], &["a:1"], 0);
    assert_eq!(
        one.spread(Rule::Failures, 2, 0, TIME),
        Spread::EveryKnownHost,
        "one host"
    );
}

#[test]
fn failures_with_no_host_speak_for_the_whole_cluster() {
    let mut h = heard(&["a:1", "b:1", "c:1"], &["a:1"], 0);
    h.record(None, true, false, 0, TIME);
    assert_eq!(h.spread(Rule::Failures, 2, 0, TIME), Spread::Enough);
    assert_eq!(h.known(0, TIME), 3, "no host is not a host");
}

#[test]
fn calls_the_hosts_say_nothing_about_trip_as_before() {
    let h = heard(&["a:1", "b:1"], &[], 0);
    assert_eq!(h.spread(Rule::Failures, 2, 0, TIME), Spread::Enough);
}

#[test]
fn failures_leave_with_their_window() {
    let h = heard(&["a:1", "b:1", "c:1"], &["a:1"], 1_000);
    let (hosts, _) = h.behind(Rule::Failures, 10_999, TIME);
    assert_eq!(hosts.len(), 1);
    let (hosts, _) = h.behind(Rule::Failures, 11_000, TIME);
    assert!(hosts.is_empty());
}

#[test]
fn a_count_window_counts_its_marks_in_calls() {
    let spec = WindowSpec::Count { size: 4 };
    let mut h = Hosts::default();
    h.record(a("a:1"), true, false, 0, spec);
    h.record(a("b:1"), false, false, 0, spec);
    h.successes(2, None, 0, spec);
    assert_eq!(h.behind(Rule::Failures, 0, spec).0.len(), 1, "4 calls: in");
    h.record(a("b:1"), false, false, 0, spec);
    assert!(
        h.behind(Rule::Failures, 0, spec).0.is_empty(),
        "5 calls: out"
    );
}

#[test]
fn a_change_of_window_kind_starts_the_marks_afresh() {
    let mut h = heard(&["a:1"], &["a:1"], 5);
    h.record(a("b:1"), false, false, 5, WindowSpec::Count { size: 10 });
    assert!(h.hosts.iter().all(|x| x.failed.is_none() && !x.in_streak));
    assert_eq!(h.known(5, WindowSpec::Count { size: 10 }), 2);
}

#[test]
fn a_streak_names_only_its_own_hosts() {
    let mut h = heard(&["a:1", "b:1", "c:1"], &["b:1"], 0);
    h.end_streak();
    h.record(a("a:1"), true, false, 1, TIME);
    h.record(a("a:1"), true, false, 2, TIME);
    let (hosts, hostless) = h.behind(Rule::Streak, 2, TIME);
    assert_eq!((hosts, hostless), (vec![a("a:1").unwrap()], false));
    assert_eq!(
        h.behind(Rule::Failures, 2, TIME).0.len(),
        2,
        "b's is in the window"
    );
}

#[test]
fn slow_calls_mark_their_own_rule() {
    let mut h = heard(&["a:1", "b:1"], &[], 0);
    h.record(a("a:1"), false, true, 0, TIME);
    assert_eq!(h.behind(Rule::Slow, 0, TIME).0.len(), 1);
    assert!(h.behind(Rule::Failures, 0, TIME).0.is_empty());
    assert!(matches!(
        h.spread(Rule::Slow, 2, 0, TIME),
        Spread::Confined(..)
    ));
}

#[test]
fn a_host_not_heard_from_again_is_forgotten() {
    let mut h = heard(&["gone:1", "a:1"], &[], 0);
    for _ in 0..HOST_MEMORY - 2 {
        h.record(a("a:1"), false, false, 0, TIME);
    }
    assert_eq!(h.known(0, TIME), 2);
    h.record(a("a:1"), false, false, 0, TIME);
    assert_eq!(h.known(0, TIME), 1);
    assert_eq!(h.hosts.len(), 1, "and dropped from the record");
    h.record(a("a:1"), true, false, 0, TIME);
    assert_eq!(
        h.spread(Rule::Failures, 2, 0, TIME),
        Spread::EveryKnownHost,
        "now one host"
    );
}

#[test]
fn a_quiet_spell_forgets_nothing() {
    let h = heard(&["a:1", "b:1", "c:1"], &["a:1"], 0);
    let hour = 3_600_000;
    assert_eq!(h.known(hour, TIME), 3);
}

#[test]
fn clearing_the_marks_keeps_the_hosts() {
    let mut h = heard(&["a:1", "b:1"], &["a:1"], 0);
    h.record(None, true, true, 0, TIME);
    h.confined = true;
    h.clear_marks();
    assert_eq!(h.known(0, TIME), 2);
    assert!(h.behind(Rule::Failures, 0, TIME).0.is_empty());
    assert!(!h.confined && h.hosts.iter().all(|x| x.address.is_some()));
}

fn event() -> impl Strategy<Value = (u8, bool, bool, u64)> {
    (0u8..40, any::<bool>(), any::<bool>(), 0u64..2_000)
}

proptest! {
    /// Addresses come from outside: however many, the table stays bounded.
    #[test]
    fn the_table_stays_bounded(events in proptest::collection::vec(event(), 0..400)) {
        let mut h = Hosts::default();
        let mut now = 0;
        for (host, failed, slow, step) in events {
            now += step;
            let address = (host > 0).then(|| a(&format!("10.0.0.{host}:80"))).flatten();
            h.record(address, failed, slow, now, TIME);
            prop_assert!(h.hosts.iter().filter(|x| x.address.is_some()).count() <= MAX_HOSTS);
            prop_assert!(h.hosts.iter().filter(|x| x.address.is_none()).count() <= 1);
        }
    }

    /// A success never pushes out a host whose failure still counts, so a full table
    /// cannot hide a spread of failures.
    #[test]
    fn successes_never_push_out_failing_hosts(
        others in 1u8..60, failing in 1usize..=MAX_HOSTS,
    ) {
        let mut h = Hosts::default();
        for i in 0..failing {
            h.record(a(&format!("f{i}:1")), true, false, 0, TIME);
        }
        for i in 0..others {
            h.record(a(&format!("ok{i}:1")), false, false, 0, TIME);
        }
        prop_assert_eq!(h.behind(Rule::Failures, 0, TIME).0.len(), failing);
    }

    /// `trip_min_hosts: 1` is the breaker as it was: every rule's calls are spread.
    #[test]
    fn one_host_is_always_enough(events in proptest::collection::vec(event(), 0..100)) {
        let mut h = Hosts::default();
        for (host, failed, slow, now) in events {
            h.record(a(&format!("{host}:1")), failed, slow, now, TIME);
            for rule in [Rule::Streak, Rule::Failures, Rule::Slow] {
                prop_assert_eq!(h.spread(rule, 1, now, TIME), Spread::Enough);
            }
        }
    }
}

#[test]
fn the_picture_is_young_for_a_while_after_the_first_host() {
    let mut h = Hosts::default();
    assert!(h.young(5_000));
    h.record(None, true, false, 5_000, TIME);
    assert!(h.young(60_000), "a call with no host is no host heard");
    h.record(a("a:1"), true, false, 6_000, TIME);
    assert!(h.young(6_000 + CENSUS_MS - 1));
    assert!(!h.young(6_000 + CENSUS_MS));
    h.clear_marks();
    assert!(
        !h.young(6_000 + CENSUS_MS),
        "a reset does not make it young again"
    );
}
