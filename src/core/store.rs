//! The state store behind a small interface: load bytes with a version stamp, save them
//! only if the stamp still matches. Envoy's shared data is one implementation; a store
//! shared by several Envoy instances can be another. The retry loop lives here, once.

use std::cell::RefCell;
use std::collections::HashMap;

use super::breaker::Step;
use super::codec::{self, DecodeError};
use super::state::{Record, Transition};

/// Why a store call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote since the load: load again and retry.
    CasMismatch,
    /// The host refused the call with this status.
    Host(u32),
}

/// Bytes with a compare-and-swap stamp.
pub trait StateStore {
    /// Current bytes and stamp of `key`; `None` when the key was never written.
    fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `bytes` if the key's stamp is still `cas` (`None`: write unconditionally).
    fn save(&self, key: &str, bytes: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// A record as loaded, with its stamp and any damage found in the stored bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub record: Record,
    pub cas: Option<u32>,
    /// Set when the stored bytes were unreadable and a fresh record stands in for them.
    pub damaged: Option<DecodeError>,
}

/// Loads `key`, standing a fresh closed record in for a missing or unreadable one.
pub fn load(store: &dyn StateStore, key: &str) -> Result<Loaded, StoreError> {
    Ok(match store.load(key)? {
        None => Loaded {
            record: Record::default(),
            cas: None,
            damaged: None,
        },
        Some((bytes, cas)) => match codec::decode(&bytes) {
            Ok(record) => Loaded {
                record,
                cas: Some(cas),
                damaged: None,
            },
            Err(e) => Loaded {
                record: Record::default(),
                cas: Some(cas),
                damaged: Some(e),
            },
        },
    })
}

/// The result of [`update`]: the decision's value, the record as it now stands, and the
/// transition this caller made, if it made one.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated<T> {
    pub value: T,
    pub record: Record,
    pub transition: Option<Transition>,
    pub damaged: Option<DecodeError>,
}

/// Why an update gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// Every attempt lost its compare-and-swap to another writer.
    Contended,
    Host(u32),
}

/// Applies `decide` to the stored record and writes the result back with
/// compare-and-swap, retrying on a lost race up to `attempts` times. A decision that
/// changes nothing writes nothing, unless the stored bytes were damaged: those are replaced
/// at once, so the damage is met (and reported) by one caller, not by every reader after.
pub fn update<T>(
    store: &dyn StateStore,
    key: &str,
    attempts: u32,
    mut decide: impl FnMut(&mut Record) -> Step<T>,
) -> Result<Updated<T>, UpdateError> {
    let fresh = codec::encode(&Record::default());
    compare_and_swap(store, key, &fresh, attempts, |bytes| {
        let (mut record, damaged) = match codec::decode(bytes) {
            Ok(record) => (record, None),
            Err(e) => (Record::default(), Some(e)),
        };
        let step = decide(&mut record);
        let write = (step.dirty || damaged.is_some()).then(|| codec::encode(&record));
        let updated = Updated {
            value: step.value,
            record,
            transition: step.transition,
            damaged,
        };
        (updated, write)
    })
}

/// The compare-and-swap loop under every shared write: `change` sees the current bytes
/// and returns its result plus the bytes to write, if any. A missing key is first claimed
/// with `fresh`, because the host has no atomic create and only an existing key's stamp
/// can protect the real change.
pub fn compare_and_swap<T>(
    store: &dyn StateStore,
    key: &str,
    fresh: &[u8],
    attempts: u32,
    mut change: impl FnMut(&[u8]) -> (T, Option<Vec<u8>>),
) -> Result<T, UpdateError> {
    for _ in 0..attempts {
        let Some((bytes, cas)) = store.load(key).map_err(host_error)? else {
            store.save(key, fresh, None).map_err(host_error)?;
            continue;
        };
        let (value, write) = change(&bytes);
        let Some(write) = write else {
            return Ok(value);
        };
        match store.save(key, &write, Some(cas)) {
            Ok(()) => return Ok(value),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Host(status)) => return Err(UpdateError::Host(status)),
        }
    }
    Err(UpdateError::Contended)
}

fn host_error(e: StoreError) -> UpdateError {
    match e {
        StoreError::Host(status) => UpdateError::Host(status),
        StoreError::CasMismatch => UpdateError::Contended,
    }
}

/// An in-memory store with the same compare-and-swap rules as Envoy's shared data, for
/// tests of the pure core. `interfere` runs before every save, standing in for writes by
/// other workers.
#[derive(Default)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: RefCell<u32>,
    #[allow(clippy::type_complexity)]
    pub interfere: RefCell<Option<Box<dyn FnMut(&MemoryStore, &str)>>>,
}

impl MemoryStore {
    /// Overwrites `key` as another writer would.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let mut cas = self.next_cas.borrow_mut();
        *cas += 1;
        self.entries
            .borrow_mut()
            .insert(key.to_string(), (bytes.to_vec(), *cas));
    }
}

