//! The fleet record: one breaker's decision as stored in etcd under `P/b/<breaker>`. Small,
//! versioned and bounded, because anything under the prefix may be damaged, from another
//! build or hostile, and must be refused whole rather than misread. Layout in docs/src/fleet-design.md.

use std::fmt;

use crate::core::bytes::Reader;
use crate::core::limits::MAX_MEMBER_BYTES;
use crate::core::settings::Mode;
use crate::core::state::{Cause, Counts, State, Transition, TripReason};

const MAGIC: u8 = 0xF1;
const VERSION: u8 = 1;
const FIXED_LEN: usize = 53;
/// Largest valid record; anything longer is refused before it is read.
pub const MAX_RECORD_BYTES: usize = 128;
// The longest member name fits.
const _: () = assert!(FIXED_LEN + MAX_MEMBER_BYTES <= MAX_RECORD_BYTES);

/// Why a record was made, so an adopting Envoy can say it in its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetCause {
    Tripped,
    UpstreamAsked,
    Forced,
    OpenElapsed,
    Released,
    Recovered,
    Reset,
    /// An operator changed the mode override without a change of state.
    ModeChanged,
    /// Enough members tripped on their own failures (`fleet.trip_quorum`): the breaker
    /// opens in the fleet.
    QuorumReached,
}

impl FleetCause {
    const ALL: [FleetCause; 9] = [
        FleetCause::Tripped,
        FleetCause::UpstreamAsked,
        FleetCause::Forced,
        FleetCause::OpenElapsed,
        FleetCause::Released,
        FleetCause::Recovered,
        FleetCause::Reset,
        FleetCause::ModeChanged,
        FleetCause::QuorumReached,
    ];

    fn code(self) -> u8 {
        FleetCause::ALL
            .iter()
            .position(|c| *c == self)
            .map_or(0, |i| i as u8 + 1)
    }

    fn from_code(code: u8) -> Option<FleetCause> {
        FleetCause::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }

    pub fn of(cause: Cause) -> FleetCause {
        match cause {
            Cause::Tripped(_) => FleetCause::Tripped,
            Cause::UpstreamAsked { .. } => FleetCause::UpstreamAsked,
            Cause::Forced => FleetCause::Forced,
            Cause::OpenElapsed => FleetCause::OpenElapsed,
            Cause::Released => FleetCause::Released,
            Cause::Recovered => FleetCause::Recovered,
            Cause::Reset => FleetCause::Reset,
        }
    }

    /// The state a record with this cause must be in (`None`: any).
    fn state(self) -> Option<State> {
        match self {
            FleetCause::Tripped
            | FleetCause::UpstreamAsked
            | FleetCause::Forced
            | FleetCause::QuorumReached => Some(State::Open),
            FleetCause::OpenElapsed | FleetCause::Released => Some(State::HalfOpen),
            FleetCause::Recovered | FleetCause::Reset => Some(State::Closed),
            FleetCause::ModeChanged => None,
        }
    }
}

/// One breaker's decision, as the fleet shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRecord {
    pub state: State,
    pub reason: Option<TripReason>,
    pub cause: FleetCause,
    pub mode_override: Option<Mode>,
    /// The fleet generation: one more than the record it replaced.
    pub generation: u32,
    /// The publisher's wall clock when it published (Unix ms).
    pub published_at_ms: u64,
    /// While open: time open from `published_at_ms`; `u64::MAX` while forced.
    pub open_for_ms: u64,
    /// The fleet's backoff step.
    pub trips_in_row: u32,
    /// In half-open: successful probes so far, across the fleet.
    pub probe_successes: u32,
    /// The publisher's counts just before the change, for the log line.
    pub counts: Counts,
    /// The member (Envoy node id) that published it.
    pub member: String,
}

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    Length(usize),
    Magic(u8),
    Version(u8),
    Field(&'static str, u64),
    Member,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Length(n) => write!(f, "{n} bytes are not a fleet record"),
            RecordError::Magic(m) => write!(f, "magic byte {m:#04x} is not {MAGIC:#04x}"),
            RecordError::Version(v) => write!(f, "fleet record version {v} is not {VERSION}"),
            RecordError::Field(name, v) => write!(f, "field {name} holds impossible value {v}"),
            RecordError::Member => write!(f, "the member name is not printable UTF-8"),
        }
    }
}

