//! The database handle: opening a file, the published snapshot readers start from, the reader
//! table that holds back page reuse, durable checkpoints.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use memmap2::Mmap;

use super::alloc::Allocator;
use super::chain::{self, ChainHead};
use super::file::{PageFile, StdFile, IOVECS_MAX};
use super::meta::Meta;
use super::page::Kind;
use super::read::ReadTxn;
use super::sealed::{self, SealedFile};
use super::write::WriteTxn;
use super::Error;
use crate::crypt::SharedKeyring;

/// How to open a tree file.
#[derive(Clone, Debug)]
pub struct Options {
    /// Page size for a new file (a power of two, 1 KiB to 64 KiB); an existing file keeps its own.
    pub page_size_bytes: usize,
    /// Check the crc32c of every page a reader touches, not only the pages a writer copies.
    pub verify_checksums: bool,
    /// Read transactions that may be open at once; one more gets [`Error::ReadersFull`].
    pub readers_max: usize,
    /// Keys for an encrypted file (`sealed.rs`). With them a new file is created encrypted and
    /// defragmentation writes every page with the current key; a plain file stays plain until
    /// defragmented. Without them an encrypted file is refused.
    pub keyring: Option<SharedKeyring>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            page_size_bytes: 4096,
            verify_checksums: false,
            readers_max: 1024,
            keyring: None,
        }
    }
}

const PAGE_SIZE_MIN: usize = 1024;
const PAGE_SIZE_MAX: usize = 65536;
/// Reader slot states besides a snapshot txn id (which is always >= 1).
const SLOT_FREE: u64 = 0;
const SLOT_CLAIMED: u64 = u64::MAX;
/// Growth step bounds: small files grow by a quarter, big ones by at most this much.
const GROW_BYTES_MIN: u64 = 256 << 10;
const GROW_BYTES_MAX: u64 = 64 << 20;
/// Runs of pages larger than this are split into several writes.
const WRITE_BATCH_BYTES_MAX: usize = 8 << 20;

/// A copy-on-write B+tree file: one writer at a time, any number of lock-free readers.
#[derive(Clone)]
pub struct Db {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) page_size: usize,
    pub(crate) verify: bool,
    pub(crate) published: ArcSwap<Snapshot>,
    readers: Box<[AtomicU64]>,
    reader_hint: AtomicUsize,
    writer: Mutex<Writer>,
    pub(crate) path: Option<PathBuf>,
    pub(crate) keyring: Option<SharedKeyring>,
}

/// What a reader sees: one committed transaction and a map that covers all its pages.
pub(crate) struct Snapshot {
    pub(crate) txn_id: u64,
    pub(crate) roots: Vec<(String, u64)>,
    pub(crate) map: Arc<Mmap>,
}

pub(crate) struct Writer {
    pub(crate) file: Box<dyn PageFile>,
    pub(crate) map: Arc<Mmap>,
    pub(crate) txn_id: u64,
    pub(crate) roots: Vec<(String, u64)>,
    pub(crate) alloc: Allocator,
    pub(crate) durable: Durable,
    /// Pages written since the last checkpoint that may still be in the tree, with their crc.
    pub(crate) unsynced: HashMap<u64, u32>,
    pub(crate) poisoned: bool,
}

/// The newest meta known to be on stable storage.
pub(crate) struct Durable {
    pub(crate) txn_id: u64,
    pub(crate) seq: u64,
    pub(crate) slot: u64,
    pub(crate) applied_index: u64,
    /// Pages of its freelist and written-list chains.
    pub(crate) chain_pages: Vec<u64>,
}

/// Counters for tests, `basalt check` and the perf comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub page_size_bytes: usize,
    pub file_bytes: u64,
    pub high_water_pages: u64,
    pub free_pages: u64,
    pub waiting_pages: u64,
    pub txn_id: u64,
    pub durable_txn_id: u64,
    pub durable_applied_index: u64,
}

