//! Executors, listeners and connections: one glommio executor per core, each accepting on
//! every client port through its own SO_REUSEPORT socket, so the kernel spreads connections
//! over cores and a connection stays on the core that accepted it for its whole life.

use crate::config::{allowed_cpus, parse_client_url, url_is_https, NetError, ServerConfig};
use crate::grpc::{MessageReader, ResponseSink, CONTENT_TYPE};
use crate::io::TokioIo;
use crate::kv::{KvService, LocalKv};
use crate::mux::Route;
use crate::service::{ServerCall, Services};
use crate::status::Status;
use crate::tls::{self, TlsAcceptor};
use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Pending connections the kernel queues per listening socket before accept.
const LISTEN_BACKLOG: i32 = 1024;
/// Pause after a failed accept (EMFILE, ENOMEM) before trying again.
const ACCEPT_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(10);
/// How long a port in use is tried again before start-up gives up (see `claim_port`).
const PORT_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
const PORT_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(20);
/// The HTTP/2 connection preface starts with these bytes; an HTTP/1.1 request never does.
const H2_PREFACE_START: &[u8] = b"PRI ";
/// io_uring registered-buffer memory per executor: network I/O here does not use it, and a
/// small value keeps many executors under the default RLIMIT_MEMLOCK.
const EXECUTOR_IO_MEMORY_BYTES: usize = 512 * 1024;
/// Largest HTTP/2 frame we accept (the h2 default and the spec minimum is 16 KiB; larger
/// frames cut per-frame overhead on big ranges).
const H2_FRAME_BYTES_MAX: u32 = 256 * 1024;
/// Response bytes h2 may buffer per stream beyond the peer's window.
const H2_SEND_BUFFER_BYTES_MAX: usize = 1 << 20;
/// How often each core looks whether the member pushed its clients off (an atomic load).
const PUSH_OFF_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// A running server.
pub struct ServerHandle {
    client_addrs: Vec<SocketAddr>,
    stop: StopSignal,
    /// How each executor ended, sent by a watcher thread that joins it: a panicking core must
    /// be noticed whichever core it is, not only when joins in order reach it.
    exited: mpsc::Receiver<(usize, Result<(), String>)>,
    cores: usize,
    any_exited: Arc<AtomicBool>,
}

impl ServerHandle {
    fn watch(
        stop: StopSignal,
        client_addrs: Vec<SocketAddr>,
        executors: Vec<glommio::ExecutorJoinHandle<()>>,
    ) -> Self {
        let (exited_tx, exited) = mpsc::channel();
        let any_exited = Arc::new(AtomicBool::new(false));
        let cores = executors.len();
        for (core, executor) in executors.into_iter().enumerate() {
            let (exited_tx, any_exited) = (exited_tx.clone(), any_exited.clone());
            std::thread::spawn(move || {
                let result = executor.join().map_err(|e| e.to_string());
                any_exited.store(true, Ordering::SeqCst);
                let _ = exited_tx.send((core, result));
            });
        }
        Self {
            client_addrs,
            stop,
            exited,
            cores,
            any_exited,
        }
    }

    /// The bound address of each `listen_client_urls` entry, in order (port 0 resolved).
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    /// Whether any executor has ended (stopped, or died); [`ServerHandle::wait`] then
    /// returns promptly and says why.
    pub fn has_stopped(&self) -> bool {
        self.any_exited.load(Ordering::SeqCst)
    }

    /// Stops accepting, drops every connection and waits for the executors to exit.
    pub fn stop(self) -> Result<(), NetError> {
        self.close_connections();
        self.wait()
    }

    /// Stops accepting and drops every connection, without waiting: a task hosted on core 0
    /// (see [`spawn_hosting`]) must then be ended before [`ServerHandle::wait`] can return.
    pub fn close_connections(&self) {
        self.stop.raise();
    }

