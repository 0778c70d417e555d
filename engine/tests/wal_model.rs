//! Property test: random appends, overwrites, truncations, hard states, snapshots with purge,
//! clean reopens and power losses on the simulated disk, checked against an independent model.
//! After a power loss the log must hold every acknowledged record and, of the records not yet
//! acknowledged, only a prefix in submission order. Half the seeds seal the log with
//! encryption at rest and rotate its key now and then.

mod wal_common;

use basalt_engine::wal::sim::SimStorage;
use basalt_engine::wal::{RecordKind, RecordRef, Recovered, Wal, WalOptions};
use proptest::prelude::*;
use wal_common::{payload, run, Model, TestKeys};

const DIR: &str = "/sim/member/wal";

/// Small segments and batches so a short run rolls, fills and purges many segments.
fn options(keys: Option<&TestKeys>) -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        pending_bytes_max: 64 << 10,
        max_wals: 2,
        keyring: keys.map(|k| k.shared.clone()),
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// `n` entries after the last, `size` payload bytes each.
    Append {
        n: u64,
        size: usize,
    },
    /// A new term rewrites the log from `back` entries before its end.
    Overwrite {
        back: u64,
        n: u64,
        size: usize,
    },
    Truncate {
        back: u64,
    },
    HardState {
        size: usize,
    },
    /// Snapshot marker `back` below last+3 (so sometimes past the end), then purge.
    Snapshot {
        back: u64,
    },
    Reopen,
    /// A new current key (on an encrypted run): the next record starts a new segment.
    Rotate,
    /// Submits these appends without waiting, lets the writer run `steps` times, pulls the plug.
    Crash {
        unacked: Vec<(u64, usize)>,
        steps: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let size = 0usize..3000;
    prop_oneof![
        6 => (1u64..12, size.clone()).prop_map(|(n, size)| Op::Append { n, size }),
        2 => (0u64..6, 1u64..6, size.clone()).prop_map(|(back, n, size)| Op::Overwrite { back, n, size }),
        1 => (0u64..6).prop_map(|back| Op::Truncate { back }),
        2 => (0usize..64).prop_map(|size| Op::HardState { size }),
        1 => (0u64..12).prop_map(|back| Op::Snapshot { back }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Rotate),
        2 => (prop::collection::vec((1u64..8, size), 0..5), 0u8..16)
            .prop_map(|(unacked, steps)| Op::Crash { unacked, steps }),
    ]
}

/// Entries `start..start+n` of `term`.
fn entries(term: u64, start: u64, n: u64, size: usize) -> Vec<(u64, u64, Vec<u8>)> {
    (start..start + n)
        .map(|i| (term, i, payload(term, i, size)))
        .collect()
}

fn refs(es: &[(u64, u64, Vec<u8>)]) -> Vec<RecordRef<'_>> {
    es.iter()
        .map(|(t, i, p)| RecordRef::entry(*t, *i, p))
        .collect()
}

fn snapshot_index(model: &Model) -> u64 {
    model.snapshot.as_ref().map_or(0, |s| s.index)
}

async fn open(
    sim: &SimStorage,
    keys: Option<&TestKeys>,
) -> Result<(Wal<SimStorage>, Recovered), String> {
    Wal::open(sim.clone(), DIR, options(keys))
        .await
        .map_err(|e| format!("open: {e}"))
}

