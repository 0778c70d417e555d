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
//!  0        8     10     12          16        24            32              40     44        48       52          60    64
//!  +--------+-----+------+-----------+---------+-------------+---------------+------+---------+--------+-----------+-----+
//!  | magic  | ver | hdr  | alignment | seq     | first_index | segment_bytes | seed | batch   | key id | key check | crc |
//!  | 8 B    | u16 | u16  | u32       | u64     | u64         | u64           | u32  | max u32 | u32    | 8 B       | u32 |
//!  +--------+-----+------+-----------+---------+-------------+---------------+------+---------+--------+-----------+-----+
//! ```
//! `magic` is `BASALTWL`, `ver` is [`FORMAT_VERSION`], `hdr` is 64. `seed` is the crc chain
//! value carried over from the last record of the previous segment (0 for the first segment), so
//! the chain runs unbroken across files. `batch max` is the writer's bound on one write, which
//! recovery needs to tell a torn tail from corruption. `key id` names the key of the
//! `--encryption-key-file` that seals every record payload of the segment (0: plaintext), and
//! `key check` is the first 8 bytes of that key's [`Keyring::key_check`], so a wrong key is
//! refused as such before any record is read. `crc` is crc32c of bytes 0..60. Version 1 (before
//! encryption) had zeros at 48..60 and is read as a plaintext segment.
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
//! 0..24 followed by the payload as stored. Kind 0 never appears in a record: a zero kind byte is
//! the pre-zeroed space after the last record.
//!
//! In a segment with a key id, the stored payload is the record's payload sealed with
//! AES-256-GCM, and `len` counts the stored bytes:
//!
//! ```text
//!  +-----------+---------------------------+---------+
//!  | nonce 12B | ciphertext (payload len)  | tag 16B |
//!  +-----------+---------------------------+---------+
//! ```
//! The nonce is random for every record: a torn tail is rewritten at the same offset, so no
//! nonce may be derived from a position. The associated data ([`record_aad`]) is the segment's
//! seq, the record's offset and frame bytes 0..24 (kind, flags, stored length, term, index), so
//! a sealed payload opens only in the record it was written as. The crc stays over the stored
//! bytes: torn writes and bit flips are found as in a plaintext segment, before any decryption.

use crate::crypt::{self, Keyring, NONCE_BYTES, TAG_BYTES};

use super::RecordKind;

/// Bumped whenever a byte above changes meaning. Version 1 (no key id) is still read; other
/// versions are refused by number.
pub const FORMAT_VERSION: u16 = 2;
/// The last version without encryption: its key id bytes are read as zero.
const FORMAT_VERSION_PLAINTEXT: u16 = 1;
/// Bytes of the key check a segment header keeps.
pub const KEY_CHECK_BYTES: usize = 8;
/// Bytes a sealed payload adds to the payload: its nonce and tag.
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES;
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
    /// The key that seals this segment's payloads ([`crypt::PLAINTEXT_KEY_ID`]: none).
    pub key_id: u32,
    /// The start of that key's key check (zeros for a plaintext segment).
    pub key_check: [u8; KEY_CHECK_BYTES],
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
        b[48..52].copy_from_slice(&self.key_id.to_le_bytes());
        b[52..60].copy_from_slice(&self.key_check);
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
        if version != FORMAT_VERSION && version != FORMAT_VERSION_PLAINTEXT {
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
            key_id: match version {
                FORMAT_VERSION_PLAINTEXT => crypt::PLAINTEXT_KEY_ID,
                _ => u32_at(b, 48),
            },
            key_check: match version {
                FORMAT_VERSION_PLAINTEXT => [0; KEY_CHECK_BYTES],
                _ => b[52..60].try_into().expect("8 bytes"),
            },
        })
    }

    pub fn is_sealed(&self) -> bool {
        self.key_id != crypt::PLAINTEXT_KEY_ID
    }
}

