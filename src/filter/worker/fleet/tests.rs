//! The fleet's shell against the in-memory host: what it sends to etcd and what it does
//! with the answers, one callback at a time. The real etcd and Envoys are in
//! tests/fleet_in_envoy.rs; these pin down the steps between.

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::types::Action;

use crate::core::fleet::etcd::{
    KeyValue, RangeResponse, Request, Response, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::core::fleet::keys;
use crate::core::fleet::merge::Progress;
use crate::core::fleet::record::{FleetCause, FleetRecord};
use crate::core::state::{Counts, State, TripReason};

use super::super::breakers::Breakers;
use super::super::Worker;
use super::shadows::{load_shadow, note_read_breaker};
use super::shared_link::{note_read, LinkState, SharedLink};
use crate::filter::host::fake::{Call, FakeHost};
use crate::filter::http::Stream;
use crate::filter::tests::worker;

const LOCAL: &str = r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "30s"}}}"#;
const FLEET: &str = r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "30s"}},
    "fleet": {"etcd_cluster": "etcd", "prefix": "/p", "member": "gateway-1", "trip_quorum": 1}}"#;

/// One request to the school cluster, through every callback Envoy makes.
fn request(host: &FakeHost, w: &Rc<RefCell<Worker>>, status: u32) -> Action {
    crate::filter::tests::request(host, w, "school", status)
}

fn grpc_calls(journal: &[Call]) -> Vec<String> {
    journal
        .iter()
        .filter_map(|c| match c {
            Call::Grpc(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn open_by(member: &str, generation: u32, at_ms: u64) -> FleetRecord {
    FleetRecord {
        state: State::Open,
        reason: Some(TripReason::ConsecutiveFailures),
        cause: FleetCause::Tripped,
        mode_override: None,
        generation,
        published_at_ms: at_ms,
        open_for_ms: 30_000,
        trips_in_row: 1,
        probe_successes: 0,
        counts: Counts {
            consecutive_failures: 3,
            ..Counts::default()
        },
        member: member.into(),
    }
}

#[test]
fn without_a_fleet_block_nothing_about_etcd_is_called() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, LOCAL);
    for _ in 0..4 {
        request(&host, &w, 500);
    }
    for _ in 0..20 {
        host.advance(100);
        w.borrow_mut().tick(&host, host.clock_ms.get());
    }
    let journal = host.take_journal();
    assert!(grpc_calls(&journal).is_empty(), "{journal:?}");
    assert!(!host.shared.borrow().keys().any(|k| k.contains("fleet")));
}

#[test]
fn a_trip_becomes_a_claim_published_by_compare_and_swap_then_settled() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, FLEET);
    SharedLink::update(&host, |c| c.link = LinkState::Connected);
    note_read(&host);
    // Read already, and etcd had no record of it (else the first request would ask).
    note_read_breaker(&host, "school");
    for _ in 0..3 {
        request(&host, &w, 500);
    }
    let claim = load_shadow(&host, "school").claim.expect("a claim");
    assert_eq!((claim.state, claim.generation), (State::Open, 1));
    assert_eq!(claim.member, "gateway-1");
    host.take_journal();
    // The HTTP context woke its own root context; the notice makes it publish.
    let token = w.borrow().queue().expect("a queue");
    w.borrow_mut().notified(&host, token, host.clock_ms.get());
    assert_eq!(grpc_calls(&host.take_journal()), ["Txn"]);
    *host.grpc_answer.borrow_mut() = TxnResponse {
        header: Some(ResponseHeader {
            revision: 7,
            ..ResponseHeader::default()
        }),
        succeeded: true,
        responses: Vec::new(),
    }
    .encode_to_vec();
    let txn = host.grpc_sent.borrow().last().map(|(t, _)| *t).unwrap_or(0);
    w.borrow_mut()
        .grpc_answered(&host, txn, 0, 100, host.clock_ms.get());
    let shadow = load_shadow(&host, "school");
    assert_eq!(shadow.claim, None, "settled");
    assert_eq!(
        shadow.seen.map(|(r, rev)| (r.generation, rev)),
        Some((1, 7))
    );
    host.advance(1_000);
    w.borrow_mut().tick(&host, host.clock_ms.get());
    assert!(
        !grpc_calls(&host.take_journal()).contains(&"Txn".to_string()),
        "nothing left to publish"
    );
}

