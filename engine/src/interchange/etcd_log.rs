//! etcd 3.4/3.5's write-ahead log and raft snapshot files, read (never written) so that a
//! stopped etcd member's data dir can be migrated: its `member/snap/db` holds the state up to
//! the db's consistent index, and the WAL holds the entries committed after it.
//!
//! A WAL segment is `member/wal/<seq:016x>-<first index:016x>.wal`, a run of frames:
//!
//! ```text
//! | length: u64 LE | walpb.Record (length's low 56 bits) | zero padding |
//!   length bit 63 set: bits 56..59 are the padding bytes, so every frame ends 8-byte aligned
//!   length 0: the segment's preallocated, never written rest
//!
//! walpb.Record { int64 type = 1; uint32 crc = 2; bytes data = 3; }
//!   1 metadata  etcdserverpb.Metadata { uint64 NodeID = 1; uint64 ClusterID = 2; }
//!   2 entry     raftpb.Entry { EntryType Type = 1; uint64 Term = 2; uint64 Index = 3; bytes Data = 4; }
//!   3 state     raftpb.HardState { uint64 term = 1; uint64 vote = 2; uint64 commit = 3; }
//!   4 crc       its crc field: the running crc when the previous segment was cut (no data)
//!   5 snapshot  walpb.Snapshot { uint64 index = 1; uint64 term = 2; ConfState conf_state = 3; }
//! ```
//!
//! `crc` is crc32c (Castagnoli) rolled over the data of every record since the first segment,
//! and each record's `crc` field is the value after its own data. A later entry at an index
//! replaces the entry there and every one after it (raft's log truncation). The newest
//! segment may end in a torn write (a frame with a sector of zeros): that is its end, as etcd
//! reads it; anywhere else a frame that does not check is refused.
//!
//! A raft snapshot `member/snap/<term:016x>-<index:016x>.snap` is `snappb.snapshot { uint32
//! crc = 1; bytes data = 2; }` around `raftpb.Snapshot { bytes data = 1; SnapshotMetadata
//! metadata = 2 { ConfState conf_state = 1; uint64 index = 2; uint64 term = 3; } }`, crc being
//! crc32c of `data`. Only its index matters here: a member that received a snapshot from its
//! leader may hold the db at that index in `member/snap/<index:016x>.snap.db`.

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;

const METADATA_RECORD: i64 = 1;
const ENTRY_RECORD: i64 = 2;
const STATE_RECORD: i64 = 3;
const CRC_RECORD: i64 = 4;
const SNAPSHOT_RECORD: i64 = 5;
const FRAME_LENGTH_BYTES: usize = 8;
/// etcd refuses a record this large or larger (raft's messages are far smaller).
const MAX_RECORD_BYTES: u64 = 10 * 1024 * 1024;
/// Torn writes are found sector by sector.
const SECTOR_BYTES: usize = 512;
const WAL_SUFFIX: &str = ".wal";
const SNAP_SUFFIX: &str = ".snap";

/// Why an etcd WAL or snapshot file is refused.
#[derive(Debug, thiserror::Error)]
pub enum EtcdLogError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EtcdLogError + '_ {
    move |source| EtcdLogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// raftpb.EntryType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdEntryKind {
    Normal,
    ConfChange,
    ConfChangeV2,
}

/// One raft entry of etcd's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EtcdEntryKind,
    /// For a normal entry: an `etcdserverpb.InternalRaftRequest` (or a v2 `Request`), empty
    /// for a leader's no-op.
    pub data: Vec<u8>,
}