/// The key id and key check a new segment's header records for `keyring`'s current key
/// (plaintext without a keyring).
pub fn segment_key(keyring: Option<&Keyring>) -> (u32, [u8; KEY_CHECK_BYTES]) {
    match keyring {
        None => (crypt::PLAINTEXT_KEY_ID, [0; KEY_CHECK_BYTES]),
        Some(ring) => {
            let id = ring.current_id();
            let check = ring.key_check(id).expect("a keyring holds its current key");
            (id, check[..KEY_CHECK_BYTES].try_into().expect("8 bytes"))
        }
    }
}

/// Why a segment's key cannot open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// The segment is sealed and no key file was given.
    NoKeyFile,
    /// The key file has no key with the segment's id.
    UnknownId,
    /// The key file's key with that id is not the one that sealed the segment.
    WrongKey,
}

/// Whether `keyring` can open a segment with this header.
pub fn check_segment_key(h: &SegmentHeader, keyring: Option<&Keyring>) -> Result<(), KeyProblem> {
    if !h.is_sealed() {
        return Ok(());
    }
    let ring = keyring.ok_or(KeyProblem::NoKeyFile)?;
    if !ring.has(h.key_id) {
        return Err(KeyProblem::UnknownId);
    }
    let check = ring
        .key_check(h.key_id)
        .map_err(|_| KeyProblem::UnknownId)?;
    match check[..KEY_CHECK_BYTES] == h.key_check {
        true => Ok(()),
        false => Err(KeyProblem::WrongKey),
    }
}

/// Where a sealed record sits, which its associated data binds it to.
#[derive(Debug, Clone, Copy)]
pub struct Sealing<'a> {
    pub keyring: &'a Keyring,
    pub key_id: u32,
    pub seq: u64,
    /// Offset of the record's frame in the segment.
    pub offset: u64,
}

/// The associated data of a sealed record: segment seq, record offset, frame bytes 0..24.
pub fn record_aad(seq: u64, offset: u64, frame_head: &[u8]) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[0..8].copy_from_slice(&seq.to_le_bytes());
    aad[8..16].copy_from_slice(&offset.to_le_bytes());
    aad[16..40].copy_from_slice(&frame_head[0..24]);
    aad
}

/// The payload of a record read from a sealed segment, or why it does not open (damage, a
/// record moved from elsewhere, or a key that is not the sealing one).
pub fn open_payload(
    sealing: Sealing<'_>,
    record: &RecordView<'_>,
) -> Result<Vec<u8>, crypt::Error> {
    let stored = record.payload;
    if stored.len() < SEAL_OVERHEAD_BYTES {
        return Err(crypt::Error::Authentication { id: sealing.key_id });
    }
    let head = frame_head(
        record.kind,
        if record.carried { FLAG_CARRIED } else { 0 },
        stored.len() as u32,
        record.term,
        record.index,
    );
    let aad = record_aad(sealing.seq, sealing.offset, &head);
    let nonce: [u8; NONCE_BYTES] = stored[..NONCE_BYTES].try_into().expect("12 bytes");
    let tag_at = stored.len() - TAG_BYTES;
    let tag: [u8; TAG_BYTES] = stored[tag_at..].try_into().expect("16 bytes");
    let mut plain = stored[NONCE_BYTES..tag_at].to_vec();
    sealing
        .keyring
        .open(sealing.key_id, nonce, &aad, &mut plain, &tag)?;
    Ok(plain)
}

fn frame_head(kind: RecordKind, flags: u8, len: u32, term: u64, index: u64) -> [u8; 24] {
    let mut head = [0u8; 24];
    head[0] = kind as u8;
    head[1] = flags;
    head[4..8].copy_from_slice(&len.to_le_bytes());
    head[8..16].copy_from_slice(&term.to_le_bytes());
    head[16..24].copy_from_slice(&index.to_le_bytes());
    head
}

/// Bytes a record with `payload_len` bytes stored takes in a segment, padding included.
pub fn record_bytes(payload_len: usize) -> usize {
    RECORD_FRAME_BYTES + payload_len.next_multiple_of(RECORD_ALIGN_BYTES)
}

/// Bytes a payload of `payload_len` takes stored: sealed payloads carry a nonce and a tag.
pub fn stored_payload_bytes(payload_len: usize, sealed: bool) -> usize {
    match sealed {
        true => payload_len + SEAL_OVERHEAD_BYTES,
        false => payload_len,
    }
}

