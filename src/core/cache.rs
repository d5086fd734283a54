//! The last good answers to GET requests, kept per breaker so they can be served while it
//! is open (seed 000 falls back to cached data). Bounded in entries and bytes; each worker
//! keeps its own, in its own memory, so a request path can never grow shared data.

use std::collections::{HashMap, VecDeque};

/// How much to keep, and for how long it may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_age_ms: u64,
}

/// One remembered answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stored_at_ms: u64,
    pub status: u32,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Entry {
    fn size(&self, key: &str) -> usize {
        key.len() + self.body.len() + self.content_type.as_ref().map_or(0, String::len)
    }
}

/// A bounded map from request path to its last good answer, oldest dropped first.
#[derive(Debug)]
pub struct ResponseCache {
    limits: CacheSettings,
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
    bytes: usize,
}

impl ResponseCache {
    pub fn new(limits: CacheSettings) -> ResponseCache {
        ResponseCache {
            limits,
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Whether an answer for `key` is worth capturing now: none is held, or the one held
    /// is past half its serving age. Keeps the copying off most requests.
    pub fn wants(&self, key: &str, now_ms: u64) -> bool {
        match self.entries.get(key) {
            None => true,
            Some(e) => now_ms.saturating_sub(e.stored_at_ms) >= self.limits.max_age_ms / 2,
        }
    }

    /// Remembers `entry` for `key`, dropping the oldest entries to stay within bounds.
    /// An entry larger than the whole byte budget is not kept.
    pub fn put(&mut self, key: &str, entry: Entry) {
        let size = entry.size(key);
        if size > self.limits.max_bytes || self.limits.max_entries == 0 {
            return;
        }
        self.remove(key);
        while self.entries.len() >= self.limits.max_entries
            || self.bytes + size > self.limits.max_bytes
        {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.size(&oldest);
            }
        }
        self.bytes += size;
        self.order.push_back(key.to_string());
        self.entries.insert(key.to_string(), entry);
    }

    /// The answer for `key` if it is young enough to serve, with its age in seconds.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<(&Entry, u64)> {
        let e = self.entries.get(key)?;
        let age = now_ms.saturating_sub(e.stored_at_ms);
        (age <= self.limits.max_age_ms).then_some((e, age / 1_000))
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.size(key);
            self.order.retain(|k| k != key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(at: u64, body: &str) -> Entry {
        Entry {
            stored_at_ms: at,
            status: 200,
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec(),
        }
    }

    fn limits() -> CacheSettings {
        CacheSettings {
            max_entries: 3,
            max_bytes: 1_000,
            max_age_ms: 60_000,
        }
    }

    #[test]
    fn serves_what_it_keeps_with_its_age() {
        let mut c = ResponseCache::new(limits());
        c.put("/schools", entry(1_000, "[1,2]"));
        let (e, age) = c.get("/schools", 4_500).unwrap();
        assert_eq!((e.body.as_slice(), age), (&b"[1,2]"[..], 3));
        assert!(c.get("/students", 4_500).is_none());
    }

    #[test]
    fn old_answers_are_not_served() {
        let mut c = ResponseCache::new(limits());
        c.put("/schools", entry(0, "x"));
        assert!(c.get("/schools", 60_000).is_some());
        assert!(c.get("/schools", 60_001).is_none());
    }

    #[test]
    fn the_oldest_entry_goes_first() {
        let mut c = ResponseCache::new(limits());
        for (i, k) in ["/a", "/b", "/c", "/d"].iter().enumerate() {
            c.put(k, entry(i as u64, "x"));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("/a", 10).is_none());
        assert!(c.get("/d", 10).is_some());
    }

    #[test]
    fn bytes_are_bounded_and_huge_answers_skipped() {
        let mut c = ResponseCache::new(CacheSettings {
            max_bytes: 100,
            ..limits()
        });
        c.put("/big", entry(0, &"x".repeat(200)));
        assert!(c.is_empty());
        c.put("/a", entry(0, &"x".repeat(60)));
        c.put("/b", entry(0, &"x".repeat(60)));
        assert_eq!(c.len(), 1, "/a made room for /b");
        assert!(c.bytes() <= 100);
    }

    #[test]
    fn captures_are_skipped_while_an_answer_is_fresh() {
        let mut c = ResponseCache::new(limits());
        assert!(c.wants("/a", 0));
        c.put("/a", entry(0, "x"));
        assert!(!c.wants("/a", 29_999));
        assert!(c.wants("/a", 30_000));
    }

    proptest! {
        #[test]
        fn bounds_always_hold(
            ops in proptest::collection::vec((0u8..20, 0usize..300), 0..200),
            max_entries in 0usize..8, max_bytes in 0usize..1_000,
        ) {
            let mut c = ResponseCache::new(CacheSettings { max_entries, max_bytes, max_age_ms: 10 });
            for (key, len) in ops {
                c.put(&format!("/k{key}"), entry(0, &"y".repeat(len)));
                prop_assert!(c.len() <= max_entries);
                prop_assert!(c.bytes() <= max_bytes);
                let counted: usize = c.entries.iter().map(|(k, e)| e.size(k)).sum();
                prop_assert_eq!(counted, c.bytes());
            }
        }
    }
}
