//! The byte form of a [`Record`] in shared data: little-endian, with a magic byte and a
//! version so that bytes from another build, or damaged bytes, are recognised and replaced
//! by a fresh closed breaker instead of being misread. Every field is checked on the way in.
//! Version 3 appends the hosts after the window; a version 2 record (an older build's,
//! met during an upgrade) still reads, with no hosts.

mod hosts;

use std::fmt;

use super::bytes::Reader;
use super::settings::Mode;
use super::state::{Record, State, TripReason};
use super::window::{cells_bytes, Bucket, CountWindow, TimeWindow, Window, BUCKETS, MAX_CALLS};

const MAGIC: u8 = 0xCB;
const VERSION: u8 = 3;
/// The version before the hosts, still read.
const VERSION_NO_HOSTS: u8 = 2;
const HEADER_LEN: usize = 53;
const TIME_LEN: usize = 16 + BUCKETS * 12;
const COUNT_FIXED_LEN: usize = 24;

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
            DecodeError::Length(n) => write!(f, "{n} bytes do not make a whole record"),
            DecodeError::Magic(m) => write!(f, "magic byte {m:#04x} is not {MAGIC:#04x}"),
            DecodeError::Version(v) => write!(f, "format version {v} is not {VERSION}"),
            DecodeError::Field(name, v) => write!(f, "field {name} holds impossible value {v}"),
        }
    }
}

/// Encodes a record.
pub fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + TIME_LEN);
    out.push(MAGIC);
    out.push(VERSION);
    out.push(r.state.code());
    out.push(TripReason::code_of(r.reason));
    out.push(Mode::code_of(r.mode_override));
    out.push(u8::from(r.ramping));
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&r.generation.to_le_bytes());
    out.extend_from_slice(&r.changed_at_ms.to_le_bytes());
    out.extend_from_slice(&r.open_until_ms.to_le_bytes());
    out.extend_from_slice(&r.probing_since_ms.to_le_bytes());
    for v in [
        r.consecutive_failures,
        r.probes_in_flight,
        r.probe_successes,
        r.trips_in_row,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    match &r.window {
        Window::Time(w) => {
            out.push(0);
            out.extend_from_slice(&w.width_ms.to_le_bytes());
            out.extend_from_slice(&w.head.to_le_bytes());
            for b in &w.buckets {
                put_bucket(&mut out, b);
            }
        }
        Window::Count(w) => {
            out.push(1);
            for v in [w.size, w.len, w.next] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            put_bucket(&mut out, &w.totals);
            out.extend_from_slice(&w.cells);
        }
    }
    hosts::put(&mut out, &r.hosts);
    out
}

fn put_bucket(out: &mut Vec<u8>, b: &Bucket) {
    for v in [b.successes, b.failures, b.slow] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The fields the request path needs, read from the front of a record without decoding
/// its window: admitting a request to a closed breaker looks at nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordHeader {
    pub state: State,
    pub generation: u32,
    pub consecutive_failures: u32,
    pub ramping: bool,
    pub mode_override: Option<Mode>,
    pub reason: Option<TripReason>,
    pub open_until_ms: u64,
}

impl RecordHeader {
    pub fn of(r: &Record) -> RecordHeader {
        RecordHeader {
            state: r.state,
            generation: r.generation,
            consecutive_failures: r.consecutive_failures,
            ramping: r.ramping,
            mode_override: r.mode_override,
            reason: r.reason,
            open_until_ms: r.open_until_ms,
        }
    }
}

/// Reads the [`RecordHeader`] of stored bytes; `None` for anything [`decode`] would refuse in the
/// header (the full decode on the write path deals with it).
pub fn glance(bytes: &[u8]) -> Option<RecordHeader> {
    if bytes.len() < HEADER_LEN + 1
        || bytes[0] != MAGIC
        || !(VERSION_NO_HOSTS..=VERSION).contains(&bytes[1])
        || bytes[5] > 1
        || bytes[6..8] != [0, 0]
    {
        return None;
    }
    let state = State::from_code(bytes[2])?;
    let mode_override = Mode::from_code(bytes[4])?;
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    Some(RecordHeader {
        state,
        generation: u32_at(8)?,
        consecutive_failures: u32_at(36)?,
        ramping: bytes[5] == 1,
        mode_override,
        reason: TripReason::from_code(bytes[3])?,
        open_until_ms: u64_at(20)?,
    })
}

