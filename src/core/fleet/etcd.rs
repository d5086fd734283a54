//! The etcd v3 gRPC messages the fleet sends and reads, declared by hand with prost (field
//! numbers from etcd's `api/etcdserverpb/rpc.proto` and `api/mvccpb/kv.proto`, enums as
//! `int32`, which has the same wire form), the request builders, and bounded decoders:
//! etcd's answers are untrusted bytes, so they are size-checked before prost sees them.

use prost::Message;

/// gRPC service and method names for Envoy's `dispatch_grpc_call` and `open_grpc_stream`.
pub mod method {
    pub const KV: &str = "etcdserverpb.KV";
    pub const RANGE: &str = "Range";
    pub const PUT: &str = "Put";
    pub const TXN: &str = "Txn";
    pub const WATCH: &str = "etcdserverpb.Watch";
    /// Bidirectional stream.
    pub const WATCH_STREAM: &str = "Watch";
    pub const LEASE: &str = "etcdserverpb.Lease";
    pub const LEASE_GRANT: &str = "LeaseGrant";
    /// Bidirectional stream.
    pub const LEASE_KEEP_ALIVE: &str = "LeaseKeepAlive";
    pub const AUTH: &str = "etcdserverpb.Auth";
    pub const AUTHENTICATE: &str = "Authenticate";
}

/// Initial metadata that makes etcd close a watch when its member loses the leader, so
/// quorum loss is not silent.
pub const HAS_LEADER: (&str, &str) = ("hasleader", "true");
/// Initial metadata key carrying the token from [`AUTHENTICATE`](method::AUTHENTICATE).
pub const TOKEN_METADATA: &str = "token";

/// Largest Range or Watch answer decoded: far above what 512 breakers and their probe slots
/// make, and a bound on what a hostile store can make the VM allocate.
pub const MAX_LARGE_RESPONSE: usize = 4 << 20;
/// Largest answer of any other call.
pub const MAX_SMALL_RESPONSE: usize = 64 << 10;

#[derive(Clone, PartialEq, Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub limit: i64,
    #[prost(int64, tag = "4")]
    pub revision: i64,
    #[prost(bool, tag = "7")]
    pub serializable: bool,
    #[prost(bool, tag = "8")]
    pub keys_only: bool,
    #[prost(bool, tag = "9")]
    pub count_only: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    #[prost(bool, tag = "3")]
    pub more: bool,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub lease: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteRangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteRangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub deleted: i64,
}

/// One operation of a transaction branch. Nested transactions (field 4) are not declared:
/// the fleet never sends them, and prost skips the field if one comes back.
#[derive(Clone, PartialEq, Message)]
pub struct RequestOp {
    #[prost(oneof = "Request", tags = "1, 2, 3")]
    pub request: Option<Request>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Request {
    #[prost(message, tag = "1")]
    Range(RangeRequest),
    #[prost(message, tag = "2")]
    Put(PutRequest),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeRequest),
}

#[derive(Clone, PartialEq, Message)]
pub struct ResponseOp {
    #[prost(oneof = "Response", tags = "1, 2, 3")]
    pub response: Option<Response>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Response {
    #[prost(message, tag = "1")]
    Range(RangeResponse),
    #[prost(message, tag = "2")]
    Put(PutResponse),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeResponse),
}

