//! The on-disk bytes of a WAL segment: the segment header, the record frame, and the scanner
//! that reads them back. Pure functions over byte slices, shared by recovery and `dump-log`.
//!
//! A segment file is `segment_bytes` long, pre-zeroed before first use:
//!
//! ```text
//! offset 0                                                      64
//! +----------------+----------------------------------------------+
//! | segment header | record | record | ... | record | 0 0 0 0 ... |
//! +----------------+----------------------------------------------+
//!                   each record is 8-byte aligned   zero fill to segment_bytes
//! ```
//!
//! Segment header (64 bytes, little-endian):
//!
//! ```text
//!  0        8     10     12          16        24            32              40     44        48        60    64
//!  +--------+-----+------+-----------+---------+-------------+---------------+------+---------+---------+-----+
//!  | magic  | ver | hdr  | alignment | seq     | first_index | segment_bytes | seed | batch   | 0 (12)  | crc |
//!  | 8 B    | u16 | u16  | u32       | u64     | u64         | u64           | u32  | max u32 |         | u32 |
//!  +--------+-----+------+-----------+---------+-------------+---------------+------+---------+---------+-----+
//! ```
//! `magic` is `BASALTWL`, `ver` is [`FORMAT_VERSION`], `hdr` is 64. `seed` is the crc chain
//! value carried over from the last record of the previous segment (0 for the first segment), so
//! the chain runs unbroken across files. `batch max` is the writer's bound on one write, which
//! recovery needs to tell a torn tail from corruption. `crc` is crc32c of bytes 0..60.
//!
//! Record (32-byte frame + payload, little-endian):
//!
//! ```text
//!  0      1       2         4           8        16        24     28        32
//!  +------+-------+---------+-----------+--------+---------+------+---------+-----------------+--------+
//!  | kind | flags | 0 (2 B) | len u32   | term   | index   | crc  | 0 (4 B) | payload (len B) | 0 pad  |
//!  | u8   | u8    |         |           | u64    | u64     | u32  |         |                 | to 8 B |
//!  +------+-------+---------+-----------+--------+---------+------+---------+-----------------+--------+
//! ```
//! `flags` bit 0 ([`FLAG_CARRIED`]) marks a record that a segment repeats at its start (latest
//! metadata, hard state, snapshot marker) so that it stands alone once older segments are
//! purged; such a record restates state and never changes the entry log. Other bits are zero.
//! `crc` = crc32c continued from the previous record's crc (or the segment seed) over frame bytes
//! 0..24 followed by the payload. Kind 0 never appears in a record: a zero kind byte is the
//! pre-zeroed space after the last record.

use super::RecordKind;

/// Bumped whenever a byte above changes meaning; older segments are refused by number.
pub const FORMAT_VERSION: u16 = 1;
pub const MAGIC: [u8; 8] = *b"BASALTWL";
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_FRAME_BYTES: usize = 32;
/// Records start on 8-byte boundaries so frames can be read with aligned loads.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// The smallest unit the medium writes atomically. A torn write leaves whole sectors of old
/// content (zeros, as segments are pre-zeroed), which is how recovery tells it from a bit flip.
pub const TORN_SECTOR_BYTES: usize = 512;
/// Record flag: a copy carried to the start of a segment, see the layout above.
pub const FLAG_CARRIED: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub alignment_bytes: u32,
    pub seq: u64,
    pub first_index: u64,
    pub segment_bytes: u64,
    pub chain_seed: u32,
    pub batch_bytes_max: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_BYTES as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.alignment_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_index.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[40..44].copy_from_slice(&self.chain_seed.to_le_bytes());
        b[44..48].copy_from_slice(&self.batch_bytes_max.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header; the error says which check failed.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, &'static str> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err("segment shorter than its header");
        }
        if b[0..8] != MAGIC {
            return Err("bad segment magic");
        }
        if u32_at(b, 60) != crc32c::crc32c(&b[0..60]) {
            return Err("segment header checksum mismatch");
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err("unsupported segment format version");
        }
        if u16::from_le_bytes([b[10], b[11]]) as usize != SEGMENT_HEADER_BYTES {
            return Err("unexpected segment header size");
        }
        Ok(SegmentHeader {
            alignment_bytes: u32_at(b, 12),
            seq: u64_at(b, 16),
            first_index: u64_at(b, 24),
            segment_bytes: u64_at(b, 32),
            chain_seed: u32_at(b, 40),
            batch_bytes_max: u32_at(b, 44),
        })
    }
}

