//! Rewriting one relayed HTTP/1.1 request: the `Host` check, hop-by-hop headers, and the
//! injection of bound secrets. Pure functions over `http` types, so they are tested alone.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};

use super::{Binding, normalize_host};

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1), besides those the
/// `Connection` header names.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A response made by the proxy itself: `text/plain` with `body` and a newline.
pub(crate) fn local_response(status: StatusCode, body: &str, close: bool) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The host a request is for, from its `Host` header (port dropped), normalized; `None` if
/// the header is missing, repeated, or unreadable, or if an absolute-form target names
/// another host.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let authority: hyper::http::uri::Authority = value.to_str().ok()?.parse().ok()?;
    let host = normalize_host(
        authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']'),
    );
    if let Some(target) = req.uri().host() {
        let target = normalize_host(target.trim_start_matches('[').trim_end_matches(']'));
        if target != host {
            return None;
        }
    }
    Some(host)
}

/// Removes the hop-by-hop headers and those the `Connection` header lists.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Replaces every occurrence of `token` in `value` by `with`; `None` if there is none.
fn replace_token(value: &[u8], token: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    if token.is_empty() || value.len() < token.len() {
        return None;
    }
    let mut out = Vec::with_capacity(value.len());
    let mut found = false;
    let mut i = 0;
    while i < value.len() {
        if value[i..].starts_with(token) {
            out.extend_from_slice(with);
            i += token.len();
            found = true;
        } else {
            out.push(value[i]);
            i += 1;
        }
    }
    found.then_some(out)
}