    /// Blocks until the server stops. The first executor to end, for whatever reason, stops
    /// the others: a server missing a core would still be handed connections for it by
    /// SO_REUSEPORT and leave them unanswered.
    pub fn wait(self) -> Result<(), NetError> {
        let mut first_error = None;
        for (core, result) in self.exited.iter().take(self.cores) {
            self.stop.raise();
            if let Err(e) = result {
                first_error.get_or_insert(NetError::ExecutorFailed { core, reason: e });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs the server with the in-memory KV store until it stops.
pub fn run(config: ServerConfig) -> Result<(), NetError> {
    spawn(config)?.wait()
}

/// Starts the server with the in-memory KV store shared by every core, and returns once every
/// port is bound.
pub fn spawn(config: ServerConfig) -> Result<ServerHandle, NetError> {
    let kv = LocalKv::new();
    spawn_with(config, move |_core| kv.clone())
}

/// Starts the server with the KV executor that `make_kv` builds on each core.
pub fn spawn_with<K, F>(config: ServerConfig, make_kv: F) -> Result<ServerHandle, NetError>
where
    K: KvService,
    F: Fn(usize) -> K + Send + Sync + 'static,
{
    spawn_hosting(config, make_kv, None)
}

/// A long-lived task to run beside the connections of core 0 (the raft core of
/// [`crate::node::CoreTask`]): requests accepted there reach it without a thread hop. The
/// closure runs on that core and makes the task's future there.
pub type HostedTask = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// [`spawn_with`], with `host` run on core 0. Core 0's executor ends only once `host` has
/// finished as well as its connections, so whoever stops the server must also make `host` end.
pub fn spawn_hosting<K, F>(
    config: ServerConfig,
    make_kv: F,
    mut host: Option<HostedTask>,
) -> Result<ServerHandle, NetError>
where
    K: KvService,
    F: Fn(usize) -> K + Send + Sync + 'static,
{
    crate::metrics::metrics()
        .server_id
        .store(config.member_id, std::sync::atomic::Ordering::Relaxed);
    let cores = config.core_count();
    let acceptors = client_acceptors(&config)?;
    let (client_addrs, mut listeners) = bind_listeners(&config.listen_client_urls, cores)?;
    let make_kv = Arc::new(make_kv);
    let stop = StopSignal::default();
    let cpus = allowed_cpus();
    let mut executors = Vec::with_capacity(cores);
    for core in (0..cores).rev() {
        let sockets = listeners.pop().expect("one socket set per core");
        let placement = match config.pin_cores {
            true => Placement::Fixed(cpus[core % cpus.len()]),
            false => Placement::Unbound,
        };
        let (config, make_kv, core_stop) = (config.clone(), make_kv.clone(), stop.clone());
        let acceptors = acceptors.clone();
        let hosted = if core == 0 { host.take() } else { None };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("basalt-net-{core}"))
            .io_memory(EXECUTOR_IO_MEMORY_BYTES);
        if let Some(spin) = config.busy_poll {
            builder = builder.spin_before_park(spin);
        }
        let executor = builder
            .spawn(move || async move {
                let hosted = hosted.map(|make| glommio::spawn_local(make()));
                let services = Rc::new(Services::new(&config, make_kv(core)));
                serve_core(sockets, acceptors, Rc::new(config), services, core_stop).await;
                if let Some(hosted) = hosted {
                    hosted.await;
                }
            })
            .map_err(|e| NetError::Executor {
                core,
                reason: e.to_string(),
            });
        match executor {
            Ok(executor) => executors.push(executor),
            Err(e) => {
                stop.raise();
                return Err(e);
            }
        }
    }
    executors.reverse();
    Ok(ServerHandle::watch(stop, client_addrs, executors))
}

/// The TLS acceptor of each client URL, in order: `None` for `http://`. Every `https://` URL
/// shares one acceptor (so one reload serves them all); with none, the certificate is not
/// loaded at all, as etcd ignores certificates given for plain-text URLs.
fn client_acceptors(config: &ServerConfig) -> Result<Vec<Option<TlsAcceptor>>, NetError> {
    let urls = &config.listen_client_urls;
    let acceptor = match (
        &config.client_tls,
        urls.iter().find(|url| url_is_https(url)),
    ) {
        (_, None) => None,
        (None, Some(url)) => return Err(NetError::HttpsWithoutCert { url: url.clone() }),
        (Some(tls), Some(_)) => Some(TlsAcceptor::new(tls, tls::CLIENT_ALPN_PROTOCOLS)?),
    };
    Ok(urls
        .iter()
        .map(|url| acceptor.clone().filter(|_| url_is_https(url)))
        .collect())
}

/// Binds one listening socket per (core, URL). Returns the bound address of each URL and the
/// sockets grouped by core.
fn bind_listeners(
    urls: &[String],
    cores: usize,
) -> Result<(Vec<SocketAddr>, Vec<Vec<Socket>>), NetError> {
    if urls.is_empty() {
        return Err(NetError::NoListenUrls);
    }
    let mut bound = Vec::with_capacity(urls.len());
    let mut per_core: Vec<Vec<Socket>> = (0..cores).map(|_| Vec::new()).collect();
    for url in urls {
        let requested = parse_client_url(url)?;
        let addr = claim_port(requested)?;
        for sockets in per_core.iter_mut() {
            sockets.push(reuseport_listener(addr)?);
        }
        bound.push(addr);
    }
    Ok((bound, per_core))
}

/// Proves the port free before sharing it: SO_REUSEPORT sockets of the same user would
/// otherwise bind beside another running server and silently split its clients. Also resolves
/// port 0 to the port every core then shares.
///
/// A port still in use is tried again for [`PORT_RELEASE_WAIT`]: a server killed with -9 holds
/// its listeners in io_uring operations that the kernel tears down after the process is gone,
/// so its successor can find the port taken for a moment.
fn claim_port(requested: SocketAddr) -> Result<SocketAddr, NetError> {
    let listen_error = |source| NetError::Listen {
        addr: requested,
        source,
    };
    let probe = new_socket(requested).map_err(listen_error)?;
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    while let Err(error) = probe.bind(&requested.into()) {
        if error.kind() != std::io::ErrorKind::AddrInUse || std::time::Instant::now() >= deadline {
            return Err(listen_error(error));
        }
        std::thread::sleep(PORT_RETRY_DELAY);
    }
    let local = probe.local_addr().map_err(listen_error)?;
    Ok(local
        .as_socket()
        .expect("an inet socket has an inet address"))
}

fn reuseport_listener(addr: SocketAddr) -> Result<Socket, NetError> {
    let listen_error = |source| NetError::Listen { addr, source };
    let socket = new_socket(addr).map_err(listen_error)?;
    socket.set_reuse_port(true).map_err(listen_error)?;
    socket.bind(&addr.into()).map_err(listen_error)?;
    socket.listen(LISTEN_BACKLOG).map_err(listen_error)?;
    Ok(socket)
}

fn new_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted server must not wait out TIME_WAIT connections of its predecessor.
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// One core's life: accept on every port until stopped, then close every listener and
/// connection of the core (an executor that returns does not drop its detached tasks, so
/// they would keep their sockets open).
async fn serve_core<K: KvService>(
    sockets: Vec<Socket>,
    acceptors: Vec<Option<TlsAcceptor>>,
    config: Rc<ServerConfig>,
    services: Rc<Services<K>>,
    stop: StopSignal,
) {
    let tasks = Rc::new(CoreTasks::default());
    let push_off = Rc::new(PushOffNotice::default());
    let monitor = glommio::spawn_local(watch_push_off(services.clone(), push_off.clone())).detach();
    for (socket, tls) in sockets.into_iter().zip(acceptors) {
        let fd = socket.as_raw_fd();
        // SAFETY: the fd comes from a socket we own and bound as a listener; into_raw_fd gives
        // up that ownership, so the glommio listener is its only owner and closes it.
        let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
        let accepting = accept_loop(
            listener,
            tls,
            config.clone(),
            services.clone(),
            tasks.clone(),
            push_off.clone(),
        );
        tasks.spawn(accepting, fd);
    }
    stop.wait().await;
    monitor.cancel();
    tasks.close_all();
    // Cancelled tasks drop their futures when next run; they are queued ahead of this task,
    // so one yield lets them go before the executor exits.
    futures_lite::future::yield_now().await;
}

async fn accept_loop<K: KvService>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Rc<ServerConfig>,
    services: Rc<Services<K>>,
    tasks: Rc<CoreTasks>,
    push_off: Rc<PushOffNotice>,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                let connection = serve_connection(
                    stream,
                    tls.clone(),
                    config.clone(),
                    services.clone(),
                    push_off.next(),
                );
                tasks.spawn(connection, fd);
            }
            // Out of fds or memory: keep the listener and retry after a pause rather than
            // taking every client of this core down or spinning on the error.
            Err(_) => glommio::timer::sleep(ACCEPT_RETRY_DELAY).await,
        }
    }
}

