//! [`KvStore`]: applies KV requests to the key index and the revision backend
//! with etcd 3.5.1's results, revisions and errors. Range semantics live in
//! `range`, txn branch choice and checks in `txn`, the write path in `write`.

mod hash;
mod range;
mod txn;
mod write;

pub use hash::KvHash;
pub use range::{RangeRead, RECORD_READ_STEPS};

use txn::check_ignore_puts_find_their_key;
use write::WriteTxn;

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

use basalt_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use basalt_proto::mvccpb::KeyValue;
use prost::Message;

use super::backend::{MemoryBackend, MetaKey, RevisionBackend};
use super::key_index::{KeyRange, TreeIndex};
use super::validate::is_read_only;
use super::{MvccError, Revision};

/// Answers whether a lease exists. The lease table plugs in here; until it
/// exists every lease is unknown, as on an etcd that granted none.
pub trait LeaseLookup: Send + Sync {
    fn contains(&self, lease_id: i64) -> bool;
}

/// The lease table of a server that has granted no lease.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLeases;

impl LeaseLookup for NoLeases {
    fn contains(&self, _lease_id: i64) -> bool {
        false
    }
}

/// etcd's MVCC store on one node: a single writer (`&mut self`) and any number
/// of readers (`&self`).
///
/// Requests must have passed the matching `validate_*` function first; the
/// store then applies them exactly as etcd's apply loop does. An
/// [`MvccError::Backend`] from a write means the backend failed part-way and
/// the store must not be used further (etcd panics there).
pub struct KvStore<B: RevisionBackend = MemoryBackend> {
    backend: B,
    index: TreeIndex,
    current_revision: i64,
    /// etcd's `compactMainRev`: reads below it fail; -1 before any compaction.
    compacted_revision: i64,
    leases: Box<dyn LeaseLookup>,
    /// The live keys that named a lease when the store was opened (the lessor attaches them
    /// once, see [`KvStore::take_opened_leases`]).
    opened_leases: BTreeMap<Bytes, i64>,
}

impl<B: RevisionBackend> fmt::Debug for KvStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStore")
            .field("current_revision", &self.current_revision)
            .field("compacted_revision", &self.compacted_revision)
            .finish_non_exhaustive()
    }
}

impl Default for KvStore {
    fn default() -> Self {
        Self::new()
    }
}

impl KvStore {
    /// An empty store over the in-memory backend, at revision 1 like a fresh etcd.
    pub fn new() -> Self {
        KvStore::open(MemoryBackend::new()).expect("the in-memory backend cannot fail")
    }
}

/// Revision of a fresh store; etcd's first write gets revision 2.
const FIRST_REVISION: i64 = 1;

/// `compacted_revision` before any compaction; etcd accepts compacting at 0.
const NEVER_COMPACTED: i64 = -1;

impl<B: RevisionBackend> KvStore<B> {
    /// Opens a store over `backend`, rebuilding the key index from its records
    /// and finishing a compaction that was accepted but not completed.
    pub fn open(backend: B) -> Result<Self, MvccError> {
        let mut index = TreeIndex::new();
        index.begin_replay();
        let mut current_revision = FIRST_REVISION;
        let mut opened_leases = BTreeMap::new();
        let mut decode_error = None;
        backend.scan_borrowed(Revision::default(), &mut |revision, tombstone, kv| {
            current_revision = revision.main;
            match RestoredKey::decode(kv) {
                Ok(restored) => {
                    let created = Revision::new(restored.create_revision, 0);
                    index.restore(restored.key, revision, tombstone, created, restored.version);
                    if !tombstone && restored.lease != 0 {
                        opened_leases.insert(Bytes::copy_from_slice(restored.key), restored.lease);
                    } else if !opened_leases.is_empty() {
                        opened_leases.remove(restored.key);
                    }
                }
                Err(error) => {
                    decode_error = Some(MvccError::Backend(format!(
                        "record at revision {revision} does not decode: {error}"
                    )));
                    return false;
                }
            }
            true
        })?;
        if let Some(error) = decode_error {
            return Err(error);
        }
        index.end_replay(current_revision);
        let finished = backend.get_meta(MetaKey::FinishedCompactRevision)?;
        let scheduled = backend.get_meta(MetaKey::ScheduledCompactRevision)?;
        let compacted_revision = finished.unwrap_or(NEVER_COMPACTED);
        let mut store = KvStore {
            backend,
            index,
            current_revision: current_revision.max(compacted_revision),
            compacted_revision,
            leases: Box::new(NoLeases),
            opened_leases,
        };
        if let Some(scheduled) = scheduled.filter(|&scheduled| scheduled > compacted_revision) {
            store.current_revision = store.current_revision.max(scheduled);
            store.compact_at(scheduled)?;
        }
        Ok(store)
    }

