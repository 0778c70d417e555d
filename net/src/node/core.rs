//! The raft core's loop. Each turn: wait for a command or the next tick; take every command
//! waiting at that moment (bounded); propose the writes and ask one ReadIndex for all the
//! linearizable reads; then handle the Ready: entries and hard state go to the WAL in one
//! group-commit write + fdatasync, committed entries are applied (into the backend's in-memory
//! overlay), waiting callers are answered, reads whose index is applied are told to go. The
//! overlay reaches the B+tree in batches ([`Core::maybe_commit`]), off the path of any one
//! request.
//!
//! Ranges are not read here: the applied state is shared with the client cores
//! ([`SharedApplier`], `reads.rs`), which read it themselves; this thread only takes the write
//! lock for each change it makes.

mod cluster;
mod disk;
mod lease;
mod push_off;

pub(super) use cluster::conf_state_of;

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_engine::apply::{Applied, Applier, ApplyError};
use basalt_engine::btree;
use basalt_engine::wal::{wal_dir, DmaStorage, Durable, RecordRef, Wal, WalOptions};
use basalt_engine::watch::WatchHub;
use basalt_proto::basaltpb::{internal_request::Request, InternalRequest};
use basalt_proto::etcdserverpb::{CompactionRequest, Member};
use basalt_raft::{
    ConfState, Config, Entry, EntryData, MemStorage, RawNode, Role, Snapshot, SnapshotMetadata,
    Storage,
};
use prost::Message;

use super::compactor::Compactor;
use super::reads::SharedApplier;
use super::{
    apply_status, codec, datadir, stopping, Command, NodeConfig, NodeError, Published, Reply,
};
use crate::kv::StoreStatus;
use crate::metrics::metrics;
use crate::peer::{PeerInbound, PeerTransport};
use crate::status::Status;

/// Commands taken in one turn; the rest wait for the next, so one turn's latency stays bounded.
const COMMANDS_PER_TURN_MAX: usize = 4096;
/// Payload bytes read from the WAL per call while replaying it at start-up.
const REPLAY_READ_BYTES_MAX: usize = 16 << 20;
/// A checkpoint (B+tree fdatasync with the applied index) after this many applied entries...
const CHECKPOINT_ENTRIES_MAX: u64 = 20_000;
/// ...or this long after the previous one, whichever comes first: the WAL replayed at
/// start-up is bounded by both.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// Applied records kept in the backend's overlay before they are written to the tree...
const COMMIT_RECORDS_MAX: usize = 8192;
/// ...or this long after the previous tree commit, whichever comes first.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// The index of the bootstrap snapshot `MemStorage::new_with_conf_state` starts a log with.
const BOOTSTRAP_INDEX: u64 = 1;

/// Arrivals from peers queued for the raft core before the transport's readers wait.
const PEER_INBOX_MAX: usize = 65_536;
/// Peer arrivals taken in one turn, like [`COMMANDS_PER_TURN_MAX`].
const PEER_MESSAGES_PER_TURN_MAX: usize = 4096;

/// What woke the raft core.
enum Wake {
    Command(Result<Command, flume::RecvError>),
    Peer(PeerInbound),
    Tick,
}

/// A caller waiting for its proposal to apply.
struct Waiter {
    reply: Reply<basalt_engine::apply::Applied>,
    /// etcd's request timeout: past it the caller hears "request timed out" (the entry may
    /// still apply).
    deadline: Instant,
}

/// A Ready's WAL write in flight.
struct WalWrite {
    started: Instant,
    durable: Durable,
    hard_state: Option<basalt_raft::HardState>,
}

/// A linearizable read waiting to be told it may read.
struct PendingRead {
    reply: Reply<()>,
    /// etcd's request timeout: a read with no leader to ask waits until then.
    deadline: Instant,
}

