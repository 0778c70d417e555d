//! The log as raft sees it: durable entries read through `Storage`, followed by the unstable
//! tail, plus the commit and apply cursors. Invariant: applied <= committed <= last_index.

use crate::error::StorageError;
use crate::log_unstable::Unstable;
use crate::message::{Entry, Snapshot};
use crate::storage::{limit_size, Storage};

pub(crate) struct RaftLog<S: Storage> {
    pub storage: S,
    pub unstable: Unstable,
    pub committed: u64,
    pub applied: u64,
    /// Highest index known durable in this node's log (the leader counts itself up to here).
    pub persisted: u64,
    /// Bound on the bytes of committed entries handed out in one `Ready`.
    pub committed_bytes_max_per_ready: u64,
}

impl<S: Storage> RaftLog<S> {
    pub fn new(storage: S, committed_bytes_max_per_ready: u64) -> Result<RaftLog<S>, StorageError> {
        let first_index = storage.first_index()?;
        let last_index = storage.last_index()?;
        Ok(RaftLog {
            storage,
            unstable: Unstable::new(last_index + 1),
            committed: first_index - 1,
            applied: first_index - 1,
            persisted: last_index,
            committed_bytes_max_per_ready,
        })
    }

    pub fn first_index(&self) -> u64 {
        match self.unstable.maybe_first_index() {
            Some(i) => i,
            None => self.storage.first_index().expect("storage first_index"),
        }
    }

    pub fn last_index(&self) -> u64 {
        match self.unstable.maybe_last_index() {
            Some(i) => i,
            None => self.storage.last_index().expect("storage last_index"),
        }
    }

    pub fn last_term(&self) -> u64 {
        self.term(self.last_index())
            .expect("the last index always has a term")
    }

    pub fn term(&self, index: u64) -> Result<u64, StorageError> {
        let dummy_index = self.first_index() - 1;
        if index < dummy_index {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(term) = self.unstable.maybe_term(index) {
            return Ok(term);
        }
        self.storage.term(index)
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    pub fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        term > self.last_term() || (term == self.last_term() && last_index >= self.last_index())
    }

    /// The first new entry whose term disagrees with ours, or 0 if all match (or are already
    /// present). A conflict at or below `committed` would mean a broken leader.
    fn find_conflict(&self, entries: &[Entry]) -> u64 {
        entries
            .iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map_or(0, |e| e.index)
    }

    /// The largest index <= `index` whose term is <= `term`, with that term: the point where a
    /// log with `term` at `index` may still match ours. Fast backtracking on both sides uses it.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut index = index;
        loop {
            match self.term(index) {
                Ok(our_term) if our_term > term => index -= 1,
                Ok(our_term) => return (index, our_term),
                Err(_) => return (index, 0),
            }
        }
    }

