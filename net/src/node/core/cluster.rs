//! The raft core's part in a cluster: what arrives from peers (raft messages, snapshots,
//! forwarded proposals and their refusals), proposals a follower hands to the leader,
//! membership changes with etcd's checks, raft snapshots sent to and installed from peers, and
//! the member list published to every core.
//!
//! A follower never proposes: it forwards the request to the leader and waits for the entry to
//! apply locally (the waiter is found by the proposal id inside the entry), so the answer a
//! client gets is always this member's own applied result. The leader refuses what it cannot
//! propose by a forward back, so the caller hears why instead of waiting for its timeout.

use std::collections::HashMap;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_engine::apply::{Applied, Applier};
use basalt_engine::btree;
use basalt_engine::wal::RecordRef;
use basalt_proto::basaltpb::{forward, member_change::Kind, Forward, MemberChange, Refusal};
use basalt_proto::etcdserverpb::Member;
use basalt_raft::{
    ConfChange, ConfChangeKind, ConfState, Message, MessageType, Role, Snapshot, SnapshotStatus,
    Storage,
};
use prost::Message as _;

use super::{Core, Waiter};
use crate::node::{codec, datadir, snapshot, NodeConfig, NodeError, Reply};
use crate::peer::{PeerInbound, PeerTransport, TransportConfig};
use crate::status::{Code, Status};
use std::rc::Rc;

/// etcd's `isLearnerReady`: a learner is promoted only once its log reaches this share of the
/// leader's.
const LEARNER_READY_PERCENT: u64 = 90;
/// etcd's `maxLearners`.
const LEARNERS_MAX: usize = 1;
/// How long a leader holds an append that carries only a new commit index (no entries) before
/// sending it. An append to the same follower within that time carries the commit index too
/// and replaces it: with one client, the next put's append comes a client round trip later,
/// and each replaced append saves the leader a socket write (which runs the follower's network
/// stack on the leader's core), and the follower a wake-up and an ack. Measured on the 3-member
/// netns cluster (perf/RESULTS.md): a lone put's p50 6-12% lower, 50-80 us less CPU per put over
/// the three members.
/// A follower learns a commit this much later when no write follows (its heartbeats carry the
/// commit index too).
pub(super) const COMMIT_HOLD: Duration = Duration::from_millis(1);

/// Commit-only appends waiting out [`COMMIT_HOLD`]: at most one per follower, the newest.
#[derive(Default)]
pub(super) struct HeldCommits {
    messages: Vec<Message>,
    since: Option<Instant>,
}

impl Core {
    pub(super) fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// One arrival from a peer.
    pub(super) fn take_peer(&mut self, inbound: PeerInbound) {
        match inbound {
            PeerInbound::Message(message) => self.raw.step(message),
            PeerInbound::Snapshot { mut message, file } => {
                if let Some(snapshot) = &mut message.snapshot {
                    // The received file rides in the snapshot's data until the Ready that
                    // installs it (raft treats the data as opaque).
                    snapshot.data = file.into_os_string().into_vec();
                    self.raw.step(message);
                }
            }
            PeerInbound::Unreachable(id) => self.raw.report_unreachable(id),
            PeerInbound::SnapshotSent { to, ok } => {
                self.snapshots_sending.remove(&to);
                let status = if ok {
                    SnapshotStatus::Delivered
                } else {
                    SnapshotStatus::Failed
                };
                self.raw.report_snapshot(to, status);
            }
            PeerInbound::Forwarded { from, data } => self.take_forward(from, &data),
            PeerInbound::HashKv { revision, reply } => {
                let hash = self.applier.read().hash_kv(revision);
                let _ = reply.send(hash.map_err(|e| Status::from(e).message));
            }
        }
    }

