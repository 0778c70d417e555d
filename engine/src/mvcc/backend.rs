//! Where revisions live: the [`RevisionBackend`] trait and its in-memory model.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{MvccError, Revision};

/// What one revision wrote: a `mvccpb.KeyValue` in protobuf form (so a Range
/// can hand it to the wire untouched), or a tombstone whose KeyValue holds
/// only the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    pub tombstone: bool,
    pub kv: Bytes,
}

/// Small named records the store keeps beside the revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaKey {
    /// The revision of the newest accepted compaction, written before the
    /// compaction starts deleting, so a restart can finish it.
    ScheduledCompactRevision,
    /// The revision of the newest compaction whose deletions are complete.
    FinishedCompactRevision,
}

/// Storage of revision records. The store is the only writer; a backend
/// must make a `put` visible to the next `get`/`scan` on the same handle.
/// Durability and batching are the backend's business.
pub trait RevisionBackend: Send {
    fn put(&mut self, revision: Revision, record: RevisionRecord) -> Result<(), MvccError>;
    fn get(&self, revision: Revision) -> Result<Option<RevisionRecord>, MvccError>;
    fn delete(&mut self, revision: Revision) -> Result<(), MvccError>;
    /// Calls `visit` on every record at `from` or later, in revision order,
    /// until it returns `false`.
    fn scan(
        &self,
        from: Revision,
        visit: &mut dyn FnMut(Revision, &RevisionRecord) -> bool,
    ) -> Result<(), MvccError>;
    /// [`RevisionBackend::scan`] handing each record's tombstone mark and KeyValue bytes
    /// borrowed, for a caller that reads every record once and keeps none (the key index's
    /// rebuild at start): a backend whose records live in a file need not copy each one out.
    fn scan_borrowed(
        &self,
        from: Revision,
        visit: &mut dyn FnMut(Revision, bool, &[u8]) -> bool,
    ) -> Result<(), MvccError> {
        self.scan(from, &mut |revision, record| {
            visit(revision, record.tombstone, &record.kv)
        })
    }
    fn put_meta(&mut self, key: MetaKey, value: i64) -> Result<(), MvccError>;
    fn get_meta(&self, key: MetaKey) -> Result<Option<i64>, MvccError>;
}

/// Revisions in ordered maps: the reference the durable backend must match.
#[derive(Debug, Default, Clone)]
pub struct MemoryBackend {
    records: BTreeMap<Revision, RevisionRecord>,
    meta: BTreeMap<MetaKey, i64>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of revision records held (tombstones included).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl RevisionBackend for MemoryBackend {
    fn put(&mut self, revision: Revision, record: RevisionRecord) -> Result<(), MvccError> {
        self.records.insert(revision, record);
        Ok(())
    }

    fn get(&self, revision: Revision) -> Result<Option<RevisionRecord>, MvccError> {
        Ok(self.records.get(&revision).cloned())
    }

    fn delete(&mut self, revision: Revision) -> Result<(), MvccError> {
        self.records.remove(&revision);
        Ok(())
    }

    fn scan(
        &self,
        from: Revision,
        visit: &mut dyn FnMut(Revision, &RevisionRecord) -> bool,
    ) -> Result<(), MvccError> {
        for (revision, record) in self.records.range(from..) {
            if !visit(*revision, record) {
                break;
            }
        }
        Ok(())
    }

    fn put_meta(&mut self, key: MetaKey, value: i64) -> Result<(), MvccError> {
        self.meta.insert(key, value);
        Ok(())
    }

    fn get_meta(&self, key: MetaKey) -> Result<Option<i64>, MvccError> {
        Ok(self.meta.get(&key).copied())
    }
}
