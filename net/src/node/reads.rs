//! Ranges served on the core that received them, from the applied state the raft core shares.
//!
//! The raft core is the applied state's only writer. It takes [`SharedApplier`]'s write lock
//! for one change at a time (an entry's apply, an overlay commit to the tree, a snapshot
//! install; a checkpoint's sync and a defragment's copy need only the read lock) and never
//! across an await, so a reader on another core waits at most that long, and one on the raft
//! core's own core never finds it held.
//!
//! A Range fixes its revision under the read lock ([`Applier::begin_range`]: the newest applied
//! state), then reads in slices of at most [`READ_SLICE`], letting go of the lock and of its
//! core between two slices. The writer may apply, commit the overlay to the tree, compact,
//! defragment or install a snapshot in between; the read still answers at its own revision
//! (`basalt_engine::mvcc::RangeRead`), or with etcd's compacted error once a compaction passed
//! it. A serializable Range never reaches the raft core; a linearizable one first asks it for a
//! read index and waits for apply to reach it (`Command::ReadIndex`), then reads here, unless
//! this member is a lone voter leading with an entry of its term applied
//! (`Published::lone_leader_reads`): then every acknowledged write is already applied, and it
//! reads at once.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use basalt_engine::apply::Applier;
use basalt_proto::etcdserverpb::{RangeRequest, RangeResponse};

use crate::status::Status;

/// Read work done under the read lock before the read lets the lock and its core go: the
/// longest a write waits for a reader on another core, and a request on this core for a LIST.
const READ_SLICE: Duration = Duration::from_micros(200);
/// A slice checks the clock after each chunk of this many steps
/// (`basalt_engine::mvcc::RECORD_READ_STEPS`).
const READ_CHUNK_STEPS: usize = 256;
/// A reader that finds the writer in the middle of a change lets its core run other work for
/// this long, trying again between polls; a change taking longer (an overlay commit to the
/// tree, a snapshot install) is waited for blocking the thread, as the raft core's own core
/// waits for it.
const WRITER_SPIN: Duration = Duration::from_micros(100);

/// The applied state (MVCC store, lessor, auth, members) behind a lock whose only writer is the
/// raft core.
pub(super) struct SharedApplier(RwLock<Applier>);

impl SharedApplier {
    pub(super) fn new(applier: Applier) -> Self {
        SharedApplier(RwLock::new(applier))
    }

    /// Blocks while the writer changes the state; on the raft core (the writer), never: a
    /// reader elsewhere holds the lock for one slice at most. Never held across an await, nor
    /// while taking [`SharedApplier::write`].
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Applier> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// For the raft core: waits for readers on other cores to end their slice. Never held
    /// across an await.
    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Applier> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// For client cores (see [`WRITER_SPIN`]).
    async fn read_when_free(&self) -> RwLockReadGuard<'_, Applier> {
        let started = Instant::now();
        loop {
            match self.0.try_read() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) if started.elapsed() < WRITER_SPIN => {
                    glommio::executor().yield_task_queue_now().await;
                }
                Err(TryLockError::WouldBlock) => return self.read(),
            }
        }
    }

    /// etcd's Range at the newest applied revision, read in slices (see the module docs). Auth
    /// is the caller's to check; `validate_range` runs here.
    pub(super) async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        let mut read = self.read_when_free().await.begin_range(req)?;
        loop {
            {
                let applier = self.read_when_free().await;
                let started = Instant::now();
                loop {
                    let answer = applier
                        .store()
                        .continue_range(&mut read, READ_CHUNK_STEPS)?;
                    if let Some(response) = answer {
                        return Ok(response);
                    }
                    if started.elapsed() >= READ_SLICE {
                        break;
                    }
                }
            }
            // Its task queue yields: the executor polls the network and the disk, and runs the
            // raft core when it lives here, before the next slice.
            glommio::executor().yield_task_queue_now().await;
        }
    }
}
