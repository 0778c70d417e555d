//! The Watch service: one bidi stream carries any number of watches, each a watcher in the
//! store's [`WatchHub`]. This module owns the stream's side of etcd 3.5's `serverWatchStream`:
//! watch ids (client-chosen or the next free one), create / cancel / progress requests, the
//! created and canceled answers, prev_kv and fragment per watch, and the progress-notify
//! ticker. It must never decide which events a watcher gets: that is the hub's job, fed by
//! whoever owns the store.
//!
//! Events reach the stream through one bounded channel per stream ([`WATCH_STREAM_QUEUE_MAX`],
//! etcd's `chanBufLen`); the hub only ever `try_send`s into it, so a stream whose client reads
//! slowly never holds up a write: its watchers become victims and catch up later.
//!
//! A stream opened with `hasleader` metadata also watches this member's leader, as etcd's
//! `monitorLeader` does: it ends with "etcdserver: no leader" once the member has known no
//! leader at `NO_LEADER_CHECKS_MAX` checks in a row, one check per election timeout, polled
//! from the stream's own task (the raft core does no work for it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use basalt_engine::watch::{SendError, WatchBatch, WatchHub, WatchSink, WatchSpec, WatcherId};
use basalt_proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, ResponseHeader,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::future;
use prost::Message;

use crate::grpc::{decode, MessageReader, ResponseSink, PREFIX_BYTES, SEND_MESSAGE_BYTES_MAX};
use crate::kv::KvService;
use crate::leader_check::{LeaderCheck, NO_LEADER_CHECKS_MAX};
use crate::status::{Code, Status};

/// The watchers of one store, shared by every core's Watch streams and the store's writer.
/// Lock order where both are held: the store first, then the hub.
pub type SharedWatchHub = Arc<Mutex<WatchHub>>;

/// Locks the hub; a panic while it was held leaves watchers in an unknown state, so it is
/// fatal here too.
pub fn lock_hub(hub: &SharedWatchHub) -> MutexGuard<'_, WatchHub> {
    hub.lock()
        .expect("the watch hub panicked during an earlier call")
}

/// Batches queued for one stream before the hub sees it as full (etcd's `chanBufLen`).
pub const WATCH_STREAM_QUEUE_MAX: usize = 128;

/// How often a stream asks its executor to catch unsynced watchers up (etcd's sync loop
/// period); an executor whose writer syncs on its own ignores the call.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Responses already queued for a stream are written together up to about this many bytes:
/// under a stream of small writes one h2 DATA frame carries many revisions' responses.
const COALESCED_BYTES_MAX: usize = 64 << 10;

/// etcd's answers to a create it refuses (`mvcc.ErrEmptyWatcherRange`,
/// `mvcc.ErrWatcherDuplicateID`).
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's cancel reason for a watch on a range the user may not read: the gRPC error's text.
const PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// Protobuf tag of `WatchResponse.events` (field 11, length-delimited).
const EVENTS_TAG: u8 = (11 << 3) | 2;

/// The stream's end of its channel, as the hub sees it.
pub(crate) struct ChannelSink(pub(crate) flume::Sender<WatchBatch>);

impl WatchSink for ChannelSink {
    fn try_send(&self, batch: WatchBatch) -> Result<(), SendError> {
        self.0.try_send(batch).map_err(|error| match error {
            flume::TrySendError::Full(batch) => SendError::Full(batch),
            flume::TrySendError::Disconnected(_) => SendError::Closed,
        })
    }
}

/// One watch of the stream.
struct Watch {
    watcher: WatcherId,
    progress_notify: bool,
    fragment: bool,
    /// No events went out since the last progress tick (etcd's `progress[id]`).
    idle: bool,
}

/// What the Watch call needs from its service set.
pub(crate) struct WatchContext<'a, K> {
    pub(crate) kv: &'a K,
    pub(crate) hub: &'a SharedWatchHub,
    /// Fills cluster id, member id and raft term around a revision.
    pub(crate) header: &'a dyn Fn(i64) -> ResponseHeader,
    /// A response of at least this many bytes is fragmented when its watch asked for it.
    pub(crate) fragment_bytes_min: usize,
    pub(crate) progress_notify_interval: Duration,
    /// Some(election timeout) when the caller sent `hasleader` metadata: how often the stream
    /// checks that this member still knows a leader.
    pub(crate) leader_check_interval: Option<Duration>,
    /// The caller's permissions: a watch opens only on a range it may read.
    pub(crate) gate: &'a crate::auth::Gate,
}

struct WatchStream<'a, K> {
    cx: WatchContext<'a, K>,
    watches: HashMap<i64, Watch>,
    ids: HashMap<WatcherId, i64>,
    /// etcd's `nextID`: auto ids count up from 0, skipping ids in use.
    next_auto_id: i64,
    tx: flume::Sender<WatchBatch>,
}

