//! `basalt restore`: a data dir at one revision of a backup directory: its newest snapshot at
//! or before that revision, restored as `snapshot restore` does, then every later revision's
//! events up to it applied as one transaction each, so each key's create and mod revisions,
//! version and lease come out as the server had them and HashKV at that revision agrees.
//!
//! Leases: the events carry each key's lease id but not the grants, TTLs or revokes after the
//! snapshot. A lease a replayed put names that the snapshot lacks is granted again, with the
//! TTL the backup's lease listing recorded for it (`--lease-ttl` for one it never saw); a
//! revoke shows as the deletes of its keys, which replay, and the lease itself expires by its
//! TTL. Every restored lease's clock starts when the member starts.

use super::index::{self as segment_index, Entry};
use super::leases;
use super::segment::{self, Damage, Record};
use super::{format_time, list_snapshots, parse_time, SnapshotFile, STATUS_LINE_INTERVAL};
use crate::config::PitrFlags;
use basalt_engine::apply::{Applied, Applier};
use basalt_engine::btree::Db;
use basalt_engine::mvcc::Limits;
use basalt_net::node::snapshot as snapshot_file;
use basalt_proto::basaltpb::{internal_request::Request, AuthHeader, InternalRequest};
use basalt_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RequestOp, TxnRequest,
};
use basalt_proto::mvccpb::{event::EventType, Event};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Revisions applied between two commits of the tree, bounding the overlay's memory.
const COMMIT_EVERY_REVISIONS: u64 = 10_000;

/// What restore knows of the segments from their indexes, plus the records no index covers.
struct Index {
    segments: Vec<SegmentView>,
    gaps: Vec<(i64, i64)>,
    /// The first damage among the records read here: nothing after it is read.
    damage: Option<Damage>,
}

/// One segment: its trusted index entries, then the records after them, read from the file.
struct SegmentView {
    first: i64,
    path: PathBuf,
    entries: Vec<Entry>,
    tail: Vec<(u64, Record)>,
}

impl SegmentView {
    /// Where the records at or after `revision` start: the last entry beginning at or before
    /// it (the segment's start when none does).
    fn offset_of(&self, revision: i64) -> u64 {
        let at = self
            .entries
            .partition_point(|e| e.first_revision <= revision);
        match at {
            0 => 0,
            n => self.entries[n - 1].offset,
        }
    }
}

fn index(dir: &Path) -> Result<Index, String> {
    let mut index = Index {
        segments: Vec::new(),
        gaps: Vec::new(),
        damage: None,
    };
    for (first, path) in segment::list(dir)? {
        let entries = segment_index::read(&path);
        let indexed_to = entries.last().map_or(0, |e| e.end);
        for entry in entries.iter().filter(|e| e.has_gap) {
            let scan = segment::scan_range(&path, entry.offset, entry.end)?;
            index
                .gaps
                .extend(scan.records.iter().filter_map(|(_, r)| match r {
                    Record::Gap { first, last, .. } => Some((*first, *last)),
                    _ => None,
                }));
        }
        let scan = segment::scan_range(&path, indexed_to, u64::MAX)?;
        for (_, record) in &scan.records {
            if let Record::Gap { first, last, .. } = record {
                index.gaps.push((*first, *last));
            }
        }
        index.segments.push(SegmentView {
            first,
            path,
            entries,
            tail: scan.records,
        });
        if scan.damage.is_some() {
            index.damage = scan.damage;
            break;
        }
    }
    Ok(index)
}

impl Index {
    /// The newest revision the segments vouch for.
    fn covered(&self) -> Option<i64> {
        self.segments.iter().rev().find_map(|segment| {
            let tail = segment.tail.iter().map(|(_, r)| r.last_revision()).max();
            tail.or(segment.entries.last().map(|e| e.last_revision))
        })
    }

    /// The newest revision received at or before `at_ms`: whole entries are judged by their
    /// receive times, and only an entry straddling `at_ms` is read.
    fn revision_at(&self, at_ms: u64) -> Result<Option<i64>, String> {
        let newest_by = |records: &[(u64, Record)]| {
            records
                .iter()
                .filter(|(_, r)| r.received_ms() <= at_ms && !matches!(r, Record::Gap { .. }))
                .map(|(_, r)| r.last_revision())
                .max()
        };
        let mut found = None;
        for segment in &self.segments {
            for entry in &segment.entries {
                if entry.max_received_ms <= at_ms && !entry.has_gap {
                    found = found.max(Some(entry.last_revision));
                } else if entry.min_received_ms <= at_ms {
                    let scan = segment::scan_range(&segment.path, entry.offset, entry.end)?;
                    if let Some(damage) = scan.damage {
                        return Err(damage.to_string());
                    }
                    found = found.max(newest_by(&scan.records));
                }
            }
            found = found.max(newest_by(&segment.tail));
        }
        Ok(found)
    }
}

