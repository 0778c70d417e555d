//! What the server is told at start-up, and the errors of starting it.

use crate::tls::{TlsConfig, TlsError};
use std::net::{SocketAddr, ToSocketAddrs};

/// etcd's gRPC receive limit is the request limit plus this allowance for the envelope
/// (etcd's `grpcOverheadBytes`), so a request just under `--max-request-bytes` still reaches
/// the check that answers with etcd's own "request is too large" error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The server's configuration; the root binary fills it from etcd's flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Member name (`--name`).
    pub name: String,
    /// Where clients connect (`--listen-client-urls`), e.g. `http://127.0.0.1:2379`. Port 0
    /// picks a free port; [`crate::ServerHandle::client_addrs`] tells which.
    pub listen_client_urls: Vec<String>,
    /// What the member tells clients to use (`--advertise-client-urls`).
    pub advertise_client_urls: Vec<String>,
    /// What peers use to reach this member (`--initial-advertise-peer-urls`); shown by
    /// Cluster.MemberList.
    pub advertise_peer_urls: Vec<String>,
    /// Executors, one per core; 0 means every core this process may run on.
    pub cores: usize,
    /// Pin executor `i` to the i-th allowed CPU. Off lets the OS move them (tests that run
    /// many servers on a small machine).
    pub pin_cores: bool,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-concurrent-streams`: streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control window of each stream, and of each connection as a whole: what a
    /// client may send before it must wait for us to consume.
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    pub cluster_id: u64,
    pub member_id: u64,
    /// `--experimental-watch-progress-notify-interval`: how often idle watches with
    /// progress_notify get a progress response.
    pub watch_progress_notify_interval_ms: u64,
    /// `--election-timeout`: a Watch stream opened with `hasleader` metadata ends after a few
    /// of these without a leader.
    pub election_timeout_ms: u64,
    /// TLS of every `https://` client URL (`--cert-file`, `--auto-tls`, ...); `http://` URLs
    /// stay plain text.
    pub client_tls: Option<TlsConfig>,
    /// How long an idle client core keeps polling before it sleeps (`--busy-poll`).
    pub busy_poll: Option<std::time::Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: "default".to_string(),
            listen_client_urls: vec!["http://localhost:2379".to_string()],
            advertise_client_urls: vec!["http://localhost:2379".to_string()],
            advertise_peer_urls: vec!["http://localhost:2380".to_string()],
            cores: 0,
            pin_cores: true,
            max_txn_ops: 128,
            max_request_bytes: 1_572_864,
            max_concurrent_streams: u32::MAX,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 16 << 20,
            // etcd's ids for a default single member (`etcd` with no flags).
            cluster_id: 0xcdf8_1819_4e3a_8c32,
            member_id: 0x8e9e_05c5_2164_694d,
            // etcd's default: 10 minutes.
            watch_progress_notify_interval_ms: 600_000,
            // etcd's default.
            election_timeout_ms: 1000,
            client_tls: None,
            busy_poll: None,
        }
    }
}

/// etcd's request timeout (`ReqTimeout`): 5 s plus two election timeouts.
pub fn request_timeout(election_timeout_ms: u64) -> std::time::Duration {
    std::time::Duration::from_secs(5) + 2 * std::time::Duration::from_millis(election_timeout_ms)
}

impl ServerConfig {
    /// The largest gRPC message body accepted from a client.
    pub fn recv_message_bytes_max(&self) -> usize {
        self.max_request_bytes + GRPC_OVERHEAD_BYTES
    }

    pub(crate) fn core_count(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            allowed_cpus().len().max(1)
        }
    }
}

/// Errors of starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no client URL to listen on")]
    NoListenUrls,
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start executor {core}: {reason}")]
    Executor { core: usize, reason: String },
    #[error("executor {core} stopped abnormally: {reason}")]
    ExecutorFailed { core: usize, reason: String },
    /// etcd's words for an `https://` URL with no certificate.
    #[error("TLS key/cert (--cert-file, --key-file) must be provided for client url {url} with HTTPS scheme")]
    HttpsWithoutCert { url: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The socket address of an `http://host:port` or `https://host:port` URL. Unix sockets are
/// not served yet, so their URLs are refused.
pub fn parse_client_url(url: &str) -> Result<SocketAddr, NetError> {
    let invalid = |reason: &str| NetError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let host_port = url_host_port(url)
        .ok_or_else(|| invalid("only http:// and https:// URLs are supported"))?;
    if host_port.contains('/') {
        return Err(invalid("a client URL has no path"));
    }
    host_port
        .to_socket_addrs()
        .map_err(|e| invalid(&e.to_string()))?
        .next()
        .ok_or_else(|| invalid("host resolves to no address"))
}

/// Whether a URL asks for TLS.
pub fn url_is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// The host of an `http(s)://host:port` URL, without brackets around an IPv6 address: the
/// name a TLS certificate for that URL must carry.
pub fn url_host(url: &str) -> Option<&str> {
    let host_port = url_host_port(url)?;
    let host = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => host_port,
    };
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

fn url_host_port(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    Some(rest.strip_suffix('/').unwrap_or(rest))
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most size_of::<cpu_set_t>()
    // bytes into it, and CPU_ISSET reads within it for indices below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_urls_parse_to_socket_addresses() {
        let cases = [
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("http://127.0.0.1:0/", Some("127.0.0.1:0")),
            ("http://[::1]:2379", Some("[::1]:2379")),
            ("https://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("unix://basalt.sock", None),
            ("http://127.0.0.1", None),
            ("http://127.0.0.1:2379/v3", None),
        ];
        for (url, want) in cases {
            let got = parse_client_url(url).ok().map(|a| a.to_string());
            assert_eq!(got.as_deref(), want, "{url}");
        }
    }

    #[test]
    fn url_hosts_are_what_a_certificate_names() {
        let cases = [
            ("https://127.0.0.1:2379", Some("127.0.0.1")),
            ("https://[::1]:2379/", Some("::1")),
            ("http://localhost:2379", Some("localhost")),
            ("https://etcd.example", Some("etcd.example")),
            ("unix://basalt.sock", None),
        ];
        for (url, want) in cases {
            assert_eq!(url_host(url), want, "{url}");
        }
    }

    #[test]
    fn receive_limit_is_request_limit_plus_grpc_overhead() {
        let config = ServerConfig::default();
        assert_eq!(config.recv_message_bytes_max(), 1_572_864 + 524_288);
    }
}
