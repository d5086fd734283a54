//! The shell and the hosts behind a cluster, against an in-memory host: which requests
//! read `upstream.address`, and what a failure confined to one host of three does.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::types::Action;

use crate::core::hosts::SAMPLE_EVERY;

use super::host::fake::{Call, FakeHost};
use super::host::Map;
use super::http::Stream;
use super::tests::worker;
use super::worker::Worker;

const ADDRESS: &str = "upstream.address";
const CONFIG: &str =
    r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "30s"}}}"#;
const CONFINED: &str = "circuit_breaker_confined_failures_total.cluster=school";

/// One request to `school` answered by `from` (`None`: Envoy had no host) with `status`.
fn request(host: &FakeHost, w: &Rc<RefCell<Worker>>, from: Option<&str>, status: u32) -> Action {
    host.new_stream();
    host.set_property("xds.cluster_name", b"school");
    if let Some(address) = from {
        host.set_property(ADDRESS, address.as_bytes());
    }
    host.set_header(Map::ResponseHeaders, ":status", &status.to_string());
    let mut stream = Stream::new(Some(w.clone()));
    let action = stream.request_headers(host, true);
    if action == Action::Continue {
        stream.response_headers(host, true);
    }
    stream.log(host);
    action
}

fn address_reads(journal: &[Call]) -> usize {
    journal
        .iter()
        .filter(|c| **c == Call::Property(ADDRESS.into()))
        .count()
}

#[test]
fn a_closed_success_reads_its_host_once_in_so_many() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    host.take_journal();
    let n = SAMPLE_EVERY as usize * 4;
    for _ in 0..n {
        request(&host, &w, Some("10.0.0.1:80"), 200);
    }
    assert_eq!(address_reads(&host.take_journal()), 4, "{n} successes");
}

#[test]
fn a_failure_reads_its_host() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    request(&host, &w, Some("10.0.0.1:80"), 200);
    host.take_journal();
    request(&host, &w, Some("10.0.0.1:80"), 503);
    assert_eq!(address_reads(&host.take_journal()), 1);
}

#[test]
fn failures_from_one_host_of_three_do_not_trip_and_say_so() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    // While a streak is open every success is written, and its host read.
    request(&host, &w, Some("10.0.0.1:80"), 503);
    for ok in ["10.0.0.2:80", "10.0.0.3:80"] {
        request(&host, &w, Some("10.0.0.1:80"), 503);
        request(&host, &w, Some(ok), 200);
    }
    for _ in 0..10 {
        assert_eq!(
            request(&host, &w, Some("10.0.0.1:80"), 503),
            Action::Continue,
            "not refused"
        );
    }
    w.borrow_mut().tick(&host, 1_100);
    assert_eq!(host.counter(CONFINED), 8, "failures 3 to 10 of the streak");
    let view = crate::core::codec::decode(
        &host
            .shared
            .borrow()
            .get(&super::shared::record_key("school"))
            .map(|(b, _)| b.clone())
            .unwrap_or_default(),
    );
    let record = view.unwrap_or_else(|e| panic!("{e}"));
    assert!(record.hosts.confined);
    assert_eq!(record.consecutive_failures, 10);
}

#[test]
fn failures_from_a_second_host_trip() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    request(&host, &w, Some("10.0.0.2:80"), 200);
    for _ in 0..3 {
        request(&host, &w, Some("10.0.0.1:80"), 503);
    }
    request(&host, &w, Some("10.0.0.2:80"), 503);
    assert_eq!(request(&host, &w, Some("10.0.0.1:80"), 200), Action::Pause);
}

#[test]
fn failures_with_no_host_trip_as_before() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    request(&host, &w, Some("10.0.0.2:80"), 200);
    request(&host, &w, Some("10.0.0.3:80"), 503);
    request(&host, &w, None, 503);
    request(&host, &w, None, 503);
    assert_eq!(request(&host, &w, Some("10.0.0.2:80"), 200), Action::Pause);
    w.borrow_mut().tick(&host, 1_100);
    assert_eq!(host.counter(CONFINED), 0);
}
