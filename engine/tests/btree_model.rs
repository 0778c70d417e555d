//! Model-based tests: random operations over several buckets, checked against `BTreeMap`s.
//! Readers hold old snapshots while the writer goes on; reopen shows the last checkpoint.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use basalt_engine::btree::{check, open, Db, Options, ReadTxn};
use proptest::prelude::*;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;
type Model = BTreeMap<String, Map>;

const BUCKETS: [&str; 3] = ["key", "lease", "meta"];
/// Small pages make deep trees out of few keys.
const PAGE_SIZE: usize = 1024;

#[derive(Clone, Debug)]
enum Mutation {
    Insert {
        bucket: usize,
        key: u16,
        value_len: usize,
        salt: u8,
    },
    Remove {
        bucket: usize,
        key: u16,
    },
    RemoveRange {
        bucket: usize,
        from: u16,
        to: u16,
    },
}

#[derive(Clone, Debug)]
enum Step {
    Txn {
        mutations: Vec<Mutation>,
        commit: bool,
    },
    OpenReader,
    CloseReader,
    Checkpoint,
    Reopen,
    Defragment,
}

/// Keys of varied length that still sort by number, so ranges mean something.
fn key_bytes(key: u16) -> Vec<u8> {
    let mut bytes = key.to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(b'k', (key % 7) as usize * 9));
    bytes
}

fn value_bytes(key: u16, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(salt)
                .wrapping_add(key as u8)
        })
        .collect()
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bucket = 0..BUCKETS.len();
    // Inline, page-sized and multi-page (overflow) values, and empty ones.
    let value_len = prop_oneof![Just(0usize), 1..40usize, 200..300usize, 1000..5000usize];
    prop_oneof![
        6 => (bucket.clone(), 0..400u16, value_len, any::<u8>())
            .prop_map(|(bucket, key, value_len, salt)| Mutation::Insert { bucket, key, value_len, salt }),
        2 => (bucket.clone(), 0..400u16).prop_map(|(bucket, key)| Mutation::Remove { bucket, key }),
        1 => (bucket, 0..400u16, 0..120u16)
            .prop_map(|(bucket, from, span)| Mutation::RemoveRange { bucket, from, to: from.saturating_add(span) }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (prop::collection::vec(mutation(), 1..60), prop::bool::weighted(0.85))
            .prop_map(|(mutations, commit)| Step::Txn { mutations, commit }),
        2 => Just(Step::OpenReader),
        2 => Just(Step::CloseReader),
        2 => Just(Step::Checkpoint),
        1 => Just(Step::Reopen),
        1 => Just(Step::Defragment),
    ]
}

fn options() -> Options {
    Options {
        page_size_bytes: PAGE_SIZE,
        verify_checksums: true,
        ..Options::default()
    }
}

/// Everything a reader sees, read forwards with a cursor and checked backwards too.
fn contents(read: &ReadTxn) -> Model {
    let mut model = Model::new();
    for name in BUCKETS {
        let mut map = Map::new();
        let mut cursor = read.cursor(name);
        let mut entry = cursor.first().unwrap();
        while let Some((k, v)) = entry {
            map.insert(k.to_vec(), v.to_vec());
            entry = cursor.next().unwrap();
        }
        let mut backwards = Vec::new();
        let mut entry = cursor.last().unwrap();
        while let Some((k, _)) = entry {
            backwards.push(k.to_vec());
            entry = cursor.prev().unwrap();
        }
        backwards.reverse();
        assert_eq!(
            backwards,
            map.keys().cloned().collect::<Vec<_>>(),
            "backward scan of {name}"
        );
        if !map.is_empty() || read.buckets().any(|b| b == name) {
            model.insert(name.to_owned(), map);
        }
    }
    model
}

