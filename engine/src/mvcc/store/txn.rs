//! Txn: which branches run (decided before any write) and the checks etcd
//! makes against the state before the txn.

use basalt_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    Compare, RequestOp, TxnRequest,
};
use basalt_proto::mvccpb::KeyValue;

use super::KvStore;
use crate::mvcc::backend::RevisionBackend;
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::MvccError;

impl<B: RevisionBackend> KvStore<B> {
    /// Decides which branch every txn in the tree takes, in the order etcd
    /// lists them: the txn itself, then its chosen branch's nested txns.
    pub(super) fn choose_path(&self, req: &TxnRequest) -> Result<TxnPath, MvccError> {
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
    pub(super) fn check_ops(
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
    pub(super) fn check_put(&self, op: &RequestOp) -> Result<(), MvccError> {
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
    pub(super) fn check_range(&self, op: &RequestOp) -> Result<(), MvccError> {
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

/// The branch taken by one txn and, in order, by the txns nested in it.
#[derive(Debug)]
pub(super) struct TxnPath {
    pub(super) succeeded: bool,
    pub(super) nested: Vec<TxnPath>,
}

impl TxnPath {
    pub(super) fn branch<'r>(&self, req: &'r TxnRequest) -> &'r [RequestOp] {
        if self.succeeded {
            &req.success
        } else {
            &req.failure
        }
    }
}

/// etcd checks `ignore_value`/`ignore_lease` puts against the state before the
/// txn, then applies ops in order, so an earlier op of the same txn can delete
/// the key in between. etcd's duplicate-key check leaves one way to do that, a
/// from-key delete, and etcd 3.5.1 then panics in apply on every member. We
/// refuse such a txn with the error etcd's apply hit, before changing anything;
/// the check follows every earlier write, so even a txn that skipped validation
/// is refused whole rather than half applied.
pub(super) fn check_ignore_puts_find_their_key(
    req: &TxnRequest,
    path: &TxnPath,
) -> Result<(), MvccError> {
    /// A write met earlier on the path: `true` for a put of the key(s), `false` for a delete.
    type Write<'r> = (KeyRange<'r>, bool);
    fn walk<'r>(
        req: &'r TxnRequest,
        path: &TxnPath,
        earlier: &mut Vec<Write<'r>>,
    ) -> Result<(), MvccError> {
        let mut nested_paths = path.nested.iter();
        for op in path.branch(req) {
            match &op.request {
                Some(Request::RequestTxn(nested)) => {
                    let nested_path = nested_paths.next().expect("a path per nested txn");
                    walk(nested, nested_path, earlier)?;
                }
                Some(Request::RequestDeleteRange(delete)) => {
                    earlier.push((KeyRange::new(&delete.key, &delete.range_end), false));
                }
                Some(Request::RequestPut(put)) => {
                    let key: &[u8] = &put.key;
                    let last_write = earlier.iter().rev().find(|(range, _)| range.contains(key));
                    if (put.ignore_value || put.ignore_lease)
                        && matches!(last_write, Some((_, false)))
                    {
                        return Err(MvccError::KeyNotFound);
                    }
                    earlier.push((KeyRange::Single(key), true));
                }
                Some(Request::RequestRange(_)) | None => {}
            }
        }
        Ok(())
    }
    walk(req, path, &mut Vec::new())
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
