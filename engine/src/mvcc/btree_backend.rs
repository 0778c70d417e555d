//! The durable revision backend: revisions in the copy-on-write B+tree file.
//!
//! The store writes one record at a time, but a B+tree commit costs a page write per changed
//! node, so writes collect in an in-memory overlay and go to the tree together in
//! [`BtreeBackend::commit`], one write transaction that also carries the consistent (applied
//! raft) index. Reads see the overlay first, then the newest committed tree. Nothing here
//! syncs: [`crate::btree::Db::checkpoint`] does, and the WAL covers what lies between.
//!
//! Buckets and their records (all integers big-endian, so byte order is number order):
//!
//! ```text
//! bucket "key":  key   = revision, 17 or 18 bytes (Revision::to_key: main u64 | '_' | sub u64
//!                        | 't' on tombstones)
//!                value = mvccpb.KeyValue protobuf bytes (only the key on a tombstone)
//! bucket "meta": key   = "scheduledCompactRev" | "finishedCompactRev" | "consistent_index"
//!                value = 8 bytes, i64/u64 big-endian
//! ```
//!
//! etcd uses the same bucket names and key layout, so the layout reads the same to anyone who
//! knows etcd's bbolt file.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::backend::{MetaKey, RevisionBackend, RevisionRecord};
use super::{MvccError, Revision, REVISION_BYTES};
use crate::btree::{self, Db, ReadTxn};

/// The bucket of revision records.
pub const KEY_BUCKET: &str = "key";
/// The bucket of small named integers.
pub const META_BUCKET: &str = "meta";
/// The meta record holding the raft index of the newest applied entry in the tree.
const CONSISTENT_INDEX_KEY: &[u8] = b"consistent_index";
/// Bytes of every meta value.
const META_VALUE_BYTES: usize = 8;

/// Revision records in a B+tree, written in batches (see the module docs).
pub struct BtreeBackend {
    db: Db,
    /// The newest committed tree; replaced after every commit.
    committed: ReadTxn,
    /// The newest revision in `committed`: a scan from past it (a watch reading the revisions
    /// it was just told of) needs only `pending`, and skips seeking the tree.
    committed_newest: Option<Revision>,
    /// Records written since the last commit; `None` marks a deletion.
    pending: BTreeMap<Revision, Option<RevisionRecord>>,
    pending_meta: BTreeMap<MetaKey, i64>,
    /// Records of the other buckets (e.g. alarms), by bucket and key; `None` deletes.
    pending_other: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

impl BtreeBackend {
    /// A backend over `db`, which may be empty or hold an earlier backend's buckets.
    pub fn open(db: Db) -> Result<Self, MvccError> {
        let committed = db.begin_read().map_err(backend_error)?;
        Ok(BtreeBackend {
            db,
            committed_newest: newest_revision(&committed)?,
            committed,
            pending: BTreeMap::new(),
            pending_meta: BTreeMap::new(),
            pending_other: BTreeMap::new(),
        })
    }

    /// The tree underneath (for checkpoints, stats, snapshots and defragmentation).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Records written since the last commit.
    pub fn pending_records(&self) -> usize {
        self.pending.len() + self.pending_meta.len() + self.pending_other.len()
    }

    /// Writes every pending record and `consistent_index` in one B+tree transaction, visible to
    /// new readers at once and durable at the next checkpoint.
    pub fn commit(&mut self, consistent_index: u64) -> Result<(), MvccError> {
        let mut txn = self.db.begin_write().map_err(backend_error)?;
        {
            let mut keys = txn.bucket(KEY_BUCKET).map_err(backend_error)?;
            for (revision, record) in &self.pending {
                match record {
                    Some(record) => keys
                        .insert(&revision.to_key(record.tombstone), &record.kv)
                        .map_err(backend_error)?,
                    None => {
                        // The store deletes by revision; the record may be either variant.
                        keys.remove(&revision.to_key(false))
                            .map_err(backend_error)?;
                        keys.remove(&revision.to_key(true)).map_err(backend_error)?;
                    }
                }
            }
        }
        {
            let mut meta = txn.bucket(META_BUCKET).map_err(backend_error)?;
            for (key, value) in &self.pending_meta {
                meta.insert(meta_name(*key), &value.to_be_bytes())
                    .map_err(backend_error)?;
            }
            meta.insert(CONSISTENT_INDEX_KEY, &consistent_index.to_be_bytes())
                .map_err(backend_error)?;
        }
        for ((bucket, key), value) in &self.pending_other {
            let mut bucket = txn.bucket(bucket).map_err(backend_error)?;
            match value {
                Some(value) => bucket.insert(key, value).map_err(backend_error)?,
                None => {
                    bucket.remove(key).map_err(backend_error)?;
                }
            }
        }
        txn.commit().map_err(backend_error)?;
        self.pending.clear();
        self.pending_meta.clear();
        self.pending_other.clear();
        self.committed = self.db.begin_read().map_err(backend_error)?;
        self.committed_newest = newest_revision(&self.committed)?;
        debug_assert_eq!(self.consistent_index().ok(), Some(consistent_index));
        Ok(())
    }

