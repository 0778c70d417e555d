//! The HTTP/1.1 endpoints etcd serves on its client port beside gRPC: `GET /health`,
//! `/version`, `/metrics`, `/livez` and `/readyz` (the checks are `health.rs`'s; what monitoring and load balancers probe,
//! no body read), and the JSON gateway's `/v3/...` (bodies by length or chunked).

use crate::gateway::{self, Gateway};
use crate::kv::KvService;
use crate::metrics::metrics;
use crate::service::{Services, ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};
use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A request head larger than this is refused (Go's default is 1 MiB; these endpoints take
/// no headers worth more than a few hundred bytes).
const HEAD_BYTES_MAX: usize = 8 * 1024;
const READ_CHUNK_BYTES: usize = 1024;
/// The paths served here.
const ENDPOINT_PATHS: [&str; 5] = ["/health", "/version", "/metrics", "/livez", "/readyz"];

/// Serves requests on one connection until the client closes it or asks to. `already_read`
/// holds the bytes consumed while telling HTTP/1.1 from HTTP/2. Paths under `/v3` go to the
/// JSON gateway, the only requests here with a body.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin, K: KvService>(
    mut io: S,
    already_read: Vec<u8>,
    gateway: &Gateway<K>,
) {
    let mut buf = already_read;
    loop {
        let head_bytes = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > HEAD_BYTES_MAX {
                let _ = write_response(&mut io, Reply::head_too_large(), false).await;
                return;
            }
            if !read_more(&mut io, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_bytes]).into_owned();
        buf.drain(..head_bytes);
        let request = Request::parse(&head);
        if let Some(request) = request.as_ref().filter(|r| gateway::serves(r.path)) {
            let limit = gateway::body_bytes_max(gateway.message_bytes_max);
            let body = match read_body(&mut io, &mut buf, request, limit).await {
                Ok(body) => body,
                Err(BodyError::TooLarge(bytes)) => {
                    let reply = gateway::refuse_oversized(bytes, gateway.message_bytes_max);
                    let _ = write_gateway_reply(&mut io, reply, false).await;
                    return;
                }
                Err(BodyError::Malformed) => {
                    let _ = write_response(&mut io, Reply::bad_request(), false).await;
                    return;
                }
                Err(BodyError::Closed) => return,
            };
            let header = |name: &str| request.header(name);
            let reply = gateway
                .handle(gateway::Request {
                    method: request.method,
                    path: request.path,
                    token: gateway::Request::token_from(header),
                    require_leader: gateway::Request::require_leader_from(header),
                    body,
                })
                .await;
            if let gateway::ReplyBody::Stream(_) = reply.body {
                // A stream ends the connection: it is read only to notice the client leave.
                let _ = write_gateway_reply(io, reply, request.method == "HEAD").await;
                return;
            }
            if write_gateway_reply(&mut io, reply, request.method == "HEAD")
                .await
                .is_err()
                || !request.keep_alive
            {
                return;
            }
            continue;
        }
        let reply = match &request {
            Some(r) if r.has_body() => Reply::bad_request(),
            Some(r) => route(r, &gateway.services).await,
            None => Reply::bad_request(),
        };
        let keep_alive = request.as_ref().is_some_and(|r| r.keep_alive) && reply.status != 400;
        let is_head = request.as_ref().is_some_and(|r| r.method == "HEAD");
        if write_response(&mut io, reply, is_head).await.is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads what the client sent next onto `buf`; false when the connection is over.
async fn read_more<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    match io.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

enum BodyError {
    /// More than the limit: the bytes seen so far.
    TooLarge(usize),
    Malformed,
    Closed,
}

/// The request's body (`Content-Length` or chunked), taken from `buf` and the connection;
/// a client that waits for `100 Continue` is told to send it.
async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    request: &Request<'_>,
    limit: usize,
) -> Result<Bytes, BodyError> {
    if !request.has_body() {
        return Ok(Bytes::new());
    }
    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        let _ = io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let _ = io.flush().await;
    }
    if request.chunked {
        return read_chunked(io, buf, limit).await;
    }
    let length = request.content_length.ok_or(BodyError::Malformed)?;
    if length > limit {
        return Err(BodyError::TooLarge(length));
    }
    while buf.len() < length {
        if !read_more(io, buf).await {
            return Err(BodyError::Closed);
        }
    }
    Ok(Bytes::from(buf.drain(..length).collect::<Vec<u8>>()))
}