/// Bytes a record with `payload_len` bytes of payload takes in a segment, padding included.
pub fn record_bytes(payload_len: usize) -> usize {
    RECORD_FRAME_BYTES + payload_len.next_multiple_of(RECORD_ALIGN_BYTES)
}

/// Appends one framed record to `out` and returns its chained crc.
pub fn encode_record(
    out: &mut Vec<u8>,
    prev_crc: u32,
    flags: u8,
    kind: RecordKind,
    term: u64,
    index: u64,
    payload: &[u8],
) -> u32 {
    let start = out.len();
    debug_assert_eq!(start % RECORD_ALIGN_BYTES, 0, "records stay 8-byte aligned");
    let len = u32::try_from(payload.len()).expect("payload length is bounded by batch_bytes_max");
    let mut frame = [0u8; RECORD_FRAME_BYTES];
    frame[0] = kind as u8;
    frame[1] = flags;
    frame[4..8].copy_from_slice(&len.to_le_bytes());
    frame[8..16].copy_from_slice(&term.to_le_bytes());
    frame[16..24].copy_from_slice(&index.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(prev_crc, &frame[0..24]), payload);
    frame[24..28].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&frame);
    out.extend_from_slice(payload);
    out.resize(start + record_bytes(payload.len()), 0);
    crc
}

/// One record as found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub kind: RecordKind,
    pub term: u64,
    pub index: u64,
    pub crc: u32,
    /// A copy carried to the segment start ([`FLAG_CARRIED`]).
    pub carried: bool,
    pub payload: &'a [u8],
}

/// Where and why a scan of a segment's records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStop {
    /// A zero kind byte: the pre-zeroed space after the last record.
    Zero { offset: u64 },
    /// A frame that does not verify. `span_end` is where the record claims to end (clamped to
    /// the segment), the range a torn write would have left zero sectors in.
    Bad {
        offset: u64,
        span_end: u64,
        reason: &'static str,
    },
}

impl ScanStop {
    pub fn offset(&self) -> u64 {
        match *self {
            ScanStop::Zero { offset } | ScanStop::Bad { offset, .. } => offset,
        }
    }
}

/// Walks the records of `segment` from `start`, verifying each frame and the crc chain from
/// `seed`, calling `visit` on each good record. Returns the chain value after the last good
/// record and where the walk stopped.
pub fn scan_records<'a>(
    segment: &'a [u8],
    start: usize,
    seed: u32,
    record_payload_bytes_max: usize,
    mut visit: impl FnMut(RecordView<'a>),
) -> (u32, ScanStop) {
    let mut at = start;
    let mut crc = seed;
    loop {
        if at + RECORD_FRAME_BYTES > segment.len() {
            // A segment whose tail is too short for another frame ends here; the bytes left
            // must be zero like any other unused space.
            return (crc, ScanStop::Zero { offset: at as u64 });
        }
        let frame = &segment[at..at + RECORD_FRAME_BYTES];
        if frame[0] == 0 {
            return (crc, ScanStop::Zero { offset: at as u64 });
        }
        let bad = |reason, span_end: usize| ScanStop::Bad {
            offset: at as u64,
            span_end: span_end.min(segment.len()) as u64,
            reason,
        };
        let frame_end = at + RECORD_FRAME_BYTES;
        let Some(kind) = RecordKind::from_u8(frame[0]) else {
            return (crc, bad("unknown record kind", frame_end));
        };
        if frame[1] & !FLAG_CARRIED != 0 || frame[2..4] != [0; 2] || frame[28..32] != [0; 4] {
            return (crc, bad("reserved record bytes are not zero", frame_end));
        }
        let len = u32_at(frame, 4) as usize;
        if len > record_payload_bytes_max || at + record_bytes(len) > segment.len() {
            return (crc, bad("record length out of range", frame_end));
        }
        let end = at + record_bytes(len);
        let payload = &segment[frame_end..frame_end + len];
        let want = crc32c::crc32c_append(crc32c::crc32c_append(crc, &frame[0..24]), payload);
        if u32_at(frame, 24) != want {
            return (crc, bad("record checksum mismatch", end));
        }
        if segment[frame_end + len..end].iter().any(|&b| b != 0) {
            return (crc, bad("record padding is not zero", end));
        }
        crc = want;
        visit(RecordView {
            offset: at as u64,
            kind,
            term: u64_at(frame, 8),
            index: u64_at(frame, 16),
            crc,
            carried: frame[1] & FLAG_CARRIED != 0,
            payload,
        });
        at = end;
    }
}

