//! etcd bbolt file → Basalt tree.

use basalt_proto::authpb::{Role, User};
use basalt_proto::etcdserverpb::{AlarmMember, Member};
use basalt_proto::mvccpb::KeyValue;
use prost::Message;

use super::*;
use crate::apply::{auth as auth_records, lease, members, ALARM_BUCKET};
use crate::bbolt::{BboltFile, BucketEntries};
use crate::btree::{Db, WriteTxn};
use crate::mvcc::{Revision, KEY_BUCKET, META_BUCKET};

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// etcd's consistent index (at least 1): the applied index the tree now carries.
    pub consistent_index: u64,
    /// Records of the `key` bucket (revisions, live or not).
    pub revisions: u64,
}

/// Writes the records of etcd's bbolt `file` into `db` (a new, empty tree) in Basalt's layout
/// and checkpoints it at etcd's consistent index. Anything Basalt does not know is refused.
pub fn import_etcd(file: &BboltFile, db: &Db) -> Result<Imported, InterchangeError> {
    let mut out = Batches {
        db,
        txn: None,
        pending: 0,
    };
    let mut consistent_index = 0;
    let mut revisions = 0;
    let mut auth_state = (false, 0u64, false);
    for name in file.bucket_names()? {
        let bucket = std::str::from_utf8(&name)
            .ok()
            .and_then(|name| ETCD_BUCKETS.iter().find(|known| **known == name))
            .ok_or_else(|| {
                InterchangeError::UnknownBucket(String::from_utf8_lossy(&name).into())
            })?;
        let mut entries = file.bucket(&name)?.expect("the root lists it");
        while let Some((page, key, value)) = entries.next_record()? {
            let bad =
                |reason: String| record_error(bucket, key, format!("{reason} (bbolt page {page})"));
            match *bucket {
                KEY_BUCKET => {
                    if Revision::from_key(key).is_none() {
                        return Err(bad(
                            "expected a revision (8 bytes, '_', 8 bytes, optional 't')".into(),
                        ));
                    }
                    KeyValue::decode(value)
                        .map_err(|e| bad(format!("expected an mvccpb.KeyValue: {e}")))?;
                    out.put(KEY_BUCKET, key, value)?;
                    revisions += 1;
                }
                META_BUCKET => match key {
                    CONSISTENT_INDEX_KEY => consistent_index = u64_value(value).map_err(bad)?,
                    SCHEDULED_COMPACT_KEY | FINISHED_COMPACT_KEY => {
                        let (revision, _) = Revision::from_key(value)
                            .ok_or_else(|| bad("expected a revision value".into()))?;
                        out.put(META_BUCKET, key, &revision.main.to_be_bytes())?;
                    }
                    key if ETCD_META_DROPPED.contains(&key) => {}
                    _ => return Err(bad("a meta record Basalt does not know".into())),
                },
                lease::LEASE_BUCKET => {
                    let id = u64_value(key).map_err(bad)?;
                    let record = EtcdLease::decode(value)
                        .map_err(|e| bad(format!("expected a leasepb.Lease: {e}")))?;
                    let record = lease::encode_record(record.ttl, record.remaining_ttl);
                    out.put(lease::LEASE_BUCKET, &id.to_be_bytes(), &record)?;
                }
                auth_records::AUTH_BUCKET => match key {
                    AUTH_ENABLED_KEY => {
                        auth_state.0 = value == [1];
                        auth_state.2 = true;
                    }
                    AUTH_REVISION_KEY => {
                        auth_state.1 = u64_value(value).map_err(bad)?;
                        auth_state.2 = true;
                    }
                    _ => return Err(bad("an auth record Basalt does not know".into())),
                },
                auth_records::AUTH_USERS_BUCKET => {
                    let user = User::decode(value)
                        .map_err(|e| bad(format!("expected an authpb.User: {e}")))?;
                    let record = crate::auth::encode_user(&user);
                    out.put(auth_records::AUTH_USERS_BUCKET, key, &record)?;
                }
                auth_records::AUTH_ROLES_BUCKET => {
                    let role = Role::decode(value)
                        .map_err(|e| bad(format!("expected an authpb.Role: {e}")))?;
                    let record = crate::auth::encode_role(&role);
                    out.put(auth_records::AUTH_ROLES_BUCKET, key, &record)?;
                }
                members::MEMBERS_BUCKET => {
                    let id = hex_id(key).map_err(bad)?;
                    let member: EtcdMember = serde_json::from_slice(value)
                        .map_err(|e| bad(format!("expected a member as JSON: {e}")))?;
                    let member = Member {
                        id,
                        ..member.into()
                    };
                    out.put(
                        members::MEMBERS_BUCKET,
                        &id.to_be_bytes(),
                        &member.encode_to_vec(),
                    )?;
                }
                members::MEMBERS_REMOVED_BUCKET => {
                    let id = hex_id(key).map_err(bad)?;
                    out.put(members::MEMBERS_REMOVED_BUCKET, &id.to_be_bytes(), &[])?;
                }
                "cluster" => {
                    if key != CLUSTER_VERSION_KEY && key != DOWNGRADE_KEY {
                        return Err(bad("a cluster record Basalt does not know".into()));
                    }
                }
                ALARM_BUCKET => {
                    let alarm = AlarmMember::decode(key)
                        .map_err(|e| bad(format!("expected an AlarmMember: {e}")))?;
                    let key = crate::apply::alarm_key(alarm.member_id, alarm.alarm);
                    out.put(ALARM_BUCKET, &key, &[])?;
                }
                _ => unreachable!("every bucket of ETCD_BUCKETS has an arm"),
            }
        }
    }
    if auth_state.2 {
        let record = crate::auth::encode_state(auth_state.0, auth_state.1);
        out.put(
            auth_records::AUTH_BUCKET,
            auth_records::AUTH_STATE_KEY,
            &record,
        )?;
    }
    // A tree with an applied index of 0 would be taken for a new member's.
    let consistent_index = consistent_index.max(1);
    out.put(
        META_BUCKET,
        CONSISTENT_INDEX_KEY,
        &consistent_index.to_be_bytes(),
    )?;
    out.commit()?;
    db.checkpoint(consistent_index)?;
    Ok(Imported {
        consistent_index,
        revisions,
    })
}

