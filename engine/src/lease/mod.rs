//! etcd's lessor: the leases of one member, the keys attached to each, and when each expires.
//!
//! Owns: Grant (etcd's minimum TTL), Revoke (every attached key deleted in one revision),
//! Renew, TimeToLive, Leases, attaching and detaching keys as writes land, remaining-TTL
//! checkpoints, and the leader-only expiry clock (primary / not primary, as etcd's lessor).
//! Must never: decide an expiry on a member that is not the leader (a follower's leases never
//! expire; the leader's expiries are carried out as revoke entries through the log), or read a
//! clock itself: every call that needs the time takes `now`, so tests and the simulator drive it.
//!
//! Keys follow the revision backend: [`Lessor::observe`] reads the records written since its
//! last call (as the watch hub does), so attachments need no hook in the MVCC write path and a
//! restart rebuilds them from the same records.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use basalt_proto::etcdserverpb::{request_op::Request, DeleteRangeRequest, RequestOp, TxnRequest};
use basalt_proto::mvccpb::KeyValue;
use bytes::Bytes;
use prost::Message;

use crate::mvcc::{KvStore, LeaseLookup, MvccError, Revision, RevisionBackend};

/// etcd's `MaxLeaseTTL`: a larger TTL is refused.
pub const LEASE_TTL_S_MAX: i64 = 9_000_000_000;

/// How often the leader records every lease's remaining TTL through the log (etcd's
/// `defaultLeaseCheckpointInterval`), so a new leader resumes the clocks instead of restarting
/// them.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// Leases per checkpoint entry (etcd's `maxLeaseCheckpointBatchSize`).
pub const CHECKPOINTS_PER_ENTRY_MAX: usize = 1000;

/// How long an expired lease handed to the leader waits before it is handed out again.
pub const EXPIRED_RETRY: Duration = Duration::from_secs(3);

/// Leases [`Lessor::expired`] hands out per call (etcd revokes at most
/// `leaseRevokeRate` = 1000 a second), so one expiry storm cannot flood the log.
pub const EXPIRED_PER_CALL_MAX: usize = 1000;

/// Lease errors, worded as etcd's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// gRPC NotFound.
    #[error("etcdserver: requested lease not found")]
    NotFound,
    /// gRPC FailedPrecondition.
    #[error("etcdserver: lease already exists")]
    Exists,
    /// gRPC OutOfRange.
    #[error("etcdserver: too large lease TTL")]
    TtlTooLarge,
    #[error(transparent)]
    Mvcc(#[from] MvccError),
}

/// The lease ids a store checks puts against, shared between the lessor (the writer) and the
/// store's [`LeaseLookup`].
#[derive(Debug, Clone, Default)]
pub struct LeaseIds(Arc<RwLock<HashSet<i64>>>);

impl LeaseLookup for LeaseIds {
    fn contains(&self, lease_id: i64) -> bool {
        self.0
            .read()
            .expect("the lease set panicked while written")
            .contains(&lease_id)
    }
}

impl LeaseIds {
    fn set(&self, lease_id: i64, present: bool) {
        let mut ids = self
            .0
            .write()
            .expect("the lease set panicked while written");
        if present {
            ids.insert(lease_id);
        } else {
            ids.remove(&lease_id);
        }
    }
}

struct Lease {
    ttl_s: i64,
    /// The remaining TTL of the newest checkpoint (0: none); a new leader extends by it.
    remaining_ttl_s: i64,
    /// None: never expires (every lease on a member that is not the leader).
    expiry: Option<Instant>,
    keys: BTreeSet<Bytes>,
}

/// What TimeToLive answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    /// Whole seconds left (etcd truncates); the granted TTL while no expiry runs.
    pub ttl_s: i64,
    pub granted_ttl_s: i64,
    /// The attached keys, in key order.
    pub keys: Vec<Bytes>,
}

/// The leases of one member.
pub struct Lessor {
    leases: BTreeMap<i64, Lease>,
    /// Which lease each attached key is on.
    key_leases: HashMap<Bytes, i64>,
    min_ttl_s: i64,
    /// This member leads: leases have expiries.
    primary: bool,
    /// Records up to this revision have been observed.
    observed_revision: i64,
    /// When the leader next checkpoints remaining TTLs (None while not the leader).
    next_checkpoint: Option<Instant>,
    ids: LeaseIds,
    /// Leases renewed here while another member leads: the leader's clock is the one that
    /// counts, so these go to it.
    renewals_for_leader: Vec<i64>,
}

impl Lessor {
    /// A lessor with no lease, for `store` as it is now (its keys are attached by the leases
    /// that [`Lessor::restore`] brings back). `min_ttl_s` is etcd's
    /// `ceil(3/2 * election timeout)`.
    pub fn new<B: RevisionBackend>(store: &KvStore<B>, min_ttl_s: i64) -> Self {
        Lessor {
            leases: BTreeMap::new(),
            key_leases: HashMap::new(),
            min_ttl_s,
            primary: false,
            observed_revision: store.current_revision(),
            next_checkpoint: None,
            ids: LeaseIds::default(),
            renewals_for_leader: Vec::new(),
        }
    }

