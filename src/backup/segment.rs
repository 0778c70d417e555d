//! The backup directory's append-only segment files: the events a backup received after its
//! snapshots, one record per revision, each checksummed.
//!
//! ```text
//! file    | magic "BASALTBK" | version u32 LE (1) | reserved u32 (0) | record | record | ...
//! record  | body_len u32 LE | crc32c u32 LE of body | body (body_len bytes) |
//! body    | kind u8 | revision i64 LE | received_unix_ms u64 LE | payload |
//! ```
//!
//! Kinds and their payloads:
//! - 1 `events`: every event of `revision` (one write), each an `mvccpb.Event` prefixed with its
//!   varint length (prost's length-delimited encoding), in the order the watch sent them.
//! - 2 `progress`: no payload; every revision up to `revision` is in this directory (in an
//!   earlier record or in a snapshot). Written when the watch reports progress while idle, and
//!   after each snapshot that starts or restarts the stream.
//! - 3 `gap`: payload `last i64 LE`: revisions `revision..=last` were compacted on the server
//!   before the backup recorded them; no restore can reach them.
//!
//! `received_unix_ms` is when the backup received the record: the server stamps no time on a
//! revision, so `restore --to-time` finds the newest revision received by then.
//!
//! A file is named `seg-<first revision, 20 digits>.log`; its records never go back in revision.
//! Writes are appended and made durable with fdatasync at each flush; a crash can leave a torn
//! last record, which the backup cuts off when it resumes (reporting the offset) and which
//! restore reports like any damage: by file and offset, refusing to replay across it.

use super::index::{self, Entry};
use basalt_proto::mvccpb::Event;
use prost::Message;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BASALTBK";
const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 16;
/// body_len and crc32c.
const FRAME_BYTES: usize = 8;
/// kind, revision and time.
const BODY_HEAD_BYTES: usize = 17;
/// A body larger than this is damage, not a record (etcd's requests are far smaller).
const BODY_BYTES_MAX: usize = 1 << 30;

const KIND_EVENTS: u8 = 1;
const KIND_PROGRESS: u8 = 2;
const KIND_GAP: u8 = 3;

/// One record of a segment.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Events {
        revision: i64,
        received_ms: u64,
        events: Vec<Event>,
    },
    Progress {
        revision: i64,
        received_ms: u64,
    },
    Gap {
        first: i64,
        last: i64,
        received_ms: u64,
    },
}

impl Record {
    /// The newest revision the record vouches for.
    pub fn last_revision(&self) -> i64 {
        match self {
            Record::Events { revision, .. } | Record::Progress { revision, .. } => *revision,
            Record::Gap { last, .. } => *last,
        }
    }

    pub fn received_ms(&self) -> u64 {
        match self {
            Record::Events { received_ms, .. }
            | Record::Progress { received_ms, .. }
            | Record::Gap { received_ms, .. } => *received_ms,
        }
    }

    pub fn first_revision(&self) -> i64 {
        match self {
            Record::Events { revision, .. } | Record::Progress { revision, .. } => *revision,
            Record::Gap { first, .. } => *first,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_BYTES]);
        let (kind, revision) = match self {
            Record::Events { revision, .. } => (KIND_EVENTS, *revision),
            Record::Progress { revision, .. } => (KIND_PROGRESS, *revision),
            Record::Gap { first, .. } => (KIND_GAP, *first),
        };
        out.push(kind);
        out.extend_from_slice(&revision.to_le_bytes());
        out.extend_from_slice(&self.received_ms().to_le_bytes());
        match self {
            Record::Events { events, .. } => {
                for event in events {
                    event
                        .encode_length_delimited(out)
                        .expect("a Vec grows as needed");
                }
            }
            Record::Progress { .. } => {}
            Record::Gap { last, .. } => out.extend_from_slice(&last.to_le_bytes()),
        }
        let body = &out[start + FRAME_BYTES..];
        let len = body.len() as u32;
        let crc = crc32c::crc32c(body);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(body: &[u8]) -> Result<Record, String> {
        if body.len() < BODY_HEAD_BYTES {
            return Err(format!("record body of {} bytes is too short", body.len()));
        }
        let revision = i64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        let received_ms = u64::from_le_bytes(body[9..17].try_into().expect("8 bytes"));
        let mut payload = &body[BODY_HEAD_BYTES..];
        match body[0] {
            KIND_EVENTS => {
                let mut events = Vec::new();
                while !payload.is_empty() {
                    let event = Event::decode_length_delimited(&mut payload)
                        .map_err(|e| format!("event of revision {revision}: {e}"))?;
                    events.push(event);
                }
                Ok(Record::Events {
                    revision,
                    received_ms,
                    events,
                })
            }
            KIND_PROGRESS => Ok(Record::Progress {
                revision,
                received_ms,
            }),
            KIND_GAP if payload.len() == 8 => Ok(Record::Gap {
                first: revision,
                last: i64::from_le_bytes(payload.try_into().expect("8 bytes")),
                received_ms,
            }),
            kind => Err(format!("unknown record kind {kind}")),
        }
    }
}