/// A first request to the school breaker, which reads its decision from etcd and waits;
/// etcd answers that gateway-2 opened it. Returns the host calls after the answer.
fn first_request_reads_an_open_decision(host: &FakeHost, w: &Rc<RefCell<Worker>>) -> Vec<Call> {
    host.new_stream();
    host.set_property("xds.cluster_name", b"school");
    let mut first = Stream::new(Some(w.clone()));
    host.take_journal();
    assert_eq!(first.request_headers(host, true), Action::Pause);
    assert_eq!(grpc_calls(&host.take_journal()), ["Range"]);
    *host.grpc_answer.borrow_mut() = RangeResponse {
        kvs: vec![KeyValue {
            key: keys::decision("/p", "school").into_bytes(),
            mod_revision: 9,
            value: open_by("gateway-2", 2, 999_990).encode(),
            ..KeyValue::default()
        }],
        ..RangeResponse::default()
    }
    .encode_to_vec();
    first.grpc_answered(host, last_token(host), 0, 100);
    host.take_journal()
}

#[test]
fn the_first_request_to_a_breaker_etcd_was_read_without_reads_its_decision() {
    let host = FakeHost::at(1_000_000);
    let w = worker(&host, FLEET);
    SharedLink::update(&host, |c| c.link = LinkState::Connected);
    note_read(&host);
    let journal = first_request_reads_an_open_decision(&host, &w);
    assert!(journal.contains(&Call::LocalReply(503)), "{journal:?}");
    // Settled: the next requests neither read etcd nor any fleet key.
    assert_eq!(request(&host, &w, 200), Action::Pause);
    let journal = host.take_journal();
    assert!(grpc_calls(&journal).is_empty(), "{journal:?}");
}

#[test]
fn a_record_from_another_member_is_adopted_and_refuses_requests() {
    let host = FakeHost::at(1_000_000);
    let w = worker(&host, FLEET);
    assert_eq!(
        grpc_calls(&host.take_journal()),
        ["Range"],
        "read when it starts"
    );
    let record = open_by("gateway-2", 4, 999_990);
    *host.grpc_answer.borrow_mut() = RangeResponse {
        header: Some(ResponseHeader {
            revision: 12,
            ..ResponseHeader::default()
        }),
        kvs: vec![KeyValue {
            key: keys::decision("/p", "school").into_bytes(),
            mod_revision: 11,
            value: record.encode(),
            ..KeyValue::default()
        }],
        more: false,
        count: 1,
    }
    .encode_to_vec();
    let range = host.grpc_sent.borrow().last().map(|(t, _)| *t).unwrap_or(0);
    w.borrow_mut()
        .grpc_answered(&host, range, 0, 100, host.clock_ms.get());
    assert_eq!(request(&host, &w, 200), Action::Pause, "refused as open");
    let shadow = load_shadow(&host, "school");
    assert_eq!(shadow.seen, Some((record, 11)));
    assert_eq!(shadow.claim, None, "an adoption is not a claim");
}

#[test]
fn damaged_bytes_from_etcd_change_nothing() {
    let host = FakeHost::at(1_000_000);
    let w = worker(&host, FLEET);
    *host.grpc_answer.borrow_mut() = RangeResponse {
        kvs: vec![KeyValue {
            key: keys::decision("/p", "school").into_bytes(),
            mod_revision: 11,
            value: b"junk".to_vec(),
            ..KeyValue::default()
        }],
        ..RangeResponse::default()
    }
    .encode_to_vec();
    let range = host.grpc_sent.borrow().last().map(|(t, _)| *t).unwrap_or(0);
    w.borrow_mut()
        .grpc_answered(&host, range, 0, 100, host.clock_ms.get());
    assert_eq!(request(&host, &w, 200), Action::Continue);
    assert_eq!(load_shadow(&host, "school").seen, None);
}

