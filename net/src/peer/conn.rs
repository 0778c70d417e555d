//! Sockets of the peer transport: listening, dialing, reading one frame, and the registry that
//! lets `close` shut every socket down.
//!
//! This is the one seam between the transport and the kind of connection: everything above
//! sees a [`PeerConn`] whose `io` is any byte stream. `https://` peer URLs (TLS) wrap the TCP
//! stream in [`dial`] and [`accepted`] and nothing else changes. Must never look inside frames
//! beyond what [`read_frame`] checks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use super::wire::{self, FrameKind, HEADER_BYTES};
use super::PeerError;
use crate::tls::{TlsAcceptor, TlsConnector};

/// How long a dial may take before the next URL (or the next attempt) is tried.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection with nothing to read for this long is dead (etcd's `ConnReadTimeout`); raft
/// streams send a link heartbeat well within it when quiet.
pub(crate) const CONN_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that cannot finish in this long, or data the peer has not acknowledged for this
/// long (TCP_USER_TIMEOUT), ends the connection (etcd's `ConnWriteTimeout`). Without it a
/// partitioned stream would look alive until TCP gave up, many minutes later.
pub(crate) const CONN_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending peer connections the kernel queues before accept.
const LISTEN_BACKLOG: i32 = 128;

/// A byte stream to or from a peer: plain TCP today, TLS over the same socket tomorrow.
pub(crate) trait PeerIo: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> PeerIo for T {}

/// An open peer connection. `registered` comes first so the socket leaves the registry in the
/// same poll that closes it, before the fd number can be reused.
pub(crate) struct PeerConn {
    pub(crate) registered: Registered,
    pub(crate) io: Box<dyn PeerIo>,
}

/// The socket address of a peer URL (`http://host:port`).
pub(crate) fn peer_addr(url: &str) -> Result<SocketAddr, PeerError> {
    Ok(crate::config::parse_client_url(url)?)
}

/// Binds a peer listener. SO_REUSEADDR, not SO_REUSEPORT: a restarted member must not wait out
/// its predecessor's TIME_WAIT connections, but two live members must never share a port.
/// The listener comes with its registration, which the accepting task keeps.
pub(crate) fn listen(
    url: &str,
    sockets: &Rc<Sockets>,
) -> Result<(TcpListener, Registered), PeerError> {
    let addr = peer_addr(url)?;
    let listen_error = |source| PeerError::Listen { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(listen_error)?;
    socket.set_reuse_address(true).map_err(listen_error)?;
    socket.bind(&addr.into()).map_err(listen_error)?;
    socket.listen(LISTEN_BACKLOG).map_err(listen_error)?;
    let registered = sockets.register(socket.as_raw_fd());
    // SAFETY: the fd comes from a socket we own and bound as a listener; into_raw_fd gives up
    // that ownership, so the glommio listener is its only owner and closes it.
    let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
    Ok((listener, registered))
}

/// Connects to a peer URL; an `https://` URL first runs the TLS handshake with `tls` (this
/// member's peer certificate, and the CA the peer's certificate must chain to).
pub(crate) async fn dial(
    url: &str,
    sockets: &Rc<Sockets>,
    tls: Option<&TlsConnector>,
) -> Result<PeerConn, PeerError> {
    let addr = peer_addr(url)?;
    let stream = TcpStream::connect_timeout(addr, DIAL_TIMEOUT)
        .await
        .map_err(std::io::Error::from)?;
    // Heartbeats and votes are small and must leave at once, not wait for Nagle's timer.
    stream.set_nodelay(true).map_err(std::io::Error::from)?;
    let fd = stream.as_raw_fd();
    // SAFETY: `fd` is the open socket `stream` owns, and the borrow ends before `stream` can
    // be dropped.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed).set_tcp_user_timeout(Some(CONN_WRITE_TIMEOUT))?;
    // Registered before the handshake, so closing the transport also ends a slow handshake.
    let registered = sockets.register(fd);
    let io: Box<dyn PeerIo> = match (crate::config::url_is_https(url), tls) {
        (false, _) => Box::new(stream),
        (true, Some(tls)) => {
            let host = crate::config::url_host(url).unwrap_or_default();
            Box::new(tls.connect(host, stream).await?)
        }
        (true, None) => return Err(PeerError::NoTls(url.to_string())),
    };
    Ok(PeerConn { registered, io })
}

/// Runs the TLS server handshake on a connection an `https://` listener accepted.
pub(crate) async fn accept_tls(conn: PeerConn, tls: &TlsAcceptor) -> Result<PeerConn, PeerError> {
    let io = tls.accept(conn.io).await?;
    Ok(PeerConn {
        registered: conn.registered,
        io: Box::new(io),
    })
}

/// A connection a listener accepted.
pub(crate) fn accepted(stream: TcpStream, sockets: &Rc<Sockets>) -> PeerConn {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    PeerConn {
        registered: sockets.register(fd),
        io: Box::new(stream),
    }
}

/// Reads one whole, checked frame; `None` when the stream ends cleanly between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<(FrameKind, Vec<u8>)>, PeerError> {
    let mut header = [0u8; HEADER_BYTES];
    let first = reader.read(&mut header).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut header[first..]).await?;
    let header = wire::decode_header(&header)?;
    let mut payload = vec![0u8; header.payload_bytes as usize];
    reader.read_exact(&mut payload).await?;
    wire::check_payload(&header, &payload)?;
    Ok(Some((header.kind, payload)))
}