/// `Compare.result`.
pub const EQUAL: i32 = 0;
/// `Compare.target`.
pub const TARGET_CREATE: i32 = 1;
pub const TARGET_MOD: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct Compare {
    #[prost(int32, tag = "1")]
    pub result: i32,
    #[prost(int32, tag = "2")]
    pub target: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    #[prost(oneof = "TargetUnion", tags = "4, 5, 6, 7, 8")]
    pub target_union: Option<TargetUnion>,
    #[prost(bytes = "vec", tag = "64")]
    pub range_end: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TargetUnion {
    #[prost(int64, tag = "4")]
    Version(i64),
    #[prost(int64, tag = "5")]
    CreateRevision(i64),
    #[prost(int64, tag = "6")]
    ModRevision(i64),
    #[prost(bytes = "vec", tag = "7")]
    Value(Vec<u8>),
    #[prost(int64, tag = "8")]
    Lease(i64),
}

#[derive(Clone, PartialEq, Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TxnResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
    #[prost(message, repeated, tag = "3")]
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaseGrantRequest {
    #[prost(int64, tag = "1")]
    pub ttl: i64,
    #[prost(int64, tag = "2")]
    pub id: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaseGrantResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub id: i64,
    #[prost(int64, tag = "3")]
    pub ttl: i64,
    #[prost(string, tag = "4")]
    pub error: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaseKeepAliveRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaseKeepAliveResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// 0 or less: the lease has expired and must be granted again.
    #[prost(int64, tag = "3")]
    pub ttl: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchRequest {
    #[prost(oneof = "WatchRequestUnion", tags = "1, 2, 3")]
    pub request_union: Option<WatchRequestUnion>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WatchRequestUnion {
    #[prost(message, tag = "1")]
    Create(WatchCreateRequest),
    #[prost(message, tag = "2")]
    Cancel(WatchCancelRequest),
    #[prost(message, tag = "3")]
    Progress(WatchProgressRequest),
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
    #[prost(bool, tag = "4")]
    pub progress_notify: bool,
    #[prost(bool, tag = "6")]
    pub prev_kv: bool,
    #[prost(int64, tag = "7")]
    pub watch_id: i64,
    #[prost(bool, tag = "8")]
    pub fragment: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchCancelRequest {
    #[prost(int64, tag = "1")]
    pub watch_id: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchProgressRequest {}

#[derive(Clone, PartialEq, Message)]
pub struct WatchResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(bool, tag = "7")]
    pub fragment: bool,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// `mvccpb.Event.type`.
pub const EVENT_PUT: i32 = 0;
pub const EVENT_DELETE: i32 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
    #[prost(message, optional, tag = "3")]
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AuthenticateRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub password: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AuthenticateResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub token: String,
}

/// The serialized `envoy.config.core.v3.GrpcService` naming `cluster`, which is what
/// Envoy's gRPC host calls want as their cluster argument (a bare name can parse as a
/// broken proto and abort Envoy). `None` unless the name is 1 to 120 printable ASCII
/// bytes: then every length fits one varint byte below 0x80 and the bytes are valid UTF-8,
/// as the SDK's `&str` parameter needs.
pub fn grpc_service(cluster: &str) -> Option<String> {
    let n = cluster.len();
    if !(1..=120).contains(&n) || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    // envoy_grpc (field 1, length-delimited) { cluster_name (field 1, length-delimited) }
    let mut out = String::with_capacity(n + 4);
    out.push('\u{0a}');
    out.push(char::from(n as u8 + 2));
    out.push('\u{0a}');
    out.push(char::from(n as u8));
    out.push_str(cluster);
    Some(out)
}

/// The first key after every key that starts with `prefix`: the `range_end` of a prefix
/// range. An empty or all-0xff prefix has no such key; etcd's convention for that is `[0]`
/// ("to the end of the key space").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn range_op(key: &[u8], range_end: Vec<u8>, keys_only: bool) -> RequestOp {
    op(Request::Range(RangeRequest {
        key: key.to_vec(),
        range_end,
        keys_only,
        ..RangeRequest::default()
    }))
}

/// `Range` of every key under `prefix`, at most `limit` of them.
pub fn range_prefix(prefix: &[u8], limit: i64) -> Vec<u8> {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit,
        ..RangeRequest::default()
    }
    .encode_to_vec()
}

/// A linearizable `Range` counting one key: only a member that can reach a quorum
/// answers it (a leader cut off from the others stops at once, while it still renews
/// leases until it steps down), so the holder asks it once a second as the quorum probe.
pub fn range_quorum(key: &[u8]) -> Vec<u8> {
    RangeRequest {
        key: key.to_vec(),
        limit: 1,
        count_only: true,
        ..RangeRequest::default()
    }
    .encode_to_vec()
}

/// What a compare-and-swap expects of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist (`create_revision == 0`).
    Absent,
    /// The key was last written at this revision.
    ModRevision(i64),
}

