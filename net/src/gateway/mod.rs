//! etcd's JSON gateway: the v3 API as JSON over HTTP on the client port (`POST /v3/...`), as
//! etcd 3.5 serves it through grpc-gateway v1.
//!
//! A gateway request becomes an ordinary call of the services: its JSON body is read into the
//! method's request message ([`json`]), encoded to protobuf and handed to
//! [`Services::call`] through an in-process [`ServerCall`] (a [`MessageReader`] fed by a
//! channel instead of an h2 stream, a [`ResponseSink`] that hands messages back), so auth,
//! quotas, limits, metrics and every check run exactly as for gRPC. Responses are written
//! back as JSON: a unary call's one message, or a stream's messages as newline-delimited
//! `{"result": ...}` objects (Watch, LeaseKeepAlive, Snapshot, Observe). Errors are written
//! as grpc-gateway writes them: the HTTP status of the gRPC code and
//! `{"error":..,"code":..,"message":..}`, or on a stream `{"error":{"grpc_code":..,...}}`.
//!
//! The transports ([`crate::http1`] for HTTP/1.1, [`serve_h2`] for h2) read the whole
//! request body first (bounded by [`body_bytes_max`]); a stream's requests are every JSON
//! value in that body, after which the request side is half-closed as grpc-gateway does
//! when the body ends.

mod json;

use crate::grpc::{MessageReader, ResponseSink};
use crate::kv::KvService;
use crate::service::{ServerCall, Services};
use crate::status::{Code, Status};
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;

