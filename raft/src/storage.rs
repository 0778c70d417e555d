//! The `Storage` trait through which raft reads the durable log, and `MemStorage`, the
//! in-memory implementation every test and the simulator use. Raft only reads storage; the
//! application writes to it while handling a `Ready`.

use crate::error::StorageError;
use crate::message::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

/// What a node finds on disk when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

/// Read access to the durable log. Indices are 1-based; `first_index() - 1` is the index of the
/// latest snapshot, whose term `term()` must still answer.
pub trait Storage {
    fn initial_state(&self) -> Result<RaftState, StorageError>;
    /// Entries in `[low, high)`, at most `bytes_max` bytes but always at least one entry.
    fn entries(&self, low: u64, high: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError>;
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    fn first_index(&self) -> Result<u64, StorageError>;
    fn last_index(&self) -> Result<u64, StorageError>;
    /// The latest snapshot, to send to a follower that is too far behind.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// Takes entries from the front of `entries` while they fit in `bytes_max`, keeping at least one.
pub(crate) fn limit_size(entries: &mut Vec<Entry>, bytes_max: u64) {
    let mut total_bytes = 0u64;
    let keep = entries
        .iter()
        .position(|e| {
            total_bytes += e.size_bytes();
            total_bytes > bytes_max
        })
        .unwrap_or(entries.len())
        .max(1);
    entries.truncate(keep);
}

/// The log in memory. `entries[0]` is a dummy holding the snapshot's index and term, so that
/// `term(first_index - 1)` answers without a special case.
#[derive(Clone, Debug)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

impl Default for MemStorage {
    fn default() -> Self {
        MemStorage::new()
    }
}

impl MemStorage {
    /// Empty storage, for a node that joins an existing cluster and waits to be sent a snapshot.
    pub fn new() -> MemStorage {
        MemStorage {
            hard_state: HardState::default(),
            snapshot: Snapshot::default(),
            entries: vec![Entry::normal(0, 0, Vec::new())],
        }
    }

    /// Storage of a founding member: a bootstrap snapshot at index 1, term 1 holding the initial
    /// configuration. Every founder must start from the same `conf_state`; members added later
    /// start from `new()` and receive this configuration inside a snapshot.
    pub fn new_with_conf_state(conf_state: ConfState) -> MemStorage {
        let mut storage = MemStorage::new();
        let snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index: 1,
                term: 1,
                conf_state,
            },
            data: Vec::new(),
        };
        storage
            .apply_snapshot(snapshot)
            .expect("fresh storage accepts any snapshot");
        storage.hard_state.term = 1;
        storage
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Sets only the commit index (a `Ready` whose hard state changed only in commit).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    fn offset(&self) -> u64 {
        self.entries[0].index
    }

    /// Appends entries, replacing any existing entries from the first new index on.
    pub fn append(&mut self, new_entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first_new) = new_entries.first() else {
            return Ok(());
        };
        if first_new.index <= self.offset() {
            // Entries at or below the snapshot are already part of it.
            return Err(StorageError::Compacted);
        }
        let last = self.offset() + self.entries.len() as u64 - 1;
        assert!(
            first_new.index <= last + 1,
            "append would leave a gap: last {last}, first new {}",
            first_new.index
        );
        self.entries
            .truncate((first_new.index - self.offset()) as usize);
        self.entries.extend_from_slice(new_entries);
        Ok(())
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = &snapshot.metadata;
        if meta.index <= self.snapshot.metadata.index && self.snapshot.metadata.index > 0 {
            return Err(StorageError::SnapshotOutOfDate);
        }
        self.entries = vec![Entry::normal(meta.term, meta.index, Vec::new())];
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.snapshot = snapshot;
        Ok(())
    }

