//! The durable member: one *raft core* thread that owns the raft state machine, the WAL, the
//! applier and the single B+tree writer, and [`RaftKv`], the [`KvService`] every client core
//! uses to reach it.
//!
//! Owns: the data directory (`member/wal/`, `member/snap/db`, the format marker), start-up
//! recovery (B+tree checkpoint, then the WAL replayed from its applied index), the loop that
//! turns proposals into durable, applied entries, ReadIndex reads, checkpoints, raft snapshots
//! with WAL purge, and the drain on stop. Must never: acknowledge a write before its WAL record
//! is durable, answer a linearizable read before apply reaches its read index, or serve a data
//! directory of another format.
//!
//! A single member is a one-voter raft group on the same path a cluster takes; peers are not
//! wired yet, so the messages a Ready carries have nowhere to go (a lone voter sends none).

mod codec;
mod compactor;
mod core;
mod corrupt;
mod datadir;
pub mod migrate;
mod reads;
pub mod snapshot;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use basalt_engine::apply::{takes_space, Applied, ApplyError, KvHash};
use basalt_engine::crypt::SharedKeyring;
use basalt_engine::mvcc::Limits;
use basalt_engine::wal::WalError;
use basalt_proto::basaltpb::{internal_request::Request, InternalRequest};
use basalt_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, Member, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use prost::Message;

use crate::kv::{KvService, MembershipChange, SnapshotFile, StoreStatus};
use crate::status::{Code, Status};

pub use codec::CodecError;
pub use compactor::AutoCompaction;
pub use datadir::{
    db_path, existing_member, prepare as prepare_data_dir, remove_stray_joined_marker, MemberDir,
};

/// How the member runs; the binary fills it from etcd's flags.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `--data-dir`: holds `member/wal/` and `member/snap/db`.
    pub data_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    /// `--snapshot-count`: applied entries between raft snapshots (log compaction + WAL purge).
    pub snapshot_count: u64,
    /// `--max-wals`: 0 keeps every WAL segment; otherwise each raft snapshot purges every
    /// segment it covers.
    pub max_wals: usize,
    /// `--heartbeat-interval`: one raft tick.
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout`.
    pub election_timeout_ms: u64,
    /// The same limits the edge validates with; apply checks again with them.
    pub limits: Limits,
    /// `--quota-backend-bytes`: past it, writes that take space raise NOSPACE and fail.
    pub quota_backend_bytes: u64,
    /// `--disk-reserve-bytes` (0: off): while the data dir's filesystem has less free, writes
    /// that take space raise NOSPACE and fail (`core/disk.rs`).
    pub disk_reserve_bytes: u64,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: AutoCompaction,
    /// `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`, `--client-cert-auth`.
    pub auth: crate::auth::AuthOptions,
    /// `--name`: published to the member list once this member runs.
    pub name: String,
    /// `--advertise-client-urls`: published with the name.
    pub advertise_client_urls: Vec<String>,
    /// `--listen-peer-urls`: where the peer transport accepts other members.
    pub listen_peer_urls: Vec<String>,
    /// TLS of `https://` peer URLs (`--peer-cert-file` and the rest).
    pub peer_tls: Option<crate::tls::TlsConfig>,
    /// `--initial-cluster` as members (ids, names, peer URLs) for a new cluster; a member
    /// joining an existing cluster gets the member list the cluster sent it. A restart of a
    /// member reads its members from its data dir: these are then only consulted to repair a
    /// dir an older Basalt bootstrapped without checkpointing its founders.
    pub initial_members: Vec<Member>,
    /// This member was added to a running cluster and has received nothing from it yet
    /// (`--initial-cluster-state existing` on a fresh dir, or a restart before the first
    /// snapshot arrived): it starts with an empty log that the leader fills by snapshot, and
    /// `initial_members` is the member list the cluster sent.
    pub join_existing: bool,
    /// `--strict-reconfig-check`: refuse membership changes that would leave too few
    /// connected voters for a quorum.
    pub strict_reconfig_check: bool,
    /// `--experimental-initial-corrupt-check`: compare HashKV with the peers once after start.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time` (None: off): the leader compares HashKV with every
    /// member this often and raises CORRUPT on a mismatch.
    pub corrupt_check_interval: Option<std::time::Duration>,
    /// `--push-off-election-timeouts` (0: `--push-off=false`): election timeouts without a
    /// leader after which clients are sent elsewhere (`core/push_off.rs`).
    pub push_off_election_timeouts: u32,
    /// The layout of the files the Snapshot RPC streams (etcd's by default).
    pub snapshot_format: snapshot::SnapshotFormat,
    /// `--encryption-key-file` (None: nothing is encrypted): what seals the WAL and the tree
    /// file at rest. The binary swaps in a new keyring when the file changes; each writer
    /// loads the current one as it starts a segment or page batch.
    pub keyring: Option<SharedKeyring>,
}

