//! The consensus core: roles, terms, elections, replication, commit, ReadIndex, leadership
//! transfer and configuration switches. Inputs are messages, ticks and local requests; outputs
//! are queued messages and log changes that `RawNode` turns into a `Ready`. No I/O, no clock.

use crate::confchange;
use crate::error::{ConfChangeError, ConfigError, ProposalError, StorageError};
use crate::message::{
    ConfChange, ConfState, Entry, EntryData, HardState, Message, MessageType, NodeId, ReadState,
    NONE,
};
use crate::progress::ProgressState;
use crate::quorum::VoteResult;
use crate::raft_log::RaftLog;
use crate::read_only::{decode_round, encode_round, ReadOnly, ReadOnlyOption, ReadRequest};
use crate::rng::Rng;
use crate::storage::Storage;
use crate::tracker::{ProgressMap, ProgressTracker, TrackerConfig};

/// Vote requests carrying this context come from a leadership transfer and bypass the lease.
const TRANSFER_CONTEXT: &[u8] = b"transfer";

/// Ticks of safety margin a lease keeps before the followers' own lease can expire.
const LEASE_MARGIN_TICKS: u64 = 2;

/// A rule the simulator's self-test breaks on purpose to prove the checkers can fail.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokenRule {
    /// Grant every vote request whose log is up to date, even after voting for someone else.
    VoteTwicePerTerm,
    /// The leader commits what it has persisted itself, without waiting for a quorum.
    CommitWithoutQuorum,
    /// The leader answers reads at once, without confirming it is still the leader.
    ReadWithoutQuorumCheck,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// A follower campaigns after a random timeout in `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u64,
    pub heartbeat_ticks: u64,
    /// The index the application has already applied (restart); 0 for none.
    pub applied: u64,
    /// Entry bytes per append message (at least one entry is always sent).
    pub msg_bytes_max: u64,
    /// Append messages in flight per follower while replicating (pipelining window).
    pub inflight_msgs_max: usize,
    /// Entry bytes in flight per follower; 0 for no byte bound.
    pub inflight_bytes_max: u64,
    /// Payload bytes the leader accepts before they commit; 0 for no bound.
    pub uncommitted_bytes_max: u64,
    /// Bytes of committed entries per `Ready`.
    pub committed_bytes_max_per_ready: u64,
    /// Reads waiting for a heartbeat round on the leader.
    pub pending_reads_max: usize,
    /// A leader steps down when it has not heard from a quorum for an election timeout, and
    /// followers that hear from a leader ignore vote requests for that long.
    pub check_quorum: bool,
    /// Campaign only after a pre-vote round shows an election could be won (so a partitioned
    /// node does not inflate terms and disrupt the cluster when it returns).
    pub pre_vote: bool,
    pub read_only: ReadOnlyOption,
    /// Seeds the randomized election timeout; give each node its own.
    pub seed: u64,
    #[cfg(test)]
    pub broken_rule: Option<BrokenRule>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: NONE,
            election_ticks: 10,
            heartbeat_ticks: 1,
            applied: 0,
            msg_bytes_max: 1 << 20,
            inflight_msgs_max: 256,
            inflight_bytes_max: 0,
            uncommitted_bytes_max: 0,
            committed_bytes_max_per_ready: 16 << 20,
            pending_reads_max: 4096,
            check_quorum: true,
            pre_vote: true,
            read_only: ReadOnlyOption::Safe,
            seed: 0,
            #[cfg(test)]
            broken_rule: None,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            (self.id == NONE, "id must not be 0"),
            (
                self.heartbeat_ticks == 0,
                "heartbeat_ticks must be positive",
            ),
            (
                self.election_ticks <= self.heartbeat_ticks,
                "election_ticks must exceed heartbeat_ticks",
            ),
            (
                self.inflight_msgs_max == 0,
                "inflight_msgs_max must be positive",
            ),
            (
                self.pending_reads_max == 0,
                "pending_reads_max must be positive",
            ),
            (
                self.read_only == ReadOnlyOption::LeaseBased && !self.check_quorum,
                "lease-based reads require check_quorum",
            ),
        ];
        match checks.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(ConfigError::Invalid(why)),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CampaignKind {
    PreElection,
    Election,
    Transfer,
}

