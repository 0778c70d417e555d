//! The HTTP/1.1 endpoints etcd serves on its client port beside gRPC: `GET /health`,
//! `/version`, `/metrics`, `/livez` and `/readyz` (the checks are `health.rs`'s; what monitoring and load balancers probe,
//! no body read), and the JSON gateway's `/v3/...` (bodies by length or chunked).

use crate::gateway::{self, Gateway, ReplyBody};
use crate::kv::KvService;
use crate::metrics::metrics;
use crate::mux::{self, Route};
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
/// JSON gateway; the endpoints read no body (one sent is dropped).
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin, K: KvService>(
    mut io: S,
    already_read: Vec<u8>,
    gateway: &Gateway<K>,
) {
    let mut buf = already_read;
    let limit = gateway::body_bytes_max(gateway.message_bytes_max);
    loop {
        let head_bytes = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > HEAD_BYTES_MAX {
                let _ = write_response(&mut io, Reply::head_too_large()).await;
                return;
            }
            if !read_more(&mut io, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_bytes]).into_owned();
        buf.drain(..head_bytes);
        let routed = Request::parse(&head).map(|r| {
            let route = mux::route(r.method, r.path, r.query);
            (r, route)
        });
        let (request, route) = match routed {
            Some((request, route)) if !matches!(route, Route::BadRequest) => (request, route),
            _ => {
                let _ = write_response(&mut io, Reply::bad_request()).await;
                return;
            }
        };
        // The body: the gateway's request, or else read and dropped, as Go's server does
        // before it reuses the connection.
        let body = match read_body(&mut io, &mut buf, &request, limit).await {
            Ok(body) => Ok(body),
            Err(BodyError::TooLarge(bytes)) => Err(bytes),
            Err(BodyError::Malformed) => {
                let _ = write_response(&mut io, Reply::bad_request()).await;
                return;
            }
            Err(BodyError::Closed) => return,
        };
        let head_only = request.method == "HEAD";
        let reply = match (route, body) {
            (Route::BadRequest, _) => unreachable!("answered above"),
            (Route::Answered(reply), _) => reply,
            (Route::Endpoint(path), _) => {
                let routed = Request {
                    path: &path,
                    ..request.clone()
                };
                endpoint(&routed, &gateway.services).await
            }
            // A body past the limit was read to its end, so the connection can go on.
            (Route::Gateway(_), Err(bytes)) => {
                gateway::refuse_oversized(bytes, gateway.message_bytes_max)
            }
            (Route::Gateway(path), Ok(body)) => {
                let header = |name: &str| request.header(name);
                let handled = gateway.handle(gateway::Request {
                    method: request.method,
                    path: &path,
                    token: gateway::Request::token_from(header),
                    require_leader: gateway::Request::require_leader_from(header),
                    body,
                });
                // The connection ending while the call runs is the client leaving: dropping
                // the call tells the service, as Go's server cancels a request's context (a
                // waiting Lock or Campaign then takes its key back). Bytes sent meanwhile are
                // kept for the next request, up to the limit.
                let client_left = async {
                    while read_more(&mut io, &mut buf).await {
                        if buf.len() > limit {
                            std::future::pending::<()>().await;
                        }
                    }
                    None
                };
                match futures_lite::future::or(async { Some(handled.await) }, client_left).await {
                    Some(reply) => reply,
                    None => return,
                }
            }
        };
        if let gateway::ReplyBody::Stream(_) = reply.body {
            // A stream ends the connection: it is read only to notice the client leave.
            let _ = write_gateway_reply(io, reply, head_only).await;
            return;
        }
        if write_gateway_reply(&mut io, reply, head_only)
            .await
            .is_err()
            || !request.keep_alive
        {
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
    /// More than the limit: the body's length. It was read to its end and dropped, so the
    /// client, which may not look for an answer before it has sent everything (etcd reads a
    /// body whole), gets the refusal rather than a reset connection.
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
        skip(io, buf, length).await?;
        return Err(BodyError::TooLarge(length));
    }
    while buf.len() < length {
        if !read_more(io, buf).await {
            return Err(BodyError::Closed);
        }
    }
    Ok(Bytes::from(buf.drain(..length).collect::<Vec<u8>>()))
}

/// Reads `length` bytes of body, from `buf` first, and drops them.
async fn skip<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    length: usize,
) -> Result<(), BodyError> {
    let mut left = length;
    loop {
        let taken = left.min(buf.len());
        buf.drain(..taken);
        left -= taken;
        if left == 0 {
            return Ok(());
        }
        if !read_more(io, buf).await {
            return Err(BodyError::Closed);
        }
    }
}

