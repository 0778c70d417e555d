//! `basalt backup`: continuous backup of an etcd v3 cluster (Basalt or etcd 3.5) into a
//! directory, which `basalt restore` turns into a data dir at a chosen revision or time.
//!
//! The directory holds:
//!
//! ```text
//! snap-<revision, 20 digits>-<taken, unix ms>.db   a Maintenance.Snapshot stream as received
//!                                                  (etcd's bbolt file and its sha256 trailer)
//! seg-<first revision, 20 digits>.log              events after the snapshots (segment.rs)
//! snapshot.tmp                                     a download in progress (removed on start)
//! ```
//!
//! The follower takes a snapshot (Status first: the snapshot is at or after that revision;
//! its own revision is read from its key bucket), then opens one Watch over the whole key
//! space from the next revision and appends each revision's events as one record; every
//! `--flush-interval` the queued records are written and fdatasync'd, and a progress request
//! (answered once the watch has sent everything up to a revision) lets an idle stream vouch
//! for the revisions it covers. After a restart it resumes from the newest durable record; a
//! watch refused because that revision was compacted becomes a fresh snapshot and a recorded
//! gap; any other failure is retried against the next endpoint.

mod index;
mod leases;
mod metrics;
mod restore;
pub mod segment;

pub use restore::restore;

use crate::config::BackupFlags;
use basalt_net::client::Client;
use basalt_net::node::snapshot as snapshot_file;
use basalt_net::tls::{DialTls, TlsConnector};
use basalt_proto::etcdserverpb::{
    watch_request::RequestUnion, LeaseLeasesRequest, LeaseLeasesResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, SnapshotRequest, SnapshotResponse, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use segment::{FlushError, Record, SegmentWriter};
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A segment is closed past this size (and at each snapshot), so retention can remove old ones.
const SEGMENT_ROTATE_BYTES: u64 = 64 << 20;
/// Records queued beyond this are flushed before the interval ends.
const PENDING_FLUSH_BYTES: usize = 8 << 20;
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a flush that met a full device tries again.
const FULL_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often a long download or replay reports its progress on stderr.
pub(crate) const STATUS_LINE_INTERVAL: Duration = Duration::from_secs(1);
const SNAPSHOT_TMP: &str = "snapshot.tmp";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A snapshot file of a backup directory.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFile {
    pub revision: i64,
    pub taken_ms: u64,
    pub path: PathBuf,
}

pub(crate) fn list_snapshots(dir: &Path) -> Result<Vec<SnapshotFile>, String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(stem) = name
            .strip_prefix("snap-")
            .and_then(|n| n.strip_suffix(".db"))
        else {
            continue;
        };
        let Some((revision, taken_ms)) = stem.split_once('-') else {
            continue;
        };
        if let (Ok(revision), Ok(taken_ms)) = (revision.parse(), taken_ms.parse()) {
            found.push(SnapshotFile {
                revision,
                taken_ms,
                path,
            });
        }
    }
    found.sort_by_key(|s| (s.revision, s.taken_ms));
    Ok(found)
}