/// etcd 3.5's gateway paths and the gRPC method each one calls (the `google.api.http`
/// options of etcd's .proto files). HashKV shares `/v3/maintenance/hash` with Hash there,
/// and Hash wins, so HashKV has no path of its own.
const ROUTES: [(&str, &str); 50] = [
    ("/v3/kv/range", "/etcdserverpb.KV/Range"),
    ("/v3/kv/put", "/etcdserverpb.KV/Put"),
    ("/v3/kv/deleterange", "/etcdserverpb.KV/DeleteRange"),
    ("/v3/kv/txn", "/etcdserverpb.KV/Txn"),
    ("/v3/kv/compaction", "/etcdserverpb.KV/Compact"),
    ("/v3/watch", "/etcdserverpb.Watch/Watch"),
    ("/v3/lease/grant", "/etcdserverpb.Lease/LeaseGrant"),
    ("/v3/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
    ("/v3/kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
    ("/v3/lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive"),
    (
        "/v3/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
    ),
    (
        "/v3/kv/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
    ),
    ("/v3/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
    ("/v3/kv/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
    ("/v3/cluster/member/add", "/etcdserverpb.Cluster/MemberAdd"),
    (
        "/v3/cluster/member/remove",
        "/etcdserverpb.Cluster/MemberRemove",
    ),
    (
        "/v3/cluster/member/update",
        "/etcdserverpb.Cluster/MemberUpdate",
    ),
    (
        "/v3/cluster/member/list",
        "/etcdserverpb.Cluster/MemberList",
    ),
    (
        "/v3/cluster/member/promote",
        "/etcdserverpb.Cluster/MemberPromote",
    ),
    ("/v3/maintenance/alarm", "/etcdserverpb.Maintenance/Alarm"),
    ("/v3/maintenance/status", "/etcdserverpb.Maintenance/Status"),
    (
        "/v3/maintenance/defragment",
        "/etcdserverpb.Maintenance/Defragment",
    ),
    ("/v3/maintenance/hash", "/etcdserverpb.Maintenance/Hash"),
    (
        "/v3/maintenance/snapshot",
        "/etcdserverpb.Maintenance/Snapshot",
    ),
    (
        "/v3/maintenance/transfer-leadership",
        "/etcdserverpb.Maintenance/MoveLeader",
    ),
    (
        "/v3/maintenance/downgrade",
        "/etcdserverpb.Maintenance/Downgrade",
    ),
    ("/v3/auth/enable", "/etcdserverpb.Auth/AuthEnable"),
    ("/v3/auth/disable", "/etcdserverpb.Auth/AuthDisable"),
    ("/v3/auth/status", "/etcdserverpb.Auth/AuthStatus"),
    ("/v3/auth/authenticate", "/etcdserverpb.Auth/Authenticate"),
    ("/v3/auth/user/add", "/etcdserverpb.Auth/UserAdd"),
    ("/v3/auth/user/get", "/etcdserverpb.Auth/UserGet"),
    ("/v3/auth/user/list", "/etcdserverpb.Auth/UserList"),
    ("/v3/auth/user/delete", "/etcdserverpb.Auth/UserDelete"),
    (
        "/v3/auth/user/changepw",
        "/etcdserverpb.Auth/UserChangePassword",
    ),
    ("/v3/auth/user/grant", "/etcdserverpb.Auth/UserGrantRole"),
    ("/v3/auth/user/revoke", "/etcdserverpb.Auth/UserRevokeRole"),
    ("/v3/auth/role/add", "/etcdserverpb.Auth/RoleAdd"),
    ("/v3/auth/role/get", "/etcdserverpb.Auth/RoleGet"),
    ("/v3/auth/role/list", "/etcdserverpb.Auth/RoleList"),
    ("/v3/auth/role/delete", "/etcdserverpb.Auth/RoleDelete"),
    (
        "/v3/auth/role/grant",
        "/etcdserverpb.Auth/RoleGrantPermission",
    ),
    (
        "/v3/auth/role/revoke",
        "/etcdserverpb.Auth/RoleRevokePermission",
    ),
    ("/v3/election/campaign", "/v3electionpb.Election/Campaign"),
    ("/v3/election/proclaim", "/v3electionpb.Election/Proclaim"),
    ("/v3/election/leader", "/v3electionpb.Election/Leader"),
    ("/v3/election/observe", "/v3electionpb.Election/Observe"),
    ("/v3/election/resign", "/v3electionpb.Election/Resign"),
    ("/v3/lock/lock", "/v3lockpb.Lock/Lock"),
    ("/v3/lock/unlock", "/v3lockpb.Lock/Unlock"),
];

/// Response messages a stream may have waiting for a slow HTTP reader before the service
/// waits (a Watch's own queue holds the rest).
const STREAM_QUEUE_MAX: usize = 16;

/// The headers etcd's access controller puts on every answer past Go's own parsing (its CORS
/// defaults).
const CORS_HEADERS: [(&str, &str); 3] = [
    (
        "Access-Control-Allow-Headers",
        "accept, content-type, authorization",
    ),
    (
        "Access-Control-Allow-Methods",
        "POST, GET, OPTIONS, PUT, DELETE",
    ),
    ("Access-Control-Allow-Origin", "*"),
];

/// The largest request body read: a request message at the gRPC limit, in base64 inside
/// JSON, fits well below it; anything larger could only be refused.
pub(crate) fn body_bytes_max(message_bytes_max: usize) -> usize {
    message_bytes_max.saturating_mul(2)
}

struct Method {
    grpc_path: &'static str,
    input: MessageDescriptor,
    output: MessageDescriptor,
    client_streaming: bool,
    server_streaming: bool,
}

fn methods() -> &'static HashMap<&'static str, Method> {
    static METHODS: OnceLock<HashMap<&'static str, Method>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let pool = DescriptorPool::decode(basalt_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set is compiled from our own .proto files");
        ROUTES
            .iter()
            .map(|&(http_path, grpc_path)| {
                let info = basalt_proto::method_by_path(grpc_path).expect("a declared method");
                let method = pool
                    .get_service_by_name(info.service)
                    .and_then(|service| service.methods().find(|m| m.name() == info.method))
                    .expect("every declared method has a descriptor");
                let method = Method {
                    grpc_path: info.path,
                    input: method.input(),
                    output: method.output(),
                    client_streaming: info.client_streaming,
                    server_streaming: info.server_streaming,
                };
                (http_path, method)
            })
            .collect()
    })
}

/// A gateway request as the transports hand it over, at the path [`crate::mux::route`] gave.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    /// The `Authorization` header (etcd takes its value as the token, no scheme), or
    /// `Grpc-Metadata-Token`, which grpc-gateway forwards as the `token` metadata.
    pub(crate) token: Option<String>,
    /// `Grpc-Metadata-Hasleader: true`.
    pub(crate) require_leader: bool,
    pub(crate) body: Bytes,
}

impl Request<'_> {
    /// The token from the request's headers, looked up by `header` (case-insensitive name →
    /// value): etcd reads the `token` metadata before `authorization`.
    pub(crate) fn token_from<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Option<String> {
        header("grpc-metadata-token")
            .or_else(|| header("authorization"))
            .map(str::to_string)
    }

    pub(crate) fn require_leader_from<'h>(header: impl Fn(&str) -> Option<&'h str>) -> bool {
        header("grpc-metadata-hasleader") == Some("true")
    }
}

