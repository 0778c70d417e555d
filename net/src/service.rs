//! The etcd services: which gRPC path runs what, request validation before execution, and
//! the response headers every reply carries.
//!
//! A call arrives as a [`ServerCall`] (the request stream and the handle to answer it), so a
//! streaming method (Watch, LeaseKeepAlive) plugs in beside the unary ones with the same shape.

use crate::config::ServerConfig;
use crate::grpc::{decode, encode, MessageReader, ResponseSink};
use crate::kv::{KvService, MembershipChange, SnapshotFile};
use crate::metrics::{metrics, GrpcMetrics};
use crate::status::{Code, Status};
use basalt_engine::mvcc::{
    validate_compaction, validate_delete_range, validate_put, validate_range, validate_txn, Limits,
};
use basalt_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, Member, MemberAddRequest, MemberAddResponse,
    MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    MoveLeaderRequest, MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse,
};
use std::future::Future;

/// How often a call that arrived before the member was ready looks again.
const READY_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// What a learner serves (etcd's `isRPCSupportedForLearner`; a Range must be serializable,
/// which its handler checks).
const LEARNER_METHODS: [&str; 5] = [
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberPromote",
];

/// What a pushed-off member still answers (see `node/core/push_off.rs`): what operators and
/// the health of the member itself need, all answered locally.
const PUSHED_OFF_METHODS: [&str; 6] = [
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Cluster/MemberList",
];

/// Bytes of file per Snapshot response message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

/// The etcd version Basalt reports (Maintenance.Status and `/version`): the etcd release
/// whose behaviour it reproduces.
pub const ETCD_SERVER_VERSION: &str = "3.5.1";
/// The cluster version reported by `/version` (etcd reports major.minor.0).
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// One gRPC call as the server sees it: requests come in through `reader`, responses and the
/// final status go out through `sink`. A streaming method (Watch, LeaseKeepAlive) reads and
/// sends on its own schedule with the same pair; [`unary`] is the one-in, one-out case.
pub(crate) struct ServerCall {
    pub(crate) reader: MessageReader,
    pub(crate) sink: ResponseSink,
    /// The Common Name of the client's TLS certificate, verified against `--trusted-ca-file`
    /// (`--client-cert-auth` on an `https://` URL; `Some("")` for a certificate without a CN);
    /// `None` on plain text or when no certificate is required. With auth enabled and no
    /// token, etcd takes it as the user name.
    pub(crate) client_cert_common_name: Option<String>,
    /// The `token` metadata a client sends after Authenticate (etcd's `TokenFieldNameGRPC`).
    pub(crate) token: Option<String>,
    /// etcd's `hasleader=true` metadata (clientv3's `WithRequireLeader`): refuse at once when
    /// this member knows no leader instead of waiting for one.
    pub(crate) require_leader: bool,
}

/// Everything one core needs to answer calls.
pub(crate) struct Services<K> {
    kv: K,
    limits: Limits,
    cluster_id: u64,
    member_id: u64,
    /// This member as Cluster.MemberList shows it.
    member: Member,
    watch_progress_notify_interval: std::time::Duration,
    /// `--election-timeout`: how often a `hasleader` Watch stream looks for its leader.
    election_timeout: std::time::Duration,
    /// etcd's request timeout, which bounds the health checks.
    request_timeout: std::time::Duration,
}

impl<K: KvService> Services<K> {
    pub(crate) fn new(config: &ServerConfig, kv: K) -> Self {
        Self {
            kv,
            limits: Limits {
                max_txn_ops: config.max_txn_ops,
                max_request_bytes: config.max_request_bytes,
            },
            cluster_id: config.cluster_id,
            member_id: config.member_id,
            watch_progress_notify_interval: std::time::Duration::from_millis(
                config.watch_progress_notify_interval_ms,
            ),
            election_timeout: std::time::Duration::from_millis(config.election_timeout_ms),
            request_timeout: crate::config::request_timeout(config.election_timeout_ms),
            member: Member {
                id: config.member_id,
                name: config.name.clone(),
                peer_ur_ls: config.advertise_peer_urls.clone(),
                client_ur_ls: config.advertise_client_urls.clone(),
                is_learner: false,
            },
        }
    }

    pub(crate) fn kv(&self) -> &K {
        &self.kv
    }

