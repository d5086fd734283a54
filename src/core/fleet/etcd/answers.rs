//! What the fleet reads from etcd: every answer is untrusted bytes, so its size is checked
//! against a bound before prost sees it, and it comes back reduced to what the fleet acts on.

use prost::Message;

use super::messages::*;

/// Largest Range or Watch answer decoded: far above what 512 breakers and their probe slots
/// make, and a bound on what a hostile store can make the VM allocate.
pub const MAX_LARGE_RESPONSE: usize = 4 << 20;
/// Largest answer of any other call.
pub const MAX_SMALL_RESPONSE: usize = 64 << 10;

/// Why an answer from etcd was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Larger than the bound for its kind of answer.
    TooLarge(usize),
    /// Not a valid message of the expected type.
    Malformed,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooLarge(n) => write!(f, "an answer of {n} bytes is over the bound"),
            WireError::Malformed => write!(f, "an answer that is not valid protobuf"),
        }
    }
}

/// Decodes an answer if it is at most `max` bytes. Memory use is then bounded by a small
/// multiple of `max`, since every decoded element needs input bytes of its own.
pub fn decode_bounded<M: Message + Default>(bytes: &[u8], max: usize) -> Result<M, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge(bytes.len()));
    }
    M::decode(bytes).map_err(|_| WireError::Malformed)
}

/// A `Txn` answer, reduced to what the fleet acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnOutcome {
    pub succeeded: bool,
    /// The store's revision after the transaction (the new `mod_revision` of a put).
    pub revision: i64,
    /// Every key-value the branch's ranges returned, in order.
    pub kvs: Vec<KeyValue>,
}

/// Reads a `Txn` answer.
pub fn txn_outcome(bytes: &[u8]) -> Result<TxnOutcome, WireError> {
    let r: TxnResponse = decode_bounded(bytes, MAX_LARGE_RESPONSE)?;
    let kvs = r
        .responses
        .into_iter()
        .filter_map(|op| match op.response {
            Some(Response::Range(range)) => Some(range.kvs),
            _ => None,
        })
        .flatten()
        .collect();
    Ok(TxnOutcome {
        succeeded: r.succeeded,
        revision: r.header.map_or(0, |h| h.revision),
        kvs,
    })
}

/// A `Range` answer: the store's revision and the key-values.
pub fn range_answer(bytes: &[u8]) -> Result<(i64, Vec<KeyValue>), WireError> {
    let r: RangeResponse = decode_bounded(bytes, MAX_LARGE_RESPONSE)?;
    Ok((r.header.map_or(0, |h| h.revision), r.kvs))
}

/// One message of the watch stream, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    Created {
        watch_id: i64,
        revision: i64,
    },
    /// The answer to a progress request: alive, nothing new up to `revision`.
    Progress {
        revision: i64,
    },
    /// Changes up to `revision`: `(deleted, key-value)` in order.
    Events {
        revision: i64,
        events: Vec<(bool, KeyValue)>,
    },
    /// etcd ended the watch; a non-zero `compact_revision` means the start revision was
    /// compacted away and a fresh Range is needed.
    Canceled {
        reason: String,
        compact_revision: i64,
    },
}

/// Reads one watch stream message.
pub fn watch_message(bytes: &[u8]) -> Result<WatchMessage, WireError> {
    let r: WatchResponse = decode_bounded(bytes, MAX_LARGE_RESPONSE)?;
    let revision = r.header.map_or(0, |h| h.revision);
    Ok(if r.canceled {
        WatchMessage::Canceled {
            reason: r.cancel_reason,
            compact_revision: r.compact_revision,
        }
    } else if r.created {
        WatchMessage::Created {
            watch_id: r.watch_id,
            revision,
        }
    } else if r.events.is_empty() {
        WatchMessage::Progress { revision }
    } else {
        WatchMessage::Events {
            revision,
            events: r
                .events
                .into_iter()
                .filter_map(|e| Some((e.kind == EVENT_DELETE, e.kv?)))
                .collect(),
        }
    })
}

/// A `Put` answer: the revision that stored it.
pub fn put_revision(bytes: &[u8]) -> Result<i64, WireError> {
    let r: PutResponse = decode_bounded(bytes, MAX_SMALL_RESPONSE)?;
    Ok(r.header.map_or(0, |h| h.revision))
}

/// A `LeaseGrant` answer: the lease ID and the TTL etcd granted.
pub fn lease_granted(bytes: &[u8]) -> Result<(i64, i64), WireError> {
    let r: LeaseGrantResponse = decode_bounded(bytes, MAX_SMALL_RESPONSE)?;
    Ok((r.id, r.ttl))
}

/// A keep-alive answer: the TTL left (0 or less: expired).
pub fn lease_kept(bytes: &[u8]) -> Result<i64, WireError> {
    let r: LeaseKeepAliveResponse = decode_bounded(bytes, MAX_SMALL_RESPONSE)?;
    Ok(r.ttl)
}

/// An `Authenticate` answer: the token.
pub fn auth_token(bytes: &[u8]) -> Result<String, WireError> {
    let r: AuthenticateResponse = decode_bounded(bytes, MAX_SMALL_RESPONSE)?;
    Ok(r.token)
}
