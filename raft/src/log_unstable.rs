//! The tail of the log that the application has not yet persisted: new entries and, at most,
//! one incoming snapshot. It is handed out in `Ready` and trimmed once the application reports
//! that it is durable.

use crate::message::{Entry, Snapshot};

#[derive(Debug, Default)]
pub(crate) struct Unstable {
    /// A snapshot received from the leader and not yet persisted.
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// The index of `entries[0]`, or where the next entry goes when `entries` is empty.
    pub offset: u64,
}

impl Unstable {
    pub fn new(offset: u64) -> Unstable {
        Unstable {
            snapshot: None,
            entries: Vec::new(),
            offset,
        }
    }

    pub fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.metadata.index + 1)
    }

    pub fn maybe_last_index(&self) -> Option<u64> {
        match self.entries.last() {
            Some(e) => Some(e.index),
            None => self.snapshot.as_ref().map(|s| s.metadata.index),
        }
    }

    pub fn maybe_term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            let snap = self.snapshot.as_ref()?;
            return (snap.metadata.index == index).then_some(snap.metadata.term);
        }
        self.entries
            .get((index - self.offset) as usize)
            .map(|e| e.term)
    }

    /// Entries up to `index` became durable, provided the entry there still has `term` (it may
    /// have been replaced by a new leader while the write was in flight).
    pub fn stable_to(&mut self, index: u64, term: u64) {
        if self.maybe_term(index) == Some(term) && index >= self.offset {
            self.entries.drain(..(index + 1 - self.offset) as usize);
            self.offset = index + 1;
        }
    }

    pub fn stable_snap_to(&mut self, index: u64) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index)
        {
            self.snapshot = None;
        }
    }

    pub fn restore(&mut self, snapshot: Snapshot) {
        self.offset = snapshot.metadata.index + 1;
        self.entries.clear();
        self.snapshot = Some(snapshot);
    }

    pub fn truncate_and_append(&mut self, new_entries: &[Entry]) {
        let after = new_entries[0].index;
        if after == self.offset + self.entries.len() as u64 {
            // Directly after what we hold: the common case.
        } else if after <= self.offset {
            // Replaces everything unstable (and part of storage, which reads from here on).
            self.offset = after;
            self.entries.clear();
        } else {
            self.entries.truncate((after - self.offset) as usize);
        }
        self.entries.extend_from_slice(new_entries);
    }

    /// Entries in `[low, high)`; the caller has checked the bounds.
    pub fn slice(&self, low: u64, high: u64) -> &[Entry] {
        assert!(
            self.offset <= low && low <= high && high <= self.offset + self.entries.len() as u64,
            "unstable slice [{low}, {high}) out of [{}, {}]",
            self.offset,
            self.offset + self.entries.len() as u64
        );
        &self.entries[(low - self.offset) as usize..(high - self.offset) as usize]
    }
}