async fn play(ops: Vec<Op>, seed: u64) -> Result<(), String> {
    let mut sim = SimStorage::new(seed);
    let mut keys = (seed % 2 == 1).then(TestKeys::new);
    let (mut wal, _) = open(&sim, keys.as_ref()).await?;
    let mut model = Model::default();
    let mut term = 1u64;
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = |e: String| format!("step {step} {op:?}: {e}");
        let next = model.last() + 1;
        match op.clone() {
            Op::Append { n, size } => {
                let es = entries(term, next, n, size);
                wal.append(&refs(&es))
                    .await
                    .map_err(|e| ctx(e.to_string()))?;
                refs(&es).iter().for_each(|r| model.apply(r));
            }
            Op::Overwrite { back, n, size } => {
                term += 1;
                // Raft never rewrites what a snapshot covers.
                let start = next
                    .saturating_sub(back)
                    .max(model.first)
                    .max(snapshot_index(&model) + 1);
                let es = entries(term, start, n, size);
                wal.append(&refs(&es))
                    .await
                    .map_err(|e| ctx(e.to_string()))?;
                refs(&es).iter().for_each(|r| model.apply(r));
            }
            Op::Truncate { back } => {
                if model.first == 0 {
                    continue;
                }
                let index = model
                    .last()
                    .saturating_sub(back)
                    .max(model.first - 1)
                    .max(snapshot_index(&model).min(model.last()));
                wal.truncate_after(index)
                    .await
                    .map_err(|e| ctx(e.to_string()))?;
                model.apply(&RecordRef {
                    kind: RecordKind::Truncate,
                    term: 0,
                    index,
                    payload: &[],
                });
            }
            Op::HardState { size } => {
                let hs = payload(term, u64::MAX, size);
                let r = RecordRef::hard_state(&hs);
                wal.append(&[r]).await.map_err(|e| ctx(e.to_string()))?;
                model.apply(&r);
            }
            Op::Snapshot { back } => {
                let index = (model.last() + 3).saturating_sub(back);
                let meta = payload(term, index, 16);
                let r = RecordRef::snapshot(term, index, &meta);
                wal.append(&[r]).await.map_err(|e| ctx(e.to_string()))?;
                model.apply(&r);
                wal.purge(index).await.map_err(|e| ctx(e.to_string()))?;
            }
            Op::Reopen => {
                wal.close().await.map_err(|e| ctx(e.to_string()))?;
                let (w, rec) = open(&sim, keys.as_ref()).await.map_err(ctx)?;
                wal = w;
                model.check(&wal, &rec).await.map_err(ctx)?;
            }
            Op::Rotate => {
                if let Some(keys) = keys.as_mut() {
                    keys.rotate();
                }
            }
            Op::Crash { unacked, steps } => {
                let mut flat = Vec::new();
                let mut start = next;
                let mut waiting = Vec::new();
                for (n, size) in unacked {
                    let es = entries(term, start, n, size);
                    start += n;
                    waiting.push(
                        wal.submit(&refs(&es))
                            .await
                            .map_err(|e| ctx(e.to_string()))?,
                    );
                    flat.extend(es);
                }
                for _ in 0..steps {
                    futures_lite::future::yield_now().await;
                }
                sim = sim.crash();
                drop(waiting);
                drop(wal);
                let (w, rec) = open(&sim, keys.as_ref()).await.map_err(ctx)?;
                wal = w;
                // Any prefix of the unacknowledged records may have reached the disk.
                let mut candidate = model.clone();
                let mut matched = candidate.check(&wal, &rec).await.is_ok();
                for (t, i, p) in &flat {
                    if matched {
                        break;
                    }
                    candidate.apply(&RecordRef::entry(*t, *i, p));
                    matched = candidate.check(&wal, &rec).await.is_ok();
                }
                if !matched {
                    return Err(ctx(format!(
                        "recovered log (first {}, last {}) matches no prefix of the unacknowledged records",
                        rec.first_index, rec.last_index
                    )));
                }
                if std::env::var_os("WAL_MODEL_TRACE").is_some() {
                    eprintln!(
                        "crash: torn tail {:?}, kept {} of {} unacked",
                        rec.torn_tail,
                        candidate.last() - model.last().min(candidate.last()),
                        flat.len()
                    );
                }
                model = candidate;
            }
        }
    }
    wal.close().await.map_err(|e| e.to_string())?;
    let (wal, rec) = open(&sim, keys.as_ref()).await?;
    model
        .check(&wal, &rec)
        .await
        .map_err(|e| format!("final reopen: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn log_matches_the_model_across_reopens_and_power_losses(
        ops in prop::collection::vec(op(), 1..40),
        seed in any::<u64>(),
    ) {
        let outcome = run(play(ops, seed));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
