//! `basalt migrate`: a stopped etcd 3.4/3.5 member's data dir becomes a Basalt data dir.
//!
//! etcd's backend commits every 100 ms (or 10,000 writes), so its `member/snap/db` holds the
//! state as of its consistent index, and the entries committed after that live only in its
//! WAL. A migration imports the db (as `snapshot restore` imports a snapshot), then applies
//! the WAL's entries from the consistent index up to the hard state's commit index with
//! Basalt's applier, each `etcdserverpb.InternalRaftRequest` turned into the request Basalt's
//! log carries. Revisions, leases, auth and alarms therefore end where etcd would have put
//! them on its next start.
//!
//! Memory: the WAL's entries after the db's consistent index (etcd's backend commits every
//! 100 ms or 10,000 writes, so normally few) and one WAL segment at a time; applied entries
//! reach the new tree in batches.
//!
//! Owns: checking that the source is a stopped etcd member's dir, choosing the db etcd would
//! start from, and the entry mapping below. Must never: change the source dir, apply an entry
//! the WAL does not show committed, or leave a half-made target (the target is built by
//! [`snapshot::make_member_dir`]).
//!
//! | etcd entry | applied as |
//! | --- | --- |
//! | normal, InternalRaftRequest: range, put, delete_range, txn, compaction, lease_grant, lease_revoke, lease_checkpoint, alarm, auth_* (not authenticate) | the same request; the header's username and auth revision are checked again as etcd checks them; a password carried in clear (etcd before 3.5) is hashed with bcrypt, `hashedPassword` (base64 of the bcrypt hash) decoded |
//! | normal, InternalRaftRequest: authenticate | nothing: simple tokens do not survive a restart |
//! | normal, InternalRaftRequest: cluster_version_set, cluster_member_attr_set, downgrade_info_set; v2 `Request` | nothing: the members are the new cluster's, the version is 3.5 |
//! | normal, empty (a leader's no-op); conf change | nothing |

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use basalt_engine::apply::Applier;
use basalt_engine::bbolt::BboltFile;
use basalt_engine::btree;
use basalt_engine::interchange::{self, EtcdEntry, EtcdEntryKind};
use basalt_engine::mvcc::Limits;
use basalt_proto::basaltpb::{internal_request::Request, AuthHeader, InternalRequest};
use basalt_proto::etcdserverpb::{
    AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest, CompactionRequest,
    DeleteRangeRequest, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, TxnRequest,
};
use base64::Engine as _;
use prost::Message;

use super::datadir;
use super::snapshot::{self, RestoredMember};

/// Applied records, or bytes of applied entries, held in the applier's overlay before they are
/// written to the tree.
const COMMIT_EVERY_RECORDS: usize = 8192;
const COMMIT_EVERY_BYTES: usize = 32 << 20;

/// What a migration found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The bbolt file imported: `member/snap/db`, or the snapshot db a member received.
    pub db: PathBuf,
    /// The etcd member the source dir belonged to.
    pub etcd_member_id: u64,
    /// The db's consistent index: entries up to it were in the db.
    pub consistent_index: u64,
    /// The WAL's commit index: entries up to it were applied.
    pub commit_index: u64,
    /// Entries between the two that carried a request Basalt applied.
    pub requests_applied: u64,
    /// Entries between the two with nothing to apply (no-ops, membership, v2, tokens).
    pub entries_skipped: u64,
    /// The newest revision of the migrated key space.
    pub revision: i64,
}

