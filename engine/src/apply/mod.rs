//! The applier: turns committed log entries into MVCC changes on the B+tree, in log order, on
//! the single writer.
//!
//! Owns: decoding a committed entry ([`basalt_proto::basaltpb::InternalRequest`]), checking it
//! again (a log entry may hold anything a buggy or older member proposed), applying it to the
//! [`KvStore`] over the [`BtreeBackend`], the consistent (applied) index, and the checkpoints
//! that make the applied state durable. Must never: panic or wedge on an entry's content (every
//! member must reach the same error result for the same entry), apply an entry twice, or
//! checkpoint a state that is not a prefix of the log.
//!
//! The applied index goes into the B+tree in the same commit as the data it describes
//! ([`Applier::commit`]), and [`Applier::checkpoint`] makes both durable together; after a crash
//! the WAL is replayed from [`Applier::applied_index`] onwards.

pub(crate) mod auth;
mod hash;
pub(crate) mod lease;
pub(crate) mod members;

pub use auth::AuthApplied;
pub use hash::{hash_kv, KvHash};

use basalt_proto::basaltpb::{internal_request::Request, InternalRequest};
use basalt_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    CompactionResponse, DeleteRangeResponse, PutResponse, RangeResponse, TxnResponse,
};
use prost::Message;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::btree::Db;
use crate::mvcc::{
    validate_compaction, validate_delete_range, validate_put, validate_range, validate_txn,
    BtreeBackend, KvStore, Limits, MvccError, RangeRead,
};

/// What a request's entry produced once applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Alarm(AlarmResponse),
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(basalt_proto::etcdserverpb::LeaseGrantResponse),
    LeaseRevoke(basalt_proto::etcdserverpb::LeaseRevokeResponse),
    LeaseCheckpoint(basalt_proto::etcdserverpb::LeaseCheckpointResponse),
    Auth(AuthApplied),
    /// A membership change or member attribute update: the member list after it.
    Members(Vec<basalt_proto::etcdserverpb::Member>),
}

/// Why an entry produced no response. Each variant but [`ApplyError::Storage`] is a result every
/// member reaches for the same entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Mvcc(MvccError),
    #[error(transparent)]
    Lease(crate::lease::LeaseError),
    #[error(transparent)]
    Auth(crate::auth::AuthError),
    /// The entry's bytes are not an [`InternalRequest`] this member understands.
    #[error("basalt: committed entry {index} does not decode: {reason}")]
    Undecodable { index: u64, reason: String },
    /// The NOSPACE alarm is raised: only reads, deletes and compaction apply (etcd's message).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The CORRUPT alarm is raised: nothing applies (etcd's message).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// The B+tree failed: the in-memory state may be ahead of the file, so the member must stop
    /// and recover from its WAL (etcd panics here).
    #[error("basalt: storage failed while applying: {0}")]
    Storage(String),
    /// The tree's device is full: a commit, checkpoint or defragment was undone and nothing is
    /// lost (the WAL holds every applied entry, reads find them in the overlay); the raft core
    /// tries again once space returns. Never the result of an entry.
    #[error("basalt: {0}")]
    OutOfSpace(String),
}

impl ApplyError {
    /// True when the applier can no longer be used.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ApplyError::Storage(_))
    }
}

/// One applied entry: the id the proposer waits on (0: nobody) and its result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: u64,
    pub result: Result<Applied, ApplyError>,
}

/// The single writer of the MVCC state.
pub struct Applier {
    store: KvStore<BtreeBackend>,
    /// The leases, kept in step with the store (keys attach as writes land).
    lessor: crate::lease::Lessor,
    limits: Limits,
    applied_index: u64,
    /// The applied index of the newest B+tree commit.
    committed_index: u64,
    /// The applied index of the newest durable checkpoint (atomic: a checkpoint's sync needs
    /// only `&self`, see [`Applier::sync_commit`]).
    checkpointed_index: AtomicU64,
    /// Raised alarms as (member id, AlarmType), kept in the "alarm" bucket as well.
    alarms: BTreeSet<(u64, i32)>,
    /// Users, roles and permissions, kept in the auth buckets as well.
    auth: crate::auth::AuthStore,
    membership: members::Membership,
}

/// The bucket of raised alarms. Each record (no value) is keyed:
///
/// ```text
/// | member id u64 BE | alarm type i32 BE |
/// ```
pub(crate) const ALARM_BUCKET: &str = "alarm";
pub(crate) const ALARM_KEY_BYTES: usize = 12;

pub(crate) fn alarm_key(member_id: u64, alarm: i32) -> [u8; ALARM_KEY_BYTES] {
    let mut key = [0u8; ALARM_KEY_BYTES];
    key[..8].copy_from_slice(&member_id.to_be_bytes());
    key[8..].copy_from_slice(&alarm.to_be_bytes());
    key
}

