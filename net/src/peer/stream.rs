//! Raft streams: the writer task this member runs per peer (dial, handshake, batched writes,
//! reconnect with backoff) and the connections peers dial to us (handshake checks, then every
//! frame read is handed to the raft core).
//!
//! Must never wait on the raft core while holding anything it needs: the writer only reads its
//! own queue, and readers hand frames over with the channel's own backpressure (a slow core
//! slows the peer's socket, never the core).

use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::BufReader;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

use super::conn::{self, PeerConn, PeerIo, Registered, CONN_READ_TIMEOUT, CONN_WRITE_TIMEOUT};
use super::wire::{self, FrameKind, Hello, StreamKind, HEADER_BYTES, PROTOCOL_VERSION};
use super::{Accepted, Link, Outbound, PeerError, PeerInbound, Shared};
use crate::metrics::metrics;

/// The first pause after a stream to a peer fails...
pub(crate) const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// ...doubling up to this while it stays down.
pub(crate) const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Bytes of frames gathered into one write: everything queued at that moment, up to this.
pub(crate) const BATCH_BYTES_MAX: usize = 1 << 20;
/// How long a dialed peer may take to answer the handshake, and an accepted connection to
/// send it.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A quiet raft stream sends a link heartbeat this often, so its reader, which gives up after
/// `CONN_READ_TIMEOUT` of silence, only does so when the stream is really dead.
pub(crate) const LINK_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1_500);
const _: () = assert!(LINK_HEARTBEAT_INTERVAL.as_millis() * 3 <= CONN_READ_TIMEOUT.as_millis());
/// Bytes read from an accepted stream per call (many small frames per syscall under load).
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Pause after a failed accept (out of fds or memory) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Dials the peer (each of its URLs in turn) and has the handshake accepted.
pub(crate) async fn handshake(
    shared: &Shared,
    link: &Link,
    stream: StreamKind,
) -> Result<PeerConn, PeerError> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        stream,
        cluster_id: shared.cluster_id,
        from: shared.member_id,
        to: link.id,
    }
    .encode();
    let urls = link.urls.borrow().clone();
    let mut failure = PeerError::UnknownPeer(link.id);
    for url in &urls {
        let attempt = async {
            let mut conn = conn::dial(url, &shared.sockets, shared.tls_connector.as_ref()).await?;
            conn.io.write_all(&hello).await?;
            match conn::within(HANDSHAKE_TIMEOUT, conn::expect_frame(&mut conn.io)).await? {
                (FrameKind::Accept, _) => Ok(conn),
                (FrameKind::Refuse, reason) => Err(PeerError::Refused(
                    String::from_utf8_lossy(&reason).into_owned(),
                )),
                (kind, _) => Err(wire::WireError::Unexpected(kind as u8).into()),
            }
        };
        match attempt.await {
            Ok(conn) => return Ok(conn),
            Err(error) => failure = error,
        }
    }
    Err(failure)
}

