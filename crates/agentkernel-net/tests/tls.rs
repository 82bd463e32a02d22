//! Secret injection end to end: a client, the interceptor and an upstream HTTPS server, all
//! on loopback inside a network namespace of the test's own thread (run as root), so the
//! host's real network is never touched.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use agentkernel_net::tls::{Binding, Ca, Interceptor, TlsError};

const HOST: &str = "api.example.test";
const SECRET: &str = "sk-real-secret-value";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Runs `test` on a current-thread runtime in a new network namespace (with `lo` up) that
/// only this thread is in.
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        // SAFETY: only the network namespace is unshared (not the file table), and only for
        // this thread, which is ours alone.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .expect("unshare(CLONE_NEWNET): these tests must run as root");
        loopback_up();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Sets IFF_UP on `lo` in the current network namespace.
fn loopback_up() {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming `lo`; SIOCGIFFLAGS fills ifru_flags.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    assert_eq!(rc, 0, "SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
    // SAFETY: SIOCGIFFLAGS set the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS reads ifru_flags.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    assert_eq!(rc, 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
}

/// A CA for test upstreams, and certificates it signs.
struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed");
        TestCa {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("root");
        roots
    }

    fn server_config(&self, name: &str) -> rustls::ServerConfig {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

/// What a test upstream saw.
#[derive(Default)]
struct Seen {
    /// TCP connections accepted.
    connections: usize,
    /// Requests received: (connection number, headers, body).
    requests: Vec<(usize, HeaderMap, String)>,
}

/// Starts an upstream on 127.0.0.1 (HTTPS with `tls`, else plain HTTP) that records what it
/// gets and answers `200` with `ok:` and the request body.
async fn upstream(tls: Option<rustls::ServerConfig>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let conn = {
                let mut seen = record.lock().expect("seen");
                seen.connections += 1;
                seen.connections
            };
            let record = record.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve_upstream(tls, conn, record).await;
                        }
                    }
                    None => serve_upstream(tcp, conn, record).await,
                }
            });
        }
    });
    (addr, seen)
}

async fn serve_upstream<S>(io: S, conn: usize, record: Arc<Mutex<Seen>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            let reply = format!("ok:{body}");
            record
                .lock()
                .expect("seen")
                .requests
                .push((conn, parts.headers, body));
            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(reply))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// A started interceptor: the address the sandbox side connects to, and the results of the
/// intercepted connections.
struct Proxy {
    addr: SocketAddr,
    results: Arc<Mutex<Vec<Result<(), TlsError>>>>,
    ca: Arc<Ca>,
    _keys: tempfile::TempDir,
}

