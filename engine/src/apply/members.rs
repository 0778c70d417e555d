//! Cluster membership as the log decides it: every member's applier keeps the same member list
//! because it changes only by applying committed entries (membership change entries carrying a
//! `basaltpb.MemberChange`, and the `member_attributes` / `member_update` requests).
//!
//! Ids of removed members are kept forever, as etcd does, so that a removed member can never
//! come back under its old id.
//!
//! Records, one per member, in two buckets of their own:
//!
//! ```text
//! members          | member id u64 BE | → etcdserverpb.Member protobuf bytes
//! members_removed  | member id u64 BE | → (empty)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use basalt_proto::basaltpb::{member_change::Kind, MemberChange};
use basalt_proto::etcdserverpb::{Member, MemberUpdateRequest};
use prost::Message;

use super::{storage, undecodable, Applied, Applier, ApplyError, Outcome};
use crate::mvcc::BtreeBackend;

pub(crate) const MEMBERS_BUCKET: &str = "members";
pub(crate) const MEMBERS_REMOVED_BUCKET: &str = "members_removed";

/// The applied member list and the ids that were removed.
#[derive(Debug, Default)]
pub(super) struct Membership {
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
}

impl Membership {
    pub(super) fn open(backend: &BtreeBackend) -> Result<Membership, ApplyError> {
        let mut membership = Membership::default();
        for (key, value) in backend.records(MEMBERS_BUCKET).map_err(storage)? {
            let member = Member::decode(value.as_slice())
                .map_err(|e| ApplyError::Storage(format!("members bucket: {e}")))?;
            membership.members.insert(member_key_id(&key)?, member);
        }
        for (key, _) in backend.records(MEMBERS_REMOVED_BUCKET).map_err(storage)? {
            membership.removed.insert(member_key_id(&key)?);
        }
        Ok(membership)
    }
}

fn member_key_id(key: &[u8]) -> Result<u64, ApplyError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| ApplyError::Storage(format!("members bucket holds a bad key {key:?}")))
}

impl Applier {
    /// The members in id order.
    pub fn members(&self) -> Vec<Member> {
        self.membership.members.values().cloned().collect()
    }

    /// Whether `id` was a member once and was removed.
    pub fn is_removed(&self, id: u64) -> bool {
        self.membership.removed.contains(&id)
    }

    /// Applies the founding configuration of a new cluster at `index` (raft's bootstrap
    /// snapshot): every member named by `--initial-cluster`.
    pub fn bootstrap(&mut self, index: u64, members: &[Member]) {
        let outcome = self.apply(index, &[]);
        debug_assert!(outcome.is_none());
        for member in members {
            self.put_member(member.clone());
        }
    }

    /// Replaces the member list outside the log: for a tree restored from a snapshot file into
    /// a new cluster (etcd's `snapshot restore` rewrites membership the same way). Removed ids
    /// stay removed.
    pub fn reset_members(&mut self, members: &[Member]) {
        let old: Vec<u64> = self.membership.members.keys().copied().collect();
        for id in old {
            self.membership.members.remove(&id);
            self.store
                .backend_mut()
                .set_record(MEMBERS_BUCKET, &id.to_be_bytes(), None);
        }
        for member in members {
            self.put_member(member.clone());
        }
    }

    /// Applies a committed membership change entry at `index` (raft applies the change to
    /// its own configuration separately). A change whose context is empty (leaving a joint
    /// configuration) only advances the applied index; entries at or below the applied index
    /// were applied before (a replay) and give `None`.
    pub fn apply_conf_change(&mut self, index: u64, context: &[u8]) -> Option<Outcome> {
        if index <= self.applied_index {
            return None;
        }
        self.apply(index, &[]);
        if context.is_empty() {
            return None;
        }
        let change = match MemberChange::decode(context) {
            Ok(change) => change,
            Err(error) => return Some(undecodable(index, &error)),
        };
        let id = change.member.as_ref().map_or(0, |m| m.id);
        match change.kind() {
            Kind::Add => {
                if let Some(member) = change.member {
                    self.put_member(member);
                }
            }
            Kind::Remove => {
                self.membership.members.remove(&id);
                self.membership.removed.insert(id);
                let key = id.to_be_bytes();
                let backend = self.store.backend_mut();
                backend.set_record(MEMBERS_BUCKET, &key, None);
                backend.set_record(MEMBERS_REMOVED_BUCKET, &key, Some(&[]));
            }
            Kind::Promote => {
                if let Some(mut member) = self.membership.members.get(&id).cloned() {
                    member.is_learner = false;
                    self.put_member(member);
                }
            }
        }
        Some(Outcome {
            id: change.id,
            result: Ok(Applied::Members(self.members())),
        })
    }

    /// A running member's name and client URLs (etcd's ClusterMemberAttrSet). Unknown ids are
    /// ignored: the member may have been removed meanwhile.
    pub(super) fn apply_member_attributes(&mut self, attributes: &Member) -> Applied {
        if let Some(mut member) = self.membership.members.get(&attributes.id).cloned() {
            member.name.clone_from(&attributes.name);
            member.client_ur_ls.clone_from(&attributes.client_ur_ls);
            self.put_member(member);
        }
        Applied::Members(self.members())
    }

    /// Cluster.MemberUpdate: new peer URLs for a member.
    pub(super) fn apply_member_update(&mut self, update: &MemberUpdateRequest) -> Applied {
        if let Some(mut member) = self.membership.members.get(&update.id).cloned() {
            member.peer_ur_ls.clone_from(&update.peer_ur_ls);
            self.put_member(member);
        }
        Applied::Members(self.members())
    }

    fn put_member(&mut self, member: Member) {
        self.store.backend_mut().set_record(
            MEMBERS_BUCKET,
            &member.id.to_be_bytes(),
            Some(&member.encode_to_vec()),
        );
        self.membership.members.insert(member.id, member);
    }
}