/// The life of our stream to one peer: connect, write until it fails, wait, connect again;
/// until the peer is removed or the transport closes.
pub(crate) async fn write_loop(
    shared: Rc<Shared>,
    link: Rc<Link>,
    outbound: flume::Receiver<Outbound>,
) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut last_failure = String::new();
    while !link.removed.get() {
        match handshake(&shared, &link, StreamKind::Raft).await {
            Ok(conn) => {
                backoff = RECONNECT_BACKOFF_MIN;
                last_failure.clear();
                eprintln!("basalt: peer {:x}: stream connected", link.id);
                link.connected_since.set(Some(Instant::now()));
                link.metrics.active.set(1);
                let ended = pump(conn, &outbound, &link).await;
                link.connected_since.set(None);
                link.metrics.active.set(0);
                let dropped = outbound.drain().count() as u64;
                link.metrics.sent_failures.add(dropped);
                if link.removed.get() {
                    return;
                }
                eprintln!("basalt: peer {:x}: stream lost: {ended}", link.id);
                shared.report_unreachable(link.id);
            }
            Err(error) => {
                // Logged when the reason changes, not on every retry of a peer that is down.
                let reason = error.to_string();
                if reason != last_failure {
                    eprintln!("basalt: peer {:x}: cannot connect: {reason}", link.id);
                    last_failure = reason;
                }
            }
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// Writes everything queued, in batches, until the connection fails, the peer closes it, or
/// the peer is removed. Returns why it ended.
async fn pump(conn: PeerConn, outbound: &flume::Receiver<Outbound>, link: &Link) -> PeerError {
    let PeerConn { registered, io } = conn;
    let _registered: Registered = registered;
    let (mut reader, mut writer) = futures_lite::io::split(io);
    // The peer never writes on this stream after its ACCEPT: a read that returns is the
    // stream ending, noticed even while nothing is queued.
    let mut closed = pin!(async move {
        let mut byte = [0u8; 1];
        match reader.read(&mut byte).await {
            Ok(0) => PeerError::Closed,
            Ok(_) => wire::WireError::Unexpected(byte[0]).into(),
            Err(error) => error.into(),
        }
    });
    let mut batch = Vec::new();
    loop {
        let next = futures_lite::future::or(
            async {
                match outbound.recv_async().await {
                    Ok(item) => Next::Item(item),
                    Err(flume::RecvError::Disconnected) => Next::Removed,
                }
            },
            futures_lite::future::or(async { Next::Ended(closed.as_mut().await) }, async {
                glommio::timer::sleep(LINK_HEARTBEAT_INTERVAL).await;
                Next::Quiet
            }),
        );
        batch.clear();
        match next.await {
            Next::Item(first) => {
                push(&mut batch, first);
                while batch.len() < BATCH_BYTES_MAX {
                    match outbound.try_recv() {
                        Ok(item) => push(&mut batch, item),
                        Err(_) => break,
                    }
                }
            }
            Next::Quiet => wire::encode_frame(&mut batch, FrameKind::LinkHeartbeat, &[]),
            Next::Removed => return PeerError::UnknownPeer(link.id),
            Next::Ended(ended) => return ended,
        }
        let written = conn::within(CONN_WRITE_TIMEOUT, async {
            Ok(writer.write_all(&batch).await?)
        });
        if let Err(error) = written.await {
            link.metrics.sent_failures.inc();
            return error;
        }
        link.metrics.sent_bytes.add(batch.len() as u64);
    }
}

/// What wakes a stream's writer; lives for one turn on the stack.
#[allow(clippy::large_enum_variant)]
enum Next {
    Item(Outbound),
    /// Nothing to send for a link heartbeat's interval.
    Quiet,
    /// The peer was removed (its queue dropped).
    Removed,
    Ended(PeerError),
}

fn push(batch: &mut Vec<u8>, item: Outbound) {
    match item {
        Outbound::Message(message) => wire::encode_message(batch, message),
        Outbound::Forward(data) => wire::encode_frame(batch, FrameKind::Forward, &data),
    }
}

/// Accepts peer connections until the transport closes.
pub(crate) async fn accept_loop(
    shared: Rc<Shared>,
    listener: TcpListener,
    _registered: Registered,
    tls: Option<crate::tls::TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let conn = conn::accepted(stream, &shared.sockets);
                let tls = tls.clone();
                shared
                    .sockets
                    .spawn(serve_accepted(shared.clone(), conn, tls));
            }
            Err(_) => glommio::timer::sleep(ACCEPT_RETRY_DELAY).await,
        }
    }
}

/// Checks the handshake of a connection a peer dialed, then serves what it asked for.
async fn serve_accepted(shared: Rc<Shared>, conn: PeerConn, tls: Option<crate::tls::TlsAcceptor>) {
    let conn = match tls {
        None => conn,
        Some(tls) => match conn::accept_tls(conn, &tls).await {
            Ok(conn) => conn,
            Err(error) => {
                eprintln!("basalt: peer: rejected a connection: {error}");
                return;
            }
        },
    };
    let socket_id = conn.socket_id();
    let PeerConn { registered, io } = conn;
    let _registered: Registered = registered;
    let mut io = BufReader::with_capacity(READ_BUFFER_BYTES, io);
    let hello = conn::within(HANDSHAKE_TIMEOUT, async {
        match conn::expect_frame(&mut io).await? {
            (FrameKind::Hello, payload) => Ok(Hello::decode(&payload)?),
            (kind, _) => Err(wire::WireError::Unexpected(kind as u8).into()),
        }
    })
    .await;
    let hello = match hello {
        Ok(hello) => hello,
        Err(error) => {
            eprintln!("basalt: peer: dropped a connection before its handshake: {error}");
            return;
        }
    };
    if let Err(reason) = admit(&shared, &hello) {
        eprintln!(
            "basalt: peer: refused a {:?} stream from {:x}: {reason}",
            hello.stream, hello.from
        );
        let _ = io
            .get_mut()
            .write_all(&wire::frame(FrameKind::Refuse, reason.as_bytes()))
            .await;
        return;
    }
    match hello.stream {
        StreamKind::ClusterQuery => super::cluster::serve(&shared, io.get_mut()).await,
        StreamKind::HashQuery => super::hash::serve(&shared, &mut io).await,
        StreamKind::Raft | StreamKind::Snapshot => {
            let accept = wire::frame(FrameKind::Accept, &[]);
            if io.get_mut().write_all(&accept).await.is_err() {
                return;
            }
            match hello.stream {
                StreamKind::Raft => receive(&shared, hello.from, socket_id, io).await,
                _ => super::snapshot::receive(&shared, hello.from, io).await,
            }
        }
    }
}

