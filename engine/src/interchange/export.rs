//! Basalt tree → etcd bbolt file.

use std::collections::BTreeMap;
use std::path::Path;

use basalt_proto::etcdserverpb::{AlarmMember, Member};
use prost::Message;

use super::*;
use crate::apply::{auth as auth_records, lease, members, ALARM_BUCKET, ALARM_KEY_BYTES};
use crate::bbolt::BboltWriter;
use crate::btree::ReadTxn;
use crate::crypt::SharedKeyring;
use crate::mvcc::{KEY_BUCKET, META_BUCKET};

/// Writes the state `read` shows as an etcd bbolt file at `path` (which must not exist): every
/// one of etcd's buckets, the `key` bucket streamed in revision order. With a keyring the file
/// is sealed (a member's temp copy; `btree::PlainReader` gives back etcd's bytes).
pub fn export_etcd(
    read: &ReadTxn,
    path: &Path,
    keyring: Option<&SharedKeyring>,
) -> Result<(), InterchangeError> {
    for bucket in read.buckets() {
        if !ETCD_BUCKETS.contains(&bucket) {
            return Err(InterchangeError::UnknownBucket(bucket.to_owned()));
        }
    }
    let mut out = BboltWriter::create(path, keyring)?;
    for bucket in ETCD_BUCKETS {
        out.begin_bucket(bucket.as_bytes())?;
        if bucket == KEY_BUCKET {
            let mut cursor = read.cursor(KEY_BUCKET);
            let mut entry = cursor.first()?;
            while let Some((key, value)) = entry {
                out.put(key, value)?;
                entry = cursor.next()?;
            }
            continue;
        }
        let mut records = BTreeMap::new();
        if bucket == "cluster" {
            records.insert(CLUSTER_VERSION_KEY.to_vec(), CLUSTER_VERSION.to_vec());
        }
        let mut cursor = read.cursor(bucket);
        let mut entry = cursor.first()?;
        while let Some((key, value)) = entry {
            for (key, value) in etcd_records(bucket, key, value)? {
                records.insert(key, value);
            }
            entry = cursor.next()?;
        }
        for (key, value) in records {
            out.put(&key, &value)?;
        }
    }
    out.finish()?;
    Ok(())
}

/// A record as (key, value).
type Pair = (Vec<u8>, Vec<u8>);

/// The etcd records one Basalt record of `bucket` becomes.
fn etcd_records(bucket: &str, key: &[u8], value: &[u8]) -> Result<Vec<Pair>, InterchangeError> {
    let bad = |reason: String| record_error(bucket, key, reason);
    Ok(match bucket {
        META_BUCKET => match key {
            CONSISTENT_INDEX_KEY => vec![(key.to_vec(), value.to_vec())],
            SCHEDULED_COMPACT_KEY | FINISHED_COMPACT_KEY => {
                let main: [u8; 8] = value
                    .try_into()
                    .map_err(|_| bad(format!("{} bytes, expected 8", value.len())))?;
                vec![(key.to_vec(), revision_bytes(i64::from_be_bytes(main)))]
            }
            _ => return Err(bad("a meta record Basalt does not know".into())),
        },
        lease::LEASE_BUCKET => {
            let (id, ttl, remaining_ttl) = lease::decode_record(key, value).map_err(bad)?;
            let record = EtcdLease {
                id,
                ttl,
                remaining_ttl,
            };
            vec![(key.to_vec(), record.encode_to_vec())]
        }
        auth_records::AUTH_BUCKET if key == auth_records::AUTH_STATE_KEY => {
            let (enabled, revision) = crate::auth::decode_state(value).map_err(bad)?;
            vec![
                (AUTH_ENABLED_KEY.to_vec(), vec![u8::from(enabled)]),
                (AUTH_REVISION_KEY.to_vec(), revision.to_be_bytes().to_vec()),
            ]
        }
        auth_records::AUTH_USERS_BUCKET => {
            let user = crate::auth::decode_user(value).map_err(bad)?;
            vec![(key.to_vec(), user.encode_to_vec())]
        }
        auth_records::AUTH_ROLES_BUCKET => {
            let role = crate::auth::decode_role(value).map_err(bad)?;
            vec![(key.to_vec(), role.encode_to_vec())]
        }
        members::MEMBERS_BUCKET => {
            let id = u64_key(key).ok_or_else(|| bad("expected an 8-byte id".into()))?;
            let member = Member::decode(value).map_err(|e| bad(e.to_string()))?;
            let json = serde_json::to_vec(&EtcdMember::from(Member { id, ..member }))
                .map_err(|e| bad(e.to_string()))?;
            vec![(member_key(id), json)]
        }
        members::MEMBERS_REMOVED_BUCKET => {
            let id = u64_key(key).ok_or_else(|| bad("expected an 8-byte id".into()))?;
            vec![(member_key(id), MEMBER_REMOVED_VALUE.to_vec())]
        }
        ALARM_BUCKET if key.len() == ALARM_KEY_BYTES => {
            let member_id = u64_key(&key[..8]).expect("8 bytes");
            let alarm = i32::from_be_bytes(key[8..].try_into().expect("4 bytes"));
            let record = AlarmMember { member_id, alarm };
            vec![(record.encode_to_vec(), Vec::new())]
        }
        _ => return Err(bad("a record Basalt does not know".into())),
    })
}

fn u64_key(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}