/// Opens (creating if missing or empty) the tree file at `path`.
pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Db, Error> {
    let path = path.as_ref();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    options.validate()?;
    let file = wrap(StdFile(file), &options)?;
    Db::open_with(file, Some(path.to_path_buf()), options)
}

/// Opens the tree file at `path` for reading only (a tool looking at a member's file): nothing
/// is written to it, and an encrypted file is decrypted into memory with `keyring`.
pub fn open_read_only(
    path: impl AsRef<Path>,
    keyring: Option<&SharedKeyring>,
) -> Result<Db, Error> {
    let file = StdFile(File::open(path)?);
    let options = Options {
        keyring: keyring.cloned(),
        ..Options::default()
    };
    if file.len_bytes()? == 0 {
        return Err(Error::NoValidMeta(Box::new(Error::Io(
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "empty file"),
        ))));
    }
    let file = wrap(file, &options)?;
    Db::open_with(file, None, options)
}

/// The file as the tree reads it: decrypted when it is encrypted, encrypted when it is new and
/// a keyring is given, else as it is.
pub(crate) fn wrap(file: StdFile, options: &Options) -> Result<Box<dyn PageFile>, Error> {
    let mut head = [0u8; 8];
    let len_bytes = file.len_bytes()?;
    if len_bytes >= head.len() as u64 {
        file.read_at(&mut head, 0)?;
    }
    let inner: Box<dyn PageFile> = Box::new(file);
    Ok(match &options.keyring {
        _ if sealed::is_sealed(&head) && options.keyring.is_none() => {
            return Err(Error::Encrypted {
                ids: sealed::key_ids(inner.as_ref())?,
            })
        }
        Some(keyring) if sealed::is_sealed(&head) => {
            Box::new(SealedFile::open(inner, keyring.clone())?)
        }
        Some(keyring) if len_bytes == 0 => Box::new(SealedFile::create(
            inner,
            keyring.clone(),
            options.page_size_bytes,
        )?),
        _ => inner,
    })
}

impl Options {
    fn validate(&self) -> Result<(), Error> {
        let ps = self.page_size_bytes;
        if !ps.is_power_of_two() || !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&ps) {
            return Err(Error::InvalidOptions(
                "page_size_bytes must be a power of two from 1 KiB to 64 KiB",
            ));
        }
        if self.readers_max == 0 {
            return Err(Error::InvalidOptions("readers_max must be at least 1"));
        }
        Ok(())
    }
}

impl Db {
    /// Opens a tree over any [`PageFile`] (e.g. a fault-injecting one). Without a path the file
    /// cannot be defragmented.
    pub fn open_file(file: Box<dyn PageFile>, options: Options) -> Result<Db, Error> {
        Db::open_with(file, None, options)
    }

    fn open_with(
        file: Box<dyn PageFile>,
        path: Option<PathBuf>,
        options: Options,
    ) -> Result<Db, Error> {
        options.validate()?;
        let ps = options.page_size_bytes;
        if file.len_bytes()? == 0 {
            init_file(file.as_ref(), ps)?;
        }
        let (meta, chain_pages, free) = recover(file.as_ref(), ps)?;
        let page_size = meta.page_size;
        let file_bytes = file.len_bytes()?;
        let map = Arc::new(file.map(file_bytes)?);
        let snapshot = Snapshot {
            txn_id: meta.txn_id,
            roots: meta.buckets.clone(),
            map: map.clone(),
        };
        let writer = Writer {
            file,
            map,
            txn_id: meta.txn_id,
            roots: meta.buckets.clone(),
            alloc: Allocator::new(free, meta.high_water_pages),
            durable: Durable {
                txn_id: meta.txn_id,
                seq: meta.seq,
                slot: meta.seq % 2,
                applied_index: meta.applied_index,
                chain_pages,
            },
            unsynced: HashMap::new(),
            poisoned: false,
        };
        let readers = (0..options.readers_max)
            .map(|_| AtomicU64::new(SLOT_FREE))
            .collect();
        Ok(Db {
            shared: Arc::new(Shared {
                page_size,
                verify: options.verify_checksums,
                published: ArcSwap::from_pointee(snapshot),
                readers,
                reader_hint: AtomicUsize::new(0),
                writer: Mutex::new(writer),
                path,
                keyring: options.keyring,
            }),
        })
    }

