//! The in-memory picture of the log: where each live entry sits on disk, and the latest hard
//! state, snapshot marker and metadata. Appends and recovery feed it through the same rules, so
//! a log that replays is exactly a log the writer would have accepted.

use std::collections::VecDeque;

use super::{Record, RecordKind, RecordRef, WalError};

/// Where one entry's record sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u64,
    /// Offset of the record frame in its segment.
    pub offset: u64,
    pub payload_len: u32,
    /// Chain value before this record, so a read can verify it on its own.
    pub prev_crc: u32,
}

/// The range of entry indexes, enough to validate a record without the locations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Index of the oldest entry, or of the next one when there is none. 0: no entry and no
    /// snapshot yet, so the first entry may take any index.
    pub first_index: u64,
    pub len: u64,
}

impl Bounds {
    pub fn last_index(&self) -> u64 {
        (self.first_index + self.len).saturating_sub(1)
    }

    /// Checks `rec` against the log and moves the bounds as appending it would.
    pub fn step(&mut self, rec: &RecordRef<'_>) -> Result<(), WalError> {
        let last = self.last_index();
        let refuse = || WalError::OutOfSequence {
            kind: rec.kind,
            index: rec.index,
            first_index: self.first_index,
            last_index: last,
        };
        match rec.kind {
            RecordKind::Entry => {
                if rec.index == 0 {
                    return Err(refuse());
                }
                if self.first_index == 0 {
                    self.first_index = rec.index;
                } else if rec.index < self.first_index || rec.index > last + 1 {
                    return Err(refuse());
                }
                self.len = rec.index - self.first_index + 1;
            }
            RecordKind::Truncate => {
                if self.first_index == 0 || rec.index + 1 < self.first_index || rec.index > last {
                    return Err(refuse());
                }
                self.len = rec.index + 1 - self.first_index;
            }
            RecordKind::Snapshot => {
                if self.first_index == 0 || rec.index >= last {
                    self.first_index = rec.index + 1;
                    self.len = 0;
                }
            }
            RecordKind::HardState | RecordKind::Metadata => {}
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct LogView {
    pub first_index: u64,
    pub locs: VecDeque<Loc>,
    pub hard_state: Option<Vec<u8>>,
    pub snapshot: Option<Record>,
    pub metadata: Option<Vec<u8>>,
}

impl LogView {
    pub fn anchored_at(first_index: u64) -> LogView {
        LogView {
            first_index,
            ..LogView::default()
        }
    }

    pub fn bounds(&self) -> Bounds {
        Bounds {
            first_index: self.first_index,
            len: self.locs.len() as u64,
        }
    }

    pub fn last_index(&self) -> u64 {
        self.bounds().last_index()
    }

    /// Applies a record that passed [`Bounds::step`]; `loc` is where it was written.
    pub fn apply(&mut self, rec: &RecordRef<'_>, loc: Loc) {
        let mut b = self.bounds();
        b.step(rec)
            .expect("records are validated before they are applied");
        self.first_index = b.first_index;
        match rec.kind {
            RecordKind::Entry => {
                self.locs.truncate(b.len as usize - 1);
                self.locs.push_back(loc);
            }
            RecordKind::Truncate | RecordKind::Snapshot => self.locs.truncate(b.len as usize),
            RecordKind::HardState => self.hard_state = Some(rec.payload.to_vec()),
            RecordKind::Metadata => self.metadata = Some(rec.payload.to_vec()),
        }
        if rec.kind == RecordKind::Snapshot {
            self.snapshot = Some(Record {
                kind: rec.kind,
                term: rec.term,
                index: rec.index,
                payload: rec.payload.to_vec(),
            });
        }
        debug_assert_eq!(self.locs.len() as u64, b.len);
    }

    /// Moves the start of the log down to where `rec` needs it, dropping every entry: only
    /// for records of the oldest segment on disk, whose predecessors were purged.
    pub fn reanchor_for(&mut self, rec: &RecordRef<'_>) {
        let first = match rec.kind {
            RecordKind::Entry => rec.index,
            RecordKind::Truncate => rec.index + 1,
            _ => return,
        };
        if self.first_index != 0 && first < self.first_index {
            self.first_index = first;
            self.locs.clear();
        }
    }

    /// Takes in a record carried to a segment start: state only, the entry log is untouched.
    pub fn restate(&mut self, rec: &RecordRef<'_>) {
        match rec.kind {
            RecordKind::HardState => self.hard_state = Some(rec.payload.to_vec()),
            RecordKind::Metadata => self.metadata = Some(rec.payload.to_vec()),
            RecordKind::Snapshot => {
                self.snapshot = Some(Record {
                    kind: rec.kind,
                    term: rec.term,
                    index: rec.index,
                    payload: rec.payload.to_vec(),
                })
            }
            RecordKind::Entry | RecordKind::Truncate => {
                unreachable!("only state records are carried")
            }
        }
    }

    /// Forgets the entries stored in segments older than `oldest_seg` (they were purged).
    pub fn drop_segments_before(&mut self, oldest_seg: u64) {
        while self.locs.front().is_some_and(|l| l.seg < oldest_seg) {
            self.locs.pop_front();
            self.first_index += 1;
        }
    }

    /// The records that open every segment, so a segment carries the state it needs even when
    /// the ones before it are purged.
    pub fn carried_records(&self) -> Vec<RecordRef<'_>> {
        let mut out = Vec::with_capacity(3);
        if let Some(m) = &self.metadata {
            out.push(RecordRef::metadata(m));
        }
        if let Some(h) = &self.hard_state {
            out.push(RecordRef::hard_state(h));
        }
        if let Some(s) = &self.snapshot {
            out.push(s.as_ref());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64) -> RecordRef<'static> {
        RecordRef::entry(1, index, b"")
    }

    fn t(index: u64) -> RecordRef<'static> {
        RecordRef {
            kind: RecordKind::Truncate,
            term: 0,
            index,
            payload: b"",
        }
    }

    #[test]
    fn sequences_are_accepted_or_refused_by_the_raft_log_rules() {
        let s = |i| RecordRef::snapshot(1, i, b"");
        // (rule, records, Ok((first_index, last_index)) or refused)
        type Case<'a> = (&'a str, &'a [RecordRef<'a>], Result<(u64, u64), ()>);
        let cases: &[Case<'_>] = &[
            ("first entry may take any index", &[e(7), e(8)], Ok((7, 8))),
            ("gap is refused", &[e(1), e(3)], Err(())),
            ("index 0 is refused", &[e(0)], Err(())),
            (
                "lower index overwrites the tail",
                &[e(1), e(2), e(3), e(2)],
                Ok((1, 2)),
            ),
            (
                "overwrite below the first entry is refused",
                &[e(5), e(4)],
                Err(()),
            ),
            (
                "truncate keeps up to its index",
                &[e(1), e(2), e(3), t(1)],
                Ok((1, 1)),
            ),
            ("truncate to empty", &[e(1), e(2), t(0)], Ok((1, 0))),
            ("truncate past the end is refused", &[e(1), t(2)], Err(())),
            ("truncate of a fresh log is refused", &[t(0)], Err(())),
            (
                "snapshot past the end resets the log",
                &[e(1), s(10), e(11)],
                Ok((11, 11)),
            ),
            (
                "entries after a reset must follow it",
                &[e(1), s(10), e(2)],
                Err(()),
            ),
            (
                "snapshot inside the log keeps the entries",
                &[e(1), e(2), e(3), s(2)],
                Ok((1, 3)),
            ),
        ];
        for (name, recs, want) in cases {
            let mut b = Bounds {
                first_index: 0,
                len: 0,
            };
            let got = recs
                .iter()
                .try_for_each(|r| b.step(r))
                .map(|()| (b.first_index, b.last_index()))
                .map_err(|_| ());
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn applied_locations_follow_overwrites() {
        let mut v = LogView::default();
        let loc = |offset| Loc {
            seg: 0,
            offset,
            payload_len: 0,
            prev_crc: 0,
        };
        for (i, r) in [e(1), e(2), e(3), e(2), e(3)].iter().enumerate() {
            v.apply(r, loc(i as u64));
        }
        let offsets: Vec<u64> = v.locs.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, vec![0, 3, 4]);
        assert_eq!(v.last_index(), 3);
    }
}