/// The gateway's answer: status, headers, and a body whole or streamed.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: ReplyBody,
}

pub(crate) enum ReplyBody {
    Full(Bytes),
    /// Chunks as the call produces them: the first already taken, then the rest.
    Stream(ReplyStream),
}

impl Reply {
    pub(crate) fn new(status: u16, content_type: Option<&'static str>, body: ReplyBody) -> Self {
        let mut headers: Vec<(&'static str, String)> = CORS_HEADERS
            .iter()
            .map(|&(name, value)| (name, value.to_string()))
            .collect();
        if let Some(content_type) = content_type {
            headers.push(("Content-Type", content_type.to_string()));
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Go's `http.Error`: plain text, the status text (or `text`) and a newline.
    pub(crate) fn text(status: u16, text: Option<&str>) -> Self {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut reply = Reply::new(
            status,
            Some("text/plain; charset=utf-8"),
            ReplyBody::Full(Bytes::from(format!("{}\n", text.unwrap_or(reason)))),
        );
        reply
            .headers
            .push(("X-Content-Type-Options", "nosniff".to_string()));
        reply
    }

    /// grpc-gateway's `DefaultHTTPError`: the status's HTTP code and its JSON body.
    fn error(status: &Status) -> Self {
        let mut body = String::from("{");
        if !status.message.is_empty() {
            body.push_str("\"error\":");
            json::encode_string(&mut body, &status.message);
            body.push(',');
        }
        body.push_str(&format!("\"code\":{}", status.code.as_wire()));
        if !status.message.is_empty() {
            body.push_str(",\"message\":");
            json::encode_string(&mut body, &status.message);
        }
        body.push('}');
        Reply::new(
            http_status(status.code),
            Some("application/json"),
            ReplyBody::Full(Bytes::from(body)),
        )
    }

    fn json(body: ReplyBody) -> Self {
        let mut reply = Reply::new(200, Some("application/json"), body);
        // grpc-gateway forwards the gRPC response's headers under this prefix.
        reply.headers.push((
            "Grpc-Metadata-Content-Type",
            crate::grpc::CONTENT_TYPE.to_string(),
        ));
        reply
    }
}

impl Reply {
    /// Go's `http.Redirect` with 301: the location, and for GET (HEAD too, as a type) a link.
    pub(crate) fn redirect(method: &str, location: &str) -> Self {
        let (content_type, body) = match method {
            "GET" | "HEAD" => (
                Some("text/html; charset=utf-8"),
                format!(
                    "<a href=\"{}\">Moved Permanently</a>.\n\n",
                    crate::mux::html_escape(location)
                ),
            ),
            _ => (None, String::new()),
        };
        let mut reply = Reply::new(301, content_type, ReplyBody::Full(Bytes::from(body)));
        reply.headers.push(("Location", location.to_string()));
        reply
    }
}

/// A body too large to read: refused as grpc-go refuses the message it would make.
pub(crate) fn refuse_oversized(body_bytes: usize, message_bytes_max: usize) -> Reply {
    Reply::error(&crate::grpc::too_large(body_bytes, message_bytes_max))
}

/// grpc-gateway v1's `HTTPStatusFromCode`.
fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 408,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    }
}

/// The request side of an in-process call: whole protobuf messages; the channel closing is
/// the client's half-close.
pub(crate) struct LocalRequests {
    messages: flume::Receiver<Bytes>,
}

impl LocalRequests {
    pub(crate) async fn next(&mut self, message_bytes_max: usize) -> Result<Option<Bytes>, Status> {
        match self.messages.recv_async().await {
            Ok(body) if body.len() > message_bytes_max => {
                Err(crate::grpc::too_large(body.len(), message_bytes_max))
            }
            Ok(body) => Ok(Some(body)),
            Err(_) => Ok(None),
        }
    }
}

/// The response side of an in-process call, as the service sees it.
pub(crate) struct LocalResponses {
    messages: flume::Sender<Bytes>,
    status: Rc<RefCell<Option<Status>>>,
    /// Never sent on: it disconnects when the gateway stops listening (the client left).
    gone: flume::Receiver<()>,
}

impl LocalResponses {
    pub(crate) async fn send(&mut self, body: Bytes) -> Result<(), Status> {
        self.messages
            .send_async(body)
            .await
            .map_err(|_| Status::new(Code::Cancelled, "context canceled"))
    }

