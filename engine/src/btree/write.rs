//! The write transaction: buckets edited in memory, written and published at commit.

use std::ops::Bound;
use std::sync::{Arc, MutexGuard};

use super::alloc::Freed;
use super::db::{write_coalesced, Shared, Snapshot, Writer};
use super::meta::{buckets_fit, BUCKET_NAME_BYTES_MAX};
use super::node::{self, Child, Ctx, Dir, KeyRange, Out, OwnedEntry};
use super::read::Pages;
use super::Error;

/// The single write transaction. Changes are invisible to readers until [`WriteTxn::commit`];
/// dropping it without commit discards them. Not durable until [`super::Db::checkpoint`].
pub struct WriteTxn<'db> {
    shared: &'db Shared,
    writer: MutexGuard<'db, Writer>,
    txn_id: u64,
    /// Sorted by name, as the meta page stores them.
    buckets: Vec<(String, Option<Child>)>,
    freed: Vec<Freed>,
    changed: bool,
}

impl<'db> WriteTxn<'db> {
    pub(crate) fn new(shared: &'db Shared, writer: MutexGuard<'db, Writer>) -> WriteTxn<'db> {
        let buckets = writer
            .roots
            .iter()
            .map(|(name, root)| (name.clone(), (*root != 0).then_some(Child::Clean(*root))))
            .collect();
        let txn_id = writer.txn_id + 1;
        WriteTxn {
            shared,
            writer,
            txn_id,
            buckets,
            freed: Vec::new(),
            changed: false,
        }
    }

    /// The id this transaction commits as.
    pub fn txn_id(&self) -> u64 {
        self.txn_id
    }

    /// The named bucket, created (empty) if it does not exist yet.
    pub fn bucket(&mut self, name: &str) -> Result<Bucket<'_, 'db>, Error> {
        let index = match self.buckets.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(index) => index,
            Err(index) => {
                if name.is_empty() || name.len() > BUCKET_NAME_BYTES_MAX {
                    return Err(Error::BucketName {
                        name: name.to_owned(),
                        bytes_max: BUCKET_NAME_BYTES_MAX,
                    });
                }
                let mut names: Vec<(String, u64)> =
                    self.buckets.iter().map(|(n, _)| (n.clone(), 0)).collect();
                names.push((name.to_owned(), 0));
                if !buckets_fit(&names, self.shared.page_size) {
                    return Err(Error::TooManyBuckets);
                }
                self.buckets.insert(index, (name.to_owned(), None));
                self.changed = true;
                index
            }
        };
        Ok(Bucket { txn: self, index })
    }

    /// Writes every changed page (no fsync) and publishes the new state to new readers.
    pub fn commit(mut self) -> Result<(), Error> {
        if !self.changed {
            return Ok(());
        }
        let result = self.write_and_publish();
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, Error::OutOfSpace(_)))
        {
            self.writer.poisoned = true;
        }
        result
    }

    fn write_and_publish(&mut self) -> Result<(), Error> {
        let page_size = self.shared.page_size;
        let writer: &mut Writer = &mut self.writer;
        let next_page_before = writer.alloc.next_page;
        let mut roots = Vec::with_capacity(self.buckets.len());
        let mut writes = {
            let mut ctx = Ctx {
                pages: Pages {
                    map: &writer.map,
                    page_size,
                    verify: true,
                },
                freed: &mut self.freed,
            };
            let mut out = Out {
                alloc: &mut writer.alloc,
                writes: Vec::new(),
                txn_id: self.txn_id,
            };
            for (name, root) in self.buckets.drain(..) {
                roots.push((name, node::spill_root(&mut ctx, &mut out, root)?));
            }
            out.writes
        };
        writes.sort_unstable_by_key(|(id, _)| *id);
        if let Err(error) = writer
            .ensure_file_covers(page_size)
            .and_then(|()| write_coalesced(writer.file.as_ref(), page_size, &writes))
        {
            let taken = writes
                .iter()
                .flat_map(|(id, buf)| *id..id + (buf.len() / page_size) as u64);
            return Err(writer.undo_if_out_of_space(error, next_page_before, taken));
        }
        for (id, buf) in &writes {
            let crc = u32::from_le_bytes(buf[0..4].try_into().expect("sealed page"));
            writer.unsynced.insert(*id, crc);
            // Pages inside an overflow run are vouched for by the run's first page.
            for inner in id + 1..id + (buf.len() / page_size) as u64 {
                writer.unsynced.remove(&inner);
            }
        }
        for freed in self.freed.drain(..) {
            writer.alloc.free(self.txn_id, freed);
        }
        writer.txn_id = self.txn_id;
        writer.roots = roots.clone();
        self.shared.published.store(Arc::new(Snapshot {
            txn_id: self.txn_id,
            roots,
            map: writer.map.clone(),
        }));
        Ok(())
    }

    fn pages(&self) -> Pages<'_> {
        Pages {
            map: &self.writer.map,
            page_size: self.shared.page_size,
            verify: self.shared.verify,
        }
    }
}

