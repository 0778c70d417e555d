//! The load generator: closed-loop clients spread over connections and executor threads,
//! an optional shared rate limit, and one latency histogram per thread merged at the end.
//!
//! Connection `c` lives on thread `c % threads`, client `i` uses connection `i % conns`, so a
//! client and its connection always share an executor and no request crosses threads.
//! Connecting and per-client set-up (lease grants, watcher creation) happen before the clock
//! starts.

use crate::grpc::{CallError, Channel, Stream};
use crate::report::{
    heap_allocations, record, CpuTime, Goal, Progress, RunReport, Series, ServerUsage,
    SyscallCounter,
};
use basalt_proto::etcdserverpb as pb;
use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub(crate) const PUT: &str = "/etcdserverpb.KV/Put";
pub(crate) const RANGE: &str = "/etcdserverpb.KV/Range";
pub(crate) const TXN: &str = "/etcdserverpb.KV/Txn";
pub(crate) const WATCH: &str = "/etcdserverpb.Watch/Watch";
pub(crate) const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const LEASE_KEEPALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";
/// TTL of the leases that lease-keepalive renews; long enough never to expire mid-run.
const KEEPALIVE_LEASE_TTL_S: i64 = 600;
/// A watcher that has seen nothing for this long after the last put gives up on the rest.
const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream whose watchers are not all created by then gives up (and so do the puts).
const WATCH_CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Watch values start with the put's send time, nanoseconds since the run's epoch.
const WATCH_STAMP_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no endpoint given")]
    NoEndpoint,
    #[error("--conns must be at least 1, and --clients at least --conns")]
    BadShape,
    #[error("no endpoint reports itself as the leader: {0}")]
    NoLeader(String),
    #[error("starting executor thread: {0}")]
    Executor(String),
    #[error("{0}")]
    Call(#[from] CallError),
    #[error("{0}")]
    Options(String),
}

/// Flags every load subcommand shares.
#[derive(Clone, Debug)]
pub struct Common {
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub target_leader: bool,
    /// Executor threads of the load generator; connections are spread over them.
    pub threads: usize,
    /// Server processes whose CPU and context switches the report shows per request.
    pub server_pids: Vec<u32>,
}

impl Common {
    /// Where the server's allocation count is read: with `--server-pid` against one endpoint
    /// only (several would mix servers' counts).
    pub(crate) fn metrics_endpoint(&self) -> Option<&str> {
        match (self.server_pids.is_empty(), self.endpoints.as_slice()) {
            (false, [endpoint]) => Some(endpoint),
            _ => None,
        }
    }
}

/// When a run ends and how fast it may go.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub goal: Goal,
    /// Requests per second over all clients; None is as fast as the server answers.
    pub rate_per_s: Option<f64>,
}

/// What one client request is.
#[derive(Clone, Debug)]
pub enum Workload {
    Put {
        key_bytes: usize,
        value: Bytes,
        sequential_keys: bool,
        key_space: u64,
    },
    Range {
        key: Bytes,
        range_end: Bytes,
        serializable: bool,
        limit: i64,
    },
    TxnPut {
        key_bytes: usize,
        value: Bytes,
        key_space: u64,
        ops_per_txn: usize,
    },
    TxnMixed {
        key: Bytes,
        range_end: Bytes,
        serializable: bool,
        limit: i64,
        key_bytes: usize,
        value: Bytes,
        key_space: u64,
        /// Fraction of requests that read, from etcd's `--rw-ratio` r as r / (r + 1).
        read_fraction: f64,
    },
    LeaseKeepalive,
}

impl Workload {
    fn series_names(&self) -> &'static [&'static str] {
        match self {
            Workload::Put { .. } => &["put"],
            Workload::Range { .. } => &["range"],
            Workload::TxnPut { .. } => &["txn-put"],
            Workload::TxnMixed { .. } => &["read", "write"],
            Workload::LeaseKeepalive => &["keepalive"],
        }
    }
}

