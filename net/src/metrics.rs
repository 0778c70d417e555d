//! The `/metrics` registry: etcd 3.5's metric names and labels, in Prometheus text format, so
//! dashboards and alerts written for etcd read Basalt unchanged.
//!
//! Every metric is a fixed field of one process-wide [`Metrics`] made of atomics: recording is a
//! relaxed atomic add on the hot path (no lock, no allocation, no map lookup), and gRPC's
//! per-method metrics are arrays indexed by the method's position in
//! [`basalt_proto::METHODS`]. Rendering (a scrape) is the only place that formats text.

use crate::status::Code;
use basalt_engine::crypt::SharedKeyring;
use basalt_proto::{MethodInfo, METHODS};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// gRPC status codes 0..=16, the label space of `grpc_code`.
const GRPC_CODES: usize = 17;

/// etcd's buckets for disk latency histograms (`etcd_disk_wal_fsync_duration_seconds` and
/// `etcd_disk_backend_commit_duration_seconds`): 1 ms doubling 14 times, up to ~8 s.
const DISK_BUCKETS_S: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A Prometheus histogram over [`DISK_BUCKETS_S`]; the sum is kept in nanoseconds so it stays
/// an integer atomic.
#[derive(Default)]
pub struct DiskHistogram {
    buckets: [AtomicU64; DISK_BUCKETS_S.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl DiskHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = DISK_BUCKETS_S.iter().position(|&le| seconds <= le) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
    }
}

/// Per-method gRPC counts, indexed by the method's position in [`METHODS`].
pub struct GrpcMetrics {
    started: Box<[Counter]>,
    msg_received: Box<[Counter]>,
    msg_sent: Box<[Counter]>,
    /// `METHODS.len() * GRPC_CODES` counters: row = method, column = code.
    handled: Box<[Counter]>,
}

impl GrpcMetrics {
    fn new() -> Self {
        let counters = |n: usize| (0..n).map(|_| Counter::default()).collect();
        Self {
            started: counters(METHODS.len()),
            msg_received: counters(METHODS.len()),
            msg_sent: counters(METHODS.len()),
            handled: counters(METHODS.len() * GRPC_CODES),
        }
    }

    /// The index of a served path in [`METHODS`]; unknown paths are not counted, as in
    /// go-grpc-prometheus, which only knows registered methods.
    pub fn method_index(path: &str) -> Option<usize> {
        METHODS.binary_search_by(|m| m.path.cmp(path)).ok()
    }

    pub fn started(&self, method: usize) {
        self.started[method].inc();
    }
    pub fn received(&self, method: usize) {
        self.msg_received[method].inc();
    }
    pub fn sent(&self, method: usize) {
        self.msg_sent[method].inc();
    }
    pub fn handled(&self, method: usize, code: Code) {
        let code = (code as usize).min(GRPC_CODES - 1);
        self.handled[method * GRPC_CODES + code].inc();
    }
}

/// One peer's network counters (`etcd_network_*`), labeled by the peer's id as etcd labels
/// them. The transport holds an `Arc` per peer, so recording stays an atomic add.
#[derive(Default)]
pub struct PeerMetrics {
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
    /// Messages that could not be sent (dropped while down, queue full, write failed).
    pub sent_failures: Counter,
    pub snapshot_send_success: Counter,
    pub snapshot_send_failures: Counter,
    /// 1 while our stream to the peer is up.
    pub active: Gauge,
}