    fn take_forward(&mut self, from: u64, data: &[u8]) {
        let Ok(forward) = Forward::decode(data) else {
            eprintln!("basalt: member {from:x} forwarded bytes that do not decode; dropped");
            return;
        };
        let id = forward.id;
        let refusal = match forward.kind {
            Some(forward::Kind::Proposal(entry)) if self.is_leader() => self
                .raw
                .propose(entry.to_vec())
                .err()
                .map(|error| Status::new(Code::Unavailable, format!("etcdserver: {error}"))),
            Some(forward::Kind::Proposal(_)) => Some(leader_changed()),
            Some(forward::Kind::MemberChange(change)) => self.propose_member_change(change).err(),
            Some(forward::Kind::Refusal(refusal)) => {
                if let Some(waiter) = self.waiters.remove(&id) {
                    let code = Code::from_wire(refusal.code as u32);
                    let _ = waiter.reply.send(Err(Status::new(code, refusal.message)));
                }
                None
            }
            Some(forward::Kind::LeaseRenewals(renewals)) => {
                let now = Instant::now();
                let mut applier = self.applier.write();
                let lessor = applier.lessor_mut();
                for id in renewals.ids {
                    // A lease gone meanwhile is answered as gone at the next keep-alive.
                    let _ = lessor.renew(id, now);
                }
                None
            }
            None => None,
        };
        if let (Some(status), Some(transport)) = (refusal, &self.transport) {
            let refusal = Forward {
                id,
                kind: Some(forward::Kind::Refusal(Refusal {
                    code: i32::from(status.code.as_wire()),
                    message: status.message,
                })),
            };
            transport.forward(from, refusal.encode_to_vec());
        }
    }

    /// A write this member cannot propose itself goes to the leader; either way the caller
    /// waits for the entry to apply here.
    pub(super) fn propose_or_forward(&mut self, id: u64, data: Vec<u8>, reply: Reply<Applied>) {
        if self.is_leader() {
            match self.raw.propose(data) {
                Ok(_) => self.wait(id, reply),
                Err(error) => {
                    let _ = reply.send(Err(Status::new(
                        Code::Unavailable,
                        format!("etcdserver: no leader ({error})"),
                    )));
                }
            }
            return;
        }
        self.forward_to_leader(id, forward::Kind::Proposal(data.into()), reply);
    }

    /// An entry of this member's own that nobody waits for (an alarm): proposed here when
    /// leading, else handed to the leader. Whether it left (a known leader took it or it was
    /// sent there); it may still be lost on the way, so the caller proposes it again later.
    pub(super) fn propose_unanswered(&mut self, data: Vec<u8>) -> bool {
        if self.is_leader() {
            return self.raw.propose(data).is_ok();
        }
        match (&self.transport, self.leader_id) {
            (Some(transport), leader) if leader != basalt_raft::NONE => {
                let forward = Forward {
                    id: 0,
                    kind: Some(forward::Kind::Proposal(data.into())),
                };
                transport.forward(leader, forward.encode_to_vec());
                true
            }
            _ => false,
        }
    }

    /// Hands `kind` to the leader and waits for its entry to apply here; without a known
    /// leader the caller hears so at once.
    fn forward_to_leader(&mut self, id: u64, kind: forward::Kind, reply: Reply<Applied>) {
        match (&self.transport, self.leader_id) {
            (Some(transport), leader) if leader != basalt_raft::NONE => {
                let forward = Forward {
                    id,
                    kind: Some(kind),
                };
                transport.forward(leader, forward.encode_to_vec());
                self.wait(id, reply);
            }
            _ => {
                let _ = reply.send(Err(no_leader()));
            }
        }
    }

    pub(super) fn wait(&mut self, id: u64, reply: Reply<Applied>) {
        let deadline = Instant::now() + self.request_timeout;
        self.waiters.insert(id, Waiter { reply, deadline });
    }

    /// A membership change from a client of this member: proposed here when leading, else
    /// handed to the leader, which checks and proposes it.
    pub(super) fn change_members(&mut self, change: MemberChange, reply: Reply<Applied>) {
        let id = change.id;
        if self.is_leader() {
            match self.propose_member_change(change) {
                Ok(()) => self.wait(id, reply),
                Err(status) => {
                    let _ = reply.send(Err(status));
                }
            }
            return;
        }
        self.forward_to_leader(id, forward::Kind::MemberChange(change), reply);
    }