/// A worker whose breaker the fleet moved to half-open (generation 3, stored at revision
/// 20), connected and holding a lease.
fn half_open_fleet(host: &FakeHost) -> Rc<RefCell<Worker>> {
    half_open_fleet_with(host, "")
}

/// As [`half_open_fleet`], with more of the school breaker's settings.
fn half_open_fleet_with(host: &FakeHost, school: &str) -> Rc<RefCell<Worker>> {
    let w = worker(
        host,
        &format!(
            r#"{{"clusters": {{"school": {{"failure_threshold": 3, "open_duration": "30s"{school}}}}},
            "fleet": {{"etcd_cluster": "etcd", "prefix": "/p", "member": "gateway-1"}}}}"#
        ),
    );
    SharedLink::update(host, |c| {
        c.link = LinkState::Connected;
        c.lease = 5;
    });
    let record = half_open_by("gateway-2", 3, 0, host.clock_ms.get());
    *host.grpc_answer.borrow_mut() = RangeResponse {
        kvs: vec![KeyValue {
            key: keys::decision("/p", "school").into_bytes(),
            mod_revision: 20,
            value: record.encode(),
            ..KeyValue::default()
        }],
        ..RangeResponse::default()
    }
    .encode_to_vec();
    let range = host.grpc_sent.borrow().last().map(|(t, _)| *t).unwrap_or(0);
    w.borrow_mut()
        .grpc_answered(host, range, 0, 100, host.clock_ms.get());
    w
}

fn last_token(host: &FakeHost) -> u32 {
    host.grpc_sent.borrow().last().map(|(t, _)| *t).unwrap_or(0)
}

#[test]
fn a_probe_waits_for_its_fleet_slot_then_goes() {
    let host = FakeHost::at(1_000_000);
    let w = half_open_fleet(&host);
    host.new_stream();
    host.set_property("xds.cluster_name", b"school");
    let mut probe = Stream::new(Some(w.clone()));
    host.take_journal();
    assert_eq!(probe.request_headers(&host, true), Action::Pause);
    assert_eq!(grpc_calls(&host.take_journal()), ["Txn"], "one slot claim");
    // A second request meets the local gate (one probe) and never reaches etcd.
    assert_eq!(request(&host, &w, 200), Action::Pause);
    let journal = host.take_journal();
    assert!(grpc_calls(&journal).is_empty(), "{journal:?}");
    assert!(journal.contains(&Call::LocalReply(503)));
    *host.grpc_answer.borrow_mut() = TxnResponse {
        succeeded: true,
        ..TxnResponse::default()
    }
    .encode_to_vec();
    probe.grpc_answered(&host, last_token(&host), 0, 10);
    assert!(
        host.take_journal().contains(&Call::Resume),
        "the probe goes"
    );
}

#[test]
fn a_probe_without_a_free_slot_is_refused_and_gives_its_local_slot_back() {
    let host = FakeHost::at(1_000_000);
    let w = half_open_fleet(&host);
    host.new_stream();
    host.set_property("xds.cluster_name", b"school");
    let mut probe = Stream::new(Some(w.clone()));
    assert_eq!(probe.request_headers(&host, true), Action::Pause);
    // Another Envoy holds slot 0 of episode 3; the breaker is still at revision 20.
    *host.grpc_answer.borrow_mut() = TxnResponse {
        succeeded: false,
        responses: vec![
            range_op(keys::slot("/p", "school", 3, 0), 21, Vec::new()),
            range_op(keys::decision("/p", "school"), 20, b"x".to_vec()),
        ],
        ..TxnResponse::default()
    }
    .encode_to_vec();
    host.take_journal();
    probe.grpc_answered(&host, last_token(&host), 0, 10);
    let journal = host.take_journal();
    assert!(journal.contains(&Call::LocalReply(503)), "{journal:?}");
    assert!(!journal.contains(&Call::Resume));
    assert!(
        grpc_calls(&journal).is_empty(),
        "no second claim: no slot is free"
    );
    probe.log(&host);
    let stored = crate::core::store::load(
        &crate::filter::shared::SharedData(&host),
        &crate::filter::shared::record_key("school"),
    )
    .map(|l| l.record.probes_in_flight);
    assert_eq!(stored, Ok(0), "the local probe was given back");
    // The next request passes the local gate again, and is refused by the slot it knows.
    host.new_stream();
    host.set_property("xds.cluster_name", b"school");
    let mut next = Stream::new(Some(w.clone()));
    host.take_journal();
    assert_eq!(next.request_headers(&host, true), Action::Pause);
    let journal = host.take_journal();
    assert!(
        grpc_calls(&journal).is_empty() && journal.contains(&Call::LocalReply(503)),
        "the known-taken slot is refused without etcd: {journal:?}"
    );
}

