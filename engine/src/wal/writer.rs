//! The open WAL: the append path (encode now, durable later), the single writer task that turns
//! everything queued into one write plus one fdatasync, reads by index, and purge.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::task::JoinHandle;

use super::format::{
    self, encode_record, record_bytes, stored_payload_bytes, RecordView, Sealing, SegmentHeader,
    RECORD_FRAME_BYTES,
};
use super::prealloc::{self, segment_name, ReadySegment, Segments, Signals};
use super::recover::{self, Tail};
use super::storage::{DmaStorage, SegmentFile, Storage, WriteBuf};
use super::view::{Loc, LogView};
use super::{Record, RecordKind, RecordRef, Recovered, WalError, WalOptions};

/// The alignment recorded in segment headers: writes are aligned to the file's own alignment,
/// which must divide this.
const WRITE_ALIGNMENT_MAX_BYTES: usize = 4096;

/// An open write-ahead log, owned by one glommio executor (the raft core). Share it between
/// tasks of that executor with `Rc<Wal>`; concurrent [`Wal::append`] calls coalesce.
pub struct Wal<S: Storage = DmaStorage> {
    shared: Rc<Shared<S>>,
    writer: Option<JoinHandle<()>>,
    preallocator: JoinHandle<()>,
    signals: Rc<Signals>,
}

struct Shared<S: Storage> {
    _lock: S::DirLock,
    storage: S,
    dir: PathBuf,
    opts: WalOptions,
    st: RefCell<State<S::File>>,
}

/// Records encoded for one segment, waiting for the writer.
struct Chunk {
    seg: u64,
    offset: u64,
    bytes: Vec<u8>,
    /// The latest submission whose last record is in this chunk (0: none).
    last_ticket: u64,
}

#[derive(Clone, Copy)]
struct EncodeTail {
    seq: u64,
    offset: u64,
    segment_bytes: u64,
    /// The key sealing this segment's payloads (0: plaintext).
    key_id: u32,
}

/// What the log keeps about each segment holding records.
#[derive(Clone, Copy, Debug)]
struct SegMeta {
    /// Highest entry index in it (0: none): purge may drop it once a snapshot covers this.
    max_entry_index: u64,
    key_id: u32,
}

struct State<F> {
    view: LogView,
    /// Segments holding records, oldest first.
    segs: BTreeMap<u64, SegMeta>,
    /// Open files of the segments the writer has reached.
    files: BTreeMap<u64, Rc<F>>,
    enc: Option<EncodeTail>,
    /// Sequence of the next segment to open when `enc` is None.
    first_new_seq: u64,
    chain_crc: u32,
    pending: VecDeque<Chunk>,
    pending_bytes: usize,
    next_ticket: u64,
    durable_ticket: u64,
    /// (segment, offset) up to which everything is durable.
    durable_end: (u64, u64),
    failed: Option<String>,
    stats: WalStats,
    durable_waiters: Vec<(u64, Waker)>,
    space_waiters: Vec<Waker>,
    writer_waker: Option<Waker>,
    closed: bool,
}

