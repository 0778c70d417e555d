//! The write transaction: revisions, records and key index updates of one
//! Put, DeleteRange or Txn.

use basalt_proto::etcdserverpb::{
    request_op::Request, response_op::Response, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use basalt_proto::mvccpb::KeyValue;
use bytes::Bytes;
use prost::Message;

use super::txn::TxnPath;
use super::{header, KvStore};
use crate::mvcc::backend::{RevisionBackend, RevisionRecord};
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::{MvccError, Revision};

/// One write transaction: every change gets revision `(begin + 1, n)` for the
/// n-th change, and the store's revision moves on only if something changed.
pub(super) struct WriteTxn<'s, B: RevisionBackend> {
    store: &'s mut KvStore<B>,
    begin_revision: i64,
    changes: i64,
}

impl<'s, B: RevisionBackend> WriteTxn<'s, B> {
    pub(super) fn begin(store: &'s mut KvStore<B>) -> Self {
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

    pub(super) fn end(self) {
        if self.changes > 0 {
            self.store.current_revision = self.begin_revision + 1;
        }
    }

    /// etcd's `applierV3backend.Put` inside a write txn.
    pub(super) fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
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
    pub(super) fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let view_revision = self.view_revision();
        let prev_kvs = if req.prev_kv {
            self.store.range_keys(range, view_revision, 0, 0, false)?.0
        } else {
            Vec::new()
        };
        let mut keys = Vec::new();
        self.store.index.visit_live(range, view_revision, |key, _| {
            keys.push(Bytes::copy_from_slice(key));
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
    pub(super) fn apply_txn(
        &mut self,
        req: &TxnRequest,
        path: &TxnPath,
    ) -> Result<TxnResponse, MvccError> {
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
