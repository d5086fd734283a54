//! What one Envoy process knows of each fleet breaker beyond its local record, kept in
//! shared data so every worker and a new watch holder see it: the last stored record and
//! its revision, a claim not yet stored ([`Shadow`]), and the probe slots known taken in
//! the current half-open episode ([`Slots`]). Both encodings are bounded and refuse junk,
//! like every other shared-data value, because a damaged VM may have written them.

use std::collections::BTreeSet;

use super::keys::FleetKey;
use super::merge::{Progress, Shadow, MAX_RELEASED};
use super::record::{FleetRecord, MAX_RECORD_BYTES};
use super::vote::{OwnVote, Vote, VOTE_BYTES};
use crate::core::bytes::Reader;

const SHADOW_MAGIC: u8 = 0xF3;
const SLOTS_MAGIC: u8 = 0xF4;
const VERSION: u8 = 3;
/// Most slots one breaker can have: one per probe `half_open_max_requests` allows.
pub const MAX_SLOTS: u32 = crate::core::limits::HALF_OPEN_MAX_REQUESTS.max;

/// Encodes a shadow: magic, version, then the seen record (revision and bytes) and the
/// claim, each behind a presence byte and a length, then the progress behind a presence
/// byte (generation, successes, count of released slots, each slot), then the own vote:
/// the cast vote's bytes and the stored vote's time and lease, each behind a presence byte.
pub fn encode(shadow: &Shadow) -> Vec<u8> {
    let mut out = vec![SHADOW_MAGIC, VERSION];
    match &shadow.seen {
        Some((record, revision)) => {
            out.push(1);
            out.extend_from_slice(&revision.to_le_bytes());
            put_record(&mut out, record);
        }
        None => out.push(0),
    }
    match &shadow.claim {
        Some(record) => {
            out.push(1);
            put_record(&mut out, record);
        }
        None => out.push(0),
    }
    match &shadow.progress {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p.generation.to_le_bytes());
            out.extend_from_slice(&p.successes.to_le_bytes());
            let released = &p.released[..p.released.len().min(MAX_RELEASED)];
            out.push(released.len() as u8);
            for n in released {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        None => out.push(0),
    }
    match &shadow.vote.cast {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.encode());
        }
        None => out.push(0),
    }
    match shadow.vote.stored {
        Some((at, lease)) => {
            out.push(1);
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&lease.to_le_bytes());
        }
        None => out.push(0),
    }
    out
}

fn put_record(out: &mut Vec<u8>, record: &FleetRecord) {
    let bytes = record.encode();
    out.push(bytes.len() as u8);
    out.extend_from_slice(&bytes);
}

/// Reads a shadow; `None` for anything [`encode`] could not have written (the caller then
/// starts from an empty shadow and re-reads etcd).
pub fn decode(bytes: &[u8]) -> Option<Shadow> {
    let mut r = Reader::new(bytes);
    if r.u8()? != SHADOW_MAGIC || r.u8()? != VERSION {
        return None;
    }
    let seen = match r.u8()? {
        0 => None,
        1 => {
            let revision = r.i64()?;
            Some((record(&mut r)?, revision))
        }
        _ => return None,
    };
    let claim = match r.u8()? {
        0 => None,
        1 => Some(record(&mut r)?),
        _ => return None,
    };
    let progress = match r.u8()? {
        0 => None,
        1 => {
            let generation = r.u32()?;
            let successes = r.u32()?;
            let count = usize::from(r.u8()?);
            if count > MAX_RELEASED {
                return None;
            }
            let released = (0..count).map(|_| r.u32()).collect::<Option<Vec<u32>>>()?;
            Some(Progress {
                generation,
                successes,
                released,
            })
        }
        _ => return None,
    };
    let vote = own_vote(&mut r)?;
    r.is_done().then_some(Shadow {
        seen,
        claim,
        progress,
        vote,
    })
}

fn own_vote(r: &mut Reader) -> Option<OwnVote> {
    let cast = match r.u8()? {
        0 => None,
        1 => Some(Vote::decode(r.take(VOTE_BYTES)?)?),
        _ => return None,
    };
    let stored = match r.u8()? {
        0 => None,
        1 => Some((r.u64()?, r.i64()?)),
        _ => return None,
    };
    Some(OwnVote { cast, stored })
}

fn record(r: &mut Reader) -> Option<FleetRecord> {
    let n = usize::from(r.u8()?);
    if n > MAX_RECORD_BYTES {
        return None;
    }
    FleetRecord::decode(r.take(n)?).ok()
}

/// The probe slots known taken in one breaker's current half-open episode, learnt from
/// the watch (puts and deletes of `P/p/<breaker>/<generation>/<slot>`) and from failed
/// claims, so a worker refuses without an etcd call when every slot is taken.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slots {
    pub generation: u32,
    taken: BTreeSet<u32>,
}

impl Slots {
    /// Applies a watch event on a slot key of `breaker`; slots of another breaker, of an
    /// older episode, or beyond `max` change nothing (they cannot block this episode).
    pub fn on_event(&mut self, key: &FleetKey, deleted: bool, breaker: &str, max: u32) -> bool {
        let FleetKey::Slot {
            breaker: b,
            generation,
            slot,
        } = key
        else {
            return false;
        };
        if b != breaker || *slot >= max.min(MAX_SLOTS) {
            return false;
        }
        if *generation != self.generation {
            if !super::merge::newer(*generation, self.generation) {
                return false;
            }
            *self = Slots {
                generation: *generation,
                taken: BTreeSet::new(),
            };
        }
        if deleted {
            self.taken.remove(slot)
        } else {
            self.taken.insert(*slot)
        }
    }