    /// Sets (`Some`) or deletes (`None`) a record of a bucket other than "key" and "meta",
    /// written with the next commit.
    pub fn set_record(&mut self, bucket: &'static str, key: &[u8], value: Option<&[u8]>) {
        debug_assert!(bucket != KEY_BUCKET && bucket != META_BUCKET);
        self.pending_other
            .insert((bucket, key.to_vec()), value.map(<[u8]>::to_vec));
    }

    /// Every record of `bucket` (committed, with pending changes applied), in key order.
    pub fn records(&self, bucket: &'static str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, MvccError> {
        let mut records = BTreeMap::new();
        let mut cursor = self.committed.cursor(bucket);
        let mut entry = cursor.first().map_err(backend_error)?;
        while let Some((key, value)) = entry {
            records.insert(key.to_vec(), value.to_vec());
            entry = cursor.next().map_err(backend_error)?;
        }
        for ((pending_bucket, key), value) in &self.pending_other {
            if *pending_bucket != bucket {
                continue;
            }
            match value {
                Some(value) => records.insert(key.clone(), value.clone()),
                None => records.remove(key),
            };
        }
        Ok(records)
    }

    /// The consistent index of the newest commit (0 for a new file).
    pub fn consistent_index(&self) -> Result<u64, MvccError> {
        read_consistent_index(&self.committed)
    }
}

/// The consistent index a snapshot of a backend's tree carries (0 when it has none).
pub fn read_consistent_index(read: &ReadTxn) -> Result<u64, MvccError> {
    read.get(META_BUCKET, CONSISTENT_INDEX_KEY)
        .map_err(backend_error)?
        .map_or(Ok(0), |bytes| decode_meta(bytes).map(|value| value as u64))
}

fn meta_name(key: MetaKey) -> &'static [u8] {
    match key {
        MetaKey::ScheduledCompactRevision => b"scheduledCompactRev",
        MetaKey::FinishedCompactRevision => b"finishedCompactRev",
    }
}

fn decode_meta(bytes: &[u8]) -> Result<i64, MvccError> {
    let bytes: [u8; META_VALUE_BYTES] = bytes
        .try_into()
        .map_err(|_| MvccError::Backend(format!("meta value of {} bytes, want 8", bytes.len())))?;
    Ok(i64::from_be_bytes(bytes))
}

fn backend_error(error: btree::Error) -> MvccError {
    match error {
        btree::Error::OutOfSpace(_) => MvccError::OutOfSpace(error.to_string()),
        other => MvccError::Backend(other.to_string()),
    }
}

/// The newest revision in `committed`'s key bucket.
fn newest_revision(committed: &ReadTxn) -> Result<Option<Revision>, MvccError> {
    match committed.cursor(KEY_BUCKET).last().map_err(backend_error)? {
        Some((key, _)) => Revision::from_key(key)
            .map(|(revision, _)| Some(revision))
            .ok_or_else(|| MvccError::Backend(format!("key bucket holds a bad key {key:?}"))),
        None => Ok(None),
    }
}

/// A record as the tree holds it: its revision, tombstone mark and KeyValue bytes.
type BorrowedRecord<'a> = (Revision, bool, &'a [u8]);

fn decode_borrowed<'a>((key, value): btree::Entry<'a>) -> Result<BorrowedRecord<'a>, MvccError> {
    let (revision, tombstone) = Revision::from_key(key)
        .ok_or_else(|| MvccError::Backend(format!("key bucket holds a bad key {key:?}")))?;
    Ok((revision, tombstone, value))
}

