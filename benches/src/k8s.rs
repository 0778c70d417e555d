//! `basalt-bench k8s`: the kube-apiserver's storage patterns against any etcd v3 endpoint, in
//! the apiserver's key layout (`/registry/<resource>/<namespace>/<name>`), with values of 1–10
//! KiB. What each verb sends is what the apiserver's etcd3 store sends:
//!
//! - create: Txn `mod_revision(key) == 0` → Put, else Range (AlreadyExists);
//! - update (GuaranteedUpdate): Txn `mod_revision(key) == N` → Put, else Range; on a conflict
//!   the answer's object is the new base and the update is tried again;
//! - delete: Txn `mod_revision(key) == N` → DeleteRange with prev_kv, else Range;
//! - get: a linearizable Range of one key;
//! - list: pages of 500 with their count, the continue key `last + \0` and the first page's
//!   revision for the rest, over one resource across namespaces or within one namespace;
//! - events: a put under `/registry/events/` attached to a lease (TTL 1 h) that is replaced
//!   every `--event-lease-interval`, as the apiserver shares one lease per minute;
//! - watch: watchers on each resource's prefix from the revision after the preload, with
//!   prev_kv and progress notifications; the lag of every put event (values carry their send
//!   time) is reported;
//! - compaction: every `--compact-interval`, the apiserver's `compact_rev_key` Txn, then a
//!   Compact of the revision the previous round recorded.
//!
//! Each client keeps the mod revisions it has seen (the apiserver's cache), so updates and
//! deletes meet conflicts when another client got there first, as they do in a cluster.

use crate::grpc::{CallError, Channel};
use crate::load::{
    self, check_shape, into_series, next_request, on_executors, record_outcome, resolve_endpoints,
    Common, Limiter, LoadError, Pace, Rng, RunEnd, LEASE_GRANT, PUT, RANGE, TXN, WATCH,
};
use crate::report::{record, Goal, Progress, RunReport, Series};
use basalt_proto::etcdserverpb as pb;
use bytes::Bytes;
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const COMPACT: &str = "/etcdserverpb.KV/Compact";

/// The resources objects are spread over (the busiest kinds of a real cluster).
const RESOURCES: [&str; 6] = [
    "pods",
    "configmaps",
    "secrets",
    "services",
    "endpointslices",
    "leases",
];
/// The apiserver's page size for a paginated LIST.
const LIST_PAGE: i64 = 500;
/// The apiserver's event lease TTL.
const EVENT_LEASE_TTL_S: i64 = 3600;
/// GuaranteedUpdate's tries before it reports a conflict (the apiserver retries without end;
/// a bench must not spin).
const UPDATE_TRIES_MAX: usize = 5;
/// The key the apiserver's compactor keeps its last compacted revision under.
const COMPACT_REV_KEY: &[u8] = b"compact_rev_key";
/// Values start with their send time, nanoseconds since the Unix epoch (one clock for every
/// thread of the load generator), so a watcher can tell an event's lag.
const STAMP_BYTES: usize = 8;

/// The verbs a client picks from, in the order of their series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Delete,
    Get,
    List,
    Event,
}

const VERBS: [(Verb, &str); 6] = [
    (Verb::Create, "create"),
    (Verb::Update, "update"),
    (Verb::Delete, "delete"),
    (Verb::Get, "get"),
    (Verb::List, "list"),
    (Verb::Event, "events"),
];
/// Series after the verbs' own.
const EVENT_SERIES: usize = 5;
const LIST_PAGE_SERIES: usize = VERBS.len();
const WATCH_LAG_SERIES: usize = VERBS.len() + 1;
const COMPACT_SERIES: usize = VERBS.len() + 2;
const SERIES: [&str; 9] = [
    "create",
    "update",
    "delete",
    "get",
    "list",
    "events",
    "list-page",
    "watch-lag",
    "compact",
];

/// Weights of the verbs, parsed from `--mix create=8,update=50,...`.
#[derive(Clone, Debug)]
pub struct Mix(Vec<(Verb, f64)>);

