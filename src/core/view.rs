//! What the control API and dashboard show, computed from the one shared record and the
//! settings, so every worker and every view agree: state and why, mode, counts, rates,
//! time to half-open, the ramp, and the last transitions.

use serde_json::{json, Value};

use super::breaker::Confined;
use super::duration::{rfc3339, Millis};
use super::headroom::Headroom;
use super::history::Event;
use super::hosts::{Address, Rule};
use super::settings::{Mode, Settings};
use super::state::{Record, State, TripReason};
use super::window::WindowSpec;

/// One breaker as the control API shows it.
pub fn breaker(name: &str, r: &Record, s: &Settings, history: &[Event], now_ms: u64) -> Value {
    let counts = r.counts(s, now_ms);
    let open = r.state == State::Open;
    let forced = r.reason == Some(TripReason::Forced) && open;
    let ramp = ramp_share(r, s, now_ms);
    json!({
        "name": name,
        "state": r.state.as_str(),
        "mode": r.mode(s).as_str(),
        "configured_mode": s.mode.as_str(),
        "mode_override": r.mode_override.map(Mode::as_str),
        "reason": r.reason.filter(|_| r.state != State::Closed).map(TripReason::as_str),
        "since": (r.changed_at_ms > 0).then(|| rfc3339(r.changed_at_ms)),
        "open_until": (open && !forced).then(|| rfc3339(r.open_until_ms)),
        "seconds_to_half_open": (open && !forced)
            .then(|| r.open_until_ms.saturating_sub(now_ms).div_ceil(1_000)),
        "recovering": ramp.is_some(),
        "admitted_share": ramp.map_or(1.0, round3),
        "counts": {
            "consecutive_failures": r.consecutive_failures,
            "calls": counts.calls,
            "failures": counts.failures,
            "slow": counts.slow,
            "probes_in_flight": r.probes_in_flight,
            "probe_successes": r.probe_successes,
        },
        "failure_rate": round3(counts.failure_rate()),
        "slow_call_rate": round3(counts.slow_rate()),
        "trips_in_row": r.trips_in_row,
        "headroom": Headroom::of(r, s, now_ms).view(),
        "hosts": hosts(r, s, now_ms),
        "generation": r.generation,
        "settings": settings(s),
        "transitions": history,
    })
}

/// Seed 004's `/health`: per breaker its state and failure count, and a status of
/// `healthy`, `recovering` or `unhealthy`, with an overall message.
pub fn health(breakers: &[(String, Record, Settings)], now_ms: u64) -> Value {
    let mut data = serde_json::Map::new();
    let mut unhealthy = Vec::new();
    let mut recovering = Vec::new();
    for (name, r, s) in breakers {
        let status = match r.state {
            State::Open => "unhealthy",
            State::HalfOpen => "recovering",
            State::Closed if ramp_share(r, s, now_ms).is_some() => "recovering",
            State::Closed => "healthy",
        };
        match status {
            "unhealthy" => unhealthy.push(name.as_str()),
            "recovering" => recovering.push(name.as_str()),
            _ => {}
        }
        data.insert(
            name.clone(),
            json!({
                "circuit_breaker": {"state": r.state.shout(), "failure_count": r.consecutive_failures},
                "status": status,
            }),
        );
    }
    let message = match (unhealthy.is_empty(), recovering.is_empty()) {
        (true, true) => "All services are healthy".to_string(),
        _ => {
            let mut parts = Vec::new();
            if !unhealthy.is_empty() {
                parts.push(format!("unhealthy: {}", unhealthy.join(", ")));
            }
            if !recovering.is_empty() {
                parts.push(format!("recovering: {}", recovering.join(", ")));
            }
            format!("Some services are degraded ({})", parts.join("; "))
        }
    };
    json!({"message": message, "data": data})
}

fn ramp_share(r: &Record, s: &Settings, now_ms: u64) -> Option<f64> {
    let elapsed = now_ms.saturating_sub(r.changed_at_ms);
    (r.state == State::Closed && r.ramping && elapsed < s.recovery_duration_ms)
        .then(|| elapsed as f64 / s.recovery_duration_ms as f64)
}

fn settings(s: &Settings) -> Value {
    let window = match s.window {
        WindowSpec::Time { window_ms } => {
            json!({"type": "time", "length": Millis(window_ms).to_string()})
        }
        WindowSpec::Count { size } => json!({"type": "count", "calls": size}),
    };
    json!({
        "failure_threshold": s.failure_threshold,
        "failure_rate_threshold": s.failure_rate_threshold,
        "slow_call_duration": Millis(s.slow_call_duration_ms).to_string(),
        "slow_call_rate_threshold": s.slow_call_rate_threshold,
        "minimum_requests": s.minimum_requests,
        "trip_min_hosts": s.trip_min_hosts,
        "window": window,
        "open_duration": Millis(s.open_duration_ms).to_string(),
        "max_open_duration": Millis(s.max_open_duration_ms).to_string(),
        "backoff_multiplier": s.backoff_multiplier,
        "half_open_max_requests": s.half_open_max_requests,
        "success_threshold": s.success_threshold,
        "recovery_duration": Millis(s.recovery_duration_ms).to_string(),
    })
}

