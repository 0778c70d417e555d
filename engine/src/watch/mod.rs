//! etcd's watchable store, beside the store rather than around it: the watchers of one member,
//! which revision each has seen, and the delivery of every write's events to them.
//!
//! Owns: watcher registration (one key, a range or every key from one on; a start revision;
//! prev_kv; the NOPUT/NODELETE filters), the synced / unsynced / victim states, catching unsynced
//! watchers up from the revision backend, the compacted answer, and encoding each event once for
//! all of its watchers ([`SharedEvent`]).
//!
//! Must never: block the writer. Delivery is a `try_send` into a bounded [`WatchSink`]; a full
//! sink turns the watcher into a victim whose batch is retried by [`WatchHub::sync`], as etcd's
//! victim loop does. It owns no thread and no clock: the apply loop calls [`WatchHub::collect`]
//! after each write and [`WatchHub::flush`] after a run of them (or [`WatchHub::notify`], both), and the server calls [`WatchHub::sync`] periodically (etcd: every 100 ms)
//! while [`WatchHub::needs_sync`] says there is catching up to do.
//!
//! ```text
//!  watch(start = 0 or > current) ──> synced ──notify: sink full──> victim
//!  watch(start <= current) ──> unsynced ──sync: caught up──> synced      │
//!          ^                        │ sync: start < compacted            │ sync: retry ok
//!          └────────────────────────┼──────────── (behind) <─────────────┘
//!                                   └──> compacted answer, watcher removed
//!  restore(new store): synced ──> unsynced, next revision kept (etcd's watchableStore.Restore)
//! ```

mod event;
mod hub;

pub use event::{SharedEvent, WatchBatch};
pub use hub::{
    SendError, WatchHub, WatchSink, WatchSpec, WatcherId, EVENT_REVISIONS_PER_SYNC_MAX,
    WATCHERS_PER_SYNC_MAX,
};

#[cfg(test)]
mod tests;
