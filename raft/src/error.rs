//! Typed errors of the public surface.

use crate::message::NodeId;

/// Why a storage read could not be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("requested index is compacted")]
    Compacted,
    #[error("requested index is beyond the last index")]
    Unavailable,
    #[error("snapshot is older than the one already held")]
    SnapshotOutOfDate,
    #[error("snapshot is temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
}

/// Why a proposal, read request or leadership transfer was refused. Nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    /// Only the leader accepts proposals; `leader_hint` is the leader this node knows of.
    #[error("not the leader (leader hint {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    /// The leader refused for now: a transfer is in progress, it was removed, or a queue is full.
    #[error("proposal dropped: {reason}")]
    Dropped { reason: &'static str },
    /// A configuration change is still unapplied, or the change does not fit the current
    /// configuration (leaving a joint configuration that is not joint, and the like).
    #[error("configuration change refused: {reason}")]
    ConfChangeRefused { reason: &'static str },
    #[error("leadership transfer target {0} is not a voter")]
    InvalidTransferTarget(NodeId),
}

/// Why a committed configuration change could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("configuration is already joint")]
    AlreadyJoint,
    #[error("configuration is not joint")]
    NotJoint,
    #[error("change would remove every voter")]
    NoVoters,
    #[error("a simple change may alter at most one voter, this one alters {0}")]
    TooManyVoterChanges(usize),
    #[error("node id 0 is reserved")]
    ZeroNodeId,
}

/// Why a `RawNode` could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid config: {0}")]
    Invalid(&'static str),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("hard state commit {commit} is beyond the last index {last_index}")]
    CommitOutOfRange { commit: u64, last_index: u64 },
    #[error("applied index {applied} is beyond the commit index {commit}")]
    AppliedOutOfRange { applied: u64, commit: u64 },
}