fn range_op(key: String, mod_revision: i64, value: Vec<u8>) -> ResponseOp {
    ResponseOp {
        response: Some(Response::Range(RangeResponse {
            kvs: vec![KeyValue {
                key: key.into_bytes(),
                mod_revision,
                value,
                ..KeyValue::default()
            }],
            ..RangeResponse::default()
        })),
    }
}

#[test]
fn before_the_first_read_of_etcd_a_request_waits_for_its_breakers_decision() {
    let host = FakeHost::at(1_000_000);
    let w = worker(&host, FLEET);
    let journal = first_request_reads_an_open_decision(&host, &w);
    assert!(
        journal.contains(&Call::LocalReply(503)),
        "refused: {journal:?}"
    );
    assert!(!journal.contains(&Call::Resume));
    // Once answered, requests decide at once.
    assert_eq!(request(&host, &w, 200), Action::Pause);
    assert!(grpc_calls(&host.take_journal()).is_empty());
}

/// A probe that takes a fleet slot (etcd says yes), goes upstream and is answered `status`.
fn probe_with_a_slot(host: &FakeHost, w: &Rc<RefCell<Worker>>, status: u32) {
    host.new_stream();
    host.set_property("xds.cluster_name", b"school");
    host.set_header(
        crate::filter::host::Map::ResponseHeaders,
        ":status",
        &status.to_string(),
    );
    let mut probe = Stream::new(Some(w.clone()));
    assert_eq!(
        probe.request_headers(host, true),
        Action::Pause,
        "claims a slot"
    );
    *host.grpc_answer.borrow_mut() = TxnResponse {
        succeeded: true,
        ..TxnResponse::default()
    }
    .encode_to_vec();
    probe.grpc_answered(host, last_token(host), 0, 10);
    probe.response_headers(host, false);
    probe.response_body(host, 10, true);
    probe.log(host);
}

fn local_record(host: &FakeHost) -> crate::core::state::Record {
    match crate::core::store::load(
        &crate::filter::shared::SharedData(host),
        &crate::filter::shared::record_key("school"),
    ) {
        Ok(l) => l.record,
        Err(e) => panic!("no local record: {e:?}"),
    }
}

fn answer_last_txn(host: &FakeHost, w: &Rc<RefCell<Worker>>, succeeded: bool, revision: i64) {
    *host.grpc_answer.borrow_mut() = TxnResponse {
        header: Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        }),
        succeeded,
        responses: Vec::new(),
    }
    .encode_to_vec();
    let txn = last_token(host);
    w.borrow_mut()
        .grpc_answered(host, txn, 0, 100, host.clock_ms.get());
}

/// The operations of the last `Txn` sent, on its success branch.
fn last_txn_success_ops(host: &FakeHost) -> Vec<Request> {
    let sent = host.grpc_sent.borrow().last().map(|(_, m)| m.clone());
    let txn = TxnRequest::decode(sent.unwrap_or_default().as_slice()).expect("a Txn");
    txn.success.into_iter().filter_map(|o| o.request).collect()
}

/// A half-open record of episode `generation` with `successes` stored.
fn half_open_by(member: &str, generation: u32, successes: u32, at_ms: u64) -> FleetRecord {
    FleetRecord {
        state: State::HalfOpen,
        cause: FleetCause::OpenElapsed,
        open_for_ms: 0,
        probe_successes: successes,
        ..open_by(member, generation, at_ms)
    }
}

/// A fleet worker linked to etcd, which has read it, the school breaker's decision too.
fn connected_worker(host: &FakeHost) -> Rc<RefCell<Worker>> {
    let w = worker(host, FLEET);
    SharedLink::update(host, |c| c.link = LinkState::Connected);
    note_read(host);
    note_read_breaker(host, "school");
    w
}

