//! Lease entries of the log applied to the lessor, and the lease bucket that keeps leases
//! across restarts (their clocks restart when a leader promotes them, as etcd's do).
//!
//! One lease bucket record per lease:
//!
//! ```text
//! key    byte 0         8
//!        +--------------+
//!        | id  i64 BE   |
//!        +--------------+
//! value  byte 0    1              9                   17            21
//!        +---------+--------------+-------------------+-------------+
//!        | version | ttl_s i64 BE | remaining_ttl_s   | crc32c u32  |
//!        | 0x01    |              | i64 BE (0: none)  | BE of 0..17 |
//!        +---------+--------------+-------------------+-------------+
//! ```

use std::time::Instant;

use basalt_proto::etcdserverpb::{
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, ResponseHeader,
};

use super::{storage, Applied, Applier, ApplyError};
use crate::lease::{LeaseError, Lessor};
use crate::mvcc::{BtreeBackend, KvStore};

pub(crate) const LEASE_BUCKET: &str = "lease";
const LEASE_RECORD_VERSION: u8 = 1;
const LEASE_RECORD_BYTES: usize = 21;

/// etcd's minimum lease TTL for its default timing: ceil(3/2 x the 1000 ms election timeout).
pub const MIN_LEASE_TTL_S: i64 = 2;

pub(crate) fn encode_record(ttl_s: i64, remaining_ttl_s: i64) -> [u8; LEASE_RECORD_BYTES] {
    let mut record = [0u8; LEASE_RECORD_BYTES];
    record[0] = LEASE_RECORD_VERSION;
    record[1..9].copy_from_slice(&ttl_s.to_be_bytes());
    record[9..17].copy_from_slice(&remaining_ttl_s.to_be_bytes());
    let crc = crc32c::crc32c(&record[..17]);
    record[17..].copy_from_slice(&crc.to_be_bytes());
    record
}

pub(crate) fn decode_record(key: &[u8], value: &[u8]) -> Result<(i64, i64, i64), String> {
    let id = i64::from_be_bytes(key.try_into().map_err(|_| format!("key {key:?}"))?);
    if value.len() != LEASE_RECORD_BYTES {
        return Err(format!("lease {id:x}: {} bytes", value.len()));
    }
    if value[0] != LEASE_RECORD_VERSION {
        return Err(format!("lease {id:x}: format version {}", value[0]));
    }
    let crc = u32::from_be_bytes(value[17..].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&value[..17]) {
        return Err(format!("lease {id:x}: checksum mismatch"));
    }
    let ttl_s = i64::from_be_bytes(value[1..9].try_into().expect("8 bytes"));
    let remaining_ttl_s = i64::from_be_bytes(value[9..17].try_into().expect("8 bytes"));
    Ok((id, ttl_s, remaining_ttl_s))
}

/// The lessor of an opened store: its leases from the lease bucket, their keys from the store,
/// and the store's lease lookup pointed at it.
pub(super) fn open_lessor(store: &mut KvStore<BtreeBackend>) -> Result<Lessor, ApplyError> {
    let mut leases = Vec::new();
    for (key, value) in store.backend().records(LEASE_BUCKET).map_err(storage)? {
        let lease = decode_record(&key, &value)
            .map_err(|reason| ApplyError::Storage(format!("lease bucket: {reason}")))?;
        leases.push(lease);
    }
    let mut lessor = Lessor::new(store, MIN_LEASE_TTL_S);
    lessor.restore(store, &leases);
    store.set_lease_lookup(Box::new(lessor.lookup()));
    Ok(lessor)
}

fn lease_error(error: LeaseError) -> ApplyError {
    match error {
        LeaseError::Mvcc(error) => storage(error),
        other => ApplyError::Lease(other),
    }
}

impl Applier {
    /// The leases, for the leader's renewals, TimeToLive and expiry checks.
    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    pub fn lessor_mut(&mut self) -> &mut Lessor {
        &mut self.lessor
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.store.current_revision(),
            ..Default::default()
        })
    }

    fn persist_lease(&mut self, id: i64, record: Option<(i64, i64)>) {
        let value = record.map(|(ttl_s, remaining_ttl_s)| encode_record(ttl_s, remaining_ttl_s));
        self.store.backend_mut().set_record(
            LEASE_BUCKET,
            &id.to_be_bytes(),
            value.as_ref().map(|v| v.as_slice()),
        );
    }

    pub(super) fn apply_lease_grant(
        &mut self,
        req: &LeaseGrantRequest,
    ) -> Result<Applied, ApplyError> {
        // Only the leader's clock matters (a follower's leases never expire); reading it here
        // keeps the lessor itself clock-free.
        let ttl_s = self
            .lessor
            .grant(req.id, req.ttl, Instant::now())
            .map_err(lease_error)?;
        self.persist_lease(req.id, Some((ttl_s, 0)));
        Ok(Applied::LeaseGrant(LeaseGrantResponse {
            header: self.header(),
            id: req.id,
            ttl: ttl_s,
            error: String::new(),
        }))
    }

    pub(super) fn apply_lease_revoke(
        &mut self,
        req: &LeaseRevokeRequest,
    ) -> Result<Applied, ApplyError> {
        self.lessor
            .revoke(req.id, &mut self.store)
            .map_err(lease_error)?;
        self.persist_lease(req.id, None);
        Ok(Applied::LeaseRevoke(LeaseRevokeResponse {
            header: self.header(),
        }))
    }

    pub(super) fn apply_lease_checkpoint(
        &mut self,
        req: &LeaseCheckpointRequest,
    ) -> Result<Applied, ApplyError> {
        for checkpoint in &req.checkpoints {
            // A lease revoked since the leader took the checkpoint is simply gone, as in etcd.
            if self
                .lessor
                .checkpoint(checkpoint.id, checkpoint.remaining_ttl)
                .is_ok()
            {
                let ttl_s = self
                    .lessor
                    .time_to_live(checkpoint.id, false, Instant::now())
                    .map(|ttl| ttl.granted_ttl_s)
                    .unwrap_or(0);
                self.persist_lease(checkpoint.id, Some((ttl_s, checkpoint.remaining_ttl)));
            }
        }
        Ok(Applied::LeaseCheckpoint(LeaseCheckpointResponse {
            header: self.header(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_record_round_trips_and_damage_is_named() {
        let record = encode_record(60, 7);
        let key = 42i64.to_be_bytes();
        assert_eq!(decode_record(&key, &record), Ok((42, 60, 7)));
        let mut flipped = record;
        flipped[3] ^= 1;
        let mut versioned = record;
        versioned[0] = 2;
        let cases = [
            (&flipped[..], "checksum mismatch"),
            (&versioned[..], "format version 2"),
            (&record[..20], "20 bytes"),
        ];
        for (value, reason) in cases {
            let error = decode_record(&key, value).unwrap_err();
            assert!(error.contains(reason), "{error}");
        }
    }
}