/// etcd's default `--quota-backend-bytes` (2 GiB).
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 << 30;
/// The default `--disk-reserve-bytes`: one WAL segment. When writes stop, the log holds its
/// current segment and a preallocated one; this is room for the segment being preallocated
/// then, or for the tree pages of the writes already accepted, so that the log can still take
/// alarms, deletes, compactions and lease revokes after the last write that took space.
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 64 << 20;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("default.basalt"),
            member_id: 1,
            cluster_id: 1,
            snapshot_count: 100_000,
            max_wals: 5,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            limits: Limits::default(),
            quota_backend_bytes: QUOTA_BACKEND_BYTES_DEFAULT,
            disk_reserve_bytes: DISK_RESERVE_BYTES_DEFAULT,
            auto_compaction: AutoCompaction::Off,
            auth: crate::auth::AuthOptions::default(),
            name: "default".into(),
            advertise_client_urls: Vec::new(),
            listen_peer_urls: Vec::new(),
            peer_tls: None,
            initial_members: Vec::new(),
            join_existing: false,
            strict_reconfig_check: true,
            initial_corrupt_check: false,
            corrupt_check_interval: None,
            push_off_election_timeouts: crate::leader_check::NO_LEADER_CHECKS_MAX,
            snapshot_format: snapshot::SnapshotFormat::Etcd,
            keyring: None,
        }
    }
}

/// Why the member could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    /// The data dir holds a member that was removed from its cluster: it never serves again
    /// (etcd stops such a member without an error status).
    #[error("the member has been permanently removed from the cluster; the data dir used by this member must be removed")]
    Removed,
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("wal record: {0}")]
    Codec(#[from] CodecError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot start the raft core: {0}")]
    Executor(String),
    #[error("peer transport: {0}")]
    Peer(String),
    #[error("auth: {0}")]
    Auth(String),
}

/// A request's answer as it comes back from the raft core.
type Reply<T> = flume::Sender<Result<T, Status>>;

/// What client cores ask the raft core.
enum Command {
    /// A write (or compaction) to append to the log; answered once applied.
    Propose {
        id: u64,
        data: Vec<u8>,
        /// The request adds data, so the space quota applies (etcd's quota cost > 0).
        takes_space: bool,
        reply: Reply<Applied>,
    },
    /// Answered once this member may serve a read: a linearizable one once apply reached its
    /// read index, a serializable one (asked only before the applied state is shared) at once.
    ReadIndex {
        linearizable: bool,
        reply: Reply<()>,
    },
    Status {
        reply: Reply<StoreStatus>,
    },
    Defragment {
        reply: Reply<()>,
    },
    HashKv {
        revision: i64,
        reply: Reply<KvHash>,
    },
    Hash {
        reply: Reply<u32>,
    },
    /// A read snapshot of everything applied, to copy off the raft core.
    Snapshot {
        reply: Reply<basalt_engine::btree::ReadTxn>,
    },
    /// Runs on the lessor where it lives, with the store's revision (renewals, TimeToLive,
    /// Leases).
    WithLessor(crate::lease::LessorTask),
    /// A membership change (Cluster.MemberAdd/Remove/Promote); answered once applied.
    ChangeMembers {
        change: basalt_proto::basaltpb::MemberChange,
        reply: Reply<Applied>,
    },
    /// Maintenance.MoveLeader.
    TransferLeader {
        target: u64,
        reply: Reply<()>,
    },
    /// Finish what is queued, checkpoint, close the WAL, exit.
    Stop,
}

