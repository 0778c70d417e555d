//! A device that fills up under the log: the simulated disk has a capacity, so ENOSPC meets the
//! WAL where it asks for new space (a segment's preallocation), while its appends go into
//! segments already written. Seeded runs append, take snapshots and purge (as the raft core does
//! while short of space, keeping one segment), crash at random points and reopen.
//!
//! The rules: a full device is waited out while the writer still has ready segments, and the
//! log goes on once a purge gives space back; if the writer itself needs a segment the device
//! cannot make, the log fails with the cause instead of acknowledging anything; after every
//! crash every acknowledged entry and snapshot is there (the model's check), and a failed
//! preallocation leaves no partial segment behind.

mod wal_common;

use basalt_engine::wal::sim::{Faults, SimStorage};
use basalt_engine::wal::{RecordRef, Recovered, Wal, WalError, WalOptions};
use wal_common::{payload, run, Model, Rng};

const DIR: &str = "/sim/member/wal";
const SEGMENT_BYTES: u64 = 64 << 10;
const PAYLOAD_BYTES: usize = 900;
const STEPS: u32 = 300;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 16 << 10,
        pending_bytes_max: 64 << 10,
        max_wals: 5,
        keyring: None,
    }
}

#[derive(Default)]
struct Tally {
    acked: u64,
    failed_logs: u64,
    crashes: u64,
    enospc: u64,
}

/// Reopens after a crash and checks the log against the model. Entries appended but never
/// acknowledged may or may not have survived; those that did must be the ones submitted, and
/// become part of the model (the next appends continue after them).
async fn reopen(
    sim: &SimStorage,
    model: &mut Model,
    submitted_last: u64,
    what: &str,
) -> Wal<SimStorage> {
    let (wal, rec): (Wal<SimStorage>, Recovered) = Wal::open(sim.clone(), DIR, options())
        .await
        .unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    assert!(
        rec.last_index >= model.last() && rec.last_index <= submitted_last.max(model.last()),
        "{what}: recovered last index {} with {} acknowledged and {submitted_last} submitted",
        rec.last_index,
        model.last()
    );
    for index in model.last() + 1..=rec.last_index {
        model.apply(&RecordRef::entry(
            1,
            index,
            &payload(1, index, PAYLOAD_BYTES),
        ));
    }
    model
        .check(&wal, &rec)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    wal
}

fn seeded_run(seed: u64, tally: &mut Tally) {
    run(async {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut capacity = 5 * SEGMENT_BYTES + SEGMENT_BYTES / 2;
        let mut sim = SimStorage::new(seed);
        sim.set_faults(Faults {
            capacity_bytes: Some(capacity),
            ..Faults::default()
        });
        let mut model = Model::default();
        let mut submitted_last = 0;
        let (mut wal, _) = Wal::open(sim.clone(), DIR, options()).await.unwrap();
        for step in 0..STEPS {
            let what = format!("seed {seed} step {step}");
            let roll = rng.below(20);
            if roll == 0 {
                tally.crashes += 1;
                sim = sim.crash();
                drop(wal);
                wal = reopen(&sim, &mut model, submitted_last, &what).await;
                continue;
            }
            let snapshot_index = model.snapshot.as_ref().map_or(0, |s| s.index);
            if roll == 1 && model.last() > snapshot_index {
                // A checkpoint some entries back (never behind the last), then the purge of a
                // member short of space.
                let index =
                    model.last() - rng.below(model.last() - snapshot_index).min(rng.below(400));
                let snapshot = RecordRef::snapshot(1, index, b"");
                match wal.append(&[snapshot]).await {
                    Ok(()) => model.apply(&snapshot),
                    Err(error) => panic!("{what}: snapshot record: {error}"),
                }
                wal.purge_keeping(index, 1).await.unwrap();
                continue;
            }
            let first = model.last() + 1;
            let count = 1 + rng.below(6);
            let payloads: Vec<_> = (first..first + count)
                .map(|i| payload(1, i, PAYLOAD_BYTES))
                .collect();
            let records: Vec<_> = payloads
                .iter()
                .zip(first..)
                .map(|(p, i)| RecordRef::entry(1, i, p))
                .collect();
            submitted_last = first + count - 1;
            match wal.append(&records).await {
                Ok(()) => {
                    records.iter().for_each(|r| model.apply(r));
                    tally.acked += count;
                }
                Err(WalError::Failed(reason)) => {
                    // The writer needed a segment the device could not make.
                    assert!(
                        reason.contains("No space left on device"),
                        "{what}: {reason}"
                    );
                    tally.failed_logs += 1;
                    let partial: Vec<_> = sim
                        .paths()
                        .into_iter()
                        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
                        .collect();
                    assert!(partial.is_empty(), "{what}: partial segments {partial:?}");
                    // As an operator would: space back (the failed log kept the last try's
                    // room for itself), then a restart.
                    capacity += SEGMENT_BYTES;
                    sim.set_faults(Faults {
                        capacity_bytes: Some(capacity),
                        ..Faults::default()
                    });
                    sim = sim.crash();
                    drop(wal);
                    wal = reopen(&sim, &mut model, submitted_last, &what).await;
                }
                Err(other) => panic!("{what}: {other}"),
            }
        }
        sim = sim.crash();
        drop(wal);
        drop(
            reopen(
                &sim,
                &mut model,
                submitted_last,
                &format!("seed {seed} end"),
            )
            .await,
        );
        tally.enospc += sim.counts().enospc;
    });
}

#[test]
fn a_full_device_is_waited_out_or_fails_the_log_and_nothing_acknowledged_is_lost() {
    let mut tally = Tally::default();
    for seed in 1..=64 {
        seeded_run(seed, &mut tally);
    }
    let Tally {
        acked,
        failed_logs,
        crashes,
        enospc,
    } = tally;
    eprintln!(
        "{acked} entries acknowledged, {crashes} crashes, {enospc} ENOSPC, {failed_logs} failed logs"
    );
    assert!(crashes > 100, "only {crashes} crashes");
    // The device ran out often, and most of the time the log waited for space instead of
    // failing.
    assert!(enospc > 64, "only {enospc} ENOSPC");
    assert!(
        failed_logs * 2 < enospc,
        "{failed_logs} failed logs for {enospc} ENOSPC"
    );
}
