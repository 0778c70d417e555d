//! Each segment's index: one entry per flush, saying which revisions and receive times a byte
//! range of the segment holds, so a restore finds its starting point and the revision of a
//! moment without decoding every record before it.
//!
//! ```text
//! file   | magic "BASALTIX" | version u32 LE (1) | reserved u32 (0) | entry | entry | ...
//! entry  | offset u64 | end u64 | first_revision i64 | last_revision i64 |
//!        | min_received_ms u64 | max_received_ms u64 | flags u32 | crc32c u32 of the 52 bytes before |
//! ```
//!
//! All integers little-endian. `offset..end` is a run of whole records of `seg-<first>.log`
//! (the index is `seg-<first>.idx` beside it); flag bit 0 says one of them is a gap record.
//!
//! The index is derived from the segment and only trusted where it checks out: an entry is
//! appended after its records are durable (the index itself is never fsync'd), and a reader
//! keeps the longest prefix of entries whose checksums hold, which tile the segment from its
//! header on without holes and end inside the file. Whatever follows that prefix is read from
//! the segment itself. A backup resuming a segment rewrites its index from the records it scanned.

use super::segment::{create_file, file_header, has_header, Record, HEADER_BYTES};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BASALTIX";
const VERSION: u32 = 1;
const ENTRY_BYTES: usize = 56;
const FLAG_GAP: u32 = 1;

/// What one run of records holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub end: u64,
    pub first_revision: i64,
    pub last_revision: i64,
    pub min_received_ms: u64,
    pub max_received_ms: u64,
    pub has_gap: bool,
}

impl Entry {
    /// The entry of a run starting at `offset`, growing as records are added.
    pub fn starting(offset: u64, record: &Record, record_bytes: u64) -> Entry {
        Entry {
            offset,
            end: offset + record_bytes,
            first_revision: record.first_revision(),
            last_revision: record.last_revision(),
            min_received_ms: record.received_ms(),
            max_received_ms: record.received_ms(),
            has_gap: matches!(record, Record::Gap { .. }),
        }
    }

    /// Adds the record that follows the run.
    pub fn extend(&mut self, record: &Record, record_bytes: u64) {
        self.end += record_bytes;
        self.last_revision = self.last_revision.max(record.last_revision());
        self.min_received_ms = self.min_received_ms.min(record.received_ms());
        self.max_received_ms = self.max_received_ms.max(record.received_ms());
        self.has_gap |= matches!(record, Record::Gap { .. });
    }

    fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[0..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.end.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_revision.to_le_bytes());
        out[24..32].copy_from_slice(&self.last_revision.to_le_bytes());
        out[32..40].copy_from_slice(&self.min_received_ms.to_le_bytes());
        out[40..48].copy_from_slice(&self.max_received_ms.to_le_bytes());
        let flags = if self.has_gap { FLAG_GAP } else { 0 };
        out[48..52].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c(&out[..52]);
        out[52..56].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[52..56].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..52]) != crc {
            return None;
        }
        let flags = u32::from_le_bytes(bytes[48..52].try_into().expect("4 bytes"));
        Some(Entry {
            offset: u64_at(0),
            end: u64_at(8),
            first_revision: u64_at(16) as i64,
            last_revision: u64_at(24) as i64,
            min_received_ms: u64_at(32),
            max_received_ms: u64_at(40),
            has_gap: flags & FLAG_GAP != 0,
        })
    }
}

/// Builds the entries of `records` (each with its offset; `end` is where the last one ends),
/// one per `records_per_entry` records: what a resumed segment's index is rewritten from.
pub fn entries_of(records: &[(u64, Record)], end: u64, records_per_entry: usize) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for (i, (offset, record)) in records.iter().enumerate() {
        let record_end = records.get(i + 1).map_or(end, |(next, _)| *next);
        let record_bytes = record_end - offset;
        match entries.last_mut() {
            Some(entry) if i % records_per_entry.max(1) != 0 => entry.extend(record, record_bytes),
            _ => entries.push(Entry::starting(*offset, record, record_bytes)),
        }
    }
    entries
}

