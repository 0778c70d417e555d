//! Encryption at rest in the WAL, over real files written through O_DIRECT: no payload byte in
//! clear on disk, the key checked before any record is read, damage and tampering reported
//! with the segment and offset (never handed back as data), and rotation: a new key starts a
//! new segment, and purge drops segments under keys no longer current.

mod wal_common;

use std::path::{Path, PathBuf};

use basalt_engine::crypt::{Keyring, SharedKeyring};
use basalt_engine::wal::dump::{dump_log, segment_key_ids, summarize_log, DumpFilter};
use basalt_engine::wal::format::{scan_records, SEGMENT_HEADER_BYTES};
use basalt_engine::wal::{wal_dir, DmaStorage, RecordRef, Recovered, Wal, WalError, WalOptions};
use wal_common::{run, TestKeys};

const SECRET: &[u8] = b"distinctive-secret-7f3a9c";

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("basalt-wal-crypt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(keyring: Option<SharedKeyring>) -> WalOptions {
    WalOptions {
        segment_bytes: 256 << 10,
        batch_bytes_max: 64 << 10,
        pending_bytes_max: 64 << 10,
        max_wals: 5,
        keyring,
    }
}

fn entry_payload(index: u64) -> Vec<u8> {
    [SECRET, format!(" entry {index}").as_bytes()].concat()
}

/// Appends entries `from..=to` (each carrying [`SECRET`]) and a hard state holding it too.
fn write(data: &Path, keyring: Option<SharedKeyring>, from: u64, to: u64) {
    let dir = wal_dir(data);
    run(async move {
        let (wal, _) = Wal::open(DmaStorage, &dir, options(keyring)).await.unwrap();
        let payloads: Vec<Vec<u8>> = (from..=to).map(entry_payload).collect();
        let entries: Vec<_> = payloads
            .iter()
            .zip(from..)
            .map(|(p, i)| RecordRef::entry(1, i, p))
            .collect();
        wal.append(&entries).await.unwrap();
        wal.append(&[RecordRef::hard_state(SECRET)]).await.unwrap();
        wal.close().await.unwrap();
    });
}

/// Opens the log and reads every entry back.
fn read_all(
    data: &Path,
    keyring: Option<SharedKeyring>,
) -> Result<(Recovered, Vec<Vec<u8>>), WalError> {
    let dir = wal_dir(data);
    run(async move {
        let (wal, rec) = Wal::open(DmaStorage, &dir, options(keyring)).await?;
        let mut payloads = Vec::new();
        if rec.first_index <= rec.last_index {
            let records = wal
                .read_entries(rec.first_index, rec.last_index + 1, usize::MAX)
                .await?;
            payloads = records.into_iter().map(|r| r.payload).collect();
        }
        wal.close().await?;
        Ok((rec, payloads))
    })
}

fn segment_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(wal_dir(data))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn any_segment_holds(data: &Path, needle: &[u8]) -> bool {
    segment_files(data)
        .iter()
        .any(|f| holds(&std::fs::read(f).unwrap(), needle))
}

/// (offset, kind name, index) of every record of the first segment.
fn records_of(file: &Path) -> Vec<(u64, &'static str, u64)> {
    let bytes = std::fs::read(file).unwrap();
    let header = basalt_engine::wal::format::SegmentHeader::decode(&bytes).unwrap();
    let mut out = Vec::new();
    scan_records(
        &bytes,
        SEGMENT_HEADER_BYTES,
        header.chain_seed,
        1 << 20,
        |r| out.push((r.offset, r.kind.name(), r.index)),
    );
    out
}

/// Flips one bit of the stored payload of the record at `offset`; with `fix_crc`, recomputes
/// the crc chain from there on, as a deliberate alteration would, so only authentication can
/// tell.
fn flip_payload_bit(file: &Path, offset: u64, fix_crc: bool) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = offset as usize + 32 + 14;
    bytes[at] ^= 0x10;
    if fix_crc {
        let header = basalt_engine::wal::format::SegmentHeader::decode(&bytes).unwrap();
        let mut crc = header.chain_seed;
        let mut at = SEGMENT_HEADER_BYTES;
        while bytes[at] != 0 {
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            crc = crc32c::crc32c_append(crc, &bytes[at..at + 24]);
            crc = crc32c::crc32c_append(crc, &bytes[at + 32..at + 32 + len]);
            bytes[at + 24..at + 28].copy_from_slice(&crc.to_le_bytes());
            at += 32 + len.next_multiple_of(8);
        }
    }
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_sealed_log_holds_no_payload_in_clear_and_reads_back_whole() {
    let plain = data_dir("plain");
    write(&plain, None, 1, 40);
    assert!(
        any_segment_holds(&plain, SECRET),
        "the scan must find a plaintext payload"
    );

    let sealed = data_dir("sealed");
    let keys = TestKeys::new();
    write(&sealed, Some(keys.shared.clone()), 1, 40);
    assert!(!any_segment_holds(&sealed, SECRET));
    assert!(!any_segment_holds(&sealed, b"entry 1"));
    let (rec, payloads) = read_all(&sealed, Some(keys.shared.clone())).unwrap();
    assert_eq!(rec.hard_state.as_deref(), Some(SECRET));
    assert_eq!(payloads, (1..=40).map(entry_payload).collect::<Vec<_>>());
    for data in [plain, sealed] {
        std::fs::remove_dir_all(data).unwrap();
    }
}

