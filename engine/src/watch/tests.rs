//! The hub's rules, checked against a model that records every write's events as etcd emits
//! them: a watcher receives exactly the model's events from its start revision on, in order,
//! each revision's events in one batch (several revisions may share one), whatever its sink's
//! bound and however often sync runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use basalt_proto::etcdserverpb::{
    request_op::Request, CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use basalt_proto::mvccpb::{event::EventType, Event, KeyValue};
use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::{SendError, WatchBatch, WatchHub, WatchSink, WatchSpec};
use crate::mvcc::KvStore;

/// A bounded queue standing in for a stream's channel.
#[derive(Clone)]
struct QueueSink {
    queue: Arc<Mutex<VecDeque<WatchBatch>>>,
    bound: usize,
}

impl QueueSink {
    fn new(bound: usize) -> Self {
        QueueSink {
            queue: Arc::default(),
            bound,
        }
    }

    fn drain(&self) -> Vec<WatchBatch> {
        self.queue.lock().unwrap().drain(..).collect()
    }
}

impl WatchSink for QueueSink {
    fn try_send(&self, batch: WatchBatch) -> Result<(), SendError> {
        let mut queue = self.queue.lock().unwrap();
        if queue.len() >= self.bound {
            return Err(SendError::Full(batch));
        }
        queue.push_back(batch);
        Ok(())
    }
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn spec(key: &str, range_end: &[u8], start_revision: i64) -> WatchSpec {
    WatchSpec {
        key: b(key),
        range_end: Bytes::copy_from_slice(range_end),
        start_revision,
        ..Default::default()
    }
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

fn delete_req(key: &str, range_end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(key),
        range_end: Bytes::copy_from_slice(range_end),
        ..Default::default()
    }
}

/// The events a batch list carries, decoded as a watcher with prev_kv (or without) sees them.
fn events_of(batches: &[WatchBatch]) -> Vec<Event> {
    batches
        .iter()
        .flat_map(|batch| {
            batch
                .events
                .iter()
                .map(|event| Event::decode(event.encoded(batch.prev_kv).clone()).unwrap())
        })
        .collect()
}

fn summary(events: &[Event]) -> Vec<(i32, String, i64)> {
    events
        .iter()
        .map(|event| {
            let kv = event.kv.as_ref().unwrap();
            (
                event.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

#[test]
fn a_txn_is_one_batch_with_its_events_in_order() {
    let mut store = KvStore::new();
    store.put(&put_req("b", "0")).unwrap();
    let mut hub = WatchHub::new(&store);
    let sink = QueueSink::new(16);
    hub.watch(spec("a", b"z", 0), Box::new(sink.clone()));
    let op = |request| RequestOp {
        request: Some(request),
    };
    store
        .txn(&TxnRequest {
            success: vec![
                op(Request::RequestPut(put_req("c", "1"))),
                op(Request::RequestDeleteRange(delete_req("b", b""))),
                op(Request::RequestPut(put_req("a", "2"))),
            ],
            ..Default::default()
        })
        .unwrap();
    hub.notify(&store).unwrap();
    let batches = sink.drain();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].revision, 3);
    let put = EventType::Put as i32;
    let delete = EventType::Delete as i32;
    assert_eq!(
        summary(&events_of(&batches)),
        vec![
            (put, "c".into(), 3),
            (delete, "b".into(), 3),
            (put, "a".into(), 3)
        ]
    );
}

#[test]
fn collected_revisions_go_out_as_one_batch_unless_they_grow_large() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let sink = QueueSink::new(64);
    let id = hub.watch(spec("a", b"z", 0), Box::new(sink.clone()));
    for value in ["1", "2", "3"] {
        store.put(&put_req("k", value)).unwrap();
        hub.collect(&store).unwrap();
    }
    assert!(sink.drain().is_empty(), "nothing leaves before the flush");
    hub.flush();
    let batches = sink.drain();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].revision, 4);
    assert_eq!(
        summary(&events_of(&batches))
            .iter()
            .map(|e| e.2)
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );

    // A progress notification never overtakes collected events.
    store.put(&put_req("k", "4")).unwrap();
    hub.collect(&store).unwrap();
    assert!(hub.progress(id));
    let batches = sink.drain();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].events.len(), 1);
    assert!(batches[1].events.is_empty());

    // A batch past the size bound leaves at the end of the revision that filled it.
    let big = "v".repeat(super::hub::UNDELIVERED_BYTES_MAX / 2 + 1);
    for _ in 0..3 {
        store.put(&put_req("k", &big)).unwrap();
        hub.collect(&store).unwrap();
    }
    let early = sink.drain();
    assert_eq!(early.len(), 1, "the second large revision filled one batch");
    assert_eq!(early[0].events.len(), 2);
    hub.flush();
    assert_eq!(sink.drain()[0].events.len(), 1);
}

#[test]
fn filters_and_prev_kv_shape_each_watchers_events() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let cases = [
        // (filter_put, filter_delete, prev_kv, expected (type, prev value))
        (false, false, false, vec![(0, None), (0, None), (1, None)]),
        (true, false, false, vec![(1, None)]),
        (false, true, false, vec![(0, None), (0, None)]),
        (
            false,
            false,
            true,
            vec![(0, None), (0, Some("1")), (1, Some("2"))],
        ),
    ];
    let sinks: Vec<QueueSink> = cases
        .iter()
        .map(|(filter_put, filter_delete, prev_kv, _)| {
            let sink = QueueSink::new(16);
            let spec = WatchSpec {
                filter_put: *filter_put,
                filter_delete: *filter_delete,
                prev_kv: *prev_kv,
                ..spec("k", b"", 0)
            };
            hub.watch(spec, Box::new(sink.clone()));
            sink
        })
        .collect();
    store.put(&put_req("k", "1")).unwrap();
    hub.notify(&store).unwrap();
    store.put(&put_req("k", "2")).unwrap();
    store.delete_range(&delete_req("k", b"")).unwrap();
    hub.notify(&store).unwrap();
    for ((_, _, _, expected), sink) in cases.iter().zip(&sinks) {
        let got: Vec<(i32, Option<String>)> = events_of(&sink.drain())
            .iter()
            .map(|event| {
                let prev = event
                    .prev_kv
                    .as_ref()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                (event.r#type, prev)
            })
            .collect();
        let expected: Vec<(i32, Option<String>)> = expected
            .iter()
            .map(|(kind, prev)| (*kind, prev.map(String::from)))
            .collect();
        assert_eq!(got, expected);
    }
}

#[test]
fn a_delete_event_carries_the_key_and_the_deleting_revision() {
    let mut store = KvStore::new();
    store.put(&put_req("k", "v")).unwrap();
    let mut hub = WatchHub::new(&store);
    let sink = QueueSink::new(4);
    hub.watch(spec("k", b"", 0), Box::new(sink.clone()));
    store.delete_range(&delete_req("k", b"")).unwrap();
    hub.notify(&store).unwrap();
    let events = events_of(&sink.drain());
    assert_eq!(
        events[0].kv,
        Some(KeyValue {
            key: b("k"),
            mod_revision: 3,
            ..Default::default()
        })
    );
}

#[test]
fn a_start_revision_below_the_compaction_gets_the_compacted_answer_and_is_removed() {
    let mut store = KvStore::new();
    for value in ["1", "2", "3", "4"] {
        store.put(&put_req("k", value)).unwrap();
    }
    store
        .compact(&CompactionRequest {
            revision: 4,
            physical: false,
        })
        .unwrap();
    let mut hub = WatchHub::new(&store);
    let cases = [(2, Some(4)), (3, Some(4)), (4, None), (5, None)];
    let sinks: Vec<QueueSink> = cases
        .iter()
        .map(|(start, _)| {
            let sink = QueueSink::new(4);
            hub.watch(spec("k", b"", *start), Box::new(sink.clone()));
            sink
        })
        .collect();
    hub.sync(&store).unwrap();
    for ((start, compacted), sink) in cases.iter().zip(&sinks) {
        let batches = sink.drain();
        let got = batches
            .iter()
            .find(|batch| batch.compact_revision != 0)
            .map(|batch| batch.compact_revision);
        assert_eq!(got, *compacted, "start revision {start}");
    }
    assert_eq!(hub.len(), 2, "compacted watchers are removed");
}

