//! The kill -9 loop: a writer process appends and prints every index once it is durable; the
//! test kills it at random moments (SIGKILL, no chance to flush anything) and checks, through
//! an independent checker process, that every acknowledged entry survived intact and that the
//! log holds nothing that does not verify. WAL_CRASH_CYCLES overrides the default 50 cycles.
//! A second loop runs with encryption at rest: plaintext first, then sealed with a key file,
//! then with a rotated key, so crashes land around every switch as well.

mod wal_common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wal_common::Rng;

const WRITER: &str = env!("CARGO_BIN_EXE_wal-crash-writer");
const CYCLES_DEFAULT: u64 = 50;
/// The encrypted loop's cycles (WAL_CRASH_CYCLES overrides it too): a third plaintext, a third
/// under key 1, a third under key 2.
const ENCRYPTED_CYCLES_DEFAULT: u64 = 24;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().expect(name))
}

/// Runs the checker and returns the (first, last) index it verified.
fn check(dir: &str, term_max: u64, key_file: Option<&Path>) -> (u64, u64) {
    let mut checker = Command::new(WRITER);
    if let Some(key_file) = key_file {
        checker.env("WAL_CRASH_KEY_FILE", key_file);
    }
    let out = checker
        .args(["--check", dir, &term_max.to_string()])
        .output()
        .expect("run checker");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "checker failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut f = text
        .trim()
        .strip_prefix("ok ")
        .expect("checker output")
        .split(' ');
    let mut n = || f.next().unwrap().parse::<u64>().unwrap();
    (n(), n())
}

#[test]
fn every_acknowledged_entry_survives_kill_9() {
    let cycles = env_u64("WAL_CRASH_CYCLES").unwrap_or(CYCLES_DEFAULT);
    crash_loop("plain", cycles, |_| None);
}

#[test]
fn every_acknowledged_entry_survives_kill_9_with_encryption_and_rotation() {
    let cycles = env_u64("WAL_CRASH_CYCLES").unwrap_or(ENCRYPTED_CYCLES_DEFAULT);
    let keys = std::env::temp_dir().join(format!("basalt-wal-crash-keys-{}", std::process::id()));
    let mut lines = String::new();
    crash_loop("sealed", cycles, |cycle| {
        let key_id = (cycle * 3 - 1) / cycles;
        if key_id == 0 {
            return None;
        }
        if lines.lines().count() < key_id as usize {
            lines += &(basalt_engine::crypt::random_key_line(key_id as u32).unwrap() + "\n");
            std::fs::write(&keys, &lines).unwrap();
            std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Some(keys.clone())
    });
    std::fs::remove_file(&keys).unwrap();
}

/// Kills a writer `cycles` times; `key_file(cycle)` is the key file that cycle's writer and
/// checker use (None: plaintext).
fn crash_loop(name: &str, cycles: u64, mut key_file: impl FnMut(u64) -> Option<PathBuf>) {
    let seed = env_u64("WAL_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    eprintln!("WAL_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let base = std::env::temp_dir().join(format!("basalt-wal-crash-{name}-{}", std::process::id()));
    let dir = base.join("member").join("wal");
    let dir_s = dir.to_str().unwrap().to_string();
    let mut acked_max = 0u64;
    for cycle in 1..=cycles {
        let term = cycle;
        let key_file = key_file(cycle);
        let mut writer = Command::new(WRITER);
        if let Some(key_file) = &key_file {
            writer.env("WAL_CRASH_KEY_FILE", key_file);
        }
        let mut child = writer
            .args([&dir_s, &term.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("writer says what it opened").unwrap();
        let last_opened: u64 = first.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            last_opened >= acked_max,
            "cycle {cycle}: reopened at {last_opened} < acknowledged {acked_max}"
        );
        // Kill after a random number of acknowledgements, then a random extra moment, so the
        // kill lands anywhere: between batches, mid-write, mid-fdatasync, mid-preallocation.
        let acks_before_kill = rng.below(400);
        for _ in 0..acks_before_kill {
            let Some(Ok(line)) = lines.next() else { break };
            let index: u64 = line
                .strip_prefix("ack ")
                .expect("ack line")
                .parse()
                .unwrap();
            acked_max = acked_max.max(index);
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        child.kill().expect("kill -9");
        // Acknowledgements already printed before the kill count too.
        for line in lines.map_while(Result::ok) {
            if let Some(i) = line.strip_prefix("ack ") {
                acked_max = acked_max.max(i.parse().unwrap());
            }
        }
        child.wait().unwrap();
        let (_, last) = check(&dir_s, term, key_file.as_deref());
        assert!(
            last >= acked_max,
            "cycle {cycle}: log ends at {last}, acknowledged up to {acked_max}"
        );
    }
    eprintln!("{cycles} kill -9 cycles, {acked_max} entries acknowledged");
    assert!(acked_max > 0, "the writer never acknowledged anything");
    std::fs::remove_dir_all(&base).unwrap();
}