/// A record met by [`BtreeBackend::merge_scan`]: from the overlay, or borrowed from the tree's
/// map (tombstone mark, KeyValue bytes).
enum Record<'a> {
    Pending(&'a RevisionRecord),
    Committed(bool, &'a [u8]),
}

impl BtreeBackend {
    /// Every record at `from` or later, in revision order, until `visit` returns false: a merge
    /// of the tree and the overlay, the overlay winning where both hold a revision.
    fn merge_scan(
        &self,
        from: Revision,
        visit: &mut dyn FnMut(Revision, Record<'_>) -> bool,
    ) -> Result<(), MvccError> {
        let mut cursor = self.committed.cursor(KEY_BUCKET);
        let mut on_disk = if self.committed_newest.is_some_and(|newest| newest >= from) {
            cursor
                .seek(&from.to_key(false))
                .map_err(backend_error)?
                .map(decode_borrowed)
                .transpose()?
        } else {
            None
        };
        let mut overlay = self.pending.range(from..).peekable();
        loop {
            let take_overlay = match (&on_disk, overlay.peek()) {
                (None, None) => return Ok(()),
                (Some((disk_revision, _, _)), Some((pending_revision, _))) => {
                    *pending_revision <= disk_revision
                }
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if take_overlay {
                let (revision, record) = overlay.next().expect("peeked");
                if on_disk
                    .as_ref()
                    .is_some_and(|(disk, _, _)| disk == revision)
                {
                    on_disk = next_borrowed(&mut cursor)?;
                }
                if let Some(record) = record {
                    if !visit(*revision, Record::Pending(record)) {
                        return Ok(());
                    }
                }
            } else {
                let (revision, tombstone, kv) = on_disk.take().expect("checked above");
                if !visit(revision, Record::Committed(tombstone, kv)) {
                    return Ok(());
                }
                on_disk = next_borrowed(&mut cursor)?;
            }
        }
    }
}

impl RevisionBackend for BtreeBackend {
    fn put(&mut self, revision: Revision, record: RevisionRecord) -> Result<(), MvccError> {
        self.pending.insert(revision, Some(record));
        Ok(())
    }

    fn get(&self, revision: Revision) -> Result<Option<RevisionRecord>, MvccError> {
        if let Some(pending) = self.pending.get(&revision) {
            return Ok(pending.clone());
        }
        let key = revision.to_key(false);
        let mut cursor = self.committed.cursor(KEY_BUCKET);
        match cursor.seek(&key).map_err(backend_error)? {
            Some((found, value))
                if found.len() >= REVISION_BYTES && found[..REVISION_BYTES] == key[..] =>
            {
                let (_, tombstone, kv) = decode_borrowed((found, value))?;
                Ok(Some(RevisionRecord {
                    tombstone,
                    kv: Bytes::copy_from_slice(kv),
                }))
            }
            _ => Ok(None),
        }
    }

    fn delete(&mut self, revision: Revision) -> Result<(), MvccError> {
        self.pending.insert(revision, None);
        Ok(())
    }

    fn scan(
        &self,
        from: Revision,
        visit: &mut dyn FnMut(Revision, &RevisionRecord) -> bool,
    ) -> Result<(), MvccError> {
        self.merge_scan(from, &mut |revision, record| match record {
            Record::Pending(record) => visit(revision, record),
            Record::Committed(tombstone, kv) => visit(
                revision,
                &RevisionRecord {
                    tombstone,
                    kv: Bytes::copy_from_slice(kv),
                },
            ),
        })
    }

    fn scan_borrowed(
        &self,
        from: Revision,
        visit: &mut dyn FnMut(Revision, bool, &[u8]) -> bool,
    ) -> Result<(), MvccError> {
        self.merge_scan(from, &mut |revision, record| match record {
            Record::Pending(record) => visit(revision, record.tombstone, &record.kv),
            Record::Committed(tombstone, kv) => visit(revision, tombstone, kv),
        })
    }

    fn put_meta(&mut self, key: MetaKey, value: i64) -> Result<(), MvccError> {
        self.pending_meta.insert(key, value);
        Ok(())
    }

    fn get_meta(&self, key: MetaKey) -> Result<Option<i64>, MvccError> {
        if let Some(value) = self.pending_meta.get(&key) {
            return Ok(Some(*value));
        }
        self.committed
            .get(META_BUCKET, meta_name(key))
            .map_err(backend_error)?
            .map(decode_meta)
            .transpose()
    }
}

fn next_borrowed<'a>(
    cursor: &mut btree::Cursor<'a>,
) -> Result<Option<BorrowedRecord<'a>>, MvccError> {
    cursor
        .next()
        .map_err(backend_error)?
        .map(decode_borrowed)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::{open, Options};
    use crate::mvcc::conformance::check_backend;
    use crate::mvcc::KvStore;
    use basalt_proto::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest,
    };
    use proptest::prelude::*;

    /// Commits after this many writes, so reads mix the overlay and the tree.
    struct CommitEvery {
        inner: BtreeBackend,
        writes_per_commit: usize,
        writes: usize,
        index: u64,
    }

    impl CommitEvery {
        fn wrote(&mut self) -> Result<(), MvccError> {
            self.writes += 1;
            if self.writes.is_multiple_of(self.writes_per_commit) {
                self.index += 1;
                self.inner.commit(self.index)?;
            }
            Ok(())
        }
    }

    impl RevisionBackend for CommitEvery {
        fn put(&mut self, revision: Revision, record: RevisionRecord) -> Result<(), MvccError> {
            self.inner.put(revision, record)?;
            self.wrote()
        }
        fn get(&self, revision: Revision) -> Result<Option<RevisionRecord>, MvccError> {
            self.inner.get(revision)
        }
        fn delete(&mut self, revision: Revision) -> Result<(), MvccError> {
            self.inner.delete(revision)?;
            self.wrote()
        }
        fn scan(
            &self,
            from: Revision,
            visit: &mut dyn FnMut(Revision, &RevisionRecord) -> bool,
        ) -> Result<(), MvccError> {
            self.inner.scan(from, visit)
        }
        fn put_meta(&mut self, key: MetaKey, value: i64) -> Result<(), MvccError> {
            self.inner.put_meta(key, value)?;
            self.wrote()
        }
        fn get_meta(&self, key: MetaKey) -> Result<Option<i64>, MvccError> {
            self.inner.get_meta(key)
        }
    }

    fn temp_db(name: &str) -> (std::path::PathBuf, Db) {
        let dir = std::env::temp_dir().join(format!(
            "basalt-btree-backend-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = open(dir.join("db"), Options::default()).unwrap();
        (dir, db)
    }

    #[test]
    fn answers_like_the_memory_model_whatever_the_commit_rhythm() {
        for (seed, writes_per_commit) in [(1, 1), (2, 3), (3, 17), (4, 1000)] {
            let (dir, db) = temp_db(&format!("rhythm{seed}"));
            let backend = CommitEvery {
                inner: BtreeBackend::open(db).unwrap(),
                writes_per_commit,
                writes: 0,
                index: 0,
            };
            if let Err(divergence) = check_backend(backend, seed, 1500) {
                panic!("commit every {writes_per_commit} writes: {divergence}");
            }
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn a_checkpointed_store_reopens_from_the_file_with_its_consistent_index() {
        let (dir, db) = temp_db("reopen");
        let mut store = KvStore::open(BtreeBackend::open(db).unwrap()).unwrap();
        for i in 0..300u32 {
            let put = PutRequest {
                key: format!("k{}", i % 50).into_bytes().into(),
                value: i.to_be_bytes().to_vec().into(),
                ..Default::default()
            };
            store.put(&put).unwrap();
        }
        let everything = RangeRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            ..Default::default()
        };
        let before = store.range(&everything).unwrap();
        let mut backend = store.into_backend();
        backend.commit(77).unwrap();
        backend.db().checkpoint(77).unwrap();
        drop(backend);

        let db = open(dir.join("db"), Options::default()).unwrap();
        assert_eq!(db.durable_applied_index().unwrap(), 77);
        let backend = BtreeBackend::open(db).unwrap();
        assert_eq!(backend.consistent_index().unwrap(), 77);
        let store = KvStore::open(backend).unwrap();
        assert_eq!(store.current_revision(), 301);
        assert_eq!(store.range(&everything).unwrap(), before);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn uncommitted_records_are_not_in_the_file() {
        let (dir, db) = temp_db("uncommitted");
        let mut backend = BtreeBackend::open(db).unwrap();
        let record = RevisionRecord {
            tombstone: false,
            kv: Bytes::from_static(b"kv"),
        };
        backend.put(Revision::new(2, 0), record.clone()).unwrap();
        backend.commit(1).unwrap();
        backend.put(Revision::new(3, 0), record.clone()).unwrap();
        assert_eq!(
            backend.get(Revision::new(3, 0)).unwrap(),
            Some(record.clone())
        );
        backend.db().checkpoint(1).unwrap();
        drop(backend);
        let backend =
            BtreeBackend::open(open(dir.join("db"), Options::default()).unwrap()).unwrap();
        assert_eq!(backend.get(Revision::new(2, 0)).unwrap(), Some(record));
        assert_eq!(backend.get(Revision::new(3, 0)).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A log entry of the sliced-read test: put key k, delete key k, compact at a fraction of
    /// the way from the compacted to the newest revision.
    #[derive(Debug, Clone)]
    enum Entry {
        Put(u8, u8),
        Delete(u8),
        Compact(u8),
    }

    /// What happens on the follower between two slices of its read.
    #[derive(Debug, Clone)]
    enum Between {
        /// The leader appends (and applies) an entry the follower applies later.
        Propose(Entry),
        /// The follower applies its next lagging entry.
        Apply,
        /// The follower's overlay goes to its tree.
        Flush,
        Defragment,
        /// The follower's store is replaced by one opened on a copy of the leader's tree.
        Install,
        /// A slice of the read, of this many steps.
        Slice(usize),
    }

    fn slice_key(k: u8) -> Bytes {
        Bytes::from(format!("k{k}"))
    }

    fn any_entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            4 => (0u8..10, any::<u8>()).prop_map(|(k, v)| Entry::Put(k, v)),
            2 => (0u8..10).prop_map(Entry::Delete),
            2 => any::<u8>().prop_map(Entry::Compact),
        ]
    }

    fn any_between() -> impl Strategy<Value = Between> {
        prop_oneof![
            4 => any_entry().prop_map(Between::Propose),
            4 => Just(Between::Apply),
            1 => Just(Between::Flush),
            1 => Just(Between::Defragment),
            2 => Just(Between::Install),
            3 => (1usize..24).prop_map(Between::Slice),
        ]
    }

    fn any_sliced_range() -> impl Strategy<Value = (RangeRequest, u8)> {
        (
            (0u8..10, 0u8..3, 0u8..11, 0i64..6),
            (any::<bool>(), any::<bool>(), 0i32..3, 0i32..5, 0u8..4),
            any::<u8>(),
        )
            .prop_map(
                |(
                    (k, end_kind, end, limit),
                    (count_only, keys_only, order, target, min_mod),
                    at,
                )| {
                    let range_end = match end_kind {
                        0 => Bytes::new(),
                        1 => Bytes::from_static(b"\0"),
                        _ => slice_key(end),
                    };
                    let req = RangeRequest {
                        key: slice_key(k),
                        range_end,
                        limit,
                        count_only,
                        keys_only,
                        sort_order: order,
                        sort_target: target,
                        min_mod_revision: i64::from(min_mod) * 5,
                        ..Default::default()
                    };
                    (req, at)
                },
            )
    }

    /// Applies a log entry to a store; every member applies the same entries alike, so the
    /// result (an already compacted revision refused, say) needs no checking here.
    fn apply_entry<B: RevisionBackend>(store: &mut KvStore<B>, entry: &Entry, log: &[i64]) {
        match entry {
            Entry::Put(k, v) => {
                store
                    .put(&PutRequest {
                        key: slice_key(*k),
                        value: Bytes::from(vec![*v; 3]),
                        ..Default::default()
                    })
                    .unwrap();
            }
            Entry::Delete(k) => {
                store
                    .delete_range(&DeleteRangeRequest {
                        key: slice_key(*k),
                        ..Default::default()
                    })
                    .unwrap();
            }
            Entry::Compact(_) => {
                let revision = log[0];
                let _ = store.compact(&CompactionRequest {
                    revision,
                    physical: false,
                });
            }
        }
    }

    /// The revision a compaction entry proposed now names: a fraction of the way from the
    /// compacted to the newest revision of the leader.
    fn compaction_target<B: RevisionBackend>(store: &KvStore<B>, fraction: u8) -> i64 {
        let low = store.compacted_revision().max(1);
        let high = store.current_revision();
        low + (high - low) * i64::from(fraction) / 255
    }

    fn open_store(path: &std::path::Path) -> KvStore<BtreeBackend> {
        KvStore::open(BtreeBackend::open(open(path, Options::default()).unwrap()).unwrap()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A read served in slices answers what the model answers at the read's start, or
        /// etcd's compacted error once a compaction passed its revision, whatever the follower
        /// does between two slices: apply, flush its overlay, defragment, compact, or install a
        /// snapshot of the leader's tree.
        #[test]
        fn a_sliced_read_answers_at_its_revision_whatever_happens_between_slices(
            history in prop::collection::vec(any_entry(), 1..60),
            (req, at_fraction) in any_sliced_range(),
            between in prop::collection::vec(any_between(), 0..80),
        ) {
            let dir = std::env::temp_dir().join(format!(
                "basalt-sliced-read-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut leader = open_store(&dir.join("leader"));
            let mut follower = open_store(&dir.join("follower-0"));
            let mut model = KvStore::new();
            // Entries as proposed, with the compaction revision each names.
            let mut log: Vec<(Entry, i64)> = Vec::new();
            for entry in &history {
                let target = match entry {
                    Entry::Compact(fraction) => compaction_target(&leader, *fraction),
                    _ => 0,
                };
                apply_entry(&mut leader, entry, &[target]);
                apply_entry(&mut follower, entry, &[target]);
                apply_entry(&mut model, entry, &[target]);
                log.push((entry.clone(), target));
            }
            let mut follower_applied = log.len();
            let mut commit_index = 0u64;
            let mut installs = 0;

            let mut req = req;
            let current = follower.current_revision();
            // 0 (the newest) a third of the time, else a revision up to the newest.
            req.revision = match at_fraction % 3 {
                0 => 0,
                _ => i64::from(at_fraction) * current / 255,
            };
            let at = if req.revision <= 0 { current } else { req.revision };
            let expected = model.range(&req);
            let mut read = match follower.begin_range(req.clone()) {
                Ok(read) => read,
                Err(error) => {
                    prop_assert_eq!(Err(error), expected);
                    std::fs::remove_dir_all(&dir).unwrap();
                    return Ok(());
                }
            };
            prop_assert_eq!(read.view_revision(), current);
            let mut answer = None;
            let steps = between.iter().cloned().chain(std::iter::repeat(Between::Slice(usize::MAX)));
            for step in steps {
                match step {
                    Between::Propose(entry) => {
                        let target = match entry {
                            Entry::Compact(fraction) => compaction_target(&leader, fraction),
                            _ => 0,
                        };
                        apply_entry(&mut leader, &entry, &[target]);
                        log.push((entry, target));
                    }
                    Between::Apply => {
                        if let Some((entry, target)) = log.get(follower_applied) {
                            apply_entry(&mut follower, entry, &[*target]);
                            follower_applied += 1;
                        }
                    }
                    Between::Flush => {
                        commit_index += 1;
                        follower.backend_mut().commit(commit_index).unwrap();
                    }
                    Between::Defragment => {
                        commit_index += 1;
                        follower.backend_mut().commit(commit_index).unwrap();
                        follower.backend().db().defragment(commit_index).unwrap();
                    }
                    Between::Install => {
                        commit_index += 1;
                        leader.backend_mut().commit(commit_index).unwrap();
                        leader.backend().db().checkpoint(commit_index).unwrap();
                        installs += 1;
                        let copy = dir.join(format!("follower-{installs}"));
                        std::fs::copy(dir.join("leader"), &copy).unwrap();
                        follower = open_store(&copy);
                        follower_applied = log.len();
                    }
                    Between::Slice(budget) => match follower.continue_range(&mut read, budget) {
                        Ok(None) => {}
                        Ok(Some(response)) => {
                            answer = Some(Ok(response));
                            break;
                        }
                        Err(error) => {
                            prop_assert!(follower.compacted_revision() > at, "{error:?}");
                            answer = Some(Err(error));
                            break;
                        }
                    },
                }
            }
            match answer.expect("an unbounded slice finishes the read") {
                Ok(response) => prop_assert_eq!(Ok(response), expected),
                Err(error) => prop_assert_eq!(error, MvccError::Compacted),
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