    pub(crate) fn finish(self, status: &Status) {
        *self.status.borrow_mut() = Some(status.clone());
    }

    pub(crate) async fn closed(&mut self) {
        let _ = self.gone.recv_async().await;
    }
}

/// What a call produced next.
enum Event {
    Message(Bytes),
    Finished(Status),
}

/// The gateway's end of an in-process call.
struct CallEnd {
    messages: flume::Receiver<Bytes>,
    status: Rc<RefCell<Option<Status>>>,
    _gone: flume::Sender<()>,
}

impl CallEnd {
    async fn next(&mut self) -> Event {
        match self.messages.recv_async().await {
            Ok(body) => Event::Message(body),
            // The sink is dropped once finished, which ends the channel.
            Err(_) => Event::Finished(
                self.status
                    .borrow_mut()
                    .take()
                    .unwrap_or_else(|| Status::new(Code::Unknown, "call ended without a status")),
            ),
        }
    }
}

/// A streaming answer's chunks after the first.
pub(crate) struct ReplyStream {
    first: Option<Bytes>,
    call: Option<CallEnd>,
    output: MessageDescriptor,
}

impl ReplyStream {
    /// The next chunk to write, `None` when the stream is over.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let call = self.call.as_mut()?;
        match call.next().await {
            Event::Message(body) => match result_chunk(&self.output, &body) {
                Ok(chunk) => Some(chunk),
                Err(status) => {
                    self.call = None;
                    Some(stream_error_chunk(&status))
                }
            },
            Event::Finished(status) => {
                self.call = None;
                (!status.is_ok()).then(|| stream_error_chunk(&status))
            }
        }
    }
}

/// One streamed message: `{"result":<message>}` and a newline.
fn result_chunk(output: &MessageDescriptor, body: &[u8]) -> Result<Bytes, Status> {
    let mut out = String::from("{\"result\":");
    out.push_str(&message_json(output, body)?);
    out.push_str("}\n");
    Ok(Bytes::from(out))
}

/// grpc-gateway's stream error chunk (no newline follows it).
fn stream_error_chunk(status: &Status) -> Bytes {
    let http = http_status(status.code);
    let mut out = format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{http}",
        status.code.as_wire()
    );
    if !status.message.is_empty() {
        out.push_str(",\"message\":");
        json::encode_string(&mut out, &status.message);
    }
    let reason = http::StatusCode::from_u16(http)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.push_str(",\"http_status\":");
    json::encode_string(&mut out, reason);
    out.push_str("}}");
    Bytes::from(out)
}

/// A response message as JSON. It was encoded by our own services from the same schema, so
/// it decodes; were it not to, the client gets an error rather than the member a panic.
fn message_json(desc: &MessageDescriptor, body: &[u8]) -> Result<String, Status> {
    let message = DynamicMessage::decode(desc.clone(), body)
        .map_err(|e| Status::internal(format!("basalt: gateway: response does not decode: {e}")))?;
    let mut out = String::new();
    json::encode_message(&mut out, &message);
    Ok(out)
}