/// A small deterministic generator (xorshift64*): key choice only needs to be cheap and
/// spread, and a seeded run picks the same keys every time.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A key as etcd's benchmark makes it: `key_bytes` zero bytes with the index written at the
/// front as a Go zig-zag varint (binary.PutVarint), cut off if the key is shorter.
pub fn bench_key(index: u64, key_bytes: usize) -> Bytes {
    let mut key = vec![0u8; key_bytes];
    let mut zigzag = (index as i64 as u64) << 1;
    for byte in key.iter_mut() {
        let more = zigzag >= 0x80;
        *byte = (zigzag as u8 & 0x7f) | if more { 0x80 } else { 0 };
        zigzag >>= 7;
        if !more {
            break;
        }
    }
    Bytes::from(key)
}

/// Per-client state that outlives one request.
enum Session {
    Unary,
    Keepalive { stream: Stream, lease_id: i64 },
}

async fn open_session(workload: &Workload, channel: &Channel) -> Result<Session, CallError> {
    match workload {
        Workload::LeaseKeepalive => {
            let grant: pb::LeaseGrantResponse = channel
                .unary(
                    LEASE_GRANT,
                    &pb::LeaseGrantRequest {
                        ttl: KEEPALIVE_LEASE_TTL_S,
                        id: 0,
                    },
                )
                .await?;
            if !grant.error.is_empty() {
                return Err(CallError::Protocol(grant.error));
            }
            let request = pb::LeaseKeepAliveRequest { id: grant.id };
            let mut stream = channel.stream(LEASE_KEEPALIVE, &request).await?;
            // The opening message is answered like any other; drain it so each later request
            // meets its own answer.
            let _: Option<pb::LeaseKeepAliveResponse> = stream.next().await?;
            Ok(Session::Keepalive {
                stream,
                lease_id: grant.id,
            })
        }
        _ => Ok(Session::Unary),
    }
}

fn range_request(
    key: &Bytes,
    range_end: &Bytes,
    serializable: bool,
    limit: i64,
) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.clone(),
        range_end: range_end.clone(),
        serializable,
        limit,
        ..Default::default()
    }
}

fn put_op(key: Bytes, value: &Bytes) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key,
            value: value.clone(),
            ..Default::default()
        })),
    }
}

/// Issues one request; returns the index of the series it belongs to.
async fn issue(
    workload: &Workload,
    channel: &Channel,
    session: &mut Session,
    rng: &mut Rng,
    seq: u64,
) -> (usize, Result<(), CallError>) {
    match (workload, session) {
        (
            Workload::Put {
                key_bytes,
                value,
                sequential_keys,
                key_space,
            },
            _,
        ) => {
            let index = if *sequential_keys {
                seq % key_space
            } else {
                rng.below(*key_space)
            };
            let request = pb::PutRequest {
                key: bench_key(index, *key_bytes),
                value: value.clone(),
                ..Default::default()
            };
            let result = channel.unary::<_, pb::PutResponse>(PUT, &request).await;
            (0, result.map(drop))
        }
        (
            Workload::Range {
                key,
                range_end,
                serializable,
                limit,
            },
            _,
        ) => {
            let request = range_request(key, range_end, *serializable, *limit);
            let result = channel.unary::<_, pb::RangeResponse>(RANGE, &request).await;
            (0, result.map(drop))
        }
        (
            Workload::TxnPut {
                key_bytes,
                value,
                key_space,
                ops_per_txn,
            },
            _,
        ) => {
            let ops_per_txn = *ops_per_txn as u64;
            let request = pb::TxnRequest {
                success: (0..ops_per_txn)
                    .map(|j| {
                        put_op(
                            bench_key((seq * ops_per_txn + j) % key_space, *key_bytes),
                            value,
                        )
                    })
                    .collect(),
                ..Default::default()
            };
            let result = channel.unary::<_, pb::TxnResponse>(TXN, &request).await;
            (0, result.map(drop))
        }
        (
            Workload::TxnMixed {
                key,
                range_end,
                serializable,
                limit,
                key_bytes,
                value,
                key_space,
                read_fraction,
            },
            _,
        ) => {
            let read = rng.unit() < *read_fraction;
            let op = if read {
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestRange(range_request(
                        key,
                        range_end,
                        *serializable,
                        *limit,
                    ))),
                }
            } else {
                put_op(bench_key(rng.below(*key_space), *key_bytes), value)
            };
            let request = pb::TxnRequest {
                success: vec![op],
                ..Default::default()
            };
            let result = channel.unary::<_, pb::TxnResponse>(TXN, &request).await;
            (usize::from(!read), result.map(drop))
        }
        (Workload::LeaseKeepalive, Session::Keepalive { stream, lease_id }) => {
            let result = async {
                stream.send(&pb::LeaseKeepAliveRequest { id: *lease_id })?;
                match stream.next::<pb::LeaseKeepAliveResponse>().await? {
                    Some(response) if response.ttl > 0 => Ok(()),
                    Some(_) => Err(CallError::Protocol("lease expired".into())),
                    None => Err(CallError::Protocol("keepalive stream ended".into())),
                }
            }
            .await;
            (0, result)
        }
        (Workload::LeaseKeepalive, Session::Unary) => {
            unreachable!("open_session gives lease-keepalive a keepalive session")
        }
    }
}

