//! A breaker's last fifteen minutes in 10 s buckets (calls by outcome, refusals, probes and
//! the states it was in), kept in the state store so every worker, every view and a
//! reloaded VM read the same. Workers add what they counted on their timer, never per
//! request; a bucket nobody wrote to is a quiet one, so an idle breaker costs nothing.

use serde_json::{json, Value};

use super::bytes::Reader;
use super::duration::rfc3339;
use super::history::Event;
use super::limits::{TIMELINE_BUCKETS, TIMELINE_BUCKET_MS};
use super::state::State;

/// Format byte at the front of the stored timeline.
const VERSION: u8 = 1;
/// Bytes of one stored bucket: its number, five counts and the states byte.
const BUCKET_BYTES: usize = 4 + 5 * 4 + 1;
/// Largest stored timeline: 2,251 bytes, within the 4 KiB a breaker may keep.
pub const MAX_BYTES: usize = 1 + TIMELINE_BUCKETS * BUCKET_BYTES;
const _: () = assert!(MAX_BYTES <= 4_096);

/// The traffic one worker counted since its last report, added to the current bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub successes: u32,
    pub failures: u32,
    pub slow: u32,
    pub refusals: u32,
    pub probes: u32,
}

impl Traffic {
    pub fn is_empty(&self) -> bool {
        *self == Traffic::default()
    }

    /// Adds another tally to this one.
    pub fn absorb(&mut self, other: &Traffic) {
        self.successes = self.successes.saturating_add(other.successes);
        self.failures = self.failures.saturating_add(other.failures);
        self.slow = self.slow.saturating_add(other.slow);
        self.refusals = self.refusals.saturating_add(other.refusals);
        self.probes = self.probes.saturating_add(other.probes);
    }
}

/// One 10 s bucket: the counts, the states it saw, and the state it ended in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// Which 10 s since the epoch.
    number: u32,
    tally: Traffic,
    /// Bit per state ([`State::code`]) seen in the bucket; the two high bits hold the code
    /// of the state it ended in, plus one (0: not known).
    states: u8,
}

impl Bucket {
    /// A bucket with nothing counted yet, in the state the one before it ended in.
    fn quiet(number: u32, carried: Option<State>) -> Bucket {
        let mut b = Bucket {
            number,
            ..Bucket::default()
        };
        if let Some(state) = carried {
            b.saw(state);
        }
        b
    }

    fn saw(&mut self, state: State) {
        self.states = (self.states & 0b0000_0111) | (1 << state.code()) | ((state.code() + 1) << 6);
    }

    fn last(&self) -> Option<State> {
        State::from_code((self.states >> 6).checked_sub(1)?)
    }

    fn seen(&self) -> Vec<State> {
        State::ALL
            .into_iter()
            .filter(|s| self.states & (1 << s.code()) != 0)
            .collect()
    }
}

/// The stored buckets, oldest first, none older than fifteen minutes before the newest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    buckets: Vec<Bucket>,
}

fn number_at(now_ms: u64) -> u32 {
    u32::try_from(now_ms / TIMELINE_BUCKET_MS).unwrap_or(u32::MAX)
}

impl Timeline {
    /// Adds what a worker counted by `now_ms`, with the state its copy shows.
    pub fn add(&mut self, now_ms: u64, tally: &Traffic, state: State) {
        let Some(b) = self.bucket(now_ms) else {
            return;
        };
        b.tally.absorb(tally);
        if b.last().is_none() {
            b.saw(state);
        }
    }

    /// Marks the state a transition at `at_ms` moved the breaker into.
    pub fn moved(&mut self, at_ms: u64, to: State) {
        if let Some(b) = self.bucket(at_ms) {
            b.saw(to);
        }
    }

