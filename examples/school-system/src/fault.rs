//! Seed 003's fault switch: `POST /simulate/failure` with `failure_rate`, `is_healthy` and
//! `response_time_ms`, shared by every request thread of a service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The fault settings of one service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Share of requests (0 to 1) answered with a 500.
    #[serde(default)]
    pub failure_rate: f64,
    /// `false` answers every request with a 503.
    #[serde(default = "yes")]
    pub is_healthy: bool,
    /// Delay added before every answer.
    #[serde(default)]
    pub response_time_ms: u64,
    /// Status of a failed answer, instead of 500 (random failure) or 503 (down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_status: Option<u16>,
    /// A `Retry-After` header to send with failed answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Send the headers and half the body of every answer, then drop the connection: an
    /// upstream dying mid-response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_mid_response: bool,
}

fn yes() -> bool {
    true
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            failure_rate: 0.0,
            is_healthy: true,
            response_time_ms: 0,
            failure_status: None,
            retry_after: None,
            reset_mid_response: false,
        }
    }
}

/// What the switch says to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    /// Answer 500: a random failure.
    Fail,
    /// Answer 503: the service is down.
    Down,
}

/// The switch, shared by every request thread.
pub struct FaultSwitch {
    faults: Mutex<Faults>,
    rng: AtomicU64,
}

impl Default for FaultSwitch {
    fn default() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        FaultSwitch {
            faults: Mutex::new(Faults::default()),
            rng: AtomicU64::new(seed | 1),
        }
    }
}

impl FaultSwitch {
    pub fn get(&self) -> Faults {
        match self.faults.lock() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, faults: Faults) -> Result<(), String> {
        if let Some(status) = faults.failure_status.filter(|s| !(200..=599).contains(s)) {
            return Err(format!(
                "failure_status must be between 200 and 599, but was {status}"
            ));
        }
        if let Some(v) = faults
            .retry_after
            .as_ref()
            .filter(|v| v.chars().any(char::is_control))
        {
            return Err(format!(
                "retry_after must not hold control characters, but was {v:?}"
            ));
        }
        if !(0.0..=1.0).contains(&faults.failure_rate) {
            return Err(format!(
                "failure_rate must be between 0 and 1, but was {}",
                faults.failure_rate
            ));
        }
        match self.faults.lock() {
            Ok(mut f) => *f = faults,
            Err(poisoned) => *poisoned.into_inner() = faults,
        }
        Ok(())
    }

    /// Decides one request's fate; the caller applies `faults.response_time_ms` first.
    pub fn judge(&self) -> (Verdict, Faults) {
        let f = self.get();
        let verdict = if !f.is_healthy {
            Verdict::Down
        } else if f.failure_rate > 0.0 && self.uniform() < f.failure_rate {
            Verdict::Fail
        } else {
            Verdict::Serve
        };
        (verdict, f)
    }

    /// A uniform draw in [0, 1) from a xorshift generator; good enough to shape load.
    fn uniform(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_by_default() {
        let s = FaultSwitch::default();
        assert_eq!(s.judge(), (Verdict::Serve, Faults::default()));
    }

    #[test]
    fn unhealthy_fails_everything() {
        let s = FaultSwitch::default();
        s.set(Faults {
            is_healthy: false,
            ..Faults::default()
        })
        .unwrap();
        assert!((0..100).all(|_| s.judge().0 == Verdict::Down));
    }

    #[test]
    fn failure_rate_is_roughly_honoured() {
        let s = FaultSwitch::default();
        s.set(Faults {
            failure_rate: 0.7,
            ..Faults::default()
        })
        .unwrap();
        let fails = (0..10_000).filter(|_| s.judge().0 == Verdict::Fail).count();
        assert!((6_500..7_500).contains(&fails), "{fails}");
    }

    #[test]
    fn a_rate_outside_0_to_1_is_refused() {
        let s = FaultSwitch::default();
        assert!(s
            .set(Faults {
                failure_rate: 1.5,
                ..Faults::default()
            })
            .is_err());
    }

    #[test]
    fn the_seed_003_body_parses() {
        let f: Faults = serde_json::from_str(
            r#"{"failure_rate": 0.7, "is_healthy": true, "response_time_ms": 2000}"#,
        )
        .unwrap();
        assert_eq!(f.response_time_ms, 2000);
        let f: Faults = serde_json::from_str(r#"{"is_healthy": false}"#).unwrap();
        assert!(!f.is_healthy);
    }
}
