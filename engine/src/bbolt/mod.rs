//! etcd's storage file format (bbolt 1.3, as etcd 3.4 and 3.5 write it): a reader for etcd's
//! snapshots and data dirs, and a bulk writer for snapshots that etcd's tools accept. Our own
//! code from the format's description; no bbolt library.
//!
//! Owns: the byte layout of a bbolt file and its checks. Must never: follow a page that fails a
//! check, read a page twice in one walk (a cycle), or write a file etcd's `tx.Check` refuses.
//!
//! # File format (bbolt version 2; every integer little-endian, as bbolt writes on amd64)
//! The file is an array of pages of `page_size` bytes (4096 on Linux, recorded in the meta).
//! Every page starts with a 16-byte header:
//!
//! ```text
//! byte 0          8         10        12            16
//!      +----------+---------+---------+-------------+
//!      | id  u64  | flags   | count   | overflow    |   flags: 0x01 branch, 0x02 leaf,
//!      |          | u16     | u16     | u32         |          0x04 meta, 0x10 freelist
//!      +----------+---------+---------+-------------+
//! ```
//!
//! `id` is the page's own number; a page whose content is longer than one page continues in the
//! `overflow` pages that follow it.
//!
//! - **Meta** (pages 0 and 1, the valid one with the larger txid wins), after the header:
//!   `magic u32 = 0xED0CDAED | version u32 = 2 | page_size u32 | flags u32 | root bucket
//!   (root pgid u64, sequence u64) | freelist pgid u64 | pgid u64 (high water mark: pages in
//!   use) | txid u64 | checksum u64` where the checksum is FNV-1a 64 of the 56 bytes before it.
//! - **Freelist**: `count` page ids (u64) after the header; a count of 0xFFFF means the real
//!   count is the first u64.
//! - **Branch**: `count` elements of 16 bytes `pos u32 | ksize u32 | child pgid u64`, then the
//!   keys; `pos` counts from the element's own first byte. Each key is its child's first key.
//! - **Leaf**: `count` elements of 16 bytes `flags u32 | pos u32 | ksize u32 | vsize u32`, then
//!   key and value bytes (`pos` as above, the value right after the key). Flag 0x01 marks a
//!   nested bucket, whose value is a bucket header `root pgid u64 | sequence u64`; a root of 0
//!   means the bucket is *inline*: a leaf page (header and elements) follows the bucket header
//!   inside the value.
//!
//! The meta's root bucket holds etcd's buckets (`key`, `meta`, `lease`, ...), each a nested
//! bucket of plain records. Every page below the high water mark is a meta, the freelist, a
//! page reachable from the root, or listed free (bbolt's `tx.Check`).
//!
//! # etcd's snapshot trailer
//! A file from etcd's Snapshot RPC is the bbolt file followed by the sha256 of it (32 bytes).
//! etcdutl tells the two apart by length: a trailer is present when `len % 512 == 32`.

mod read;
mod write;

pub use read::{BboltFile, BucketEntries, Record};
pub use write::BboltWriter;

/// `magic` of a bbolt meta page.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The bbolt file format version this module reads and writes.
pub const VERSION: u32 = 2;
/// The page size etcd's files have on Linux (bbolt uses the OS page size).
pub const PAGE_SIZE: usize = 4096;
/// Bytes of etcd's sha256 snapshot trailer.
pub const SHA256_TRAILER_BYTES: u64 = 32;

const PAGE_HEADER_BYTES: usize = 16;
const ELEMENT_BYTES: usize = 16;
const BUCKET_HEADER_BYTES: usize = 16;
/// Bytes of the meta fields covered by its checksum.
const META_SUMMED_BYTES: usize = 56;
const META_BYTES: usize = META_SUMMED_BYTES + 8;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
const BUCKET_LEAF_FLAG: u32 = 0x01;

/// Whether a file of `len` bytes carries etcd's sha256 trailer (etcdutl's rule).
pub fn has_sha256_trailer(len: u64) -> bool {
    len % 512 == SHA256_TRAILER_BYTES
}

/// Whether `first_bytes` (the start of a file) begin with a bbolt meta page.
pub fn looks_like_bbolt(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= PAGE_HEADER_BYTES + 8
        && u16_at(first_bytes, 8) & META_PAGE != 0
        && u32_at(first_bytes, PAGE_HEADER_BYTES) == MAGIC
}

/// What a bbolt file can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("page {page}: {reason}")]
    Corrupt { page: u64, reason: String },
    #[error("bucket {bucket:?}: {reason}")]
    Bucket { bucket: String, reason: String },
}

fn corrupt(page: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        page,
        reason: reason.into(),
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// FNV-1a, 64 bits: the meta page checksum.
fn fnv64a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The fields of a meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    page_size: u32,
    root: u64,
    freelist: u64,
    high_water: u64,
    txid: u64,
}

impl Meta {
    fn encode(&self, page_id: u64) -> [u8; PAGE_HEADER_BYTES + META_BYTES] {
        let mut page = [0u8; PAGE_HEADER_BYTES + META_BYTES];
        page[..8].copy_from_slice(&page_id.to_le_bytes());
        page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
        let meta = &mut page[PAGE_HEADER_BYTES..];
        meta[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        meta[4..8].copy_from_slice(&VERSION.to_le_bytes());
        meta[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        meta[16..24].copy_from_slice(&self.root.to_le_bytes());
        meta[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        meta[40..48].copy_from_slice(&self.high_water.to_le_bytes());
        meta[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv64a(&meta[..META_SUMMED_BYTES]);
        meta[56..64].copy_from_slice(&sum.to_le_bytes());
        page
    }

    /// The meta in `page` (its first bytes), or why it is not valid.
    fn decode(page: &[u8]) -> Result<Meta, String> {
        if page.len() < PAGE_HEADER_BYTES + META_BYTES {
            return Err(format!("{} bytes, a meta page needs 80", page.len()));
        }
        if u16_at(page, 8) & META_PAGE == 0 {
            return Err(format!(
                "page flags {:#x}, expected a meta page",
                u16_at(page, 8)
            ));
        }
        let meta = &page[PAGE_HEADER_BYTES..];
        if u32_at(meta, 0) != MAGIC {
            return Err(format!("magic {:#x}, expected {MAGIC:#x}", u32_at(meta, 0)));
        }
        if u32_at(meta, 4) != VERSION {
            return Err(format!(
                "bbolt version {}, expected {VERSION}",
                u32_at(meta, 4)
            ));
        }
        let sum = u64_at(meta, 56);
        if sum != 0 && sum != fnv64a(&meta[..META_SUMMED_BYTES]) {
            return Err("meta checksum (fnv64a) does not match".into());
        }
        Ok(Meta {
            page_size: u32_at(meta, 8),
            root: u64_at(meta, 16),
            freelist: u64_at(meta, 32),
            high_water: u64_at(meta, 40),
            txid: u64_at(meta, 48),
        })
    }
}

#[cfg(test)]
mod tests;