struct Core {
    config: NodeConfig,
    raw: RawNode<MemStorage>,
    wal: Wal,
    /// Shared with the client cores, which read it (see the module docs).
    applier: Arc<SharedApplier>,
    published: Arc<Published>,
    /// Proposals waiting for their entry to apply, by proposal id.
    waiters: HashMap<u64, Waiter>,
    /// etcd's `ReqTimeout`: 5 s plus two election timeouts.
    request_timeout: Duration,
    role: Role,
    /// The applied configuration has this member as its only voter.
    lone_voter: bool,
    /// The peers, once started (a member without peer URLs has none).
    transport: Option<Rc<PeerTransport>>,
    /// Where the transport (and snapshot copies) deliver what arrives for the raft core.
    peer_inbound: flume::Sender<PeerInbound>,
    /// Peers a snapshot is being copied or streamed to: one at a time each.
    snapshots_sending: HashSet<u64>,
    /// The other members' peer URLs as the transport knows them.
    peer_urls: HashMap<u64, Vec<String>>,
    /// This member's removal applied: it stops.
    removed: bool,
    /// When this member last proposed its name and client URLs.
    attributes_proposed: Option<Instant>,
    /// MoveLeader callers: (target, reply, deadline).
    transfers: Vec<(u64, Reply<()>, Instant)>,
    /// Linearizable reads not yet covered by a ReadIndex request.
    reads_unindexed: Vec<PendingRead>,
    /// Reads whose ReadIndex request is out, by request context.
    reads_asked: HashMap<u64, Vec<PendingRead>>,
    /// Reads with a read index, waiting for apply to reach it (indexes ascending).
    reads_indexed: VecDeque<(u64, Vec<PendingRead>)>,
    next_read_ctx: u64,
    /// The leader this member knows of (raft's NONE when none).
    leader_id: u64,
    /// When this member last proposed NOSPACE (a follower's proposal can be lost on its way
    /// to the leader, so it is proposed again until it applies).
    nospace_proposed_at: Option<Instant>,
    disk: disk::DiskReserve,
    compactor: Compactor,
    snapshot_index: u64,
    last_checkpoint: Instant,
    /// A defragment rewrote the tree under the current key: the next turn takes a raft
    /// snapshot at its checkpoint, so the WAL rolls to the current key and purges the segments
    /// sealed with older ones (or plaintext), which then hold nothing the tree lacks.
    key_roll_due: bool,
    last_commit: Instant,
    /// Linearizable reads answered since start: progress for push-off's stall check.
    reads_served: u64,
    /// A hard state whose only change is the commit index, kept in memory until the next WAL
    /// write carries it: like etcd, a commit-only change costs no fdatasync of its own. Losing
    /// it in a crash is harmless: recovery takes commit = max(WAL commit, applied index), and
    /// the durable entries past it are committed again by the next leader.
    hard_state_unwritten: Option<basalt_raft::HardState>,
    /// The leader's commit-only appends, held back a moment (`cluster::COMMIT_HOLD`).
    commits_held: cluster::HeldCommits,
    push_off: push_off::PushOff,
}

/// Recovers, reports start-up to `started`, then serves until stopped.
pub(super) async fn run(
    config: NodeConfig,
    inbox: flume::Receiver<Command>,
    published: Arc<Published>,
    started: std::sync::mpsc::Sender<Result<(), NodeError>>,
) -> Result<(), NodeError> {
    let (peer_inbound, peer_inbox) = flume::bounded(PEER_INBOX_MAX);
    let mut core = match Core::recover(config, published, peer_inbound).await {
        Ok(core) => core,
        Err(error) => {
            let _ = started.send(Err(error));
            return Ok(());
        }
    };
    if let Err(error) = core.start_transport().await {
        let _ = started.send(Err(error));
        return Ok(());
    }
    if let Err(error) = core.handle_ready().await {
        let _ = started.send(Err(error));
        return Ok(());
    }
    *crate::watch::lock_hub(&core.published.watches) = WatchHub::new(core.applier.read().store());
    // Set once: a snapshot install replaces what the lock holds, not the lock.
    let _ = core.published.applier.set(core.applier.clone());
    core.published
        .auth
        .publish(core.applier.read().auth().snapshot());
    let _ = started.send(Ok(()));
    let result = core.serve(inbox, peer_inbox).await;
    let closed = core.close().await;
    result.and(closed)
}

