//! [`WatchHub`]: the watchers of one member and the delivery of events to them.

use std::collections::{HashMap, HashSet};

use basalt_proto::etcdserverpb::RangeRequest;
use basalt_proto::mvccpb::KeyValue;
use bytes::Bytes;
use prost::Message;

use super::{SharedEvent, WatchBatch};
use crate::mvcc::{KeyRange, KvStore, MvccError, Revision, RevisionBackend};

/// A watcher's id, unique in its hub for the hub's life (a client's watch_id is the stream's
/// business).
pub type WatcherId = u64;

/// Unsynced watchers caught up by one [`WatchHub::sync`] call (etcd's `maxWatchersPerSync`),
/// so one call's work stays bounded however many watchers start in the past.
pub const WATCHERS_PER_SYNC_MAX: usize = 512;

/// Revisions read from the backend by one [`WatchHub::sync`] call (etcd's
/// `watchBatchMaxRevs`); a watcher further behind stays unsynced for the next call.
pub const EVENT_REVISIONS_PER_SYNC_MAX: i64 = 1000;
/// A synced watcher's collected events are sent once they reach this many encoded bytes, so
/// one response stays far below what clients accept (gRPC's default is 4 MiB).
pub const UNDELIVERED_BYTES_MAX: usize = 256 << 10;

/// What a watcher watches, as a `WatchCreateRequest` states it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// `key` and `range_end` follow Range's rules: one key, `[key, range_end)`, or every key
    /// from `key` on when `range_end` is a single zero byte.
    pub key: Bytes,
    pub range_end: Bytes,
    /// 0: from the next write on.
    pub start_revision: i64,
    pub prev_kv: bool,
    /// NOPUT: put events are left out.
    pub filter_put: bool,
    /// NODELETE: delete events are left out.
    pub filter_delete: bool,
}

/// Why a sink did not take a batch.
#[derive(Debug)]
pub enum SendError {
    /// The sink's bound is reached; the batch comes back to be retried.
    Full(WatchBatch),
    /// Nobody reads the sink any more: the watcher is dropped.
    Closed,
}

/// Where a watcher's batches go: a bounded queue read by the watcher's stream. It must never
/// block; that is what keeps a slow reader from slowing the writer.
pub trait WatchSink: Send {
    fn try_send(&self, batch: WatchBatch) -> Result<(), SendError>;
}

enum State {
    /// Gets each write's events from [`WatchHub::notify`].
    Synced,
    /// Behind the notified revision: caught up from the backend by [`WatchHub::sync`].
    Unsynced,
    /// Its sink was full: holds the batch it could not take, retried by [`WatchHub::sync`].
    Victim(WatchBatch),
}

struct Watcher {
    spec: WatchSpec,
    /// The oldest revision whose events the watcher has not been handed.
    min_revision: i64,
    state: State,
    sink: Box<dyn WatchSink>,
}

impl Watcher {
    fn covers(&self, key: &[u8]) -> bool {
        KeyRange::new(&self.spec.key, &self.spec.range_end).contains(key)
    }

    fn wants(&self, event: &SharedEvent) -> bool {
        let filtered = if event.is_delete() {
            self.spec.filter_delete
        } else {
            self.spec.filter_put
        };
        !filtered && event.mod_revision() >= self.min_revision && self.covers(event.key())
    }

    fn batch(&self, id: WatcherId, revision: i64, events: Vec<SharedEvent>) -> WatchBatch {
        WatchBatch {
            watcher: id,
            revision,
            compact_revision: 0,
            events,
            prev_kv: self.spec.prev_kv,
        }
    }
}

/// The watchers of one store. Lives beside the [`KvStore`] on its single writer; every call
/// that reads events takes the store, so the hub never holds a copy of it.
pub struct WatchHub {
    watchers: HashMap<WatcherId, Watcher>,
    next_id: WatcherId,
    /// Synced watchers of one key: a write's event finds them without looking at the others.
    synced_keys: HashMap<Bytes, HashSet<WatcherId>>,
    /// Synced watchers of a range, checked against every event.
    synced_ranges: HashSet<WatcherId>,
    /// Unsynced watchers and victims: what [`WatchHub::sync`] has to do.
    behind: HashSet<WatcherId>,
    /// Watchers that asked for prev_kv; with none, notify skips the lookups.
    prev_kv_watchers: usize,
    /// Every revision up to this one has been handed to the synced watchers.
    notified_revision: i64,
    /// Events [`WatchHub::collect`] matched to synced watchers and [`WatchHub::flush`] has not
    /// sent yet, with their encoded size: a writer applying many entries in a row hands each
    /// watcher one batch for all of them instead of one per revision.
    undelivered: HashMap<WatcherId, (Vec<SharedEvent>, usize)>,
}