/// Every metric Basalt exports. Field names follow the exported names.
pub struct Metrics {
    pub server_has_leader: Gauge,
    pub server_is_leader: Gauge,
    pub server_leader_changes_seen_total: Counter,
    pub server_proposals_committed_total: Gauge,
    pub server_proposals_applied_total: Gauge,
    pub server_proposals_pending: Gauge,
    pub server_proposals_failed_total: Counter,
    pub server_slow_apply_total: Counter,
    pub server_health_success: Counter,
    pub server_health_failures: Counter,
    pub server_quota_backend_bytes: Gauge,
    /// Bytes the data dir's filesystem has left for us (statvfs), as last checked.
    pub disk_available_bytes: Gauge,
    /// 1 while that is below `--disk-reserve-bytes` (writes that take space are refused).
    pub disk_reserve_short: Gauge,
    /// Tree commits and checkpoints that met a full device (ENOSPC or EDQUOT) and were undone,
    /// to be retried.
    pub disk_full_errors_total: Counter,
    pub mvcc_db_total_size_in_bytes: Gauge,
    pub mvcc_db_total_size_in_use_in_bytes: Gauge,
    pub mvcc_put_total: Counter,
    pub mvcc_delete_total: Counter,
    pub mvcc_range_total: Counter,
    pub mvcc_txn_total: Counter,
    pub disk_wal_fsync_duration_seconds: DiskHistogram,
    pub disk_backend_commit_duration_seconds: DiskHistogram,
    pub network_client_grpc_received_bytes_total: Counter,
    pub network_client_grpc_sent_bytes_total: Counter,
    pub grpc: GrpcMetrics,
    /// Per peer, by member id; a lock only to add or remove a peer and to render.
    peers: Mutex<BTreeMap<u64, Arc<PeerMetrics>>>,
    /// `etcd_server_id{server_id}`: set once at start.
    pub server_id: AtomicU64,
    process_start_time_seconds: f64,
}

/// Where `basalt_heap_allocations_total` comes from: the binary's global allocator counts, this
/// crate only shows the count (it does not choose the allocator).
static HEAP_ALLOCATIONS: OnceLock<fn() -> u64> = OnceLock::new();

/// Tells /metrics how to read the number of heap allocations made so far. Set once; later
/// calls are ignored.
pub fn set_heap_allocation_counter(count: fn() -> u64) {
    let _ = HEAP_ALLOCATIONS.set(count);
}

/// The keyring the server seals data at rest with, shown as `basalt_storage_encrypted` and
/// `basalt_storage_encryption_key_id` (etcd's Status has no field to say it in).
static ENCRYPTION: OnceLock<SharedKeyring> = OnceLock::new();

