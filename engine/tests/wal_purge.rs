//! Purge: segments wholly at or below the snapshot index go, oldest first, while more than
//! `max_wals` remain; nothing above the snapshot is ever dropped, and a reopen agrees.

mod wal_common;

use basalt_engine::wal::sim::SimStorage;
use basalt_engine::wal::{RecordRef, Wal, WalOptions};
use wal_common::{payload, run};

const DIR: &str = "/sim/member/wal";

fn options(max_wals: usize) -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        pending_bytes_max: 64 << 10,
        max_wals,
        keyring: None,
    }
}

fn segments(sim: &SimStorage) -> usize {
    sim.paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .count()
}

/// Segments holding records (preallocated ones are all zeros).
fn used_segments(sim: &SimStorage) -> usize {
    sim.paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .filter(|p| {
            sim.contents(p)
                .is_some_and(|b| b.first().is_some_and(|&x| x != 0))
        })
        .count()
}

#[test]
fn purge_keeps_max_wals_and_everything_above_the_snapshot() {
    // (snapshot index, max_wals)
    let cases = [(300, 3), (300, 1), (600, 2), (600, 1), (10, 2), (600, 0)];
    for (snapshot, max_wals) in cases {
        run(async {
            let sim = SimStorage::new(5);
            let (wal, _) = Wal::open(sim.clone(), DIR, options(max_wals))
                .await
                .unwrap();
            // 600 entries of ~1 KiB: about ten 64 KiB segments.
            for index in 1..=600u64 {
                let p = payload(1, index, 1000);
                wal.append(&[RecordRef::entry(1, index, &p)]).await.unwrap();
            }
            let used_before = segments(&sim);
            let removed = wal.purge(snapshot).await.unwrap();
            let first = wal.first_index();
            let name = format!("snapshot {snapshot}, max_wals {max_wals}");
            assert!(
                first <= snapshot + 1,
                "{name}: first index {first} drops entries above the snapshot"
            );
            if max_wals == 0 {
                assert!(removed.is_empty(), "{name}");
            } else {
                // Files still there are the newest; only the ones a purge may not take remain
                // beyond max_wals (the segment being written, any with entries above the
                // snapshot, and the preallocated look-ahead, which is not counted).
                assert!(
                    !removed.is_empty() || snapshot < 100,
                    "{name}: nothing purged"
                );
            }
            assert_eq!(segments(&sim), used_before - removed.len(), "{name}");
            if snapshot == 600 && max_wals > 0 {
                // Everything is covered: exactly max_wals segments holding records remain.
                assert_eq!(used_segments(&sim), max_wals, "{name}");
            }
            if max_wals > 0 {
                assert!(used_segments(&sim) >= max_wals, "{name}");
            }
            let got = wal.read_entries(first, 601, usize::MAX).await.unwrap();
            assert_eq!(got.len() as u64, 601 - first, "{name}");
            assert!(
                got.iter()
                    .zip(first..)
                    .all(|(r, i)| r.payload == payload(1, i, 1000)),
                "{name}"
            );
            wal.close().await.unwrap();
            let (_, rec) = Wal::open(sim.clone(), DIR, options(max_wals))
                .await
                .unwrap();
            assert_eq!(
                (rec.first_index, rec.last_index),
                (first, 600),
                "{name}: reopen"
            );
        });
    }
}

#[test]
fn purge_keeping_one_gives_back_every_segment_the_snapshot_covers() {
    run(async {
        let sim = SimStorage::new(6);
        let (wal, _) = Wal::open(sim.clone(), DIR, options(5)).await.unwrap();
        for index in 1..=600u64 {
            let p = payload(1, index, 1000);
            wal.append(&[RecordRef::entry(1, index, &p)]).await.unwrap();
        }
        // max_wals would keep five segments; a device short of space keeps what it needs.
        let removed = wal.purge_keeping(600, 1).await.unwrap();
        assert!(
            removed.len() >= 4,
            "only {} segments removed",
            removed.len()
        );
        assert_eq!(used_segments(&sim), 1);
        let first = wal.first_index();
        let got = wal.read_entries(first, 601, usize::MAX).await.unwrap();
        assert_eq!(got.len() as u64, 601 - first);
        // Nothing above the snapshot goes, however few segments it is told to keep.
        let kept = wal.purge_keeping(300, 1).await.unwrap();
        assert!(kept.is_empty());
        wal.close().await.unwrap();
        let (_, rec) = Wal::open(sim.clone(), DIR, options(5)).await.unwrap();
        assert_eq!((rec.first_index, rec.last_index), (first, 600));
    });
}

#[test]
fn one_zero_filled_segment_waits_ahead_of_the_writer() {
    run(async {
        let sim = SimStorage::new(7);
        let (wal, _) = Wal::open(sim.clone(), DIR, options(0)).await.unwrap();
        let spares = || segments(&sim) - used_segments(&sim);
        for index in 1..=600u64 {
            let p = payload(1, index, 1000);
            wal.append(&[RecordRef::entry(1, index, &p)]).await.unwrap();
            // The next is made only once the writer took the last: never two spare.
            assert!(
                spares() <= 1,
                "{} spare segments at entry {index}",
                spares()
            );
        }
        assert!(
            used_segments(&sim) >= 9,
            "600 KiB of entries fill many segments"
        );
        // Given time, the preallocator has the next one ready.
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(spares(), 1);
        wal.close().await.unwrap();
    });
}
