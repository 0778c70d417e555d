//! Throughput of the in-memory MVCC store, request by request, without the
//! network: `cargo bench -p basalt-engine --bench mvcc_kv`. One run, a few seconds.

use std::hint::black_box;
use std::time::Instant;

use basalt_engine::mvcc::KvStore;
use basalt_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bytes::Bytes;

/// Distinct keys the store holds while reads are measured.
const KEYS: usize = 100_000;
/// Bytes in each value, about a small Kubernetes object's worth of metadata.
const VALUE_BYTES: usize = 256;
/// Requests timed per case.
const REQUESTS: usize = 200_000;

fn key(index: usize) -> Bytes {
    Bytes::from(format!("/registry/pods/ns/pod-{index:08}"))
}

fn report(case: &str, requests: usize, started: Instant) {
    let elapsed_ns = started.elapsed().as_nanos() as f64;
    let per_request_ns = elapsed_ns / requests as f64;
    println!(
        "{case:<40} {per_request_ns:>9.0} ns/request {:>10.0} requests/s",
        1e9 / per_request_ns
    );
}

fn main() {
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let mut store = KvStore::new();

    let started = Instant::now();
    for index in 0..KEYS {
        let req = PutRequest {
            key: key(index),
            value: value.clone(),
            ..Default::default()
        };
        black_box(store.put(&req).unwrap());
    }
    report("put, new key", KEYS, started);

    let started = Instant::now();
    for index in 0..REQUESTS {
        let req = PutRequest {
            key: key(index * 7919 % KEYS),
            value: value.clone(),
            prev_kv: true,
            ..Default::default()
        };
        black_box(store.put(&req).unwrap());
    }
    report("put, existing key, prev_kv", REQUESTS, started);

    let started = Instant::now();
    for index in 0..REQUESTS {
        let req = RangeRequest {
            key: key(index * 7919 % KEYS),
            ..Default::default()
        };
        black_box(store.range(&req).unwrap());
    }
    report("range, one key", REQUESTS, started);

    let started = Instant::now();
    for index in 0..REQUESTS / 10 {
        let first = index * 7919 % (KEYS - 100);
        let req = RangeRequest {
            key: key(first),
            range_end: key(first + 100),
            limit: 10,
            ..Default::default()
        };
        black_box(store.range(&req).unwrap());
    }
    report("range, 100 keys, limit 10", REQUESTS / 10, started);

    let started = Instant::now();
    for index in 0..REQUESTS / 10 {
        let first = index * 7919 % (KEYS - 100);
        let req = RangeRequest {
            key: key(first),
            range_end: key(first + 100),
            count_only: true,
            ..Default::default()
        };
        black_box(store.range(&req).unwrap());
    }
    report("range, 100 keys, count_only", REQUESTS / 10, started);

    let started = Instant::now();
    for index in 0..REQUESTS {
        let target = key(index * 7919 % KEYS);
        let req = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Mod as i32,
                key: target.clone(),
                target_union: Some(TargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: target,
                    value: value.clone(),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        black_box(store.txn(&req).unwrap());
    }
    report("txn, compare mod + put (kube update)", REQUESTS, started);
}
