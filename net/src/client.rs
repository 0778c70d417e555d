//! An async gRPC client over h2 on glommio, for benches and Rust tests. It must be used from
//! inside a glommio executor; one [`Client`] is one HTTP/2 connection, and its calls are
//! multiplexed on it.
//!
//! ```ignore
//! let client = Client::connect(addr).await?;
//! client.put(&PutRequest { key: "a".into(), value: "1".into(), ..Default::default() }).await?;
//! let resp = client.range(&RangeRequest { key: "a".into(), ..Default::default() }).await?;
//! ```

use crate::grpc::{
    decode, encode, status_from_headers, stream_error, MessageReader, MessageWriter,
};
use crate::io::TokioIo;
use crate::status::{Code, Status};
use crate::tls::TlsConnector;
use basalt_proto::etcdserverpb::{
    AuthenticateRequest, AuthenticateResponse, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use bytes::Bytes;
use glommio::net::TcpStream;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, PingPong};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The largest response message accepted; etcd's clientv3 allows the same (math.MaxInt32).
const RECV_MESSAGE_BYTES_MAX: usize = i32::MAX as usize;
const STREAM_WINDOW_BYTES: u32 = 1 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// One HTTP/2 connection to a gRPC server.
#[derive(Clone)]
pub struct Client {
    send: SendRequest<Bytes>,
    /// `http` or `https`, for the requests' `:scheme`.
    scheme: &'static str,
    authority: String,
    /// The connection's PING handle; taken while a ping is in flight (h2 allows one).
    ping: Rc<Cell<Option<PingPong>>>,
    /// An auth token sent as the `token` metadata of every call (etcd's clients do the same).
    token: Option<http::HeaderValue>,
}

impl Client {
    /// Connects and completes the HTTP/2 handshake. The connection is driven by a task on
    /// the current executor until every handle to it is dropped.
    pub async fn connect(addr: SocketAddr) -> Result<Client, Status> {
        let stream = Self::dial(addr).await?;
        Self::handshake(stream, "http", addr).await
    }

    /// [`Client::connect`] over TLS: `host` is the name (or IP address) the server's
    /// certificate must carry.
    pub async fn connect_tls(
        addr: SocketAddr,
        host: &str,
        tls: &TlsConnector,
    ) -> Result<Client, Status> {
        let stream = Self::dial(addr).await?;
        let stream = tls.connect(host, stream).await.map_err(|e| {
            Status::new(Code::Unavailable, format!("TLS with {host} ({addr}): {e}"))
        })?;
        Self::handshake(stream, "https", addr).await
    }

    async fn dial(addr: SocketAddr) -> Result<TcpStream, Status> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Status::new(Code::Unavailable, format!("connect {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn handshake<S>(
        stream: S,
        scheme: &'static str,
        addr: SocketAddr,
    ) -> Result<Client, Status>
    where
        S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
    {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .handshake::<_, Bytes>(TokioIo::new(stream))
            .await
            .map_err(|e| Status::new(Code::Unavailable, format!("handshake with {addr}: {e}")))?;
        let ping = Rc::new(Cell::new(connection.ping_pong()));
        glommio::spawn_local(async move {
            // Ends when the server closes or every handle is dropped; either way the calls
            // still pending see the failure on their own streams.
            let _ = connection.await;
        })
        .detach();
        Ok(Client {
            send,
            scheme,
            authority: addr.to_string(),
            ping,
            token: None,
        })
    }

    /// Logs in as `name` (Auth.Authenticate); later calls carry the token.
    pub async fn authenticate(&mut self, name: &str, password: &str) -> Result<(), Status> {
        let reply: AuthenticateResponse = self
            .unary(
                "/etcdserverpb.Auth/Authenticate",
                &AuthenticateRequest {
                    name: name.into(),
                    password: password.into(),
                },
            )
            .await?;
        let token = http::HeaderValue::from_str(&reply.token)
            .map_err(|e| Status::internal(format!("the server sent a bad token: {e}")))?;
        self.token = Some(token);
        Ok(())
    }

    /// One HTTP/2 PING round trip: the transport's latency, without gRPC or the store.
    pub async fn ping(&self) -> Result<Duration, Status> {
        let mut ping_pong = self
            .ping
            .take()
            .ok_or_else(|| Status::new(Code::FailedPrecondition, "a ping is already in flight"))?;
        let started = Instant::now();
        let pong = ping_pong.ping(Ping::opaque()).await;
        self.ping.set(Some(ping_pong));
        pong.map_err(stream_error)?;
        Ok(started.elapsed())
    }

    /// Opens a call of any shape: messages go out through the [`RequestSender`] and come
    /// back through the [`ResponseStream`].
    pub async fn open(&self, path: &str) -> Result<(RequestSender, ResponseStream), Status> {
        let uri = format!("{}://{}{}", self.scheme, self.authority, path);
        let mut request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, crate::grpc::CONTENT_TYPE)
            .header("te", "trailers")
            .body(())
            .map_err(|e| Status::internal(format!("bad request path {path:?}: {e}")))?;
        if let Some(token) = &self.token {
            request.headers_mut().insert("token", token.clone());
        }
        let mut send = self.send.clone().ready().await.map_err(stream_error)?;
        let (response, body) = send.send_request(request, false).map_err(stream_error)?;
        Ok((
            RequestSender {
                writer: MessageWriter::new(body),
            },
            ResponseStream {
                state: ResponseState::Head(response),
            },
        ))
    }

