//! The peer transport: raft messages, snapshots and forwarded proposals between members, and
//! the membership query a joining member asks.
//!
//! Owns the peer listeners and one long-lived stream per peer and direction: this member dials
//! every peer's URL and writes its messages there; what peers send arrives on the streams they
//! dialed to us. Snapshots travel on connections of their own so a big file never holds up a
//! heartbeat. Runs on the raft core's glommio executor and must never block it: sending only
//! queues (bounded, dropping on overflow, as the network would), and everything received is
//! handed to the core over the channel it gave.
//!
//! - `wire`: frames, handshake, rkyv mirrors of raft's structs (the byte layouts are there).
//! - `conn`: listen, dial, read a frame, the registry of sockets; the TLS seam.
//! - `stream`: the writer task per peer and the accepted connections.
//! - `snapshot`: sending and receiving snapshot files.
//! - `cluster`: the membership query, served and asked.
//! - `hash`: the corruption check's HashKV query, served and asked.

mod cluster;
mod conn;
mod hash;
mod snapshot;
mod stream;
mod wire;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_engine::crypt::SharedKeyring;
use basalt_proto::etcdserverpb::Member;
use basalt_raft::{Message, MessageType};

use crate::metrics::{metrics, PeerMetrics};
use conn::Sockets;

pub use cluster::fetch_cluster;
pub use hash::HashAsker;
pub use wire::WireError;

/// Messages and forwarded proposals queued per peer before more are dropped (etcd's stream
/// buffer holds the same number). Raft resends what is lost.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;

/// How this member takes part.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub member_id: u64,
    pub cluster_id: u64,
    /// `--listen-peer-urls`: `http://host:port` (port 0 picks one; see
    /// [`PeerTransport::listen_addrs`]).
    pub listen_peer_urls: Vec<String>,
    /// The other members and their peer URLs.
    pub peers: Vec<(u64, Vec<String>)>,
    /// Where received snapshot files are written (must exist).
    pub snap_dir: PathBuf,
    /// `--encryption-key-file`: a received tree is sealed with it as it arrives, and a tree to
    /// send, sealed with it on disk, is opened with it (peers get plaintext: their keys are
    /// not ours).
    pub keyring: Option<SharedKeyring>,
    /// TLS of `https://` peer URLs, accepting and dialing alike (`--peer-cert-file`,
    /// `--peer-key-file`, `--peer-trusted-ca-file`, `--peer-client-cert-auth`,
    /// `--peer-auto-tls`); `None` when every peer URL is `http://`.
    pub tls: Option<crate::tls::TlsConfig>,
}

/// What the transport hands the raft core.
#[derive(Debug)]
pub enum PeerInbound {
    /// Step it.
    Message(Message),
    /// A Snap message whose db file has been received whole, verified and made durable.
    Snapshot { message: Message, file: PathBuf },
    /// A send to this peer failed or was dropped: `report_unreachable`.
    Unreachable(u64),
    /// The end of a `send_snapshot`: `report_snapshot`.
    SnapshotSent { to: u64, ok: bool },
    /// A follower's proposal for the leader to propose.
    Forwarded { from: u64, data: Vec<u8> },
    /// A member's corruption check asks for this member's HashKV at `revision`; the answer, or
    /// etcd's error text, goes to `reply`.
    HashKv {
        revision: i64,
        reply: flume::Sender<Result<basalt_engine::apply::KvHash, String>>,
    },
}

/// What a member knows about its cluster, served to joining members.
pub type SharedCluster = Arc<Mutex<ClusterInfo>>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    pub members: Vec<Member>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Url(#[from] crate::NetError),
    #[error("cannot listen for peers on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("closed by the peer")]
    Closed,
    #[error("nothing heard within {0:?}")]
    TimedOut(Duration),
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("member {0:x} is not a known peer")]
    UnknownPeer(u64),
    #[error("no peer answered the cluster query: {0}")]
    NoClusterAnswer(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("peer URL {0} is https:// but no peer certificate is given (--peer-cert-file and --peer-key-file, or --peer-auto-tls)")]
    NoTls(String),
}

/// What is queued for a peer's stream. Messages are the common case and move through the
/// queue unboxed; a forward's spare bytes cost nothing worth an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Outbound {
    Message(Message),
    Forward(Vec<u8>),
}

