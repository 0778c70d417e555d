//! `RawNode`: the surface a server drives. It wraps the core, turns its output into `Ready`
//! batches and takes the application's acknowledgement back through `advance`.
//!
//! Contract, per `Ready`:
//! 1. Send `messages` at once: they may leave while the disk write below is in progress.
//! 2. Persist, in this order: `snapshot` (if any), `entries` (append, replacing any suffix from
//!    the first index), then `hard_state` (if any). Sync if `must_sync`.
//! 3. Only then send `persisted_messages` (votes, vote and append responses promise that what
//!    they answer is durable).
//! 4. Apply `snapshot` to the state machine, then `committed_entries` in order; call
//!    `apply_conf_change` for configuration entries as they are applied.
//! 5. Serve `read_states` once the applied index reaches their index.
//! 6. Call `advance()`. `step`, `tick`, `propose` and the rest may be called between `ready()`
//!    and `advance()`, but `ready()` may not be called again until `advance()`.

use std::collections::BTreeMap;

use crate::error::{ConfChangeError, ConfigError, ProposalError};
use crate::message::{
    ConfChange, ConfState, Entry, HardState, Message, NodeId, ReadState, Snapshot, NONE,
};
use crate::progress::ProgressState;
use crate::raft::{Config, Raft, Role};
use crate::storage::Storage;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftState {
    pub leader_id: NodeId,
    pub role: Role,
}

/// One batch of work for the application; see the module contract above.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// The leader's appends, heartbeats, snapshots and read answers: send before persisting.
    pub messages: Vec<Message>,
    /// Everything else: send after persisting.
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Entries, term or vote changed: the write must be synced before `persisted_messages` go.
    pub must_sync: bool,
}

/// What `advance` needs to know about the `Ready` it acknowledges.
#[derive(Debug)]
struct ReadyReceipt {
    last_entry: Option<(u64, u64)>,
    snapshot_index: Option<u64>,
    last_committed: Option<u64>,
    committed_payload_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
    pub is_learner: bool,
    pub recent_active: bool,
    pub inflight_msgs: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub hard_state: HardState,
    pub soft_state: SoftState,
    pub applied: u64,
    pub is_learner: bool,
    pub conf_state: ConfState,
    /// Progress of every member, on the leader only.
    pub progress: BTreeMap<NodeId, PeerStatus>,
    pub lead_transferee: Option<NodeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStatus {
    Delivered,
    Failed,
}

pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
    awaiting_advance: Option<ReadyReceipt>,
}

impl<S: Storage> RawNode<S> {
    /// Starts a node from what `storage` holds (a fresh founder, a joiner, or a restart).
    pub fn new(config: Config, storage: S) -> Result<RawNode<S>, ConfigError> {
        let raft = Raft::new(config, storage)?;
        let prev_hard = raft.hard_state();
        let prev_soft = SoftState {
            leader_id: raft.lead,
            role: raft.role,
        };
        Ok(RawNode {
            raft,
            prev_soft,
            prev_hard,
            awaiting_advance: None,
        })
    }

    /// Advances the logical clock by one tick (the server calls this on a fixed interval).
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (tests, or a server that knows the leader is gone).
    pub fn campaign(&mut self) {
        self.raft.hup();
    }

    /// Feeds a message from a peer. Messages from unknown or stale senders are ignored.
    pub fn step(&mut self, m: Message) {
        self.raft.step(m);
    }

