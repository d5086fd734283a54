//! The shell against an in-memory host: which host calls each kind of request costs, and
//! that the callbacks drive the core as the real Envoy tests expect.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::types::Action;

use crate::core::config::PluginConfig;

use super::host::fake::{Call, FakeHost};
use super::host::Map;
use super::http::Stream;
use super::shared::record_key;
use super::worker::{Worker, IDLE_TICK_MS, TICK_MS};

const CONFIG: &str =
    r#"{"clusters": {"school": {"failure_threshold": 3, "open_duration": "30s"}}}"#;

/// A worker with the plugin JSON `json`, for every shell test.
pub(in crate::filter) fn worker(host: &FakeHost, json: &str) -> Rc<RefCell<Worker>> {
    let config = match PluginConfig::parse(json.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("test config refused: {e}"),
    };
    Rc::new(RefCell::new(Worker::new(host, config)))
}

/// One request to `cluster` answered with `status`, through every callback Envoy makes.
pub(in crate::filter) fn request(
    host: &FakeHost,
    worker: &Rc<RefCell<Worker>>,
    cluster: &str,
    status: u32,
) -> Action {
    host.new_stream();
    host.set_property("xds.cluster_name", cluster.as_bytes());
    host.set_header(Map::ResponseHeaders, ":status", &status.to_string());
    let mut stream = Stream::new(Some(worker.clone()));
    let action = stream.request_headers(host, true);
    if action == Action::Continue {
        stream.response_headers(host, false);
        stream.response_body(host, 10, true);
    }
    stream.log(host);
    action
}

/// What the host does when a worker enqueues a notice: wakes every worker whose queue
/// holds one.
fn deliver_notices(host: &FakeHost, workers: &[&Rc<RefCell<Worker>>]) {
    for w in workers {
        let token = w.borrow().queue();
        if let Some(token) = token {
            w.borrow_mut().notified(host, token, host.clock_ms.get());
        }
    }
}

#[test]
fn a_closed_succeeding_request_makes_two_host_calls() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    request(&host, &w, "school", 200);
    host.take_journal();
    assert_eq!(request(&host, &w, "school", 200), Action::Continue);
    assert_eq!(
        host.take_journal(),
        [
            Call::Property("xds.cluster_name".into()),
            Call::Header(Map::ResponseHeaders, ":status".into()),
        ],
        "the closed, succeeding path: which cluster and the status, no shared data"
    );
}

#[test]
fn a_refusal_reads_the_clock_and_answers_locally() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    for _ in 0..3 {
        request(&host, &w, "school", 500);
    }
    host.take_journal();
    assert_eq!(request(&host, &w, "school", 200), Action::Pause);
    assert_eq!(
        host.take_journal(),
        [
            Call::Property("xds.cluster_name".into()),
            Call::Clock,
            Call::Header(Map::RequestHeaders, "content-type".into()),
            Call::LocalReply(503),
        ]
    );
    let replies = host.replies.borrow();
    let reply = replies
        .last()
        .map(|r| String::from_utf8_lossy(&r.body).to_string());
    assert!(
        reply
            .as_deref()
            .unwrap_or("")
            .contains("\"retry_after_seconds\":30"),
        "{reply:?}"
    );
}

#[test]
fn a_trip_on_one_worker_is_refused_by_another() {
    let host = FakeHost::at(1_000);
    let first = worker(&host, CONFIG);
    let second = worker(&host, CONFIG);
    request(&host, &second, "school", 200);
    for _ in 0..3 {
        assert_eq!(request(&host, &first, "school", 503), Action::Continue);
    }
    deliver_notices(&host, &[&first, &second]);
    host.take_journal();
    assert_eq!(request(&host, &second, "school", 200), Action::Pause);
    assert!(
        !host
            .take_journal()
            .iter()
            .any(|c| matches!(c, Call::SharedRead(_))),
        "refused from the refreshed copy"
    );
}