/// How a core's connections learn that the member pushed its clients off: a signal raised
/// when an episode starts, for the connections open then. A connection accepted during an
/// episode is served, and its calls refused with "no leader" (`service.rs`), until the next
/// one. A GOAWAY on a fresh connection refuses streams the server never saw, which grpc
/// clients retry transparently: they reconnect and retry in a tight loop until the deadline
/// (grpcio's C-core, tens of thousands of attempts a second, at last aborts the process on a
/// memory-quota check) and never hear why.
#[derive(Default)]
struct PushOffNotice {
    next_episode: RefCell<StopSignal>,
}

impl PushOffNotice {
    fn next(&self) -> StopSignal {
        self.next_episode.borrow().clone()
    }
}

/// Follows the member's push-off state (`node/core/push_off.rs`) for one core's connections.
async fn watch_push_off<K: KvService>(services: Rc<Services<K>>, notice: Rc<PushOffNotice>) {
    let mut pushed = false;
    loop {
        glommio::timer::sleep(PUSH_OFF_POLL_INTERVAL).await;
        let now = services.kv().pushed_off();
        if !pushed && now {
            notice.next_episode.take().raise();
        }
        pushed = now;
    }
}

/// The long-lived tasks of one core (accept loops, connections) with the socket each owns,
/// so stopping can end them.
#[derive(Default)]
struct CoreTasks {
    next_id: Cell<u64>,
    live: RefCell<HashMap<u64, (glommio::task::JoinHandle<()>, RawFd)>>,
}

