//! etcd 3.5's multi-version key space: revisions (main, sub), the key index
//! (key -> generations of revisions, ended by tombstones), and the KV requests
//! Range, Put, DeleteRange, Txn and Compact with etcd 3.5.1's exact results,
//! revisions and errors.
//!
//! This module owns request semantics and the key index. It never owns bytes
//! on disk: every revision's record goes through [`RevisionBackend`], whose
//! in-memory implementation ([`MemoryBackend`]) is the model the durable
//! B+tree backend ([`BtreeBackend`]) is tested against. It never decides who may write: callers
//! validate a request ([`validate_put`], ...) before proposing it, and apply it
//! on the single writer.

mod backend;
mod btree_backend;
pub mod conformance;
mod error;
mod go_sort;
mod key_index;
mod revision;
mod store;
mod validate;

pub use backend::{MemoryBackend, MetaKey, RevisionBackend, RevisionRecord};
pub use btree_backend::{read_consistent_index, BtreeBackend, KEY_BUCKET, META_BUCKET};
pub use error::MvccError;
pub use key_index::KeyRange;
pub use revision::{Revision, REVISION_BYTES};
pub use store::{KvHash, KvStore, LeaseLookup, NoLeases, RangeRead, RECORD_READ_STEPS};
pub use validate::{
    validate_compaction, validate_delete_range, validate_put, validate_range, validate_txn, Limits,
};

#[cfg(test)]
mod tests;
