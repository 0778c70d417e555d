//! A copy-on-write B+tree in one file: the store under MVCC revisions (LMDB's model).
//!
//! Owns: the tree file's format, page allocation, buckets (named trees), snapshots, durable
//! checkpoints, defragmentation and the offline `check`. Must never: rewrite a page that a
//! published snapshot or the newest durable meta can reach, fsync on commit (the WAL is the
//! durability point; [`Db::checkpoint`] is the only sync), or follow a page that fails its checks.
//!
//! ```no_run
//! # use basalt_engine::btree::{open, Options};
//! let db = open("/tmp/state.db", Options::default())?;
//! let mut txn = db.begin_write()?;
//! txn.bucket("key")?.insert(b"rev-1", b"kv bytes")?;
//! txn.commit()?; // visible to new readers, not yet durable
//! let read = db.begin_read()?; // Send + Sync: hand it to any thread
//! assert_eq!(read.get("key", b"rev-1")?, Some(&b"kv bytes"[..]));
//! db.checkpoint(42)?; // durable, with raft applied index 42
//! # Ok::<(), basalt_engine::btree::Error>(())
//! ```
//!
//! # Concurrency
//! One writer at a time ([`Db::begin_write`] takes a mutex). Readers never lock: a reader
//! claims a slot in a fixed table with one CAS, records the id of the snapshot it loaded from an
//! atomically swapped pointer, and reads pages through that snapshot's `memmap2` map. A page
//! freed by transaction `X` is reused only when every reader slot holds an id `>= X` and the
//! durable meta cannot reach it (see `alloc.rs`). When the file grows the writer maps it again;
//! old readers keep the map they started with until they drop.
//!
//! # Commit and checkpoint
//! Commit writes each changed node into a newly allocated page with `pwrite` (no fsync) and
//! publishes the new roots in memory. [`Db::checkpoint`]`(applied_index)` writes, in one batch,
//! the freelist, the *written list* (every tree page written since the previous checkpoint with
//! its crc) and the meta slot not holding the newest durable meta, then fdatasyncs once. Open
//! takes the newest meta whose crc is valid *and* whose chains and written pages all read back
//! with the recorded crcs (`chain.rs`); otherwise the previous meta, whose pages the writer never
//! touches before a newer checkpoint has returned. So a crash mid-checkpoint reopens at the
//! previous checkpoint, and a returned checkpoint is durable. The caller's WAL must therefore
//! keep entries from the previous checkpoint's applied index until the next one returns.
//!
//! # Media assumptions (stated once, relied on everywhere)
//! - `fdatasync` returning success means every earlier write to the file is on stable storage.
//! - A write that is interrupted may leave any mix of old and new bytes in the pages it covered,
//!   but never changes a page it did not cover; the crc32c in every page detects the mix.
//! - Writes are not ordered among themselves, not even a meta page after the pages it names.
//! - A read-only shared map shows the bytes of a completed `pwrite` (one page cache, Linux).
//!
//! # File format (version 1)
//! Fixed-size pages (4 KiB by default, recorded in the meta). Pages 0 and 1 are the two meta
//! slots (drawn in `meta.rs`); every other page is a branch, leaf, overflow run (`page.rs`) or
//! a freelist or written-list page (`chain.rs`),
//! each with a 16-byte header holding a crc32c and the format version (drawn in `page.rs`). A
//! change to any of these layouts is a bump of `FORMAT_VERSION`, and older versions are refused
//! with [`Error::Corrupt`] naming the page.
//!
//! # Encrypted files
//! With a keyring ([`Options::keyring`]) the same logical pages are stored sealed with
//! AES-256-GCM, one slot per page behind a plaintext header (magic `BASALTEC`, drawn in
//! `sealed.rs`); the tree reads a decrypted image kept in memory, so nothing above
//! [`PageFile`] changes and reads never decrypt. Defragmentation writes every page with the
//! current key, which is how a rotation retires an old key and how a plain file becomes
//! encrypted.