impl Mix {
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: {part:?} is not verb=weight"))?;
            let verb = VERBS
                .iter()
                .find(|(_, n)| *n == name.trim())
                .ok_or_else(|| format!("--mix: unknown verb {name:?}"))?
                .0;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("--mix: weight {weight:?} is not a number"))?;
            if weight < 0.0 {
                return Err(format!("--mix: negative weight for {name}"));
            }
            weights.push((verb, weight));
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("--mix: the weights add up to nothing".into());
        }
        Ok(Mix(weights))
    }

    fn pick(&self, rng: &mut Rng) -> Verb {
        let total: f64 = self.0.iter().map(|(_, w)| w).sum();
        let mut at = rng.unit() * total;
        for &(verb, weight) in &self.0 {
            if at < weight {
                return verb;
            }
            at -= weight;
        }
        self.0.last().expect("parse keeps at least one verb").0
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(verb, w)| {
                let name = VERBS.iter().find(|(v, _)| v == verb).expect("known").1;
                format!("{name}={w}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub resources: usize,
    pub namespaces: u64,
    /// Objects created before the clock starts.
    pub objects: u64,
    pub value_min_bytes: usize,
    pub value_max_bytes: usize,
    pub watchers: usize,
    pub mix: Mix,
    pub compact_interval: Duration,
    pub event_lease_interval: Duration,
}

impl Options {
    fn resource(&self, index: u64) -> &'static str {
        RESOURCES[(index % self.resources as u64) as usize]
    }

    fn key(&self, index: u64) -> Bytes {
        let namespace = (index / self.resources as u64) % self.namespaces;
        Bytes::from(format!(
            "/registry/{}/ns-{namespace:04}/obj-{index:010}",
            self.resource(index)
        ))
    }

    fn value(&self, rng: &mut Rng) -> Bytes {
        let spread = (self.value_max_bytes - self.value_min_bytes) as u64;
        let len = self.value_min_bytes + rng.below(spread + 1) as usize;
        let mut value = vec![0x6b; len.max(STAMP_BYTES)];
        value[..STAMP_BYTES].copy_from_slice(&unix_ns().to_le_bytes());
        Bytes::from(value)
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("a prefix is not empty") += 1;
    Bytes::from(end)
}

fn compare_mod(key: &Bytes, revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

fn op(request: pb::request_op::Request) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request),
    }
}

fn get_op(key: &Bytes) -> pb::RequestOp {
    op(pb::request_op::Request::RequestRange(pb::RangeRequest {
        key: key.clone(),
        ..Default::default()
    }))
}

fn put_op(key: &Bytes, value: Bytes, lease: i64) -> pb::RequestOp {
    op(pb::request_op::Request::RequestPut(pb::PutRequest {
        key: key.clone(),
        value,
        lease,
        ..Default::default()
    }))
}

/// The object a failed guard's Range found: its mod revision, or 0 when there is none.
fn found_revision(response: &pb::TxnResponse) -> i64 {
    match response.responses.first().and_then(|r| r.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(range)) => {
            range.kvs.first().map_or(0, |kv| kv.mod_revision)
        }
        _ => 0,
    }
}

