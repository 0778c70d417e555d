//! The transport between real sockets on loopback: transports in one glommio executor, raw
//! connections speaking the wire by hand where a test needs a fault or a refusal.
//!
//! Waits are for liveness only (generous deadlines, never an assertion on speed).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_proto::etcdserverpb::Member;
use basalt_raft::{Message, MessageType, Snapshot};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::wire::{self, FrameKind, Hello, StreamKind, HEADER_BYTES, PROTOCOL_VERSION};
use super::*;

const CLUSTER_ID: u64 = 0xc1;
/// How long a liveness wait may take before the test fails (a stuck transport, not a slow one).
const LIVENESS_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `test` on a glommio executor of its own, as the raft core runs the transport.
fn on_executor<F: Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || async move { test().await })
        .expect("executor starts")
        .join()
        .expect("test body completes");
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("basalt-peer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct TestMember {
    id: u64,
    transport: PeerTransport,
    inbound: flume::Receiver<PeerInbound>,
    cluster: SharedCluster,
}

impl TestMember {
    fn url(&self) -> String {
        format!("http://{}", self.transport.listen_addrs()[0])
    }

    fn addr(&self) -> SocketAddr {
        self.transport.listen_addrs()[0]
    }
}

async fn start_on(id: u64, cluster_id: u64, listen_url: &str, snap_dir: &Path) -> TestMember {
    start_with(id, cluster_id, listen_url, snap_dir, None).await
}

async fn start_with(
    id: u64,
    cluster_id: u64,
    listen_url: &str,
    snap_dir: &Path,
    keyring: Option<SharedKeyring>,
) -> TestMember {
    let (tx, inbound) = flume::bounded(1024);
    let cluster: SharedCluster = Arc::default();
    let config = TransportConfig {
        member_id: id,
        cluster_id,
        listen_peer_urls: vec![listen_url.to_string()],
        peers: Vec::new(),
        snap_dir: snap_dir.to_path_buf(),
        keyring,
        tls: None,
    };
    let transport = PeerTransport::start(config, tx, cluster.clone())
        .await
        .expect("transport starts");
    TestMember {
        id,
        transport,
        inbound,
        cluster,
    }
}

async fn start(id: u64, snap_dir: &Path) -> TestMember {
    start_on(id, CLUSTER_ID, "http://127.0.0.1:0", snap_dir).await
}

/// Each knows the other; returns once both streams are up both ways.
async fn connect(a: &TestMember, b: &TestMember) {
    a.transport.add_peer(b.id, vec![b.url()]);
    b.transport.add_peer(a.id, vec![a.url()]);
    eventually("both streams up", || {
        a.transport.active_since(b.id).is_some() && b.transport.active_since(a.id).is_some()
    })
    .await;
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + LIVENESS_DEADLINE;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// The next arrival that `pick` accepts, skipping others (e.g. unreachable reports).
async fn next_matching<T>(
    inbound: &flume::Receiver<PeerInbound>,
    mut pick: impl FnMut(PeerInbound) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            let arrival = inbound.recv_async().await.expect("transport alive");
            if let Some(found) = pick(arrival) {
                return Ok(found);
            }
        }
    };
    glommio::timer::timeout(LIVENESS_DEADLINE, wait)
        .await
        .expect("the awaited arrival came")
}

fn heartbeat(from: u64, to: u64, context: &[u8]) -> Message {
    Message {
        from,
        context: context.to_vec(),
        ..Message::new(MessageType::Heartbeat, to)
    }
}

fn message_with_context(arrival: PeerInbound) -> Option<Message> {
    match arrival {
        PeerInbound::Message(message) => Some(message),
        _ => None,
    }
}

