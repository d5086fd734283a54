//! What a health probe is (its checked `probe` block: method, path, headers, timeout,
//! expected statuses) and what its answer means; when it is sent is `breaker::probe_due`'s,
//! and who sends it `probe`'s.

use serde::{Deserialize, Serialize};

use super::outcome::StatusSet;

/// The methods a probe may use.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProbeMethod {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
}

impl ProbeMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeMethod::Get => "GET",
            ProbeMethod::Head => "HEAD",
            ProbeMethod::Post => "POST",
            ProbeMethod::Put => "PUT",
            ProbeMethod::Delete => "DELETE",
            ProbeMethod::Options => "OPTIONS",
            ProbeMethod::Patch => "PATCH",
        }
    }
}

/// A checked `probe` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    pub path: String,
    pub method: ProbeMethod,
    /// Extra headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The `:authority`; `None` sends the cluster's name.
    pub authority: Option<String>,
    pub timeout_ms: u64,
    pub expect_status: StatusSet,
    pub interval_ms: u64,
}

impl ProbeSettings {
    /// The request's headers for a probe of `cluster`.
    pub fn request_headers<'a>(&'a self, cluster: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut headers = vec![
            (":method", self.method.as_str()),
            (":path", self.path.as_str()),
            (":authority", self.authority.as_deref().unwrap_or(cluster)),
        ];
        if !self.headers.iter().any(|(n, _)| n == "user-agent") {
            headers.push(("user-agent", "envoy-circuit-breaker-probe"));
        }
        headers.extend(self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        headers
    }

    /// What the probe asks for, as logs say it: `GET /health`.
    pub fn target(&self) -> String {
        format!("{} {}", self.method.as_str(), self.path)
    }
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeResult {
    /// Answered with an expected status in time.
    Success,
    /// Answered with another status, or not at all (a reset).
    Failure,
    /// No answer within `probe.timeout`.
    Timeout,
    /// Could not be sent (Envoy knows no such cluster, or refused the call).
    Error,
}

impl ProbeResult {
    pub const ALL: [ProbeResult; 4] = [
        ProbeResult::Success,
        ProbeResult::Failure,
        ProbeResult::Timeout,
        ProbeResult::Error,
    ];

    /// The metric label and the view's word.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Success => "success",
            ProbeResult::Failure => "failure",
            ProbeResult::Timeout => "timeout",
            ProbeResult::Error => "error",
        }
    }
}

/// One probe's end, as the transition it caused and the views report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub result: ProbeResult,
    /// The answer's status; `None` when none came.
    pub status: Option<u32>,
    /// From sending to the answer.
    pub latency_ms: u64,
}

/// What the answer to a probe means: in time with an expected status it passed; at or
/// past the timeout it timed out, and so did a 504 or no answer at all in the timeout's
/// last tenth (Envoy answers a call it gave up on with its own 504, timed by its own clock,
/// which is not quite the one the filter reads); anything else failed.
pub fn judge(probe: &ProbeSettings, status: Option<u32>, latency_ms: u64) -> ProbeReport {
    let gave_up = matches!(status, None | Some(504))
        && latency_ms.saturating_add(probe.timeout_ms / 10) >= probe.timeout_ms;
    let result = match status {
        _ if latency_ms >= probe.timeout_ms || gave_up => ProbeResult::Timeout,
        Some(s) if probe.expect_status.contains(s) => ProbeResult::Success,
        _ => ProbeResult::Failure,
    };
    ProbeReport {
        result,
        status,
        latency_ms,
    }
}