    /// Appends `data` if this node is the leader; returns the index it will commit at, if it
    /// commits (a leader change may still discard it; watch the applied entries).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, ProposalError> {
        self.raft.propose(data)
    }

    /// Proposes a membership change (at most one may be pending until applied).
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<u64, ProposalError> {
        self.raft.propose_conf_change(cc)
    }

    /// Applies a committed membership change; call it as the entry is applied. Returns the
    /// configuration now in effect (keep it for snapshot metadata).
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, ConfChangeError> {
        self.raft.apply_conf_change(cc)
    }

    /// Requests a linearizable read. `ctx` identifies it and comes back in a `ReadState`; a
    /// follower forwards it to the leader, and a lost request is the caller's to retry.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), ProposalError> {
        let id = self.raft.id;
        self.raft.read_index(ctx, id)
    }

    /// Asks the leader to hand leadership to `to` (a voter). Proposals are refused meanwhile.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposalError> {
        self.raft.transfer_leader(to)
    }

    /// The transport could not reach `id`: stop pipelining to it and probe instead.
    pub fn report_unreachable(&mut self, id: NodeId) {
        self.raft.report_unreachable(id);
    }

    /// The transport finished (or failed) sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: NodeId, status: SnapshotStatus) {
        self.raft
            .report_snapshot(id, status == SnapshotStatus::Delivered);
    }

    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// For the application's writes while handling a `Ready`, and its snapshots/compaction.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }

    pub fn has_ready(&self) -> bool {
        let raft = &self.raft;
        raft.has_pending_work()
            || !raft.msgs.is_empty()
            || !raft.log.unstable.entries.is_empty()
            || raft.log.unstable.snapshot.is_some()
            || raft.log.has_next_committed_entries()
            || !raft.read_states.is_empty()
            || raft.hard_state() != self.prev_hard
            || (SoftState {
                leader_id: raft.lead,
                role: raft.role,
            }) != self.prev_soft
    }

    /// The next batch of work. Must be followed by `advance()` before the next call.
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.awaiting_advance.is_none(),
            "ready() called again before advance()"
        );
        self.raft.flush();
        let raft = &mut self.raft;
        let entries = raft.log.unstable.entries.clone();
        let snapshot = raft.log.unstable.snapshot.clone();
        let committed_entries = raft.log.next_committed_entries();
        let (messages, persisted_messages): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut raft.msgs)
                .into_iter()
                .partition(|m| m.kind.may_leave_before_persist());
        let hard = raft.hard_state();
        let hard_state = (hard != self.prev_hard).then_some(hard);
        let must_sync = !entries.is_empty()
            || snapshot.is_some()
            || hard.term != self.prev_hard.term
            || hard.vote != self.prev_hard.vote;
        let soft = SoftState {
            leader_id: raft.lead,
            role: raft.role,
        };
        let soft_state = (soft != self.prev_soft).then_some(soft);
        self.prev_hard = hard;
        self.prev_soft = soft;
        self.awaiting_advance = Some(ReadyReceipt {
            last_entry: entries.last().map(|e| (e.index, e.term)),
            snapshot_index: snapshot.as_ref().map(|s| s.metadata.index),
            last_committed: committed_entries.last().map(|e| e.index),
            committed_payload_bytes: committed_entries.iter().map(Entry::payload_bytes).sum(),
        });
        Ready {
            soft_state,
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states: std::mem::take(&mut raft.read_states),
            must_sync,
        }
    }

    /// The application finished the last `Ready`: its writes are durable and its committed
    /// entries applied.
    pub fn advance(&mut self) {
        let receipt = self
            .awaiting_advance
            .take()
            .expect("advance() without a ready()");
        if let Some(index) = receipt.snapshot_index {
            self.raft.log.stable_snap_to(index);
            if index > self.raft.log.applied {
                self.raft.log.applied_to(index);
            }
        }
        if let Some((index, term)) = receipt.last_entry {
            self.raft.on_persisted(index, term);
        }
        if let Some(index) = receipt.last_committed {
            self.raft.on_applied(index, receipt.committed_payload_bytes);
        }
    }

    pub fn status(&self) -> Status {
        let raft = &self.raft;
        let progress = if raft.role == Role::Leader {
            raft.prs
                .progress
                .iter()
                .map(|(&id, pr)| {
                    let peer = PeerStatus {
                        matched: pr.matched,
                        next: pr.next,
                        state: pr.state,
                        is_learner: pr.is_learner,
                        recent_active: pr.recent_active,
                        inflight_msgs: pr.inflights.count(),
                    };
                    (id, peer)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: raft.id,
            hard_state: raft.hard_state(),
            soft_state: SoftState {
                leader_id: raft.lead,
                role: raft.role,
            },
            applied: raft.log.applied,
            is_learner: raft.is_learner,
            conf_state: raft.conf_state(),
            progress,
            lead_transferee: (raft.lead_transferee != NONE).then_some(raft.lead_transferee),
        }
    }

    #[cfg(test)]
    pub(crate) fn raft(&self) -> &Raft<S> {
        &self.raft
    }
}