impl CoreTasks {
    /// Runs `task`, which owns the open socket `fd` until it completes.
    fn spawn(self: &Rc<Self>, task: impl Future<Output = ()> + 'static, fd: RawFd) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let tasks = self.clone();
        let handle = glommio::spawn_local(async move {
            task.await;
            // In the same poll that dropped the socket, so no other task can have been
            // given the fd number while it is still listed here.
            tasks.live.borrow_mut().remove(&id);
        })
        .detach();
        // The task cannot have run yet (spawning only schedules it), so it is registered
        // before it can deregister itself.
        self.live.borrow_mut().insert(id, (handle, fd));
    }

    /// Shuts every socket down and cancels its task. Dropping alone is not enough: an
    /// io_uring operation in flight holds its own reference to the socket, which would keep a
    /// listener accepting or a connection open after its task is gone.
    fn close_all(&self) {
        for (_, (handle, fd)) in self.live.borrow_mut().drain() {
            // SAFETY: the task owning `fd` has not completed (it deregisters when it does), so
            // the fd is still open and still names its socket; shutdown does not close it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            handle.cancel();
        }
    }
}

async fn serve_connection<K: KvService>(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    config: Rc<ServerConfig>,
    services: Rc<Services<K>>,
    goaway: StopSignal,
) {
    // Small unary replies must leave at once, not wait for Nagle's timer.
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return serve_protocol(stream, None, &config, services, goaway).await;
    };
    let peer = stream.peer_addr();
    match tls.accept(stream).await {
        Ok(stream) => {
            let common_name = tls::client_common_name(&stream);
            serve_protocol(stream, common_name, &config, services, goaway).await;
        }
        // As etcd logs a refused handshake; the server goes on serving everyone else.
        Err(error) => match peer {
            Ok(peer) => eprintln!("basalt: rejected client connection from {peer}: {error}"),
            Err(_) => eprintln!("basalt: rejected client connection: {error}"),
        },
    }
}

