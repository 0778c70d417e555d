//! Where an HTTP request on the client port goes, decided as etcd 3.5's front decides it: Go's
//! server parses the target (a bad escape or a control byte is a 400 before any handler),
//! etcd's access controller reads `/v3beta/...` as `/v3/...`, puts its CORS headers on every
//! answer and answers OPTIONS itself, and Go's `ServeMux` redirects a path that is not clean
//! (`//`, `.`, `..`) or names the `/v3` subtree without its slash, then sends `/v3/...` to the
//! JSON gateway and the rest to the endpoints (`/health`, `/version`, ...). Shared by the
//! HTTP/1.1 and h2 sides, so both answer alike.

use crate::gateway::{Reply, ReplyBody};
use bytes::Bytes;

/// The old gateway prefix etcd 3.5 still answers, read as `/v3/`.
const BETA_PREFIX: &str = "/v3beta/";
const GATEWAY_PREFIX: &str = "/v3/";
/// The gateway's subtree without its slash, which Go's `ServeMux` redirects to the subtree.
const GATEWAY_ROOT: &str = "/v3";

pub(crate) enum Route {
    /// Go's server refuses the target: 400, then the connection closes.
    BadRequest,
    /// Answered before any handler (OPTIONS, a redirect).
    Answered(Reply),
    /// The JSON gateway, at this path.
    Gateway(String),
    /// The endpoints, at this path.
    Endpoint(String),
}

pub(crate) fn route(method: &str, raw_path: &str, query: &str) -> Route {
    if raw_path
        .bytes()
        .chain(query.bytes())
        .any(|b| b < 0x20 || b == 0x7f)
    {
        return Route::BadRequest;
    }
    let Some(mut path) = percent_decode(raw_path) else {
        return Route::BadRequest;
    };
    if let Some(rest) = path.strip_prefix(BETA_PREFIX) {
        path = format!("{GATEWAY_PREFIX}{rest}");
    }
    if method == "OPTIONS" {
        return Route::Answered(Reply::new(200, None, ReplyBody::Full(Bytes::new())));
    }
    let clean = clean_path(&path);
    let with_query = |location: String| match query.is_empty() {
        true => location,
        false => format!("{location}?{query}"),
    };
    if clean == GATEWAY_ROOT {
        return Route::Answered(Reply::redirect(method, &with_query(GATEWAY_PREFIX.into())));
    }
    if clean != path {
        return Route::Answered(Reply::redirect(method, &with_query(escape_path(&clean))));
    }
    match clean.starts_with(GATEWAY_PREFIX) {
        true => Route::Gateway(clean),
        false => Route::Endpoint(clean),
    }
}

/// Go's `url.PathUnescape`: `%XX` to its byte; a `%` without two hex digits is an error.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `ServeMux` `cleanPath`: `path.Clean`, rooted, keeping a trailing slash.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if path.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// Go's `url.URL.EscapedPath` for a path it has no raw form of.
fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => out.push(byte as char),
            b'-' | b'_' | b'.' | b'~' | b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'='
            | b'@' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Go's `html.EscapeString`, which `http.Redirect` writes the location's link with.
pub(crate) fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(route: Route) -> Option<(u16, String)> {
        match route {
            Route::Answered(reply) => {
                let location = reply
                    .headers
                    .iter()
                    .find(|(name, _)| *name == "Location")
                    .map(|(_, value)| value.clone())
                    .unwrap_or_default();
                Some((reply.status, location))
            }
            _ => None,
        }
    }

    #[test]
    fn paths_route_as_etcds_front_routes_them() {
        let gateway = |path: &str, query: &str| match route("POST", path, query) {
            Route::Gateway(path) => Some(path),
            _ => None,
        };
        assert_eq!(gateway("/v3/kv/range", "").as_deref(), Some("/v3/kv/range"));
        assert_eq!(
            gateway("/v3beta/kv/range", "").as_deref(),
            Some("/v3/kv/range")
        );
        assert_eq!(
            gateway("/v3/kv/%72ange", "").as_deref(),
            Some("/v3/kv/range")
        );
        assert_eq!(gateway("/v3/", "").as_deref(), Some("/v3/"));
        assert!(matches!(route("GET", "/health", ""), Route::Endpoint(p) if p == "/health"));
        assert!(matches!(route("GET", "/v3beta", ""), Route::Endpoint(p) if p == "/v3beta"));
        assert!(matches!(route("POST", "/v3/%zz", ""), Route::BadRequest));
        assert!(matches!(route("POST", "/v3/%4", ""), Route::BadRequest));
        assert!(matches!(route("POST", "/v3/\u{1}", ""), Route::BadRequest));
        assert_eq!(
            location(route("OPTIONS", "//x", "")),
            Some((200, String::new()))
        );
        for (path, query, want) in [
            ("/v3", "", "/v3/"),
            ("/v3", "a=1", "/v3/?a=1"),
            ("//v3", "", "/v3/"),
            ("//v3/kv/range", "x=1", "/v3/kv/range?x=1"),
            ("/v3/./kv/range", "", "/v3/kv/range"),
            ("/v3/kv/ran%20ge/../range", "", "/v3/kv/range"),
            ("/v3/kv/ran%20ge/./", "", "/v3/kv/ran%20ge/"),
            ("/a/../../b", "", "/b"),
            ("/v3beta//kv", "", "/v3/kv"),
        ] {
            assert_eq!(
                location(route("POST", path, query)),
                Some((301, want.to_string())),
                "{path}"
            );
        }
    }

    #[test]
    fn a_redirect_links_its_location_for_get_only() {
        let Route::Answered(reply) = route("GET", "/v3", "a=1&b=<2>") else {
            panic!("a redirect");
        };
        let ReplyBody::Full(body) = reply.body else {
            panic!("a whole body");
        };
        assert_eq!(
            &body[..],
            b"<a href=\"/v3/?a=1&amp;b=&lt;2&gt;\">Moved Permanently</a>.\n\n"
        );
        let Route::Answered(reply) = route("POST", "/v3", "") else {
            panic!("a redirect");
        };
        assert!(matches!(reply.body, ReplyBody::Full(body) if body.is_empty()));
    }
}
