//! [`KvStore`]: applies KV requests to the key index and the revision backend.

use basalt_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

use super::MvccError;

/// etcd's MVCC store on one node: a single writer (`&mut self`) and any
/// number of readers (`&self`).
#[derive(Debug, Default)]
pub struct KvStore {
    current_revision: i64,
    compacted_revision: i64,
}

impl KvStore {
    /// An empty store over the in-memory backend, at revision 1 like a fresh etcd.
    pub fn new() -> Self {
        KvStore {
            current_revision: 1,
            compacted_revision: -1,
        }
    }

    pub fn range(&self, _req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        todo!("mvcc skeleton")
    }

    pub fn put(&mut self, _req: &PutRequest) -> Result<PutResponse, MvccError> {
        todo!("mvcc skeleton")
    }

    pub fn delete_range(
        &mut self,
        _req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        todo!("mvcc skeleton")
    }

    pub fn txn(&mut self, _req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        todo!("mvcc skeleton")
    }

    pub fn compact(&mut self, _req: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        todo!("mvcc skeleton")
    }

    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    pub fn compacted_revision(&self) -> i64 {
        self.compacted_revision
    }
}