/// Reads a record back, refusing anything [`encode`] would not have written.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let short = || DecodeError::Length(bytes.len());
    if bytes.len() < HEADER_LEN + 1 {
        return Err(short());
    }
    let mut rd = Reader::new(bytes);
    let [magic, version, state, reason, mode, flags, pad_low, pad_high] =
        rd.array().ok_or_else(short)?;
    if magic != MAGIC {
        return Err(DecodeError::Magic(magic));
    }
    if !(VERSION_NO_HOSTS..=VERSION).contains(&version) {
        return Err(DecodeError::Version(version));
    }
    let field = |name, v: u8| DecodeError::Field(name, v.into());
    let state = State::from_code(state).ok_or(field("state", state))?;
    let reason = TripReason::from_code(reason).ok_or(field("reason", reason))?;
    let mode_override = Mode::from_code(mode).ok_or(field("mode", mode))?;
    if flags > 1 {
        return Err(field("flags", flags));
    }
    if [pad_low, pad_high] != [0, 0] {
        return Err(DecodeError::Field(
            "padding",
            u64::from(pad_low) | u64::from(pad_high) << 8,
        ));
    }
    let mut r = Record {
        state,
        reason,
        mode_override,
        ramping: flags == 1,
        ..counters(&mut rd).ok_or_else(short)?
    };
    r.window = match rd.u8().ok_or_else(short)? {
        0 => decode_time(bytes.len(), &mut rd)?,
        1 => decode_count(bytes.len(), &mut rd)?,
        tag => return Err(DecodeError::Field("window", tag.into())),
    };
    if version == VERSION {
        r.hosts = hosts::decode(bytes.len(), &mut rd)?;
    }
    if !rd.is_done() {
        return Err(short());
    }
    Ok(r)
}

/// The header's times and counters, in stored order, on a default record.
fn counters(rd: &mut Reader) -> Option<Record> {
    Some(Record {
        generation: rd.u32()?,
        changed_at_ms: rd.u64()?,
        open_until_ms: rd.u64()?,
        probing_since_ms: rd.u64()?,
        consecutive_failures: rd.u32()?,
        probes_in_flight: rd.u32()?,
        probe_successes: rd.u32()?,
        trips_in_row: rd.u32()?,
        ..Record::default()
    })
}

fn decode_time(total: usize, rd: &mut Reader) -> Result<Window, DecodeError> {
    let short = || DecodeError::Length(total);
    if total < HEADER_LEN + TIME_LEN {
        return Err(short());
    }
    let mut w = TimeWindow {
        width_ms: rd.u64().ok_or_else(short)?,
        head: rd.u64().ok_or_else(short)?,
        ..TimeWindow::default()
    };
    for b in w.buckets.iter_mut() {
        *b = bucket(rd).ok_or_else(short)?;
    }
    Ok(Window::Time(w))
}

fn decode_count(total: usize, rd: &mut Reader) -> Result<Window, DecodeError> {
    let short = || DecodeError::Length(total);
    if total < HEADER_LEN + COUNT_FIXED_LEN {
        return Err(short());
    }
    let size = rd.u32().ok_or_else(short)?;
    let len = rd.u32().ok_or_else(short)?;
    let next = rd.u32().ok_or_else(short)?;
    let totals = bucket(rd).ok_or_else(short)?;
    if !(1..=MAX_CALLS).contains(&size) {
        return Err(DecodeError::Field("window.size", size.into()));
    }
    if len > size || next >= size {
        return Err(DecodeError::Field("window.len", len.into()));
    }
    let w = CountWindow {
        size,
        len,
        next,
        cells: rd.take(cells_bytes(size)).ok_or_else(short)?.to_vec(),
        totals,
    };
    if w.recount() != totals {
        return Err(DecodeError::Field("window.totals", totals.calls().into()));
    }
    Ok(Window::Count(w))
}

