//! Snapshot files between members, each on a connection of its own so a big transfer never
//! holds up heartbeats: SNAP_HEAD (the Snap message and the file length), SNAP_CHUNK frames
//! (each crc32c-checked), SNAP_END (the sha256 of the whole file), then the receiver's
//! SNAP_DONE verdict.
//!
//! The receiver writes into `<snap_dir>/<index>-<from>.incoming`, fdatasyncs, renames it to
//! `<index>-<from>.snap.db`, syncs the directory, and only then hands the file to the raft core.
//! The wire carries the tree's plaintext (each member has its own keys): a member with
//! `--encryption-key-file` seals the pages as they arrive (`btree::SlotSealer`, the tree
//! file's own encrypted format), and sends from a copy sealed with its keys, opened page by page
//! as it goes (`btree::SlotOpener`), so no plaintext of the tree touches its disk.
//! Must never hand over a file that is not whole and verified: a broken or corrupt transfer is
//! deleted and reported to the sender.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use basalt_engine::btree::{self, SlotOpener, SlotSealer};
use basalt_engine::crypt::SharedKeyring;
use basalt_raft::{Message, MessageType};
use futures_lite::io::BufReader;
use futures_lite::AsyncWriteExt;
use glommio::io::{BufferedFile, Directory};
use sha2::{Digest, Sha256};

use super::conn::{self, PeerIo, CONN_READ_TIMEOUT, CONN_WRITE_TIMEOUT};
use super::stream::handshake;
use super::wire::{self, FrameKind, StreamKind, WireError, HEADER_BYTES};
use super::{Link, PeerError, PeerInbound, Shared};
use crate::metrics::metrics;

/// File bytes per SNAP_CHUNK frame.
pub(crate) const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// A transfer logs its progress each time this many more bytes have moved.
const PROGRESS_LOG_BYTES: u64 = 64 << 20;
/// How long the receiver may take to verify and sync the whole file before answering.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one snapshot, deletes the file, and reports the outcome to the core.
pub(crate) async fn send(
    shared: Rc<Shared>,
    link: Option<Rc<Link>>,
    message: Message,
    db_file: PathBuf,
) {
    let to = message.to;
    let index = message.snapshot.as_ref().map_or(0, |s| s.metadata.index);
    let result = match &link {
        Some(link) => send_file(&shared, link, message, &db_file).await,
        None => Err(PeerError::UnknownPeer(to)),
    };
    if let Err(error) = glommio::io::remove(&db_file).await {
        eprintln!(
            "basalt: peer {to:x}: cannot delete sent snapshot {}: {error}",
            db_file.display()
        );
    }
    let peer_metrics = metrics().peer(to);
    match &result {
        Ok(()) => peer_metrics.snapshot_send_success.inc(),
        Err(error) => {
            peer_metrics.snapshot_send_failures.inc();
            eprintln!("basalt: peer {to:x}: snapshot at index {index} not sent: {error}");
        }
    }
    let sent = PeerInbound::SnapshotSent {
        to,
        ok: result.is_ok(),
    };
    let _ = shared.inbound.send_async(sent).await;
}

async fn send_file(
    shared: &Shared,
    link: &Link,
    message: Message,
    db_file: &Path,
) -> Result<(), PeerError> {
    let mut conn = handshake(shared, link, StreamKind::Snapshot).await?;
    let file = Outgoing::open(db_file, shared.keyring.as_ref()).await?;
    let file_bytes = file.plain_bytes;
    let mut progress = Progress::new(
        format!("peer {:x}: sending a snapshot", link.id),
        file_bytes,
    );
    conn.io
        .write_all(&wire::encode_snap_head(file_bytes, message))
        .await?;
    let mut sha = Sha256::new();
    let mut frame = Vec::with_capacity(HEADER_BYTES + SNAPSHOT_CHUNK_BYTES as usize);
    let mut sent_bytes = 0;
    while sent_bytes < file_bytes {
        let want = SNAPSHOT_CHUNK_BYTES.min(file_bytes - sent_bytes) as usize;
        let chunk = file.read_at(sent_bytes, want).await?;
        if chunk.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the snapshot file shrank while it was sent",
            )
            .into());
        }
        sha.update(&chunk[..]);
        frame.clear();
        wire::encode_frame(&mut frame, FrameKind::SnapChunk, &chunk);
        conn::within(CONN_WRITE_TIMEOUT, async {
            Ok(conn.io.write_all(&frame).await?)
        })
        .await?;
        link.metrics.sent_bytes.add(frame.len() as u64);
        sent_bytes += chunk.len() as u64;
        progress.advance(sent_bytes);
    }
    let _ = file.file.close().await;
    let digest: [u8; 32] = sha.finalize().into();
    conn.io
        .write_all(&wire::frame(FrameKind::SnapEnd, &digest))
        .await?;
    let verdict = conn::within(VERDICT_TIMEOUT, conn::expect_frame(&mut conn.io)).await?;
    match verdict {
        (FrameKind::SnapDone, payload) => {
            wire::decode_snap_done(&payload)?.map_err(PeerError::Refused)?;
            progress.finish();
            Ok(())
        }
        (kind, _) => Err(WireError::Unexpected(kind as u8).into()),
    }
}