impl Core {
    async fn recover(
        config: NodeConfig,
        published: Arc<Published>,
        peer_inbound: flume::Sender<PeerInbound>,
    ) -> Result<Core, NodeError> {
        let options = WalOptions {
            max_wals: config.max_wals,
            keyring: config.keyring.clone(),
            ..WalOptions::default()
        };
        let wal_path = wal_dir(&config.data_dir);
        let (wal, recovered) = Wal::open(DmaStorage, wal_path.clone(), options).await?;
        if let Some(tail) = &recovered.torn_tail {
            eprintln!(
                "basalt: cut a torn WAL tail at {} offset {} (a write the crash interrupted)",
                tail.file.display(),
                tail.offset
            );
        }
        // The log's metadata record names the member it belongs to: with one, this is a
        // restart of that member, whatever the bootstrap flags say.
        let restart = match &recovered.metadata {
            None => false,
            Some(metadata) => {
                let (member_id, _) = codec::decode_metadata(metadata)
                    .map_err(|e| data_dir_error(&wal_path, format!("the metadata record: {e}")))?;
                if member_id != config.member_id {
                    return Err(data_dir_error(
                        &wal_path,
                        format!(
                            "the WAL belongs to member {member_id:x}, not {:x}",
                            config.member_id
                        ),
                    ));
                }
                true
            }
        };
        let log_holds_entries = recovered.first_index <= recovered.last_index;

        let db_path = datadir::db_path(&config.data_dir);
        let db = btree::open(&db_path, tree_options(&config))
            .map_err(|e| data_dir_error(&db_path, e.to_string()))?;
        let mut applier = Applier::open(db, config.limits)?;
        let fresh = applier.applied_index() < BOOTSTRAP_INDEX;
        let founders = match config.initial_members.as_slice() {
            [] => vec![Member {
                id: config.member_id,
                name: config.name.clone(),
                ..Member::default()
            }],
            members => members.to_vec(),
        };
        if !restart && fresh && !config.join_existing {
            // A founding member's log starts with raft's bootstrap snapshot (the initial
            // configuration, no data): applied by definition, and checkpointed before the log
            // names this member, so that a restart finds the founders in the tree and never
            // needs the bootstrap flags again.
            applier.bootstrap(BOOTSTRAP_INDEX, &founders);
            applier.checkpoint()?;
        } else if !restart && !fresh && !config.join_existing {
            // A tree restored from a snapshot file by an older `basalt snapshot restore` (no
            // WAL) starts a new cluster: the members it lists are the old cluster's.
            applier.reset_members(&founders);
            save_members(&mut applier)?;
        } else if restart && fresh && recovered.snapshot.is_none() && log_holds_entries {
            // An older Basalt checkpointed the founders only with the first entries applied; a
            // member it bootstrapped and that was killed before then holds entries after the
            // bootstrap index but a tree without them. Its bootstrap flags are the only record
            // of the founders left.
            if !founders.iter().any(|m| m.id == config.member_id) {
                return Err(data_dir_error(
                    &db_path,
                    format!(
                        "the tree holds no checkpoint while the WAL holds entries from index \
                         {}: this member was bootstrapped by an older Basalt and killed before \
                         its first checkpoint; start it once with the --initial-cluster and \
                         --initial-cluster-token it was bootstrapped with",
                        recovered.first_index
                    ),
                ));
            }
            eprintln!(
                "basalt: repairing {}: the founders of this member's bootstrap were never \
                 checkpointed; taking them from --initial-cluster",
                db_path.display()
            );
            applier.bootstrap(BOOTSTRAP_INDEX, &founders);
            applier.checkpoint()?;
        } else if restart && fresh && recovered.snapshot.is_none() && !config.join_existing {
            return Err(data_dir_error(
                &wal_path,
                "the log names this member but holds nothing else, and the tree is empty: \
                 the member joined a cluster and must learn its peers from it again",
            ));
        }
        let mut applied = applier.applied_index();
        // Entries up to the applied index are never handed to raft again, so its configuration
        // must be the one in effect there: the applied member list says what it is.
        let mut conf_state = cluster::conf_state_of(&applier.members());

        if !restart {
            let metadata = codec::encode_metadata(config.member_id, config.cluster_id);
            wal.append(&[RecordRef::metadata(&metadata)]).await?;
        }

        let mut storage = if applier.applied_index() < BOOTSTRAP_INDEX && config.join_existing {
            // A joining member's log is empty until the leader sends it a snapshot.
            MemStorage::new()
        } else {
            MemStorage::new_with_conf_state(conf_state.clone())
        };
        // A founding member's log starts after its bootstrap marker.
        let mut snapshot_index = storage
            .first_index()
            .map_err(|e| NodeError::Raft(e.to_string()))?
            - 1;
        if let Some(marker) = &recovered.snapshot {
            codec::decode_snapshot(&marker.payload)?;
            if applied < marker.index {
                if let Some(adopted) =
                    cluster::adopt_received_snapshot(&config, &published.snap_dir, marker.index)?
                {
                    applier = adopted;
                    applied = applier.applied_index();
                    conf_state = cluster::conf_state_of(&applier.members());
                }
            }
            install_marker(&mut storage, marker.index, marker.term, conf_state.clone())?;
            snapshot_index = marker.index;
        }
        if applied < snapshot_index {
            return Err(NodeError::DataDir {
                path: config.data_dir.clone(),
                reason: format!(
                    "the B+tree holds index {applied} but the WAL starts after {snapshot_index}: \
                     entries in between are gone"
                ),
            });
        }
        let mut next = recovered.first_index.max(snapshot_index + 1);
        while next <= recovered.last_index {
            let records = wal
                .read_entries(next, recovered.last_index + 1, REPLAY_READ_BYTES_MAX)
                .await?;
            let entries = records
                .iter()
                .map(|record| {
                    Ok(Entry {
                        term: record.term,
                        index: record.index,
                        data: codec::decode_entry(&record.payload)?,
                    })
                })
                .collect::<Result<Vec<_>, NodeError>>()?;
            next = entries.last().map_or(next + 1, |e| e.index + 1);
            append_recovered(&mut storage, &entries, &wal_path)?;
        }
        let last_index = storage
            .last_index()
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if applied > last_index {
            // A tree restored from a snapshot file starts ahead of an empty log.
            let term = storage
                .initial_state()
                .map_err(|e| NodeError::Raft(e.to_string()))?
                .hard_state
                .term
                .max(1);
            // The marker goes to the WAL too, so that the next start finds the log's base.
            let payload = codec::encode_snapshot(&conf_state);
            wal.append(&[RecordRef::snapshot(term, applied, &payload)])
                .await?;
            install_marker(&mut storage, applied, term, conf_state)?;
            snapshot_index = applied;
        }
        if let Some(hard_state) = &recovered.hard_state {
            let mut hard_state = codec::decode_hard_state(hard_state)?;
            // Only durable entries are ever applied, so the applied index is committed.
            hard_state.commit = hard_state.commit.max(applied);
            storage.set_hard_state(hard_state);
        }

        let heartbeat_ms = config.heartbeat_interval_ms.max(1);
        let raft_config = Config {
            id: config.member_id,
            election_ticks: (config.election_timeout_ms / heartbeat_ms).max(2),
            heartbeat_ticks: 1,
            applied,
            seed: config.member_id,
            ..Config::default()
        };
        let mut raw =
            RawNode::new(raft_config, storage).map_err(|e| NodeError::Raft(e.to_string()))?;
        let lone_voter = is_lone_voter(&raw.status().conf_state, config.member_id);
        if lone_voter {
            // A lone voter need not wait out an election timeout to lead.
            raw.campaign();
        }
        let compactor = Compactor::new(config.auto_compaction, Instant::now());
        let request_timeout = crate::config::request_timeout(config.election_timeout_ms);
        let push_off = push_off::PushOff::new(&config, Instant::now());
        let disk = disk::DiskReserve::new(config.data_dir.clone(), config.disk_reserve_bytes);
        Ok(Core {
            push_off,
            request_timeout,
            role: Role::Follower,
            lone_voter,
            transport: None,
            peer_inbound,
            snapshots_sending: HashSet::new(),
            peer_urls: HashMap::new(),
            removed: false,
            attributes_proposed: None,
            transfers: Vec::new(),
            config,
            raw,
            wal,
            applier: Arc::new(SharedApplier::new(applier)),
            published,
            waiters: HashMap::new(),
            reads_unindexed: Vec::new(),
            reads_asked: HashMap::new(),
            reads_indexed: VecDeque::new(),
            next_read_ctx: 1,
            leader_id: basalt_raft::NONE,
            nospace_proposed_at: None,
            disk,
            compactor,
            snapshot_index,
            last_checkpoint: Instant::now(),
            key_roll_due: false,
            last_commit: Instant::now(),
            reads_served: 0,
            hard_state_unwritten: None,
            commits_held: cluster::HeldCommits::default(),
        })
    }