/// The school breaker's `record`, read from etcd at `revision`.
fn stored(host: &FakeHost, w: &Rc<RefCell<Worker>>, record: &FleetRecord, revision: i64) {
    let key = keys::decision("/p", "school");
    with_fleet(w, |fleet, breakers| {
        let now_ms = host.clock_ms.get();
        fleet.stored(
            host,
            breakers,
            key.as_bytes(),
            &record.encode(),
            revision,
            now_ms,
        );
    });
}

/// Runs `f` on the worker's fleet and breakers, as the watch's callbacks do.
fn with_fleet(w: &Rc<RefCell<Worker>>, f: impl FnOnce(&mut super::Fleet, &mut Breakers)) {
    let mut w = w.borrow_mut();
    let w = &mut *w;
    match &mut w.fleet {
        Some(fleet) => f(fleet, &mut w.breakers),
        None => panic!("a fleet worker"),
    }
}

fn wake(host: &FakeHost, w: &Rc<RefCell<Worker>>) {
    let token = w.borrow().queue().expect("a queue");
    w.borrow_mut().notified(host, token, host.clock_ms.get());
}

#[test]
fn a_probe_that_succeeds_below_the_threshold_frees_its_slot_and_adds_to_the_fleets_count() {
    let host = FakeHost::at(1_000_000);
    let w = half_open_fleet_with(
        &host,
        r#", "half_open_max_requests": 1, "success_threshold": 2"#,
    );
    probe_with_a_slot(&host, &w, 200);
    assert_eq!(
        load_shadow(&host, "school").progress,
        Some(Progress {
            generation: 3,
            successes: 1,
            released: vec![0]
        })
    );
    host.take_journal();
    wake(&host, &w);
    assert_eq!(grpc_calls(&host.take_journal()), ["Txn"]);
    match last_txn_success_ops(&host).as_slice() {
        [Request::Put(put), Request::DeleteRange(del)] => {
            let r = FleetRecord::decode(&put.value).expect("a record");
            assert_eq!(
                (r.state, r.generation, r.probe_successes, r.member.as_str()),
                (State::HalfOpen, 3, 1, "gateway-2"),
                "the stored half-open record with one more success"
            );
            assert_eq!(del.key, keys::slot("/p", "school", 3, 0).into_bytes());
            assert!(del.range_end.is_empty(), "that one slot only");
        }
        other => panic!("expected a put and a delete, got {other:?}"),
    }
    answer_last_txn(&host, &w, true, 21);
    let shadow = load_shadow(&host, "school");
    assert_eq!(shadow.progress, None, "stored");
    assert_eq!(
        shadow.seen.map(|(r, rev)| (r.probe_successes, rev)),
        Some((1, 21))
    );
    assert_eq!(
        local_record(&host).state,
        State::HalfOpen,
        "one success of two"
    );
    // The slot's deletion comes back on the watch; the next probe completes the count.
    let slot = keys::slot("/p", "school", 3, 0);
    with_fleet(&w, |fleet, breakers| {
        fleet.deleted(&host, breakers, slot.as_bytes(), 0)
    });
    probe_with_a_slot(&host, &w, 200);
    assert_eq!(local_record(&host).state, State::Closed);
    let claim = load_shadow(&host, "school")
        .claim
        .expect("the close is claimed");
    assert_eq!((claim.state, claim.generation), (State::Closed, 4));
}

#[test]
fn a_success_here_and_one_stored_elsewhere_close_the_fleets_breaker() {
    let host = FakeHost::at(1_000_000);
    let w = half_open_fleet_with(
        &host,
        r#", "half_open_max_requests": 2, "success_threshold": 2"#,
    );
    probe_with_a_slot(&host, &w, 200);
    // Before this Envoy's success is stored, another Envoy's is: the count here follows
    // etcd's (one), and this Envoy's own success is still owed.
    let other = half_open_by("gateway-3", 3, 1, host.clock_ms.get());
    stored(&host, &w, &other, 22);
    assert_eq!(
        (
            local_record(&host).state,
            local_record(&host).probe_successes
        ),
        (State::HalfOpen, 1)
    );
    host.take_journal();
    wake(&host, &w);
    assert_eq!(
        local_record(&host).state,
        State::Closed,
        "one there and one here make two"
    );
    let claim = load_shadow(&host, "school")
        .claim
        .expect("the close is claimed");
    assert_eq!((claim.state, claim.generation), (State::Closed, 4));
    assert_eq!(load_shadow(&host, "school").progress, None);
}