/// Whether `name` may be a member name: 1 to [`MAX_MEMBER_BYTES`] bytes, no control characters.
pub fn valid_member(name: &str) -> bool {
    (1..=MAX_MEMBER_BYTES).contains(&name.len()) && !name.chars().any(char::is_control)
}

impl FleetRecord {
    /// The record publishing `t`, made on `member` at `published_at_ms` (wall clock).
    pub fn of_transition(
        t: &Transition,
        mode_override: Option<Mode>,
        generation: u32,
        member: &str,
        published_at_ms: u64,
        reason: Option<TripReason>,
    ) -> FleetRecord {
        FleetRecord {
            state: t.to,
            reason,
            cause: FleetCause::of(t.cause),
            mode_override,
            generation,
            published_at_ms,
            open_for_ms: open_for(t),
            trips_in_row: t.trips_in_row,
            // A close by recovery carries the successes that made it, for the adopters'
            // log line; half-open records carry the running count (`progress`).
            probe_successes: match t.cause {
                Cause::Recovered => t.counts.probe_successes,
                _ => 0,
            },
            counts: t.counts,
            member: member.to_string(),
        }
    }

    /// The transition this record describes, as the core's log and event code expects,
    /// placed on the publisher's clock; `None` for a mode change without a change of state.
    pub fn transition(&self, from: State) -> Option<Transition> {
        let cause = match self.cause {
            FleetCause::Tripped | FleetCause::QuorumReached => Cause::Tripped(self.reason?),
            FleetCause::UpstreamAsked => Cause::UpstreamAsked {
                wait_ms: self.open_for_ms,
            },
            FleetCause::Forced => Cause::Forced,
            FleetCause::OpenElapsed => Cause::OpenElapsed,
            FleetCause::Released => Cause::Released,
            FleetCause::Recovered => Cause::Recovered,
            FleetCause::Reset => Cause::Reset,
            FleetCause::ModeChanged => return None,
        };
        Some(Transition {
            from,
            to: self.state,
            cause,
            at_ms: self.published_at_ms,
            generation: self.generation,
            counts: Counts {
                probe_successes: self.probe_successes,
                ..self.counts
            },
            open_until_ms: self.published_at_ms.saturating_add(self.open_for_ms),
            trips_in_row: self.trips_in_row,
            probe: None,
        })
    }