    async fn serve(
        &mut self,
        inbox: flume::Receiver<Command>,
        peer_inbox: flume::Receiver<PeerInbound>,
    ) -> Result<(), NodeError> {
        let tick = Duration::from_millis(self.config.heartbeat_interval_ms.max(1));
        let mut next_tick = Instant::now() + tick;
        let mut stopping = false;
        while !stopping && !self.removed {
            let mut wait = next_tick.saturating_duration_since(Instant::now());
            if let Some(due_in) = self.held_commits_due_in() {
                wait = wait.min(due_in);
            }
            let first = futures_lite::future::or(
                async { Wake::Command(inbox.recv_async().await) },
                futures_lite::future::or(
                    async {
                        match peer_inbox.recv_async().await {
                            Ok(inbound) => Wake::Peer(inbound),
                            // Without a transport nothing ever arrives.
                            Err(_) => std::future::pending().await,
                        }
                    },
                    async {
                        glommio::timer::sleep(wait).await;
                        Wake::Tick
                    },
                ),
            )
            .await;
            let mut command = match first {
                Wake::Command(received) => Some(received),
                Wake::Peer(inbound) => {
                    self.take_peer(inbound);
                    inbox.try_recv().ok().map(Ok)
                }
                Wake::Tick => None,
            };
            let mut taken = 0;
            while let Some(received) = command.take() {
                match received {
                    Ok(Command::Stop) | Err(_) => stopping = true,
                    Ok(other) => self.take(other),
                }
                taken += 1;
                if taken < COMMANDS_PER_TURN_MAX && !stopping {
                    command = inbox.try_recv().ok().map(Ok);
                }
            }
            for inbound in peer_inbox.try_iter().take(PEER_MESSAGES_PER_TURN_MAX) {
                self.take_peer(inbound);
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick = Instant::now() + tick;
                self.expire_waiters();
                self.check_disk();
                self.check_serving();
                self.settle_transfers();
                self.publish_attributes();
            }
            self.ask_read_index();
            self.auto_compact();
            self.lease_duties();
            self.forward_lease_renewals();
            self.handle_ready().await?;
            self.release_held_commits();
            self.sync_watches()?;
            self.maybe_commit()?;
            self.maybe_checkpoint().await?;
        }
        // Whatever a caller managed to queue before the stop gets its answer.
        while let Ok(command) = inbox.try_recv() {
            if !matches!(command, Command::Stop) {
                self.take(command);
            }
        }
        self.ask_read_index();
        self.handle_ready().await?;
        Ok(())
    }