impl WatchHub {
    /// A hub for `store` as it is now: its existing revisions count as notified.
    pub fn new<B: RevisionBackend>(store: &KvStore<B>) -> Self {
        Self::at_revision(store.current_revision())
    }

    /// A hub for a store whose newest revision is `revision` (e.g. before the store is open;
    /// replace it with [`WatchHub::new`] once it is, before any watcher is added).
    pub fn at_revision(revision: i64) -> Self {
        WatchHub {
            watchers: HashMap::new(),
            next_id: 0,
            synced_keys: HashMap::new(),
            synced_ranges: HashSet::new(),
            behind: HashSet::new(),
            prev_kv_watchers: 0,
            notified_revision: revision,
            undelivered: HashMap::new(),
        }
    }

    /// The newest revision whose events synced watchers have been handed.
    pub fn notified_revision(&self) -> i64 {
        self.notified_revision
    }

    /// Number of watchers.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// True while some watcher is unsynced or a victim: [`WatchHub::sync`] has work.
    pub fn needs_sync(&self) -> bool {
        !self.behind.is_empty()
    }

    /// Adds a watcher. As in etcd, start revision 0 or one newer than the store makes it
    /// synced at once; an older one makes it unsynced, caught up (or answered with the
    /// compaction) by [`WatchHub::sync`].
    pub fn watch(&mut self, spec: WatchSpec, sink: Box<dyn WatchSink>) -> WatcherId {
        let id = self.next_id;
        self.next_id += 1;
        let synced = spec.start_revision == 0 || spec.start_revision > self.notified_revision;
        let min_revision = if spec.start_revision == 0 {
            self.notified_revision + 1
        } else {
            spec.start_revision
        };
        if spec.prev_kv {
            self.prev_kv_watchers += 1;
        }
        let watcher = Watcher {
            spec,
            min_revision,
            state: if synced {
                State::Synced
            } else {
                State::Unsynced
            },
            sink,
        };
        self.watchers.insert(id, watcher);
        if synced {
            self.index_synced(id);
        } else {
            self.behind.insert(id);
        }
        id
    }