#[test]
fn a_lost_progress_write_is_sent_again_on_the_fresh_count() {
    let host = FakeHost::at(1_000_000);
    let w = half_open_fleet_with(
        &host,
        r#", "half_open_max_requests": 3, "success_threshold": 3"#,
    );
    probe_with_a_slot(&host, &w, 200);
    wake(&host, &w);
    // Another Envoy stored its success first (revision 22, count 1).
    let other = half_open_by("gateway-3", 3, 1, host.clock_ms.get());
    *host.grpc_answer.borrow_mut() = TxnResponse {
        succeeded: false,
        responses: vec![range_op(keys::decision("/p", "school"), 22, other.encode())],
        ..TxnResponse::default()
    }
    .encode_to_vec();
    let txn = last_token(&host);
    host.take_journal();
    w.borrow_mut()
        .grpc_answered(&host, txn, 0, 100, host.clock_ms.get());
    assert_eq!(
        grpc_calls(&host.take_journal()),
        ["Txn"],
        "sent again at once"
    );
    let put = last_txn_success_ops(&host)
        .into_iter()
        .find_map(|o| match o {
            Request::Put(p) => Some(p),
            _ => None,
        });
    let count = put
        .and_then(|p| FleetRecord::decode(&p.value).ok())
        .map(|r| r.probe_successes);
    assert_eq!(count, Some(2), "the other Envoy's success and this one");
}

#[test]
fn a_move_to_half_open_over_another_members_trip_waits_for_that_members_own() {
    let host = FakeHost::at(1_000_000);
    let w = connected_worker(&host);
    let tripped = open_by("gateway-2", 4, host.clock_ms.get());
    stored(&host, &w, &tripped, 11);
    assert_eq!(request(&host, &w, 200), Action::Pause, "open, adopted");
    host.take_journal();
    host.advance(30_100);
    w.borrow_mut().tick(&host, host.clock_ms.get());
    assert_eq!(
        local_record(&host).state,
        State::HalfOpen,
        "the timer moved it"
    );
    assert!(load_shadow(&host, "school").claim.is_some());
    let txns = |host: &FakeHost| {
        grpc_calls(&host.take_journal())
            .iter()
            .filter(|m| *m == "Txn")
            .count()
    };
    assert_eq!(txns(&host), 0, "gateway-2's timer goes first");
    // It does: the watch brings its half-open record, which settles this Envoy's claim.
    let moved = half_open_by("gateway-2", 5, 0, host.clock_ms.get());
    stored(&host, &w, &moved, 12);
    assert_eq!(load_shadow(&host, "school").claim, None);
    for _ in 0..6 {
        host.advance(100);
        w.borrow_mut().tick(&host, host.clock_ms.get());
    }
    assert_eq!(
        txns(&host),
        0,
        "one write for the fleet's move, not one per Envoy"
    );
}

#[test]
fn a_move_to_half_open_is_published_later_if_the_tripping_member_stays_silent() {
    let host = FakeHost::at(1_000_000);
    let w = connected_worker(&host);
    let tripped = open_by("gateway-2", 4, host.clock_ms.get());
    stored(&host, &w, &tripped, 11);
    host.advance(30_100);
    w.borrow_mut().tick(&host, host.clock_ms.get());
    host.take_journal();
    let mut waited = 0;
    while waited < 1_000 && !grpc_calls(&host.take_journal()).contains(&"Txn".to_string()) {
        host.advance(100);
        waited += 100;
        w.borrow_mut().tick(&host, host.clock_ms.get());
    }
    assert!(
        (200..=500).contains(&waited),
        "published {waited} ms after the move"
    );
}