/// Tells HTTP/2 from HTTP/1.1 by the first bytes (after TLS, when the port has it) and serves
/// the connection. `client_cert_common_name` is what the TLS handshake verified; `goaway` is
/// raised when the member pushes its clients off while the connection is open.
async fn serve_protocol<K: KvService, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    client_cert_common_name: Option<String>,
    config: &ServerConfig,
    services: Rc<Services<K>>,
    goaway: StopSignal,
) {
    let mut sniffed = Vec::with_capacity(H2_PREFACE_START.len());
    while sniffed.len() < H2_PREFACE_START.len() && H2_PREFACE_START.starts_with(&sniffed) {
        let mut byte_buf = [0u8; 4];
        let want = H2_PREFACE_START.len() - sniffed.len();
        match stream.read(&mut byte_buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sniffed.extend_from_slice(&byte_buf[..n]),
        }
    }
    if sniffed == H2_PREFACE_START {
        serve_h2(
            TokioIo::with_replay(stream, Bytes::from(sniffed)),
            client_cert_common_name,
            config,
            services,
            goaway,
        )
        .await;
    } else {
        let gateway = crate::gateway::Gateway {
            services,
            client_cert_common_name,
            message_bytes_max: config.recv_message_bytes_max(),
        };
        crate::http1::serve(stream, sniffed, &gateway).await;
    }
}

async fn serve_h2<K: KvService, S: AsyncRead + AsyncWrite + Unpin>(
    io: TokioIo<S>,
    client_cert_common_name: Option<String>,
    config: &ServerConfig,
    services: Rc<Services<K>>,
    goaway: StopSignal,
) {
    let handshake = h2::server::Builder::new()
        .initial_window_size(config.stream_window_bytes)
        .initial_connection_window_size(config.connection_window_bytes)
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_frame_size(H2_FRAME_BYTES_MAX)
        .max_send_buffer_size(H2_SEND_BUFFER_BYTES_MAX)
        .handshake::<_, Bytes>(io)
        .await;
    let Ok(mut connection) = handshake else {
        return;
    };
    let message_bytes_max = config.recv_message_bytes_max();
    // Polling accept also drives the connection: PINGs, SETTINGS, window updates and every
    // stream's frames all move only while this loop runs. Once told to go away it still runs
    // until the open streams end: streams that crossed the GOAWAY are answered (refused), and
    // a Watch opened without `hasleader` stays, as on etcd (one with it ends by itself).
    let mut told_to_go = false;
    // One wait for the connection's life, so its waker is registered once, not per turn.
    let mut go_away = goaway.wait();
    loop {
        let accepted = async { Some(connection.accept().await) };
        let next = match told_to_go {
            true => accepted.await,
            false => {
                let goaway = async {
                    (&mut go_away).await;
                    None
                };
                futures_lite::future::or(accepted, goaway).await
            }
        };
        let (request, respond) = match next {
            Some(Some(Ok(stream))) => stream,
            Some(_) => return,
            None => {
                connection.graceful_shutdown();
                told_to_go = true;
                continue;
            }
        };
        let services = services.clone();
        let common_name = client_cert_common_name.clone();
        // Boxed first: the call's future is several KiB, and spawning moves it by value
        // through each layer of glommio's spawn; a box moves as a pointer.
        glommio::spawn_local(Box::pin(async move {
            serve_stream(request, respond, common_name, message_bytes_max, &services).await;
        }))
        .detach();
    }
}

