//! Writing a bbolt file bottom-up from sorted records, as one pass: every level of a bucket's
//! tree keeps one open page, a full page is written at the next page id and its first key goes
//! up a level, so memory is one page per level whatever the number of records. The file ends
//! up exactly as bbolt's `tx.Check` wants it: pages 0 and 1 the metas, page 2 an empty freelist,
//! every later page reachable exactly once.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::btree::SealedWriter;
use crate::crypt::SharedKeyring;

use super::{
    Error, Meta, BRANCH_PAGE, BUCKET_HEADER_BYTES, BUCKET_LEAF_FLAG, ELEMENT_BYTES, FREELIST_PAGE,
    LEAF_PAGE, PAGE_HEADER_BYTES, PAGE_SIZE,
};

const FREELIST_PAGE_ID: u64 = 2;
const FIRST_TREE_PAGE: u64 = 3;
/// A fresh bbolt file's first two txids are 0 and 1; ours are as if one more write happened.
const TXID: u64 = 2;
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// An open page of one tree level: (flags, key, value or child page) elements.
#[derive(Default)]
struct OpenPage {
    elements: Vec<(u32, Vec<u8>, Vec<u8>)>,
    bytes: usize,
    /// Pages this level has written already (0 at the end: the open page is the root).
    written: u64,
}

/// A bucket being written: its name, previous key and open page per level (0: leaves).
type OpenBucket = (Vec<u8>, Option<Vec<u8>>, Vec<OpenPage>);

/// Builds a bbolt file from buckets whose records arrive in key order.
pub struct BboltWriter {
    out: Out,
    /// Whole pages written by [`BboltWriter::flush`] not yet handed to `out`.
    pending: Vec<u8>,
    next_page: u64,
    /// Every finished bucket: name and root page.
    buckets: Vec<(Vec<u8>, u64)>,
    /// The bucket being written.
    current: Option<OpenBucket>,
}

impl BboltWriter {
    /// Starts a new file at `path` (which must not exist); with a keyring it is written sealed
    /// (`btree::SealedWriter`, read back with `btree::PlainReader`).
    pub fn create(path: &Path, keyring: Option<&SharedKeyring>) -> Result<BboltWriter, Error> {
        let out = match keyring {
            Some(keyring) => Out::Sealed(
                SealedWriter::create(path, keyring, PAGE_SIZE).map_err(std::io::Error::other)?,
            ),
            None => Out::Plain(File::options().write(true).create_new(true).open(path)?),
        };
        Ok(BboltWriter {
            out,
            pending: Vec::with_capacity(WRITE_BUFFER_BYTES),
            next_page: FIRST_TREE_PAGE,
            buckets: Vec::new(),
            current: None,
        })
    }

    /// Starts the bucket `name`; its records follow with [`BboltWriter::put`].
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<(), Error> {
        self.end_bucket()?;
        if self.buckets.iter().any(|(done, _)| done == name) {
            return Err(bucket_error(name, "written twice"));
        }
        self.current = Some((name.to_vec(), None, vec![OpenPage::default()]));
        Ok(())
    }

    /// Adds a record to the current bucket; keys must arrive in strictly increasing order.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let Some((name, previous, _)) = &mut self.current else {
            return Err(bucket_error(b"", "record written outside a bucket"));
        };
        if key.is_empty() || previous.as_deref().is_some_and(|p| key <= p) {
            return Err(bucket_error(
                name,
                "keys must be non-empty and strictly increasing",
            ));
        }
        match previous {
            Some(previous) => {
                previous.clear();
                previous.extend_from_slice(key);
            }
            None => *previous = Some(key.to_vec()),
        }
        self.add(0, 0, key.to_vec(), value.to_vec())
    }

    /// Writes the root bucket, the freelist and both metas, and syncs the file.
    pub fn finish(mut self) -> Result<(), Error> {
        self.end_bucket()?;
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        self.current = Some((b"(root)".to_vec(), None, vec![OpenPage::default()]));
        for (name, root) in buckets {
            let mut header = [0u8; BUCKET_HEADER_BYTES];
            header[..8].copy_from_slice(&root.to_le_bytes());
            self.add(0, BUCKET_LEAF_FLAG, name, header.to_vec())?;
        }
        let root = self.close_levels()?;
        let high_water = self.next_page;
        self.write_pending()?;
        let mut freelist = [0u8; PAGE_HEADER_BYTES];
        freelist[..8].copy_from_slice(&FREELIST_PAGE_ID.to_le_bytes());
        freelist[8..10].copy_from_slice(&FREELIST_PAGE.to_le_bytes());
        self.out.write_page(FREELIST_PAGE_ID, &freelist)?;
        for page_id in 0..2 {
            let meta = Meta {
                page_size: PAGE_SIZE as u32,
                root,
                freelist: FREELIST_PAGE_ID,
                high_water,
                txid: TXID + page_id,
            };
            self.out.write_page(page_id, &meta.encode(page_id))?;
        }
        self.out.finish(high_water * PAGE_SIZE as u64)?;
        Ok(())
    }

    /// Hands the buffered pages (which end at `next_page`) to the file.
    fn write_pending(&mut self) -> Result<(), Error> {
        let first = self.next_page - (self.pending.len() / PAGE_SIZE) as u64;
        self.out.write_at(&self.pending, first * PAGE_SIZE as u64)?;
        self.pending.clear();
        Ok(())
    }

    fn end_bucket(&mut self) -> Result<(), Error> {
        if let Some((name, _, _)) = &self.current {
            let name = name.clone();
            let root = self.close_levels()?;
            self.buckets.push((name, root));
        }
        Ok(())
    }

    /// Flushes every level of the current bucket bottom-up; returns its root page.
    fn close_levels(&mut self) -> Result<u64, Error> {
        let mut level = 0;
        loop {
            let levels = &self.current.as_ref().expect("a bucket is open").2;
            let page = &levels[level];
            let is_root = level + 1 == levels.len() && page.written == 0;
            let id = self.flush(level, !is_root)?;
            if is_root {
                self.current = None;
                return Ok(id);
            }
            level += 1;
        }
    }

    /// Adds an element to `level`'s open page, writing the page first if it would overflow.
    fn add(&mut self, level: usize, flags: u32, key: Vec<u8>, value: Vec<u8>) -> Result<(), Error> {
        let size = ELEMENT_BYTES + key.len() + value.len();
        let page = &self.current.as_ref().expect("a bucket is open").2[level];
        if !page.elements.is_empty() && page.bytes + size > PAGE_SIZE {
            self.flush(level, true)?;
        }
        let page = &mut self.current.as_mut().expect("a bucket is open").2[level];
        if page.elements.is_empty() {
            page.bytes = PAGE_HEADER_BYTES;
        }
        page.bytes += size;
        page.elements.push((flags, key, value));
        Ok(())
    }

    /// Writes `level`'s open page (empty or not) at the next page id and, unless it is the root,
    /// posts its first key to the level above (made when needed).
    fn flush(&mut self, level: usize, has_parent: bool) -> Result<u64, Error> {
        let levels = &mut self.current.as_mut().expect("a bucket is open").2;
        let page = std::mem::take(&mut levels[level]);
        levels[level].written = page.written + 1;
        let id = self.next_page;
        let bytes = encode_page(id, level == 0, &page.elements);
        self.next_page += (bytes.len() / PAGE_SIZE) as u64;
        self.pending.extend_from_slice(&bytes);
        if self.pending.len() >= WRITE_BUFFER_BYTES {
            self.write_pending()?;
        }
        let first_key = page
            .elements
            .into_iter()
            .next()
            .map(|(_, key, _)| key)
            .unwrap_or_default();
        if has_parent {
            let levels = &mut self.current.as_mut().expect("a bucket is open").2;
            if levels.len() == level + 1 {
                levels.push(OpenPage::default());
            }
            self.add(level + 1, 0, first_key, id.to_le_bytes().to_vec())?;
        }
        Ok(id)
    }
}

