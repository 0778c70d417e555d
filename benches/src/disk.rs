//! The SSD harness: what the disk under a directory physically allows a write-ahead log.
//!
//! Every figure is measured with plain blocking syscalls (pwrite on an O_DIRECT file, then
//! fdatasync), because the floor must not include any runtime of ours. Latency writes go into a
//! file that was written in full first: writing into unwritten extents costs the filesystem a
//! journal commit per fdatasync, which a WAL that pre-zeroes its segments never pays.
//!
//! Beside one writer's floor it measures the same 4 KiB write + fdatasync made by two and three
//! writers at once, each into a file of its own: what a follower's flush costs when the leader's
//! and the other follower's flushes of the same entry are in flight on the same disk, as in a
//! test cluster whose members' data dirs share one device.
//!
//! It must never touch anything in DIR but its own scratch files, and it removes them.

use crate::report::{new_histogram, record};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// O_DIRECT needs buffers, offsets and lengths aligned to the logical block size; 4 KiB covers
/// every device we expect (512-byte and 4K-native alike).
const DIRECT_ALIGN_BYTES: usize = 4096;
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Block sizes of the write + fdatasync latency table: a small WAL batch up to a large one.
pub const BLOCK_SIZES_BYTES: [usize; 4] = [4 * KIB, 16 * KIB, 64 * KIB, MIB];
/// Writes made before recording, so the first-touch costs (page tables, device wake-up) are
/// not counted as the floor.
const WARMUP_WRITES: usize = 20;
/// etcd's documented disk check: `fio --rw=write --ioengine=sync --fdatasync=1 --size=22m
/// --bs=2300`, passed when the 99th percentile of fdatasync is under 10 ms.
pub const FIO_WRITE_BYTES: usize = 2300;
pub const FIO_P99_FDATASYNC_MS_MAX: f64 = 10.0;
/// Writers of the concurrent table: one alone, then two and three starting each write together.
pub const CONCURRENT_WRITERS: [usize; 3] = [1, 2, 3];
/// Block of the concurrent table: a lone put's WAL write.
const CONCURRENT_BLOCK_BYTES: usize = 4 * KIB;
/// Each concurrent writer's file, written in full before it is timed.
const CONCURRENT_FILE_BYTES: usize = 4 * MIB;
/// Rounds taken for one writer count before the next count's turn: the counts alternate so that
/// each sees the same moments of a disk other work shares.
const CONCURRENT_TURN_ROUNDS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--file-mib must be at least {min_mib} (the largest block written)")]
    FileTooSmall { min_mib: usize },
}

pub struct DiskOptions {
    pub dir: PathBuf,
    /// Size of the pre-written scratch file that latency and bandwidth runs overwrite.
    pub file_mib: usize,
    /// Recorded samples per block size, at most.
    pub samples_max: usize,
    /// Time spent per block size, at most; whichever of the two limits comes first ends it.
    pub seconds_per_size: f64,
    /// Size of the fio-style check (etcd's guide uses 22 MiB).
    pub fio_mib: usize,
}

/// A heap buffer aligned for O_DIRECT, filled with non-zero bytes so no layer can shortcut
/// writing zeroes.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len_bytes: usize) -> Self {
        assert!(len_bytes > 0 && len_bytes.is_multiple_of(DIRECT_ALIGN_BYTES));
        let layout = std::alloc::Layout::from_size_align(len_bytes, DIRECT_ALIGN_BYTES)
            .expect("a multiple of the alignment is a valid layout");
        // SAFETY: the layout has a nonzero size (asserted above).
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len_bytes} bytes");
        // SAFETY: ptr is a fresh allocation of exactly layout.size() bytes.
        unsafe { std::ptr::write_bytes(ptr, 0xA5, layout.size()) };
        Self { ptr, layout }
    }

    fn bytes(&self, len_bytes: usize) -> &[u8] {
        assert!(len_bytes <= self.layout.size());
        // SAFETY: ptr points to layout.size() initialised bytes owned by self, and the borrow
        // of self keeps them alive and unaliased by writers.
        unsafe { std::slice::from_raw_parts(self.ptr, len_bytes) }
    }
}

