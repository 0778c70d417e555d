//! Reading a bbolt file page by page with `pread`: memory stays at one page per tree level
//! whatever the file's size, and every page is checked before anything in it is used.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    corrupt, u16_at, u32_at, u64_at, Error, Meta, BRANCH_PAGE, BUCKET_HEADER_BYTES,
    BUCKET_LEAF_FLAG, ELEMENT_BYTES, LEAF_PAGE, PAGE_HEADER_BYTES, PAGE_SIZE,
};

/// Page sizes a meta may claim (bbolt uses the OS page size).
const PAGE_SIZE_MIN: u32 = 512;
const PAGE_SIZE_MAX: u32 = 1 << 16;

/// An open bbolt file (or the bbolt part of a longer file, e.g. before a sha256 trailer).
pub struct BboltFile {
    file: File,
    len: u64,
    page_size: usize,
    meta: Meta,
}

/// Where a bucket's records are.
#[derive(Debug, Clone)]
enum BucketRoot {
    Page(u64),
    /// An inline bucket's leaf page, copied out of its parent's value.
    Inline {
        parent_page: u64,
        page: Vec<u8>,
    },
}

impl BboltFile {
    /// Opens the first `len` bytes of `path` as a bbolt file: picks the valid meta page with the
    /// newest txid.
    pub fn open(path: &Path, len: u64) -> Result<BboltFile, Error> {
        let file = File::open(path)?;
        let mut first = vec![0u8; PAGE_HEADER_BYTES + super::META_BYTES];
        if len < first.len() as u64 {
            return Err(corrupt(
                0,
                format!("the file has {len} bytes, too short for a bbolt meta page"),
            ));
        }
        file.read_exact_at(&mut first, 0)?;
        let meta0 = Meta::decode(&first);
        // A damaged meta 0 says nothing trustworthy about the page size: bbolt then assumes
        // the OS page size to find meta 1, and so do we.
        let page_size = match &meta0 {
            Ok(meta) => meta.page_size,
            Err(_) => PAGE_SIZE as u32,
        };
        let meta1 = if u64::from(page_size) + first.len() as u64 <= len {
            let mut second = vec![0u8; first.len()];
            file.read_exact_at(&mut second, u64::from(page_size))?;
            Meta::decode(&second)
        } else {
            Err(format!("the file has {len} bytes, no room for meta page 1"))
        };
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid && b.page_size == a.page_size {
                    b
                } else {
                    a
                }
            }
            (Ok(meta), Err(_)) | (Err(_), Ok(meta)) => meta,
            (Err(zero), Err(one)) => {
                return Err(corrupt(
                    0,
                    format!(
                        "not a valid bbolt meta page (meta 0: {zero}; meta 1: {one}); expected \
                         an etcd bbolt file"
                    ),
                ))
            }
        };
        if !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&meta.page_size)
            || !meta.page_size.is_power_of_two()
        {
            return Err(corrupt(
                0,
                format!(
                    "meta page size {}, expected a power of two from {PAGE_SIZE_MIN} to \
                     {PAGE_SIZE_MAX}",
                    meta.page_size
                ),
            ));
        }
        let page_size = meta.page_size as usize;
        let needed = meta.high_water.saturating_mul(page_size as u64);
        if needed > len {
            return Err(corrupt(
                meta.high_water.saturating_sub(1),
                format!(
                    "the meta says {} pages ({needed} bytes) are in use but the file has {len} \
                     bytes: truncated",
                    meta.high_water
                ),
            ));
        }
        if meta.root < 2 || meta.root >= meta.high_water {
            return Err(corrupt(
                meta.root,
                format!(
                    "root bucket page {} outside the file's pages 2..{}",
                    meta.root, meta.high_water
                ),
            ));
        }
        Ok(BboltFile {
            file,
            len,
            page_size,
            meta,
        })
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes of the bbolt file (what etcdutl reports as its size).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the pages in use (bbolt's `tx.Size()`).
    pub fn tree_bytes(&self) -> u64 {
        self.meta.high_water * self.page_size as u64
    }

    /// The txid of the meta in use.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// The names of the top-level buckets, in key order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, Error> {
        let mut names = Vec::new();
        let mut root = self.walk(None, BucketRoot::Page(self.meta.root));
        while let Some((_, name, _)) = root.next_raw()? {
            names.push(name.to_vec());
        }
        Ok(names)
    }

    /// The records of the top-level bucket `name`, in key order (`None`: no such bucket).
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketEntries<'_>>, Error> {
        let mut root = self.walk(None, BucketRoot::Page(self.meta.root));
        while let Some((page, key, value)) = root.next_raw()? {
            if key != name {
                continue;
            }
            let bucket = String::from_utf8_lossy(name).into_owned();
            if value.len() < BUCKET_HEADER_BYTES {
                return Err(corrupt(
                    page,
                    format!(
                        "bucket {bucket:?} header of {} bytes, expected 16",
                        value.len()
                    ),
                ));
            }
            let at = match u64_at(value, 0) {
                0 => BucketRoot::Inline {
                    parent_page: page,
                    page: value[BUCKET_HEADER_BYTES..].to_vec(),
                },
                id => BucketRoot::Page(id),
            };
            return Ok(Some(self.walk(Some(bucket), at)));
        }
        Ok(None)
    }

    /// A walk over a bucket's records (`None`: the root, whose records are all buckets).
    fn walk(&self, bucket: Option<String>, root: BucketRoot) -> BucketEntries<'_> {
        let pages = usize::try_from(self.meta.high_water).unwrap_or(usize::MAX);
        BucketEntries {
            file: self,
            bucket,
            root: Some(root),
            stack: Vec::new(),
            visited: vec![0u64; pages.div_ceil(64)],
            previous_key: None,
        }
    }

    /// Reads page `id` and its overflow pages, checking that it is a branch or leaf page that
    /// lies inside the file and was not visited before in this walk.
    fn read_tree_page(&self, id: u64, visited: &mut [u64]) -> Result<Vec<u8>, Error> {
        if id < 2 || id >= self.meta.high_water {
            return Err(corrupt(
                id,
                format!(
                    "page {id} referenced, expected a page in 2..{} (the high water mark)",
                    self.meta.high_water
                ),
            ));
        }
        let offset = id * self.page_size as u64;
        let mut header = [0u8; PAGE_HEADER_BYTES];
        self.file.read_exact_at(&mut header, offset)?;
        let own_id = u64_at(&header, 0);
        if own_id != id {
            return Err(corrupt(
                id,
                format!("page header names page {own_id}, expected {id}"),
            ));
        }
        let flags = u16_at(&header, 8);
        if flags != BRANCH_PAGE && flags != LEAF_PAGE {
            return Err(corrupt(
                id,
                format!("page flags {flags:#x}, expected a branch (0x01) or leaf (0x02) page"),
            ));
        }
        let run = 1 + u64::from(u32_at(&header, 12));
        if id + run > self.meta.high_water {
            return Err(corrupt(
                id,
                format!(
                    "{} overflow pages run past the high water mark {}",
                    run - 1,
                    self.meta.high_water
                ),
            ));
        }
        for page in id..id + run {
            let (word, bit) = ((page / 64) as usize, page % 64);
            if visited[word] & (1 << bit) != 0 {
                return Err(corrupt(
                    page,
                    "page reached twice in one bucket (a cycle or a shared page)",
                ));
            }
            visited[word] |= 1 << bit;
        }
        let mut bytes = vec![0u8; run as usize * self.page_size];
        self.file.read_exact_at(&mut bytes, offset)?;
        check_elements(id, &bytes)?;
        Ok(bytes)
    }
}