#[test]
fn messages_and_forwards_flow_both_ways() {
    on_executor(|| async {
        let dir = TempDir::new("both-ways");
        let a = start(1, &dir.0).await;
        let b = start(2, &dir.0).await;
        connect(&a, &b).await;

        let sent: Vec<Message> = (0..100u8).map(|i| heartbeat(1, 2, &[i])).collect();
        a.transport.send(sent.clone());
        for expected in &sent {
            let got = next_matching(&b.inbound, message_with_context).await;
            assert_eq!(&got, expected, "in order and whole");
        }
        let reply = Message {
            from: 2,
            index: 42,
            ..Message::new(MessageType::AppResp, 1)
        };
        b.transport.send(vec![reply.clone()]);
        assert_eq!(next_matching(&a.inbound, message_with_context).await, reply);

        b.transport.forward(1, b"a proposal".to_vec());
        let forwarded = next_matching(&a.inbound, |arrival| match arrival {
            PeerInbound::Forwarded { from, data } => Some((from, data)),
            _ => None,
        })
        .await;
        assert_eq!(forwarded, (2, b"a proposal".to_vec()));

        a.transport.close().await;
        b.transport.close().await;
    });
}

#[test]
fn a_message_for_an_unknown_or_down_peer_is_reported_unreachable() {
    on_executor(|| async {
        let dir = TempDir::new("unreachable");
        let a = start(1, &dir.0).await;
        // Nothing listens there: the stream never comes up.
        a.transport
            .add_peer(3, vec!["http://127.0.0.1:1".to_string()]);
        a.transport
            .send(vec![heartbeat(1, 3, b""), heartbeat(1, 4, b"")]);
        let mut unreachable = Vec::new();
        while unreachable.len() < 2 {
            unreachable.push(
                next_matching(&a.inbound, |arrival| match arrival {
                    PeerInbound::Unreachable(id) => Some(id),
                    _ => None,
                })
                .await,
            );
        }
        unreachable.sort();
        assert_eq!(unreachable, [3, 4]);
        assert_eq!(a.transport.active_since(3), None);
        a.transport.close().await;
    });
}

#[test]
fn a_peer_that_comes_back_on_its_address_is_reconnected() {
    on_executor(|| async {
        let dir = TempDir::new("restart");
        let a = start(1, &dir.0).await;
        let b = start(2, &dir.0).await;
        connect(&a, &b).await;
        let b_url = b.url();
        b.transport.close().await;
        eventually("the stream to the closed peer is down", || {
            a.transport.active_since(2).is_none()
        })
        .await;
        next_matching(&a.inbound, |arrival| match arrival {
            PeerInbound::Unreachable(2) => Some(()),
            _ => None,
        })
        .await;

        let b = start_on(2, CLUSTER_ID, &b_url, &dir.0).await;
        connect(&a, &b).await;
        a.transport.send(vec![heartbeat(1, 2, b"after restart")]);
        let got = next_matching(&b.inbound, message_with_context).await;
        assert_eq!(got.context, b"after restart");
        a.transport.close().await;
        b.transport.close().await;
    });
}

/// Forwards connections to `target`; on the first one, flips one bit of the dialer's byte at
/// `corrupt_at` (counted from the connection's start).
async fn corrupting_proxy(target: SocketAddr, corrupt_at: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    glommio::spawn_local(async move {
        let mut first = true;
        while let Ok(client) = listener.accept().await {
            let server = TcpStream::connect(target).await.unwrap();
            let corrupt_at = std::mem::take(&mut first).then_some(corrupt_at);
            let (client_read, client_write) = futures_lite::io::split(client);
            let (server_read, server_write) = futures_lite::io::split(server);
            glommio::spawn_local(copy(client_read, server_write, corrupt_at)).detach();
            glommio::spawn_local(copy(server_read, client_write, None)).detach();
        }
    })
    .detach();
    addr
}

async fn copy(
    mut from: impl futures_lite::AsyncRead + Unpin,
    mut to: impl futures_lite::AsyncWrite + Unpin,
    mut corrupt_at: Option<usize>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = corrupt_at.filter(|at| (offset..offset + n).contains(at)) {
            buf[at - offset] ^= 0x10;
            corrupt_at = None;
        }
        offset += n;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.close().await;
}

