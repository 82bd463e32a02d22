//! What keeps web pages out of a server on the operator's own machine. A browser lets any page
//! send requests to `127.0.0.1`; three rules, checked on every route before anything else,
//! make sure none of them does anything:
//!
//! - `Host` must name this server: `localhost`, an IP literal, or a name the operator allowed
//!   (`--allowed-host`, `[server] allowed_hosts`). A DNS-rebinding page reaches the server
//!   under its own name (`attacker.example`), which the browser sends as `Host`; it cannot send
//!   an IP literal or `localhost` as its own name. Names under `.localhost` are not accepted
//!   unless allowed: not every client resolves them to loopback without asking DNS.
//! - A request with `Origin` comes from a page: it is accepted only from the server's own
//!   origin (the same host and port as `Host`); `Origin: null` and every other origin are
//!   refused. The SDKs and other programs send no `Origin`.
//! - A request that carries a body (or a content type) must say `Content-Type:
//!   application/json`. A page can POST a form or `text/plain` to any origin without asking;
//!   JSON needs a CORS preflight, which this server never answers. A POST with no body, no
//!   content type and no `Origin` is accepted as is: browsers send `Origin` with every POST, so
//!   it is not a page's, and the published SDKs send `POST /snapshots/{name}/restore` exactly
//!   so (as do `curl -X POST` and most HTTP clients for start, stop and gc).
//!
//! The daemon's Unix socket checks only the content type: no browser can connect to it (its
//! mode is 0600, the same user's), and its client names itself `Host: agentkernel`.

use crate::envelope::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;

/// The host names a TCP server answers to besides `localhost` and IP literals.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    names: Vec<String>,
}

/// A name given to `--allowed-host` or `[server] allowed_hosts` that is not a host name.
#[derive(Debug, thiserror::Error)]
#[error(
    "allowed host {0:?} is not a host name: give a DNS name such as sandboxes.internal, without scheme, port or path (IP addresses and localhost are always accepted)"
)]
pub struct NotAHostName(pub String);

impl AllowedHosts {
    /// Loopback names and IP literals, and `names`.
    pub fn new(names: impl IntoIterator<Item = String>) -> Result<AllowedHosts, NotAHostName> {
        let mut allowed = AllowedHosts::default();
        for name in names {
            let normal = normalize(&name);
            if normal.parse::<IpAddr>().is_ok() {
                continue; // accepted anyway
            }
            if !is_dns_name(&normal) {
                return Err(NotAHostName(name));
            }
            if !allowed.names.contains(&normal) {
                allowed.names.push(normal);
            }
        }
        Ok(allowed)
    }

    /// The names beyond loopback and IP literals.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `host` (a `Host` header's host part, without port) is this server's.
    pub fn accepts(&self, host: &str) -> bool {
        let host = normalize(host);
        if host == "localhost" {
            return true;
        }
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        host.parse::<std::net::Ipv4Addr>().is_ok() || self.names.contains(&host)
    }
}

