//! `basalt dump-log`: an offline listing of every record in a data directory's WAL (what
//! etcd-dump-log does), with filters by index range and record kind. Reads the files with plain
//! buffered I/O and changes nothing, so it is safe on a stopped member's data. A sealed segment
//! is refused without its key (and with a wrong one) before any of its records is listed; with
//! it, every payload is authenticated, so a listing never vouches for an altered record.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{
    check_segment_key, open_payload, scan_records, Sealing, SegmentHeader, SEGMENT_HEADER_BYTES,
};
use super::prealloc::parse_segment_name;
use super::recover::{classify_end, Ending};
use super::{record_payload_bytes_max, wal_dir, RecordKind, WalError};
use crate::crypt::Keyring;

/// Which records to print; an empty `kinds` means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpFilter {
    /// Only records with `index >= start_index`.
    pub start_index: Option<u64>,
    /// Only records with `index <= end_index`.
    pub end_index: Option<u64>,
    pub kinds: Vec<RecordKind>,
}

impl DumpFilter {
    /// Parses a comma-separated kind list such as `entry,snapshot` (the `--entry-type` flag).
    pub fn parse_kinds(list: &str) -> Result<Vec<RecordKind>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                RecordKind::from_name(&s.to_ascii_lowercase()).ok_or_else(|| {
                    let known: Vec<_> = RecordKind::ALL.iter().map(|k| k.name()).collect();
                    format!("unknown entry type {s:?}; known: {}", known.join(", "))
                })
            })
            .collect()
    }

    fn admits(&self, kind: RecordKind, index: u64) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && self.start_index.is_none_or(|s| index >= s)
            && self.end_index.is_none_or(|e| index <= e)
    }
}

/// What the dump saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub segments: usize,
    pub records: usize,
    pub shown: usize,
    /// Set when records stop at a checksum failure that recovery would refuse.
    pub corruption: Option<(PathBuf, u64, String)>,
}

/// Lists the WAL records under `<data_dir>/member/wal` to `out`; `keyring` opens sealed
/// segments (refused without it).
pub fn dump_log(
    data_dir: &Path,
    filter: &DumpFilter,
    keyring: Option<&Keyring>,
    out: &mut impl Write,
) -> Result<DumpSummary, WalError> {
    let dir = wal_dir(data_dir);
    let files = read_segments(&dir)?;
    let last_used = files.iter().rposition(|(_, b)| b.iter().any(|&x| x != 0));
    let mut summary = DumpSummary::default();
    let w = |e| WalError::io(Path::new("<output>"), e);
    writeln!(out, "WAL dir: {}", dir.display()).map_err(w)?;
    writeln!(
        out,
        "{:>10} {:>12} {:<10} {:>10} {:>12}",
        "term", "index", "type", "bytes", "offset"
    )
    .map_err(w)?;
    let mut seed = None;
    for (i, (path, bytes)) in files.iter().enumerate() {
        summary.segments += 1;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if last_used.is_none_or(|l| i > l) {
            writeln!(out, "segment {name}: preallocated, empty").map_err(w)?;
            continue;
        }
        let header = SegmentHeader::decode(bytes);
        let mut stop = super::format::ScanStop::Zero { offset: 0 };
        match header {
            Ok(h) => {
                check_segment_key(&h, keyring)
                    .map_err(|problem| WalError::key(path, h.key_id, problem))?;
                writeln!(
                    out,
                    "segment {name}: seq={} first_index={} bytes={} key_id={}",
                    h.seq, h.first_index, h.segment_bytes, h.key_id,
                )
                .map_err(w)?;
                let chain_seed = seed.unwrap_or(h.chain_seed);
                if chain_seed != h.chain_seed {
                    writeln!(
                        out,
                        "  (crc chain does not continue from the previous segment)"
                    )
                    .map_err(w)?;
                }
                let payload_max = record_payload_bytes_max(h.batch_bytes_max as usize);
                let mut lines = Vec::new();
                let mut unauthentic = None;
                let (crc, s) = scan_records(
                    bytes,
                    SEGMENT_HEADER_BYTES,
                    h.chain_seed,
                    payload_max,
                    |r| {
                        if unauthentic.is_some() {
                            return;
                        }
                        if let Some(keyring) = keyring.filter(|_| h.is_sealed()) {
                            let sealing = Sealing {
                                keyring,
                                key_id: h.key_id,
                                seq: h.seq,
                                offset: r.offset,
                            };
                            if open_payload(sealing, &r).is_err() {
                                unauthentic = Some(r.offset);
                                return;
                            }
                        }
                        summary.records += 1;
                        if filter.admits(r.kind, r.index) {
                            summary.shown += 1;
                            lines.push(format!(
                                "{:>10} {:>12} {:<10} {:>10} {:>12}",
                                r.term,
                                r.index,
                                r.kind.name(),
                                r.payload.len(),
                                r.offset
                            ));
                        }
                    },
                );
                for l in lines {
                    writeln!(out, "{l}").map_err(w)?;
                }
                if let Some(offset) = unauthentic {
                    let reason = super::unauthentic_reason("record", h.key_id);
                    writeln!(out, "  CORRUPT at offset {offset}: {reason}").map_err(w)?;
                    summary
                        .corruption
                        .get_or_insert((path.clone(), offset, reason));
                    continue;
                }
                seed = Some(crc);
                stop = s;
            }
            Err(reason) => {
                writeln!(out, "segment {name}: header does not verify ({reason})").map_err(w)?
            }
        }
        let is_last = Some(i) == last_used;
        let fallback = super::WalOptions::default().batch_bytes_max as u64;
        match classify_end(bytes, header, stop, is_last, fallback) {
            Ok(Ending::Clean { end }) => {
                writeln!(out, "  end of records at offset {end}").map_err(w)?
            }
            Ok(Ending::Torn { at, .. }) => writeln!(
                out,
                "  torn tail at offset {at} (a crash cut the last write; open will drop it)"
            )
            .map_err(w)?,
            Err((offset, reason)) => {
                writeln!(out, "  CORRUPT at offset {offset}: {reason}").map_err(w)?;
                summary
                    .corruption
                    .get_or_insert((path.clone(), offset, reason.to_string()));
            }
        }
    }
    writeln!(
        out,
        "segments: {}, records: {}, shown: {}",
        summary.segments, summary.records, summary.shown
    )
    .map_err(w)?;
    Ok(summary)
}

