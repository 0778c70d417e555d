//! The HTTP/1.1 endpoints etcd serves on its client port beside gRPC: `GET /health`,
//! `/version`, `/metrics`, `/livez` and `/readyz`. Only what monitoring and load balancers probe; no request body is read.

use crate::metrics::metrics;
use crate::service::{ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A request head larger than this is refused (Go's default is 1 MiB; these endpoints take
/// no headers worth more than a few hundred bytes).
const HEAD_BYTES_MAX: usize = 8 * 1024;
const READ_CHUNK_BYTES: usize = 1024;
/// The paths served here.
const ENDPOINT_PATHS: [&str; 5] = ["/health", "/version", "/metrics", "/livez", "/readyz"];

/// Serves requests on one connection until the client closes it or asks to. `already_read`
/// holds the bytes consumed while telling HTTP/1.1 from HTTP/2.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, already_read: Vec<u8>) {
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
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_bytes]).into_owned();
        buf.drain(..head_bytes);
        let request = Request::parse(&head);
        let reply = match &request {
            Some(r) if r.has_body => Reply::bad_request(),
            Some(r) => route(r),
            None => Reply::bad_request(),
        };
        let keep_alive = request.as_ref().is_some_and(|r| r.keep_alive) && reply.status != 400;
        let is_head = request.as_ref().is_some_and(|r| r.method == "HEAD");
        if write_response(&mut io, reply, is_head).await.is_err() || !keep_alive {
            return;
        }
    }
}

struct Request<'a> {
    method: &'a str,
    path: &'a str,
    keep_alive: bool,
    has_body: bool,
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
        let mut has_body = false;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close")
                    && (keep_alive || value.eq_ignore_ascii_case("keep-alive"));
            } else if name.eq_ignore_ascii_case("content-length") {
                has_body |= value != "0";
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                has_body = true;
            }
        }
        let path = target.split('?').next().unwrap_or(target);
        Some(Self {
            method,
            path,
            keep_alive,
            has_body,
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

fn route(request: &Request<'_>) -> Reply {
    if request.method != "GET" && request.method != "HEAD" {
        return match request.path {
            path if ENDPOINT_PATHS.contains(&path) => {
                Reply::text(405, "Method Not Allowed", "Method Not Allowed\n")
            }
            _ => Reply::text(404, "Not Found", "404 page not found\n"),
        };
    }
    match request.path {
        "/health" => health(metrics().server_has_leader.get() == 1),
        "/version" => Reply::json(format!(
            r#"{{"etcdserver":"{ETCD_SERVER_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#
        )),
        "/metrics" => Reply::new(
            200,
            "OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics().render(ETCD_SERVER_VERSION, ETCD_CLUSTER_VERSION),
        ),
        // The process answers, so it is alive; it serves clients as soon as it listens.
        "/livez" | "/readyz" => Reply::text(200, "OK", "ok\n"),
        _ => Reply::text(404, "Not Found", "404 page not found\n"),
    }
}

/// The answer (status, content type, body) to an endpoint request that came over HTTP/2: a TLS
/// port offers h2 by ALPN, so curl and Prometheus ask there, and etcd answers them. `None` for
/// any other path, which stays gRPC's.
pub(crate) fn h2_reply(method: &str, path: &str) -> Option<(u16, &'static str, String)> {
    if !ENDPOINT_PATHS.contains(&path) {
        return None;
    }
    let request = Request {
        method,
        path,
        keep_alive: false,
        has_body: false,
    };
    let reply = route(&request);
    Some((reply.status, reply.content_type, reply.body))
}

/// etcd's `/health`: unhealthy, with etcd's reason, while the member knows no leader.
fn health(has_leader: bool) -> Reply {
    let metrics = metrics();
    let (status, reason, body) = if has_leader {
        metrics.server_health_success.inc();
        (200, "OK", r#"{"health":"true","reason":""}"#)
    } else {
        metrics.server_health_failures.inc();
        (
            503,
            "Service Unavailable",
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#,
        )
    };
    Reply::new(status, reason, "application/json", body.to_string())
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
            ("GET /livez HTTP/1.1\r\n\r\n", 200, "ok\n"),
            ("GET /nothing HTTP/1.1\r\n\r\n", 404, "404 page not found\n"),
            ("POST /health HTTP/1.1\r\n\r\n", 405, "Method Not Allowed\n"),
        ];
        metrics().server_has_leader.set(1);
        for (head, status, body) in cases {
            let request = Request::parse(head).expect(head);
            let reply = route(&request);
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (status, body),
                "{head}"
            );
        }
    }

    #[test]
    fn health_without_a_leader_is_503_with_etcds_reason() {
        let reply = health(false);
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body,
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#
        );
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
