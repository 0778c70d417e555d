//! The write-ahead log: Basalt's durability point. A write is acknowledged only once its WAL
//! record is on disk.
//!
//! Owns: the segment files under `<data-dir>/member/wal/`, their byte format ([`mod@format`]), group
//! commit (all appends waiting at a moment go out as one write plus one fdatasync), recovery
//! (verify the crc chain, cut a torn tail, refuse corruption naming file and offset), reads by
//! index for raft catch-up, suffix truncation, purge, and the offline `dump-log` tool.
//! Must never: interpret payloads (they are opaque bytes: raft entries, hard state, snapshot
//! metadata), acknowledge a record before its fdatasync returned, or silently drop a record that
//! is not in the torn tail of the last write.
//!
//! Media assumptions, stated once:
//! - a sector of [`format::TORN_SECTOR_BYTES`] is written all or nothing (a torn write leaves
//!   whole sectors of their old content);
//! - after fdatasync returns, or an O_DSYNC write completes, the data written before it
//!   survives power loss;
//! - rewriting a sector with the bytes it already holds cannot damage it (the writer rewrites
//!   the partial sector at the tail with each batch).
//!
//! The life of an append: [`Wal::submit`] validates and encodes the records into the pending
//! queue at once (so the index order is the call order), then a single writer task takes the
//! whole queue (up to [`WalOptions::batch_bytes_max`]), writes it with one aligned O_DIRECT write
//! that is durable when it completes (the production file layer opens finished segments with
//! O_DSYNC; others write, then fdatasync: [`SegmentFile::write_durable`]) and wakes every caller
//! whose records it covered. While it waits on the
//! disk, new appends queue up and form the next batch: batches grow with load and never wait on
//! a timer. Fresh segments are zero-filled by a background task ahead of need, so the hot path
//! never writes into unwritten extents (an fdatasync there costs a journal commit).

//! How the raft core uses it (one glommio executor owns the WAL):
//!
//! ```ignore
//! let (wal, rec) = Wal::open(DmaStorage, wal_dir(&data_dir), WalOptions::default()).await?;
//! // Restart raft from rec.hard_state, rec.snapshot and the entries after the snapshot:
//! let entries = wal.read_entries(rec.first_index, rec.last_index + 1, bytes_max).await?;
//! // Each Ready: queue entries (and hard state) in order, send them to followers at once,
//! // and report them stable to raft when `durable` resolves.
//! let durable = wal.submit(&[RecordRef::entry(term, index, &bytes), RecordRef::hard_state(&hs)]).await?;
//! durable.await?;
//! // A conflicting tail: append from the first conflicting index (or `truncate_after`).
//! // After a snapshot at index i: append RecordRef::snapshot(term, i, &meta), then
//! wal.purge(i).await?;
//! ```

pub mod dump;
pub mod format;
mod prealloc;
mod recover;
pub mod sim;
pub mod storage;
mod view;
mod writer;

use std::path::{Path, PathBuf};

use crate::crypt::SharedKeyring;

pub use storage::{DmaStorage, SegmentFile, Storage, WriteBuf};
pub use writer::{Durable, Wal, WalStats};

/// What a record holds; the number is the on-disk kind byte (0 is never used: it marks the
/// pre-zeroed space after the last record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A raft log entry at `index`; a lower index than the last overwrites the tail from there.
    Entry = 1,
    /// The latest raft hard state (term, vote, commit) as opaque bytes.
    HardState = 2,
    /// A snapshot was taken or installed at `index`/`term`; entries at or below it may go.
    Snapshot = 3,
    /// Opaque member metadata (node and cluster ids), repeated at the start of every segment.
    Metadata = 4,
    /// Drops every entry after `index` (raft overwriting a conflicting tail).
    Truncate = 5,
}

impl RecordKind {
    pub const ALL: [RecordKind; 5] = [
        RecordKind::Entry,
        RecordKind::HardState,
        RecordKind::Snapshot,
        RecordKind::Metadata,
        RecordKind::Truncate,
    ];

