//! Basalt's storage: everything that keeps state, and nothing that talks to a network.
//!
//! - [`mvcc`]: etcd's multi-version key space (revisions, key index, Range/Put/DeleteRange/Txn/Compact).
//! - [`wal`]: the segmented write-ahead log, the durability point of every write.
//! - [`crypt`]: the encryption key file and AES-256-GCM sealing of blocks at rest.
//! - [`disk`]: a full device told apart from other I/O errors; the space a filesystem has left.
//! - [`apply`]: committed log entries applied to MVCC on the B+tree, with the applied index.
//! - [`bbolt`]: etcd's bbolt file format: reading etcd's snapshots and data dirs, writing snapshots etcd reads.
//! - [`btree`]: the copy-on-write B+tree file that holds MVCC revisions.
//! - [`interchange`]: etcd's buckets to Basalt's and back (snapshots, migration).
//! - [`lease`]: the lessor: leases, their keys, and the leader's expiry clock.
//! - [`auth`]: users, roles, permissions and the checks requests pass when auth is on.
//! - [`watch`]: the watchers of a store and the delivery of each write's events to them.
//!
//! This crate must never open a socket; `net` wires it to the outside world.

pub mod apply;
pub mod auth;
pub mod bbolt;
pub mod btree;
pub mod crypt;
pub mod disk;
pub mod interchange;
pub mod lease;
pub mod mvcc;
pub mod wal;
pub mod watch;