fn normalized(model: &Model) -> BTreeMap<String, Map> {
    model
        .iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn assert_clean(path: &Path) {
    let report = check(path, None).unwrap();
    assert!(
        report.problems.is_empty(),
        "check found {:?}",
        report.problems
    );
    assert_eq!(report.leaked_pages, 0, "pages neither in a tree nor free");
}

fn apply(db: &Db, mutations: &[Mutation], commit: bool, model: &mut Model) {
    let mut working = model.clone();
    let mut txn = db.begin_write().unwrap();
    for m in mutations {
        match *m {
            Mutation::Insert {
                bucket,
                key,
                value_len,
                salt,
            } => {
                let (k, v) = (key_bytes(key), value_bytes(key, value_len, salt));
                txn.bucket(BUCKETS[bucket]).unwrap().insert(&k, &v).unwrap();
                working
                    .entry(BUCKETS[bucket].to_owned())
                    .or_default()
                    .insert(k, v);
            }
            Mutation::Remove { bucket, key } => {
                let k = key_bytes(key);
                let removed = txn.bucket(BUCKETS[bucket]).unwrap().remove(&k).unwrap();
                let expected = working
                    .entry(BUCKETS[bucket].to_owned())
                    .or_default()
                    .remove(&k)
                    .is_some();
                assert_eq!(removed, expected, "remove reports whether the key existed");
            }
            Mutation::RemoveRange { bucket, from, to } => {
                let (a, b) = (key_bytes(from), key_bytes(to));
                let n = txn
                    .bucket(BUCKETS[bucket])
                    .unwrap()
                    .remove_range(Bound::Included(&a), Bound::Excluded(&b))
                    .unwrap();
                let map = working.entry(BUCKETS[bucket].to_owned()).or_default();
                let doomed: Vec<_> = map
                    .range(a.clone()..b.clone())
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &doomed {
                    map.remove(k);
                }
                assert_eq!(
                    n,
                    doomed.len() as u64,
                    "remove_range counts what it removed"
                );
            }
        }
    }
    // The transaction sees its own writes, through get and through its cursor.
    for (name, map) in &working {
        let bucket = txn.bucket(name).unwrap();
        for (k, v) in map.iter().step_by(7) {
            assert_eq!(bucket.get(k).unwrap(), Some(v.as_slice()));
        }
        let mut seen = Vec::new();
        let mut cursor = bucket.cursor();
        let mut entry = cursor.first().unwrap();
        while let Some((k, v)) = entry {
            seen.push((k, v));
            entry = cursor.next().unwrap();
        }
        assert_eq!(
            seen,
            map.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>(),
            "write cursor of {name}"
        );
    }
    if commit {
        txn.commit().unwrap();
        *model = working;
    }
}

fn run(steps: Vec<Step>) {
    let dir = tempdir();
    let path = dir.join("tree.db");
    let mut db = open(&path, options()).unwrap();
    let mut committed = Model::new();
    let mut durable = Model::new();
    let mut applied_index = 0u64;
    let mut readers: Vec<(ReadTxn, Model)> = Vec::new();
    for step in steps {
        match step {
            Step::Txn { mutations, commit } => apply(&db, &mutations, commit, &mut committed),
            Step::OpenReader => {
                let read = db.begin_read().unwrap();
                readers.push((read, committed.clone()));
            }
            Step::CloseReader => {
                if !readers.is_empty() {
                    readers.remove(0);
                }
            }
            Step::Checkpoint => {
                applied_index += 10;
                db.checkpoint(applied_index).unwrap();
                durable = committed.clone();
                if readers.is_empty() {
                    assert_clean(&path);
                }
            }
            Step::Reopen => {
                readers.clear();
                drop(db);
                db = open(&path, options()).unwrap();
                committed = durable.clone();
                assert_eq!(db.durable_applied_index().unwrap(), applied_index);
                assert_clean(&path);
            }
            Step::Defragment => {
                applied_index += 10;
                db.defragment(applied_index).unwrap();
                durable = committed.clone();
                if readers.is_empty() {
                    assert_clean(&path);
                }
            }
        }
        // Old snapshots are untouched by everything the writer did since (run on another thread:
        // a ReadTxn is Send + Sync).
        std::thread::scope(|s| {
            s.spawn(|| {
                for (read, model) in &readers {
                    assert_eq!(
                        normalized(&contents(read)),
                        normalized(model),
                        "snapshot {} changed",
                        read.txn_id()
                    );
                }
            });
        });
        assert_eq!(
            normalized(&contents(&db.begin_read().unwrap())),
            normalized(&committed)
        );
    }
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "btree-model-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_a_btreemap_model_across_snapshots_checkpoints_and_reopens(steps in prop::collection::vec(step(), 1..40)) {
        run(steps);
    }
}