/// True if `[from, to)` of `bytes`, cut at sector boundaries, has a piece that is all zero:
/// the mark of a write that did not reach every sector (etcd calls this a torn entry).
pub fn has_zero_sector_piece(bytes: &[u8], from: usize, to: usize) -> bool {
    let to = to.min(bytes.len());
    let mut at = from;
    while at < to {
        let piece_end = (at / TORN_SECTOR_BYTES + 1) * TORN_SECTOR_BYTES;
        let piece = &bytes[at..piece_end.min(to)];
        if piece.iter().all(|&b| b == 0) {
            return true;
        }
        at = piece_end;
    }
    false
}

pub fn first_nonzero(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|&b| b != 0)
        .map(|p| p + from)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_records() -> Vec<u8> {
        let mut seg = vec![0u8; 4096];
        let mut out = Vec::new();
        let c = encode_record(&mut out, 7, 0, RecordKind::Entry, 2, 10, b"hello");
        encode_record(
            &mut out,
            c,
            FLAG_CARRIED,
            RecordKind::HardState,
            2,
            0,
            &[9; 13],
        );
        seg[64..64 + out.len()].copy_from_slice(&out);
        seg
    }

    fn scan(seg: &[u8], seed: u32) -> (Vec<(RecordKind, u64)>, ScanStop) {
        let mut seen = Vec::new();
        let (_, stop) = scan_records(seg, 64, seed, 1 << 20, |r| seen.push((r.kind, r.index)));
        (seen, stop)
    }

    #[test]
    fn header_round_trips_and_rejects_any_flipped_bit() {
        let h = SegmentHeader {
            alignment_bytes: 4096,
            seq: 3,
            first_index: 99,
            segment_bytes: 1 << 26,
            chain_seed: 0xdead_beef,
            batch_bytes_max: 1 << 23,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::decode(&b).is_err(),
                "bit {bit} flip accepted"
            );
        }
    }

    #[test]
    fn records_scan_back_in_order_and_stop_at_the_zero_fill() {
        let seg = two_records();
        let (seen, stop) = scan(&seg, 7);
        assert_eq!(
            seen,
            vec![(RecordKind::Entry, 10), (RecordKind::HardState, 0)]
        );
        let end = 64 + record_bytes(5) + record_bytes(13);
        assert_eq!(stop, ScanStop::Zero { offset: end as u64 });
    }

    #[test]
    fn a_wrong_chain_seed_fails_the_first_record() {
        let (seen, stop) = scan(&two_records(), 8);
        assert!(seen.is_empty());
        assert!(matches!(stop, ScanStop::Bad { offset: 64, .. }));
    }

    #[test]
    fn any_flipped_bit_in_a_record_stops_the_scan_at_that_record() {
        let clean = two_records();
        let second = 64 + record_bytes(5);
        let end = second + record_bytes(13);
        for bit in (second * 8)..(end * 8) {
            let mut seg = clean.clone();
            seg[bit / 8] ^= 1 << (bit % 8);
            let (seen, stop) = scan(&seg, 7);
            assert_eq!(seen.len(), 1, "bit {bit}");
            assert_eq!(stop.offset(), second as u64, "bit {bit}");
        }
    }

    #[test]
    fn zero_sector_pieces_are_found_only_where_a_whole_piece_is_zero() {
        let mut b = vec![1u8; 2048];
        assert!(!has_zero_sector_piece(&b, 100, 2048));
        b[512..1024].fill(0);
        assert!(has_zero_sector_piece(&b, 100, 2048));
        assert!(!has_zero_sector_piece(&b, 100, 512));
        // A piece cut short by the range end counts on its own.
        assert!(has_zero_sector_piece(&b, 1000, 1024));
    }
}
