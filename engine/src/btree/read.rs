//! Read transactions: a pinned snapshot read straight from the map, without locks.

use std::sync::Arc;

use super::db::{Shared, Snapshot};
use super::page::{overflow_pages, Kind, PageRef, StoredValue, OVERFLOW_DATA_OFFSET};
use super::Error;

/// Page access inside one map; shared by readers, the writer's view of clean pages, defragment
/// and check.
#[derive(Clone, Copy)]
pub(crate) struct Pages<'a> {
    pub(crate) map: &'a [u8],
    pub(crate) page_size: usize,
    pub(crate) verify: bool,
}

impl<'a> Pages<'a> {
    pub(crate) fn page(&self, id: u64) -> Result<PageRef<'a>, Error> {
        let bytes = self.bytes(id, 1)?;
        let page = PageRef::new(
            id,
            bytes,
            self.page_size,
            self.verify && !self.is_overflow(bytes),
        )?;
        Ok(page)
    }

    fn is_overflow(&self, bytes: &[u8]) -> bool {
        bytes[4] == Kind::Overflow as u8
    }

    /// A node page (branch or leaf).
    pub(crate) fn node(&self, id: u64) -> Result<PageRef<'a>, Error> {
        let page = self.page(id)?;
        match page.kind() {
            Kind::Branch | Kind::Leaf => Ok(page),
            _ => Err(page.corrupt(4, "tree points at a page that is not a branch or leaf")),
        }
    }

    fn bytes(&self, id: u64, pages: u64) -> Result<&'a [u8], Error> {
        let ps = self.page_size as u64;
        let out_of_file = || {
            Error::corrupt(
                id,
                self.page_size,
                0,
                "page reference beyond the end of the file",
            )
        };
        if id < 2 {
            return Err(Error::corrupt(
                id,
                self.page_size,
                0,
                "tree points at a meta page",
            ));
        }
        let start = id.checked_mul(ps).ok_or_else(out_of_file)?;
        let end = pages
            .checked_mul(ps)
            .and_then(|len| start.checked_add(len))
            .ok_or_else(out_of_file)?;
        self.map
            .get(start as usize..end as usize)
            .ok_or_else(out_of_file)
    }

    /// The whole overflow run starting at `id`, checked against the length the leaf expects.
    pub(crate) fn overflow_run(&self, id: u64, len_bytes: u64) -> Result<PageRef<'a>, Error> {
        let pages = overflow_pages(len_bytes, self.page_size);
        let bytes = self.bytes(id, pages)?;
        let run = PageRef::new(id, bytes, self.page_size, self.verify)?;
        if run.kind() != Kind::Overflow {
            return Err(run.corrupt(4, "leaf points at a page that is not an overflow run"));
        }
        if run.u32_at(16)? as u64 != pages || run.u64_at(24)? != len_bytes {
            return Err(run.corrupt(16, "overflow run length differs from the leaf entry"));
        }
        Ok(run)
    }

    pub(crate) fn value(&self, stored: StoredValue<'a>) -> Result<&'a [u8], Error> {
        match stored {
            StoredValue::Inline(bytes) => Ok(bytes),
            StoredValue::Overflow { page, len_bytes } => {
                let run = self.overflow_run(page, len_bytes)?;
                Ok(&run.bytes[OVERFLOW_DATA_OFFSET..OVERFLOW_DATA_OFFSET + len_bytes as usize])
            }
        }
    }

    /// The value stored under `key` in the tree rooted at `root` (0 = empty tree).
    pub(crate) fn get(&self, root: u64, key: &[u8]) -> Result<Option<&'a [u8]>, Error> {
        if root == 0 {
            return Ok(None);
        }
        let mut page = self.node(root)?;
        for _ in 0..DEPTH_MAX {
            if page.kind() == Kind::Leaf {
                return match page.lower_bound(key)? {
                    (i, true) => Ok(Some(self.value(page.value(i)?)?)),
                    _ => Ok(None),
                };
            }
            page = self.node(page.child(page.child_index(key)?)?)?;
        }
        Err(page.corrupt(0, "tree deeper than any valid tree"))
    }
}

/// No valid tree is deeper: each level multiplies the fan-out by at least two.
pub(crate) const DEPTH_MAX: usize = 64;

/// A consistent, immutable view of the newest transaction committed when it began. Send + Sync:
/// share it between threads freely; the pages it reaches are not reused until it is dropped.
pub struct ReadTxn {
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    slot: usize,
}

impl ReadTxn {
    pub(crate) fn new(shared: Arc<Shared>, snapshot: Arc<Snapshot>, slot: usize) -> ReadTxn {
        ReadTxn {
            shared,
            snapshot,
            slot,
        }
    }

