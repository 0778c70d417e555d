//! Crash tests: a fault-injecting file cuts the power before every single write, sync and
//! resize of a workload; whatever the disk may then hold (unsynced writes dropped, kept or torn),
//! reopening shows exactly the last durable checkpoint (or the one being written, if its meta
//! page reached the disk whole).
//!
//! A failing case prints its seed and crash point; `BTREE_CRASH_SEEDS=n` runs more seeds.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::ops::Bound;
use std::sync::Arc;

use basalt_engine::btree::{check, open, Db, FaultFile, Options, SealedFile};
use basalt_engine::crypt::{Keyring, SharedKeyring};

type Model = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

const BUCKETS: [&str; 2] = ["key", "meta"];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn options() -> Options {
    Options {
        page_size_bytes: 1024,
        verify_checksums: true,
        ..Options::default()
    }
}

fn keyring() -> SharedKeyring {
    Keyring::single(4, &[0x5a; 32]).into_shared()
}

/// The options of a plain run, or of an encrypted one.
fn options_for(sealed: bool) -> Options {
    Options {
        keyring: sealed.then(keyring),
        ..options()
    }
}

/// What the disk may legitimately show after the crash.
struct Outcome {
    ops_done: u64,
    last_durable: (Model, u64),
    in_flight: Option<(Model, u64)>,
    fault: Arc<FaultFile>,
}

/// Runs the workload of `seed` until it ends or the injected crash stops it.
fn run(seed: u64, dir: &std::path::Path, crash_after_ops: Option<u64>, sealed: bool) -> Outcome {
    let path = dir.join("live.db");
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let fault = Arc::new(FaultFile::new(file, crash_after_ops).unwrap());
    let mut outcome = Outcome {
        ops_done: 0,
        last_durable: (Model::new(), 0),
        in_flight: None,
        fault: fault.clone(),
    };
    let file: Box<dyn basalt_engine::btree::PageFile> = if sealed {
        match SealedFile::create(Box::new(fault.clone()), keyring(), 1024) {
            Ok(file) => Box::new(file),
            Err(_) => return outcome,
        }
    } else {
        Box::new(fault.clone())
    };
    let Ok(db) = Db::open_file(file, options()) else {
        return outcome;
    };
    let mut rng = Rng(seed | 1);
    let mut committed = Model::new();
    for step in 0..24u64 {
        if rng.below(3) == 0 {
            let applied = step + 1;
            if db.checkpoint(applied).is_err() {
                outcome.in_flight = Some((committed, applied));
                return outcome;
            }
            outcome.last_durable = (committed.clone(), applied);
            continue;
        }
        if write_txn(&db, &mut rng, &mut committed).is_err() {
            return outcome;
        }
    }
    outcome.ops_done = fault.ops_done();
    outcome
}

fn write_txn(
    db: &Db,
    rng: &mut Rng,
    committed: &mut Model,
) -> Result<(), basalt_engine::btree::Error> {
    let mut working = committed.clone();
    let mut txn = db.begin_write()?;
    for _ in 0..1 + rng.below(30) {
        let name = BUCKETS[rng.below(2) as usize];
        let map = working.entry(name.to_owned()).or_default();
        let key = (rng.below(300) as u16).to_be_bytes().to_vec();
        match rng.below(10) {
            0 => {
                let end = (u16::from_be_bytes([key[0], key[1]]) + 40)
                    .to_be_bytes()
                    .to_vec();
                txn.bucket(name)?
                    .remove_range(Bound::Included(&key), Bound::Excluded(&end))?;
                map.retain(|k, _| k < &key || k >= &end);
            }
            1 | 2 => {
                txn.bucket(name)?.remove(&key)?;
                map.remove(&key);
            }
            _ => {
                let len = [0, 10, 100, 700, 3000][rng.below(5) as usize];
                let value = vec![rng.next() as u8; len];
                txn.bucket(name)?.insert(&key, &value)?;
                map.insert(key, value);
            }
        }
    }
    txn.commit()?;
    *committed = working;
    Ok(())
}

fn contents(db: &Db) -> Model {
    let read = db.begin_read().unwrap();
    let mut model = Model::new();
    for name in BUCKETS {
        let mut cursor = read.cursor(name);
        let mut entry = cursor.first().unwrap();
        while let Some((k, v)) = entry {
            model
                .entry(name.to_owned())
                .or_default()
                .insert(k.to_vec(), v.to_vec());
            entry = cursor.next().unwrap();
        }
    }
    model
}