/// Commands queued for the raft core before senders wait (backpressure).
const COMMAND_QUEUE_MAX: usize = 65_536;

/// State the raft core publishes to every core.
struct Published {
    /// Ids for proposals, as etcd's id generator makes them: the member id's low 16 bits,
    /// then the wall clock in milliseconds (40 bits) and a counter (8 bits), so ids of
    /// different members never meet and a restarted member's never meet those it replays.
    next_id: AtomicU64,
    raft_term: AtomicU64,
    /// The leader this member knows of (0: none).
    leader_id: AtomicU64,
    /// Clients are sent elsewhere: calls are refused and connections told to go away.
    pushed_off: AtomicBool,
    /// This member is a learner in the applied configuration.
    is_learner: AtomicBool,
    /// This member's name and client URLs are in the applied member list (etcd's
    /// ReadyNotify): clients are served from then on.
    ready: AtomicBool,
    /// The member list every core reads (Cluster.MemberList, peers joining).
    cluster: crate::peer::SharedCluster,
    stopped: AtomicBool,
    /// Where snapshot copies are made (beside the tree file, on the same disk).
    snap_dir: PathBuf,
    /// The layout of the files the Snapshot RPC streams.
    snapshot_format: snapshot::SnapshotFormat,
    /// `--encryption-key-file`: snapshot copies in `snap_dir` are sealed with it.
    keyring: Option<SharedKeyring>,
    /// The watchers of the applied store: the raft core notifies and syncs them, client
    /// cores' Watch streams add and cancel.
    watches: crate::watch::SharedWatchHub,
    /// The applied auth state (published by the raft core) and the tokens.
    auth: Arc<crate::auth::AuthShared>,
    /// The applied state, shared by the raft core once recovered: client cores serve Ranges
    /// from it (`reads.rs`).
    applier: std::sync::OnceLock<Arc<reads::SharedApplier>>,
    /// This member is the only voter, leads, and has applied an entry of its own term (so every
    /// entry before it, whatever an earlier run acknowledged): each acknowledged write is in the
    /// applied state, and a linearizable Range reads it at once, as its read index would let it.
    lone_leader_reads: AtomicBool,
}

