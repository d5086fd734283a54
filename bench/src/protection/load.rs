//! The users: an open-loop load generator. Each request has its scheduled send time and is
//! sent then, on its own connection, whatever happened to the ones before: users of a
//! service in trouble do not slow down for it, and a closed-loop generator (such as `wrk`),
//! which waits for answers, would hide an overload by easing off.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use school_system::client;
use school_system::client::Response;

use super::summary::{Answer, Outcome};

/// How long a user waits for an answer before giving up.
const USER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a user made of an answer: success, a failure that came from (or through) the
/// upstream, or a local refusal (the breaker, `admission_control`, or Envoy finding no
/// healthy host) that spared the upstream the call.
pub fn classify(r: &Response) -> Outcome {
    if (200..300).contains(&r.status) {
        return Outcome::Success;
    }
    if r.header("x-upstream-host").is_some() {
        return Outcome::UpstreamFailure;
    }
    // Envoy's own failures of a call say so in the body ("upstream request timeout",
    // "upstream connect error ... reset reason: connection failure"); anything else it
    // answers itself is a refusal: the breaker's JSON, "no healthy upstream", a connection
    // pool overflow, and admission_control's 503 with an empty body.
    let body = r.text();
    if body.starts_with("upstream") && !body.contains("overflow") {
        Outcome::UpstreamFailure
    } else {
        Outcome::Refused
    }
}

/// Sends `rate` requests per second to `addr` from `start` for `duration`, each on its own
/// thread, and returns every answer once the last one is in.
pub fn run(addr: &str, rate: f64, start: Instant, duration: Duration) -> Vec<Answer> {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let count = (duration.as_secs_f64() * rate).floor() as u64;
    let mut threads = Vec::with_capacity(count as usize);
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let (addr, answers) = (addr.to_string(), answers.clone());
        let sent_ms = start.elapsed().as_secs_f64() * 1_000.0;
        threads.push(thread::spawn(move || {
            let outcome = match client::request("GET", &addr, "/", &[], None, USER_TIMEOUT) {
                Ok(r) => (classify(&r), r.elapsed),
                Err(_) => (Outcome::UpstreamFailure, USER_TIMEOUT),
            };
            let answer = Answer {
                sent_ms,
                latency_ms: outcome.1.as_secs_f64() * 1_000.0,
                outcome: outcome.0,
            };
            if let Ok(mut a) = answers.lock() {
                a.push(answer);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    let mut all = answers.lock().map(|a| a.clone()).unwrap_or_default();
    all.sort_by(|a, b| a.sent_ms.total_cmp(&b.sent_ms));
    all
}