    async fn close(mut self) -> Result<(), NodeError> {
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.reply.send(Err(stopping()));
        }
        let checkpointed = self.applier.write().checkpoint();
        match checkpointed {
            // The WAL holds every applied entry: the next start replays them.
            Err(ApplyError::OutOfSpace(reason)) => {
                eprintln!("basalt: no checkpoint at stop, the device is full: {reason}");
            }
            result => result?,
        }
        if let Some(hard_state) = self.hard_state_unwritten.take() {
            let bytes = codec::encode_hard_state(&hard_state);
            self.wal.append(&[RecordRef::hard_state(&bytes)]).await?;
        }
        self.wal.close().await?;
        if let Some(transport) = self.transport.take() {
            match Rc::try_unwrap(transport) {
                Ok(transport) => transport.close().await,
                // A snapshot send still holds it; the executor's end drops its sockets.
                Err(_) => eprintln!("basalt: peer transport still busy at stop"),
            }
        }
        Ok(())
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Propose {
                takes_space: true,
                reply,
                ..
            } if self.out_of_space() => {
                let _ = reply.send(Err(apply_status(ApplyError::NoSpace)));
            }
            Command::Propose {
                id, data, reply, ..
            } => self.propose_or_forward(id, data, reply),
            Command::ChangeMembers { change, reply } => self.change_members(change, reply),
            Command::TransferLeader { target, reply } => self.transfer_leader(target, reply),
            Command::ReadIndex {
                linearizable: true,
                reply,
            } => self.reads_unindexed.push(PendingRead {
                reply,
                deadline: Instant::now() + self.request_timeout,
            }),
            Command::ReadIndex { reply, .. } => {
                let _ = reply.send(Ok(()));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Defragment { reply } => {
                // The copy reads a fixed root while readers go on; this thread (and so writes)
                // waits for it.
                let committed = self.applier.write().commit();
                let result = committed
                    .and_then(|()| self.applier.read().defragment())
                    .map_err(apply_status);
                self.last_checkpoint = Instant::now();
                self.key_roll_due = result.is_ok() && self.config.keyring.is_some();
                let _ = reply.send(result);
            }
            Command::HashKv { revision, reply } => {
                let _ = reply.send(self.applier.read().hash_kv(revision).map_err(Status::from));
            }
            Command::Hash { reply } => {
                let _ = reply.send(self.applier.write().hash().map_err(apply_status));
            }
            Command::Snapshot { reply } => {
                let mut applier = self.applier.write();
                let read = applier.commit().map_err(apply_status).and_then(|()| {
                    applier
                        .db()
                        .begin_read()
                        .map_err(|e| Status::internal(e.to_string()))
                });
                let _ = reply.send(read);
            }
            Command::WithLessor(run) => {
                let revision = self.applier.read().store().current_revision();
                run(self.applier.write().lessor_mut(), revision);
            }
            Command::Stop => unreachable!("handled by the loop"),
        }
    }

    /// Proposes the compaction the auto-compaction policy asks for, as an entry nobody waits
    /// on (an error result, e.g. already compacted, is simply dropped).
    fn auto_compact(&mut self) {
        let revision = self.applier.read().store().current_revision();
        if let Some(target) = self.compactor.poll(Instant::now(), revision) {
            let entry = InternalRequest {
                auth_header: None,
                id: 0,
                request: Some(Request::Compaction(CompactionRequest {
                    revision: target,
                    physical: false,
                })),
            };
            let _ = self.raw.propose(entry.encode_to_vec());
        }
    }

    fn status(&self) -> Result<StoreStatus, Status> {
        let raft = self.raw.status();
        let (db_size_bytes, db_size_in_use_bytes) =
            self.applier.read().db_size_bytes().map_err(apply_status)?;
        Ok(StoreStatus {
            revision: self.applier.read().store().current_revision(),
            raft_index: self.raw.storage().last_index().unwrap_or(0),
            raft_term: raft.hard_state.term,
            raft_applied_index: self.applier.read().applied_index(),
            db_size_bytes: db_size_bytes as i64,
            db_size_in_use_bytes: db_size_in_use_bytes as i64,
            has_leader: raft.soft_state.leader_id != basalt_raft::NONE,
            leader_id: raft.soft_state.leader_id,
            is_learner: raft.is_learner,
            alarms: self.applier.read().alarms(),
        })
    }

    /// One ReadIndex request for every linearizable read taken this turn.
    fn ask_read_index(&mut self) {
        if self.reads_unindexed.is_empty() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let reads = std::mem::take(&mut self.reads_unindexed);
        match self.raw.read_index(ctx.to_be_bytes().to_vec()) {
            Ok(()) => {
                self.reads_asked.insert(ctx, reads);
            }
            // No leader to ask (a member restarted without a quorum, or cut off): as etcd's,
            // the reads wait for one until their deadline (`push_off.rs` expires them).
            Err(_) => self.reads_unindexed = reads,
        }
    }

    async fn handle_ready(&mut self) -> Result<(), NodeError> {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            if let Some(soft_state) = &ready.soft_state {
                self.observe_leader(soft_state.leader_id, soft_state.role);
            }
            // A leader's appends and heartbeats leave while its own write is in progress. With
            // nothing to write they wait until this Ready's entries are applied: then they are
            // mostly a commit index for followers, and the callers answered here go first (a
            // socket write on a virtual link costs the sender the receiver's network stack).
            // A membership change goes out before it applies: applying a removal drops the
            // removed member's route, and it must still hear the commit that removes it.
            let send_first = !ready.entries.is_empty()
                || ready.snapshot.is_some()
                || ready
                    .committed_entries
                    .iter()
                    .any(|entry| matches!(entry.data, EntryData::ConfChange(_)));
            if let Some(snapshot) = ready.snapshot.take() {
                self.send_or_hold(std::mem::take(&mut ready.messages), false);
                self.install_snapshot(snapshot).await?;
            }
            // The WAL write is queued before the appends go out: the WAL writer then runs
            // ahead of the peer writers and its write enters the kernel first.
            let write = self
                .submit_persist(&ready.entries, ready.hard_state.as_ref(), ready.must_sync)
                .await?;
            if send_first {
                self.send_or_hold(std::mem::take(&mut ready.messages), false);
            }
            if let Some(write) = write {
                self.finish_persist(&ready.entries, write).await?;
            }
            self.send_messages(std::mem::take(&mut ready.persisted_messages));
            if let Some(hard_state) = ready.hard_state {
                self.published
                    .raft_term
                    .store(hard_state.term, Ordering::Relaxed);
            }
            for entry in &ready.committed_entries {
                self.apply(entry)?;
            }
            self.publish_lone_leader_reads();
            if !send_first {
                self.send_or_hold(std::mem::take(&mut ready.messages), true);
            }
            crate::watch::lock_hub(&self.published.watches).flush();
            let m = metrics();
            if let Some(hard_state) = ready.hard_state {
                m.server_proposals_committed_total
                    .set(hard_state.commit as i64);
            }
            m.server_proposals_applied_total
                .set(self.applier.read().applied_index() as i64);
            m.server_proposals_pending.set(self.waiters.len() as i64);
            for read_state in &ready.read_states {
                let ctx = read_state
                    .request_ctx
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if let Some(reads) = self.reads_asked.remove(&ctx) {
                    self.reads_indexed.push_back((read_state.index, reads));
                }
            }
            self.serve_indexed_reads();
            self.raw.advance();
        }
        Ok(())
    }

    fn observe_leader(&mut self, leader_id: u64, role: Role) {
        let m = metrics();
        let had_leader = m.server_has_leader.get() == 1;
        let has_leader = leader_id != basalt_raft::NONE;
        if has_leader && (!had_leader || self.leader_id != leader_id) {
            m.server_leader_changes_seen_total.inc();
        }
        self.leader_id = leader_id;
        self.role = role;
        // Cleared before this Ready's messages (a vote for another member among them) leave;
        // set again once an entry of the new term applies.
        self.published
            .lone_leader_reads
            .store(false, Ordering::Release);
        self.published.leader_id.store(leader_id, Ordering::Relaxed);
        self.settle_transfers();
        self.lease_leadership(role == Role::Leader);
        m.server_has_leader.set(i64::from(has_leader));
        m.server_is_leader
            .set(i64::from(leader_id == self.config.member_id));
    }

    /// Queues a Ready's entries and hard state as one group-commit write (see
    /// [`Core::finish_persist`] for the rest). A commit-only hard state (`must_sync` false, no
    /// entries) is not written on its own: the next write carries it, and None is returned.
    async fn submit_persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&basalt_raft::HardState>,
        must_sync: bool,
    ) -> Result<Option<WalWrite>, NodeError> {
        if !must_sync && entries.is_empty() {
            if let Some(hard_state) = hard_state {
                self.raw.storage_mut().set_hard_state(*hard_state);
                self.hard_state_unwritten = Some(*hard_state);
            }
            return Ok(None);
        }
        let unwritten = self.hard_state_unwritten.take();
        let hard_state = hard_state.copied().or(unwritten);
        if entries.is_empty() && hard_state.is_none() {
            return Ok(None);
        }
        let payloads: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| codec::encode_entry(&e.data))
            .collect();
        let hard_state_bytes = hard_state.as_ref().map(codec::encode_hard_state);
        let mut records: Vec<RecordRef<'_>> = entries
            .iter()
            .zip(&payloads)
            .map(|(entry, payload)| RecordRef::entry(entry.term, entry.index, payload))
            .collect();
        if let Some(bytes) = &hard_state_bytes {
            records.push(RecordRef::hard_state(bytes));
        }
        Ok(Some(WalWrite {
            started: Instant::now(),
            durable: self.wal.submit(&records).await?,
            hard_state,
        }))
    }

    /// Waits until a submitted write is durable, then gives raft's in-memory log its entries
    /// and hard state: nothing depends on them before they are on disk.
    async fn finish_persist(
        &mut self,
        entries: &[Entry],
        write: WalWrite,
    ) -> Result<(), NodeError> {
        write.durable.await?;
        metrics()
            .disk_wal_fsync_duration_seconds
            .observe(write.started.elapsed());
        let storage = self.raw.storage_mut();
        storage
            .append(entries)
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if let Some(hard_state) = write.hard_state {
            storage.set_hard_state(hard_state);
        }
        Ok(())
    }

    /// One round of catching unsynced watchers up from the applied store.
    fn sync_watches(&mut self) -> Result<(), NodeError> {
        let mut hub = crate::watch::lock_hub(&self.published.watches);
        if hub.needs_sync() {
            hub.sync(self.applier.read().store())
                .map_err(watch_storage)?;
        }
        Ok(())
    }

    fn apply(&mut self, entry: &Entry) -> Result<(), NodeError> {
        let outcome = match &entry.data {
            EntryData::Normal(data) => self.applier.write().apply(entry.index, data),
            EntryData::ConfChange(change) => {
                let outcome = self
                    .applier
                    .write()
                    .apply_conf_change(entry.index, &change.context);
                let conf_state = self
                    .raw
                    .apply_conf_change(change)
                    .map_err(|e| NodeError::Raft(e.to_string()))?;
                self.lone_voter = is_lone_voter(&conf_state, self.config.member_id);
                self.publish_lone_leader_reads();
                outcome
            }
        };
        // Watchers get an entry's events once it applies (its WAL record is durable), read now,
        // before a later entry could compact them away, and sent when the batch is applied.
        crate::watch::lock_hub(&self.published.watches)
            .collect(self.applier.read().store())
            .map_err(watch_storage)?;
        let Some(outcome) = outcome else {
            return Ok(());
        };
        if matches!(outcome.result, Ok(Applied::Members(_))) {
            self.members_changed();
        }
        if let Err(error) = &outcome.result {
            if error.is_fatal() {
                return Err(error.clone().into());
            }
        }
        // Auth changes reach every core (and tokens every member) before the caller hears.
        self.published.auth.observe(
            self.applier.read().auth().snapshot(),
            &outcome.result,
            self.applier.read().applied_index(),
        );
        if let Some(waiter) = self.waiters.remove(&outcome.id) {
            let _ = waiter.reply.send(outcome.result.map_err(apply_status));
        }
        Ok(())
    }

    /// See `Published::lone_leader_reads`.
    fn publish_lone_leader_reads(&self) {
        let term = self.published.raft_term.load(Ordering::Relaxed);
        let reads_here = self.lone_voter && self.role == Role::Leader && {
            let applied = self.applier.read().applied_index();
            self.raw.storage().term(applied).is_ok_and(|t| t == term)
        };
        self.published
            .lone_leader_reads
            .store(reads_here, Ordering::Release);
    }

    fn serve_indexed_reads(&mut self) {
        let applied = self.applier.read().applied_index();
        while self
            .reads_indexed
            .front()
            .is_some_and(|(index, _)| *index <= applied)
        {
            let (_, reads) = self.reads_indexed.pop_front().expect("checked");
            self.reads_served += reads.len() as u64;
            for read in reads {
                let _ = read.reply.send(Ok(()));
            }
        }
    }

    /// Writes the applied records to the tree once enough of them wait in the overlay (or
    /// they have waited long enough). Not per Ready: the WAL already made them durable and
    /// reads find them in the overlay, so a tree commit (a page write per changed node) on the
    /// write path would only delay answers; in batches it also rewrites each page once.
    fn maybe_commit(&mut self) -> Result<(), NodeError> {
        let waiting = self.applier.read().uncommitted_records();
        if waiting == 0
            || (waiting < COMMIT_RECORDS_MAX && self.last_commit.elapsed() < COMMIT_INTERVAL)
            || !self.may_write_tree()
        {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.applier.write().commit();
        self.retry_after_full("commit", result)?;
        self.last_commit = started;
        metrics()
            .disk_backend_commit_duration_seconds
            .observe(started.elapsed());
        Ok(())
    }

    /// A checkpoint every so many entries or so long; a raft snapshot (log compaction and WAL
    /// purge) every `--snapshot-count` entries, always at a checkpointed index so that the WAL
    /// never loses an entry the tree file does not hold.
    async fn maybe_checkpoint(&mut self) -> Result<(), NodeError> {
        let applied = self.applier.read().applied_index();
        let unsaved = applied - self.applier.read().checkpointed_index();
        let snapshot_due = applied - self.snapshot_index >= self.config.snapshot_count.max(1);
        let checkpoint_due = unsaved > 0
            && (snapshot_due
                || unsaved >= CHECKPOINT_ENTRIES_MAX
                || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL);
        if checkpoint_due && self.may_write_tree() {
            // Readers go on while the tree syncs.
            let committed = self.applier.write().commit();
            let result = committed.and_then(|()| self.applier.read().sync_commit());
            self.retry_after_full("checkpoint", result)?;
            if self.applier.read().checkpointed_index() == applied {
                self.last_checkpoint = Instant::now();
                let (size_bytes, in_use_bytes) = self.applier.read().db_size_bytes()?;
                metrics().mvcc_db_total_size_in_bytes.set(size_bytes as i64);
                metrics()
                    .mvcc_db_total_size_in_use_in_bytes
                    .set(in_use_bytes as i64);
                if snapshot_due {
                    self.snapshot(applied).await?;
                }
            }
        }
        // Short of space, the log gives back every segment the tree holds, whether or not
        // the checkpoint just now found room: the space it frees is what the tree retries in.
        let checkpointed = self.applier.read().checkpointed_index();
        let key_roll_due = std::mem::take(&mut self.key_roll_due);
        if (self.disk.pressed() || key_roll_due) && checkpointed > self.snapshot_index {
            self.snapshot(checkpointed).await?;
        }
        Ok(())
    }

    async fn snapshot(&mut self, index: u64) -> Result<(), NodeError> {
        let conf_state = self.raw.status().conf_state;
        let storage = self.raw.storage_mut();
        let term = storage
            .create_snapshot(index, conf_state.clone(), Vec::new())
            .map_err(|e| NodeError::Raft(e.to_string()))?
            .metadata
            .term;
        storage
            .compact(index)
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let payload = codec::encode_snapshot(&conf_state);
        self.wal
            .append(&[RecordRef::snapshot(term, index, &payload)])
            .await?;
        // Every segment the snapshot covers goes, not only those past `--max-wals` (a maximum,
        // as etcd's flag says): the tree holds their entries (the snapshot is at a checkpointed
        // index), and raft's log was just compacted to `index`, so neither a restart nor a
        // lagging follower (sent a snapshot) reads them again. `--max-wals 0` still keeps all.
        self.wal.purge_keeping(index, 1).await?;
        self.snapshot_index = index;
        Ok(())
    }
}