impl Published {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The first proposal id of a member started now (see [`Published::next_id`]).
fn first_proposal_id(member_id: u64) -> u64 {
    const TIMESTAMP_BITS: u32 = 40;
    const COUNTER_BITS: u32 = 8;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let timestamp = now_ms & ((1 << TIMESTAMP_BITS) - 1);
    (member_id << (TIMESTAMP_BITS + COUNTER_BITS)) | (timestamp << COUNTER_BITS)
}

pub(crate) fn lock_cluster(
    cluster: &crate::peer::SharedCluster,
) -> std::sync::MutexGuard<'_, crate::peer::ClusterInfo> {
    // A panic while holding the lock cannot leave the plain list half-written in a way readers
    // could misread, so a poisoned lock is still read.
    cluster
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running member.
pub struct Node {
    commands: flume::Sender<Command>,
    published: Arc<Published>,
    /// Recovery's outcome, sent once by the raft core.
    started: std::sync::mpsc::Receiver<Result<(), NodeError>>,
    /// How the raft core ended, sent once when it does.
    finished: std::sync::mpsc::Receiver<Result<(), NodeError>>,
    /// The raft core's own executor, when [`Node::start`] made one.
    executor: Option<glommio::ExecutorJoinHandle<()>>,
}

/// The raft core, not yet running: [`CoreTask::run`] on the glommio executor that is to host
/// it. On a client core's executor ([`crate::spawn_hosting`]), the requests that core accepts
/// reach the raft core with no thread hop and no cross-thread wake.
pub struct CoreTask {
    config: NodeConfig,
    inbox: flume::Receiver<Command>,
    published: Arc<Published>,
    started: std::sync::mpsc::Sender<Result<(), NodeError>>,
    finished: std::sync::mpsc::Sender<Result<(), NodeError>>,
    checker_kv: RaftKv,
}

impl CoreTask {
    /// Recovers, reports start-up to [`Node::wait_started`], serves until stopped, and reports
    /// how it ended to [`Node::stop`].
    pub async fn run(self) {
        let CoreTask {
            config,
            inbox,
            published,
            started,
            finished,
            checker_kv,
        } = self;
        if config.initial_corrupt_check || config.corrupt_check_interval.is_some() {
            let checker = corrupt::check_periodically(checker_kv, config.clone());
            glommio::spawn_local(checker).detach();
        }
        let result = core::run(config, inbox, published.clone(), started).await;
        published.stopped.store(true, Ordering::SeqCst);
        if let Err(error) = &result {
            eprintln!("basalt: raft core stopped: {error}");
        }
        let _ = finished.send(result);
    }
}

impl Node {
    /// The member and its raft core, which serves once something runs it (see [`CoreTask`]).
    /// Creates the data directory if new.
    pub fn new(config: NodeConfig) -> Result<(Node, CoreTask), NodeError> {
        datadir::prepare(&config.data_dir)?;
        let (commands, inbox) = flume::bounded(COMMAND_QUEUE_MAX);
        let auth = crate::auth::AuthShared::new(&config.auth).map_err(NodeError::Auth)?;
        let published = Arc::new(Published {
            auth: Arc::new(auth),
            next_id: AtomicU64::new(first_proposal_id(config.member_id)),
            raft_term: AtomicU64::new(0),
            leader_id: AtomicU64::new(0),
            pushed_off: AtomicBool::new(false),
            is_learner: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            cluster: Arc::new(std::sync::Mutex::new(crate::peer::ClusterInfo {
                cluster_id: config.cluster_id,
                members: Vec::new(),
            })),
            stopped: AtomicBool::new(false),
            snap_dir: datadir::db_path(&config.data_dir)
                .parent()
                .expect("the db lives in member/snap")
                .to_path_buf(),
            snapshot_format: config.snapshot_format,
            keyring: config.keyring.clone(),
            // Replaced by the raft core once the store is open, before serving starts.
            watches: Arc::new(std::sync::Mutex::new(
                basalt_engine::watch::WatchHub::at_revision(0),
            )),
            applier: std::sync::OnceLock::new(),
            lone_leader_reads: AtomicBool::new(false),
        });
        snapshot::remove_leftover_copies(&published.snap_dir);
        let (started_tx, started) = std::sync::mpsc::channel();
        let (finished_tx, finished) = std::sync::mpsc::channel();
        let checker_kv = RaftKv {
            commands: commands.clone(),
            published: published.clone(),
            auth_header: None,
        };
        let task = CoreTask {
            config,
            inbox,
            published: published.clone(),
            started: started_tx,
            finished: finished_tx,
            checker_kv,
        };
        let node = Node {
            commands,
            published,
            started,
            finished,
            executor: None,
        };
        Ok((node, task))
    }

    /// [`Node::new`] with the raft core on an executor of its own; returns once it serves.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (mut node, task) = Node::new(config)?;
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("basalt-raft")
            .spawn(move || task.run())
            .map_err(|e| NodeError::Executor(e.to_string()))?;
        node.executor = Some(executor);
        match node.wait_started() {
            Ok(()) => Ok(node),
            Err(error) => {
                let _ = node.stop();
                Err(error)
            }
        }
    }

    /// Blocks until the raft core has recovered the data directory and serves, or failed to.
    pub fn wait_started(&self) -> Result<(), NodeError> {
        match self.started.recv() {
            Ok(started) => started,
            // The core's executor went away before recovery answered (it panicked).
            Err(_) => Err(NodeError::Executor("the raft core exited at start".into())),
        }
    }