/// Spaces out the requests of one thread's clients at the thread's share of the rate.
pub(crate) struct Limiter {
    interval: Duration,
    next: Cell<Instant>,
}

impl Limiter {
    /// Requests at `rate_per_s`, from now.
    pub(crate) fn new(rate_per_s: f64) -> Limiter {
        Limiter {
            interval: Duration::from_secs_f64(1.0 / rate_per_s.max(1e-9)),
            next: Cell::new(Instant::now()),
        }
    }

    pub(crate) async fn wait(&self) {
        let now = Instant::now();
        let slot = self.next.get().max(now);
        self.next.set(slot + self.interval);
        if slot > now {
            glommio::timer::sleep(slot - now).await;
        }
    }
}

/// When a run of closed-loop clients ends: after `total` requests over all clients, or at
/// `deadline`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunEnd {
    pub total: u64,
    pub deadline: Option<Instant>,
}

/// The number of a client's next request, paced by `limiter`; None once the run is over.
pub(crate) async fn next_request(
    issued: &AtomicU64,
    end: RunEnd,
    limiter: Option<&Limiter>,
) -> Option<u64> {
    let seq = issued.fetch_add(1, Ordering::Relaxed);
    if seq >= end.total || end.deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    if let Some(limiter) = limiter {
        limiter.wait().await;
    }
    Some(seq)
}

/// Puts one request's latency (since `sent`) or error in series `index` and counts it done.
pub(crate) fn record_outcome(
    series: &RefCell<Vec<Series>>,
    index: usize,
    sent: Instant,
    result: Result<(), CallError>,
    done: &AtomicU64,
) {
    let mut series = series.borrow_mut();
    match result {
        Ok(()) => record(&mut series[index].latency_ns, sent.elapsed()),
        Err(e) => series[index].error(e.to_string()),
    }
    done.fetch_add(1, Ordering::Relaxed);
}

/// The series a thread's tasks filled, once every task holding them has ended.
pub(crate) fn into_series(series: Rc<RefCell<Vec<Series>>>) -> Vec<Series> {
    Rc::try_unwrap(series)
        .map(RefCell::into_inner)
        .unwrap_or_else(|_| unreachable!("every task holding the series has finished"))
}

/// What every thread of one run shares.
struct Shared {
    issued: AtomicU64,
    done: Arc<AtomicU64>,
}

/// Asks every endpoint for its status and returns the one that is the leader.
async fn find_leader(endpoints: &[String]) -> Result<String, LoadError> {
    let mut seen = Vec::new();
    for endpoint in endpoints {
        let result = async {
            let channel = Channel::connect(endpoint).await?;
            channel
                .unary::<_, pb::StatusResponse>(STATUS, &pb::StatusRequest {})
                .await
        }
        .await;
        match result {
            Ok(status) => {
                let member_id = status.header.map_or(0, |h| h.member_id);
                if status.leader != 0 && status.leader == member_id {
                    return Ok(endpoint.clone());
                }
                seen.push(format!("{endpoint}: leader is {:x}", status.leader));
            }
            Err(e) => seen.push(format!("{endpoint}: {e}")),
        }
    }
    Err(LoadError::NoLeader(seen.join("; ")))
}