/// Why a handshake is refused, if it is. A joining member's cluster query does not know the
/// cluster id yet; everything else must name this cluster and this member.
fn admit(shared: &Shared, hello: &Hello) -> Result<(), String> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not spoken here ({PROTOCOL_VERSION} is)",
            hello.protocol_version
        ));
    }
    let query = hello.stream == StreamKind::ClusterQuery;
    if hello.cluster_id != shared.cluster_id && !(query && hello.cluster_id == 0) {
        return Err(format!(
            "cluster ID mismatch (local {:x}, remote {:x})",
            shared.cluster_id, hello.cluster_id
        ));
    }
    if query {
        return Ok(());
    }
    if hello.to != shared.member_id {
        return Err(format!(
            "member ID mismatch (this is {:x}, the stream is for {:x})",
            shared.member_id, hello.to
        ));
    }
    if shared.removed.borrow().contains(&hello.from) {
        return Err(format!(
            "member {:x} was removed from the cluster",
            hello.from
        ));
    }
    Ok(())
}

/// Hands every frame of a peer's raft stream to the core until the stream ends.
async fn receive(shared: &Shared, from: u64, socket_id: u64, mut io: BufReader<Box<dyn PeerIo>>) {
    let connection = shared.next_connection.get();
    shared.next_connection.set(connection + 1);
    // A restarted peer's new stream replaces the old one, which ends on its own.
    shared.accepted.borrow_mut().insert(
        from,
        Accepted {
            connection,
            socket_id,
            since: Instant::now(),
        },
    );
    let peer_metrics = metrics().peer(from);
    let mut misdirected_logged = false;
    let ended = loop {
        let (kind, payload) = match conn::within(CONN_READ_TIMEOUT, conn::read_frame(&mut io)).await
        {
            Ok(Some(frame)) => frame,
            Ok(None) => break PeerError::Closed,
            Err(error) => break error,
        };
        peer_metrics
            .received_bytes
            .add((HEADER_BYTES + payload.len()) as u64);
        let delivered = match kind {
            FrameKind::Message => match wire::decode_message(&payload) {
                Ok(message) if message.to == shared.member_id => {
                    shared
                        .inbound
                        .send_async(PeerInbound::Message(message))
                        .await
                }
                Ok(message) => {
                    // Once per stream: a misdirected peer would otherwise log every message.
                    if !misdirected_logged {
                        misdirected_logged = true;
                        eprintln!(
                            "basalt: peer {from:x}: dropping messages for member {:x} (this is {:x})",
                            message.to, shared.member_id
                        );
                    }
                    Ok(())
                }
                Err(error) => break error.into(),
            },
            FrameKind::Forward => {
                let forwarded = PeerInbound::Forwarded {
                    from,
                    data: payload,
                };
                shared.inbound.send_async(forwarded).await
            }
            FrameKind::LinkHeartbeat => Ok(()),
            other => break wire::WireError::Unexpected(other as u8).into(),
        };
        if delivered.is_err() {
            // The core is gone; the transport closes with it.
            break PeerError::Closed;
        }
    };
    let mut accepted = shared.accepted.borrow_mut();
    if accepted
        .get(&from)
        .is_some_and(|a| a.connection == connection)
    {
        accepted.remove(&from);
    }
    eprintln!("basalt: peer {from:x}: incoming stream ended: {ended}");
}
