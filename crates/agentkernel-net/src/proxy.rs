//! The host-side egress proxy: TCP connections a sandbox makes, and its DNS queries ([`dns`]).
//!
//! The listening sockets live in the sandbox's network namespace, where a nat rule redirects
//! every outbound TCP connection to the TCP listener. For each connection the proxy
//!
//! 1. reads where the program meant to go (`SO_ORIGINAL_DST`); a connection made to the
//!    listener itself is an explicit HTTP proxy client (`CONNECT host:port`, or an
//!    absolute-form `GET http://host/...`);
//! 2. peeks (without consuming) at the first bytes for a TLS server name or an HTTP Host;
//!    nothing within 300 ms, or nothing recognised, is plain TCP;
//! 3. decides by the sandbox's current [`Rules`]: in allowlist mode only a named, allowed
//!    destination passes, and the proxy connects to what *it* resolves the name to, never to
//!    the address the program dialled (so a forged SNI or Host cannot reach another address);
//!    in full mode it connects to the dialled address if that address (and name) may be
//!    reached;
//! 4. refuses with `403 Forbidden` (HTTP) or by closing (TLS, TCP), or connects out and
//!    splices the two sockets, handing connections to hosts with bound secrets to the
//!    [`Interceptor`] instead;
//! 5. reports every decision to the [`Observer`].
//!
//! [`dns`]: crate::dns

mod sniff;
mod zerocopy;

use crate::resolve::Resolver;
use crate::rules::{Mode, Rules, Verdict};
use crate::tls::{Binding, Interceptor};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

/// At most this many connections are handled at once per [`serve`]; more are closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most bytes peeked at to find a server name or Host.
const PEEK_MAX: usize = 16 * 1024;
/// How long a client has to speak first before the connection counts as plain TCP.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(300);
/// How long a started ClientHello or request head may take to arrive in full.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);
/// How long an explicit proxy client may take to send its request head.
const EXPLICIT_HEAD_WAIT: Duration = Duration::from_secs(10);
/// How long connecting upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused client is given to take its 403 before the socket closes.
const LINGER: Duration = Duration::from_millis(500);

/// The sockets a proxy serves, created in the sandbox's network namespace.
#[derive(Debug, Default)]
pub struct Listeners {
    /// TCP listeners the nat rule redirects connections to (and explicit proxy clients use).
    pub tcp: Vec<std::net::TcpListener>,
    /// UDP sockets DNS queries are sent to.
    pub dns: Vec<std::net::UdpSocket>,
}

/// A sandbox's egress policy and secrets, as one snapshot.
#[derive(Debug, Clone)]
pub struct Egress {
    /// What may be reached.
    pub rules: Rules,
    /// Secrets added to requests for their hosts.
    pub bindings: Vec<Binding>,
}

/// Where the proxy gets the current policy: asked once per connection and per DNS query, so a
/// change applies to the next one.
pub trait Source: Send + Sync + 'static {
    /// The policy now.
    fn current(&self) -> Arc<Egress>;
}

/// Told every decision the proxy makes, allowed and refused.
pub trait Observer: Send + Sync + 'static {
    /// One decision.
    fn decision(&self, d: &Decision);
}

impl Decision {
    /// A decision not made yet (refused until allowed), for `host`/`ip` on `port`.
    pub fn pending(
        host: Option<String>,
        ip: Option<IpAddr>,
        port: u16,
        protocol: Protocol,
    ) -> Self {
        Decision {
            host,
            ip,
            port,
            protocol,
            allowed: false,
            reason: None,
        }
    }
}

/// What a connection or query turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x (transparent or through the explicit proxy).
    Http,
    /// TLS (transparent, or inside a CONNECT tunnel).
    Tls,
    /// Anything else over TCP.
    Tcp,
    /// A DNS query.
    Dns,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Tls => "tls",
            Protocol::Tcp => "tcp",
            Protocol::Dns => "dns",
        })
    }
}