fn is_lone_voter(conf_state: &ConfState, member_id: u64) -> bool {
    conf_state.voters == [member_id] && conf_state.voters_outgoing.is_empty()
}

/// Hands entries read back from the WAL to raft's log once they are known to continue it:
/// raft asserts on a gap (a programmer's error there), but here a gap is damage on disk.
fn append_recovered(
    storage: &mut MemStorage,
    entries: &[Entry],
    wal_path: &std::path::Path,
) -> Result<(), NodeError> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    let raft_error = |e: basalt_raft::StorageError| NodeError::Raft(e.to_string());
    let log_first = storage.first_index().map_err(raft_error)?;
    let log_last = storage.last_index().map_err(raft_error)?;
    let misfit = if first.index > log_last + 1 {
        Some(format!(
            "entry {} does not follow the log's last index {log_last}: entries in between are \
             missing",
            first.index
        ))
    } else if first.index < log_first {
        Some(format!(
            "entry {} is at or below the log's snapshot (the log starts at {log_first})",
            first.index
        ))
    } else if last.index - first.index + 1 != entries.len() as u64 {
        Some(format!(
            "entries {}..={} are not consecutive ({} read)",
            first.index,
            last.index,
            entries.len()
        ))
    } else {
        None
    };
    if let Some(reason) = misfit {
        return Err(data_dir_error(wal_path, reason));
    }
    storage.append(entries).map_err(raft_error)
}

