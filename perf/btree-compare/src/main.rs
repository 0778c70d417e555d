//! Basalt's B+tree, redb and LMDB (heed) on the same workloads, each engine in its own process
//! so memory figures do not mix:
//!
//! - bulk load of `KEYS` keys (8-32 B, random order, 256 B values) in transactions of 1,000
//!   committed without sync, then one durable sync;
//! - random point reads from 1 and 2 threads; range scans of 100 keys;
//! - individual durable writes (one key per durable commit); durable batches of 1,000 writes;
//! - file size and process memory after the load.
//!
//! `cargo run --release` prints a markdown table; `KEYS=n` changes the key count, `LOAD_ONLY=1`
//! stops each engine after the load (for profiling).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hdrhistogram::Histogram;

const VALUE_BYTES: usize = 256;
const LOAD_BATCH_KEYS: usize = 1000;
const READS_PER_THREAD: usize = 1_000_000;
const SCANS: usize = 100_000;
const SCAN_KEYS: usize = 100;
const DURABLE_WRITES: usize = 500;
const DURABLE_BATCHES: usize = 50;
const DURABLE_BATCH_KEYS: usize = 1000;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Key `i`: 8 to 32 bytes, unique (its first 8 bytes are a bijection of `i`), random order.
fn key(i: u64) -> Vec<u8> {
    let h = splitmix(i);
    let len = 8 + (h % 25) as usize;
    let mut k = h.to_be_bytes().to_vec();
    let mut x = h;
    while k.len() < len {
        x = splitmix(x);
        k.push(x as u8);
    }
    k
}

fn value(i: u64, round: u64) -> Vec<u8> {
    let mut v = vec![0u8; VALUE_BYTES];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v[8..16].copy_from_slice(&round.to_le_bytes());
    v
}

trait Engine: Sync {
    /// One write transaction; `durable` makes it (and everything before) durable at commit.
    fn write(&self, entries: &[(Vec<u8>, Vec<u8>)], durable: bool);
    /// Point reads in one read transaction; returns total value bytes (so nothing is skipped).
    fn gets(&self, keys: &[Vec<u8>]) -> u64;
    /// `SCAN_KEYS`-key scans from each start in one read transaction; returns keys seen.
    fn scans(&self, starts: &[Vec<u8>]) -> u64;
    fn file_bytes(&self) -> u64;
}

struct Basalt {
    db: basalt_engine::btree::Db,
    path: PathBuf,
    applied: std::sync::atomic::AtomicU64,
}