    /// The bucket for `at_ms`, made if missing; buckets older than the window go. A clock
    /// that steps back counts into the newest bucket, so the list stays ordered and bounded.
    fn bucket(&mut self, at_ms: u64) -> Option<&mut Bucket> {
        let newest = self.buckets.last().map_or(0, |b| b.number);
        let number = number_at(at_ms).max(newest);
        let oldest = number.saturating_sub(TIMELINE_BUCKETS as u32 - 1);
        self.buckets.retain(|b| b.number >= oldest);
        if self.buckets.last().map(|b| b.number) != Some(number) {
            let carried = self.buckets.last().and_then(Bucket::last);
            self.buckets.push(Bucket::quiet(number, carried));
        }
        self.buckets.last_mut()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.buckets.len() * BUCKET_BYTES);
        out.push(VERSION);
        for b in &self.buckets {
            out.extend_from_slice(&b.number.to_le_bytes());
            let t = &b.tally;
            for n in [t.successes, t.failures, t.slow, t.refusals, t.probes] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.push(b.states);
        }
        out
    }

    /// The stored timeline; `None` for bytes this version did not write (damaged, another
    /// format, too long, buckets out of order).
    pub fn decode(bytes: &[u8]) -> Option<Timeline> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() % BUCKET_BYTES != 0 || bytes.len() > MAX_BYTES {
            return None;
        }
        let mut r = Reader::new(rest);
        let mut buckets: Vec<Bucket> = Vec::with_capacity(rest.len() / BUCKET_BYTES);
        while !r.is_done() {
            let number = r.u32()?;
            let tally = Traffic {
                successes: r.u32()?,
                failures: r.u32()?,
                slow: r.u32()?,
                refusals: r.u32()?,
                probes: r.u32()?,
            };
            let states = r.u8()?;
            if buckets.last().is_some_and(|b| b.number >= number) {
                return None;
            }
            buckets.push(Bucket {
                number,
                tally,
                states,
            });
        }
        Some(Timeline { buckets })
    }

    /// The stored timeline with a change made; bytes it cannot read start a fresh one.
    pub fn with(stored: &[u8], change: impl FnOnce(&mut Timeline)) -> Vec<u8> {
        let mut timeline = Timeline::decode(stored).unwrap_or_default();
        change(&mut timeline);
        timeline.encode()
    }

    /// The fifteen minutes up to `now_ms` as the control API shows them: every bucket,
    /// oldest first, a quiet one with the state the one before it ended in.
    pub fn view(&self, now_ms: u64) -> Vec<Value> {
        let newest = number_at(now_ms);
        let oldest = newest.saturating_sub(TIMELINE_BUCKETS as u32 - 1);
        let mut stored = self.buckets.iter().peekable();
        let mut state = None;
        (oldest..=newest)
            .map(|number| {
                while stored.peek().is_some_and(|b| b.number < number) {
                    state = stored.next().and_then(Bucket::last).or(state);
                }
                let bucket = match stored.peek() {
                    Some(b) if b.number == number => stored.next().copied(),
                    _ => None,
                };
                let b = bucket.unwrap_or_else(|| Bucket::quiet(number, state));
                state = b.last().or(state);
                bucket_json(&b)
            })
            .collect()
    }
}

/// The control API's answer for one breaker's history: the stored timeline (none, or
/// bytes it cannot read: an empty one) and the kept transitions, as of `now_ms`.
pub fn answer(name: &str, stored: Option<&[u8]>, transitions: &[Event], now_ms: u64) -> Value {
    let timeline = stored.and_then(Timeline::decode).unwrap_or_default();
    json!({
        "name": name,
        "bucket_seconds": TIMELINE_BUCKET_MS / 1_000,
        "now": rfc3339(now_ms),
        "now_ms": now_ms,
        "buckets": timeline.view(now_ms),
        "transitions": transitions,
    })
}