fn compare(key: &[u8], expect: Expect) -> Compare {
    let (target, union) = match expect {
        Expect::Absent => (TARGET_CREATE, TargetUnion::CreateRevision(0)),
        Expect::ModRevision(r) => (TARGET_MOD, TargetUnion::ModRevision(r)),
    };
    Compare {
        result: EQUAL,
        target,
        key: key.to_vec(),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

/// A delete that rides along with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delete<'a> {
    /// One key (a prober's own slot, after its outcome).
    Key(&'a [u8]),
    /// Every key under a prefix (all slots of a breaker, when half-open ends). A single
    /// slot must not be deleted as a prefix: slot `1` is a prefix of slot `10`.
    Prefix(&'a [u8]),
}

/// The `Txn` that publishes a decision: put `value` at `key` if the key is as `expect`
/// says, and then apply `deletes`; otherwise read the key back, so the loser learns the
/// winner in the same round trip.
pub fn txn_publish(key: &[u8], value: &[u8], expect: Expect, deletes: &[Delete]) -> Vec<u8> {
    let mut success = vec![op(Request::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease: 0,
    }))];
    for d in deletes {
        let (key, range_end) = match *d {
            Delete::Key(k) => (k.to_vec(), Vec::new()),
            Delete::Prefix(p) => (p.to_vec(), prefix_end(p)),
        };
        success.push(op(Request::DeleteRange(DeleteRangeRequest {
            key,
            range_end,
        })));
    }
    TxnRequest {
        compare: vec![compare(key, expect)],
        success,
        failure: vec![range_op(key, Vec::new(), false)],
    }
    .encode_to_vec()
}

/// The `Txn` that claims a half-open probe slot: create `slot_key` bound to `lease` if it
/// does not exist and the decision key is still at `decision_revision` (the same half-open
/// episode); otherwise list the episode's slots (keys only) and read the decision key.
pub fn txn_claim_slot(
    slot_key: &[u8],
    member: &[u8],
    lease: i64,
    decision_key: &[u8],
    decision_revision: i64,
    slots_prefix: &[u8],
) -> Vec<u8> {
    TxnRequest {
        compare: vec![
            compare(slot_key, Expect::Absent),
            compare(decision_key, Expect::ModRevision(decision_revision)),
        ],
        success: vec![op(Request::Put(PutRequest {
            key: slot_key.to_vec(),
            value: member.to_vec(),
            lease,
        }))],
        failure: vec![
            range_op(slots_prefix, prefix_end(slots_prefix), true),
            range_op(decision_key, Vec::new(), false),
        ],
    }
    .encode_to_vec()
}

/// A plain put, for the member heartbeat key bound to the member's lease.
pub fn put(key: &[u8], value: &[u8], lease: i64) -> Vec<u8> {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
    }
    .encode_to_vec()
}

/// `LeaseGrant` for `ttl_secs` (etcd rounds anything under 2 s up to 2 s).
pub fn lease_grant(ttl_secs: i64) -> Vec<u8> {
    LeaseGrantRequest {
        ttl: ttl_secs,
        id: 0,
    }
    .encode_to_vec()
}

/// One keep-alive message for the `LeaseKeepAlive` stream.
pub fn lease_keep_alive(id: i64) -> Vec<u8> {
    LeaseKeepAliveRequest { id }.encode_to_vec()
}

/// The first message of the `Watch` stream: every key under `prefix`, from
/// `start_revision` on (0: from now).
pub fn watch_create(prefix: &[u8], start_revision: i64, prev_kv: bool) -> Vec<u8> {
    WatchRequest {
        request_union: Some(WatchRequestUnion::Create(WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision,
            prev_kv,
            ..WatchCreateRequest::default()
        })),
    }
    .encode_to_vec()
}

/// A progress request: etcd answers with `watch_id = -1` and its current revision, which
/// is how a silent (frozen, partitioned) etcd is told from a quiet one.
pub fn watch_progress() -> Vec<u8> {
    WatchRequest {
        request_union: Some(WatchRequestUnion::Progress(WatchProgressRequest {})),
    }
    .encode_to_vec()
}

pub fn watch_cancel(watch_id: i64) -> Vec<u8> {
    WatchRequest {
        request_union: Some(WatchRequestUnion::Cancel(WatchCancelRequest { watch_id })),
    }
    .encode_to_vec()
}

