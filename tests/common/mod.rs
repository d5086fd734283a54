//! Test-only helpers on top of `school_system::stack`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};

pub use school_system::client::{self, Response};
pub use school_system::stack::*;

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(timeout, check).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Test shorthands on a service.
pub trait ServiceExt {
    fn set_faults(&self, json: Value);
    fn fail_everything(&self);
    fn heal(&self);
    fn hits(&self) -> u64;
}

impl ServiceExt for Service {
    fn set_faults(&self, json: Value) {
        self.faults(&json).unwrap();
    }
    fn fail_everything(&self) {
        self.set_faults(json!({"is_healthy": false}));
    }
    fn heal(&self) {
        self.set_faults(json!({"is_healthy": true, "failure_rate": 0.0}));
    }
    fn hits(&self) -> u64 {
        self.requests().unwrap()
    }
}

/// Test shorthands on Envoy.
pub trait EnvoyExt {
    fn call(&self, path: &str) -> Response;
    fn metrics(&self) -> String;
    fn wait_log(&self, needle: &str, n: usize) -> Vec<String>;
    fn wait_counter(&self, metric: &str, labels: &[(&str, &str)], expected: u64);
}

impl EnvoyExt for Envoy {
    fn call(&self, path: &str) -> Response {
        self.get(path).unwrap()
    }

    fn metrics(&self) -> String {
        self.prometheus().unwrap()
    }

    /// Waits until exactly `n` log lines contain `needle` and stay that many: log lines
    /// reach the file a little after they are written.
    fn wait_log(&self, needle: &str, n: usize) -> Vec<String> {
        wait_for(
            &format!("{n} log line(s) with {needle:?}"),
            Duration::from_secs(5),
            || (self.log_lines(needle).len() >= n).then_some(()),
        );
        std::thread::sleep(Duration::from_millis(300));
        let lines = self.log_lines(needle);
        assert_eq!(lines.len(), n, "{lines:#?}");
        lines
    }

    /// Waits until a counter reaches `expected`; stats are published on the filter's timer.
    fn wait_counter(&self, metric: &str, labels: &[(&str, &str)], expected: u64) {
        let mut last = 0;
        let found = poll(Duration::from_secs(5), || {
            last = self.counter(metric, labels);
            (last == expected).then_some(())
        });
        assert!(
            found.is_some(),
            "{metric}{labels:?} stayed at {last}, expected {expected}"
        );
    }
}

/// The sample stack with `plugin_json` (or the sample's own) and `workers` workers.
pub fn stack(plugin_json: Option<&str>, workers: u32) -> Stack {
    Stack::start(plugin_json, workers, |y| y).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`stack`], with a last edit of the YAML.
pub fn stack_with(
    plugin_json: Option<&str>,
    workers: u32,
    edit: impl FnOnce(String) -> String,
) -> Stack {
    Stack::start(plugin_json, workers, edit).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `n` requests at once, each on its own connection, and returns the responses.
pub fn burst(addr: &str, path: &str, n: usize) -> Vec<Response> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    client::request("GET", addr, path, &[], None, Duration::from_secs(20)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Whether a response is the breaker's own refusal.
pub fn is_rejection(r: &Response) -> bool {
    r.status == 503
        && r.json()
            .map(|j| j["error"] == "CIRCUIT_BREAKER_OPEN")
            .unwrap_or(false)
}