#[test]
fn a_full_sink_never_blocks_writes_and_its_watcher_catches_up_once_drained() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let slow = QueueSink::new(1);
    let fast = QueueSink::new(1000);
    hub.watch(spec("k", b"", 0), Box::new(slow.clone()));
    hub.watch(spec("k", b"", 0), Box::new(fast.clone()));
    for i in 0..50 {
        store.put(&put_req("k", &i.to_string())).unwrap();
        hub.notify(&store).unwrap();
    }
    assert_eq!(events_of(&fast.drain()).len(), 50);
    assert!(hub.needs_sync(), "the slow watcher is a victim");
    let mut received = Vec::new();
    while hub.needs_sync() {
        received.extend(slow.drain());
        hub.sync(&store).unwrap();
    }
    received.extend(slow.drain());
    let revisions: Vec<i64> = events_of(&received)
        .iter()
        .map(|event| event.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(revisions, (2..=51).collect::<Vec<_>>());
}

#[test]
fn progress_goes_only_to_synced_watchers() {
    let mut store = KvStore::new();
    store.put(&put_req("k", "1")).unwrap();
    let mut hub = WatchHub::new(&store);
    let synced = hub.watch(spec("k", b"", 0), Box::new(QueueSink::new(4)));
    let unsynced = hub.watch(spec("k", b"", 1), Box::new(QueueSink::new(4)));
    assert!(hub.progress(synced));
    assert!(!hub.progress(unsynced));
    assert!(!hub.progress(99), "no such watcher");
}

#[test]
fn a_cancelled_watcher_gets_nothing_more() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let sink = QueueSink::new(4);
    let id = hub.watch(spec("k", b"", 0), Box::new(sink.clone()));
    assert!(hub.cancel(id));
    assert!(!hub.cancel(id));
    store.put(&put_req("k", "1")).unwrap();
    hub.notify(&store).unwrap();
    assert!(sink.drain().is_empty());
    assert!(hub.is_empty());
}

#[test]
fn a_snapshot_install_moves_watchers_to_the_new_store_where_they_catch_up_or_are_compacted() {
    // The follower applied revisions 2..=3 and watches k; the leader's snapshot holds
    // revisions 2..=7, compacted maybe. Each watcher keeps its next revision across the
    // install (etcd's watchableStore.Restore).
    enum Outcome {
        Events(Vec<i64>),
        Compacted(i64),
    }
    use Outcome::{Compacted, Events};
    // (start revision, leader's compaction, outcome)
    let cases = [
        (0, None, Events(vec![4, 5, 6, 7])),
        (0, Some(4), Events(vec![4, 5, 6, 7])),
        (0, Some(5), Compacted(5)),
        (6, Some(5), Events(vec![6, 7])),
        (2, None, Events(vec![2, 3, 4, 5, 6, 7])),
        (3, Some(5), Compacted(5)),
    ];
    for (start, compaction, outcome) in cases {
        let mut follower = KvStore::new();
        let mut leader = KvStore::new();
        for value in ["2", "3", "4", "5", "6", "7"] {
            if follower.current_revision() < 3 {
                follower.put(&put_req("k", value)).unwrap();
            }
            leader.put(&put_req("k", value)).unwrap();
        }
        if let Some(revision) = compaction {
            leader
                .compact(&CompactionRequest {
                    revision,
                    physical: false,
                })
                .unwrap();
        }
        let mut hub = WatchHub::new(&follower);
        let sink = QueueSink::new(16);
        hub.watch(spec("k", b"", start), Box::new(sink.clone()));
        hub.restore(&leader);
        assert_eq!(hub.notified_revision(), 7);
        assert!(hub.needs_sync(), "start {start}: the watcher is behind");
        hub.sync(&leader).unwrap();
        let batches = sink.drain();
        match outcome {
            Events(revisions) => {
                let got: Vec<i64> = events_of(&batches)
                    .iter()
                    .map(|event| event.kv.as_ref().unwrap().mod_revision)
                    .collect();
                assert_eq!(got, revisions, "start {start}, compaction {compaction:?}");
                assert!(!hub.needs_sync(), "start {start}: synced again");
                leader.put(&put_req("k", "8")).unwrap();
                hub.notify(&leader).unwrap();
                assert_eq!(summary(&events_of(&sink.drain()))[0].2, 8);
            }
            Compacted(revision) => {
                assert_eq!(batches.len(), 1, "start {start}");
                assert_eq!(batches[0].compact_revision, revision, "start {start}");
                assert!(
                    hub.is_empty(),
                    "start {start}: a compacted watcher is dropped"
                );
            }
        }
    }
}