/// Resolves once `kv` has known no leader for `NO_LEADER_CHECKS_MAX` checks in a row, one
/// check per `interval`: when etcd cancels a stream opened with `hasleader`.
pub(crate) async fn leader_lost<K: KvService>(kv: &K, interval: Duration) {
    let mut check = LeaderCheck::new(interval, NO_LEADER_CHECKS_MAX, Instant::now());
    loop {
        glommio::timer::sleep(check.next_check.saturating_duration_since(Instant::now())).await;
        if check.lost(Instant::now(), kv.has_leader()) {
            return;
        }
    }
}

enum Input {
    Request(Result<Option<Bytes>, Status>),
    Batch(WatchBatch),
    Tick,
}

/// Serves one Watch call until the client ends it or goes away.
pub(crate) async fn serve<K: KvService>(
    cx: WatchContext<'_, K>,
    mut reader: MessageReader,
    mut sink: ResponseSink,
) -> Option<Code> {
    let (tx, rx) = flume::bounded(WATCH_STREAM_QUEUE_MAX);
    let progress_interval = cx.progress_notify_interval.max(SYNC_INTERVAL);
    let mut stream = WatchStream {
        cx,
        watches: HashMap::new(),
        ids: HashMap::new(),
        next_auto_id: 0,
        tx,
    };
    let mut next_sync = Instant::now() + SYNC_INTERVAL;
    let mut next_progress = Instant::now() + progress_interval;
    let mut leader_check = stream
        .cx
        .leader_check_interval
        .map(|interval| LeaderCheck::new(interval, NO_LEADER_CHECKS_MAX, Instant::now()));
    // etcd keeps a stream whose client half-closed its side: events still flow until the
    // client goes away.
    let mut requests_ended = false;
    let ended = loop {
        let wait = leader_check
            .as_ref()
            .map_or(next_sync, |check| check.next_check.min(next_sync))
            .min(next_progress)
            .saturating_duration_since(Instant::now());
        let input = future::or(
            future::or(
                async {
                    if requests_ended {
                        sink.closed().await;
                        return Input::Request(Err(Status::new(Code::Cancelled, "client gone")));
                    }
                    Input::Request(reader.next().await)
                },
                async {
                    match rx.recv_async().await {
                        Ok(batch) => Input::Batch(batch),
                        Err(_) => unreachable!("the stream holds a sender"),
                    }
                },
            ),
            async {
                glommio::timer::sleep(wait).await;
                Input::Tick
            },
        )
        .await;
        let frames = match input {
            Input::Request(Ok(Some(body))) => match decode::<WatchRequest>(body, "request") {
                Ok(request) => stream.on_request(request),
                Err(status) => break Some(status),
            },
            Input::Request(Ok(None)) => {
                requests_ended = true;
                Vec::new()
            }
            Input::Request(Err(_)) => break None, // The client is gone.
            Input::Batch(batch) => {
                // Batches already queued go out in the same write as this one.
                let mut out = BytesMut::new();
                stream.on_batch(batch, &mut out);
                while out.len() < COALESCED_BYTES_MAX {
                    let Ok(batch) = rx.try_recv() else { break };
                    stream.on_batch(batch, &mut out);
                }
                if out.is_empty() {
                    Vec::new()
                } else {
                    vec![out.freeze()]
                }
            }
            Input::Tick => {
                let now = Instant::now();
                if now >= next_sync {
                    stream.cx.kv.sync_watches();
                    next_sync = now + SYNC_INTERVAL;
                }
                if now >= next_progress {
                    stream.on_progress_tick();
                    next_progress = now + progress_interval;
                }
                if let Some(check) = leader_check.as_mut().filter(|c| c.due(now)) {
                    if check.lost(now, stream.cx.kv.has_leader()) {
                        break Some(Status::no_leader());
                    }
                }
                Vec::new()
            }
        };
        let mut gone = false;
        for frame in frames {
            if sink.send(frame).await.is_err() {
                gone = true;
                break;
            }
        }
        if gone {
            break None;
        }
    };
    stream.cancel_all();
    let status = ended?;
    let code = status.code;
    sink.finish(&status);
    Some(code)
}

