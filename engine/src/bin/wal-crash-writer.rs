//! Test helper for the WAL kill -9 loop (engine/tests/wal_crash.rs): opens the WAL in a
//! directory, prints what it recovered, then appends entries forever from many concurrent
//! submissions and prints `ack <index>` once each is durable. The test kills it at random
//! moments and checks that every acknowledged entry survived.
//!
//! Usage: `wal-crash-writer <wal-dir> <term>`. Entry `i` written under `term` carries
//! [`entry_payload`]`(term, i)`, so a checker can verify any record on its own. With
//! `WAL_CRASH_KEY_FILE` set, the log is sealed with that key file (encryption at rest).

use std::io::Write;
use std::rc::Rc;

use basalt_engine::crypt::Keyring;
use basalt_engine::wal::{DmaStorage, RecordRef, Wal, WalOptions};
use glommio::sync::Semaphore;

/// Submissions allowed in flight at once: enough for group commit to form real batches.
const IN_FLIGHT_MAX: u64 = 64;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 1 << 20,
        batch_bytes_max: 256 << 10,
        pending_bytes_max: 1 << 20,
        max_wals: 0,
        keyring: std::env::var_os("WAL_CRASH_KEY_FILE").map(|path| {
            Keyring::load(path.as_ref())
                .expect("WAL_CRASH_KEY_FILE")
                .into_shared()
        }),
    }
}

/// The payload of entry `index` under `term`: size and bytes follow from the pair alone.
fn entry_payload(term: u64, index: u64) -> Vec<u8> {
    let len = (index.wrapping_mul(7919) % 3000) as usize;
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--check" {
        // Checker mode for the test: verify the log and print `ok <first> <last>`.
        let term_max: u64 = args[3].parse().expect("term");
        check(&args[2], term_max);
        return;
    }
    assert_eq!(
        args.len(),
        3,
        "usage: wal-crash-writer <wal-dir> <term> | --check <wal-dir> <term-max>"
    );
    let dir = args[1].clone();
    let term: u64 = args[2].parse().expect("term");
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async move {
            let (wal, rec) = Wal::open(DmaStorage, &dir, options()).await.expect("open");
            let mut out = std::io::stdout().lock();
            writeln!(out, "open {} {}", rec.first_index, rec.last_index).unwrap();
            out.flush().unwrap();
            drop(out);
            let wal = Rc::new(wal);
            let permits = Rc::new(Semaphore::new(IN_FLIGHT_MAX));
            for index in rec.last_index + 1.. {
                let permit = Semaphore::acquire_static_permit(&permits, 1).await.unwrap();
                let p = entry_payload(term, index);
                let durable = wal
                    .submit(&[RecordRef::entry(term, index, &p)])
                    .await
                    .expect("submit");
                glommio::spawn_local(async move {
                    durable.await.expect("durable");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {index}").unwrap();
                    out.flush().unwrap();
                    drop(permit);
                })
                .detach();
            }
        });
}

/// Opens the log and verifies every entry against its payload rule.
fn check(dir: &str, term_max: u64) {
    let dir = dir.to_string();
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async move {
            let (wal, rec) = Wal::open(DmaStorage, &dir, options()).await.expect("open");
            let mut index = rec.first_index;
            while index <= rec.last_index {
                let got = wal
                    .read_entries(index, rec.last_index + 1, 4 << 20)
                    .await
                    .expect("read");
                for r in &got {
                    assert_eq!(r.index, index);
                    assert!(
                        r.term >= 1 && r.term <= term_max,
                        "entry {index} has term {}",
                        r.term
                    );
                    assert!(
                        r.payload == entry_payload(r.term, index),
                        "entry {index} payload differs"
                    );
                    index += 1;
                }
            }
            wal.close().await.expect("close");
            println!("ok {} {}", rec.first_index, rec.last_index);
        });
}