fn header_revision(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

/// What every thread of a run shares.
struct Shared {
    issued: AtomicU64,
    done: Arc<AtomicU64>,
    /// The next object index a create takes.
    next_object: AtomicU64,
    conflicts: AtomicU64,
    watch_events: AtomicU64,
    /// The revision the watchers start after.
    start_revision: AtomicU64,
}

/// One client: its connection, its view of objects' revisions, and the thread's event lease.
struct Client {
    channel: Channel,
    options: Rc<Options>,
    shared: Arc<Shared>,
    seen: HashMap<u64, i64>,
    rng: Rng,
    event_lease: Rc<Cell<i64>>,
}

impl Client {
    /// An index of an object that probably exists (created and not yet deleted by anyone).
    fn existing(&mut self) -> u64 {
        let made = self.shared.next_object.load(Ordering::Relaxed).max(1);
        self.rng.below(made)
    }

    async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, CallError> {
        self.channel.unary(TXN, &request).await
    }

    async fn create(&mut self, index: u64) -> Result<(), CallError> {
        let key = self.options.key(index);
        let value = self.options.value(&mut self.rng);
        let response = self
            .txn(pb::TxnRequest {
                compare: vec![compare_mod(&key, 0)],
                success: vec![put_op(&key, value, 0)],
                failure: vec![get_op(&key)],
            })
            .await?;
        let revision = if response.succeeded {
            header_revision(&response.header)
        } else {
            found_revision(&response)
        };
        self.seen.insert(index, revision);
        Ok(())
    }

    /// The base revision the client believes `index` has, read from the server if it has none.
    async fn base(&mut self, index: u64, key: &Bytes) -> Result<i64, CallError> {
        if let Some(&revision) = self.seen.get(&index) {
            return Ok(revision);
        }
        let range: pb::RangeResponse = self
            .channel
            .unary(
                RANGE,
                &pb::RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                },
            )
            .await?;
        let revision = range.kvs.first().map_or(0, |kv| kv.mod_revision);
        self.seen.insert(index, revision);
        Ok(revision)
    }

    async fn update(&mut self) -> Result<(), CallError> {
        let index = self.existing();
        let key = self.options.key(index);
        let mut base = self.base(index, &key).await?;
        for _ in 0..UPDATE_TRIES_MAX {
            if base == 0 {
                // Gone (deleted by another client): the apiserver answers NotFound.
                self.seen.remove(&index);
                return Ok(());
            }
            let value = self.options.value(&mut self.rng);
            let response = self
                .txn(pb::TxnRequest {
                    compare: vec![compare_mod(&key, base)],
                    success: vec![put_op(&key, value, 0)],
                    failure: vec![get_op(&key)],
                })
                .await?;
            if response.succeeded {
                self.seen.insert(index, header_revision(&response.header));
                return Ok(());
            }
            self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
            base = found_revision(&response);
            self.seen.insert(index, base);
        }
        Err(CallError::Protocol(format!(
            "update of {} still conflicted after {UPDATE_TRIES_MAX} tries",
            String::from_utf8_lossy(&key)
        )))
    }

    async fn delete(&mut self) -> Result<(), CallError> {
        let index = self.existing();
        let key = self.options.key(index);
        let base = self.base(index, &key).await?;
        self.seen.remove(&index);
        if base == 0 {
            return Ok(());
        }
        let response = self
            .txn(pb::TxnRequest {
                compare: vec![compare_mod(&key, base)],
                success: vec![op(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: key.clone(),
                        prev_kv: true,
                        ..Default::default()
                    },
                ))],
                failure: vec![get_op(&key)],
            })
            .await?;
        if !response.succeeded {
            self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn get(&mut self) -> Result<(), CallError> {
        let index = self.existing();
        let range: pb::RangeResponse = self
            .channel
            .unary(
                RANGE,
                &pb::RangeRequest {
                    key: self.options.key(index),
                    ..Default::default()
                },
            )
            .await?;
        match range.kvs.first() {
            Some(kv) => self.seen.insert(index, kv.mod_revision),
            None => self.seen.remove(&index),
        };
        Ok(())
    }

    /// A whole paginated LIST; each page's latency goes to `pages`.
    async fn list(&mut self, pages: &RefCell<Vec<Series>>) -> Result<(), CallError> {
        let resource = self
            .options
            .resource(self.rng.below(self.options.resources as u64));
        let prefix = if self.rng.below(2) == 0 {
            format!("/registry/{resource}/")
        } else {
            let namespace = self.rng.below(self.options.namespaces);
            format!("/registry/{resource}/ns-{namespace:04}/")
        };
        let end = prefix_end(prefix.as_bytes());
        let mut key = Bytes::from(prefix);
        let mut revision = 0;
        loop {
            let sent = Instant::now();
            let page: pb::RangeResponse = self
                .channel
                .unary(
                    RANGE,
                    &pb::RangeRequest {
                        key: key.clone(),
                        range_end: end.clone(),
                        limit: LIST_PAGE,
                        revision,
                        ..Default::default()
                    },
                )
                .await?;
            record(
                &mut pages.borrow_mut()[LIST_PAGE_SERIES].latency_ns,
                sent.elapsed(),
            );
            if revision == 0 {
                revision = header_revision(&page.header);
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    let mut next = last.key.to_vec();
                    next.push(0);
                    key = Bytes::from(next);
                }
                _ => return Ok(()),
            }
        }
    }

    async fn event(&mut self, seq: u64) -> Result<(), CallError> {
        let namespace = self.rng.below(self.options.namespaces);
        let key = Bytes::from(format!("/registry/events/ns-{namespace:04}/ev-{seq:012}"));
        let value = self.options.value(&mut self.rng);
        let request = pb::PutRequest {
            key,
            value,
            lease: self.event_lease.get(),
            ..Default::default()
        };
        self.channel
            .unary::<_, pb::PutResponse>(PUT, &request)
            .await
            .map(drop)
    }
}

