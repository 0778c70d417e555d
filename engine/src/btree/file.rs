//! The narrow file interface the tree writes through, so tests can put a fault-injecting layer
//! between the tree and the disk. Reads go through a shared memory map of the same file.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use memmap2::Mmap;

/// What the tree needs from its file. Writes are positional; only `sync_data` makes them durable.
pub trait PageFile: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `bufs` back to back from `offset`, as one operation where the file allows.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.write_at(&bufs.concat(), offset)
    }
    fn sync_data(&self) -> io::Result<()>;
    fn len_bytes(&self) -> io::Result<u64>;
    fn set_len_bytes(&self, len_bytes: u64) -> io::Result<()>;
    /// A read-only shared map of the first `len_bytes` of the file.
    fn map(&self, len_bytes: u64) -> io::Result<Mmap>;
    /// Whether pages reach the disk encrypted (`sealed.rs`).
    fn is_sealed(&self) -> bool {
        false
    }
}

/// Lets a test keep a handle on a file the tree owns (to take a crash image of it).
impl<T: PageFile + ?Sized> PageFile for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        (**self).write_vectored_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        (**self).sync_data()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        (**self).len_bytes()
    }
    fn set_len_bytes(&self, len_bytes: u64) -> io::Result<()> {
        (**self).set_len_bytes(len_bytes)
    }
    fn map(&self, len_bytes: u64) -> io::Result<Mmap> {
        (**self).map(len_bytes)
    }
    fn is_sealed(&self) -> bool {
        (**self).is_sealed()
    }
}

/// Most buffers one vectored write takes (Linux's IOV_MAX).
pub const IOVECS_MAX: usize = 1024;

/// A plain file: pwrite, fdatasync, ftruncate.
pub struct StdFile(pub File);

impl PageFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    /// One pwritev per call: the commit path hands over page buffers without staging copies.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        assert!(
            bufs.len() <= IOVECS_MAX,
            "{} buffers exceed the iovec bound",
            bufs.len()
        );
        let iovecs: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let written = loop {
            // SAFETY: each iovec points into a slice of `bufs`, alive for the whole call, and
            // pwritev only reads through them.
            let n = unsafe {
                libc::pwritev(
                    self.0.as_raw_fd(),
                    iovecs.as_ptr(),
                    iovecs.len() as i32,
                    offset as i64,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        // A short write is finished buffer by buffer.
        let (mut skip, mut at) = (written, offset);
        for buf in bufs {
            if skip < buf.len() {
                self.0.write_all_at(&buf[skip..], at + skip as u64)?;
            }
            skip = skip.saturating_sub(buf.len());
            at += buf.len() as u64;
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len_bytes(&self, len_bytes: u64) -> io::Result<()> {
        self.0.set_len(len_bytes)
    }
    fn map(&self, len_bytes: u64) -> io::Result<Mmap> {
        let len = usize::try_from(len_bytes)
            .map_err(|_| io::Error::other("file larger than the address space"))?;
        // SAFETY: the map is read-only and the tree only ever rewrites pages that no published
        // snapshot can reach (copy-on-write with reader tracking), and never shrinks a file
        // while a map of it is alive (defragmentation swaps in a new file instead).
        unsafe { memmap2::MmapOptions::new().len(len).map(&self.0) }
    }
}

/// A file that remembers what a power cut would keep: the image as of the last `sync_data`
/// plus the writes issued since, and that fails every operation after a chosen number of them
/// (the simulated crash). Test tooling; the tree itself never needs it.
pub struct FaultFile {
    inner: StdFile,
    state: Mutex<FaultState>,
}

struct FaultState {
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    ops_left: Option<u64>,
    ops_done: u64,
}

impl FaultFile {
    /// Wraps a new, empty file; every write/sync/set_len counts as one operation, and the
    /// operation numbered `crash_after_ops` (0-based) and all later ones fail.
    pub fn new(file: File, crash_after_ops: Option<u64>) -> io::Result<FaultFile> {
        assert_eq!(
            file.metadata()?.len(),
            0,
            "FaultFile starts from an empty file"
        );
        Ok(FaultFile {
            inner: StdFile(file),
            state: Mutex::new(FaultState {
                durable: Vec::new(),
                pending: Vec::new(),
                ops_left: crash_after_ops,
                ops_done: 0,
            }),
        })
    }

    /// Operations performed so far (to size the crash points of a later run).
    pub fn ops_done(&self) -> u64 {
        self.state.lock().expect("fault state").ops_done
    }

    /// The bytes a disk could hold after a power cut now: the synced image plus each unsynced
    /// write kept whole, dropped, or torn at a 512-byte sector boundary, as `choose` decides
    /// (0 drop, 1 keep, 2 tear) for each write in issue order.
    pub fn crash_image(&self, mut choose: impl FnMut(usize) -> u8) -> Vec<u8> {
        let state = self.state.lock().expect("fault state");
        let mut image = state.durable.clone();
        for (i, (offset, bytes)) in state.pending.iter().enumerate() {
            let kept = match choose(i) {
                0 => 0,
                1 => bytes.len(),
                _ => (bytes.len() / 2).next_multiple_of(512).min(bytes.len()),
            };
            apply(&mut image, *offset, &bytes[..kept]);
        }
        image
    }

    fn step(&self) -> io::Result<std::sync::MutexGuard<'_, FaultState>> {
        let mut state = self.state.lock().expect("fault state");
        if let Some(left) = state.ops_left.as_mut() {
            if *left == 0 {
                return Err(io::Error::other("injected crash"));
            }
            *left -= 1;
        }
        state.ops_done += 1;
        Ok(state)
    }
}

fn apply(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(bytes);
}

impl PageFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.step()?;
        state.pending.push((offset, buf.to_vec()));
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.step()?;
        let pending = std::mem::take(&mut state.pending);
        for (offset, bytes) in pending {
            apply(&mut state.durable, offset, &bytes);
        }
        let len = self.inner.len_bytes()? as usize;
        state.durable.resize(len, 0);
        self.inner.sync_data()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        self.inner.len_bytes()
    }
    fn set_len_bytes(&self, len_bytes: u64) -> io::Result<()> {
        let _state = self.step()?;
        self.inner.set_len_bytes(len_bytes)
    }
    fn map(&self, len_bytes: u64) -> io::Result<Mmap> {
        self.inner.map(len_bytes)
    }
}
