//! etcd data interchange: Basalt's B+tree buckets to etcd's bbolt buckets and back, record by
//! record, so an etcd snapshot or data dir becomes a Basalt tree and a Basalt state becomes a
//! snapshot that etcd 3.5 restores and serves; and etcd's WAL and raft snapshot files read
//! ([`read_etcd_log`]), so a stopped member's entries committed after its db's consistent index
//! can be applied too.
//!
//! Owns: the mapping between the two layouts. Must never: guess at a record it does not know
//! (an unknown bucket or key is refused, naming it), or hold a whole bucket of revisions in
//! memory (the `key` bucket streams in order both ways; the small buckets are sorted in memory).
//!
//! | etcd bucket (bbolt) | etcd record | Basalt record |
//! | --- | --- | --- |
//! | `key` | revision (17/18 bytes) → `mvccpb.KeyValue` | the same bytes |
//! | `meta` | `consistent_index` u64 BE; `scheduledCompactRev`, `finishedCompactRev`: revision bytes (main, `_`, sub 0); `term` u64 BE, `confState` JSON (3.5) | `consistent_index` u64 BE; compact revisions as i64 BE; term and confState belong to raft and are dropped |
//! | `lease` | id i64 BE → `leasepb.Lease{ID, TTL, RemainingTTL}` | id → versioned 21-byte record (`apply/lease.rs`) |
//! | `auth` | `authEnabled` → 0x00/0x01; `authRevision` → u64 BE | `state` → versioned record (`auth/records.rs`) |
//! | `authUsers`, `authRoles` | name → `authpb.User` / `authpb.Role` | name → the same protobuf, versioned and checksummed |
//! | `members` | hex id → JSON `{"id","peerURLs","isLearner","name","clientURLs"}` | id u64 BE → `etcdserverpb.Member` |
//! | `members_removed` | hex id → `removed` | id u64 BE → empty |
//! | `cluster` | `clusterVersion` → `3.5.0`; `downgrade` JSON | not kept (Basalt speaks 3.5) |
//! | `alarm` | `etcdserverpb.AlarmMember` bytes → empty | member id u64 BE, alarm i32 BE → empty |
//!
//! A restore into a new cluster replaces the members anyway (etcdutl and Basalt both do), so the
//! member records only have to be well formed.

mod etcd_log;
mod export;
mod import;

pub use etcd_log::{
    etcd_snapshot_db_path, newest_etcd_snapshot, read_etcd_log, EtcdEntry, EtcdEntryKind, EtcdLog,
    EtcdLogError,
};
pub use export::export_etcd;
pub use import::{etcd_consistent_index, etcd_status, import_etcd, EtcdStatus, Imported};

use basalt_proto::etcdserverpb::Member;

/// etcd's buckets, every one of which an etcd-format snapshot carries.
pub const ETCD_BUCKETS: [&str; 10] = [
    "alarm",
    "auth",
    "authRoles",
    "authUsers",
    "cluster",
    "key",
    "lease",
    "members",
    "members_removed",
    "meta",
];

/// The cluster version an exported snapshot declares.
const CLUSTER_VERSION: &[u8] = b"3.5.0";
const CLUSTER_VERSION_KEY: &[u8] = b"clusterVersion";
const DOWNGRADE_KEY: &[u8] = b"downgrade";
const AUTH_ENABLED_KEY: &[u8] = b"authEnabled";
const AUTH_REVISION_KEY: &[u8] = b"authRevision";
const CONSISTENT_INDEX_KEY: &[u8] = b"consistent_index";
const SCHEDULED_COMPACT_KEY: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT_KEY: &[u8] = b"finishedCompactRev";
/// etcd's meta records that describe raft or the file, not the data: not carried over.
const ETCD_META_DROPPED: [&[u8]; 3] = [b"term", b"confState", b"storageVersion"];
const MEMBER_REMOVED_VALUE: &[u8] = b"removed";
/// Records written to the tree per commit while importing (bounds the writer's memory).
const IMPORT_BATCH_RECORDS: usize = 50_000;

/// What stops an import or export.
#[derive(Debug, thiserror::Error)]
pub enum InterchangeError {
    #[error("bbolt file {0}")]
    Bbolt(#[from] crate::bbolt::Error),
    #[error("Basalt tree: {0}")]
    Btree(#[from] crate::btree::Error),
    #[error("bucket {bucket:?}, key {key}: {reason}")]
    Record {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error(
        "bucket {0:?} is not one of etcd's buckets (expected only {buckets})",
        buckets = ETCD_BUCKETS.join(", ")
    )]
    UnknownBucket(String),
}

fn record_error(bucket: &str, key: &[u8], reason: impl Into<String>) -> InterchangeError {
    InterchangeError::Record {
        bucket: bucket.to_owned(),
        key: printable(key),
        reason: reason.into(),
    }
}

/// A key as text when it is text, else hex.
fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// etcd's lease record (`leasepb.Lease`).
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's member record (`membership.Member` as JSON).
#[derive(serde::Serialize, serde::Deserialize)]
struct EtcdMember {
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default, skip_serializing_if = "is_false")]
    is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    client_urls: Vec<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl From<EtcdMember> for Member {
    fn from(member: EtcdMember) -> Member {
        Member {
            id: member.id,
            name: member.name,
            peer_ur_ls: member.peer_urls,
            client_ur_ls: member.client_urls,
            is_learner: member.is_learner,
        }
    }
}

impl From<Member> for EtcdMember {
    fn from(member: Member) -> EtcdMember {
        EtcdMember {
            id: member.id,
            peer_urls: member.peer_ur_ls,
            is_learner: member.is_learner,
            name: member.name,
            client_urls: member.client_ur_ls,
        }
    }
}

/// etcd's encoding of a compacted revision: the revision key of (main, 0).
fn revision_bytes(main: i64) -> Vec<u8> {
    crate::mvcc::Revision::new(main, 0).to_key(false)
}

/// A member id as etcd's `members` bucket keys it (`types.ID.String()`: hex, no padding).
fn member_key(id: u64) -> Vec<u8> {
    format!("{id:x}").into_bytes()
}

#[cfg(test)]
mod tests;
