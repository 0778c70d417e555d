//! The hash query: the corruption check asks each member for its HashKV over the peer port, as
//! etcd's leader does (`/members/hashkv` on etcd's peer handler). The peer port, not the
//! client URLs, because it is the one every member is sure to listen on with the TLS the
//! members share, and it needs no client credentials: the check works the same with `https://`
//! client URLs, client certificates or auth on.
//!
//! One connection per question: HELLO (stream 4, naming this cluster and the asked member),
//! a HASH_KV request frame, then the asked member's HASH_KV answer or a REFUSE with etcd's
//! error text. The answer is computed by the raft core (handed over as
//! [`PeerInbound::HashKv`](super::PeerInbound)), never by the transport.

use std::rc::Rc;
use std::time::Duration;

use basalt_engine::apply::KvHash;
use basalt_proto::etcdserverpb::{HashKvRequest, HashKvResponse, ResponseHeader};
use futures_lite::io::BufReader;
use futures_lite::AsyncWriteExt;
use prost::Message as _;

use super::conn::{self, PeerIo, Sockets};
use super::wire::{self, FrameKind, Hello, StreamKind, WireError, PROTOCOL_VERSION};
use super::{PeerError, PeerInbound, Shared};

/// How long one question may take, from dialing to the answer (etcd bounds its peer hash
/// requests by the request timeout, 5 s by default).
pub const HASH_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one hash query: reads the request, has the raft core compute the hash, writes it.
pub(crate) async fn serve(shared: &Shared, io: &mut BufReader<Box<dyn PeerIo>>) {
    let answered = conn::within(HASH_QUERY_TIMEOUT, async {
        let (kind, payload) = conn::expect_frame(io).await?;
        if kind != FrameKind::HashKv {
            return Err(WireError::Unexpected(kind as u8).into());
        }
        let request =
            HashKvRequest::decode(payload.as_slice()).map_err(|e| WireError::Payload {
                what: "hash request",
                reason: e.to_string(),
            })?;
        let (reply, answer) = flume::bounded(1);
        let asked = PeerInbound::HashKv {
            revision: request.revision,
            reply,
        };
        shared
            .inbound
            .send_async(asked)
            .await
            .map_err(|_| PeerError::Closed)?;
        let frame = match answer.recv_async().await.map_err(|_| PeerError::Closed)? {
            Ok(hash) => wire::frame(FrameKind::HashKv, &response(shared, hash).encode_to_vec()),
            Err(reason) => wire::frame(FrameKind::Refuse, reason.as_bytes()),
        };
        io.get_mut().write_all(&frame).await?;
        Ok(())
    });
    if let Err(error) = answered.await {
        eprintln!("basalt: peer: a hash query was not answered: {error}");
    }
}

fn response(shared: &Shared, hash: KvHash) -> HashKvResponse {
    HashKvResponse {
        header: Some(ResponseHeader {
            cluster_id: shared.cluster_id,
            member_id: shared.member_id,
            revision: hash.current_revision,
            raft_term: 0,
        }),
        hash: hash.hash,
        compact_revision: hash.compacted_revision,
    }
}

/// Asks members for their HashKV over their peer URLs; lives on any glommio executor.
pub struct HashAsker {
    cluster_id: u64,
    member_id: u64,
    /// Dials `https://` peer URLs with this member's peer certificate.
    tls: Option<crate::tls::TlsConnector>,
    sockets: Rc<Sockets>,
}

impl HashAsker {
    /// An asker for member `member_id` of cluster `cluster_id`; `tls` as the peer transport's.
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        tls: Option<&crate::tls::TlsConfig>,
    ) -> Result<HashAsker, PeerError> {
        Ok(HashAsker {
            cluster_id,
            member_id,
            tls: tls.map(crate::tls::TlsConnector::new).transpose()?,
            sockets: Rc::new(Sockets::default()),
        })
    }

    /// Member `to`'s HashKV at `revision`, from the first of its `peer_urls` that answers.
    pub async fn ask(
        &self,
        to: u64,
        peer_urls: &[String],
        revision: i64,
    ) -> Result<HashKvResponse, PeerError> {
        let mut failure = PeerError::UnknownPeer(to);
        for url in peer_urls {
            match conn::within(HASH_QUERY_TIMEOUT, self.ask_url(to, url, revision)).await {
                Ok(response) => return Ok(response),
                Err(error) => failure = error,
            }
        }
        Err(failure)
    }

    async fn ask_url(
        &self,
        to: u64,
        url: &str,
        revision: i64,
    ) -> Result<HashKvResponse, PeerError> {
        let mut conn = conn::dial(url, &self.sockets, self.tls.as_ref()).await?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            stream: StreamKind::HashQuery,
            cluster_id: self.cluster_id,
            from: self.member_id,
            to,
        };
        let mut request = hello.encode();
        wire::encode_frame(
            &mut request,
            FrameKind::HashKv,
            &HashKvRequest { revision }.encode_to_vec(),
        );
        conn.io.write_all(&request).await?;
        match conn::expect_frame(&mut conn.io).await? {
            (FrameKind::HashKv, payload) => {
                HashKvResponse::decode(payload.as_slice()).map_err(|e| {
                    WireError::Payload {
                        what: "hash answer",
                        reason: e.to_string(),
                    }
                    .into()
                })
            }
            (FrameKind::Refuse, reason) => Err(PeerError::Refused(
                String::from_utf8_lossy(&reason).into_owned(),
            )),
            (kind, _) => Err(WireError::Unexpected(kind as u8).into()),
        }
    }
}