/// Where a segment stops being readable.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {} is damaged at offset {}: {}",
            self.file.display(),
            self.offset,
            self.reason
        )
    }
}

/// A segment's readable records (with each one's offset) and where it stops being readable.
pub struct Scan {
    pub records: Vec<(u64, Record)>,
    /// The end of the last good record.
    pub good_bytes: u64,
    pub damage: Option<Damage>,
}

/// Reads every record of a segment up to its end or its first damage.
pub fn scan(path: &Path) -> Result<Scan, String> {
    scan_range(path, HEADER_BYTES as u64, u64::MAX)
}

/// Reads the records in `from..to` of a segment (`from` where a record starts, `to` past the
/// end for all the rest), checking its header first; offsets are the file's.
pub fn scan_range(path: &Path, from: u64, to: u64) -> Result<Scan, String> {
    let io_error = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = File::open(path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    let damaged = |offset: u64, reason: String| Damage {
        file: path.to_owned(),
        offset,
        reason,
    };
    let mut scan = Scan {
        records: Vec::new(),
        good_bytes: 0,
        damage: None,
    };
    let mut header = [0u8; HEADER_BYTES];
    if file_len < HEADER_BYTES as u64 {
        scan.damage = Some(damaged(0, format!("{file_len} bytes, no header")));
        return Ok(scan);
    }
    file.read_exact(&mut header).map_err(io_error)?;
    if &header[..8] != MAGIC {
        scan.damage = Some(damaged(0, "not a backup segment (bad magic)".into()));
        return Ok(scan);
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        scan.damage = Some(damaged(
            8,
            format!("format version {version}, expected {VERSION}"),
        ));
        return Ok(scan);
    }
    let from = from.max(HEADER_BYTES as u64).min(file_len);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(from))
        .and_then(|_| file.take(to.min(file_len) - from).read_to_end(&mut bytes))
        .map_err(io_error)?;
    let mut at = 0usize;
    let mut newest = i64::MIN;
    scan.good_bytes = from;
    while at < bytes.len() {
        let damaged = |at: usize, reason: String| damaged(from + at as u64, reason);
        let rest = &bytes[at..];
        if rest.len() < FRAME_BYTES {
            scan.damage = Some(damaged(at, "torn record frame".into()));
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > BODY_BYTES_MAX {
            scan.damage = Some(damaged(at, format!("record length {len} is not plausible")));
            break;
        }
        let Some(body) = rest.get(FRAME_BYTES..FRAME_BYTES + len) else {
            scan.damage = Some(damaged(
                at,
                format!(
                    "torn record: {len} bytes announced, {} present",
                    rest.len() - 8
                ),
            ));
            break;
        };
        if crc32c::crc32c(body) != crc {
            scan.damage = Some(damaged(at, "checksum mismatch".into()));
            break;
        }
        let record = match Record::decode(body) {
            Ok(record) => record,
            Err(reason) => {
                scan.damage = Some(damaged(at, reason));
                break;
            }
        };
        if record.first_revision() < newest {
            scan.damage = Some(damaged(
                at,
                format!(
                    "revision {} after revision {newest}",
                    record.first_revision()
                ),
            ));
            break;
        }
        newest = record.last_revision();
        scan.records.push((from + at as u64, record));
        at += FRAME_BYTES + len;
        scan.good_bytes = from + at as u64;
    }
    Ok(scan)
}

/// The segments of a backup directory, oldest first, with the first revision each names.
pub fn list(dir: &Path) -> Result<Vec<(i64, PathBuf)>, String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(first) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<i64>().ok())
        {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

pub fn segment_path(dir: &Path, first_revision: i64) -> PathBuf {
    dir.join(format!("seg-{first_revision:020}.log"))
}

/// How many records one index entry covers when a resumed segment's index is rewritten.
const RECORDS_PER_REBUILT_ENTRY: usize = 1024;

/// The segment being appended to, and its index.
struct OpenSegment {
    path: PathBuf,
    file: File,
    len: u64,
    index: File,
}

/// Appends records to the newest segment, one index entry per flush; a new segment starts
/// past `rotate_bytes`.
pub struct SegmentWriter {
    dir: PathBuf,
    open: Option<OpenSegment>,
    rotate_bytes: u64,
    pending: Vec<u8>,
    /// What `pending` holds, with offsets relative to its start.
    pending_entry: Option<Entry>,
    pub bytes_written: u64,
}

impl SegmentWriter {
    /// Continues `existing` (a segment and what [`scan`] found in it: anything after its good
    /// bytes is cut off, and its index is rewritten to match) or starts a new segment at the
    /// next write.
    pub fn open(
        dir: &Path,
        existing: Option<(&Path, &Scan)>,
        rotate_bytes: u64,
    ) -> Result<SegmentWriter, String> {
        let open = match existing {
            Some((path, scan)) => {
                let at = |e: std::io::Error| format!("{}: {e}", path.display());
                let file = OpenOptions::new().append(true).open(path).map_err(at)?;
                file.set_len(scan.good_bytes).map_err(at)?;
                file.sync_all().map_err(at)?;
                let mut entries = index::read(path);
                entries.retain(|entry| entry.end <= scan.good_bytes);
                let indexed_to = entries.last().map_or(HEADER_BYTES as u64, |e| e.end);
                let unindexed = scan
                    .records
                    .partition_point(|(offset, _)| *offset < indexed_to);
                entries.extend(index::entries_of(
                    &scan.records[unindexed..],
                    scan.good_bytes,
                    RECORDS_PER_REBUILT_ENTRY,
                ));
                Some(OpenSegment {
                    path: path.to_owned(),
                    file,
                    len: scan.good_bytes,
                    index: index::create(path, &entries)
                        .map_err(|e| format!("{}: {e}", index::index_path(path).display()))?,
                })
            }
            None => None,
        };
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            open,
            rotate_bytes,
            pending: Vec::new(),
            pending_entry: None,
            bytes_written: 0,
        })
    }

    /// Queues a record for the next [`SegmentWriter::flush`].
    pub fn push(&mut self, record: &Record) {
        let before = self.pending.len() as u64;
        record.encode_into(&mut self.pending);
        let bytes = self.pending.len() as u64 - before;
        match &mut self.pending_entry {
            Some(entry) => entry.extend(record, bytes),
            None => self.pending_entry = Some(Entry::starting(0, record, bytes)),
        }
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes what is queued, makes it durable, then indexes it. A full device leaves nothing
    /// behind (a new segment is removed, a write is cut back to the segment's last flush) and
    /// keeps the records queued for the next try; any other failure is final.
    pub fn flush(&mut self) -> Result<(), FlushError> {
        let Some(entry) = self.pending_entry.take() else {
            return Ok(());
        };
        let result = self.write_pending(entry);
        if result.is_err() {
            self.pending_entry = Some(entry);
        }
        result
    }

    fn write_pending(&mut self, mut entry: Entry) -> Result<(), FlushError> {
        if self
            .open
            .as_ref()
            .is_none_or(|segment| segment.len >= self.rotate_bytes)
        {
            self.open = Some(self.create(entry.first_revision)?);
        }
        let segment = self.open.as_mut().expect("opened above");
        let at = segment.path.display().to_string();
        if let Err(e) = segment.file.write_all(&self.pending) {
            // What the device took of the write goes; the segment ends at its last flush.
            segment
                .file
                .set_len(segment.len)
                .map_err(|cut| FlushError::Failed(format!("{at}: {cut}")))?;
            return Err(FlushError::from_io(at, e));
        }
        // After a failed fdatasync the page cache cannot be trusted: no retry.
        segment
            .file
            .sync_data()
            .map_err(|e| FlushError::Failed(format!("{at}: {e}")))?;
        entry.offset = segment.len;
        entry.end += segment.len;
        segment.len += self.pending.len() as u64;
        self.bytes_written += self.pending.len() as u64;
        self.pending.clear();
        // The index is derived (trusted only as a prefix that tiles the segment, rebuilt on
        // resume), so an entry it cannot take costs restore speed, not data.
        if let Err(error) = index::append(&mut segment.index, &segment.path, &entry) {
            eprintln!(
                "basalt backup: the segment index is behind ({error}); restore scans the rest"
            );
        }
        Ok(())
    }

    /// Starts the next segment at `first`, so files can be pruned once a newer snapshot is
    /// past them.
    pub fn rotate(&mut self) {
        self.open = None;
    }

    fn create(&self, first: i64) -> Result<OpenSegment, FlushError> {
        let path = segment_path(&self.dir, first);
        let made = (|| -> std::io::Result<(File, File)> {
            let file = create_file(&path, &file_header(MAGIC, VERSION))?;
            file.sync_all()?;
            let index = index::create(&path, &[])?;
            File::open(&self.dir)?.sync_all()?;
            Ok((file, index))
        })();
        match made {
            Ok((file, index)) => Ok(OpenSegment {
                path,
                file,
                len: HEADER_BYTES as u64,
                index,
            }),
            Err(e) => {
                let _ = index::remove_segment(&path);
                Err(FlushError::from_io(path.display(), e))
            }
        }
    }
}