impl StateStore for MemoryStore {
    fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn save(&self, key: &str, bytes: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let hook = self.interfere.borrow_mut().take();
        if let Some(mut hook) = hook {
            hook(self, key);
            *self.interfere.borrow_mut() = Some(hook);
        }
        let current = self.entries.borrow().get(key).map(|(_, c)| *c);
        if let (Some(expected), Some(current)) = (cas, current) {
            if expected != current {
                return Err(StoreError::CasMismatch);
            }
        }
        self.put(key, bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::breaker::{admit, record, Admission, Call};
    use crate::core::outcome::{Failure, Outcome};
    use crate::core::settings::Settings;
    use crate::core::state::State;

    fn bump(r: &mut Record) -> Step<()> {
        r.consecutive_failures += 1;
        Step {
            value: (),
            dirty: true,
            transition: None,
        }
    }

    #[test]
    fn a_missing_key_reads_as_a_fresh_closed_breaker() {
        let store = MemoryStore::default();
        let loaded = load(&store, "k").unwrap();
        assert_eq!(loaded.record, Record::default());
        assert_eq!(loaded.cas, None);
    }

    #[test]
    fn damaged_bytes_read_as_a_fresh_breaker_and_say_so() {
        let store = MemoryStore::default();
        store.put("k", b"garbage");
        let loaded = load(&store, "k").unwrap();
        assert_eq!(loaded.record, Record::default());
        assert_eq!(loaded.damaged, Some(DecodeError::Length(7)));
        let updated = update(&store, "k", 3, bump).unwrap();
        assert_eq!(updated.record.consecutive_failures, 1);
        assert_eq!(load(&store, "k").unwrap().damaged, None, "rewritten whole");
    }

    #[test]
    fn damaged_bytes_are_replaced_even_by_a_decision_that_changes_nothing() {
        let store = MemoryStore::default();
        store.put("k", b"garbage");
        let s = Settings::default();
        let first = update(&store, "k", 3, |r| admit(r, &s, 0, 0)).unwrap();
        assert_eq!(first.damaged, Some(DecodeError::Length(7)));
        let second = update(&store, "k", 3, |r| admit(r, &s, 0, 0)).unwrap();
        assert_eq!(second.damaged, None, "the first reader repaired it");
    }

    #[test]
    fn a_decision_that_changes_nothing_writes_nothing() {
        let store = MemoryStore::default();
        update(&store, "k", 3, bump).unwrap();
        let cas_before = load(&store, "k").unwrap().cas;
        let s = Settings::default();
        let out = update(&store, "k", 3, |r| admit(r, &s, 0, 0)).unwrap();
        assert!(matches!(out.value, Admission::Admitted(_)));
        assert_eq!(load(&store, "k").unwrap().cas, cas_before);
    }

    #[test]
    fn a_lost_race_is_retried_on_fresh_bytes() {
        let store = MemoryStore::default();
        update(&store, "k", 3, bump).unwrap();
        let mut raced = false;
        *store.interfere.borrow_mut() = Some(Box::new(move |s: &MemoryStore, key: &str| {
            if !raced {
                raced = true;
                let mut other = load(s, key).unwrap().record;
                other.consecutive_failures += 10;
                s.put(key, &codec::encode(&other));
            }
        }));
        let out = update(&store, "k", 3, bump).unwrap();
        assert_eq!(
            out.record.consecutive_failures, 12,
            "both writers' counts kept"
        );
    }

    #[test]
    fn endless_contention_gives_up_without_writing() {
        let store = MemoryStore::default();
        update(&store, "k", 3, bump).unwrap();
        *store.interfere.borrow_mut() = Some(Box::new(|s: &MemoryStore, key: &str| {
            let other = load(s, key).unwrap().record;
            s.put(key, &codec::encode(&other));
        }));
        assert_eq!(update(&store, "k", 4, bump), Err(UpdateError::Contended));
        *store.interfere.borrow_mut() = None;
        assert_eq!(load(&store, "k").unwrap().record.consecutive_failures, 1);
    }

    #[test]
    fn a_trip_through_the_store_is_seen_by_the_next_reader() {
        let store = MemoryStore::default();
        let s = Settings {
            failure_threshold: 2,
            ..Settings::default()
        };
        for i in 0..2 {
            let ticket = match update(&store, "k", 3, |r| admit(r, &s, i, 0))
                .unwrap()
                .value
            {
                Admission::Admitted(t) => t,
                other => panic!("{other:?}"),
            };
            let fail = Call {
                outcome: Outcome::Failure(Failure::Status(500)),
                elapsed_ms: 1,
                retry_after_ms: None,
            };
            update(&store, "k", 3, |r| record(r, &s, ticket, fail, i)).unwrap();
        }
        assert_eq!(load(&store, "k").unwrap().record.state, State::Open);
    }
}
