//! The local answer to a refused request: seed 004's JSON error with a `retry-after`
//! header. The body is prepared once per cluster, so refusing while open costs one
//! number's formatting, not a JSON serialisation.

use super::breaker::Rejection;
use super::state::State;

/// A ready-made answer for one cluster's refusals.
#[derive(Debug, Clone)]
pub struct RejectReply {
    open_prefix: String,
    half_open_prefix: String,
}

/// What to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl RejectReply {
    pub fn new(cluster: &str) -> RejectReply {
        let prefix = |message: String| {
            format!(
                "{{\"error\":\"CIRCUIT_BREAKER_OPEN\",\"message\":{},\"cluster\":{},\"retry_after_seconds\":",
                json_string(&message),
                json_string(cluster)
            )
        };
        RejectReply {
            open_prefix: prefix(format!(
                "Service {cluster} is temporarily unavailable: its circuit breaker is open"
            )),
            half_open_prefix: prefix(format!(
                "Service {cluster} is temporarily unavailable: its circuit breaker is half-open and testing recovery"
            )),
        }
    }

    pub fn render(&self, rejection: &Rejection) -> Answer {
        let secs = rejection.retry_after_secs();
        let prefix = match rejection.state {
            State::HalfOpen => &self.half_open_prefix,
            State::Open | State::Closed => &self.open_prefix,
        };
        Answer {
            status: 503,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("retry-after", secs.to_string()),
                ("x-circuit-breaker", rejection.state.as_str().to_string()),
            ],
            body: format!("{prefix}{secs}}}"),
        }
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_seed_004s_error_with_the_seconds_left() {
        let answer = RejectReply::new("auth").render(&Rejection {
            state: State::Open,
            retry_after_ms: 29_001,
        });
        assert_eq!(answer.status, 503);
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["error"], "CIRCUIT_BREAKER_OPEN");
        assert_eq!(body["cluster"], "auth");
        assert_eq!(body["retry_after_seconds"], 30);
        assert!(body["message"].as_str().unwrap().contains("auth"));
        assert!(answer.headers.contains(&("retry-after", "30".to_string())));
        assert!(answer
            .headers
            .contains(&("content-type", "application/json".to_string())));
    }

    #[test]
    fn odd_cluster_names_stay_valid_json() {
        let answer = RejectReply::new("we\"ird\\name\n").render(&Rejection {
            state: State::HalfOpen,
            retry_after_ms: 1_000,
        });
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["cluster"], "we\"ird\\name\n");
        assert!(body["message"].as_str().unwrap().contains("half-open"));
    }
}