    /// Moves the hub onto `store`, which replaced the store it watched (a snapshot from the
    /// leader was installed), as etcd's `watchableStore.Restore` does: every synced watcher
    /// becomes unsynced with its next revision kept, so [`WatchHub::sync`] catches it up
    /// from the new store, or answers it with the compaction (and drops it) when its next
    /// revision is compacted there. Unsynced watchers and victims stay as they are: their
    /// next revision already says where catching up resumes.
    pub fn restore<B: RevisionBackend>(&mut self, store: &KvStore<B>) {
        let synced: Vec<WatcherId> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| matches!(watcher.state, State::Synced))
            .map(|(&id, _)| id)
            .collect();
        for id in synced {
            self.unindex_synced(id);
            self.watchers.get_mut(&id).expect("listed above").state = State::Unsynced;
            self.behind.insert(id);
        }
        // The revisions between the old store's last one and the new store's were never
        // notified; every watcher is behind now, and sync reads them from the new store.
        self.notified_revision = store.current_revision();
    }

    /// Removes a watcher; false if there was none with this id.
    pub fn cancel(&mut self, id: WatcherId) -> bool {
        if !self.watchers.contains_key(&id) {
            return false;
        }
        self.unindex_synced(id);
        self.behind.remove(&id);
        self.undelivered.remove(&id);
        let watcher = self.watchers.remove(&id).expect("checked above");
        if watcher.spec.prev_kv {
            self.prev_kv_watchers -= 1;
        }
        true
    }

    /// Hands the synced watchers the events of every revision the store wrote since the last
    /// call (a txn's events together, in order): [`WatchHub::collect`] then
    /// [`WatchHub::flush`].
    pub fn notify<B: RevisionBackend>(&mut self, store: &KvStore<B>) -> Result<(), MvccError> {
        self.collect(store)?;
        self.flush();
        Ok(())
    }

    /// Matches the events of every revision the store wrote since the last call to the synced
    /// watchers, to be sent by [`WatchHub::flush`] (or at once for a watcher whose pending
    /// events pass [`UNDELIVERED_BYTES_MAX`]). Call it after every applied write, before the
    /// next compaction can remove what it reads; call `flush` before yielding to other tasks.
    pub fn collect<B: RevisionBackend>(&mut self, store: &KvStore<B>) -> Result<(), MvccError> {
        let current = store.current_revision();
        if self.synced_keys.is_empty() && self.synced_ranges.is_empty() {
            // Nobody to hand events to (e.g. a WAL replay at start): skip reading them; an
            // unsynced watcher reads its own from the backend.
            self.notified_revision = current;
            return Ok(());
        }
        while self.notified_revision < current {
            let revision = self.notified_revision + 1;
            let events = read_events(store, revision, revision, self.prev_kv_watchers > 0)?;
            self.notified_revision = revision;
            self.match_synced(revision, &events);
        }
        Ok(())
    }

    /// Sends every watcher its collected events as one batch at the notified revision.
    pub fn flush(&mut self) {
        let ids: Vec<WatcherId> = self.undelivered.keys().copied().collect();
        for id in ids {
            self.send_undelivered(id);
        }
    }

    /// Sends a progress notification (no events, the notified revision) to a synced
    /// watcher, as etcd's RequestProgress does; an unsynced one has none to give. True if
    /// it was sent.
    pub fn progress(&mut self, id: WatcherId) -> bool {
        // Events collected for it go first: a progress notification promises nothing older.
        self.send_undelivered(id);
        let Some(watcher) = self.watchers.get(&id) else {
            return false;
        };
        if !matches!(watcher.state, State::Synced) {
            return false;
        }
        let batch = watcher.batch(id, self.notified_revision, Vec::new());
        // A full sink already holds news for its reader; the notification can be skipped.
        match watcher.sink.try_send(batch) {
            Ok(()) => true,
            Err(SendError::Full(_)) => false,
            Err(SendError::Closed) => {
                self.cancel(id);
                false
            }
        }
    }

    /// One round of catching up: retries victims' batches, answers watchers whose start was
    /// compacted, and hands unsynced watchers (at most [`WATCHERS_PER_SYNC_MAX`]) the events
    /// of up to [`EVENT_REVISIONS_PER_SYNC_MAX`] revisions from the backend.
    pub fn sync<B: RevisionBackend>(&mut self, store: &KvStore<B>) -> Result<(), MvccError> {
        let chosen: Vec<WatcherId> = self
            .behind
            .iter()
            .copied()
            .take(WATCHERS_PER_SYNC_MAX)
            .collect();
        let mut unsynced = Vec::new();
        for id in chosen {
            if self.retry_victim(id) {
                unsynced.push(id);
            }
        }
        let compacted = store.compacted_revision();
        unsynced.retain(|&id| !self.answer_compacted(id, compacted));
        let Some(from) = unsynced
            .iter()
            .map(|id| self.watchers[id].min_revision)
            .min()
        else {
            return Ok(());
        };
        let current = self.notified_revision;
        let to = current.min(from.saturating_add(EVENT_REVISIONS_PER_SYNC_MAX - 1));
        let prev_kv = unsynced.iter().any(|id| self.watchers[id].spec.prev_kv);
        let events = read_events(store, from, to, prev_kv)?;
        for id in unsynced {
            let watcher = self.watchers.get_mut(&id).expect("chosen watchers exist");
            let mine: Vec<SharedEvent> = events
                .iter()
                .filter(|event| watcher.wants(event))
                .cloned()
                .collect();
            watcher.min_revision = watcher.min_revision.max(to + 1);
            if !mine.is_empty() {
                let batch = watcher.batch(id, current, mine);
                match watcher.sink.try_send(batch) {
                    Ok(()) => {}
                    Err(SendError::Full(batch)) => {
                        watcher.state = State::Victim(batch);
                        continue;
                    }
                    Err(SendError::Closed) => {
                        self.cancel(id);
                        continue;
                    }
                }
            }
            if to >= current {
                self.mark_synced(id);
            }
        }
        Ok(())
    }

    /// Retries a victim's batch. True if the watcher is now unsynced and should be caught up.
    fn retry_victim(&mut self, id: WatcherId) -> bool {
        let watcher = self.watchers.get_mut(&id).expect("behind watchers exist");
        let State::Victim(batch) = std::mem::replace(&mut watcher.state, State::Unsynced) else {
            return true;
        };
        match watcher.sink.try_send(batch) {
            Ok(()) if watcher.min_revision > self.notified_revision => {
                self.mark_synced(id);
                false
            }
            Ok(()) => true,
            Err(SendError::Full(batch)) => {
                watcher.state = State::Victim(batch);
                false
            }
            Err(SendError::Closed) => {
                self.cancel(id);
                false
            }
        }
    }

    /// etcd answers a watcher whose next revision was compacted away with the compaction
    /// revision and drops it. True if the watcher is done with (answered, or to retry later).
    fn answer_compacted(&mut self, id: WatcherId, compacted: i64) -> bool {
        let watcher = &self.watchers[&id];
        if watcher.min_revision >= compacted {
            return false;
        }
        // etcd's compacted answer carries no revision: its header says 0.
        let batch = WatchBatch {
            compact_revision: compacted,
            ..watcher.batch(id, 0, Vec::new())
        };
        match watcher.sink.try_send(batch) {
            Ok(()) | Err(SendError::Closed) => {
                self.cancel(id);
            }
            Err(SendError::Full(_)) => {} // Retried on the next sync, as etcd does.
        }
        true
    }

    fn mark_synced(&mut self, id: WatcherId) {
        let watcher = self.watchers.get_mut(&id).expect("watcher exists");
        watcher.state = State::Synced;
        self.behind.remove(&id);
        self.index_synced(id);
    }

    fn index_synced(&mut self, id: WatcherId) {
        let spec = &self.watchers[&id].spec;
        if spec.range_end.is_empty() {
            self.synced_keys
                .entry(spec.key.clone())
                .or_default()
                .insert(id);
        } else {
            self.synced_ranges.insert(id);
        }
    }

    fn unindex_synced(&mut self, id: WatcherId) {
        let key = &self.watchers[&id].spec.key;
        self.synced_ranges.remove(&id);
        if let Some(ids) = self.synced_keys.get_mut(key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.synced_keys.remove(key);
            }
        }
    }

    fn match_synced(&mut self, revision: i64, events: &[SharedEvent]) {
        let mut matched = Vec::new();
        let mut full = Vec::new();
        for event in events {
            let single = self.synced_keys.get(event.key()).into_iter().flatten();
            for &id in single.chain(self.synced_ranges.iter()) {
                let watcher = &self.watchers[&id];
                if watcher.wants(event) {
                    matched.push(id);
                    let bytes = event.encoded(watcher.spec.prev_kv).len();
                    let (pending, pending_bytes) = self.undelivered.entry(id).or_default();
                    pending.push(event.clone());
                    *pending_bytes += bytes;
                    if *pending_bytes >= UNDELIVERED_BYTES_MAX {
                        full.push(id);
                    }
                }
            }
        }
        for id in matched {
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.min_revision = revision + 1;
            }
        }
        // A revision's events stay together: a large batch leaves once it is whole.
        for id in full {
            self.send_undelivered(id);
        }
    }

    fn send_undelivered(&mut self, id: WatcherId) {
        let Some((events, _)) = self.undelivered.remove(&id) else {
            return;
        };
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return; // Cancelled since.
        };
        let batch = watcher.batch(id, self.notified_revision, events);
        match watcher.sink.try_send(batch) {
            Ok(()) => {}
            Err(SendError::Full(batch)) => {
                watcher.state = State::Victim(batch);
                self.unindex_synced(id);
                self.behind.insert(id);
            }
            Err(SendError::Closed) => {
                self.cancel(id);
            }
        }
    }
}

