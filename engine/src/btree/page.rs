//! The on-disk page format: encoding pages into buffers and reading them back with every offset
//! bounds-checked, so a corrupt page yields [`Error::Corrupt`] and is never followed.
//!
//! Every page starts with the same 16-byte header (all integers little-endian):
//!
//! ```text
//! byte  0..4   crc32c of bytes 4..end (for an overflow run: to the end of the whole run)
//! byte  4      kind: 1 meta, 2 branch, 3 leaf, 4 overflow, 5 freelist, 6 written list
//! byte  5      format version (FORMAT_VERSION)
//! byte  6..8   entry count (u16)
//! byte  8..16  id of the transaction that wrote the page (u64)
//! ```
//!
//! Branch page (kind 2), `n` = entry count, `n` children, child `i` holds keys in
//! `[key i, key i+1)`; key 0 is stored empty because the parent already bounds it:
//!
//! ```text
//! 16 .. 16+2n        slot i: u16 byte offset of entry i inside the page
//! entry:             key_len u16 | child page u64 | key bytes
//! ```
//!
//! Leaf page (kind 3), keys strictly ascending:
//!
//! ```text
//! 16 .. 16+2n        slot i: u16 byte offset of entry i inside the page
//! entry:             key_len u16 | flags u8 | value_len u32 | key bytes | value
//!                    flags bit 0 clear: value_len bytes of value follow inline
//!                    flags bit 0 set:   u64 first page of an overflow run holding the value
//! ```
//!
//! Overflow run (kind 4): `pages` consecutive pages, one header for the whole run:
//!
//! ```text
//! 16..20  pages in the run (u32)     20..24  zero
//! 24..32  value length in bytes (u64)
//! 32..    value bytes, then zero padding to the end of the run
//! ```
//!
//! The meta page (kind 1) is drawn in `meta.rs`, the chains (kinds 5 and 6) in `chain.rs`.

use super::Error;

pub(crate) const HEADER_BYTES: usize = 16;
pub(crate) const FORMAT_VERSION: u8 = 1;
pub(crate) const SLOT_BYTES: usize = 2;
pub(crate) const BRANCH_ENTRY_FIXED_BYTES: usize = 2 + 8;
pub(crate) const LEAF_ENTRY_FIXED_BYTES: usize = 2 + 1 + 4;
pub(crate) const OVERFLOW_DATA_OFFSET: usize = 32;
const LEAF_FLAG_OVERFLOW: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Meta = 1,
    Branch = 2,
    Leaf = 3,
    Overflow = 4,
    Freelist = 5,
    Written = 6,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Meta,
            2 => Kind::Branch,
            3 => Kind::Leaf,
            4 => Kind::Overflow,
            5 => Kind::Freelist,
            6 => Kind::Written,
            _ => return None,
        })
    }
}

pub(crate) fn write_header(page: &mut [u8], kind: Kind, count: usize, txn_id: u64) {
    assert!(
        count <= u16::MAX as usize,
        "entry count {count} does not fit a page header"
    );
    page[4] = kind as u8;
    page[5] = FORMAT_VERSION;
    page[6..8].copy_from_slice(&(count as u16).to_le_bytes());
    page[8..16].copy_from_slice(&txn_id.to_le_bytes());
}

/// Stamps the checksum; must be the last change to a page before it is written.
pub(crate) fn seal(page: &mut [u8]) {
    let crc = crc32c::crc32c(&page[4..]);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
}

pub(crate) fn checksum_ok(page: &[u8]) -> bool {
    page.len() >= HEADER_BYTES && crc32c::crc32c(&page[4..]).to_le_bytes() == page[0..4]
}

/// What an encrypted file's image holds in place of a page whose slot failed authentication
/// (`sealed.rs`): never a valid page (byte 4 is no page kind), so a reader stops at it, and
/// recognised to say why.
pub(crate) const SEALED_PAGE_FAILED: &[u8; 16] = b"BASALT-NOT-OPEN\xff";
pub(crate) const SEALED_PAGE_FAILED_REASON: &str =
    "encrypted page failed decryption/authentication (damaged, torn by a crash, or moved)";