pub(crate) struct Raft<S: Storage> {
    pub id: NodeId,
    pub term: u64,
    pub vote: NodeId,
    pub log: RaftLog<S>,
    pub prs: ProgressTracker,
    pub role: Role,
    pub is_learner: bool,
    pub msgs: Vec<Message>,
    pub lead: NodeId,
    pub lead_transferee: NodeId,
    /// Index of the latest configuration change the leader appended; no new change is accepted
    /// until it is applied. A new leader sets it to its last index, so it must commit an entry
    /// of its own term first (the fix for the single-server change bug).
    pub pending_conf_index: u64,
    uncommitted_bytes: u64,
    read_only: ReadOnly,
    pub read_states: Vec<ReadState>,
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    /// Ticks since the node started: the lease clock.
    tick_count: u64,
    /// With lease reads, a (re)started node refuses votes for one election timeout, as if a
    /// leader had just been heard: before a crash it may have backed a leader's lease.
    start_guard: bool,
    /// Set once this leader sent TimeoutNow: the target's forced election ignores followers'
    /// leases, so ours can no longer be trusted this term.
    lease_revoked: bool,
    /// Proposals arrived since the last `Ready`: send them in one append per follower.
    bcast_pending: bool,
    cfg: Config,
    rng: Rng,
}