#[test]
fn a_missing_wrong_or_unknown_key_is_refused_by_name() {
    let data = data_dir("keys");
    write(&data, Some(TestKeys::new().shared), 1, 5);
    let segment = segment_files(&data)[0].display().to_string();

    let missing = read_all(&data, None).unwrap_err().to_string();
    assert_eq!(
        missing,
        format!("WAL segment {segment} is encrypted with key id 1; pass --encryption-key-file")
    );
    let wrong = read_all(&data, Some(TestKeys::new().shared)).unwrap_err();
    assert_eq!(
        wrong.to_string(),
        format!("wrong encryption key for key id 1 in {segment}")
    );
    let unknown = read_all(&data, Some(Keyring::single(2, &[7; 32]).into_shared())).unwrap_err();
    assert!(
        matches!(unknown, WalError::KeyUnknown { id: 1, .. }),
        "{unknown}"
    );

    let dump = dump_log(&data, &DumpFilter::default(), None, &mut Vec::new()).unwrap_err();
    assert!(
        dump.to_string().contains("pass --encryption-key-file"),
        "{dump}"
    );
    let summary = summarize_log(&data, None).unwrap_err();
    assert!(matches!(summary, WalError::KeyFileMissing { id: 1, .. }));
    std::fs::remove_dir_all(data).unwrap();
}

#[test]
fn a_flipped_bit_is_corruption_named_by_segment_and_offset() {
    let keys = TestKeys::new();
    for (case, fix_crc) in [("flip", false), ("forge", true)] {
        let data = data_dir(case);
        write(&data, Some(keys.shared.clone()), 1, 20);
        let file = segment_files(&data)[0].clone();
        let records = records_of(&file);
        let &(offset, _, _) = records
            .iter()
            .find(|r| r.1 == "entry" && r.2 == 10)
            .unwrap();
        flip_payload_bit(&file, offset, fix_crc);
        let error = read_all(&data, Some(keys.shared.clone())).unwrap_err();
        let WalError::Corrupt {
            file: named,
            offset: at,
            reason,
        } = &error
        else {
            panic!("{case}: {error}");
        };
        assert_eq!((named, *at), (&file, offset), "{case}: {error}");
        match fix_crc {
            false => assert_eq!(reason, "record checksum mismatch", "{case}"),
            true => assert!(
                reason.contains("fails authentication under key id 1"),
                "{reason}"
            ),
        }
        let mut listing = Vec::new();
        let summary = dump_log(
            &data,
            &DumpFilter::default(),
            Some(&keys.shared.load()),
            &mut listing,
        )
        .unwrap();
        assert_eq!(
            summary.corruption.as_ref().map(|c| (&c.0, c.1)),
            Some((&file, offset)),
            "{case}"
        );
        std::fs::remove_dir_all(data).unwrap();
    }

    // A sealed state record is opened during recovery: a forged one stops the open.
    let data = data_dir("forge-state");
    write(&data, Some(keys.shared.clone()), 1, 3);
    let file = segment_files(&data)[0].clone();
    let &(offset, _, _) = records_of(&file)
        .iter()
        .rfind(|r| r.1 == "hardstate")
        .unwrap();
    flip_payload_bit(&file, offset, true);
    let error = read_all(&data, Some(keys.shared.clone())).unwrap_err();
    assert!(
        matches!(&error, WalError::Corrupt { offset: at, .. } if *at == offset),
        "{error}"
    );
    std::fs::remove_dir_all(data).unwrap();
}

#[test]
fn a_rotation_starts_a_new_segment_and_purge_drops_the_old_key() {
    let data = data_dir("rotate");
    write(&data, None, 1, 5);
    let mut keys = TestKeys::new();
    write(&data, Some(keys.shared.clone()), 6, 10);
    keys.rotate();
    write(&data, Some(keys.shared.clone()), 11, 15);
    let ids = |data: &Path| -> Vec<u32> {
        segment_key_ids(data)
            .unwrap()
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    };
    assert_eq!(ids(&data), vec![0, 1, 2]);
    let (_, payloads) = read_all(&data, Some(keys.shared.clone())).unwrap();
    assert_eq!(payloads, (1..=15).map(entry_payload).collect::<Vec<_>>());

    // A snapshot covering them lets every segment under another key go, although --max-wals
    // would keep them.
    let dir = wal_dir(&data);
    let shared = keys.shared.clone();
    let removed = run(async move {
        let (wal, _) = Wal::open(DmaStorage, &dir, options(Some(shared)))
            .await
            .unwrap();
        wal.append(&[RecordRef::snapshot(1, 12, b"conf")])
            .await
            .unwrap();
        let removed = wal.purge(12).await.unwrap();
        wal.close().await.unwrap();
        removed
    });
    assert_eq!(removed.len(), 2);
    assert_eq!(ids(&data), vec![2]);

    // The old key lines can go now.
    let (rec, payloads) = read_all(&data, Some(keys.only_current())).unwrap();
    assert_eq!(rec.snapshot.map(|s| s.index), Some(12));
    assert_eq!(payloads, (11..=15).map(entry_payload).collect::<Vec<_>>());
    std::fs::remove_dir_all(data).unwrap();
}