/// Why a page that failed its checks is bad: its encrypted slot failed, or its checksum.
pub(crate) fn checksum_failure(page: &[u8]) -> &'static str {
    if page.starts_with(SEALED_PAGE_FAILED) {
        SEALED_PAGE_FAILED_REASON
    } else {
        "checksum mismatch"
    }
}

pub(crate) fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A leaf value as stored in a page: inline bytes or a reference to an overflow run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StoredValue<'a> {
    Inline(&'a [u8]),
    Overflow { page: u64, len_bytes: u64 },
}

/// Bytes an overflow run needs for a value of `len_bytes`.
pub(crate) fn overflow_pages(len_bytes: u64, page_size: usize) -> u64 {
    (OVERFLOW_DATA_OFFSET as u64 + len_bytes).div_ceil(page_size as u64)
}

/// A checked, read-only view of one page (or, for overflow, the first page of a run).
#[derive(Clone, Copy)]
pub(crate) struct PageRef<'a> {
    pub(crate) id: u64,
    pub(crate) bytes: &'a [u8],
    page_size: usize,
    kind: Kind,
    count: usize,
}

impl<'a> PageRef<'a> {
    /// Validates the header; `verify` also checks the crc (the caller passes the whole run for
    /// overflow pages when it wants that checked).
    pub(crate) fn new(
        id: u64,
        bytes: &'a [u8],
        page_size: usize,
        verify: bool,
    ) -> Result<Self, Error> {
        PageRef::checked(id, bytes, page_size, verify).map_err(|error| {
            if bytes.starts_with(SEALED_PAGE_FAILED) {
                Error::corrupt(id, page_size, 0, SEALED_PAGE_FAILED_REASON)
            } else {
                error
            }
        })
    }

    fn checked(id: u64, bytes: &'a [u8], page_size: usize, verify: bool) -> Result<Self, Error> {
        let corrupt =
            |offset: usize, reason: &'static str| Error::corrupt(id, page_size, offset, reason);
        if bytes.len() < HEADER_BYTES {
            return Err(corrupt(0, "page shorter than its header"));
        }
        if verify && !checksum_ok(bytes) {
            return Err(corrupt(0, checksum_failure(bytes)));
        }
        let kind = Kind::from_byte(bytes[4]).ok_or_else(|| corrupt(4, "unknown page kind"))?;
        if bytes[5] != FORMAT_VERSION {
            return Err(corrupt(5, "unsupported page format version"));
        }
        let count = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
        let page = PageRef {
            id,
            bytes,
            page_size,
            kind,
            count,
        };
        if matches!(kind, Kind::Branch | Kind::Leaf)
            && HEADER_BYTES + count * SLOT_BYTES > bytes.len()
        {
            return Err(corrupt(6, "slot array runs past the page end"));
        }
        Ok(page)
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }
    pub(crate) fn count(&self) -> usize {
        self.count
    }
    pub(crate) fn txn_id(&self) -> u64 {
        u64::from_le_bytes(self.bytes[8..16].try_into().expect("header length checked"))
    }

    pub(crate) fn corrupt(&self, offset: usize, reason: &'static str) -> Error {
        Error::corrupt(self.id, self.page_size, offset, reason)
    }