impl<S: Storage> Raft<S> {
    pub fn new(cfg: Config, storage: S) -> Result<Raft<S>, ConfigError> {
        cfg.validate()?;
        let state = storage.initial_state()?;
        let log = RaftLog::new(storage, cfg.committed_bytes_max_per_ready)?;
        let mut raft = Raft {
            id: cfg.id,
            term: 0,
            vote: NONE,
            log,
            prs: ProgressTracker::new(cfg.inflight_msgs_max, cfg.inflight_bytes_max),
            role: Role::Follower,
            is_learner: false,
            msgs: Vec::new(),
            lead: NONE,
            lead_transferee: NONE,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            read_only: ReadOnly::new(cfg.pending_reads_max),
            read_states: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            tick_count: 0,
            start_guard: cfg.read_only == ReadOnlyOption::LeaseBased,
            lease_revoked: false,
            bcast_pending: false,
            rng: Rng::new(cfg.seed ^ cfg.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            cfg,
        };
        let last_index = raft.log.last_index();
        raft.prs.restore(&state.conf_state, last_index + 1);
        raft.is_learner = raft
            .prs
            .progress
            .get(&raft.id)
            .is_some_and(|pr| pr.is_learner);
        let hs = state.hard_state;
        if hs.commit > last_index {
            return Err(ConfigError::CommitOutOfRange {
                commit: hs.commit,
                last_index,
            });
        }
        raft.log.commit_to(hs.commit);
        raft.term = hs.term;
        raft.vote = hs.vote;
        let applied = raft.cfg.applied;
        if applied > raft.log.committed {
            // Applying beyond commit is impossible; the application's index is corrupt.
            return Err(ConfigError::AppliedOutOfRange {
                applied,
                commit: raft.log.committed,
            });
        }
        if applied > raft.log.applied {
            raft.log.applied_to(applied);
        }
        let term = raft.term;
        raft.become_follower(term, NONE);
        Ok(raft)
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub fn conf_state(&self) -> ConfState {
        self.prs.config.to_conf_state()
    }

    pub fn has_pending_work(&self) -> bool {
        self.bcast_pending
            || (self.role == Role::Leader
                && self.read_only.has_unassigned()
                && !self.read_only.round_in_flight()
                && self.committed_entry_in_current_term())
    }

    // ---- sending ----

    fn send(&mut self, mut m: Message) {
        m.from = self.id;
        match m.kind {
            MessageType::Vote
            | MessageType::VoteResp
            | MessageType::PreVote
            | MessageType::PreVoteResp => {
                // Vote traffic names its own term: pre-votes ask about a future term.
                assert!(m.term != 0, "{:?} without a term", m.kind);
            }
            _ => m.term = self.term,
        }
        self.msgs.push(m);
    }

    fn send_append(&mut self, to: NodeId) {
        self.maybe_send_append(to, true);
    }

    /// Sends the follower what it is missing (entries, or a snapshot when they are compacted).
    /// Returns whether a message went out.
    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.prs.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let recent_active = pr.recent_active;
        let prev_term = self.log.term(next - 1);
        let entries = self.log.entries_from(next, self.cfg.msg_bytes_max);
        if let (Ok(log_term), Ok(entries)) = (prev_term, entries) {
            if entries.is_empty() && !send_if_empty {
                return false;
            }
            let pr = self.prs.progress.get_mut(&to).expect("checked above");
            if let Some(last) = entries.last() {
                match pr.state {
                    ProgressState::Replicate => {
                        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
                        pr.optimistic_update(last.index);
                        pr.inflights.add(last.index, bytes);
                    }
                    ProgressState::Probe => pr.probe_sent = true,
                    ProgressState::Snapshot => unreachable!("paused in snapshot state"),
                }
            }
            let commit = self.log.committed;
            self.send(Message {
                kind: MessageType::App,
                to,
                index: next - 1,
                log_term,
                entries,
                commit,
                ..Message::default()
            });
            return true;
        }
        // The entries are compacted: only a snapshot can catch the follower up.
        if !recent_active {
            return false;
        }
        let snapshot = match self.log.snapshot() {
            Ok(s) => s,
            Err(StorageError::SnapshotTemporarilyUnavailable) => return false,
            Err(e) => panic!("leader cannot read its snapshot: {e}"),
        };
        assert!(
            snapshot.metadata.index > 0,
            "need a snapshot for {to} but the snapshot is empty"
        );
        self.prs
            .progress
            .get_mut(&to)
            .expect("checked above")
            .become_snapshot(snapshot.metadata.index);
        self.send(Message {
            kind: MessageType::Snap,
            to,
            snapshot: Some(snapshot),
            ..Message::default()
        });
        true
    }

    fn peers(&self) -> Vec<NodeId> {
        self.prs
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    fn bcast_append(&mut self) {
        for id in self.peers() {
            self.send_append(id);
        }
    }

    /// Sends a heartbeat to every follower. Each broadcast is a ReadIndex round; reads waiting
    /// at this moment join it.
    fn bcast_heartbeat(&mut self) {
        // Reads may take the commit index only once it covers every earlier leader's entries.
        let reads_commit = self
            .committed_entry_in_current_term()
            .then_some(self.log.committed);
        let round = self.read_only.start_round(self.tick_count, reads_commit);
        let context = encode_round(round);
        for id in self.peers() {
            let commit = self.prs.progress[&id].matched.min(self.log.committed);
            self.send(Message {
                kind: MessageType::Heartbeat,
                to: id,
                commit,
                context: context.clone(),
                ..Message::default()
            });
        }
        // A single voter confirms its own rounds.
        self.confirm_read_rounds();
    }

    // ---- role changes ----

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = NONE;
        }
        self.lead = NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self
            .rng
            .range(self.cfg.election_ticks, 2 * self.cfg.election_ticks);
        self.lead_transferee = NONE;
        self.prs.reset_votes();
        let next = self.log.last_index() + 1;
        let persisted = self.log.persisted;
        let ids: Vec<NodeId> = self.prs.progress.keys().copied().collect();
        for id in ids {
            let is_learner = self.prs.progress[&id].is_learner;
            let mut pr = self.prs.new_progress(next, is_learner);
            pr.recent_active = false;
            if id == self.id {
                pr.matched = persisted;
            }
            self.prs.progress.insert(id, pr);
        }
        self.pending_conf_index = 0;
        self.uncommitted_bytes = 0;
        self.read_only.reset();
        self.bcast_pending = false;
        self.lease_revoked = false;
    }

    pub fn become_follower(&mut self, term: u64, lead: NodeId) {
        self.reset(term);
        self.lead = lead;
        self.role = Role::Follower;
    }

    fn become_pre_candidate(&mut self) {
        assert!(
            self.role != Role::Leader,
            "leader cannot become pre-candidate"
        );
        // Term and vote stay: a pre-election changes no durable state.
        self.prs.reset_votes();
        self.lead = NONE;
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert!(self.role != Role::Leader, "leader cannot become candidate");
        self.reset(self.term + 1);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert!(
            self.role != Role::Follower,
            "follower cannot become leader without an election"
        );
        self.reset(self.term);
        self.lead = self.id;
        self.role = Role::Leader;
        if let Some(pr) = self.prs.progress.get_mut(&self.id) {
            pr.recent_active = true;
        }
        self.pending_conf_index = self.log.last_index();
        // An empty entry of the new term: committing it commits everything before it.
        let empty = Entry::normal(0, 0, Vec::new());
        self.append_entries(vec![empty])
            .expect("the empty entry is never refused");
    }

