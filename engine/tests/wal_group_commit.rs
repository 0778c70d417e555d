//! Group commit, counted at the (simulated) device: a lone append costs exactly one write and
//! one fdatasync, and appends queued at the same moment share one of each.

mod wal_common;

use std::rc::Rc;

use basalt_engine::wal::sim::{SimCounts, SimStorage};
use basalt_engine::wal::{RecordRef, Wal, WalOptions};
use wal_common::{payload, run};

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 1 << 20,
        batch_bytes_max: 256 << 10,
        pending_bytes_max: 1 << 20,
        max_wals: 0,
        keyring: None,
    }
}

/// Opens a WAL, makes its first append, and lets the preallocator settle (it then waits with
/// its look-ahead done), so later device counts belong to appends alone.
async fn settled() -> (SimStorage, Rc<Wal<SimStorage>>, u64) {
    let sim = SimStorage::new(11);
    let (wal, _) = Wal::open(sim.clone(), "/sim/wal", options()).await.unwrap();
    wal.append(&[RecordRef::entry(1, 1, b"first")])
        .await
        .unwrap();
    for _ in 0..1000 {
        futures_lite::future::yield_now().await;
    }
    (sim, Rc::new(wal), 2)
}

fn delta(after: SimCounts, before: SimCounts) -> (u64, u64) {
    (after.writes - before.writes, after.syncs - before.syncs)
}

#[test]
fn a_lone_append_costs_one_write_and_one_fdatasync() {
    run(async {
        let (sim, wal, first) = settled().await;
        for index in first..first + 20 {
            let before = sim.counts();
            let p = payload(1, index, 100);
            wal.append(&[RecordRef::entry(1, index, &p)]).await.unwrap();
            assert_eq!(delta(sim.counts(), before), (1, 1), "append {index}");
        }
    });
}

#[test]
fn appends_waiting_together_share_one_write_and_one_fdatasync() {
    for appenders in [2u64, 8, 64, 512] {
        run(async {
            let (sim, wal, first) = settled().await;
            let before = sim.counts();
            let mut tasks = Vec::new();
            for index in first..first + appenders {
                let wal = Rc::clone(&wal);
                tasks.push(glommio::spawn_local(async move {
                    let p = payload(1, index, 100);
                    wal.append(&[RecordRef::entry(1, index, &p)]).await.unwrap();
                }));
            }
            for t in tasks {
                t.await;
            }
            assert_eq!(delta(sim.counts(), before), (1, 1), "{appenders} appenders");
            assert_eq!(wal.last_index(), first + appenders - 1);
        });
    }
}
