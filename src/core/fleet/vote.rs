//! A member's vote to open a breaker in the fleet: what it stores under
//! `P/v/<breaker>/<member>` with its lease when it trips on its own failures, and what it
//! remembers of its own vote (what etcd should hold, and what it is known to hold), so a
//! vote is put once, put again under a new lease, and deleted when the member recovers.
//! The value is eleven bytes and anything else is refused whole: it comes from other
//! members, damaged or hostile ones included.

use crate::core::bytes::Reader;
use crate::core::state::TripReason;

const MAGIC: u8 = 0xF5;
const VERSION: u8 = 1;
/// The one length a vote has.
pub const VOTE_BYTES: usize = 11;

/// One member's vote: why it opened the breaker on its own, and when (its wall clock, Unix
/// ms). The member is the key's; the lease is the member's process's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    pub reason: TripReason,
    pub voted_at_ms: u64,
}

impl Vote {
    /// Magic, version, the reason's code, the time (little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(VOTE_BYTES);
        out.push(MAGIC);
        out.push(VERSION);
        out.push(TripReason::code_of(Some(self.reason)));
        out.extend_from_slice(&self.voted_at_ms.to_le_bytes());
        out
    }

    /// Reads a vote; `None` for anything [`Vote::encode`] could not have written, or a vote
    /// no trip rule makes (no reason, or forced: an operator's decision is no vote).
    pub fn decode(bytes: &[u8]) -> Option<Vote> {
        if bytes.len() != VOTE_BYTES {
            return None;
        }
        let mut r = Reader::new(bytes);
        if r.u8()? != MAGIC || r.u8()? != VERSION {
            return None;
        }
        let reason = TripReason::from_code(r.u8()?)??;
        let voted_at_ms = r.u64()?;
        (reason != TripReason::Forced).then_some(Vote {
            reason,
            voted_at_ms,
        })
    }
}

/// This member's own vote on one breaker, kept in the breaker's shadow so every worker and
/// a new watch holder agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OwnVote {
    /// The vote etcd should hold: cast while this member is open by its own failures.
    pub cast: Option<Vote>,
    /// What etcd is known to hold: the stored vote's time and the lease it was put with.
    pub stored: Option<(u64, i64)>,
}

/// The write an own vote needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteStep {
    Nothing,
    /// Put the vote with the process's lease (a new vote, a newer trip, or a new lease).
    Put(Vote),
    /// Delete the member's vote key: it recovered.
    Delete,
}

impl OwnVote {
    /// What to send, given the process's lease (0: none yet, so a put waits for one).
    pub fn step(&self, lease: i64) -> VoteStep {
        match (self.cast, self.stored) {
            (Some(v), Some((at, l))) if at == v.voted_at_ms && l == lease => VoteStep::Nothing,
            (Some(_), _) if lease == 0 => VoteStep::Nothing,
            (Some(v), _) => VoteStep::Put(v),
            (None, Some(_)) => VoteStep::Delete,
            (None, None) => VoteStep::Nothing,
        }
    }

    /// Whether a write is owed.
    pub fn owes(&self, lease: i64) -> bool {
        self.step(lease) != VoteStep::Nothing
    }

    /// A put of `sent` with `lease` succeeded.
    pub fn put_done(&mut self, sent: &Vote, lease: i64) {
        self.stored = Some((sent.voted_at_ms, lease));
    }

    /// The key is gone: deleted here, or with an expired lease (the watch says so).
    pub fn gone(&mut self) {
        self.stored = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vote(at: u64) -> Vote {
        Vote {
            reason: TripReason::ConsecutiveFailures,
            voted_at_ms: at,
        }
    }

    #[test]
    fn a_vote_reads_back_as_written() {
        let v = vote(1_700_000_000_123);
        assert_eq!(v.encode().len(), VOTE_BYTES);
        assert_eq!(Vote::decode(&v.encode()), Some(v));
    }

    #[test]
    fn malformed_oversized_or_impossible_votes_are_refused() {
        let good = vote(5).encode();
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(Vote::decode(&longer), None, "oversized");
        assert_eq!(Vote::decode(&good[..10]), None, "short");
        assert_eq!(Vote::decode(&[0xF5; 4096]), None);
        for (at, byte) in [(0, 0xF1), (1, 2), (2, 0), (2, 99)] {
            let mut bad = good.clone();
            bad[at] = byte;
            assert_eq!(Vote::decode(&bad), None, "byte {at} = {byte}");
        }
        let forced = Vote {
            reason: TripReason::Forced,
            voted_at_ms: 5,
        };
        assert_eq!(Vote::decode(&forced.encode()), None, "forcing is no vote");
        assert_eq!(Vote::decode(b"1"), None);
    }

    #[test]
    fn a_cast_vote_is_put_once_per_lease_and_deleted_on_recovery() {
        let mut own = OwnVote::default();
        assert_eq!(own.step(7), VoteStep::Nothing);
        own.cast = Some(vote(100));
        assert_eq!(own.step(0), VoteStep::Nothing, "no lease to bind it to yet");
        assert_eq!(own.step(7), VoteStep::Put(vote(100)));
        own.put_done(&vote(100), 7);
        assert_eq!(own.step(7), VoteStep::Nothing);
        assert!(!own.owes(7));
        // A new lease (the old one expired, and the vote with it): put again.
        assert_eq!(own.step(8), VoteStep::Put(vote(100)));
        // A newer trip refreshes the vote's time.
        own.cast = Some(vote(200));
        assert_eq!(own.step(7), VoteStep::Put(vote(200)));
        own.put_done(&vote(200), 7);
        // Recovered: the vote goes.
        own.cast = None;
        assert_eq!(own.step(7), VoteStep::Delete);
        assert_eq!(own.step(0), VoteStep::Delete, "a delete needs no lease");
        own.gone();
        assert_eq!(own.step(7), VoteStep::Nothing);
    }

    #[test]
    fn a_vote_deleted_under_it_is_put_again() {
        let mut own = OwnVote {
            cast: Some(vote(1)),
            stored: Some((1, 7)),
        };
        own.gone();
        assert_eq!(own.step(7), VoteStep::Put(vote(1)));
    }

    proptest! {
        #[test]
        fn every_vote_round_trips(r in 0usize..7, at in any::<u64>()) {
            let v = Vote { reason: TripReason::ALL[r], voted_at_ms: at };
            let back = Vote::decode(&v.encode());
            if v.reason == TripReason::Forced {
                prop_assert_eq!(back, None);
            } else {
                prop_assert_eq!(back, Some(v));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some(v) = Vote::decode(&bytes) {
                prop_assert_eq!(v.encode(), bytes);
            }
        }
    }
}
