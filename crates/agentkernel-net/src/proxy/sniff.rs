//! Recognising what a client sends first, from bytes peeked off the socket: a TLS ClientHello
//! and its server name (SNI), or an HTTP/1.x request head and its Host. Every parser here is
//! bounded by the slice it gets and answers "need more", "not this" or a result; none panics
//! on garbage.

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A TLS ClientHello, with its server name if it has a usable one.
    Tls(Option<String>),
    /// An HTTP/1.x request, with its Host (without port) if it has exactly one usable one.
    Http(Option<String>),
    /// Anything else.
    Other,
}

/// Classifies `buf`; `None` means the bytes so far are a prefix of something recognisable and
/// more are needed. With `last` (no more bytes will come) the answer is always `Some`.
pub(crate) fn classify(buf: &[u8], last: bool) -> Option<Kind> {
    if buf.first() == Some(&0x16) {
        return match client_hello_sni(buf) {
            Tls::Hello(name) => Some(Kind::Tls(name)),
            Tls::NoHello => Some(Kind::Other),
            Tls::NeedMore if last => Some(Kind::Tls(None)),
            Tls::NeedMore => None,
        };
    }
    match method_prefix(buf) {
        Prefix::No => Some(Kind::Other),
        Prefix::Partial if last => Some(Kind::Other),
        Prefix::Partial => None,
        Prefix::Yes => match parse_head(buf) {
            Ok(Some(head)) => Some(Kind::Http(
                head.host()
                    .and_then(|h| split_authority(h).ok())
                    .map(|(h, _)| h),
            )),
            Err(_) => Some(Kind::Http(None)),
            Ok(None) if last => Some(Kind::Http(None)),
            Ok(None) => None,
        },
    }
}

/// How far a TLS ClientHello could be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tls {
    NeedMore,
    NoHello,
    Hello(Option<String>),
}

/// The largest TLS record payload a ClientHello may come in (2^14 plus expansion slack).
const MAX_RECORD: usize = 16384 + 2048;

/// Reads the handshake records at the start of `buf` and, once the whole ClientHello is
/// there, its server name.
pub(crate) fn client_hello_sni(buf: &[u8]) -> Tls {
    let mut handshake = Vec::new();
    let mut pos = 0;
    let mut first_record = true;
    loop {
        let Some(header) = buf.get(pos..pos + 5) else {
            return Tls::NeedMore;
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != 0x16 || header[1] != 3 || len == 0 || len > MAX_RECORD {
            return if pos == 0 {
                Tls::NoHello
            } else {
                Tls::Hello(None)
            };
        }
        let Some(payload) = buf.get(pos + 5..pos + 5 + len) else {
            return Tls::NeedMore;
        };
        handshake.extend_from_slice(payload);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return if first_record {
                    Tls::NoHello
                } else {
                    Tls::Hello(None)
                };
            }
            let body_len = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if let Some(body) = handshake.get(4..4 + body_len) {
                return Tls::Hello(hello_server_name(body));
            }
        }
        first_record = false;
    }
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The `host_name` of the server_name extension in a ClientHello body, if well formed.
fn hello_server_name(body: &[u8]) -> Option<String> {
    let mut r = Reader { buf: body };
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut extensions = Reader { buf: r.vec16()? };
    while !extensions.buf.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader {
            buf: Reader { buf: data }.vec16()?,
        };
        while !list.buf.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                return host_name(name);
            }
        }
        return None;
    }
    None
}

/// `raw` as a lowercase host name if it is one (letters, digits, '-', '_', '.').
pub(crate) fn host_name(raw: &[u8]) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 253
        && raw
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    ok.then(|| String::from_utf8_lossy(raw).to_ascii_lowercase())
}

const METHODS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

enum Prefix {
    No,
    Partial,
    Yes,
}

/// Whether `buf` starts with an HTTP method and a space.
fn method_prefix(buf: &[u8]) -> Prefix {
    let mut partial = false;
    for m in METHODS {
        let want = m.as_bytes();
        if buf.len() > want.len() {
            if buf.starts_with(want) && buf[want.len()] == b' ' {
                return Prefix::Yes;
            }
        } else if want.starts_with(buf) {
            partial = true;
        }
    }
    if partial { Prefix::Partial } else { Prefix::No }
}

/// An HTTP/1.x request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// Bytes from the start of the request to the end of the blank line after the headers.
    pub len: usize,
}