/// Appends one framed record to `out` (sealing its payload when `sealing` says so) and returns
/// its chained crc.
#[allow(clippy::too_many_arguments)]
pub fn encode_record(
    out: &mut Vec<u8>,
    prev_crc: u32,
    flags: u8,
    kind: RecordKind,
    term: u64,
    index: u64,
    payload: &[u8],
    sealing: Option<Sealing<'_>>,
) -> u32 {
    let start = out.len();
    debug_assert_eq!(start % RECORD_ALIGN_BYTES, 0, "records stay 8-byte aligned");
    let stored_len = stored_payload_bytes(payload.len(), sealing.is_some());
    let len = u32::try_from(stored_len).expect("payload length is bounded by batch_bytes_max");
    let mut frame = [0u8; RECORD_FRAME_BYTES];
    frame[0..24].copy_from_slice(&frame_head(kind, flags, len, term, index));
    out.extend_from_slice(&frame);
    let payload_at = out.len();
    match sealing {
        None => out.extend_from_slice(payload),
        Some(s) => {
            let nonce = s
                .keyring
                .random_nonce()
                .expect("the system random source works");
            out.extend_from_slice(&nonce);
            out.extend_from_slice(payload);
            let aad = record_aad(s.seq, s.offset, &frame[0..24]);
            let tag = s
                .keyring
                .seal(s.key_id, nonce, &aad, &mut out[payload_at + NONCE_BYTES..])
                .expect("a segment is sealed with a key its keyring holds");
            out.extend_from_slice(&tag);
        }
    }
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(prev_crc, &frame[0..24]),
        &out[payload_at..],
    );
    out[start + 24..start + 28].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_bytes(stored_len), 0);
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
        let c = encode_record(&mut out, 7, 0, RecordKind::Entry, 2, 10, b"hello", None);
        encode_record(
            &mut out,
            c,
            FLAG_CARRIED,
            RecordKind::HardState,
            2,
            0,
            &[9; 13],
            None,
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
            key_id: 7,
            key_check: [1, 2, 3, 4, 5, 6, 7, 8],
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
    fn a_version_1_header_reads_as_a_plaintext_segment() {
        let h = SegmentHeader {
            alignment_bytes: 4096,
            seq: 3,
            first_index: 99,
            segment_bytes: 1 << 26,
            chain_seed: 5,
            batch_bytes_max: 1 << 23,
            key_id: 0,
            key_check: [0; KEY_CHECK_BYTES],
        };
        let mut bytes = h.encode();
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        assert!(SegmentHeader::decode(&bytes).is_err());
    }

    #[test]
    fn a_sealed_record_opens_only_where_it_was_written() {
        let ring = Keyring::single(4, &[3; 32]);
        let sealing = |offset| Sealing {
            keyring: &ring,
            key_id: 4,
            seq: 9,
            offset,
        };
        let mut seg = vec![0u8; 4096];
        let mut out = Vec::new();
        encode_record(
            &mut out,
            0,
            0,
            RecordKind::Entry,
            2,
            10,
            b"hello",
            Some(sealing(64)),
        );
        assert_eq!(out.len(), record_bytes(5 + SEAL_OVERHEAD_BYTES));
        assert!(!out.windows(5).any(|w| w == b"hello"));
        seg[64..64 + out.len()].copy_from_slice(&out);
        let mut seen = Vec::new();
        scan_records(&seg, 64, 0, 1 << 20, |r| seen.push(r));
        assert_eq!(seen.len(), 1, "the crc covers the stored bytes");
        assert_eq!(open_payload(sealing(64), &seen[0]).unwrap(), b"hello");
        assert!(open_payload(sealing(72), &seen[0]).is_err(), "moved");
        let other_seq = Sealing {
            seq: 8,
            ..sealing(64)
        };
        assert!(open_payload(other_seq, &seen[0]).is_err(), "other segment");
        let as_index_11 = RecordView {
            index: 11,
            ..seen[0]
        };
        assert!(
            open_payload(sealing(64), &as_index_11).is_err(),
            "renumbered"
        );
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
