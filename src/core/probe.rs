//! The breaker's own health probe. With a `probe` block, a half-open breaker refuses every
//! user and calls a health path of its cluster itself, one call at a time per breaker,
//! until `success_threshold` calls in a row pass; one that fails or times out reopens it,
//! with backoff. Here is when a probe is due, the claim that lets one worker send it, and
//! what its answer means; the shell only sends it and reports back.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::breaker::probe_due::next_due_ms;
use super::breaker::{self, Step};
use super::duration::{rfc3339, Millis};
use super::probe_spec::{ProbeReport, ProbeResult, ProbeSettings};
use super::settings::{Mode, Settings};
use super::state::{Cause, Record, State, TripReason};

/// The claim on a breaker's one probe, held by the worker that sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTicket {
    /// Generation of the half-open episode it probes; an answer from an older one is
    /// ignored.
    pub generation: u32,
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