/// Everything a gateway request needs from the connection it came on.
pub(crate) struct Gateway<K> {
    pub(crate) services: Rc<Services<K>>,
    pub(crate) client_cert_common_name: Option<String>,
    pub(crate) message_bytes_max: usize,
}

impl<K: KvService> Gateway<K> {
    pub(crate) async fn handle(&self, request: Request<'_>) -> Reply {
        let Some(method) = methods().get(request.path) else {
            return Reply::text(404, None);
        };
        if request.method != "POST" {
            return Reply::text(405, None);
        }
        let requests = match read_requests(method, &request.body) {
            Ok(requests) => requests,
            Err(status) => return Reply::error(&status),
        };
        let mut call = self.start(method, &request, requests);
        let first = call.next().await;
        if !method.server_streaming {
            return match first {
                Event::Message(body) => match message_json(&method.output, &body) {
                    Ok(json) => Reply::json(ReplyBody::Full(Bytes::from(json))),
                    Err(status) => Reply::error(&status),
                },
                Event::Finished(status) if status.is_ok() => Reply::error(&Status::internal(
                    "grpc: unary call ended without a response",
                )),
                Event::Finished(status) => Reply::error(&status),
            };
        }
        let first = match first {
            Event::Message(body) => result_chunk(&method.output, &body),
            Event::Finished(status) if status.is_ok() => {
                return Reply::json(ReplyBody::Full(Bytes::new()))
            }
            Event::Finished(status) => Err(status),
        };
        match first {
            Ok(first) => Reply::json(ReplyBody::Stream(ReplyStream {
                first: Some(first),
                call: Some(call),
                output: method.output.clone(),
            })),
            Err(status) => {
                let mut reply = Reply::json(ReplyBody::Full(stream_error_chunk(&status)));
                reply.status = http_status(status.code);
                reply
            }
        }
    }

    /// Starts the call on this core, as an h2 stream's call is started.
    fn start(&self, method: &Method, request: &Request<'_>, requests: Vec<Bytes>) -> CallEnd {
        let (request_tx, request_rx) = flume::unbounded();
        for message in requests {
            request_tx
                .send(message)
                .expect("the receiver is held just above");
        }
        // Dropping the sender half-closes the request side, as the end of the body does.
        drop(request_tx);
        let (response_tx, response_rx) = flume::bounded(STREAM_QUEUE_MAX);
        let (gone_tx, gone_rx) = flume::bounded(1);
        let status = Rc::new(RefCell::new(None));
        let call = ServerCall {
            reader: MessageReader::local(
                LocalRequests {
                    messages: request_rx,
                },
                self.message_bytes_max,
            ),
            sink: ResponseSink::local(LocalResponses {
                messages: response_tx,
                status: status.clone(),
                gone: gone_rx,
            }),
            client_cert_common_name: self.client_cert_common_name.clone(),
            token: request.token.clone(),
            require_leader: request.require_leader,
        };
        let services = self.services.clone();
        let path = method.grpc_path;
        glommio::spawn_local(async move { services.call(path, call).await }).detach();
        CallEnd {
            messages: response_rx,
            status,
            _gone: gone_tx,
        }
    }
}

/// The request messages in a body, encoded for the service. A unary or server-streaming
/// method reads one JSON value (an empty body is the empty request); a bidirectional stream
/// reads values until the body ends or one does not parse, as grpc-gateway's decode loop
/// does. A first value that does not parse is refused as grpc-gateway refuses it: with
/// InvalidArgument, or Unknown for a bidirectional stream.
fn read_requests(method: &Method, body: &[u8]) -> Result<Vec<Bytes>, Status> {
    let mut messages = Vec::new();
    let mut rest = body;
    loop {
        let (decoded, used) = match json::decode_message(&method.input, rest) {
            Ok(read) => read,
            Err(message) if messages.is_empty() => {
                let code = match method.client_streaming {
                    true => Code::Unknown,
                    false => Code::InvalidArgument,
                };
                return Err(Status::new(code, message));
            }
            Err(_) => return Ok(messages),
        };
        rest = &rest[used..];
        match decoded {
            json::Decoded::Message(message) => messages.push(Bytes::from(message.encode_to_vec())),
            json::Decoded::Empty if !method.client_streaming => {
                messages.push(Bytes::new());
            }
            json::Decoded::Empty => return Ok(messages),
        }
        if !method.client_streaming {
            return Ok(messages);
        }
    }
}