    pub fn from_u8(b: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Entry => "entry",
            RecordKind::HardState => "hardstate",
            RecordKind::Snapshot => "snapshot",
            RecordKind::Metadata => "metadata",
            RecordKind::Truncate => "truncate",
        }
    }

    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the log's state (not its entries) is read from this kind's payload.
    pub fn holds_state(self) -> bool {
        matches!(
            self,
            RecordKind::HardState | RecordKind::Snapshot | RecordKind::Metadata
        )
    }
}

/// A record to append; the payload is borrowed so the caller keeps its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub kind: RecordKind,
    pub term: u64,
    pub index: u64,
    pub payload: &'a [u8],
}

impl<'a> RecordRef<'a> {
    pub fn entry(term: u64, index: u64, payload: &'a [u8]) -> Self {
        RecordRef {
            kind: RecordKind::Entry,
            term,
            index,
            payload,
        }
    }
    pub fn hard_state(payload: &'a [u8]) -> Self {
        RecordRef {
            kind: RecordKind::HardState,
            term: 0,
            index: 0,
            payload,
        }
    }
    pub fn snapshot(term: u64, index: u64, payload: &'a [u8]) -> Self {
        RecordRef {
            kind: RecordKind::Snapshot,
            term,
            index,
            payload,
        }
    }
    pub fn metadata(payload: &'a [u8]) -> Self {
        RecordRef {
            kind: RecordKind::Metadata,
            term: 0,
            index: 0,
            payload,
        }
    }
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub term: u64,
    pub index: u64,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            kind: self.kind,
            term: self.term,
            index: self.index,
            payload: &self.payload,
        }
    }
}

/// What [`Wal::open`] found on disk, besides the entries (read them with [`Wal::read_entries`]
/// from [`Recovered::first_index`] to [`Recovered::last_index`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub metadata: Option<Vec<u8>>,
    pub hard_state: Option<Vec<u8>>,
    /// The latest snapshot marker.
    pub snapshot: Option<Record>,
    /// Index of the oldest entry still in the log; `last_index + 1` when it holds none.
    pub first_index: u64,
    pub last_index: u64,
    /// Set when a partial last write (a crash mid-write) was cut off.
    pub torn_tail: Option<TornTail>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of every new segment file. Smaller than etcd's 64 MiB: a purge frees whole
    /// segments and one more waits zero-filled, so the data dir holds up to two segments
    /// beyond the entries after the last snapshot; a segment still takes far longer to fill
    /// than to zero (twice the batch bound is the floor).
    pub segment_bytes: u64,
    /// Bound on one group-commit write; also bounds one record at a quarter of it.
    pub batch_bytes_max: usize,
    /// Appends wait (backpressure) while this many bytes are queued for the writer.
    pub pending_bytes_max: usize,
    /// Purge keeps at most this many segment files; 0 keeps all (etcd's `--max-wals`).
    pub max_wals: usize,
    /// `--encryption-key-file`: record payloads of new segments are sealed with its current
    /// key, and a change of the current key starts a new segment; segments sealed with other
    /// ids are opened with them. None: new segments are plaintext, sealed ones are refused.
    pub keyring: Option<SharedKeyring>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 16 << 20,
            batch_bytes_max: 8 << 20,
            pending_bytes_max: 32 << 20,
            max_wals: 5,
            keyring: None,
        }
    }
}

impl WalOptions {
    /// Largest payload one record may carry (a sealed payload's nonce and tag count).
    pub fn record_payload_bytes_max(&self) -> usize {
        let stored_max = record_payload_bytes_max(self.batch_bytes_max);
        match self.keyring {
            Some(_) => stored_max - format::SEAL_OVERHEAD_BYTES,
            None => stored_max,
        }
    }

    /// The key id new segments are sealed with now (0: plaintext).
    fn current_key_id(&self) -> u32 {
        self.keyring
            .as_ref()
            .map_or(crate::crypt::PLAINTEXT_KEY_ID, |k| k.load().current_id())
    }