/// Runs `body` on `threads` glommio executors after every thread has finished its set-up,
/// and returns what each thread returned plus the wall and CPU time from the common start.
pub(crate) fn on_executors<T, F, Fut>(
    threads: usize,
    server_pids: &[u32],
    metrics_endpoint: Option<&str>,
    body: F,
) -> Result<(Vec<T>, Duration, CpuTime, Option<ServerUsage>), LoadError>
where
    T: Send + 'static,
    F: Fn(usize, Arc<Barrier>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for thread in 0..threads {
        let (body, barrier) = (body.clone(), barrier.clone());
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("bench-{thread}"))
            .spawn(move || body(thread, barrier))
            .map_err(|e| LoadError::Executor(e.to_string()))?;
        handles.push(handle);
    }
    // Started before the clients are let go, so no call of the run escapes it; the server is
    // idle until then, so what it counts before the start is a handful of timer wake-ups.
    let syscalls = SyscallCounter::start(server_pids);
    let allocations_start = metrics_endpoint.and_then(heap_allocations);
    barrier.wait();
    let (start, cpu_start) = (Instant::now(), CpuTime::now());
    let server_start = ServerUsage::sample(server_pids);
    let mut results = Vec::with_capacity(threads);
    for handle in handles {
        results.push(
            handle
                .join()
                .map_err(|e| LoadError::Executor(e.to_string()))?,
        );
    }
    let server = server_start
        .zip(ServerUsage::sample(server_pids))
        .map(|(start, end)| ServerUsage {
            syscalls: syscalls.and_then(SyscallCounter::finish),
            heap_allocations: allocations_start
                .zip(metrics_endpoint.and_then(heap_allocations))
                .map(|(start, end)| end.saturating_sub(start)),
            ..end.since(start)
        });
    Ok((
        results,
        start.elapsed(),
        CpuTime::now().since(cpu_start),
        server,
    ))
}

/// Checks the connection and client counts; `clients_used` is false for the watch runs, whose
/// concurrency is their streams.
pub(crate) fn check_shape(common: &Common, clients_used: bool) -> Result<(), LoadError> {
    if common.endpoints.is_empty() {
        return Err(LoadError::NoEndpoint);
    }
    if common.conns == 0 || (clients_used && common.clients < common.conns) {
        return Err(LoadError::BadShape);
    }
    Ok(())
}

pub(crate) fn resolve_endpoints(common: &Common) -> Result<Vec<String>, LoadError> {
    if !common.target_leader {
        return Ok(common.endpoints.clone());
    }
    let endpoints = common.endpoints.clone();
    let (mut found, _, _, _) = on_executors(1, &[], None, move |_, barrier: Arc<Barrier>| {
        let endpoints = endpoints.clone();
        async move {
            barrier.wait();
            find_leader(&endpoints).await
        }
    })?;
    Ok(vec![found.pop().expect("one thread ran")?])
}

pub(crate) fn merge(names: &[&str], per_thread: Vec<Vec<Series>>) -> Vec<Series> {
    let mut merged: Vec<Series> = names.iter().map(|n| Series::new(n)).collect();
    for series in per_thread {
        for (total, part) in merged.iter_mut().zip(&series) {
            total.merge(part);
        }
    }
    merged
}

