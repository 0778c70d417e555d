//! The peer wire: frames, the handshake, and raft's structs as rkyv archives.
//!
//! Owns every byte that crosses a peer connection. Must never touch a socket or a file: the
//! stream and snapshot modules move the bytes this module builds and checks, in async tasks
//! and (for `fetch_cluster`) on a plain thread alike.
//!
//! A frame (integers big-endian):
//!
//! ```text
//!  0      4     5     6        8                 12                16                20
//!  +------+-----+-----+--------+-----------------+-----------------+-----------------+--------
//!  | BSLP | ver | kind| 0 0    | payload length  | payload crc32c  | header crc32c   | payload
//!  |magic | u8  | u8  | zero   | u32             | u32             | u32 of bytes    | (length
//!  |      | =1  |     |        |                 |                 | 0..16           |  bytes)
//!  +------+-----+-----+--------+-----------------+-----------------+-----------------+--------
//! ```
//!
//! The header has its own checksum so a corrupted length is caught before anything is
//! allocated or read for it; the payload checksum covers the payload alone. A change to any
//! layout below is a version bump that old readers refuse.
//!
//! Frame kinds and their payloads:
//!
//! ```text
//! 1 HELLO      dialer → acceptor, first frame of every connection (28 bytes):
//!              | 0..2 protocol version u16 | 2 stream u8 (1 raft, 2 snapshot, 3 cluster query,
//!              4 hash query)
//!              | 3 zero | 4..12 cluster id u64 | 12..20 sender id u64 | 20..28 receiver id u64 |
//!              A cluster query sends zeros for the ids it does not know yet.
//! 2 ACCEPT     acceptor → dialer: the handshake is accepted (empty)
//! 3 REFUSE     acceptor → dialer: why not (UTF-8 text); the acceptor closes
//! 4 MESSAGE    one raft message: an rkyv archive of `WireMessage`
//! 5 FORWARD    a follower's proposal for the leader (opaque bytes)
//! 6 SNAP_HEAD  | 0..8 file length u64 | 8.. rkyv archive of the Snap `WireMessage` |
//! 7 SNAP_CHUNK the next bytes of the snapshot file (at most `SNAPSHOT_CHUNK_BYTES`)
//! 8 SNAP_END   the sha256 of the whole file (32 bytes)
//! 9 SNAP_DONE  acceptor → dialer: | 0 ok u8 (1 installed, 0 discarded) | 1.. reason UTF-8 |
//! 10 CLUSTER   acceptor → dialer: a protobuf `etcdserverpb.MemberListResponse`; the cluster id
//!              is in its header
//! 11 LINK_HEARTBEAT  empty: a raft stream's writer sends it after a quiet interval, so the
//!              reader can tell a quiet stream from a dead one (etcd's link heartbeat)
//! 12 HASH_KV   on a hash query stream, dialer → acceptor: a protobuf `etcdserverpb.HashKVRequest`;
//!              acceptor → dialer: a protobuf `etcdserverpb.HashKVResponse` (or a REFUSE with
//!              etcd's error text, e.g. a compacted revision)
//! ```
//!
//! Kinds are only ever added: a member that does not know one refuses it (an unknown stream
//! kind in a HELLO, an unknown frame kind) and the asker treats that like an unreachable peer.
//!
//! rkyv archives use rkyv 0.8's default format (little-endian, 32-bit relative offsets) and
//! are validated (bytecheck) before use, so a payload that passed its checksum but was built
//! by a different layout is refused rather than misread.

use basalt_raft::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, ConfState, Entry,
    EntryData, Message, MessageType, Snapshot, SnapshotMetadata,
};
use rkyv::rancor;
use rkyv::util::AlignedVec;