/// The hosts heard from, those whose failures or slow calls are in the window, and, while
/// a trip is held back because they are too few, what the log said.
fn hosts(r: &Record, s: &Settings, now_ms: u64) -> Value {
    let (failing, hostless) = r.hosts.behind(Rule::Failures, now_ms, s.window);
    let (slow, _) = r.hosts.behind(Rule::Slow, now_ms, s.window);
    let known = r.hosts.known(now_ms, s.window);
    let names = |hosts: &[Address]| {
        hosts
            .iter()
            .map(|a| a.as_str().to_string())
            .collect::<Vec<_>>()
    };
    let confined = (r.hosts.confined && r.state == State::Closed).then(|| {
        let (reason, hosts) = match failing.is_empty() {
            true => (TripReason::SlowCallRate, slow.clone()),
            false => (TripReason::FailureRate, failing.clone()),
        };
        let c = Confined {
            reason,
            hosts,
            known,
            started: false,
            counted: false,
        };
        format!(
            "{}: not tripping; outlier detection ejects single hosts",
            c.summary()
        )
    });
    json!({
        "known": known,
        "failing": names(&failing),
        "slow": names(&slow),
        "failures_without_host": hostless,
        "confined": confined,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::Cause;

    fn open_record() -> Record {
        let mut r = Record {
            consecutive_failures: 5,
            ..Record::default()
        };
        r.transition(
            Cause::Tripped(TripReason::ConsecutiveFailures),
            &Settings::default(),
            1_000,
        );
        r
    }

    #[test]
    fn a_view_says_state_why_and_time_left() {
        let v = breaker("auth", &open_record(), &Settings::default(), &[], 3_500);
        assert_eq!(v["state"], "open");
        assert_eq!(v["reason"], "consecutive_failures");
        assert_eq!(v["seconds_to_half_open"], 3);
        assert_eq!(v["counts"]["consecutive_failures"], 5);
        assert_eq!(v["mode"], "enforce");
        assert_eq!(v["settings"]["open_duration"], "5s");
        assert!(v["mode_override"].is_null());
    }

    #[test]
    fn a_closed_breaker_has_no_reason_nor_countdown() {
        let v = breaker("auth", &Record::default(), &Settings::default(), &[], 0);
        assert!(v["reason"].is_null() && v["seconds_to_half_open"].is_null());
        assert_eq!(v["admitted_share"], 1.0);
    }

    #[test]
    fn a_view_says_when_failures_are_confined_to_too_few_hosts() {
        use crate::core::hosts::Address;
        let s = Settings::default();
        let mut r = Record::default();
        for (host, failed) in [("a:1", false), ("b:1", false), ("c:1", true)] {
            r.hosts.record(
                Address::new(host.as_bytes()),
                failed,
                false,
                1_000,
                s.window,
            );
        }
        let v = breaker("school", &r, &s, &[], 1_000);
        assert_eq!(v["hosts"]["known"], 3);
        assert_eq!(v["hosts"]["failing"], json!(["c:1"]));
        assert!(v["hosts"]["confined"].is_null(), "no rule held back yet");
        r.hosts.confined = true;
        let v = breaker("school", &r, &s, &[], 1_000);
        assert_eq!(
            v["hosts"]["confined"],
            "failures confined to 1 of 3 hosts (c:1): not tripping; outlier detection ejects single hosts"
        );
        assert_eq!(v["settings"]["trip_min_hosts"], 2);
    }

    #[test]
    fn a_forced_breaker_shows_no_countdown() {
        let mut r = Record::default();
        r.transition(Cause::Forced, &Settings::default(), 5);
        let v = breaker("a", &r, &Settings::default(), &[], 10);
        assert_eq!(v["reason"], "forced");
        assert!(v["seconds_to_half_open"].is_null());
    }

    #[test]
    fn health_has_seed_004s_shape() {
        let s = Settings::default();
        let half = {
            let mut r = open_record();
            r.transition(Cause::OpenElapsed, &s, 61_000);
            r
        };
        let h = health(
            &[
                ("auth".into(), Record::default(), s.clone()),
                ("school".into(), half, s.clone()),
                ("student".into(), open_record(), s.clone()),
            ],
            62_000,
        );
        assert_eq!(h["data"]["auth"]["circuit_breaker"]["state"], "CLOSED");
        assert_eq!(h["data"]["auth"]["status"], "healthy");
        assert_eq!(h["data"]["school"]["status"], "recovering");
        assert_eq!(h["data"]["student"]["circuit_breaker"]["failure_count"], 5);
        assert_eq!(h["data"]["student"]["status"], "unhealthy");
        assert_eq!(
            h["message"],
            "Some services are degraded (unhealthy: student; recovering: school)"
        );
        let all_good = health(&[("auth".into(), Record::default(), s)], 0);
        assert_eq!(all_good["message"], "All services are healthy");
    }
}