/// Every segment file of the WAL in `dir`, in order, with its bytes.
fn read_segments(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, WalError> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| WalError::io(dir, e))?
        .filter_map(|e| {
            e.ok()
                .and_then(|e| parse_segment_name(&e.file_name().to_string_lossy()))
        })
        .collect();
    seqs.sort_unstable();
    let mut files = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let path = dir.join(super::prealloc::segment_name(seq));
        let bytes = std::fs::read(&path).map_err(|e| WalError::io(&path, e))?;
        files.push((path, bytes));
    }
    Ok(files)
}

/// What a stopped member's WAL holds, as far as its records verify: start-up reads this to
/// learn whether a data dir already holds a member before anything in it is opened for
/// writing (recovery proper, [`super::Wal::open`], judges damage and reports it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSummary {
    /// The first metadata record's payload: whom the log belongs to.
    pub metadata: Option<Vec<u8>>,
    pub has_entries: bool,
    /// The index of the newest snapshot marker.
    pub snapshot_index: Option<u64>,
}

/// Reads `<data_dir>/member/wal` without changing anything; a missing WAL dir is an empty log.
/// A sealed segment is refused without its key.
pub fn summarize_log(data_dir: &Path, keyring: Option<&Keyring>) -> Result<LogSummary, WalError> {
    let dir = wal_dir(data_dir);
    let mut summary = LogSummary::default();
    if !dir.exists() {
        return Ok(summary);
    }
    for (path, bytes) in read_segments(&dir)? {
        // A preallocated segment (all zero) has no header to verify and no records.
        let Ok(header) = SegmentHeader::decode(&bytes) else {
            continue;
        };
        check_segment_key(&header, keyring)
            .map_err(|problem| WalError::key(&path, header.key_id, problem))?;
        let payload_max = record_payload_bytes_max(header.batch_bytes_max as usize);
        let mut unauthentic = None;
        scan_records(
            &bytes,
            SEGMENT_HEADER_BYTES,
            header.chain_seed,
            payload_max,
            |r| match r.kind {
                RecordKind::Metadata if summary.metadata.is_none() => {
                    let payload = match keyring.filter(|_| header.is_sealed()) {
                        None => Ok(r.payload.to_vec()),
                        Some(keyring) => {
                            let sealing = Sealing {
                                keyring,
                                key_id: header.key_id,
                                seq: header.seq,
                                offset: r.offset,
                            };
                            open_payload(sealing, &r)
                        }
                    };
                    match payload {
                        Ok(payload) => summary.metadata = Some(payload),
                        Err(_) => {
                            unauthentic.get_or_insert(r.offset);
                        }
                    }
                }
                RecordKind::Metadata => {}
                RecordKind::Entry => summary.has_entries = true,
                RecordKind::Snapshot => summary.snapshot_index = Some(r.index),
                RecordKind::HardState | RecordKind::Truncate => {}
            },
        );
        if let Some(offset) = unauthentic {
            return Err(WalError::unauthentic(
                &path,
                offset,
                "metadata record",
                header.key_id,
            ));
        }
    }
    Ok(summary)
}

/// The key id of every segment that holds records, in order: what `basalt check` lists, so a
/// key is removed from the key file only once no segment names it.
pub fn segment_key_ids(data_dir: &Path) -> Result<Vec<(PathBuf, u32)>, WalError> {
    let dir = wal_dir(data_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(read_segments(&dir)?
        .into_iter()
        .filter_map(|(path, bytes)| {
            let header = SegmentHeader::decode(&bytes).ok()?;
            Some((path, header.key_id))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_lists_parse_and_unknown_kinds_are_named() {
        assert_eq!(
            DumpFilter::parse_kinds("entry, Snapshot"),
            Ok(vec![RecordKind::Entry, RecordKind::Snapshot])
        );
        let err = DumpFilter::parse_kinds("entry,bogus").unwrap_err();
        assert!(err.contains("\"bogus\""), "{err}");
    }

    #[test]
    fn filters_admit_by_kind_and_inclusive_index_range() {
        let f = DumpFilter {
            start_index: Some(5),
            end_index: Some(7),
            kinds: vec![RecordKind::Entry],
        };
        let cases = [
            (RecordKind::Entry, 4, false),
            (RecordKind::Entry, 5, true),
            (RecordKind::Entry, 7, true),
            (RecordKind::Entry, 8, false),
            (RecordKind::Snapshot, 6, false),
        ];
        for (kind, index, want) in cases {
            assert_eq!(f.admits(kind, index), want, "{kind:?} {index}");
        }
    }
}
