//! Range: etcd 3.5.1's filters, sort and limit over the keys a revision holds, read in one go or
//! in slices ([`RangeRead`]) that a caller interleaves with writes.

use basalt_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    RangeRequest, RangeResponse,
};
use basalt_proto::mvccpb::KeyValue;
use bytes::Bytes;

use super::{header, KvStore};
use crate::mvcc::backend::RevisionBackend;
use crate::mvcc::go_sort;
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::{MvccError, Revision};

/// What a step of [`KvStore::continue_range`] costs, in the units of its budget: one per key of
/// the index walked, this many per record read from the backend (a tree seek, a copy and a
/// decode, against an in-memory lookup).
pub const RECORD_READ_STEPS: usize = 8;

/// Debug builds check the index's count of a range by a walk up to this many keys.
const DEBUG_COUNT_CHECK_KEYS_MAX: i64 = 10_000;

/// A Range being served in slices, at one revision fixed when it began: the writer may apply
/// entries, flush the backend's overlay, compact, install a snapshot or defragment between two
/// slices, and the answer is still the one the store gave at that revision (the key index is
/// multi-version; a compaction at or below the read's revision keeps every record the read
/// needs, and one past it ends the read with etcd's compacted error).
#[derive(Debug)]
pub struct RangeRead {
    req: RangeRequest,
    view_revision: i64,
    keys: KeysRead,
}

impl RangeRead {
    /// The revision the answer's header carries (the store's newest when the read began).
    pub fn view_revision(&self) -> i64 {
        self.view_revision
    }
}

/// etcd's `rangeKeys` in progress: the index walk (resumable after the last key visited), then
/// the records of the revisions it found.
#[derive(Debug)]
pub(super) struct KeysRead {
    at: i64,
    fetch_limit: Option<usize>,
    count_only: bool,
    /// The count from the index (O(log n)); `None` when the walk must count.
    counted: Option<i64>,
    /// The walk visits every key of the range (to count it, or in debug builds to check the
    /// index's count), not only the page's.
    walk_all: bool,
    /// The walk goes on after this key; `None` before the first slice. One buffer, rewritten
    /// as the walk moves: the index lends its keys, and a copy of each would be an allocation
    /// per key walked.
    walked_past: Option<Vec<u8>>,
    walk_done: bool,
    walked: i64,
    revisions: Vec<Revision>,
    kvs: Vec<KeyValue>,
}

impl<B: RevisionBackend> KvStore<B> {
    /// Starts a Range at the newest revision, to be served by [`KvStore::continue_range`]. The
    /// request must have passed `validate_range`.
    pub fn begin_range(&self, req: RangeRequest) -> Result<RangeRead, MvccError> {
        let view_revision = self.current_revision;
        let keys = self.begin_range_keys(&req, view_revision)?;
        Ok(RangeRead {
            req,
            view_revision,
            keys,
        })
    }

    /// Serves `read` for about `budget` steps (see [`RECORD_READ_STEPS`]; at least one key or
    /// record each call): the answer once it is whole, `None` while work remains.
    pub fn continue_range(
        &self,
        read: &mut RangeRead,
        budget: usize,
    ) -> Result<Option<RangeResponse>, MvccError> {
        let RangeRead {
            req,
            view_revision,
            keys,
        } = read;
        let range = KeyRange::new(&req.key, &req.range_end);
        if !self.read_keys(range, keys, budget.max(1))? {
            return Ok(None);
        }
        let (kvs, count) = keys.take();
        Ok(Some(finish_range(req, *view_revision, kvs, count)))
    }

    /// etcd's `applierV3backend.Range`, read at `view_revision` in one go.
    pub(super) fn apply_range(
        &self,
        req: &RangeRequest,
        view_revision: i64,
    ) -> Result<RangeResponse, MvccError> {
        let mut keys = self.begin_range_keys(req, view_revision)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        self.read_keys(range, &mut keys, usize::MAX)?;
        let (kvs, count) = keys.take();
        Ok(finish_range(req, view_revision, kvs, count))
    }

    fn begin_range_keys(
        &self,
        req: &RangeRequest,
        view_revision: i64,
    ) -> Result<KeysRead, MvccError> {
        // Sorting and filtering need every key; otherwise one extra tells `more`.
        let fetch_limit = if req.sort_order != SortOrder::None as i32 || is_filtered(req) {
            0
        } else if req.limit > 0 {
            req.limit.saturating_add(1)
        } else {
            req.limit
        };
        let range = KeyRange::new(&req.key, &req.range_end);
        self.begin_keys(
            range,
            view_revision,
            req.revision,
            fetch_limit,
            req.count_only,
        )
    }

