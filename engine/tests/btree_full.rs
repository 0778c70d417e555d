//! A full device under the tree: a file whose writes fail with ENOSPC after a budget of bytes
//! (seeded, so the failure lands at every kind of write: leaf, branch, overflow, freelist,
//! written list, meta). Each commit or checkpoint that meets it must come back as
//! `Error::OutOfSpace`, leave the writer usable, and, once space returns, the same changes
//! committed again must give exactly the model's state, also after a reopen; a crash right
//! after the failure must come back as the last checkpoint.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use basalt_engine::btree::{check, open, Db, Error, Options, PageFile};
use memmap2::Mmap;

/// Writes fail with ENOSPC once `budget` bytes are used up (`u64::MAX`: unlimited).
struct FullFile {
    file: File,
    budget: AtomicU64,
}

impl FullFile {
    fn spend(&self, bytes: usize) -> io::Result<()> {
        let left = self.budget.load(Ordering::SeqCst);
        if left < bytes as u64 {
            self.budget.store(0, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if left != u64::MAX {
            self.budget.store(left - bytes as u64, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl PageFile for FullFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.spend(buf.len())?;
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len_bytes(&self, len_bytes: u64) -> io::Result<()> {
        self.file.set_len(len_bytes)
    }
    fn map(&self, len_bytes: u64) -> io::Result<Mmap> {
        // SAFETY: read-only map of a file only this test's tree writes, through pwrite.
        unsafe {
            memmap2::MmapOptions::new()
                .len(len_bytes as usize)
                .map(&self.file)
        }
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn state(db: &Db) -> Model {
    let read = db.begin_read().unwrap();
    let mut out = Model::new();
    let mut cursor = read.cursor("key");
    let mut entry = cursor.first().unwrap();
    while let Some((k, v)) = entry {
        out.insert(k.to_vec(), v.to_vec());
        entry = cursor.next().unwrap();
    }
    out
}

/// One batch of changes: puts (some values overflow a 1 KiB page) and deletes.
fn batch(seed: u64, round: u64) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..40)
        .map(|_| {
            let key = format!("k{:04}", next() % 300).into_bytes();
            match next() % 5 {
                0 => (key, None),
                1 => (key, Some(vec![b'o'; 2500 + (next() % 3000) as usize])),
                _ => (key, Some(vec![b'v'; 10 + (next() % 200) as usize])),
            }
        })
        .collect()
}

fn commit(db: &Db, changes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), Error> {
    let mut txn = db.begin_write()?;
    {
        let mut bucket = txn.bucket("key")?;
        for (key, value) in changes {
            match value {
                Some(value) => bucket.insert(key, value)?,
                None => {
                    bucket.remove(key)?;
                }
            }
        }
    }
    txn.commit()
}

#[test]
fn enospc_at_any_tree_write_is_undone_and_the_retry_equals_the_model() {
    let dir = std::env::temp_dir().join(format!("basalt-btree-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let options = Options {
        page_size_bytes: 1024,
        verify_checksums: true,
        ..Options::default()
    };
    let mut failures = 0;
    for seed in 1..=24u64 {
        let path = dir.join(format!("{seed}.db"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let full = Arc::new(FullFile {
            file,
            budget: AtomicU64::new(u64::MAX),
        });
        let db = Db::open_file(Box::new(Arc::clone(&full)), options.clone()).unwrap();
        let mut model = Model::new();
        for round in 0..12u64 {
            let changes = batch(seed, round);
            // Every other round the device runs out somewhere inside the commit or checkpoint.
            if round % 2 == 1 {
                full.budget
                    .store(seed * 997 % 40_000 + round * 131, Ordering::SeqCst);
            }
            let mut committed = false;
            loop {
                let result = commit(&db, &changes)
                    .map(|()| committed = true)
                    .and_then(|()| db.checkpoint(round + 1));
                match result {
                    Ok(()) => break,
                    Err(Error::OutOfSpace(_)) => {
                        failures += 1;
                        // A crash now (the process gone, every write so far on disk) comes
                        // back as the last checkpoint.
                        let crashed = dir.join(format!("{seed}.crashed.db"));
                        std::fs::copy(&path, &crashed).unwrap();
                        let after_crash = open(&crashed, options.clone()).unwrap();
                        assert_eq!(
                            (
                                state(&after_crash),
                                after_crash.durable_applied_index().unwrap()
                            ),
                            (model.clone(), round),
                            "seed {seed} round {round}: a crash after the failed write"
                        );
                        drop(after_crash);
                        std::fs::remove_file(&crashed).unwrap();
                        assert_eq!(
                            state(&db),
                            if committed {
                                let mut m = model.clone();
                                apply(&mut m, &changes);
                                m
                            } else {
                                model.clone()
                            },
                            "seed {seed} round {round}: a failed write changed what readers see"
                        );
                        // Space comes back; a commit that went through is not made again.
                        full.budget.store(u64::MAX, Ordering::SeqCst);
                        if committed {
                            db.checkpoint(round + 1).unwrap();
                            break;
                        }
                    }
                    Err(other) => panic!("seed {seed} round {round}: {other}"),
                }
            }
            apply(&mut model, &changes);
            assert_eq!(state(&db), model, "seed {seed} round {round}");
        }
        drop(db);
        let report = check(&path, None).unwrap();
        assert!(
            report.problems.is_empty(),
            "seed {seed}: {:?}",
            report.problems
        );
        assert_eq!(
            report.leaked_pages, 0,
            "seed {seed}: undone writes leaked pages"
        );
        let reopened = open(&path, options.clone()).unwrap();
        assert_eq!(state(&reopened), model, "seed {seed}: after reopen");
        assert_eq!(reopened.durable_applied_index().unwrap(), 12);
    }
    assert!(
        failures > 20,
        "only {failures} injected failures hit a write"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn apply(model: &mut Model, changes: &[(Vec<u8>, Option<Vec<u8>>)]) {
    for (key, value) in changes {
        match value {
            Some(value) => model.insert(key.clone(), value.clone()),
            None => model.remove(key),
        };
    }
}
