//! Online defragmentation: copy the newest committed state, bucket by bucket in key order, into
//! a new file of full pages, make it durable, rename it over the old file and swap it in.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use super::alloc::Allocator;
use super::chain::ChainHead;
use super::db::{Durable, Shared, Snapshot, Writer};
use super::file::{PageFile, StdFile};
use super::meta::Meta;
use super::node::{group, inline_value_bytes_max};
use super::page::{self, branch_entry_bytes, leaf_entry_sizes, StoredValue, HEADER_BYTES};
use super::read::{Cursor, Pages};
use super::sealed::SealedFile;
use super::Error;

/// Output is staged and written sequentially in chunks of this size.
const STAGE_BYTES_MAX: usize = 8 << 20;

/// Appends pages to the new file in order.
struct Builder {
    file: Box<dyn PageFile>,
    page_size: usize,
    txn_id: u64,
    next_page: u64,
    staged: Vec<u8>,
}

impl Builder {
    fn emit(&mut self, pages: Vec<u8>) -> Result<u64, Error> {
        debug_assert_eq!(pages.len() % self.page_size, 0);
        let id = self.next_page;
        self.next_page += (pages.len() / self.page_size) as u64;
        self.staged.extend_from_slice(&pages);
        if self.staged.len() >= STAGE_BYTES_MAX {
            self.flush()?;
        }
        Ok(id)
    }

    fn flush(&mut self) -> Result<(), Error> {
        let staged_pages = (self.staged.len() / self.page_size) as u64;
        let at = (self.next_page - staged_pages) * self.page_size as u64;
        self.file.write_at(&self.staged, at)?;
        self.staged.clear();
        Ok(())
    }

    /// Copies one tree; returns its root in the new file (0 = empty).
    fn copy_tree(&mut self, pages: Pages<'_>, root: u64) -> Result<u64, Error> {
        let usable = self.page_size - HEADER_BYTES;
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut values: Vec<StoredValue<'_>> = Vec::new();
        let mut cursor = Cursor::over(pages, root);
        let mut entry = cursor.first()?;
        while let Some((key, value)) = entry {
            keys.push(key);
            values.push(if value.len() <= inline_value_bytes_max(self.page_size) {
                StoredValue::Inline(value)
            } else {
                let page = self.emit(page::encode_overflow(self.page_size, self.txn_id, value))?;
                StoredValue::Overflow {
                    page,
                    len_bytes: value.len() as u64,
                }
            });
            entry = cursor.next()?;
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let sizes = leaf_entry_sizes(&keys, &values);
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        for range in group(&sizes, usable, true) {
            let leaf = page::encode_leaf(
                self.page_size,
                self.txn_id,
                range.clone().map(|i| (keys[i], values[i])),
            );
            level.push((keys[range.start].to_vec(), self.emit(leaf)?));
        }
        while level.len() > 1 {
            let sizes: Vec<usize> = level
                .iter()
                .map(|(k, _)| branch_entry_bytes(k.len()))
                .collect();
            let mut upper = Vec::new();
            for range in group(&sizes, usable, true) {
                let entries = level[range.clone()].iter().map(|(k, c)| (k.as_slice(), *c));
                let branch = page::encode_branch(self.page_size, self.txn_id, entries);
                upper.push((level[range.start].0.clone(), self.emit(branch)?));
            }
            level = upper;
        }
        Ok(level[0].1)
    }
}

pub(crate) fn defragment(
    shared: &Shared,
    writer: &mut Writer,
    path: &Path,
    applied_index: u64,
) -> Result<(), Error> {
    let tmp_path = path.with_extension("defrag");
    let (file, roots, high_water_pages) = match copy(shared, writer, &tmp_path, applied_index) {
        Ok(copied) => copied,
        Err(error) => {
            // No partial copy is left behind; the tree file and the writer are untouched, so a
            // full device only fails this defragment (the writer goes on).
            let _ = std::fs::remove_file(&tmp_path);
            return Err(match error {
                Error::Io(io) if crate::disk::is_out_of_space(&io) => Error::OutOfSpace(io),
                other => other,
            });
        }
    };
    let page_size = shared.page_size;
    let seq = writer.durable.seq + 2;
    std::fs::rename(&tmp_path, path)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    let map = Arc::new(file.map(high_water_pages * page_size as u64)?);
    writer.file = file;
    writer.map = map.clone();
    writer.alloc = Allocator::new([], high_water_pages);
    writer.durable = Durable {
        txn_id: writer.txn_id,
        seq,
        slot: seq % 2,
        applied_index,
        chain_pages: Vec::new(),
    };
    writer.roots = roots.clone();
    writer.unsynced.clear();
    shared.published.store(Arc::new(Snapshot {
        txn_id: writer.txn_id,
        roots,
        map,
    }));
    Ok(())
}

/// A finished copy: the new file, its bucket roots and its page count.
type Copy = (Box<dyn PageFile>, Vec<(String, u64)>, u64);

/// The compact copy of the newest committed state, durable in `tmp_path` with both meta slots
/// at `applied_index`.
fn copy(
    shared: &Shared,
    writer: &Writer,
    tmp_path: &Path,
    applied_index: u64,
) -> Result<Copy, Error> {
    let page_size = shared.page_size;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp_path)?;
    // With a keyring every page is sealed anew with the current key: after a rotation this
    // rewrite leaves old key ids unused, and a plain file becomes encrypted.
    let file: Box<dyn PageFile> = match &shared.keyring {
        Some(keyring) => Box::new(SealedFile::create(
            Box::new(StdFile(file)),
            keyring.clone(),
            page_size,
        )?),
        None => Box::new(StdFile(file)),
    };
    let mut builder = Builder {
        file,
        page_size,
        txn_id: writer.txn_id,
        next_page: 2,
        staged: Vec::new(),
    };
    let pages = Pages {
        map: &writer.map,
        page_size,
        verify: true,
    };
    let mut roots = Vec::with_capacity(writer.roots.len());
    for (name, root) in &writer.roots {
        roots.push((name.clone(), builder.copy_tree(pages, *root)?));
    }
    builder.flush()?;
    let high_water_pages = builder.next_page;
    let file = builder.file;
    file.set_len_bytes(high_water_pages * page_size as u64)?;
    let seq = writer.durable.seq + 2;
    let mut buf = vec![0u8; page_size];
    // Both slots valid; the older one carries the same state under the previous number.
    for slot_seq in [seq - 1, seq] {
        let meta = Meta {
            page_size,
            txn_id: writer.txn_id,
            seq: slot_seq,
            applied_index,
            high_water_pages,
            freelist: ChainHead::default(),
            written: ChainHead::default(),
            buckets: roots.clone(),
        };
        meta.encode(&mut buf);
        file.write_at(&buf, (slot_seq % 2) * page_size as u64)?;
    }
    file.sync_data()?;
    Ok((file, roots, high_water_pages))
}
