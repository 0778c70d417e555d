//! The checks etcd makes on a KV request before it is proposed, in etcd's
//! order, so the first error reported is etcd's first error.

use std::collections::HashSet;

use basalt_proto::etcdserverpb::{
    request_op::Request, CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use prost::encoding::encoded_len_varint;
use prost::Message;

use super::MvccError;

/// Request limits, set by `--max-txn-ops` and `--max-request-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most compares, success ops or failure ops in one txn level.
    pub max_txn_ops: usize,
    /// Largest proposal (the request wrapped in etcd's raft envelope).
    pub max_request_bytes: usize,
}

impl Default for Limits {
    /// etcd 3.5's defaults: 128 ops per txn level, 1.5 MiB per request.
    fn default() -> Self {
        Limits {
            max_txn_ops: 128,
            max_request_bytes: 1_572_864,
        }
    }
}

/// Checks a Range. Reads are never proposed, so their size is only bounded
/// by the gRPC message limit, which `net` enforces.
pub fn validate_range(req: &RangeRequest, _limits: &Limits) -> Result<(), MvccError> {
    check_range(req)
}

/// Checks a Put, including the size of its proposal.
pub fn validate_put(req: &PutRequest, limits: &Limits) -> Result<(), MvccError> {
    check_put(req)?;
    check_proposal_bytes(Proposal::Put, req.encoded_len(), limits)
}

/// Checks a DeleteRange, including the size of its proposal.
pub fn validate_delete_range(req: &DeleteRangeRequest, limits: &Limits) -> Result<(), MvccError> {
    check_delete(req)?;
    check_proposal_bytes(Proposal::DeleteRange, req.encoded_len(), limits)
}

/// Checks a Txn: op counts and keys at every level, then that no key is
/// written twice, then (for a txn that writes) the size of its proposal.
pub fn validate_txn(req: &TxnRequest, limits: &Limits) -> Result<(), MvccError> {
    check_txn(req, limits.max_txn_ops)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    if is_read_only(req) {
        // etcd serves a read-only txn without a proposal, so without a size check.
        return Ok(());
    }
    check_proposal_bytes(Proposal::Txn, req.encoded_len(), limits)
}

/// Checks a Compaction's proposal size; its revision is checked on apply.
pub fn validate_compaction(req: &CompactionRequest, limits: &Limits) -> Result<(), MvccError> {
    check_proposal_bytes(Proposal::Compaction, req.encoded_len(), limits)
}

/// A txn whose branches hold only ranges; etcd serves it without raft.
pub(crate) fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

fn check_range(req: &RangeRequest) -> Result<(), MvccError> {
    use basalt_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    // etcd 3.5.1 sorts an unknown order as "no sort", but dereferences a
    // missing sorter (and crashes) for an unknown target it is asked to sort
    // by. That crash becomes etcd 3.6's rejection; everything else is 3.5.1's.
    let target_known = SortTarget::try_from(req.sort_target).is_ok();
    let order_sorts = matches!(
        SortOrder::try_from(req.sort_order),
        Ok(SortOrder::None | SortOrder::Ascend | SortOrder::Descend)
    );
    if !target_known && order_sorts {
        return Err(MvccError::InvalidSortOption);
    }
    Ok(())
}

