//! Which root context of an Envoy process holds the fleet's one watch. Every worker and
//! the main thread tick; one of them, elected through compare-and-swap on a shared-data
//! key, holds the watch and the lease, and a heartbeat in the same key lets another take
//! over when the holder's VM dies. This decides from the stored bytes; the caller does
//! the compare-and-swap with the stamp it read, and a lost swap means "not this tick".

use crate::core::bytes::Reader;

const MAGIC: u8 = 0xF2;
const LEN: usize = 17;

/// After this long without a heartbeat, the holder is presumed dead: ten missed ticks of
/// the filter's 100 ms timer.
pub const STALE_AFTER_MS: u64 = 1_000;

/// The role this context has after a tick, and the bytes to write (with the read stamp)
/// to keep or take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Hold (or take) the role: write these bytes; if the swap is lost, another context
    /// got there first and this one follows.
    Hold(Vec<u8>),
    /// Another context holds the role and is alive.
    Follow { holder: u64 },
}

/// The stored claim: who holds the role and when it last said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub id: u64,
    pub heartbeat_ms: u64,
}

impl Claim {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.push(MAGIC);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.heartbeat_ms.to_le_bytes());
        out
    }

    /// `None` for anything else, which is then claimed over like a missing key.
    pub fn decode(bytes: &[u8]) -> Option<Claim> {
        let mut r = Reader::new(bytes);
        if r.u8()? != MAGIC {
            return None;
        }
        let claim = Claim {
            id: r.u64()?,
            heartbeat_ms: r.u64()?,
        };
        r.is_done().then_some(claim)
    }
}

/// One tick's decision for the context `me` (a random id drawn when its VM starts), given
/// the stored bytes (`None`: the key is missing or empty).
pub fn step(stored: Option<&[u8]>, me: u64, now_ms: u64) -> Step {
    let hold = Step::Hold(
        Claim {
            id: me,
            heartbeat_ms: now_ms,
        }
        .encode(),
    );
    match stored.and_then(Claim::decode) {
        Some(c) if c.id == me => hold,
        // A heartbeat from the future (another thread's clock read a moment later) is fresh.
        Some(c) if now_ms.saturating_sub(c.heartbeat_ms) < STALE_AFTER_MS => {
            Step::Follow { holder: c.id }
        }
        _ => hold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: u64, at: u64) -> Vec<u8> {
        Claim {
            id: by,
            heartbeat_ms: at,
        }
        .encode()
    }

    #[test]
    fn a_missing_or_empty_key_is_claimed() {
        assert_eq!(step(None, 7, 100), Step::Hold(held(7, 100)));
        assert_eq!(step(Some(b""), 7, 100), Step::Hold(held(7, 100)));
    }

    #[test]
    fn the_holder_keeps_the_role_by_heartbeat() {
        let stored = held(7, 100);
        assert_eq!(step(Some(&stored), 7, 350), Step::Hold(held(7, 350)));
    }

    #[test]
    fn others_follow_a_live_holder() {
        let stored = held(7, 100);
        assert_eq!(step(Some(&stored), 9, 1_099), Step::Follow { holder: 7 });
    }

    #[test]
    fn a_silent_holder_is_replaced() {
        let stored = held(7, 100);
        assert_eq!(step(Some(&stored), 9, 1_100), Step::Hold(held(9, 1_100)));
    }

    #[test]
    fn a_heartbeat_from_a_clock_slightly_ahead_is_not_stale() {
        let stored = held(7, 5_000);
        assert_eq!(step(Some(&stored), 9, 4_990), Step::Follow { holder: 7 });
    }

    #[test]
    fn junk_is_claimed_over() {
        assert_eq!(step(Some(b"garbage"), 9, 10), Step::Hold(held(9, 10)));
        let mut wrong_magic = held(7, 10);
        wrong_magic[0] = 0;
        assert_eq!(step(Some(&wrong_magic), 9, 10), Step::Hold(held(9, 10)));
    }

    #[test]
    fn claims_round_trip() {
        let c = Claim {
            id: u64::MAX,
            heartbeat_ms: 1_700_000_000_000,
        };
        assert_eq!(Claim::decode(&c.encode()), Some(c));
    }
}