    /// etcd's checks of a membership change (made by the leader, which alone knows how far
    /// each member's log is and which members it hears from), then the conf change entry.
    fn propose_member_change(&mut self, change: MemberChange) -> Result<(), Status> {
        if !self.is_leader() {
            return Err(leader_changed());
        }
        let member = change.member.clone().unwrap_or_default();
        let members = self.applier.read().members();
        let existing = members.iter().find(|m| m.id == member.id);
        let voters = members.iter().filter(|m| !m.is_learner).count();
        let kind = match change.kind() {
            Kind::Add => {
                if existing.is_some() || self.applier.read().is_removed(member.id) {
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        "etcdserver: member ID already exist",
                    ));
                }
                let urls_taken = members.iter().any(|m| {
                    m.peer_ur_ls
                        .iter()
                        .any(|url| member.peer_ur_ls.contains(url))
                });
                if urls_taken {
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        "etcdserver: Peer URLs already exists",
                    ));
                }
                if member.is_learner {
                    let learners = members.iter().filter(|m| m.is_learner).count();
                    if learners >= LEARNERS_MAX {
                        return Err(Status::new(
                            Code::FailedPrecondition,
                            "etcdserver: too many learner members in cluster",
                        ));
                    }
                    ConfChangeKind::AddLearner
                } else {
                    self.check_started_quorum(voters + 1, None)?;
                    ConfChangeKind::AddVoter
                }
            }
            Kind::Remove => {
                let Some(existing) = existing else {
                    return Err(member_not_found());
                };
                if !existing.is_learner {
                    self.check_started_quorum(voters - 1, Some(member.id))?;
                }
                ConfChangeKind::RemoveNode
            }
            Kind::Promote => {
                let Some(existing) = existing else {
                    return Err(member_not_found());
                };
                if !existing.is_learner {
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        "etcdserver: can only promote a learner member",
                    ));
                }
                self.check_learner_ready(member.id)?;
                self.check_started_quorum(voters + 1, None)?;
                ConfChangeKind::AddVoter
            }
        };
        let conf_change = ConfChange {
            context: change.encode_to_vec(),
            ..ConfChange::single(kind, member.id)
        };
        self.raw
            .propose_conf_change(conf_change)
            .map(|_| ())
            .map_err(|error| Status::new(Code::Unavailable, format!("etcdserver: {error}")))
    }

    /// `--strict-reconfig-check`: after the change, the members this leader hears from (itself
    /// included, `leaving` excluded) must still be a quorum of `voters_after`.
    fn check_started_quorum(
        &self,
        voters_after: usize,
        leaving: Option<u64>,
    ) -> Result<(), Status> {
        if !self.config.strict_reconfig_check {
            return Ok(());
        }
        let member_id = self.config.member_id;
        let started = self
            .applier
            .read()
            .members()
            .iter()
            .filter(|m| !m.is_learner && Some(m.id) != leaving)
            .filter(|m| {
                m.id == member_id
                    || self
                        .transport
                        .as_ref()
                        .is_some_and(|t| t.active_since(m.id).is_some())
            })
            .count();
        // etcd lets a lone member take a second voter (how a cluster grows from a restored
        // snapshot), though the two cannot commit until the new one runs.
        let grows_lone_member = leaving.is_none() && started == 1 && voters_after == 2;
        if started < voters_after / 2 + 1 && !grows_lone_member {
            return Err(Status::new(
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ));
        }
        Ok(())
    }

    fn check_learner_ready(&self, learner: u64) -> Result<(), Status> {
        let progress = self.raw.status().progress;
        let leader_match = progress
            .get(&self.config.member_id)
            .map_or(0, |p| p.matched);
        let learner_match = progress.get(&learner).map_or(0, |p| p.matched);
        if learner_match * 100 < leader_match * LEARNER_READY_PERCENT {
            return Err(Status::new(
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ));
        }
        Ok(())
    }

    /// After the member list changed (or was replaced by a snapshot): peers to talk to, the
    /// list every core reads, and whether this member is still one.
    pub(super) fn members_changed(&mut self) {
        let members = self.applier.read().members();
        if members.is_empty() {
            // A joining member before its first snapshot: keep the list it started with.
            return;
        }
        let mut published = crate::node::lock_cluster(&self.published.cluster);
        published.members.clone_from(&members);
        drop(published);
        let current: HashMap<u64, Vec<String>> = members
            .iter()
            .filter(|m| m.id != self.config.member_id)
            .map(|m| (m.id, m.peer_ur_ls.clone()))
            .collect();
        if let Some(transport) = &self.transport {
            for (id, urls) in &current {
                match self.peer_urls.get(id) {
                    None => transport.add_peer(*id, urls.clone()),
                    Some(known) if known != urls => transport.update_peer(*id, urls.clone()),
                    Some(_) => {}
                }
            }
            for id in self.peer_urls.keys() {
                if !current.contains_key(id) {
                    transport.remove_peer(*id);
                }
            }
        }
        self.peer_urls = current;
        let is_learner = members
            .iter()
            .any(|m| m.id == self.config.member_id && m.is_learner);
        self.published
            .is_learner
            .store(is_learner, std::sync::atomic::Ordering::Relaxed);
        if self.applier.read().is_removed(self.config.member_id) {
            eprintln!("basalt: this member was removed from the cluster; stopping");
            self.removed = true;
        }
    }

    /// Publishes this member's name and client URLs through the log once it runs (etcd's
    /// publish), retried every election timeout until the applied list shows them.
    pub(super) fn publish_attributes(&mut self) {
        let member_id = self.config.member_id;
        let up_to_date = self.applier.read().members().iter().any(|m| {
            m.id == member_id
                && m.name == self.config.name
                && m.client_ur_ls == self.config.advertise_client_urls
        });
        let retry_due = self
            .attributes_proposed
            .is_none_or(|at| at.elapsed() >= self.request_timeout / 4);
        if up_to_date {
            self.published
                .ready
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return;
        }
        if !retry_due || self.leader_id == basalt_raft::NONE {
            return;
        }
        self.attributes_proposed = Some(Instant::now());
        let request = basalt_proto::basaltpb::InternalRequest {
            id: self.published.next_id(),
            request: Some(
                basalt_proto::basaltpb::internal_request::Request::MemberAttributes(Member {
                    id: member_id,
                    name: self.config.name.clone(),
                    client_ur_ls: self.config.advertise_client_urls.clone(),
                    ..Member::default()
                }),
            ),
            ..Default::default()
        };
        let (reply, _) = flume::bounded(1);
        self.propose_or_forward(request.id, request.encode_to_vec(), reply);
    }

    /// Sends `messages`, holding back commit-only appends (see [`COMMIT_HOLD`]); any other
    /// append replaces a held one to the same follower.
    pub(super) fn send_or_hold(&mut self, messages: Vec<Message>, hold: bool) {
        let (held, now): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|m| hold && m.kind == MessageType::App && m.entries.is_empty());
        let commits_held = &mut self.commits_held;
        commits_held.messages.retain(|waiting| {
            !now.iter()
                .chain(&held)
                .any(|m| m.kind == MessageType::App && m.to == waiting.to)
        });
        commits_held.messages.extend(held);
        commits_held.since = match commits_held.messages.is_empty() {
            true => None,
            false => commits_held.since.or(Some(Instant::now())),
        };
        self.send_messages(now);
    }

    /// Sends the held commit-only appends once they have waited [`COMMIT_HOLD`].
    pub(super) fn release_held_commits(&mut self) {
        if self.held_commits_due_in() == Some(Duration::ZERO) {
            self.commits_held.since = None;
            let messages = std::mem::take(&mut self.commits_held.messages);
            self.send_messages(messages);
        }
    }

    /// How long until the held commit-only appends are due, if any are held.
    pub(super) fn held_commits_due_in(&self) -> Option<Duration> {
        let since = self.commits_held.since?;
        Some(COMMIT_HOLD.saturating_sub(since.elapsed()))
    }

    /// Messages of a Ready to their peers; a snapshot message first gets its tree copied.
    pub(super) fn send_messages(&mut self, messages: Vec<Message>) {
        let Some(transport) = self.transport.clone() else {
            return;
        };
        let (snapshots, messages): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|m| m.kind == MessageType::Snap);
        if !messages.is_empty() {
            transport.send(messages);
        }
        for message in snapshots {
            let to = message.to;
            if let Err(error) = self.send_snapshot(message) {
                // Raft hears of the failure and asks again later (a full device included:
                // the tree commit before the copy undid itself).
                eprintln!("basalt: cannot prepare a snapshot for member {to:x}: {error}");
                self.snapshots_sending.remove(&to);
                self.raw.report_snapshot(to, SnapshotStatus::Failed);
            }
        }
    }

    /// etcd's merged snapshot: raft asked for its last snapshot, but the follower gets the
    /// whole tree as applied now, so the metadata is rewritten to the applied index, its term
    /// and the configuration in effect there.
    fn send_snapshot(&mut self, mut message: Message) -> Result<(), NodeError> {
        let to = message.to;
        if !self.snapshots_sending.insert(to) {
            return Ok(());
        }
        self.applier.write().commit()?;
        let index = self.applier.read().applied_index();
        let term = self
            .raw
            .storage()
            .term(index)
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let conf_state = self.raw.status().conf_state;
        message.snapshot = Some(Snapshot {
            metadata: basalt_raft::SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data: Vec::new(),
        });
        let read = self
            .applier
            .read()
            .db()
            .begin_read()
            .map_err(|e| NodeError::Raft(format!("snapshot read: {e}")))?;
        let path = snapshot::send_copy_path(&self.published.snap_dir, to, index);
        let transport = self.transport.clone().expect("sending needs a transport");
        let peer_inbound = self.peer_inbound.clone();
        let (done, copied) = flume::bounded(1);
        let copy_path = path.clone();
        // Sealed with this member's keys while it waits on disk; the transport sends the
        // plaintext (the peer seals it with its own).
        let keyring = self.config.keyring.clone();
        eprintln!("basalt: sending member {to:x} a snapshot at index {index}");
        // The copy reads a fixed root; a thread of its own keeps the raft core turning.
        std::thread::spawn(move || {
            let _ = done.send(snapshot::copy_tree(&read, &copy_path, keyring.as_ref()));
        });
        glommio::spawn_local(async move {
            match copied.recv_async().await {
                Ok(Ok(())) => transport.send_snapshot(message, path),
                outcome => {
                    eprintln!("basalt: snapshot copy for member {to:x} failed: {outcome:?}");
                    let _ = std::fs::remove_file(&path);
                    let _ = peer_inbound.send(PeerInbound::SnapshotSent { to, ok: false });
                }
            }
        })
        .detach();
        Ok(())
    }

    /// Replaces this member's tree with the one a leader sent (its data holds the received
    /// file's path), then starts the log after it. The WAL marker goes first: a crash before
    /// the rename leaves the received file beside a tree behind the marker, and recovery
    /// adopts the file (see [`adopt_received_snapshot`]); renaming first could leave a tree
    /// ahead of stale log entries that raft would then take as committed.
    pub(super) async fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), NodeError> {
        let metadata = snapshot.metadata;
        let received = PathBuf::from(std::ffi::OsString::from_vec(snapshot.data));
        let payload = codec::encode_snapshot(&metadata.conf_state);
        self.wal
            .append(&[RecordRef::snapshot(metadata.term, metadata.index, &payload)])
            .await?;
        *self.applier.write() = replace_tree(&self.config, &received, metadata.index)?;
        self.raw
            .storage_mut()
            .apply_snapshot(Snapshot {
                metadata: metadata.clone(),
                data: Vec::new(),
            })
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        self.snapshot_index = metadata.index;
        self.lone_voter = super::is_lone_voter(&metadata.conf_state, self.config.member_id);
        self.last_checkpoint = Instant::now();
        // Watchers keep their next revision and catch up from the new store (or are answered
        // with its compaction), as etcd's watchableStore.Restore does.
        crate::watch::lock_hub(&self.published.watches).restore(self.applier.read().store());
        // The received tree holds its own auth state: every core checks against it from now.
        self.published
            .auth
            .publish(self.applier.read().auth().snapshot());
        self.lease_leadership(false);
        self.members_changed();
        eprintln!(
            "basalt: installed a snapshot at index {} (term {})",
            metadata.index, metadata.term
        );
        Ok(())
    }

    /// Hands the leases this follower's clients kept alive to the leader, whose clock counts.
    pub(super) fn forward_lease_renewals(&mut self) {
        let ids = self.applier.write().lessor_mut().take_renewals_for_leader();
        if ids.is_empty() || self.leader_id == basalt_raft::NONE || self.is_leader() {
            return;
        }
        if let Some(transport) = &self.transport {
            let forward = Forward {
                id: 0,
                kind: Some(forward::Kind::LeaseRenewals(
                    basalt_proto::basaltpb::LeaseRenewals { ids },
                )),
            };
            transport.forward(self.leader_id, forward.encode_to_vec());
        }
    }

    /// Answers every waiter whose deadline passed (its entry may still apply later).
    pub(super) fn expire_waiters(&mut self) {
        let now = Instant::now();
        self.waiters.retain(|_, waiter| {
            if waiter.deadline > now {
                return true;
            }
            let _ = waiter.reply.send(Err(Status::new(
                Code::Unavailable,
                "etcdserver: request timed out",
            )));
            false
        });
    }
}