async fn grant_event_lease(channel: &Channel) -> Result<i64, CallError> {
    let grant: pb::LeaseGrantResponse = channel
        .unary(
            LEASE_GRANT,
            &pb::LeaseGrantRequest {
                ttl: EVENT_LEASE_TTL_S,
                id: 0,
            },
        )
        .await?;
    if grant.error.is_empty() {
        Ok(grant.id)
    } else {
        Err(CallError::Protocol(grant.error))
    }
}

/// A watcher on `prefix` from `start`: records every put event's lag until `until`.
async fn watcher(
    channel: Channel,
    prefix: Bytes,
    start: i64,
    until: Rc<Cell<bool>>,
    shared: &Shared,
    series: &RefCell<Vec<Series>>,
) -> Result<(), CallError> {
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                start_revision: start,
                progress_notify: true,
                prev_kv: true,
                ..Default::default()
            },
        )),
    };
    let mut stream = channel.stream(WATCH, &create).await?;
    while !until.get() {
        let next = futures_lite::future::or(
            async { Some(stream.next::<pb::WatchResponse>().await) },
            async {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                None
            },
        );
        let Some(response) = next.await else { continue };
        let response = response?.ok_or_else(|| CallError::Protocol("watch stream ended".into()))?;
        if response.canceled {
            return Err(CallError::Protocol(format!(
                "watch canceled: {}",
                response.cancel_reason
            )));
        }
        let now = unix_ns();
        let mut series = series.borrow_mut();
        for event in &response.events {
            shared.watch_events.fetch_add(1, Ordering::Relaxed);
            if event.r#type != 0 {
                continue; // A delete's value is the old object's.
            }
            let sent = event
                .kv
                .as_ref()
                .and_then(|kv| kv.value.get(..STAMP_BYTES))
                .map_or(now, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            record(
                &mut series[WATCH_LAG_SERIES].latency_ns,
                Duration::from_nanos(now.saturating_sub(sent)),
            );
        }
    }
    Ok(())
}

/// Every `interval`: the apiserver's compactor round (record the current revision under
/// `compact_rev_key` if nobody moved it, then compact what the previous round recorded).
async fn compactor(
    channel: Channel,
    interval: Duration,
    until: Rc<Cell<bool>>,
    series: &RefCell<Vec<Series>>,
) {
    let key = Bytes::from_static(COMPACT_REV_KEY);
    let (mut version, mut recorded) = (0i64, 0i64);
    let mut next = Instant::now() + interval;
    while !until.get() {
        glommio::timer::sleep(Duration::from_millis(100)).await;
        if Instant::now() < next {
            continue;
        }
        next += interval;
        let sent = Instant::now();
        let round = async {
            let response: pb::TxnResponse = channel
                .unary(
                    TXN,
                    &pb::TxnRequest {
                        compare: vec![pb::Compare {
                            result: pb::compare::CompareResult::Equal as i32,
                            target: pb::compare::CompareTarget::Version as i32,
                            key: key.clone(),
                            target_union: Some(pb::compare::TargetUnion::Version(version)),
                            ..Default::default()
                        }],
                        success: vec![put_op(&key, Bytes::from(recorded.to_string()), 0)],
                        failure: vec![get_op(&key)],
                    },
                )
                .await?;
            let current = header_revision(&response.header);
            if !response.succeeded {
                // Another compactor moved it: take its version and wait a round.
                if let Some(pb::response_op::Response::ResponseRange(range)) =
                    response.responses.first().and_then(|r| r.response.as_ref())
                {
                    version = range.kvs.first().map_or(0, |kv| kv.version);
                }
                return Ok(());
            }
            version += 1;
            if recorded > 0 {
                channel
                    .unary::<_, pb::CompactionResponse>(
                        COMPACT,
                        &pb::CompactionRequest {
                            revision: recorded,
                            physical: false,
                        },
                    )
                    .await?;
            }
            recorded = current;
            Ok::<(), CallError>(())
        };
        match round.await {
            Ok(()) => record(
                &mut series.borrow_mut()[COMPACT_SERIES].latency_ns,
                sent.elapsed(),
            ),
            Err(e) => series.borrow_mut()[COMPACT_SERIES].error(e.to_string()),
        }
    }
}

