//! The plain data that crosses the boundary of the state machine: log entries, messages between
//! peers, hard state, configuration and snapshots. No behaviour lives here; the server encodes
//! these structs itself (rkyv) when they go to disk or to a peer.

/// A node id. `NONE` (0) means "no node" (no leader known, no vote cast).
pub type NodeId = u64;

/// The id that means "nobody".
pub const NONE: NodeId = 0;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryData {
    /// Application bytes. An empty vector is the no-op a new leader appends.
    Normal(Vec<u8>),
    /// A membership change; the application applies it with `RawNode::apply_conf_change`.
    ConfChange(ConfChange),
}

/// One slot of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub data: EntryData,
}

/// Fixed per-entry cost counted by size limits, so that empty entries are never free.
const ENTRY_OVERHEAD_BYTES: u64 = 16;

impl Entry {
    pub fn normal(term: u64, index: u64, data: Vec<u8>) -> Entry {
        Entry {
            term,
            index,
            data: EntryData::Normal(data),
        }
    }

    /// Bytes this entry counts for in message, in-flight and uncommitted-size limits.
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.payload_bytes()
    }

    /// Bytes of the payload alone (zero for the leader's no-op).
    pub fn payload_bytes(&self) -> u64 {
        match &self.data {
            EntryData::Normal(data) => data.len() as u64,
            EntryData::ConfChange(cc) => 1 + 9 * cc.changes.len() as u64 + cc.context.len() as u64,
        }
    }

    pub fn is_conf_change(&self) -> bool {
        matches!(self.data, EntryData::ConfChange(_))
    }
}

/// State that must be durable before the messages that depend on it leave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: NodeId,
    pub commit: u64,
}

/// Cluster membership as stored in snapshots. `voters_outgoing` is non-empty only while a joint
/// configuration is in effect; `learners_next` are voters of the outgoing half that become
/// learners when the joint configuration is left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub voters_outgoing: Vec<NodeId>,
    pub learners_next: Vec<NodeId>,
    pub auto_leave: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeKind {
    AddVoter,
    AddLearner,
    RemoveNode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConfChangeSingle {
    pub kind: ConfChangeKind,
    pub node_id: NodeId,
}

/// How a change moves between configurations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConfChangeTransition {
    /// One voter change is applied directly; anything larger goes through a joint configuration
    /// that the leader leaves by itself once it is applied.
    #[default]
    Auto,
    /// Always joint; the leader leaves it by itself.
    JointImplicit,
    /// Always joint; the application must propose an empty change to leave it.
    JointExplicit,
}

/// A membership change. An empty `changes` list with `Auto` means "leave the joint configuration".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfChange {
    pub changes: Vec<ConfChangeSingle>,
    pub transition: ConfChangeTransition,
    /// Opaque to raft: the application's description of the change (e.g. the member being
    /// added with its addresses), replicated with it.
    pub context: Vec<u8>,
}

impl ConfChange {
    pub fn single(kind: ConfChangeKind, node_id: NodeId) -> ConfChange {
        ConfChange {
            changes: vec![ConfChangeSingle { kind, node_id }],
            transition: ConfChangeTransition::Auto,
            context: Vec::new(),
        }
    }

    /// The empty change that leaves a joint configuration.
    pub fn leave_joint() -> ConfChange {
        ConfChange::default()
    }

    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether applying this change enters a joint configuration (and if so, whether the
    /// leader leaves it automatically).
    pub(crate) fn enters_joint(&self) -> Option<bool> {
        let change_count = self.changes.len();
        match self.transition {
            ConfChangeTransition::Auto if change_count > 1 => Some(true),
            ConfChangeTransition::Auto => None,
            ConfChangeTransition::JointImplicit => Some(true),
            ConfChangeTransition::JointExplicit => Some(false),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMetadata {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// The application's state up to `metadata.index`, as opaque bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub metadata: SnapshotMetadata,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageType {
    /// Leader → follower: entries after (`index`, `log_term`), and the leader's commit.
    #[default]
    App,
    /// Follower → leader: `index` is the last matching index, or the rejected `index` with
    /// (`reject_hint`, `log_term`) naming where the follower's log may match.
    AppResp,
    Vote,
    VoteResp,
    PreVote,
    PreVoteResp,
    /// Leader → follower: keeps leadership, carries commit and a ReadIndex round in `context`.
    Heartbeat,
    HeartbeatResp,
    /// Leader → follower: install `snapshot`.
    Snap,
    /// Leader → transfer target: campaign now, without waiting for a timeout or pre-vote.
    TimeoutNow,
    /// Follower → leader: please confirm a read with context `context`.
    ReadIndex,
    /// Leader → follower: the read `context` may be served once `index` is applied.
    ReadIndexResp,
}

impl MessageType {
    /// Messages a leader sends that depend on nothing the sender still has to persist: they may
    /// leave while the sender's own disk write is in progress. Everything else (votes, vote and
    /// append responses) waits for persistence.
    pub fn may_leave_before_persist(self) -> bool {
        matches!(
            self,
            MessageType::App
                | MessageType::Heartbeat
                | MessageType::Snap
                | MessageType::TimeoutNow
                | MessageType::ReadIndexResp
        )
    }

    pub(crate) fn vote_response(self) -> MessageType {
        match self {
            MessageType::Vote => MessageType::VoteResp,
            MessageType::PreVote => MessageType::PreVoteResp,
            other => panic!("{other:?} is not a vote request"),
        }
    }
}

/// A message between peers. Fields a message type does not use are left at their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageType,
    pub to: NodeId,
    pub from: NodeId,
    pub term: u64,
    pub log_term: u64,
    pub index: u64,
    pub entries: Vec<Entry>,
    pub commit: u64,
    pub snapshot: Option<Snapshot>,
    pub reject: bool,
    pub reject_hint: u64,
    pub context: Vec<u8>,
}

impl Message {
    pub fn new(kind: MessageType, to: NodeId) -> Message {
        Message {
            kind,
            to,
            ..Message::default()
        }
    }
}

/// A confirmed linearizable read: serve the request named by `request_ctx` once the applied
/// index reaches `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub request_ctx: Vec<u8>,
}
