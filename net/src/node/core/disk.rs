//! The disk reserve: a full disk stops writes, not the member.
//!
//! Space is secured before an entry is proposed, the way the quota is checked: while the data
//! dir's filesystem has less than `--disk-reserve-bytes` free, a write that takes space is
//! refused and NOSPACE is raised through the log. The reserve is what the entries already
//! accepted still need (the tree pages of the overlay, checkpoints), so the device runs out, if
//! at all, at a tree commit or a segment preallocation, both of which undo themselves and are
//! retried here later ([`Core::retry_after_full`]); an ENOSPC never reaches apply. A WAL
//! segment being made counts as taken. While short, the raft log is compacted to the
//! checkpointed index and the WAL gives back every segment the tree holds, so space comes back
//! from the log itself: a follower cannot refuse what the leader sends, and a tree commit that
//! found the device full retries in that space.
//! Every tick the space is checked again, so the log says when it comes back; `etcdctl alarm
//! disarm` then takes writes again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use basalt_engine::apply::ApplyError;
use basalt_proto::basaltpb::{internal_request::Request, InternalRequest};
use basalt_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use prost::Message;

use super::Core;
use crate::metrics::metrics;

/// How old a look at the free space may be when a write asks: at 100 MB/s of writes this
/// lets 10 MB through past the reserve, a small part of it.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// A tree commit or checkpoint that found the device full, or a NOSPACE proposal that has not
/// applied, is tried again after this long.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct DiskReserve {
    data_dir: PathBuf,
    reserve_bytes: u64,
    checked: Option<Instant>,
    short: bool,
    /// A tree write met a full device: nothing is written to the tree before then.
    retry_at: Option<Instant>,
}

impl DiskReserve {
    pub(super) fn new(data_dir: PathBuf, reserve_bytes: u64) -> DiskReserve {
        DiskReserve {
            data_dir,
            reserve_bytes,
            checked: None,
            short: false,
            retry_at: None,
        }
    }

    /// Whether the filesystem holds less than the reserve plus `wal_owed_bytes` (what the WAL's
    /// next segment will still take; looked at again when the last look is older than
    /// [`CHECK_INTERVAL`]; a failed look keeps the previous answer), or a tree write is waiting
    /// out a full device.
    pub(super) fn short(&mut self, now: Instant, wal_owed_bytes: u64) -> bool {
        let due = self
            .checked
            .is_none_or(|at| now.duration_since(at) >= CHECK_INTERVAL);
        if self.reserve_bytes > 0 && due {
            self.checked = Some(now);
            self.look(wal_owed_bytes);
        }
        self.pressed()
    }

    /// The answer of the last look, without looking again.
    pub(super) fn pressed(&self) -> bool {
        self.short || self.retry_at.is_some()
    }

    fn look(&mut self, wal_owed_bytes: u64) {
        let Ok(available) = basalt_engine::disk::available_bytes(&self.data_dir) else {
            return;
        };
        metrics().disk_available_bytes.set(available as i64);
        let short = available < self.reserve_bytes.saturating_add(wal_owed_bytes);
        if short != self.short {
            if short {
                eprintln!(
                    "basalt: the data dir's filesystem has {available} bytes free, less than \
                     --disk-reserve-bytes ({}) plus the {wal_owed_bytes} bytes the WAL segment \
                     being made still takes: writes that take space are refused (NOSPACE); reads, \
                     watches and lease keep-alives go on",
                    self.reserve_bytes
                );
            } else {
                eprintln!(
                    "basalt: the data dir's filesystem has {available} bytes free again \
                     (reserve {}): `etcdctl alarm disarm` takes writes again",
                    self.reserve_bytes
                );
            }
            metrics().disk_reserve_short.set(i64::from(short));
        }
        self.short = short;
    }

    /// Whether a tree write may be tried now (none is waiting out a full device).
    pub(super) fn may_write_tree(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }
}

impl Core {
    /// Space before proposing: past the quota or short of the reserve, a write that takes space
    /// fails, and the first such write raises NOSPACE through the log (etcd's quota check).
    pub(super) fn out_of_space(&mut self) -> bool {
        let quota = self.config.quota_backend_bytes;
        let size_bytes = self
            .applier
            .read()
            .db_size_bytes()
            .map_or(0, |(size, _)| size);
        let over_quota = quota != 0 && size_bytes > quota;
        let wal_owed_bytes = self.wal.preallocation_owed_bytes();
        if !over_quota && !self.disk.short(Instant::now(), wal_owed_bytes) {
            return false;
        }
        self.raise_nospace();
        true
    }

    /// Each tick: a look at the space, so the log and metrics follow it with no writes coming,
    /// and NOSPACE raised as soon as the disk runs short.
    pub(super) fn check_disk(&mut self) {
        let wal_owed_bytes = self.wal.preallocation_owed_bytes();
        if self.disk.short(Instant::now(), wal_owed_bytes) {
            self.raise_nospace();
        }
    }

    fn raise_nospace(&mut self) {
        let now = Instant::now();
        let in_flight = self
            .nospace_proposed_at
            .is_some_and(|at| now.duration_since(at) < RETRY_INTERVAL);
        if self.applier.read().has_alarm(AlarmType::Nospace) || in_flight {
            return;
        }
        let raise = InternalRequest {
            auth_header: None,
            id: 0,
            request: Some(Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.config.member_id,
                alarm: AlarmType::Nospace as i32,
            })),
        };
        if self.propose_unanswered(raise.encode_to_vec()) {
            self.nospace_proposed_at = Some(now);
        }
    }

    /// Whether a tree commit or checkpoint may run now.
    pub(super) fn may_write_tree(&self) -> bool {
        self.disk.may_write_tree(Instant::now())
    }

    /// A tree write's outcome: a full device is not fatal (the write was undone; the WAL holds
    /// every applied entry and reads find them in the overlay): it is logged, NOSPACE is
    /// raised, and the write waits [`RETRY_INTERVAL`] before it is tried again. Success ends
    /// the wait. Every other error stays fatal.
    pub(super) fn retry_after_full(
        &mut self,
        what: &str,
        result: Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        match result {
            Ok(()) => {
                if self.disk.retry_at.take().is_some() {
                    eprintln!("basalt: the tree {what} succeeded again: the device has space");
                }
                Ok(())
            }
            Err(ApplyError::OutOfSpace(reason)) => {
                metrics().disk_full_errors_total.inc();
                if self.disk.retry_at.is_none() {
                    eprintln!(
                        "basalt: the tree {what} met a full device and was undone; nothing is \
                         lost (the WAL holds every applied entry) and it is retried every \
                         {RETRY_INTERVAL:?} until space is freed: {reason}"
                    );
                }
                self.disk.retry_at = Some(Instant::now() + RETRY_INTERVAL);
                self.raise_nospace();
                Ok(())
            }
            Err(other) => Err(other),
        }
    }
}