/// A chunked body: hex size lines, each chunk, a zero chunk, then trailers to a blank line.
async fn read_chunked<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(io, buf).await?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| BodyError::Malformed)?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            while !read_line(io, buf).await?.is_empty() {}
            return Ok(Bytes::from(body));
        }
        if body.len() + size > limit {
            return Err(BodyError::TooLarge(body.len() + size));
        }
        while buf.len() < size + 2 {
            if !read_more(io, buf).await {
                return Err(BodyError::Closed);
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(BodyError::Malformed);
        }
        buf.drain(..size + 2);
    }
}

/// The next CRLF-terminated line of a chunked body, taken off `buf`.
async fn read_line<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> Result<String, BodyError> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            return Ok(line);
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err(BodyError::Malformed);
        }
        if !read_more(io, buf).await {
            return Err(BodyError::Closed);
        }
    }
}

/// Writes a gateway answer: whole with its length, or streamed in chunks while the
/// connection is watched for the client leaving (which ends the call).
async fn write_gateway_reply<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    reply: gateway::Reply,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = http::StatusCode::from_u16(reply.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut chunks = match reply.body {
        gateway::ReplyBody::Full(body) => {
            out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut bytes = out.into_bytes();
            if !head_only {
                bytes.extend_from_slice(&body);
            }
            io.write_all(&bytes).await?;
            return io.flush().await;
        }
        gateway::ReplyBody::Stream(chunks) => chunks,
    };
    out.push_str("Transfer-Encoding: chunked\r\n\r\n");
    let (mut reader, mut writer) = futures_lite::io::split(io);
    writer.write_all(out.as_bytes()).await?;
    writer.flush().await?;
    let client_left = async {
        let mut sink = [0u8; READ_CHUNK_BYTES];
        while let Ok(1..) = reader.read(&mut sink).await {}
        Ok(())
    };
    let stream = async {
        while let Some(chunk) = chunks.next().await {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            writer.write_all(&framed).await?;
            writer.flush().await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        writer.flush().await
    };
    futures_lite::future::or(stream, client_left).await
}

struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    keep_alive: bool,
    content_length: Option<usize>,
    chunked: bool,
    /// The header lines, for the few looked up by name.
    head: &'a str,
}

impl<'a> Request<'a> {
    fn parse(head: &'a str) -> Option<Self> {
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next()?.split(' ');
        let method = request_line.next()?;
        let target = request_line.next()?;
        let version = request_line.next()?;
        if !version.starts_with("HTTP/1.") {
            return None;
        }
        let mut keep_alive = version == "HTTP/1.1";
        let mut content_length = None;
        let mut chunked = false;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close")
                    && (keep_alive || value.eq_ignore_ascii_case("keep-alive"));
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.parse().ok()?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Some(Self {
            method,
            path,
            query,
            keep_alive,
            content_length,
            chunked,
            head,
        })
    }

    fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }

    /// The value of the first header called `name` (any case).
    fn header(&self, name: &str) -> Option<&'a str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn new(status: u16, reason: &'static str, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            reason,
            content_type,
            body,
        }
    }

    fn json(body: String) -> Self {
        Self::new(200, "OK", "application/json", body)
    }

    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self::new(
            status,
            reason,
            "text/plain; charset=utf-8",
            body.to_string(),
        )
    }

    fn bad_request() -> Self {
        Self::text(400, "Bad Request", "400 Bad Request")
    }

    fn head_too_large() -> Self {
        Self::text(
            431,
            "Request Header Fields Too Large",
            "431 Request Header Fields Too Large",
        )
    }
}

