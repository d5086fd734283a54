//! The local answer to a refused request: by default seed 004's JSON error with a
//! `retry-after` header; or a per-cluster `fallback` with `{cluster}` and `{retry_after}`
//! filled in; or, for gRPC callers, a gRPC `UNAVAILABLE`. Templates are parsed once per
//! cluster, so refusing costs a little formatting, never a parse.

use super::breaker::{RejectKind, Rejection};
use super::cache::Entry;
use super::fallback::Fallback;
use super::state::TripReason;

/// What to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// For gRPC callers: the gRPC status to answer with (Envoy then sends HTTP 200 with
    /// `grpc-status` and `grpc-message`).
    pub grpc_status: Option<u32>,
}

/// The answers for one breaker's refusals. The default body is prepared for every kind
/// and reason up front, so refusing while open costs one number's formatting.
#[derive(Debug, Clone)]
pub struct RejectReply {
    cluster: String,
    fallback: Option<Fallback>,
    /// The default body up to its last number, by [`RejectReply::slot`].
    prefixes: Vec<String>,
}

const KINDS: [RejectKind; 3] = [
    RejectKind::Open,
    RejectKind::HalfOpen,
    RejectKind::Recovering,
];

/// gRPC `UNAVAILABLE`: the status a gRPC client retries on.
pub const GRPC_UNAVAILABLE: u32 = 14;

impl RejectReply {
    pub fn new(cluster: &str, fallback: Option<&Fallback>) -> RejectReply {
        let mut reply = RejectReply {
            cluster: cluster.to_string(),
            fallback: fallback.cloned(),
            prefixes: Vec::new(),
        };
        for kind in KINDS {
            for reason in std::iter::once(None).chain(TripReason::ALL.map(Some)) {
                let r = Rejection {
                    kind,
                    reason,
                    retry_after_ms: 0,
                };
                let prefix = format!(
                    "{{\"error\":\"CIRCUIT_BREAKER_OPEN\",\"message\":{},\"cluster\":{},\"state\":\"{}\",\"reason\":{},\"retry_after_seconds\":",
                    json_string(&reply.message(&r)),
                    json_string(cluster),
                    kind.as_str(),
                    reason.map_or("null".to_string(), |r| json_string(r.as_str())),
                );
                reply.prefixes.push(prefix);
            }
        }
        reply
    }

    fn slot(kind: RejectKind, reason: Option<TripReason>) -> usize {
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        let r = reason.map_or(0, |r| {
            TripReason::ALL
                .iter()
                .position(|x| *x == r)
                .map_or(0, |i| i + 1)
        });
        k * (TripReason::ALL.len() + 1) + r
    }

    /// The sentence that explains a refusal.
    pub fn message(&self, rejection: &Rejection) -> String {
        let cluster = &self.cluster;
        let why = match rejection.kind {
            RejectKind::Open => format!(
                "its circuit breaker is open ({})",
                rejection.reason.map_or("failing", phrase)
            ),
            RejectKind::HalfOpen => "its circuit breaker is half-open and testing recovery".into(),
            RejectKind::Recovering => {
                "its circuit breaker is letting traffic back gradually after a recovery".into()
            }
        };
        format!("Service {cluster} is temporarily unavailable: {why}")
    }

