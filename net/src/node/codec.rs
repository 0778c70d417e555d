//! How raft's plain structs become WAL payloads, and back. The WAL frames, checksums and
//! numbers every record (term and index live in the frame); these are only the payloads.
//! Every layout starts with a version byte, so a change is a bump that old readers refuse.
//!
//! ```text
//! entry      | 0: version=1 | 1: kind (1 normal, 2 conf change) | 2..: body
//!            normal body:      the application bytes (an InternalRequest), empty for a no-op
//!            conf change body: | transition u8 (0 auto, 1 joint implicit, 2 joint explicit)
//!                              | n u32 BE
//!                              | n x ( kind u8 (0 voter, 1 learner, 2 remove) | node id u64 BE )
//!                              | context: the rest (a basaltpb.MemberChange, may be empty)
//! hard state | 0: version=1 | 1..9: term u64 BE | 9..17: vote u64 BE | 17..25: commit u64 BE
//! metadata   | 0: version=1 | 1..9: member id u64 BE | 9..17: cluster id u64 BE
//! snapshot   | 0: version=1 | 1..5: voter count u32 BE | voters u64 BE ...
//! ```

use basalt_raft::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, ConfState, EntryData,
    HardState,
};

const VERSION: u8 = 1;
const KIND_NORMAL: u8 = 1;
const KIND_CONF_CHANGE: u8 = 2;
const HARD_STATE_BYTES: usize = 25;
const METADATA_BYTES: usize = 17;

/// A payload this version cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} payload does not decode: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: &'static str,
}

fn refuse(what: &'static str, reason: &'static str) -> CodecError {
    CodecError { what, reason }
}

pub fn encode_entry(data: &EntryData) -> Vec<u8> {
    match data {
        EntryData::Normal(bytes) => {
            let mut out = Vec::with_capacity(2 + bytes.len());
            out.extend_from_slice(&[VERSION, KIND_NORMAL]);
            out.extend_from_slice(bytes);
            out
        }
        EntryData::ConfChange(cc) => {
            let mut out = Vec::with_capacity(7 + 9 * cc.changes.len() + cc.context.len());
            let transition = match cc.transition {
                ConfChangeTransition::Auto => 0,
                ConfChangeTransition::JointImplicit => 1,
                ConfChangeTransition::JointExplicit => 2,
            };
            out.extend_from_slice(&[VERSION, KIND_CONF_CHANGE, transition]);
            out.extend_from_slice(&(cc.changes.len() as u32).to_be_bytes());
            for change in &cc.changes {
                out.push(match change.kind {
                    ConfChangeKind::AddVoter => 0,
                    ConfChangeKind::AddLearner => 1,
                    ConfChangeKind::RemoveNode => 2,
                });
                out.extend_from_slice(&change.node_id.to_be_bytes());
            }
            out.extend_from_slice(&cc.context);
            out
        }
    }
}

pub fn decode_entry(payload: &[u8]) -> Result<EntryData, CodecError> {
    const WHAT: &str = "entry";
    match payload {
        [VERSION, KIND_NORMAL, body @ ..] => Ok(EntryData::Normal(body.to_vec())),
        [VERSION, KIND_CONF_CHANGE, transition, body @ ..] => {
            let transition = match transition {
                0 => ConfChangeTransition::Auto,
                1 => ConfChangeTransition::JointImplicit,
                2 => ConfChangeTransition::JointExplicit,
                _ => return Err(refuse(WHAT, "unknown conf change transition")),
            };
            let Some((count, rest)) = body.split_first_chunk::<4>() else {
                return Err(refuse(WHAT, "conf change count is cut"));
            };
            let list_bytes = u32::from_be_bytes(*count) as usize * 9;
            if rest.len() < list_bytes {
                return Err(refuse(WHAT, "conf change list is not whole"));
            }
            let (changes, context) = rest.split_at(list_bytes);
            let changes = changes
                .chunks_exact(9)
                .map(|change| {
                    let kind = match change[0] {
                        0 => ConfChangeKind::AddVoter,
                        1 => ConfChangeKind::AddLearner,
                        2 => ConfChangeKind::RemoveNode,
                        _ => return Err(refuse(WHAT, "unknown conf change kind")),
                    };
                    let node_id = u64::from_be_bytes(change[1..9].try_into().expect("9 bytes"));
                    Ok(ConfChangeSingle { kind, node_id })
                })
                .collect::<Result<_, _>>()?;
            Ok(EntryData::ConfChange(ConfChange {
                changes,
                transition,
                context: context.to_vec(),
            }))
        }
        [VERSION, ..] => Err(refuse(WHAT, "unknown entry kind")),
        _ => Err(refuse(WHAT, "unknown version")),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("length checked"))
}

pub fn encode_hard_state(hard_state: &HardState) -> [u8; HARD_STATE_BYTES] {
    let mut out = [0u8; HARD_STATE_BYTES];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&hard_state.term.to_be_bytes());
    out[9..17].copy_from_slice(&hard_state.vote.to_be_bytes());
    out[17..25].copy_from_slice(&hard_state.commit.to_be_bytes());
    out
}

pub fn decode_hard_state(payload: &[u8]) -> Result<HardState, CodecError> {
    if payload.len() != HARD_STATE_BYTES || payload[0] != VERSION {
        return Err(refuse("hard state", "wrong length or version"));
    }
    Ok(HardState {
        term: u64_at(payload, 1),
        vote: u64_at(payload, 9),
        commit: u64_at(payload, 17),
    })
}