impl Engine for Basalt {
    fn write(&self, entries: &[(Vec<u8>, Vec<u8>)], durable: bool) {
        let mut txn = self.db.begin_write().unwrap();
        let mut bucket = txn.bucket("key").unwrap();
        for (k, v) in entries {
            bucket.insert(k, v).unwrap();
        }
        txn.commit().unwrap();
        if durable {
            let applied = self
                .applied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.db.checkpoint(applied).unwrap();
        }
    }
    fn gets(&self, keys: &[Vec<u8>]) -> u64 {
        let read = self.db.begin_read().unwrap();
        keys.iter()
            .map(|k| read.get("key", k).unwrap().unwrap().len() as u64)
            .sum()
    }
    fn scans(&self, starts: &[Vec<u8>]) -> u64 {
        let read = self.db.begin_read().unwrap();
        let mut seen = 0;
        for start in starts {
            let mut cursor = read.cursor("key");
            let mut entry = cursor.seek(start).unwrap();
            for _ in 0..SCAN_KEYS {
                let Some((_, v)) = entry else { break };
                seen += (!v.is_empty()) as u64;
                entry = cursor.next().unwrap();
            }
        }
        seen
    }
    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("key");

struct Redb {
    db: redb::Database,
    path: PathBuf,
}

impl Engine for Redb {
    fn write(&self, entries: &[(Vec<u8>, Vec<u8>)], durable: bool) {
        let mut txn = self.db.begin_write().unwrap();
        txn.set_durability(if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        });
        {
            let mut table = txn.open_table(REDB_TABLE).unwrap();
            for (k, v) in entries {
                table.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    fn gets(&self, keys: &[Vec<u8>]) -> u64 {
        let txn = self.db.begin_read().unwrap();
        let table = txn.open_table(REDB_TABLE).unwrap();
        keys.iter()
            .map(|k| table.get(k.as_slice()).unwrap().unwrap().value().len() as u64)
            .sum()
    }
    fn scans(&self, starts: &[Vec<u8>]) -> u64 {
        let txn = self.db.begin_read().unwrap();
        let table = txn.open_table(REDB_TABLE).unwrap();
        let mut seen = 0;
        for start in starts {
            for entry in table
                .range::<&[u8]>(start.as_slice()..)
                .unwrap()
                .take(SCAN_KEYS)
            {
                let (_, v) = entry.unwrap();
                seen += (!v.value().is_empty()) as u64;
            }
        }
        seen
    }
    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }
}

struct Lmdb {
    env: heed::Env,
    db: heed::Database<heed::types::Bytes, heed::types::Bytes>,
    dir: PathBuf,
}

impl Engine for Lmdb {
    fn write(&self, entries: &[(Vec<u8>, Vec<u8>)], durable: bool) {
        let mode = if durable {
            heed::FlagSetMode::Disable
        } else {
            heed::FlagSetMode::Enable
        };
        // SAFETY: only this thread writes; a durable commit is LMDB's own synced commit (pages
        // synced, then the meta page written and synced), the same protocol as the others.
        unsafe { self.env.set_flags(heed::EnvFlags::NO_SYNC, mode).unwrap() };
        let mut txn = self.env.write_txn().unwrap();
        for (k, v) in entries {
            self.db.put(&mut txn, k, v).unwrap();
        }
        txn.commit().unwrap();
    }
    fn gets(&self, keys: &[Vec<u8>]) -> u64 {
        let txn = self.env.read_txn().unwrap();
        keys.iter()
            .map(|k| self.db.get(&txn, k).unwrap().unwrap().len() as u64)
            .sum()
    }
    fn scans(&self, starts: &[Vec<u8>]) -> u64 {
        let txn = self.env.read_txn().unwrap();
        let mut seen = 0;
        for start in starts {
            let range = (Bound::Included(start.as_slice()), Bound::Unbounded);
            for entry in self.db.range(&txn, &range).unwrap().take(SCAN_KEYS) {
                let (_, v) = entry.unwrap();
                seen += (!v.is_empty()) as u64;
            }
        }
        seen
    }
    fn file_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join("data.mdb")).unwrap().len()
    }
}