    /// The client side, to clone onto every core.
    pub fn kv(&self) -> RaftKv {
        RaftKv {
            commands: self.commands.clone(),
            published: self.published.clone(),
            auth_header: None,
        }
    }

    /// True once the raft core has exited (stopped or failed).
    pub fn has_stopped(&self) -> bool {
        self.published.stopped.load(Ordering::SeqCst)
    }

    /// Drains queued requests, checkpoints and closes the WAL; returns how the core ended.
    pub fn stop(mut self) -> Result<(), NodeError> {
        let _ = self.commands.send(Command::Stop);
        let finished = match self.finished.recv() {
            Ok(result) => result,
            Err(_) => Err(NodeError::Executor("the raft core's executor died".into())),
        };
        if let Some(executor) = self.executor.take() {
            executor
                .join()
                .map_err(|e| NodeError::Executor(e.to_string()))?;
        }
        finished
    }
}

/// The [`KvService`] of the durable member: writes go through the log, reads through the raft
/// core (after a ReadIndex when linearizable).
#[derive(Clone)]
pub struct RaftKv {
    commands: flume::Sender<Command>,
    published: Arc<Published>,
    /// The user this handle proposes for (see [`KvService::for_user`]).
    auth_header: Option<basalt_proto::basaltpb::AuthHeader>,
}

/// etcd's answer when the member cannot take the request (it is stopping).
fn stopping() -> Status {
    Status::new(Code::Unavailable, "etcdserver: server stopped")
}

impl RaftKv {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Status> {
        let (reply, answer) = flume::bounded(1);
        self.commands
            .send_async(make(reply))
            .await
            .map_err(|_| stopping())?;
        answer.recv_async().await.map_err(|_| stopping())?
    }

    async fn propose(&self, request: Request) -> Result<Applied, Status> {
        if self.pushed_off() {
            return Err(Status::no_leader());
        }
        let takes_space = takes_space(&request);
        let id = self.published.next_id();
        let data = InternalRequest {
            id,
            request: Some(request),
            auth_header: self.auth_header.clone(),
        }
        .encode_to_vec();
        self.ask(|reply| Command::Propose {
            id,
            data,
            takes_space,
            reply,
        })
        .await
    }
}

impl RaftKv {
    /// Cluster.MemberUpdate: a normal entry (raft's configuration does not change).
    async fn update_member(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<(Member, Vec<Member>), Status> {
        let members = self.members().unwrap_or_default();
        let Some(member) = members.iter().find(|m| m.id == id).cloned() else {
            return Err(Status::new(Code::NotFound, "etcdserver: member not found"));
        };
        let taken = members
            .iter()
            .any(|m| m.id != id && m.peer_ur_ls.iter().any(|url| peer_urls.contains(url)));
        if taken {
            return Err(Status::new(
                Code::AlreadyExists,
                "etcdserver: Peer URLs already exists",
            ));
        }
        let update = basalt_proto::etcdserverpb::MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls,
        };
        let members = members_of(self.propose(Request::MemberUpdate(update)).await?)?;
        Ok((member, members))
    }
}

fn members_of(applied: Applied) -> Result<Vec<Member>, Status> {
    match applied {
        Applied::Members(members) => Ok(members),
        other => Err(unexpected(other)),
    }
}

/// A new member's id: like etcd's, a hash of its peer URLs and the time it was added, so that
/// a member added again later (after a removal) gets an id never used before.
fn new_member_id(peer_urls: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    sorted.hash(&mut hasher);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .hash(&mut hasher);
    hasher.finish().max(1)
}

fn unexpected(applied: Applied) -> Status {
    Status::internal(format!("basalt: apply answered with {applied:?}"))
}

impl KvService for RaftKv {
    fn auth(&self) -> Option<&Arc<crate::auth::AuthShared>> {
        Some(&self.published.auth)
    }