/// Creates objects `0..options.objects` (not timed) with the run's connections and clients.
fn preload(common: &Common, endpoints: &[String], options: &Rc<Options>) -> Result<(), LoadError> {
    let threads = common.threads.clamp(1, common.conns);
    let next = Arc::new(AtomicU64::new(0));
    let (conns, clients, objects) = (common.conns, common.clients, options.objects);
    let options = Options::clone(options);
    let endpoints = endpoints.to_vec();
    let (results, _, _, _) =
        on_executors(threads, &[], None, move |thread, barrier: Arc<Barrier>| {
            let (options, endpoints, next) =
                (Rc::new(options.clone()), endpoints.clone(), next.clone());
            async move {
                barrier.wait();
                let shared = Arc::new(Shared::new(Arc::new(AtomicU64::new(0)), 0));
                let mut tasks = Vec::new();
                for conn in (thread..conns).step_by(threads) {
                    let channel = Channel::connect(&endpoints[conn % endpoints.len()]).await?;
                    for client in (conn..clients).step_by(conns) {
                        let mut client = Client::new(
                            channel.clone(),
                            &options,
                            &shared,
                            client,
                            Rc::new(Cell::new(0)),
                        );
                        let next = next.clone();
                        tasks.push(glommio::spawn_local(async move {
                            loop {
                                let index = next.fetch_add(1, Ordering::Relaxed);
                                if index >= objects {
                                    return Ok::<(), CallError>(());
                                }
                                client.create(index).await?;
                            }
                        }));
                    }
                }
                for task in tasks {
                    task.await?;
                }
                Ok::<(), CallError>(())
            }
        })?;
    results
        .into_iter()
        .try_for_each(|r| r.map_err(LoadError::from))
}

impl Shared {
    fn new(done: Arc<AtomicU64>, objects: u64) -> Shared {
        Shared {
            issued: AtomicU64::new(0),
            done,
            next_object: AtomicU64::new(objects),
            conflicts: AtomicU64::new(0),
            watch_events: AtomicU64::new(0),
            start_revision: AtomicU64::new(0),
        }
    }
}

impl Client {
    fn new(
        channel: Channel,
        options: &Rc<Options>,
        shared: &Arc<Shared>,
        seed: usize,
        event_lease: Rc<Cell<i64>>,
    ) -> Client {
        Client {
            channel,
            options: options.clone(),
            shared: shared.clone(),
            seen: HashMap::new(),
            rng: Rng::new(seed as u64 + 1),
            event_lease,
        }
    }

    /// Runs one verb of the mix; returns the series it belongs to.
    async fn one(
        &mut self,
        seq: u64,
        series: &RefCell<Vec<Series>>,
    ) -> (usize, Result<(), CallError>) {
        let verb = self.options.mix.pick(&mut self.rng);
        let result = match verb {
            Verb::Create => {
                let index = self.shared.next_object.fetch_add(1, Ordering::Relaxed);
                self.create(index).await
            }
            Verb::Update => self.update().await,
            Verb::Delete => self.delete().await,
            Verb::Get => self.get().await,
            Verb::List => self.list(series).await,
            Verb::Event => self.event(seq).await,
        };
        let index = VERBS
            .iter()
            .position(|(v, _)| *v == verb)
            .expect("a verb of VERBS");
        (index, result)
    }
}