/// One peer as its writer task and the transport's callers share it.
struct Link {
    id: u64,
    urls: RefCell<Vec<String>>,
    /// Since when our stream to the peer has been up (handshake accepted); `None` while down.
    connected_since: Cell<Option<Instant>>,
    removed: Cell<bool>,
    metrics: Arc<PeerMetrics>,
}

struct Peer {
    link: Rc<Link>,
    queue: flume::Sender<Outbound>,
}

/// A stream a peer dialed to us.
struct Accepted {
    connection: u64,
    socket_id: u64,
    since: Instant,
}

/// State every task of the transport shares (all on the raft core's thread).
struct Shared {
    member_id: u64,
    cluster_id: u64,
    snap_dir: PathBuf,
    keyring: Option<SharedKeyring>,
    inbound: flume::Sender<PeerInbound>,
    cluster: SharedCluster,
    peers: RefCell<HashMap<u64, Peer>>,
    accepted: RefCell<HashMap<u64, Accepted>>,
    next_connection: Cell<u64>,
    /// Members removed from the cluster: their streams are refused.
    removed: RefCell<HashSet<u64>>,
    sockets: Rc<Sockets>,
    /// Dials `https://` peer URLs.
    tls_connector: Option<crate::tls::TlsConnector>,
}

impl Shared {
    /// Tells the core a peer is unreachable without ever waiting: a report lost to a full
    /// channel is as harmless as the message it is about.
    fn report_unreachable(&self, id: u64) {
        let _ = self.inbound.try_send(PeerInbound::Unreachable(id));
    }
}

/// The running transport. Lives on the raft core's executor (it is not `Send`).
pub struct PeerTransport {
    shared: Rc<Shared>,
    listen_addrs: Vec<SocketAddr>,
}

impl PeerTransport {
    /// Binds every peer URL, starts accepting, and starts a stream to every peer. Transfers a
    /// crash interrupted (`*.incoming` in `snap_dir`) are deleted first.
    pub async fn start(
        config: TransportConfig,
        inbound: flume::Sender<PeerInbound>,
        cluster: SharedCluster,
    ) -> Result<PeerTransport, PeerError> {
        snapshot::remove_incoming(&config.snap_dir);
        let tls_acceptor = config
            .tls
            .as_ref()
            .map(|tls| crate::tls::TlsAcceptor::new(tls, &[]))
            .transpose()?;
        let tls_connector = config
            .tls
            .as_ref()
            .map(crate::tls::TlsConnector::new)
            .transpose()?;
        let sockets = Rc::new(Sockets::default());
        let mut listeners = Vec::with_capacity(config.listen_peer_urls.len());
        let mut listen_addrs = Vec::with_capacity(config.listen_peer_urls.len());
        for url in &config.listen_peer_urls {
            let (listener, registered) = conn::listen(url, &sockets)?;
            listen_addrs.push(listener.local_addr().map_err(std::io::Error::from)?);
            let tls = tls_acceptor
                .clone()
                .filter(|_| crate::config::url_is_https(url));
            if crate::config::url_is_https(url) && tls.is_none() {
                return Err(PeerError::NoTls(url.clone()));
            }
            listeners.push((listener, registered, tls));
        }
        let shared = Rc::new(Shared {
            member_id: config.member_id,
            cluster_id: config.cluster_id,
            snap_dir: config.snap_dir,
            keyring: config.keyring,
            inbound,
            cluster,
            peers: RefCell::default(),
            accepted: RefCell::default(),
            next_connection: Cell::new(0),
            removed: RefCell::default(),
            sockets: sockets.clone(),
            tls_connector,
        });
        for (listener, registered, tls) in listeners {
            sockets.spawn(stream::accept_loop(
                shared.clone(),
                listener,
                registered,
                tls,
            ));
        }
        let transport = PeerTransport {
            shared,
            listen_addrs,
        };
        for (id, urls) in config.peers {
            transport.add_peer(id, urls);
        }
        Ok(transport)
    }