impl<K: KvService> WatchStream<'_, K> {
    fn on_request(&mut self, request: WatchRequest) -> Vec<Bytes> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => vec![self.create(create)],
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id),
            Some(RequestUnion::ProgressRequest(_)) => {
                // etcd 3.5 answers for the whole stream (watch id -1) at the current revision.
                let revision = lock_hub(self.cx.hub).notified_revision();
                vec![self.frame(WatchResponse {
                    header: Some((self.cx.header)(revision)),
                    watch_id: -1,
                    ..Default::default()
                })]
            }
            None => Vec::new(), // etcd logs and ignores a request of an unknown kind.
        }
    }

    fn create(&mut self, create: WatchCreateRequest) -> Bytes {
        // etcd's rules: an empty key is "\0", the smallest key.
        let key = if create.key.is_empty() {
            Bytes::from_static(&[0])
        } else {
            create.key.clone()
        };
        // etcd checks permission first (its range before the range's own checks).
        let refusal = if !self.cx.gate.watch(&key, &create.range_end) {
            Some(PERMISSION_DENIED)
        } else if !create.range_end.is_empty()
            && create.range_end.as_ref() != [0]
            && key >= create.range_end
        {
            Some(EMPTY_RANGE)
        } else if create.watch_id != 0 && self.watches.contains_key(&create.watch_id) {
            Some(DUPLICATE_ID)
        } else {
            None
        };
        let mut hub = lock_hub(self.cx.hub);
        let revision = hub.notified_revision();
        if let Some(reason) = refusal {
            drop(hub);
            return self.frame(WatchResponse {
                header: Some((self.cx.header)(revision)),
                // etcd answers a refused permission with the id asked for, other refusals -1.
                watch_id: if reason == PERMISSION_DENIED {
                    create.watch_id
                } else {
                    -1
                },
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            });
        }
        let watch_id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watches.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id += 1;
            self.next_auto_id - 1
        };
        let filters = |wanted: FilterType| create.filters.contains(&(wanted as i32));
        let spec = WatchSpec {
            key,
            range_end: create.range_end.clone(),
            start_revision: create.start_revision,
            prev_kv: create.prev_kv,
            filter_put: filters(FilterType::Noput),
            filter_delete: filters(FilterType::Nodelete),
        };
        let watcher = hub.watch(spec, Box::new(ChannelSink(self.tx.clone())));
        drop(hub);
        self.watches.insert(
            watch_id,
            Watch {
                watcher,
                progress_notify: create.progress_notify,
                fragment: create.fragment,
                idle: true,
            },
        );
        self.ids.insert(watcher, watch_id);
        if create.start_revision != 0 {
            // A watch in the past has catching up to do; start it now rather than at the tick.
            self.cx.kv.sync_watches();
        }
        self.frame(WatchResponse {
            header: Some((self.cx.header)(revision)),
            watch_id,
            created: true,
            ..Default::default()
        })
    }

    fn cancel(&mut self, watch_id: i64) -> Vec<Bytes> {
        let Some(watch) = self.watches.remove(&watch_id) else {
            return Vec::new(); // etcd answers nothing for an unknown id.
        };
        self.ids.remove(&watch.watcher);
        let mut hub = lock_hub(self.cx.hub);
        hub.cancel(watch.watcher);
        let revision = hub.notified_revision();
        drop(hub);
        vec![self.frame(WatchResponse {
            header: Some((self.cx.header)(revision)),
            watch_id,
            canceled: true,
            ..Default::default()
        })]
    }

    fn on_progress_tick(&mut self) {
        let mut hub = lock_hub(self.cx.hub);
        for watch in self.watches.values_mut() {
            if watch.progress_notify && watch.idle {
                hub.progress(watch.watcher);
            }
            watch.idle = true;
        }
    }

    /// Appends the batch's response (or its fragments) to `out`, framed.
    fn on_batch(&mut self, batch: WatchBatch, out: &mut BytesMut) {
        let Some(&watch_id) = self.ids.get(&batch.watcher) else {
            return; // Cancelled after the batch was queued.
        };
        let compacted = batch.compact_revision != 0;
        let head = WatchResponse {
            header: Some((self.cx.header)(batch.revision)),
            watch_id,
            canceled: compacted,
            compact_revision: batch.compact_revision,
            ..Default::default()
        };
        let watch = self
            .watches
            .get_mut(&watch_id)
            .expect("ids and watches agree");
        if !batch.events.is_empty() {
            watch.idle = false;
        }
        let fragment = watch.fragment;
        if compacted {
            // The hub has dropped the watcher.
            self.watches.remove(&watch_id);
            self.ids.remove(&batch.watcher);
        }
        let events = batch
            .events
            .iter()
            .map(|event| event.encoded(batch.prev_kv));
        if fragment {
            let events: Vec<&Bytes> = events.collect();
            for frame in fragments(head, &events, self.cx.fragment_bytes_min) {
                out.extend_from_slice(&frame);
            }
        } else {
            append_frame(&head, events, out);
        }
    }

    fn frame(&self, response: WatchResponse) -> Bytes {
        frame_with_events(&response, &[])
    }

    fn cancel_all(&mut self) {
        let mut hub = lock_hub(self.cx.hub);
        for watch in self.watches.values() {
            hub.cancel(watch.watcher);
        }
    }
}

