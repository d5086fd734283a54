//! Votes in the shell against the in-memory host (`fleet.trip_quorum` 2): a member's own
//! trip opens it alone and puts its vote; a second member's vote makes the quorum and the
//! member whose vote completed it publishes the fleet's open; bad votes change nothing.

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message;

use crate::core::config::PluginConfig;
use crate::core::fleet::etcd::{PutResponse, ResponseHeader, TxnRequest};
use crate::core::fleet::keys;
use crate::core::fleet::record::{FleetCause, FleetRecord};
use crate::core::fleet::vote::Vote;
use crate::core::state::{State, TripReason};

use super::super::Worker;
use super::shadows::{load_shadow, note_read_breaker};
use super::shared_link::{note_read, LinkState, SharedLink};
use super::votes::load_tally;
use crate::filter::host::fake::{Call, FakeHost};

const QUORUM: &str = r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "30s"}},
    "fleet": {"etcd_cluster": "etcd", "prefix": "/p", "member": "gateway-1"}}"#;

fn connected_worker(host: &FakeHost) -> Rc<RefCell<Worker>> {
    let config = match PluginConfig::parse(QUORUM.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("test config refused: {e}"),
    };
    let w = Rc::new(RefCell::new(Worker::new(host, config)));
    SharedLink::update(host, |c| {
        c.link = LinkState::Connected;
        c.lease = 77;
    });
    note_read(host);
    note_read_breaker(host, "school");
    host.take_journal();
    w
}

/// A key and value as the watch brings them.
fn seen(host: &FakeHost, w: &Rc<RefCell<Worker>>, key: &str, value: &[u8], rev: i64) {
    let mut w = w.borrow_mut();
    let w = &mut *w;
    if let Some(fleet) = &mut w.fleet {
        fleet.stored(host, &mut w.breakers, key.as_bytes(), value, rev, 0);
    }
}

fn vote(at: u64) -> Vec<u8> {
    Vote {
        reason: TripReason::ConsecutiveFailures,
        voted_at_ms: at,
    }
    .encode()
}