fn non_empty(model: &Model) -> Model {
    model
        .iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn reopen_after_a_crash_at_any_write_shows_exactly_a_durable_checkpoint() {
    crash_at_every_op(false);
}

/// The same over the encrypted file: a torn slot fails authentication, reads as zeros and is
/// refused by the tree's checksums like a torn plain page.
#[test]
fn an_encrypted_file_reopens_after_a_crash_at_any_write_at_a_durable_checkpoint() {
    crash_at_every_op(true);
}

fn crash_at_every_op(sealed: bool) {
    let seeds: u64 = std::env::var("BTREE_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("btree-crash-{sealed}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut images_checked = 0;
    for seed in 1..=seeds {
        let total_ops = run(seed, &dir, None, sealed).ops_done;
        assert!(total_ops > 20, "workload too small to be interesting");
        // Ops 0 and 1 create the file (meta pages, first sync; the encrypted file writes its
        // header first): before that nothing exists.
        let created = if sealed { 3 } else { 2 };
        for crash_at in created..total_ops {
            let outcome = run(seed, &dir, Some(crash_at), sealed);
            // Unsynced writes: all lost, all kept, all torn, and two random mixes.
            for variant in 0..5u64 {
                let mut rng = Rng(seed * 1_000_003 + crash_at * 7 + variant + 1);
                let image = outcome.fault.crash_image(|_| match variant {
                    0 => 0,
                    1 => 1,
                    2 => 2,
                    _ => rng.below(3) as u8,
                });
                let image_path = dir.join("image.db");
                std::fs::write(&image_path, &image).unwrap();
                let case = format!("seed {seed}, crash before op {crash_at}, variant {variant}");
                let db = open(&image_path, options_for(sealed))
                    .unwrap_or_else(|e| panic!("{case}: reopen failed: {e}"));
                let state = (
                    non_empty(&contents(&db)),
                    db.durable_applied_index().unwrap(),
                );
                let durable = (non_empty(&outcome.last_durable.0), outcome.last_durable.1);
                let in_flight = outcome.in_flight.as_ref().map(|(m, a)| (non_empty(m), *a));
                assert!(
                    state == durable || Some(&state) == in_flight.as_ref(),
                    "{case}: reopened at applied index {} which is neither the durable checkpoint {} nor the one in flight {:?}",
                    state.1,
                    durable.1,
                    in_flight.as_ref().map(|s| s.1)
                );
                drop(db);
                let report = check(&image_path, options_for(sealed).keyring.as_ref()).unwrap();
                // A torn meta slot is expected after a crash mid-checkpoint; nothing else is.
                let tree_problems: Vec<_> =
                    report.problems.iter().filter(|p| p.page >= 2).collect();
                assert!(tree_problems.is_empty(), "{case}: {tree_problems:?}");
                assert_eq!(report.leaked_pages, 0, "{case}: leaked pages");
                images_checked += 1;
            }
        }
    }
    assert!(images_checked > 100);
}

#[test]
fn a_corrupted_page_is_reported_with_its_offset_and_never_followed() {
    let dir = std::env::temp_dir().join(format!("btree-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.db");
    let _ = std::fs::remove_file(&path);
    let db = open(&path, options()).unwrap();
    let mut txn = db.begin_write().unwrap();
    for i in 0..2000u32 {
        txn.bucket("key")
            .unwrap()
            .insert(&i.to_be_bytes(), &[7u8; 40])
            .unwrap();
    }
    txn.commit().unwrap();
    db.checkpoint(1).unwrap();
    // A later checkpoint that rewrites only the rightmost path: page 5 (an early leaf) is now
    // vouched for by nothing but its own checksum.
    let mut txn = db.begin_write().unwrap();
    txn.bucket("key")
        .unwrap()
        .insert(&5000u32.to_be_bytes(), b"x")
        .unwrap();
    txn.commit().unwrap();
    db.checkpoint(2).unwrap();
    drop(db);
    assert!(check(&path, None).unwrap().problems.is_empty());
    // Flip one byte in the middle of page 5.
    let mut bytes = std::fs::read(&path).unwrap();
    let offset = 5 * 1024 + 500;
    bytes[offset] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let report = check(&path, None).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].page, 5);
    assert_eq!(report.problems[0].offset, 5 * 1024);
    // A verifying reader refuses the page rather than returning what it holds.
    let db = open(&path, options()).unwrap();
    let read = db.begin_read().unwrap();
    let mut cursor = read.cursor("key");
    let mut result = cursor.first().map(|e| e.is_some());
    while let Ok(true) = result {
        result = cursor.next().map(|e| e.is_some());
    }
    assert!(
        matches!(
            result,
            Err(basalt_engine::btree::Error::Corrupt { page: 5, .. })
        ),
        "{result:?}"
    );
}

#[test]
fn a_file_of_another_format_version_is_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("btree-version-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.db");
    let _ = std::fs::remove_file(&path);
    drop(open(&path, options()).unwrap());
    // Rewrite both meta pages as version 2, with valid checksums.
    let mut bytes = std::fs::read(&path).unwrap();
    for slot in 0..2 {
        let page = &mut bytes[slot * 1024..(slot + 1) * 1024];
        page[5] = 2;
        let crc = crc32c::crc32c(&page[4..]);
        page[0..4].copy_from_slice(&crc.to_le_bytes());
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = open(&path, options())
        .err()
        .expect("a version 2 file must not open");
    assert!(
        err.to_string().contains("unsupported page format version"),
        "{err}"
    );
}