/// Prepares a request from the sandbox for `host`: checks its `Host`, drops hop-by-hop
/// headers, turns an absolute-form target into origin form, replaces placeholder tokens and
/// sets each binding's header. `Err` is the response to give the client instead; nothing
/// of the request may then be sent upstream.
#[allow(clippy::result_large_err)]
pub(crate) fn prepare_request<B>(
    mut req: Request<B>,
    host: &str,
    bindings: &[Binding],
) -> Result<Request<B>, Response<Full<Bytes>>> {
    let host = normalize_host(host);
    match request_host(&req) {
        Some(asked) if asked == host => {}
        _ => {
            return Err(local_response(
                StatusCode::MISDIRECTED_REQUEST,
                &format!(
                    "agentkernel: this connection is for {host}; the request's Host header \
                     names another host (or none), so it was not forwarded"
                ),
                false,
            ));
        }
    }
    strip_hop_by_hop(req.headers_mut());
    if req.uri().authority().is_some() {
        let origin = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        match origin.parse::<Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                return Err(local_response(
                    StatusCode::BAD_REQUEST,
                    "agentkernel: the request target cannot be read",
                    false,
                ));
            }
        }
    }

    let bad_secret = |header: &str| {
        local_response(
            StatusCode::BAD_GATEWAY,
            &format!(
                "agentkernel: the secret bound to {host} cannot be sent in the {header} \
                 header (not a valid header name or value); no secret was sent"
            ),
            true,
        )
    };
    let mine: Vec<&Binding> = bindings.iter().filter(|b| b.applies_to(&host)).collect();
    for binding in &mine {
        let Some(token) = binding.placeholder.as_deref() else {
            continue;
        };
        for (_, value) in req.headers_mut().iter_mut() {
            if let Some(replaced) = replace_token(
                value.as_bytes(),
                token.as_bytes(),
                binding.secret().as_bytes(),
            ) {
                let mut new =
                    HeaderValue::from_bytes(&replaced).map_err(|_| bad_secret(&binding.header))?;
                new.set_sensitive(true);
                *value = new;
            }
        }
    }
    for binding in &mine {
        let name = HeaderName::from_bytes(binding.header.as_bytes())
            .map_err(|_| bad_secret(&binding.header))?;
        let mut value = HeaderValue::from_bytes(binding.value.as_bytes())
            .map_err(|_| bad_secret(&binding.header))?;
        value.set_sensitive(true);
        let headers = req.headers_mut();
        headers.remove(&name);
        headers.insert(name, value);
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(header: &str, value: &str, placeholder: Option<&str>) -> Binding {
        Binding {
            host: "api.example.com".into(),
            header: header.into(),
            value: value.into(),
            placeholder: placeholder.map(str::to_string),
        }
    }

    fn request(host: &str) -> hyper::http::request::Builder {
        Request::builder().uri("/v1").header("host", host)
    }

    #[test]
    fn sets_bound_header_replacing_every_value() {
        let req = request("api.example.com:443")
            .header("authorization", "Bearer ak-proxy-managed")
            .header("authorization", "Basic other")
            .body(())
            .expect("request");
        let b = binding("authorization", "Bearer sk-1", None);
        let out = prepare_request(req, "api.example.com", &[b]).expect("forwarded");
        let values: Vec<_> = out.headers().get_all("authorization").iter().collect();
        assert_eq!(values, vec!["Bearer sk-1"]);
        assert!(values[0].is_sensitive());
    }

    #[test]
    fn other_host_is_misdirected() {
        let req = request("evil.example.com")
            .header("authorization", "Bearer ak-proxy-managed")
            .body(())
            .expect("request");
        let b = binding("authorization", "Bearer sk-1", None);
        let resp = prepare_request(req, "api.example.com", &[b]).expect_err("421");
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
    }

    #[test]
    fn missing_or_repeated_host_is_misdirected() {
        let none = Request::builder().uri("/").body(()).expect("request");
        assert!(prepare_request(none, "api.example.com", &[]).is_err());
        let two = request("api.example.com")
            .header("host", "evil.example.com")
            .body(())
            .expect("request");
        assert!(prepare_request(two, "api.example.com", &[]).is_err());
    }

    #[test]
    fn absolute_form_must_agree_and_becomes_origin_form() {
        let ok = Request::builder()
            .uri("http://API.example.com./v1?q=1")
            .header("host", "api.example.com")
            .body(())
            .expect("request");
        let out = prepare_request(ok, "api.example.com", &[]).expect("forwarded");
        assert_eq!(out.uri(), "/v1?q=1");
        let bad = Request::builder()
            .uri("http://evil.example.com/v1")
            .header("host", "api.example.com")
            .body(())
            .expect("request");
        assert!(prepare_request(bad, "api.example.com", &[]).is_err());
    }

    #[test]
    fn placeholder_is_replaced_in_any_header() {
        let req = request("api.example.com")
            .header("x-token", "pre-ak-ph-1-post ak-ph-1")
            .header("cookie", "a=ak-ph-1")
            .body(())
            .expect("request");
        let b = binding("x-api-key", "sk-2", Some("ak-ph-1"));
        let out = prepare_request(req, "api.example.com", &[b]).expect("forwarded");
        assert_eq!(out.headers()["x-token"], "pre-sk-2-post sk-2");
        assert_eq!(out.headers()["cookie"], "a=sk-2");
        assert_eq!(out.headers()["x-api-key"], "sk-2");
    }

    #[test]
    fn bindings_for_other_hosts_are_ignored() {
        let req = request("api.example.com").body(()).expect("request");
        let mut b = binding("x-api-key", "sk-2", None);
        b.host = "other.example.com".into();
        let out = prepare_request(req, "api.example.com", &[b]).expect("forwarded");
        assert!(out.headers().get("x-api-key").is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let req = request("api.example.com")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "1")
            .header("proxy-authorization", "Basic x")
            .header("x-kept", "1")
            .body(())
            .expect("request");
        let out = prepare_request(req, "api.example.com", &[]).expect("forwarded");
        assert!(out.headers().get("x-private").is_none());
        assert!(out.headers().get("proxy-authorization").is_none());
        assert!(out.headers().get("connection").is_none());
        assert_eq!(out.headers()["x-kept"], "1");
    }

    #[test]
    fn invalid_secret_is_not_sent() {
        let req = request("api.example.com").body(()).expect("request");
        let b = binding("x-api-key", "line\nbreak", None);
        let resp = prepare_request(req, "api.example.com", &[b]).expect_err("502");
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn replace_token_cases() {
        assert_eq!(replace_token(b"abc", b"", b"x"), None);
        assert_eq!(replace_token(b"abc", b"zz", b"x"), None);
        assert_eq!(replace_token(b"abab", b"ab", b"x"), Some(b"xx".to_vec()));
    }
}
