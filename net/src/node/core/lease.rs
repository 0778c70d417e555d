//! The raft core's part in leases: the leader's expiry clock (promoted when this member leads,
//! stopped when it does not), revoke entries proposed for expired leases, so every member
//! deletes their keys at the same revision, and checkpoints of remaining TTLs.

use std::time::{Duration, Instant};

use basalt_proto::basaltpb::{internal_request::Request, InternalRequest};
use basalt_proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use prost::Message;

use super::Core;

impl Core {
    /// Starts or stops the lessor's clocks as leadership comes and goes; a new leader extends
    /// every lease by an election timeout, as etcd's does, so none expires in the gap.
    pub(super) fn lease_leadership(&mut self, leads: bool) {
        let mut applier = self.applier.write();
        let lessor = applier.lessor_mut();
        if leads && !lessor.is_primary() {
            let extend = Duration::from_millis(self.config.election_timeout_ms);
            lessor.promote(Instant::now(), extend);
        } else if !leads && lessor.is_primary() {
            lessor.demote();
        }
    }

    /// The leader's lease duties each turn, as entries nobody waits on: a revoke for each
    /// lease whose time is up, and the periodic checkpoint of remaining TTLs.
    pub(super) fn lease_duties(&mut self) {
        let now = Instant::now();
        let (expired, checkpoints) = {
            let mut applier = self.applier.write();
            let lessor = applier.lessor_mut();
            (lessor.take_expired(now), lessor.take_checkpoints(now))
        };
        let mut requests: Vec<Request> = expired
            .into_iter()
            .map(|id| Request::LeaseRevoke(LeaseRevokeRequest { id }))
            .collect();
        requests.extend(checkpoints.into_iter().map(|batch| {
            Request::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: batch
                    .into_iter()
                    .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                    .collect(),
            })
        }));
        for request in requests {
            let entry = InternalRequest {
                auth_header: None,
                id: 0,
                request: Some(request),
            };
            // A refused proposal (no leader any more) is retried after the lessor's retry
            // interval, or by the next leader.
            let _ = self.raw.propose(entry.encode_to_vec());
        }
    }
}