/// Tells /metrics that data at rest is encrypted with `keyring` (followed through rotations).
/// Set once; later calls are ignored.
pub fn set_encryption_keyring(keyring: SharedKeyring) {
    let _ = ENCRYPTION.set(keyring);
}

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            server_has_leader: Gauge::default(),
            server_is_leader: Gauge::default(),
            server_leader_changes_seen_total: Counter::default(),
            server_proposals_committed_total: Gauge::default(),
            server_proposals_applied_total: Gauge::default(),
            server_proposals_pending: Gauge::default(),
            server_proposals_failed_total: Counter::default(),
            server_slow_apply_total: Counter::default(),
            server_health_success: Counter::default(),
            server_health_failures: Counter::default(),
            server_quota_backend_bytes: Gauge::default(),
            disk_available_bytes: Gauge::default(),
            disk_reserve_short: Gauge::default(),
            disk_full_errors_total: Counter::default(),
            mvcc_db_total_size_in_bytes: Gauge::default(),
            mvcc_db_total_size_in_use_in_bytes: Gauge::default(),
            mvcc_put_total: Counter::default(),
            mvcc_delete_total: Counter::default(),
            mvcc_range_total: Counter::default(),
            mvcc_txn_total: Counter::default(),
            disk_wal_fsync_duration_seconds: DiskHistogram::default(),
            disk_backend_commit_duration_seconds: DiskHistogram::default(),
            network_client_grpc_received_bytes_total: Counter::default(),
            network_client_grpc_sent_bytes_total: Counter::default(),
            grpc: GrpcMetrics::new(),
            peers: Mutex::default(),
            server_id: AtomicU64::new(0),
            process_start_time_seconds: start,
        }
    }

    /// The counters of peer `id`, created on first use.
    pub fn peer(&self, id: u64) -> Arc<PeerMetrics> {
        let mut peers = self.peers.lock().expect("never poisoned");
        peers.entry(id).or_default().clone()
    }

    /// Forgets a removed member's counters.
    pub fn remove_peer(&self, id: u64) {
        self.peers.lock().expect("never poisoned").remove(&id);
    }

    /// The Prometheus text exposition (version 0.0.4) of every metric.
    pub fn render(&self, server_version: &str, cluster_version: &str) -> String {
        let mut out = Exposition::default();
        out.gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            self.server_has_leader.get(),
        );
        out.gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            self.server_is_leader.get(),
        );
        out.counter(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            self.server_leader_changes_seen_total.get(),
        );
        out.gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            self.server_proposals_committed_total.get(),
        );
        out.gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            self.server_proposals_applied_total.get(),
        );
        out.gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            self.server_proposals_pending.get(),
        );
        out.counter(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            self.server_proposals_failed_total.get(),
        );
        out.counter(
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            self.server_slow_apply_total.get(),
        );
        out.counter(
            "etcd_server_health_success",
            "The total number of successful health checks",
            self.server_health_success.get(),
        );
        out.counter(
            "etcd_server_health_failures",
            "The total number of failed health checks",
            self.server_health_failures.get(),
        );
        out.gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            self.server_quota_backend_bytes.get(),
        );
        out.gauge(
            "basalt_disk_available_bytes",
            "Bytes the data dir's filesystem has left for Basalt, as last checked.",
            self.disk_available_bytes.get(),
        );
        out.gauge(
            "basalt_disk_reserve_short",
            "1 while the data dir's filesystem has less than --disk-reserve-bytes free: writes that take space are refused (NOSPACE).",
            self.disk_reserve_short.get(),
        );
        out.counter(
            "basalt_disk_full_errors_total",
            "Tree commits and checkpoints that met a full device and were undone, to be retried.",
            self.disk_full_errors_total.get(),
        );
        out.labeled_gauge(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            &[(
                "server_id",
                format!("{:x}", self.server_id.load(Ordering::Relaxed)),
            )],
            1,
        );
        out.labeled_gauge(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            &[("server_version", server_version.to_string())],
            1,
        );
        out.labeled_gauge(
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            &[("cluster_version", cluster_version.to_string())],
            1,
        );
        out.gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            self.mvcc_db_total_size_in_bytes.get(),
        );
        out.gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            self.mvcc_db_total_size_in_use_in_bytes.get(),
        );
        out.counter(
            "etcd_mvcc_put_total",
            "Total number of puts seen by this member.",
            self.mvcc_put_total.get(),
        );
        out.counter(
            "etcd_mvcc_delete_total",
            "Total number of deletes seen by this member.",
            self.mvcc_delete_total.get(),
        );
        out.counter(
            "etcd_mvcc_range_total",
            "Total number of ranges seen by this member.",
            self.mvcc_range_total.get(),
        );
        out.counter(
            "etcd_mvcc_txn_total",
            "Total number of txns seen by this member.",
            self.mvcc_txn_total.get(),
        );
        out.histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &self.disk_wal_fsync_duration_seconds,
        );
        out.histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &self.disk_backend_commit_duration_seconds,
        );
        out.counter(
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
            self.network_client_grpc_received_bytes_total.get(),
        );
        out.counter(
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
            self.network_client_grpc_sent_bytes_total.get(),
        );
        self.render_peers(&mut out);
        out.grpc(&self.grpc);
        out.process(self.process_start_time_seconds);
        let key_id = ENCRYPTION.get().map_or(0, |k| k.load().current_id());
        out.gauge(
            "basalt_storage_encrypted",
            "1 if new WAL segments and tree pages are sealed with --encryption-key-file (older \
             ones may be plaintext until rewritten: basalt check lists what is on disk).",
            i64::from(key_id != 0),
        );
        out.gauge(
            "basalt_storage_encryption_key_id",
            "The key id new WAL segments and tree pages are sealed with (0: not encrypted).",
            i64::from(key_id),
        );
        if let Some(count) = HEAP_ALLOCATIONS.get() {
            out.counter(
                "basalt_heap_allocations_total",
                "Heap allocations (and reallocations) the process has made.",
                count(),
            );
        }
        out.text
    }
}