/// Converts the stopped etcd member in `etcd_dir` into a new Basalt data dir at `data_dir` for
/// `member` (the new cluster's members and this one's ids, as `snapshot restore` takes them).
pub fn migrate(
    etcd_dir: &Path,
    data_dir: &Path,
    member: &RestoredMember,
) -> Result<Migrated, String> {
    let source = EtcdDir::check(etcd_dir)?;
    snapshot::refuse_existing(data_dir)?;
    // Held until the end: a running etcd holds bbolt's exclusive lock, and an etcd started
    // meanwhile waits for this one.
    let _lock = lock_shared(&source.db)?;
    let (mut db_path, mut file) = open_bbolt(&source.db)?;
    let mut consistent_index = consistent_index_of(&db_path, &file)?;
    let log =
        interchange::read_etcd_log(&source.wal, consistent_index).map_err(|e| e.to_string())?;
    // etcd's recoverSnapshotBackend: a snapshot newer than the db means the member received
    // its leader's db and had not put it in place yet.
    let newest = interchange::newest_etcd_snapshot(&source.snap, &log.snapshots)
        .map_err(|e| e.to_string())?;
    if let Some((index, _)) = newest.filter(|&(index, _)| index > consistent_index) {
        let received = interchange::etcd_snapshot_db_path(&source.snap, index);
        if !received.is_file() {
            return Err(format!(
                "{}: the newest raft snapshot is at index {index}, past the db's consistent \
                 index {consistent_index}, but the db etcd received with it ({}) is missing",
                source.snap.display(),
                received.display()
            ));
        }
        (db_path, file) = open_bbolt(&received)?;
        consistent_index = consistent_index_of(&db_path, &file)?;
    }
    let mut migrated = Migrated {
        db: db_path.clone(),
        etcd_member_id: log.member_id,
        consistent_index,
        commit_index: log.commit.max(consistent_index),
        requests_applied: 0,
        entries_skipped: 0,
        revision: 0,
    };
    let entries = committed_entries(log, consistent_index, &source.wal, &db_path)?;
    let in_db = |e: String| format!("{}: {e}", db_path.display());
    snapshot::make_member_dir(data_dir, member, |staging| {
        datadir::prepare(staging).map_err(|e| e.to_string())?;
        let db = btree::open(datadir::db_path(staging), snapshot::tree_options(member))
            .map_err(|e| e.to_string())?;
        let imported = interchange::import_etcd(&file, &db).map_err(|e| in_db(e.to_string()))?;
        let limits = Limits {
            // etcd checked its own limits when the entries were proposed.
            max_txn_ops: usize::MAX,
            max_request_bytes: usize::MAX,
        };
        let mut applier = Applier::open(db.clone(), limits).map_err(|e| e.to_string())?;
        let mut pending_bytes = 0;
        // By value: each entry's bytes are freed once applied.
        for entry in entries {
            let request = replayed(&entry).map_err(|reason| {
                format!(
                    "{}: entry {} (term {}): {reason}",
                    source.wal.display(),
                    entry.index,
                    entry.term
                )
            })?;
            match request {
                Some(_) => migrated.requests_applied += 1,
                None => migrated.entries_skipped += 1,
            }
            // An import of a db without a consistent index starts at 1 (etcd's first entries
            // are the founders' conf changes, which apply nothing).
            if entry.index <= imported.consistent_index {
                continue;
            }
            let data = request.as_ref().map(Message::encode_to_vec);
            let outcome = applier.apply(entry.index, data.as_deref().unwrap_or_default());
            // A request etcd refused is refused here alike and changes nothing; only a failed
            // write to the new tree stops the migration.
            if let Some(Err(error)) = outcome.map(|o| o.result) {
                if error.is_fatal() {
                    return Err(format!("applying entry {}: {error}", entry.index));
                }
            }
            pending_bytes += entry.data.len();
            if applier.uncommitted_records() >= COMMIT_EVERY_RECORDS
                || pending_bytes >= COMMIT_EVERY_BYTES
            {
                applier.commit().map_err(|e| e.to_string())?;
                pending_bytes = 0;
            }
        }
        applier.checkpoint().map_err(|e| e.to_string())?;
        migrated.revision = applier.store().current_revision();
        let applied = applier.applied_index();
        drop(applier);
        Ok((db, applied))
    })?;
    Ok(migrated)
}

/// The parts of an etcd member's data dir a migration reads.
struct EtcdDir {
    snap: PathBuf,
    wal: PathBuf,
    db: PathBuf,
}

impl EtcdDir {
    fn check(dir: &Path) -> Result<EtcdDir, String> {
        let member = dir.join("member");
        let snap = member.join("snap");
        let source = EtcdDir {
            db: snap.join("db"),
            wal: member.join("wal"),
            snap,
        };
        let expected = || {
            format!(
                "expected a stopped etcd 3.4/3.5 member's data dir, holding {} (bbolt) and {} \
                 (*.wal)",
                source.db.display(),
                source.wal.display()
            )
        };
        if !member.is_dir() {
            return Err(format!(
                "{}: not an etcd data dir (no member/): {}",
                dir.display(),
                expected()
            ));
        }
        if datadir::holds_basalt_marker(dir) {
            return Err(format!(
                "{}: a Basalt data dir, not etcd's: {}",
                dir.display(),
                expected()
            ));
        }
        if !source.wal.is_dir() {
            return Err(format!("{}: missing: {}", source.wal.display(), expected()));
        }
        if !source.db.is_file() {
            let v2_only = fs::read_dir(&source.snap).is_ok_and(|items| {
                items
                    .flatten()
                    .any(|item| item.file_name().to_string_lossy().ends_with(".snap"))
            });
            if v2_only {
                return Err(format!(
                    "{}: missing, and {} holds only raft snapshots: an etcd v2 data dir (etcd \
                     2.x, or 3.x with only the v2 store), which Basalt does not read; {}",
                    source.db.display(),
                    source.snap.display(),
                    expected()
                ));
            }
            return Err(format!("{}: missing: {}", source.db.display(), expected()));
        }
        Ok(source)
    }
}