/// One write of the model: a put, a delete of a range, or a txn of puts and single-key
/// deletes of distinct keys.
#[derive(Debug, Clone)]
enum Write {
    Put(u8),
    Delete(u8, u8),
    Txn(Vec<(u8, bool)>),
}

/// The model: a key map and, per revision, the events etcd emits for it.
#[derive(Default)]
struct Model {
    live: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
    log: Vec<Event>,
}

fn key_name(k: u8) -> String {
    format!("k{k}")
}

impl Model {
    fn new() -> Self {
        Model {
            revision: 1,
            ..Default::default()
        }
    }

    /// Applies `changes` ((key, is_put)) as one revision, if anything changes.
    fn apply(&mut self, changes: &[(String, bool)], value: &str) {
        let revision = self.revision + 1;
        let mut events = Vec::new();
        for (key, is_put) in changes {
            let key = key.as_bytes().to_vec();
            if *is_put {
                let previous = self.live.get(&key);
                let kv = KeyValue {
                    key: Bytes::from(key.clone()),
                    create_revision: previous.map_or(revision, |kv| kv.create_revision),
                    mod_revision: revision,
                    version: previous.map_or(1, |kv| kv.version + 1),
                    value: b(value),
                    lease: 0,
                };
                self.live.insert(key, kv.clone());
                events.push(Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv),
                    prev_kv: None,
                });
            } else if self.live.remove(&key).is_some() {
                events.push(Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: Bytes::from(key),
                        mod_revision: revision,
                        ..Default::default()
                    }),
                    prev_kv: None,
                });
            }
        }
        if !events.is_empty() {
            self.revision = revision;
            self.log.extend(events);
        }
    }
}

fn write_strategy() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => (0u8..6).prop_map(Write::Put),
        1 => (0u8..6, 0u8..7).prop_map(|(a, n)| Write::Delete(a, n)),
        2 => proptest::collection::btree_map(0u8..6, any::<bool>(), 1..4)
            .prop_map(|changes| Write::Txn(changes.into_iter().collect())),
    ]
}

/// A watcher of the property test: keys `k{from}..k{to}` (or one key), a start revision as
/// an offset into the history, and a sink bound.
#[derive(Debug, Clone)]
struct WatcherPlan {
    after_write: usize,
    from: u8,
    width: u8,
    start_back: i64,
    bound: usize,
}

fn watcher_strategy() -> impl Strategy<Value = WatcherPlan> {
    (0usize..40, 0u8..6, 0u8..4, 0i64..12, 1usize..4).prop_map(
        |(after_write, from, width, start_back, bound)| WatcherPlan {
            after_write,
            from,
            width,
            start_back,
            bound,
        },
    )
}

/// A follower that falls behind and gets a snapshot, in the property test: its store stops
/// taking writes after `lag_from` writes while the leader's goes on for `lag` more; the hub then
/// moves to the leader's store (maybe compacted after the leader's `compact_after`-th write of
/// the lag) and stays there.
#[derive(Debug, Clone)]
struct SnapshotPlan {
    lag_from: usize,
    lag: usize,
    compact_after: Option<usize>,
}

