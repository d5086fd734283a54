//! The fleet's shell against the in-memory host: what it sends to etcd and what it does
//! with the answers, one callback at a time. The real etcd and Envoys are in
//! tests/fleet_in_envoy.rs; these pin down the steps between.

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::types::Action;

use crate::core::config::PluginConfig;
use crate::core::fleet::etcd::{KeyValue, RangeResponse, ResponseHeader, TxnResponse};
use crate::core::fleet::keys;
use crate::core::fleet::record::{FleetCause, FleetRecord};
use crate::core::state::{Counts, State, TripReason};

use super::super::host::fake::{Call, FakeHost};
use super::super::host::Map;
use super::super::http::Stream;
use super::super::worker::Worker;
use super::conn::{load_shadow, Conn, Link};

const LOCAL: &str = r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "30s"}}}"#;
const FLEET: &str = r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "30s"}},
    "fleet": {"etcd_cluster": "etcd", "prefix": "/p", "member": "gateway-1"}}"#;

fn worker(host: &FakeHost, json: &str) -> Rc<RefCell<Worker>> {
    let config = match PluginConfig::parse(json.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("test config refused: {e}"),
    };
    Rc::new(RefCell::new(Worker::new(host, config)))
}

fn request(host: &FakeHost, w: &Rc<RefCell<Worker>>, status: u32) -> Action {
    host.new_stream();
    host.set_property("xds.cluster_name", b"school");
    host.set_header(Map::ResponseHeaders, ":status", &status.to_string());
    let mut stream = Stream::new(Some(w.clone()));
    let action = stream.request_headers(host, true);
    if action == Action::Continue {
        stream.response_headers(host, false);
        stream.response_body(host, 10, true);
    }
    stream.log(host);
    action
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
    Conn::update(&host, |c| c.link = Link::Connected);
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
        .fleet_answered(&host, txn, 0, 100, host.clock_ms.get());
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

#[test]
fn a_record_from_another_member_is_adopted_and_refuses_requests() {
    let host = FakeHost::at(1_000_000);
    let w = worker(&host, FLEET);
    host.take_journal();
    w.borrow_mut().fleet_start(&host);
    assert_eq!(grpc_calls(&host.take_journal()), ["Range"]);
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
        .fleet_answered(&host, range, 0, 100, host.clock_ms.get());
    assert_eq!(request(&host, &w, 200), Action::Pause, "refused as open");
    let shadow = load_shadow(&host, "school");
    assert_eq!(shadow.seen, Some((record, 11)));
    assert_eq!(shadow.claim, None, "an adoption is not a claim");
}

#[test]
fn damaged_bytes_from_etcd_change_nothing() {
    let host = FakeHost::at(1_000_000);
    let w = worker(&host, FLEET);
    w.borrow_mut().fleet_start(&host);
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
        .fleet_answered(&host, range, 0, 100, host.clock_ms.get());
    assert_eq!(request(&host, &w, 200), Action::Continue);
    assert_eq!(load_shadow(&host, "school").seen, None);
}