/// One egress decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The name asked for (SNI, Host, CONNECT target, DNS question), if any.
    pub host: Option<String>,
    /// The address connected to (allowed) or dialled (refused), if any.
    pub ip: Option<IpAddr>,
    /// The destination port (53 for DNS).
    pub port: u16,
    /// What the connection was.
    pub protocol: Protocol,
    /// Whether it was let through.
    pub allowed: bool,
    /// Why it was refused.
    pub reason: Option<String>,
}

/// Everything a proxy needs besides its sockets.
pub struct Context {
    /// The policy.
    pub source: Arc<dyn Source>,
    /// Where decisions are reported.
    pub observer: Arc<dyn Observer>,
    /// How names are resolved.
    pub resolver: Resolver,
    /// Adds secrets to requests for bound hosts; without it those connections are refused.
    pub interceptor: Option<Arc<Interceptor>>,
}

/// Serves the TCP and DNS listeners until the returned future is dropped (which also ends
/// every connection it is handling). Fails only if a listener cannot be registered with the
/// runtime.
pub async fn serve(listeners: Listeners, ctx: Arc<Context>) -> io::Result<()> {
    let mut tasks = JoinSet::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    for listener in listeners.tcp {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        tasks.spawn(accept_loop(listener, ctx.clone(), slots.clone()));
    }
    for socket in listeners.dns {
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        tasks.spawn(crate::dns::serve_udp(socket, ctx.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            return Err(e);
        }
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    slots: Arc<Semaphore>,
) -> io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or a connection reset before it was accepted: back off
                // a little rather than spin.
                sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        connections.spawn(async move {
            handle(stream, &ctx).await;
            drop(slot);
        });
    }
}

/// The address a redirected connection was dialled to, or `None` for a connection made to
/// the listener itself.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let dst = match local {
        SocketAddr::V4(_) => rustix::net::sockopt::ip_original_dst(stream)
            .ok()
            .map(SocketAddr::V4),
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
            rustix::net::sockopt::ip_original_dst(stream)
                .ok()
                .map(SocketAddr::V4)
        }
        SocketAddr::V6(_) => rustix::net::sockopt::ipv6_original_dst(stream)
            .ok()
            .map(SocketAddr::V6),
    }?;
    // With conntrack loaded but no redirect, the "original" destination is the listener.
    (dst.ip().to_canonical() != local.ip().to_canonical() || dst.port() != local.port())
        .then_some(dst)
}

async fn handle(stream: TcpStream, ctx: &Context) {
    let _ = stream.set_nodelay(true);
    match original_dst(&stream) {
        Some(dst) => transparent(stream, dst, ctx).await,
        None => explicit(stream, ctx).await,
    }
}

