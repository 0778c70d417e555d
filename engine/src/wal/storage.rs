//! The file layer under the WAL: a small trait with one real implementation on glommio DMA
//! files (O_DIRECT through io_uring) and one simulated disk ([`super::sim`]) for fault tests.
//!
//! Everything the WAL does to the medium goes through [`Storage`] and [`SegmentFile`], so the
//! same WAL code runs over both.

use std::io;
use std::ops::Deref;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};

/// A buffer the file layer can write from; for O_DIRECT it is suitably aligned memory.
pub trait WriteBuf: 'static {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

// The WAL runs on one glommio executor; its futures are never sent across threads, so the
// auto-trait bounds that this lint asks for would only get in the way.
#[allow(async_fn_in_trait)]
/// One open segment file.
pub trait SegmentFile: Sized + 'static {
    type Buf: WriteBuf;
    type ReadBuf: Deref<Target = [u8]>;

    /// Offsets and lengths of writes must be multiples of this.
    fn alignment_bytes(&self) -> usize;
    /// A buffer of `len` bytes (a multiple of the alignment) for `write_at`. Its contents are
    /// unspecified: the caller writes every byte.
    fn alloc(&self, len: usize) -> Self::Buf;
    /// Writes `buf` at `pos`; may write fewer bytes than asked (the caller retries).
    async fn write_at(&self, buf: Rc<Self::Buf>, pos: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `pos`; fewer only at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf>;
    async fn fdatasync(&self) -> io::Result<()>;
    async fn size_bytes(&self) -> io::Result<u64>;

    /// Writes all of `buf` at `pos` and returns once it is durable. A file whose writes are
    /// durable by themselves does it in one submission; the default writes, then syncs.
    async fn write_durable(&self, buf: &Rc<Self::Buf>, pos: u64) -> io::Result<()> {
        super::prealloc::write_all(self, buf, pos).await?;
        self.fdatasync().await
    }
}

#[allow(async_fn_in_trait)]
/// The directory operations the WAL needs.
pub trait Storage: Clone + 'static {
    type File: SegmentFile;
    /// Held while a WAL is open; dropping it lets another opener in.
    type DirLock: 'static;

    /// Takes the directory for this process alone, failing at once if another holds it
    /// (two writers on one log would interleave records and break the crc chain).
    async fn lock_dir(&self, dir: &Path) -> io::Result<Self::DirLock>;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`.
    async fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing. Segments are opened this way once
    /// written in full, so an implementation may make each of its writes durable on completion.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates (or truncates) a file for reading and writing; its writes need an fdatasync.
    async fn create(&self, path: &Path) -> io::Result<Self::File>;
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes the filesystem of `dir` can still give to new data.
    fn available_bytes(&self, dir: &Path) -> io::Result<u64>;
    /// How long a write that met a full device waits before it looks for space again.
    fn full_retry_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// Bytes the LOCK file holds so glommio's poll-ring probe reads real data.
const IOPOLL_PROBE_BYTES: u64 = 4096;

/// The production file layer: glommio DMA files, O_DIRECT, io_uring.
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaStorage;

/// A segment file of [`DmaStorage`].
///
/// A segment being filled with zeros is written in large chunks and synced once, so it is
/// opened without O_DSYNC. Once in place it is reopened with O_DSYNC: a group commit is then
/// one write whose completion means durable (the kernel issues the device flush itself), not
/// a write, a wake-up of the writer, and an fdatasync that io_uring hands to a worker thread.
/// Into extents that are already written, as in a zero-filled segment, an O_DSYNC write
/// needs no metadata journal commit, so it costs what the write plus fdatasync costs.
#[derive(Debug)]
pub struct DmaSegment {
    file: DmaFile,
    durable_writes: bool,
}

impl WriteBuf for DmaBuffer {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
}

impl SegmentFile for DmaSegment {
    type Buf = DmaBuffer;
    type ReadBuf = ReadResult;

    fn alignment_bytes(&self) -> usize {
        usize::try_from(self.file.alignment()).expect("alignment fits usize")
    }

    fn alloc(&self, len: usize) -> DmaBuffer {
        self.file.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        // A WAL write is the start of every put's critical path: into the kernel now, not
        // after whatever else is runnable (the peer writers sending the same entries) has run.
        Ok(self.file.write_rc_at_now(buf, pos).await?)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadResult> {
        Ok(self.file.read_at(pos, len).await?)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        Ok(self.file.fdatasync().await?)
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }

    async fn write_durable(&self, buf: &Rc<DmaBuffer>, pos: u64) -> io::Result<()> {
        super::prealloc::write_all(self, buf, pos).await?;
        match self.durable_writes {
            true => Ok(()),
            false => self.fdatasync().await,
        }
    }
}

/// An exclusive `flock` on `<dir>/LOCK`, released when the file closes (or the process dies).
#[derive(Debug)]
pub struct FlockGuard {
    _file: std::fs::File,
}

impl Storage for DmaStorage {
    type File = DmaSegment;
    type DirLock = FlockGuard;

    async fn lock_dir(&self, dir: &Path) -> io::Result<FlockGuard> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        // SAFETY: flock on a descriptor we own; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // glommio decides once per thread and device whether the io_uring poll ring works, by
        // reading the first DmaFile opened there. On an empty file that read "succeeds" without
        // reaching the device, the poll ring is wrongly enabled, and later reads fail with
        // EOPNOTSUPP on devices without poll queues. So the first DmaFile this thread opens
        // here is the LOCK file, given one block of data to read.
        if file.metadata()?.len() < IOPOLL_PROBE_BYTES {
            use std::io::Write;
            (&file).write_all(&[0u8; IOPOLL_PROBE_BYTES as usize])?;
            file.sync_data()?;
        }
        DmaFile::open(dir.join("LOCK")).await?.close().await?;
        Ok(FlockGuard { _file: file })
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    async fn open(&self, path: &Path) -> io::Result<DmaSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(path)
            .await?;
        Ok(DmaSegment {
            file,
            durable_writes: true,
        })
    }

    async fn create(&self, path: &Path) -> io::Result<DmaSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(path)
            .await?;
        Ok(DmaSegment {
            file,
            durable_writes: false,
        })
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = glommio::io::Directory::open(dir).await?;
        d.sync().await?;
        Ok(d.close().await?)
    }

    fn available_bytes(&self, dir: &Path) -> io::Result<u64> {
        crate::disk::available_bytes(dir)
    }
}
