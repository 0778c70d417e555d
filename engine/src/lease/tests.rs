//! The lessor's rules, as etcd 3.5's lessor states them.

use std::time::{Duration, Instant};

use basalt_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use bytes::Bytes;

use super::{LeaseError, Lessor, TimeToLive};
use crate::mvcc::{KvStore, MvccError};

const MIN_TTL_S: i64 = 2;

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn setup() -> (KvStore, Lessor) {
    let mut store = KvStore::new();
    let lessor = Lessor::new(&store, MIN_TTL_S);
    store.set_lease_lookup(Box::new(lessor.lookup()));
    (store, lessor)
}

fn put(store: &mut KvStore, lessor: &mut Lessor, key: &str, lease: i64) -> Result<(), MvccError> {
    store.put(&PutRequest {
        key: b(key),
        value: b("v"),
        lease,
        ..Default::default()
    })?;
    lessor.observe(store)
}

fn keys(lessor: &Lessor, id: i64, now: Instant) -> Vec<Bytes> {
    lessor.time_to_live(id, true, now).unwrap().keys
}

#[test]
fn grant_raises_the_ttl_to_the_minimum_and_refuses_what_etcd_refuses() {
    let (_, mut lessor) = setup();
    let now = Instant::now();
    // (id, ttl asked, result)
    let cases = [
        (1, 1, Ok(MIN_TTL_S)),
        (2, 0, Ok(MIN_TTL_S)),
        (3, 60, Ok(60)),
        (3, 60, Err(LeaseError::Exists)),
        (4, 9_000_000_001, Err(LeaseError::TtlTooLarge)),
    ];
    for (id, ttl_s, expected) in cases {
        assert_eq!(
            lessor.grant(id, ttl_s, now),
            expected,
            "lease {id} ttl {ttl_s}"
        );
    }
    assert_eq!(lessor.leases(), vec![1, 2, 3]);
}

#[test]
fn a_put_needs_a_granted_lease() {
    let (mut store, mut lessor) = setup();
    assert_eq!(
        put(&mut store, &mut lessor, "k", 7),
        Err(MvccError::LeaseNotFound)
    );
    lessor.grant(7, 10, Instant::now()).unwrap();
    assert_eq!(put(&mut store, &mut lessor, "k", 7), Ok(()));
}

#[test]
fn keys_follow_their_newest_write() {
    let (mut store, mut lessor) = setup();
    let now = Instant::now();
    lessor.grant(1, 10, now).unwrap();
    lessor.grant(2, 10, now).unwrap();
    put(&mut store, &mut lessor, "b", 1).unwrap();
    put(&mut store, &mut lessor, "a", 1).unwrap();
    put(&mut store, &mut lessor, "c", 1).unwrap();
    assert_eq!(keys(&lessor, 1, now), vec![b("a"), b("b"), b("c")]);
    put(&mut store, &mut lessor, "a", 2).unwrap(); // moved to another lease
    put(&mut store, &mut lessor, "b", 0).unwrap(); // put without a lease detaches
    store
        .delete_range(&DeleteRangeRequest {
            key: b("c"),
            ..Default::default()
        })
        .unwrap();
    lessor.observe(&store).unwrap();
    assert_eq!(keys(&lessor, 1, now), Vec::<Bytes>::new());
    assert_eq!(keys(&lessor, 2, now), vec![b("a")]);
}

#[test]
fn revoke_deletes_every_attached_key_in_one_revision() {
    let (mut store, mut lessor) = setup();
    let now = Instant::now();
    lessor.grant(1, 10, now).unwrap();
    lessor.grant(2, 10, now).unwrap();
    for key in ["x", "y", "z"] {
        put(&mut store, &mut lessor, key, 1).unwrap();
    }
    put(&mut store, &mut lessor, "other", 2).unwrap();
    let before = store.current_revision();
    lessor.revoke(1, &mut store).unwrap();
    assert_eq!(store.current_revision(), before + 1);
    let all = store
        .range(&RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        })
        .unwrap();
    let left: Vec<Bytes> = all.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(left, vec![b("other")]);
    assert_eq!(lessor.leases(), vec![2]);
    assert_eq!(lessor.revoke(1, &mut store), Err(LeaseError::NotFound));
    assert_eq!(
        put(&mut store, &mut lessor, "x", 1),
        Err(MvccError::LeaseNotFound)
    );
}