impl Applier {
    /// Opens the MVCC state held in `db` (empty or written by an earlier applier).
    pub fn open(db: Db, limits: Limits) -> Result<Applier, ApplyError> {
        let backend = BtreeBackend::open(db).map_err(storage)?;
        let applied_index = backend.consistent_index().map_err(storage)?;
        let checkpointed_index = backend
            .db()
            .durable_applied_index()
            .map_err(|e| ApplyError::Storage(e.to_string()))?;
        if applied_index != checkpointed_index {
            // A freshly opened tree holds exactly its newest checkpoint; anything else is a
            // damaged file, reported rather than trusted.
            return Err(ApplyError::Storage(format!(
                "the tree's consistent index {applied_index} differs from its checkpoint's \
                 applied index {checkpointed_index}"
            )));
        }
        let mut alarms = BTreeSet::new();
        for (key, _) in backend.records(ALARM_BUCKET).map_err(storage)? {
            let key: [u8; ALARM_KEY_BYTES] = key.as_slice().try_into().map_err(|_| {
                ApplyError::Storage(format!("alarm bucket holds a bad key {key:?}"))
            })?;
            let member_id = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
            let alarm = i32::from_be_bytes(key[8..].try_into().expect("4 bytes"));
            alarms.insert((member_id, alarm));
        }
        let membership = members::Membership::open(&backend)?;
        let auth = auth::open_auth(&backend)?;
        let mut store = KvStore::open(backend).map_err(storage)?;
        let lessor = lease::open_lessor(&mut store)?;
        Ok(Applier {
            store,
            lessor,
            limits,
            applied_index,
            committed_index: applied_index,
            checkpointed_index: AtomicU64::new(checkpointed_index),
            alarms,
            membership,
            auth,
        })
    }

    /// Index of the newest applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Index of the newest entry whose effects are durable in the tree file.
    pub fn checkpointed_index(&self) -> u64 {
        self.checkpointed_index.load(Ordering::Acquire)
    }

    /// The MVCC store, for reads on the writer's thread.
    pub fn store(&self) -> &KvStore<BtreeBackend> {
        &self.store
    }

    pub fn db(&self) -> &Db {
        self.store.backend().db()
    }

    /// Serves a read at the applied state.
    pub fn range(
        &self,
        req: &basalt_proto::etcdserverpb::RangeRequest,
    ) -> Result<RangeResponse, MvccError> {
        validate_range(req, &self.limits)?;
        self.store.range(req)
    }

    /// Starts a read at the applied state, to be served in slices by
    /// [`KvStore::continue_range`] on [`Applier::store`] (this applier's or, once a snapshot
    /// was installed, its successor's).
    pub fn begin_range(
        &self,
        req: basalt_proto::etcdserverpb::RangeRequest,
    ) -> Result<RangeRead, MvccError> {
        validate_range(&req, &self.limits)?;
        self.store.begin_range(req)
    }