/// The first bytes of every frame.
pub(crate) const MAGIC: [u8; 4] = *b"BSLP";
/// The frame layout and handshake this code speaks.
pub(crate) const VERSION: u8 = 1;
/// Protocol version a HELLO carries (the set of frame kinds and their payloads).
pub(crate) const PROTOCOL_VERSION: u16 = 1;
pub(crate) const HEADER_BYTES: usize = 20;
/// The largest payload a reader accepts. Raft messages are bounded by raft's own message size
/// limit plus one entry (at most `--max-request-bytes`); this is far above both and only stops
/// a bad header from making us allocate without bound.
pub(crate) const PAYLOAD_BYTES_MAX: u32 = 256 << 20;
const HELLO_BYTES: usize = 28;
const SHA256_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    Hello = 1,
    Accept = 2,
    Refuse = 3,
    Message = 4,
    Forward = 5,
    SnapHead = 6,
    SnapChunk = 7,
    SnapEnd = 8,
    SnapDone = 9,
    Cluster = 10,
    LinkHeartbeat = 11,
    HashKv = 12,
}

impl FrameKind {
    fn from_wire(kind: u8) -> Option<FrameKind> {
        use FrameKind::*;
        [
            Hello,
            Accept,
            Refuse,
            Message,
            Forward,
            SnapHead,
            SnapChunk,
            SnapEnd,
            SnapDone,
            Cluster,
            LinkHeartbeat,
            HashKv,
        ]
        .into_iter()
        .find(|k| *k as u8 == kind)
    }
}

/// Bytes that are not a frame of this version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a Basalt peer frame (bad magic)")]
    BadMagic,
    #[error("frame version {0} is not spoken here (this member speaks {VERSION})")]
    UnknownVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    #[error("frame payload checksum mismatch")]
    PayloadChecksum,
    #[error("frame payload of {0} bytes is over the limit")]
    TooLarge(u32),
    #[error("unexpected frame of kind {0} here")]
    Unexpected(u8),
    #[error("malformed {what} payload: {reason}")]
    Payload { what: &'static str, reason: String },
}

fn malformed(what: &'static str, reason: impl ToString) -> WireError {
    WireError::Payload {
        what,
        reason: reason.to_string(),
    }
}

/// A checked frame header: the payload that follows still has to match `payload_crc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub kind: FrameKind,
    pub payload_bytes: u32,
    pub payload_crc: u32,
}

/// Appends one frame to `out` (a batch buffer: several frames leave in one write).
pub(crate) fn encode_frame(out: &mut Vec<u8>, kind: FrameKind, payload: &[u8]) {
    let payload_bytes = u32::try_from(payload.len()).expect("payloads are bounded far below 4 GiB");
    debug_assert!(payload_bytes <= PAYLOAD_BYTES_MAX);
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5] = kind as u8;
    header[8..12].copy_from_slice(&payload_bytes.to_be_bytes());
    header[12..16].copy_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    let header_crc = crc32c::crc32c(&header[0..16]);
    header[16..20].copy_from_slice(&header_crc.to_be_bytes());
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// One frame on its own.
pub(crate) fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, kind, payload);
    out
}

pub(crate) fn decode_header(header: &[u8; HEADER_BYTES]) -> Result<FrameHeader, WireError> {
    if header[0..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let stored_crc = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[0..16]) != stored_crc {
        return Err(WireError::HeaderChecksum);
    }
    if header[4] != VERSION {
        return Err(WireError::UnknownVersion(header[4]));
    }
    let kind = FrameKind::from_wire(header[5]).ok_or(WireError::UnknownKind(header[5]))?;
    let payload_bytes = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    if payload_bytes > PAYLOAD_BYTES_MAX {
        return Err(WireError::TooLarge(payload_bytes));
    }
    Ok(FrameHeader {
        kind,
        payload_bytes,
        payload_crc: u32::from_be_bytes(header[12..16].try_into().expect("4 bytes")),
    })
}

pub(crate) fn check_payload(header: &FrameHeader, payload: &[u8]) -> Result<(), WireError> {
    debug_assert_eq!(payload.len(), header.payload_bytes as usize);
    match crc32c::crc32c(payload) == header.payload_crc {
        true => Ok(()),
        false => Err(WireError::PayloadChecksum),
    }
}