impl<S: Storage> Wal<S> {
    /// Opens (creating if needed) the WAL in `dir` and recovers it. Must run inside a glommio
    /// executor, which the WAL's writer and preallocator tasks join.
    pub async fn open(
        storage: S,
        dir: impl Into<PathBuf>,
        opts: WalOptions,
    ) -> Result<(Wal<S>, Recovered), WalError> {
        opts.validate()?;
        // glommio opens the directory for its fsync by an absolute path only: a relative one
        // fails at the first sync with EBADF, so resolve it once here.
        let dir = dir.into();
        let dir = std::path::absolute(&dir).map_err(|e| WalError::io(&dir, e))?;
        storage
            .create_dir_all(&dir)
            .await
            .map_err(|e| WalError::io(&dir, e))?;
        let lock = storage.lock_dir(&dir).await.map_err(|e| WalError::Locked {
            dir: dir.clone(),
            source: e,
        })?;
        let disk = recover::recover(&storage, &dir, &opts).await?;
        let view = disk.view;
        let bounds = view.bounds();
        let recovered = Recovered {
            metadata: view.metadata.clone(),
            hard_state: view.hard_state.clone(),
            snapshot: view.snapshot.clone(),
            first_index: bounds.first_index.max(1),
            last_index: bounds.last_index(),
            torn_tail: disk.torn_tail,
        };
        let first_new_seq = disk.ready.first().map_or(disk.next_seq, |r| r.0);
        let (enc, durable_end, prefix, current) = match disk.tail {
            Some(Tail {
                seq,
                offset,
                segment_bytes,
                sector_prefix,
            }) => (
                Some(EncodeTail {
                    seq,
                    offset,
                    segment_bytes,
                    key_id: disk.segs[&seq].key_id,
                }),
                (seq, offset),
                sector_prefix,
                Some(seq),
            ),
            None => (None, (0, 0), Vec::new(), None),
        };
        let files: BTreeMap<u64, Rc<S::File>> = disk
            .segs
            .iter()
            .map(|(&seq, s)| (seq, Rc::clone(&s.file)))
            .collect();
        let current = current.map(|seq| (seq, Rc::clone(&files[&seq])));
        let st = State {
            segs: disk
                .segs
                .iter()
                .map(|(&s, i)| {
                    let meta = SegMeta {
                        max_entry_index: i.max_entry_index,
                        key_id: i.key_id,
                    };
                    (s, meta)
                })
                .collect(),
            files,
            view,
            enc,
            first_new_seq,
            chain_crc: disk.chain_crc,
            pending: VecDeque::new(),
            pending_bytes: 0,
            next_ticket: 1,
            durable_ticket: 0,
            durable_end,
            failed: None,
            stats: WalStats::default(),
            durable_waiters: Vec::new(),
            space_waiters: Vec::new(),
            writer_waker: None,
            closed: false,
        };
        let shared = Rc::new(Shared {
            _lock: lock,
            storage: storage.clone(),
            dir: dir.clone(),
            opts: opts.clone(),
            st: RefCell::new(st),
        });
        let (maker, segments) = prealloc::pipeline();
        let signals = Rc::new(Signals::default());
        let preallocator = glommio::spawn_local(prealloc::run(
            storage,
            dir,
            opts.segment_bytes,
            disk.ready,
            disk.next_seq,
            maker,
            Rc::clone(&signals),
        ))
        .detach();
        let writer = glommio::spawn_local(write_loop(
            Rc::clone(&shared),
            segments,
            Rc::clone(&signals),
            current,
            prefix,
        ))
        .detach();
        Ok((
            Wal {
                shared,
                writer: Some(writer),
                preallocator,
                signals,
            },
            recovered,
        ))
    }

