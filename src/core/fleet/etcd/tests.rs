//! The etcd messages on the wire, byte for byte where the bytes matter, and the decoders
//! against junk.

use super::*;
use proptest::prelude::*;
use prost::Message;

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
