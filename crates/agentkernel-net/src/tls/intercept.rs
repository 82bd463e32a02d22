//! Relaying one intercepted connection: the verified upstream connection first, then the
//! sandbox side, then HTTP/1.1 request by request with the secrets added.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::http::{local_response, prepare_request, strip_hop_by_hop};
use super::{Binding, Ca, TlsError, normalize_host};

/// Connecting to the upstream may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Each TLS handshake may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// The sandbox has this long to send a request's headers (also the idle keep-alive limit).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The most bytes buffered per connection while reading a message head, each direction.
const MAX_BUF: usize = 64 * 1024;
/// The most header fields in one message.
const MAX_HEADERS: usize = 128;

/// The crypto provider of every TLS configuration here: ring, chosen explicitly, so that the
/// process-wide default (which another crate may set to aws-lc) does not matter.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Intercepts sandbox connections to hosts with bound secrets.
pub struct Interceptor {
    ca: Arc<Ca>,
    upstream: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor").finish_non_exhaustive()
    }
}

impl Interceptor {
    /// An interceptor that signs leaves with `ca` and trusts exactly `upstream_roots` for
    /// upstream hosts.
    pub fn new(ca: Arc<Ca>, upstream_roots: RootCertStore) -> Result<Interceptor, TlsError> {
        if upstream_roots.is_empty() {
            return Err(TlsError::NoRoots {
                detail: String::new(),
            });
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(upstream_roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Interceptor {
            ca,
            upstream: Arc::new(config),
        })
    }

    /// An interceptor that trusts this machine's roots for upstream hosts (the system store,
    /// or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set).
    pub fn with_system_roots(ca: Arc<Ca>) -> Result<Interceptor, TlsError> {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (_added, _ignored) = roots.add_parsable_certificates(loaded.certs);
        if roots.is_empty() {
            let detail = loaded
                .errors
                .iter()
                .map(|e| format!("; {e}"))
                .collect::<String>();
            return Err(TlsError::NoRoots { detail });
        }
        Interceptor::new(ca, roots)
    }

    /// Relays a sandbox's TLS connection for `host` (its SNI) to `upstream`, adding
    /// `bindings` to each request for `host`.
    ///
    /// The upstream's certificate is verified (chain and name, against the upstream roots)
    /// before the sandbox's handshake is even answered; if it fails, the sandbox gets a
    /// `502 Bad Gateway` saying so and nothing reaches the upstream.
    pub async fn intercept_tls<S>(
        &self,
        client: S,
        host: &str,
        port: u16,
        upstream: SocketAddr,
        bindings: &[Binding],
    ) -> Result<(), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let name = ServerName::try_from(host.to_string()).map_err(|_| TlsError::InvalidHost {
            host: host.to_string(),
        })?;
        let server_config = self.ca.server_config(host)?;
        let dial = Dial {
            host: host.to_string(),
            port,
            addr: upstream,
            tls: Some((TlsConnector::from(self.upstream.clone()), name)),
        };
        let first = dial.connect().await;
        let accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsAcceptor::from(server_config).accept(client),
        )
        .await;
        let client_tls = match accepted {
            Ok(Ok(tls)) => tls,
            Ok(Err(source)) => {
                first?;
                return Err(TlsError::ClientHandshake {
                    host: host.to_string(),
                    source,
                });
            }
            Err(_) => {
                first?;
                return Err(timeout("waiting for the sandbox's TLS handshake"));
            }
        };
        match first {
            Ok(sender) => relay(client_tls, dial, sender, bindings).await,
            Err(e) => {
                refuse(client_tls, &refusal_text(&e)).await;
                Err(e)
            }
        }
    }

    /// Relays a sandbox's plain HTTP connection for `host` to `upstream`, adding `bindings`
    /// to each request for `host`, as [`Interceptor::intercept_tls`] does without TLS.
    pub async fn intercept_http<S>(
        &self,
        client: S,
        host: &str,
        port: u16,
        upstream: SocketAddr,
        bindings: &[Binding],
    ) -> Result<(), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let dial = Dial {
            host: host.to_string(),
            port,
            addr: upstream,
            tls: None,
        };
        match dial.connect().await {
            Ok(sender) => relay(client, dial, sender, bindings).await,
            Err(e) => {
                refuse(client, &refusal_text(&e)).await;
                Err(e)
            }
        }
    }
}

fn timeout(what: &str) -> TlsError {
    TlsError::Timeout {
        what: what.to_string(),
        secs: HANDSHAKE_TIMEOUT.as_secs(),
    }
}