    /// The live keys that named a lease, and the lease, as [`KvStore::open`] found them; empty
    /// after the first call. Collected during the open's one pass over the records, so a
    /// restart attaches keys to leases without reading every live key's record again.
    pub fn take_opened_leases(&mut self) -> BTreeMap<Bytes, i64> {
        std::mem::take(&mut self.opened_leases)
    }

    /// Plugs in the lease table that puts with a lease are checked against.
    pub fn set_lease_lookup(&mut self, leases: Box<dyn LeaseLookup>) {
        self.leases = leases;
    }

    /// The revision of the newest write (1 for a fresh store).
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the newest compaction, -1 if none.
    pub fn compacted_revision(&self) -> i64 {
        self.compacted_revision
    }

    /// The revision backend, e.g. for a test comparing it with a model.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, for the apply loop to commit a batch of writes (e.g.
    /// `BtreeBackend::commit`). Changing revision records through it would
    /// put the key index out of step with them.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Closes the store, handing back its backend (to reopen it, for example).
    pub fn into_backend(self) -> B {
        self.backend
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.apply_range(req, self.current_revision)
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        // Outside a txn etcd checks the lease before anything else.
        if req.lease != 0 && !self.leases.contains(req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let mut txn = WriteTxn::begin(self);
        let result = txn.put(req);
        txn.end();
        result
    }

    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let mut txn = WriteTxn::begin(self);
        let result = txn.delete_range(req);
        txn.end();
        result
    }

    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        // Every compare, nested ones included, sees the state before the txn.
        let path = self.choose_path(req)?;
        if !is_read_only(req) {
            self.check_ops(req, &path, &mut |store, op| store.check_put(op))?;
        }
        self.check_ops(req, &path, &mut |store, op| store.check_range(op))?;
        check_ignore_puts_find_their_key(req, &path)?;

        let mut txn = WriteTxn::begin(self);
        let result = txn.apply_txn(req, &path);
        txn.end();
        let mut response = result?;
        response.header = Some(header(self.current_revision));
        Ok(response)
    }

    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        if req.revision <= self.compacted_revision {
            return Err(MvccError::Compacted);
        }
        if req.revision > self.current_revision {
            return Err(MvccError::FutureRevision);
        }
        // `physical` only makes etcd wait for the deletions; ours are done on return.
        self.compact_at(req.revision)?;
        Ok(CompactionResponse {
            header: Some(header(self.current_revision)),
        })
    }

    /// Removes every revision at or below `at` that no read at `at` or later
    /// can reach. The scheduled mark lets a restart finish an interrupted run.
    fn compact_at(&mut self, at: i64) -> Result<(), MvccError> {
        self.compacted_revision = at;
        self.backend
            .put_meta(MetaKey::ScheduledCompactRevision, at)?;
        let keep = self.index.compact(at);
        let mut doomed = Vec::new();
        self.backend.scan(Revision::default(), &mut |revision, _| {
            if revision.main > at {
                return false;
            }
            if !keep.contains(&revision) {
                doomed.push(revision);
            }
            true
        })?;
        for revision in doomed {
            self.backend.delete(revision)?;
        }
        self.backend.put_meta(MetaKey::FinishedCompactRevision, at)
    }

    /// etcd's `rangeKeys`: the live KeyValues of `range` at `revision` (0 or
    /// less: `view_revision`), at most `fetch_limit` of them (0 or less: all),
    /// and how many keys the range holds in total.
    fn range_keys(
        &self,
        range: KeyRange<'_>,
        view_revision: i64,
        revision: i64,
        fetch_limit: i64,
        count_only: bool,
    ) -> Result<(Vec<KeyValue>, i64), MvccError> {
        let mut read = self.begin_keys(range, view_revision, revision, fetch_limit, count_only)?;
        self.read_keys(range, &mut read, usize::MAX)?;
        Ok(read.take())
    }

    fn read_kv(&self, revision: Revision) -> Result<KeyValue, MvccError> {
        let record = self
            .backend
            .get(revision)?
            .ok_or_else(|| MvccError::Backend(format!("indexed revision {revision} is missing")))?;
        KeyValue::decode(record.kv).map_err(|error| {
            MvccError::Backend(format!(
                "record at revision {revision} does not decode: {error}"
            ))
        })
    }

    /// The key's KeyValue as of `view_revision`, if it is live then.
    fn get_kv(&self, key: &[u8], view_revision: i64) -> Result<Option<KeyValue>, MvccError> {
        let (mut kvs, _) = self.range_keys(KeyRange::Single(key), view_revision, 0, 0, false)?;
        Ok(kvs.pop())
    }
}