    /// Records the application's snapshot of its state at `index` (an applied index).
    /// `conf_state` is the configuration in effect at `index`. The log is kept: `compact`
    /// drops it, usually leaving a tail so that slow followers can still catch up from entries.
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<&Snapshot, StorageError> {
        if index <= self.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        let term = self.term(index)?;
        assert!(
            index <= self.hard_state.commit,
            "snapshot at {index} beyond commit {}",
            self.hard_state.commit
        );
        self.snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(&self.snapshot)
    }

    /// Drops entries before `compact_index`; `compact_index` becomes the dummy entry.
    pub fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        if compact_index <= self.offset() {
            return Err(StorageError::Compacted);
        }
        let last = self.offset() + self.entries.len() as u64 - 1;
        assert!(
            compact_index <= last,
            "compact {compact_index} beyond last index {last}"
        );
        let snapshot_index = self.snapshot.metadata.index;
        assert!(
            compact_index <= snapshot_index,
            "compact {compact_index} beyond the snapshot at {snapshot_index} would lose entries"
        );
        self.entries
            .drain(..(compact_index - self.offset()) as usize);
        let dummy = &mut self.entries[0];
        dummy.data = crate::message::EntryData::Normal(Vec::new());
        Ok(())
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState {
            hard_state: self.hard_state,
            conf_state: self.snapshot.metadata.conf_state.clone(),
        })
    }

    fn entries(&self, low: u64, high: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.offset() {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index()? + 1 {
            return Err(StorageError::Unavailable);
        }
        let offset = self.offset();
        let mut out = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        limit_size(&mut out, bytes_max);
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let offset = self.offset();
        if index < offset {
            return Err(StorageError::Compacted);
        }
        self.entries
            .get((index - offset) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.offset() + 1)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.offset() + self.entries.len() as u64 - 1)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_with(terms: &[u64]) -> MemStorage {
        let mut s = MemStorage::new();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry::normal(t, i as u64 + 1, vec![0; 4]))
            .collect();
        s.append(&entries).unwrap();
        s.set_commit(terms.len() as u64);
        s
    }

    #[test]
    fn append_replaces_the_conflicting_suffix() {
        let mut s = storage_with(&[1, 1, 2]);
        s.append(&[Entry::normal(3, 2, vec![])]).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 3);
    }

    #[test]
    fn compacted_indices_are_reported_and_the_snapshot_term_still_answers() {
        let mut s = storage_with(&[1, 2, 3, 4]);
        s.create_snapshot(2, ConfState::default(), b"state".to_vec())
            .unwrap();
        s.compact(2).unwrap();
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(s.term(1), Err(StorageError::Compacted));
        assert_eq!(s.entries(2, 4, u64::MAX), Err(StorageError::Compacted));
        assert_eq!(s.entries(3, 5, u64::MAX).unwrap().len(), 2);
        assert_eq!(s.snapshot().unwrap().data, b"state");
    }

    #[test]
    fn entries_respect_the_byte_limit_but_return_at_least_one() {
        let s = storage_with(&[1, 1, 1, 1]);
        let one_bytes = Entry::normal(1, 1, vec![0; 4]).size_bytes();
        let cases = [
            (0, 1),
            (one_bytes, 1),
            (one_bytes * 2, 2),
            (one_bytes * 2 + 1, 2),
            (u64::MAX, 4),
        ];
        for (bytes_max, want) in cases {
            assert_eq!(
                s.entries(1, 5, bytes_max).unwrap().len(),
                want,
                "bytes_max {bytes_max}"
            );
        }
    }

    #[test]
    fn an_older_snapshot_is_refused() {
        let mut s = storage_with(&[1, 1, 1]);
        s.create_snapshot(3, ConfState::default(), vec![]).unwrap();
        let old = Snapshot {
            metadata: SnapshotMetadata {
                index: 2,
                term: 1,
                conf_state: ConfState::default(),
            },
            data: vec![],
        };
        assert_eq!(s.apply_snapshot(old), Err(StorageError::SnapshotOutOfDate));
    }
}