#[test]
fn a_corrupted_frame_is_refused_and_the_stream_reconnects() {
    on_executor(|| async {
        let dir = TempDir::new("corrupt-frame");
        let a = start(1, &dir.0).await;
        let b = start(2, &dir.0).await;
        // A byte inside the payload of the first frame after the handshake (a HELLO frame is
        // 20 + 28 bytes): its crc32c no longer matches.
        let proxy = corrupting_proxy(b.addr(), HEADER_BYTES + 28 + HEADER_BYTES + 5).await;
        a.transport.add_peer(2, vec![format!("http://{proxy}")]);
        b.transport.add_peer(1, vec![a.url()]);
        eventually("streams up", || a.transport.active_since(2).is_some()).await;

        a.transport.send(vec![heartbeat(1, 2, b"corrupted")]);
        // Sent again and again: while the stream is down, sends are dropped.
        let deadline = std::time::Instant::now() + LIVENESS_DEADLINE;
        let first = loop {
            assert!(std::time::Instant::now() < deadline, "nothing ever arrived");
            a.transport.send(vec![heartbeat(1, 2, b"intact")]);
            glommio::timer::sleep(Duration::from_millis(20)).await;
            if let Some(message) = b.inbound.try_iter().find_map(message_with_context) {
                break message;
            }
        };
        assert_eq!(
            first.context, b"intact",
            "the corrupted frame never arrives"
        );
        a.transport.close().await;
        b.transport.close().await;
    });
}

/// A connection to `addr` that sent `hello`, and the first frame the acceptor answered.
async fn raw_hello(addr: SocketAddr, hello: Hello) -> (TcpStream, FrameKind, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&hello.encode()).await.unwrap();
    let (kind, payload) = conn::expect_frame(&mut stream).await.unwrap();
    (stream, kind, payload)
}

#[test]
fn a_handshake_for_another_cluster_or_member_is_refused() {
    on_executor(|| async {
        let dir = TempDir::new("handshake");
        let b = start(2, &dir.0).await;
        b.transport.remove_peer(5);
        let hello = |stream, cluster_id, from, to| Hello {
            protocol_version: PROTOCOL_VERSION,
            stream,
            cluster_id,
            from,
            to,
        };
        let cases = [
            (
                hello(StreamKind::Raft, CLUSTER_ID, 1, 2),
                Ok(FrameKind::Accept),
            ),
            (
                hello(StreamKind::Raft, 0xbad, 1, 2),
                Err("cluster ID mismatch"),
            ),
            (
                hello(StreamKind::Snapshot, 0xbad, 1, 2),
                Err("cluster ID mismatch"),
            ),
            (
                hello(StreamKind::Raft, CLUSTER_ID, 1, 3),
                Err("member ID mismatch"),
            ),
            (
                hello(StreamKind::Raft, CLUSTER_ID, 5, 2),
                Err("was removed"),
            ),
            (
                hello(StreamKind::ClusterQuery, 0, 0, 0),
                Ok(FrameKind::Cluster),
            ),
            (
                hello(StreamKind::ClusterQuery, 0xbad, 0, 0),
                Err("cluster ID mismatch"),
            ),
        ];
        for (hello, expected) in cases {
            let (_stream, kind, payload) = raw_hello(b.addr(), hello).await;
            match expected {
                Ok(kind_expected) => assert_eq!(kind, kind_expected, "{hello:?}"),
                Err(reason) => {
                    assert_eq!(kind, FrameKind::Refuse, "{hello:?}");
                    let text = String::from_utf8(payload).unwrap();
                    assert!(text.contains(reason), "{hello:?}: {text}");
                }
            }
        }
        b.transport.close().await;
    });
}

#[test]
fn a_silent_stream_is_closed_while_a_quiet_one_lives_on_link_heartbeats() {
    on_executor(|| async {
        let dir = TempDir::new("silent");
        let a = start(1, &dir.0).await;
        let b = start(2, &dir.0).await;
        connect(&a, &b).await;
        let since = (a.transport.active_since(2), b.transport.active_since(1));
        // A dialer that completes the handshake and then says nothing, not even heartbeats.
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            stream: StreamKind::Raft,
            cluster_id: CLUSTER_ID,
            from: 7,
            to: 2,
        };
        let (mut silent, kind, _) = raw_hello(b.addr(), hello).await;
        assert_eq!(kind, FrameKind::Accept);
        let mut byte = [0u8; 1];
        let read = glommio::timer::timeout(LIVENESS_DEADLINE, async {
            Ok(silent.read(&mut byte).await)
        });
        assert_eq!(read.await.unwrap().unwrap(), 0, "the acceptor closed it");
        // Longer than the read timeout has passed with nothing to send between a and b.
        assert_eq!(
            (a.transport.active_since(2), b.transport.active_since(1)),
            since,
            "the quiet streams never dropped"
        );
        a.transport.close().await;
        b.transport.close().await;
    });
}