fn bucket(rd: &mut Reader) -> Option<Bucket> {
    Some(Bucket {
        successes: rd.u32()?,
        failures: rd.u32()?,
        slow: rd.u32()?,
    })
}

#[cfg(test)]
mod tests {
    use super::hosts::{HOSTS_FIXED_LEN, HOST_FIXED_LEN};
    use super::*;
    use crate::core::hosts::{Address, Host, Hosts, MAX_HOSTS};
    use crate::core::window::WindowSpec;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = State> {
        prop_oneof![
            Just(State::Closed),
            Just(State::Open),
            Just(State::HalfOpen)
        ]
    }

    fn reason() -> impl Strategy<Value = Option<TripReason>> {
        (0usize..=TripReason::ALL.len()).prop_map(|i| i.checked_sub(1).map(|i| TripReason::ALL[i]))
    }

    fn mode() -> impl Strategy<Value = Option<Mode>> {
        (0usize..=4).prop_map(|i| i.checked_sub(1).map(|i| Mode::ALL[i]))
    }

    fn window() -> impl Strategy<Value = Window> {
        let bucket =
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(successes, failures, slow)| {
                Bucket {
                    successes,
                    failures,
                    slow,
                }
            });
        let time = (
            any::<u64>(),
            any::<u64>(),
            proptest::array::uniform10(bucket),
        )
            .prop_map(|(width_ms, head, buckets)| {
                Window::Time(TimeWindow {
                    width_ms,
                    head,
                    buckets,
                })
            });
        let count = (
            1u32..=MAX_CALLS,
            proptest::collection::vec((any::<bool>(), any::<bool>()), 0..300),
        )
            .prop_map(|(size, calls)| {
                let spec = WindowSpec::Count { size };
                let mut w = Window::Count(CountWindow::new(size));
                for (failed, slow) in calls {
                    w.add_call(failed, slow, 0, spec);
                }
                w
            });
        prop_oneof![time, count]
    }

    fn any_hosts() -> impl Strategy<Value = Hosts> {
        let mark = proptest::option::of(0u64..u64::MAX);
        let host = (
            proptest::option::of("[!-~]{1,80}"),
            any::<u64>(),
            mark.clone(),
            mark,
            any::<bool>(),
        );
        (
            proptest::collection::vec(host, 0..=MAX_HOSTS + 4),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(raw, confined, by_calls, calls, since_ms)| {
                let mut h = Hosts {
                    confined,
                    by_calls,
                    calls,
                    since_ms,
                    answers: raw.iter().map(|r| r.1).max().unwrap_or(0),
                    hosts: Vec::new(),
                };
                for (text, heard, failed, slow, in_streak) in raw {
                    let address = text.and_then(|t| Address::new(t.as_bytes()));
                    let unseen = !h.hosts.iter().any(|o: &Host| o.address == address);
                    let room = address.is_none()
                        || h.hosts.iter().filter(|o| o.address.is_some()).count() < MAX_HOSTS;
                    if unseen && room {
                        let heard = if address.is_some() { heard } else { 0 };
                        h.hosts.push(Host {
                            address,
                            heard,
                            failed,
                            slow,
                            in_streak,
                        });
                    }
                }
                h
            })
    }

    prop_compose! {
        fn any_record()(
            state in state(), reason in reason(), mode_override in mode(), ramping: bool,
            generation: u32, changed_at_ms: u64, open_until_ms: u64, probing_since_ms: u64,
            consecutive_failures: u32, probes_in_flight: u32, probe_successes: u32,
            trips_in_row: u32, window in window(), hosts in any_hosts(),
        ) -> Record {
            Record { state, reason, mode_override, ramping, generation, changed_at_ms,
                open_until_ms, probing_since_ms, consecutive_failures, probes_in_flight, probe_successes,
                trips_in_row, window, hosts }
        }
    }

    proptest! {
        #[test]
        fn encoding_round_trips(r in any_record()) {
            prop_assert_eq!(decode(&encode(&r)), Ok(r));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn truncated_records_are_refused(r in any_record(), cut in 0usize..1000) {
            let bytes = encode(&r);
            let cut = cut % bytes.len();
            prop_assert!(decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn a_glance_agrees_with_the_full_decode(r in any_record()) {
            prop_assert_eq!(glance(&encode(&r)), Some(RecordHeader::of(&r)));
        }

        #[test]
        fn glancing_at_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = glance(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(r in any_record(), at in any::<usize>(), bit in 0u8..8) {
            let mut bytes = encode(&r);
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = decode(&bytes);
        }
    }

    /// A version 2 record, as the build before the hosts wrote it: the same bytes
    /// without the hosts section.
    fn version_2(r: &Record) -> Vec<u8> {
        let mut bytes = encode(&Record {
            hosts: Hosts::default(),
            ..r.clone()
        });
        bytes[1] = 2;
        bytes.truncate(bytes.len() - HOSTS_FIXED_LEN);
        bytes
    }

    proptest! {
        #[test]
        fn a_record_from_the_build_before_the_hosts_still_reads(r in any_record()) {
            let old = version_2(&r);
            let expected = Record { hosts: Hosts::default(), ..r.clone() };
            prop_assert_eq!(decode(&old), Ok(expected));
            prop_assert_eq!(glance(&old), Some(RecordHeader::of(&r)));
        }
    }

    #[test]
    fn a_record_with_three_hosts_stays_small() {
        let mut r = Record::default();
        let spec = WindowSpec::Time { window_ms: 10_000 };
        for host in ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"] {
            r.hosts
                .record(Address::new(host.as_bytes()), true, false, 1, spec);
        }
        assert_eq!(
            encode(&r).len(),
            HEADER_LEN + TIME_LEN + HOSTS_FIXED_LEN + 3 * (HOST_FIXED_LEN + 15)
        );
        assert!(encode(&r).len() < 350, "{}", encode(&r).len());
    }

    #[test]
    fn impossible_hosts_are_refused_by_name() {
        let mut r = Record::default();
        let spec = WindowSpec::Time { window_ms: 10_000 };
        r.hosts.record(Address::new(b"a:1"), true, false, 1, spec);
        let good = encode(&r);
        let hosts_at = HEADER_LEN + TIME_LEN;
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            decode(&b)
        };
        assert_eq!(with(hosts_at, 9), Err(DecodeError::Field("hosts.flags", 9)));
        assert_eq!(
            with(hosts_at + 1, 99),
            Err(DecodeError::Field("hosts.count", 99))
        );
        let address_at = hosts_at + HOSTS_FIXED_LEN + 1;
        assert_eq!(
            with(address_at, b' '),
            Err(DecodeError::Field("hosts.address", 3))
        );
        let streak_at = good.len() - 1;
        assert_eq!(
            with(streak_at, 2),
            Err(DecodeError::Field("hosts.streak", 2))
        );
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Length(longer.len())));
    }

    #[test]
    fn foreign_bytes_are_refused_by_name() {
        let good = encode(&Record::default());
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            decode(&b)
        };
        assert_eq!(with(0, 0), Err(DecodeError::Magic(0)));
        assert_eq!(with(1, 9), Err(DecodeError::Version(9)));
        assert_eq!(with(2, 7), Err(DecodeError::Field("state", 7)));
        assert_eq!(with(3, 77), Err(DecodeError::Field("reason", 77)));
        assert_eq!(with(4, 9), Err(DecodeError::Field("mode", 9)));
    }

    #[test]
    fn a_count_window_whose_totals_disagree_is_refused() {
        let spec = WindowSpec::Count { size: 8 };
        let mut r = Record {
            window: Window::Count(CountWindow::new(8)),
            ..Record::default()
        };
        r.window.add_call(true, false, 0, spec);
        let mut bytes = encode(&r);
        let totals_at = HEADER_LEN + 12;
        bytes[totals_at + 4] = 5;
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Field("window.totals", _))
        ));
    }
}
