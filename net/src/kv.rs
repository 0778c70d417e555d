//! The seam between the gRPC edge and whatever executes KV requests.
//!
//! Today [`LocalKv`] runs them on one in-memory [`KvStore`] shared by every core behind a lock.
//! The durable server replaces only that implementation (proposals batched to the raft core);
//! framing, validation and error mapping stay where they are.

use crate::status::Status;
use basalt_engine::apply::KvHash;
use basalt_engine::mvcc::KvStore;
use basalt_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, CompactionRequest,
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, Member, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

/// Executes already-validated KV requests. One value lives on each core (built there by the
/// factory given to [`crate::spawn_with`]), so implementations need not be `Send`.
///
/// Responses carry `header.revision`; the edge fills cluster id, member id and raft term.
pub trait KvService: 'static {
    fn range(&self, req: RangeRequest) -> impl Future<Output = Result<RangeResponse, Status>>;
    fn put(&self, req: PutRequest) -> impl Future<Output = Result<PutResponse, Status>>;
    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> impl Future<Output = Result<DeleteRangeResponse, Status>>;
    fn txn(&self, req: TxnRequest) -> impl Future<Output = Result<TxnResponse, Status>>;
    fn compact(
        &self,
        req: CompactionRequest,
    ) -> impl Future<Output = Result<CompactionResponse, Status>>;
    /// What Maintenance.Status reports about the store and consensus.
    fn status(&self) -> impl Future<Output = Result<StoreStatus, Status>>;
    /// The raft term for response headers.
    fn raft_term(&self) -> u64;
    /// Resolves once this member has applied everything committed when it was called (a
    /// linearizable no-op); at once for a store that is not replicated.
    fn caught_up(&self) -> impl Future<Output = Result<(), Status>> {
        async { Ok(()) }
    }
    /// Maintenance.Defragment: compact the store's file without stopping the world.
    fn defragment(&self) -> impl Future<Output = Result<(), Status>> {
        async {
            Err(Status::unimplemented(
                "basalt: this store has no file to defragment",
            ))
        }
    }
    /// Maintenance.HashKV at `revision` (0: now), computed as etcd does.
    fn hash_kv(&self, revision: i64) -> impl Future<Output = Result<KvHash, Status>> {
        let _ = revision;
        async {
            Err(Status::unimplemented(
                "basalt: HashKV needs the durable store",
            ))
        }
    }
    /// Maintenance.Alarm. Without a durable store no alarm is ever raised: listing finds none
    /// and disarming has nothing to clear (`etcdctl endpoint health` lists alarms).
    fn alarm(&self, req: AlarmRequest) -> impl Future<Output = Result<AlarmResponse, Status>> {
        async move {
            if req.action == AlarmAction::Activate as i32 {
                return Err(Status::unimplemented(
                    "basalt: raising an alarm is not implemented",
                ));
            }
            let store = self.status().await?;
            Ok(AlarmResponse {
                header: Some(ResponseHeader {
                    revision: store.revision,
                    ..Default::default()
                }),
                alarms: Vec::new(),
            })
        }
    }
    /// Maintenance.Snapshot: a consistent copy of the store file, written to a file of its own
    /// that the caller streams and then removes.
    fn snapshot(&self) -> impl Future<Output = Result<SnapshotFile, Status>> {
        async {
            Err(Status::unimplemented(
                "basalt: this store has no file to snapshot",
            ))
        }
    }
    /// Lease.LeaseGrant through the log (an id of 0 is chosen here, before proposing).
    fn lease_grant(
        &self,
        req: basalt_proto::etcdserverpb::LeaseGrantRequest,
    ) -> impl Future<Output = Result<basalt_proto::etcdserverpb::LeaseGrantResponse, Status>> {
        let _ = req;
        async { Err(crate::lease::no_lessor()) }
    }
    /// Lease.LeaseRevoke through the log.
    fn lease_revoke(
        &self,
        req: basalt_proto::etcdserverpb::LeaseRevokeRequest,
    ) -> impl Future<Output = Result<basalt_proto::etcdserverpb::LeaseRevokeResponse, Status>> {
        let _ = req;
        async { Err(crate::lease::no_lessor()) }
    }
    /// Runs `f` on the lessor where it lives (with the store's revision), for what the leader
    /// answers from memory: renewals, TimeToLive, Leases.
    fn with_lessor<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut basalt_engine::lease::Lessor, i64) -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, Status>> {
        let _ = f;
        async { Err(crate::lease::no_lessor()) }
    }
    /// The watchers of this store, for the Watch service; None: this executor serves no
    /// watches.
    fn watch_hub(&self) -> Option<&crate::watch::SharedWatchHub> {
        None
    }
    /// One round of catching unsynced watchers up, for an executor whose writer does not run
    /// it on its own; Watch streams call it periodically.
    fn sync_watches(&self) {}
    /// Whether this member serves clients yet: a raft member waits until its name and client
    /// URLs are in the applied member list (etcd's ReadyNotify).
    fn is_ready(&self) -> bool {
        true
    }
    /// Whether this member knows a leader (a lone in-memory store always leads).
    fn has_leader(&self) -> bool {
        true
    }
    /// Whether this member sends its clients elsewhere (it cannot serve writes): calls are
    /// refused with "no leader" and connections are told to go away.
    fn pushed_off(&self) -> bool {
        false
    }
    /// Whether this member is a learner (it then serves only what etcd lets learners serve).
    fn is_learner(&self) -> bool {
        false
    }
    /// The cluster's members as this member applied them; None for a store that is not a
    /// raft member (the edge then lists only itself).
    fn members(&self) -> Option<Vec<Member>> {
        None
    }
    /// Cluster.MemberAdd/Remove/Update/Promote: the member it concerns and the list after.
    fn change_members(
        &self,
        change: MembershipChange,
    ) -> impl Future<Output = Result<(Member, Vec<Member>), Status>> {
        let _ = change;
        async {
            Err(Status::unimplemented(
                "basalt: membership changes need the raft member",
            ))
        }
    }
    /// Maintenance.MoveLeader to `target`; a lone member already leads and has no one else.
    fn move_leader(&self, target: u64) -> impl Future<Output = Result<(), Status>> {
        let _ = target;
        async {
            Err(Status::new(
                crate::status::Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ))
        }
    }
    /// This member's auth state and tokens; None: this store serves no auth and every call
    /// is allowed.
    fn auth(&self) -> Option<&Arc<crate::auth::AuthShared>> {
        None
    }
    /// This service acting for `who`: its proposals name the user so that apply checks the
    /// user's permissions again. None: this store does not tell users apart.
    fn for_user(&self, who: &basalt_engine::auth::AuthInfo) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = who;
        None
    }
    /// An Auth request through the log.
    fn auth_request(
        &self,
        req: basalt_proto::basaltpb::internal_request::Request,
    ) -> impl Future<Output = Result<basalt_engine::apply::AuthApplied, Status>> {
        let _ = req;
        async {
            Err(Status::unimplemented(
                "basalt: auth needs the durable store",
            ))
        }
    }
    /// Maintenance.Hash: a hash of the whole store file's contents.
    fn hash(&self) -> impl Future<Output = Result<u32, Status>> {
        async {
            Err(Status::unimplemented(
                "basalt: Hash needs the durable store",
            ))
        }
    }
}