    /// One unary call: sends `req`, returns the single response or the call's status.
    pub async fn unary<Req, Resp>(&self, path: &str, req: &Req) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let (mut sender, mut responses) = self.open(path).await?;
        // The request and its end go out with the HEADERS in one write: h2 holds the data
        // until the window allows, and waiting for capacity first would cost a flush.
        let sent = encode(req).and_then(|framed| sender.writer.send_last(framed));
        // The server may answer (say, RESOURCE_EXHAUSTED) before reading the whole request
        // and reset the rest; its status then explains the failed send, so it wins.
        let resp = match (responses.message::<Resp>().await, sent) {
            (Err(status), _) | (Ok(_), Err(status)) => return Err(status),
            (Ok(None), Ok(())) => {
                return Err(Status::internal(
                    "server ended a unary call without a response",
                ))
            }
            (Ok(Some(resp)), Ok(())) => resp,
        };
        match responses.message::<Resp>().await? {
            None => Ok(resp),
            Some(_) => Err(Status::internal(
                "server sent two responses to a unary call",
            )),
        }
    }

    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        self.unary("/etcdserverpb.KV/Range", req).await
    }

    pub async fn put(&self, req: &PutRequest) -> Result<PutResponse, Status> {
        self.unary("/etcdserverpb.KV/Put", req).await
    }

    pub async fn delete_range(
        &self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Status> {
        self.unary("/etcdserverpb.KV/DeleteRange", req).await
    }

    pub async fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, Status> {
        self.unary("/etcdserverpb.KV/Txn", req).await
    }

    pub async fn compact(&self, req: &CompactionRequest) -> Result<CompactionResponse, Status> {
        self.unary("/etcdserverpb.KV/Compact", req).await
    }

    pub async fn status(&self) -> Result<StatusResponse, Status> {
        self.unary("/etcdserverpb.Maintenance/Status", &StatusRequest {})
            .await
    }
}

/// The request half of a call.
pub struct RequestSender {
    writer: MessageWriter,
}

impl RequestSender {
    /// Sends one message, waiting for the server's flow-control window.
    pub async fn send<M: prost::Message>(&mut self, message: &M) -> Result<(), Status> {
        self.writer.send(encode(message)?).await
    }

    /// Sends bytes exactly as given, with no gRPC framing added: for tests that need
    /// malformed or partial frames on the wire.
    pub async fn send_raw(&mut self, bytes: Bytes) -> Result<(), Status> {
        self.writer.send(bytes).await
    }

    /// Ends the request stream (half-close); responses keep coming.
    pub fn close(&mut self) -> Result<(), Status> {
        self.writer.close()
    }

    /// Abandons the call (RST_STREAM CANCEL).
    pub fn cancel(&mut self) {
        self.writer.reset();
    }
}

/// The response half of a call.
pub struct ResponseStream {
    state: ResponseState,
}

enum ResponseState {
    Head(ResponseFuture),
    Body(MessageReader),
    Done,
}

impl ResponseStream {
    /// The next response message; `Ok(None)` once the call ended with status OK, and the
    /// status as the error when it ended otherwise.
    pub async fn message<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        loop {
            match &mut self.state {
                ResponseState::Head(response) => {
                    let response = response.await.map_err(stream_error)?;
                    self.state = ResponseState::Done;
                    let (head, body) = response.into_parts();
                    if head.status != http::StatusCode::OK {
                        return Err(http_status(head.status));
                    }
                    if let Some(status) = status_from_headers(&head.headers) {
                        // Trailers-only: the call ended without a message.
                        return status_result(status);
                    }
                    self.state =
                        ResponseState::Body(MessageReader::new(body, RECV_MESSAGE_BYTES_MAX));
                }
                ResponseState::Body(reader) => {
                    if let Some(body) = reader.next().await? {
                        return decode::<M>(body, "response").map(Some);
                    }
                    let trailers = reader.trailers().await?;
                    self.state = ResponseState::Done;
                    return match trailers.as_ref().and_then(status_from_headers) {
                        Some(status) => status_result(status),
                        None => Err(Status::internal(
                            "server closed the stream without trailers",
                        )),
                    };
                }
                ResponseState::Done => return Ok(None),
            }
        }
    }
}

fn status_result<M>(status: Status) -> Result<Option<M>, Status> {
    if status.is_ok() {
        Ok(None)
    } else {
        Err(status)
    }
}

/// grpc-go's mapping of a non-200 HTTP status on a gRPC call.
fn http_status(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("unexpected HTTP status code received from server: {status}"),
    )
}
