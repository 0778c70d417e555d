//! The v3election service (Campaign, Proclaim, Leader, Observe, Resign) as etcd's server runs
//! it: `concurrency.Election` on the caller's lease (or a new one). The leader is the oldest key under the
//! election's name; a campaign answers once every older key is gone.

use basalt_engine::watch::WatchSpec;
use basalt_proto::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RequestOp, ResponseHeader,
};
use basalt_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

use crate::concurrency::{
    create_or_get, delete_holder, first_holder, holder_key, if_still_held, prefix_end,
    session_lease, wait_deletes, wait_event,
};
use crate::grpc::{decode, encode, MessageReader, ResponseSink};
use crate::kv::KvService;
use crate::service::ClientGone;
use crate::status::{Code, Status};

/// etcd's `concurrency.ErrElectionNotLeader`, `ErrElectionNoLeader` and the server's
/// `ErrMissingLeaderKey` (their code is set where the service answers).
fn not_leader() -> Status {
    Status::new(Code::Unknown, "election: not leader")
}

fn no_leader() -> Status {
    Status::new(Code::Unknown, "election: no leader")
}

fn missing_leader_key() -> Status {
    Status::new(Code::Unknown, "\"leader\" field must be provided")
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn put_op(leader: &LeaderKey, value: bytes::Bytes) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: leader.key.clone(),
            value,
            lease: leader.lease,
            ..Default::default()
        })),
    }
}

pub(crate) async fn campaign<K: KvService>(
    kv: &K,
    req: CampaignRequest,
    gone: &ClientGone,
) -> Result<CampaignResponse, Status> {
    let lease = session_lease(kv, req.lease).await?;
    let key = holder_key(&req.name, lease);
    let (revision, existing) = create_or_get(kv, &key, &req.value, lease).await?;
    let leader = LeaderKey {
        name: req.name.clone(),
        key,
        rev: revision,
        lease,
    };
    if existing.is_some_and(|kv| kv.value != req.value) {
        // Campaigning again with another value proclaims it, as etcd's Campaign does.
        if_still_held(
            kv,
            &leader.key,
            revision,
            put_op(&leader, req.value.clone()),
        )
        .await?;
    }
    let waited = futures_lite::future::or(
        async {
            wait_deletes(kv, &req.name, revision - 1)
                .await
                .map(|()| true)
        },
        async {
            gone.wait().await;
            Ok(false)
        },
    )
    .await?;
    if !waited {
        // etcd's Campaign resigns when its context ends while it waits.
        delete_holder(kv, &leader.key).await?;
        return Err(Status::new(Code::Cancelled, "context canceled"));
    }
    let revision = kv.status().await?.revision;
    Ok(CampaignResponse {
        header: header(revision),
        leader: Some(leader),
    })
}

pub(crate) async fn proclaim<K: KvService>(
    kv: &K,
    req: ProclaimRequest,
) -> Result<ProclaimResponse, Status> {
    let leader = req.leader.ok_or_else(missing_leader_key)?;
    let (held, revision) =
        if_still_held(kv, &leader.key, leader.rev, put_op(&leader, req.value)).await?;
    if !held {
        return Err(not_leader());
    }
    Ok(ProclaimResponse {
        header: header(revision),
    })
}

pub(crate) async fn leader<K: KvService>(
    kv: &K,
    req: LeaderRequest,
) -> Result<LeaderResponse, Status> {
    let (first, revision) = first_holder(kv, &req.name).await?;
    let kv_found = first.ok_or_else(no_leader)?;
    Ok(LeaderResponse {
        header: header(revision),
        kv: Some(kv_found),
    })
}

pub(crate) async fn resign<K: KvService>(
    kv: &K,
    req: ResignRequest,
) -> Result<ResignResponse, Status> {
    let leader = req.leader.ok_or_else(missing_leader_key)?;
    let delete = RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        })),
    };
    let (_, revision) = if_still_held(kv, &leader.key, leader.rev, delete).await?;
    Ok(ResignResponse {
        header: header(revision),
    })
}

/// Observe: the current leader, then each new leader or proclaimed value, until the client
/// goes away.
pub(crate) async fn observe<K: KvService>(
    kv: &K,
    fill_header: &dyn Fn(&mut Option<ResponseHeader>),
    mut reader: MessageReader,
    mut sink: ResponseSink,
) -> Option<Code> {
    let req = match reader.next().await {
        Ok(Some(body)) => decode::<LeaderRequest>(body, "request"),
        Ok(None) => Err(Status::internal(
            "grpc: observe request ended before its message",
        )),
        Err(_) => return None,
    };
    let req = match req {
        Ok(req) => req,
        Err(status) => {
            let code = status.code;
            sink.finish(&status);
            return Some(code);
        }
    };
    let mut prefix = req.name.to_vec();
    prefix.push(b'/');
    let mut last_sent: Option<(bytes::Bytes, i64)> = None;
    loop {
        let (first, revision) = match first_holder(kv, &req.name).await {
            Ok(found) => found,
            Err(status) => {
                let code = status.code;
                sink.finish(&status);
                return Some(code);
            }
        };
        if let Some(kv_found) = first {
            let seen = (kv_found.key.clone(), kv_found.mod_revision);
            if last_sent.as_ref() != Some(&seen) {
                let mut response = LeaderResponse {
                    header: header(revision),
                    kv: Some(kv_found),
                };
                fill_header(&mut response.header);
                let Ok(framed) = encode(&response) else {
                    return None;
                };
                if sink.send(framed).await.is_err() {
                    return None;
                }
                last_sent = Some(seen);
            }
        }
        let spec = WatchSpec {
            range_end: prefix_end(&prefix),
            key: prefix.clone().into(),
            start_revision: revision + 1,
            ..Default::default()
        };
        // Any change under the name may change the leader; look again after it. The client
        // going away shows as a failed send on the next change.
        if wait_event(kv, spec).await.is_err() {
            return None;
        }
    }
}