mod alloc;
mod chain;
mod check;
mod db;
mod defrag;
mod file;
mod meta;
mod node;
mod page;
mod read;
mod sealed;
mod write;

pub use check::{check, CheckReport, Problem};
pub use db::{open, open_read_only, Db, Options, Stats};
pub use file::{FaultFile, PageFile, StdFile};
pub use node::OwnedEntry;
pub use read::{Cursor, Entry, ReadTxn};
pub use sealed::{PlainReader, SealedFile, SealedWriter, SlotOpener, SlotSealer};
pub use write::{Bucket, WriteCursor, WriteTxn};

/// Everything the tree can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("btree file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The device is full (ENOSPC or EDQUOT) while pages are written: the commit or checkpoint
    /// was undone (no page it wrote is reachable from anything published or durable, and the
    /// pages it took are free again), so the writer stays usable and may try again once space
    /// returns.
    #[error("btree file: device full, nothing committed (retry once space is freed): {0}")]
    OutOfSpace(std::io::Error),
    /// A page failed its checksum or a structural check; nothing was read past it.
    #[error("btree file corrupt at page {page} (file offset {offset}): {reason}")]
    Corrupt {
        page: u64,
        offset: u64,
        reason: &'static str,
    },
    #[error("no valid meta page: {0}")]
    NoValidMeta(Box<Error>),
    #[error("key of {len} bytes exceeds the limit of {bytes_max}")]
    KeyTooLarge { len: usize, bytes_max: usize },
    #[error("value of {len} bytes exceeds the 4 GiB limit")]
    ValueTooLarge { len: u64 },
    #[error("bucket name {name:?} must be 1 to {bytes_max} bytes")]
    BucketName { name: String, bytes_max: usize },
    #[error("bucket table would no longer fit in the meta page")]
    TooManyBuckets,
    #[error("all {readers_max} reader slots are in use")]
    ReadersFull { readers_max: usize },
    #[error("invalid options: {0}")]
    InvalidOptions(&'static str),
    /// The file is encrypted and no key file was given.
    #[error(
        "btree file is encrypted (key ids {ids:?}); pass --encryption-key-file with those keys"
    )]
    Encrypted { ids: Vec<u32> },
    /// The key file lacks an id the encrypted file was written with.
    #[error("btree file is encrypted with key ids {ids:?}; the key file lacks key id {missing}")]
    KeyMissing { ids: Vec<u32>, missing: u32 },
    /// The key file holds another key under an id the file uses (its key check differs).
    #[error("wrong encryption key for key id {id} (the btree file's key check does not match)")]
    WrongKey { id: u32 },
    /// An earlier I/O error left the in-memory state unknown; reopen the file.
    #[error("btree writer stopped after an earlier failure; reopen the database")]
    Poisoned,
}

/// Bytes of an encrypted file's header (its two copies), before the first page's slot.
pub const SEALED_HEADER_BYTES: u64 = sealed::HEADER_BYTES;
/// Bytes of a plain tree file that name its page size.
pub const PAGE_SIZE_PEEK_BYTES: usize = 28;

/// The page size a plain tree file's first bytes (its first meta page) name.
pub fn peek_page_size(first_bytes: &[u8]) -> Option<usize> {
    meta::Meta::peek_page_size(first_bytes)
}

/// Whether `first_bytes` (the start of a file) begin with an encrypted file's header.
pub fn is_sealed(first_bytes: &[u8]) -> bool {
    sealed::is_sealed(first_bytes)
}

/// Whether `first_bytes` (the start of a file) begin with this format's meta page.
pub fn looks_like_btree(first_bytes: &[u8]) -> bool {
    meta::Meta::peek_page_size(first_bytes).is_some() || sealed::is_sealed(first_bytes)
}

impl Error {
    pub(crate) fn corrupt(
        page: u64,
        page_size: usize,
        offset_in_page: usize,
        reason: &'static str,
    ) -> Error {
        Error::Corrupt {
            page,
            offset: page * page_size as u64 + offset_in_page as u64,
            reason,
        }
    }
}