/// Checks that a page's element array fits in it.
fn check_elements(id: u64, page: &[u8]) -> Result<(), Error> {
    if page.len() < PAGE_HEADER_BYTES {
        return Err(corrupt(id, "a page shorter than its header"));
    }
    let count = usize::from(u16_at(page, 10));
    if PAGE_HEADER_BYTES + count * ELEMENT_BYTES > page.len() {
        return Err(corrupt(
            id,
            format!(
                "{count} elements do not fit in {} bytes of page",
                page.len()
            ),
        ));
    }
    Ok(())
}

/// A record: the page holding it (for messages), its key and its value.
pub type Record<'a> = (u64, &'a [u8], &'a [u8]);

/// One page on the path from a bucket's root to the current record.
struct Frame {
    id: u64,
    bytes: Vec<u8>,
    next: usize,
}

impl Frame {
    fn flags(&self) -> u16 {
        u16_at(&self.bytes, 8)
    }

    fn count(&self) -> usize {
        usize::from(u16_at(&self.bytes, 10))
    }

    /// The `len` bytes at `pos` from element `index`'s first byte.
    fn span(&self, index: usize, pos: u32, len: u32) -> Result<(usize, usize), Error> {
        let start = PAGE_HEADER_BYTES + index * ELEMENT_BYTES + pos as usize;
        let end = start + len as usize;
        if end > self.bytes.len() {
            return Err(corrupt(
                self.id,
                format!(
                    "element {index} points at bytes {start}..{end}, past the page's {} bytes",
                    self.bytes.len()
                ),
            ));
        }
        Ok((start, end))
    }
}