impl Head {
    /// The Host header's value, if there is exactly one.
    pub fn host(&self) -> Option<&str> {
        let mut hosts = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"));
        let first = hosts.next()?;
        hosts.next().is_none().then_some(first.1.as_str())
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` if it does not end yet.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "the request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/1.") {
        return Err("malformed request line");
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        if name.is_empty() || !name.chars().all(token) {
            return Err("malformed header name");
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        len: end + 4,
    }))
}

/// Splits `host[:port]` or `[v6][:port]` into a lowercase host (brackets removed) and port.
pub(crate) fn split_authority(authority: &str) -> Result<(String, Option<u16>), &'static str> {
    let bad = "malformed host (write host:port)";
    if authority.contains(['@', '/', ' ']) {
        return Err(bad);
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(bad)?),
        };
        (v6, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad);
    }
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| bad))
        .transpose()?;
    Ok((host.to_ascii_lowercase(), port))
}

/// An absolute `http://` URI split into host, port (default 80) and origin-form path.
pub(crate) fn split_absolute_uri(uri: &str) -> Result<(String, u16, String), &'static str> {
    let scheme_end = uri.find("://").ok_or("not an absolute URI")?;
    if !uri[..scheme_end].eq_ignore_ascii_case("http") {
        return Err("only http:// URIs can be proxied this way; use CONNECT for https");
    }
    let rest = &uri[scheme_end + 3..];
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let (host, port) = split_authority(authority)?;
    let path = match path.split('#').next().unwrap_or_default() {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Ok((host, port.unwrap_or(80), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record carrying `sni` (or no SNI extension).
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        // An unrelated extension first (supported_versions).
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = sni {
            let n = name.len() as u16;
            ext.extend_from_slice(&[0, 0]);
            ext.extend_from_slice(&(n + 5).to_be_bytes());
            ext.extend_from_slice(&(n + 3).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&n.to_be_bytes());
            ext.extend_from_slice(name.as_bytes());
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_is_read_from_whole_hellos_only() {
        let hello = client_hello(Some("API.Example.com"));
        assert_eq!(
            client_hello_sni(&hello),
            Tls::Hello(Some("api.example.com".into()))
        );
        for cut in 0..hello.len() {
            assert_eq!(
                client_hello_sni(&hello[..cut]),
                Tls::NeedMore,
                "cut at {cut}"
            );
        }
        assert_eq!(client_hello_sni(&client_hello(None)), Tls::Hello(None));
        assert_eq!(
            classify(&client_hello(Some("a.test")), false),
            Some(Kind::Tls(Some("a.test".into())))
        );
        assert_eq!(classify(&hello[..20], true), Some(Kind::Tls(None)));
        // A hello split over two records.
        let hs = &hello[5..];
        let mut split = vec![0x16, 3, 1, 0, 10];
        split.extend_from_slice(&hs[..10]);
        split.extend_from_slice(&[0x16, 3, 1]);
        split.extend_from_slice(&((hs.len() - 10) as u16).to_be_bytes());
        split.extend_from_slice(&hs[10..]);
        assert_eq!(
            client_hello_sni(&split),
            Tls::Hello(Some("api.example.com".into()))
        );
    }

    #[test]
    fn garbage_never_panics() {
        let hello = client_hello(Some("a.test"));
        let mut seed: u32 = 12345;
        for i in 0..20000 {
            let mut b = hello.clone();
            for _ in 0..(i % 7 + 1) {
                seed = seed.wrapping_mul(1103515245).wrapping_add(12345);
                let at = (seed >> 8) as usize % b.len();
                b[at] = (seed >> 16) as u8;
            }
            let _ = client_hello_sni(&b);
            let _ = classify(&b, i % 2 == 0);
            let _ = parse_head(&b);
        }
        assert_eq!(client_hello_sni(&[0x16, 3, 1, 0, 0]), Tls::NoHello);
        assert_eq!(
            classify(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", true),
            Some(Kind::Other)
        );
        assert_eq!(classify(b"SSH-2.0-x\r\n", false), Some(Kind::Other));
        assert_eq!(classify(b"GE", false), None);
        assert_eq!(classify(b"GE", true), Some(Kind::Other));
    }

    #[test]
    fn http_heads_give_their_host() {
        let req = b"GET /x HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\nbody";
        assert_eq!(
            classify(req, false),
            Some(Kind::Http(Some("example.com".into())))
        );
        assert_eq!(classify(&req[..20], false), None);
        assert_eq!(classify(&req[..20], true), Some(Kind::Http(None)));
        let head = parse_head(req).expect("test input").expect("test input");
        assert_eq!(head.len, req.len() - 4);
        assert_eq!((head.method.as_str(), head.target.as_str()), ("GET", "/x"));
        let two = b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n";
        assert_eq!(classify(two, false), Some(Kind::Http(None)));
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\n\r\n", false),
            Some(Kind::Http(None))
        );
        assert_eq!(
            classify(b"GET / SPDY\r\n\r\n", false),
            Some(Kind::Http(None))
        );
    }

    #[test]
    fn authorities_and_uris_split() {
        assert_eq!(
            split_authority("a.test:443"),
            Ok(("a.test".into(), Some(443)))
        );
        assert_eq!(split_authority("A.test"), Ok(("a.test".into(), None)));
        assert_eq!(split_authority("[::1]:80"), Ok(("::1".into(), Some(80))));
        assert_eq!(split_authority("[::1]"), Ok(("::1".into(), None)));
        for bad in ["", ":80", "a:b", "a:99999", "u@a.test", "[::1", "[::1]x"] {
            assert!(split_authority(bad).is_err(), "{bad}");
        }
        assert_eq!(
            split_absolute_uri("http://a.test:8080/p?q=1#f"),
            Ok(("a.test".into(), 8080, "/p?q=1".into()))
        );
        assert_eq!(
            split_absolute_uri("HTTP://a.test"),
            Ok(("a.test".into(), 80, "/".into()))
        );
        assert_eq!(
            split_absolute_uri("http://a.test?x"),
            Ok(("a.test".into(), 80, "/?x".into()))
        );
        assert!(split_absolute_uri("https://a.test/").is_err());
        assert!(split_absolute_uri("/relative").is_err());
    }
}