/// The member and cluster ids the log belongs to.
pub fn encode_metadata(member_id: u64, cluster_id: u64) -> [u8; METADATA_BYTES] {
    let mut out = [0u8; METADATA_BYTES];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&member_id.to_be_bytes());
    out[9..17].copy_from_slice(&cluster_id.to_be_bytes());
    out
}

pub fn decode_metadata(payload: &[u8]) -> Result<(u64, u64), CodecError> {
    if payload.len() != METADATA_BYTES || payload[0] != VERSION {
        return Err(refuse("metadata", "wrong length or version"));
    }
    Ok((u64_at(payload, 1), u64_at(payload, 9)))
}

/// A snapshot marker's payload: the configuration in effect at its index.
///
/// ```text
/// | 0: version=2 | 1: auto_leave u8 | then 4 lists, in order voters, learners,
/// |   voters_outgoing, learners_next: each | count u32 BE | count x id u64 BE |
/// ```
/// Version 1 (a lone voter's marker) held only | version=1 | count u32 BE | voters |.
pub fn encode_snapshot(conf_state: &ConfState) -> Vec<u8> {
    let lists = conf_state_lists(conf_state);
    let ids: usize = lists.iter().map(|list| list.len()).sum();
    let mut out = Vec::with_capacity(2 + 4 * lists.len() + 8 * ids);
    out.extend_from_slice(&[SNAPSHOT_VERSION, u8::from(conf_state.auto_leave)]);
    for list in lists {
        out.extend_from_slice(&(list.len() as u32).to_be_bytes());
        for id in list {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    out
}

const SNAPSHOT_VERSION: u8 = 2;

fn conf_state_lists(conf_state: &ConfState) -> [&Vec<u64>; 4] {
    [
        &conf_state.voters,
        &conf_state.learners,
        &conf_state.voters_outgoing,
        &conf_state.learners_next,
    ]
}

pub fn decode_snapshot(payload: &[u8]) -> Result<ConfState, CodecError> {
    const WHAT: &str = "snapshot";
    let (list_count, mut rest, auto_leave) = match payload {
        [VERSION, rest @ ..] => (1, rest, false),
        [SNAPSHOT_VERSION, auto_leave @ (0 | 1), rest @ ..] => (4, rest, *auto_leave == 1),
        _ => return Err(refuse(WHAT, "wrong version or too short")),
    };
    let mut lists: [Vec<u64>; 4] = Default::default();
    for list in lists.iter_mut().take(list_count) {
        let Some((count, after)) = rest.split_first_chunk::<4>() else {
            return Err(refuse(WHAT, "id list count is cut"));
        };
        let bytes = u32::from_be_bytes(*count) as usize * 8;
        if after.len() < bytes {
            return Err(refuse(WHAT, "id list is cut"));
        }
        *list = after[..bytes]
            .chunks_exact(8)
            .map(|v| u64_at(v, 0))
            .collect();
        rest = &after[bytes..];
    }
    if !rest.is_empty() {
        return Err(refuse(WHAT, "bytes after the id lists"));
    }
    let [voters, learners, voters_outgoing, learners_next] = lists;
    Ok(ConfState {
        voters,
        learners,
        voters_outgoing,
        learners_next,
        auto_leave,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_round_trips() {
        let entries = [
            EntryData::Normal(Vec::new()),
            EntryData::Normal(b"put".to_vec()),
            EntryData::ConfChange(ConfChange::single(ConfChangeKind::AddLearner, 7)),
            EntryData::ConfChange(ConfChange::leave_joint()),
            EntryData::ConfChange(ConfChange {
                context: b"member".to_vec(),
                ..ConfChange::single(ConfChangeKind::AddVoter, 9)
            }),
        ];
        for entry in entries {
            assert_eq!(decode_entry(&encode_entry(&entry)), Ok(entry));
        }
        let hard_state = HardState {
            term: 3,
            vote: 1,
            commit: 99,
        };
        assert_eq!(
            decode_hard_state(&encode_hard_state(&hard_state)),
            Ok(hard_state)
        );
        assert_eq!(decode_metadata(&encode_metadata(5, 6)), Ok((5, 6)));
        let conf_state = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            voters_outgoing: vec![1, 2, 5],
            learners_next: vec![5],
            auto_leave: true,
        };
        assert_eq!(
            decode_snapshot(&encode_snapshot(&conf_state)),
            Ok(conf_state)
        );
        let lone_voter_v1 = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        assert_eq!(
            decode_snapshot(&lone_voter_v1).map(|c| c.voters),
            Ok(vec![7])
        );
    }

    #[test]
    fn payloads_of_another_version_or_shape_are_refused() {
        let bad_entries: [&[u8]; 5] = [&[], &[2, 1], &[1, 9], &[1, 2, 7], &[1, 2, 0, 0, 1]];
        for payload in bad_entries {
            assert!(decode_entry(payload).is_err(), "{payload:?}");
        }
        assert!(decode_hard_state(&[1; 24]).is_err());
        assert!(decode_metadata(&[2; 17]).is_err());
        assert!(decode_snapshot(&[1, 0, 0, 0, 2, 0]).is_err());
        assert!(decode_snapshot(&[2, 0, 0, 0, 0, 1]).is_err());
        assert!(decode_snapshot(&[2, 3, 0, 0, 0, 0]).is_err());
    }
}