/// Moves a received tree file onto this member's tree (atomically, made durable by syncing
/// the directory) and opens it, checking it holds `index`.
fn replace_tree(config: &NodeConfig, received: &Path, index: u64) -> Result<Applier, NodeError> {
    let db_path = datadir::db_path(&config.data_dir);
    let io = |reason: std::io::Error| NodeError::DataDir {
        path: db_path.clone(),
        reason: format!("installing a snapshot: {reason}"),
    };
    std::fs::rename(received, &db_path).map_err(io)?;
    std::fs::File::open(db_path.parent().expect("the db lives in a directory"))
        .and_then(|dir| dir.sync_all())
        .map_err(io)?;
    let tree_error = |e: btree::Error| NodeError::DataDir {
        path: db_path.clone(),
        reason: e.to_string(),
    };
    let db = btree::open(&db_path, super::tree_options(config)).map_err(tree_error)?;
    // The transport seals a tree as it arrives when this member has keys; a plain one (received
    // before the member had keys, adopted after a crash) is sealed now, by rewriting it.
    if config.keyring.is_some() && !db.is_encrypted().map_err(tree_error)? {
        db.defragment(index).map_err(tree_error)?;
    }
    let applier = Applier::open(db, config.limits)?;
    if applier.applied_index() != index {
        return Err(NodeError::Raft(format!(
            "the snapshot for index {index} holds index {}",
            applier.applied_index()
        )));
    }
    Ok(applier)
}