fn bucket_json(b: &Bucket) -> Value {
    let start_ms = u64::from(b.number) * TIMELINE_BUCKET_MS;
    let t = &b.tally;
    let calls = t
        .successes
        .saturating_add(t.failures)
        .saturating_add(t.slow);
    json!({
        "start": rfc3339(start_ms),
        "start_ms": start_ms,
        "calls": calls,
        "successes": t.successes,
        "failures": t.failures,
        "slow": t.slow,
        "refusals": t.refusals,
        "probes": t.probes,
        "state": b.last().map(State::as_str),
        "states": b.seen().into_iter().map(State::as_str).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_796_000_000_000;

    fn failures(n: u32) -> Traffic {
        Traffic {
            failures: n,
            ..Traffic::default()
        }
    }

    #[test]
    fn counts_add_up_in_their_bucket_and_quiet_buckets_read_empty() {
        let mut t = Timeline::default();
        t.add(T0, &failures(2), State::Closed);
        t.add(T0 + 3_000, &failures(3), State::Closed);
        t.add(
            T0 + 25_000,
            &Traffic {
                successes: 4,
                ..Traffic::default()
            },
            State::Closed,
        );
        let view = t.view(T0 + 25_000);
        assert_eq!(view.len(), TIMELINE_BUCKETS);
        let last = &view[TIMELINE_BUCKETS - 1];
        assert_eq!(
            (last["successes"].as_u64(), last["calls"].as_u64()),
            (Some(4), Some(4))
        );
        let quiet = &view[TIMELINE_BUCKETS - 2];
        assert_eq!(quiet["calls"], 0);
        assert_eq!(
            quiet["state"], "closed",
            "a quiet bucket carries the state on"
        );
        let first = &view[TIMELINE_BUCKETS - 3];
        assert_eq!(first["failures"], 5);
        assert_eq!(view[0]["state"], Value::Null, "before anything was stored");
    }

    #[test]
    fn a_trip_and_recovery_show_every_state_in_order() {
        let mut t = Timeline::default();
        t.add(T0, &failures(5), State::Closed);
        t.moved(T0 + 1_000, State::Open);
        t.add(
            T0 + 2_000,
            &Traffic {
                refusals: 7,
                ..Traffic::default()
            },
            State::Open,
        );
        t.moved(T0 + 12_000, State::HalfOpen);
        t.moved(T0 + 13_000, State::Closed);
        let view = t.view(T0 + 40_000);
        let n = TIMELINE_BUCKETS;
        let states = |i: usize| view[i]["states"].clone();
        assert_eq!(states(n - 5), json!(["closed", "open"]));
        assert_eq!(view[n - 5]["state"], "open");
        assert_eq!(view[n - 5]["refusals"], 7);
        assert_eq!(states(n - 4), json!(["closed", "open", "half_open"]));
        assert_eq!(view[n - 4]["state"], "closed");
        assert_eq!(view[n - 1]["state"], "closed");
    }

    #[test]
    fn it_keeps_fifteen_minutes_within_its_bound() {
        let mut t = Timeline::default();
        for i in 0..1_000u64 {
            t.add(
                T0 + i * TIMELINE_BUCKET_MS,
                &failures(u32::MAX),
                State::Open,
            );
            t.add(
                T0 + i * TIMELINE_BUCKET_MS,
                &failures(u32::MAX),
                State::Open,
            );
        }
        let bytes = t.encode();
        assert_eq!(bytes.len(), MAX_BYTES);
        let back = Timeline::decode(&bytes).unwrap();
        assert_eq!(back, t);
        let view = back.view(T0 + 999 * TIMELINE_BUCKET_MS);
        assert!(view.iter().all(|b| b["failures"] == u32::MAX));
    }

    #[test]
    fn a_clock_that_steps_back_neither_grows_nor_reorders_it() {
        let mut t = Timeline::default();
        for i in 0..TIMELINE_BUCKETS as u64 {
            t.add(T0 + i * TIMELINE_BUCKET_MS, &failures(1), State::Closed);
        }
        t.add(T0 - 5 * TIMELINE_BUCKET_MS, &failures(1), State::Closed);
        let bytes = t.encode();
        assert!(bytes.len() <= MAX_BYTES);
        assert!(Timeline::decode(&bytes).is_some());
    }

    #[test]
    fn bytes_it_did_not_write_are_refused_not_trusted() {
        let good = Timeline::with(b"", |t| t.add(T0, &failures(1), State::Closed));
        assert!(Timeline::decode(&good).is_some());
        for bad in [
            &b""[..],
            &[2u8][..],
            &good[..good.len() - 1],
            &[good.clone(), good[1..].to_vec()].concat()[..],
            &vec![VERSION; MAX_BYTES + BUCKET_BYTES][..],
        ] {
            assert_eq!(Timeline::decode(bad), None, "{bad:?}");
        }
        let fresh = Timeline::with(b"\xffjunk", |t| t.add(T0, &failures(1), State::Closed));
        assert_eq!(fresh, good);
    }
}