    /// Follower side of an append: if our log has `prev_term` at `prev_index`, append the new
    /// entries (replacing a conflicting suffix) and advance commit. Returns the last index the
    /// leader's message proves we match.
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        leader_commit: u64,
        entries: &[Entry],
    ) -> Option<u64> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new_index = prev_index + entries.len() as u64;
        let conflict = self.find_conflict(entries);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with committed entry (committed {})",
                self.committed
            );
            self.append(&entries[(conflict - prev_index - 1) as usize..]);
        }
        self.commit_to(leader_commit.min(last_new_index));
        Some(last_new_index)
    }

    pub fn append(&mut self, entries: &[Entry]) -> u64 {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        assert!(
            first.index > self.committed,
            "append at {} would overwrite committed {}",
            first.index,
            self.committed
        );
        // Overwritten entries are no longer durable in the sense the leader needs.
        self.persisted = self.persisted.min(first.index - 1);
        self.unstable.truncate_and_append(entries);
        self.last_index()
    }

    pub fn commit_to(&mut self, to_commit: u64) {
        if to_commit > self.committed {
            assert!(
                to_commit <= self.last_index(),
                "commit {to_commit} beyond last index {}",
                self.last_index()
            );
            self.committed = to_commit;
        }
    }

    /// Leader side: commit `index` if a quorum holds it and it is from the current `term`
    /// (raft never commits an older term's entry by counting replicas).
    pub fn maybe_commit(&mut self, index: u64, term: u64) -> bool {
        if index > self.committed && self.term(index).is_ok_and(|t| t == term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    pub fn applied_to(&mut self, index: u64) {
        if index == 0 {
            return;
        }
        assert!(
            self.applied <= index && index <= self.committed,
            "applied {index} outside [{}, {}]",
            self.applied,
            self.committed
        );
        self.applied = index;
    }

    pub fn stable_to(&mut self, index: u64, term: u64) {
        if self.match_term(index, term) {
            self.persisted = self.persisted.max(index);
        }
        self.unstable.stable_to(index, term);
    }

    pub fn stable_snap_to(&mut self, index: u64) {
        self.unstable.stable_snap_to(index);
        self.persisted = self.persisted.max(index);
    }

    pub fn has_next_committed_entries(&self) -> bool {
        self.committed > self.applied.max(self.first_index() - 1)
    }

    /// Committed entries not yet handed to the application, bounded in bytes.
    pub fn next_committed_entries(&self) -> Vec<Entry> {
        if !self.has_next_committed_entries() {
            return Vec::new();
        }
        let low = (self.applied + 1).max(self.first_index());
        self.slice(low, self.committed + 1, self.committed_bytes_max_per_ready)
            .expect("committed entries are never compacted before they are applied")
    }

    pub fn entries_from(&self, low: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if low > self.last_index() {
            return Ok(Vec::new());
        }
        self.slice(low, self.last_index() + 1, bytes_max)
    }

    /// Entries in `[low, high)`, from storage and then from the unstable tail.
    pub fn slice(&self, low: u64, high: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        assert!(low <= high, "slice [{low}, {high})");
        if low < self.first_index() {
            return Err(StorageError::Compacted);
        }
        assert!(
            high <= self.last_index() + 1,
            "slice [{low}, {high}) beyond last index {}",
            self.last_index()
        );
        if low == high {
            return Ok(Vec::new());
        }
        let offset = self.unstable.offset;
        let mut out = Vec::new();
        if low < offset {
            out = self.storage.entries(low, high.min(offset), bytes_max)?;
            // Storage stopped early because of the size limit: don't add unstable entries.
            if (out.len() as u64) < high.min(offset) - low {
                return Ok(out);
            }
        }
        if high > offset {
            out.extend_from_slice(self.unstable.slice(low.max(offset), high));
            limit_size(&mut out, bytes_max);
        }
        Ok(out)
    }

    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        match &self.unstable.snapshot {
            Some(s) => Ok(s.clone()),
            None => self.storage.snapshot(),
        }
    }

    pub fn restore(&mut self, snapshot: Snapshot) {
        self.committed = snapshot.metadata.index;
        self.persisted = self
            .persisted
            .min(snapshot.metadata.index.saturating_sub(1));
        self.unstable.restore(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn log_with(terms: &[u64]) -> RaftLog<MemStorage> {
        let mut storage = MemStorage::new();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry::normal(t, i as u64 + 1, vec![]))
            .collect();
        storage.append(&entries).unwrap();
        RaftLog::new(storage, u64::MAX).unwrap()
    }

    fn entries(first_index: u64, terms: &[u64]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry::normal(t, first_index + i as u64, vec![]))
            .collect()
    }

    #[test]
    fn find_conflict_by_term_finds_the_last_index_with_a_term_not_above_the_hint() {
        // Log terms by index: 1:1 2:1 3:2 4:2 5:4 6:4
        let log = log_with(&[1, 1, 2, 2, 4, 4]);
        let cases = [
            ((6, 4), (6, 4)),
            ((6, 3), (4, 2)),
            ((6, 1), (2, 1)),
            ((3, 5), (3, 2)),
            ((6, 0), (0, 0)),
        ];
        for ((index, term), want) in cases {
            assert_eq!(
                log.find_conflict_by_term(index, term),
                want,
                "hint ({index}, {term})"
            );
        }
    }

    #[test]
    fn maybe_append_rules() {
        // (prev_index, prev_term, commit, new entry terms) -> (result, last_index, committed)
        type Case = ((u64, u64, u64, Vec<u64>), (Option<u64>, u64, u64));
        let cases: Vec<Case> = vec![
            ((3, 2, 3, vec![]), (None, 3, 0)),        // prev term mismatch
            ((4, 3, 3, vec![]), (None, 3, 0)),        // prev beyond our log
            ((3, 3, 3, vec![]), (Some(3), 3, 3)),     // heartbeat-like, commits
            ((3, 3, 5, vec![4]), (Some(4), 4, 4)),    // commit bounded by last new entry
            ((2, 2, 2, vec![3]), (Some(3), 3, 2)),    // identical entry: no truncation
            ((1, 1, 1, vec![4, 4]), (Some(3), 3, 1)), // conflict replaces the suffix
        ];
        for ((prev_index, prev_term, commit, terms), (want, want_last, want_commit)) in cases {
            let mut log = log_with(&[1, 2, 3]);
            let got = log.maybe_append(
                prev_index,
                prev_term,
                commit,
                &entries(prev_index + 1, &terms),
            );
            assert_eq!(
                (got, log.last_index(), log.committed),
                (want, want_last, want_commit),
                "case {prev_index} {prev_term} {terms:?}"
            );
        }
    }

    #[test]
    fn slice_spans_storage_and_unstable_and_honours_the_limit() {
        let mut log = log_with(&[1, 1, 1]);
        log.append(&entries(4, &[2, 2]));
        assert_eq!(
            log.slice(2, 6, u64::MAX)
                .unwrap()
                .iter()
                .map(|e| e.index)
                .collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        let one = Entry::normal(1, 1, vec![]).size_bytes();
        assert_eq!(log.slice(2, 6, one * 3).unwrap().len(), 3);
        assert_eq!(log.slice(3, 6, one).unwrap().len(), 1);
    }

    #[test]
    fn only_a_current_term_entry_is_committed_by_counting() {
        let mut log = log_with(&[1, 2]);
        assert!(!log.maybe_commit(2, 3));
        assert!(log.maybe_commit(2, 2));
        assert_eq!(log.committed, 2);
    }

    #[test]
    #[should_panic(expected = "conflicts with committed")]
    fn a_conflict_below_commit_is_a_broken_leader() {
        let mut log = log_with(&[1, 1, 1]);
        log.commit_to(3);
        log.maybe_append(1, 1, 3, &entries(2, &[2]));
    }

    #[test]
    fn a_replaced_entry_is_not_marked_durable() {
        let mut log = log_with(&[1]);
        log.append(&entries(2, &[2]));
        log.append(&entries(2, &[3]));
        log.stable_to(2, 2);
        assert_eq!(log.persisted, 1);
        assert_eq!(log.unstable.entries.len(), 1);
        log.stable_to(2, 3);
        assert_eq!(log.persisted, 2);
    }
}