fn snap_message(from: u64, to: u64, index: u64) -> Message {
    let mut snapshot = Snapshot::default();
    snapshot.metadata.index = index;
    snapshot.metadata.term = 3;
    snapshot.metadata.conf_state.voters = vec![1, 2];
    Message {
        from,
        term: 3,
        snapshot: Some(snapshot),
        ..Message::new(MessageType::Snap, to)
    }
}

/// Bytes that differ from chunk to chunk, so a misplaced chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

#[test]
fn a_snapshot_file_streams_whole_and_is_handed_over_once_durable() {
    on_executor(|| async {
        let a_dir = TempDir::new("snap-sender");
        let b_dir = TempDir::new("snap-receiver");
        let a = start(1, &a_dir.0).await;
        let b = start(2, &b_dir.0).await;
        connect(&a, &b).await;
        // Three whole chunks and a partial one.
        let content = pattern(3 * wire_chunk() + 12_345);
        let db_file = a_dir.0.join("copy-for-2.db");
        std::fs::write(&db_file, &content).unwrap();

        a.transport
            .send_snapshot(snap_message(1, 2, 77), db_file.clone());
        let (message, file) = next_matching(&b.inbound, |arrival| match arrival {
            PeerInbound::Snapshot { message, file } => Some((message, file)),
            _ => None,
        })
        .await;
        assert_eq!(message, snap_message(1, 2, 77));
        assert_eq!(std::fs::read(&file).unwrap(), content);
        assert_eq!(b_dir.files(), [file.file_name().unwrap().to_string_lossy()]);
        let sent = next_matching(&a.inbound, |arrival| match arrival {
            PeerInbound::SnapshotSent { to, ok } => Some((to, ok)),
            _ => None,
        })
        .await;
        assert_eq!(sent, (2, true));
        assert!(!db_file.exists(), "the sender's private copy is deleted");

        // To a member the transport does not know: fails, and the copy is still deleted.
        std::fs::write(&db_file, b"x").unwrap();
        a.transport
            .send_snapshot(snap_message(1, 9, 78), db_file.clone());
        let sent = next_matching(&a.inbound, |arrival| match arrival {
            PeerInbound::SnapshotSent { to, ok } => Some((to, ok)),
            _ => None,
        })
        .await;
        assert_eq!(sent, (9, false));
        assert!(!db_file.exists());
        a.transport.close().await;
        b.transport.close().await;
    });
}

/// A tree file of a few chunks whose records all carry `secret`, sealed with `keyring`.
fn sealed_tree(path: &Path, keyring: &SharedKeyring, secret: &[u8]) {
    use basalt_engine::btree;
    let options = btree::Options {
        keyring: Some(keyring.clone()),
        ..btree::Options::default()
    };
    let db = btree::open(path, options).unwrap();
    let mut txn = db.begin_write().unwrap();
    for i in 0u32..3000 {
        let value = [secret, &i.to_be_bytes(), &[b'v'; 900]].concat();
        txn.bucket("key")
            .unwrap()
            .insert(&i.to_be_bytes(), &value)
            .unwrap();
    }
    txn.commit().unwrap();
    db.checkpoint(41).unwrap();
}

fn tree_records(path: &Path, keyring: &SharedKeyring) -> Vec<(Vec<u8>, Vec<u8>)> {
    use basalt_engine::btree;
    let options = btree::Options {
        keyring: Some(keyring.clone()),
        ..btree::Options::default()
    };
    let db = btree::open(path, options).unwrap();
    let read = db.begin_read().unwrap();
    let mut cursor = read.cursor("key");
    let mut records = Vec::new();
    let mut entry = cursor.first().unwrap();
    while let Some((key, value)) = entry {
        records.push((key.to_vec(), value.to_vec()));
        entry = cursor.next().unwrap();
    }
    records
}