    fn range(&self, at: usize, len: usize) -> Result<&'a [u8], Error> {
        at.checked_add(len)
            .and_then(|end| self.bytes.get(at..end))
            .ok_or_else(|| self.corrupt(at, "field runs past the page end"))
    }
    pub(crate) fn u16_at(&self, at: usize) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(
            self.range(at, 2)?.try_into().expect("length 2"),
        ))
    }
    pub(crate) fn u32_at(&self, at: usize) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.range(at, 4)?.try_into().expect("length 4"),
        ))
    }
    pub(crate) fn u64_at(&self, at: usize) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.range(at, 8)?.try_into().expect("length 8"),
        ))
    }

    fn entry_offset(&self, i: usize) -> Result<usize, Error> {
        debug_assert!(i < self.count);
        Ok(self.u16_at(HEADER_BYTES + i * SLOT_BYTES)? as usize)
    }

    pub(crate) fn key(&self, i: usize) -> Result<&'a [u8], Error> {
        let at = self.entry_offset(i)?;
        let key_len = self.u16_at(at)? as usize;
        let fixed = match self.kind {
            Kind::Branch => BRANCH_ENTRY_FIXED_BYTES,
            _ => LEAF_ENTRY_FIXED_BYTES,
        };
        self.range(at + fixed, key_len)
    }

    pub(crate) fn child(&self, i: usize) -> Result<u64, Error> {
        debug_assert_eq!(self.kind, Kind::Branch);
        let at = self.entry_offset(i)?;
        self.u64_at(at + 2)
    }

    pub(crate) fn value(&self, i: usize) -> Result<StoredValue<'a>, Error> {
        debug_assert_eq!(self.kind, Kind::Leaf);
        let at = self.entry_offset(i)?;
        let key_len = self.u16_at(at)? as usize;
        let flags = *self.range(at + 2, 1)?.first().expect("length 1");
        let len_bytes = self.u32_at(at + 3)? as u64;
        let value_at = at + LEAF_ENTRY_FIXED_BYTES + key_len;
        if flags & LEAF_FLAG_OVERFLOW != 0 {
            Ok(StoredValue::Overflow {
                page: self.u64_at(value_at)?,
                len_bytes,
            })
        } else {
            Ok(StoredValue::Inline(
                self.range(value_at, len_bytes as usize)?,
            ))
        }
    }

    /// First slot whose key is >= `key`, and whether it is equal.
    pub(crate) fn lower_bound(&self, key: &[u8]) -> Result<(usize, bool), Error> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid)?.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Equal => return Ok((mid, true)),
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok((lo, false))
    }

    /// The child of a branch that can hold `key`: the last child whose lower key is <= `key`.
    pub(crate) fn child_index(&self, key: &[u8]) -> Result<usize, Error> {
        if self.count == 0 {
            return Err(self.corrupt(6, "branch page without children"));
        }
        // Key 0 is an open lower bound, so the search runs over keys 1..count.
        let (mut lo, mut hi) = (1, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid)? <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo - 1)
    }
}

/// Encoded size of a leaf entry with an inline value of `inline_len` bytes (8 for overflow).
pub(crate) fn leaf_entry_bytes(key_len: usize, inline_len: usize) -> usize {
    SLOT_BYTES + LEAF_ENTRY_FIXED_BYTES + key_len + inline_len
}

/// Encoded sizes of the leaf entries `keys[i] -> values[i]`, for packing them into pages.
pub(crate) fn leaf_entry_sizes<K: AsRef<[u8]>>(
    keys: &[K],
    values: &[StoredValue<'_>],
) -> Vec<usize> {
    debug_assert_eq!(keys.len(), values.len());
    keys.iter()
        .zip(values)
        .map(|(key, value)| {
            let inline_len = match value {
                StoredValue::Inline(bytes) => bytes.len(),
                StoredValue::Overflow { .. } => 8,
            };
            leaf_entry_bytes(key.as_ref().len(), inline_len)
        })
        .collect()
}

pub(crate) fn branch_entry_bytes(key_len: usize) -> usize {
    SLOT_BYTES + BRANCH_ENTRY_FIXED_BYTES + key_len
}

/// Writes entries of one leaf or branch page. Entries must be pushed in key order and the
/// caller must have checked that they fit.
struct NodeWriter<'a> {
    page: &'a mut [u8],
    count: usize,
    capacity: usize,
    next_entry_at: usize,
}

impl<'a> NodeWriter<'a> {
    fn new(page: &'a mut [u8], capacity: usize) -> Self {
        page.fill(0);
        let next_entry_at = HEADER_BYTES + capacity * SLOT_BYTES;
        NodeWriter {
            page,
            count: 0,
            capacity,
            next_entry_at,
        }
    }