/// Loads `--objects` objects, then runs the mix with watchers, the event lease and the
/// compactor alongside, and reports every verb.
pub fn run(common: &Common, pace: Pace, options: Options) -> Result<RunReport, LoadError> {
    check_shape(common, true)?;
    if options.resources == 0 || options.resources > RESOURCES.len() || options.namespaces == 0 {
        return Err(LoadError::Options(format!(
            "--resources must be 1..={} and --namespaces at least 1",
            RESOURCES.len()
        )));
    }
    if options.value_min_bytes > options.value_max_bytes {
        return Err(LoadError::Options(
            "--value-min-bytes is above --value-max-bytes".into(),
        ));
    }
    let endpoints = resolve_endpoints(common)?;
    let loaded = Instant::now();
    preload(common, &endpoints, &Rc::new(options.clone()))?;
    eprintln!(
        "loaded {} objects in {:.1} s",
        options.objects,
        loaded.elapsed().as_secs_f64()
    );
    let threads = common.threads.clamp(1, common.conns);
    let progress = Progress::start(pace.goal);
    let shared = Arc::new(Shared::new(progress.done.clone(), options.objects));
    let (total, duration) = match pace.goal {
        Goal::Count(n) => (n, None),
        Goal::Duration(d) => (u64::MAX, Some(d)),
    };
    let (conns, clients) = (common.conns, common.clients);
    let body = {
        let (options, shared) = (options.clone(), shared.clone());
        move |thread: usize, barrier: Arc<Barrier>| {
            let (options, endpoints, shared) =
                (Rc::new(options.clone()), endpoints.clone(), shared.clone());
            async move {
                let series = Rc::new(RefCell::new(
                    SERIES.iter().map(|n| Series::new(n)).collect::<Vec<_>>(),
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
                let event_lease = Rc::new(Cell::new(0));
                let first = channels.values().next().cloned();
                if let Some(channel) = &first {
                    match grant_event_lease(channel).await {
                        Ok(id) => event_lease.set(id),
                        Err(e) => series.borrow_mut()[EVENT_SERIES].error(e.to_string()),
                    }
                    if thread == 0 {
                        // The watchers start after the preload, at one revision for all.
                        let head: Result<pb::RangeResponse, _> = channel
                            .unary(
                                RANGE,
                                &pb::RangeRequest {
                                    key: Bytes::from_static(b"\0"),
                                    ..Default::default()
                                },
                            )
                            .await;
                        let revision = head.map_or(0, |r| header_revision(&r.header));
                        shared
                            .start_revision
                            .store(revision as u64 + 1, Ordering::Relaxed);
                    }
                }
                barrier.wait();
                // Thread 0 stores the start revision before the barrier.
                let start = shared.start_revision.load(Ordering::Relaxed) as i64;
                let until = Rc::new(Cell::new(false));
                let end = RunEnd {
                    total,
                    deadline: duration.map(|d| Instant::now() + d),
                };
                let mine: Vec<usize> = (0..clients)
                    .filter(|i| (i % conns) % threads == thread)
                    .collect();
                let limiter = pace
                    .rate_per_s
                    .map(|rate| Rc::new(Limiter::new(rate * mine.len() as f64 / clients as f64)));
                let mut background = Vec::new();
                if let Some(channel) = &first {
                    for w in (thread..options.watchers).step_by(threads) {
                        let prefix =
                            Bytes::from(format!("/registry/{}/", RESOURCES[w % options.resources]));
                        let (channel, until, shared, series) = (
                            channel.clone(),
                            until.clone(),
                            shared.clone(),
                            series.clone(),
                        );
                        background.push(glommio::spawn_local(async move {
                            if let Err(e) =
                                watcher(channel, prefix, start, until, &shared, &series).await
                            {
                                series.borrow_mut()[WATCH_LAG_SERIES].error(e.to_string());
                            }
                        }));
                    }
                    if thread == 0 {
                        let (channel, until, series) =
                            (channel.clone(), until.clone(), series.clone());
                        let interval = options.compact_interval;
                        background.push(glommio::spawn_local(async move {
                            compactor(channel, interval, until, &series).await;
                        }));
                    }
                    let (channel, until, event_lease) =
                        (channel.clone(), until.clone(), event_lease.clone());
                    let interval = options.event_lease_interval;
                    background.push(glommio::spawn_local(async move {
                        let mut next = Instant::now() + interval;
                        while !until.get() {
                            glommio::timer::sleep(Duration::from_millis(100)).await;
                            if Instant::now() >= next {
                                next += interval;
                                if let Ok(id) = grant_event_lease(&channel).await {
                                    event_lease.set(id);
                                }
                            }
                        }
                    }));
                }
                let mut tasks = Vec::new();
                for client in mine {
                    let Some(channel) = channels.get(&(client % conns)) else {
                        continue;
                    };
                    let mut client = Client::new(
                        channel.clone(),
                        &options,
                        &shared,
                        client,
                        event_lease.clone(),
                    );
                    let (series, limiter) = (series.clone(), limiter.clone());
                    tasks.push(glommio::spawn_local(async move {
                        let shared = client.shared.clone();
                        while let Some(seq) =
                            next_request(&shared.issued, end, limiter.as_deref()).await
                        {
                            let sent = Instant::now();
                            let (index, result) = client.one(seq, &series).await;
                            record_outcome(&series, index, sent, result, &shared.done);
                        }
                    }));
                }
                for task in tasks {
                    task.await;
                }
                until.set(true);
                for task in background {
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
    let params = json!({
        "workload": "k8s",
        "resources": options.resources,
        "namespaces": options.namespaces,
        "objects": options.objects,
        "value_bytes": [options.value_min_bytes, options.value_max_bytes],
        "watchers": options.watchers,
        "mix": options.mix.describe(),
        "compact_interval_s": options.compact_interval.as_secs_f64(),
        "event_lease_interval_s": options.event_lease_interval.as_secs_f64(),
        "conns": common.conns,
        "clients": common.clients,
    });
    let extra = BTreeMap::from([
        (
            "conflicts".to_string(),
            shared.conflicts.load(Ordering::Relaxed) as f64,
        ),
        (
            "watch_events".to_string(),
            shared.watch_events.load(Ordering::Relaxed) as f64,
        ),
    ]);
    Ok(RunReport {
        workload: "k8s".to_string(),
        params,
        wall,
        cpu,
        server,
        series: load::merge(&SERIES, per_thread),
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_names_known_verbs_with_weights_and_picks_by_them() {
        let mix = Mix::parse("update=3,get=1").unwrap();
        let mut rng = Rng::new(7);
        let updates = (0..4000)
            .filter(|_| mix.pick(&mut rng) == Verb::Update)
            .count();
        assert!((2800..3200).contains(&updates), "{updates} updates of 4000");
        assert_eq!(mix.describe(), "update=3,get=1");
        for bad in ["update", "frob=1", "get=x", "get=-1", "get=0"] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_follow_the_apiserver_layout() {
        let options = Options {
            resources: 2,
            namespaces: 3,
            objects: 0,
            value_min_bytes: 10,
            value_max_bytes: 10,
            watchers: 0,
            mix: Mix::parse("get=1").unwrap(),
            compact_interval: Duration::from_secs(1),
            event_lease_interval: Duration::from_secs(1),
        };
        assert_eq!(
            &options.key(0)[..],
            b"/registry/pods/ns-0000/obj-0000000000"
        );
        assert_eq!(
            &options.key(5)[..],
            b"/registry/configmaps/ns-0002/obj-0000000005"
        );
        assert_eq!(&prefix_end(b"/registry/pods/")[..], b"/registry/pods0");
        assert_eq!(options.value(&mut Rng::new(1)).len(), 10);
    }
}