    /// Starts the (only) write transaction; blocks while another is open.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>, Error> {
        let mut writer = self.shared.lock_writer()?;
        let durable_txn = writer.durable.txn_id;
        writer
            .alloc
            .reclaim(self.shared.oldest_reader_txn(), durable_txn);
        Ok(WriteTxn::new(&self.shared, writer))
    }

    /// A snapshot of the newest committed transaction, readable from any thread without locks.
    pub fn begin_read(&self) -> Result<ReadTxn, Error> {
        let slot = self.shared.claim_reader_slot()?;
        loop {
            let snapshot = self.shared.published.load_full();
            self.shared.readers[slot].store(snapshot.txn_id, Ordering::SeqCst);
            // Pairs with the fence in `oldest_reader_txn` (store-then-load on both sides): either
            // the writer's later scan sees this slot, or this load sees the newer snapshot and we
            // retry. So the pages of the snapshot we keep stay put.
            fence(Ordering::SeqCst);
            if self.shared.published.load().txn_id == snapshot.txn_id {
                return Ok(ReadTxn::new(self.shared.clone(), snapshot, slot));
            }
        }
    }

    /// Makes every committed transaction durable and records `applied_index` with it: pages
    /// written and synced, then the alternate meta page written and synced.
    pub fn checkpoint(&self, applied_index: u64) -> Result<(), Error> {
        let mut writer = self.shared.lock_writer()?;
        let result = writer.checkpoint(self.shared.page_size, applied_index);
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, Error::OutOfSpace(_)))
        {
            writer.poisoned = true;
        } else {
            let durable_txn = writer.durable.txn_id;
            writer
                .alloc
                .reclaim(self.shared.oldest_reader_txn(), durable_txn);
        }
        result
    }

    /// Whether the tree file is encrypted (a plain file opened with a keyring is not, until
    /// it is defragmented).
    pub fn is_encrypted(&self) -> Result<bool, Error> {
        Ok(self.shared.lock_writer()?.file.is_sealed())
    }

    /// The applied index of the newest durable checkpoint (what recovery replays the WAL from).
    pub fn durable_applied_index(&self) -> Result<u64, Error> {
        Ok(self.shared.lock_writer()?.durable.applied_index)
    }

    pub fn stats(&self) -> Result<Stats, Error> {
        let writer = self.shared.lock_writer()?;
        Ok(Stats {
            page_size_bytes: self.shared.page_size,
            // The writer maps the whole file and remaps whenever it grows or is swapped, so the
            // map's length is the file's: no statx per call (the quota check asks per write).
            file_bytes: writer.map.len() as u64,
            high_water_pages: writer.alloc.next_page,
            free_pages: writer.alloc.pooled_pages() as u64,
            waiting_pages: writer.alloc.waiting_pages() as u64,
            txn_id: writer.txn_id,
            durable_txn_id: writer.durable.txn_id,
            durable_applied_index: writer.durable.applied_index,
        })
    }

    /// Rewrites the newest committed state into a compact new file, makes it durable with
    /// `applied_index`, and swaps it in place of the old one. Readers keep reading the old file
    /// through their own map until they finish; writers wait for the copy.
    pub fn defragment(&self, applied_index: u64) -> Result<(), Error> {
        let path = self.shared.path.clone().ok_or(Error::InvalidOptions(
            "defragment needs a Db opened by path",
        ))?;
        let mut writer = self.shared.lock_writer()?;
        let result = super::defrag::defragment(&self.shared, &mut writer, &path, applied_index);
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, Error::OutOfSpace(_)))
        {
            writer.poisoned = true;
        }
        result
    }
}

