//! The raft core's part in leases: the leader's expiry clock (promoted when this member leads,
//! stopped when it does not) and revoke entries proposed for expired leases, so every member
//! deletes their keys at the same revision.

use std::time::{Duration, Instant};

use basalt_proto::basaltpb::{internal_request::Request, InternalRequest};
use basalt_proto::etcdserverpb::LeaseRevokeRequest;
use prost::Message;

use super::Core;

impl Core {
    /// Starts or stops the lessor's clocks as leadership comes and goes; a new leader extends
    /// every lease by an election timeout, as etcd's does, so none expires in the gap.
    pub(super) fn lease_leadership(&mut self, leads: bool) {
        let lessor = self.applier.lessor_mut();
        if leads && !lessor.is_primary() {
            let extend = Duration::from_millis(self.config.election_timeout_ms);
            lessor.promote(Instant::now(), extend);
        } else if !leads && lessor.is_primary() {
            lessor.demote();
        }
    }

    /// Proposes a revoke entry (nobody waits on it) for each lease whose time is up.
    pub(super) fn revoke_expired_leases(&mut self) {
        for id in self.applier.lessor_mut().take_expired(Instant::now()) {
            let entry = InternalRequest {
                id: 0,
                request: Some(Request::LeaseRevoke(LeaseRevokeRequest { id })),
            };
            // A refused proposal (no leader any more) is retried after the lessor's retry
            // interval, or by the next leader.
            let _ = self.raw.propose(entry.encode_to_vec());
        }
    }
}