    pub fn render(&self, rejection: &Rejection, grpc: bool) -> Answer {
        let secs = rejection.retry_after_secs();
        if grpc {
            return Answer {
                status: 503,
                headers: vec![
                    ("retry-after".into(), secs.to_string()),
                    ("x-circuit-breaker".into(), rejection.kind.as_str().into()),
                ],
                body: self.message(rejection).into_bytes(),
                grpc_status: Some(GRPC_UNAVAILABLE),
            };
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        let (status, body) = match &self.fallback {
            Some(f) => {
                for (name, value) in &f.headers {
                    headers.push((
                        name.clone(),
                        header_safe(&value.render(&self.cluster, secs)),
                    ));
                }
                (f.status, f.body.render(&self.cluster, secs))
            }
            None => (503, self.default_body(rejection, secs)),
        };
        for (name, value) in [
            ("content-type", "application/json".to_string()),
            ("retry-after", secs.to_string()),
            ("x-circuit-breaker", rejection.kind.as_str().to_string()),
        ] {
            if !headers.iter().any(|(n, _)| n == name) {
                headers.push((name.to_string(), value));
            }
        }
        Answer {
            status,
            headers,
            body: body.into_bytes(),
            grpc_status: None,
        }
    }

    /// The last good answer from the cache, served instead of a refusal; `age_secs` is how
    /// old it is.
    pub fn cached(entry: &Entry, age_secs: u64, rejection: &Rejection) -> Answer {
        let mut headers = vec![
            (
                "x-circuit-breaker".to_string(),
                rejection.kind.as_str().to_string(),
            ),
            ("x-circuit-breaker-cache".to_string(), "hit".to_string()),
            ("age".to_string(), age_secs.to_string()),
        ];
        if let Some(ct) = &entry.content_type {
            headers.push(("content-type".to_string(), ct.clone()));
        }
        Answer {
            status: entry.status,
            headers,
            body: entry.body.clone(),
            grpc_status: None,
        }
    }

    fn default_body(&self, rejection: &Rejection, secs: u64) -> String {
        let prefix = self
            .prefixes
            .get(RejectReply::slot(rejection.kind, rejection.reason))
            .map_or("", String::as_str);
        format!("{prefix}{secs}}}")
    }
}

/// A short phrase for a trip reason, for messages meant for people.
pub fn phrase(reason: TripReason) -> &'static str {
    match reason {
        TripReason::ConsecutiveFailures => "too many consecutive failures",
        TripReason::FailureRate => "failure rate too high",
        TripReason::SlowCallRate => "too many slow calls",
        TripReason::UpstreamAsked => "the upstream asked to retry later",
        TripReason::Forced => "forced open",
        TripReason::ProbeFailed => "a recovery probe failed",
        TripReason::HalfOpenTimeout => "recovery probes did not finish",
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// A header value cannot carry control characters; a cluster name that holds one must not
/// split the header.
fn header_safe(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fallback::Template;

    fn open_for(ms: u64) -> Rejection {
        Rejection {
            kind: RejectKind::Open,
            reason: Some(TripReason::ConsecutiveFailures),
            retry_after_ms: ms,
        }
    }

    fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
        a.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_default_body_is_seed_004s_error_with_the_seconds_left() {
        let answer = RejectReply::new("auth", None).render(&open_for(29_001), false);
        assert_eq!(answer.status, 503);
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["error"], "CIRCUIT_BREAKER_OPEN");
        assert_eq!(body["cluster"], "auth");
        assert_eq!(body["retry_after_seconds"], 30);
        assert_eq!(body["reason"], "consecutive_failures");
        assert_eq!(body["state"], "open");
        assert!(body["message"].as_str().unwrap().contains("auth"));
        assert_eq!(header(&answer, "retry-after"), Some("30"));
        assert_eq!(header(&answer, "content-type"), Some("application/json"));
        assert_eq!(header(&answer, "x-circuit-breaker"), Some("open"));
    }

    #[test]
    fn odd_cluster_names_stay_valid_json() {
        let rej = Rejection {
            kind: RejectKind::HalfOpen,
            reason: None,
            retry_after_ms: 1_000,
        };
        let answer = RejectReply::new("we\"ird\\name\n", None).render(&rej, false);
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["cluster"], "we\"ird\\name\n");
        assert!(body["message"].as_str().unwrap().contains("half-open"));
    }

    #[test]
    fn a_fallback_fills_in_cluster_and_retry_after() {
        let fallback = Fallback {
            status: 200,
            headers: vec![
                ("content-type".into(), Template::parse("text/plain")),
                ("x-degraded".into(), Template::parse("{cluster}")),
            ],
            body: Template::parse("{cluster} is resting, back in {retry_after}s {not a slot}"),
        };
        let answer = RejectReply::new("school", Some(&fallback)).render(&open_for(4_500), false);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"school is resting, back in 5s {not a slot}");
        assert_eq!(header(&answer, "content-type"), Some("text/plain"));
        assert_eq!(header(&answer, "x-degraded"), Some("school"));
        assert_eq!(header(&answer, "retry-after"), Some("5"));
    }

    #[test]
    fn a_cluster_name_cannot_split_a_header() {
        let fallback = Fallback {
            status: 503,
            headers: vec![("x-who".into(), Template::parse("{cluster}"))],
            body: Template::parse(""),
        };
        let answer =
            RejectReply::new("evil\r\nset-cookie: x", Some(&fallback)).render(&open_for(1), false);
        assert_eq!(header(&answer, "x-who"), Some("evilset-cookie: x"));
    }

    #[test]
    fn grpc_callers_get_unavailable() {
        let answer = RejectReply::new("school", None).render(&open_for(3_000), true);
        assert_eq!(answer.grpc_status, Some(14));
        assert!(String::from_utf8_lossy(&answer.body).contains("circuit breaker is open"));
    }

    #[test]
    fn every_kind_and_reason_gets_its_own_valid_body() {
        let reply = RejectReply::new("a\"b", None);
        for kind in KINDS {
            for reason in std::iter::once(None).chain(TripReason::ALL.map(Some)) {
                let r = Rejection {
                    kind,
                    reason,
                    retry_after_ms: 7_500,
                };
                let body: serde_json::Value =
                    serde_json::from_slice(&reply.render(&r, false).body).unwrap();
                assert_eq!(body["state"], kind.as_str());
                assert_eq!(
                    body["reason"],
                    serde_json::json!(reason.map(TripReason::as_str))
                );
                assert_eq!(body["retry_after_seconds"], 8);
                assert_eq!(body["cluster"], "a\"b");
                assert_eq!(body["message"], reply.message(&r));
            }
        }
    }

    #[test]
    fn templates_keep_plain_braces() {
        let t = Template::parse("{\"a\": {retry_after}}");
        assert_eq!(t.render("c", 7), "{\"a\": 7}");
    }
}
