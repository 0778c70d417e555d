//! An event of one revision, encoded once however many watchers receive it, and the batch one
//! watcher is handed.

use std::sync::Arc;

use basalt_proto::mvccpb::{event::EventType, Event, KeyValue};
use bytes::Bytes;
use prost::Message;

use super::WatcherId;

/// One `mvccpb.Event`, shared by every watcher it goes to. The protobuf bytes are made once
/// here, with and without `prev_kv`, so fanning an event out to N watchers copies a pointer N
/// times instead of encoding N times.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedEvent(Arc<EncodedEvent>);

#[derive(Debug, PartialEq)]
struct EncodedEvent {
    /// The event with `prev_kv` filled when it was looked up.
    event: Event,
    without_prev_kv: Bytes,
    /// None when no prev_kv was looked up or there was none (a create, or compacted away).
    with_prev_kv: Option<Bytes>,
}

impl SharedEvent {
    /// `kv` as the revision backend holds it; a tombstone's KeyValue holds only its key, and
    /// gets the revision that deleted it as its mod_revision, as etcd's events do.
    pub(super) fn new(
        tombstone: bool,
        mut kv: KeyValue,
        revision_main: i64,
        prev_kv: Option<KeyValue>,
    ) -> Self {
        let kind = if tombstone {
            kv.mod_revision = revision_main;
            EventType::Delete
        } else {
            EventType::Put
        };
        let mut event = Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv: None,
        };
        let without_prev_kv = Bytes::from(event.encode_to_vec());
        let with_prev_kv = prev_kv.map(|prev| {
            event.prev_kv = Some(prev);
            Bytes::from(event.encode_to_vec())
        });
        SharedEvent(Arc::new(EncodedEvent {
            event,
            without_prev_kv,
            with_prev_kv,
        }))
    }

    /// The event, with `prev_kv` when it was looked up.
    pub fn event(&self) -> &Event {
        &self.0.event
    }

    pub fn is_delete(&self) -> bool {
        self.0.event.r#type == EventType::Delete as i32
    }

    pub fn key(&self) -> &[u8] {
        self.kv().key.as_ref()
    }

    pub fn mod_revision(&self) -> i64 {
        self.kv().mod_revision
    }

    fn kv(&self) -> &KeyValue {
        self.0
            .event
            .kv
            .as_ref()
            .expect("every event carries its kv")
    }

    /// The `mvccpb.Event` protobuf bytes a watcher with (or without) prev_kv receives.
    pub fn encoded(&self, prev_kv: bool) -> &Bytes {
        match (&self.0.with_prev_kv, prev_kv) {
            (Some(with), true) => with,
            _ => &self.0.without_prev_kv,
        }
    }
}

/// What one watcher is handed at once: the events of one revision (a synced watcher), of
/// several (catching up), none (a progress notification), or the compacted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    pub watcher: WatcherId,
    /// The revision for the response header: the store's revision when the batch was made
    /// (0 in the compacted answer, as etcd sends it).
    pub revision: i64,
    /// Nonzero: the watcher's start revision was compacted away; it is removed and gets no
    /// events.
    pub compact_revision: i64,
    /// In revision order, all events of one revision together in their txn order.
    pub events: Vec<SharedEvent>,
    /// The watcher asked for prev_kv: encode with [`SharedEvent::encoded`]`(true)`.
    pub prev_kv: bool,
}

impl WatchBatch {
    /// A batch with no events and no compaction: etcd's progress notification.
    pub fn is_progress(&self) -> bool {
        self.events.is_empty() && self.compact_revision == 0
    }
}
