//! The v3lock service (Lock, Unlock) as etcd's server runs it: `concurrency.Mutex` on the
//! caller's lease. Lock answers once the caller's key is the oldest under the lock's name.

use basalt_proto::etcdserverpb::{DeleteRangeRequest, ResponseHeader};
use basalt_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use bytes::Bytes;

use crate::concurrency::{create_or_get, holder_key, wait_deletes};
use crate::kv::KvService;
use crate::status::Status;

pub(crate) async fn lock<K: KvService>(kv: &K, req: LockRequest) -> Result<LockResponse, Status> {
    let key = holder_key(&req.name, req.lease);
    let (my_revision, _) = create_or_get(kv, &key, &Bytes::new(), req.lease).await?;
    wait_deletes(kv, &req.name, my_revision - 1).await?;
    let revision = kv.status().await?.revision;
    Ok(LockResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        key,
    })
}

pub(crate) async fn unlock<K: KvService>(
    kv: &K,
    req: UnlockRequest,
) -> Result<UnlockResponse, Status> {
    let resp = kv
        .delete_range(DeleteRangeRequest {
            key: req.key,
            ..Default::default()
        })
        .await?;
    Ok(UnlockResponse {
        header: resp.header,
    })
}