/// Builds `data_dir` for `member` at the point `flags` names; returns a line describing it.
pub fn restore(
    flags: &PitrFlags,
    data_dir: &Path,
    member: &snapshot_file::RestoredMember,
) -> Result<String, String> {
    let dir = &flags.backup_dir;
    let index = index(dir)?;
    let covered = index.covered();
    let damage_note = || match &index.damage {
        Some(damage) => format!("; {damage}, and nothing after it is read"),
        None => String::new(),
    };
    let target = match (flags.to_revision, &flags.to_time) {
        (Some(revision), _) => revision,
        (None, Some(time)) => {
            let at_ms = parse_time(time)?;
            index.revision_at(at_ms)?.ok_or_else(|| {
                format!(
                    "the backup in {} received nothing at or before {}{}",
                    dir.display(),
                    format_time(at_ms),
                    damage_note()
                )
            })?
        }
        (None, None) => return Err("--to-revision or --to-time is required".into()),
    };
    let Some(covered) = covered else {
        return Err(format!(
            "the backup in {} holds no records{}",
            dir.display(),
            damage_note()
        ));
    };
    if target > covered {
        return Err(format!(
            "revision {target} is past what the backup in {} reaches: it reaches revision \
             {covered}{}",
            dir.display(),
            damage_note()
        ));
    }
    let snapshots = list_snapshots(dir)?;
    let Some(snapshot) = snapshots
        .iter()
        .rev()
        .find(|s| s.revision <= target)
        .cloned()
    else {
        return Err(match snapshots.first() {
            Some(oldest) => format!(
                "revision {target} is older than the backup's oldest snapshot (revision {})",
                oldest.revision
            ),
            None => format!("the backup in {} holds no snapshot", dir.display()),
        });
    };
    if let Some((first, last)) = index
        .gaps
        .iter()
        .find(|(first, last)| *first <= target && *last > snapshot.revision)
    {
        return Err(format!(
            "revisions {first}..={last} are a recorded gap (compacted on the server before the \
             backup recorded them): revision {target} cannot be restored from snapshot {}; \
             revision {} and later can",
            snapshot.revision,
            last + 1
        ));
    }
    let mut replayed = Replay {
        recorded_ttls: leases::read(dir)?,
        fallback_ttl: flags.lease_ttl,
        ..Replay::default()
    };
    snapshot_file::restore_replaying(
        &snapshot.path,
        data_dir,
        snapshot_file::RestoreOptions::default(),
        member,
        |db, applied| replayed.run(db, applied, &index, &snapshot, target),
    )?;
    Ok(format!(
        "restored revision {target} from {}: snapshot at revision {} and {} revisions replayed \
         ({} leases granted again with the TTL the backup recorded, {} with --lease-ttl {} s)",
        dir.display(),
        replayed.base,
        replayed.revisions,
        replayed.leases_granted - replayed.leases_without_ttl,
        replayed.leases_without_ttl,
        flags.lease_ttl
    ))
}

#[derive(Default)]
struct Replay {
    base: i64,
    revisions: u64,
    /// Granted TTLs by lease id, from the backup's lease listing.
    recorded_ttls: HashMap<i64, i64>,
    /// The TTL of a lease the listing never saw.
    fallback_ttl: i64,
    leases_granted: u64,
    leases_without_ttl: u64,
}