    fn for_user(&self, who: &basalt_engine::auth::AuthInfo) -> Option<Self> {
        Some(RaftKv {
            commands: self.commands.clone(),
            published: self.published.clone(),
            auth_header: Some(basalt_proto::basaltpb::AuthHeader {
                username: who.username.clone(),
                auth_revision: who.revision,
            }),
        })
    }

    async fn auth_request(
        &self,
        req: Request,
    ) -> Result<basalt_engine::apply::AuthApplied, Status> {
        match self.propose(req).await? {
            Applied::Auth(applied) => Ok(applied),
            other => Err(unexpected(other)),
        }
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        if let Some(header) = &self.auth_header {
            // Reads skip the log, so a user's read is checked here too: v3lock and v3election
            // read through this handle as their caller, as etcd's run as the caller's client.
            let who = basalt_engine::auth::AuthInfo {
                username: header.username.clone(),
                revision: header.auth_revision,
            };
            self.published
                .auth
                .current()
                .check_range(Some(&who), &req)?;
        }
        let linearizable = !req.serializable;
        if linearizable && self.pushed_off() {
            return Err(Status::no_leader());
        }
        let reads_here = !linearizable || self.published.lone_leader_reads.load(Ordering::Acquire);
        let applier = match self.published.applier.get() {
            Some(applier) if reads_here => applier,
            _ => {
                self.ask(|reply| Command::ReadIndex {
                    linearizable,
                    reply,
                })
                .await?;
                self.published
                    .applier
                    .get()
                    .expect("the raft core shares its state before it answers")
            }
        };
        applier.range(req).await
    }