/// Recovery's half of [`Core::install_snapshot`]: the WAL says the log starts after `index` but
/// the tree is behind it, so the crash came between the marker and the rename; the received
/// file (named by the transport `<index:016x>-<from:016x>.snap.db`) is still there to adopt.
pub(super) fn adopt_received_snapshot(
    config: &NodeConfig,
    snap_dir: &Path,
    index: u64,
) -> Result<Option<Applier>, NodeError> {
    let prefix = format!("{index:016x}-");
    let Ok(entries) = std::fs::read_dir(snap_dir) else {
        return Ok(None);
    };
    let received = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".snap.db"))
        });
    match received {
        Some(file) => {
            eprintln!(
                "basalt: adopting the snapshot received before a crash: {}",
                file.display()
            );
            replace_tree(config, &file, index).map(Some)
        }
        None => Ok(None),
    }
}

/// The raft configuration a member list describes (membership changes are single steps, so
/// no joint configuration is ever left in effect at an applied index).
pub(crate) fn conf_state_of(members: &[Member]) -> ConfState {
    let ids = |learners: bool| {
        members
            .iter()
            .filter(|m| m.is_learner == learners)
            .map(|m| m.id)
            .collect()
    };
    ConfState {
        voters: ids(false),
        learners: ids(true),
        ..ConfState::default()
    }
}