/// Peeks at the first bytes until `judge` gives an answer. `judge(bytes, last)` returns
/// `None` for "need more"; with `last` (buffer full, peer done, time up) it must answer.
/// `None` if nothing came within `first_wait`.
async fn peek_until<T>(
    stream: &TcpStream,
    first_wait: Duration,
    total: Duration,
    mut judge: impl FnMut(&[u8], bool) -> Option<T>,
) -> Option<T> {
    let mut buf = vec![0u8; PEEK_MAX];
    let deadline = Instant::now() + total;
    let mut n = match timeout(first_wait, stream.peek(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return None,
    };
    loop {
        let last = n == buf.len() || Instant::now() >= deadline;
        if let Some(answer) = judge(&buf[..n], last) {
            return Some(answer);
        }
        if last {
            return None;
        }
        // `peek` returns at once while any data is queued, so wait a little for more.
        sleep(Duration::from_millis(5)).await;
        match stream.peek(&mut buf).await {
            Ok(m) if m > 0 => n = m,
            _ => return judge(&buf[..n], true),
        }
    }
}

/// What to connect to, or why not.
async fn choose(
    rules: &Rules,
    resolver: &Resolver,
    name: Option<&str>,
    dialled: Option<IpAddr>,
) -> Result<Vec<IpAddr>, String> {
    if let Some(Verdict::Deny(reason)) = name.map(|n| rules.name_verdict(n)) {
        return Err(reason.to_string());
    }
    match (rules.mode, name, dialled) {
        (Mode::Full, _, Some(ip)) => match rules.addr_verdict(ip) {
            Verdict::Allow => Ok(vec![ip]),
            Verdict::Deny(reason) => Err(reason.to_string()),
        },
        (Mode::Allowlist, Some(name), _) | (Mode::Full, Some(name), None) => {
            let ips = resolver
                .lookup(name)
                .await
                .map_err(|e| format!("{name} could not be resolved: {e}"))?;
            let mut first_refusal = None;
            let allowed: Vec<IpAddr> = ips
                .into_iter()
                .filter(|ip| match rules.addr_verdict(*ip) {
                    Verdict::Allow => true,
                    Verdict::Deny(r) => {
                        first_refusal.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), first_refusal) {
                (false, _) => Ok(allowed),
                (true, Some(r)) => Err(format!("{name} resolves only to refused addresses: {r}")),
                (true, None) => Err(format!("{name} has no addresses")),
            }
        }
        (Mode::Allowlist, None, _) => Err(
            "no host name to check against the allowlist (connections to bare IP addresses are refused)"
                .to_string(),
        ),
        (Mode::Full, None, None) => Err("no destination".to_string()),
    }
}

/// The bindings for `name`.
fn bindings_for(egress: &Egress, name: Option<&str>) -> Vec<Binding> {
    let Some(name) = name else {
        return Vec::new();
    };
    egress
        .bindings
        .iter()
        .filter(|b| b.host.eq_ignore_ascii_case(name.trim_end_matches('.')))
        .cloned()
        .collect()
}

/// The 403 a refused HTTP client gets.
fn forbidden(host: &str, reason: &str) -> Vec<u8> {
    let body =
        format!("agentkernel: {host} is blocked by the sandbox's network policy ({reason})\n");
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A plain-text error response (400, 502).
fn error_response(status: &str, message: &str) -> Vec<u8> {
    let body = format!("agentkernel: {message}\n");
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `response`, then closes without resetting: unread request bytes are drained for a
/// moment so that the client gets to read the response.
async fn respond_and_close(mut stream: TcpStream, response: &[u8]) {
    if timeout(LINGER, stream.write_all(response)).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + LINGER;
    let mut drained = 0usize;
    while drained < 256 * 1024 {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            stream.read(&mut sink),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// Connects to the first of `ips` that answers, within [`CONNECT_TIMEOUT`] in all.
async fn connect_any(ips: &[IpAddr], port: u16) -> io::Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for ip in ips {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, TcpStream::connect((*ip, port))).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting took over {CONNECT_TIMEOUT:?}"),
                ));
            }
        }
    }
    Err(last)
}

/// A redirected connection.
async fn transparent(stream: TcpStream, dst: SocketAddr, ctx: &Context) {
    let kind = peek_until(&stream, FIRST_BYTES_WAIT, HANDSHAKE_WAIT, sniff::classify)
        .await
        .unwrap_or(sniff::Kind::Other);
    let (protocol, name) = match kind {
        sniff::Kind::Tls(name) => (Protocol::Tls, name),
        sniff::Kind::Http(name) => (Protocol::Http, name),
        sniff::Kind::Other => (Protocol::Tcp, None),
    };
    let egress = ctx.source.current();
    let mut decision = Decision::pending(name.clone(), Some(dst.ip()), dst.port(), protocol);
    let chosen = choose(
        &egress.rules,
        &ctx.resolver,
        name.as_deref(),
        Some(dst.ip()),
    )
    .await;
    let shown = name.clone().unwrap_or_else(|| dst.ip().to_string());
    let ips = match chosen {
        Ok(ips) => ips,
        Err(reason) => return refuse(stream, ctx, decision, &shown, reason).await,
    };
    let bindings = bindings_for(&egress, name.as_deref());
    if !bindings.is_empty() && protocol != Protocol::Tcp {
        let Some(interceptor) = ctx.interceptor.clone() else {
            let reason = "secret injection unavailable".to_string();
            return refuse(stream, ctx, decision, &shown, reason).await;
        };
        let host = name.unwrap_or_default();
        let upstream = SocketAddr::new(ips[0], dst.port());
        decision.allowed = true;
        decision.ip = Some(upstream.ip());
        ctx.observer.decision(&decision);
        let _ = match protocol {
            Protocol::Tls => {
                interceptor
                    .intercept_tls(stream, &host, dst.port(), upstream, &bindings)
                    .await
            }
            _ => {
                interceptor
                    .intercept_http(stream, &host, dst.port(), upstream, &bindings)
                    .await
            }
        };
        return;
    }
    decision.allowed = true;
    decision.ip = ips.first().copied();
    ctx.observer.decision(&decision);
    let Ok(upstream) = connect_any(&ips, dst.port()).await else {
        if protocol == Protocol::Http {
            let msg = format!("could not connect to {shown}:{}", dst.port());
            respond_and_close(stream, &error_response("502 Bad Gateway", &msg)).await;
        }
        return;
    };
    relay(stream, upstream).await;
}