/// Runs `basalt backup` until SIGTERM or SIGINT (then flushes what it received).
pub fn run(flags: BackupFlags) -> Result<(), String> {
    let dir = flags.dir.clone().ok_or("--dir is required")?;
    if flags.endpoints.is_empty() {
        return Err("--endpoints is required".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    let metrics = metrics::Metrics::default();
    if let Some(url) = &flags.listen_metrics_url {
        metrics::serve(resolve(url)?, metrics.clone())?;
    }
    let tls = dial_tls(&flags)?;
    let mut follower = Follower::open(&dir, flags, tls, stop, metrics)?;
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("basalt-backup")
        .spawn(move || async move { follower.follow().await })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())?
}

/// The connector for `https://` endpoints, or for every endpoint when a TLS flag is given;
/// built now so a bad certificate file stops the backup before it starts.
fn dial_tls(flags: &BackupFlags) -> Result<Option<TlsConnector>, String> {
    let dial = DialTls {
        ca_file: flags.cacert.clone(),
        cert_file: flags.cert.clone(),
        key_file: flags.key.clone(),
        insecure_skip_verify: flags.insecure_skip_tls_verify,
    };
    let any_https = flags.endpoints.iter().any(|e| e.starts_with("https://"));
    if !dial.is_configured() && !any_https {
        return Ok(None);
    }
    dial.connector().map(Some).map_err(|e| e.to_string())
}

/// Why a session with one endpoint ended.
enum Failure {
    /// The endpoint or the network: try the next endpoint.
    Retry(String),
    /// The backup directory: stop.
    Fatal(String),
    /// The backup directory's device is full: nothing was left behind; try again later.
    Full(String),
}

fn retry(error: impl std::fmt::Display) -> Failure {
    Failure::Retry(error.to_string())
}

enum WatchEnd {
    Stopped,
    /// The watch's start revision was compacted; the server keeps revisions after this one.
    Compacted(i64),
}

struct Follower {
    dir: PathBuf,
    flags: BackupFlags,
    tls: Option<TlsConnector>,
    writer: SegmentWriter,
    leases: leases::LeaseLog,
    next_lease_listing: Instant,
    /// Newest revision queued or written: everything up to it is in a snapshot or a record.
    last: Option<i64>,
    last_snapshot_ms: Option<u64>,
    stop: Arc<AtomicBool>,
    metrics: metrics::Metrics,
}

impl Follower {
    /// Opens (or creates) the directory and finds where the stream resumes: the newest
    /// readable record of the newest segment; a torn tail there is cut off.
    fn open(
        dir: &Path,
        flags: BackupFlags,
        tls: Option<TlsConnector>,
        stop: Arc<AtomicBool>,
        metrics: metrics::Metrics,
    ) -> Result<Follower, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let _ = fs::remove_file(dir.join(SNAPSHOT_TMP));
        let mut segments = segment::list(dir)?;
        let mut last = None;
        let mut writer = None;
        while let Some((_, path)) = segments.pop() {
            let scan = segment::scan(&path)?;
            if let Some(damage) = &scan.damage {
                eprintln!(
                    "basalt backup: {damage}; cutting it off at offset {} and resuming after the \
                     last good record",
                    scan.good_bytes
                );
            }
            let Some((_, newest)) = scan.records.last() else {
                index::remove_segment(&path)?;
                continue;
            };
            last = Some(newest.last_revision());
            writer = Some(SegmentWriter::open(
                dir,
                Some((&path, &scan)),
                SEGMENT_ROTATE_BYTES,
            )?);
            break;
        }
        let writer = match writer {
            Some(writer) => writer,
            None => SegmentWriter::open(dir, None, SEGMENT_ROTATE_BYTES)?,
        };
        let last_snapshot_ms = list_snapshots(dir)?.iter().map(|s| s.taken_ms).max();
        match last {
            Some(last) => eprintln!(
                "basalt backup: resuming {} after revision {last}",
                dir.display()
            ),
            None => eprintln!("basalt backup: starting {} with a snapshot", dir.display()),
        }
        Ok(Follower {
            dir: dir.to_owned(),
            leases: leases::LeaseLog::open(dir)?,
            next_lease_listing: Instant::now(),
            flags,
            tls,
            writer,
            last,
            last_snapshot_ms,
            stop,
            metrics,
        })
    }

    /// `--user` (and `--password`) as etcdctl reads them.
    fn credentials(&self) -> Option<(String, String)> {
        let user = self.flags.user.as_ref()?;
        Some(match (user.split_once(':'), &self.flags.password) {
            (Some((name, password)), _) => (name.to_owned(), password.to_owned()),
            (None, password) => (user.clone(), password.clone().unwrap_or_default()),
        })
    }

    /// Writes what is queued, makes it durable, and tells the metrics. A full device is waited
    /// out: the records stay queued and the watch is not read meanwhile, so the server holds
    /// what follows; a stop asked for meanwhile ends the wait (the next run resumes after the
    /// last durable revision).
    async fn flush(&mut self) -> Result<(), String> {
        let mut full_since = None;
        loop {
            match self.writer.flush() {
                Ok(()) => break,
                Err(FlushError::OutOfSpace(reason)) => {
                    let queued = self.writer.pending_bytes();
                    if self.stop.load(Ordering::SeqCst) {
                        return Err(format!(
                            "{reason}; stopped with {queued} bytes of records not written (the \
                             next run resumes after the last durable revision)"
                        ));
                    }
                    if full_since.is_none() {
                        eprintln!(
                            "basalt backup: the backup directory's device is full ({reason}); \
                             {queued} bytes of records wait in memory, tried again every \
                             {FULL_RETRY_INTERVAL:?}"
                        );
                        full_since = Some(Instant::now());
                    }
                    glommio::timer::sleep(FULL_RETRY_INTERVAL).await;
                }
                Err(FlushError::Failed(reason)) => return Err(reason),
            }
        }
        if let Some(since) = full_since {
            eprintln!(
                "basalt backup: the device took the records after {:.1} s; following again",
                since.elapsed().as_secs_f64()
            );
        }
        if let Some(last) = self.last {
            self.metrics.durable(last, self.writer.bytes_written);
        }
        Ok(())
    }

    async fn follow(&mut self) -> Result<(), String> {
        let mut next = 0usize;
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            let endpoint = self.flags.endpoints[next % self.flags.endpoints.len()].clone();
            let started = Instant::now();
            match self.session(&endpoint).await {
                Ok(()) => return self.flush().await,
                Err(Failure::Fatal(error)) => {
                    // Best effort on the way out: no wait for space.
                    let _ = self.writer.flush();
                    return Err(error);
                }
                Err(Failure::Retry(error) | Failure::Full(error)) => {
                    self.flush().await?;
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    eprintln!(
                        "basalt backup: {endpoint}: {error}; retrying with the next endpoint"
                    );
                    if started.elapsed() > RETRY_BACKOFF_MAX {
                        backoff = RETRY_BACKOFF_MIN;
                    }
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    next += 1;
                }
            }
        }
    }

    async fn session(&mut self, endpoint: &str) -> Result<(), Failure> {
        let mut client = connect(endpoint, self.tls.as_ref())
            .await
            .map_err(Failure::Retry)?;
        if let Some((name, password)) = self.credentials() {
            // A fresh token per session: the server may have expired the last one.
            client.authenticate(&name, &password).await.map_err(retry)?;
        }
        if self.last.is_none() {
            self.snapshot(&client, None).await?;
        }
        loop {
            match self.watch(&client).await? {
                WatchEnd::Stopped => return Ok(()),
                WatchEnd::Compacted(compacted) => {
                    let from = self.last.expect("a snapshot came first") + 1;
                    eprintln!(
                        "basalt backup: the server compacted revision {compacted} before the \
                         backup recorded revision {from}: taking a fresh snapshot; the \
                         revisions between are a gap"
                    );
                    self.snapshot(&client, Some(from)).await?;
                }
            }
        }
    }

    /// Takes a snapshot into the directory. At the start of the stream or after a gap
    /// (`gap_from`: the first revision not recorded), the stream continues from it.
    async fn snapshot(&mut self, client: &Client, gap_from: Option<i64>) -> Result<(), Failure> {
        let fatal = |e: String| Failure::Fatal(e);
        let before = client.status().await.map_err(retry)?;
        let floor = before.header.map_or(0, |h| h.revision);
        let tmp = self.dir.join(SNAPSHOT_TMP);
        download(client, &tmp).await?;
        let status = snapshot_file::status(&tmp, None).map_err(retry)?;
        // The key bucket's newest record undercounts when the newest revisions were deletes
        // that a compaction removed; the snapshot is never older than the Status before it.
        let revision = status.revision.max(floor);
        let taken_ms = now_ms();
        let path = self
            .dir
            .join(format!("snap-{revision:020}-{taken_ms:013}.db"));
        fs::rename(&tmp, &path)
            .map_err(|e| fatal(format!("{}: {e}", path.display())))
            .and_then(|()| segment::sync_dir(&self.dir).map_err(fatal))?;
        self.last_snapshot_ms = Some(taken_ms);
        self.metrics.snapshot_taken();
        eprintln!(
            "basalt backup: snapshot at revision {revision} ({} bytes) in {}",
            status.total_size_bytes,
            path.display()
        );
        let restarts_stream = match (self.last, gap_from) {
            (None, _) => true,
            (Some(_), Some(from)) => {
                if from < revision {
                    let gap = Record::Gap {
                        first: from,
                        last: revision - 1,
                        received_ms: taken_ms,
                    };
                    eprintln!(
                        "basalt backup: GAP: revisions {from}..={} are lost (compacted on the \
                         server before they were recorded); restore can reach revision \
                         {revision} and later from the new snapshot",
                        revision - 1
                    );
                    self.writer.push(&gap);
                    self.metrics.gap_recorded();
                }
                true
            }
            (Some(_), None) => false,
        };
        if restarts_stream && self.last.is_none_or(|last| last < revision) {
            self.writer.rotate();
            self.writer.push(&Record::Progress {
                revision,
                received_ms: taken_ms,
            });
            self.last = Some(revision);
        } else {
            self.writer.rotate();
        }
        self.flush().await.map_err(fatal)?;
        self.prune().map_err(fatal)
    }

    /// Removes the snapshots and segments that no restore within `--retention` needs: it keeps
    /// the newest snapshot taken at or before the retention's start, and everything after.
    fn prune(&mut self) -> Result<(), String> {
        let snapshots = list_snapshots(&self.dir)?;
        let cutoff = now_ms().saturating_sub(self.flags.retention.as_millis() as u64);
        let keep_from = snapshots
            .iter()
            .rposition(|s| s.taken_ms <= cutoff)
            .unwrap_or(0);
        for old in &snapshots[..keep_from] {
            fs::remove_file(&old.path).map_err(|e| format!("{}: {e}", old.path.display()))?;
        }
        let Some(oldest) = snapshots.get(keep_from) else {
            return Ok(());
        };
        let segments = segment::list(&self.dir)?;
        for pair in segments.windows(2) {
            // Every record of a segment is older than the next segment's first.
            if pair[1].0 <= oldest.revision + 1 {
                index::remove_segment(&pair[0].1)?;
            }
        }
        segment::sync_dir(&self.dir)
    }

    async fn watch(&mut self, client: &Client) -> Result<WatchEnd, Failure> {
        let fatal = |e: String| Failure::Fatal(e);
        let start = self.last.expect("a snapshot came first") + 1;
        let (mut sender, mut responses) = client
            .open("/etcdserverpb.Watch/Watch")
            .await
            .map_err(retry)?;
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: vec![0].into(),
                range_end: vec![0].into(),
                start_revision: start,
                progress_notify: true,
                // Replay needs each event's new kv (a delete's key); asking for prev_kv too
                // would have the server read and send every overwritten value for nothing.
                ..Default::default()
            })),
        };
        sender.send(&create).await.map_err(retry)?;
        // Messages are read by a task of their own: a read abandoned halfway (on the flush
        // timer) would lose a message.
        let (tx, rx) = glommio::channels::local_channel::new_bounded(256);
        glommio::spawn_local(async move {
            loop {
                let message = responses.message::<WatchResponse>().await;
                let more = matches!(message, Ok(Some(_)));
                if tx.send(message).await.is_err() || !more {
                    break;
                }
            }
        })
        .detach();
        let interval = self.flags.flush_interval.max(Duration::from_millis(1));
        let mut next_tick = Instant::now() + interval;
        let mut heard_since_tick = false;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let received = glommio::timer::timeout(wait, async { Ok(rx.recv().await) }).await;
            let response = match received {
                Ok(Some(Ok(Some(response)))) => response,
                Ok(Some(Ok(None))) => return Err(retry("the server ended the watch")),
                Ok(Some(Err(status))) => return Err(retry(status)),
                Ok(None) => return Err(retry("the watch stream closed")),
                Err(_) => {
                    self.flush().await.map_err(fatal)?;
                    if self.stop.load(Ordering::SeqCst) {
                        sender.cancel();
                        return Ok(WatchEnd::Stopped);
                    }
                    if self.snapshot_due() {
                        match self.snapshot(client, None).await {
                            Err(Failure::Full(reason)) => {
                                eprintln!(
                                    "basalt backup: no room for the periodic snapshot ({reason}); \
                                     the events go on being kept, the next snapshot is tried \
                                     after --snapshot-interval"
                                );
                                self.last_snapshot_ms = Some(now_ms());
                            }
                            other => other?,
                        }
                    }
                    if Instant::now() >= self.next_lease_listing {
                        self.list_leases(client).await?;
                        self.next_lease_listing = Instant::now() + self.flags.lease_list_interval;
                    }
                    if !heard_since_tick {
                        let progress = WatchRequest {
                            request_union: Some(RequestUnion::ProgressRequest(
                                WatchProgressRequest {},
                            )),
                        };
                        sender.send(&progress).await.map_err(retry)?;
                    }
                    heard_since_tick = false;
                    next_tick = Instant::now() + interval;
                    continue;
                }
            };
            heard_since_tick = heard_since_tick || !response.events.is_empty();
            if response.canceled {
                if response.compact_revision > 0 {
                    return Ok(WatchEnd::Compacted(response.compact_revision));
                }
                return Err(retry(format!(
                    "the server canceled the watch: {}",
                    response.cancel_reason
                )));
            }
            self.take(response);
            if self.writer.pending_bytes() > PENDING_FLUSH_BYTES {
                self.flush().await.map_err(fatal)?;
            }
        }
    }

    /// Records the granted TTL of each lease the server holds that the log lacks. Best effort:
    /// a failed call is reported and the listing tried again next time.
    async fn list_leases(&mut self, client: &Client) -> Result<(), Failure> {
        let listed: LeaseLeasesResponse = match client
            .unary("/etcdserverpb.Lease/LeaseLeases", &LeaseLeasesRequest {})
            .await
        {
            Ok(listed) => listed,
            Err(status) => {
                eprintln!("basalt backup: listing leases failed: {status}");
                return Ok(());
            }
        };
        let mut new = Vec::new();
        for lease in listed.leases.iter().filter(|l| !self.leases.knows(l.id)) {
            let asked = LeaseTimeToLiveRequest {
                id: lease.id,
                keys: false,
            };
            let answer: Result<LeaseTimeToLiveResponse, _> = client
                .unary("/etcdserverpb.Lease/LeaseTimeToLive", &asked)
                .await;
            match answer {
                // -1: revoked or expired since the listing.
                Ok(lease) if lease.ttl != -1 => new.push((lease.id, lease.granted_ttl)),
                Ok(_) => {}
                Err(status) => {
                    eprintln!(
                        "basalt backup: asking for lease {:x}'s TTL failed: {status}",
                        lease.id
                    );
                    break;
                }
            }
        }
        match self.leases.record(&new, now_ms()) {
            Ok(()) => Ok(()),
            Err(FlushError::OutOfSpace(reason)) => {
                eprintln!("basalt backup: no room to record lease TTLs ({reason}); tried again at the next listing");
                Ok(())
            }
            Err(FlushError::Failed(reason)) => Err(Failure::Fatal(reason)),
        }
    }

    /// Queues a watch response: its events as one record per revision, or (no events, not the
    /// creation answer) a progress mark at its header's revision.
    fn take(&mut self, response: WatchResponse) {
        let received_ms = now_ms();
        let last = self.last.expect("a snapshot came first");
        if let Some(header) = &response.header {
            self.metrics.server_at(header.revision);
        }
        if response.events.is_empty() {
            let revision = response.header.map_or(0, |h| h.revision);
            if !response.created && revision > last {
                self.writer.push(&Record::Progress {
                    revision,
                    received_ms,
                });
                self.last = Some(revision);
            }
            return;
        }
        // etcd sends a revision's events together, never split across responses.
        let mut events = response.events.into_iter().peekable();
        while let Some(first) = events.next() {
            let revision = first.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut group = vec![first];
            while let Some(next) =
                events.next_if(|e| e.kv.as_ref().map(|kv| kv.mod_revision) == Some(revision))
            {
                group.push(next);
            }
            if revision <= self.last.unwrap_or(0) {
                continue;
            }
            self.writer.push(&Record::Events {
                revision,
                received_ms,
                events: group,
            });
            self.last = Some(revision);
        }
    }

    fn snapshot_due(&self) -> bool {
        !self.flags.snapshot_interval.is_zero()
            && self.last_snapshot_ms.is_none_or(|taken| {
                now_ms().saturating_sub(taken) >= self.flags.snapshot_interval.as_millis() as u64
            })
    }
}

