//! The breakers' own probes in the shell, against an in-memory host: one probe per
//! breaker whichever worker's timer finds it due, the answer taken by the worker that
//! sent it, users refused meanwhile, and a cluster the host does not know.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::types::Action;

use super::host::fake::{Call, FakeHost};
use super::tests::{request, worker};
use super::worker::Worker;

const CONFIG: &str = r#"{"clusters": {"school": {"failure_threshold": 1, "open_duration": "1s", "backoff_multiplier": 1,
    "success_threshold": 2,
    "probe": {"path": "/health", "interval": "1s", "timeout": "500ms"}}}}"#;

fn tick_all(host: &FakeHost, workers: &[&Rc<RefCell<Worker>>]) {
    for w in workers {
        w.borrow_mut().tick(host, host.clock_ms.get());
    }
}

/// The probes sent since the journal was last taken.
fn probes_sent(host: &FakeHost) -> usize {
    host.take_journal()
        .iter()
        .filter(|c| matches!(c, Call::HttpCall(cluster) if cluster == "school"))
        .count()
}

fn state(host: &FakeHost, w: &Rc<RefCell<Worker>>) -> String {
    let command = crate::core::control::Command::Show("school".into());
    let answer = w
        .borrow_mut()
        .control(host, &command, b"", host.clock_ms.get());
    let body = answer.map(|(_, _, body)| body).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn one_worker_probes_and_the_others_leave_it_alone() {
    let host = FakeHost::at(10_000);
    let (a, b) = (worker(&host, CONFIG), worker(&host, CONFIG));
    request(&host, &a, "school", 503);
    host.advance(1_000);
    host.take_journal();
    tick_all(&host, &[&a, &b, &a, &b]);
    assert_eq!(probes_sent(&host), 1, "one probe, whoever ticks");
    // The first worker's call got token 1; users are refused meanwhile.
    assert_eq!(request(&host, &b, "school", 200), Action::Pause);
    host.advance(20);
    a.borrow_mut().call_answered(&host, 1, Some(200));
    assert_eq!(state(&host, &b), "half_open", "one pass of two");
    host.advance(500);
    tick_all(&host, &[&a, &b]);
    assert_eq!(
        probes_sent(&host),
        0,
        "the next goes an interval after the first"
    );
    host.advance(500);
    tick_all(&host, &[&b, &a]);
    assert_eq!(probes_sent(&host), 1);
    host.advance(20);
    b.borrow_mut().call_answered(&host, 2, Some(204));
    assert_eq!(state(&host, &a), "closed");
    assert_eq!(request(&host, &a, "school", 200), Action::Continue);
    assert_eq!(
        host.counter("circuit_breaker_probes_total.result=success.cluster=school"),
        2
    );
}

#[test]
fn an_answer_for_another_worker_or_a_webhook_is_not_taken_as_a_probe() {
    let host = FakeHost::at(10_000);
    let (a, b) = (worker(&host, CONFIG), worker(&host, CONFIG));
    request(&host, &a, "school", 503);
    host.advance(1_000);
    tick_all(&host, &[&a]);
    b.borrow_mut().call_answered(&host, 1, Some(200));
    assert_eq!(state(&host, &a), "half_open");
    assert_eq!(
        host.counter("circuit_breaker_probes_total.result=success.cluster=school"),
        0
    );
}

#[test]
fn a_failed_probe_reopens_and_a_lost_one_is_given_up() {
    let host = FakeHost::at(10_000);
    let (a, b) = (worker(&host, CONFIG), worker(&host, CONFIG));
    request(&host, &a, "school", 503);
    host.advance(1_000);
    tick_all(&host, &[&a, &b]);
    host.advance(600);
    a.borrow_mut().call_answered(&host, 1, None);
    assert_eq!(state(&host, &b), "open");
    assert_eq!(
        host.counter("circuit_breaker_probes_total.result=timeout.cluster=school"),
        1
    );
    // Its worker dies with the next probe out: the others give it up and reopen.
    host.advance(1_000);
    tick_all(&host, &[&a]);
    drop(a);
    host.advance(1_600);
    tick_all(&host, &[&b]);
    assert_eq!(state(&host, &b), "open");
}

#[test]
fn a_cluster_the_host_does_not_know_is_tried_every_interval_while_users_wait() {
    let host = FakeHost::at(10_000);
    host.unknown_clusters.borrow_mut().push("school".into());
    let w = worker(&host, CONFIG);
    request(&host, &w, "school", 503);
    for _ in 0..3 {
        host.advance(1_000);
        tick_all(&host, &[&w]);
        assert_eq!(request(&host, &w, "school", 200), Action::Pause);
    }
    assert_eq!(
        host.counter("circuit_breaker_probes_total.result=error.cluster=school"),
        3
    );
    assert_eq!(state(&host, &w), "half_open");
}
