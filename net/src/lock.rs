//! The v3lock service (Lock, Unlock) as etcd's server runs it: `concurrency.Mutex` on the
//! caller's lease (or a new one). Lock answers once the caller's key is the oldest under the lock's name.

use basalt_proto::etcdserverpb::{DeleteRangeRequest, ResponseHeader};
use basalt_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use bytes::Bytes;

use crate::concurrency::{create_or_get, delete_holder, holder_key, session_lease, wait_deletes};
use crate::kv::KvService;
use crate::service::ClientGone;
use crate::status::{Code, Status};

pub(crate) async fn lock<K: KvService>(
    kv: &K,
    req: LockRequest,
    gone: &ClientGone,
) -> Result<LockResponse, Status> {
    let lease = session_lease(kv, req.lease).await?;
    let key = holder_key(&req.name, lease);
    let (my_revision, _) = create_or_get(kv, &key, &Bytes::new(), lease).await?;
    let waited = futures_lite::future::or(wait_deletes(kv, &req.name, my_revision - 1), async {
        gone.wait().await;
        Err(Status::new(Code::Cancelled, "context canceled"))
    })
    .await;
    if let Err(status) = waited {
        // etcd's Mutex.Lock takes its key back when the wait fails, the caller leaving
        // included, so the next in line is not kept waiting on no one.
        delete_holder(kv, &key).await?;
        return Err(status);
    }
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