impl Metrics {
    fn render_peers(&self, out: &mut Exposition) {
        let peers: Vec<(u64, Arc<PeerMetrics>)> = {
            let peers = self.peers.lock().expect("never poisoned");
            peers.iter().map(|(id, m)| (*id, m.clone())).collect()
        };
        type Read = fn(&PeerMetrics) -> u64;
        let counters: [(&str, &str, &str, Read); 5] = [
            (
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                "To",
                |m| m.sent_bytes.get(),
            ),
            (
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                "From",
                |m| m.received_bytes.get(),
            ),
            (
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                "To",
                |m| m.sent_failures.get(),
            ),
            (
                "etcd_network_snapshot_send_success",
                "Total number of successful snapshot sends",
                "To",
                |m| m.snapshot_send_success.get(),
            ),
            (
                "etcd_network_snapshot_send_failures",
                "Total number of snapshot send failures",
                "To",
                |m| m.snapshot_send_failures.get(),
            ),
        ];
        for (name, help, label, read) in counters {
            out.family(name, help, "counter");
            for (id, peer) in &peers {
                let labels = label_text(&[(label, format!("{id:x}"))]);
                let _ = writeln!(out.text, "{name}{{{labels}}} {}", read(peer));
            }
        }
        let name = "etcd_network_active_peers";
        out.family(
            name,
            "The current number of active peer connections.",
            "gauge",
        );
        let local = format!("{:x}", self.server_id.load(Ordering::Relaxed));
        for (id, peer) in &peers {
            let labels = label_text(&[("Local", local.clone()), ("Remote", format!("{id:x}"))]);
            let _ = writeln!(out.text, "{name}{{{labels}}} {}", peer.active.get());
        }
    }
}

