//! The WAL over a faulty simulated disk: short writes, ENOSPC, failing fdatasync, bit flips and
//! tears. The rule in every case: nothing acknowledged is lost, and damage is reported (with the
//! file and offset) rather than silently cut. Short writes, write and sync failures and tears
//! run on sealed logs (encryption at rest) too.

mod wal_common;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use basalt_engine::crypt::Keyring;
use basalt_engine::wal::format::{scan_records, SegmentHeader, SEGMENT_HEADER_BYTES};
use basalt_engine::wal::sim::{Faults, SimStorage};
use basalt_engine::wal::{RecordRef, Wal, WalError, WalOptions};
use wal_common::{payload, run, Model};

const DIR: &str = "/sim/member/wal";
const PAYLOAD_BYTES: usize = 700;

/// `sealed`: record payloads encrypted with a fixed test key (the same at every reopen).
fn options(sealed: bool) -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        pending_bytes_max: 64 << 10,
        max_wals: 0,
        keyring: sealed.then(|| Keyring::single(1, &[0x42; 32]).into_shared()),
    }
}

async fn open(
    sim: &SimStorage,
) -> Result<(Wal<SimStorage>, basalt_engine::wal::Recovered), WalError> {
    open_sealed(sim, false).await
}

async fn open_sealed(
    sim: &SimStorage,
    sealed: bool,
) -> Result<(Wal<SimStorage>, basalt_engine::wal::Recovered), WalError> {
    Wal::open(sim.clone(), DIR, options(sealed)).await
}

