//! [`KvStore`]: applies KV requests to the key index and the revision backend
//! with etcd 3.5.1's results, revisions and errors.

use std::fmt;

use basalt_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use basalt_proto::mvccpb::KeyValue;
use bytes::Bytes;
use prost::Message;

use super::backend::{MemoryBackend, MetaKey, RevisionBackend, RevisionRecord};
use super::go_sort;
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
        let mut current_revision = FIRST_REVISION;
        let mut decode_error = None;
        backend.scan(Revision::default(), &mut |revision, record| {
            current_revision = revision.main;
            match KeyValue::decode(record.kv.clone()) {
                Ok(kv) => restore_record(&mut index, revision, record.tombstone, kv),
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
        let finished = backend.get_meta(MetaKey::FinishedCompactRevision)?;
        let scheduled = backend.get_meta(MetaKey::ScheduledCompactRevision)?;
        let compacted_revision = finished.unwrap_or(NEVER_COMPACTED);
        let mut store = KvStore {
            backend,
            index,
            current_revision: current_revision.max(compacted_revision),
            compacted_revision,
            leases: Box::new(NoLeases),
        };
        if let Some(scheduled) = scheduled.filter(|&scheduled| scheduled > compacted_revision) {
            store.current_revision = store.current_revision.max(scheduled);
            store.compact_at(scheduled)?;
        }
        Ok(store)
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
        check_no_ignore_after_from_key_delete(req, &path)?;

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
        if revision > view_revision {
            return Err(MvccError::FutureRevision);
        }
        let at = if revision <= 0 {
            view_revision
        } else {
            revision
        };
        if at < self.compacted_revision {
            return Err(MvccError::Compacted);
        }
        let fetch_limit = usize::try_from(fetch_limit).ok().filter(|&limit| limit > 0);
        let mut revisions = Vec::new();
        let mut count = 0i64;
        self.index.visit_live(range, at, |_, found| {
            if !count_only && fetch_limit.is_none_or(|limit| revisions.len() < limit) {
                revisions.push(found.modified);
            }
            count += 1;
            true
        });
        let kvs = revisions
            .into_iter()
            .map(|revision| self.read_kv(revision))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((kvs, count))
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

    /// etcd's `applierV3backend.Range`, read at `view_revision`.
    fn apply_range(
        &self,
        req: &RangeRequest,
        view_revision: i64,
    ) -> Result<RangeResponse, MvccError> {
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Sorting and filtering need every key; otherwise one extra tells `more`.
        let fetch_limit = if req.sort_order != SortOrder::None as i32 || filtered {
            0
        } else if req.limit > 0 {
            req.limit.saturating_add(1)
        } else {
            req.limit
        };
        let range = KeyRange::new(&req.key, &req.range_end);
        let (mut kvs, count) = self.range_keys(
            range,
            view_revision,
            req.revision,
            fetch_limit,
            req.count_only,
        )?;

        kvs.retain(|kv| {
            !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
        });
        sort_like_etcd(&mut kvs, req.sort_order, req.sort_target);

        let mut more = false;
        if let Ok(limit) = usize::try_from(req.limit) {
            if limit > 0 && kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            header: Some(header(view_revision)),
            kvs,
            more,
            count,
        })
    }

    /// Decides which branch every txn in the tree takes, in the order etcd
    /// lists them: the txn itself, then its chosen branch's nested txns.
    fn choose_path(&self, req: &TxnRequest) -> Result<TxnPath, MvccError> {
        let mut succeeded = true;
        for compare in &req.compare {
            if !self.compare_holds(compare)? {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let nested = branch
            .iter()
            .filter_map(|op| match &op.request {
                Some(Request::RequestTxn(nested)) => Some(self.choose_path(nested)),
                _ => None,
            })
            .collect::<Result<_, _>>()?;
        Ok(TxnPath { succeeded, nested })
    }

    /// etcd's `applyCompare`: true if the compare holds for every key in its
    /// range (or for the zero KeyValue when no key is there, except on VALUE).
    fn compare_holds(&self, compare: &Compare) -> Result<bool, MvccError> {
        let range = KeyRange::new(&compare.key, &compare.range_end);
        let (kvs, _) = self.range_keys(range, self.current_revision, 0, 0, false)?;
        if kvs.is_empty() {
            if compare.target == CompareTarget::Value as i32 {
                return Ok(false);
            }
            return Ok(compare_kv(compare, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
    }

    /// Runs `check` on every non-txn op of the branches `path` chose.
    fn check_ops(
        &self,
        req: &TxnRequest,
        path: &TxnPath,
        check: &mut dyn FnMut(&Self, &RequestOp) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        let mut nested_paths = path.nested.iter();
        for op in path.branch(req) {
            match &op.request {
                Some(Request::RequestTxn(nested)) => {
                    let nested_path = nested_paths.next().expect("a path per nested txn");
                    self.check_ops(nested, nested_path, check)?;
                }
                _ => check(self, op)?,
            }
        }
        Ok(())
    }

    /// etcd's `checkPut` against the state before the txn.
    fn check_put(&self, op: &RequestOp) -> Result<(), MvccError> {
        let Some(Request::RequestPut(put)) = &op.request else {
            return Ok(());
        };
        if (put.ignore_value || put.ignore_lease)
            && self.get_kv(&put.key, self.current_revision)?.is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        if put.lease != 0 && !self.leases.contains(put.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd's `checkRange`. Note that a negative revision counts as compacted
    /// here, though a plain Range reads it as "newest".
    fn check_range(&self, op: &RequestOp) -> Result<(), MvccError> {
        let Some(Request::RequestRange(range)) = &op.request else {
            return Ok(());
        };
        if range.revision == 0 {
            Ok(())
        } else if range.revision > self.current_revision {
            Err(MvccError::FutureRevision)
        } else if range.revision < self.compacted_revision {
            Err(MvccError::Compacted)
        } else {
            Ok(())
        }
    }
}

/// Rebuilds one backend record into the index, as etcd's restore does.
fn restore_record(index: &mut TreeIndex, revision: Revision, tombstone: bool, kv: KeyValue) {
    if index.contains(&kv.key) {
        if tombstone {
            index.tombstone(&kv.key, revision);
        } else {
            index.put(&kv.key, revision);
        }
    } else if !tombstone {
        index.restore(
            &kv.key,
            Revision::new(kv.create_revision, 0),
            revision,
            kv.version,
        );
    }
}

/// The branch taken by one txn and, in order, by the txns nested in it.
#[derive(Debug)]
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

impl TxnPath {
    fn branch<'r>(&self, req: &'r TxnRequest) -> &'r [RequestOp] {
        if self.succeeded {
            &req.success
        } else {
            &req.failure
        }
    }
}

/// etcd checks `ignore_value`/`ignore_lease` puts against the state before the
/// txn, then applies ops in order. A from-key delete (which its duplicate-key
/// check lets through) earlier in the same txn can remove the key in between,
/// and etcd 3.5.1 then panics in apply on every member. We refuse such a txn
/// with the error etcd's apply hit, before changing anything.
fn check_no_ignore_after_from_key_delete(
    req: &TxnRequest,
    path: &TxnPath,
) -> Result<(), MvccError> {
    fn walk<'r>(
        req: &'r TxnRequest,
        path: &TxnPath,
        lowest_from_key: &mut Option<&'r [u8]>,
    ) -> Result<(), MvccError> {
        let mut nested_paths = path.nested.iter();
        for op in path.branch(req) {
            match &op.request {
                Some(Request::RequestTxn(nested)) => {
                    let nested_path = nested_paths.next().expect("a path per nested txn");
                    walk(nested, nested_path, lowest_from_key)?;
                }
                Some(Request::RequestDeleteRange(delete)) => {
                    if let KeyRange::From(key) = KeyRange::new(&delete.key, &delete.range_end) {
                        if lowest_from_key.is_none_or(|lowest| key < lowest) {
                            *lowest_from_key = Some(key);
                        }
                    }
                }
                Some(Request::RequestPut(put))
                    if (put.ignore_value || put.ignore_lease)
                        && lowest_from_key.is_some_and(|lowest| lowest <= put.key.as_ref()) =>
                {
                    return Err(MvccError::KeyNotFound);
                }
                _ => {}
            }
        }
        Ok(())
    }
    walk(req, path, &mut None)
}

/// etcd's `compareKV`. An operand of the wrong kind counts as zero (or empty),
/// an unknown target compares equal and an unknown result holds, as in etcd.
fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let int_operand = |wanted: fn(&TargetUnion) -> Option<i64>| {
        compare.target_union.as_ref().and_then(wanted).unwrap_or(0)
    };
    let ordering = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Value) => {
            let operand: &[u8] = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value,
                _ => &[],
            };
            kv.value.as_ref().cmp(operand)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int_operand(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int_operand(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int_operand(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int_operand(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true,
    }
}

/// etcd 3.5.1's result ordering: results come in key order; a target other
/// than KEY without an order means ascending; ASCEND and DESCEND run Go's
/// unstable sort (DESCEND through `sort.Reverse`); any other order leaves the
/// key order. Validation has refused unknown targets that would be sorted.
fn sort_like_etcd(kvs: &mut [KeyValue], sort_order: i32, sort_target: i32) {
    let target = SortTarget::try_from(sort_target);
    let mut order = SortOrder::try_from(sort_order);
    if target != Ok(SortTarget::Key) && order == Ok(SortOrder::None) {
        order = Ok(SortOrder::Ascend);
    }
    let less: fn(&KeyValue, &KeyValue) -> bool = match target {
        Ok(SortTarget::Key) => |a, b| a.key < b.key,
        Ok(SortTarget::Version) => |a, b| a.version < b.version,
        Ok(SortTarget::Create) => |a, b| a.create_revision < b.create_revision,
        Ok(SortTarget::Mod) => |a, b| a.mod_revision < b.mod_revision,
        Ok(SortTarget::Value) => |a, b| a.value < b.value,
        Err(_) => return,
    };
    match order {
        Ok(SortOrder::Ascend) => go_sort::sort_by(kvs, less),
        Ok(SortOrder::Descend) => go_sort::sort_by(kvs, |a, b| less(b, a)),
        _ => {}
    }
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

/// One write transaction: every change gets revision `(begin + 1, n)` for the
/// n-th change, and the store's revision moves on only if something changed.
struct WriteTxn<'s, B: RevisionBackend> {
    store: &'s mut KvStore<B>,
    begin_revision: i64,
    changes: i64,
}

impl<'s, B: RevisionBackend> WriteTxn<'s, B> {
    fn begin(store: &'s mut KvStore<B>) -> Self {
        let begin_revision = store.current_revision;
        WriteTxn {
            store,
            begin_revision,
            changes: 0,
        }
    }

    /// Reads inside the txn see its own earlier changes.
    fn view_revision(&self) -> i64 {
        if self.changes > 0 {
            self.begin_revision + 1
        } else {
            self.begin_revision
        }
    }

    fn write_revision(&self) -> i64 {
        self.begin_revision + 1
    }

    fn end(self) {
        if self.changes > 0 {
            self.store.current_revision = self.begin_revision + 1;
        }
    }

    /// etcd's `applierV3backend.Put` inside a write txn.
    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let previous = if req.ignore_value || req.ignore_lease || req.prev_kv {
            self.store.get_kv(&req.key, self.view_revision())?
        } else {
            None
        };
        let (mut value, mut lease) = (req.value.clone(), req.lease);
        if req.ignore_value || req.ignore_lease {
            let Some(previous) = &previous else {
                return Err(MvccError::KeyNotFound);
            };
            if req.ignore_value {
                value = previous.value.clone();
            }
            if req.ignore_lease {
                lease = previous.lease;
            }
        }
        self.write_put(&req.key, value, lease)?;
        Ok(PutResponse {
            header: Some(header(self.write_revision())),
            prev_kv: previous.filter(|_| req.prev_kv),
        })
    }

    fn write_put(&mut self, key: &Bytes, value: Bytes, lease: i64) -> Result<(), MvccError> {
        let main = self.write_revision();
        let (create_revision, version) = match self.store.index.get(key, main) {
            Some(found) => (found.created.main, found.version + 1),
            None => (main, 1),
        };
        let kv = KeyValue {
            key: key.clone(),
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        let revision = Revision::new(main, self.changes);
        self.store.backend.put(
            revision,
            RevisionRecord {
                tombstone: false,
                kv: kv.encode_to_vec().into(),
            },
        )?;
        self.store.index.put(key, revision);
        self.changes += 1;
        Ok(())
    }

    /// etcd's `applierV3backend.DeleteRange` inside a write txn.
    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let view_revision = self.view_revision();
        let prev_kvs = if req.prev_kv {
            self.store.range_keys(range, view_revision, 0, 0, false)?.0
        } else {
            Vec::new()
        };
        let mut keys = Vec::new();
        self.store.index.visit_live(range, view_revision, |key, _| {
            keys.push(key.clone());
            true
        });
        for key in &keys {
            self.write_tombstone(key)?;
        }
        let revision = if keys.is_empty() && self.changes == 0 {
            self.begin_revision
        } else {
            self.write_revision()
        };
        Ok(DeleteRangeResponse {
            header: Some(header(revision)),
            deleted: keys.len() as i64,
            prev_kvs,
        })
    }

    fn write_tombstone(&mut self, key: &Bytes) -> Result<(), MvccError> {
        let revision = Revision::new(self.write_revision(), self.changes);
        let kv = KeyValue {
            key: key.clone(),
            ..Default::default()
        };
        self.store.backend.put(
            revision,
            RevisionRecord {
                tombstone: true,
                kv: kv.encode_to_vec().into(),
            },
        )?;
        let was_live = self.store.index.tombstone(key, revision);
        assert!(was_live, "tombstone of a key that was not live");
        self.changes += 1;
        Ok(())
    }

    /// etcd's `applyTxn`: runs the chosen branch's ops in order. Nested txn
    /// responses keep an empty header, as etcd's do.
    fn apply_txn(&mut self, req: &TxnRequest, path: &TxnPath) -> Result<TxnResponse, MvccError> {
        let mut nested_paths = path.nested.iter();
        let mut responses = Vec::new();
        for op in path.branch(req) {
            let response = match &op.request {
                Some(Request::RequestRange(range)) => Some(Response::ResponseRange(
                    self.store.apply_range(range, self.view_revision())?,
                )),
                Some(Request::RequestPut(put)) => Some(Response::ResponsePut(self.put(put)?)),
                Some(Request::RequestDeleteRange(delete)) => {
                    Some(Response::ResponseDeleteRange(self.delete_range(delete)?))
                }
                Some(Request::RequestTxn(nested)) => {
                    let nested_path = nested_paths.next().expect("a path per nested txn");
                    Some(Response::ResponseTxn(self.apply_txn(nested, nested_path)?))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: path.succeeded,
            responses,
        })
    }
}