    async fn caught_up(&self) -> Result<(), Status> {
        if self.pushed_off() {
            return Err(Status::no_leader());
        }
        self.ask(|reply| Command::ReadIndex {
            linearizable: true,
            reply,
        })
        .await
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse, Status> {
        match self.propose(Request::Put(req)).await? {
            Applied::Put(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        match self.propose(Request::DeleteRange(req)).await? {
            Applied::DeleteRange(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        match self.propose(Request::Txn(req)).await? {
            Applied::Txn(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, Status> {
        match self.propose(Request::Compaction(req)).await? {
            Applied::Compaction(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn status(&self) -> Result<StoreStatus, Status> {
        self.ask(|reply| Command::Status { reply }).await
    }

    fn raft_term(&self) -> u64 {
        self.published.raft_term.load(Ordering::Relaxed)
    }

    async fn lease_grant(
        &self,
        mut req: basalt_proto::etcdserverpb::LeaseGrantRequest,
    ) -> Result<basalt_proto::etcdserverpb::LeaseGrantResponse, Status> {
        if req.id == 0 {
            // etcd takes the next request id with the sign bit cleared.
            req.id = (self.published.next_id() & (i64::MAX as u64)) as i64;
        }
        match self.propose(Request::LeaseGrant(req)).await? {
            Applied::LeaseGrant(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: basalt_proto::etcdserverpb::LeaseRevokeRequest,
    ) -> Result<basalt_proto::etcdserverpb::LeaseRevokeResponse, Status> {
        match self.propose(Request::LeaseRevoke(req)).await? {
            Applied::LeaseRevoke(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn with_lessor<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut basalt_engine::lease::Lessor, i64) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (reply, answer) = flume::bounded(1);
        let run = Box::new(move |lessor: &mut basalt_engine::lease::Lessor, revision| {
            let _ = reply.send(f(lessor, revision));
        });
        self.commands
            .send_async(Command::WithLessor(run))
            .await
            .map_err(|_| stopping())?;
        answer.recv_async().await.map_err(|_| stopping())
    }

    fn watch_hub(&self) -> Option<&crate::watch::SharedWatchHub> {
        Some(&self.published.watches)
    }

    fn has_leader(&self) -> bool {
        self.published.leader_id.load(Ordering::Relaxed) != 0
    }

    fn is_ready(&self) -> bool {
        self.published.ready.load(Ordering::Relaxed)
    }

    fn pushed_off(&self) -> bool {
        self.published.pushed_off.load(Ordering::Relaxed)
    }

    fn is_learner(&self) -> bool {
        self.published.is_learner.load(Ordering::Relaxed)
    }

    fn members(&self) -> Option<Vec<Member>> {
        Some(lock_cluster(&self.published.cluster).members.clone())
    }

    async fn change_members(
        &self,
        change: MembershipChange,
    ) -> Result<(Member, Vec<Member>), Status> {
        use basalt_proto::basaltpb::{member_change::Kind, MemberChange};
        let (kind, member) = match change {
            MembershipChange::Update { id, peer_urls } => {
                return self.update_member(id, peer_urls).await
            }
            MembershipChange::Add {
                peer_urls,
                is_learner,
            } => {
                let member = Member {
                    id: new_member_id(&peer_urls),
                    peer_ur_ls: peer_urls,
                    is_learner,
                    ..Member::default()
                };
                (Kind::Add, member)
            }
            MembershipChange::Remove { id } => (
                Kind::Remove,
                Member {
                    id,
                    ..Member::default()
                },
            ),
            MembershipChange::Promote { id } => (
                Kind::Promote,
                Member {
                    id,
                    ..Member::default()
                },
            ),
        };
        let change = MemberChange {
            id: self.published.next_id(),
            kind: kind as i32,
            member: Some(member.clone()),
        };
        let members = members_of(
            self.ask(|reply| Command::ChangeMembers { change, reply })
                .await?,
        )?;
        let member = members
            .iter()
            .find(|m| m.id == member.id)
            .cloned()
            .unwrap_or(member);
        Ok((member, members))
    }

    async fn move_leader(&self, target: u64) -> Result<(), Status> {
        self.ask(|reply| Command::TransferLeader { target, reply })
            .await
    }

    async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, Status> {
        match self.propose(Request::Alarm(req)).await? {
            Applied::Alarm(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn defragment(&self) -> Result<(), Status> {
        self.ask(|reply| Command::Defragment { reply }).await
    }

    async fn hash_kv(&self, revision: i64) -> Result<KvHash, Status> {
        self.ask(|reply| Command::HashKv { revision, reply }).await
    }

    async fn hash(&self) -> Result<u32, Status> {
        self.ask(|reply| Command::Hash { reply }).await
    }

    async fn snapshot(&self) -> Result<SnapshotFile, Status> {
        let read = self.ask(|reply| Command::Snapshot { reply }).await?;
        let id = self.published.next_id();
        let path = snapshot::rpc_copy_path(&self.published.snap_dir, id);
        let (done, result) = flume::bounded(1);
        let copy_path = path.clone();
        let format = self.published.snapshot_format;
        let keyring = self.published.keyring.clone();
        let copy_keyring = keyring.clone();
        // The copy reads a fixed root; it runs off every executor so nothing waits for it.
        std::thread::spawn(move || {
            let made = snapshot::write_tree(&read, &copy_path, format, copy_keyring.as_ref())
                .and_then(|()| snapshot::sha256_of(&copy_path, copy_keyring.as_ref()));
            let _ = done.send(made);
        });
        match result.recv_async().await {
            Ok(Ok(sha256)) => Ok(SnapshotFile {
                path,
                sha256,
                keyring,
            }),
            Ok(Err(reason)) => {
                let _ = std::fs::remove_file(&path);
                Err(Status::internal(format!(
                    "basalt: snapshot copy failed: {reason}"
                )))
            }
            Err(_) => Err(Status::internal("basalt: snapshot copy thread died")),
        }
    }
}

/// The status a client sees for an entry that applied with an error.
fn apply_status(error: ApplyError) -> Status {
    match error {
        ApplyError::Mvcc(error) => error.into(),
        ApplyError::Lease(error) => error.into(),
        ApplyError::Auth(error) => error.into(),
        ApplyError::NoSpace | ApplyError::OutOfSpace(_) => {
            Status::new(Code::ResourceExhausted, error.to_string())
        }
        ApplyError::Corrupt => Status::new(Code::DataLoss, error.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
