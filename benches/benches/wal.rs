//! WAL numbers beside the disk's own floor, all in one run (so the ratios mean something on a
//! shared machine):
//! - floor: O_DIRECT 4 KiB write + fdatasync into an already-written file (p50/p99), and the raw
//!   sequential bandwidth of 8 MiB O_DIRECT writes + fdatasync;
//! - WAL append latency with one appender (100 B records);
//! - WAL throughput (records/s, MB/s, writes/s, CPU use) for 1, 8, 64, 512 concurrent appenders
//!   at 100 B, 1 KiB and 16 KiB records.
//!
//! `cargo bench -p basalt-bench --bench wal`; WAL_BENCH_DIR picks the disk (default: the
//! system temp dir), WAL_BENCH_SECONDS the time per throughput point (default 1.5),
//! WAL_BENCH_SEGMENT_MB and WAL_BENCH_BATCH_MB the segment size and batch bound (default: the
//! WAL's own).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use basalt_engine::wal::{DmaStorage, RecordRef, Wal, WalOptions};
use glommio::io::{DmaFile, OpenOptions};
use hdrhistogram::Histogram;

const FLOOR_FILE_BYTES: u64 = 16 << 20;
const LATENCY_SAMPLES: usize = 2000;
/// Write sizes of the raw bandwidth lines: the WAL's batches at 64 and 512 appenders of 16 KiB
/// are 1-8 MiB.
const BANDWIDTH_WRITE_BYTES: [usize; 3] = [1 << 20, 4 << 20, 8 << 20];
/// The raw bandwidth file; writes go round it sequentially.
const BANDWIDTH_FILE_BYTES: u64 = 512 << 20;
const APPENDERS: [usize; 4] = [1, 8, 64, 512];
const RECORD_SIZES: [usize; 3] = [100, 1024, 16 << 10];