fn event_field_bytes(event: &Bytes) -> usize {
    1 + prost::encoding::encoded_len_varint(event.len() as u64) + event.len()
}

/// Frames `head` with `events` appended as its field 11: the events are already protobuf
/// bytes, shared by every watcher, so they are copied into the frame but never re-encoded.
fn frame_with_events(head: &WatchResponse, events: &[&Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    append_frame(head, events.iter().copied(), &mut out);
    out.freeze()
}

/// [`frame_with_events`] appending to `out`, so several responses can share one buffer.
fn append_frame<'a>(
    head: &WatchResponse,
    events: impl Iterator<Item = &'a Bytes> + Clone,
    out: &mut BytesMut,
) {
    let body_bytes = head.encoded_len() + events.clone().map(event_field_bytes).sum::<usize>();
    // A response this large cannot be sent at all; etcd's grpc-go fails the same way, and the
    // hub's bound on revisions per catch-up keeps real batches far below it.
    assert!(
        body_bytes <= SEND_MESSAGE_BYTES_MAX,
        "watch response of {body_bytes} bytes"
    );
    out.reserve(PREFIX_BYTES + body_bytes);
    let start = out.len();
    out.put_u8(0);
    out.put_u32(body_bytes as u32);
    head.encode(out).expect("sized by encoded_len");
    for event in events {
        out.put_u8(EVENTS_TAG);
        prost::encoding::encode_varint(event.len() as u64, out);
        out.put_slice(event);
    }
    debug_assert_eq!(out.len() - start, PREFIX_BYTES + body_bytes);
}

/// etcd's `sendFragments`: a response of at least `max_request_bytes` (etcd passes its request
/// limit plus gRPC's allowance) with two or more events
/// goes out as several, each as full as the limit allows (but at least one event), all but the
/// last marked `fragment`.
fn fragments(head: WatchResponse, events: &[&Bytes], max_request_bytes: usize) -> Vec<Bytes> {
    let head_bytes = head.encoded_len();
    let total_bytes = head_bytes + events.iter().map(|e| event_field_bytes(e)).sum::<usize>();
    if total_bytes < max_request_bytes || events.len() < 2 {
        return vec![frame_with_events(&head, events)];
    }
    let marked = WatchResponse {
        fragment: true,
        ..head.clone()
    };
    let marked_bytes = marked.encoded_len();
    let mut frames = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = marked_bytes;
        while end < events.len() {
            let next = event_field_bytes(events[end]);
            if end > start && bytes + next >= max_request_bytes {
                break;
            }
            bytes += next;
            end += 1;
        }
        let response = if end == events.len() { &head } else { &marked };
        frames.push(frame_with_events(response, &events[start..end]));
        start = end;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_frame(frame: &Bytes) -> WatchResponse {
        WatchResponse::decode(&frame[PREFIX_BYTES..]).unwrap()
    }

    #[test]
    fn preencoded_events_decode_as_the_response_events() {
        let event = basalt_proto::mvccpb::Event {
            r#type: 1,
            kv: Some(basalt_proto::mvccpb::KeyValue {
                key: Bytes::from_static(b"k"),
                mod_revision: 7,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let encoded = Bytes::from(event.encode_to_vec());
        let head = WatchResponse {
            watch_id: 3,
            ..Default::default()
        };
        let decoded = decode_frame(&frame_with_events(&head, &[&encoded, &encoded]));
        assert_eq!(decoded.watch_id, 3);
        assert_eq!(decoded.events, vec![event.clone(), event]);
    }

    #[test]
    fn fragments_split_at_the_limit_and_mark_all_but_the_last() {
        let event = basalt_proto::mvccpb::Event {
            kv: Some(basalt_proto::mvccpb::KeyValue {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![b'x'; 90]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let event = Bytes::from(event.encode_to_vec());
        let events: Vec<&Bytes> = std::iter::repeat_n(&event, 10).collect();
        let head = WatchResponse {
            watch_id: 1,
            ..Default::default()
        };
        // (limit, responses expected)
        let cases = [(10_000, 1), (250, 5), (50, 10)];
        for (limit, expected) in cases {
            let frames = fragments(head.clone(), &events, limit);
            let decoded: Vec<WatchResponse> = frames.iter().map(decode_frame).collect();
            assert_eq!(decoded.len(), expected, "limit {limit}");
            let total: usize = decoded.iter().map(|r| r.events.len()).sum();
            assert_eq!(total, 10, "limit {limit}");
            for (i, response) in decoded.iter().enumerate() {
                assert_eq!(response.fragment, i + 1 < decoded.len(), "limit {limit}");
            }
        }
    }
}