/// Builds the exposition text: one `# HELP` and `# TYPE` line per family, then its samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, "counter");
        let _ = writeln!(self.text, "{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.family(name, help, "gauge");
        let _ = writeln!(self.text, "{name} {value}");
    }

    fn labeled_gauge(&mut self, name: &str, help: &str, labels: &[(&str, String)], value: i64) {
        self.family(name, help, "gauge");
        let _ = writeln!(self.text, "{name}{{{}}} {value}", label_text(labels));
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &DiskHistogram) {
        self.family(name, help, "histogram");
        let mut cumulative = 0;
        for (le, bucket) in DISK_BUCKETS_S.iter().zip(&histogram.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(self.text, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = histogram.count.load(Ordering::Relaxed);
        let sum_s = histogram.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(self.text, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(self.text, "{name}_sum {sum_s}\n{name}_count {count}");
    }

    /// go-grpc-prometheus's server metrics: every registered method appears (with 0) once the
    /// server starts, and `grpc_server_handled_total` only for the codes seen.
    fn grpc(&mut self, grpc: &GrpcMetrics) {
        let per_method = [
            (
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &grpc.started,
            ),
            (
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &grpc.msg_received,
            ),
            (
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &grpc.msg_sent,
            ),
        ];
        for (name, help, counters) in per_method {
            self.family(name, help, "counter");
            for (method, counter) in METHODS.iter().zip(counters.iter()) {
                let _ = writeln!(
                    self.text,
                    "{name}{{{}}} {}",
                    method_labels(method, None),
                    counter.get()
                );
            }
        }
        let name = "grpc_server_handled_total";
        self.family(
            name,
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for (index, counter) in grpc.handled.iter().enumerate() {
            let count = counter.get();
            if count > 0 {
                let method = &METHODS[index / GRPC_CODES];
                let code = Code::from_wire((index % GRPC_CODES) as u32);
                let _ = writeln!(
                    self.text,
                    "{name}{{{}}} {count}",
                    method_labels(method, Some(code))
                );
            }
        }
    }

    fn process(&mut self, start_time_seconds: f64) {
        self.family(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
        );
        let _ = writeln!(self.text, "process_start_time_seconds {start_time_seconds}");
        if let Some(rss_bytes) = resident_memory_bytes() {
            self.family(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
            );
            let _ = writeln!(self.text, "process_resident_memory_bytes {rss_bytes}");
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.family(
                "process_open_fds",
                "Number of open file descriptors.",
                "gauge",
            );
            let _ = writeln!(self.text, "process_open_fds {}", fds.count());
        }
    }
}

fn method_labels(method: &MethodInfo, code: Option<Code>) -> String {
    let kind = match (method.client_streaming, method.server_streaming) {
        (false, false) => "unary",
        (false, true) => "server_stream",
        (true, false) => "client_stream",
        (true, true) => "bidi_stream",
    };
    let mut labels = Vec::with_capacity(4);
    if let Some(code) = code {
        labels.push(("grpc_code", code.name().to_string()));
    }
    labels.push(("grpc_method", method.method.to_string()));
    labels.push(("grpc_service", method.service.to_string()));
    labels.push(("grpc_type", kind.to_string()));
    label_text(&labels)
}

fn label_text(labels: &[(&str, String)]) -> String {
    let escaped = |value: &str| {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    labels
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escaped(value)))
        .collect::<Vec<_>>()
        .join(",")
}

fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(resident_pages * u64::try_from(page_bytes).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let histogram = DiskHistogram::default();
        for ms in [0.5, 1.5, 3.0, 20_000.0] {
            histogram.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let mut out = Exposition::default();
        out.histogram("h", "help", &histogram);
        assert!(
            out.text.contains("h_bucket{le=\"0.001\"} 1\n"),
            "{}",
            out.text
        );
        assert!(out.text.contains("h_bucket{le=\"0.002\"} 2\n"));
        assert!(out.text.contains("h_bucket{le=\"0.004\"} 3\n"));
        assert!(out.text.contains("h_bucket{le=\"8.192\"} 3\n"));
        assert!(out.text.contains("h_bucket{le=\"+Inf\"} 4\n"));
        assert!(out.text.contains("h_count 4\n"));
    }

    #[test]
    fn grpc_handled_is_labeled_as_go_grpc_prometheus_does() {
        let grpc = GrpcMetrics::new();
        let put = GrpcMetrics::method_index("/etcdserverpb.KV/Put").unwrap();
        grpc.started(put);
        grpc.handled(put, Code::Ok);
        grpc.handled(put, Code::Ok);
        let mut out = Exposition::default();
        out.grpc(&grpc);
        assert!(out.text.contains(
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n"
        ), "{}", out.text);
        assert!(out.text.contains(
            "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0\n"
        ));
        assert_eq!(GrpcMetrics::method_index("/no.Such/Method"), None);
    }

    #[test]
    fn every_family_has_help_and_type() {
        let text = metrics().render("3.5.1", "3.5.0");
        for required in [
            "etcd_server_has_leader",
            "etcd_server_leader_changes_seen_total",
            "etcd_server_proposals_committed_total",
            "etcd_mvcc_db_total_size_in_bytes",
            "etcd_disk_wal_fsync_duration_seconds",
            "etcd_disk_backend_commit_duration_seconds",
            "grpc_server_handled_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {required} ")),
                "{required} missing"
            );
        }
        assert!(text.contains("etcd_server_version{server_version=\"3.5.1\"} 1\n"));
    }

    #[test]
    fn peer_counters_are_labeled_by_peer_id() {
        let registry = Metrics::new();
        registry.peer(0xabc).sent_bytes.add(42);
        registry.peer(0xabc).active.set(1);
        registry.peer(0xdef).received_bytes.add(7);
        let text = registry.render("3.5.1", "3.5.0");
        for sample in [
            "etcd_network_peer_sent_bytes_total{To=\"abc\"} 42\n",
            "etcd_network_peer_received_bytes_total{From=\"def\"} 7\n",
            "etcd_network_active_peers{Local=\"0\",Remote=\"abc\"} 1\n",
        ] {
            assert!(text.contains(sample), "{sample} missing from\n{text}");
        }
        registry.remove_peer(0xabc);
        assert!(!registry.render("3.5.1", "3.5.0").contains("To=\"abc\""));
    }
}
