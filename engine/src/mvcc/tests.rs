//! Behaviour of [`KvStore`] stated as etcd 3.5.1's rules. The wire-level
//! comparison with a real etcd lives in tests/differential/.

use basalt_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use basalt_proto::mvccpb::KeyValue;
use bytes::Bytes;
use proptest::prelude::*;

use super::{KvStore, MemoryBackend, MvccError, RevisionBackend};

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn put(store: &mut KvStore, key: &str, value: &str) -> i64 {
    let req = PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    };
    store.put(&req).unwrap().header.unwrap().revision
}

fn get(store: &KvStore, key: &str, revision: i64) -> Result<Option<KeyValue>, MvccError> {
    let req = RangeRequest {
        key: b(key),
        revision,
        ..Default::default()
    };
    Ok(store.range(&req)?.kvs.into_iter().next())
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })),
    }
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: b(key),
            ..Default::default()
        })),
    }
}

fn delete_op(key: &str, range_end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: b(key),
            range_end: Bytes::copy_from_slice(range_end),
            ..Default::default()
        })),
    }
}

fn value_equals(key: &str, value: &str) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: b(key),
        target_union: Some(TargetUnion::Value(b(value))),
        ..Default::default()
    }
}

#[test]
fn a_fresh_store_is_at_revision_one_and_each_write_adds_one() {
    let mut store = KvStore::new();
    assert_eq!(store.current_revision(), 1);
    assert_eq!(put(&mut store, "a", "1"), 2);
    assert_eq!(put(&mut store, "a", "2"), 3);
    let kv = get(&store, "a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
}

#[test]
fn a_deleted_and_recreated_key_starts_a_new_generation() {
    let mut store = KvStore::new();
    put(&mut store, "a", "1");
    put(&mut store, "a", "2");
    let deleted = store
        .delete_range(&DeleteRangeRequest {
            key: b("a"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((deleted.deleted, deleted.header.unwrap().revision), (1, 4));
    put(&mut store, "a", "3");
    let kv = get(&store, "a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (5, 1));
    assert_eq!(get(&store, "a", 4).unwrap(), None);
    assert_eq!(get(&store, "a", 3).unwrap().unwrap().value, b("2"));
}

#[test]
fn deleting_nothing_keeps_the_revision() {
    let mut store = KvStore::new();
    let response = store
        .delete_range(&DeleteRangeRequest {
            key: b("missing"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (response.deleted, response.header.unwrap().revision),
        (0, 1)
    );
    assert_eq!(store.current_revision(), 1);
}

#[test]
fn a_txn_is_one_revision_and_reads_see_its_earlier_writes() {
    let mut store = KvStore::new();
    let response = store
        .txn(&TxnRequest {
            compare: Vec::new(),
            success: vec![
                range_op("a"),
                put_op("a", "1"),
                put_op("b", "2"),
                range_op("a"),
            ],
            failure: Vec::new(),
        })
        .unwrap();
    assert_eq!(response.header.unwrap().revision, 2);
    let ranges: Vec<(i64, usize)> = response
        .responses
        .iter()
        .filter_map(|op| match &op.response {
            Some(Response::ResponseRange(range)) => {
                Some((range.header.unwrap().revision, range.kvs.len()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(ranges, vec![(1, 0), (2, 1)]);
    let a = get(&store, "a", 0).unwrap().unwrap();
    let b_kv = get(&store, "b", 0).unwrap().unwrap();
    assert_eq!((a.mod_revision, b_kv.mod_revision), (2, 2));
}

#[test]
fn nested_compares_see_the_state_before_the_txn() {
    let mut store = KvStore::new();
    put(&mut store, "a", "old");
    let nested = TxnRequest {
        compare: vec![value_equals("a", "old")],
        success: vec![put_op("result", "saw-old")],
        failure: vec![put_op("result", "saw-new")],
    };
    store
        .txn(&TxnRequest {
            compare: Vec::new(),
            success: vec![
                put_op("a", "new"),
                RequestOp {
                    request: Some(Request::RequestTxn(nested)),
                },
            ],
            failure: Vec::new(),
        })
        .unwrap();
    assert_eq!(
        get(&store, "result", 0).unwrap().unwrap().value,
        b("saw-old")
    );
}

#[test]
fn value_compare_on_a_missing_key_always_fails() {
    let mut store = KvStore::new();
    let mut not_equal = value_equals("missing", "x");
    not_equal.result = CompareResult::NotEqual as i32;
    let response = store
        .txn(&TxnRequest {
            compare: vec![not_equal],
            success: Vec::new(),
            failure: Vec::new(),
        })
        .unwrap();
    assert!(!response.succeeded);
}

#[test]
fn ignore_value_after_a_from_key_delete_in_the_same_txn_is_refused_unapplied() {
    let mut store = KvStore::new();
    put(&mut store, "b", "1");
    let txn = TxnRequest {
        compare: Vec::new(),
        success: vec![
            delete_op("a", b"\0"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b("b"),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        failure: Vec::new(),
    };
    assert_eq!(store.txn(&txn), Err(MvccError::KeyNotFound));
    assert_eq!(store.current_revision(), 2);
    assert!(get(&store, "b", 0).unwrap().is_some());
}

#[test]
fn compaction_rules() {
    let mut store = KvStore::new();
    for value in ["1", "2", "3"] {
        put(&mut store, "a", value);
    }
    let compact = |store: &mut KvStore, revision| {
        store
            .compact(&CompactionRequest {
                revision,
                physical: false,
            })
            .map(|response| response.header.unwrap().revision)
    };
    assert_eq!(compact(&mut store, 5), Err(MvccError::FutureRevision));
    assert_eq!(compact(&mut store, 3), Ok(4));
    assert_eq!(compact(&mut store, 3), Err(MvccError::Compacted));
    assert_eq!(compact(&mut store, 2), Err(MvccError::Compacted));
    assert_eq!(get(&store, "a", 2), Err(MvccError::Compacted));
    assert_eq!(get(&store, "a", 3).unwrap().unwrap().value, b("2"));
    assert_eq!(get(&store, "a", 5), Err(MvccError::FutureRevision));
    // Only the newest revision at or below 3 and the one above it survive.
    assert_eq!(store.backend().len(), 2);
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8, Option<u8>),
    Txn(Vec<(u8, u8)>, u8),
    Compact(u8),
}

fn key(index: u8) -> Bytes {
    Bytes::from(vec![b'a' + index])
}

fn apply(store: &mut KvStore, step: &Step) {
    match step {
        Step::Put(k, v) => {
            let req = PutRequest {
                key: key(*k),
                value: Bytes::from(vec![*v]),
                ..Default::default()
            };
            store.put(&req).unwrap();
        }
        Step::Delete(k, end) => {
            let req = DeleteRangeRequest {
                key: key(*k),
                range_end: end.map(key).unwrap_or_default(),
                ..Default::default()
            };
            store.delete_range(&req).unwrap();
        }
        Step::Txn(puts, delete) => {
            let mut success: Vec<RequestOp> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (k, v) in puts {
                if *k != *delete && seen.insert(*k) {
                    success.push(RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key(*k),
                            value: Bytes::from(vec![*v]),
                            ..Default::default()
                        })),
                    });
                }
            }
            success.push(RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: key(*delete),
                    ..Default::default()
                })),
            });
            store
                .txn(&TxnRequest {
                    compare: Vec::new(),
                    success,
                    failure: Vec::new(),
                })
                .unwrap();
        }
        Step::Compact(fraction) => {
            let span = store.current_revision() - store.compacted_revision().max(0);
            let revision =
                store.compacted_revision().max(0) + 1 + span * i64::from(*fraction) / 256;
            if revision <= store.current_revision() {
                store
                    .compact(&CompactionRequest {
                        revision,
                        physical: true,
                    })
                    .unwrap();
            }
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..6, prop::option::of(0u8..7)).prop_map(|(k, end)| Step::Delete(k, end)),
        2 => (prop::collection::vec((0u8..6, any::<u8>()), 0..4), 0u8..6)
            .prop_map(|(puts, delete)| Step::Txn(puts, delete)),
        1 => any::<u8>().prop_map(Step::Compact),
    ]
}

/// Every key's answer at every readable revision.
fn snapshot(store: &KvStore) -> Vec<Result<Vec<KeyValue>, MvccError>> {
    (store.compacted_revision().max(1)..=store.current_revision())
        .map(|revision| {
            let req = RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                revision,
                ..Default::default()
            };
            store.range(&req).map(|response| response.kvs)
        })
        .collect()
}

proptest! {
    #[test]
    fn compaction_never_changes_a_readable_answer(
        steps in prop::collection::vec(step(), 1..40),
        compact_fraction in any::<u8>(),
    ) {
        let mut store = KvStore::new();
        for step in &steps {
            apply(&mut store, step);
        }
        let before = snapshot(&store);
        let first_readable = store.compacted_revision().max(1);
        apply(&mut store, &Step::Compact(compact_fraction));
        let skipped = (store.compacted_revision().max(1) - first_readable) as usize;
        prop_assert_eq!(&snapshot(&store)[..], &before[skipped..]);
    }

    #[test]
    fn reopening_the_backend_restores_the_same_store(steps in prop::collection::vec(step(), 1..40)) {
        let mut store = KvStore::new();
        for step in &steps {
            apply(&mut store, step);
        }
        let reopened = KvStore::open(store.backend().clone()).unwrap();
        prop_assert_eq!(reopened.current_revision(), store.current_revision());
        prop_assert_eq!(reopened.compacted_revision(), store.compacted_revision());
        prop_assert_eq!(snapshot(&reopened), snapshot(&store));
    }
}

#[test]
fn an_interrupted_compaction_is_finished_on_open() {
    let mut store = KvStore::new();
    for value in ["1", "2", "3"] {
        put(&mut store, "a", value);
    }
    let mut backend: MemoryBackend = store.backend().clone();
    backend
        .put_meta(super::MetaKey::ScheduledCompactRevision, 3)
        .unwrap();
    let reopened = KvStore::open(backend).unwrap();
    assert_eq!(reopened.compacted_revision(), 3);
    assert_eq!(reopened.backend().len(), 2);
    assert_eq!(get(&reopened, "a", 2), Err(MvccError::Compacted));
}

fn any_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        Just(Bytes::from_static(b"\0")),
        (0u8..4).prop_map(key),
        prop::collection::vec(any::<u8>(), 0..3).prop_map(Bytes::from),
    ]
}

fn any_revision() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), Just(i64::MIN), Just(i64::MAX), -3i64..30]
}