/// Streams Maintenance.Snapshot into `path` and makes it durable, reporting progress.
async fn download(client: &Client, path: &Path) -> Result<(), Failure> {
    let fatal = |e: std::io::Error| match FlushError::from_io(path.display(), e) {
        FlushError::OutOfSpace(reason) => {
            let _ = fs::remove_file(path);
            Failure::Full(reason)
        }
        FlushError::Failed(reason) => Failure::Fatal(reason),
    };
    let (mut sender, mut responses) = client
        .open("/etcdserverpb.Maintenance/Snapshot")
        .await
        .map_err(retry)?;
    sender.send(&SnapshotRequest {}).await.map_err(retry)?;
    sender.close().map_err(retry)?;
    let mut file = fs::File::create(path).map_err(fatal)?;
    let mut received = 0u64;
    let mut next_line = Instant::now() + STATUS_LINE_INTERVAL;
    while let Some(message) = responses
        .message::<SnapshotResponse>()
        .await
        .map_err(retry)?
    {
        file.write_all(&message.blob).map_err(fatal)?;
        received += message.blob.len() as u64;
        if Instant::now() >= next_line {
            eprintln!(
                "basalt backup: snapshot: {} MiB received, {} MiB to come",
                received >> 20,
                message.remaining_bytes >> 20
            );
            next_line = Instant::now() + STATUS_LINE_INTERVAL;
        }
    }
    file.sync_all().map_err(fatal)
}

