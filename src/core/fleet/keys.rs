//! The fleet's keys under `prefix`, and the reverse: which breaker, slot, member or vote a
//! key from the watch is about. Breaker names are escaped so that no name holds a `/` and one
//! breaker's keys are never a prefix range of another's; keys outside the prefix, or that
//! do not parse, are ignored by the caller.

use std::fmt::Write;

/// Longest key the fleet writes or reads: a 200-byte prefix and a 400-byte breaker name,
/// fully escaped, fit with room to spare.
pub const MAX_KEY_BYTES: usize = 1_600;

/// What a key under the prefix is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetKey {
    /// `P/b/<breaker>`: the breaker's decision.
    Decision(String),
    /// `P/p/<breaker>/<generation>/<slot>`: a half-open probe slot.
    Slot {
        breaker: String,
        generation: u32,
        slot: u32,
    },
    /// `P/m/<member>`: a member's heartbeat.
    Member(String),
    /// `P/v/<breaker>/<member>`: a member's vote to open the breaker in the fleet.
    Vote { breaker: String, member: String },
}

/// Escapes a name for a key: bytes outside `[A-Za-z0-9._-]` become `%XX`.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The inverse of [`escape`]; `None` for anything `escape` could not have made.
pub fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if hex.bytes().any(|h| h.is_ascii_lowercase()) {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || b"._-".contains(&v) {
                return None;
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// The decision key of `breaker`.
pub fn decision(prefix: &str, breaker: &str) -> String {
    format!("{prefix}/b/{}", escape(breaker))
}

/// Where every decision key lives: the range an Envoy reads when it joins.
pub fn decisions(prefix: &str) -> String {
    format!("{prefix}/b/")
}

/// The range of every probe slot of `breaker`, all episodes.
pub fn slots(prefix: &str, breaker: &str) -> String {
    format!("{prefix}/p/{}/", escape(breaker))
}

/// The range of the probe slots of one half-open episode.
pub fn episode_slots(prefix: &str, breaker: &str, generation: u32) -> String {
    format!("{prefix}/p/{}/{generation:010}/", escape(breaker))
}

/// One probe slot.
pub fn slot(prefix: &str, breaker: &str, generation: u32, n: u32) -> String {
    format!("{}{n}", episode_slots(prefix, breaker, generation))
}

/// A member's heartbeat key.
pub fn member(prefix: &str, name: &str) -> String {
    format!("{prefix}/m/{}", escape(name))
}

/// A member's vote to open `breaker` in the fleet.
pub fn vote(prefix: &str, breaker: &str, member: &str) -> String {
    format!("{prefix}/v/{}/{}", escape(breaker), escape(member))
}

/// The watch range: everything under the prefix.
pub fn everything(prefix: &str) -> String {
    format!("{prefix}/")
}

/// Which breaker, slot or member `key` is about; `None` for a key outside the prefix, too
/// long, or that the fleet could not have written.
pub fn parse(prefix: &str, key: &[u8]) -> Option<FleetKey> {
    if key.len() > MAX_KEY_BYTES {
        return None;
    }
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (kind, rest) = rest.split_once('/')?;
    match kind {
        "b" => Some(FleetKey::Decision(unescape(rest)?)),
        "m" => Some(FleetKey::Member(unescape(rest)?)),
        "v" => {
            let (breaker, member) = rest.split_once('/')?;
            Some(FleetKey::Vote {
                breaker: unescape(breaker)?,
                member: unescape(member)?,
            })
        }
        "p" => {
            let mut parts = rest.split('/');
            let breaker = unescape(parts.next()?)?;
            let generation = parts.next().filter(|g| g.len() == 10)?.parse().ok()?;
            let slot_text = parts.next()?;
            let canonical = !slot_text.starts_with('0') || slot_text == "0";
            let slot = slot_text.parse().ok().filter(|_| canonical)?;
            parts.next().is_none().then_some(FleetKey::Slot {
                breaker,
                generation,
                slot,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "/ecb/gw";

    #[test]
    fn keys_have_the_documented_layout() {
        assert_eq!(decision(P, "school"), "/ecb/gw/b/school");
        assert_eq!(decision(P, "school/by-id"), "/ecb/gw/b/school%2Fby-id");
        assert_eq!(slot(P, "auth", 42, 1), "/ecb/gw/p/auth/0000000042/1");
        assert_eq!(member(P, "gateway 2"), "/ecb/gw/m/gateway%202");
        assert_eq!(
            vote(P, "school/by-id", "gw 1"),
            "/ecb/gw/v/school%2Fby-id/gw%201"
        );
    }

    #[test]
    fn one_breakers_slots_are_not_a_prefix_of_anothers() {
        let a = slots(P, "a");
        let ab = slot(P, "a/b", 1, 0);
        assert!(!ab.starts_with(&a), "{ab} under {a}");
    }

    #[test]
    fn keys_parse_back_to_what_they_name() {
        let name = "school/by-id é";
        assert_eq!(
            parse(P, decision(P, name).as_bytes()),
            Some(FleetKey::Decision(name.into()))
        );
        assert_eq!(
            parse(P, slot(P, name, 4_000_000_000, 12).as_bytes()),
            Some(FleetKey::Slot {
                breaker: name.into(),
                generation: 4_000_000_000,
                slot: 12
            })
        );
        assert_eq!(
            parse(P, member(P, "gw-1").as_bytes()),
            Some(FleetKey::Member("gw-1".into()))
        );
        assert_eq!(
            parse(P, vote(P, name, "gw/1").as_bytes()),
            Some(FleetKey::Vote {
                breaker: name.into(),
                member: "gw/1".into()
            })
        );
    }

    #[test]
    fn keys_the_fleet_could_not_have_written_are_ignored() {
        for bad in [
            "/other/b/school",
            "/ecb/gwx/b/school",
            "/ecb/gw/b/",
            "/ecb/gw/b/sch/ool",
            "/ecb/gw/b/%2f",
            "/ecb/gw/b/%41",
            "/ecb/gw/b/%4",
            "/ecb/gw/x/school",
            "/ecb/gw/p/auth/42/1",
            "/ecb/gw/p/auth/0000000042/01",
            "/ecb/gw/p/auth/0000000042/1/2",
            "/ecb/gw/p/auth/9999999999/1",
            "/ecb/gw/v/school",
            "/ecb/gw/v/school/",
            "/ecb/gw/v/school/gw-1/x",
            "/ecb/gw/v//gw-1",
        ] {
            assert_eq!(parse(P, bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse(P, &[b'/'; MAX_KEY_BYTES + 1]), None);
        assert_eq!(parse(P, b"/ecb/gw/b/\xff"), None);
    }

    proptest! {
        #[test]
        fn escaping_round_trips(name in "\\PC{1,100}") {
            let e = escape(&name);
            prop_assert!(!e.contains('/'));
            prop_assert_eq!(unescape(&e), Some(name));
        }

        #[test]
        fn arbitrary_keys_never_panic(key in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut k = b"/ecb/gw/".to_vec();
            k.extend_from_slice(&key);
            let _ = parse(P, &k);
        }
    }
}