fn check_put(req: &PutRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(req: &DeleteRangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

fn check_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), MvccError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_txn_ops {
        return Err(MvccError::TooManyOps);
    }
    if req.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestRange(range)) => check_range(range)?,
            Some(Request::RequestPut(put)) => check_put(put)?,
            Some(Request::RequestDeleteRange(delete)) => check_delete(delete)?,
            // A nested txn gets what its parent's longest list left of the limit.
            Some(Request::RequestTxn(txn)) => check_txn(txn, max_txn_ops - ops)?,
            // etcd's answer to an op with nothing in it.
            None => return Err(MvccError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval in etcd's "affine" string order, where an empty end
/// sorts after every key.
#[derive(Debug, Clone)]
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

/// etcd's `StringAffineComparable.Compare`: the empty string is +infinity.
fn affine_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

impl Interval {
    fn point(key: &[u8]) -> Self {
        let mut end = key.to_vec();
        end.push(0);
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    /// etcd's `Interval.Compare` giving "overlap". It is taken literally:
    /// a from-key delete (`range_end` "\0") becomes an inverted interval
    /// that overlaps no point, so etcd lets a txn put a key such a delete
    /// removes, and so do we.
    fn overlaps(&self, other: &Interval) -> bool {
        use std::cmp::Ordering::{Greater, Less};
        let begin_vs_begin = affine_cmp(&self.begin, &other.begin);
        let begin_vs_end = affine_cmp(&self.begin, &other.end);
        let end_vs_begin = affine_cmp(&self.end, &other.begin);
        let left_of = begin_vs_begin == Less && end_vs_begin != Greater;
        let right_of = begin_vs_end != Less;
        !left_of && !right_of
    }
}

/// Keys put and intervals deleted by one txn branch, nested txns included.
#[derive(Debug, Default)]
struct Writes {
    puts: HashSet<Vec<u8>>,
    deletes: Vec<Interval>,
}

impl Writes {
    fn deletes_key(&self, key: &[u8]) -> bool {
        let point = Interval::point(key);
        self.deletes.iter().any(|interval| point.overlaps(interval))
    }

    /// Adds a nested branch's deletes the way etcd's interval-tree `Union`
    /// with `["\0", +inf)` does: only intervals overlapping that span, which
    /// leaves out the inverted from-key intervals.
    fn absorb_deletes(&mut self, nested: Vec<Interval>) {
        let everything = Interval {
            begin: vec![0],
            end: Vec::new(),
        };
        self.deletes.extend(
            nested
                .into_iter()
                .filter(|interval| everything.overlaps(interval)),
        );
    }
}

/// etcd's `checkIntervals`: within one branch (and its nested txns) a key may
/// be put once and never both put and deleted; the two branches of one
/// nested txn may put the same key since only one of them runs.
fn check_intervals(ops: &[RequestOp]) -> Result<Writes, MvccError> {
    let mut writes = Writes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(delete)) = &op.request {
            writes.deletes.push(if delete.range_end.is_empty() {
                Interval::point(&delete.key)
            } else {
                Interval {
                    begin: delete.key.to_vec(),
                    end: delete.range_end.to_vec(),
                }
            });
        }
    }
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let then_writes = check_intervals(&nested.success)?;
        let else_writes = check_intervals(&nested.failure)?;
        for key in &then_writes.puts {
            if writes.puts.contains(key) || writes.deletes_key(key) {
                return Err(MvccError::DuplicateKey);
            }
        }
        writes.puts.extend(then_writes.puts.iter().cloned());
        for key in else_writes.puts {
            let clashes = writes.puts.contains(&key) && !then_writes.puts.contains(&key);
            if clashes || writes.deletes_key(&key) {
                return Err(MvccError::DuplicateKey);
            }
            writes.puts.insert(key);
        }
        writes.absorb_deletes(then_writes.deletes);
        writes.absorb_deletes(else_writes.deletes);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if writes.puts.contains(put.key.as_ref()) || writes.deletes_key(&put.key) {
            return Err(MvccError::DuplicateKey);
        }
        writes.puts.insert(put.key.to_vec());
    }
    Ok(writes)
}

/// The field of etcd's `InternalRaftRequest` that carries each kind of request.
#[derive(Debug, Clone, Copy)]
enum Proposal {
    Put = 4,
    DeleteRange = 5,
    Txn = 6,
    Compaction = 7,
}

/// Bytes etcd's `InternalRaftRequest.header` adds to every proposal: field
/// 100's two-byte tag, a one-byte length, and a `RequestHeader` holding only
/// its request ID (one tag byte and a varint). The ID mixes the member ID into
/// its top bits, so its varint runs 7 to 10 bytes; we take the longest.
const PROPOSAL_HEADER_BYTES: usize = 2 + 1 + 1 + 10;

