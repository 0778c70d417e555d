//! etcd's `clientv3/concurrency` recipes as its v3lock and v3election servers run them, on the
//! executor's KV and watch hub: a key per holder under a prefix (`<name>/<lease id in hex>`),
//! created in a txn, and holders served in create-revision order by waiting for the deletion of
//! every earlier key. Shared by [`crate::lock`] and [`crate::election`]; must never hold state
//! of its own between calls.

use basalt_engine::watch::{WatchSpec, WatcherId};
use basalt_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use basalt_proto::mvccpb::KeyValue;
use bytes::Bytes;

use crate::kv::KvService;
use crate::status::{Code, Status};
use crate::watch::{lock_hub, ChannelSink, SharedWatchHub};

/// Batches a wait can have queued; it needs only the first.
const WAIT_QUEUE_MAX: usize = 4;

/// etcd's prefix end: the prefix with its last byte incremented, trailing 0xff dropped.
pub(crate) fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

/// clientv3's `concurrency` session TTL, which a lease granted for a call without one gets.
const SESSION_TTL_S: i64 = 60;

/// The lease a Lock or Campaign holds its key on: the caller's, or else, as etcd's servers
/// open a `concurrency.Session` on lease 0, a new one of the session TTL, never kept alive
/// (they orphan the session), so the key goes when it expires.
pub(crate) async fn session_lease<K: KvService>(kv: &K, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let granted = crate::lease::grant(
        kv,
        LeaseGrantRequest {
            ttl: SESSION_TTL_S,
            id: 0,
        },
    )
    .await?;
    Ok(granted.id)
}

/// Deletes a holder's key (etcd's `Mutex.Unlock`, `Election.Resign`).
pub(crate) async fn delete_holder<K: KvService>(kv: &K, key: &Bytes) -> Result<(), Status> {
    kv.delete_range(DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    })
    .await
    .map(drop)
}

/// `<name>/<lease in hex>`, the key one session holds under a lock or election name.
pub(crate) fn holder_key(name: &[u8], lease: i64) -> Bytes {
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{lease:x}").as_bytes());
    key.into()
}

fn holder_prefix(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix.into()
}

fn create_revision_is(key: &Bytes, revision: i64) -> Compare {
    Compare {
        key: key.clone(),
        target: CompareTarget::Create as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

/// The oldest holder under `name` (etcd's `WithFirstCreate`) and the revision it was read at.
pub(crate) async fn first_holder<K: KvService>(
    kv: &K,
    name: &[u8],
) -> Result<(Option<KeyValue>, i64), Status> {
    let prefix = holder_prefix(name);
    let resp = kv
        .range(RangeRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            limit: 1,
            ..Default::default()
        })
        .await?;
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    Ok((resp.kvs.into_iter().next(), revision))
}

/// Creates `key` with `value` on `lease` unless it exists; returns the key's create revision,
/// whether this call created it, and its value if it existed.
pub(crate) async fn create_or_get<K: KvService>(
    kv: &K,
    key: &Bytes,
    value: &Bytes,
    lease: i64,
) -> Result<(i64, Option<KeyValue>), Status> {
    let put = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.clone(),
            value: value.clone(),
            lease,
            ..Default::default()
        })),
    };
    let get = RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    };
    let resp = kv
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, 0)],
            success: vec![put],
            failure: vec![get],
        })
        .await?;
    if resp.succeeded {
        return Ok((resp.header.map_or(0, |h| h.revision), None));
    }
    let existing = match resp.responses.into_iter().next().and_then(|r| r.response) {
        Some(Response::ResponseRange(range)) => range.kvs.into_iter().next(),
        _ => None,
    };
    let existing = existing.ok_or_else(|| Status::internal("basalt: holder key vanished"))?;
    Ok((existing.create_revision, Some(existing)))
}

/// Runs `then` if `key` still has create revision `revision` (its holder still holds it);
/// returns whether it did and the revision after.
pub(crate) async fn if_still_held<K: KvService>(
    kv: &K,
    key: &Bytes,
    revision: i64,
    then: RequestOp,
) -> Result<(bool, i64), Status> {
    let resp = kv
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, revision)],
            success: vec![then],
            failure: Vec::new(),
        })
        .await?;
    Ok((resp.succeeded, resp.header.map_or(0, |h| h.revision)))
}

/// etcd's `waitDeletes`: returns once no key under `name` has a create revision at or below
/// `max_create_revision`, waiting for each newest such key to be deleted in turn.
pub(crate) async fn wait_deletes<K: KvService>(
    kv: &K,
    name: &[u8],
    max_create_revision: i64,
) -> Result<(), Status> {
    let prefix = holder_prefix(name);
    loop {
        let resp = kv
            .range(RangeRequest {
                range_end: prefix_end(&prefix),
                key: prefix.clone(),
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                max_create_revision,
                limit: 1,
                ..Default::default()
            })
            .await?;
        let Some(kv_found) = resp.kvs.into_iter().next() else {
            return Ok(());
        };
        let revision = resp.header.map_or(0, |h| h.revision);
        let spec = WatchSpec {
            key: kv_found.key,
            start_revision: revision + 1,
            filter_put: true,
            ..Default::default()
        };
        wait_event(kv, spec).await?;
    }
}

/// Waits for the first batch a watcher of `spec` receives (an event, or the compacted answer:
/// either way the caller looks again).
pub(crate) async fn wait_event<K: KvService>(kv: &K, spec: WatchSpec) -> Result<(), Status> {
    let hub = kv
        .watch_hub()
        .ok_or_else(|| Status::unimplemented("basalt: this store serves no watches"))?;
    let (tx, rx) = flume::bounded(WAIT_QUEUE_MAX);
    let _watcher = Watcher::add(hub, spec, tx);
    // The start revision may already be written: catch up now rather than at the next tick.
    kv.sync_watches();
    let _ = rx.recv_async().await;
    Ok(())
}

/// A hub watcher removed when the wait ends, however it ends (the call may be dropped).
struct Watcher<'h> {
    hub: &'h SharedWatchHub,
    id: WatcherId,
}

impl<'h> Watcher<'h> {
    fn add(
        hub: &'h SharedWatchHub,
        spec: WatchSpec,
        tx: flume::Sender<basalt_engine::watch::WatchBatch>,
    ) -> Self {
        let id = lock_hub(hub).watch(spec, Box::new(ChannelSink(tx)));
        Watcher { hub, id }
    }
}

impl Drop for Watcher<'_> {
    fn drop(&mut self) {
        lock_hub(self.hub).cancel(self.id);
    }
}

/// etcd's lock and election servers act through an in-process clientv3, whose errors are
/// plain Go errors by the time the server returns them, so grpc-go sends every one as
/// Unknown with its text.
pub(crate) fn client_error(status: Status) -> Status {
    Status::new(Code::Unknown, status.message)
}