// SAFETY: after `new` the bytes are only read (`bytes` hands out shared slices), so the
// concurrent table's writer threads may share one buffer.
unsafe impl Sync for AlignedBuf {}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated in new() with this same layout and is freed only here.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A scratch file that is removed when dropped, whatever happened.
struct Scratch {
    path: PathBuf,
    file: File,
}

impl Scratch {
    fn create(path: PathBuf, direct: bool) -> Result<Self, DiskError> {
        let _ = std::fs::remove_file(&path);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options.open(&path).map_err(|source| DiskError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path, file })
    }

    fn io<T>(&self, result: std::io::Result<T>) -> Result<T, DiskError> {
        result.map_err(|source| DiskError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Percentiles of one latency histogram as JSON, in microseconds.
fn latency_json(h: &Histogram<u64>) -> Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    json!({
        "samples": h.len(),
        "mean": h.mean() / 1e3,
        "min": h.min() as f64 / 1e3,
        "p50": us(0.5),
        "p90": us(0.9),
        "p99": us(0.99),
        "p99.9": us(0.999),
        "max": h.max() as f64 / 1e3,
    })
}

/// Writes the whole file sequentially in 1 MiB direct writes with one fdatasync at the end,
/// and returns MiB/s.
fn sequential_pass(
    scratch: &Scratch,
    buf: &AlignedBuf,
    file_bytes: usize,
) -> Result<f64, DiskError> {
    let start = Instant::now();
    for offset in (0..file_bytes).step_by(MIB) {
        scratch.io(scratch.file.write_all_at(buf.bytes(MIB), offset as u64))?;
    }
    scratch.io(scratch.file.sync_data())?;
    Ok(file_bytes as f64 / MIB as f64 / start.elapsed().as_secs_f64())
}

/// One block size: overwrite the pre-written file block after block, fdatasync after each.
fn write_sync_latency(
    scratch: &Scratch,
    buf: &AlignedBuf,
    block_bytes: usize,
    file_bytes: usize,
    options: &DiskOptions,
) -> Result<Histogram<u64>, DiskError> {
    let mut latency_ns = new_histogram();
    let blocks = file_bytes / block_bytes;
    let time_max = Duration::from_secs_f64(options.seconds_per_size);
    let start = Instant::now();
    for i in 0..(WARMUP_WRITES + options.samples_max) {
        if i >= WARMUP_WRITES && start.elapsed() > time_max {
            break;
        }
        let offset = ((i % blocks) * block_bytes) as u64;
        let t0 = Instant::now();
        scratch.io(scratch.file.write_all_at(buf.bytes(block_bytes), offset))?;
        scratch.io(scratch.file.sync_data())?;
        if i >= WARMUP_WRITES {
            record(&mut latency_ns, t0.elapsed());
        }
    }
    Ok(latency_ns)
}

/// The concurrent table: for each count in [`CONCURRENT_WRITERS`], that many threads, each with
/// its own pre-written file, start a 4 KiB write + fdatasync together (a barrier), round after
/// round; every writer's every write is a sample. Up to `samples_max` rounds per count, within
/// `seconds_per_size` for the whole table.
fn concurrent_write_sync_latency(
    dir: &Path,
    buf: &AlignedBuf,
    options: &DiskOptions,
) -> Result<Vec<Value>, DiskError> {
    let writers_max = *CONCURRENT_WRITERS
        .iter()
        .max()
        .expect("a constant, non-empty list");
    let scratches = concurrent_paths(dir)
        .into_iter()
        .take(writers_max)
        .map(|path| {
            let scratch = Scratch::create(path, true)?;
            sequential_pass(&scratch, buf, CONCURRENT_FILE_BYTES)?;
            Ok(scratch)
        })
        .collect::<Result<Vec<_>, DiskError>>()?;
    let mut latency_ns: Vec<Histogram<u64>> =
        CONCURRENT_WRITERS.iter().map(|_| new_histogram()).collect();
    let mut rounds_done = 0;
    let time_max = Duration::from_secs_f64(options.seconds_per_size);
    let start = Instant::now();
    while rounds_done < WARMUP_WRITES + options.samples_max
        && (rounds_done <= WARMUP_WRITES || start.elapsed() < time_max)
    {
        let rounds = CONCURRENT_TURN_ROUNDS.min(WARMUP_WRITES + options.samples_max - rounds_done);
        for (histogram, &writers) in latency_ns.iter_mut().zip(&CONCURRENT_WRITERS) {
            let barrier = std::sync::Barrier::new(writers);
            let taken = std::thread::scope(|scope| {
                let handles: Vec<_> = scratches[..writers]
                    .iter()
                    .map(|scratch| {
                        let barrier = &barrier;
                        scope.spawn(move || {
                            let mut taken = Vec::with_capacity(rounds);
                            for round in rounds_done..rounds_done + rounds {
                                let offset =
                                    (round * CONCURRENT_BLOCK_BYTES % CONCURRENT_FILE_BYTES) as u64;
                                barrier.wait();
                                let t0 = Instant::now();
                                scratch.io(scratch
                                    .file
                                    .write_all_at(buf.bytes(CONCURRENT_BLOCK_BYTES), offset))?;
                                scratch.io(scratch.file.sync_data())?;
                                if round >= WARMUP_WRITES {
                                    taken.push(t0.elapsed());
                                }
                            }
                            Ok::<_, DiskError>(taken)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a writer thread panicked"))
                    .collect::<Result<Vec<_>, DiskError>>()
            })?;
            for elapsed in taken.into_iter().flatten() {
                record(histogram, elapsed);
            }
        }
        rounds_done += rounds;
    }
    Ok(latency_ns
        .iter()
        .zip(CONCURRENT_WRITERS)
        .map(|(h, writers)| {
            let mut entry = latency_json(h);
            entry["writers"] = json!(writers);
            entry["block_bytes"] = json!(CONCURRENT_BLOCK_BYTES);
            entry
        })
        .collect())
}

/// etcd's fio check, done the way fio does it: a fresh file, its space reserved by fallocate,
/// buffered 2300-byte appends, fdatasync after each; the fdatasync times are what etcd's
/// guidance is about.
fn fio_check(path: PathBuf, options: &DiskOptions) -> Result<Value, DiskError> {
    let scratch = Scratch::create(path, false)?;
    let total_bytes = options.fio_mib * MIB;
    // SAFETY: the fd is open for writing and owned by scratch for the whole call.
    let rc =
        unsafe { libc::posix_fallocate(scratch.file.as_raw_fd(), 0, total_bytes as libc::off_t) };
    scratch.io(if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    })?;
    let record_bytes = vec![0xA5u8; FIO_WRITE_BYTES];
    let mut write_ns = new_histogram();
    let mut fdatasync_ns = new_histogram();
    let mut offset = 0usize;
    while offset + FIO_WRITE_BYTES <= total_bytes {
        let t0 = Instant::now();
        scratch.io(scratch.file.write_all_at(&record_bytes, offset as u64))?;
        let t1 = Instant::now();
        scratch.io(scratch.file.sync_data())?;
        record(&mut write_ns, t1 - t0);
        record(&mut fdatasync_ns, t1.elapsed());
        offset += FIO_WRITE_BYTES;
    }
    let p99_ms = fdatasync_ns.value_at_quantile(0.99) as f64 / 1e6;
    Ok(json!({
        "write_bytes": FIO_WRITE_BYTES,
        "total_bytes": offset,
        "write_us": latency_json(&write_ns),
        "fdatasync_us": latency_json(&fdatasync_ns),
        "p99_fdatasync_ms": p99_ms,
        "p99_fdatasync_ms_max": FIO_P99_FDATASYNC_MS_MAX,
        "pass": p99_ms < FIO_P99_FDATASYNC_MS_MAX,
    }))
}

/// Runs the whole harness and returns its JSON; progress lines go to stderr.
pub fn run(options: &DiskOptions) -> Result<Value, DiskError> {
    let largest_bytes = *BLOCK_SIZES_BYTES
        .iter()
        .max()
        .expect("a constant, non-empty list");
    if options.file_mib * MIB < largest_bytes {
        return Err(DiskError::FileTooSmall {
            min_mib: largest_bytes / MIB,
        });
    }
    let file_bytes = options.file_mib * MIB;
    let buf = AlignedBuf::new(largest_bytes);
    let [direct_path, fio_path] = scratch_paths(&options.dir);
    let scratch = Scratch::create(direct_path, true)?;

    eprintln!("disk: writing {} MiB scratch file", options.file_mib);
    let fresh_mib_s = sequential_pass(&scratch, &buf, file_bytes)?;
    let overwrite_mib_s = sequential_pass(&scratch, &buf, file_bytes)?;

    let mut latency = Vec::new();
    for block_bytes in BLOCK_SIZES_BYTES {
        eprintln!(
            "disk: O_DIRECT write + fdatasync of {} KiB",
            block_bytes / KIB
        );
        let h = write_sync_latency(&scratch, &buf, block_bytes, file_bytes, options)?;
        let mut entry = latency_json(&h);
        entry["block_bytes"] = json!(block_bytes);
        entry["mib_s_at_p50"] =
            json!(block_bytes as f64 / MIB as f64 / (h.value_at_quantile(0.5) as f64 / 1e9));
        latency.push(entry);
    }
    drop(scratch);

    eprintln!("disk: 4 KiB O_DIRECT write + fdatasync by 1, 2 and 3 writers at once");
    let concurrent = concurrent_write_sync_latency(&options.dir, &buf, options)?;

    eprintln!("disk: fio-style check ({FIO_WRITE_BYTES}-byte writes, fdatasync each)");
    let fio = fio_check(fio_path, options)?;
    Ok(json!({
        "dir": options.dir.display().to_string(),
        "file_bytes": file_bytes,
        "sequential_mib_s": { "fresh_file": fresh_mib_s, "overwrite": overwrite_mib_s },
        "write_fdatasync": latency,
        "concurrent_write_fdatasync": concurrent,
        "fio_check": fio,
    }))
}

/// The human-readable table of a [`run`] result.
pub fn print_table(result: &Value, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "\ndisk: {}", result["dir"].as_str().unwrap_or("?"))?;
    writeln!(
        out,
        "sequential 1 MiB direct writes: {:.0} MiB/s into a fresh file, {:.0} MiB/s overwriting",
        result["sequential_mib_s"]["fresh_file"]
            .as_f64()
            .unwrap_or(0.0),
        result["sequential_mib_s"]["overwrite"]
            .as_f64()
            .unwrap_or(0.0)
    )?;
    writeln!(
        out,
        "{:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "block", "samples", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "MiB/s@p50"
    )?;
    for row in result["write_fdatasync"].as_array().into_iter().flatten() {
        let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
        writeln!(
            out,
            "{:<10} {:>8} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.1}",
            format!(
                "{} KiB",
                row["block_bytes"].as_u64().unwrap_or(0) / KIB as u64
            ),
            row["samples"].as_u64().unwrap_or(0),
            f("p50"),
            f("p90"),
            f("p99"),
            f("p99.9"),
            f("max"),
            f("mib_s_at_p50"),
        )?;
    }
    for row in result["concurrent_write_fdatasync"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
        writeln!(
            out,
            "4 KiB write + fdatasync, {} at once (a file each): {} samples, p50 {:.0} us, \
             p90 {:.0} us, p99 {:.0} us",
            match row["writers"].as_u64().unwrap_or(0) {
                1 => "1 writer".to_string(),
                n => format!("{n} writers"),
            },
            row["samples"].as_u64().unwrap_or(0),
            f("p50"),
            f("p90"),
            f("p99"),
        )?;
    }
    let fio = &result["fio_check"];
    writeln!(
        out,
        "fio-style check ({} B writes, fdatasync each): fdatasync p50 {:.0} us, p99 {:.3} ms \
         (etcd asks < {} ms): {}",
        FIO_WRITE_BYTES,
        fio["fdatasync_us"]["p50"].as_f64().unwrap_or(0.0),
        fio["p99_fdatasync_ms"].as_f64().unwrap_or(0.0),
        FIO_P99_FDATASYNC_MS_MAX,
        if fio["pass"].as_bool().unwrap_or(false) {
            "PASS"
        } else {
            "FAIL"
        }
    )?;
    if let Some(message) = result["wal_group_commit"]["error"].as_str() {
        writeln!(out, "WAL group commit: failed: {message}")?;
    }
    let curve = &result["wal_group_commit"]["points"];
    if let Some(points) = curve.as_array() {
        writeln!(
            out,
            "WAL group commit ({} B records): appenders, records/s, p50 us, p99 us",
            result["wal_group_commit"]["record_payload_bytes"]
        )?;
        for p in points {
            writeln!(
                out,
                "{:>5} {:>10.0} {:>9.0} {:>9.0}",
                p["appenders"],
                p["records_per_s"].as_f64().unwrap_or(0.0),
                p["latency_us"]["p50"].as_f64().unwrap_or(0.0),
                p["latency_us"]["p99"].as_f64().unwrap_or(0.0)
            )?;
        }
    }
    Ok(())
}

/// The scratch files a run makes in `dir`: the O_DIRECT one and the fio-style one.
fn scratch_paths(dir: &Path) -> [PathBuf; 2] {
    [
        dir.join("basalt-bench-disk.tmp"),
        dir.join("basalt-bench-fio.tmp"),
    ]
}

/// The concurrent writers' scratch files, one per writer.
fn concurrent_paths(dir: &Path) -> Vec<PathBuf> {
    (0..*CONCURRENT_WRITERS
        .iter()
        .max()
        .expect("a constant, non-empty list"))
        .map(|writer| dir.join(format!("basalt-bench-disk-w{writer}.tmp")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_options(dir: &Path) -> DiskOptions {
        DiskOptions {
            dir: dir.to_path_buf(),
            file_mib: 2,
            samples_max: 5,
            seconds_per_size: 5.0,
            fio_mib: 1,
        }
    }

    #[test]
    fn a_harness_run_reports_every_block_size_and_leaves_no_scratch_file() {
        let dir = std::env::temp_dir().join(format!("basalt-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let result = run(&tiny_options(&dir)).unwrap();
        let rows = result["write_fdatasync"].as_array().unwrap();
        let sizes: Vec<u64> = rows
            .iter()
            .map(|r| r["block_bytes"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, BLOCK_SIZES_BYTES.map(|b| b as u64).to_vec());
        assert!(rows.iter().all(|r| r["samples"].as_u64().unwrap() == 5));
        let fio_bytes = result["fio_check"]["total_bytes"].as_u64().unwrap();
        assert_eq!(fio_bytes, (MIB / FIO_WRITE_BYTES * FIO_WRITE_BYTES) as u64);
        let concurrent = result["concurrent_write_fdatasync"].as_array().unwrap();
        let writers: Vec<u64> = concurrent
            .iter()
            .map(|r| r["writers"].as_u64().unwrap())
            .collect();
        assert_eq!(writers, CONCURRENT_WRITERS.map(|w| w as u64).to_vec());
        for (row, writers) in concurrent.iter().zip(CONCURRENT_WRITERS) {
            assert_eq!(row["samples"].as_u64().unwrap(), 5 * writers as u64);
        }
        for path in scratch_paths(&dir)
            .into_iter()
            .chain(concurrent_paths(&dir))
        {
            assert!(!path.exists(), "{} was left behind", path.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_scratch_file_smaller_than_the_largest_block_is_refused() {
        let mut options = tiny_options(Path::new("/nonexistent"));
        options.file_mib = 0;
        assert!(matches!(run(&options), Err(DiskError::FileTooSmall { .. })));
    }
}