    /// Validates and queues `records` in call order, and returns a future that resolves once
    /// they (and everything queued before them) are durable. Waits first only if the queue is
    /// over [`WalOptions::pending_bytes_max`]. An empty slice gives a barrier on all earlier
    /// appends. On error nothing was queued.
    pub async fn submit(&self, records: &[RecordRef<'_>]) -> Result<Durable<S>, WalError> {
        let bytes_max = self.shared.opts.pending_bytes_max;
        poll_fn(|cx| {
            let mut st = self.shared.st.borrow_mut();
            if let Some(f) = &st.failed {
                return Poll::Ready(Err(WalError::Failed(f.clone())));
            }
            if st.pending_bytes < bytes_max {
                return Poll::Ready(Ok(()));
            }
            // A task polled again while it waits (by a select over other futures) must not
            // stack a waker per poll: glommio counts wakers per task and panics on overflow.
            if !st.space_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                st.space_waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await?;
        let ticket = self
            .shared
            .st
            .borrow_mut()
            .encode(&self.shared.opts, records)?;
        Ok(Durable {
            shared: Rc::clone(&self.shared),
            ticket,
            registered: false,
        })
    }

    /// Appends `records` and returns once they are durable.
    pub async fn append(&self, records: &[RecordRef<'_>]) -> Result<(), WalError> {
        self.submit(records).await?.await
    }

    /// Drops every entry after `index` (durably, like an append).
    pub async fn truncate_after(&self, index: u64) -> Result<(), WalError> {
        let rec = RecordRef {
            kind: RecordKind::Truncate,
            term: 0,
            index,
            payload: &[],
        };
        self.append(&[rec]).await
    }

    /// Index of the oldest retained entry (`last_index() + 1` when there is none).
    pub fn first_index(&self) -> u64 {
        self.shared.st.borrow().view.first_index.max(1)
    }

    /// Index of the newest entry queued (durable or not).
    pub fn last_index(&self) -> u64 {
        self.shared.st.borrow().view.last_index()
    }

    pub fn stats(&self) -> WalStats {
        self.shared.st.borrow().stats
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Entries `[lo, hi)`, stopping early once `bytes_max` of payload is reached (at least one
    /// entry is returned). Waits for entries still queued to become durable first.
    pub async fn read_entries(
        &self,
        lo: u64,
        hi: u64,
        bytes_max: usize,
    ) -> Result<Vec<Record>, WalError> {
        let (locs, wait_for) = {
            let st = self.shared.st.borrow();
            let first = st.view.first_index.max(1);
            let last = st.view.last_index();
            if lo < first {
                return Err(WalError::Compacted {
                    index: lo,
                    first_index: first,
                });
            }
            if hi > last + 1 {
                return Err(WalError::Unavailable {
                    index: hi - 1,
                    last_index: last,
                });
            }
            let mut locs = Vec::new();
            let mut bytes = 0usize;
            for i in lo..hi {
                let loc = st.view.locs[(i - st.view.first_index) as usize];
                if !locs.is_empty() && bytes + loc.payload_len as usize > bytes_max {
                    break;
                }
                bytes += loc.payload_len as usize;
                locs.push((i, loc));
            }
            let durable = locs.last().is_none_or(|(_, l)| {
                (
                    l.seg,
                    l.offset + record_bytes(l.payload_len as usize) as u64,
                ) <= st.durable_end
            });
            (locs, (!durable).then(|| st.next_ticket - 1))
        };
        if let Some(ticket) = wait_for {
            Durable {
                shared: Rc::clone(&self.shared),
                ticket,
                registered: false,
            }
            .await?;
        }
        let mut out = Vec::with_capacity(locs.len());
        let keyring = self.shared.opts.keyring.as_ref().map(|k| k.load_full());
        for run in locs.chunk_by(|a, b| a.1.seg == b.1.seg) {
            let seg = run[0].1.seg;
            let (file, key_id) = {
                let st = self.shared.st.borrow();
                (Rc::clone(&st.files[&seg]), st.segs[&seg].key_id)
            };
            let start = run[0].1.offset;
            let last = run[run.len() - 1].1;
            let end = last.offset + record_bytes(last.payload_len as usize) as u64;
            let path = self.shared.dir.join(segment_name(seg));
            let bytes = file
                .read_at(start, (end - start) as usize)
                .await
                .map_err(|e| WalError::io(&path, e))?;
            for &(index, loc) in run {
                let at = (loc.offset - start) as usize;
                let mut record =
                    verify_entry(&bytes, at, index, loc).ok_or_else(|| WalError::Corrupt {
                        file: path.clone(),
                        offset: loc.offset,
                        reason: format!("entry {index} does not verify on read"),
                    })?;
                if key_id != crate::crypt::PLAINTEXT_KEY_ID {
                    let keyring = keyring
                        .as_deref()
                        .expect("recovery refuses sealed segments without a keyring");
                    let sealing = Sealing {
                        keyring,
                        key_id,
                        seq: seg,
                        offset: loc.offset,
                    };
                    let view = RecordView {
                        offset: loc.offset,
                        kind: RecordKind::Entry,
                        term: record.term,
                        index,
                        crc: 0,
                        carried: false,
                        payload: &record.payload,
                    };
                    record.payload = format::open_payload(sealing, &view).map_err(|_| {
                        WalError::unauthentic(&path, loc.offset, &format!("entry {index}"), key_id)
                    })?;
                }
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Bytes the segment being made still has to take from the device (0 while none is): a
    /// space check adds them to what it needs free, or the log's own growth would eat the
    /// space kept for everything else.
    pub fn preallocation_owed_bytes(&self) -> u64 {
        self.signals.owed.get()
    }

    /// Removes the oldest segments while more than [`WalOptions::max_wals`] remain and every
    /// entry in them is at or below `snapshot_index`. Returns the removed files.
    pub async fn purge(&self, snapshot_index: u64) -> Result<Vec<PathBuf>, WalError> {
        self.purge_keeping(snapshot_index, self.shared.opts.max_wals)
            .await
    }

    /// [`Wal::purge`] keeping at most `keep` segments instead of `max_wals` (still none that
    /// holds an entry past `snapshot_index`, and all of them when `max_wals` is 0): a device
    /// short of space gets back every segment recovery does not need.
    pub async fn purge_keeping(
        &self,
        snapshot_index: u64,
        keep: usize,
    ) -> Result<Vec<PathBuf>, WalError> {
        if keep == 0 || self.shared.opts.max_wals == 0 {
            return Ok(Vec::new());
        }
        let current_key_id = self.shared.opts.current_key_id();
        let victims: Vec<u64> = {
            let mut st = self.shared.st.borrow_mut();
            let writing_seg = st.durable_end.0;
            let mut left = st.segs.len();
            // Segments sealed with a key that is no longer current go as soon as the snapshot
            // covers them, however many are left: after a rotation, this is what lets the old
            // key be dropped.
            let victims: Vec<u64> = st
                .segs
                .iter()
                .take_while(|&(&seq, meta)| {
                    let old_key = meta.key_id != current_key_id;
                    let go = (left > keep || old_key)
                        && seq < writing_seg
                        && meta.max_entry_index <= snapshot_index;
                    left -= usize::from(go);
                    go
                })
                .map(|(&seq, _)| seq)
                .collect();
            for seq in &victims {
                st.segs.remove(seq);
                st.files.remove(seq);
            }
            if let Some(&oldest) = st.segs.keys().next() {
                st.view.drop_segments_before(oldest);
                debug_assert!(st.view.first_index <= snapshot_index + 1 || victims.is_empty());
            }
            victims
        };
        let mut removed = Vec::with_capacity(victims.len());
        for seq in victims {
            let path = self.shared.dir.join(segment_name(seq));
            self.shared
                .storage
                .remove(&path)
                .await
                .map_err(|e| WalError::io(&path, e))?;
            removed.push(path);
        }
        if !removed.is_empty() {
            let dir = &self.shared.dir;
            self.shared
                .storage
                .sync_dir(dir)
                .await
                .map_err(|e| WalError::io(dir, e))?;
        }
        Ok(removed)
    }

    /// Waits for everything queued to be durable, then stops the background tasks.
    pub async fn close(mut self) -> Result<(), WalError> {
        let barrier = self.submit(&[]).await;
        self.shared.st.borrow_mut().close();
        if let Some(w) = self.writer.take() {
            w.await;
        }
        self.preallocator.cancel();
        barrier?.await
    }
}

impl<S: Storage> Drop for Wal<S> {
    fn drop(&mut self) {
        // The writer drains what is queued, then ends; the preallocator ends with it.
        self.shared.st.borrow_mut().close();
    }
}

/// Counters of the writer's work since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Group-commit writes, each followed by one fdatasync.
    pub writes: u64,
    /// Record bytes written (the aligned rewrite of a tail sector not counted twice).
    pub record_bytes: u64,
}

/// Resolves once the submission it stands for is durable, or the WAL failed first.
pub struct Durable<S: Storage = DmaStorage> {
    shared: Rc<Shared<S>>,
    ticket: u64,
    registered: bool,
}

impl<S: Storage> Future for Durable<S> {
    type Output = Result<(), WalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.st.borrow_mut();
        if st.durable_ticket >= self.ticket {
            return Poll::Ready(Ok(()));
        }
        if let Some(f) = &st.failed {
            return Poll::Ready(Err(WalError::Failed(f.clone())));
        }
        // A future polled again (say, in a select loop) adds its waker only if it is not there
        // yet; the first poll, the common case, skips the search.
        let (ticket, registered) = (self.ticket, self.registered);
        let known = registered
            && st
                .durable_waiters
                .iter()
                .any(|(t, w)| *t == ticket && w.will_wake(cx.waker()));
        if !known {
            st.durable_waiters.push((ticket, cx.waker().clone()));
        }
        drop(st);
        self.get_mut().registered = true;
        Poll::Pending
    }
}

impl<F> State<F> {
    fn close(&mut self) {
        self.closed = true;
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }

    /// Validates a submission as a whole, then encodes it; returns its ticket.
    fn encode(&mut self, opts: &WalOptions, records: &[RecordRef<'_>]) -> Result<u64, WalError> {
        if let Some(f) = &self.failed {
            return Err(WalError::Failed(f.clone()));
        }
        let bytes_max = opts.record_payload_bytes_max();
        let key_id = opts.current_key_id();
        let mut bounds = self.view.bounds();
        for r in records {
            if r.payload.len() > bytes_max {
                return Err(WalError::RecordTooLarge {
                    bytes: r.payload.len(),
                    bytes_max,
                });
            }
            bounds.step(r)?;
        }
        if records.is_empty() {
            return Ok(self.next_ticket - 1);
        }
        if self.enc.is_some_and(|e| e.key_id != key_id) {
            // A segment is sealed under one key: a rotation (or a plaintext log meeting its
            // first key) starts the next segment, so new records use the new key at once.
            self.roll(opts);
        }
        let sealed = key_id != crate::crypt::PLAINTEXT_KEY_ID;
        for r in records {
            let stored = stored_payload_bytes(r.payload.len(), sealed);
            let fits = self
                .enc
                .is_some_and(|e| e.offset + record_bytes(stored) as u64 <= e.segment_bytes);
            if !fits {
                self.roll(opts);
            }
            self.put(opts, r, 0);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending
            .back_mut()
            .expect("records were just queued")
            .last_ticket = ticket;
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
        Ok(ticket)
    }

    /// Starts the next segment: header, then the records every segment carries.
    fn roll(&mut self, opts: &WalOptions) {
        let seq = self.enc.map_or(self.first_new_seq, |e| e.seq + 1);
        let keyring = opts.keyring.as_ref().map(|k| k.load());
        let (key_id, key_check) = format::segment_key(keyring.as_deref().map(|k| &**k));
        let header = SegmentHeader {
            alignment_bytes: WRITE_ALIGNMENT_MAX_BYTES as u32,
            seq,
            first_index: if self.view.first_index == 0 {
                0
            } else {
                self.view.last_index() + 1
            },
            segment_bytes: opts.segment_bytes,
            chain_seed: self.chain_crc,
            batch_bytes_max: opts.batch_bytes_max as u32,
            key_id,
            key_check,
        };
        self.pending.push_back(Chunk {
            seg: seq,
            offset: 0,
            bytes: header.encode().to_vec(),
            last_ticket: 0,
        });
        self.pending_bytes += format::SEGMENT_HEADER_BYTES;
        self.enc = Some(EncodeTail {
            seq,
            offset: format::SEGMENT_HEADER_BYTES as u64,
            segment_bytes: opts.segment_bytes,
            key_id,
        });
        let meta = SegMeta {
            max_entry_index: 0,
            key_id,
        };
        self.segs.insert(seq, meta);
        let carried: Vec<Record> = self
            .view
            .carried_records()
            .iter()
            .map(|r| Record {
                kind: r.kind,
                term: r.term,
                index: r.index,
                payload: r.payload.to_vec(),
            })
            .collect();
        for r in &carried {
            self.put(opts, &r.as_ref(), format::FLAG_CARRIED);
        }
    }

    /// Encodes one validated record at the encode tail.
    fn put(&mut self, opts: &WalOptions, r: &RecordRef<'_>, flags: u8) {
        let enc = self.enc.expect("a segment is open for encoding");
        let sealed = enc.key_id != crate::crypt::PLAINTEXT_KEY_ID;
        let stored = stored_payload_bytes(r.payload.len(), sealed);
        let len = record_bytes(stored);
        assert!(
            enc.offset + len as u64 <= enc.segment_bytes,
            "record overflows its segment"
        );
        let extend = self.pending.back().is_some_and(|c| {
            c.seg == enc.seq
                && c.offset + c.bytes.len() as u64 == enc.offset
                && c.bytes.len() + len <= opts.batch_bytes_max
        });
        if !extend {
            self.pending.push_back(Chunk {
                seg: enc.seq,
                offset: enc.offset,
                bytes: Vec::with_capacity(len),
                last_ticket: 0,
            });
        }
        let chunk = self.pending.back_mut().expect("pushed above");
        let prev_crc = self.chain_crc;
        let keyring = opts.keyring.as_ref().filter(|_| sealed).map(|k| k.load());
        let sealing = keyring.as_deref().map(|keyring| Sealing {
            keyring,
            key_id: enc.key_id,
            seq: enc.seq,
            offset: enc.offset,
        });
        self.chain_crc = encode_record(
            &mut chunk.bytes,
            prev_crc,
            flags,
            r.kind,
            r.term,
            r.index,
            r.payload,
            sealing,
        );
        let loc = Loc {
            seg: enc.seq,
            offset: enc.offset,
            payload_len: stored as u32,
            prev_crc,
        };
        if flags & format::FLAG_CARRIED != 0 {
            self.view.restate(r);
        } else {
            self.view.apply(r, loc);
        }
        if r.kind == RecordKind::Entry {
            let meta = self.segs.get_mut(&enc.seq).expect("rolled in");
            meta.max_entry_index = meta.max_entry_index.max(r.index);
        }
        self.pending_bytes += len;
        self.enc = Some(EncodeTail {
            offset: enc.offset + len as u64,
            ..enc
        });
    }

    fn wake_durable(&mut self) {
        let durable = self.durable_ticket;
        let failed = self.failed.is_some();
        self.durable_waiters.retain(|(ticket, waker)| {
            let done = failed || *ticket <= durable;
            if done {
                waker.wake_by_ref();
            }
            !done
        });
    }

    fn wake_space(&mut self) {
        for w in self.space_waiters.drain(..) {
            w.wake();
        }
    }
}

/// The single writer: one chunk (everything queued for one segment, up to the batch bound) at
/// a time, one write and one fdatasync each.
async fn write_loop<S: Storage>(
    shared: Rc<Shared<S>>,
    segments: Segments<S::File>,
    signals: Rc<Signals>,
    mut current: Option<ReadySegment<S::File>>,
    mut sector_prefix: Vec<u8>,
) {
    loop {
        let next = poll_fn(|cx| {
            let mut st = shared.st.borrow_mut();
            if let Some(c) = st.pending.pop_front() {
                st.pending_bytes -= c.bytes.len();
                st.wake_space();
                return Poll::Ready(Some(c));
            }
            if st.closed {
                return Poll::Ready(None);
            }
            st.writer_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(chunk) = next else { return };
        let written = write_chunk(
            &shared,
            &segments,
            &signals.writer_waiting,
            &mut current,
            &mut sector_prefix,
            &chunk,
        )
        .await;
        let mut st = shared.st.borrow_mut();
        match written {
            Ok(()) => {
                debug_assert!(chunk.last_ticket == 0 || chunk.last_ticket > st.durable_ticket);
                st.durable_ticket = st.durable_ticket.max(chunk.last_ticket);
                st.durable_end = (chunk.seg, chunk.offset + chunk.bytes.len() as u64);
                st.stats.writes += 1;
                st.stats.record_bytes += chunk.bytes.len() as u64;
                st.wake_durable();
            }
            Err(e) => {
                // After a failed write or fdatasync the state of the file is unknown; only a
                // reopen (recovery) may decide what survived.
                let path = shared.dir.join(segment_name(chunk.seg));
                st.failed = Some(format!("{}: {e}", path.display()));
                st.pending.clear();
                st.pending_bytes = 0;
                st.wake_durable();
                st.wake_space();
                return;
            }
        }
    }
}

async fn write_chunk<S: Storage>(
    shared: &Shared<S>,
    segments: &Segments<S::File>,
    waiting: &std::cell::Cell<bool>,
    current: &mut Option<ReadySegment<S::File>>,
    sector_prefix: &mut Vec<u8>,
    chunk: &Chunk,
) -> io::Result<()> {
    if current.as_ref().map(|c| c.0) != Some(chunk.seg) {
        assert_eq!(chunk.offset, 0, "a new segment starts with its header");
        // While the writer waits, a preallocation that meets a full device fails the log
        // instead of being retried (`prealloc::run`).
        waiting.set(true);
        let received = segments.next().await;
        waiting.set(false);
        let (seq, file) =
            received.ok_or_else(|| io::Error::other("segment preallocator stopped"))??;
        assert_eq!(seq, chunk.seg, "segments are made in sequence");
        assert!(WRITE_ALIGNMENT_MAX_BYTES.is_multiple_of(file.alignment_bytes()));
        shared.st.borrow_mut().files.insert(seq, Rc::clone(&file));
        *current = Some((seq, file));
        sector_prefix.clear();
    }
    let file = &current.as_ref().expect("set above").1;
    let align = file.alignment_bytes();
    let prefix = sector_prefix.len();
    let start = chunk.offset - prefix as u64;
    assert_eq!(
        start % align as u64,
        0,
        "the sector prefix reaches back to an aligned offset"
    );
    let end = prefix + chunk.bytes.len();
    let mut buf = file.alloc(end.next_multiple_of(align));
    let b = buf.bytes_mut();
    b[..prefix].copy_from_slice(sector_prefix);
    b[prefix..end].copy_from_slice(&chunk.bytes);
    b[end..].fill(0);
    let next_prefix = b[end / align * align..end].to_vec();
    file.write_durable(&Rc::new(buf), start).await?;
    *sector_prefix = next_prefix;
    Ok(())
}

/// Decodes the entry frame at `at` and checks it against what the index says it holds.
fn verify_entry(bytes: &[u8], at: usize, index: u64, loc: Loc) -> Option<Record> {
    let len = loc.payload_len as usize;
    let frame = bytes.get(at..at + RECORD_FRAME_BYTES)?;
    let payload = bytes.get(at + RECORD_FRAME_BYTES..at + RECORD_FRAME_BYTES + len)?;
    let want = crc32c::crc32c_append(crc32c::crc32c_append(loc.prev_crc, &frame[0..24]), payload);
    let u64_at = |i: usize| u64::from_le_bytes(frame[i..i + 8].try_into().expect("8 bytes"));
    let ok = frame[0] == RecordKind::Entry as u8
        && u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes")) as usize == len
        && u64_at(16) == index
        && u32::from_le_bytes(frame[24..28].try_into().expect("4 bytes")) == want;
    ok.then(|| Record {
        kind: RecordKind::Entry,
        term: u64_at(8),
        index,
        payload: payload.to_vec(),
    })
}