fn any_range() -> impl Strategy<Value = RangeRequest> {
    (
        (any_bytes(), any_bytes(), any_revision(), any_revision()),
        (-2i32..8, -2i32..8, any::<bool>(), any::<bool>()),
        (
            any_revision(),
            any_revision(),
            any_revision(),
            any_revision(),
        ),
    )
        .prop_map(
            |((key, range_end, limit, revision), (order, target, keys_only, count_only), mods)| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order: order,
                    sort_target: target,
                    keys_only,
                    count_only,
                    min_mod_revision: mods.0,
                    max_mod_revision: mods.1,
                    min_create_revision: mods.2,
                    max_create_revision: mods.3,
                    ..Default::default()
                }
            },
        )
}

fn any_put() -> impl Strategy<Value = PutRequest> {
    (
        any_bytes(),
        any_bytes(),
        prop_oneof![Just(0i64), any::<i64>()],
        any::<[bool; 3]>(),
    )
        .prop_map(
            |(key, value, lease, [prev_kv, ignore_value, ignore_lease])| PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn any_delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (any_bytes(), any_bytes(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| {
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        }
    })
}

fn any_compare() -> impl Strategy<Value = Compare> {
    (
        any_bytes(),
        any_bytes(),
        -1i32..6,
        -1i32..6,
        any_revision(),
        any_bytes(),
    )
        .prop_map(|(key, range_end, result, target, operand, value)| Compare {
            result,
            target,
            key,
            range_end,
            target_union: Some(match operand.rem_euclid(5) {
                0 => TargetUnion::Version(operand),
                1 => TargetUnion::CreateRevision(operand),
                2 => TargetUnion::ModRevision(operand),
                3 => TargetUnion::Value(value),
                _ => TargetUnion::Lease(operand),
            }),
        })
}

fn any_txn() -> impl Strategy<Value = TxnRequest> {
    let leaf_op = prop_oneof![
        Just(RequestOp { request: None }),
        any_range().prop_map(|r| RequestOp {
            request: Some(Request::RequestRange(r))
        }),
        any_put().prop_map(|r| RequestOp {
            request: Some(Request::RequestPut(r))
        }),
        any_delete().prop_map(|r| RequestOp {
            request: Some(Request::RequestDeleteRange(r))
        }),
    ];
    let leaf_txn = (
        prop::collection::vec(any_compare(), 0..3),
        prop::collection::vec(leaf_op.clone(), 0..4),
        prop::collection::vec(leaf_op.clone(), 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    leaf_txn.prop_recursive(3, 24, 4, move |inner| {
        let op = prop_oneof![
            3 => leaf_op.clone(),
            1 => inner.prop_map(|t| RequestOp { request: Some(Request::RequestTxn(t)) }),
        ];
        (
            prop::collection::vec(any_compare(), 0..3),
            prop::collection::vec(op.clone(), 0..4),
            prop::collection::vec(op, 0..4),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
    })
}

#[derive(Debug, Clone)]
enum AnyRequest {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
}

fn any_request() -> impl Strategy<Value = AnyRequest> {
    prop_oneof![
        1 => any_range().prop_map(AnyRequest::Range),
        2 => any_put().prop_map(AnyRequest::Put),
        1 => any_delete().prop_map(AnyRequest::Delete),
        2 => any_txn().prop_map(AnyRequest::Txn),
        1 => any_revision().prop_map(AnyRequest::Compact),
    ]
}

proptest! {
    /// Apply must be total: whatever reaches the store, validated or not, it
    /// answers (perhaps with an error) and never panics, and a refused write
    /// leaves the revision where it was.
    #[test]
    fn any_request_is_answered_without_a_panic(requests in prop::collection::vec(any_request(), 1..30)) {
        let mut store = KvStore::new();
        for request in &requests {
            let revision_before = store.current_revision();
            let refused = match request {
                AnyRequest::Range(req) => store.range(req).is_err(),
                AnyRequest::Put(req) => store.put(req).is_err(),
                AnyRequest::Delete(req) => store.delete_range(req).is_err(),
                AnyRequest::Txn(req) => store.txn(req).is_err(),
                AnyRequest::Compact(revision) => store
                    .compact(&CompactionRequest { revision: *revision, physical: false })
                    .is_err(),
            };
            if refused {
                prop_assert_eq!(store.current_revision(), revision_before);
            }
        }
    }
}
