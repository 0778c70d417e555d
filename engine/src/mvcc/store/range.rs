//! Range: etcd 3.5.1's filters, sort and limit over the keys a revision holds.

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
use crate::mvcc::MvccError;

impl<B: RevisionBackend> KvStore<B> {
    /// etcd's `applierV3backend.Range`, read at `view_revision`.
    pub(super) fn apply_range(
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