/// Why a write to the backup directory did not make its records durable.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The device is full; nothing was left behind and the records stay queued.
    #[error("{0}")]
    OutOfSpace(String),
    #[error("{0}")]
    Failed(String),
}

impl FlushError {
    /// `error` of the file `context` names: a full device, or a failure to stop on.
    pub fn from_io(context: impl std::fmt::Display, error: std::io::Error) -> FlushError {
        let message = format!("{context}: {error}");
        if basalt_engine::disk::is_out_of_space(&error) {
            FlushError::OutOfSpace(message)
        } else {
            FlushError::Failed(message)
        }
    }
}

/// The 16 bytes every file of a backup directory starts with: `magic`, `version` u32 LE and a
/// reserved u32 (0).
pub fn file_header(magic: &[u8; 8], version: u32) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[..8].copy_from_slice(magic);
    header[8..12].copy_from_slice(&version.to_le_bytes());
    header
}

/// Whether `bytes` start with [`file_header`]'s magic and version.
pub fn has_header(bytes: &[u8], magic: &[u8; 8], version: u32) -> bool {
    bytes.len() >= HEADER_BYTES && bytes[..12] == file_header(magic, version)[..12]
}

/// Creates (or empties) `path` and writes `contents` to it.
pub fn create_file(path: &Path, contents: &[u8]) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    file.write_all(contents)?;
    Ok(file)
}

