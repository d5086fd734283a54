//! The byte form of a [`Record`] in shared data: fixed layout, little-endian, with a magic
//! byte and a version so that bytes from another build, or damaged bytes, are recognised
//! and replaced by a fresh closed breaker instead of being misread.

use std::fmt;

use super::state::{Record, State, TripReason};
use super::window::{Bucket, Window, BUCKETS};

const MAGIC: u8 = 0xCB;
const VERSION: u8 = 1;
/// Size of an encoded record.
pub const ENCODED_LEN: usize = 52 + BUCKETS * 8;

/// Why stored bytes could not be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Length(usize),
    Magic(u8),
    Version(u8),
    Field(&'static str, u64),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length(n) => write!(f, "{n} bytes where {ENCODED_LEN} were expected"),
            DecodeError::Magic(m) => write!(f, "magic byte {m:#04x} is not {MAGIC:#04x}"),
            DecodeError::Version(v) => write!(f, "format version {v} is not {VERSION}"),
            DecodeError::Field(name, v) => write!(f, "field {name} holds impossible value {v}"),
        }
    }
}

/// Encodes a record into its fixed-size byte form.
pub fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENCODED_LEN);
    out.push(MAGIC);
    out.push(VERSION);
    out.push(match r.state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    });
    out.push(match r.reason {
        None => 0,
        Some(TripReason::ConsecutiveFailures) => 1,
        Some(TripReason::FailureRate) => 2,
        Some(TripReason::ProbeFailed) => 3,
    });
    out.extend_from_slice(&r.generation.to_le_bytes());
    out.extend_from_slice(&r.changed_at_ms.to_le_bytes());
    out.extend_from_slice(&r.open_until_ms.to_le_bytes());
    out.extend_from_slice(&r.consecutive_failures.to_le_bytes());
    out.extend_from_slice(&r.probes_in_flight.to_le_bytes());
    out.extend_from_slice(&r.probe_successes.to_le_bytes());
    out.extend_from_slice(&r.window.width_ms.to_le_bytes());
    out.extend_from_slice(&r.window.head.to_le_bytes());
    for b in &r.window.buckets {
        out.extend_from_slice(&b.successes.to_le_bytes());
        out.extend_from_slice(&b.failures.to_le_bytes());
    }
    out
}

/// Reads a record back, refusing anything that is not exactly what [`encode`] writes.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() != ENCODED_LEN {
        return Err(DecodeError::Length(bytes.len()));
    }
    let mut rd = Reader { bytes, at: 0 };
    let magic = rd.u8();
    if magic != MAGIC {
        return Err(DecodeError::Magic(magic));
    }
    let version = rd.u8();
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let state = match rd.u8() {
        0 => State::Closed,
        1 => State::Open,
        2 => State::HalfOpen,
        v => return Err(DecodeError::Field("state", v.into())),
    };
    let reason = match rd.u8() {
        0 => None,
        1 => Some(TripReason::ConsecutiveFailures),
        2 => Some(TripReason::FailureRate),
        3 => Some(TripReason::ProbeFailed),
        v => return Err(DecodeError::Field("reason", v.into())),
    };
    let mut r = Record {
        state,
        reason,
        generation: rd.u32(),
        changed_at_ms: rd.u64(),
        open_until_ms: rd.u64(),
        consecutive_failures: rd.u32(),
        probes_in_flight: rd.u32(),
        probe_successes: rd.u32(),
        window: Window::default(),
    };
    r.window.width_ms = rd.u64();
    r.window.head = rd.u64();
    for b in r.window.buckets.iter_mut() {
        *b = Bucket {
            successes: rd.u32(),
            failures: rd.u32(),
        };
    }
    Ok(r)
}

/// Reads fixed-width fields; the caller has checked the total length up front.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.bytes.get(self.at..self.at + N) {
            out.copy_from_slice(src);
        }
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = State> {
        prop_oneof![
            Just(State::Closed),
            Just(State::Open),
            Just(State::HalfOpen)
        ]
    }

    fn reason() -> impl Strategy<Value = Option<TripReason>> {
        prop_oneof![
            Just(None),
            Just(Some(TripReason::ConsecutiveFailures)),
            Just(Some(TripReason::FailureRate)),
            Just(Some(TripReason::ProbeFailed)),
        ]
    }

    prop_compose! {
        fn any_record()(
            state in state(), reason in reason(), generation: u32, changed_at_ms: u64,
            open_until_ms: u64, consecutive_failures: u32, probes_in_flight: u32,
            probe_successes: u32, width_ms: u64, head: u64,
            counts in proptest::array::uniform10((any::<u32>(), any::<u32>())),
        ) -> Record {
            let mut window = Window { width_ms, head, ..Window::default() };
            for (b, (successes, failures)) in window.buckets.iter_mut().zip(counts) {
                *b = Bucket { successes, failures };
            }
            Record { state, reason, generation, changed_at_ms, open_until_ms,
                consecutive_failures, probes_in_flight, probe_successes, window }
        }
    }

    proptest! {
        #[test]
        fn encoding_round_trips(r in any_record()) {
            let bytes = encode(&r);
            prop_assert_eq!(bytes.len(), ENCODED_LEN);
            prop_assert_eq!(decode(&bytes), Ok(r));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn truncated_records_are_refused(r in any_record(), cut in 0usize..ENCODED_LEN) {
            prop_assert_eq!(decode(&encode(&r)[..cut]), Err(DecodeError::Length(cut)));
        }
    }

    #[test]
    fn foreign_bytes_are_refused_by_name() {
        let mut bytes = encode(&Record::default());
        bytes[0] = 0;
        assert_eq!(decode(&bytes), Err(DecodeError::Magic(0)));
        let mut bytes = encode(&Record::default());
        bytes[1] = 9;
        assert_eq!(decode(&bytes), Err(DecodeError::Version(9)));
        let mut bytes = encode(&Record::default());
        bytes[2] = 7;
        assert_eq!(decode(&bytes), Err(DecodeError::Field("state", 7)));
    }
}