/// A shared lock on etcd's db file, refused while an etcd holds bbolt's exclusive lock on it.
fn lock_shared(db: &Path) -> Result<fs::File, String> {
    let file = fs::File::open(db).map_err(|e| format!("{}: {e}", db.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(format!(
                "{}: locked by another process (a running etcd holds bbolt's exclusive lock): \
                 stop the etcd member first",
                db.display()
            ));
        }
        return Err(format!("{}: flock: {error}", db.display()));
    }
    Ok(file)
}

fn open_bbolt(path: &Path) -> Result<(PathBuf, BboltFile), String> {
    let len = fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let file =
        BboltFile::open(path, len).map_err(|e| format!("{}: bbolt file {e}", path.display()))?;
    Ok((path.to_path_buf(), file))
}

fn consistent_index_of(path: &Path, file: &BboltFile) -> Result<u64, String> {
    interchange::etcd_consistent_index(file).map_err(|e| format!("{}: {e}", path.display()))
}

/// The entries after `consistent_index` up to the commit index; every one must be there.
fn committed_entries(
    log: interchange::EtcdLog,
    consistent_index: u64,
    wal: &Path,
    db: &Path,
) -> Result<Vec<EtcdEntry>, String> {
    let commit = log.commit;
    let mut entries = log.entries;
    entries.retain(|e| e.index > consistent_index && e.index <= commit);
    let wanted = commit.saturating_sub(consistent_index);
    let whole = entries.len() as u64 == wanted
        && entries
            .first()
            .is_none_or(|e| e.index == consistent_index + 1);
    if !whole {
        let held = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => format!("entries {}..={}", first.index, last.index),
            _ => "none of them".into(),
        };
        return Err(format!(
            "{}: the WAL commits entries up to {commit} and {} holds them up to \
             {consistent_index}, but the WAL holds {held}: expected every entry from {} on (a \
             segment purged or lost?)",
            wal.display(),
            db.display(),
            consistent_index + 1
        ));
    }
    Ok(entries)
}

/// etcd's `InternalRaftRequest` (api/etcdserverpb/raft_internal.proto, 3.4 and 3.5 alike);
/// the requests Basalt does not apply are kept as bytes, only to be seen.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdRaftRequest {
    #[prost(message, optional, tag = "100")]
    header: Option<EtcdRequestHeader>,
    #[prost(bytes = "vec", optional, tag = "2")]
    v2: Option<Vec<u8>>,
    #[prost(message, optional, tag = "3")]
    range: Option<RangeRequest>,
    #[prost(message, optional, tag = "4")]
    put: Option<PutRequest>,
    #[prost(message, optional, tag = "5")]
    delete_range: Option<DeleteRangeRequest>,
    #[prost(message, optional, tag = "6")]
    txn: Option<TxnRequest>,
    #[prost(message, optional, tag = "7")]
    compaction: Option<CompactionRequest>,
    #[prost(message, optional, tag = "8")]
    lease_grant: Option<LeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    lease_revoke: Option<LeaseRevokeRequest>,
    #[prost(message, optional, tag = "10")]
    alarm: Option<AlarmRequest>,
    #[prost(message, optional, tag = "11")]
    lease_checkpoint: Option<LeaseCheckpointRequest>,
    #[prost(message, optional, tag = "1000")]
    auth_enable: Option<AuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    auth_disable: Option<AuthDisableRequest>,
    #[prost(bytes = "vec", optional, tag = "1012")]
    authenticate: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1013")]
    auth_status: Option<AuthStatusRequest>,
    #[prost(message, optional, tag = "1100")]
    auth_user_add: Option<AuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    auth_user_delete: Option<AuthUserDeleteRequest>,
    #[prost(message, optional, tag = "1102")]
    auth_user_get: Option<AuthUserGetRequest>,
    #[prost(message, optional, tag = "1103")]
    auth_user_change_password: Option<AuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    auth_user_grant_role: Option<AuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    auth_user_revoke_role: Option<AuthUserRevokeRoleRequest>,
    #[prost(message, optional, tag = "1106")]
    auth_user_list: Option<AuthUserListRequest>,
    #[prost(message, optional, tag = "1107")]
    auth_role_list: Option<AuthRoleListRequest>,
    #[prost(message, optional, tag = "1200")]
    auth_role_add: Option<AuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    auth_role_delete: Option<AuthRoleDeleteRequest>,
    #[prost(message, optional, tag = "1202")]
    auth_role_get: Option<AuthRoleGetRequest>,
    #[prost(message, optional, tag = "1203")]
    auth_role_grant_permission: Option<AuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    auth_role_revoke_permission: Option<AuthRoleRevokePermissionRequest>,
    #[prost(bytes = "vec", optional, tag = "1300")]
    cluster_version_set: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "1301")]
    cluster_member_attr_set: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "1302")]
    downgrade_info_set: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EtcdRequestHeader {
    #[prost(string, tag = "2")]
    username: String,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

/// etcd's v2 `Request`, only as far as telling one apart.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdV2Request {
    #[prost(string, tag = "2")]
    method: String,
}

