//! Opening a WAL directory: read every segment, verify headers and the crc chain, rebuild the
//! log view, and decide how the last write ended.
//!
//! Only the last write can be torn: the writer issues a write only after the previous one's
//! fdatasync returned, and never has two in flight. So a record that fails to verify is a torn
//! tail exactly when (a) it is in the last segment holding data, (b) nothing but zeros lies more
//! than one write window past it, and (c) it overlaps a sector that is still all zero (the
//! write never reached it; a bit flip leaves no such hole). Anything else is corruption, and
//! opening refuses with the file and offset. A cut tail is zeroed on disk at once, so the
//! segment again holds records followed by zeros only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::format::{
    self, first_nonzero, has_zero_sector_piece, ScanStop, SegmentHeader, RECORD_FRAME_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::prealloc::{parse_segment_name, write_all, ReadySegment, TEMP_SUFFIX};
use super::storage::{SegmentFile, Storage, WriteBuf};
use super::view::{Loc, LogView};
use super::{record_payload_bytes_max, TornTail, WalError, WalOptions};

/// A segment that holds records.
pub struct SegInfo<F> {
    pub file: Rc<F>,
    pub path: PathBuf,
    /// Highest entry index written in it (0 if none): purge may drop it once a snapshot covers
    /// this index.
    pub max_entry_index: u64,
    /// The key sealing its payloads (0: plaintext).
    pub key_id: u32,
}

/// Where the next record goes.
pub struct Tail {
    pub seq: u64,
    pub offset: u64,
    pub segment_bytes: u64,
    /// The bytes of the partial sector before `offset`, which the next write rewrites.
    pub sector_prefix: Vec<u8>,
}

pub struct Disk<F> {
    pub view: LogView,
    pub segs: BTreeMap<u64, SegInfo<F>>,
    pub tail: Option<Tail>,
    pub chain_crc: u32,
    /// Zero-filled segments after the tail, ready for use, in sequence order.
    pub ready: Vec<ReadySegment<F>>,
    pub next_seq: u64,
    pub torn_tail: Option<TornTail>,
}

/// The bytes one write may span: the batch bound plus a segment header and alignment slack
/// at both ends.
pub fn torn_window_bytes(batch_bytes_max: u64, alignment_bytes: u64) -> u64 {
    batch_bytes_max + SEGMENT_HEADER_BYTES as u64 + 2 * alignment_bytes.max(4096)
}

struct Loaded<F: SegmentFile> {
    seq: u64,
    path: PathBuf,
    file: Rc<F>,
    bytes: F::ReadBuf,
    /// None when the header did not verify (reason kept for the error).
    header: Result<SegmentHeader, &'static str>,
    stop: ScanStop,
}

pub enum Ending {
    Clean { end: u64 },
    Torn { at: u64, dirty_end: u64 },
}