#[test]
fn a_sealed_tree_travels_as_plaintext_and_lands_sealed_with_the_receivers_key() {
    use basalt_engine::crypt::Keyring;
    const SECRET: &[u8] = b"garnet-secret-51c9";
    fn holds_secret(bytes: &[u8]) -> bool {
        bytes.windows(SECRET.len()).any(|w| w == SECRET)
    }
    on_executor(|| async move {
        let a_dir = TempDir::new("sealed-sender");
        let b_dir = TempDir::new("sealed-receiver");
        let a_keys = Keyring::single(1, &[0xa1; 32]).into_shared();
        let b_keys = Keyring::single(1, &[0xb2; 32]).into_shared();
        let url = "http://127.0.0.1:0";
        let a = start_with(1, CLUSTER_ID, url, &a_dir.0, Some(a_keys.clone())).await;
        let b = start_with(2, CLUSTER_ID, url, &b_dir.0, Some(b_keys.clone())).await;
        connect(&a, &b).await;
        let db_file = a_dir.0.join("send-2-41.db");
        sealed_tree(&db_file, &a_keys, SECRET);
        let sent_records = tree_records(&db_file, &a_keys);
        assert!(!holds_secret(&std::fs::read(&db_file).unwrap()));

        a.transport
            .send_snapshot(snap_message(1, 2, 41), db_file.clone());
        let file = next_matching(&b.inbound, |arrival| match arrival {
            PeerInbound::Snapshot { file, .. } => Some(file),
            _ => None,
        })
        .await;
        let received = std::fs::read(&file).unwrap();
        assert!(basalt_engine::btree::is_sealed(&received));
        assert!(
            !holds_secret(&received),
            "the received tree holds plaintext"
        );
        assert_eq!(tree_records(&file, &b_keys), sent_records);
        let with_senders_key = basalt_engine::btree::open(
            &file,
            basalt_engine::btree::Options {
                keyring: Some(a_keys.clone()),
                ..basalt_engine::btree::Options::default()
            },
        );
        assert!(
            matches!(
                with_senders_key,
                Err(basalt_engine::btree::Error::WrongKey { id: 1 })
            ),
            "sealed with the receiver's key, not the sender's"
        );
        let sent = next_matching(&a.inbound, |arrival| match arrival {
            PeerInbound::SnapshotSent { to, ok } => Some((to, ok)),
            _ => None,
        })
        .await;
        assert_eq!(sent, (2, true));
        a.transport.close().await;
        b.transport.close().await;
    });
}

fn wire_chunk() -> usize {
    super::snapshot::SNAPSHOT_CHUNK_BYTES as usize
}

#[test]
fn a_snapshot_the_receiver_cannot_store_fails_on_the_sender() {
    on_executor(|| async {
        let a_dir = TempDir::new("snap-unstorable-sender");
        let a = start(1, &a_dir.0).await;
        // The receiver's snapshot directory is gone: it cannot create the incoming file.
        let b = start(2, &a_dir.0.join("missing")).await;
        connect(&a, &b).await;
        let db_file = a_dir.0.join("copy-for-2.db");
        std::fs::write(&db_file, pattern(1000)).unwrap();
        a.transport
            .send_snapshot(snap_message(1, 2, 9), db_file.clone());
        let sent = next_matching(&a.inbound, |arrival| match arrival {
            PeerInbound::SnapshotSent { to, ok } => Some((to, ok)),
            _ => None,
        })
        .await;
        assert_eq!(sent, (2, false));
        assert!(!db_file.exists());
        assert!(b
            .inbound
            .try_iter()
            .all(|arrival| !matches!(arrival, PeerInbound::Snapshot { .. })));
        a.transport.close().await;
        b.transport.close().await;
    });
}