pub fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use basalt_proto::mvccpb::KeyValue;

    pub(crate) fn put(revision: i64, key: &str) -> Record {
        Record::Events {
            revision,
            received_ms: 1000 + revision as u64,
            events: vec![Event {
                kv: Some(KeyValue {
                    key: key.as_bytes().to_vec().into(),
                    mod_revision: revision,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn records_round_trip_and_damage_is_found_by_offset() {
        let dir = std::env::temp_dir().join(format!("basalt-seg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut writer = SegmentWriter::open(&dir, None, 1 << 20).unwrap();
        let records = vec![
            Record::Progress {
                revision: 4,
                received_ms: 7,
            },
            put(5, "a"),
            Record::Gap {
                first: 6,
                last: 9,
                received_ms: 8,
            },
            put(10, "b"),
        ];
        for record in &records {
            writer.push(record);
        }
        writer.flush().unwrap();
        let segments = list(&dir).unwrap();
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].0, 4, "named by its first revision");
        let path = segments[0].1.clone();
        let read = scan(&path).unwrap();
        assert!(read.damage.is_none());
        let got: Vec<Record> = read.records.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(got, records);

        // A flipped byte in the third record is reported at that record's offset.
        let third = read.records[2].0;
        let mut bytes = fs::read(&path).unwrap();
        bytes[third as usize + 12] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let read = scan(&path).unwrap();
        assert_eq!(read.records.len(), 2);
        let damage = read.damage.clone().unwrap();
        assert_eq!(
            (damage.offset, damage.reason.as_str()),
            (third, "checksum mismatch")
        );

        // A torn tail is cut off by a resuming writer, which then appends after the good part.
        let mut writer = SegmentWriter::open(&dir, Some((&path, &read)), 1 << 20).unwrap();
        writer.push(&put(6, "c"));
        writer.flush().unwrap();
        let read = scan(&path).unwrap();
        assert!(read.damage.is_none());
        assert_eq!(read.records.len(), 3);
        let entries = index::read(&path);
        assert_eq!(
            entries.last().map(|e| (e.last_revision, e.end)),
            Some((6, read.good_bytes)),
            "the resumed segment's index covers the records kept and the one appended"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