/// Runs a request/response workload and reports it.
pub fn run(
    common: &Common,
    pace: Pace,
    workload: Workload,
    params: Value,
) -> Result<RunReport, LoadError> {
    check_shape(common, true)?;
    let endpoints = resolve_endpoints(common)?;
    let threads = common.threads.clamp(1, common.conns);
    let progress = Progress::start(pace.goal);
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        done: progress.done.clone(),
    });
    let (total, duration) = match pace.goal {
        Goal::Count(n) => (n, None),
        Goal::Duration(d) => (u64::MAX, Some(d)),
    };
    let (conns, clients) = (common.conns, common.clients);
    let names = workload.series_names();
    let body = {
        let workload = workload.clone();
        move |thread: usize, barrier: Arc<Barrier>| {
            let (workload, endpoints, shared) =
                (workload.clone(), endpoints.clone(), shared.clone());
            async move {
                let series = Rc::new(RefCell::new(
                    names.iter().map(|n| Series::new(n)).collect::<Vec<_>>(),
                ));
                let my_clients: Vec<usize> = (0..clients)
                    .filter(|i| (i % conns) % threads == thread)
                    .collect();
                let mut setup = Vec::new();
                let mut channels = BTreeMap::new();
                for conn in (thread..conns).step_by(threads) {
                    match Channel::connect(&endpoints[conn % endpoints.len()]).await {
                        Ok(channel) => {
                            channels.insert(conn, channel);
                        }
                        Err(e) => series.borrow_mut()[0].error(e.to_string()),
                    }
                }
                for &client in &my_clients {
                    if let Some(channel) = channels.get(&(client % conns)) {
                        match open_session(&workload, channel).await {
                            Ok(session) => setup.push((client, channel.clone(), session)),
                            Err(e) => series.borrow_mut()[0].error(e.to_string()),
                        }
                    }
                }
                let limiter = pace.rate_per_s.map(|rate| {
                    Rc::new(Limiter::new(
                        rate * my_clients.len() as f64 / clients as f64,
                    ))
                });
                barrier.wait();
                let end = RunEnd {
                    total,
                    deadline: duration.map(|d| Instant::now() + d),
                };
                if let Some(limiter) = &limiter {
                    limiter.next.set(Instant::now());
                }
                let mut tasks = Vec::with_capacity(setup.len());
                for (client, channel, mut session) in setup {
                    let (workload, shared, series, limiter) = (
                        workload.clone(),
                        shared.clone(),
                        series.clone(),
                        limiter.clone(),
                    );
                    tasks.push(glommio::spawn_local(async move {
                        let mut rng = Rng::new(client as u64 + 1);
                        while let Some(seq) =
                            next_request(&shared.issued, end, limiter.as_deref()).await
                        {
                            let sent = Instant::now();
                            let (index, result) =
                                issue(&workload, &channel, &mut session, &mut rng, seq).await;
                            record_outcome(&series, index, sent, result, &shared.done);
                        }
                    }));
                }
                for task in tasks {
                    task.await;
                }
                drop(channels);
                into_series(series)
            }
        }
    };
    let (per_thread, wall, cpu, server) = on_executors(
        threads,
        &common.server_pids,
        common.metrics_endpoint(),
        body,
    )?;
    drop(progress);
    Ok(RunReport {
        workload: params["workload"].as_str().unwrap_or("?").to_string(),
        params,
        wall,
        cpu,
        server,
        series: merge(names, per_thread),
        extra: BTreeMap::new(),
    })
}

/// The watch fan-out: streams × watchers on one key, then puts to that key.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub key: Bytes,
    pub streams: usize,
    pub watchers_per_stream: usize,
    pub put_total: u64,
    pub put_rate_per_s: f64,
    pub value_bytes: usize,
}

/// Nanoseconds since `epoch`, the clock every thread of a watch run stamps with.
fn stamp_ns(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

struct WatchShared {
    epoch: Instant,
    ready_watchers: AtomicU64,
    /// Watchers whose stream failed before they were created: the puts must not wait for them.
    lost_watchers: AtomicU64,
    put_start_ns: AtomicU64,
    /// Set once the putter has made its last put, or decided to make none.
    puts_over: AtomicBool,
    last_event_ns: AtomicU64,
    events: AtomicU64,
    done: Arc<AtomicU64>,
}

const WATCH_SERIES: [&str; 3] = ["watch-create", "event", "put"];

/// One stream: creates its watchers (counting them in `created`), then times every event it is
/// sent.
async fn watch_stream(
    channel: Channel,
    options: &WatchOptions,
    shared: &WatchShared,
    series: &RefCell<Vec<Series>>,
    created: &Cell<usize>,
) -> Result<(), CallError> {
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: options.key.clone(),
                ..Default::default()
            },
        )),
    };
    let mut sent = Vec::with_capacity(options.watchers_per_stream);
    sent.push(Instant::now());
    let mut stream = channel.stream(WATCH, &create).await?;
    for _ in 1..options.watchers_per_stream {
        sent.push(Instant::now());
        stream.send(&create)?;
    }
    let create_deadline = Instant::now() + WATCH_CREATE_TIMEOUT;
    let events_expected = options.put_total * options.watchers_per_stream as u64;
    let mut events_seen = 0u64;
    while events_seen < events_expected {
        let next = futures_lite::future::or(
            async { Some(stream.next::<pb::WatchResponse>().await) },
            async {
                glommio::timer::sleep(WATCH_IDLE_TIMEOUT).await;
                None
            },
        );
        let response = match next.await {
            Some(response) => {
                response?.ok_or_else(|| CallError::Protocol("watch stream ended".into()))?
            }
            None if created.get() < options.watchers_per_stream => {
                if Instant::now() >= create_deadline {
                    return Err(CallError::Protocol("watch creation timed out".into()));
                }
                continue;
            }
            None if !shared.puts_over.load(Ordering::Relaxed) => continue,
            None => {
                let missing = events_expected - events_seen;
                series.borrow_mut()[1].error(format!("{missing} events never arrived"));
                return Ok(());
            }
        };
        if response.created {
            let index = created.get();
            let Some(sent) = sent.get(index) else {
                return Err(CallError::Protocol(
                    "more watchers created than asked".into(),
                ));
            };
            record(&mut series.borrow_mut()[0].latency_ns, sent.elapsed());
            created.set(index + 1);
            shared.ready_watchers.fetch_add(1, Ordering::Relaxed);
        }
        let now_ns = stamp_ns(shared.epoch);
        for event in &response.events {
            let kv = event
                .kv
                .as_ref()
                .map(|kv| &kv.value[..])
                .unwrap_or_default();
            let sent_ns = kv
                .get(..WATCH_STAMP_BYTES)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            record(
                &mut series.borrow_mut()[1].latency_ns,
                Duration::from_nanos(now_ns.saturating_sub(sent_ns)),
            );
            events_seen += 1;
        }
        shared
            .events
            .fetch_add(response.events.len() as u64, Ordering::Relaxed);
        shared.last_event_ns.fetch_max(now_ns, Ordering::Relaxed);
    }
    Ok(())
}