/// What a restart reads of a record's `mvccpb.KeyValue`: the key borrowed, the value skipped.
#[derive(Debug, Default, PartialEq, Eq)]
struct RestoredKey<'a> {
    key: &'a [u8],
    create_revision: i64,
    version: i64,
    lease: i64,
}

impl<'a> RestoredKey<'a> {
    /// Decodes as prost decodes a `KeyValue` (the same wire-type checks, the last of a repeated
    /// field winning), without copying the key or the value out of `record`.
    fn decode(record: &'a [u8]) -> Result<Self, prost::DecodeError> {
        use prost::encoding::{
            check_wire_type, decode_key, decode_varint, int64, skip_field, DecodeContext, WireType,
        };
        let mut fields = RestoredKey::default();
        let mut buf = record;
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            let context = DecodeContext::default();
            match tag {
                KEY_VALUE_KEY => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let len = decode_varint(&mut buf)?;
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|&len| len <= buf.len())
                        .ok_or_else(|| prost::DecodeError::new("buffer underflow"))?;
                    (fields.key, buf) = buf.split_at(len);
                }
                KEY_VALUE_CREATE_REVISION => {
                    int64::merge(wire_type, &mut fields.create_revision, &mut buf, context)?
                }
                KEY_VALUE_VERSION => {
                    int64::merge(wire_type, &mut fields.version, &mut buf, context)?
                }
                KEY_VALUE_LEASE => int64::merge(wire_type, &mut fields.lease, &mut buf, context)?,
                _ => skip_field(wire_type, tag, &mut buf, context)?,
            }
        }
        Ok(fields)
    }
}

/// Field numbers of `mvccpb.KeyValue` (proto/proto/mvccpb/kv.proto) that [`RestoredKey`] reads.
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_CREATE_REVISION: u32 = 2;
const KEY_VALUE_VERSION: u32 = 4;
const KEY_VALUE_LEASE: u32 = 6;

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_restored_key_reads_what_prost_reads(
            key in prop::collection::vec(any::<u8>(), 0..40),
            value in prop::collection::vec(any::<u8>(), 0..300),
            create_revision in any::<i64>(),
            mod_revision in any::<i64>(),
            version in any::<i64>(),
            lease in any::<i64>(),
        ) {
            let kv = KeyValue {
                key: key.into(),
                value: value.into(),
                create_revision,
                mod_revision,
                version,
                lease,
            };
            let bytes = kv.encode_to_vec();
            let restored = RestoredKey::decode(&bytes).unwrap();
            prop_assert_eq!(
                restored,
                RestoredKey { key: &kv.key, create_revision, version, lease }
            );
        }

        #[test]
        fn damaged_records_decode_as_prost_decodes_them_or_fail(
            bytes in prop::collection::vec(any::<u8>(), 0..80),
        ) {
            // Never a panic; where prost accepts the bytes the fields agree.
            let restored = RestoredKey::decode(&bytes);
            if let Ok(kv) = KeyValue::decode(bytes.as_slice()) {
                let restored = restored.unwrap();
                prop_assert_eq!(restored.key, &kv.key[..]);
                prop_assert_eq!(restored.create_revision, kv.create_revision);
                prop_assert_eq!(restored.version, kv.version);
                prop_assert_eq!(restored.lease, kv.lease);
            }
        }
    }
}