    // ---- elections ----

    pub fn promotable(&self) -> bool {
        self.prs
            .progress
            .get(&self.id)
            .is_some_and(|pr| !pr.is_learner)
            && self.log.unstable.snapshot.is_none()
    }

    fn has_unapplied_conf_change(&self) -> bool {
        if self.log.applied >= self.log.committed {
            return false;
        }
        let low = (self.log.applied + 1).max(self.log.first_index());
        let entries = self
            .log
            .slice(low, self.log.committed + 1, u64::MAX)
            .expect("unapplied committed entries are readable");
        entries.iter().any(Entry::is_conf_change)
    }

    pub fn hup(&mut self) {
        let kind = if self.cfg.pre_vote {
            CampaignKind::PreElection
        } else {
            CampaignKind::Election
        };
        self.hup_with(kind);
    }

    fn hup_with(&mut self, kind: CampaignKind) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        // The configuration we would campaign in may be about to change.
        if self.has_unapplied_conf_change() {
            return;
        }
        self.campaign(kind);
    }

    fn campaign(&mut self, kind: CampaignKind) {
        let (request, term) = if kind == CampaignKind::PreElection {
            self.become_pre_candidate();
            (MessageType::PreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::Vote, self.term)
        };
        match self.poll(self.id, true) {
            VoteResult::Won if kind == CampaignKind::PreElection => {
                return self.campaign(CampaignKind::Election)
            }
            VoteResult::Won => return self.become_leader(),
            _ => {}
        }
        let context = if kind == CampaignKind::Transfer {
            TRANSFER_CONTEXT.to_vec()
        } else {
            Vec::new()
        };
        let (index, log_term) = (self.log.last_index(), self.log.last_term());
        for id in self.prs.config.voters.ids() {
            if id != self.id {
                self.send(Message {
                    kind: request,
                    to: id,
                    term,
                    index,
                    log_term,
                    context: context.clone(),
                    ..Message::default()
                });
            }
        }
    }

    fn poll(&mut self, id: NodeId, granted: bool) -> VoteResult {
        self.prs.record_vote(id, granted);
        self.prs.tally_votes()
    }

    // ---- ticks ----

    pub fn tick(&mut self) {
        self.tick_count += 1;
        if self.role == Role::Leader {
            self.tick_heartbeat();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.start_guard = false;
        }
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup();
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                if !self.prs.quorum_active(self.id) {
                    let term = self.term;
                    self.become_follower(term, NONE);
                    return;
                }
                let self_id = self.id;
                for (id, pr) in self.prs.progress.iter_mut() {
                    pr.recent_active = *id == self_id;
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = NONE;
        }
        self.maybe_auto_leave();
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    // ---- the message handler ----

    pub fn step(&mut self, m: Message) {
        if m.term > self.term {
            if matches!(m.kind, MessageType::Vote | MessageType::PreVote) {
                let forced = m.context == TRANSFER_CONTEXT;
                let in_lease = self.cfg.check_quorum
                    && (self.lead != NONE || self.start_guard)
                    && self.election_elapsed < self.cfg.election_ticks;
                if !forced && in_lease {
                    // We heard from a leader recently: do not help depose it.
                    return;
                }
            }
            match m.kind {
                // A pre-vote changes nobody's term; a granted pre-vote response carries the
                // future term we asked about.
                MessageType::PreVote => {}
                MessageType::PreVoteResp if !m.reject => {}
                MessageType::App | MessageType::Heartbeat | MessageType::Snap => {
                    self.become_follower(m.term, m.from)
                }
                _ => self.become_follower(m.term, NONE),
            }
        } else if m.term < self.term {
            if (self.cfg.check_quorum || self.cfg.pre_vote)
                && matches!(m.kind, MessageType::App | MessageType::Heartbeat)
            {
                // A stale leader (perhaps cut off and unable to learn the new term otherwise,
                // since pre-vote never raises terms) learns our term from this response.
                self.send(Message::new(MessageType::AppResp, m.from));
            } else if m.kind == MessageType::PreVote {
                let term = self.term;
                self.send(Message {
                    kind: MessageType::PreVoteResp,
                    to: m.from,
                    term,
                    reject: true,
                    ..Message::default()
                });
            }
            return;
        }

        match m.kind {
            MessageType::Vote | MessageType::PreVote => self.handle_vote_request(m),
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    fn handle_vote_request(&mut self, m: Message) {
        let can_vote = self.vote == m.from
            || (self.vote == NONE && self.lead == NONE)
            || (m.kind == MessageType::PreVote && m.term > self.term);
        #[cfg(test)]
        let can_vote = can_vote || self.cfg.broken_rule == Some(BrokenRule::VoteTwicePerTerm);
        let response = m.kind.vote_response();
        if can_vote && self.log.is_up_to_date(m.index, m.log_term) {
            self.send(Message {
                kind: response,
                to: m.from,
                term: m.term,
                ..Message::default()
            });
            if m.kind == MessageType::Vote {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            let term = self.term;
            self.send(Message {
                kind: response,
                to: m.from,
                term,
                reject: true,
                ..Message::default()
            });
        }
    }

    fn step_leader(&mut self, m: Message) {
        match m.kind {
            MessageType::AppResp => self.handle_append_response(m),
            MessageType::HeartbeatResp => self.handle_heartbeat_response(m),
            MessageType::ReadIndex => {
                // Forwarded reads that do not fit are dropped; the follower's caller times out.
                let _ = self.read_index(m.context, m.from);
            }
            _ => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        let my_response = if self.role == Role::PreCandidate {
            MessageType::PreVoteResp
        } else {
            MessageType::VoteResp
        };
        match m.kind {
            MessageType::App => {
                self.become_follower(m.term, m.from);
                self.handle_append_entries(m);
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::Snap => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            kind if kind == my_response => match self.poll(m.from, !m.reject) {
                VoteResult::Won if self.role == Role::PreCandidate => {
                    self.campaign(CampaignKind::Election)
                }
                VoteResult::Won => {
                    self.become_leader();
                    self.bcast_append();
                }
                VoteResult::Lost => {
                    let term = self.term;
                    self.become_follower(term, NONE);
                }
                VoteResult::Pending => {}
            },
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.kind {
            MessageType::App => {
                self.heard_from_leader(m.from);
                self.handle_append_entries(m);
            }
            MessageType::Heartbeat => {
                self.heard_from_leader(m.from);
                self.handle_heartbeat(m);
            }
            MessageType::Snap => {
                self.heard_from_leader(m.from);
                self.handle_snapshot(m);
            }
            MessageType::TimeoutNow => self.hup_with(CampaignKind::Transfer),
            MessageType::ReadIndexResp => self.read_states.push(ReadState {
                index: m.index,
                request_ctx: m.context,
            }),
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.lead = leader;
    }

    // ---- follower side of replication ----

    fn handle_append_entries(&mut self, m: Message) {
        if m.index < self.log.committed {
            let committed = self.log.committed;
            self.send(Message {
                kind: MessageType::AppResp,
                to: m.from,
                index: committed,
                ..Message::default()
            });
            return;
        }
        if let Some(last_index) = self
            .log
            .maybe_append(m.index, m.log_term, m.commit, &m.entries)
        {
            self.send(Message {
                kind: MessageType::AppResp,
                to: m.from,
                index: last_index,
                ..Message::default()
            });
            return;
        }
        // Tell the leader where our log might match, so it can skip a whole term per round trip.
        let hint = m.index.min(self.log.last_index());
        let (reject_hint, log_term) = self.log.find_conflict_by_term(hint, m.log_term);
        self.send(Message {
            kind: MessageType::AppResp,
            to: m.from,
            index: m.index,
            reject: true,
            reject_hint,
            log_term,
            ..Message::default()
        });
    }

    fn handle_heartbeat(&mut self, m: Message) {
        // The leader sends min(our match, its commit), so this never exceeds our log.
        self.log.commit_to(m.commit);
        self.send(Message {
            kind: MessageType::HeartbeatResp,
            to: m.from,
            context: m.context,
            ..Message::default()
        });
    }

    fn handle_snapshot(&mut self, m: Message) {
        let snapshot = m.snapshot.expect("snapshot message without a snapshot");
        let index = if self.restore(snapshot) {
            self.log.last_index()
        } else {
            self.log.committed
        };
        self.send(Message {
            kind: MessageType::AppResp,
            to: m.from,
            index,
            ..Message::default()
        });
    }

    /// Installs a snapshot from the leader. Returns false if it brings nothing new.
    fn restore(&mut self, snapshot: crate::message::Snapshot) -> bool {
        let meta = &snapshot.metadata;
        if meta.index <= self.log.committed {
            return false;
        }
        if self.log.match_term(meta.index, meta.term) {
            // We already hold that entry: just fast-forward commit.
            self.log.commit_to(meta.index);
            return false;
        }
        let conf_state = meta.conf_state.clone();
        self.log.restore(snapshot);
        self.prs.restore(&conf_state, self.log.last_index() + 1);
        self.is_learner = self
            .prs
            .progress
            .get(&self.id)
            .is_some_and(|pr| pr.is_learner);
        true
    }

    // ---- leader side of replication ----

    fn handle_append_response(&mut self, m: Message) {
        let from = m.from;
        if !self.prs.progress.contains_key(&from) {
            return;
        }
        if m.reject {
            let next_probe = if m.log_term > 0 {
                self.log.find_conflict_by_term(m.reject_hint, m.log_term).0
            } else {
                m.reject_hint
            };
            let pr = self.prs.progress.get_mut(&from).expect("checked above");
            pr.recent_active = true;
            if pr.maybe_decr_to(m.index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from);
            }
            return;
        }
        let first_index = self.log.first_index();
        let pr = self.prs.progress.get_mut(&from).expect("checked above");
        pr.recent_active = true;
        let was_paused = pr.is_paused();
        if !pr.maybe_update(m.index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched + 1 >= first_index => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_le(m.index),
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else if was_paused {
            self.send_append(from);
        }
        // Fill the pipeline while the window allows.
        while self.maybe_send_append(from, false) {}
        if from == self.lead_transferee && self.prs.progress[&from].matched == self.log.last_index()
        {
            self.send_timeout_now(from);
        }
    }

    fn handle_heartbeat_response(&mut self, m: Message) {
        let from = m.from;
        let last_index = self.log.last_index();
        let Some(pr) = self.prs.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            // Acks were lost and the window stayed full: let one append through to resync.
            pr.inflights.free_first_one();
        }
        if pr.matched < last_index {
            self.send_append(from);
        }
        if let Some(round) = decode_round(&m.context) {
            self.read_only.record_ack(from, round);
            self.confirm_read_rounds();
        }
    }

    fn maybe_commit(&mut self) -> bool {
        let quorum_index = self.prs.committed();
        #[cfg(test)]
        let quorum_index = match self.cfg.broken_rule {
            Some(BrokenRule::CommitWithoutQuorum) => self
                .prs
                .progress
                .get(&self.id)
                .map_or(quorum_index, |pr| pr.matched),
            _ => quorum_index,
        };
        let term = self.term;
        self.log.maybe_commit(quorum_index, term)
    }

    /// The application persisted the log up to (`index`, `term`).
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        self.log.stable_to(index, term);
        if self.role != Role::Leader || !self.log.match_term(index, term) {
            return;
        }
        let persisted = self.log.persisted;
        let updated = self
            .prs
            .progress
            .get_mut(&self.id)
            .is_some_and(|pr| pr.maybe_update(persisted));
        if updated && self.maybe_commit() {
            self.bcast_append();
        }
    }

    /// The application applied committed entries up to `index`, freeing `payload_bytes`.
    pub fn on_applied(&mut self, index: u64, payload_bytes: u64) {
        self.log.applied_to(index);
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(payload_bytes);
        self.maybe_auto_leave();
    }

    /// Leaves a joint configuration entered with auto-leave once the change is applied. Also
    /// retried on every heartbeat tick: the proposal can be refused for a while (a leadership
    /// transfer in progress), and no further apply may come along to retry it.
    fn maybe_auto_leave(&mut self) {
        if self.role == Role::Leader
            && self.prs.config.auto_leave
            && self.log.applied >= self.pending_conf_index
        {
            // The joint configuration is in effect everywhere that matters: leave it.
            let _ = self.propose_conf_change(ConfChange::leave_joint());
        }
    }

    pub fn committed_entry_in_current_term(&self) -> bool {
        self.log
            .term(self.log.committed)
            .is_ok_and(|t| t == self.term)
    }

    /// Sends what accumulated since the last `Ready`: one append per follower for all new
    /// proposals, and a heartbeat round for reads waiting for one.
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.bcast_pending) {
            self.bcast_append();
        }
        if self.has_pending_work() {
            self.bcast_heartbeat();
        }
    }

    // ---- local requests ----

    fn append_entries(&mut self, mut entries: Vec<Entry>) -> Result<u64, ProposalError> {
        let payload_bytes: u64 = entries.iter().map(Entry::payload_bytes).sum();
        if self.cfg.uncommitted_bytes_max > 0
            && payload_bytes > 0
            && self.uncommitted_bytes + payload_bytes > self.cfg.uncommitted_bytes_max
        {
            return Err(ProposalError::Dropped {
                reason: "too many uncommitted bytes",
            });
        }
        self.uncommitted_bytes += payload_bytes;
        let last = self.log.last_index();
        for (i, e) in entries.iter_mut().enumerate() {
            e.term = self.term;
            e.index = last + 1 + i as u64;
        }
        Ok(self.log.append(&entries))
    }

    fn check_can_propose(&self) -> Result<(), ProposalError> {
        if self.role != Role::Leader {
            return Err(ProposalError::NotLeader {
                leader_hint: (self.lead != NONE).then_some(self.lead),
            });
        }
        if self.lead_transferee != NONE {
            return Err(ProposalError::Dropped {
                reason: "leadership transfer in progress",
            });
        }
        if !self.prs.progress.contains_key(&self.id) {
            return Err(ProposalError::Dropped {
                reason: "leader was removed from the configuration",
            });
        }
        Ok(())
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, ProposalError> {
        self.check_can_propose()?;
        let index = self.append_entries(vec![Entry::normal(0, 0, data)])?;
        self.bcast_pending = true;
        Ok(index)
    }

    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<u64, ProposalError> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied {
            return Err(ProposalError::ConfChangeRefused {
                reason: "a configuration change is not yet applied",
            });
        }
        // The fix for single-server changes: a leader changes membership only once it has
        // committed an entry of its own term, so a change an earlier leader left uncommitted can
        // never combine with this one into two overlapping majorities.
        if !self.committed_entry_in_current_term() {
            return Err(ProposalError::ConfChangeRefused {
                reason: "the leader has not committed an entry in its term yet",
            });
        }
        let joint = self.prs.config.voters.is_joint();
        if joint && !cc.is_leave_joint() {
            return Err(ProposalError::ConfChangeRefused {
                reason: "must leave the joint configuration first",
            });
        }
        if let Err(e) = confchange::apply(&self.prs, &cc, self.log.last_index()) {
            return Err(ProposalError::ConfChangeRefused {
                reason: conf_change_error_reason(&e),
            });
        }
        let index = self.append_entries(vec![Entry {
            term: 0,
            index: 0,
            data: EntryData::ConfChange(cc),
        }])?;
        self.pending_conf_index = index;
        self.bcast_pending = true;
        Ok(index)
    }

    /// A linearizable read: `ctx` comes back in a `ReadState` (here, or on the follower that
    /// forwarded it as `from`) once it is safe to serve.
    pub fn read_index(&mut self, ctx: Vec<u8>, from: NodeId) -> Result<(), ProposalError> {
        if self.role != Role::Leader {
            if self.lead == NONE {
                return Err(ProposalError::NotLeader { leader_hint: None });
            }
            let lead = self.lead;
            self.send(Message {
                kind: MessageType::ReadIndex,
                to: lead,
                context: ctx,
                ..Message::default()
            });
            return Ok(());
        }
        if self.lease_valid() {
            let index = self.log.committed;
            self.respond_read(ReadRequest {
                ctx,
                from,
                round: 0,
                index,
            });
            return Ok(());
        }
        if !self.read_only.add(ctx, from) {
            return Err(ProposalError::Dropped {
                reason: "too many pending reads",
            });
        }
        Ok(())
    }

    /// The lease: a quorum answered a heartbeat sent at tick T, so none of them will vote for
    /// another leader before T + election timeout (they refuse votes while they hear from us).
    fn lease_valid(&self) -> bool {
        #[cfg(test)]
        if self.cfg.broken_rule == Some(BrokenRule::ReadWithoutQuorumCheck)
            && self.role == Role::Leader
        {
            return self.committed_entry_in_current_term();
        }
        self.cfg.read_only == ReadOnlyOption::LeaseBased
            && self.role == Role::Leader
            && self.lead_transferee == NONE
            && !self.lease_revoked
            && self.committed_entry_in_current_term()
            && self.read_only.confirmed_sent_tick.is_some_and(|sent| {
                self.tick_count + LEASE_MARGIN_TICKS < sent + self.cfg.election_ticks
            })
    }

    fn confirm_read_rounds(&mut self) {
        let started = self.read_only.round_started;
        let self_id = self.id;
        let read_only = &self.read_only;
        let confirmed = self.prs.config.voters.committed_index(|id| {
            if id == self_id {
                started
            } else {
                read_only.acked(id)
            }
        });
        if confirmed == u64::MAX || confirmed == 0 {
            return;
        }
        for req in self.read_only.confirm(confirmed) {
            self.respond_read(req);
        }
    }

    fn respond_read(&mut self, req: ReadRequest) {
        if req.from == self.id || req.from == NONE {
            self.read_states.push(ReadState {
                index: req.index,
                request_ctx: req.ctx,
            });
        } else {
            self.send(Message {
                kind: MessageType::ReadIndexResp,
                to: req.from,
                index: req.index,
                context: req.ctx,
                ..Message::default()
            });
        }
    }

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposalError> {
        if self.role != Role::Leader {
            return Err(ProposalError::NotLeader {
                leader_hint: (self.lead != NONE).then_some(self.lead),
            });
        }
        if to == self.id || to == self.lead_transferee {
            return Ok(());
        }
        match self.prs.progress.get(&to) {
            Some(pr) if !pr.is_learner => {}
            _ => return Err(ProposalError::InvalidTransferTarget(to)),
        }
        // The transfer must finish within an election timeout or it is abandoned.
        self.election_elapsed = 0;
        self.lead_transferee = to;
        if self.prs.progress[&to].matched == self.log.last_index() {
            self.send_timeout_now(to);
        } else {
            self.send_append(to);
        }
        Ok(())
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.lease_revoked = true;
        self.send(Message::new(MessageType::TimeoutNow, to));
    }

    pub fn report_unreachable(&mut self, id: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.prs.progress.get_mut(&id) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    pub fn report_snapshot(&mut self, id: NodeId, delivered: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.prs.progress.get_mut(&id) else {
            return;
        };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if !delivered {
            pr.pending_snapshot = 0;
        }
        pr.become_probe();
        // Wait for the follower's answer (or a heartbeat response) before the next append.
        pr.probe_sent = true;
    }

    // ---- configuration ----

    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, ConfChangeError> {
        let (cfg, prs) = confchange::apply(&self.prs, cc, self.log.last_index())?;
        Ok(self.switch_to_config(cfg, prs))
    }

    fn switch_to_config(&mut self, cfg: TrackerConfig, prs: ProgressMap) -> ConfState {
        self.prs.config = cfg;
        self.prs.progress = prs;
        let member = self.prs.progress.get(&self.id).map(|pr| pr.is_learner);
        self.is_learner = member == Some(true);
        let cs = self.conf_state();
        if self.role != Role::Leader {
            return cs;
        }
        if member != Some(false) {
            self.step_down_after_removal();
            return cs;
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else {
            // Probe new members now rather than at the next heartbeat.
            for id in self.peers() {
                self.maybe_send_append(id, false);
            }
        }
        if self.lead_transferee != NONE && !self.prs.config.voters.contains(self.lead_transferee) {
            self.lead_transferee = NONE;
        }
        cs
    }

    /// The leader was removed (or demoted): hand leadership to the most up-to-date voter if it
    /// has everything, so the cluster does not wait out an election timeout, and step down.
    fn step_down_after_removal(&mut self) {
        let last_index = self.log.last_index();
        let successor = self
            .prs
            .config
            .voters
            .ids()
            .into_iter()
            .filter(|&id| id != self.id)
            .max_by_key(|id| self.prs.progress.get(id).map_or(0, |pr| pr.matched));
        if let Some(to) = successor.filter(|id| {
            self.prs
                .progress
                .get(id)
                .is_some_and(|pr| pr.matched == last_index)
        }) {
            self.send_timeout_now(to);
        }
        let term = self.term;
        self.become_follower(term, NONE);
    }
}

fn conf_change_error_reason(e: &ConfChangeError) -> &'static str {
    match e {
        ConfChangeError::AlreadyJoint => "configuration is already joint",
        ConfChangeError::NotJoint => "configuration is not joint",
        ConfChangeError::NoVoters => "change would remove every voter",
        ConfChangeError::TooManyVoterChanges(_) => "a simple change may alter at most one voter",
        ConfChangeError::ZeroNodeId => "node id 0 is reserved",
    }
}
