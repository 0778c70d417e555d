//! The two meta pages (pages 0 and 1). A checkpoint writes the slot that does not hold the
//! newest durable meta, so a torn meta write always leaves the previous one intact; open takes
//! the valid meta with the highest sequence number.
//!
//! ```text
//! byte  0..16   common page header (kind 1; entry count = number of buckets;
//!               txn id = last transaction included)
//! byte 16..24   magic "BASALTBT"
//! byte 24..28   page size in bytes (u32)
//! byte 28..32   zero
//! byte 32..40   meta sequence number (u64, +1 per checkpoint; the higher valid one wins)
//! byte 40..48   applied raft index given to the checkpoint (u64)
//! byte 48..56   high-water page count: pages at or above it are unused (u64)
//! byte 56..64   freelist chain: first page (u64, 0 = none)
//! byte 64..72   freelist chain: number of free page ids (u64)
//! byte 72..76   freelist chain: crc32c of its first page (u32)
//! byte 76..80   zero
//! byte 80..88   written-list chain: first page (u64, 0 = none)
//! byte 88..96   written-list chain: number of entries (u64)
//! byte 96..100  written-list chain: crc32c of its first page (u32)
//! byte 100..104 zero
//! byte 104..    buckets, in name order: name_len u8 | name bytes | root page u64 (0 = empty)
//! rest          zero, covered by the crc
//! ```

use super::chain::ChainHead;
use super::page::{self, Kind, PageRef, HEADER_BYTES};
use super::Error;

pub(crate) const MAGIC: &[u8; 8] = b"BASALTBT";
const BUCKETS_AT: usize = 104;
pub(crate) const BUCKET_NAME_BYTES_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) page_size: usize,
    pub(crate) txn_id: u64,
    pub(crate) seq: u64,
    pub(crate) applied_index: u64,
    pub(crate) high_water_pages: u64,
    pub(crate) freelist: ChainHead,
    pub(crate) written: ChainHead,
    /// Sorted by name.
    pub(crate) buckets: Vec<(String, u64)>,
}

/// Bytes the bucket table takes; used to refuse a bucket that would not fit a meta page.
pub(crate) fn buckets_bytes(buckets: &[(String, u64)]) -> usize {
    buckets.iter().map(|(name, _)| 1 + name.len() + 8).sum()
}

pub(crate) fn buckets_fit(buckets: &[(String, u64)], page_size: usize) -> bool {
    BUCKETS_AT + buckets_bytes(buckets) <= page_size
}

impl Meta {
    pub(crate) fn encode(&self, page: &mut [u8]) {
        assert_eq!(page.len(), self.page_size);
        assert!(
            buckets_fit(&self.buckets, self.page_size),
            "bucket table overflows the meta page"
        );
        page.fill(0);
        page::write_header(page, Kind::Meta, self.buckets.len(), self.txn_id);
        page[16..24].copy_from_slice(MAGIC);
        page::put_u32(page, 24, self.page_size as u32);
        page::put_u64(page, 32, self.seq);
        page::put_u64(page, 40, self.applied_index);
        page::put_u64(page, 48, self.high_water_pages);
        for (at, chain) in [(56, self.freelist), (80, self.written)] {
            page::put_u64(page, at, chain.page);
            page::put_u64(page, at + 8, chain.entries);
            page::put_u32(page, at + 16, chain.crc);
        }
        let mut at = BUCKETS_AT;
        for (name, root) in &self.buckets {
            page[at] = name.len() as u8;
            page[at + 1..at + 1 + name.len()].copy_from_slice(name.as_bytes());
            page::put_u64(page, at + 1 + name.len(), *root);
            at += 1 + name.len() + 8;
        }
        page::seal(page);
    }

    /// Reads the page size a meta page claims, before the page itself can be checked.
    pub(crate) fn peek_page_size(first_bytes: &[u8]) -> Option<usize> {
        if first_bytes.len() < 28 || &first_bytes[16..24] != MAGIC {
            return None;
        }
        Some(u32::from_le_bytes(first_bytes[24..28].try_into().ok()?) as usize)
    }

    pub(crate) fn decode(id: u64, bytes: &[u8]) -> Result<Meta, Error> {
        let page = PageRef::new(id, bytes, bytes.len(), true)?;
        if page.kind() != Kind::Meta {
            return Err(page.corrupt(4, "meta slot does not hold a meta page"));
        }
        if &bytes[16..24] != MAGIC {
            return Err(page.corrupt(16, "bad magic"));
        }
        let page_size = page.u32_at(24)? as usize;
        if page_size != bytes.len() {
            return Err(page.corrupt(24, "page size differs from the other meta page"));
        }
        let mut buckets = Vec::with_capacity(page.count());
        let mut at = BUCKETS_AT;
        for _ in 0..page.count() {
            let name_len = *bytes
                .get(at)
                .ok_or_else(|| page.corrupt(at, "bucket table runs past the page"))?
                as usize;
            let name = bytes
                .get(at + 1..at + 1 + name_len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| {
                    page.corrupt(at, "bucket name is not valid UTF-8 inside the page")
                })?;
            let root = page.u64_at(at + 1 + name_len)?;
            buckets.push((name.to_owned(), root));
            at += 1 + name_len + 8;
        }
        Ok(Meta {
            page_size,
            txn_id: page.txn_id(),
            seq: page.u64_at(32)?,
            applied_index: page.u64_at(40)?,
            high_water_pages: page.u64_at(48)?,
            freelist: ChainHead {
                page: page.u64_at(56)?,
                entries: page.u64_at(64)?,
                crc: page.u32_at(72)?,
            },
            written: ChainHead {
                page: page.u64_at(80)?,
                entries: page.u64_at(88)?,
                crc: page.u32_at(96)?,
            },
            buckets,
        })
    }
}

const _: () = assert!(BUCKETS_AT >= HEADER_BYTES + 88);