    /// etcd's `rangeKeys` begun: the revision read at (`revision`, or `view_revision` for 0 or
    /// less) checked, at most `fetch_limit` keys to fetch (0 or less: all), and the count taken
    /// from the index where it can be.
    pub(super) fn begin_keys(
        &self,
        range: KeyRange<'_>,
        view_revision: i64,
        revision: i64,
        fetch_limit: i64,
        count_only: bool,
    ) -> Result<KeysRead, MvccError> {
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
        // With the count known from the index, the walk stops at the page (a paginated LIST no
        // longer walks the rest of its range on every page).
        let counted = if count_only || fetch_limit.is_some() {
            self.index.count_live(range, at)
        } else {
            None
        };
        // Debug builds also walk every range the index counted, so that every test checks the
        // count, but not a range of more keys than DEBUG_COUNT_CHECK_KEYS_MAX: walking a 100k-key
        // LIST's every page would make each page O(n) in the build the black-box tests time.
        let walk_all = counted
            .is_none_or(|counted| cfg!(debug_assertions) && counted <= DEBUG_COUNT_CHECK_KEYS_MAX);
        Ok(KeysRead {
            at,
            fetch_limit,
            count_only,
            counted,
            walk_all,
            walked_past: None,
            walk_done: count_only && !walk_all,
            walked: 0,
            revisions: Vec::new(),
            kvs: Vec::new(),
        })
    }

    /// Goes on with `read` over `range` (the range it began with) until it is done (true) or
    /// `budget` is spent (false).
    pub(super) fn read_keys(
        &self,
        range: KeyRange<'_>,
        read: &mut KeysRead,
        mut budget: usize,
    ) -> Result<bool, MvccError> {
        // Between two slices a compaction may have passed the read's revision and removed
        // records it needs; at or below it, nothing the read reaches is removed.
        if read.at < self.compacted_revision {
            return Err(MvccError::Compacted);
        }
        if !read.walk_done {
            self.walk_keys(range, read, &mut budget);
        }
        while read.walk_done && read.kvs.len() < read.revisions.len() {
            if budget == 0 {
                return Ok(false);
            }
            let kv = self.read_kv(read.revisions[read.kvs.len()])?;
            read.kvs.push(kv);
            budget = budget.saturating_sub(RECORD_READ_STEPS);
        }
        if !read.walk_done {
            return Ok(false);
        }
        debug_assert!(
            !read.walk_all || read.counted.is_none_or(|counted| counted == read.walked),
            "the index counts {:?} keys live in {range:?} at {}, a walk {}",
            read.counted,
            read.at,
            read.walked
        );
        Ok(true)
    }

    /// The index walk of `read`, from after the last key it visited, for at most `budget` keys.
    fn walk_keys(&self, range: KeyRange<'_>, read: &mut KeysRead, budget: &mut usize) {
        // The key just after the last one visited: the walk resumes at it.
        let resume;
        let rest = match (&read.walked_past, range) {
            (None, range) => range,
            (Some(_), KeyRange::Single(_)) => unreachable!("a single key is walked in one step"),
            (Some(past), KeyRange::From(_)) => {
                resume = [past.as_slice(), &[0]].concat();
                KeyRange::From(&resume)
            }
            (Some(past), KeyRange::Between(_, end)) => {
                resume = [past.as_slice(), &[0]].concat();
                KeyRange::Between(&resume, end)
            }
        };
        let KeysRead {
            at,
            fetch_limit,
            count_only,
            walk_all,
            walked_past,
            walked,
            revisions,
            ..
        } = read;
        let mut finished = true;
        self.index.visit_live(rest, *at, |key, found| {
            if *budget == 0 {
                finished = false;
                return false;
            }
            *budget -= 1;
            if !*count_only && fetch_limit.is_none_or(|limit| revisions.len() < limit) {
                revisions.push(found.modified);
            }
            *walked += 1;
            let past = walked_past.get_or_insert_with(Vec::new);
            past.clear();
            past.extend_from_slice(key);
            *walk_all || fetch_limit.is_none_or(|limit| revisions.len() < limit)
        });
        read.walk_done = finished;
    }
}

impl KeysRead {
    /// The KeyValues read and the range's count.
    pub(super) fn take(&mut self) -> (Vec<KeyValue>, i64) {
        (
            std::mem::take(&mut self.kvs),
            self.counted.unwrap_or(self.walked),
        )
    }
}

fn is_filtered(req: &RangeRequest) -> bool {
    req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

/// The end of etcd's `applierV3backend.Range`: filters, sort, limit and `keys_only` over the
/// KeyValues read, `count` of them in the range.
fn finish_range(
    req: &RangeRequest,
    view_revision: i64,
    mut kvs: Vec<KeyValue>,
    count: i64,
) -> RangeResponse {
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
    RangeResponse {
        header: Some(header(view_revision)),
        kvs,
        more,
        count,
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