pub fn index_path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// The trusted entries of `segment`'s index (see the module doc): empty when it has none.
pub fn read(segment: &Path) -> Vec<Entry> {
    let (Ok(bytes), Ok(meta)) = (fs::read(index_path(segment)), fs::metadata(segment)) else {
        return Vec::new();
    };
    if !has_header(&bytes, MAGIC, VERSION) {
        return Vec::new();
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut next_offset = HEADER_BYTES as u64;
    for chunk in bytes[HEADER_BYTES..].chunks_exact(ENTRY_BYTES) {
        match Entry::decode(chunk) {
            Some(entry)
                if entry.offset == next_offset
                    && entry.end > entry.offset
                    && entry.end <= meta.len()
                    && entry.first_revision <= entry.last_revision
                    && entries
                        .last()
                        .is_none_or(|prev| prev.last_revision <= entry.first_revision) =>
            {
                next_offset = entry.end;
                entries.push(entry);
            }
            _ => break,
        }
    }
    entries
}

/// Starts `segment`'s index with `entries` (replacing any index it had).
pub fn create(segment: &Path, entries: &[Entry]) -> std::io::Result<File> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + entries.len() * ENTRY_BYTES);
    bytes.extend_from_slice(&file_header(MAGIC, VERSION));
    for entry in entries {
        bytes.extend_from_slice(&entry.encode());
    }
    create_file(&index_path(segment), &bytes)
}

/// Appends one entry, whose records are already durable.
pub fn append(file: &mut File, segment: &Path, entry: &Entry) -> Result<(), String> {
    file.write_all(&entry.encode())
        .map_err(|e| format!("{}: {e}", index_path(segment).display()))
}

/// Removes a segment and its index.
pub fn remove_segment(segment: &Path) -> Result<(), String> {
    fs::remove_file(segment).map_err(|e| format!("{}: {e}", segment.display()))?;
    match fs::remove_file(index_path(segment)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", index_path(segment).display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::segment::{self, tests::put, SegmentWriter};
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn each_flush_is_indexed_and_only_a_consistent_prefix_is_trusted() {
        let dir = std::env::temp_dir().join(format!("basalt-idx-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut writer = SegmentWriter::open(&dir, None, 1 << 20).unwrap();
        for flush in [[1, 2, 3], [4, 5, 6], [7, 8, 9]] {
            for revision in flush {
                writer.push(&put(revision, "k"));
            }
            writer.flush().unwrap();
        }
        writer.push(&Record::Gap {
            first: 10,
            last: 12,
            received_ms: 2000,
        });
        writer.flush().unwrap();
        let path = segment::list(&dir).unwrap()[0].1.clone();
        let entries = read(&path);
        let summary: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.first_revision,
                    e.last_revision,
                    e.min_received_ms,
                    e.max_received_ms,
                    e.has_gap,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, 3, 1001, 1003, false),
                (4, 6, 1004, 1006, false),
                (7, 9, 1007, 1009, false),
                (10, 12, 2000, 2000, true)
            ]
        );
        let middle = segment::scan_range(&path, entries[1].offset, entries[1].end).unwrap();
        let revisions: Vec<i64> = middle
            .records
            .iter()
            .map(|(_, r)| r.last_revision())
            .collect();
        assert_eq!(revisions, [4, 5, 6]);
        assert!(middle.damage.is_none());

        // A damaged third entry: the first two are still trusted, the rest is not.
        let index_file = index_path(&path);
        let mut bytes = fs::read(&index_file).unwrap();
        bytes[HEADER_BYTES + 2 * ENTRY_BYTES + 20] ^= 1;
        fs::write(&index_file, &bytes).unwrap();
        assert_eq!(read(&path), entries[..2]);
        // An entry pointing past the segment's end is not trusted either.
        let segment_len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(segment_len - 1)
            .unwrap();
        let mut shortened = read(&path);
        shortened.truncate(2);
        assert_eq!(shortened, entries[..2]);

        // Without an index, a resuming writer rebuilds it from the records it scanned.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(segment_len)
            .unwrap();
        fs::remove_file(&index_file).unwrap();
        assert!(read(&path).is_empty());
        let scan = segment::scan(&path).unwrap();
        SegmentWriter::open(&dir, Some((&path, &scan)), 1 << 20).unwrap();
        let rebuilt = read(&path);
        assert_eq!(
            rebuilt
                .iter()
                .map(|e| (e.offset, e.end, e.first_revision, e.last_revision))
                .collect::<Vec<_>>(),
            [(entries[0].offset, entries[3].end, 1, 12)]
        );
        assert!(rebuilt[0].has_gap);
        fs::remove_dir_all(dir).unwrap();
    }
}