/// A chunked body: hex size lines, each chunk, a zero chunk, then trailers to a blank line.
async fn read_chunked<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let mut body = Vec::new();
    // Past the limit, chunks are only counted.
    let mut length = 0usize;
    loop {
        let line = read_line(io, buf).await?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| BodyError::Malformed)?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            while !read_line(io, buf).await?.is_empty() {}
            return match length > limit {
                true => Err(BodyError::TooLarge(length)),
                false => Ok(Bytes::from(body)),
            };
        }
        length = length.saturating_add(size);
        if length > limit {
            body = Vec::new();
            skip(io, buf, size).await?;
        } else {
            while buf.len() < size {
                if !read_more(io, buf).await {
                    return Err(BodyError::Closed);
                }
            }
            body.extend(buf.drain(..size));
        }
        while buf.len() < 2 {
            if !read_more(io, buf).await {
                return Err(BodyError::Closed);
            }
        }
        if &buf[..2] != b"\r\n" {
            return Err(BodyError::Malformed);
        }
        buf.drain(..2);
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

#[derive(Clone)]
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

/// Go's server's own refusals, before any handler: no CORS headers, the connection closed.
struct Reply {
    status: u16,
    reason: &'static str,
    body: &'static str,
}

impl Reply {
    fn bad_request() -> Self {
        Reply {
            status: 400,
            reason: "Bad Request",
            body: "400 Bad Request",
        }
    }

    fn head_too_large() -> Self {
        Reply {
            status: 431,
            reason: "Request Header Fields Too Large",
            body: "431 Request Header Fields Too Large",
        }
    }
}

/// An endpoint's answer (`/health`, `/version`, `/metrics`, `/livez`, `/readyz`), or Go's
/// ServeMux's 404.
async fn endpoint<K: KvService>(request: &Request<'_>, services: &Services<K>) -> gateway::Reply {
    let not_found = || gateway::Reply::text(404, Some("404 page not found"));
    if request.method != "GET" && request.method != "HEAD" {
        if !ENDPOINT_PATHS.contains(&request.path) {
            return not_found();
        }
        let mut reply = gateway::Reply::text(405, None);
        reply.headers.push(("Allow", "GET".to_string()));
        return reply;
    }
    let answer = |status, content_type, body: String| {
        gateway::Reply::new(
            status,
            Some(content_type),
            ReplyBody::Full(Bytes::from(body)),
        )
    };
    if crate::health::PATHS.contains(&request.path) {
        let (status, content_type, body) = crate::health::answer(
            services.kv(),
            request.path,
            request.query,
            services.request_timeout(),
        )
        .await;
        return answer(status, content_type, body);
    }
    match request.path {
        "/version" => answer(
            200,
            "application/json",
            format!(
                r#"{{"etcdserver":"{ETCD_SERVER_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#
            ),
        ),
        "/metrics" => answer(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics().render(ETCD_SERVER_VERSION, ETCD_CLUSTER_VERSION),
        ),
        _ => not_found(),
    }
}

/// An endpoint's answer to a request that came over HTTP/2: a TLS port offers h2 by ALPN, so
/// curl and Prometheus ask there, and etcd answers them.
pub(crate) async fn h2_endpoint<K: KvService>(
    method: &str,
    path: &str,
    query: &str,
    services: &Services<K>,
) -> gateway::Reply {
    let request = Request {
        method,
        path,
        query,
        keep_alive: false,
        content_length: None,
        chunked: false,
        head: "",
    };
    endpoint(&request, services).await
}

async fn write_response<S: AsyncWrite + Unpin>(io: &mut S, reply: Reply) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n",
        reply.status, reply.reason,
    );
    out.push_str(reply.body);
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
            (
                "POST /nothing HTTP/1.1\r\n\r\n",
                404,
                "404 page not found\n",
            ),
            ("POST /health HTTP/1.1\r\n\r\n", 405, "Method Not Allowed\n"),
        ];
        let config = crate::config::ServerConfig::default();
        let services = Services::new(&config, crate::kv::LocalKv::new());
        for (head, status, body) in cases {
            let request = Request::parse(head).expect(head);
            let reply = glommio::LocalExecutor::default().run(endpoint(&request, &services));
            let ReplyBody::Full(got) = reply.body else {
                panic!("{head}: a whole body");
            };
            assert_eq!(
                (reply.status, &got[..]),
                (status, body.as_bytes()),
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