/// How to open (and, after the upstream closes a kept-alive connection, reopen) the
/// upstream connection.
struct Dial {
    host: String,
    port: u16,
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Dial {
    /// Connects, completes (and so verifies) the TLS handshake if any, and starts an HTTP/1.1
    /// client connection over it.
    async fn connect(&self) -> Result<SendRequest<Incoming>, TlsError> {
        let connect_err = |source| TlsError::Connect {
            host: self.host.clone(),
            port: self.port,
            addr: self.addr,
            source,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                connect_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer in {}s", CONNECT_TIMEOUT.as_secs()),
                ))
            })?
            .map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| timeout(&format!("in the TLS handshake with {}", self.host)))?
                        .map_err(|e| self.classify(e))?;
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<SendRequest<Incoming>, TlsError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_BUF)
            .max_headers(MAX_HEADERS)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| TlsError::Http {
                host: self.host.clone(),
                source,
            })?;
        tokio::spawn(async move {
            // Ends when the upstream closes or the sender is dropped; errors surface on the
            // request that was in flight.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// An upstream handshake failure: untrusted certificate, or anything else.
    fn classify(&self, e: std::io::Error) -> TlsError {
        let cert = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(|inner| match inner {
                rustls::Error::InvalidCertificate(cert) => Some(cert.clone()),
                _ => None,
            });
        match cert {
            Some(cert) => TlsError::UpstreamUntrusted {
                host: self.host.clone(),
                reason: describe(&cert),
            },
            None => TlsError::UpstreamHandshake {
                host: self.host.clone(),
                port: self.port,
                source: e,
            },
        }
    }
}

/// Why a certificate was refused, in words.
fn describe(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => {
            "it is not issued by an authority this machine trusts".to_string()
        }
        CertificateError::BadSignature => "its signature does not verify".to_string(),
        CertificateError::Revoked => "it has been revoked".to_string(),
        other => other.to_string(),
    }
}

/// What the sandbox is told when the upstream could not be used.
fn refusal_text(e: &TlsError) -> String {
    match e {
        TlsError::UpstreamUntrusted { host, reason } => format!(
            "agentkernel: the certificate of {host} is not trusted ({reason}); no secret was sent"
        ),
        TlsError::UpstreamHandshake { .. } => format!("agentkernel: {e}"),
        other => format!("agentkernel: {other}; no secret was sent"),
    }
}

/// Answers every request on `client` (normally just the first) with `502` and `text`, then
/// closes.
async fn refuse<S>(client: S, text: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let text = text.to_string();
    let service = service_fn(move |_req: Request<Incoming>| {
        let response = local_response(StatusCode::BAD_GATEWAY, &text, true);
        async move { Ok::<_, Infallible>(response) }
    });
    let _ = server_builder()
        .keep_alive(false)
        .serve_connection(TokioIo::new(client), service)
        .await;
}

fn server_builder() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(MAX_BUF)
        .max_headers(MAX_HEADERS)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
}

/// The state the request handler shares across one client connection's requests.
struct Relay {
    dial: Dial,
    bindings: Vec<Binding>,
    /// The upstream connection; `None` after it failed. Requests on one HTTP/1.1 connection
    /// come one at a time, so the lock is never contended.
    sender: tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
}

type Body = Either<Incoming, Full<Bytes>>;

async fn relay<S>(
    client: S,
    dial: Dial,
    sender: SendRequest<Incoming>,
    bindings: &[Binding],
) -> Result<(), TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = dial.host.clone();
    let relay = Arc::new(Relay {
        dial,
        bindings: bindings.to_vec(),
        sender: tokio::sync::Mutex::new(Some(sender)),
    });
    let service = service_fn(move |req: Request<Incoming>| {
        let relay = relay.clone();
        async move { Ok::<_, Infallible>(relay.forward(req).await) }
    });
    server_builder()
        .serve_connection(TokioIo::new(client), service)
        .await
        .map_err(|source| TlsError::Http { host, source })
}

impl Relay {
    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let host = normalize_host(&self.dial.host);
        let req = match prepare_request(req, &host, &self.bindings) {
            Ok(req) => req,
            Err(response) => return response.map(Either::Right),
        };
        let mut sender = self.sender.lock().await;
        let usable = match sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            // The upstream closed the kept-alive connection: open (and verify) a new one.
            *sender = None;
            match self.dial.connect().await {
                Ok(s) => *sender = Some(s),
                Err(e) => {
                    return local_response(StatusCode::BAD_GATEWAY, &refusal_text(&e), true)
                        .map(Either::Right);
                }
            }
        }
        let Some(s) = sender.as_mut() else {
            return local_response(
                StatusCode::BAD_GATEWAY,
                "agentkernel: no upstream connection",
                true,
            )
            .map(Either::Right);
        };
        match s.send_request(req).await {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                response.map(Either::Left)
            }
            Err(e) => {
                *sender = None;
                local_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("agentkernel: the request to {host} failed ({e})"),
                    true,
                )
                .map(Either::Right)
            }
        }
    }
}
