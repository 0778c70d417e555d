//! The membership query: a member started with `--initial-cluster-state existing` asks the
//! peers it was given for the cluster's id and members (to learn its own member id), and every
//! member answers from its [`SharedCluster`](super::SharedCluster).
//!
//! Asking runs before any executor exists, so it uses blocking sockets with timeouts on the
//! caller's thread. Must never be called on an executor thread.

use std::io::{Read, Write};
use std::time::Duration;

use basalt_proto::etcdserverpb::{MemberListResponse, ResponseHeader};
use futures_lite::AsyncWriteExt;
use prost::Message as _;

use super::conn::{self, PeerIo};
use super::wire::{self, FrameKind, Hello, StreamKind, WireError, HEADER_BYTES};
use super::{ClusterInfo, PeerError, Shared};

/// Answers a cluster query with what this member knows now.
pub(crate) async fn serve(shared: &Shared, io: &mut Box<dyn PeerIo>) {
    let info = shared
        .cluster
        .lock()
        .expect("the cluster info is never left poisoned")
        .clone();
    let response = MemberListResponse {
        header: Some(ResponseHeader {
            cluster_id: info.cluster_id,
            member_id: shared.member_id,
            ..ResponseHeader::default()
        }),
        members: info.members,
    };
    let frame = wire::frame(FrameKind::Cluster, &response.encode_to_vec());
    let _ = io.write_all(&frame).await;
}

/// Asks each of `peer_urls` in turn for the cluster; the first answer wins. `timeout` bounds
/// each connect, write and read.
/// `https://` URLs are dialed with `tls`.
pub fn fetch_cluster(
    peer_urls: &[String],
    timeout: Duration,
    tls: Option<&crate::tls::TlsConnector>,
) -> Result<ClusterInfo, PeerError> {
    let mut failures = Vec::with_capacity(peer_urls.len());
    for url in peer_urls {
        match fetch_from(url, timeout, tls) {
            Ok(info) => return Ok(info),
            Err(error) => failures.push(format!("{url}: {error}")),
        }
    }
    Err(PeerError::NoClusterAnswer(failures.join("; ")))
}

fn fetch_from(
    url: &str,
    timeout: Duration,
    tls: Option<&crate::tls::TlsConnector>,
) -> Result<ClusterInfo, PeerError> {
    let addr = conn::peer_addr(url)?;
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    match (crate::config::url_is_https(url), tls) {
        (false, _) => ask_cluster(stream),
        (true, Some(tls)) => {
            let host = crate::config::url_host(url).unwrap_or_default();
            ask_cluster(tls.connect_blocking(host, stream)?)
        }
        (true, None) => Err(PeerError::NoTls(url.to_string())),
    }
}

fn ask_cluster(mut stream: impl Read + Write) -> Result<ClusterInfo, PeerError> {
    let hello = Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        stream: StreamKind::ClusterQuery,
        cluster_id: 0,
        from: 0,
        to: 0,
    };
    stream.write_all(&hello.encode())?;
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header)?;
    let header = wire::decode_header(&header)?;
    let mut payload = vec![0u8; header.payload_bytes as usize];
    stream.read_exact(&mut payload)?;
    wire::check_payload(&header, &payload)?;
    match header.kind {
        FrameKind::Cluster => {
            let response =
                MemberListResponse::decode(payload.as_slice()).map_err(|e| WireError::Payload {
                    what: "cluster",
                    reason: e.to_string(),
                })?;
            Ok(ClusterInfo {
                cluster_id: response.header.map_or(0, |h| h.cluster_id),
                members: response.members,
            })
        }
        FrameKind::Refuse => Err(PeerError::Refused(
            String::from_utf8_lossy(&payload).into_owned(),
        )),
        other => Err(WireError::Unexpected(other as u8).into()),
    }
}