/// `Authenticate` with an etcd user and password; the answer's token goes in the `token`
/// metadata of every later call.
pub fn authenticate(name: &str, password: &str) -> Vec<u8> {
    AuthenticateRequest {
        name: name.to_string(),
        password: password.to_string(),
    }
    .encode_to_vec()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_grpc_service_names_the_cluster_in_envoy_grpc() {
        let s = grpc_service("etcd").unwrap();
        assert_eq!(s.as_bytes(), b"\x0a\x06\x0a\x04etcd");
        let long = "c".repeat(120);
        let s = grpc_service(&long).unwrap();
        assert_eq!(&s.as_bytes()[..4], &[0x0a, 122, 0x0a, 120]);
        assert_eq!(s.len(), 124);
    }

    #[test]
    fn a_cluster_name_that_cannot_be_a_valid_str_is_refused() {
        assert_eq!(grpc_service(""), None);
        assert_eq!(grpc_service(&"c".repeat(121)), None);
        assert_eq!(grpc_service("étcd"), None);
        assert_eq!(grpc_service("et cd"), None);
    }

    #[test]
    fn prefix_ends_follow_etcds_convention() {
        assert_eq!(prefix_end(b"/p/"), b"/p0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn a_prefix_range_encodes_key_end_and_limit() {
        // key (1, bytes) "/a/", range_end (2, bytes) "/a0", limit (3, varint) 300.
        assert_eq!(
            range_prefix(b"/a/", 300),
            b"\x0a\x03/a/\x12\x03/a0\x18\xac\x02"
        );
    }

    #[test]
    fn a_publish_compares_mod_revision_and_reads_back_on_failure() {
        let bytes = txn_publish(b"k", b"v", Expect::ModRevision(5), &[]);
        let compare = b"\x10\x02\x1a\x01k\x30\x05"; // target MOD, key, mod_revision 5
        let put = b"\x0a\x01k\x12\x01v"; // key, value
        let range = b"\x0a\x01k"; // key
        let mut want = vec![0x0a, compare.len() as u8];
        want.extend_from_slice(compare);
        want.extend_from_slice(&[0x12, put.len() as u8 + 2, 0x12, put.len() as u8]);
        want.extend_from_slice(put);
        want.extend_from_slice(&[0x1a, range.len() as u8 + 2, 0x0a, range.len() as u8]);
        want.extend_from_slice(range);
        assert_eq!(bytes, want);
    }

    #[test]
    fn create_if_absent_sends_create_revision_zero_explicitly() {
        let bytes = txn_publish(
            b"k",
            b"v",
            Expect::Absent,
            &[Delete::Prefix(b"p/"), Delete::Key(b"p/1")],
        );
        // The oneof member is present even though it is zero: target CREATE, key, 5 => 0.
        assert!(bytes.starts_with(b"\x0a\x07\x10\x01\x1a\x01k\x28\x00"));
        let txn = TxnRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(txn.success.len(), 3);
        assert_eq!(
            txn.success[1].request,
            Some(Request::DeleteRange(DeleteRangeRequest {
                key: b"p/".to_vec(),
                range_end: b"p0".to_vec()
            }))
        );
        assert_eq!(
            txn.success[2].request,
            Some(Request::DeleteRange(DeleteRangeRequest {
                key: b"p/1".to_vec(),
                range_end: Vec::new()
            })),
            "one slot is deleted alone, not as a prefix that would take slot 10 too"
        );
    }

    #[test]
    fn a_slot_claim_binds_the_lease_and_checks_the_episode() {
        let bytes = txn_claim_slot(b"s", b"m", 7, b"d", 9, b"sp/");
        let txn = TxnRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            txn.compare[0].target_union,
            Some(TargetUnion::CreateRevision(0))
        );
        assert_eq!(
            txn.compare[1].target_union,
            Some(TargetUnion::ModRevision(9))
        );
        assert_eq!(
            txn.success[0].request,
            Some(Request::Put(PutRequest {
                key: b"s".to_vec(),
                value: b"m".to_vec(),
                lease: 7
            }))
        );
        match &txn.failure[0].request {
            Some(Request::Range(r)) => assert!(r.keys_only && r.range_end == b"sp0"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_requests_have_their_known_bytes() {
        assert_eq!(lease_grant(6), b"\x08\x06");
        assert_eq!(lease_keep_alive(1), b"\x08\x01");
        assert_eq!(watch_progress(), b"\x1a\x00");
        assert_eq!(watch_cancel(3), b"\x12\x02\x08\x03");
        assert_eq!(authenticate("u", "pw"), b"\x0a\x01u\x12\x02pw");
        assert_eq!(put(b"k", b"v", 2), b"\x0a\x01k\x12\x01v\x18\x02");
        // create (1) { key "/p", range_end "/q", start_revision 8, prev_kv true }
        assert_eq!(
            watch_create(b"/p", 8, true),
            b"\x0a\x0c\x0a\x02/p\x12\x02/q\x18\x08\x30\x01"
        );
    }

    #[test]
    fn a_lost_publish_hands_back_the_winner() {
        let winner = KeyValue {
            key: b"k".to_vec(),
            mod_revision: 12,
            value: b"rec".to_vec(),
            ..KeyValue::default()
        };
        let answer = TxnResponse {
            header: Some(ResponseHeader {
                revision: 12,
                ..ResponseHeader::default()
            }),
            succeeded: false,
            responses: vec![ResponseOp {
                response: Some(Response::Range(RangeResponse {
                    kvs: vec![winner.clone()],
                    ..RangeResponse::default()
                })),
            }],
        }
        .encode_to_vec();
        assert_eq!(
            txn_outcome(&answer),
            Ok(TxnOutcome {
                succeeded: false,
                revision: 12,
                kvs: vec![winner]
            })
        );
    }

    #[test]
    fn watch_messages_are_told_apart() {
        let header = Some(ResponseHeader {
            revision: 40,
            ..ResponseHeader::default()
        });
        let progress = WatchResponse {
            header: header.clone(),
            watch_id: -1,
            ..WatchResponse::default()
        };
        assert_eq!(
            watch_message(&progress.encode_to_vec()),
            Ok(WatchMessage::Progress { revision: 40 })
        );
        let created = WatchResponse {
            header: header.clone(),
            created: true,
            ..WatchResponse::default()
        };
        assert_eq!(
            watch_message(&created.encode_to_vec()),
            Ok(WatchMessage::Created {
                watch_id: 0,
                revision: 40
            })
        );
        let kv = KeyValue {
            key: b"k".to_vec(),
            ..KeyValue::default()
        };
        let events = WatchResponse {
            header: header.clone(),
            events: vec![
                Event {
                    kind: EVENT_DELETE,
                    kv: Some(kv.clone()),
                    prev_kv: None,
                },
                Event {
                    kind: EVENT_PUT,
                    kv: None,
                    prev_kv: None,
                },
            ],
            ..WatchResponse::default()
        };
        assert_eq!(
            watch_message(&events.encode_to_vec()),
            Ok(WatchMessage::Events {
                revision: 40,
                events: vec![(true, kv)]
            })
        );
        let canceled = WatchResponse {
            canceled: true,
            compact_revision: 7,
            cancel_reason: "compacted".into(),
            ..WatchResponse::default()
        };
        assert_eq!(
            watch_message(&canceled.encode_to_vec()),
            Ok(WatchMessage::Canceled {
                reason: "compacted".into(),
                compact_revision: 7
            })
        );
    }

    #[test]
    fn oversized_answers_are_refused_before_decoding() {
        let big = vec![0u8; MAX_SMALL_RESPONSE + 1];
        assert_eq!(lease_kept(&big), Err(WireError::TooLarge(big.len())));
        assert_eq!(
            range_answer(&vec![0u8; MAX_LARGE_RESPONSE + 1]),
            Err(WireError::TooLarge(MAX_LARGE_RESPONSE + 1))
        );
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        // A length prefix running past the end, and a field with wire type 7.
        assert_eq!(txn_outcome(b"\x0a\x05\x01"), Err(WireError::Malformed));
        assert_eq!(watch_message(b"\x0f"), Err(WireError::Malformed));
        assert_eq!(auth_token(b"\x12\x02\xff\xfe"), Err(WireError::Malformed));
    }

    proptest! {
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = txn_outcome(&bytes);
            let _ = range_answer(&bytes);
            let _ = watch_message(&bytes);
            let _ = lease_granted(&bytes);
            let _ = lease_kept(&bytes);
            let _ = auth_token(&bytes);
        }

    }
}
