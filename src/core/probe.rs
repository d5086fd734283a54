//! The breaker's own health probe. With a `probe` block, a half-open breaker refuses every
//! user and calls a health path of its cluster itself, one call at a time per breaker,
//! until `success_threshold` calls in a row pass; one that fails or times out reopens it,
//! with backoff. Here is when a probe is due, the claim that lets one worker send it, and
//! what its answer means; the shell only sends it and reports back.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::breaker::{self, Step};
use super::duration::{rfc3339, Millis};
use super::outcome::StatusSet;
use super::settings::{Mode, Settings};
use super::state::{Cause, Record, State, TripReason};

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

/// The claim on a breaker's one probe, held by the worker that sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTicket {
    /// Generation of the half-open episode it probes; an answer from an older one is
    /// ignored.
    pub generation: u32,
}

/// How long past its timeout a claimed probe may go unanswered before the breaker gives
/// it up as lost and reopens: Envoy ends every call at its timeout, so only a worker that
/// died holding the claim gets this late.
pub const LOST_AFTER_MS: u64 = 1_000;

/// Whether a probe was claimed in the breaker's current half-open episode: a claim sets
/// `probing_since_ms`, every transition sets `changed_at_ms`, and both are the same clock.
fn claimed_this_episode(r: &Record) -> bool {
    r.probing_since_ms > 0 && r.probing_since_ms >= r.changed_at_ms
}

/// When the next probe may be claimed: as soon as the open time ends, then `interval`
/// after the last claim of the episode; `None` while one is out, while closed or forced.
pub fn next_due_ms(r: &Record, probe: &ProbeSettings) -> Option<u64> {
    match r.state {
        State::Open if r.reason != Some(TripReason::Forced) => Some(r.open_until_ms),
        State::HalfOpen if r.probes_in_flight == 0 => Some(if claimed_this_episode(r) {
            r.probing_since_ms.saturating_add(probe.interval_ms)
        } else {
            r.changed_at_ms
        }),
        _ => None,
    }
}

/// When a claimed probe whose answer never came is given up (see [`LOST_AFTER_MS`]).
pub fn lost_at_ms(r: &Record, probe: &ProbeSettings) -> Option<u64> {
    (r.state == State::HalfOpen && r.probes_in_flight > 0).then(|| {
        r.probing_since_ms
            .saturating_add(probe.timeout_ms)
            .saturating_add(LOST_AFTER_MS)
    })
}

/// How long a user refused while the breaker probes is told to wait: until the next
/// probe goes (with one out, the one after it, should it pass below the threshold).
pub fn retry_after_ms(r: &Record, probe: &ProbeSettings, now_ms: u64) -> u64 {
    let next = match next_due_ms(r, probe) {
        Some(due) => due,
        None => r.probing_since_ms.saturating_add(probe.interval_ms),
    };
    next.saturating_sub(now_ms)
}

/// The timer's step for a breaker with a probe: time and mode move it as in
/// [`breaker::tick`], and if a probe is due and none is out, this caller claims it and
/// must send it (or give it back with [`unsent`]).
pub fn claim(r: &mut Record, settings: &Settings, now_ms: u64) -> Step<Option<ProbeTicket>> {
    let ticked = breaker::tick(r, settings, now_ms);
    let due = settings
        .probe
        .as_ref()
        .and_then(|p| next_due_ms(r, p))
        .is_some_and(|due| now_ms >= due);
    let claims = due && r.state == State::HalfOpen && r.mode(settings) != Mode::Disabled;
    if claims {
        r.probes_in_flight = 1;
        r.probing_since_ms = now_ms;
    }
    let ticket = claims.then_some(ProbeTicket {
        generation: r.generation,
    });
    Step {
        value: ticket,
        dirty: ticked.dirty || claims,
        transition: ticked.transition,
    }
}

/// Takes in how the probe claimed with `ticket` ended: a pass counts toward
/// `success_threshold` and closes the breaker once it is reached; a failure or timeout
/// reopens it; an error (nothing was sent) leaves it half-open, the next probe an
/// `interval` after this one.
pub fn answered(
    r: &mut Record,
    settings: &Settings,
    ticket: ProbeTicket,
    report: ProbeReport,
    now_ms: u64,
) -> Step<()> {
    if !holds(r, ticket) {
        return quiet(false);
    }
    r.probes_in_flight = 0;
    let cause = match report.result {
        ProbeResult::Success => {
            r.probe_successes = r.probe_successes.saturating_add(1);
            (r.probe_successes >= settings.success_threshold).then_some(Cause::Recovered)
        }
        ProbeResult::Failure | ProbeResult::Timeout => {
            Some(Cause::Tripped(TripReason::ProbeFailed))
        }
        ProbeResult::Error => None,
    };
    let transition = cause.map(|c| {
        let mut t = r.transition(c, settings, now_ms);
        t.probe = Some(report);
        t
    });
    Step {
        value: (),
        dirty: true,
        transition,
    }
}

/// Gives back a claim whose probe was not sent (another Envoy of the fleet holds the
/// fleet's probe): the next try is an `interval` after the claim.
pub fn unsent(r: &mut Record, ticket: ProbeTicket) -> Step<()> {
    if !holds(r, ticket) {
        return quiet(false);
    }
    r.probes_in_flight = 0;
    quiet(true)
}

fn holds(r: &Record, ticket: ProbeTicket) -> bool {
    r.state == State::HalfOpen && r.generation == ticket.generation && r.probes_in_flight > 0
}

fn quiet(dirty: bool) -> Step<()> {
    Step {
        value: (),
        dirty,
        transition: None,
    }
}

/// The last probe of a breaker, kept in shared data for the views, and so that a probe
/// that cannot be sent is logged once, not every interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastProbe {
    /// When it ended (Unix ms).
    pub at_ms: u64,
    #[serde(flatten)]
    pub report: ProbeReport,
}

/// Longest stored [`LastProbe`] read back; anything longer is not ours.
const MAX_LAST_PROBE_BYTES: usize = 256;

impl LastProbe {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads stored bytes back; `None` for nothing or anything else.
    pub fn decode(bytes: &[u8]) -> Option<LastProbe> {
        if bytes.len() > MAX_LAST_PROBE_BYTES {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

/// The `probe` part of a breaker's view: what it probes, the last probe (result, status,
/// latency, when) and, while half-open, when the next one goes.
pub fn view(r: &Record, probe: &ProbeSettings, last: Option<&LastProbe>, now_ms: u64) -> Value {
    let next = (r.state == State::HalfOpen)
        .then(|| next_due_ms(r, probe))
        .flatten();
    json!({
        "target": probe.target(),
        "interval": Millis(probe.interval_ms).to_string(),
        "timeout": Millis(probe.timeout_ms).to_string(),
        "in_flight": r.state == State::HalfOpen && r.probes_in_flight > 0,
        "seconds_to_next": next.map(|at| at.saturating_sub(now_ms).div_ceil(1_000)),
        "last": last.map(|l| json!({
            "result": l.report.result.as_str(),
            "status": l.report.status,
            "latency_ms": l.report.latency_ms,
            "at": rfc3339(l.at_ms),
            "seconds_ago": now_ms.saturating_sub(l.at_ms) / 1_000,
        })),
    })
}

#[cfg(test)]
mod tests;