/// The request an etcd entry has Basalt apply, or `None` when it applies nothing.
fn replayed(entry: &EtcdEntry) -> Result<Option<InternalRequest>, String> {
    if entry.kind != EtcdEntryKind::Normal || entry.data.is_empty() {
        return Ok(None);
    }
    let raft = match EtcdRaftRequest::decode(entry.data.as_slice()) {
        Ok(raft) => raft,
        // etcd's own fallback: what is not an InternalRaftRequest is a v2 Request.
        Err(error) => {
            return match EtcdV2Request::decode(entry.data.as_slice()) {
                Ok(v2) if !v2.method.is_empty() => Ok(None),
                _ => Err(format!(
                    "expected an etcdserverpb.InternalRaftRequest or a v2 Request: {error}"
                )),
            };
        }
    };
    if raft.v2.is_some() {
        return Ok(None);
    }
    let not_applied = [
        raft.authenticate.is_some(),
        raft.cluster_version_set.is_some(),
        raft.cluster_member_attr_set.is_some(),
        raft.downgrade_info_set.is_some(),
    ]
    .into_iter()
    .filter(|&set| set)
    .count();
    let auth_header = raft
        .header
        .as_ref()
        .filter(|h| !h.username.is_empty())
        .map(|h| AuthHeader {
            username: h.username.clone(),
            auth_revision: h.auth_revision,
        });
    let mut requests = requests_of(raft)?;
    match (requests.len(), not_applied) {
        (0, _) => Ok(None),
        (1, 0) => Ok(Some(InternalRequest {
            id: 0,
            request: requests.pop(),
            auth_header,
        })),
        (n, m) => Err(format!(
            "an InternalRaftRequest carrying {} requests, expected one",
            n + m
        )),
    }
}

/// Every request `raft` carries that Basalt applies, passwords in Basalt's form.
fn requests_of(raft: EtcdRaftRequest) -> Result<Vec<Request>, String> {
    let mut requests = Vec::new();
    macro_rules! take {
        ($($field:ident => $variant:ident),* $(,)?) => {
            $(if let Some(request) = raft.$field {
                requests.push(Request::$variant(request));
            })*
        };
    }
    take!(
        range => Range,
        put => Put,
        delete_range => DeleteRange,
        txn => Txn,
        compaction => Compaction,
        lease_grant => LeaseGrant,
        lease_revoke => LeaseRevoke,
        alarm => Alarm,
        lease_checkpoint => LeaseCheckpoint,
        auth_enable => AuthEnable,
        auth_disable => AuthDisable,
        auth_status => AuthStatus,
        auth_user_delete => AuthUserDelete,
        auth_user_get => AuthUserGet,
        auth_user_grant_role => AuthUserGrantRole,
        auth_user_revoke_role => AuthUserRevokeRole,
        auth_user_list => AuthUserList,
        auth_role_list => AuthRoleList,
        auth_role_add => AuthRoleAdd,
        auth_role_delete => AuthRoleDelete,
        auth_role_get => AuthRoleGet,
        auth_role_grant_permission => AuthRoleGrantPermission,
        auth_role_revoke_permission => AuthRoleRevokePermission,
    );
    if let Some(mut add) = raft.auth_user_add {
        if !add.options.is_some_and(|o| o.no_password) {
            add.hashed_password = basalt_password(&add.password, &add.hashed_password)?;
        }
        add.password.clear();
        requests.push(Request::AuthUserAdd(add));
    }
    if let Some(mut change) = raft.auth_user_change_password {
        change.hashed_password = basalt_password(&change.password, &change.hashed_password)?;
        change.password.clear();
        requests.push(Request::AuthUserChangePassword(change));
    }
    Ok(requests)
}