    /// The lowest slot of episode `generation` not known to be taken, below `max`; `None`
    /// when every one is.
    pub fn next_free(&self, generation: u32, max: u32) -> Option<u32> {
        let max = max.min(MAX_SLOTS);
        if generation != self.generation {
            return (max > 0).then_some(0);
        }
        (0..max).find(|n| !self.taken.contains(n))
    }

    pub fn taken(&self) -> usize {
        self.taken.len()
    }

    /// Little-endian: magic, version, generation, count, then each slot.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SLOTS_MAGIC, VERSION];
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&(self.taken.len() as u32).to_le_bytes());
        for s in &self.taken {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Slots> {
        let mut r = Reader::new(bytes);
        if r.u8()? != SLOTS_MAGIC || r.u8()? != VERSION {
            return None;
        }
        let generation = r.u32()?;
        let count = r.u32()?;
        if count > MAX_SLOTS || bytes.len() != 10 + 4 * count as usize {
            return None;
        }
        let mut taken = BTreeSet::new();
        for _ in 0..count {
            let s = r.u32()?;
            if s >= MAX_SLOTS || !taken.insert(s) {
                return None;
            }
        }
        Some(Slots { generation, taken })
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::open_record;
    use super::*;
    use proptest::prelude::*;

    fn slot(breaker: &str, generation: u32, slot: u32) -> FleetKey {
        FleetKey::Slot {
            breaker: breaker.into(),
            generation,
            slot,
        }
    }

    #[test]
    fn shadows_round_trip() {
        for shadow in [
            Shadow::default(),
            Shadow {
                seen: Some((open_record(4, "a"), 17)),
                ..Shadow::default()
            },
            Shadow {
                seen: Some((open_record(4, "a"), -1)),
                claim: Some(open_record(5, "b")),
                ..Shadow::default()
            },
            Shadow {
                seen: Some((open_record(4, "a"), 17)),
                claim: None,
                progress: Some(Progress {
                    generation: 4,
                    successes: 2,
                    released: vec![0, 7],
                }),
                vote: OwnVote::default(),
            },
            Shadow {
                vote: OwnVote {
                    cast: Some(Vote {
                        reason: crate::core::state::TripReason::FailureRate,
                        voted_at_ms: 1_700_000_000_000,
                    }),
                    stored: Some((1_699_999_999_000, -3)),
                },
                ..Shadow::default()
            },
        ] {
            assert_eq!(decode(&encode(&shadow)), Some(shadow));
        }
    }

    #[test]
    fn damaged_shadows_are_refused() {
        let good = encode(&Shadow {
            seen: Some((open_record(4, "a"), 17)),
            claim: Some(open_record(5, "b")),
            ..Shadow::default()
        });
        assert_eq!(decode(&good[..good.len() - 1]), None);
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        let mut bad = good.clone();
        bad[2] = 2;
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(b""), None);
        let mut too_many = encode(&Shadow {
            progress: Some(Progress {
                generation: 4,
                successes: 1,
                released: vec![3],
            }),
            ..Shadow::default()
        });
        let count_at = too_many.len() - 7;
        too_many[count_at] = MAX_RELEASED as u8 + 1;
        too_many.truncate(count_at + 1);
        too_many.extend(std::iter::repeat_n(0u8, 4 * MAX_RELEASED + 2));
        assert_eq!(
            decode(&too_many),
            None,
            "more released slots than a shadow holds"
        );
    }

    #[test]
    fn every_slot_taken_means_refuse_without_asking_etcd() {
        let mut s = Slots::default();
        assert_eq!(s.next_free(3, 2), Some(0));
        assert!(s.on_event(&slot("b", 3, 0), false, "b", 2));
        assert_eq!(s.next_free(3, 2), Some(1));
        assert!(s.on_event(&slot("b", 3, 1), false, "b", 2));
        assert_eq!(s.next_free(3, 2), None);
        // A dead prober's lease expires: its slot is free again.
        assert!(s.on_event(&slot("b", 3, 0), true, "b", 2));
        assert_eq!(s.next_free(3, 2), Some(0));
    }

    #[test]
    fn slots_of_an_older_episode_or_another_breaker_change_nothing() {
        let mut s = Slots::default();
        s.on_event(&slot("b", 5, 0), false, "b", 1);
        assert!(!s.on_event(&slot("b", 4, 0), true, "b", 1));
        assert!(!s.on_event(&slot("other", 5, 0), true, "b", 1));
        assert!(
            !s.on_event(&slot("b", 5, 7), false, "b", 1),
            "beyond the limit"
        );
        assert!(!s.on_event(&FleetKey::Decision("b".into()), false, "b", 1));
        assert_eq!(s.next_free(5, 1), None);
        // A newer episode starts with every slot free.
        assert_eq!(s.next_free(6, 1), Some(0));
        s.on_event(&slot("b", 6, 0), false, "b", 1);
        assert_eq!((s.generation, s.taken()), (6, 1));
    }

    #[test]
    fn slots_round_trip_and_refuse_junk() {
        let mut s = Slots::default();
        for n in [0, 3, 9_999] {
            s.on_event(&slot("b", 2, n), false, "b", MAX_SLOTS);
        }
        assert_eq!(Slots::decode(&s.encode()), Some(s.clone()));
        let mut dup = s.encode();
        let n = dup.len();
        dup[n - 4..].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Slots::decode(&dup), None, "a slot twice");
        let mut huge = s.encode();
        huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Slots::decode(&huge), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let _ = Slots::decode(&bytes);
        }
    }
}