#[test]
fn revoking_a_lease_without_keys_writes_no_revision() {
    let (mut store, mut lessor) = setup();
    lessor.grant(1, 10, Instant::now()).unwrap();
    let before = store.current_revision();
    lessor.revoke(1, &mut store).unwrap();
    assert_eq!(store.current_revision(), before);
}

#[test]
fn only_the_leader_expires_leases_and_a_renewal_restarts_the_clock() {
    let (_, mut lessor) = setup();
    let start = Instant::now();
    lessor.grant(1, 5, start).unwrap();
    let later = start + Duration::from_secs(60);
    assert!(
        lessor.expired(later).is_empty(),
        "a follower's leases never expire"
    );
    lessor.promote(start, Duration::ZERO);
    assert!(lessor.expired(start + Duration::from_secs(4)).is_empty());
    assert_eq!(lessor.renew(1, start + Duration::from_secs(4)), Ok(5));
    assert!(lessor.expired(start + Duration::from_secs(8)).is_empty());
    assert_eq!(lessor.expired(start + Duration::from_secs(9)), vec![1]);
    assert_eq!(
        lessor.renew(1, start + Duration::from_secs(9)),
        Err(LeaseError::NotFound),
        "an expired lease cannot be renewed"
    );
    lessor.demote();
    assert!(lessor.expired(later).is_empty());
}

#[test]
fn time_to_live_counts_down_on_the_leader() {
    let (_, mut lessor) = setup();
    let start = Instant::now();
    lessor.promote(start, Duration::ZERO);
    lessor.grant(1, 10, start).unwrap();
    let expected = TimeToLive {
        ttl_s: 6,
        granted_ttl_s: 10,
        keys: Vec::new(),
    };
    assert_eq!(
        lessor.time_to_live(1, false, start + Duration::from_millis(3500)),
        Some(expected)
    );
    assert_eq!(lessor.time_to_live(2, false, start), None);
}

#[test]
fn a_new_leader_resumes_from_the_checkpointed_remaining_ttl() {
    let (_, mut lessor) = setup();
    let start = Instant::now();
    lessor.grant(1, 100, start).unwrap();
    lessor.grant(2, 100, start).unwrap();
    lessor.checkpoint(1, 7).unwrap();
    assert_eq!(lessor.checkpoint(3, 7), Err(LeaseError::NotFound));
    lessor.promote(start, Duration::from_secs(1));
    assert_eq!(lessor.remaining(start), vec![(1, 8), (2, 101)]);
}

#[test]
fn a_restart_brings_back_leases_and_their_keys() {
    let (mut store, mut lessor) = setup();
    let now = Instant::now();
    lessor.grant(1, 30, now).unwrap();
    put(&mut store, &mut lessor, "k", 1).unwrap();
    put(&mut store, &mut lessor, "gone", 1).unwrap();
    put(&mut store, &mut lessor, "bare", 1).unwrap();
    put(&mut store, &mut lessor, "bare", 0).unwrap();
    store
        .delete_range(&DeleteRangeRequest {
            key: b("gone"),
            ..Default::default()
        })
        .unwrap();
    let persisted = lessor.persisted();
    let mut store = KvStore::open(store.into_backend()).unwrap();
    let mut restored = Lessor::new(&store, MIN_TTL_S);
    restored.restore(&mut store, &persisted);
    assert_eq!(restored.persisted(), persisted);
    assert_eq!(keys(&restored, 1, now), vec![b("k")]);
    assert!(restored.expired(now + Duration::from_secs(3600)).is_empty());
}

#[test]
fn only_the_leader_checkpoints_and_only_once_per_interval() {
    let (_, mut lessor) = setup();
    let start = Instant::now();
    lessor.grant(1, 600, start).unwrap();
    let due = start + super::CHECKPOINT_INTERVAL;
    assert!(
        lessor.take_checkpoints(due).is_empty(),
        "a follower never checkpoints"
    );
    lessor.promote(start, Duration::ZERO);
    assert!(lessor.take_checkpoints(start).is_empty(), "not due yet");
    assert_eq!(lessor.take_checkpoints(due), vec![vec![(1, 300)]]);
    assert!(lessor.take_checkpoints(due).is_empty(), "once per interval");
}
