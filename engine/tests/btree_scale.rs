//! Scale and concurrency: many keys, values from empty to several MiB, compaction-style range
//! deletion, defragmentation, and readers on other threads while the writer rewrites the tree.
//!
//! The default run loads 1.2M keys (about 10 s at opt-level 1); `BTREE_SCALE=1` loads 5M.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};

use basalt_engine::btree::{check, open, Options};

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("btree-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An MVCC-style revision key: main revision then sub revision, big-endian.
fn revision(main: u64, sub: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..8].copy_from_slice(&main.to_be_bytes());
    key[8] = b'_';
    key[9..].copy_from_slice(&sub.to_be_bytes());
    key
}

fn value_of(main: u64) -> Vec<u8> {
    let len = 256;
    (0..len).map(|i| (main as usize * 7 + i) as u8).collect()
}

#[test]
fn many_revisions_and_huge_values_survive_compaction_defragment_and_reopen() {
    let keys: u64 = if std::env::var("BTREE_SCALE").is_ok() {
        5_000_000
    } else {
        1_200_000
    };
    let dir = tempdir("scale");
    let path = dir.join("scale.db");
    let _ = std::fs::remove_file(&path);
    let db = open(&path, Options::default()).unwrap();
    const BATCH: u64 = 1000;
    for batch in 0..keys / BATCH {
        let mut txn = db.begin_write().unwrap();
        let mut bucket = txn.bucket("key").unwrap();
        for main in batch * BATCH..(batch + 1) * BATCH {
            bucket.insert(&revision(main, 0), &value_of(main)).unwrap();
        }
        txn.commit().unwrap();
        if batch % 50 == 49 {
            db.checkpoint(batch).unwrap();
        }
    }
    // Values from empty to well past etcd's 1.5 MiB request limit.
    let sizes = [0usize, 1, 1023, 1025, 4096, 100_000, 1_500_000, 6 << 20];
    let mut txn = db.begin_write().unwrap();
    for (i, size) in sizes.iter().enumerate() {
        let value: Vec<u8> = (0..*size).map(|j| (j * 13 + i) as u8).collect();
        txn.bucket("meta")
            .unwrap()
            .insert(format!("big-{i}").as_bytes(), &value)
            .unwrap();
    }
    txn.commit().unwrap();
    db.checkpoint(1_000_000).unwrap();
    let loaded = db.stats().unwrap();

    // Compaction: drop the older half of the revisions in one range deletion.
    let mut txn = db.begin_write().unwrap();
    let cut = revision(keys / 2, 0);
    let removed = txn
        .bucket("key")
        .unwrap()
        .remove_range(Bound::Unbounded, Bound::Excluded(&cut))
        .unwrap();
    assert_eq!(removed, keys / 2);
    txn.commit().unwrap();
    db.checkpoint(1_000_001).unwrap();
    db.defragment(1_000_002).unwrap();
    let defragmented = db.stats().unwrap();
    assert!(
        defragmented.file_bytes < loaded.file_bytes * 3 / 4,
        "defragment gives space back: {} -> {} bytes",
        loaded.file_bytes,
        defragmented.file_bytes
    );
    drop(db);

    let report = check(&path, None).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        report.buckets,
        vec![
            ("key".to_owned(), keys / 2),
            ("meta".to_owned(), sizes.len() as u64)
        ]
    );

    let db = open(&path, Options::default()).unwrap();
    assert_eq!(db.durable_applied_index().unwrap(), 1_000_002);
    let read = db.begin_read().unwrap();
    for (i, size) in sizes.iter().enumerate() {
        let value = read
            .get("meta", format!("big-{i}").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(value.len(), *size);
        assert!(value
            .iter()
            .enumerate()
            .all(|(j, b)| *b == (j * 13 + i) as u8));
    }
    let mut cursor = read.cursor("key");
    let mut entry = cursor.first().unwrap();
    let mut main = keys / 2;
    while let Some((k, v)) = entry {
        assert_eq!(k, revision(main, 0));
        assert_eq!(v, value_of(main));
        main += 1;
        entry = cursor.next().unwrap();
    }
    assert_eq!(main, keys);
}

#[test]
fn readers_on_other_threads_always_see_whole_transactions() {
    let dir = tempdir("threads");
    let path = dir.join("threads.db");
    let _ = std::fs::remove_file(&path);
    let db = open(
        &path,
        Options {
            page_size_bytes: 1024,
            ..Options::default()
        },
    )
    .unwrap();
    const KEYS: u32 = 500;
    let write_round = |round: u8| {
        let mut txn = db.begin_write().unwrap();
        let mut bucket = txn.bucket("key").unwrap();
        for i in 0..KEYS {
            bucket.insert(&i.to_be_bytes(), &[round; 64]).unwrap();
        }
        txn.commit().unwrap();
    };
    write_round(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut snapshots_checked = 0u64;
                while !done.load(Ordering::Relaxed) || snapshots_checked == 0 {
                    let read = db.begin_read().unwrap();
                    // Read the same snapshot twice, with the writer running in between.
                    for _ in 0..2 {
                        let mut cursor = read.cursor("key");
                        let (mut count, first) = (0, cursor.first().unwrap().unwrap().1[0]);
                        let mut entry = cursor.first().unwrap();
                        while let Some((_, v)) = entry {
                            assert!(
                                v.iter().all(|b| *b == first),
                                "snapshot mixes two transactions"
                            );
                            count += 1;
                            entry = cursor.next().unwrap();
                        }
                        assert_eq!(count, KEYS);
                        std::thread::yield_now();
                    }
                    snapshots_checked += 1;
                }
            });
        }
        for round in 1..=200u8 {
            write_round(round);
            if round % 5 == 0 {
                db.checkpoint(round as u64).unwrap();
            }
            if round == 100 {
                db.defragment(round as u64).unwrap();
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    let report = check(&path, None).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