    pub(crate) fn request_timeout(&self) -> std::time::Duration {
        self.request_timeout
    }

    pub(crate) async fn call(&self, path: &str, call: ServerCall) {
        // As etcd, a call waits until this member has announced itself through the log, so no
        // client acts on a member that the member list shows half-announced.
        while !self.kv.is_ready() {
            glommio::timer::sleep(READY_POLL_INTERVAL).await;
        }
        let grpc_metrics = &metrics().grpc;
        let method = GrpcMetrics::method_index(path);
        if let Some(method) = method {
            grpc_metrics.started(method);
        }
        let pushed_off = self.kv.pushed_off() && !PUSHED_OFF_METHODS.contains(&path);
        let refusal = if pushed_off || (call.require_leader && !self.kv.has_leader()) {
            Some(Status::no_leader())
        } else if self.kv.is_learner() && !LEARNER_METHODS.contains(&path) {
            Some(Status::new(
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
            ))
        } else {
            None
        };
        let code = match refusal {
            Some(status) => {
                call.sink.finish(&status);
                Some(status.code)
            }
            None => self.dispatch(path, call).await,
        };
        if let (Some(method), Some(code)) = (method, code) {
            grpc_metrics.handled(method, code);
        }
    }

    /// Runs the call and says how it ended (None when the client vanished before the end).
    async fn dispatch(&self, path: &str, call: ServerCall) -> Option<Code> {
        let limits = &self.limits;
        let gate = match crate::auth::Gate::open(&self.kv, path, &call).await {
            Ok(gate) => gate,
            Err(status) => {
                call.sink.finish(&status);
                return Some(status.code);
            }
        };
        let gate = &gate;
        // A user's requests name it in their log entries, where apply checks them again.
        let user_kv = gate.who().and_then(|who| self.kv.for_user(who));
        let kv = user_kv.as_ref().unwrap_or(&self.kv);
        let m = metrics();
        match path {
            "/etcdserverpb.KV/Range" => {
                unary(
                    call,
                    |req: basalt_proto::etcdserverpb::RangeRequest| async move {
                        m.mvcc_range_total.inc();
                        if !req.serializable && kv.is_learner() {
                            return Err(Status::new(
                                Code::Unavailable,
                                "etcdserver: rpc not supported for learner",
                            ));
                        }
                        validate_range(&req, limits)?;
                        gate.range(&req)?;
                        let mut resp = kv.range(req).await?;
                        gate.still_current(kv)?;
                        self.fill_header(&mut resp.header);
                        Ok(resp)
                    },
                )
                .await
            }
            "/etcdserverpb.KV/Put" => {
                unary(call, |req| async move {
                    m.mvcc_put_total.inc();
                    validate_put(&req, limits)?;
                    gate.put(&req)?;
                    let mut resp = kv.put(req).await?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/etcdserverpb.KV/DeleteRange" => {
                unary(call, |req| async move {
                    m.mvcc_delete_total.inc();
                    validate_delete_range(&req, limits)?;
                    gate.delete_range(&req)?;
                    let mut resp = kv.delete_range(req).await?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/etcdserverpb.KV/Txn" => {
                unary(call, |req| async move {
                    m.mvcc_txn_total.inc();
                    validate_txn(&req, limits)?;
                    gate.txn(&req)?;
                    let mut resp = kv.txn(req).await?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/etcdserverpb.KV/Compact" => {
                unary(call, |req| async move {
                    validate_compaction(&req, limits)?;
                    let mut resp = kv.compact(req).await?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/v3lockpb.Lock/Lock" => {
                unary_until_gone(call, |req, gone| async move {
                    let mut resp = crate::lock::lock(kv, req, &gone)
                        .await
                        .map_err(crate::concurrency::client_error)?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/v3lockpb.Lock/Unlock" => {
                unary(call, |req| async move {
                    let mut resp = crate::lock::unlock(kv, req)
                        .await
                        .map_err(crate::concurrency::client_error)?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/v3electionpb.Election/Campaign" => {
                unary_until_gone(call, |req, gone| async move {
                    let mut resp = crate::election::campaign(kv, req, &gone)
                        .await
                        .map_err(crate::concurrency::client_error)?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/v3electionpb.Election/Proclaim" => {
                unary(call, |req| async move {
                    let mut resp = crate::election::proclaim(kv, req)
                        .await
                        .map_err(crate::concurrency::client_error)?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/v3electionpb.Election/Leader" => {
                unary(call, |req| async move {
                    let mut resp = crate::election::leader(kv, req)
                        .await
                        .map_err(crate::concurrency::client_error)?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/v3electionpb.Election/Resign" => {
                unary(call, |req| async move {
                    let mut resp = crate::election::resign(kv, req)
                        .await
                        .map_err(crate::concurrency::client_error)?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/v3electionpb.Election/Observe" => {
                let fill = |header: &mut Option<ResponseHeader>| self.fill_header(header);
                crate::election::observe(kv, &fill, call.reader, call.sink).await
            }
            "/etcdserverpb.Lease/LeaseGrant" => {
                unary(call, |req| async move {
                    let mut resp = crate::lease::grant(kv, req).await?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/etcdserverpb.Lease/LeaseRevoke" => {
                unary(call, |req| async move {
                    let mut resp = kv.lease_revoke(req).await?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/etcdserverpb.Lease/LeaseTimeToLive" => {
                unary(call, |req| async move {
                    let mut resp = crate::lease::time_to_live(kv, req).await?;
                    self.fill_header(&mut resp.header);
                    Ok(resp)
                })
                .await
            }
            "/etcdserverpb.Lease/LeaseLeases" => {
                unary(
                    call,
                    |_: basalt_proto::etcdserverpb::LeaseLeasesRequest| async move {
                        let mut resp = crate::lease::leases(kv).await?;
                        self.fill_header(&mut resp.header);
                        Ok(resp)
                    },
                )
                .await
            }
            "/etcdserverpb.Lease/LeaseKeepAlive" => {
                let fill = |header: &mut Option<ResponseHeader>| self.fill_header(header);
                let leader_check_interval = call.require_leader.then_some(self.election_timeout);
                crate::lease::keep_alive(kv, &fill, leader_check_interval, call.reader, call.sink)
                    .await
            }
            "/etcdserverpb.Watch/Watch" if kv.watch_hub().is_some() => {
                let header = |revision| {
                    let mut header = Some(ResponseHeader {
                        revision,
                        ..Default::default()
                    });
                    self.fill_header(&mut header);
                    header.expect("filled above")
                };
                let cx = crate::watch::WatchContext {
                    kv,
                    hub: kv.watch_hub().expect("checked by the guard"),
                    header: &header,
                    // etcd's watch server fragments at the request limit plus gRPC's allowance.
                    fragment_bytes_min: limits.max_request_bytes + crate::GRPC_OVERHEAD_BYTES,
                    progress_notify_interval: self.watch_progress_notify_interval,
                    leader_check_interval: call.require_leader.then_some(self.election_timeout),
                    gate,
                };
                crate::watch::serve(cx, call.reader, call.sink).await
            }
            "/etcdserverpb.Maintenance/Status" => {
                unary(call, |_: StatusRequest| self.maintenance_status()).await
            }
            "/etcdserverpb.Maintenance/Alarm" => {
                unary(call, |req: AlarmRequest| self.alarm(req)).await
            }
            "/grpc.health.v1.Health/Check" => unary(call, health_check).await,
            "/etcdserverpb.Maintenance/Defragment" => {
                unary(call, |_: DefragmentRequest| async {
                    kv.defragment().await?;
                    // etcd 3.5 answers Defragment and MoveLeader without a header.
                    Ok(DefragmentResponse { header: None })
                })
                .await
            }
            "/etcdserverpb.Maintenance/HashKV" => {
                unary(call, |req: HashKvRequest| async move {
                    let hash = kv.hash_kv(req.revision).await?;
                    let mut header = Some(ResponseHeader {
                        revision: hash.current_revision,
                        ..Default::default()
                    });
                    self.fill_header(&mut header);
                    Ok(HashKvResponse {
                        header,
                        hash: hash.hash,
                        compact_revision: hash.compacted_revision,
                    })
                })
                .await
            }
            "/etcdserverpb.Maintenance/Hash" => {
                unary(call, |_: HashRequest| async {
                    let hash = kv.hash().await?;
                    let store = kv.status().await?;
                    let mut header = Some(ResponseHeader {
                        revision: store.revision,
                        ..Default::default()
                    });
                    self.fill_header(&mut header);
                    Ok(HashResponse { header, hash })
                })
                .await
            }
            "/etcdserverpb.Maintenance/Snapshot" => self.snapshot(call).await,
            "/etcdserverpb.Maintenance/MoveLeader" => {
                unary(call, |req: MoveLeaderRequest| async move {
                    // A lone member already leads: moving to itself succeeds at once.
                    if req.target_id != self.member_id || kv.members().is_some() {
                        kv.move_leader(req.target_id).await?;
                    }
                    Ok(MoveLeaderResponse { header: None })
                })
                .await
            }
            "/etcdserverpb.Cluster/MemberList" => {
                unary(call, |_: MemberListRequest| async {
                    // etcd's cluster server leaves the revision out of this header.
                    let mut header = None;
                    self.fill_header(&mut header);
                    Ok(MemberListResponse {
                        header,
                        members: self.members(),
                    })
                })
                .await
            }
            "/etcdserverpb.Cluster/MemberAdd" => {
                unary(call, |req: MemberAddRequest| async move {
                    check_peer_urls(&req.peer_ur_ls)?;
                    let (member, members) = kv
                        .change_members(MembershipChange::Add {
                            peer_urls: req.peer_ur_ls,
                            is_learner: req.is_learner,
                        })
                        .await?;
                    let mut header = None;
                    self.fill_header(&mut header);
                    Ok(MemberAddResponse {
                        header,
                        member: Some(member),
                        members,
                    })
                })
                .await
            }
            "/etcdserverpb.Cluster/MemberRemove" => {
                unary(call, |req: MemberRemoveRequest| async move {
                    let (_, members) = kv
                        .change_members(MembershipChange::Remove { id: req.id })
                        .await?;
                    let mut header = None;
                    self.fill_header(&mut header);
                    Ok(MemberRemoveResponse { header, members })
                })
                .await
            }
            "/etcdserverpb.Cluster/MemberUpdate" => {
                unary(call, |req: MemberUpdateRequest| async move {
                    check_peer_urls(&req.peer_ur_ls)?;
                    let (_, members) = kv
                        .change_members(MembershipChange::Update {
                            id: req.id,
                            peer_urls: req.peer_ur_ls,
                        })
                        .await?;
                    let mut header = None;
                    self.fill_header(&mut header);
                    Ok(MemberUpdateResponse { header, members })
                })
                .await
            }
            "/etcdserverpb.Cluster/MemberPromote" => {
                unary(call, |req: MemberPromoteRequest| async move {
                    let (_, members) = kv
                        .change_members(MembershipChange::Promote { id: req.id })
                        .await?;
                    let mut header = None;
                    self.fill_header(&mut header);
                    Ok(MemberPromoteResponse { header, members })
                })
                .await
            }
            auth_path if auth_path.starts_with(crate::auth::SERVICE_PREFIX) => match kv.auth() {
                Some(shared) => {
                    let fill = |header: &mut Option<ResponseHeader>| self.fill_header(header);
                    let method = &auth_path[crate::auth::SERVICE_PREFIX.len()..];
                    crate::auth::serve(kv, shared, &fill, method, call).await
                }
                None => {
                    let status = unserved(path);
                    call.sink.finish(&status);
                    Some(status.code)
                }
            },
            _ => {
                let status = unserved(path);
                call.sink.finish(&status);
                Some(status.code)
            }
        }
    }

    /// Maintenance.Snapshot as etcd streams it: the file in chunks, each with the bytes still
    /// to come, then the sha256 of the file as the last blob.
    async fn snapshot(&self, call: ServerCall) -> Option<Code> {
        let ServerCall {
            mut reader,
            mut sink,
            ..
        } = call;
        let request = match reader.next().await {
            Ok(Some(body)) => decode::<SnapshotRequest>(body, "request").map(|_| ()),
            Ok(None) => Err(Status::internal("grpc: request ended before its message")),
            Err(status) => Err(status),
        };
        let file = match request {
            Ok(()) => self.kv.snapshot().await,
            Err(status) => Err(status),
        };
        let status = match file {
            Ok(file) => {
                let sent = self.stream_snapshot(&file, &mut sink).await;
                let _ = std::fs::remove_file(&file.path);
                match sent {
                    Ok(()) => Status::ok(),
                    Err(None) => return None,
                    Err(Some(status)) => status,
                }
            }
            Err(status) => status,
        };
        let code = status.code;
        sink.finish(&status);
        Some(code)
    }

    /// `Err(None)`: the client went away.
    async fn stream_snapshot(
        &self,
        file: &SnapshotFile,
        sink: &mut ResponseSink,
    ) -> Result<(), Option<Status>> {
        let read_error = |e: basalt_engine::btree::Error| {
            Some(Status::internal(format!("basalt: snapshot: {e}")))
        };
        let mut source = basalt_engine::btree::PlainReader::open(&file.path, file.keyring.as_ref())
            .map_err(read_error)?;
        let total_bytes = source.len();
        let mut sent_bytes = 0u64;
        loop {
            // A blocking read of a local file (decrypted when the member's copies are sealed),
            // one chunk at a time between network sends.
            let chunk = source
                .read_chunk(SNAPSHOT_CHUNK_BYTES)
                .map_err(read_error)?;
            let n = chunk.len();
            let blob = if n == 0 {
                file.sha256.to_vec()
            } else {
                sent_bytes += n as u64;
                chunk
            };
            // etcd 3.5.1 sends its snapshot chunks without a header.
            let response = SnapshotResponse {
                header: None,
                remaining_bytes: total_bytes - sent_bytes,
                blob: blob.into(),
            };
            let framed = encode(&response).map_err(Some)?;
            sink.send(framed).await.map_err(|_| None)?;
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// The applied member list, or this member alone when the store is not a raft member.
    fn members(&self) -> Vec<Member> {
        self.kv
            .members()
            .unwrap_or_else(|| vec![self.member.clone()])
    }

    async fn maintenance_status(&self) -> Result<StatusResponse, Status> {
        let store = self.kv.status().await?;
        let mut header = Some(ResponseHeader {
            revision: store.revision,
            ..Default::default()
        });
        self.fill_header(&mut header);
        Ok(StatusResponse {
            header,
            version: ETCD_SERVER_VERSION.to_string(),
            db_size: store.db_size_bytes,
            leader: match store.leader_id {
                0 if store.has_leader => self.member_id,
                leader_id => leader_id,
            },
            raft_index: store.raft_index,
            raft_term: store.raft_term,
            raft_applied_index: store.raft_applied_index,
            // etcd lists each raised alarm in its protobuf text form.
            errors: store
                .alarms
                .iter()
                .map(|a| {
                    let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
                    format!("memberID:{} alarm:{name} ", a.member_id)
                })
                .collect(),
            db_size_in_use: store.db_size_in_use_bytes,
            is_learner: store.is_learner,
        })
    }

    /// Alarms go through the store (the durable node replicates them through the log).
    async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, Status> {
        let mut resp = self.kv.alarm(req).await?;
        self.fill_header(&mut resp.header);
        Ok(resp)
    }

    /// etcd fills these on the top-level header only; headers nested in a Txn keep just
    /// their revision.
    fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let header = header.get_or_insert_with(Default::default);
        header.cluster_id = self.cluster_id;
        header.member_id = self.member_id;
        header.raft_term = self.kv.raft_term();
    }
}

/// etcd's check of a member's peer URLs: each a scheme://host:port URL.
fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    let valid = |url: &String| {
        url.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https" | "unix" | "unixs")
                && rest
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        })
    };
    if urls.is_empty() || !urls.iter().all(valid) {
        return Err(Status::new(
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ));
    }
    Ok(())
}

/// Reads the one request of a unary call, runs `handler`, and answers with its response or
/// its status.
pub(crate) async fn unary<Req, Resp, Fut>(
    call: ServerCall,
    handler: impl FnOnce(Req) -> Fut,
) -> Option<Code>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    Fut: Future<Output = Result<Resp, Status>>,
{
    let ServerCall {
        mut reader, sink, ..
    } = call;
    let result = match unary_request::<Req>(&mut reader).await {
        Ok(req) => handler(req).await,
        Err(status) => Err(status),
    };
    answer_unary(sink, result).await
}

/// The client of a call has left (reset the stream, closed the connection, or its deadline
/// passed) once [`ClientGone::wait`] returns.
pub(crate) struct ClientGone(flume::Receiver<()>);

impl ClientGone {
    pub(crate) async fn wait(&self) {
        // Nothing is ever sent: the sender is dropped when the client leaves.
        let _ = self.0.recv_async().await;
    }
}

/// [`unary`] for a handler that may wait on others for long (Lock, Campaign): it is told
/// when the client leaves, to take back what it wrote as etcd's servers do when a call's
/// context ends.
pub(crate) async fn unary_until_gone<Req, Resp, Fut>(
    call: ServerCall,
    handler: impl FnOnce(Req, ClientGone) -> Fut,
) -> Option<Code>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    Fut: Future<Output = Result<Resp, Status>>,
{
    let ServerCall {
        mut reader,
        mut sink,
        ..
    } = call;
    let result = match unary_request::<Req>(&mut reader).await {
        Ok(req) => {
            let (left, gone) = flume::bounded::<()>(1);
            let watch = async {
                sink.closed().await;
                drop(left);
                // The handler, told, ends the race.
                std::future::pending().await
            };
            futures_lite::future::or(handler(req, ClientGone(gone)), watch).await
        }
        Err(status) => Err(status),
    };
    answer_unary(sink, result).await
}

/// The one request of a unary call. grpc-go answers as soon as the one message is in,
/// without waiting for the client to half-close; a client that sends more is not read
/// further.
async fn unary_request<Req: prost::Message + Default>(
    reader: &mut MessageReader,
) -> Result<Req, Status> {
    match reader.next().await {
        Ok(Some(body)) => decode::<Req>(body, "request"),
        Ok(None) => Err(Status::internal(
            "grpc: unary request ended before its message",
        )),
        Err(status) => Err(status),
    }
}

async fn answer_unary<Resp: prost::Message>(
    mut sink: ResponseSink,
    result: Result<Resp, Status>,
) -> Option<Code> {
    let status = match result.and_then(|resp| encode(&resp)) {
        Ok(framed) => match sink.send(framed).await {
            Ok(()) => Status::ok(),
            Err(_) => return None, // The client is gone.
        },
        Err(status) => status,
    };
    sink.finish(&status);
    Some(status.code)
}

/// gRPC's standard health service (`grpc.health.v1`), which etcd registers on its client
/// port; probes such as grpc_health_probe use it. Not part of etcd's protos, so the two tiny
/// messages live here.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    /// 1 = SERVING in `grpc.health.v1.HealthCheckResponse.ServingStatus`.
    #[prost(int32, tag = "1")]
    status: i32,
}

const HEALTH_SERVING: i32 = 1;

/// etcd marks only the whole server ("") as serving.
async fn health_check(req: HealthCheckRequest) -> Result<HealthCheckResponse, Status> {
    if req.service.is_empty() {
        Ok(HealthCheckResponse {
            status: HEALTH_SERVING,
        })
    } else {
        Err(Status::new(
            crate::status::Code::NotFound,
            "unknown service",
        ))
    }
}

/// The status for a path no handler serves, worded as grpc-go words it.
pub(crate) fn unserved(path: &str) -> Status {
    if let Some(method) = basalt_proto::method_by_path(path) {
        // Declared by etcd's protos but not served by Basalt yet: what grpc-go's generated
        // Unimplemented*Server answers.
        return Status::unimplemented(format!("method {} not implemented", method.method));
    }
    let Some((service, method)) = path
        .strip_prefix('/')
        .and_then(|rest| rest.rsplit_once('/'))
    else {
        return Status::unimplemented(format!("malformed method name: {path:?}"));
    };
    if basalt_proto::METHODS.iter().any(|m| m.service == service) {
        Status::unimplemented(format!("unknown method {method} for service {service}"))
    } else {
        Status::unimplemented(format!("unknown service {service}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unserved_paths_are_worded_as_grpc_go_words_them() {
        let cases = [
            (
                "/etcdserverpb.Auth/AuthEnable",
                "method AuthEnable not implemented",
            ),
            (
                "/etcdserverpb.KV/Frobnicate",
                "unknown method Frobnicate for service etcdserverpb.KV",
            ),
            ("/nope.Nothing/Range", "unknown service nope.Nothing"),
            ("no-slash", "malformed method name: \"no-slash\""),
        ];
        for (path, message) in cases {
            let status = unserved(path);
            assert_eq!(status.code, crate::status::Code::Unimplemented, "{path}");
            assert_eq!(status.message, message, "{path}");
        }
    }
}