fn no_leader() -> Status {
    Status::new(Code::Unavailable, "etcdserver: no leader")
}

fn leader_changed() -> Status {
    Status::new(Code::Unavailable, "etcdserver: leader changed")
}

fn member_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: member not found")
}

impl Core {
    /// Starts the peer transport on this executor once the member list is known.
    pub(super) async fn start_transport(&mut self) -> Result<(), NodeError> {
        let member_id = self.config.member_id;
        if self.applier.read().is_removed(member_id) {
            return Err(NodeError::Removed);
        }
        let mut members = self.applier.read().members();
        if members.is_empty() {
            // A joining member knows the cluster only from what it was sent at start.
            members.clone_from(&self.config.initial_members);
        }
        crate::node::lock_cluster(&self.published.cluster)
            .members
            .clone_from(&members);
        if self.config.listen_peer_urls.is_empty() {
            return Ok(());
        }
        let peers: Vec<(u64, Vec<String>)> = members
            .iter()
            .filter(|m| m.id != member_id)
            .map(|m| (m.id, m.peer_ur_ls.clone()))
            .collect();
        let config = TransportConfig {
            member_id,
            cluster_id: self.config.cluster_id,
            listen_peer_urls: self.config.listen_peer_urls.clone(),
            peers: peers.clone(),
            snap_dir: self.published.snap_dir.clone(),
            keyring: self.config.keyring.clone(),
            tls: self.config.peer_tls.clone(),
        };
        let transport = PeerTransport::start(
            config,
            self.peer_inbound.clone(),
            self.published.cluster.clone(),
        )
        .await
        .map_err(|e| NodeError::Peer(e.to_string()))?;
        self.transport = Some(Rc::new(transport));
        self.peer_urls = peers.into_iter().collect();
        Ok(())
    }