#[test]
fn cursor_seek_lands_on_first_key_at_or_after_and_seek_before_on_last_key_before() {
    let dir = tempdir();
    let db = open(dir.join("t.db"), options()).unwrap();
    let mut txn = db.begin_write().unwrap();
    let mut bucket = txn.bucket("key").unwrap();
    for i in (0..2000u32).step_by(2) {
        bucket.insert(&i.to_be_bytes(), &i.to_le_bytes()).unwrap();
    }
    txn.commit().unwrap();
    let read = db.begin_read().unwrap();
    let mut cursor = read.cursor("key");
    // (sought key, expected seek result, expected seek_before result)
    let cases: [(u32, Option<u32>, Option<u32>); 5] = [
        (0, Some(0), None),
        (1, Some(2), Some(0)),
        (1000, Some(1000), Some(998)),
        (1997, Some(1998), Some(1996)),
        (1999, None, Some(1998)),
    ];
    for (sought, at, before) in cases {
        let got = cursor
            .seek(&sought.to_be_bytes())
            .unwrap()
            .map(|(k, _)| u32::from_be_bytes(k.try_into().unwrap()));
        assert_eq!(got, at, "seek({sought})");
        let got = cursor
            .seek_before(&sought.to_be_bytes())
            .unwrap()
            .map(|(k, _)| u32::from_be_bytes(k.try_into().unwrap()));
        assert_eq!(got, before, "seek_before({sought})");
    }
}

#[test]
fn oversized_key_and_bad_bucket_names_are_refused_and_change_nothing() {
    let dir = tempdir();
    let db = open(dir.join("t.db"), options()).unwrap();
    let mut txn = db.begin_write().unwrap();
    let too_long = vec![0u8; PAGE_SIZE];
    assert!(txn.bucket("key").unwrap().insert(&too_long, b"v").is_err());
    assert!(txn.bucket("").is_err());
    assert!(txn.bucket(&"b".repeat(65)).is_err());
    txn.commit().unwrap();
    let read = db.begin_read().unwrap();
    assert_eq!(read.cursor("key").first().unwrap(), None);
}

#[test]
fn pages_are_reused_once_readers_and_the_durable_meta_let_go() {
    let dir = tempdir();
    let db = open(dir.join("t.db"), options()).unwrap();
    let write_round = |round: u8| {
        let mut txn = db.begin_write().unwrap();
        let mut bucket = txn.bucket("key").unwrap();
        for i in 0..300u16 {
            bucket.insert(&i.to_be_bytes(), &[round; 100]).unwrap();
        }
        txn.commit().unwrap();
    };
    for round in 0..5 {
        write_round(round);
        db.checkpoint(round as u64).unwrap();
    }
    let steady_pages = db.stats().unwrap().high_water_pages;
    for round in 5..50 {
        write_round(round);
        db.checkpoint(round as u64).unwrap();
    }
    assert_eq!(
        db.stats().unwrap().high_water_pages,
        steady_pages,
        "rewriting the same keys must not grow the file"
    );
    // A reader pins the pages of its snapshot: the file has to grow while it is open.
    let read = db.begin_read().unwrap();
    for round in 50..55 {
        write_round(round);
        db.checkpoint(round as u64).unwrap();
    }
    assert!(db.stats().unwrap().high_water_pages > steady_pages);
    assert_eq!(
        read.get("key", &7u16.to_be_bytes()).unwrap(),
        Some(&[49u8; 100][..])
    );
}