/// Lowercase, without the root's trailing dot (`Localhost.` is `localhost`).
fn normalize(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    match host.strip_suffix('.') {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => host,
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1-63 characters, 253 in all.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The request's host and port from `Host` (and the request target's authority, which must
/// agree), or why it is refused.
fn request_host(
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<(String, Option<u16>), String> {
    let Some(value) = headers.get(header::HOST) else {
        return Err("the request has no Host header".to_string());
    };
    let text = value
        .to_str()
        .map_err(|_| "the Host header is not text".to_string())?;
    let parsed =
        parse_authority(text).ok_or_else(|| format!("Host {text:?} is not a host name"))?;
    if let Some(target) = uri.authority()
        && parse_authority(target.as_str()) != Some(parsed.clone())
    {
        return Err(format!(
            "the request target names {target} but Host says {text:?}"
        ));
    }
    Ok(parsed)
}

/// `host[:port]` as (lowercase host, port); IPv6 hosts keep their brackets.
fn parse_authority(text: &str) -> Option<(String, Option<u16>)> {
    let authority: axum::http::uri::Authority = text.trim().parse().ok()?;
    if authority.as_str().contains('@') {
        return None; // user info has no place in Host or Origin
    }
    let port = authority.port().map(|p| p.as_u16());
    Some((normalize(authority.host()), port))
}

pub async fn check_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(hosts) = &state.hosts
        && let Err(e) = check_browser_rules(hosts, &req)
    {
        return e.into_response();
    }
    if let Err(e) = check_content_type(&req) {
        return e.into_response();
    }
    next.run(req).await
}

/// `Host` and `Origin` (TCP servers only).
fn check_browser_rules(hosts: &AllowedHosts, req: &Request) -> Result<(), ApiError> {
    let (host, port) = request_host(req.headers(), req.uri()).map_err(|why| {
        forbidden(format!(
            "{why}: this server answers to localhost, IP addresses and the names it is given. Call it as http://127.0.0.1:PORT, or allow the name with `agentkernel serve --allowed-host NAME` (or `[server] allowed_hosts`)"
        ))
    })?;
    if !hosts.accepts(&host) {
        return Err(forbidden(format!(
            "requests for host {host:?} are refused (a web page could reach this server under that name through DNS rebinding): call it as http://127.0.0.1:PORT or http://localhost:PORT, or allow the name with `agentkernel serve --allowed-host {host}` (or `[server] allowed_hosts`)"
        )));
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("(not text)");
    if !same_origin(origin, &host, port) {
        return Err(forbidden(format!(
            "requests from web pages are refused (Origin {origin:?} is not this server): call the API from a program or an SDK, which send no Origin header"
        )));
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a request to `host`:`port`.
fn same_origin(origin: &str, host: &str, port: Option<u16>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // `null`, or not an origin
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let Some((origin_host, origin_port)) = parse_authority(authority) else {
        return false;
    };
    // A Host without a port was sent for the scheme's default port.
    origin_host == host && origin_port.unwrap_or(default_port) == port.unwrap_or(default_port)
}

/// Whether `Content-Type` is `application/json` (parameters such as `charset` allowed).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// A body, or a content type, must be JSON; see the module's documentation for the one
/// exception.
fn check_content_type(req: &Request) -> Result<(), ApiError> {
    let method = req.method();
    if !matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return Ok(());
    }
    let headers = req.headers();
    if is_json(headers) {
        return Ok(());
    }
    let has_type = headers.contains_key(header::CONTENT_TYPE);
    let empty_body = http_body::Body::size_hint(req.body()).exact() == Some(0);
    let from_a_page = headers.contains_key(header::ORIGIN);
    let bodyless = !has_type && empty_body;
    // A DELETE (or PUT, PATCH) is never sent cross-site without a preflight; a POST is, so
    // a body-less one must also come without Origin.
    if bodyless && (*method != Method::POST || !from_a_page) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        if bodyless {
            "a POST from a web page is refused: send it with `Content-Type: application/json` and a JSON body from a program or an SDK".to_string()
        } else {
            match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
                Some(t) => format!(
                    "the body is {t:?}: send it as JSON with `Content-Type: application/json`"
                ),
                None => "the body has no content type: send it as JSON with `Content-Type: application/json`".to_string(),
            }
        },
    ))
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)], body: &'static str) -> Request {
        let mut builder = axum::http::Request::builder().method(method).uri("/gc");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder
            .body(axum::body::Body::from(body))
            .expect("a request")
    }

    #[test]
    fn loopback_names_ip_literals_and_allowed_names_are_this_server() {
        let hosts = AllowedHosts::new(["Sandboxes.Internal.".to_string(), "10.0.0.1".to_string()])
            .expect("valid names");
        assert_eq!(hosts.names(), ["sandboxes.internal"]);
        for host in [
            "localhost",
            "LOCALHOST.",
            "127.0.0.1",
            "192.168.1.20",
            "[::1]",
            "[fe80::1]",
            "sandboxes.internal",
        ] {
            assert!(hosts.accepts(host), "{host}");
        }
        for host in [
            "attacker.example",
            "evil.localhost",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "::1",
            "[not-an-ip]",
            "0x7f.1",
            "",
        ] {
            assert!(!hosts.accepts(host), "{host}");
        }
        for bad in ["http://x.example", "x.example:80", "a/b", "", "[::1]"] {
            assert!(AllowedHosts::new([bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_headers_parse_with_their_ports() {
        assert_eq!(
            parse_authority("LocalHost:18888"),
            Some(("localhost".to_string(), Some(18888)))
        );
        assert_eq!(
            parse_authority("[::1]:80"),
            Some(("[::1]".to_string(), Some(80)))
        );
        assert_eq!(
            parse_authority("a.example"),
            Some(("a.example".to_string(), None))
        );
        assert_eq!(parse_authority("user@a.example"), None);
        assert_eq!(parse_authority("a b"), None);
    }

    #[test]
    fn only_the_servers_own_origin_is_same_origin() {
        assert!(same_origin(
            "http://127.0.0.1:18888",
            "127.0.0.1",
            Some(18888)
        ));
        assert!(same_origin("http://[::1]:18888", "[::1]", Some(18888)));
        assert!(same_origin(
            "https://sandboxes.internal",
            "sandboxes.internal",
            None
        ));
        assert!(same_origin("http://localhost", "localhost", Some(80)));
        assert!(!same_origin(
            "http://127.0.0.1:9999",
            "127.0.0.1",
            Some(18888)
        ));
        assert!(!same_origin("http://localhost:8080", "localhost", None));
        assert!(!same_origin(
            "http://evil.example:18888",
            "127.0.0.1",
            Some(18888)
        ));
        assert!(!same_origin("null", "127.0.0.1", Some(18888)));
        assert!(!same_origin("file://", "127.0.0.1", Some(18888)));
    }

    #[test]
    fn bodies_must_be_json_but_an_sdks_bare_post_passes() {
        let json = [("content-type", "application/json; charset=utf-8")];
        assert!(check_content_type(&request(Method::POST, &json, "{}")).is_ok());
        // The SDKs' `POST /snapshots/{name}/restore`: no body, no type, no Origin.
        assert!(check_content_type(&request(Method::POST, &[], "")).is_ok());
        assert!(check_content_type(&request(Method::DELETE, &[], "")).is_ok());
        assert!(check_content_type(&request(Method::GET, &[], "")).is_ok());
        for (method, headers, body) in [
            (Method::POST, &[("origin", "http://evil.example")][..], ""),
            (Method::POST, &[("content-type", "text/plain")][..], ""),
            (
                Method::POST,
                &[("content-type", "application/x-www-form-urlencoded")][..],
                "a=b",
            ),
            (Method::POST, &[][..], "{}"),
            (Method::PUT, &[("content-type", "text/plain")][..], "{}"),
            (Method::PATCH, &[][..], "{}"),
            (
                Method::DELETE,
                &[("content-type", "multipart/form-data")][..],
                "",
            ),
        ] {
            let e = check_content_type(&request(method.clone(), headers, body))
                .expect_err(&format!("{method} {headers:?} {body:?}"));
            assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
    }
}