    fn pages(&self) -> Pages<'_> {
        Pages {
            map: &self.snapshot.map,
            page_size: self.shared.page_size,
            verify: self.shared.verify,
        }
    }

    fn root(&self, bucket: &str) -> u64 {
        self.snapshot
            .roots
            .iter()
            .find(|(name, _)| name == bucket)
            .map_or(0, |(_, root)| *root)
    }

    /// The transaction this snapshot shows.
    pub fn txn_id(&self) -> u64 {
        self.snapshot.txn_id
    }

    /// Names of the buckets that exist in this snapshot.
    pub fn buckets(&self) -> impl Iterator<Item = &str> {
        self.snapshot.roots.iter().map(|(name, _)| name.as_str())
    }

    /// The value under `key`; a missing bucket reads as empty.
    pub fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<&[u8]>, Error> {
        self.pages().get(self.root(bucket), key)
    }

    /// A cursor over one bucket, positioned nowhere until a seek.
    pub fn cursor(&self, bucket: &str) -> Cursor<'_> {
        Cursor::over(self.pages(), self.root(bucket))
    }
}

impl Drop for ReadTxn {
    fn drop(&mut self) {
        self.shared.release_reader_slot(self.slot);
    }
}

/// Walks one bucket of a snapshot in key order, both ways. Every move returns the entry it
/// lands on, `None` past either end.
pub struct Cursor<'a> {
    pages: Pages<'a>,
    root: u64,
    /// Path from the root: page and the index taken in it. Empty = not positioned.
    stack: Vec<(PageRef<'a>, usize)>,
}

/// A key and its value, borrowed from the snapshot.
pub type Entry<'a> = (&'a [u8], &'a [u8]);

enum Side {
    First,
    Last,
}

impl<'a> Cursor<'a> {
    pub(crate) fn over(pages: Pages<'a>, root: u64) -> Cursor<'a> {
        Cursor {
            pages,
            root,
            stack: Vec::new(),
        }
    }

    /// First entry with key >= `key`.
    pub fn seek(&mut self, key: &[u8]) -> Result<Option<Entry<'a>>, Error> {
        self.stack.clear();
        if self.root == 0 {
            return Ok(None);
        }
        let mut page = self.pages.node(self.root)?;
        while page.kind() == Kind::Branch {
            check_depth(&page, self.stack.len())?;
            let i = page.child_index(key)?;
            self.stack.push((page, i));
            page = self.pages.node(page.child(i)?)?;
        }
        let (i, _) = page.lower_bound(key)?;
        self.stack.push((page, i));
        if i == page.count() {
            return self.next();
        }
        self.current()
    }

    /// Last entry with key < `key`.
    pub fn seek_before(&mut self, key: &[u8]) -> Result<Option<Entry<'a>>, Error> {
        match self.seek(key)? {
            Some(_) => self.prev(),
            None => self.last(),
        }
    }

    pub fn first(&mut self) -> Result<Option<Entry<'a>>, Error> {
        self.stack.clear();
        if self.root == 0 {
            return Ok(None);
        }
        let root = self.pages.node(self.root)?;
        self.descend(root, Side::First)
    }

    pub fn last(&mut self) -> Result<Option<Entry<'a>>, Error> {
        self.stack.clear();
        if self.root == 0 {
            return Ok(None);
        }
        let root = self.pages.node(self.root)?;
        self.descend(root, Side::Last)
    }

    /// The entry under the cursor.
    pub fn current(&self) -> Result<Option<Entry<'a>>, Error> {
        match self.stack.last() {
            Some((page, i)) if *i < page.count() => {
                Ok(Some((page.key(*i)?, self.pages.value(page.value(*i)?)?)))
            }
            _ => Ok(None),
        }
    }

    // A cursor moves both ways and every move can fail, so it is not an Iterator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Entry<'a>>, Error> {
        let Some((leaf, i)) = self.stack.last_mut() else {
            return self.first();
        };
        if *i + 1 < leaf.count() {
            *i += 1;
            return self.current();
        }
        loop {
            self.stack.pop();
            let Some((branch, i)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *i + 1 < branch.count() {
                *i += 1;
                let child = self.pages.node(branch.child(*i)?)?;
                return self.descend(child, Side::First);
            }
        }
    }

    pub fn prev(&mut self) -> Result<Option<Entry<'a>>, Error> {
        let Some((leaf, i)) = self.stack.last_mut() else {
            return self.last();
        };
        if *i > 0 && leaf.count() > 0 {
            *i = (*i).min(leaf.count()) - 1;
            return self.current();
        }
        loop {
            self.stack.pop();
            let Some((branch, i)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *i > 0 {
                *i -= 1;
                let child = self.pages.node(branch.child(*i)?)?;
                return self.descend(child, Side::Last);
            }
        }
    }

    fn descend(&mut self, mut page: PageRef<'a>, side: Side) -> Result<Option<Entry<'a>>, Error> {
        loop {
            check_depth(&page, self.stack.len())?;
            if page.count() == 0 {
                return Err(page.corrupt(6, "empty page inside a tree"));
            }
            let i = match side {
                Side::First => 0,
                Side::Last => page.count() - 1,
            };
            self.stack.push((page, i));
            if page.kind() == Kind::Leaf {
                return self.current();
            }
            page = self.pages.node(page.child(i)?)?;
        }
    }
}

fn check_depth(page: &PageRef<'_>, depth: usize) -> Result<(), Error> {
    if depth >= DEPTH_MAX {
        return Err(page.corrupt(0, "tree deeper than any valid tree"));
    }
    Ok(())
}