/// The bcrypt hash Basalt's entries carry, from etcd's entry: etcd 3.5 sends the hash base64
/// encoded, etcd before 3.5 the password itself (hashed at apply, as etcd's selectPassword
/// does).
fn basalt_password(clear: &str, hashed_base64: &str) -> Result<String, String> {
    if !clear.is_empty() && hashed_base64.is_empty() {
        return bcrypt::hash(clear, crate::auth::BCRYPT_COST_DEFAULT)
            .map_err(|e| format!("bcrypt: {e}"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(hashed_base64)
        .ok()
        .and_then(|hash| String::from_utf8(hash).ok())
        .ok_or_else(|| "hashedPassword is not a base64 bcrypt hash".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(data: Vec<u8>) -> EtcdEntry {
        EtcdEntry {
            index: 5,
            term: 2,
            kind: EtcdEntryKind::Normal,
            data,
        }
    }

    #[test]
    fn every_entry_committed_after_the_db_must_be_in_the_wal() {
        let log = interchange::EtcdLog {
            commit: 8,
            entries: (5..=9)
                .map(|index| EtcdEntry {
                    index,
                    ..normal(Vec::new())
                })
                .collect(),
            ..Default::default()
        };
        let (wal, db) = (Path::new("w"), Path::new("d"));
        let indexes = |ci| {
            committed_entries(log.clone(), ci, wal, db)
                .map(|entries| entries.iter().map(|e| e.index).collect::<Vec<_>>())
        };
        assert_eq!(indexes(4), Ok(vec![5, 6, 7, 8]), "9 is not committed");
        assert_eq!(indexes(6), Ok(vec![7, 8]));
        assert_eq!(indexes(8), Ok(vec![]));
        assert_eq!(indexes(10), Ok(vec![]), "a db past the commit index");
        let error = indexes(2).unwrap_err();
        assert!(
            error.contains("holds entries 5..=8: expected every entry from 3 on"),
            "{error}"
        );
    }

    #[test]
    fn etcd_requests_become_basalt_requests_and_the_rest_applies_nothing() {
        let put = EtcdRaftRequest {
            header: Some(EtcdRequestHeader {
                username: "alice".into(),
                auth_revision: 7,
            }),
            put: Some(PutRequest {
                key: b"k".to_vec().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = replayed(&normal(put.encode_to_vec())).unwrap().unwrap();
        assert_eq!(
            got.auth_header,
            Some(AuthHeader {
                username: "alice".into(),
                auth_revision: 7
            })
        );
        assert!(matches!(got.request, Some(Request::Put(p)) if p.key.as_ref() == b"k"));

        let hash = bcrypt::hash("pw", 4).unwrap();
        let add = EtcdRaftRequest {
            auth_user_add: Some(AuthUserAddRequest {
                name: "bob".into(),
                hashed_password: base64::engine::general_purpose::STANDARD.encode(&hash),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = replayed(&normal(add.encode_to_vec())).unwrap().unwrap();
        assert!(
            matches!(&got.request, Some(Request::AuthUserAdd(a)) if a.hashed_password == hash),
            "{got:?}"
        );
        let clear = EtcdRaftRequest {
            auth_user_change_password: Some(AuthUserChangePasswordRequest {
                name: "bob".into(),
                password: "new".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = replayed(&normal(clear.encode_to_vec())).unwrap().unwrap();
        let Some(Request::AuthUserChangePassword(change)) = got.request else {
            panic!("{got:?}");
        };
        assert!(
            change.password.is_empty() && bcrypt::verify("new", &change.hashed_password).unwrap()
        );

        let member_attributes = EtcdRaftRequest {
            cluster_member_attr_set: Some(vec![8, 1]),
            ..Default::default()
        };
        assert_eq!(
            replayed(&normal(member_attributes.encode_to_vec())),
            Ok(None)
        );
        // etcd 3.4's member publish: a bare v2 Request.
        let v2 = [
            &[0x08, 0x01, 0x12, 0x03][..],
            b"PUT",
            &[0x1a, 0x04],
            b"/0/m",
        ]
        .concat();
        assert_eq!(replayed(&normal(v2)), Ok(None));
        assert_eq!(replayed(&normal(Vec::new())), Ok(None));
        let conf_change = EtcdEntry {
            kind: EtcdEntryKind::ConfChange,
            ..normal(vec![1, 2, 3])
        };
        assert_eq!(replayed(&conf_change), Ok(None));
        assert!(replayed(&normal(vec![0xff, 0xff, 0xff])).is_err());
        let two = EtcdRaftRequest {
            put: put.put.clone(),
            authenticate: Some(Vec::new()),
            ..Default::default()
        };
        assert!(replayed(&normal(two.encode_to_vec()))
            .unwrap_err()
            .contains("2 requests"));
    }
}
