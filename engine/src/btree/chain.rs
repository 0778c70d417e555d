//! The two page chains a checkpoint writes next to its meta page, and the recovery check that
//! lets a checkpoint get by with a single fdatasync.
//!
//! - The freelist (kind 5): every page the checkpointed tree does not reach; entries are page
//!   ids (u64).
//! - The written list (kind 6): every page of the tree written since the previous checkpoint,
//!   with the crc32c it was written with; entries are page id (u64) | crc (u32).
//!
//! A checkpoint writes tree pages, both chains and the meta page, then syncs once. The disk may
//! have kept any subset of those writes, so open accepts a meta only if its chains and every
//! page on its written list read back with the crc recorded for them; otherwise it falls back
//! to the other meta slot, whose pages the writer has not touched (see `alloc.rs`). Comparing
//! the recorded crc, not just a valid one, catches a page that still holds older valid content.
//!
//! Chain page layout (after the common 16-byte header; entry count in the header):
//!
//! ```text
//! 16..24  next page of the chain (u64, 0 = last)
//! 24..28  crc32c of the next page (u32, 0 when last): each page vouches for the next
//! 28..32  zero
//! 32..    entries
//! ```

use super::file::PageFile;
use super::page::{self, Kind, PageRef};
use super::Error;

pub(crate) const ENTRIES_OFFSET: usize = 32;
pub(crate) const FREE_ENTRY_BYTES: usize = 8;
pub(crate) const WRITTEN_ENTRY_BYTES: usize = 12;

/// Where a chain starts, as the meta page records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChainHead {
    pub(crate) page: u64,
    pub(crate) crc: u32,
    pub(crate) entries: u64,
}

pub(crate) fn entries_per_page(page_size: usize, entry_bytes: usize) -> usize {
    (page_size - ENTRIES_OFFSET) / entry_bytes
}

pub(crate) fn pages_needed(entries: usize, page_size: usize, entry_bytes: usize) -> usize {
    entries.div_ceil(entries_per_page(page_size, entry_bytes))
}

/// Lays `entries` (concatenated, `entry_bytes` each) into the pages `pages`, head first. Pages
/// beyond what the entries need stay in the chain, empty.
pub(crate) fn encode(
    kind: Kind,
    entry_bytes: usize,
    entries: &[u8],
    pages: &[u64],
    page_size: usize,
    txn_id: u64,
) -> (Vec<(u64, Vec<u8>)>, ChainHead) {
    assert_eq!(entries.len() % entry_bytes, 0);
    let count = entries.len() / entry_bytes;
    assert!(
        pages_needed(count, page_size, entry_bytes) <= pages.len(),
        "chain pages too few"
    );
    let per_page_bytes = entries_per_page(page_size, entry_bytes) * entry_bytes;
    let mut chunks = entries.chunks(per_page_bytes);
    let mut bodies: Vec<&[u8]> = pages.iter().map(|_| chunks.next().unwrap_or(&[])).collect();
    let mut out = Vec::with_capacity(pages.len());
    let (mut next, mut next_crc) = (0u64, 0u32);
    // Tail first, so each page can carry the crc of the one after it.
    for (&id, body) in pages.iter().zip(bodies.drain(..)).rev() {
        let mut buf = vec![0u8; page_size];
        page::write_header(&mut buf, kind, body.len() / entry_bytes, txn_id);
        page::put_u64(&mut buf, 16, next);
        page::put_u32(&mut buf, 24, next_crc);
        buf[ENTRIES_OFFSET..ENTRIES_OFFSET + body.len()].copy_from_slice(body);
        page::seal(&mut buf);
        (next, next_crc) = (
            id,
            u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")),
        );
        out.push((id, buf));
    }
    out.reverse();
    (
        out,
        ChainHead {
            page: next,
            crc: next_crc,
            entries: count as u64,
        },
    )
}

/// Reads a chain back, checking every page against the crc its predecessor recorded. Returns
/// the chain's pages and its entries (concatenated).
pub(crate) fn read(
    file: &dyn PageFile,
    head: ChainHead,
    kind: Kind,
    entry_bytes: usize,
    page_size: usize,
    high_water_pages: u64,
) -> Result<(Vec<u64>, Vec<u8>), Error> {
    let (mut pages, mut entries) = (Vec::new(), Vec::new());
    let (mut next, mut expected_crc) = (head.page, head.crc);
    let mut buf = vec![0u8; page_size];
    while next != 0 {
        if next < 2 || next >= high_water_pages || pages.len() as u64 > high_water_pages {
            return Err(Error::corrupt(
                next,
                page_size,
                16,
                "page chain leaves the file or loops",
            ));
        }
        file.read_at(&mut buf, next * page_size as u64)?;
        let page = PageRef::new(next, &buf, page_size, true)?;
        if u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) != expected_crc {
            return Err(page.corrupt(0, "chain page differs from what the checkpoint wrote"));
        }
        if page.kind() != kind {
            return Err(page.corrupt(4, "chain reaches a page of another kind"));
        }
        let body_bytes = page.count() * entry_bytes;
        let body = buf
            .get(ENTRIES_OFFSET..ENTRIES_OFFSET + body_bytes)
            .ok_or_else(|| page.corrupt(6, "chain page entries run past the page"))?;
        entries.extend_from_slice(body);
        pages.push(next);
        next = page.u64_at(16)?;
        expected_crc = page.u32_at(24)?;
    }
    if entries.len() as u64 != head.entries * entry_bytes as u64 {
        return Err(Error::corrupt(
            head.page,
            page_size,
            0,
            "chain length differs from the meta page",
        ));
    }
    Ok((pages, entries))
}

/// Checks that `page` (or the overflow run starting there) holds exactly what was written.
pub(crate) fn verify_written(
    file: &dyn PageFile,
    id: u64,
    crc: u32,
    page_size: usize,
    high_water_pages: u64,
) -> Result<(), Error> {
    let mismatch = || {
        Error::corrupt(
            id,
            page_size,
            0,
            "page written before the checkpoint did not reach the disk",
        )
    };
    if id < 2 || id >= high_water_pages {
        return Err(Error::corrupt(
            id,
            page_size,
            0,
            "written page outside the file",
        ));
    }
    let mut buf = vec![0u8; page_size];
    file.read_at(&mut buf, id * page_size as u64)?;
    if buf[4] == Kind::Overflow as u8 {
        let pages = u32::from_le_bytes(buf[16..20].try_into().expect("4 bytes")) as u64;
        if pages == 0 || id + pages > high_water_pages {
            return Err(mismatch());
        }
        buf.resize(pages as usize * page_size, 0);
        file.read_at(&mut buf, id * page_size as u64)?;
    }
    if u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) != crc || !page::checksum_ok(&buf)
    {
        return Err(mismatch());
    }
    Ok(())
}