fn bucket_error(name: &[u8], reason: &str) -> Error {
    Error::Bucket {
        bucket: String::from_utf8_lossy(name).into_owned(),
        reason: reason.into(),
    }
}

/// Where the pages go: a plain file, or one sealed with the member's key.
enum Out {
    Plain(File),
    Sealed(SealedWriter),
}

impl Out {
    fn write_at(&self, pages: &[u8], offset: u64) -> std::io::Result<()> {
        match self {
            Out::Plain(file) => file.write_all_at(pages, offset),
            Out::Sealed(file) => file.write_at(pages, offset),
        }
    }

    /// One page of `bytes` (zero-padded) at page `id`.
    fn write_page(&self, id: u64, bytes: &[u8]) -> std::io::Result<()> {
        let mut page = vec![0u8; PAGE_SIZE];
        page[..bytes.len()].copy_from_slice(bytes);
        self.write_at(&page, id * PAGE_SIZE as u64)
    }

    /// Sets the length and makes the file durable.
    fn finish(&self, len_bytes: u64) -> std::io::Result<()> {
        match self {
            Out::Plain(file) => {
                file.set_len(len_bytes)?;
                file.sync_all()
            }
            Out::Sealed(file) => {
                file.set_len(len_bytes)?;
                file.sync()
            }
        }
    }
}

/// One leaf or branch page (with overflow pages when its elements need them), zero-padded to
/// whole pages. A branch element's value is its child's page id (8 bytes LE).
fn encode_page(id: u64, leaf: bool, elements: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let data_bytes: usize = elements
        .iter()
        .map(|(_, key, value)| key.len() + if leaf { value.len() } else { 0 })
        .sum();
    let used = PAGE_HEADER_BYTES + elements.len() * ELEMENT_BYTES + data_bytes;
    let pages = used.div_ceil(PAGE_SIZE).max(1);
    let mut bytes = vec![0u8; pages * PAGE_SIZE];
    bytes[..8].copy_from_slice(&id.to_le_bytes());
    let flags = if leaf { LEAF_PAGE } else { BRANCH_PAGE };
    bytes[8..10].copy_from_slice(&flags.to_le_bytes());
    let count = u16::try_from(elements.len()).expect("a page holds fewer than 64Ki elements");
    bytes[10..12].copy_from_slice(&count.to_le_bytes());
    bytes[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
    let mut data = PAGE_HEADER_BYTES + elements.len() * ELEMENT_BYTES;
    for (index, (element_flags, key, value)) in elements.iter().enumerate() {
        let at = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
        let pos = (data - at) as u32;
        if leaf {
            bytes[at..at + 4].copy_from_slice(&element_flags.to_le_bytes());
            bytes[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
            bytes[at + 8..at + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
            bytes[at + 12..at + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
            bytes[data..data + key.len()].copy_from_slice(key);
            bytes[data + key.len()..data + key.len() + value.len()].copy_from_slice(value);
            data += key.len() + value.len();
        } else {
            bytes[at..at + 4].copy_from_slice(&pos.to_le_bytes());
            bytes[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(value);
            bytes[data..data + key.len()].copy_from_slice(key);
            data += key.len();
        }
    }
    bytes
}
