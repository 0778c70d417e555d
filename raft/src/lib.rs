//! Raft consensus as a pure state machine: messages, ticks and proposals go in; entries to
//! persist, messages to send and committed entries to apply come out in a `Ready`. This crate
//! owns elections (pre-vote, check-quorum), pipelined replication, commit, ReadIndex and lease
//! reads, membership changes (learners, joint consensus) and snapshots. It must never do I/O,
//! read a clock, spawn a thread or depend on the rest of Basalt: the server drives it, and the
//! simulator (`sim`, built for tests) replays any run from a seed.
//!
//! What the server calls, all on `RawNode`: `tick`, `step(msg)`, `propose(data) -> index`,
//! `propose_conf_change`, `apply_conf_change` (as the entry is applied), `read_index(ctx)`,
//! `transfer_leader`, `report_unreachable`, `report_snapshot`, `status`, and the
//! `has_ready` / `ready` / `advance` loop whose contract is written in `raw_node.rs`. Snapshots
//! are the application's: it writes them into its `Storage` (see `MemStorage::create_snapshot`
//! and `compact`), and raft sends the latest one to a follower that is too far behind.
//!
//! Modules, after etcd's raft: `raft` (the core), `raw_node` (the surface), `raft_log` and
//! `log_unstable` (the log), `progress` (per-follower replication state and in-flight window),
//! `tracker` and `quorum` (configuration, majority and joint quorums), `confchange`,
//! `read_only` (ReadIndex rounds and the lease), `storage` (`Storage` and `MemStorage`).
//!
//! The loop a server runs, here for a single-node cluster:
//!
//! ```
//! use basalt_raft::{Config, ConfState, EntryData, MemStorage, RawNode};
//!
//! let storage = MemStorage::new_with_conf_state(ConfState { voters: vec![1], ..ConfState::default() });
//! let mut node = RawNode::new(Config { id: 1, ..Config::default() }, storage).unwrap();
//! node.campaign(); // a lone voter elects itself at once; others wait for ticks
//!
//! let mut applied = Vec::new();
//! let mut proposed = None;
//! for _ in 0..10 {
//!     // Every tick interval: node.tick(). Every message from a peer: node.step(msg).
//!     if proposed.is_none() && node.status().soft_state.leader_id == 1 {
//!         proposed = Some(node.propose(b"put x=1".to_vec()).unwrap());
//!     }
//!     if !node.has_ready() {
//!         continue;
//!     }
//!     let mut ready = node.ready();
//!     let _send_now = std::mem::take(&mut ready.messages); // may leave before the disk write
//!     if let Some(snapshot) = ready.snapshot.take() {
//!         node.storage_mut().apply_snapshot(snapshot).unwrap();
//!     }
//!     node.storage_mut().append(&ready.entries).unwrap();
//!     if let Some(hard_state) = ready.hard_state {
//!         node.storage_mut().set_hard_state(hard_state);
//!     }
//!     // (fdatasync here when ready.must_sync)
//!     let _send_after_sync = std::mem::take(&mut ready.persisted_messages);
//!     for entry in &ready.committed_entries {
//!         match &entry.data {
//!             EntryData::Normal(data) if !data.is_empty() => applied.push((entry.index, data.clone())),
//!             EntryData::Normal(_) => {} // a new leader's empty entry
//!             EntryData::ConfChange(cc) => {
//!                 node.apply_conf_change(cc).unwrap();
//!             }
//!         }
//!     }
//!     node.advance();
//! }
//! assert_eq!(applied, vec![(proposed.unwrap(), b"put x=1".to_vec())]);
//! ```

mod confchange;
mod error;
mod log_unstable;
mod message;
mod progress;
mod quorum;
mod raft;
mod raft_log;
mod raw_node;
mod read_only;
mod rng;
mod storage;
mod tracker;

#[cfg(test)]
mod sim;

pub use error::{ConfChangeError, ConfigError, ProposalError, StorageError};
pub use message::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, ConfState, Entry,
    EntryData, HardState, Message, MessageType, NodeId, ReadState, Snapshot, SnapshotMetadata,
    NONE,
};
pub use progress::ProgressState;
pub use raft::{Config, Role};
pub use raw_node::{PeerStatus, RawNode, Ready, SnapshotStatus, SoftState, Status};
pub use read_only::ReadOnlyOption;
pub use storage::{MemStorage, RaftState, Storage};
