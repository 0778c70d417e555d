//! The checks etcd makes on a KV request before it is proposed.

use basalt_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};

use super::MvccError;

/// Request limits, set by `--max-txn-ops` and `--max-request-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_txn_ops: usize,
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

pub fn validate_range(_req: &RangeRequest, _limits: &Limits) -> Result<(), MvccError> {
    todo!("mvcc skeleton")
}

pub fn validate_put(_req: &PutRequest, _limits: &Limits) -> Result<(), MvccError> {
    todo!("mvcc skeleton")
}

pub fn validate_delete_range(_req: &DeleteRangeRequest, _limits: &Limits) -> Result<(), MvccError> {
    todo!("mvcc skeleton")
}

pub fn validate_txn(_req: &TxnRequest, _limits: &Limits) -> Result<(), MvccError> {
    todo!("mvcc skeleton")
}

pub fn validate_compaction(_req: &CompactionRequest, _limits: &Limits) -> Result<(), MvccError> {
    todo!("mvcc skeleton")
}