pub async fn recover<S: Storage>(
    storage: &S,
    dir: &Path,
    opts: &WalOptions,
) -> Result<Disk<S::File>, WalError> {
    let io = |e| WalError::io(dir, e);
    storage.create_dir_all(dir).await.map_err(io)?;
    let mut seqs = Vec::new();
    for name in storage.list(dir).await.map_err(io)? {
        if name.ends_with(TEMP_SUFFIX) {
            // A segment the preallocator did not finish; it never held records.
            storage.remove(&dir.join(&name)).await.map_err(io)?;
        } else if let Some(seq) = parse_segment_name(&name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    if let Some(w) = seqs.windows(2).find(|w| w[1] != w[0] + 1) {
        return Err(corrupt(
            &seg_path(dir, w[1]),
            0,
            "segment sequence has a gap before this file",
        ));
    }

    let mut view: Option<LogView> = None;
    let mut segs = BTreeMap::new();
    let mut chain_crc = 0u32;
    let mut last: Option<Loaded<S::File>> = None;
    let mut last_clean_end: Option<u64> = None;
    let mut zeros: Vec<(u64, PathBuf, Rc<S::File>, u64)> = Vec::new();

    for seq in seqs {
        let path = seg_path(dir, seq);
        let pio = |e| WalError::io(&path, e);
        let file = Rc::new(storage.open(&path).await.map_err(pio)?);
        let size = file.size_bytes().await.map_err(pio)?;
        let bytes = file.read_at(0, size as usize).await.map_err(pio)?;
        if first_nonzero(&bytes, 0).is_none() {
            zeros.push((seq, path, file, size));
            continue;
        }
        if let Some((_, zpath, _, _)) = zeros.first() {
            return Err(corrupt(
                zpath,
                0,
                "empty segment before a segment with records",
            ));
        }
        if let Some(prev) = last.take() {
            match judge(&prev, false, opts)? {
                Ending::Clean { end } => last_clean_end = Some(end),
                Ending::Torn { .. } => unreachable!("only the last segment can be torn"),
            }
        }
        let header = SegmentHeader::decode(&bytes);
        let mut stop = ScanStop::Zero { offset: 0 };
        if let Ok(h) = header {
            if h.seq != seq || h.segment_bytes != size {
                return Err(corrupt(&path, 0, "segment header does not match its file"));
            }
            let keyring = opts.keyring.as_ref().map(|k| k.load_full());
            format::check_segment_key(&h, keyring.as_deref())
                .map_err(|problem| WalError::key(&path, h.key_id, problem))?;
            // The oldest segment left after a purge may rewrite entries below its header's
            // first index (an overwrite after the roll), whose older copies were purged.
            let oldest = view.is_none();
            match &view {
                Some(_) if h.chain_seed != chain_crc => {
                    return Err(corrupt(
                        &path,
                        40,
                        "crc chain does not continue from the previous segment",
                    ))
                }
                Some(_) => {}
                None => view = Some(LogView::anchored_at(h.first_index)),
            }
            let v = view.as_mut().expect("set above");
            let mut records = Vec::new();
            let payload_max = record_payload_bytes_max(h.batch_bytes_max as usize);
            let (crc, s) = format::scan_records(
                &bytes,
                SEGMENT_HEADER_BYTES,
                h.chain_seed,
                payload_max,
                |r| records.push(r),
            );
            let mut max_entry_index = 0;
            let mut prev_crc = h.chain_seed;
            for r in &records {
                // State records are opened now (the view keeps their payloads); entries when
                // read, which checks them again anyway.
                let opened = match (&keyring, r.kind) {
                    (Some(ring), kind) if h.is_sealed() && kind.holds_state() => {
                        let sealing = format::Sealing {
                            keyring: ring,
                            key_id: h.key_id,
                            seq,
                            offset: r.offset,
                        };
                        Some(format::open_payload(sealing, r).map_err(|_| {
                            WalError::unauthentic(
                                &path,
                                r.offset,
                                &format!("{} record", r.kind.name()),
                                h.key_id,
                            )
                        })?)
                    }
                    _ => None,
                };
                let rec = super::RecordRef {
                    kind: r.kind,
                    term: r.term,
                    index: r.index,
                    payload: opened.as_deref().unwrap_or(r.payload),
                };
                if r.carried {
                    if matches!(
                        r.kind,
                        super::RecordKind::Entry | super::RecordKind::Truncate
                    ) {
                        return Err(corrupt(&path, r.offset, "log record marked as carried"));
                    }
                    v.restate(&rec);
                    prev_crc = r.crc;
                    continue;
                }
                if oldest {
                    v.reanchor_for(&rec);
                }
                v.bounds()
                    .step(&rec)
                    .map_err(|e| corrupt(&path, r.offset, &e.to_string()))?;
                let loc = Loc {
                    seg: seq,
                    offset: r.offset,
                    payload_len: r.payload.len() as u32,
                    prev_crc,
                };
                v.apply(&rec, loc);
                if r.kind == super::RecordKind::Entry {
                    max_entry_index = max_entry_index.max(r.index);
                }
                prev_crc = r.crc;
            }
            chain_crc = crc;
            stop = s;
            segs.insert(
                seq,
                SegInfo {
                    file: Rc::clone(&file),
                    path: path.clone(),
                    max_entry_index,
                    key_id: h.key_id,
                },
            );
        }
        last = Some(Loaded {
            seq,
            path,
            file,
            bytes,
            header,
            stop,
        });
    }

    let mut torn_tail = None;
    let mut tail = None;
    let mut ready = Vec::new();
    if let Some(l) = last {
        match judge(&l, true, opts)? {
            Ending::Clean { end } => tail = Some(make_tail(&l, end)),
            Ending::Torn { at, dirty_end } => {
                zero_range(&*l.file, &l.bytes, at, dirty_end)
                    .await
                    .map_err(|e| WalError::io(&l.path, e))?;
                torn_tail = Some(TornTail {
                    file: l.path.clone(),
                    offset: at,
                });
                if l.header.is_ok() {
                    tail = Some(make_tail(&l, at));
                } else {
                    // The very first write of this segment was torn: it is an empty segment
                    // again, and the tail is where the previous one ended.
                    ready.push((l.seq, l.file));
                    if let (Some(end), Some((&seq, info))) =
                        (last_clean_end, segs.iter().next_back())
                    {
                        let bytes = info
                            .file
                            .read_at(0, end as usize)
                            .await
                            .map_err(|e| WalError::io(&info.path, e))?;
                        let seg_bytes = info
                            .file
                            .size_bytes()
                            .await
                            .map_err(|e| WalError::io(&info.path, e))?;
                        tail = Some(Tail {
                            seq,
                            offset: end,
                            segment_bytes: seg_bytes,
                            sector_prefix: sector_prefix(&*info.file, &bytes, end),
                        });
                    }
                }
            }
        }
    }
    let mut next_seq = match (&tail, segs.keys().next_back()) {
        (_, Some(&seq)) => seq + 1,
        (None, None) => 0,
        (Some(_), None) => unreachable!("a tail is always in a used segment"),
    };
    if let Some((seq, _)) = ready.first() {
        next_seq = seq + 1;
    }
    for (seq, path, file, size) in zeros {
        // Reuse empty segments only while they continue the sequence at the configured size;
        // anything after the first misfit is removed and made again.
        if seq == next_seq && size == opts.segment_bytes {
            ready.push((seq, file));
            next_seq += 1;
        } else {
            storage
                .remove(&path)
                .await
                .map_err(|e| WalError::io(&path, e))?;
        }
    }
    let view = view.unwrap_or_default();
    Ok(Disk {
        view,
        segs,
        tail,
        chain_crc,
        ready,
        next_seq,
        torn_tail,
    })
}

/// Decides how a segment's records ended; `is_last` allows a torn tail.
fn judge<F: SegmentFile>(
    l: &Loaded<F>,
    is_last: bool,
    opts: &WalOptions,
) -> Result<Ending, WalError> {
    classify_end(
        &l.bytes,
        l.header,
        l.stop,
        is_last,
        opts.batch_bytes_max as u64,
    )
    .map_err(|(offset, reason)| corrupt(&l.path, offset, reason))
}

/// How a segment's records ended. `stop` is where the scan stopped (ignored when the header
/// failed); `batch_bytes_fallback` sizes the torn window when there is no header to read it
/// from. The error is the offset and reason of corruption.
pub fn classify_end(
    bytes: &[u8],
    header: Result<SegmentHeader, &'static str>,
    stop: ScanStop,
    is_last: bool,
    batch_bytes_fallback: u64,
) -> Result<Ending, (u64, &'static str)> {
    let (at, span_end, reason, window) = match (header, stop) {
        (Err(reason), _) => (0, SEGMENT_HEADER_BYTES as u64, reason, batch_bytes_fallback),
        (Ok(h), ScanStop::Zero { offset }) => {
            if first_nonzero(bytes, offset as usize).is_none() {
                return Ok(Ending::Clean { end: offset });
            }
            let span_end = offset + RECORD_FRAME_BYTES as u64;
            (
                offset,
                span_end,
                "records continue after an empty frame",
                h.batch_bytes_max as u64,
            )
        }
        (
            Ok(h),
            ScanStop::Bad {
                offset,
                span_end,
                reason,
            },
        ) => (offset, span_end, reason, h.batch_bytes_max as u64),
    };
    let alignment = header.map_or(4096, |h| h.alignment_bytes as u64);
    let dirty_end = (at + torn_window_bytes(window, alignment)).min(bytes.len() as u64);
    let torn = is_last
        && first_nonzero(bytes, dirty_end as usize).is_none()
        && has_zero_sector_piece(bytes, at as usize, span_end as usize);
    if torn {
        Ok(Ending::Torn { at, dirty_end })
    } else {
        Err((at, reason))
    }
}

fn make_tail<F: SegmentFile>(l: &Loaded<F>, end: u64) -> Tail {
    let h = l.header.expect("a tail segment has a valid header");
    Tail {
        seq: l.seq,
        offset: end,
        segment_bytes: h.segment_bytes,
        sector_prefix: sector_prefix(&*l.file, &l.bytes, end),
    }
}

fn sector_prefix<F: SegmentFile>(file: &F, bytes: &[u8], end: u64) -> Vec<u8> {
    let align = file.alignment_bytes() as u64;
    bytes[(end / align * align) as usize..end as usize].to_vec()
}

/// Overwrites `[from, to)` with zeros, keeping the bytes before `from` in its sector, then syncs.
async fn zero_range<F: SegmentFile>(
    file: &F,
    bytes: &[u8],
    from: u64,
    to: u64,
) -> std::io::Result<()> {
    let align = file.alignment_bytes() as u64;
    let start = from / align * align;
    let end = to.next_multiple_of(align).min(bytes.len() as u64);
    if end <= start {
        return Ok(());
    }
    let mut buf = file.alloc((end - start) as usize);
    let b = buf.bytes_mut();
    let keep = (from - start) as usize;
    b[..keep].copy_from_slice(&bytes[start as usize..from as usize]);
    b[keep..].fill(0);
    write_all(file, &Rc::new(buf), start).await?;
    file.fdatasync().await
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(super::prealloc::segment_name(seq))
}

fn corrupt(file: &Path, offset: u64, reason: &str) -> WalError {
    WalError::Corrupt {
        file: file.to_path_buf(),
        offset,
        reason: reason.to_string(),
    }
}