    fn slot(&mut self) -> usize {
        assert!(
            self.count < self.capacity,
            "more entries than the slot array holds"
        );
        let at = self.next_entry_at;
        put_u16(self.page, HEADER_BYTES + self.count * SLOT_BYTES, at as u16);
        self.count += 1;
        at
    }

    fn push_branch(&mut self, key: &[u8], child: u64) {
        let at = self.slot();
        put_u16(self.page, at, key.len() as u16);
        put_u64(self.page, at + 2, child);
        self.page[at + BRANCH_ENTRY_FIXED_BYTES..at + BRANCH_ENTRY_FIXED_BYTES + key.len()]
            .copy_from_slice(key);
        self.next_entry_at = at + BRANCH_ENTRY_FIXED_BYTES + key.len();
    }

    fn push_leaf(&mut self, key: &[u8], value: StoredValue<'_>) {
        let at = self.slot();
        put_u16(self.page, at, key.len() as u16);
        let key_at = at + LEAF_ENTRY_FIXED_BYTES;
        self.page[key_at..key_at + key.len()].copy_from_slice(key);
        let value_at = key_at + key.len();
        match value {
            StoredValue::Inline(bytes) => {
                self.page[at + 2] = 0;
                put_u32(self.page, at + 3, bytes.len() as u32);
                self.page[value_at..value_at + bytes.len()].copy_from_slice(bytes);
                self.next_entry_at = value_at + bytes.len();
            }
            StoredValue::Overflow { page, len_bytes } => {
                self.page[at + 2] = LEAF_FLAG_OVERFLOW;
                put_u32(self.page, at + 3, len_bytes as u32);
                put_u64(self.page, value_at, page);
                self.next_entry_at = value_at + 8;
            }
        }
    }

    fn finish(self, kind: Kind, txn_id: u64) {
        assert_eq!(
            self.count, self.capacity,
            "slot array sized for a different entry count"
        );
        write_header(self.page, kind, self.count, txn_id);
        seal(self.page);
    }
}

/// One leaf page holding `entries` (which must fit).
pub(crate) fn encode_leaf<'v>(
    page_size: usize,
    txn_id: u64,
    entries: impl ExactSizeIterator<Item = (&'v [u8], StoredValue<'v>)>,
) -> Vec<u8> {
    let mut buf = vec![0u8; page_size];
    let mut w = NodeWriter::new(&mut buf, entries.len());
    for (key, value) in entries {
        w.push_leaf(key, value);
    }
    w.finish(Kind::Leaf, txn_id);
    buf
}

/// One branch page; the first key is not stored because the parent bounds it.
pub(crate) fn encode_branch<'k>(
    page_size: usize,
    txn_id: u64,
    entries: impl ExactSizeIterator<Item = (&'k [u8], u64)>,
) -> Vec<u8> {
    let mut buf = vec![0u8; page_size];
    let mut w = NodeWriter::new(&mut buf, entries.len());
    for (i, (key, child)) in entries.enumerate() {
        w.push_branch(if i == 0 { &[] } else { key }, child);
    }
    w.finish(Kind::Branch, txn_id);
    buf
}

/// One overflow run holding `value`.
pub(crate) fn encode_overflow(page_size: usize, txn_id: u64, value: &[u8]) -> Vec<u8> {
    let pages = overflow_pages(value.len() as u64, page_size);
    let mut buf = vec![0u8; pages as usize * page_size];
    write_header(&mut buf, Kind::Overflow, 0, txn_id);
    put_u32(
        &mut buf,
        16,
        u32::try_from(pages).expect("values are under 4 GiB"),
    );
    put_u64(&mut buf, 24, value.len() as u64);
    buf[OVERFLOW_DATA_OFFSET..OVERFLOW_DATA_OFFSET + value.len()].copy_from_slice(value);
    seal(&mut buf);
    buf
}