async fn route<K: KvService>(request: &Request<'_>, services: &Services<K>) -> Reply {
    if request.method != "GET" && request.method != "HEAD" {
        return match request.path {
            path if ENDPOINT_PATHS.contains(&path) => {
                Reply::text(405, "Method Not Allowed", "Method Not Allowed\n")
            }
            _ => Reply::text(404, "Not Found", "404 page not found\n"),
        };
    }
    if crate::health::PATHS.contains(&request.path) {
        let (status, content_type, body) = crate::health::answer(
            services.kv(),
            request.path,
            request.query,
            services.request_timeout(),
        )
        .await;
        let reason = if status == 200 {
            "OK"
        } else {
            "Service Unavailable"
        };
        return Reply::new(status, reason, content_type, body);
    }
    match request.path {
        "/version" => Reply::json(format!(
            r#"{{"etcdserver":"{ETCD_SERVER_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#
        )),
        "/metrics" => Reply::new(
            200,
            "OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics().render(ETCD_SERVER_VERSION, ETCD_CLUSTER_VERSION),
        ),
        _ => Reply::text(404, "Not Found", "404 page not found\n"),
    }
}

/// The answer (status, content type, body) to an endpoint request that came over HTTP/2: a TLS
/// port offers h2 by ALPN, so curl and Prometheus ask there, and etcd answers them. Only for
/// [`is_endpoint`] paths; any other stays gRPC's.
pub(crate) async fn h2_reply<K: KvService>(
    method: &str,
    path: &str,
    query: &str,
    services: &Services<K>,
) -> (u16, &'static str, String) {
    let request = Request {
        method,
        path,
        query,
        keep_alive: false,
        content_length: None,
        chunked: false,
        head: "",
    };
    let reply = route(&request, services).await;
    (reply.status, reply.content_type, reply.body)
}

/// Whether `path` is one of these endpoints (else, over h2, it is gRPC's).
pub(crate) fn is_endpoint(path: &str) -> bool {
    ENDPOINT_PATHS.contains(&path)
}

async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    reply: Reply,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        reply.status,
        reply.reason,
        reply.content_type,
        reply.body.len()
    );
    if !head_only {
        out.push_str(&reply.body);
    }
    io.write_all(out.as_bytes()).await?;
    io.flush().await
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_answer_as_etcd_does() {
        let cases = [
            (
                "GET /health HTTP/1.1\r\n\r\n",
                200,
                r#"{"health":"true","reason":""}"#,
            ),
            (
                "GET /version HTTP/1.1\r\nHost: x\r\n\r\n",
                200,
                r#"{"etcdserver":"3.5.1","etcdcluster":"3.5.0"}"#,
            ),
            (
                "GET /health?serializable=true HTTP/1.1\r\n\r\n",
                200,
                r#"{"health":"true","reason":""}"#,
            ),
            (
                "GET /livez?verbose HTTP/1.1\r\n\r\n",
                200,
                "[+]alarms ok\n[+]linearizable_read ok\nlivez check passed\n",
            ),
            ("GET /nothing HTTP/1.1\r\n\r\n", 404, "404 page not found\n"),
            ("POST /health HTTP/1.1\r\n\r\n", 405, "Method Not Allowed\n"),
        ];
        let config = crate::config::ServerConfig::default();
        let services = Services::new(&config, crate::kv::LocalKv::new());
        for (head, status, body) in cases {
            let request = Request::parse(head).expect(head);
            let reply = glommio::LocalExecutor::default().run(route(&request, &services));
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (status, body),
                "{head}"
            );
        }
    }

    #[test]
    fn connection_persistence_follows_http_version_and_header() {
        let cases = [
            ("GET / HTTP/1.1\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ];
        for (head, keep_alive) in cases {
            assert_eq!(
                Request::parse(head).unwrap().keep_alive,
                keep_alive,
                "{head}"
            );
        }
    }

    #[test]
    fn malformed_request_lines_are_rejected() {
        for head in [
            "GET\r\n\r\n",
            "GET / SPDY/3\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        ] {
            assert!(Request::parse(head).is_none(), "{head}");
        }
    }
}