fn methods(host: &FakeHost) -> Vec<String> {
    host.take_journal()
        .into_iter()
        .filter_map(|c| match c {
            Call::Grpc(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn wake(host: &FakeHost, w: &Rc<RefCell<Worker>>) {
    let token = w.borrow().queue().expect("a queue");
    w.borrow_mut().notified(host, token, host.clock_ms.get());
}

fn answer_last(host: &FakeHost, w: &Rc<RefCell<Worker>>, body: Vec<u8>) {
    *host.grpc_answer.borrow_mut() = body;
    let token = host.grpc_sent.borrow().last().map(|(t, _)| *t).unwrap_or(0);
    w.borrow_mut()
        .grpc_answered(host, token, 0, 100, host.clock_ms.get());
}

fn put_answer(revision: i64) -> Vec<u8> {
    PutResponse {
        header: Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        }),
    }
    .encode_to_vec()
}

fn trip(host: &FakeHost, w: &Rc<RefCell<Worker>>) {
    for _ in 0..3 {
        crate::filter::tests::request(host, w, "school", 500);
    }
}

#[test]
fn a_member_alone_opens_only_itself_and_puts_its_vote_under_its_lease() {
    let host = FakeHost::at(1_000);
    let w = connected_worker(&host);
    seen(&host, &w, "/p/m/gateway-1", b"{}", 2);
    seen(&host, &w, "/p/m/gateway-2", b"{}", 3);
    trip(&host, &w);
    let shadow = load_shadow(&host, "school");
    assert_eq!(shadow.claim, None, "the fleet is not told to open");
    assert!(shadow.vote.cast.is_some(), "{shadow:?}");
    host.take_journal();
    wake(&host, &w);
    assert_eq!(methods(&host), ["Put"], "one put, no Txn");
    let sent = host
        .grpc_sent
        .borrow()
        .last()
        .cloned()
        .unwrap_or_default()
        .1;
    let put = crate::core::fleet::etcd::PutRequest::decode(sent.as_slice()).unwrap();
    assert_eq!(
        put.key,
        keys::vote("/p", "school", "gateway-1").into_bytes()
    );
    assert_eq!(put.lease, 77);
    assert!(Vote::decode(&put.value).is_some());
    answer_last(&host, &w, put_answer(9));
    assert_eq!(load_tally(&host, "school").voters(), ["gateway-1"]);
    assert_eq!(
        load_shadow(&host, "school").vote.stored.map(|s| s.1),
        Some(77)
    );
    assert!(methods(&host).is_empty(), "one vote of two: nothing more");
    let view = w
        .borrow_mut()
        .control(
            &host,
            &crate::core::control::Command::Show("school".into()),
            b"",
            1_000,
        )
        .map(|a| a.2)
        .unwrap_or_default();
    assert!(
        view.contains("open here by its own failures, 1 of 2 votes"),
        "{view}"
    );
}

#[test]
fn the_member_whose_vote_completes_the_quorum_publishes_the_fleets_open() {
    let host = FakeHost::at(1_000);
    let w = connected_worker(&host);
    seen(&host, &w, "/p/m/gateway-1", b"{}", 2);
    seen(&host, &w, "/p/m/gateway-2", b"{}", 3);
    seen(&host, &w, "/p/v/school/gateway-2", &vote(900), 4);
    assert_eq!(load_tally(&host, "school").voters(), ["gateway-2"]);
    assert!(
        methods(&host).is_empty(),
        "a member that saw nothing says nothing"
    );
    trip(&host, &w);
    wake(&host, &w);
    assert_eq!(methods(&host), ["Put"]);
    answer_last(&host, &w, put_answer(5));
    // gateway-1's vote is the second in etcd's order: it claims the fleet's open at once.
    let claim = load_shadow(&host, "school")
        .claim
        .expect("the fleet's open claimed");
    assert_eq!(
        (claim.state, claim.cause),
        (State::Open, FleetCause::QuorumReached)
    );
    wake(&host, &w);
    assert_eq!(methods(&host), ["Txn"]);
    let sent = host
        .grpc_sent
        .borrow()
        .last()
        .cloned()
        .unwrap_or_default()
        .1;
    let txn = TxnRequest::decode(sent.as_slice()).unwrap();
    let stored = txn.success.iter().find_map(|op| match &op.request {
        Some(crate::core::fleet::etcd::Request::Put(p)) => FleetRecord::decode(&p.value).ok(),
        _ => None,
    });
    assert_eq!(stored.map(|r| r.cause), Some(FleetCause::QuorumReached));
}

#[test]
fn bad_votes_are_ignored_and_counted() {
    let host = FakeHost::at(1_000);
    let w = connected_worker(&host);
    seen(&host, &w, "/p/m/gateway-2", b"{}", 2);
    seen(&host, &w, "/p/v/school/stranger", &vote(900), 3);
    seen(&host, &w, "/p/v/school/gateway-2", b"not a vote", 4);
    seen(&host, &w, "/p/v/school/gateway-2", &[0xF5; 4096], 5);
    seen(&host, &w, "/p/v/nosuch/gateway-2", &vote(900), 6);
    assert!(load_tally(&host, "school").is_empty());
    assert!(load_tally(&host, "nosuch").is_empty());
    w.borrow_mut().tick(&host, 1_100);
    assert_eq!(host.counter("circuit_breaker_fleet_ignored_votes_total"), 4);
}

#[test]
fn a_member_open_on_its_own_probes_on_its_own_and_withdraws_its_vote_when_it_recovers() {
    let host = FakeHost::at(1_000);
    let w = connected_worker(&host);
    seen(&host, &w, "/p/m/gateway-2", b"{}", 2);
    trip(&host, &w);
    wake(&host, &w);
    answer_last(&host, &w, put_answer(5));
    host.advance(31_000);
    w.borrow_mut().tick(&host, host.clock_ms.get());
    host.take_journal();
    // Half-open on its own: the probe needs no fleet slot, and succeeds.
    crate::filter::tests::request(&host, &w, "school", 200);
    let calls = methods(&host);
    assert!(
        !calls.contains(&"Txn".to_string()),
        "no slot claimed: {calls:?}"
    );
    assert_eq!(load_shadow(&host, "school").vote.cast, None, "recovered");
    assert_eq!(
        load_shadow(&host, "school").claim,
        None,
        "nothing to publish"
    );
    wake(&host, &w);
    assert_eq!(methods(&host), ["DeleteRange"]);
    answer_last(&host, &w, Vec::new());
    assert_eq!(load_shadow(&host, "school").vote.stored, None);
    assert!(load_tally(&host, "school").is_empty());
}
