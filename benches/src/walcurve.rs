//! The WAL group-commit curve: how many records per second Basalt's own WAL (`engine::wal`)
//! makes durable as concurrent appenders grow, on the disk under test.
//!
//! One appender can do no better than one fdatasync per record; group commit should let the
//! rate grow with appenders until the disk's bandwidth or the writer's CPU is the limit. The
//! curve is read against the raw write + fdatasync floor that `disk` measures beside it.

use crate::report::{new_histogram, record};
use basalt_engine::wal::{DmaStorage, RecordRef, Wal, WalOptions};
use glommio::{LocalExecutorBuilder, Placement};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Points of the curve: concurrent appenders, each with one record in flight.
pub const APPENDERS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
/// A small put's raft entry is about this size.
pub const RECORD_PAYLOAD_BYTES: usize = 256;

/// Appends through a fresh WAL in `dir/basalt-bench-wal` (removed afterwards) for
/// `seconds_per_point` at every point of [`APPENDERS`].
pub fn run(dir: &Path, seconds_per_point: f64) -> Result<Value, String> {
    let wal_dir = dir.join("basalt-bench-wal");
    let _ = std::fs::remove_dir_all(&wal_dir);
    let result = LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-wal")
        .spawn({
            let wal_dir = wal_dir.clone();
            move || curve(wal_dir, Duration::from_secs_f64(seconds_per_point))
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&wal_dir);
    result
}

async fn curve(wal_dir: PathBuf, per_point: Duration) -> Result<Value, String> {
    let (wal, recovered) = Wal::open(DmaStorage, &wal_dir, WalOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let wal = Rc::new(wal);
    let next_index = Rc::new(Cell::new(recovered.last_index + 1));
    let payload = Rc::new(vec![0xA5u8; RECORD_PAYLOAD_BYTES]);
    let mut points = Vec::with_capacity(APPENDERS.len());
    for appenders in APPENDERS {
        let latency_ns = Rc::new(RefCell::new(new_histogram()));
        let failure = Rc::new(RefCell::new(None::<String>));
        let start = Instant::now();
        let deadline = start + per_point;
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let (wal, next_index, payload) = (wal.clone(), next_index.clone(), payload.clone());
                let (latency_ns, failure) = (latency_ns.clone(), failure.clone());
                glommio::spawn_local(async move {
                    while Instant::now() < deadline && failure.borrow().is_none() {
                        // submit queues synchronously unless the queue is over its bound, which
                        // a few hundred small records never reach: entries stay in index order.
                        let index = next_index.get();
                        next_index.set(index + 1);
                        let sent = Instant::now();
                        let durable = wal.submit(&[RecordRef::entry(1, index, &payload)]).await;
                        match durable {
                            Ok(durable) => match durable.await {
                                Ok(()) => record(&mut latency_ns.borrow_mut(), sent.elapsed()),
                                Err(e) => *failure.borrow_mut() = Some(e.to_string()),
                            },
                            Err(e) => *failure.borrow_mut() = Some(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        if let Some(message) = failure.borrow_mut().take() {
            return Err(format!("wal append with {appenders} appenders: {message}"));
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        let h = latency_ns.borrow();
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        eprintln!(
            "disk: wal group commit, {appenders:>3} appenders: {:.0} records/s",
            h.len() as f64 / elapsed_s
        );
        points.push(json!({
            "appenders": appenders,
            "records": h.len(),
            "records_per_s": h.len() as f64 / elapsed_s,
            "latency_us": { "p50": us(0.5), "p99": us(0.99), "max": h.max() as f64 / 1e3 },
        }));
    }
    Rc::try_unwrap(wal)
        .unwrap_or_else(|_| unreachable!("every appender task has finished"))
        .close()
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "record_payload_bytes": RECORD_PAYLOAD_BYTES, "points": points }))
}