/// A tree file to send, as the plaintext the peer gets.
struct Outgoing {
    file: BufferedFile,
    /// Set when this member sealed the file.
    opener: Option<SlotOpener>,
    plain_bytes: u64,
}

impl Outgoing {
    async fn open(path: &Path, keyring: Option<&SharedKeyring>) -> Result<Outgoing, PeerError> {
        let file = BufferedFile::open(path)
            .await
            .map_err(std::io::Error::from)?;
        let file_bytes = file.file_size().await.map_err(std::io::Error::from)?;
        let head = file
            .read_at(0, btree::SEALED_HEADER_BYTES as usize)
            .await
            .map_err(std::io::Error::from)?;
        let opener = match keyring {
            Some(keyring) if btree::is_sealed(&head) => {
                Some(SlotOpener::new(&head, keyring).map_err(std::io::Error::other)?)
            }
            _ => None,
        };
        let plain_bytes = opener
            .as_ref()
            .map_or(file_bytes, |o| o.plain_len(file_bytes));
        Ok(Outgoing {
            file,
            opener,
            plain_bytes,
        })
    }

    /// Up to `want` plaintext bytes from `at` (whole pages of a sealed file).
    async fn read_at(&self, at: u64, want: usize) -> Result<Vec<u8>, PeerError> {
        let Some(opener) = &self.opener else {
            let read = self
                .file
                .read_at(at, want)
                .await
                .map_err(std::io::Error::from)?;
            return Ok(read.to_vec());
        };
        let page_bytes = opener.page_size() as u64;
        let first = at / page_bytes;
        let pages = (want as u64 / page_bytes).max(1);
        let slot_bytes = pages as usize * opener.slot_bytes();
        let read = self
            .file
            .read_at(opener.slot_offset(first), slot_bytes)
            .await
            .map_err(std::io::Error::from)?;
        let mut slots = read.to_vec();
        slots.truncate(slots.len() / opener.slot_bytes() * opener.slot_bytes());
        Ok(opener
            .open(first, &mut slots)
            .map_err(std::io::Error::other)?)
    }
}

/// The name a transfer is written under until it is verified and synced.
const INCOMING_SUFFIX: &str = ".incoming";

/// Deletes transfers a crash interrupted. Runs once at start, before anything is served, so
/// this short directory walk is the one blocking call the transport makes on its thread.
pub(crate) fn remove_incoming(snap_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(snap_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(INCOMING_SUFFIX)
        {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => eprintln!(
                    "basalt: peer: deleted an interrupted snapshot transfer {}",
                    path.display()
                ),
                Err(error) => eprintln!("basalt: peer: cannot delete {}: {error}", path.display()),
            }
        }
    }
}

/// Receives one snapshot from `from` on an accepted connection.
pub(crate) async fn receive(shared: &Shared, from: u64, mut io: BufReader<Box<dyn PeerIo>>) {
    let head = match conn::within(CONN_READ_TIMEOUT, conn::expect_frame(&mut io)).await {
        Ok((FrameKind::SnapHead, payload)) => wire::decode_snap_head(&payload).map_err(Into::into),
        Ok((kind, _)) => Err(WireError::Unexpected(kind as u8).into()),
        Err(error) => Err(error),
    };
    let (file_bytes, message) = match head.and_then(|head| check_head(shared, head)) {
        Ok(head) => head,
        Err(error) => {
            eprintln!("basalt: peer {from:x}: refused a snapshot: {error}");
            let verdict = Err(error.to_string());
            let _ = io
                .get_mut()
                .write_all(&wire::encode_snap_done(&verdict))
                .await;
            return;
        }
    };
    let index = message.snapshot.as_ref().map_or(0, |s| s.metadata.index);
    let incoming = shared
        .snap_dir
        .join(format!("{index:016x}-{from:016x}{INCOMING_SUFFIX}"));
    let installed = shared
        .snap_dir
        .join(format!("{index:016x}-{from:016x}.snap.db"));
    let label = format!("peer {from:x}: receiving the snapshot at index {index}");
    let keyring = shared.keyring.as_ref();
    let result = receive_file(&mut io, &incoming, file_bytes, keyring, &label).await;
    let result = match result {
        Ok(()) => install(&incoming, &installed, &shared.snap_dir).await,
        Err(error) => Err(error),
    };
    if result.is_err() {
        // Gone before the sender hears the verdict, so nothing half-written outlives it.
        let _ = glommio::io::remove(&incoming).await;
    }
    let verdict = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
    let _ = io
        .get_mut()
        .write_all(&wire::encode_snap_done(&verdict))
        .await;
    match result {
        Ok(()) => {
            eprintln!("basalt: peer {from:x}: received the snapshot at index {index} ({file_bytes} bytes)");
            let snapshot = PeerInbound::Snapshot {
                message,
                file: installed,
            };
            let _ = shared.inbound.send_async(snapshot).await;
        }
        Err(error) => {
            eprintln!("basalt: peer {from:x}: discarded the snapshot at index {index}: {error}")
        }
    }
}