/// Appends entries 1..=n from `appenders` concurrent tasks; returns the model of every entry
/// acknowledged before the first error (if any), and that error.
async fn append_until_error(
    wal: Rc<Wal<SimStorage>>,
    n: u64,
    appenders: u64,
) -> (Model, Option<WalError>) {
    let mut model = Model::default();
    let mut error = None;
    let mut next = 1;
    while next <= n && error.is_none() {
        let batch: Vec<_> = (next..(next + appenders).min(n + 1))
            .map(|i| (i, payload(1, i, PAYLOAD_BYTES)))
            .collect();
        let mut waits = Vec::new();
        for (i, p) in &batch {
            match wal.submit(&[RecordRef::entry(1, *i, p)]).await {
                Ok(d) => waits.push((*i, d)),
                Err(e) => {
                    error.get_or_insert(e);
                    break;
                }
            }
        }
        for (i, d) in waits {
            match d.await {
                Ok(()) if error.is_none() => {
                    model.apply(&RecordRef::entry(1, i, &payload(1, i, PAYLOAD_BYTES)))
                }
                Ok(()) => {}
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        next += appenders;
    }
    (model, error)
}

/// Reopens on a healthy disk and checks every acknowledged entry is there, intact.
async fn acknowledged_survive(sim: &SimStorage, acked: &Model, sealed: bool) {
    sim.set_faults(Faults::default());
    let (wal, rec) = open_sealed(sim, sealed)
        .await
        .expect("reopen after the fault");
    assert!(
        rec.last_index >= acked.last(),
        "lost acknowledged entries: last {} < {}",
        rec.last_index,
        acked.last()
    );
    let got = wal
        .read_entries(1, acked.last() + 1, usize::MAX)
        .await
        .expect("read back");
    for (r, i) in got.iter().zip(1..) {
        assert_eq!(r.payload, acked.entries[(i - 1) as usize].1, "entry {i}");
    }
    assert_eq!(got.len() as u64, acked.last());
}

#[test]
fn short_writes_are_retried_and_lose_nothing() {
    for sealed in [false, true] {
        run(async {
            let sim = SimStorage::new(7);
            sim.set_faults(Faults {
                short_write_one_in: 3,
                ..Faults::default()
            });
            let (wal, _) = open_sealed(&sim, sealed).await.unwrap();
            let wal = Rc::new(wal);
            let (acked, error) = append_until_error(Rc::clone(&wal), 400, 16).await;
            assert!(error.is_none(), "{error:?}");
            assert_eq!(acked.last(), 400);
            Rc::into_inner(wal).unwrap().close().await.unwrap();
            acknowledged_survive(&sim, &acked, sealed).await;
        });
    }
}

#[test]
fn write_and_sync_failures_stop_the_log_and_keep_what_was_acknowledged() {
    let cases = [
        (
            "ENOSPC",
            Faults {
                enospc_after_bytes: Some(200 << 10),
                ..Faults::default()
            },
        ),
        (
            "fdatasync EIO",
            Faults {
                sync_error_one_in: 40,
                ..Faults::default()
            },
        ),
    ];
    for (name, faults) in cases {
        for seed in 1..=8 {
            let sealed = seed % 2 == 1;
            run(async {
                let sim = SimStorage::new(seed);
                sim.set_faults(faults.clone());
                let (wal, _) = open_sealed(&sim, sealed).await.unwrap();
                let wal = Rc::new(wal);
                let (acked, error) = append_until_error(Rc::clone(&wal), 2000, 8).await;
                assert!(error.is_some(), "{name}: no failure in 2000 appends");
                // A failed log refuses further appends instead of acknowledging them.
                let p = payload(1, acked.last() + 1, 10);
                let again = wal
                    .append(&[RecordRef::entry(1, acked.last() + 1, &p)])
                    .await;
                assert!(
                    matches!(again, Err(WalError::Failed(_))),
                    "{name}: {again:?}"
                );
                let sim = sim.crash();
                drop(wal);
                acknowledged_survive(&sim, &acked, sealed).await;
            });
        }
    }
}

/// Offsets of every record in a segment's bytes.
fn record_offsets(bytes: &[u8]) -> Vec<u64> {
    let h = SegmentHeader::decode(bytes).unwrap();
    let mut out = Vec::new();
    scan_records(bytes, SEGMENT_HEADER_BYTES, h.chain_seed, usize::MAX, |r| {
        out.push(r.offset)
    });
    out
}

fn segment(n: u64) -> PathBuf {
    Path::new(DIR).join(format!("{n:016x}.wal"))
}

#[test]
fn a_flipped_bit_is_reported_with_its_file_and_offset() {
    // (where, segment, byte offset into it given the record offsets and the tail, expected offset)
    type Place = fn(&[u64], u64) -> (u64, u64);
    let cases: [(&str, u64, Place); 5] = [
        ("segment header", 0, |_, _| (20, 0)),
        ("first record of a full segment", 0, |r, _| {
            (r[0] + 40, r[0])
        }),
        ("middle record of a full segment", 0, |r, _| {
            (r[r.len() / 2] + 3, r[r.len() / 2])
        }),
        ("last record of the last segment", 2, |r, _| {
            (r[r.len() - 1] + 50, r[r.len() - 1])
        }),
        ("zero fill far past the tail", 2, |_, tail| {
            (tail + 40_000, tail)
        }),
    ];
    for (name, seg, place) in cases {
        run(async {
            let sim = SimStorage::new(3);
            let (wal, _) = open(&sim).await.unwrap();
            let wal = Rc::new(wal);
            // ~2.5 segments of entries.
            let (acked, _) = append_until_error(Rc::clone(&wal), 200, 4).await;
            assert_eq!(acked.last(), 200);
            Rc::into_inner(wal).unwrap().close().await.unwrap();
            let path = segment(seg);
            let bytes = sim.contents(&path).expect("segment exists");
            let offsets = record_offsets(&bytes);
            let last = offsets[offsets.len() - 1];
            let tail = last + 32 + (PAYLOAD_BYTES as u64).next_multiple_of(8);
            assert!(
                tail + 40_000 < bytes.len() as u64 || seg != 2,
                "{name}: tail segment too full"
            );
            let (byte, want_offset) = place(&offsets, tail);
            sim.flip_bit(&path, byte as usize, 5);
            match open(&sim).await {
                Err(WalError::Corrupt { file, offset, .. }) => {
                    assert_eq!((file, offset), (path.clone(), want_offset), "{name}");
                }
                other => panic!(
                    "{name}: expected corruption, got {:?}",
                    other.map(|(_, r)| r)
                ),
            }
        });
    }
}

#[test]
fn tears_inside_a_sector_never_lose_an_acknowledged_record_silently() {
    // Sub-sector tears break the media assumption; the WAL may refuse to open, but whenever
    // it opens, every acknowledged record is there.
    let (mut opened, mut refused) = (0, 0);
    for seed in 1..=40 {
        let sealed = seed % 2 == 1;
        run(async {
            let sim = SimStorage::new(seed);
            sim.set_faults(Faults {
                sub_sector_tears: true,
                ..Faults::default()
            });
            let (wal, _) = open_sealed(&sim, sealed).await.unwrap();
            let wal = Rc::new(wal);
            let (acked, _) = append_until_error(Rc::clone(&wal), 30, 4).await;
            let more: Vec<_> = (31..60)
                .map(|i| (i, payload(1, i, PAYLOAD_BYTES)))
                .collect();
            let mut waits = Vec::new();
            for (i, p) in &more {
                waits.push(wal.submit(&[RecordRef::entry(1, *i, p)]).await.unwrap());
            }
            for _ in 0..seed % 7 {
                futures_lite::future::yield_now().await;
            }
            let sim = sim.crash();
            drop(waits);
            drop(wal);
            match open_sealed(&sim, sealed).await {
                Ok((wal, rec)) => {
                    opened += 1;
                    assert!(rec.last_index >= 30, "seed {seed}");
                    let got = wal.read_entries(1, 31, usize::MAX).await.unwrap();
                    assert!(
                        got.iter()
                            .zip(1..)
                            .all(|(r, i)| r.payload == acked.entries[i - 1].1),
                        "seed {seed}"
                    );
                }
                Err(WalError::Corrupt { .. }) => refused += 1,
                Err(e) => panic!("seed {seed}: {e}"),
            }
        });
    }
    eprintln!("sub-sector tears: {opened} opened, {refused} refused");
    assert!(opened > 0, "no run recovered ({refused} refused)");
}