/// What a connection carries after its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// Raft messages and forwarded proposals, dialer → acceptor, for as long as both live.
    Raft = 1,
    /// One snapshot file, then the acceptor's verdict.
    Snapshot = 2,
    /// A joining member asks for the cluster's id and members.
    ClusterQuery = 3,
    /// The corruption check asks for a member's HashKV: one request, one answer.
    HashQuery = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub protocol_version: u16,
    pub stream: StreamKind,
    pub cluster_id: u64,
    pub from: u64,
    pub to: u64,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut payload = [0u8; HELLO_BYTES];
        payload[0..2].copy_from_slice(&self.protocol_version.to_be_bytes());
        payload[2] = self.stream as u8;
        payload[4..12].copy_from_slice(&self.cluster_id.to_be_bytes());
        payload[12..20].copy_from_slice(&self.from.to_be_bytes());
        payload[20..28].copy_from_slice(&self.to.to_be_bytes());
        frame(FrameKind::Hello, &payload)
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Hello, WireError> {
        let payload: &[u8; HELLO_BYTES] = payload
            .try_into()
            .map_err(|_| malformed("hello", format!("{} bytes", payload.len())))?;
        let stream = match payload[2] {
            1 => StreamKind::Raft,
            2 => StreamKind::Snapshot,
            3 => StreamKind::ClusterQuery,
            4 => StreamKind::HashQuery,
            other => return Err(malformed("hello", format!("unknown stream kind {other}"))),
        };
        let u64_at = |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().expect("8"));
        Ok(Hello {
            protocol_version: u16::from_be_bytes([payload[0], payload[1]]),
            stream,
            cluster_id: u64_at(4),
            from: u64_at(12),
            to: u64_at(20),
        })
    }
}

/// Appends a MESSAGE frame carrying `message`.
pub(crate) fn encode_message(out: &mut Vec<u8>, message: Message) {
    encode_frame(out, FrameKind::Message, &archive(message));
}

pub(crate) fn decode_message(payload: &[u8]) -> Result<Message, WireError> {
    unarchive(payload, "message")
}

/// The SNAP_HEAD payload.
pub(crate) fn encode_snap_head(file_bytes: u64, message: Message) -> Vec<u8> {
    let archived = archive(message);
    let mut payload = Vec::with_capacity(8 + archived.len());
    payload.extend_from_slice(&file_bytes.to_be_bytes());
    payload.extend_from_slice(&archived);
    frame(FrameKind::SnapHead, &payload)
}

pub(crate) fn decode_snap_head(payload: &[u8]) -> Result<(u64, Message), WireError> {
    let Some((file_bytes, archived)) = payload.split_first_chunk::<8>() else {
        return Err(malformed("snapshot head", "shorter than its length field"));
    };
    Ok((
        u64::from_be_bytes(*file_bytes),
        unarchive(archived, "snapshot head")?,
    ))
}

pub(crate) fn decode_sha256(payload: &[u8]) -> Result<[u8; SHA256_BYTES], WireError> {
    payload
        .try_into()
        .map_err(|_| malformed("snapshot end", format!("{} bytes", payload.len())))
}

/// The SNAP_DONE frame: `Ok` installed, `Err(reason)` discarded.
pub(crate) fn encode_snap_done(verdict: &Result<(), String>) -> Vec<u8> {
    let mut payload = Vec::new();
    match verdict {
        Ok(()) => payload.push(1),
        Err(reason) => {
            payload.push(0);
            payload.extend_from_slice(reason.as_bytes());
        }
    }
    frame(FrameKind::SnapDone, &payload)
}

pub(crate) fn decode_snap_done(payload: &[u8]) -> Result<Result<(), String>, WireError> {
    match payload {
        [1] => Ok(Ok(())),
        [0, reason @ ..] => Ok(Err(String::from_utf8_lossy(reason).into_owned())),
        _ => Err(malformed("snapshot done", "neither ok nor a reason")),
    }
}

fn archive(message: Message) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(&WireMessage::from(message))
        .expect("serializing plain owned data into memory cannot fail")
}