/// A walk over one bucket's records in key order (a lending iterator: each record borrows the
/// walk until the next call).
pub struct BucketEntries<'a> {
    file: &'a BboltFile,
    /// `None` for the root bucket.
    bucket: Option<String>,
    root: Option<BucketRoot>,
    stack: Vec<Frame>,
    visited: Vec<u64>,
    previous_key: Option<Vec<u8>>,
}

impl BucketEntries<'_> {
    /// The bucket's name, for messages.
    pub fn name(&self) -> &str {
        self.bucket.as_deref().unwrap_or("(root)")
    }

    /// The next record and the page holding it; a nested bucket is refused (etcd's buckets
    /// hold plain records).
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, Error> {
        self.next_raw()
    }

    fn next_raw(&mut self) -> Result<Option<Record<'_>>, Error> {
        if let Some(root) = self.root.take() {
            let frame = match root {
                BucketRoot::Page(id) => Frame {
                    id,
                    bytes: self.file.read_tree_page(id, &mut self.visited)?,
                    next: 0,
                },
                BucketRoot::Inline { parent_page, page } => {
                    check_elements(parent_page, &page)?;
                    if u16_at(&page, 8) != LEAF_PAGE {
                        return Err(corrupt(
                            parent_page,
                            format!("inline bucket {:?} is not a leaf page", self.name()),
                        ));
                    }
                    Frame {
                        id: parent_page,
                        bytes: page,
                        next: 0,
                    }
                }
            };
            self.stack.push(frame);
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            if top.next >= top.count() {
                self.stack.pop();
                continue;
            }
            let index = top.next;
            top.next += 1;
            let at = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
            if top.flags() == BRANCH_PAGE {
                let child = u64_at(&top.bytes, at + 8);
                let bytes = self.file.read_tree_page(child, &mut self.visited)?;
                self.stack.push(Frame {
                    id: child,
                    bytes,
                    next: 0,
                });
                continue;
            }
            let flags = u32_at(&top.bytes, at);
            let pos = u32_at(&top.bytes, at + 4);
            let key_len = u32_at(&top.bytes, at + 8);
            let value_len = u32_at(&top.bytes, at + 12);
            let (key_start, key_end) = top.span(index, pos, key_len)?;
            let (_, value_end) = top.span(index, pos, key_len.saturating_add(value_len))?;
            let key = &top.bytes[key_start..key_end];
            if let Some(previous) = &mut self.previous_key {
                if key <= previous.as_slice() {
                    return Err(corrupt(
                        top.id,
                        format!(
                            "bucket {:?}: key {:?} does not sort after the previous key",
                            self.bucket.as_deref().unwrap_or("(root)"),
                            String::from_utf8_lossy(key)
                        ),
                    ));
                }
                previous.clear();
                previous.extend_from_slice(key);
            } else {
                self.previous_key = Some(key.to_vec());
            }
            let is_bucket = flags & BUCKET_LEAF_FLAG != 0;
            match &self.bucket {
                None if !is_bucket => {
                    return Err(corrupt(
                        top.id,
                        format!(
                            "the root holds a plain record {:?}, expected only buckets",
                            String::from_utf8_lossy(key)
                        ),
                    ))
                }
                Some(bucket) if is_bucket => {
                    return Err(Error::Bucket {
                        bucket: bucket.clone(),
                        reason: format!(
                            "holds a nested bucket {:?}; etcd's buckets hold plain records",
                            String::from_utf8_lossy(key)
                        ),
                    })
                }
                _ => {}
            }
            let top = self.stack.last().expect("the frame just read");
            return Ok(Some((
                top.id,
                &top.bytes[key_start..key_end],
                &top.bytes[key_end..value_end],
            )));
        }
    }
}