impl Shared {
    pub(crate) fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, Error> {
        let writer = self.writer.lock().map_err(|_| Error::Poisoned)?;
        if writer.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(writer)
    }

    fn claim_reader_slot(&self) -> Result<usize, Error> {
        let n = self.readers.len();
        let start = self.reader_hint.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            let slot = (start + i) % n;
            if self.readers[slot]
                .compare_exchange(SLOT_FREE, SLOT_CLAIMED, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(slot);
            }
        }
        Err(Error::ReadersFull { readers_max: n })
    }

    pub(crate) fn release_reader_slot(&self, slot: usize) {
        self.readers[slot].store(SLOT_FREE, Ordering::SeqCst);
    }

    /// The oldest snapshot any open reader holds, `u64::MAX` if none.
    pub(crate) fn oldest_reader_txn(&self) -> u64 {
        fence(Ordering::SeqCst);
        self.readers
            .iter()
            .map(|slot| slot.load(Ordering::SeqCst))
            .filter(|&txn| txn != SLOT_FREE && txn != SLOT_CLAIMED)
            .min()
            .unwrap_or(u64::MAX)
    }
}

impl Writer {
    /// Grows the file (and the writer's map) so that every page below `next_page` exists.
    pub(crate) fn ensure_file_covers(&mut self, page_size: usize) -> Result<(), Error> {
        let needed_bytes = self.alloc.next_page * page_size as u64;
        let len_bytes = self.map.len() as u64;
        if needed_bytes <= len_bytes {
            return Ok(());
        }
        let step_bytes = (len_bytes / 4).clamp(GROW_BYTES_MIN, GROW_BYTES_MAX);
        let new_len_bytes = needed_bytes
            .next_multiple_of(step_bytes)
            .next_multiple_of(page_size as u64);
        self.file.set_len_bytes(new_len_bytes)?;
        self.map = Arc::new(self.file.map(new_len_bytes)?);
        Ok(())
    }

    /// After a write of pages `taken` (allocated since the allocator's `next_page` was
    /// `next_page_before`) failed: when the device was full, gives the pages back, so the tree
    /// is as it was before and the write may be tried again; the pages were reachable from
    /// nothing published or durable, so whatever reached them is garbage nobody reads. Any
    /// other error comes back as it is, and the caller poisons the writer.
    pub(crate) fn undo_if_out_of_space(
        &mut self,
        error: Error,
        next_page_before: u64,
        taken: impl IntoIterator<Item = u64>,
    ) -> Error {
        let Error::Io(io) = error else { return error };
        if !crate::disk::is_out_of_space(&io) {
            return Error::Io(io);
        }
        self.alloc
            .release_now(taken.into_iter().filter(|&page| page < next_page_before));
        self.alloc.next_page = next_page_before;
        Error::OutOfSpace(io)
    }