/// Makes a member list changed outside the log durable at the tree's applied index.
fn save_members(applier: &mut Applier) -> Result<(), NodeError> {
    applier.commit()?;
    applier
        .db()
        .checkpoint(applier.applied_index())
        .map_err(|e| NodeError::Apply(ApplyError::Storage(e.to_string())))
}

fn data_dir_error(path: &std::path::Path, reason: impl Into<String>) -> NodeError {
    NodeError::DataDir {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Starts the in-memory log at a snapshot marker (the log before it is gone).
fn install_marker(
    storage: &mut MemStorage,
    index: u64,
    term: u64,
    conf_state: ConfState,
) -> Result<(), NodeError> {
    storage
        .apply_snapshot(Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data: Vec::new(),
        })
        .map_err(|e| NodeError::Raft(e.to_string()))
}

/// A watch read that failed reads the store's backend: the store can no longer be trusted.
fn watch_storage(error: basalt_engine::mvcc::MvccError) -> NodeError {
    NodeError::Apply(ApplyError::Storage(error.to_string()))
}

/// How the member opens its tree file: encrypted with the configured keys, if any.
pub(super) fn tree_options(config: &NodeConfig) -> btree::Options {
    btree::Options {
        keyring: config.keyring.clone(),
        ..btree::Options::default()
    }
}
