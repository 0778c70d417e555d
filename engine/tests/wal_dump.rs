//! `dump-log` over a real WAL written through O_DIRECT: every record listed with its type,
//! term, index and size; filters by index range and type; damage reported, not hidden.

mod wal_common;

use std::path::{Path, PathBuf};

use basalt_engine::wal::dump::{dump_log, DumpFilter};
use basalt_engine::wal::{wal_dir, DmaStorage, RecordKind, RecordRef, Wal, WalOptions};
use wal_common::{payload, run};

fn data_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("basalt-wal-dump-{name}-{}", std::process::id()))
}

/// Writes entries 1..=20 (entry i has i bytes), a hard state, a snapshot at 10 and a
/// truncation to 18, into one small segment.
fn write_log(data: &Path) {
    let dir = wal_dir(data);
    run(async move {
        let opts = WalOptions {
            segment_bytes: 256 << 10,
            batch_bytes_max: 64 << 10,
            pending_bytes_max: 64 << 10,
            max_wals: 0,
            keyring: None,
        };
        let (wal, _) = Wal::open(DmaStorage, &dir, opts).await.unwrap();
        let ps: Vec<Vec<u8>> = (1..=20).map(|i| payload(2, i, i as usize)).collect();
        let es: Vec<_> = ps
            .iter()
            .zip(1..)
            .map(|(p, i)| RecordRef::entry(2, i, p))
            .collect();
        wal.append(&es).await.unwrap();
        wal.append(&[
            RecordRef::hard_state(b"hs"),
            RecordRef::snapshot(2, 10, b"conf"),
        ])
        .await
        .unwrap();
        wal.truncate_after(18).await.unwrap();
        wal.close().await.unwrap();
    });
}

fn dump(data: &Path, filter: DumpFilter) -> (String, basalt_engine::wal::dump::DumpSummary) {
    let mut out = Vec::new();
    let summary = dump_log(data, &filter, None, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), summary)
}

/// The record lines of a dump as (term, index, type, bytes).
fn rows(text: &str) -> Vec<(u64, u64, String, usize)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let kind = RecordKind::from_name(f.get(2)?)?;
            Some((
                f[0].parse().ok()?,
                f[1].parse().ok()?,
                kind.name().to_string(),
                f[3].parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn dump_lists_records_and_filters_by_index_and_type() {
    let data = data_dir("filters");
    write_log(&data);
    let entry = |i: u64| (2, i, "entry".to_string(), i as usize);
    let cases = [
        ("everything", DumpFilter::default(), 23),
        (
            "entries 5..=7",
            DumpFilter {
                start_index: Some(5),
                end_index: Some(7),
                kinds: vec![RecordKind::Entry],
            },
            3,
        ),
        (
            "snapshots and truncations",
            DumpFilter {
                kinds: DumpFilter::parse_kinds("snapshot,truncate").unwrap(),
                ..DumpFilter::default()
            },
            2,
        ),
    ];
    for (name, filter, want) in cases {
        let (text, summary) = dump(&data, filter.clone());
        let rows = rows(&text);
        assert_eq!(rows.len(), want, "{name}:\n{text}");
        assert_eq!(summary.shown, want, "{name}");
        assert_eq!(summary.records, 23, "{name}");
        assert!(summary.corruption.is_none(), "{name}");
        if name == "entries 5..=7" {
            assert_eq!(rows, vec![entry(5), entry(6), entry(7)]);
        }
        if name == "snapshots and truncations" {
            assert_eq!(rows[0], (2, 10, "snapshot".to_string(), 4));
            assert_eq!(rows[1], (0, 18, "truncate".to_string(), 0));
        }
    }
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn dump_reports_a_corrupt_record_with_file_and_offset() {
    let data = data_dir("corrupt");
    write_log(&data);
    let seg = wal_dir(&data).join(format!("{:016x}.wal", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    // Entry 3 starts after the 64-byte header and two records (32 + 8 bytes each).
    let entry3 = 64 + 2 * 40;
    bytes[entry3 + 20] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let (text, summary) = dump(&data, DumpFilter::default());
    assert_eq!(
        summary.corruption,
        Some((seg, entry3 as u64, "record checksum mismatch".into())),
        "{text}"
    );
    assert_eq!(
        rows(&text).len(),
        2,
        "records after the damage are not listed as good"
    );
    std::fs::remove_dir_all(&data).unwrap();
}