/// Reports a refusal and tells the client (HTTP) or just closes.
async fn refuse(
    stream: TcpStream,
    ctx: &Context,
    mut decision: Decision,
    shown: &str,
    reason: String,
) {
    let response = (decision.protocol == Protocol::Http).then(|| forbidden(shown, &reason));
    decision.allowed = false;
    decision.reason = Some(reason);
    ctx.observer.decision(&decision);
    match response {
        Some(r) => respond_and_close(stream, &r).await,
        None => drop(stream),
    }
}

async fn splice<S: AsyncRead + AsyncWrite + Unpin>(mut client: S, mut upstream: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Two plain sockets: relayed in the kernel (`zerocopy`).
async fn relay(client: TcpStream, upstream: TcpStream) {
    let _ = zerocopy::relay(&client, &upstream).await;
}

/// A connection made to the listener itself: an HTTP proxy client.
async fn explicit(mut stream: TcpStream, ctx: &Context) {
    let head = peek_until(
        &stream,
        EXPLICIT_HEAD_WAIT,
        EXPLICIT_HEAD_WAIT,
        |buf, last| match sniff::parse_head(buf) {
            Ok(Some(head)) => Some(Ok(head)),
            Err(e) => Some(Err(e)),
            Ok(None) if last => Some(Err("the request head is incomplete or over 16 KiB")),
            Ok(None) => None,
        },
    )
    .await;
    let head = match head {
        None => return,
        Some(Err(e)) => {
            return respond_and_close(stream, &error_response("400 Bad Request", e)).await;
        }
        Some(Ok(head)) => head,
    };
    let mut consumed = vec![0u8; head.len];
    if stream.read_exact(&mut consumed).await.is_err() {
        return;
    }
    if head.method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = match sniff::split_authority(&head.target) {
            Ok((host, port)) => (host, port.unwrap_or(443)),
            Err(e) => {
                return respond_and_close(stream, &error_response("400 Bad Request", e)).await;
            }
        };
        connect_tunnel(stream, host, port, ctx).await;
    } else {
        match sniff::split_absolute_uri(&head.target) {
            Ok((host, port, path)) => forward_absolute(stream, &head, host, port, path, ctx).await,
            Err(e) => {
                let msg = format!(
                    "{e}; this is an HTTP proxy: send CONNECT host:port or GET http://host/path"
                );
                respond_and_close(stream, &error_response("400 Bad Request", &msg)).await;
            }
        }
    }
}