    /// Applies the committed entry at `index` (an empty `data` is a leader's no-op). Entries at
    /// or below the applied index were applied before (a replay) and give `None`.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Option<Outcome> {
        if index <= self.applied_index {
            return None;
        }
        assert_eq!(
            index,
            self.applied_index + 1,
            "committed entries arrive in order without gaps"
        );
        self.applied_index = index;
        if data.is_empty() {
            return None;
        }
        let request = match InternalRequest::decode(data) {
            Ok(request) => request,
            Err(error) => return Some(undecodable(index, &error)),
        };
        let mut result = self
            .authorize(request.auth_header.as_ref(), &request.request)
            .and_then(|()| self.apply_request(index, request.request));
        if let Err(error) = self.lessor.observe(&self.store) {
            result = Err(ApplyError::Storage(error.to_string()));
        }
        Some(Outcome {
            id: request.id,
            result,
        })
    }

    /// The raised alarms, as Maintenance.Alarm lists them.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    pub fn has_alarm(&self, alarm: AlarmType) -> bool {
        self.alarms
            .iter()
            .any(|&(_, raised)| raised == alarm as i32)
    }

    /// etcd's alarm apply: activate answers with the alarm (new or already raised), deactivate
    /// with the alarm it cleared (nothing if it was not raised), get with every alarm.
    fn apply_alarm(&mut self, req: &AlarmRequest) -> AlarmResponse {
        let member = (req.member_id, req.alarm);
        let known_alarm = AlarmType::try_from(req.alarm).is_ok_and(|a| a != AlarmType::None);
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => self.alarms(),
            Ok(AlarmAction::Activate) if known_alarm => {
                self.alarms.insert(member);
                self.store.backend_mut().set_record(
                    ALARM_BUCKET,
                    &alarm_key(member.0, member.1),
                    Some(&[]),
                );
                vec![AlarmMember {
                    member_id: member.0,
                    alarm: member.1,
                }]
            }
            Ok(AlarmAction::Deactivate) if self.alarms.remove(&member) => {
                self.store.backend_mut().set_record(
                    ALARM_BUCKET,
                    &alarm_key(member.0, member.1),
                    None,
                );
                vec![AlarmMember {
                    member_id: member.0,
                    alarm: member.1,
                }]
            }
            _ => Vec::new(),
        };
        AlarmResponse {
            header: Some(basalt_proto::etcdserverpb::ResponseHeader {
                revision: self.store.current_revision(),
                ..Default::default()
            }),
            alarms,
        }
    }

    /// etcd's capped and corrupt appliers: what a raised alarm refuses.
    fn refused_by_alarm(&self, request: &Option<Request>) -> Option<ApplyError> {
        if matches!(
            request,
            Some(Request::Alarm(_) | Request::MemberAttributes(_) | Request::MemberUpdate(_))
                | None
        ) {
            return None;
        }
        if self.has_alarm(AlarmType::Corrupt) {
            return Some(ApplyError::Corrupt);
        }
        (matches!(&request, Some(r) if takes_space(r)) && self.has_alarm(AlarmType::Nospace))
            .then_some(ApplyError::NoSpace)
    }

    fn apply_request(
        &mut self,
        index: u64,
        request: Option<Request>,
    ) -> Result<Applied, ApplyError> {
        if let Some(refusal) = self.refused_by_alarm(&request) {
            return Err(refusal);
        }
        let limits = &self.limits;
        let store = &mut self.store;
        let result = match request {
            Some(Request::Range(req)) => validate_range(&req, limits)
                .and_then(|()| store.range(&req))
                .map(Applied::Range),
            Some(Request::Put(req)) => validate_put(&req, limits)
                .and_then(|()| store.put(&req))
                .map(Applied::Put),
            Some(Request::DeleteRange(req)) => validate_delete_range(&req, limits)
                .and_then(|()| store.delete_range(&req))
                .map(Applied::DeleteRange),
            Some(Request::Txn(req)) => validate_txn(&req, limits)
                .and_then(|()| store.txn(&req))
                .map(Applied::Txn),
            Some(Request::Compaction(req)) => validate_compaction(&req, limits)
                .and_then(|()| store.compact(&req))
                .map(Applied::Compaction),
            Some(Request::Alarm(req)) => return Ok(Applied::Alarm(self.apply_alarm(&req))),
            Some(Request::LeaseGrant(req)) => return self.apply_lease_grant(&req),
            Some(Request::LeaseRevoke(req)) => return self.apply_lease_revoke(&req),
            Some(Request::LeaseCheckpoint(req)) => return self.apply_lease_checkpoint(&req),
            Some(
                auth @ (Request::AuthEnable(_)
                | Request::AuthDisable(_)
                | Request::AuthStatus(_)
                | Request::Authenticate(_)
                | Request::AuthUserAdd(_)
                | Request::AuthUserDelete(_)
                | Request::AuthUserGet(_)
                | Request::AuthUserList(_)
                | Request::AuthUserChangePassword(_)
                | Request::AuthUserGrantRole(_)
                | Request::AuthUserRevokeRole(_)
                | Request::AuthRoleAdd(_)
                | Request::AuthRoleGet(_)
                | Request::AuthRoleList(_)
                | Request::AuthRoleDelete(_)
                | Request::AuthRoleGrantPermission(_)
                | Request::AuthRoleRevokePermission(_)),
            ) => return self.apply_auth(index, auth),
            Some(Request::MemberAttributes(member)) => {
                return Ok(self.apply_member_attributes(&member))
            }
            Some(Request::MemberUpdate(req)) => return Ok(self.apply_member_update(&req)),
            None => {
                return Err(ApplyError::Undecodable {
                    index,
                    reason: "no request in the entry".into(),
                })
            }
        };
        result.map_err(|error| match error {
            // Applying writes only to the overlay: a tree write failing here is a fault.
            MvccError::Backend(reason) | MvccError::OutOfSpace(reason) => {
                ApplyError::Storage(reason)
            }
            other => ApplyError::Mvcc(other),
        })
    }

    /// Records applied but not yet written to the tree: they live in the backend's overlay,
    /// where reads find them, until the next [`Applier::commit`].
    pub fn uncommitted_records(&self) -> usize {
        self.store.backend().pending_records()
    }

    /// Writes everything applied since the last commit to the tree (not yet durable), with the
    /// applied index beside it. Cheap when nothing changed.
    pub fn commit(&mut self) -> Result<(), ApplyError> {
        if self.committed_index == self.applied_index && self.store.backend().pending_records() == 0
        {
            return Ok(());
        }
        let index = self.applied_index;
        self.store.backend_mut().commit(index).map_err(storage)?;
        self.committed_index = index;
        Ok(())
    }

    /// Commits, then makes the tree durable with the applied index: recovery replays the WAL
    /// from here.
    pub fn checkpoint(&mut self) -> Result<(), ApplyError> {
        self.commit()?;
        self.sync_commit()
    }

    /// Makes the newest [`Applier::commit`] durable with its applied index. Only `&self`: the
    /// tree syncs under its own writer lock, so whoever shares this applier behind a
    /// reader-writer lock keeps reading meanwhile.
    pub fn sync_commit(&self) -> Result<(), ApplyError> {
        if self.checkpointed_index() == self.committed_index {
            return Ok(());
        }
        self.db()
            .checkpoint(self.committed_index)
            .map_err(btree_error)?;
        self.checkpointed_index
            .store(self.committed_index, Ordering::Release);
        Ok(())
    }

    /// etcd's HashKV at `rev` (0: now) over the applied state.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash, MvccError> {
        hash_kv(&self.store, rev)
    }

    /// Maintenance.Hash: a crc32c over every bucket's keys and values in the newest commit
    /// (after committing what is applied). Comparable between Basalt members only.
    pub fn hash(&mut self) -> Result<u32, ApplyError> {
        self.commit()?;
        let read = self.db().begin_read().map_err(btree_error)?;
        let mut hash = 0u32;
        let buckets: Vec<String> = read.buckets().map(str::to_owned).collect();
        for bucket in buckets {
            hash = crc32c::crc32c_append(hash, bucket.as_bytes());
            let mut cursor = read.cursor(&bucket);
            let mut entry = cursor.first().map_err(btree_error)?;
            while let Some((key, value)) = entry {
                hash = crc32c::crc32c_append(hash, key);
                hash = crc32c::crc32c_append(hash, value);
                entry = cursor.next().map_err(btree_error)?;
            }
        }
        Ok(hash)
    }

    /// Rewrites the tree file compactly as of the newest [`Applier::commit`] (readers keep the
    /// old file until they finish) and makes it durable at that commit's applied index. Only
    /// `&self`, as [`Applier::sync_commit`].
    pub fn defragment(&self) -> Result<(), ApplyError> {
        self.db()
            .defragment(self.committed_index)
            .map_err(btree_error)?;
        self.checkpointed_index
            .store(self.committed_index, Ordering::Release);
        Ok(())
    }

    /// The tree file's size and the part of it that live pages use.
    pub fn db_size_bytes(&self) -> Result<(u64, u64), ApplyError> {
        let stats = self.db().stats().map_err(btree_error)?;
        let free_pages = stats.free_pages + stats.waiting_pages;
        let in_use_bytes =
            stats.high_water_pages.saturating_sub(free_pages) * stats.page_size_bytes as u64;
        Ok((stats.file_bytes, in_use_bytes))
    }
}