/// A SNAP_HEAD must carry a Snap message for this member with its snapshot.
fn check_head(
    shared: &Shared,
    (file_bytes, message): (u64, Message),
) -> Result<(u64, Message), PeerError> {
    let reason = match () {
        _ if message.kind != MessageType::Snap => "not a Snap message",
        _ if message.to != shared.member_id => "for another member",
        _ if message.snapshot.is_none() => "without its snapshot",
        _ => return Ok((file_bytes, message)),
    };
    Err(WireError::Payload {
        what: "snapshot head",
        reason: reason.to_string(),
    }
    .into())
}

/// Writes the chunks into `incoming` (sealed as they arrive with a keyring) and checks length
/// and sha256; the file is synced when this returns `Ok`.
async fn receive_file(
    io: &mut BufReader<Box<dyn PeerIo>>,
    incoming: &Path,
    file_bytes: u64,
    keyring: Option<&SharedKeyring>,
    label: &str,
) -> Result<(), PeerError> {
    let file = BufferedFile::create(incoming)
        .await
        .map_err(std::io::Error::from)?;
    let mut out = Incoming {
        file,
        keyring,
        sealer: None,
        pending: Vec::new(),
        sealed_bytes: 0,
    };
    let mut progress = Progress::new(label.to_string(), file_bytes);
    let mut sha = Sha256::new();
    let mut received_bytes = 0u64;
    let digest = loop {
        match conn::within(CONN_READ_TIMEOUT, conn::expect_frame(io)).await? {
            (FrameKind::SnapChunk, chunk) => {
                if received_bytes + chunk.len() as u64 > file_bytes {
                    return Err(too_long(file_bytes));
                }
                sha.update(&chunk);
                let at = received_bytes;
                received_bytes += chunk.len() as u64;
                out.write(chunk, at).await?;
                progress.advance(received_bytes);
            }
            (FrameKind::SnapEnd, payload) => break wire::decode_sha256(&payload)?,
            (kind, _) => return Err(WireError::Unexpected(kind as u8).into()),
        }
    };
    if received_bytes != file_bytes {
        return Err(PeerError::Refused(format!(
            "the snapshot ended after {received_bytes} of {file_bytes} bytes"
        )));
    }
    if <[u8; 32]>::from(sha.finalize()) != digest {
        return Err(PeerError::Refused("snapshot sha256 mismatch".to_string()));
    }
    out.finish().await?;
    let file = out.file;
    file.fdatasync().await.map_err(std::io::Error::from)?;
    file.close().await.map_err(std::io::Error::from)?;
    progress.finish();
    Ok(())
}

/// A received tree on its way to disk: as it comes, or sealed with this member's current key.
struct Incoming<'k> {
    file: BufferedFile,
    keyring: Option<&'k SharedKeyring>,
    /// Made from the tree's page size, read in its first bytes.
    sealer: Option<SlotSealer>,
    /// Received bytes short of a whole page, not sealed yet.
    pending: Vec<u8>,
    /// Plaintext bytes sealed and written so far.
    sealed_bytes: u64,
}