/// Write transactions of at most [`IMPORT_BATCH_RECORDS`] records each.
struct Batches<'db> {
    db: &'db Db,
    txn: Option<WriteTxn<'db>>,
    pending: usize,
}

impl Batches<'_> {
    fn put(&mut self, bucket: &str, key: &[u8], value: &[u8]) -> Result<(), InterchangeError> {
        if self.txn.is_none() {
            self.txn = Some(self.db.begin_write()?);
        }
        let txn = self.txn.as_mut().expect("begun above");
        txn.bucket(bucket)?.insert(key, value)?;
        self.pending += 1;
        if self.pending >= IMPORT_BATCH_RECORDS {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), InterchangeError> {
        if let Some(txn) = self.txn.take() {
            txn.commit()?;
        }
        self.pending = 0;
        Ok(())
    }
}

fn u64_value(bytes: &[u8]) -> Result<u64, String> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| format!("{} bytes, expected 8 (big-endian)", bytes.len()))
}

fn hex_id(key: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|text| u64::from_str_radix(text, 16).ok())
        .ok_or_else(|| "expected a member id in hex".to_owned())
}

/// The consistent index etcd's `meta` bucket records in `file` (0 when absent): the last log
/// entry whose effects the file holds.
pub fn etcd_consistent_index(file: &BboltFile) -> Result<u64, InterchangeError> {
    let Some(mut meta) = file.bucket(META_BUCKET.as_bytes())? else {
        return Ok(0);
    };
    while let Some((page, key, value)) = meta.next_record()? {
        if key == CONSISTENT_INDEX_KEY {
            return u64_value(value).map_err(|reason| {
                record_error(META_BUCKET, key, format!("{reason} (bbolt page {page})"))
            });
        }
    }
    Ok(0)
}

/// What `etcdutl snapshot status` reports about a bbolt file, computed as it does: a crc32c
/// over every bucket name, key and value in order, the newest revision of the `key` bucket,
/// the number of records and the file's size in pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStatus {
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size_bytes: u64,
}

pub fn etcd_status(file: &BboltFile) -> Result<EtcdStatus, InterchangeError> {
    let mut status = EtcdStatus {
        hash: 0,
        revision: 0,
        total_keys: 0,
        total_size_bytes: file.tree_bytes(),
    };
    for name in file.bucket_names()? {
        status.hash = crc32c::crc32c_append(status.hash, &name);
        let mut entries: BucketEntries<'_> = file.bucket(&name)?.expect("the root lists it");
        while let Some((_, key, value)) = entries.next_record()? {
            status.hash = crc32c::crc32c_append(status.hash, key);
            status.hash = crc32c::crc32c_append(status.hash, value);
            if name == KEY_BUCKET.as_bytes() {
                if let Some((revision, _)) = Revision::from_key(key) {
                    status.revision = revision.main;
                }
            }
            status.total_keys += 1;
        }
    }
    Ok(status)
}