#[test]
fn without_a_notice_the_timer_refreshes_the_copy() {
    let host = FakeHost::at(1_000);
    let first = worker(&host, CONFIG);
    let second = worker(&host, CONFIG);
    request(&host, &second, "school", 200);
    for _ in 0..3 {
        request(&host, &first, "school", 503);
    }
    assert_eq!(
        request(&host, &second, "school", 200),
        Action::Continue,
        "the copy lags until it is told"
    );
    host.advance(100);
    second.borrow_mut().tick(&host, 1_100);
    assert_eq!(request(&host, &second, "school", 200), Action::Pause);
}

#[test]
fn an_open_time_shorter_than_the_timer_slack_reads_the_shared_record() {
    let host = FakeHost::at(1_000);
    let config = r#"{"clusters": {"school": {"open_duration": "200ms"}}}"#;
    let w = worker(&host, config);
    request(&host, &w, "school", 200);
    host.take_journal();
    request(&host, &w, "school", 200);
    assert!(host
        .take_journal()
        .contains(&Call::SharedRead(record_key("school"))));
}

#[test]
fn failures_are_written_at_once_and_clean_successes_on_the_timer() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    request(&host, &w, "school", 200);
    host.take_journal();
    request(&host, &w, "school", 200);
    let success = host.take_journal();
    assert!(
        !success.iter().any(|c| matches!(c, Call::SharedWrite(_))),
        "{success:?}"
    );
    request(&host, &w, "school", 500);
    let failure = host.take_journal();
    assert!(
        failure.contains(&Call::SharedWrite(record_key("school"))),
        "{failure:?}"
    );
    w.borrow_mut().tick(&host, 1_100);
    let stored = host.shared.borrow().get(&record_key("school")).cloned();
    let record = stored.and_then(|(b, _)| crate::core::codec::decode(&b).ok());
    let calls = record.map(|r| r.counts(&Default::default(), 1_100).calls);
    assert_eq!(calls, Some(3), "two batched successes and a failure");
}

#[test]
fn requests_without_a_cluster_pass_untouched() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    host.new_stream();
    host.take_journal();
    let mut stream = Stream::new(Some(w));
    assert_eq!(stream.request_headers(&host, true), Action::Continue);
    stream.log(&host);
    assert_eq!(
        host.take_journal(),
        [
            Call::Property("xds.cluster_name".into()),
            Call::Property("xds.route_name".into()),
        ]
    );
}

#[test]
fn the_timer_publishes_counts_and_state() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    request(&host, &w, "school", 200);
    request(&host, &w, "school", 500);
    w.borrow_mut().tick(&host, 1_100);
    let success = "circuit_breaker_requests_total.outcome=success.cluster=school";
    let failure = "circuit_breaker_requests_total.outcome=failure.cluster=school";
    assert_eq!((host.counter(success), host.counter(failure)), (1, 1));
}