/// Waits until every watcher is created, then puts at the requested rate.
async fn watch_putter(
    endpoint: &str,
    options: &WatchOptions,
    shared: &WatchShared,
    series: &RefCell<Vec<Series>>,
) -> Result<(), CallError> {
    let channel = Channel::connect(endpoint).await?;
    let watchers = (options.streams * options.watchers_per_stream) as u64;
    let settled = || {
        shared.ready_watchers.load(Ordering::Relaxed) + shared.lost_watchers.load(Ordering::Relaxed)
    };
    while settled() < watchers {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let lost = shared.lost_watchers.load(Ordering::Relaxed);
    if lost > 0 {
        shared.puts_over.store(true, Ordering::Relaxed);
        return Err(CallError::Protocol(format!(
            "{lost} of {watchers} watchers were not created; no puts made"
        )));
    }
    let limiter = Limiter::new(options.put_rate_per_s);
    shared
        .put_start_ns
        .store(stamp_ns(shared.epoch).max(1), Ordering::Relaxed);
    let mut value = vec![0xA5u8; options.value_bytes.max(WATCH_STAMP_BYTES)];
    for _ in 0..options.put_total {
        limiter.wait().await;
        let sent = Instant::now();
        value[..WATCH_STAMP_BYTES].copy_from_slice(&stamp_ns(shared.epoch).to_le_bytes());
        let request = pb::PutRequest {
            key: options.key.clone(),
            value: Bytes::copy_from_slice(&value),
            ..Default::default()
        };
        match channel.unary::<_, pb::PutResponse>(PUT, &request).await {
            Ok(_) => record(&mut series.borrow_mut()[2].latency_ns, sent.elapsed()),
            Err(e) => series.borrow_mut()[2].error(e.to_string()),
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    shared.puts_over.store(true, Ordering::Relaxed);
    Ok(())
}

/// Runs the watch fan-out and reports creation latency, event latency (put sent to event
/// received, on the same clock) and events delivered per second.
pub fn run_watch(
    common: &Common,
    options: WatchOptions,
    params: Value,
) -> Result<RunReport, LoadError> {
    check_shape(common, false)?;
    let endpoints = resolve_endpoints(common)?;
    let threads = common.threads.clamp(1, common.conns);
    let progress = Progress::start(Goal::Count(options.put_total));
    let shared = Arc::new(WatchShared {
        epoch: Instant::now(),
        ready_watchers: AtomicU64::new(0),
        lost_watchers: AtomicU64::new(0),
        put_start_ns: AtomicU64::new(0),
        puts_over: AtomicBool::new(false),
        last_event_ns: AtomicU64::new(0),
        events: AtomicU64::new(0),
        done: progress.done.clone(),
    });
    let conns = common.conns;
    let body = {
        let (shared, options) = (shared.clone(), options.clone());
        move |thread: usize, barrier: Arc<Barrier>| {
            let (shared, options, endpoints) = (shared.clone(), options.clone(), endpoints.clone());
            async move {
                let series = Rc::new(RefCell::new(
                    WATCH_SERIES
                        .iter()
                        .map(|n| Series::new(n))
                        .collect::<Vec<_>>(),
                ));
                let mut channels = BTreeMap::new();
                for conn in (thread..conns).step_by(threads) {
                    match Channel::connect(&endpoints[conn % endpoints.len()]).await {
                        Ok(channel) => {
                            channels.insert(conn, channel);
                        }
                        Err(e) => series.borrow_mut()[0].error(e.to_string()),
                    }
                }
                barrier.wait();
                let mut tasks = Vec::new();
                for stream in (0..options.streams).filter(|s| (s % conns) % threads == thread) {
                    let Some(channel) = channels.get(&(stream % conns)).cloned() else {
                        // Its connection failed (already counted as an error).
                        let lost = options.watchers_per_stream as u64;
                        shared.lost_watchers.fetch_add(lost, Ordering::Relaxed);
                        continue;
                    };
                    let (options, shared, series) =
                        (options.clone(), shared.clone(), series.clone());
                    tasks.push(glommio::spawn_local(async move {
                        let created = Cell::new(0);
                        let result =
                            watch_stream(channel, &options, &shared, &series, &created).await;
                        if let Err(e) = result {
                            series.borrow_mut()[1].error(e.to_string());
                        }
                        let lost = options.watchers_per_stream - created.get();
                        shared
                            .lost_watchers
                            .fetch_add(lost as u64, Ordering::Relaxed);
                    }));
                }
                if thread == 0 {
                    let (options, shared, series) =
                        (options.clone(), shared.clone(), series.clone());
                    let endpoint = endpoints[0].clone();
                    tasks.push(glommio::spawn_local(async move {
                        if let Err(e) = watch_putter(&endpoint, &options, &shared, &series).await {
                            series.borrow_mut()[2].error(e.to_string());
                        }
                        shared.puts_over.store(true, Ordering::Relaxed);
                    }));
                }
                for task in tasks {
                    task.await;
                }
                drop(channels);
                Rc::try_unwrap(series)
                    .map(RefCell::into_inner)
                    .unwrap_or_else(|_| unreachable!("every stream task has finished"))
            }
        }
    };
    let (per_thread, wall, cpu, server) = on_executors(
        threads,
        &common.server_pids,
        common.metrics_endpoint(),
        body,
    )?;
    drop(progress);
    let put_start_ns = shared.put_start_ns.load(Ordering::Relaxed);
    let delivery_s = shared
        .last_event_ns
        .load(Ordering::Relaxed)
        .saturating_sub(put_start_ns) as f64
        / 1e9;
    let events = shared.events.load(Ordering::Relaxed);
    let mut extra = BTreeMap::new();
    extra.insert(
        "watchers".to_string(),
        (options.streams * options.watchers_per_stream) as f64,
    );
    extra.insert("events_received".to_string(), events as f64);
    extra.insert(
        "events_per_s".to_string(),
        if delivery_s > 0.0 {
            events as f64 / delivery_s
        } else {
            0.0
        },
    );
    Ok(RunReport {
        workload: params["workload"].as_str().unwrap_or("?").to_string(),
        params,
        wall,
        cpu,
        server,
        series: merge(&WATCH_SERIES, per_thread),
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_keys_are_go_zigzag_varints_padded_to_the_key_size() {
        let cases: [(u64, usize, &[u8]); 4] = [
            (0, 4, &[0, 0, 0, 0]),
            (1, 2, &[2, 0]),
            (64, 3, &[0x80, 0x01, 0]),
            (1000, 8, &[0xd0, 0x0f, 0, 0, 0, 0, 0, 0]),
        ];
        for (index, key_bytes, want) in cases {
            assert_eq!(
                &bench_key(index, key_bytes)[..],
                want,
                "key {index} of {key_bytes} bytes"
            );
        }
    }

    #[test]
    fn the_rng_stays_inside_the_key_space_and_reaches_all_of_it() {
        let mut rng = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[rng.below(10) as usize] = true;
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn fewer_clients_than_connections_is_refused() {
        let common = Common {
            endpoints: vec!["127.0.0.1:1".into()],
            conns: 4,
            clients: 2,
            target_leader: false,
            threads: 1,
            server_pids: Vec::new(),
        };
        assert!(matches!(
            check_shape(&common, true),
            Err(LoadError::BadShape)
        ));
    }
}
