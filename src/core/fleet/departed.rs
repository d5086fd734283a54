//! The members whose key left etcd (their process stopped or lost its lease), with when
//! this Envoy saw them go: the dashboard's "last seen". Bounded to the latest few; a
//! member seen again leaves the list.

use crate::core::bytes::Reader;

use super::record::valid_member;

/// Departures kept: the latest, newest first.
pub const KEPT: usize = 16;
const MAGIC: u8 = 0xD7;
const VERSION: u8 = 1;

/// Members gone, newest first, each with when it was last seen here (wall clock, ms).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Departed {
    gone: Vec<(String, u64)>,
}

impl Departed {
    /// Notes `member` gone at `at_ms`; false for a name no member can have.
    pub fn left(&mut self, member: &str, at_ms: u64) -> bool {
        if !valid_member(member) {
            return false;
        }
        self.gone.retain(|(m, _)| m != member);
        self.gone.insert(0, (member.to_string(), at_ms));
        self.gone.truncate(KEPT);
        true
    }

    /// Forgets `member`, back among the live ones; false if it was not listed.
    pub fn back(&mut self, member: &str) -> bool {
        let before = self.gone.len();
        self.gone.retain(|(m, _)| m != member);
        self.gone.len() != before
    }

    /// Members gone and when, newest first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.gone.iter().map(|(m, at)| (m.as_str(), *at))
    }

    /// Magic, version, count, then each name behind its length and its time.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MAGIC, VERSION, self.gone.len() as u8];
        for (m, at) in &self.gone {
            out.push(m.len() as u8);
            out.extend_from_slice(m.as_bytes());
            out.extend_from_slice(&at.to_le_bytes());
        }
        out
    }

    /// `None` for bytes this version did not write.
    pub fn decode(bytes: &[u8]) -> Option<Departed> {
        let mut r = Reader::new(bytes);
        if r.u8()? != MAGIC || r.u8()? != VERSION {
            return None;
        }
        let n = usize::from(r.u8()?);
        if n > KEPT {
            return None;
        }
        let mut gone = Vec::with_capacity(n);
        for _ in 0..n {
            let len = usize::from(r.u8()?);
            let name = std::str::from_utf8(r.take(len)?).ok()?;
            let at = r.u64()?;
            if !valid_member(name) || gone.iter().any(|(m, _)| m == name) {
                return None;
            }
            gone.push((name.to_string(), at));
        }
        r.is_done().then_some(Departed { gone })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_departures_are_kept_newest_first() {
        let mut d = Departed::default();
        for i in 0..(KEPT as u64 + 4) {
            assert!(d.left(&format!("gateway-{i}"), 1_000 + i));
        }
        assert!(
            d.left("gateway-19", 5_000),
            "a member gone again moves to the front"
        );
        let listed: Vec<_> = d.iter().collect();
        assert_eq!(listed.len(), KEPT);
        assert_eq!(listed[0], ("gateway-19", 5_000));
        assert_eq!(listed[1], ("gateway-18", 1_018));
        assert!(d.back("gateway-18"));
        assert!(!d.back("gateway-18"));
        assert!(!d.left("", 1), "no member has an empty name");
    }

    #[test]
    fn it_round_trips_and_refuses_bytes_it_did_not_write() {
        let mut d = Departed::default();
        d.left("gateway-1", 1_796_000_000_000);
        d.left("gateway 2", 1_796_000_001_000);
        let bytes = d.encode();
        assert_eq!(Departed::decode(&bytes), Some(d));
        let mut twice = bytes.clone();
        twice[2] = 3;
        twice.extend_from_slice(&bytes[3..3 + 1 + 9 + 8]);
        for bad in [
            &b""[..],
            &[MAGIC, 2, 0][..],
            &bytes[..bytes.len() - 1],
            &[bytes.clone(), vec![0]].concat()[..],
            &[MAGIC, VERSION, KEPT as u8 + 1][..],
            &twice[..],
        ] {
            assert_eq!(Departed::decode(bad), None, "{bad:?}");
        }
    }
}