/// Like [`read_frame`], where the stream ending is an error too.
pub(crate) async fn expect_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(FrameKind, Vec<u8>), PeerError> {
    read_frame(reader).await?.ok_or(PeerError::Closed)
}

/// Runs `work` for at most `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, PeerError>>,
) -> Result<T, PeerError> {
    let timed = glommio::timer::timeout(limit, async { Ok(work.await) }).await;
    timed.map_err(|_| PeerError::TimedOut(limit))?
}

/// Every open socket of a transport and every task it runs, so that closing can end them.
/// Dropping a task is not enough: an io_uring operation in flight holds its own reference to
/// the socket, which would keep a listener accepting or a connection open after its task is
/// gone (and a restarted member could not bind its port).
#[derive(Default)]
pub(crate) struct Sockets {
    next_id: Cell<u64>,
    open: RefCell<HashMap<u64, RawFd>>,
    tasks: RefCell<HashMap<u64, glommio::task::JoinHandle<()>>>,
}

/// A socket's place in [`Sockets`], given up when dropped.
pub(crate) struct Registered {
    id: u64,
    sockets: Rc<Sockets>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sockets.open.borrow_mut().remove(&self.id);
    }
}

impl Sockets {
    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    pub(crate) fn register(self: &Rc<Self>, fd: RawFd) -> Registered {
        let id = self.next_id();
        self.open.borrow_mut().insert(id, fd);
        Registered {
            id,
            sockets: self.clone(),
        }
    }

    /// Runs `task` until it ends or the transport closes.
    pub(crate) fn spawn(self: &Rc<Self>, task: impl Future<Output = ()> + 'static) {
        let id = self.next_id();
        let sockets = self.clone();
        let handle = glommio::spawn_local(async move {
            task.await;
            sockets.tasks.borrow_mut().remove(&id);
        })
        .detach();
        // Spawning only schedules the task, so it is listed before it can delist itself.
        self.tasks.borrow_mut().insert(id, handle);
    }

    /// Ends one connection now (its peer was removed); its task sees the stream close.
    pub(crate) fn shutdown(&self, socket_id: u64) {
        if let Some(fd) = self.open.borrow().get(&socket_id) {
            // SAFETY: a registered fd is open: its owner deregisters in the same poll that
            // closes it. shutdown does not close the fd, it only ends the connection.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
    }

    /// Shuts every socket down and cancels every task.
    pub(crate) fn close_all(&self) {
        for (_, fd) in self.open.borrow_mut().drain() {
            // SAFETY: a registered fd is open: its owner deregisters in the same poll that
            // closes it. shutdown does not close the fd, it only ends the connection.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        for (_, task) in self.tasks.borrow_mut().drain() {
            task.cancel();
        }
    }
}

impl PeerConn {
    /// The number [`Sockets::shutdown`] knows this connection by.
    pub(crate) fn socket_id(&self) -> u64 {
        self.registered.id
    }
}