/// One bucket inside a write transaction.
pub struct Bucket<'t, 'db> {
    txn: &'t mut WriteTxn<'db>,
    index: usize,
}

impl Bucket<'_, '_> {
    fn split(&mut self) -> (Ctx<'_>, &mut Option<Child>) {
        let txn = &mut *self.txn;
        let pages = Pages {
            map: &txn.writer.map,
            page_size: txn.shared.page_size,
            verify: txn.shared.verify,
        };
        (
            Ctx {
                pages,
                freed: &mut txn.freed,
            },
            &mut txn.buckets[self.index].1,
        )
    }

    /// Inserts or replaces `key`. Keys up to a quarter page; values up to 4 GiB (large ones go
    /// to overflow pages).
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let key_max = node::key_bytes_max(self.txn.shared.page_size);
        if key.len() > key_max {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                bytes_max: key_max,
            });
        }
        if u32::try_from(value.len()).is_err() {
            return Err(Error::ValueTooLarge {
                len: value.len() as u64,
            });
        }
        self.txn.changed = true;
        let (mut ctx, root) = self.split();
        node::insert(&mut ctx, root, key, value.to_vec())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>, Error> {
        node::get(self.txn.pages(), &self.txn.buckets[self.index].1, key)
    }

    /// Removes `key`; returns whether it was there. A miss copies no page.
    pub fn remove(&mut self, key: &[u8]) -> Result<bool, Error> {
        if self.get(key)?.is_none() {
            return Ok(false);
        }
        self.txn.changed = true;
        let (mut ctx, root) = self.split();
        node::remove(&mut ctx, root, key)?;
        Ok(true)
    }

    /// Removes every key between the bounds; returns how many. Subtrees wholly inside the range
    /// are freed without being copied, which is what makes compaction cheap.
    pub fn remove_range(&mut self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<u64, Error> {
        self.txn.changed = true;
        let (mut ctx, root) = self.split();
        node::remove_range(&mut ctx, root, &KeyRange { start, end })
    }

    /// A cursor over this bucket as this transaction sees it (owned entries).
    pub fn cursor(&self) -> WriteCursor<'_> {
        WriteCursor {
            pages: self.txn.pages(),
            root: &self.txn.buckets[self.index].1,
            at: None,
        }
    }
}

/// A cursor over a bucket inside a write transaction. Each move is one root-to-leaf search, so
/// it is meant for the writer's occasional scans, not bulk reads (use a [`super::ReadTxn`]).
pub struct WriteCursor<'a> {
    pages: Pages<'a>,
    root: &'a Option<Child>,
    at: Option<Vec<u8>>,
}

impl WriteCursor<'_> {
    /// Moves to the neighbour of `bound`; past either end the cursor stays where it was.
    fn go(&mut self, bound: Option<&[u8]>, dir: Dir) -> Result<Option<OwnedEntry>, Error> {
        let found = match self.root {
            Some(root) => node::seek(self.pages, root, bound, dir)?,
            None => None,
        };
        if let Some((key, _)) = &found {
            self.at = Some(key.clone());
        }
        Ok(found)
    }

    /// First entry with key >= `key`.
    pub fn seek(&mut self, key: &[u8]) -> Result<Option<OwnedEntry>, Error> {
        self.go(Some(key), Dir::Forward { strict: false })
    }
    pub fn first(&mut self) -> Result<Option<OwnedEntry>, Error> {
        self.go(None, Dir::Forward { strict: false })
    }
    pub fn last(&mut self) -> Result<Option<OwnedEntry>, Error> {
        self.go(None, Dir::Backward { strict: false })
    }
    /// The entry after the current one (the first if not positioned).
    #[allow(clippy::should_implement_trait)] // moves both ways and can fail: not an Iterator
    pub fn next(&mut self) -> Result<Option<OwnedEntry>, Error> {
        let at = self.at.clone();
        self.go(at.as_deref(), Dir::Forward { strict: true })
    }
    /// The entry before the current one (the last if not positioned).
    pub fn prev(&mut self) -> Result<Option<OwnedEntry>, Error> {
        let at = self.at.clone();
        self.go(at.as_deref(), Dir::Backward { strict: true })
    }
}