/// etcd refuses a proposal whose marshalled `InternalRaftRequest` is larger
/// than `--max-request-bytes`.
fn check_proposal_bytes(
    kind: Proposal,
    request_bytes: usize,
    limits: &Limits,
) -> Result<(), MvccError> {
    let field_tag_bytes = encoded_len_varint(((kind as u64) << 3) | 2);
    let proposal_bytes = PROPOSAL_HEADER_BYTES
        + field_tag_bytes
        + encoded_len_varint(request_bytes as u64)
        + request_bytes;
    if proposal_bytes > limits.max_request_bytes {
        return Err(MvccError::RequestTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_proto::etcdserverpb::Compare;
    use bytes::Bytes;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                range_end: Bytes::copy_from_slice(end),
                ..Default::default()
            })),
        }
    }

    fn range(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: Vec::new(),
                success,
                failure,
            })),
        }
    }

    fn txn(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: Vec::new(),
            success,
            failure: Vec::new(),
        }
    }

    #[test]
    fn txn_write_conflicts_follow_etcd() {
        let cases: Vec<(&str, Vec<RequestOp>, Result<(), MvccError>)> = vec![
            (
                "two puts of one key",
                vec![put("a"), put("a")],
                Err(MvccError::DuplicateKey),
            ),
            (
                "put and point delete",
                vec![put("a"), delete("a", b"")],
                Err(MvccError::DuplicateKey),
            ),
            (
                "put inside a deleted range",
                vec![delete("a", b"c"), put("b")],
                Err(MvccError::DuplicateKey),
            ),
            (
                "put at a range's exclusive end",
                vec![delete("a", b"c"), put("c")],
                Ok(()),
            ),
            (
                "from-key delete never conflicts",
                vec![delete("a", b"\0"), put("b")],
                Ok(()),
            ),
            (
                "overlapping deletes are fine",
                vec![delete("a", b"c"), delete("b", b"")],
                Ok(()),
            ),
            (
                "ranges never conflict",
                vec![range("a"), put("a"), range("a")],
                Ok(()),
            ),
            (
                "then and else may put one key",
                vec![nested(vec![put("a")], vec![put("a")])],
                Ok(()),
            ),
            (
                "nested put clashes with outer put",
                vec![put("a"), nested(vec![put("a")], vec![])],
                Err(MvccError::DuplicateKey),
            ),
            (
                "nested put clashes with outer delete",
                vec![delete("a", b""), nested(vec![], vec![put("a")])],
                Err(MvccError::DuplicateKey),
            ),
            (
                "two nested txns put one key",
                vec![
                    nested(vec![put("a")], vec![]),
                    nested(vec![], vec![put("a")]),
                ],
                Err(MvccError::DuplicateKey),
            ),
            (
                "nested delete clashes with later outer put",
                vec![nested(vec![delete("a", b"")], vec![]), put("a")],
                Err(MvccError::DuplicateKey),
            ),
            (
                "nested from-key delete is dropped",
                vec![nested(vec![delete("a", b"\0")], vec![]), put("b")],
                Ok(()),
            ),
        ];
        for (name, ops, expected) in cases {
            let limits = Limits::default();
            assert_eq!(validate_txn(&txn(ops), &limits), expected, "{name}");
        }
    }

    #[test]
    fn txn_structure_errors_come_in_etcds_order() {
        let limits = Limits {
            max_txn_ops: 2,
            max_request_bytes: 1 << 20,
        };
        let empty_compare = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![put("")],
            failure: Vec::new(),
        };
        let cases: Vec<(&str, TxnRequest, MvccError)> = vec![
            (
                "too many ops before anything else",
                txn(vec![put(""), put("a"), put("a")]),
                MvccError::TooManyOps,
            ),
            (
                "empty compare key before empty op key",
                empty_compare,
                MvccError::EmptyKey,
            ),
            (
                "empty op",
                txn(vec![RequestOp { request: None }]),
                MvccError::KeyNotFound,
            ),
            (
                "nested level has its own limit",
                txn(vec![nested(vec![put("a"), put("b"), put("c")], vec![])]),
                MvccError::TooManyOps,
            ),
            (
                "nested level gets what its parent left",
                txn(vec![put("a"), nested(vec![put("b")], vec![])]),
                MvccError::TooManyOps,
            ),
            (
                "empty key before duplicate",
                txn(vec![put("a"), put("")]),
                MvccError::EmptyKey,
            ),
        ];
        for (name, req, expected) in cases {
            assert_eq!(validate_txn(&req, &limits), Err(expected), "{name}");
        }
    }

    #[test]
    fn proposal_size_counts_etcds_envelope() {
        let limits = Limits {
            max_txn_ops: 128,
            max_request_bytes: 100,
        };
        let request = |value_bytes: usize| PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![b'v'; value_bytes]),
            ..Default::default()
        };
        // Put of key "k" and n value bytes: 3 + 2 + n bytes, plus 16 of envelope.
        assert_eq!(validate_put(&request(79), &limits), Ok(()));
        assert_eq!(
            validate_put(&request(80), &limits),
            Err(MvccError::RequestTooLarge)
        );
    }

    #[test]
    fn read_only_txn_has_no_size_limit() {
        let limits = Limits {
            max_txn_ops: 128,
            max_request_bytes: 10,
        };
        let big_range = txn(vec![range(&"k".repeat(100))]);
        assert_eq!(validate_txn(&big_range, &limits), Ok(()));
        let big_put = txn(vec![put(&"k".repeat(100))]);
        assert_eq!(
            validate_txn(&big_put, &limits),
            Err(MvccError::RequestTooLarge)
        );
    }

    #[test]
    fn put_field_errors_come_in_etcds_order() {
        let cases = [
            (
                PutRequest {
                    ignore_value: true,
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                },
                MvccError::EmptyKey,
            ),
            (
                PutRequest {
                    key: Bytes::from_static(b"k"),
                    ignore_value: true,
                    value: Bytes::from_static(b"v"),
                    ignore_lease: true,
                    lease: 1,
                    ..Default::default()
                },
                MvccError::ValueProvided,
            ),
            (
                PutRequest {
                    key: Bytes::from_static(b"k"),
                    ignore_lease: true,
                    lease: 1,
                    ..Default::default()
                },
                MvccError::LeaseProvided,
            ),
        ];
        for (req, expected) in cases {
            assert_eq!(validate_put(&req, &Limits::default()), Err(expected));
        }
    }

    #[test]
    fn sort_options_rejected_only_where_etcd_would_crash() {
        let request = |order: i32, target: i32| RangeRequest {
            key: Bytes::from_static(b"k"),
            sort_order: order,
            sort_target: target,
            ..Default::default()
        };
        let limits = Limits::default();
        assert_eq!(validate_range(&request(9, 1), &limits), Ok(()));
        assert_eq!(validate_range(&request(9, 9), &limits), Ok(()));
        for order in 0..3 {
            assert_eq!(
                validate_range(&request(order, 9), &limits),
                Err(MvccError::InvalidSortOption)
            );
        }
    }
}