    /// Maintenance.MoveLeader: only the leader hands over, to a voter; answered once the
    /// target leads (or at the request timeout).
    pub(super) fn transfer_leader(&mut self, target: u64, reply: Reply<()>) {
        if !self.is_leader() {
            let _ = reply.send(Err(Status::new(
                Code::FailedPrecondition,
                "etcdserver: not leader",
            )));
            return;
        }
        if target == self.config.member_id {
            let _ = reply.send(Ok(()));
            return;
        }
        let is_voter = self
            .applier
            .read()
            .members()
            .iter()
            .any(|m| m.id == target && !m.is_learner);
        if !is_voter || self.raw.transfer_leader(target).is_err() {
            let _ = reply.send(Err(Status::new(
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            )));
            return;
        }
        let deadline = Instant::now() + self.request_timeout;
        self.transfers.push((target, reply, deadline));
    }

    /// Answers leader transfers that completed or ran out of time.
    pub(super) fn settle_transfers(&mut self) {
        let now = Instant::now();
        let leader_id = self.leader_id;
        self.transfers.retain(|(target, reply, deadline)| {
            if *target == leader_id {
                let _ = reply.send(Ok(()));
            } else if *deadline <= now {
                let _ = reply.send(Err(Status::new(
                    Code::Unavailable,
                    "etcdserver: request timed out, leader transfer took too long",
                )));
            } else {
                return true;
            }
            false
        });
    }
}