    /// Writes the freelist, the written list and the meta page in one batch and syncs once;
    /// `recover` rejects the meta if anything it vouches for did not reach the disk. A full
    /// device before the sync undoes the checkpoint ([`Error::OutOfSpace`]): a meta page that
    /// did reach the slot vouches for pages that did not, so recovery rejects it like a torn
    /// checkpoint, and the next attempt writes the same slot again.
    fn checkpoint(&mut self, page_size: usize, applied_index: u64) -> Result<(), Error> {
        let mut free = self.alloc.all_unreachable();
        free.extend_from_slice(&self.durable.chain_pages);
        free.sort_unstable();
        let next_page_before = self.alloc.next_page;
        let mut written: Vec<(u64, u32)> = self
            .unsynced
            .iter()
            .map(|(&page, &crc)| (page, crc))
            .filter(|(page, _)| free.binary_search(page).is_err())
            .collect();
        written.sort_unstable();
        let written_pages =
            chain::pages_needed(written.len(), page_size, chain::WRITTEN_ENTRY_BYTES);
        let mut chain_pages = Vec::new();
        // Chain pages come out of the free set, which shrinks the freelist as it goes.
        while chain_pages.len()
            < written_pages + chain::pages_needed(free.len(), page_size, chain::FREE_ENTRY_BYTES)
        {
            let page = match self.alloc.take_pooled() {
                Some(page) => {
                    let at = free
                        .binary_search(&page)
                        .expect("pooled pages are listed as free");
                    free.remove(at);
                    page
                }
                None => self.alloc.alloc(1),
            };
            chain_pages.push(page);
        }
        let free_bytes: Vec<u8> = free.iter().flat_map(|id| id.to_le_bytes()).collect();
        let written_bytes: Vec<u8> = written
            .iter()
            .flat_map(|(id, crc)| id.to_le_bytes().into_iter().chain(crc.to_le_bytes()))
            .collect();
        let (fl_pages, wl_pages) = chain_pages.split_at(chain_pages.len() - written_pages);
        let (mut writes, freelist) = chain::encode(
            Kind::Freelist,
            chain::FREE_ENTRY_BYTES,
            &free_bytes,
            fl_pages,
            page_size,
            self.txn_id,
        );
        let (written_writes, written) = chain::encode(
            Kind::Written,
            chain::WRITTEN_ENTRY_BYTES,
            &written_bytes,
            wl_pages,
            page_size,
            self.txn_id,
        );
        writes.extend(written_writes);
        let meta = Meta {
            page_size,
            txn_id: self.txn_id,
            seq: self.durable.seq + 1,
            applied_index,
            high_water_pages: self.alloc.next_page,
            freelist,
            written,
            buckets: self.roots.clone(),
        };
        let slot = meta.seq % 2;
        assert_ne!(
            slot, self.durable.slot,
            "a checkpoint must never overwrite the newest durable meta"
        );
        let mut meta_page = vec![0u8; page_size];
        meta.encode(&mut meta_page);
        writes.push((slot, meta_page));
        writes.sort_unstable_by_key(|(id, _)| *id);
        if let Err(error) = self
            .ensure_file_covers(page_size)
            .and_then(|()| write_coalesced(self.file.as_ref(), page_size, &writes))
        {
            return Err(self.undo_if_out_of_space(error, next_page_before, chain_pages));
        }
        self.file.sync_data()?;
        self.unsynced.clear();
        let old_chain = std::mem::replace(&mut self.durable.chain_pages, chain_pages);
        self.alloc.release_now(old_chain);
        self.durable.txn_id = meta.txn_id;
        self.durable.seq = meta.seq;
        self.durable.slot = slot;
        self.durable.applied_index = applied_index;
        Ok(())
    }
}

/// Writes sorted page buffers with one vectored write per run of consecutive pages.
pub(crate) fn write_coalesced(
    file: &dyn PageFile,
    page_size: usize,
    writes: &[(u64, Vec<u8>)],
) -> Result<(), Error> {
    let mut run: Vec<&[u8]> = Vec::new();
    let (mut run_at, mut run_bytes) = (0u64, 0usize);
    for (id, buf) in writes {
        let offset = id * page_size as u64;
        let contiguous = !run.is_empty() && run_at + run_bytes as u64 == offset;
        if !contiguous || run.len() == IOVECS_MAX || run_bytes + buf.len() > WRITE_BATCH_BYTES_MAX {
            if !run.is_empty() {
                file.write_vectored_at(&run, run_at)?;
                run.clear();
            }
            (run_at, run_bytes) = (offset, 0);
        }
        run.push(buf);
        run_bytes += buf.len();
    }
    if !run.is_empty() {
        file.write_vectored_at(&run, run_at)?;
    }
    Ok(())
}