async fn serve_stream<K: KvService>(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    client_cert_common_name: Option<String>,
    message_bytes_max: usize,
    services: &Rc<Services<K>>,
) {
    let (head, body) = request.into_parts();
    let is_grpc = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(CONTENT_TYPE));
    if !is_grpc {
        // Plain HTTP over h2 (curl over TLS asks for it by ALPN) goes where HTTP/1.1 goes.
        let (method, query) = (head.method.as_str(), head.uri.query().unwrap_or(""));
        let reply = match crate::mux::route(method, head.uri.path(), query) {
            Route::BadRequest => crate::gateway::Reply::text(400, None),
            Route::Answered(reply) => reply,
            Route::Endpoint(path) => {
                crate::http1::h2_endpoint(method, &path, query, services).await
            }
            Route::Gateway(path) => {
                let gateway = crate::gateway::Gateway {
                    services: services.clone(),
                    client_cert_common_name,
                    message_bytes_max,
                };
                return crate::gateway::serve_h2(gateway, head, &path, body, respond).await;
            }
        };
        // A body nothing reads is read and dropped first, as on HTTP/1.1 (up to the limit):
        // answered while the client still sends, the stream would end in a reset.
        let mut body = body;
        let mut left = crate::gateway::body_bytes_max(message_bytes_max);
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
        crate::gateway::send_h2(respond, reply, head.method == http::Method::HEAD).await;
        return;
    }
    if head.method != http::Method::POST {
        // grpc-go answers a non-gRPC request on its port with a plain HTTP error.
        let mut reply = http::Response::new(());
        *reply.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
        let _ = respond.send_response(reply, true);
        return;
    }
    let encoding = head
        .headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v != "identity")
        .map(str::to_string);
    if let Some(encoding) = encoding {
        let status = Status::unimplemented(format!(
            "grpc: Decompressor is not installed for grpc-encoding \"{encoding}\""
        ));
        ResponseSink::new(respond).finish(&status);
        return;
    }
    let call = ServerCall {
        reader: MessageReader::new(body, message_bytes_max),
        sink: ResponseSink::new(respond),
        client_cert_common_name,
        token: head
            .headers
            .get("token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        require_leader: head
            .headers
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true"),
    };
    services.call(head.uri.path(), call).await;
}

/// A one-shot, cross-thread stop flag that glommio tasks can await.
#[derive(Clone, Default)]
struct StopSignal {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    raised: AtomicBool,
    waiters: Mutex<StopWaiters>,
}

/// The wakers of the [`StopWait`]s pending now, one per waiting future: a connection's loop
/// polls its wait once per turn, so pushing a waker per poll would grow without bound (and
/// overflow glommio's per-task waker count, which panics the executor).
#[derive(Default)]
struct StopWaiters {
    next_key: u64,
    wakers: HashMap<u64, Waker>,
}

impl StopSignal {
    fn raise(&self) {
        self.inner.raised.store(true, Ordering::SeqCst);
        let waiters =
            std::mem::take(&mut self.inner.waiters.lock().expect("never poisoned").wakers);
        waiters.into_values().for_each(Waker::wake);
    }

    fn wait(&self) -> StopWait<'_> {
        StopWait {
            signal: self,
            key: None,
        }
    }
}

struct StopWait<'a> {
    signal: &'a StopSignal,
    /// Where this future's waker is registered, once it has waited.
    key: Option<u64>,
}

impl Future for StopWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = self.signal.inner.clone();
        if inner.raised.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        let mut waiters = inner.waiters.lock().expect("never poisoned");
        // Checked again under the lock: raise() may have drained the list in between.
        if inner.raised.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        match self.key {
            Some(key) => match waiters.wakers.get_mut(&key) {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                Some(waker) => waker.clone_from(cx.waker()),
                None => {
                    waiters.wakers.insert(key, cx.waker().clone());
                }
            },
            None => {
                let key = waiters.next_key;
                waiters.next_key += 1;
                waiters.wakers.insert(key, cx.waker().clone());
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for StopWait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut waiters = self.signal.inner.waiters.lock().expect("never poisoned");
            waiters.wakers.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_wait_polled_again_and_again_keeps_one_waker_and_drops_it_when_dropped() {
        let signal = StopSignal::default();
        let mut cx = Context::from_waker(Waker::noop());
        let waiting = |signal: &StopSignal| signal.inner.waiters.lock().unwrap().wakers.len();
        {
            let mut wait = signal.wait();
            for _ in 0..100_000 {
                assert!(Pin::new(&mut wait).poll(&mut cx).is_pending());
            }
            assert_eq!(waiting(&signal), 1);
            let mut other = signal.wait();
            assert!(Pin::new(&mut other).poll(&mut cx).is_pending());
            assert_eq!(waiting(&signal), 2);
        }
        assert_eq!(waiting(&signal), 0);
        let mut wait = signal.wait();
        assert!(Pin::new(&mut wait).poll(&mut cx).is_pending());
        signal.raise();
        assert!(Pin::new(&mut wait).poll(&mut cx).is_ready());
        assert_eq!(waiting(&signal), 0);
    }
}