    /// The lease ids for [`KvStore::set_lease_lookup`].
    pub fn lookup(&self) -> LeaseIds {
        self.ids.clone()
    }

    /// Brings back persisted leases `(id, ttl_s, remaining_ttl_s)` and attaches every live key
    /// of `store` that names one, as etcd's lessor does on start: `store` must be freshly
    /// opened, whose open noted those keys ([`KvStore::take_opened_leases`]). They never expire
    /// until [`Lessor::promote`].
    pub fn restore<B: RevisionBackend>(
        &mut self,
        store: &mut KvStore<B>,
        leases: &[(i64, i64, i64)],
    ) {
        for &(id, ttl_s, remaining_ttl_s) in leases {
            self.insert(id, ttl_s, remaining_ttl_s, None);
        }
        for (key, lease_id) in store.take_opened_leases() {
            self.attach(key, lease_id);
        }
        self.observed_revision = store.current_revision();
    }

    fn insert(&mut self, id: i64, ttl_s: i64, remaining_ttl_s: i64, expiry: Option<Instant>) {
        self.leases.insert(
            id,
            Lease {
                ttl_s,
                remaining_ttl_s,
                expiry,
                keys: BTreeSet::new(),
            },
        );
        self.ids.set(id, true);
    }

    /// etcd's Grant: the TTL is raised to the minimum; the id must be new and not 0 (a client's
    /// 0 is replaced by the proposer). Returns the TTL granted.
    pub fn grant(&mut self, id: i64, ttl_s: i64, now: Instant) -> Result<i64, LeaseError> {
        if id == 0 {
            // The proposer chooses an id for a grant without one; etcd's lessor refuses 0.
            return Err(LeaseError::NotFound);
        }
        if ttl_s > LEASE_TTL_S_MAX {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::Exists);
        }
        let ttl_s = ttl_s.max(self.min_ttl_s);
        let expiry = self.primary.then(|| now + seconds(ttl_s));
        self.insert(id, ttl_s, 0, expiry);
        Ok(ttl_s)
    }

    /// etcd's Revoke: deletes every attached key in one txn (one revision, none if no key is
    /// attached) and forgets the lease.
    pub fn revoke<B: RevisionBackend>(
        &mut self,
        id: i64,
        store: &mut KvStore<B>,
    ) -> Result<(), LeaseError> {
        self.observe(store)?;
        let lease = self.leases.remove(&id).ok_or(LeaseError::NotFound)?;
        self.ids.set(id, false);
        for key in &lease.keys {
            self.key_leases.remove(key);
        }
        if !lease.keys.is_empty() {
            let success = lease
                .keys
                .iter()
                .map(|key| RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    })),
                })
                .collect();
            store.txn(&TxnRequest {
                success,
                ..Default::default()
            })?;
        }
        self.observe(store)?;
        Ok(())
    }

    /// etcd's Renew (keep-alive), on the leader only: restarts the lease's clock and returns its
    /// TTL. An expired lease is not found, as in etcd (its revoke is on its way).
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<i64, LeaseError> {
        let primary = self.primary;
        let lease = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if let Some(expiry) = lease.expiry {
            if expiry <= now {
                return Err(LeaseError::NotFound);
            }
        }
        lease.remaining_ttl_s = 0;
        if primary {
            lease.expiry = Some(now + seconds(lease.ttl_s));
        } else {
            self.renewals_for_leader.push(id);
        }
        Ok(lease.ttl_s)
    }

    /// etcd's TimeToLive; None for a lease that does not exist.
    pub fn time_to_live(&self, id: i64, keys: bool, now: Instant) -> Option<TimeToLive> {
        let lease = self.leases.get(&id)?;
        let ttl_s = match lease.expiry {
            Some(expiry) => expiry.saturating_duration_since(now).as_secs() as i64,
            None => lease.ttl_s,
        };
        Some(TimeToLive {
            ttl_s,
            granted_ttl_s: lease.ttl_s,
            keys: if keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Every lease id, soonest expiry first (as etcd lists them), ids without a running clock
    /// after those with one, each group in id order.
    pub fn leases(&self) -> Vec<i64> {
        let mut ids: Vec<(Option<Instant>, i64)> = self
            .leases
            .iter()
            .map(|(&id, lease)| (lease.expiry, id))
            .collect();
        ids.sort_by_key(|&(expiry, id)| (expiry.is_none(), expiry, id));
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Attaches and detaches keys as the writes since the last call put them (with or without
    /// a lease) and delete them. Call it after every applied write.
    pub fn observe<B: RevisionBackend>(&mut self, store: &KvStore<B>) -> Result<(), MvccError> {
        let current = store.current_revision();
        if self.observed_revision >= current {
            return Ok(());
        }
        let mut records = Vec::new();
        store.backend().scan(
            Revision::new(self.observed_revision + 1, 0),
            &mut |revision, record| {
                records.push((revision, record.clone()));
                true
            },
        )?;
        for (revision, record) in records {
            let kv = KeyValue::decode(record.kv).map_err(|error| {
                MvccError::Backend(format!(
                    "record at revision {revision} does not decode: {error}"
                ))
            })?;
            self.detach(&kv.key);
            if !record.tombstone && kv.lease != 0 {
                self.attach(kv.key, kv.lease);
            }
        }
        self.observed_revision = current;
        Ok(())
    }

    fn attach(&mut self, key: Bytes, lease_id: i64) {
        // A put names only a lease that exists (checked before apply), but a restore may meet
        // a key whose lease was revoked without its keys (a lost lease bucket): it stays bare.
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.keys.insert(key.clone());
            self.key_leases.insert(key, lease_id);
        }
    }

    fn detach(&mut self, key: &Bytes) {
        if let Some(lease_id) = self.key_leases.remove(key) {
            if let Some(lease) = self.leases.get_mut(&lease_id) {
                lease.keys.remove(key);
            }
        }
    }

    /// This member became the leader: every lease's clock starts, from its checkpointed
    /// remaining TTL if it has one, else its TTL, plus `extend` (etcd extends by the election
    /// timeout so leases do not expire in the gap a leader change leaves).
    pub fn promote(&mut self, now: Instant, extend: Duration) {
        self.primary = true;
        self.next_checkpoint = Some(now + CHECKPOINT_INTERVAL);
        for lease in self.leases.values_mut() {
            let ttl_s = if lease.remaining_ttl_s > 0 {
                lease.remaining_ttl_s
            } else {
                lease.ttl_s
            };
            lease.expiry = Some(now + extend + seconds(ttl_s));
        }
    }

    /// This member is no longer the leader: its leases stop expiring.
    pub fn demote(&mut self) {
        self.primary = false;
        self.next_checkpoint = None;
        for lease in self.leases.values_mut() {
            lease.expiry = None;
        }
    }

    /// Leases whose time is up, at most [`EXPIRED_PER_CALL_MAX`], for the leader to propose
    /// revokes for. Empty on a member that does not lead.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.leases
            .iter()
            .filter(|(_, lease)| lease.expiry.is_some_and(|expiry| expiry <= now))
            .map(|(&id, _)| id)
            .take(EXPIRED_PER_CALL_MAX)
            .collect()
    }

    /// [`Lessor::expired`] for the leader's loop: each lease handed out is not handed out again
    /// for [`EXPIRED_RETRY`], the time its revoke has to apply (etcd's
    /// `expiredLeaseRetryInterval`); a revoke that got lost is proposed again after it.
    pub fn take_expired(&mut self, now: Instant) -> Vec<i64> {
        let expired = self.expired(now);
        for id in &expired {
            let lease = self.leases.get_mut(id).expect("just listed");
            lease.expiry = Some(now + EXPIRED_RETRY);
        }
        expired
    }

    /// This member leads (its leases' clocks run).
    /// The leases renewed here since the last call while this member did not lead.
    pub fn take_renewals_for_leader(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.renewals_for_leader)
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Applies a checkpoint entry: the remaining TTL a later leader resumes from.
    pub fn checkpoint(&mut self, id: i64, remaining_ttl_s: i64) -> Result<(), LeaseError> {
        let lease = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        lease.remaining_ttl_s = remaining_ttl_s;
        Ok(())
    }

    /// On the leader, once per [`CHECKPOINT_INTERVAL`]: the remaining TTLs to propose as
    /// checkpoint entries, at most [`CHECKPOINTS_PER_ENTRY_MAX`] a batch.
    pub fn take_checkpoints(&mut self, now: Instant) -> Vec<Vec<(i64, i64)>> {
        match self.next_checkpoint {
            Some(due) if due <= now => {
                self.next_checkpoint = Some(now + CHECKPOINT_INTERVAL);
                self.remaining(now)
                    .chunks(CHECKPOINTS_PER_ENTRY_MAX)
                    .map(<[_]>::to_vec)
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// The remaining TTL of every lease with a running clock, for the leader's checkpoint
    /// entry.
    pub fn remaining(&self, now: Instant) -> Vec<(i64, i64)> {
        self.leases
            .iter()
            .filter_map(|(&id, lease)| {
                let expiry = lease.expiry?;
                Some((id, expiry.saturating_duration_since(now).as_secs() as i64))
            })
            .collect()
    }

    /// The persisted form of every lease: `(id, ttl_s, remaining_ttl_s)`.
    pub fn persisted(&self) -> Vec<(i64, i64, i64)> {
        self.leases
            .iter()
            .map(|(&id, lease)| (id, lease.ttl_s, lease.remaining_ttl_s))
            .collect()
    }
}

fn seconds(ttl_s: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl_s).unwrap_or(0))
}