fn open_engine(name: &str, dir: &Path) -> Box<dyn Engine> {
    std::fs::create_dir_all(dir).unwrap();
    match name {
        "basalt" => {
            let path = dir.join("basalt.db");
            let db = basalt_engine::btree::open(&path, basalt_engine::btree::Options::default())
                .unwrap();
            Box::new(Basalt {
                db,
                path,
                applied: 1.into(),
            })
        }
        "redb" => {
            let path = dir.join("redb.db");
            Box::new(Redb {
                db: redb::Database::create(&path).unwrap(),
                path,
            })
        }
        "lmdb" => {
            let mut options = heed::EnvOpenOptions::new();
            options.map_size(32 << 30).max_dbs(1);
            // SAFETY: NO_SYNC makes commits unsynced like the other two engines' non-durable
            // commits; durability comes from force_sync. The directory is ours alone.
            let env = unsafe {
                options.flags(heed::EnvFlags::NO_SYNC);
                options.open(dir).unwrap()
            };
            let mut txn = env.write_txn().unwrap();
            let db = env.create_database(&mut txn, None).unwrap();
            txn.commit().unwrap();
            Box::new(Lmdb {
                env,
                db,
                dir: dir.to_path_buf(),
            })
        }
        other => panic!("unknown engine {other}"),
    }
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Runs every workload on one engine and prints `RESULT name=value` lines.
fn run_engine(name: &str, dir: &Path, keys: u64) {
    let engine = open_engine(name, dir);
    let report = |metric: &str, value: f64| println!("RESULT {metric}={value:.3}");

    let started = Instant::now();
    let mut batch = Vec::with_capacity(LOAD_BATCH_KEYS);
    for i in 0..keys {
        batch.push((key(i), value(i, 0)));
        if batch.len() == LOAD_BATCH_KEYS || i + 1 == keys {
            engine.write(&batch, i + 1 == keys);
            batch.clear();
        }
    }
    let load_s = started.elapsed().as_secs_f64();
    report("load_s", load_s);
    report("load_kops", keys as f64 / load_s / 1e3);
    report("file_mib", engine.file_bytes() as f64 / (1 << 20) as f64);
    report("rss_mib", rss_kib("VmRSS:") as f64 / 1024.0);
    report("peak_rss_mib", rss_kib("VmHWM:") as f64 / 1024.0);
    if std::env::var("LOAD_ONLY").is_ok() {
        return;
    }

    for threads in [1usize, 2] {
        let picks: Vec<Vec<Vec<u8>>> = (0..threads as u64)
            .map(|t| {
                (0..READS_PER_THREAD as u64)
                    .map(|j| key(splitmix(j * 2 + t + 99) % keys))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        std::thread::scope(|s| {
            for picks in &picks {
                let engine = &engine;
                s.spawn(move || {
                    let bytes = engine.gets(picks);
                    assert_eq!(bytes, (READS_PER_THREAD * VALUE_BYTES) as u64);
                });
            }
        });
        let elapsed = started.elapsed().as_secs_f64();
        report(
            &format!("get_{threads}t_kops"),
            (threads * READS_PER_THREAD) as f64 / elapsed / 1e3,
        );
    }

    let starts: Vec<Vec<u8>> = (0..SCANS as u64)
        .map(|j| key(splitmix(j + 7) % keys))
        .collect();
    let started = Instant::now();
    let seen = engine.scans(&starts);
    assert!(seen > (SCANS * SCAN_KEYS / 2) as u64);
    report(
        "scan100_kops",
        SCANS as f64 / started.elapsed().as_secs_f64() / 1e3,
    );

    let mut single = Histogram::<u64>::new(3).unwrap();
    for j in 0..DURABLE_WRITES as u64 {
        let i = splitmix(j + 1_000_000_007) % keys;
        let started = Instant::now();
        engine.write(&[(key(i), value(i, j + 1))], true);
        single.record(started.elapsed().as_micros() as u64).unwrap();
    }
    report("durable_write_p50_us", single.value_at_quantile(0.5) as f64);
    report(
        "durable_write_p99_us",
        single.value_at_quantile(0.99) as f64,
    );

    let mut batches = Histogram::<u64>::new(3).unwrap();
    for b in 0..DURABLE_BATCHES as u64 {
        let entries: Vec<_> = (0..DURABLE_BATCH_KEYS as u64)
            .map(|j| {
                let i = splitmix(b * 1_000_003 + j + 77) % keys;
                (key(i), value(i, b + 10_000))
            })
            .collect();
        let started = Instant::now();
        engine.write(&entries, true);
        batches
            .record(started.elapsed().as_micros() as u64)
            .unwrap();
    }
    report(
        "batch1000_p50_ms",
        batches.value_at_quantile(0.5) as f64 / 1e3,
    );
    report(
        "batch1000_kops",
        DURABLE_BATCH_KEYS as f64 / (batches.mean() / 1e6) / 1e3,
    );
    report(
        "file_after_writes_mib",
        engine.file_bytes() as f64 / (1 << 20) as f64,
    );
}

const ENGINES: [&str; 3] = ["basalt", "redb", "lmdb"];
const METRICS: [(&str, &str); 13] = [
    ("load_s", "bulk load, s"),
    ("load_kops", "bulk load, k keys/s"),
    ("file_mib", "file after load, MiB"),
    ("rss_mib", "RSS after load, MiB"),
    ("peak_rss_mib", "peak RSS during load, MiB"),
    ("get_1t_kops", "point reads, 1 thread, k/s"),
    ("get_2t_kops", "point reads, 2 threads, k/s"),
    ("scan100_kops", "range scans of 100 keys, k/s"),
    ("durable_write_p50_us", "durable single write p50, µs"),
    ("durable_write_p99_us", "durable single write p99, µs"),
    ("batch1000_p50_ms", "durable batch of 1,000 p50, ms"),
    ("batch1000_kops", "durable batches of 1,000, k writes/s"),
    ("file_after_writes_mib", "file after all writes, MiB"),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: u64 = std::env::var("KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1_000_000);
    if args.len() == 4 && args[1] == "--engine" {
        run_engine(&args[2], Path::new(&args[3]), keys);
        return;
    }
    let root = std::env::temp_dir().join(format!("btree-compare-{}", std::process::id()));
    let mut results: Vec<Vec<(String, f64)>> = Vec::new();
    for engine in ENGINES {
        let dir = root.join(engine);
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--engine", engine, dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
            .collect();
        results.push(parsed);
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("{engine} done");
    }
    println!("{keys} keys (8-32 B, random order), {VALUE_BYTES} B values\n");
    println!("| workload | basalt | redb | LMDB (heed) |");
    println!("| --- | ---: | ---: | ---: |");
    for (metric, label) in METRICS {
        let cells: Vec<String> = results
            .iter()
            .map(|r| {
                r.iter()
                    .find(|(k, _)| k == metric)
                    .map_or("-".to_owned(), |(_, v)| format!("{v:.1}"))
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}