impl Incoming<'_> {
    /// Writes the chunk received at plaintext offset `at` (chunks arrive in order).
    async fn write(&mut self, chunk: Vec<u8>, at: u64) -> Result<(), PeerError> {
        let Some(keyring) = self.keyring else {
            return write_chunk_at(&self.file, chunk, at).await;
        };
        self.pending.extend_from_slice(&chunk);
        if self.sealer.is_none() {
            if self.pending.len() < btree::PAGE_SIZE_PEEK_BYTES {
                return Ok(());
            }
            let page_size = btree::peek_page_size(&self.pending)
                .filter(|&ps| ps > 0)
                .ok_or_else(|| {
                    PeerError::Refused(
                        "the snapshot is not a Basalt tree file; this member seals its tree and \
                         cannot take it"
                            .to_string(),
                    )
                })?;
            let sealer = SlotSealer::new(keyring, page_size).map_err(std::io::Error::other)?;
            write_chunk_at(&self.file, sealer.header_bytes(), 0).await?;
            self.sealer = Some(sealer);
        }
        self.seal_whole_pages().await
    }

    async fn seal_whole_pages(&mut self) -> Result<(), PeerError> {
        let sealer = self.sealer.as_ref().expect("made before sealing");
        let whole = self.pending.len() / sealer.page_size() * sealer.page_size();
        if whole == 0 {
            return Ok(());
        }
        let slots = sealer.seal(self.sealed_bytes, &self.pending[..whole])?;
        let at = sealer.physical_offset(self.sealed_bytes);
        write_chunk_at(&self.file, slots, at).await?;
        self.sealed_bytes += whole as u64;
        self.pending.drain(..whole);
        Ok(())
    }

    /// Seals what is left: a tree file is whole pages, so only a damaged one leaves a partial
    /// page, padded here and refused when the tree is opened.
    async fn finish(&mut self) -> Result<(), PeerError> {
        if self.keyring.is_none() {
            return Ok(());
        }
        if self.sealer.is_none() {
            return Err(PeerError::Refused(
                "the snapshot is too short to be a Basalt tree file".to_string(),
            ));
        }
        let page_size = self.sealer.as_ref().map_or(0, SlotSealer::page_size);
        if !self.pending.is_empty() {
            self.pending.resize(page_size, 0);
        }
        self.seal_whole_pages().await
    }
}

fn too_long(file_bytes: u64) -> PeerError {
    PeerError::Refused(format!("the snapshot runs past its {file_bytes} bytes"))
}

/// Writes `chunk` at `at`. A regular file takes a whole write unless the disk is full, so a
/// short write fails the transfer rather than being retried.
async fn write_chunk_at(file: &BufferedFile, chunk: Vec<u8>, at: u64) -> Result<(), PeerError> {
    let chunk_bytes = chunk.len();
    let written = file
        .write_at(chunk, at)
        .await
        .map_err(std::io::Error::from)?;
    if written != chunk_bytes {
        let short = std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write of a snapshot chunk ({written} of {chunk_bytes} bytes)"),
        );
        return Err(short.into());
    }
    Ok(())
}

/// Renames a verified file to its final name and makes the rename durable.
async fn install(incoming: &Path, installed: &Path, snap_dir: &Path) -> Result<(), PeerError> {
    glommio::io::rename(incoming, installed)
        .await
        .map_err(std::io::Error::from)?;
    let dir = Directory::open(snap_dir)
        .await
        .map_err(std::io::Error::from)?;
    dir.sync().await.map_err(std::io::Error::from)?;
    let _ = dir.close().await;
    Ok(())
}

/// Logs a transfer's throughput as it goes (for big files) and when it ends.
struct Progress {
    label: String,
    total_bytes: u64,
    started: Instant,
    next_log_bytes: u64,
}

impl Progress {
    fn new(label: String, total_bytes: u64) -> Progress {
        Progress {
            label,
            total_bytes,
            started: Instant::now(),
            next_log_bytes: PROGRESS_LOG_BYTES,
        }
    }

    fn advance(&mut self, done_bytes: u64) {
        if done_bytes >= self.next_log_bytes && done_bytes < self.total_bytes {
            self.next_log_bytes = done_bytes + PROGRESS_LOG_BYTES;
            eprintln!(
                "basalt: {}: {} of {} MiB ({:.1} MiB/s)",
                self.label,
                done_bytes >> 20,
                self.total_bytes >> 20,
                self.mib_per_s(done_bytes)
            );
        }
    }

    fn finish(&self) {
        if self.total_bytes >= PROGRESS_LOG_BYTES {
            eprintln!(
                "basalt: {}: {} MiB done ({:.1} MiB/s)",
                self.label,
                self.total_bytes >> 20,
                self.mib_per_s(self.total_bytes)
            );
        }
    }

    fn mib_per_s(&self, done_bytes: u64) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-6);
        done_bytes as f64 / (1 << 20) as f64 / seconds
    }
}