fn unarchive(payload: &[u8], what: &'static str) -> Result<Message, WireError> {
    // Archives are read in place and need their alignment; a payload sits at an arbitrary
    // offset of the read buffer, so it is copied once into aligned memory.
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let wire =
        rkyv::from_bytes::<WireMessage, rancor::Error>(&aligned).map_err(|e| malformed(what, e))?;
    Ok(wire.into())
}

// rkyv mirrors of raft's structs: raft depends on nothing, so the derives live here, and each
// mirror converts by moving its fields (no entry data is copied on either side).

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub(crate) struct WireMessage {
    kind: WireMessageType,
    to: u64,
    from: u64,
    term: u64,
    log_term: u64,
    index: u64,
    entries: Vec<WireEntry>,
    commit: u64,
    snapshot: Option<WireSnapshot>,
    reject: bool,
    reject_hint: u64,
    context: Vec<u8>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
enum WireMessageType {
    App,
    AppResp,
    Vote,
    VoteResp,
    PreVote,
    PreVoteResp,
    Heartbeat,
    HeartbeatResp,
    Snap,
    TimeoutNow,
    ReadIndex,
    ReadIndexResp,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct WireEntry {
    term: u64,
    index: u64,
    data: WireEntryData,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
enum WireEntryData {
    Normal(Vec<u8>),
    ConfChange(WireConfChange),
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct WireConfChange {
    changes: Vec<WireConfChangeSingle>,
    transition: WireConfChangeTransition,
    context: Vec<u8>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct WireConfChangeSingle {
    kind: WireConfChangeKind,
    node_id: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
enum WireConfChangeKind {
    AddVoter,
    AddLearner,
    RemoveNode,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
enum WireConfChangeTransition {
    Auto,
    JointImplicit,
    JointExplicit,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct WireSnapshot {
    index: u64,
    term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
    data: Vec<u8>,
}

/// Pairs each raft variant with its mirror, so the two conversions cannot drift apart.
macro_rules! mirror_enum {
    ($raft:ident, $wire:ident, [$($variant:ident),+ $(,)?]) => {
        impl From<$raft> for $wire {
            fn from(value: $raft) -> $wire {
                match value { $($raft::$variant => $wire::$variant,)+ }
            }
        }
        impl From<$wire> for $raft {
            fn from(value: $wire) -> $raft {
                match value { $($wire::$variant => $raft::$variant,)+ }
            }
        }
    };
}

mirror_enum!(
    MessageType,
    WireMessageType,
    [
        App,
        AppResp,
        Vote,
        VoteResp,
        PreVote,
        PreVoteResp,
        Heartbeat,
        HeartbeatResp,
        Snap,
        TimeoutNow,
        ReadIndex,
        ReadIndexResp
    ]
);
mirror_enum!(
    ConfChangeKind,
    WireConfChangeKind,
    [AddVoter, AddLearner, RemoveNode]
);
mirror_enum!(
    ConfChangeTransition,
    WireConfChangeTransition,
    [Auto, JointImplicit, JointExplicit]
);

impl From<Message> for WireMessage {
    fn from(m: Message) -> WireMessage {
        WireMessage {
            kind: m.kind.into(),
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries: m.entries.into_iter().map(WireEntry::from).collect(),
            commit: m.commit,
            snapshot: m.snapshot.map(WireSnapshot::from),
            reject: m.reject,
            reject_hint: m.reject_hint,
            context: m.context,
        }
    }
}

impl From<WireMessage> for Message {
    fn from(m: WireMessage) -> Message {
        Message {
            kind: m.kind.into(),
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries: m.entries.into_iter().map(Entry::from).collect(),
            commit: m.commit,
            snapshot: m.snapshot.map(Snapshot::from),
            reject: m.reject,
            reject_hint: m.reject_hint,
            context: m.context,
        }
    }
}

impl From<Entry> for WireEntry {
    fn from(e: Entry) -> WireEntry {
        let data = match e.data {
            EntryData::Normal(bytes) => WireEntryData::Normal(bytes),
            EntryData::ConfChange(cc) => WireEntryData::ConfChange(WireConfChange {
                changes: cc
                    .changes
                    .into_iter()
                    .map(|c| WireConfChangeSingle {
                        kind: c.kind.into(),
                        node_id: c.node_id,
                    })
                    .collect(),
                transition: cc.transition.into(),
                context: cc.context,
            }),
        };
        WireEntry {
            term: e.term,
            index: e.index,
            data,
        }
    }
}

impl From<WireEntry> for Entry {
    fn from(e: WireEntry) -> Entry {
        let data = match e.data {
            WireEntryData::Normal(bytes) => EntryData::Normal(bytes),
            WireEntryData::ConfChange(cc) => EntryData::ConfChange(ConfChange {
                changes: cc
                    .changes
                    .into_iter()
                    .map(|c| ConfChangeSingle {
                        kind: c.kind.into(),
                        node_id: c.node_id,
                    })
                    .collect(),
                transition: cc.transition.into(),
                context: cc.context,
            }),
        };
        Entry {
            term: e.term,
            index: e.index,
            data,
        }
    }
}

impl From<Snapshot> for WireSnapshot {
    fn from(s: Snapshot) -> WireSnapshot {
        let conf = s.metadata.conf_state;
        WireSnapshot {
            index: s.metadata.index,
            term: s.metadata.term,
            voters: conf.voters,
            learners: conf.learners,
            voters_outgoing: conf.voters_outgoing,
            learners_next: conf.learners_next,
            auto_leave: conf.auto_leave,
            data: s.data,
        }
    }
}

impl From<WireSnapshot> for Snapshot {
    fn from(s: WireSnapshot) -> Snapshot {
        Snapshot {
            metadata: SnapshotMetadata {
                index: s.index,
                term: s.term,
                conf_state: ConfState {
                    voters: s.voters,
                    learners: s.learners,
                    voters_outgoing: s.voters_outgoing,
                    learners_next: s.learners_next,
                    auto_leave: s.auto_leave,
                },
            },
            data: s.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), WireError> {
        let header = decode_header(bytes[..HEADER_BYTES].try_into().unwrap())?;
        let payload = &bytes[HEADER_BYTES..];
        check_payload(&header, payload)?;
        Ok((header, payload))
    }

    fn message_kind() -> impl Strategy<Value = MessageType> {
        use MessageType::*;
        prop::sample::select(vec![
            App,
            AppResp,
            Vote,
            VoteResp,
            PreVote,
            PreVoteResp,
            Heartbeat,
            HeartbeatResp,
            Snap,
            TimeoutNow,
            ReadIndex,
            ReadIndexResp,
        ])
    }

    fn conf_change() -> impl Strategy<Value = ConfChange> {
        let single = (
            prop::sample::select(vec![
                ConfChangeKind::AddVoter,
                ConfChangeKind::AddLearner,
                ConfChangeKind::RemoveNode,
            ]),
            any::<u64>(),
        )
            .prop_map(|(kind, node_id)| ConfChangeSingle { kind, node_id });
        let transition = prop::sample::select(vec![
            ConfChangeTransition::Auto,
            ConfChangeTransition::JointImplicit,
            ConfChangeTransition::JointExplicit,
        ]);
        (
            prop::collection::vec(single, 0..4),
            transition,
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(changes, transition, context)| ConfChange {
                changes,
                transition,
                context,
            })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let data = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256).prop_map(EntryData::Normal),
            conf_change().prop_map(EntryData::ConfChange),
        ];
        (any::<u64>(), any::<u64>(), data).prop_map(|(term, index, data)| Entry {
            term,
            index,
            data,
        })
    }

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        let ids = || prop::collection::vec(any::<u64>(), 0..5);
        (
            (any::<u64>(), any::<u64>(), any::<bool>()),
            (ids(), ids(), ids(), ids()),
            prop::collection::vec(any::<u8>(), 0..128),
        )
            .prop_map(
                |((index, term, auto_leave), (voters, learners, outgoing, next), data)| Snapshot {
                    metadata: SnapshotMetadata {
                        index,
                        term,
                        conf_state: ConfState {
                            voters,
                            learners,
                            voters_outgoing: outgoing,
                            learners_next: next,
                            auto_leave,
                        },
                    },
                    data,
                },
            )
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            (message_kind(), any::<u64>(), any::<u64>(), any::<u64>()),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            prop::collection::vec(entry(), 0..6),
            prop::option::of(snapshot()),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..32),
        )
            .prop_map(
                |(
                    (kind, to, from, term),
                    (log_term, index, commit, reject_hint),
                    entries,
                    snapshot,
                    reject,
                    context,
                )| Message {
                    kind,
                    to,
                    from,
                    term,
                    log_term,
                    index,
                    entries,
                    commit,
                    snapshot,
                    reject,
                    reject_hint,
                    context,
                },
            )
    }

    proptest! {
        #[test]
        fn any_message_survives_a_frame_round_trip(message in message()) {
            let mut bytes = Vec::new();
            encode_message(&mut bytes, message.clone());
            let (header, payload) = split_frame(&bytes).unwrap();
            prop_assert_eq!(header.kind, FrameKind::Message);
            prop_assert_eq!(decode_message(payload).unwrap(), message);
        }

        #[test]
        fn any_flipped_bit_is_refused(message in message(), bit in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            encode_message(&mut bytes, message);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(split_frame(&bytes).is_err());
        }
    }

    #[test]
    fn header_faults_are_named() {
        let good = frame(FrameKind::Forward, b"proposal");
        let with = |at: usize, value: u8, fix_crc: bool| {
            let mut bytes = good.clone();
            bytes[at] = value;
            if fix_crc {
                let crc = crc32c::crc32c(&bytes[0..16]);
                bytes[16..20].copy_from_slice(&crc.to_be_bytes());
            }
            split_frame(&bytes).map(|(header, _)| header.kind)
        };
        let cases = [
            (0, b'X', false, Err(WireError::BadMagic)),
            (4, 2, false, Err(WireError::HeaderChecksum)),
            (4, 2, true, Err(WireError::UnknownVersion(2))),
            (5, 99, true, Err(WireError::UnknownKind(99))),
            (8, 0x7f, true, Err(WireError::TooLarge(0x7f00_0008))),
            (HEADER_BYTES, b'P', false, Err(WireError::PayloadChecksum)),
            (HEADER_BYTES, b'p', false, Ok(FrameKind::Forward)),
        ];
        for (at, value, fix_crc, expected) in cases {
            assert_eq!(with(at, value, fix_crc), expected, "byte {at} = {value}");
        }
    }

    #[test]
    fn hello_round_trips_and_refuses_unknown_streams() {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            stream: StreamKind::Snapshot,
            cluster_id: 0xcdf8_1819_4e3a_8c32,
            from: 7,
            to: u64::MAX,
        };
        let bytes = hello.encode();
        let (header, payload) = split_frame(&bytes).unwrap();
        assert_eq!(header.kind, FrameKind::Hello);
        assert_eq!(Hello::decode(payload), Ok(hello));
        let mut unknown = payload.to_vec();
        unknown[2] = 9;
        assert!(Hello::decode(&unknown).is_err());
        assert!(Hello::decode(&payload[..27]).is_err());
    }

    #[test]
    fn snapshot_frames_round_trip() {
        let mut message = Message::new(MessageType::Snap, 2);
        message.snapshot = Some(Snapshot::default());
        let bytes = encode_snap_head(1 << 40, message.clone());
        let (_, payload) = split_frame(&bytes).unwrap();
        assert_eq!(decode_snap_head(payload), Ok((1 << 40, message)));
        for verdict in [Ok(()), Err("sha256 mismatch".to_string())] {
            let bytes = encode_snap_done(&verdict);
            let (_, payload) = split_frame(&bytes).unwrap();
            assert_eq!(decode_snap_done(payload), Ok(verdict));
        }
    }
}
