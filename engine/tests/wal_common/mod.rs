//! Shared by the WAL integration tests: an independent model of what the log must hold, the
//! payload every entry carries, and a runner for async test bodies.

#![allow(dead_code)] // each test file uses its own subset

use std::future::Future;

use basalt_engine::crypt::{random_key_line, Keyring, SharedKeyring};
use basalt_engine::wal::{Record, RecordKind, RecordRef, Recovered, Storage, Wal};

/// Runs `body` on a fresh glommio executor, as the raft core would run the WAL.
pub fn run<T>(body: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor")
        .run(body)
}

/// A key file held in memory, for logs sealed with encryption at rest: it starts with key 1
/// and [`TestKeys::rotate`] appends a new current key, as `basalt rekey` does.
pub struct TestKeys {
    lines: String,
    pub shared: SharedKeyring,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        let lines = random_key_line(1).expect("random key") + "\n";
        let shared = parse(&lines).into_shared();
        TestKeys { lines, shared }
    }

    /// Appends a key with the next id; the keyring every writer shares now seals with it.
    pub fn rotate(&mut self) -> u32 {
        let id = self.shared.load().current_id() + 1;
        self.lines += &(random_key_line(id).expect("random key") + "\n");
        self.shared.store(std::sync::Arc::new(parse(&self.lines)));
        id
    }

    /// A keyring of the current key alone: the key file once older lines are removed.
    pub fn only_current(&self) -> SharedKeyring {
        parse(self.lines.lines().last().expect("a key")).into_shared()
    }
}

fn parse(lines: &str) -> Keyring {
    Keyring::parse(lines.as_bytes(), std::path::Path::new("test keys")).expect("valid key lines")
}

/// xorshift64: seeded, so a failing run replays.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The bytes entry `index` of `term` carries: recognisable, and different for every
/// (term, index), so a record read back from the wrong place cannot pass for the right one.
pub fn payload(term: u64, index: u64, len: usize) -> Vec<u8> {
    let mut x =
        term.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the log must hold, by the raft log rules, written independently of the WAL's own view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Index of `entries[0]`; 0 until the first entry or snapshot.
    pub first: u64,
    pub entries: Vec<(u64, Vec<u8>)>,
    pub hard_state: Option<Vec<u8>>,
    pub snapshot: Option<Record>,
}

impl Model {
    pub fn last(&self) -> u64 {
        if self.first == 0 {
            0
        } else {
            self.first + self.entries.len() as u64 - 1
        }
    }

    pub fn apply(&mut self, r: &RecordRef<'_>) {
        match r.kind {
            RecordKind::Entry => {
                if self.first == 0 {
                    self.first = r.index;
                }
                self.entries.truncate((r.index - self.first) as usize);
                self.entries.push((r.term, r.payload.to_vec()));
            }
            RecordKind::Truncate => self.entries.truncate((r.index + 1 - self.first) as usize),
            RecordKind::Snapshot => {
                if self.first == 0 || r.index >= self.last() {
                    self.first = r.index + 1;
                    self.entries.clear();
                }
                self.snapshot = Some(Record {
                    kind: r.kind,
                    term: r.term,
                    index: r.index,
                    payload: r.payload.to_vec(),
                });
            }
            RecordKind::HardState => self.hard_state = Some(r.payload.to_vec()),
            RecordKind::Metadata => {}
        }
    }

    /// Checks a reopened WAL against the model: same last index, state and entry contents.
    /// Purge may only have dropped entries the snapshot covers.
    pub async fn check<S: Storage>(&self, wal: &Wal<S>, rec: &Recovered) -> Result<(), String> {
        if rec.last_index != self.last() {
            return Err(format!(
                "last index {} != model {}",
                rec.last_index,
                self.last()
            ));
        }
        if rec.hard_state != self.hard_state {
            return Err("hard state differs".into());
        }
        if rec.snapshot != self.snapshot {
            return Err(format!(
                "snapshot {:?} != model {:?}",
                rec.snapshot, self.snapshot
            ));
        }
        let covered = self.snapshot.as_ref().map_or(0, |s| s.index + 1);
        if rec.first_index < self.first.max(1) || rec.first_index > self.first.max(covered).max(1) {
            return Err(format!(
                "first index {} with model first {} and snapshot cover {covered}",
                rec.first_index, self.first
            ));
        }
        let got = wal
            .read_entries(rec.first_index, rec.last_index + 1, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
        for (r, index) in got.iter().zip(rec.first_index..) {
            let (term, payload) = &self.entries[(index - self.first) as usize];
            if r.index != index || r.term != *term || &r.payload != payload {
                return Err(format!("entry {index} differs"));
            }
        }
        if got.len() as u64 != rec.last_index + 1 - rec.first_index {
            return Err(format!("read {} entries", got.len()));
        }
        Ok(())
    }
}