fn snapshot_strategy() -> impl Strategy<Value = SnapshotPlan> {
    (0usize..40, 0usize..12, proptest::option::of(0usize..12)).prop_map(
        |(lag_from, lag, compact_after)| SnapshotPlan {
            lag_from,
            lag,
            compact_after: compact_after.filter(|&after| after < lag.max(1)),
        },
    )
}

/// Applies `write` to `store` with `value` as every put's value.
fn apply_write(store: &mut KvStore, write: &Write, value: &str) {
    match write {
        Write::Put(k) => {
            store.put(&put_req(&key_name(*k), value)).unwrap();
        }
        Write::Delete(k, n) => {
            store
                .delete_range(&delete_req(&key_name(*k), key_name(k + n).as_bytes()))
                .unwrap();
        }
        Write::Txn(ops) => {
            let success = ops
                .iter()
                .map(|(k, is_put)| RequestOp {
                    request: Some(if *is_put {
                        Request::RequestPut(put_req(&key_name(*k), value))
                    } else {
                        Request::RequestDeleteRange(delete_req(&key_name(*k), b""))
                    }),
                })
                .collect();
            store
                .txn(&TxnRequest {
                    success,
                    ..Default::default()
                })
                .unwrap();
        }
    }
}

/// What `write` changes in the model: (key, is_put) in order.
fn model_changes(model: &Model, write: &Write) -> Vec<(String, bool)> {
    match write {
        Write::Put(k) => vec![(key_name(*k), true)],
        Write::Delete(k, n) => {
            let (from, end) = (key_name(*k), key_name(k + n));
            model
                .live
                .keys()
                .filter(|key| key.as_slice() >= from.as_bytes() && key.as_slice() < end.as_bytes())
                .map(|key| (String::from_utf8(key.clone()).unwrap(), false))
                .collect()
        }
        Write::Txn(ops) => ops
            .iter()
            .map(|(k, is_put)| (key_name(*k), *is_put))
            .collect(),
    }
}