impl Replay {
    fn run(
        &mut self,
        db: Db,
        applied: u64,
        index: &Index,
        snapshot: &SnapshotFile,
        target: i64,
    ) -> Result<(Db, u64), String> {
        let limits = Limits {
            max_txn_ops: usize::MAX,
            max_request_bytes: usize::MAX,
        };
        let mut applier = Applier::open(db, limits).map_err(|e| e.to_string())?;
        debug_assert_eq!(applier.applied_index(), applied);
        self.base = applier.store().current_revision();
        if self.base > target {
            return Err(format!(
                "snapshot {} holds revision {}, past revision {target}",
                snapshot.path.display(),
                self.base
            ));
        }
        let mut next = self.base + 1;
        let mut leases = HashSet::new();
        let mut next_line = Instant::now() + STATUS_LINE_INTERVAL;
        // The segment holding `next` is the last one whose first revision is at or before it;
        // its index tells where in it to start reading.
        let start = index
            .segments
            .iter()
            .rposition(|segment| segment.first <= next)
            .unwrap_or(0);
        let start_offset = index.segments[start..]
            .first()
            .map_or(0, |segment| segment.offset_of(next));
        'segments: for (i, view) in index.segments[start..].iter().enumerate() {
            let path = &view.path;
            let from = if i == 0 { start_offset } else { 0 };
            let scan = segment::scan_range(path, from, u64::MAX)?;
            for (_, record) in scan.records {
                let Record::Events {
                    revision, events, ..
                } = record
                else {
                    continue;
                };
                if revision < next {
                    continue;
                }
                if revision > target {
                    break 'segments;
                }
                if revision != next {
                    return Err(format!(
                        "the backup lacks revisions {next}..={} (found revision {revision} next \
                         in {})",
                        revision - 1,
                        path.display()
                    ));
                }
                self.apply(&mut applier, revision, events, &mut leases)?;
                next += 1;
                if self.revisions.is_multiple_of(COMMIT_EVERY_REVISIONS) {
                    applier.commit().map_err(|e| e.to_string())?;
                }
                if Instant::now() >= next_line {
                    eprintln!(
                        "basalt restore: replayed up to revision {revision} of {target} ({} \
                         revisions)",
                        self.revisions
                    );
                    next_line = Instant::now() + STATUS_LINE_INTERVAL;
                }
            }
            if let Some(damage) = scan.damage {
                if next <= target {
                    return Err(format!(
                        "{damage}: restore does not cross it; the backup before it reaches \
                         revision {}",
                        next - 1
                    ));
                }
            }
        }
        if next <= target {
            return Err(format!(
                "the backup ends at revision {}, before revision {target}",
                next - 1
            ));
        }
        applier.checkpoint().map_err(|e| e.to_string())?;
        Ok((applier.db().clone(), applier.applied_index()))
    }

    /// Applies one revision's events as one transaction, granting first the leases its puts
    /// name that the store lacks.
    fn apply(
        &mut self,
        applier: &mut Applier,
        revision: i64,
        events: Vec<Event>,
        leases: &mut HashSet<i64>,
    ) -> Result<(), String> {
        let auth = applier.auth().snapshot();
        // With auth on, the transaction goes in as root, who may write every key.
        let auth_header = auth.is_enabled().then(|| AuthHeader {
            username: "root".into(),
            auth_revision: auth.revision(),
        });
        let mut ops = Vec::with_capacity(events.len());
        for event in events {
            let kv = event.kv.unwrap_or_default();
            let op = if event.r#type == EventType::Delete as i32 {
                request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: kv.key,
                    ..Default::default()
                })
            } else {
                if kv.lease != 0 && leases.insert(kv.lease) {
                    let recorded = self.recorded_ttls.get(&kv.lease).copied();
                    let grant = Request::LeaseGrant(LeaseGrantRequest {
                        ttl: recorded.unwrap_or(self.fallback_ttl),
                        id: kv.lease,
                    });
                    // Refused with "lease already exists" when the snapshot holds it.
                    if let Some(Ok(_)) = self.submit(applier, None, grant).map(|o| o.result) {
                        self.leases_granted += 1;
                        self.leases_without_ttl += u64::from(recorded.is_none());
                    }
                }
                request_op::Request::RequestPut(PutRequest {
                    key: kv.key,
                    value: kv.value,
                    lease: kv.lease,
                    ..Default::default()
                })
            };
            ops.push(RequestOp { request: Some(op) });
        }
        let txn = Request::Txn(TxnRequest {
            success: ops,
            ..Default::default()
        });
        let outcome = self.submit(applier, auth_header, txn);
        match outcome.map(|o| o.result) {
            Some(Ok(Applied::Txn(_))) => {}
            Some(Err(error)) => {
                return Err(format!("replaying revision {revision}: {error}"));
            }
            other => return Err(format!("replaying revision {revision}: {other:?}")),
        }
        let now = applier.store().current_revision();
        if now != revision {
            return Err(format!(
                "replaying revision {revision} left the store at revision {now}: the backup's \
                 events do not follow its snapshot"
            ));
        }
        self.revisions += 1;
        Ok(())
    }

    fn submit(
        &self,
        applier: &mut Applier,
        auth_header: Option<AuthHeader>,
        request: Request,
    ) -> Option<basalt_engine::apply::Outcome> {
        let entry = InternalRequest {
            id: 0,
            auth_header,
            request: Some(request),
        };
        let index = applier.applied_index() + 1;
        applier.apply(index, &entry.encode_to_vec())
    }
}