    /// The adopting Envoy's log line, naming the member that decided:
    /// `[CIRCUIT_BREAKER] school circuit breaker OPENED by gateway-2: 5 consecutive failures, open for 30s`,
    /// or for an open by quorum the members whose votes made it (`voters`; the publisher
    /// when none is known):
    /// `[CIRCUIT_BREAKER] school circuit breaker OPENED in the fleet: votes from gateway-1, gateway-2; open for 30s`.
    pub fn log_line(&self, breaker: &str, from: State, voters: &[String]) -> String {
        if self.cause == FleetCause::QuorumReached {
            let names = if voters.is_empty() {
                self.member.clone()
            } else {
                voters.join(", ")
            };
            let open = match self.open_for_ms {
                u64::MAX => String::new(),
                ms => format!("; open for {}", crate::core::duration::Millis(ms)),
            };
            return format!(
                "[CIRCUIT_BREAKER] {breaker} circuit breaker OPENED in the fleet: votes from {names}{open}"
            );
        }
        let said = match self.transition(from) {
            Some(t) => t.to_string(),
            None => format!(
                "MODE: set to {}",
                self.mode_override
                    .map_or("the configured mode", Mode::as_str)
            ),
        };
        let (verb, rest) = said.split_once(": ").unwrap_or((said.as_str(), ""));
        format!(
            "[CIRCUIT_BREAKER] {breaker} circuit breaker {verb} by {}: {rest}",
            self.member
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        let member = truncated(&self.member);
        let mut out = Vec::with_capacity(FIXED_LEN + member.len());
        out.push(MAGIC);
        out.push(VERSION);
        out.push(self.state.code());
        out.push(TripReason::code_of(self.reason));
        out.push(self.cause.code());
        out.push(Mode::code_of(self.mode_override));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.published_at_ms.to_le_bytes());
        out.extend_from_slice(&self.open_for_ms.to_le_bytes());
        let c = &self.counts;
        for v in [
            self.trips_in_row,
            self.probe_successes,
            c.consecutive_failures,
            c.calls,
            c.failures,
            c.slow,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(member.len() as u8);
        out.extend_from_slice(member.as_bytes());
        out
    }

    /// Reads a record, refusing anything this build did not write or could not have.
    pub fn decode(bytes: &[u8]) -> Result<FleetRecord, RecordError> {
        let short = || RecordError::Length(bytes.len());
        if !(FIXED_LEN + 1..=MAX_RECORD_BYTES).contains(&bytes.len()) {
            return Err(short());
        }
        let mut rd = Reader::new(bytes);
        let codes = rd.array::<8>().ok_or_else(short)?;
        let mut record = numbers(&mut rd).ok_or_else(short)?;
        record.read_codes(codes)?;
        let n = usize::from(rd.u8().ok_or_else(short)?);
        if n == 0 || n > MAX_MEMBER_BYTES || bytes.len() != FIXED_LEN + n {
            return Err(short());
        }
        record.member = std::str::from_utf8(rd.rest())
            .ok()
            .filter(|m| valid_member(m))
            .ok_or(RecordError::Member)?
            .to_string();
        Ok(record)
    }

    /// Takes the record's first eight bytes (magic, version, state, reason, cause, mode
    /// override, flags), each checked alone and against the others.
    fn read_codes(&mut self, codes: [u8; 8]) -> Result<(), RecordError> {
        let [magic, version, state, reason, cause, mode, flags_low, flags_high] = codes;
        if magic != MAGIC {
            return Err(RecordError::Magic(magic));
        }
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let field = |name, v: u8| RecordError::Field(name, u64::from(v));
        self.state = State::from_code(state).ok_or(field("state", state))?;
        self.reason = TripReason::from_code(reason).ok_or(field("reason", reason))?;
        self.cause = FleetCause::from_code(cause).ok_or(field("cause", cause))?;
        self.mode_override = Mode::from_code(mode).ok_or(field("mode_override", mode))?;
        if [flags_low, flags_high] != [0, 0] {
            return Err(field("flags", flags_low | flags_high));
        }
        if self.cause.state().is_some_and(|s| s != self.state) {
            return Err(field("cause", cause));
        }
        // Open always says why; closed never does.
        match (self.state, self.reason) {
            (State::Open, None) | (State::Closed, Some(_)) => Err(field("reason", reason)),
            _ => Ok(()),
        }
    }
}

/// The fixed-width numbers after the codes, in stored order; the codes and the member are
/// read apart.
fn numbers(rd: &mut Reader) -> Option<FleetRecord> {
    Some(FleetRecord {
        generation: rd.u32()?,
        published_at_ms: rd.u64()?,
        open_for_ms: rd.u64()?,
        trips_in_row: rd.u32()?,
        probe_successes: rd.u32()?,
        counts: Counts {
            consecutive_failures: rd.u32()?,
            calls: rd.u32()?,
            failures: rd.u32()?,
            slow: rd.u32()?,
            probe_successes: 0,
        },
        state: State::Closed,
        reason: None,
        cause: FleetCause::Reset,
        mode_override: None,
        member: String::new(),
    })
}

/// The open time a transition set, measured from its own instant.
fn open_for(t: &Transition) -> u64 {
    match t.to {
        State::Open if t.open_until_ms == u64::MAX => u64::MAX,
        State::Open => t.open_until_ms.saturating_sub(t.at_ms),
        _ => 0,
    }
}

/// The member name cut to [`MAX_MEMBER_BYTES`] bytes on a character boundary; callers check
/// names at configuration, this only keeps a record from ever being unreadable.
fn truncated(name: &str) -> &str {
    let mut end = name.len().min(MAX_MEMBER_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::settings::Settings;
    use crate::core::state::Record;
    use proptest::prelude::*;

    pub(crate) fn open_record(generation: u32, member: &str) -> FleetRecord {
        FleetRecord {
            state: State::Open,
            reason: Some(TripReason::ConsecutiveFailures),
            cause: FleetCause::Tripped,
            mode_override: None,
            generation,
            published_at_ms: 1_000,
            open_for_ms: 30_000,
            trips_in_row: 1,
            probe_successes: 0,
            counts: Counts {
                consecutive_failures: 5,
                ..Counts::default()
            },
            member: member.to_string(),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = open_record(7, "gateway-2");
        let bytes = r.encode();
        assert_eq!(bytes.len(), 53 + 9);
        assert_eq!(FleetRecord::decode(&bytes), Ok(r));
    }

    #[test]
    fn the_adopters_log_line_names_the_member() {
        let r = open_record(7, "gateway-2");
        assert_eq!(
            r.log_line("school", State::Closed, &[]),
            "[CIRCUIT_BREAKER] school circuit breaker OPENED by gateway-2: 5 consecutive failures, open for 30s"
        );
        let quorum = FleetRecord {
            cause: FleetCause::QuorumReached,
            ..r.clone()
        };
        assert_eq!(
            quorum.log_line("school", State::Open, &["gateway-1".into(), "gateway-2".into()]),
            "[CIRCUIT_BREAKER] school circuit breaker OPENED in the fleet: votes from gateway-1, gateway-2; open for 30s"
        );
        assert!(quorum
            .log_line("school", State::Closed, &[])
            .ends_with("OPENED in the fleet: votes from gateway-2; open for 30s"));
        let back = FleetRecord::decode(&quorum.encode()).unwrap();
        assert_eq!(back, quorum);
        assert_eq!(
            back.transition(State::Closed).map(|t| t.cause),
            Some(Cause::Tripped(TripReason::ConsecutiveFailures))
        );
        let mode = FleetRecord {
            state: State::Closed,
            reason: None,
            cause: FleetCause::ModeChanged,
            mode_override: Some(Mode::DryRun),
            ..open_record(8, "gateway-1")
        };
        assert_eq!(
            mode.log_line("auth", State::Closed, &[]),
            "[CIRCUIT_BREAKER] auth circuit breaker MODE by gateway-1: set to dry_run"
        );
    }

    #[test]
    fn a_transition_becomes_a_record_with_its_open_time_as_a_duration() {
        let s = Settings::default();
        let mut local = Record {
            consecutive_failures: 5,
            ..Record::default()
        };
        let t = local.transition(Cause::Tripped(TripReason::ConsecutiveFailures), &s, 5_000);
        let r = FleetRecord::of_transition(&t, None, 3, "gw", 1_700_000_000_000, local.reason);
        assert_eq!(r.open_for_ms, 5_000);
        assert_eq!(r.counts.consecutive_failures, 5);
        let back = r.transition(State::Closed).unwrap();
        assert_eq!(back.to_string(), t.to_string());
        let forced = local.transition(Cause::Forced, &s, 6_000);
        let r = FleetRecord::of_transition(&forced, None, 4, "gw", 0, local.reason);
        assert_eq!(r.open_for_ms, u64::MAX);
    }

    #[test]
    fn a_close_by_recovery_tells_the_adopters_how_many_probes_made_it() {
        let s = Settings::default();
        let mut local = Record {
            state: State::HalfOpen,
            probe_successes: 3,
            ..Record::default()
        };
        let t = local.transition(Cause::Recovered, &s, 5_000);
        let r = FleetRecord::of_transition(&t, None, 7, "gw-2", 5_000, local.reason);
        let stored = FleetRecord::decode(&r.encode()).unwrap();
        let line = stored.log_line("school", State::HalfOpen, &[]);
        assert!(
            line.ends_with("CLOSED by gw-2: recovery successful after 3 successful probes"),
            "{line}"
        );
    }

    #[test]
    fn records_from_another_build_or_damaged_are_refused() {
        let good = open_record(1, "m").encode();
        let mut bad = good.clone();
        bad[0] = 0xCB;
        assert_eq!(FleetRecord::decode(&bad), Err(RecordError::Magic(0xCB)));
        let mut bad = good.clone();
        bad[1] = 2;
        assert_eq!(FleetRecord::decode(&bad), Err(RecordError::Version(2)));
        let mut bad = good.clone();
        bad[6] = 1;
        assert!(FleetRecord::decode(&bad).is_err(), "unknown flags");
        let mut bad = good.clone();
        bad[4] = 6; // recovered, but the state says open
        assert!(FleetRecord::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[4] = 10; // no such cause
        assert!(FleetRecord::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[3] = 0; // open without a reason
        assert!(FleetRecord::decode(&bad).is_err());
        let mut bad = good.clone();
        bad.push(b'x'); // the name length no longer matches
        assert!(FleetRecord::decode(&bad).is_err());
        let mut bad = good.clone();
        *bad.last_mut().unwrap() = b'\n';
        assert_eq!(FleetRecord::decode(&bad), Err(RecordError::Member));
        assert_eq!(
            FleetRecord::decode(&vec![0xF1; 4096]),
            Err(RecordError::Length(4096))
        );
    }

    #[test]
    fn an_overlong_member_name_is_cut_not_made_unreadable() {
        let r = open_record(1, &"é".repeat(40));
        let back = FleetRecord::decode(&r.encode()).unwrap();
        assert_eq!(back.member, "é".repeat(32));
    }

    fn any_record() -> impl Strategy<Value = FleetRecord> {
        (
            0usize..3,
            0u8..8,
            0u8..5,
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<[u32; 6]>(),
            "[a-z0-9-]{1,64}",
        )
            .prop_map(|(s, r, m, generation, at, open, n, member)| {
                let state = State::ALL[s];
                let reason = match state {
                    State::Closed => None,
                    State::Open => Some(TripReason::ALL[usize::from(r) % 7]),
                    State::HalfOpen => TripReason::from_code(r).flatten(),
                };
                FleetRecord {
                    state,
                    reason,
                    cause: match state {
                        State::Closed => FleetCause::Reset,
                        State::Open => FleetCause::Tripped,
                        State::HalfOpen => FleetCause::OpenElapsed,
                    },
                    mode_override: m.checked_sub(1).map(|i| Mode::ALL[usize::from(i)]),
                    generation,
                    published_at_ms: at,
                    open_for_ms: open,
                    trips_in_row: n[0],
                    probe_successes: n[1],
                    counts: Counts {
                        consecutive_failures: n[2],
                        calls: n[3],
                        failures: n[4],
                        slow: n[5],
                        probe_successes: 0,
                    },
                    member,
                }
            })
    }

    proptest! {
        #[test]
        fn every_record_round_trips(r in any_record()) {
            let bytes = r.encode();
            prop_assert!(bytes.len() <= MAX_RECORD_BYTES);
            prop_assert_eq!(FleetRecord::decode(&bytes), Ok(r));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FleetRecord::decode(&bytes);
        }

        #[test]
        fn damaged_records_never_panic(r in any_record(), at in 0usize..128, to in any::<u8>()) {
            let mut bytes = r.encode();
            let at = at % bytes.len();
            bytes[at] = to;
            if let Ok(back) = FleetRecord::decode(&bytes) {
                prop_assert_eq!(back.encode(), bytes);
            }
        }
    }
}