/// Compacts the leader's store at a revision of its own: a put of a key no watcher covers, so
/// no event a watcher could still be owed is a tombstone the compaction removes. Returns the
/// compaction revision.
fn compact_leader(leader: &mut KvStore, model: &mut Model) -> i64 {
    leader.put(&put_req("z", "compaction")).unwrap();
    model.apply(&[("z".to_string(), true)], "compaction");
    let revision = leader.current_revision();
    leader
        .compact(&CompactionRequest {
            revision,
            physical: false,
        })
        .unwrap();
    revision
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the sinks' bounds, how often sync runs, and whether the member installs a
    /// snapshot (etcd's watchable store Restore) in between: every watcher receives exactly the
    /// model's events from its start on, each once and in order; only a watcher whose next
    /// revision the snapshot's compaction passed stops early, with the compacted answer last.
    #[test]
    fn every_watcher_receives_exactly_the_models_events_once_in_order(
        writes in proptest::collection::vec(write_strategy(), 1..40),
        plans in proptest::collection::vec(watcher_strategy(), 1..8),
        drain_every in 1usize..5,
        flush_every in 1usize..4,
        snapshot in proptest::option::of(snapshot_strategy()),
    ) {
        let mut store = KvStore::new();
        // The leader's store while this member lags behind it; None once it was installed.
        let mut leader = snapshot.as_ref().map(|_| KvStore::new());
        let mut compacted_at = None;
        let mut model = Model::new();
        let mut hub = WatchHub::new(&store);
        let mut watchers = Vec::new();
        for (step, write) in writes.iter().enumerate() {
            let lagging = snapshot.as_ref().filter(|plan| {
                (plan.lag_from..plan.lag_from + plan.lag).contains(&step)
            });
            if let Some(plan) = &snapshot {
                if step == plan.lag_from + plan.lag {
                    let mut installed = leader.take().expect("installed once");
                    if plan.lag == 0 && plan.compact_after.is_some() {
                        compacted_at = Some(compact_leader(&mut installed, &mut model));
                    }
                    hub.flush();
                    store = installed;
                    hub.restore(&store);
                }
            }
            for plan in plans.iter().filter(|plan| plan.after_write == step) {
                let start = if plan.start_back == 0 { 0 } else { (model.revision - plan.start_back + 2).max(1) };
                let range_end = if plan.width == 0 {
                    Bytes::new()
                } else {
                    b(&key_name(plan.from + plan.width))
                };
                let sink = QueueSink::new(plan.bound);
                let spec = WatchSpec {
                    key: b(&key_name(plan.from)),
                    range_end,
                    start_revision: start,
                    ..Default::default()
                };
                // A watch from 0 starts after what this member has applied, which is behind
                // the model while it lags.
                let first = if start == 0 { hub.notified_revision() + 1 } else { start };
                hub.watch(spec.clone(), Box::new(sink.clone()));
                watchers.push((spec, first, sink, Vec::new()));
            }
            let value = step.to_string();
            let changes = model_changes(&model, write);
            if let Some(leader) = &mut leader {
                apply_write(leader, write, &value);
            }
            if lagging.is_none() {
                apply_write(&mut store, write, &value);
            }
            model.apply(&changes, &value);
            if let (Some(plan), Some(leader)) = (lagging, leader.as_mut()) {
                if plan.compact_after == Some(step - plan.lag_from) {
                    compacted_at = Some(compact_leader(leader, &mut model));
                }
                prop_assert_eq!(leader.current_revision(), model.revision);
            } else {
                prop_assert_eq!(store.current_revision(), model.revision);
            }
            // A member applying several entries in a row collects each and flushes once.
            hub.collect(&store).unwrap();
            if step % flush_every == 0 {
                hub.flush();
            }
            if step % drain_every == 0 {
                hub.flush();
                hub.sync(&store).unwrap();
                for (_, _, sink, received) in &mut watchers {
                    received.extend(sink.drain());
                }
            }
        }
        hub.flush();
        if let Some(installed) = leader.take() {
            // The lag ran past the last write (or never began): the snapshot comes now.
            store = installed;
            hub.restore(&store);
        }
        let mut rounds = 0;
        loop {
            for (_, _, sink, received) in &mut watchers {
                received.extend(sink.drain());
            }
            if !hub.needs_sync() {
                break;
            }
            hub.sync(&store).unwrap();
            rounds += 1;
            prop_assert!(rounds < 10_000, "sync never finishes");
        }
        let mut live = 0;
        for (spec, first, _, received) in &watchers {
            let range = crate::mvcc::KeyRange::new(&spec.key, &spec.range_end);
            let mut expected: Vec<Event> = model.log.iter()
                .filter(|event| {
                    let kv = event.kv.as_ref().unwrap();
                    kv.mod_revision >= *first && range.contains(&kv.key)
                })
                .cloned()
                .collect();
            let answer = received.iter().position(|batch| batch.compact_revision != 0);
            if let Some(at) = answer {
                let compacted = compacted_at.expect("only a compaction cancels a watcher");
                prop_assert_eq!(received[at].compact_revision, compacted);
                prop_assert_eq!(at + 1, received.len(), "nothing follows the compacted answer");
                prop_assert!(*first < compacted, "a watch from {} was not compacted", first);
                let got = events_of(received);
                prop_assert!(summary(&got).iter().all(|(_, _, revision)| *revision < compacted));
                expected.truncate(got.len());
            } else {
                live += 1;
            }
            prop_assert_eq!(events_of(received), expected);
            // A revision's events never straddle two batches.
            let mut seen = std::collections::HashSet::new();
            for batch in received {
                let revisions: std::collections::BTreeSet<i64> =
                    batch.events.iter().map(|event| event.mod_revision()).collect();
                for revision in revisions {
                    prop_assert!(seen.insert(revision), "revision {} split across batches", revision);
                }
            }
        }
        prop_assert_eq!(hub.len(), live, "compacted watchers are dropped, the others stay");
    }
}
