//! A simulated disk for tests: files in memory that remember what was synced, so a test can
//! pull the plug ([`SimStorage::crash`]) and see exactly what a real disk could have kept, and
//! inject faults: short writes, ENOSPC, failing fdatasync, bit flips. Deterministic by seed.
//!
//! The crash model follows the media assumptions in [`super`]: every sector written since the
//! file's last fdatasync independently keeps its new or its old content (so the last write is
//! torn at sector granularity). [`Faults::sub_sector_tears`] goes beyond them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::format::TORN_SECTOR_BYTES;
use super::storage::{SegmentFile, Storage, WriteBuf};

/// The O_DIRECT alignment the simulated files demand.
pub const SIM_ALIGNMENT_BYTES: usize = 4096;

/// Faults to inject; each `one_in` is a 1-in-N chance per call (0: never).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub short_write_one_in: u32,
    pub sync_error_one_in: u32,
    /// Writes fail with ENOSPC once this many bytes have been written in total.
    pub enospc_after_bytes: Option<u64>,
    /// The device holds this many bytes: a write that would grow the files past it fails with
    /// ENOSPC, while writes inside a file's length always fit (as into a zero-filled segment).
    /// Removing a file gives its bytes back.
    pub capacity_bytes: Option<u64>,
    /// Let a crash keep a new prefix of a sector over its old bytes, which the media
    /// assumptions rule out; the WAL must then refuse to open rather than lose records.
    pub sub_sector_tears: bool,
}

#[derive(Debug, Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges written since the last fdatasync.
    unsynced: Vec<(usize, usize)>,
}

#[derive(Debug)]
struct Disk {
    files: BTreeMap<PathBuf, Rc<RefCell<FileData>>>,
    rng: u64,
    faults: Faults,
    bytes_written: u64,
    /// Bumped by a crash: handles opened before it stop working, like a dead process's.
    epoch: u64,
    counts: SimCounts,
}

/// Calls that reached the simulated device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounts {
    pub writes: u64,
    pub syncs: u64,
    /// Writes refused with ENOSPC.
    pub enospc: u64,
}

impl Disk {
    /// xorshift64*: small, deterministic, good enough to pick faults.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn one_in(&mut self, n: u32) -> bool {
        n != 0 && self.next().is_multiple_of(u64::from(n))
    }

    fn allocated_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|f| f.borrow().current.len() as u64)
            .sum()
    }
}

/// An in-memory [`Storage`] with crash and fault injection. A handle dies with a crash, so
/// tasks of the "dead process" cannot touch the disk the next one recovers.
#[derive(Debug, Clone)]
pub struct SimStorage {
    disk: Rc<RefCell<Disk>>,
    epoch: u64,
}

pub struct SimFile {
    data: Rc<RefCell<FileData>>,
    storage: SimStorage,
}

/// A plain heap buffer stands in for DMA memory.
pub struct SimBuf(Vec<u8>);

impl WriteBuf for SimBuf {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl SimStorage {
    pub fn new(seed: u64) -> SimStorage {
        SimStorage {
            disk: Rc::new(RefCell::new(Disk {
                files: BTreeMap::new(),
                rng: seed | 1,
                faults: Faults::default(),
                bytes_written: 0,
                epoch: 0,
                counts: SimCounts::default(),
            })),
            epoch: 0,
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut d = self.disk.borrow_mut();
        d.faults = faults;
        d.bytes_written = 0;
    }

    /// Power loss: every file keeps its synced bytes plus a random subset of the sectors
    /// written since, one of them possibly torn. Every handle dies; use the one returned.
    pub fn crash(&self) -> SimStorage {
        let mut d = self.disk.borrow_mut();
        d.epoch += 1;
        let revived = SimStorage {
            disk: Rc::clone(&self.disk),
            epoch: d.epoch,
        };
        let files: Vec<_> = d.files.values().cloned().collect();
        for f in files {
            let mut f = f.borrow_mut();
            let mut out = f.durable.clone();
            out.resize(f.current.len(), 0);
            for (start, end) in std::mem::take(&mut f.unsynced) {
                let end = end.min(f.current.len());
                let mut s = start;
                while s < end {
                    let e = ((s / TORN_SECTOR_BYTES + 1) * TORN_SECTOR_BYTES).min(end);
                    let cut = match d.next() % 4 {
                        0 => s,
                        // A tear inside a sector breaks the media assumption; only on request.
                        1 if d.faults.sub_sector_tears => s + (d.next() as usize % (e - s)),
                        _ => e,
                    };
                    out[s..cut].copy_from_slice(&f.current[s..cut]);
                    s = e;
                }
            }
            f.durable = out.clone();
            f.current = out;
        }
        revived
    }

    /// Flips one bit of a file as stored (both before and after any crash).
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) {
        let d = self.disk.borrow();
        let mut f = d.files[path].borrow_mut();
        f.current[byte] ^= 1 << bit;
        if byte < f.durable.len() {
            f.durable[byte] ^= 1 << bit;
        }
    }