/// What a Cluster service call asks to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    Remove {
        id: u64,
    },
    Promote {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
}

/// A consistent copy of the store file, ready to stream.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    pub path: std::path::PathBuf,
    /// Of the plaintext the client gets.
    pub sha256: [u8; 32],
    /// The file is sealed with these keys (an encrypted member's copy); read it with
    /// `btree::PlainReader`.
    pub keyring: Option<basalt_engine::crypt::SharedKeyring>,
}

/// The state behind Maintenance.Status.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreStatus {
    pub revision: i64,
    pub raft_index: u64,
    pub raft_term: u64,
    pub raft_applied_index: u64,
    pub db_size_bytes: i64,
    pub db_size_in_use_bytes: i64,
    /// This member knows a leader (itself, for a lone voter).
    pub has_leader: bool,
    /// The leader's member id (0: none known).
    pub leader_id: u64,
    pub is_learner: bool,
    /// Raised alarms (Status lists them as errors).
    pub alarms: Vec<AlarmMember>,
}

/// The single-node, in-memory executor: one store shared by every core.
#[derive(Clone)]
pub struct LocalKv {
    store: Arc<Mutex<KvStore>>,
    watches: crate::watch::SharedWatchHub,
}

/// The term a single member reaches after electing itself at start-up.
const LOCAL_RAFT_TERM: u64 = 2;

impl Default for LocalKv {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalKv {
    pub fn new() -> Self {
        // A lone in-memory member is its own leader from the start.
        let metrics = crate::metrics::metrics();
        metrics.server_has_leader.set(1);
        metrics.server_is_leader.set(1);
        let store = KvStore::new();
        let watches = Arc::new(Mutex::new(basalt_engine::watch::WatchHub::new(&store)));
        Self {
            store: Arc::new(Mutex::new(store)),
            watches,
        }
    }

    /// Runs one write and hands its events to the synced watchers before anyone else can
    /// write (the store's lock is held throughout).
    fn write<T>(
        &self,
        apply: impl FnOnce(&mut KvStore) -> Result<T, basalt_engine::mvcc::MvccError>,
    ) -> Result<T, Status> {
        let mut store = self.store();
        let result = apply(&mut store);
        crate::watch::lock_hub(&self.watches).notify(&store)?;
        Ok(result?)
    }

    fn store(&self) -> MutexGuard<'_, KvStore> {
        // A panic while holding the lock means the store may be half-updated; serving from it
        // would return wrong data, so every later request fails loudly instead.
        self.store
            .lock()
            .expect("the KV store panicked during an earlier request")
    }
}

impl KvService for LocalKv {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        Ok(self.store().range(&req)?)
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse, Status> {
        self.write(|store| store.put(&req))
    }

    async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        self.write(|store| store.delete_range(&req))
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        self.write(|store| store.txn(&req))
    }

    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, Status> {
        self.write(|store| store.compact(&req))
    }

    async fn status(&self) -> Result<StoreStatus, Status> {
        let revision = self.store().current_revision();
        Ok(StoreStatus {
            revision,
            raft_index: u64::try_from(revision).unwrap_or(0),
            raft_term: LOCAL_RAFT_TERM,
            raft_applied_index: u64::try_from(revision).unwrap_or(0),
            db_size_bytes: 0,
            db_size_in_use_bytes: 0,
            has_leader: true,
            leader_id: 0,
            is_learner: false,
            alarms: Vec::new(),
        })
    }

    fn raft_term(&self) -> u64 {
        LOCAL_RAFT_TERM
    }

    fn watch_hub(&self) -> Option<&crate::watch::SharedWatchHub> {
        Some(&self.watches)
    }

    fn sync_watches(&self) {
        let store = self.store();
        // The in-memory backend cannot fail a read.
        crate::watch::lock_hub(&self.watches)
            .sync(&store)
            .expect("in-memory reads do not fail");
    }
}