#[test]
fn a_snapshot_with_a_corrupted_chunk_is_discarded() {
    on_executor(|| async {
        let dir = TempDir::new("snap-corrupt");
        let leftover = dir.0.join("0000000000000004-0000000000000001.incoming");
        std::fs::write(&leftover, b"cut short by a crash").unwrap();
        let b = start(2, &dir.0).await;
        assert!(
            !leftover.exists(),
            "an interrupted transfer is deleted at start"
        );
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            stream: StreamKind::Snapshot,
            cluster_id: CLUSTER_ID,
            from: 1,
            to: 2,
        };
        let (mut stream, kind, _) = raw_hello(b.addr(), hello).await;
        assert_eq!(kind, FrameKind::Accept);
        let content = pattern(2 * wire_chunk());
        let mut bytes = wire::encode_snap_head(content.len() as u64, snap_message(1, 2, 5));
        for chunk in content.chunks(wire_chunk()) {
            wire::encode_frame(&mut bytes, FrameKind::SnapChunk, chunk);
        }
        // One bit of the second chunk's data.
        let second_chunk_data = bytes.len() - wire_chunk() + 100;
        bytes[second_chunk_data] ^= 1;
        stream.write_all(&bytes).await.unwrap();

        let (kind, payload) = conn::expect_frame(&mut stream).await.unwrap();
        assert_eq!(kind, FrameKind::SnapDone);
        let verdict = wire::decode_snap_done(&payload).unwrap();
        assert!(verdict.unwrap_err().contains("checksum"));
        assert!(dir.files().is_empty(), "nothing is left: {:?}", dir.files());
        assert!(b.inbound.try_recv().is_err(), "nothing is handed over");
        b.transport.close().await;
    });
}

#[test]
fn fetch_cluster_returns_the_served_member_list() {
    on_executor(|| async {
        let dir = TempDir::new("fetch-cluster");
        let b = start(2, &dir.0).await;
        let members = vec![
            Member {
                id: 2,
                name: "b".into(),
                peer_ur_ls: vec![b.url()],
                ..Member::default()
            },
            Member {
                id: 3,
                name: "c".into(),
                peer_ur_ls: vec!["http://127.0.0.1:3".into()],
                is_learner: true,
                ..Member::default()
            },
        ];
        *b.cluster.lock().unwrap() = ClusterInfo {
            cluster_id: CLUSTER_ID,
            members: members.clone(),
        };
        // Nothing listens at the first URL; the second answers.
        let urls = vec!["http://127.0.0.1:1".to_string(), b.url()];
        let nobody = vec!["http://127.0.0.1:1".to_string()];
        let (tx, rx) = flume::bounded(1);
        // A joiner asks from a plain thread, before any executor of its own runs.
        std::thread::spawn(move || {
            let answers = (
                fetch_cluster(&urls, Duration::from_secs(10), None),
                fetch_cluster(&nobody, Duration::from_secs(1), None),
            );
            let _ = tx.send(answers);
        });
        let (served, unanswered) = rx.recv_async().await.unwrap();
        let info = served.expect("the cluster is served");
        assert_eq!(
            info,
            ClusterInfo {
                cluster_id: CLUSTER_ID,
                members
            }
        );
        let error = unanswered.unwrap_err();
        assert!(matches!(error, PeerError::NoClusterAnswer(_)), "{error}");
        b.transport.close().await;
    });
}

#[test]
fn a_removed_peer_is_no_longer_streamed_to() {
    on_executor(|| async {
        let dir = TempDir::new("remove");
        let a = start(1, &dir.0).await;
        let b = start(2, &dir.0).await;
        connect(&a, &b).await;
        a.transport.remove_peer(2);
        assert_eq!(a.transport.active_since(2), None);
        a.transport.send(vec![heartbeat(1, 2, b"")]);
        next_matching(&a.inbound, |arrival| match arrival {
            PeerInbound::Unreachable(2) => Some(()),
            _ => None,
        })
        .await;
        // b's stream to a is refused from now on.
        eventually("b sees its stream to a end", || {
            b.transport.active_since(1).is_none()
        })
        .await;
        a.transport.close().await;
        b.transport.close().await;
    });
}
