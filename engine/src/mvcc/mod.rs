//! etcd 3.5's multi-version key space: revisions (main, sub), the key index
//! (key -> generations of revisions, ended by tombstones), and the KV requests
//! Range, Put, DeleteRange, Txn and Compact with etcd's exact results, revisions
//! and errors.
//!
//! This module owns request semantics and the key index. It never owns bytes
//! on disk: every revision's record goes through [`RevisionBackend`], whose
//! in-memory implementation ([`MemoryBackend`]) is the model the durable
//! B+tree backend is tested against. It never decides who may write: callers
//! validate a request ([`validate_put`], ...) before proposing it, and apply it
//! on the single writer.

mod error;
mod store;
mod validate;

pub use error::MvccError;
pub use store::KvStore;
pub use validate::{
    validate_compaction, validate_delete_range, validate_put, validate_range, validate_txn, Limits,
};