fn init_file(file: &dyn PageFile, page_size: usize) -> Result<(), Error> {
    let mut buf = vec![0u8; page_size * 2];
    // Both slots valid from the start, so a damaged slot is always a real fault worth reporting.
    for seq in [0u64, 1] {
        let meta = Meta {
            page_size,
            txn_id: 1,
            seq,
            applied_index: 0,
            high_water_pages: 2,
            freelist: ChainHead::default(),
            written: ChainHead::default(),
            buckets: Vec::new(),
        };
        let slot = (seq % 2) as usize;
        meta.encode(&mut buf[slot * page_size..(slot + 1) * page_size]);
    }
    file.write_at(&buf, 0)?;
    file.sync_data()?;
    Ok(())
}

/// Both meta slots, decoded or with the reason they are unusable.
pub(crate) fn read_metas(
    file: &dyn PageFile,
    page_size_hint: usize,
) -> Result<[Result<Meta, Error>; 2], Error> {
    let mut head = [0u8; 28];
    file.read_at(&mut head, 0)?;
    let page_size = Meta::peek_page_size(&head)
        .filter(|ps| ps.is_power_of_two() && (PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(ps))
        .unwrap_or(page_size_hint);
    let read = |slot: u64| -> Result<Meta, Error> {
        let mut buf = vec![0u8; page_size];
        file.read_at(&mut buf, slot * page_size as u64)?;
        Meta::decode(slot, &buf)
    };
    Ok([read(0), read(1)])
}

/// The newest meta whose chains and written pages all read back as the checkpoint wrote
/// them, with its chain pages and free page ids. An older meta is the fallback when a crash cut
/// a checkpoint short.
pub(crate) fn recover(
    file: &dyn PageFile,
    page_size_hint: usize,
) -> Result<(Meta, Vec<u64>, Vec<u64>), Error> {
    let mut candidates = Vec::new();
    let mut first_error = None;
    for meta in read_metas(file, page_size_hint)? {
        match meta {
            Ok(meta) => candidates.push(meta),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    candidates.sort_by_key(|m| std::cmp::Reverse(m.seq));
    for meta in candidates {
        match validate(file, &meta) {
            Ok((chain_pages, free)) => return Ok((meta, chain_pages, free)),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    Err(Error::NoValidMeta(Box::new(first_error.unwrap_or(
        Error::corrupt(0, page_size_hint, 0, "no meta page"),
    ))))
}

/// Checks what `meta` vouches for; returns its chain pages and free page ids.
pub(crate) fn validate(file: &dyn PageFile, meta: &Meta) -> Result<(Vec<u64>, Vec<u64>), Error> {
    let ps = meta.page_size;
    let hw = meta.high_water_pages;
    if file.len_bytes()? < hw * ps as u64 {
        return Err(Error::corrupt(
            0,
            ps,
            48,
            "file is shorter than its meta page says",
        ));
    }
    let (mut chain_pages, free_bytes) = chain::read(
        file,
        meta.freelist,
        Kind::Freelist,
        chain::FREE_ENTRY_BYTES,
        ps,
        hw,
    )?;
    let (written_pages, written) = chain::read(
        file,
        meta.written,
        Kind::Written,
        chain::WRITTEN_ENTRY_BYTES,
        ps,
        hw,
    )?;
    chain_pages.extend(written_pages);
    for entry in written.chunks_exact(chain::WRITTEN_ENTRY_BYTES) {
        let id = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(entry[8..].try_into().expect("4 bytes"));
        chain::verify_written(file, id, crc, ps, hw)?;
    }
    let mut free = Vec::with_capacity(free_bytes.len() / 8);
    for id in free_bytes.chunks_exact(8) {
        let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
        if id < 2 || id >= hw {
            return Err(Error::corrupt(
                meta.freelist.page,
                ps,
                0,
                "free page id outside the file",
            ));
        }
        free.push(id);
    }
    Ok((chain_pages, free))
}