/// `CONNECT host:port`.
async fn connect_tunnel(mut stream: TcpStream, host: String, port: u16, ctx: &Context) {
    let egress = ctx.source.current();
    let mut decision = Decision::pending(Some(host.clone()), None, port, Protocol::Http);
    let ips = match choose(&egress.rules, &ctx.resolver, Some(&host), None).await {
        Ok(ips) => ips,
        Err(reason) => return refuse(stream, ctx, decision, &host, reason).await,
    };
    let bindings = bindings_for(&egress, Some(&host));
    if !bindings.is_empty() && ctx.interceptor.is_none() {
        let reason = "secret injection unavailable".to_string();
        return refuse(stream, ctx, decision, &host, reason).await;
    }
    let upstream = if bindings.is_empty() {
        match connect_any(&ips, port).await {
            Ok(u) => Some(u),
            Err(e) => {
                let msg = format!("could not connect to {host}:{port}: {e}");
                decision.reason = Some(msg.clone());
                ctx.observer.decision(&decision);
                return respond_and_close(stream, &error_response("502 Bad Gateway", &msg)).await;
            }
        }
    } else {
        None
    };
    if stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    // What travels in the tunnel: a name inside it (SNI, Host) must pass too.
    let kind = peek_until(&stream, FIRST_BYTES_WAIT, HANDSHAKE_WAIT, sniff::classify)
        .await
        .unwrap_or(sniff::Kind::Other);
    let (protocol, inner) = match kind {
        sniff::Kind::Tls(name) => (Protocol::Tls, name),
        sniff::Kind::Http(name) => (Protocol::Http, name),
        sniff::Kind::Other => (Protocol::Tcp, None),
    };
    decision.protocol = protocol;
    let inner = inner.filter(|n| !n.eq_ignore_ascii_case(&host));
    if let Some((inner, Verdict::Deny(reason))) = inner.map(|n| {
        let v = egress.rules.name_verdict(&n);
        (n, v)
    }) {
        decision.host = Some(inner);
        decision.reason = Some(format!("named inside a tunnel to {host}: {reason}"));
        ctx.observer.decision(&decision);
        return;
    }
    decision.allowed = true;
    decision.ip = ips.first().copied();
    ctx.observer.decision(&decision);
    match (upstream, ctx.interceptor.as_ref()) {
        (Some(upstream), _) => relay(stream, upstream).await,
        (None, Some(interceptor)) => {
            let to = SocketAddr::new(ips[0], port);
            let _ = match protocol {
                Protocol::Http => {
                    interceptor
                        .intercept_http(stream, &host, port, to, &bindings)
                        .await
                }
                _ => {
                    interceptor
                        .intercept_tls(stream, &host, port, to, &bindings)
                        .await
                }
            };
        }
        (None, None) => {}
    }
}

/// Hop-by-hop and proxy headers not passed on.
const DROPPED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// `GET http://host/path`: forwarded in origin form, one request per connection.
async fn forward_absolute(
    stream: TcpStream,
    head: &sniff::Head,
    host: String,
    port: u16,
    path: String,
    ctx: &Context,
) {
    let egress = ctx.source.current();
    let mut decision = Decision::pending(Some(host.clone()), None, port, Protocol::Http);
    let ips = match choose(&egress.rules, &ctx.resolver, Some(&host), None).await {
        Ok(ips) => ips,
        Err(reason) => return refuse(stream, ctx, decision, &host, reason).await,
    };
    let authority = match (host.contains(':'), port) {
        (true, 80) => format!("[{host}]"),
        (true, p) => format!("[{host}]:{p}"),
        (false, 80) => host.clone(),
        (false, p) => format!("{host}:{p}"),
    };
    let mut rewritten = format!(
        "{} {} {}\r\nHost: {authority}\r\n",
        head.method, path, head.version
    );
    for (name, value) in &head.headers {
        if !DROPPED_HEADERS.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            rewritten.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    let client = Prefixed {
        prefix: rewritten.into_bytes(),
        pos: 0,
        inner: stream,
    };
    let bindings = bindings_for(&egress, Some(&host));
    if !bindings.is_empty() {
        let Some(interceptor) = ctx.interceptor.clone() else {
            let reason = "secret injection unavailable".to_string();
            return refuse(client.inner, ctx, decision, &host, reason).await;
        };
        decision.allowed = true;
        decision.ip = ips.first().copied();
        ctx.observer.decision(&decision);
        let to = SocketAddr::new(ips[0], port);
        let _ = interceptor
            .intercept_http(client, &host, port, to, &bindings)
            .await;
        return;
    }
    decision.allowed = true;
    decision.ip = ips.first().copied();
    ctx.observer.decision(&decision);
    match connect_any(&ips, port).await {
        Ok(upstream) => splice(client, upstream).await,
        Err(e) => {
            let msg = format!("could not connect to {host}:{port}: {e}");
            respond_and_close(client.inner, &error_response("502 Bad Gateway", &msg)).await;
        }
    }
}

/// A stream that reads `prefix` before what `inner` has (a rewritten request head).
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