    /// The bound address of each `listen_peer_urls` entry, in order (port 0 resolved).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    /// Queues each message on its peer's stream; never waits. A message for a peer that is
    /// down, unknown, or whose queue is full is dropped and the peer reported unreachable.
    /// Snap messages go through [`PeerTransport::send_snapshot`]; one given here fails as a
    /// snapshot send.
    pub fn send(&self, messages: Vec<Message>) {
        let peers = self.shared.peers.borrow();
        let mut reported = Vec::new();
        for message in messages {
            let to = message.to;
            if message.kind == MessageType::Snap {
                let _ = self
                    .shared
                    .inbound
                    .try_send(PeerInbound::SnapshotSent { to, ok: false });
                continue;
            }
            let queued = match peers.get(&to) {
                Some(peer) => queue(peer, Outbound::Message(message)),
                None => false,
            };
            if !queued && !reported.contains(&to) {
                reported.push(to);
                self.shared.report_unreachable(to);
            }
        }
    }

    /// Streams `db_file` (a private copy; deleted when done) with the Snap `message` on a
    /// connection of its own, then reports [`PeerInbound::SnapshotSent`].
    pub fn send_snapshot(&self, message: Message, db_file: PathBuf) {
        let link = self
            .shared
            .peers
            .borrow()
            .get(&message.to)
            .map(|peer| peer.link.clone());
        let shared = self.shared.clone();
        self.shared
            .sockets
            .spawn(snapshot::send(shared, link, message, db_file));
    }

    /// Queues a proposal for the leader `to`; dropped if it is unreachable (the proposer times
    /// out and retries).
    pub fn forward(&self, to: u64, data: Vec<u8>) {
        if let Some(peer) = self.shared.peers.borrow().get(&to) {
            queue(peer, Outbound::Forward(data));
        }
    }

    /// Starts a stream to a new member (or updates the URLs of a known one).
    pub fn add_peer(&self, id: u64, urls: Vec<String>) {
        if id == self.shared.member_id {
            return;
        }
        self.shared.removed.borrow_mut().remove(&id);
        let mut peers = self.shared.peers.borrow_mut();
        if let Some(peer) = peers.get(&id) {
            *peer.link.urls.borrow_mut() = urls;
            return;
        }
        let link = Rc::new(Link {
            id,
            urls: RefCell::new(urls),
            connected_since: Cell::new(None),
            removed: Cell::new(false),
            metrics: metrics().peer(id),
        });
        let (queue, outbound) = flume::bounded(PEER_QUEUE_MESSAGES_MAX);
        self.shared.sockets.spawn(stream::write_loop(
            self.shared.clone(),
            link.clone(),
            outbound,
        ));
        peers.insert(id, Peer { link, queue });
    }

    /// New URLs for a member; the next connection uses them.
    pub fn update_peer(&self, id: u64, urls: Vec<String>) {
        if let Some(peer) = self.shared.peers.borrow().get(&id) {
            *peer.link.urls.borrow_mut() = urls;
        }
    }

    /// Stops the stream to a removed member, ends the one it dialed to us, and refuses it from
    /// now on.
    pub fn remove_peer(&self, id: u64) {
        self.shared.removed.borrow_mut().insert(id);
        if let Some(peer) = self.shared.peers.borrow_mut().remove(&id) {
            // Dropping the queue ends the writer at its next wait.
            peer.link.removed.set(true);
        }
        if let Some(accepted) = self.shared.accepted.borrow_mut().remove(&id) {
            self.shared.sockets.shutdown(accepted.socket_id);
        }
        metrics().remove_peer(id);
    }

    /// Since when both streams with the peer have been up; `None` while either is down.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        let outbound = self
            .shared
            .peers
            .borrow()
            .get(&id)?
            .link
            .connected_since
            .get()?;
        let inbound = self.shared.accepted.borrow().get(&id)?.since;
        Some(outbound.max(inbound))
    }

    /// Closes every listener, stream and snapshot transfer.
    pub async fn close(self) {
        self.shared.sockets.close_all();
        // Cancelled tasks drop their futures when next run; they are queued ahead of this
        // task, so one yield lets them go.
        futures_lite::future::yield_now().await;
    }
}

/// Queues `item` if the peer's stream is up and its queue has room.
fn queue(peer: &Peer, item: Outbound) -> bool {
    let queued = peer.link.connected_since.get().is_some() && peer.queue.try_send(item).is_ok();
    if !queued {
        peer.link.metrics.sent_failures.inc();
    }
    queued
}

#[cfg(test)]
mod tests;