/// The events of revisions `from..=to` in revision order, with prev_kv looked up (at the
/// revision before each event, as etcd's watch server does) when `prev_kv` is set.
fn read_events<B: RevisionBackend>(
    store: &KvStore<B>,
    from: i64,
    to: i64,
    prev_kv: bool,
) -> Result<Vec<SharedEvent>, MvccError> {
    let mut records = Vec::new();
    store
        .backend()
        .scan(Revision::new(from, 0), &mut |revision, record| {
            if revision.main > to {
                return false;
            }
            records.push((revision, record.clone()));
            true
        })?;
    records
        .into_iter()
        .map(|(revision, record)| {
            let kv = KeyValue::decode(record.kv).map_err(|error| {
                MvccError::Backend(format!(
                    "record at revision {revision} does not decode: {error}"
                ))
            })?;
            let is_create = !record.tombstone && kv.create_revision == revision.main;
            let prev = if prev_kv && !is_create {
                previous_kv(store, &kv.key, revision.main)?
            } else {
                None
            };
            Ok(SharedEvent::new(record.tombstone, kv, revision.main, prev))
        })
        .collect()
}

fn previous_kv<B: RevisionBackend>(
    store: &KvStore<B>,
    key: &Bytes,
    revision_main: i64,
) -> Result<Option<KeyValue>, MvccError> {
    let req = RangeRequest {
        key: key.clone(),
        revision: revision_main - 1,
        ..Default::default()
    };
    match store.range(&req) {
        Ok(resp) => Ok(resp.kvs.into_iter().next()),
        Err(MvccError::Compacted) => Ok(None),
        Err(error) => Err(error),
    }
}