fn main() {
    let base = std::env::var_os("WAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("basalt-wal-bench-{}", std::process::id()));
    let per_point = Duration::from_secs_f64(
        std::env::var("WAL_BENCH_SECONDS")
            .ok()
            .map_or(1.5, |s| s.parse().expect("WAL_BENCH_SECONDS")),
    );
    std::fs::create_dir_all(&base).unwrap();
    let b = base.clone();
    glommio::LocalExecutorBuilder::default()
        .make()
        .unwrap()
        .run(async move { bench(&b, per_point).await });
    std::fs::remove_dir_all(&base).unwrap();
}

async fn bench(dir: &Path, per_point: Duration) {
    println!(
        "WAL bench in {} ({:.1} s per throughput point)\n",
        dir.display(),
        per_point.as_secs_f64()
    );

    let mut opts = WalOptions {
        max_wals: 2,
        ..WalOptions::default()
    };
    if let Ok(mb) = std::env::var("WAL_BENCH_SEGMENT_MB") {
        opts.segment_bytes = mb.parse::<u64>().expect("WAL_BENCH_SEGMENT_MB") << 20;
    }
    if let Ok(mb) = std::env::var("WAL_BENCH_BATCH_MB") {
        opts.batch_bytes_max = mb.parse::<usize>().expect("WAL_BENCH_BATCH_MB") << 20;
    }
    let wal_dir = dir.join("member").join("wal");
    let (wal, rec) = Wal::open(DmaStorage, &wal_dir, opts).await.unwrap();
    let wal = Rc::new(wal);
    let next = Rc::new(Cell::new(rec.last_index + 1));
    // Let the preallocator finish its look-ahead so it does not share the disk with the
    // latency samples.
    append_one(&wal, &next, &[0u8; 100]).await;
    glommio::timer::sleep(Duration::from_secs(2)).await;
    // Measured after the WAL opened: its LOCK-file probe must be this thread's first DmaFile
    // (see engine/src/wal/storage.rs), or glommio would route everything through the poll ring.
    let mut raw = Vec::new();
    for write_bytes in BANDWIDTH_WRITE_BYTES {
        raw.push((
            write_bytes,
            raw_bandwidth(&dir.join("bandwidth"), write_bytes, per_point).await,
        ));
    }

    // Floor and WAL samples alternate, so both see the same moments of a shared disk.
    let floor_path = dir.join("floor");
    let floor_file = written_file(&floor_path, FLOOR_FILE_BYTES).await;
    let mut floor = Histogram::<u64>::new(3).unwrap();
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let payload = vec![0x5au8; 100];
    for i in 0..LATENCY_SAMPLES as u64 {
        let mut buf = floor_file.alloc_dma_buffer(4096);
        buf.as_bytes_mut().fill(i as u8);
        let t = Instant::now();
        floor_file
            .write_at(buf, (i * 4096) % FLOOR_FILE_BYTES)
            .await
            .unwrap();
        floor_file.fdatasync().await.unwrap();
        floor.record(t.elapsed().as_micros() as u64).unwrap();

        let t = Instant::now();
        append_one(&wal, &next, &payload).await;
        lat.record(t.elapsed().as_micros() as u64).unwrap();
    }
    floor_file.close().await.unwrap();
    std::fs::remove_file(&floor_path).unwrap();
    println!("| measure | p50 µs | p99 µs | mean µs |\n|---|---|---|---|");
    print_latency(
        "floor: O_DIRECT 4 KiB write + fdatasync (written file)",
        &floor,
    );
    print_latency("WAL append, 1 appender, 100 B", &lat);
    println!(
        "\n1-appender p50 / floor p50 = {:.3} (target <= 1.15)\n",
        lat.value_at_quantile(0.5) as f64 / floor.value_at_quantile(0.5) as f64
    );

    for (write_bytes, mb_s) in raw {
        println!(
            "raw sequential bandwidth, {} MiB O_DIRECT writes + fdatasync: {mb_s:.0} MB/s",
            write_bytes >> 20
        );
    }
    println!();
    println!("| appenders | record B | records/s | MB/s | writes/s | records/write | CPU % | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in RECORD_SIZES {
        for appenders in APPENDERS {
            throughput(&wal, &next, appenders, size, per_point).await;
            // Keep the disk use bounded: everything so far may go.
            wal.purge(next.get() - 1).await.unwrap();
        }
    }
    Rc::into_inner(wal).unwrap().close().await.unwrap();
}

async fn append_one(wal: &Wal, next: &Cell<u64>, payload: &[u8]) {
    let index = next.get();
    next.set(index + 1);
    wal.append(&[RecordRef::entry(1, index, payload)])
        .await
        .unwrap();
}

/// `appenders` tasks append `size`-byte records back to back for `per_point`.
async fn throughput(
    wal: &Rc<Wal>,
    next: &Rc<Cell<u64>>,
    appenders: usize,
    size: usize,
    per_point: Duration,
) {
    let stats0 = wal.stats();
    let cpu0 = cpu_time();
    let start = Instant::now();
    let deadline = start + per_point;
    let mut tasks = Vec::with_capacity(appenders);
    for _ in 0..appenders {
        let wal = Rc::clone(wal);
        let next = Rc::clone(next);
        tasks.push(glommio::spawn_local(async move {
            let payload = vec![0xa5u8; size];
            let mut hist = Histogram::<u64>::new(3).unwrap();
            while Instant::now() < deadline {
                let t = Instant::now();
                // The index is taken and the record queued in the same poll (submit only waits
                // when the queue is over its bound, far above 512 x 16 KiB), so indexes reach
                // the WAL in order.
                let index = next.get();
                next.set(index + 1);
                let durable = wal
                    .submit(&[RecordRef::entry(1, index, &payload)])
                    .await
                    .unwrap();
                durable.await.unwrap();
                hist.record(t.elapsed().as_micros() as u64).unwrap();
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        hist.add(t.await).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu0;
    let stats = wal.stats();
    let records = hist.len() as f64;
    let writes = (stats.writes - stats0.writes) as f64;
    println!(
        "| {appenders} | {size} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {} | {} |",
        records / secs,
        records * size as f64 / secs / 1e6,
        writes / secs,
        records / writes.max(1.0),
        100.0 * cpu.as_secs_f64() / secs,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
    );
}

async fn written_file(path: &Path, bytes: u64) -> DmaFile {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .unwrap();
    let chunk = 1 << 20;
    let mut pos = 0;
    while pos < bytes {
        let mut buf = f.alloc_dma_buffer(chunk);
        buf.as_bytes_mut().fill(0);
        f.write_at(buf, pos).await.unwrap();
        pos += chunk as u64;
    }
    f.fdatasync().await.unwrap();
    f
}

/// Sequential bandwidth of `write_bytes` O_DIRECT writes, each followed by fdatasync, going
/// round an already-written file, in MB/s.
async fn raw_bandwidth(path: &Path, write_bytes: usize, per_point: Duration) -> f64 {
    let f = written_file(path, BANDWIDTH_FILE_BYTES).await;
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < per_point {
        let mut buf = f.alloc_dma_buffer(write_bytes);
        buf.as_bytes_mut().fill(0x33);
        f.write_at(buf, written % BANDWIDTH_FILE_BYTES)
            .await
            .unwrap();
        f.fdatasync().await.unwrap();
        written += write_bytes as u64;
    }
    let mb_s = written as f64 / start.elapsed().as_secs_f64() / 1e6;
    f.close().await.unwrap();
    std::fs::remove_file(path).unwrap();
    mb_s
}

fn print_latency(name: &str, h: &Histogram<u64>) {
    println!(
        "| {name} | {} | {} | {:.0} |",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.mean()
    );
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