/// Serves one gateway request that came as an h2 stream (a TLS port offers h2 by ALPN, so
/// curl asks there).
pub(crate) async fn serve_h2<K: KvService>(
    gateway: Gateway<K>,
    head: http::request::Parts,
    path: &str,
    mut body: h2::RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let header = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
    let limit = body_bytes_max(gateway.message_bytes_max);
    let mut received = Vec::new();
    // Past the limit, the rest is read and dropped: the refusal comes when the body ends,
    // as etcd's, which reads a body whole, answers.
    let mut length = 0usize;
    let reply = loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                length = length.saturating_add(chunk.len());
                if length <= limit {
                    received.extend_from_slice(&chunk);
                } else {
                    received = Vec::new();
                }
            }
            Some(Err(_)) => return,
            None if length > limit => break refuse_oversized(length, gateway.message_bytes_max),
            None => {
                let request = Request {
                    method: head.method.as_str(),
                    path,
                    token: Request::token_from(header),
                    require_leader: Request::require_leader_from(header),
                    body: Bytes::from(std::mem::take(&mut received)),
                };
                // A reset stream while the call runs ends it (dropping the call tells the
                // service), as the HTTP/1.1 side ends it when the connection closes.
                let reset = async {
                    let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                    None
                };
                match futures_lite::future::or(async { Some(gateway.handle(request).await) }, reset)
                    .await
                {
                    Some(reply) => break reply,
                    None => return,
                }
            }
        }
    };
    send_h2(respond, reply, head.method == http::Method::HEAD).await;
}

/// Writes an answer on an h2 stream: whole, or streamed until the call ends or the client
/// resets the stream.
pub(crate) async fn send_h2(
    mut respond: h2::server::SendResponse<Bytes>,
    reply: Reply,
    head_only: bool,
) {
    let mut response = http::Response::new(());
    *response.status_mut() =
        http::StatusCode::from_u16(reply.status).expect("the gateway answers valid codes");
    for (name, value) in &reply.headers {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            response.headers_mut().append(*name, value);
        }
    }
    match reply.body {
        ReplyBody::Full(bytes) => {
            let end = bytes.is_empty() || head_only;
            if let Ok(mut stream) = respond.send_response(response, end) {
                if !end {
                    let _ = stream.send_data(bytes, true);
                }
            }
        }
        ReplyBody::Stream(mut chunks) => {
            let Ok(mut stream) = respond.send_response(response, false) else {
                return;
            };
            loop {
                let next = futures_lite::future::or(chunks.next(), async {
                    // A reset stream ends the call: dropping `chunks` tells the service.
                    let _ = std::future::poll_fn(|cx| stream.poll_reset(cx)).await;
                    None
                })
                .await;
                let Some(chunk) = next else {
                    let _ = stream.send_data(Bytes::new(), true);
                    return;
                };
                if stream.send_data(chunk, false).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_a_declared_method() {
        assert_eq!(methods().len(), ROUTES.len());
        assert!(methods()["/v3/watch"].client_streaming);
        assert!(methods()["/v3/maintenance/snapshot"].server_streaming);
    }

    #[test]
    fn errors_are_written_as_grpc_gateway_writes_them() {
        let reply = Reply::error(&Status::new(
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        ));
        assert_eq!(reply.status, 400);
        let ReplyBody::Full(body) = reply.body else {
            panic!("a full body")
        };
        assert_eq!(
            &body[..],
            br#"{"error":"etcdserver: key is not provided","code":3,"message":"etcdserver: key is not provided"}"#
        );
        assert_eq!(
            &stream_error_chunk(&Status::no_leader())[..],
            br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#
        );
    }
}