    fn validate(&self) -> Result<(), WalError> {
        let ok = self.batch_bytes_max >= 16 << 10
            && self.batch_bytes_max <= u32::MAX as usize
            && self.segment_bytes >= 2 * self.batch_bytes_max as u64
            && self.segment_bytes.is_multiple_of(4096)
            && self.pending_bytes_max >= self.batch_bytes_max;
        if ok {
            Ok(())
        } else {
            Err(WalError::BadOptions(format!("{self:?}")))
        }
    }
}

/// A segment starts with its header and up to three carried-over records (metadata, hard state,
/// snapshot) before the record that caused the roll; a quarter of the batch bound for each keeps
/// all of that inside one batch.
fn record_payload_bytes_max(batch_bytes_max: usize) -> usize {
    batch_bytes_max / 4 - format::RECORD_FRAME_BYTES
}

/// The WAL directory inside a data directory, where etcd keeps its own.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal: io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wal: corrupt segment {file} at offset {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("wal: {kind:?} record at index {index} does not follow the log ({first_index}..={last_index})")]
    OutOfSequence {
        kind: RecordKind,
        index: u64,
        first_index: u64,
        last_index: u64,
    },
    #[error("wal: record payload of {bytes} bytes exceeds the {bytes_max}-byte bound")]
    RecordTooLarge { bytes: usize, bytes_max: usize },
    #[error("wal: index {index} is before the first retained entry {first_index}")]
    Compacted { index: u64, first_index: u64 },
    #[error("wal: index {index} is past the last entry {last_index}")]
    Unavailable { index: u64, last_index: u64 },
    #[error("wal: a write failed, the log refuses further appends until reopened: {0}")]
    Failed(String),
    #[error("wal: {dir} is in use by another process: {source}")]
    Locked {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL segment {file} is encrypted with key id {id}; pass --encryption-key-file")]
    KeyFileMissing { file: PathBuf, id: u32 },
    #[error(
        "WAL segment {file} is encrypted with key id {id}, which the encryption key file does \
         not hold"
    )]
    KeyUnknown { file: PathBuf, id: u32 },
    #[error("wrong encryption key for key id {id} in {file}")]
    WrongKey { file: PathBuf, id: u32 },
    #[error("wal: invalid options {0}")]
    BadOptions(String),
}

impl WalError {
    fn io(path: &Path, source: std::io::Error) -> WalError {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Refuses a segment whose key the key file cannot give (checked before any record).
    fn key(file: &Path, id: u32, problem: format::KeyProblem) -> WalError {
        let file = file.to_path_buf();
        match problem {
            format::KeyProblem::NoKeyFile => WalError::KeyFileMissing { file, id },
            format::KeyProblem::UnknownId => WalError::KeyUnknown { file, id },
            format::KeyProblem::WrongKey => WalError::WrongKey { file, id },
        }
    }

    /// A sealed record whose crc holds but whose payload does not authenticate: never handed
    /// on as data.
    fn unauthentic(file: &Path, offset: u64, what: &str, id: u32) -> WalError {
        WalError::Corrupt {
            file: file.to_path_buf(),
            offset,
            reason: unauthentic_reason(what, id),
        }
    }
}

fn unauthentic_reason(what: &str, id: u32) -> String {
    format!(
        "{what} fails authentication under key id {id} (altered on disk or moved from elsewhere)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_byte_and_name() {
        for k in RecordKind::ALL {
            assert_eq!(RecordKind::from_u8(k as u8), Some(k));
            assert_eq!(RecordKind::from_name(k.name()), Some(k));
        }
        assert_eq!(RecordKind::from_u8(0), None);
    }

    #[test]
    fn default_options_are_valid_and_small_batches_are_refused() {
        assert!(WalOptions::default().validate().is_ok());
        let tiny = WalOptions {
            batch_bytes_max: 1024,
            ..WalOptions::default()
        };
        assert!(tiny.validate().is_err());
    }
}