#[test]
fn an_operators_mode_change_is_told_to_every_worker() {
    use crate::core::control::Command;
    let host = FakeHost::at(1_000);
    let first = worker(&host, CONFIG);
    let second = worker(&host, CONFIG);
    request(&host, &second, "school", 200);
    for _ in 0..3 {
        request(&host, &first, "school", 500);
    }
    deliver_notices(&host, &[&first, &second]);
    assert_eq!(request(&host, &second, "school", 200), Action::Pause);
    // `disabled` moves no state, but changes what every worker must do.
    let command = Command::SetMode("school".into());
    let changed = first
        .borrow_mut()
        .control(&host, &command, br#"{"mode": "disabled"}"#, 1_000);
    assert!(changed.is_ok());
    deliver_notices(&host, &[&first, &second]);
    assert_eq!(request(&host, &second, "school", 200), Action::Continue);
}

#[test]
fn a_success_on_another_worker_breaks_a_failure_streak() {
    let host = FakeHost::at(1_000);
    let first = worker(&host, CONFIG);
    let second = worker(&host, CONFIG);
    request(&host, &second, "school", 200);
    request(&host, &first, "school", 500);
    deliver_notices(&host, &[&first, &second]);
    // The second worker's copy now shows the streak, so its success is written at once.
    request(&host, &second, "school", 200);
    request(&host, &first, "school", 500);
    request(&host, &first, "school", 500);
    assert_eq!(
        request(&host, &first, "school", 200),
        Action::Continue,
        "two failures in a row, not three"
    );
}

#[test]
fn a_streak_restarted_by_a_worker_with_a_stale_copy_still_reaches_the_others() {
    let host = FakeHost::at(1_000);
    let first = worker(&host, CONFIG);
    let second = worker(&host, CONFIG);
    request(&host, &first, "school", 200);
    request(&host, &second, "school", 200);
    request(&host, &first, "school", 500);
    deliver_notices(&host, &[&first, &second]);
    request(&host, &second, "school", 200);
    // The first worker's copy still shows its own streak, which the success above ended:
    // the failure below starts a new one all the same, and the second worker must hear.
    request(&host, &first, "school", 500);
    deliver_notices(&host, &[&first, &second]);
    request(&host, &second, "school", 200);
    request(&host, &first, "school", 500);
    request(&host, &first, "school", 500);
    assert_eq!(
        request(&host, &first, "school", 200),
        Action::Continue,
        "two failures in a row since the last success, not three"
    );
}

/// Ticks `w` until its timer has nothing left to do (batched successes, stats and the
/// timeline's counts out, the last within a second).
fn settle(host: &FakeHost, w: &Rc<RefCell<Worker>>) {
    for _ in 0..12 {
        host.advance(100);
        w.borrow_mut().tick(host, host.clock_ms.get());
    }
}

#[test]
fn an_idle_worker_slows_its_timer_and_work_speeds_it_up() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    request(&host, &w, "school", 200);
    host.take_journal();
    settle(&host, &w);
    assert!(host.take_journal().contains(&Call::Tick(IDLE_TICK_MS)));
    request(&host, &w, "school", 200);
    assert!(host.take_journal().contains(&Call::Tick(TICK_MS)));
}

#[test]
fn the_timer_leaves_an_idle_breaker_alone() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    request(&host, &w, "school", 200);
    settle(&host, &w);
    host.take_journal();
    host.advance(100);
    w.borrow_mut().tick(&host, host.clock_ms.get());
    let journal = host.take_journal();
    assert!(
        !journal
            .iter()
            .any(|c| matches!(c, Call::SharedRead(_) | Call::SharedWrite(_))),
        "{journal:?}"
    );
}

#[test]
fn a_trip_an_idle_worker_was_not_told_of_is_still_refused() {
    let host = FakeHost::at(1_000);
    let first = worker(&host, CONFIG);
    let second = worker(&host, CONFIG);
    request(&host, &second, "school", 200);
    settle(&host, &second);
    for _ in 0..3 {
        request(&host, &first, "school", 503);
    }
    // No notice reaches the second worker, and its timer no longer reads the record; its
    // copy ages out of trust instead.
    host.advance(1_000);
    assert_eq!(request(&host, &second, "school", 200), Action::Pause);
}

#[test]
fn a_busy_breaker_adds_to_its_timeline_once_a_second_and_loses_no_count() {
    let host = FakeHost::at(1_000);
    let w = worker(&host, CONFIG);
    host.take_journal();
    for _ in 0..25 {
        request(&host, &w, "school", 200);
        request(&host, &w, "school", 200);
        request(&host, &w, "school", 500);
        host.advance(100);
        w.borrow_mut().tick(&host, host.clock_ms.get());
    }
    settle(&host, &w);
    let key = crate::filter::shared::timeline_key("school");
    let writes = host
        .take_journal()
        .iter()
        .filter(|c| **c == Call::SharedWrite(key.clone()))
        .count();
    // 3.7 s of ticks: one write a second, not one a tick.
    assert!((3..=4).contains(&writes), "{writes} writes");
    let Ok(Some((bytes, _))) = crate::filter::host::Host::shared_data(&host, &key) else {
        panic!("no timeline stored");
    };
    let timeline = crate::core::timeline::Timeline::decode(&bytes).unwrap();
    let buckets = timeline.view(host.clock_ms.get());
    let sum = |field: &str| {
        buckets
            .iter()
            .map(|b| b[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((sum("successes"), sum("failures")), (50, 25));
}