    pub fn counts(&self) -> SimCounts {
        self.disk.borrow().counts
    }

    /// The current bytes of a file.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let d = self.disk.borrow();
        d.files.get(path).map(|f| f.borrow().current.clone())
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.disk.borrow().files.keys().cloned().collect()
    }

    fn file(&self, data: Rc<RefCell<FileData>>) -> SimFile {
        SimFile {
            data,
            storage: self.clone(),
        }
    }

    /// Device latency: a few scheduler turns, so other tasks (and crashes) run between a write
    /// being issued and completing, and between a write and its fdatasync.
    async fn latency(&self) {
        let turns = self.disk.borrow_mut().next() % 3;
        for _ in 0..turns {
            futures_lite::future::yield_now().await;
        }
    }

    /// The disk, unless a crash killed this handle.
    fn live(&self) -> io::Result<std::cell::RefMut<'_, Disk>> {
        let d = self.disk.borrow_mut();
        if d.epoch != self.epoch {
            return Err(io::Error::other("simulated power loss: handle is dead"));
        }
        Ok(d)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.display().to_string())
}

impl SegmentFile for SimFile {
    type Buf = SimBuf;
    type ReadBuf = Vec<u8>;

    fn alignment_bytes(&self) -> usize {
        SIM_ALIGNMENT_BYTES
    }

    fn alloc(&self, len: usize) -> SimBuf {
        // Garbage, not zeros, so a caller that forgets to fill a byte is caught.
        SimBuf(vec![0xa5; len])
    }

    async fn write_at(&self, buf: Rc<SimBuf>, pos: u64) -> io::Result<usize> {
        self.storage.latency().await;
        let mut d = self.storage.live()?;
        let len = buf.0.len();
        if !(pos as usize).is_multiple_of(SIM_ALIGNMENT_BYTES)
            || !len.is_multiple_of(SIM_ALIGNMENT_BYTES)
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let growth = (pos as usize + len).saturating_sub(self.data.borrow().current.len());
        let over_capacity = d
            .faults
            .capacity_bytes
            .is_some_and(|capacity| growth > 0 && d.allocated_bytes() + growth as u64 > capacity);
        if over_capacity
            || d.faults
                .enospc_after_bytes
                .is_some_and(|max| d.bytes_written + len as u64 > max)
        {
            d.counts.enospc += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let short_write = d.faults.short_write_one_in;
        let n = if len > 1 && d.one_in(short_write) {
            1 + d.next() as usize % (len - 1)
        } else {
            len
        };
        d.bytes_written += n as u64;
        d.counts.writes += 1;
        let mut f = self.data.borrow_mut();
        let pos = pos as usize;
        if f.current.len() < pos + n {
            f.current.resize(pos + n, 0);
        }
        f.current[pos..pos + n].copy_from_slice(&buf.0[..n]);
        f.unsynced.push((pos, pos + n));
        Ok(n)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let _live = self.storage.live()?;
        let f = self.data.borrow();
        let start = (pos as usize).min(f.current.len());
        let end = (start + len).min(f.current.len());
        Ok(f.current[start..end].to_vec())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.storage.latency().await;
        let mut d = self.storage.live()?;
        let sync_error = d.faults.sync_error_one_in;
        if d.one_in(sync_error) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        d.counts.syncs += 1;
        let mut f = self.data.borrow_mut();
        f.durable = f.current.clone();
        f.unsynced.clear();
        Ok(())
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        let _live = self.storage.live()?;
        Ok(self.data.borrow().current.len() as u64)
    }
}

// Namespace operations are durable at once in the simulation; the WAL syncs its directory
// anyway, and the crash model targets file data, where the WAL's own ordering matters.
impl Storage for SimStorage {
    type File = SimFile;
    // One process at a time by construction: a crash kills the handles of the one before.
    type DirLock = ();

    async fn lock_dir(&self, _dir: &Path) -> io::Result<()> {
        self.live().map(drop)
    }

    async fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.live().map(drop)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = self.live()?;
        Ok(d.files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    async fn open(&self, path: &Path) -> io::Result<SimFile> {
        let data = self
            .live()?
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        Ok(self.file(data))
    }

    async fn create(&self, path: &Path) -> io::Result<SimFile> {
        let data = Rc::new(RefCell::new(FileData::default()));
        self.live()?
            .files
            .insert(path.to_path_buf(), Rc::clone(&data));
        Ok(self.file(data))
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.live()?;
        let data = d.files.remove(from).ok_or_else(|| not_found(from))?;
        d.files.insert(to.to_path_buf(), data);
        Ok(())
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.live()?
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    async fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.live().map(drop)
    }

    fn available_bytes(&self, _dir: &Path) -> io::Result<u64> {
        let d = self.live()?;
        Ok(d.faults
            .capacity_bytes
            .map_or(u64::MAX, |c| c.saturating_sub(d.allocated_bytes())))
    }

    fn full_retry_interval(&self) -> Duration {
        Duration::from_millis(1)
    }
}