/// What an etcd member's WAL holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdLog {
    /// The member and cluster the log belongs to (its metadata record).
    pub member_id: u64,
    pub cluster_id: u64,
    /// The newest hard state: `commit` is the last index known committed.
    pub term: u64,
    pub commit: u64,
    /// The snapshot records, as (index, term), in log order.
    pub snapshots: Vec<(u64, u64)>,
    /// The entries after the index asked for, in index order and without gaps, each as last
    /// written.
    pub entries: Vec<EtcdEntry>,
    /// The segments read, oldest first.
    pub segments: Vec<PathBuf>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WalRecord {
    #[prost(int64, tag = "1")]
    kind: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RaftEntry {
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RaftHardState {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    vote: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WalMetadata {
    #[prost(uint64, tag = "1")]
    node_id: u64,
    #[prost(uint64, tag = "2")]
    cluster_id: u64,
}

/// walpb.Snapshot and raftpb.SnapshotMetadata alike: the conf state is not read.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotPoint {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotMetadata {
    #[prost(uint64, tag = "2")]
    index: u64,
    #[prost(uint64, tag = "3")]
    term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RaftSnapshot {
    #[prost(message, optional, tag = "2")]
    metadata: Option<SnapshotMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapFile {
    #[prost(uint32, tag = "1")]
    crc: u32,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

/// The `<a:016x>-<b:016x><suffix>` names in `dir`, parsed and sorted; other files are ignored
/// (etcd leaves `.tmp` and `.broken` files beside them).
fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<(u64, u64, PathBuf)>, EtcdLogError> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(io_error(dir))? {
        let item = item.map_err(io_error(dir))?;
        let name = item.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        let parsed = stem.split_once('-').and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        });
        if let Some((a, b)) = parsed {
            found.push((a, b, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads every segment of the etcd WAL in `dir`, keeping the entries after index `after`.
pub fn read_etcd_log(dir: &Path, after: u64) -> Result<EtcdLog, EtcdLogError> {
    let segments = numbered_files(dir, WAL_SUFFIX)?;
    if segments.is_empty() {
        return Err(EtcdLogError::Layout {
            path: dir.to_path_buf(),
            reason: "no WAL segment: expected files named <seq>-<index>.wal (16 hex digits each)"
                .into(),
        });
    }
    for pair in segments.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(EtcdLogError::Layout {
                path: pair[1].2.clone(),
                reason: format!(
                    "segment sequence {:#x} follows {:#x}: a segment is missing",
                    pair[1].0, pair[0].0
                ),
            });
        }
    }
    let mut reader = LogReader {
        log: EtcdLog::default(),
        after,
        crc: 0,
        metadata: None,
    };
    let last = segments.len() - 1;
    for (at, (_, _, path)) in segments.iter().enumerate() {
        let bytes = fs::read(path).map_err(io_error(path))?;
        reader.read_segment(path, &bytes, at == last)?;
        reader.log.segments.push(path.clone());
    }
    Ok(reader.log)
}

struct LogReader {
    log: EtcdLog,
    after: u64,
    crc: u32,
    metadata: Option<Vec<u8>>,
}

impl LogReader {
    fn read_segment(
        &mut self,
        path: &Path,
        bytes: &[u8],
        newest: bool,
    ) -> Result<(), EtcdLogError> {
        let corrupt = |offset: usize, reason: String| EtcdLogError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let mut offset = 0;
        while offset < bytes.len() {
            let Some(length) = bytes.get(offset..offset + FRAME_LENGTH_BYTES) else {
                if newest {
                    return Ok(());
                }
                return Err(corrupt(offset, "a frame's length is cut off".into()));
            };
            let length = u64::from_le_bytes(length.try_into().expect("8 bytes"));
            if length == 0 {
                return Ok(());
            }
            let record_bytes = length & !(0xff << 56);
            let padding = if length >> 63 == 1 {
                (length >> 56) & 0x7
            } else {
                0
            };
            if record_bytes + padding >= MAX_RECORD_BYTES {
                return Err(corrupt(
                    offset,
                    format!(
                        "a frame of {record_bytes} bytes, expected less than etcd's 10 MiB \
                         record limit"
                    ),
                ));
            }
            let start = offset + FRAME_LENGTH_BYTES;
            let end = start + (record_bytes + padding) as usize;
            let Some(frame) = bytes.get(start..end) else {
                if newest {
                    return Ok(());
                }
                return Err(corrupt(offset, "a frame is cut off".into()));
            };
            let torn = newest && is_torn(frame, start);
            let record = match WalRecord::decode(&frame[..record_bytes as usize]) {
                Ok(record) => record,
                Err(_) if torn => return Ok(()),
                Err(e) => {
                    return Err(corrupt(offset, format!("expected a walpb.Record: {e}")));
                }
            };
            if record.kind != CRC_RECORD {
                let expected = crc32c::crc32c_append(self.crc, &record.data);
                if record.crc != expected {
                    if torn {
                        return Ok(());
                    }
                    return Err(corrupt(
                        offset,
                        format!(
                            "crc mismatch: the record says {:#010x}, its data and the records \
                             before it give {expected:#010x} (crc32c)",
                            record.crc
                        ),
                    ));
                }
                self.crc = expected;
            }
            self.take(record)
                .map_err(|reason| corrupt(offset, reason))?;
            offset = end;
        }
        Ok(())
    }

    fn take(&mut self, record: WalRecord) -> Result<(), String> {
        match record.kind {
            ENTRY_RECORD => {
                let entry = RaftEntry::decode(record.data.as_slice())
                    .map_err(|e| format!("expected a raftpb.Entry: {e}"))?;
                let kind = match entry.kind {
                    0 => EtcdEntryKind::Normal,
                    1 => EtcdEntryKind::ConfChange,
                    2 => EtcdEntryKind::ConfChangeV2,
                    other => return Err(format!("entry type {other}, expected 0, 1 or 2")),
                };
                self.push(EtcdEntry {
                    index: entry.index,
                    term: entry.term,
                    kind,
                    data: entry.data,
                })
            }
            STATE_RECORD => {
                let state = RaftHardState::decode(record.data.as_slice())
                    .map_err(|e| format!("expected a raftpb.HardState: {e}"))?;
                self.log.term = state.term;
                self.log.commit = state.commit;
                Ok(())
            }
            METADATA_RECORD => {
                if self.metadata.as_ref().is_some_and(|m| *m != record.data) {
                    return Err("metadata differs from the earlier segments' metadata".into());
                }
                let metadata = WalMetadata::decode(record.data.as_slice())
                    .map_err(|e| format!("expected an etcdserverpb.Metadata: {e}"))?;
                self.log.member_id = metadata.node_id;
                self.log.cluster_id = metadata.cluster_id;
                self.metadata = Some(record.data);
                Ok(())
            }
            CRC_RECORD => {
                // A reader that starts at a purged log's first segment has nothing to check.
                if self.crc != 0 && record.crc != self.crc {
                    return Err(format!(
                        "crc record says {:#010x}, the segments before it end at {:#010x}",
                        record.crc, self.crc
                    ));
                }
                self.crc = record.crc;
                Ok(())
            }
            SNAPSHOT_RECORD => {
                let point = SnapshotPoint::decode(record.data.as_slice())
                    .map_err(|e| format!("expected a walpb.Snapshot: {e}"))?;
                self.log.snapshots.push((point.index, point.term));
                Ok(())
            }
            other => Err(format!("record type {other}, expected 1 to 5")),
        }
    }

    fn push(&mut self, entry: EtcdEntry) -> Result<(), String> {
        let entries = &mut self.log.entries;
        let kept = entries.partition_point(|e| e.index < entry.index);
        entries.truncate(kept);
        if entry.index <= self.after {
            return Ok(());
        }
        if let Some(last) = entries.last() {
            if last.index + 1 != entry.index {
                return Err(format!(
                    "entry {} follows entry {}: the log has a gap",
                    entry.index, last.index
                ));
            }
        }
        entries.push(entry);
        Ok(())
    }
}

/// etcd's torn-write test: some sector-aligned piece of the frame (at `file_offset`) is all
/// zeros, so the write never reached the disk whole.
fn is_torn(frame: &[u8], file_offset: usize) -> bool {
    let mut at = 0;
    let mut offset = file_offset;
    while at < frame.len() {
        let len = (SECTOR_BYTES - offset % SECTOR_BYTES).min(frame.len() - at);
        if frame[at..at + len].iter().all(|&b| b == 0) {
            return true;
        }
        at += len;
        offset += len;
    }
    false
}

/// The newest raft snapshot in `dir` (an etcd member's `member/snap`) that the WAL names among
/// `wal_snapshots`, as (index, term): what etcd starts from. A snapshot file that does not
/// check is passed over, as etcd passes over it.
pub fn newest_etcd_snapshot(
    dir: &Path,
    wal_snapshots: &[(u64, u64)],
) -> Result<Option<(u64, u64)>, EtcdLogError> {
    for (term, index, path) in numbered_files(dir, SNAP_SUFFIX)?.into_iter().rev() {
        if !wal_snapshots.contains(&(index, term)) {
            continue;
        }
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let Ok(file) = SnapFile::decode(bytes.as_slice()) else {
            continue;
        };
        if file.data.is_empty() || file.crc != crc32c::crc32c(&file.data) {
            continue;
        }
        let Ok(snapshot) = RaftSnapshot::decode(file.data.as_slice()) else {
            continue;
        };
        let metadata = snapshot.metadata.unwrap_or_default();
        if (metadata.index, metadata.term) == (index, term) {
            return Ok(Some((index, term)));
        }
    }
    Ok(None)
}

/// Where a member that received a snapshot keeps the db at its index until it applies it.
pub fn etcd_snapshot_db_path(snap_dir: &Path, index: u64) -> PathBuf {
    snap_dir.join(format!("{index:016x}.snap.db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's encoder: a frame per record, crc rolled over the data.
    struct Writer {
        bytes: Vec<u8>,
        crc: u32,
    }

    impl Writer {
        fn new(previous_crc: u32) -> Writer {
            let mut writer = Writer {
                bytes: Vec::new(),
                crc: previous_crc,
            };
            writer.frame(&WalRecord {
                kind: CRC_RECORD,
                crc: previous_crc,
                data: Vec::new(),
            });
            writer
        }

        fn record(&mut self, kind: i64, data: Vec<u8>) {
            self.crc = crc32c::crc32c_append(self.crc, &data);
            let record = WalRecord {
                kind,
                crc: self.crc,
                data,
            };
            self.frame(&record);
        }

        fn frame(&mut self, record: &WalRecord) {
            let body = record.encode_to_vec();
            let padding = (8 - body.len() % 8) % 8;
            let mut length = body.len() as u64;
            if padding != 0 {
                length |= (0x80 | padding as u64) << 56;
            }
            self.bytes.extend_from_slice(&length.to_le_bytes());
            self.bytes.extend_from_slice(&body);
            self.bytes.extend(std::iter::repeat_n(0, padding));
        }

        fn entry(&mut self, term: u64, index: u64, data: &[u8]) {
            let entry = RaftEntry {
                kind: 0,
                term,
                index,
                data: data.to_vec(),
            };
            self.record(ENTRY_RECORD, entry.encode_to_vec());
        }

        fn commit(&mut self, term: u64, commit: u64) {
            let state = RaftHardState {
                term,
                vote: 1,
                commit,
            };
            self.record(STATE_RECORD, state.encode_to_vec());
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("etcd-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn segment(dir: &Path, seq: u64, index: u64) -> PathBuf {
        dir.join(format!("{seq:016x}-{index:016x}.wal"))
    }

    /// Two segments as etcd cuts them: the second starts with the first's crc.
    fn two_segments(dir: &Path) -> (Vec<u8>, Vec<u8>) {
        let mut first = Writer::new(0);
        first.record(
            METADATA_RECORD,
            WalMetadata {
                node_id: 7,
                cluster_id: 9,
            }
            .encode_to_vec(),
        );
        first.record(SNAPSHOT_RECORD, Vec::new());
        for index in 1..=4 {
            first.entry(1, index, format!("e{index}").as_bytes());
        }
        first.commit(1, 3);
        let mut second = Writer::new(first.crc);
        second.record(
            METADATA_RECORD,
            WalMetadata {
                node_id: 7,
                cluster_id: 9,
            }
            .encode_to_vec(),
        );
        // A new leader overwrites 4 and goes on.
        for index in 4..=6 {
            second.entry(2, index, format!("f{index}").as_bytes());
        }
        second.commit(2, 5);
        let mut tail = second.bytes.clone();
        tail.extend(std::iter::repeat_n(0, 4096));
        fs::write(segment(dir, 0, 0), &first.bytes).unwrap();
        fs::write(segment(dir, 1, 4), &tail).unwrap();
        (first.bytes, tail)
    }

    #[test]
    fn segments_are_read_across_the_cut_with_truncation_and_the_hard_state() {
        let dir = temp_dir("read");
        two_segments(&dir);
        fs::write(dir.join("0.tmp"), b"preallocated").unwrap();
        let log = read_etcd_log(&dir, 2).unwrap();
        assert_eq!((log.member_id, log.cluster_id), (7, 9));
        assert_eq!((log.term, log.commit), (2, 5));
        assert_eq!(log.snapshots, vec![(0, 0)]);
        let got: Vec<(u64, u64, Vec<u8>)> = log
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.data.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, 1, b"e3".to_vec()),
                (4, 2, b"f4".to_vec()),
                (5, 2, b"f5".to_vec()),
                (6, 2, b"f6".to_vec()),
            ],
            "entries after index 2, entry 4 as the second leader wrote it"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_tail_ends_the_newest_segment_and_a_bad_crc_is_refused() {
        let dir = temp_dir("damage");
        let (first, second) = two_segments(&dir);

        // The last record of the newest segment half written: a sector of it never landed.
        let mut torn = second.clone();
        let mut writer = Writer::new(0);
        let before = writer.bytes.len();
        writer.entry(2, 7, &[1u8; 2000]);
        torn.truncate(second.len() - 4096);
        let mut frame = writer.bytes[before..].to_vec();
        frame[600..1700].fill(0);
        torn.extend_from_slice(&frame);
        fs::write(segment(&dir, 1, 4), &torn).unwrap();
        assert_eq!(
            read_etcd_log(&dir, 0)
                .unwrap()
                .entries
                .last()
                .unwrap()
                .index,
            6
        );

        // A flipped byte in an entry's data of an older segment.
        let mut flipped = first.clone();
        let at = flipped.windows(2).position(|w| w == b"e2").unwrap();
        flipped[at + 1] = b'X';
        fs::write(segment(&dir, 0, 0), &flipped).unwrap();
        fs::write(segment(&dir, 1, 4), &second).unwrap();
        let error = read_etcd_log(&dir, 0).unwrap_err().to_string();
        assert!(
            error.contains("0000000000000000-0000000000000000.wal at byte")
                && error.contains("crc mismatch"),
            "{error}"
        );

        // A missing segment.
        fs::write(segment(&dir, 0, 0), &first).unwrap();
        fs::rename(segment(&dir, 1, 4), segment(&dir, 2, 4)).unwrap();
        let error = read_etcd_log(&dir, 0).unwrap_err().to_string();
        assert!(error.contains("a segment is missing"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_newest_snapshot_the_wal_names_is_found() {
        let dir = temp_dir("snap");
        let write = |term: u64, index: u64, crc_ok: bool| {
            let data = RaftSnapshot {
                metadata: Some(SnapshotMetadata { index, term }),
            }
            .encode_to_vec();
            let crc = crc32c::crc32c(&data) ^ u32::from(!crc_ok);
            let path = dir.join(format!("{term:016x}-{index:016x}.snap"));
            fs::write(path, SnapFile { crc, data }.encode_to_vec()).unwrap();
        };
        write(2, 100, true);
        write(2, 200, true);
        write(3, 300, false);
        write(3, 400, true);
        let wal = [(100, 2), (200, 2), (300, 3)];
        assert_eq!(
            newest_etcd_snapshot(&dir, &wal).unwrap(),
            Some((200, 2)),
            "300 does not check, 400 is not in the WAL"
        );
        assert_eq!(newest_etcd_snapshot(&dir, &[]).unwrap(), None);
        fs::remove_dir_all(dir).unwrap();
    }
}