impl Proxy {
    async fn start(
        upstream_roots: RootCertStore,
        tls: bool,
        upstream: SocketAddr,
        bindings: Vec<Binding>,
    ) -> Proxy {
        let keys = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(Ca::load_or_create(keys.path()).expect("ca"));
        let interceptor =
            Arc::new(Interceptor::new(ca.clone(), upstream_roots).expect("interceptor"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let results = Arc::new(Mutex::new(Vec::new()));
        let record = results.clone();
        let bindings = Arc::new(bindings);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let interceptor = interceptor.clone();
                let record = record.clone();
                let bindings = bindings.clone();
                tokio::spawn(async move {
                    let result = if tls {
                        interceptor
                            .intercept_tls(client, HOST, 443, upstream, &bindings)
                            .await
                    } else {
                        interceptor
                            .intercept_http(client, HOST, 80, upstream, &bindings)
                            .await
                    };
                    record.lock().expect("results").push(result);
                });
            }
        });
        Proxy {
            addr,
            results,
            ca,
            _keys: keys,
        }
    }

    /// Roots holding exactly the proxy CA, parsed from `Ca::cert_pem`.
    fn client_roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.cert_pem().as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        assert_eq!(roots.len(), 1);
        roots
    }

    /// A TLS connection to the proxy as a sandboxed client makes it (SNI = HOST).
    async fn connect_tls(
        &self,
        roots: RootCertStore,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(self.addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(HOST).expect("name"), tcp)
            .await
    }

    /// Waits for the first intercepted connection to end and returns its result.
    async fn first_result(&self) -> Result<(), TlsError> {
        for _ in 0..500 {
            if let Some(result) = self.results.lock().expect("results").pop() {
                return result;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the interception did not end");
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An HTTP/1.1 client connection over `io`.
async fn http_client<S>(io: S) -> Sender
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("client handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends a POST with `headers` and `body`; returns the status and the response body.
async fn send(
    sender: &mut Sender,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    sender.ready().await.expect("ready");
    let mut req = Request::post("/v1/things").header("host", host);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn bearer(placeholder: Option<&str>) -> Binding {
    let spec: agentkernel_core::egress::SecretBinding =
        format!("OPENAI_API_KEY:{HOST}").parse().expect("binding");
    Binding::from_secret(&spec, SECRET, placeholder.map(str::to_string))
}

fn custom(header: &str, value: &str, placeholder: Option<&str>) -> Binding {
    let spec: agentkernel_core::egress::SecretBinding = format!("OTHER_KEY:{HOST}:{header}")
        .parse()
        .expect("binding");
    Binding::from_secret(&spec, value, placeholder.map(str::to_string))
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect()
}

#[test]
fn bound_headers_arrive_with_the_real_values() {
    in_netns(|| async {
        let upstream_ca = TestCa::new("test upstream CA");
        let (up, seen) = upstream(Some(upstream_ca.server_config(HOST))).await;
        let bindings = vec![bearer(None), custom("X-Api-Key", "xk-second-secret", None)];
        let proxy = Proxy::start(upstream_ca.roots(), true, up, bindings).await;

        let tls = proxy
            .connect_tls(proxy.client_roots())
            .await
            .expect("the client trusts the proxy CA");
        let mut client = http_client(tls).await;
        let (status, body) = send(
            &mut client,
            HOST,
            &[
                ("authorization", "Bearer ak-proxy-managed"),
                ("x-api-key", "ak-proxy-managed"),
            ],
            "payload",
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "ok:payload"));

        let seen = seen.lock().expect("seen");
        assert_eq!(seen.requests.len(), 1);
        let (_, headers, body) = &seen.requests[0];
        assert_eq!(
            values(headers, "authorization"),
            vec![format!("Bearer {SECRET}")]
        );
        assert_eq!(values(headers, "x-api-key"), vec!["xk-second-secret"]);
        assert_eq!(body, "payload");
    });
}

#[test]
fn a_client_that_does_not_trust_the_proxy_ca_fails() {
    in_netns(|| async {
        let upstream_ca = TestCa::new("test upstream CA");
        let (up, seen) = upstream(Some(upstream_ca.server_config(HOST))).await;
        let proxy = Proxy::start(upstream_ca.roots(), true, up, vec![bearer(None)]).await;

        // A client trusting only some other CA (here the upstream's) refuses the proxy leaf.
        let err = proxy
            .connect_tls(upstream_ca.roots())
            .await
            .expect_err("the proxy leaf must not verify against another CA");
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        assert!(matches!(
            proxy.first_result().await,
            Err(TlsError::ClientHandshake { .. })
        ));
        assert!(seen.lock().expect("seen").requests.is_empty());
    });
}

#[test]
fn an_untrusted_upstream_gets_no_request_and_the_client_gets_502() {
    in_netns(|| async {
        let upstream_ca = TestCa::new("test upstream CA");
        let other_ca = TestCa::new("some other CA");
        let (up, seen) = upstream(Some(upstream_ca.server_config(HOST))).await;
        // The interceptor trusts another CA only.
        let proxy = Proxy::start(other_ca.roots(), true, up, vec![bearer(None)]).await;

        let tls = proxy.connect_tls(proxy.client_roots()).await.expect("tls");
        let mut client = http_client(tls).await;
        let (status, body) = send(
            &mut client,
            HOST,
            &[("authorization", "Bearer ak-proxy-managed")],
            "",
        )
        .await;
        assert_eq!(status, 502);
        assert!(
            body.starts_with(&format!(
                "agentkernel: the certificate of {HOST} is not trusted ("
            )),
            "{body}"
        );
        assert!(body.trim_end().ends_with("); no secret was sent"), "{body}");
        assert!(!body.contains(SECRET));
        let result = proxy.first_result().await;
        assert!(
            matches!(result, Err(TlsError::UpstreamUntrusted { .. })),
            "{result:?}"
        );
        assert!(seen.lock().expect("seen").requests.is_empty());
    });
}

#[test]
fn an_upstream_certificate_for_another_name_is_refused() {
    in_netns(|| async {
        let upstream_ca = TestCa::new("test upstream CA");
        let (up, seen) = upstream(Some(upstream_ca.server_config("elsewhere.test"))).await;
        let proxy = Proxy::start(upstream_ca.roots(), true, up, vec![bearer(None)]).await;

        let tls = proxy.connect_tls(proxy.client_roots()).await.expect("tls");
        let mut client = http_client(tls).await;
        let (status, body) = send(&mut client, HOST, &[], "").await;
        assert_eq!(status, 502);
        assert!(body.contains("is not trusted"), "{body}");
        assert!(body.contains("elsewhere.test"), "{body}");
        assert!(seen.lock().expect("seen").requests.is_empty());
    });
}

#[test]
fn another_host_gets_421_and_the_upstream_never_sees_the_secret() {
    in_netns(|| async {
        let upstream_ca = TestCa::new("test upstream CA");
        let (up, seen) = upstream(Some(upstream_ca.server_config(HOST))).await;
        let proxy = Proxy::start(upstream_ca.roots(), true, up, vec![bearer(None)]).await;

        let tls = proxy.connect_tls(proxy.client_roots()).await.expect("tls");
        let mut client = http_client(tls).await;
        let (status, _) = send(&mut client, "evil.example.test", &[], "").await;
        assert_eq!(status, 421);
        assert!(seen.lock().expect("seen").requests.is_empty());

        // The connection stays usable for the right host.
        let (status, _) = send(&mut client, &format!("{HOST}:443"), &[], "").await;
        assert_eq!(status, 200);
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.requests.len(), 1);
        assert_eq!(
            values(&seen.requests[0].1, "host"),
            vec![format!("{HOST}:443")]
        );
    });
}

#[test]
fn a_placeholder_token_is_replaced_by_the_secret() {
    in_netns(|| async {
        let upstream_ca = TestCa::new("test upstream CA");
        let (up, seen) = upstream(Some(upstream_ca.server_config(HOST))).await;
        let token = "ak-ph-0123456789abcdef";
        let proxy = Proxy::start(
            upstream_ca.roots(),
            true,
            up,
            vec![custom("x-api-key", SECRET, Some(token))],
        )
        .await;

        let tls = proxy.connect_tls(proxy.client_roots()).await.expect("tls");
        let mut client = http_client(tls).await;
        let with_token = format!("key={token}; other=1");
        let (status, _) = send(
            &mut client,
            HOST,
            &[("x-api-key", token), ("x-custom-auth", &with_token)],
            "",
        )
        .await;
        assert_eq!(status, 200);
        let seen = seen.lock().expect("seen");
        let headers = &seen.requests[0].1;
        assert_eq!(values(headers, "x-api-key"), vec![SECRET]);
        assert_eq!(
            values(headers, "x-custom-auth"),
            vec![format!("key={SECRET}; other=1")]
        );
    });
}

#[test]
fn keep_alive_requests_are_all_injected() {
    in_netns(|| async {
        let upstream_ca = TestCa::new("test upstream CA");
        let (up, seen) = upstream(Some(upstream_ca.server_config(HOST))).await;
        let proxy = Proxy::start(upstream_ca.roots(), true, up, vec![bearer(None)]).await;

        let tls = proxy.connect_tls(proxy.client_roots()).await.expect("tls");
        let mut client = http_client(tls).await;
        for body in ["one", "two"] {
            let (status, reply) = send(&mut client, HOST, &[], body).await;
            assert_eq!((status, reply), (200, format!("ok:{body}")));
        }
        let seen = seen.lock().expect("seen");
        assert_eq!(
            seen.connections, 1,
            "both requests on one upstream connection"
        );
        assert_eq!(seen.requests.len(), 2);
        for (_, headers, _) in &seen.requests {
            assert_eq!(
                values(headers, "authorization"),
                vec![format!("Bearer {SECRET}")]
            );
        }
    });
}

#[test]
fn plain_http_is_injected_too() {
    in_netns(|| async {
        let (up, seen) = upstream(None).await;
        // Plain HTTP does not use the roots; any non-empty store will do.
        let proxy =
            Proxy::start(TestCa::new("unused").roots(), false, up, vec![bearer(None)]).await;

        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut client = http_client(tcp).await;
        let (status, body) = send(&mut client, HOST, &[], "plain").await;
        assert_eq!((status, body.as_str()), (200, "ok:plain"));
        let (status, _) = send(&mut client, "evil.example.test", &[], "").await;
        assert_eq!(status, 421);
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.requests.len(), 1);
        assert_eq!(
            values(&seen.requests[0].1, "authorization"),
            vec![format!("Bearer {SECRET}")]
        );
    });
}

#[test]
fn the_ca_is_created_once_with_private_key_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let first = Ca::load_or_create(&keys).expect("create");
    let second = Ca::load_or_create(&keys).expect("load");
    assert_eq!(first.cert_pem(), second.cert_pem());
    assert!(first.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let mode = |name: &str| {
        std::fs::metadata(keys.join(name))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("ca.pem"), 0o644);
    let leftovers: Vec<_> = std::fs::read_dir(&keys)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "ca.key" && n != "ca.pem")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn concurrent_creation_yields_one_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..10 {
        let keys = Arc::new(dir.path().join(format!("keys-{}", rand_suffix())));
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let keys = keys.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    load(&keys)
                })
            })
            .collect();
        let pems: Vec<String> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert!(pems.iter().all(|p| p == &pems[0]), "two CAs were made");
        assert_eq!(load(&keys), pems[0]);
    }
}

fn load(keys: &Path) -> String {
    Ca::load_or_create(keys).expect("ca").cert_pem().to_string()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn oversized_request_heads_are_refused_without_reaching_the_upstream() {
    in_netns(|| async {
        let (up, seen) = upstream(None).await;
        let proxy =
            Proxy::start(TestCa::new("unused").roots(), false, up, vec![bearer(None)]).await;

        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut client = http_client(tcp).await;
        let huge = "x".repeat(200 * 1024);
        client.ready().await.expect("ready");
        let req = Request::get("/")
            .header("host", HOST)
            .header("x-huge", huge.as_str())
            .body(Full::new(Bytes::new()))
            .expect("request");
        // hyper answers 431, or the connection is reset before the client reads it.
        if let Ok(response) = client.send_request(req).await {
            assert_eq!(response.status().as_u16(), 431);
        }
        assert!(proxy.first_result().await.is_err());
        assert!(seen.lock().expect("seen").requests.is_empty());
    });
}