/// Whether applying `request` can grow the store, so that NOSPACE refuses it: etcd 3.5's
/// capped applier refuses a Put, a Txn that puts, and a LeaseGrant (checked against 3.5.1).
pub fn takes_space(request: &Request) -> bool {
    match request {
        Request::Put(_) | Request::LeaseGrant(_) => true,
        Request::Txn(txn) => txn_has_put(txn),
        _ => false,
    }
}

/// Whether a txn writes a key in either branch, nested txns included (etcd's quota cost > 0).
fn txn_has_put(txn: &basalt_proto::etcdserverpb::TxnRequest) -> bool {
    use basalt_proto::etcdserverpb::request_op::Request as Op;
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(Op::RequestPut(_)) => true,
            Some(Op::RequestTxn(nested)) => txn_has_put(nested),
            _ => false,
        })
}

/// The outcome of an entry whose bytes do not decode: an error every member reaches alike.
fn undecodable(index: u64, error: &prost::DecodeError) -> Outcome {
    Outcome {
        id: 0,
        result: Err(ApplyError::Undecodable {
            index,
            reason: error.to_string(),
        }),
    }
}

fn btree_error(error: crate::btree::Error) -> ApplyError {
    match error {
        crate::btree::Error::OutOfSpace(_) => ApplyError::OutOfSpace(error.to_string()),
        other => ApplyError::Storage(other.to_string()),
    }
}

fn storage(error: MvccError) -> ApplyError {
    match error {
        MvccError::OutOfSpace(reason) => ApplyError::OutOfSpace(reason),
        other => ApplyError::Storage(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