/// A `--listen-metrics-url` address (host:port or http://host:port).
fn resolve(url: &str) -> Result<SocketAddr, String> {
    let host_port = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    first_address(url, host_port)
}

fn first_address(what: &str, host_port: &str) -> Result<SocketAddr, String> {
    host_port
        .to_socket_addrs()
        .map_err(|e| format!("{what}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what}: no address"))
}

/// Connects to one `--endpoints` entry as etcdctl does: `https://` dials with TLS, `http://`
/// without, and an endpoint without a scheme with TLS exactly when a TLS flag was given.
async fn connect(endpoint: &str, tls: Option<&TlsConnector>) -> Result<Client, String> {
    let (with_tls, host_port) = match endpoint.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some((scheme, _)) => return Err(format!("{endpoint}: unknown scheme {scheme:?}")),
        None => (tls.is_some(), endpoint),
    };
    let host_port = host_port.trim_end_matches('/');
    let addr = first_address(endpoint, host_port)?;
    let client = if with_tls {
        let tls = tls.ok_or_else(|| format!("{endpoint}: no TLS settings"))?;
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(host, _)| host);
        Client::connect_tls(addr, host, tls).await
    } else {
        Client::connect(addr).await
    };
    client.map_err(|status| status.to_string())
}

/// `basalt backup status D`: snapshots, segments, what a restore can reach, gaps and damage.
pub fn status(dir: &Path) -> Result<(), String> {
    let snapshots = list_snapshots(dir)?;
    println!("snapshots:");
    for s in &snapshots {
        let bytes = fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
        println!(
            "  revision {:>10}  taken {}  {bytes} bytes  {}",
            s.revision,
            format_time(s.taken_ms),
            s.path.display()
        );
    }
    println!("segments:");
    let mut gaps = Vec::new();
    let mut damaged = Vec::new();
    let mut covered: Option<(i64, u64)> = None;
    let mut first_received: Option<u64> = None;
    for (_, path) in segment::list(dir)? {
        let scan = segment::scan(&path)?;
        let name = path.display();
        match (scan.records.first(), scan.records.last()) {
            (Some((_, first)), Some((_, last))) => {
                println!(
                    "  {name}: {} records, revisions up to {}, received {} .. {}",
                    scan.records.len(),
                    last.last_revision(),
                    format_time(first.received_ms()),
                    format_time(last.received_ms()),
                );
                first_received.get_or_insert(first.received_ms());
                covered = Some((last.last_revision(), last.received_ms()));
            }
            _ => println!("  {name}: no records"),
        }
        // Restore reads past the index's end itself: a short index costs time, not data.
        let entries = index::read(&path);
        println!(
            "    index: {} entries covering {} of {} bytes",
            entries.len(),
            entries
                .last()
                .map_or(0, |e| e.end - segment::HEADER_BYTES as u64),
            scan.good_bytes.saturating_sub(segment::HEADER_BYTES as u64)
        );
        for (_, record) in &scan.records {
            if let Record::Gap { first, last, .. } = record {
                gaps.push((*first, *last));
            }
        }
        if let Some(damage) = scan.damage {
            println!("  DAMAGED: {damage}");
            damaged.push(damage);
        }
    }
    match (snapshots.first(), covered) {
        (Some(oldest), Some((last, last_ms))) => println!(
            "covered: revisions {}..={last}, times {} .. {}",
            oldest.revision,
            format_time(oldest.taken_ms.min(first_received.unwrap_or(u64::MAX))),
            format_time(last_ms)
        ),
        _ => println!("covered: nothing yet"),
    }
    for (first, last) in &gaps {
        println!("gap: revisions {first}..={last} (compacted before the backup recorded them)");
    }
    if gaps.is_empty() {
        println!("gaps: none");
    }
    match damaged.len() {
        0 => Ok(()),
        n => Err(format!("{n} damaged segment(s) in {}", dir.display())),
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC.
pub(crate) fn format_time(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// RFC 3339 (`2024-05-01T12:00:00Z`, fractions and `+hh:mm` offsets allowed) or seconds since
/// the epoch, as milliseconds since the epoch.
pub(crate) fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(secs) = text.parse::<f64>() {
        return Ok((secs * 1000.0) as u64);
    }
    let invalid = || format!("{text:?} is not an RFC 3339 time (2024-05-01T12:00:00Z)");
    let num = |s: &str| s.parse::<i64>().map_err(|_| invalid());
    let (date, time) = text.split_once(['T', 't', ' ']).ok_or_else(invalid)?;
    let mut ymd = date.splitn(3, '-');
    let (year, month, day) = (
        num(ymd.next().ok_or_else(invalid)?)?,
        num(ymd.next().ok_or_else(invalid)?)?,
        num(ymd.next().ok_or_else(invalid)?)?,
    );
    let (clock, offset_s) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-']).ok_or_else(invalid)?;
        let (clock, offset) = time.split_at(at);
        let (h, m) = offset[1..].split_once(':').ok_or_else(invalid)?;
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        (clock, sign * (num(h)? * 3600 + num(m)? * 60))
    };
    let mut hms = clock.splitn(3, ':');
    let (hour, minute) = (
        num(hms.next().ok_or_else(invalid)?)?,
        num(hms.next().ok_or_else(invalid)?)?,
    );
    let seconds: f64 = hms
        .next()
        .ok_or_else(invalid)?
        .parse()
        .map_err(|_| invalid())?;
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 - offset_s;
    Ok((secs * 1000 + (seconds * 1000.0) as i64).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let ms = 1_714_564_800_123;
        assert_eq!(format_time(ms), "2024-05-01T12:00:00.123Z");
        assert_eq!(parse_time("2024-05-01T12:00:00.123Z").unwrap(), ms);
        assert_eq!(parse_time("2024-05-01T14:00:00.123+02:00").unwrap(), ms);
        assert_eq!(parse_time("1714564800.123").unwrap(), ms);
        assert!(parse_time("yesterday").is_err());
    }
}
