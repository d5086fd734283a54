//! What the fleet sends to etcd: the service and method names, the cluster argument of
//! Envoy's gRPC host calls, and one builder per request, each returning the encoded bytes.

use prost::Message;

use super::messages::*;
use crate::core::limits::MAX_ETCD_CLUSTER_BYTES;

// The outer length (the name's plus two) must stay a one-byte varint below 0x80.
const _: () = assert!(MAX_ETCD_CLUSTER_BYTES + 2 < 0x80);

/// gRPC service and method names for Envoy's `dispatch_grpc_call` and `open_grpc_stream`.
pub mod method {
    pub const KV: &str = "etcdserverpb.KV";
    pub const RANGE: &str = "Range";
    pub const PUT: &str = "Put";
    pub const TXN: &str = "Txn";
    pub const DELETE_RANGE: &str = "DeleteRange";
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

/// The serialized `envoy.config.core.v3.GrpcService` naming `cluster`, which is what
/// Envoy's gRPC host calls want as their cluster argument (a bare name can parse as a
/// broken proto and abort Envoy). `None` unless the name is 1 to
/// [`MAX_ETCD_CLUSTER_BYTES`] printable ASCII bytes: then every length fits one varint
/// byte below 0x80 and the bytes are valid UTF-8, as the SDK's `&str` parameter needs.
pub fn grpc_service(cluster: &str) -> Option<String> {
    let n = cluster.len();
    if !(1..=MAX_ETCD_CLUSTER_BYTES).contains(&n) || !cluster.bytes().all(|b| b.is_ascii_graphic())
    {
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

/// A `DeleteRange` of one key (a member's vote, withdrawn).
pub fn delete_key(key: &[u8]) -> Vec<u8> {
    DeleteRangeRequest {
        key: key.to_vec(),
        range_end: Vec::new(),
    }
    .encode_to_vec()
}

/// A plain put, for the member heartbeat key and a member's vote, bound to its lease.
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
