//! The Lease service: Grant and Revoke go through the executor's log; KeepAlive (a bidi
//! stream of renewals), TimeToLive and Leases are answered by the lessor where it lives, as
//! etcd's leader answers them from memory. This module owns request checks and response shapes
//! (etcd's: an unknown lease is TTL -1 in TimeToLive and TTL 0 in KeepAlive, not an error); it
//! must never decide lease semantics, which are `engine::lease`'s.

use std::time::{Duration, Instant};

use basalt_engine::lease::{LeaseError, LEASE_TTL_S_MAX};
use basalt_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    ResponseHeader,
};

use crate::grpc::{decode, encode, MessageReader, ResponseSink};
use crate::kv::KvService;
use crate::status::{Code, Status};

/// Work run on the lessor where it lives, given the store's revision (see
/// [`KvService::with_lessor`]).
pub(crate) type LessorTask = Box<dyn FnOnce(&mut basalt_engine::lease::Lessor, i64) + Send>;

/// What an executor without a lessor answers.
pub(crate) fn no_lessor() -> Status {
    Status::unimplemented("basalt: this store has no lessor")
}

impl From<LeaseError> for Status {
    fn from(error: LeaseError) -> Status {
        let code = match &error {
            LeaseError::NotFound => Code::NotFound,
            LeaseError::Exists => Code::FailedPrecondition,
            LeaseError::TtlTooLarge => Code::OutOfRange,
            LeaseError::Mvcc(error) => return error.clone().into(),
        };
        Status::new(code, error.to_string())
    }
}

/// etcd's check before proposing a grant.
pub(crate) async fn grant<K: KvService>(
    kv: &K,
    req: LeaseGrantRequest,
) -> Result<LeaseGrantResponse, Status> {
    if req.ttl > LEASE_TTL_S_MAX {
        return Err(LeaseError::TtlTooLarge.into());
    }
    kv.lease_grant(req).await
}

/// A member answers lease calls from its own lessor, which may not have applied a grant the
/// leader already answered (etcd forwards these calls to its leader, which applies all it
/// committed first): before a lease is called missing, the member catches up and looks again.
pub(crate) async fn time_to_live<K: KvService>(
    kv: &K,
    req: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Status> {
    let resp = time_to_live_here(kv, req).await?;
    if resp.ttl != -1 {
        return Ok(resp);
    }
    kv.caught_up().await?;
    time_to_live_here(kv, req).await
}

async fn time_to_live_here<K: KvService>(
    kv: &K,
    req: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Status> {
    let id = req.id;
    kv.with_lessor(move |lessor, revision| {
        let header = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
        match lessor.time_to_live(id, req.keys, Instant::now()) {
            Some(ttl) => LeaseTimeToLiveResponse {
                header,
                id,
                ttl: ttl.ttl_s,
                granted_ttl: ttl.granted_ttl_s,
                keys: ttl.keys,
            },
            None => LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                ..Default::default()
            },
        }
    })
    .await
}

pub(crate) async fn leases<K: KvService>(kv: &K) -> Result<LeaseLeasesResponse, Status> {
    kv.with_lessor(|lessor, revision| LeaseLeasesResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        leases: lessor
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect(),
    })
    .await
}

/// Serves one LeaseKeepAlive stream: each request renews one lease and is answered with its
/// TTL (0 for a lease that does not exist), until the client ends the stream. With
/// `leader_check_interval` (a `hasleader` stream) it ends with etcd's no-leader error once
/// the member has known no leader for a few checks, as etcd cancels such streams.
pub(crate) async fn keep_alive<K: KvService>(
    kv: &K,
    fill_header: &dyn Fn(&mut Option<ResponseHeader>),
    leader_check_interval: Option<Duration>,
    mut reader: MessageReader,
    mut sink: ResponseSink,
) -> Option<Code> {
    let mut leader_lost = std::pin::pin!(async {
        match leader_check_interval {
            Some(interval) => crate::watch::leader_lost(kv, interval).await,
            None => std::future::pending().await,
        }
    });
    let status = loop {
        let next = futures_lite::future::or(async { Some(reader.next().await) }, async {
            (&mut leader_lost).await;
            None
        })
        .await;
        let body = match next {
            None => break Status::no_leader(),
            Some(Ok(Some(body))) => body,
            Some(Ok(None)) => break Status::ok(),
            Some(Err(_)) => return None, // The client is gone.
        };
        let req = match decode::<LeaseKeepAliveRequest>(body, "request") {
            Ok(req) => req,
            Err(status) => break status,
        };
        let id = req.id;
        let renew =
            || kv.with_lessor(move |lessor, revision| (lessor.renew(id, Instant::now()), revision));
        let mut renewed = renew().await;
        if matches!(renewed, Ok((Err(LeaseError::NotFound), _))) {
            // Not found here may be not applied here yet (see `time_to_live`).
            if let Err(status) = kv.caught_up().await {
                break status;
            }
            renewed = renew().await;
        }
        let (ttl, revision) = match renewed {
            Ok((Ok(ttl_s), revision)) => (ttl_s, revision),
            Ok((Err(LeaseError::NotFound), revision)) => (0, revision),
            Ok((Err(error), _)) => break error.into(),
            Err(status) => break status,
        };
        let mut header = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
        fill_header(&mut header);
        let response = LeaseKeepAliveResponse { header, id, ttl };
        match encode(&response) {
            Ok(framed) => {
                if sink.send(framed).await.is_err() {
                    return None;
                }
            }
            Err(status) => break status,
        }
    };
    let code = status.code;
    sink.finish(&status);
    Some(code)
}
