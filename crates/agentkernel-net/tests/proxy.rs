//! The egress proxy and DNS responder end to end, each test in a network namespace of its own
//! (root required): `lo` up with 10.77.0.1/32 on it, upstream test servers on that address,
//! the proxy on 127.0.0.1, names mapped to 10.77.0.1 by resolver overrides. Nothing leaves the
//! namespace. The transparent-mode tests add an nftables redirect inside that namespace with
//! `nft` (scripts/setup.sh installs it): one aimed at a test range only, so that the proxy's
//! own upstream connections in the same namespace are not redirected back to it.

use agentkernel_net::proxy::{
    self, Context, Decision, Egress, Listeners, Observer, Protocol, Source,
};
use agentkernel_net::resolve::Resolver;
use agentkernel_net::rules::{Mode, Rules};
use agentkernel_net::tls::Binding;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The address upstream test servers listen on, inside each test's namespace.
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

// ---------------------------------------------------------------- namespace plumbing

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
/// `lo` is always interface 1 in a new network namespace.
const LO_INDEX: u32 = 1;

/// Sends one rtnetlink request and checks the kernel's acknowledgement.
fn netlink(kind: u16, flags: u16, body: &[u8]) {
    // Protocol 0 is NETLINK_ROUTE.
    let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)
        .expect("a netlink socket");
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(body);
    rustix::net::send(&fd, &msg, SendFlags::empty()).expect("sending to netlink");
    let mut ack = [0u8; 1024];
    let (n, _) = rustix::net::recv(&fd, &mut ack[..], RecvFlags::empty()).expect("netlink ack");
    assert!(n >= 20, "short netlink ack");
    assert_eq!(u16::from_ne_bytes([ack[4], ack[5]]), NLMSG_ERROR);
    let errno = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
    assert_eq!(
        errno, 0,
        "netlink request {kind} failed with errno {}",
        -errno
    );
}

/// Moves this thread into a new network namespace with `lo` up and 10.77.0.1/32 on it.
fn enter_test_namespace() {
    // SAFETY: only CLONE_NEWNET is unshared, which touches no file descriptor table or memory
    // another thread relies on; this thread is the test's own and runs only this test.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .expect("unshare(CLONE_NEWNET): these tests must run as root");
    // ifinfomsg: family, pad, type, index, flags, change.
    let mut link = vec![0u8, 0, 0, 0];
    link.extend_from_slice(&LO_INDEX.to_ne_bytes());
    link.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    link.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    netlink(RTM_NEWLINK, 0, &link);
    add_address(UPSTREAM, 32);
    // 10.77.1.0/24 routed over lo: addresses the transparent tests dial and nobody serves.
    add_address(Ipv4Addr::new(10, 77, 1, 1), 24);
}

/// `ip addr add IP/PREFIX dev lo`.
fn add_address(ip: Ipv4Addr, prefix: u8) {
    // ifaddrmsg (family, prefix length, flags, scope, index), IFA_LOCAL, IFA_ADDRESS.
    let mut addr = vec![libc::AF_INET as u8, prefix, 0, 0];
    addr.extend_from_slice(&LO_INDEX.to_ne_bytes());
    for attr in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        addr.extend_from_slice(&8u16.to_ne_bytes());
        addr.extend_from_slice(&attr.to_ne_bytes());
        addr.extend_from_slice(&ip.octets());
    }
    netlink(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &addr);
}

/// Runs `test` on a current-thread runtime in a fresh network namespace of its own thread.
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        enter_test_namespace();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(60), test())
                .await
                .expect("the test took over 60 s")
        });
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------- proxy fixtures

struct TestSource(Mutex<Arc<Egress>>);

impl TestSource {
    fn set_egress(&self, egress: Egress) {
        *self.0.lock().expect("source lock") = Arc::new(egress);
    }

    fn set(&self, rules: Rules) {
        *self.0.lock().expect("source lock") = Arc::new(Egress {
            rules,
            bindings: Vec::new(),
        });
    }
}

impl Source for TestSource {
    fn current(&self) -> Arc<Egress> {
        self.0.lock().expect("source lock").clone()
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Decision>>);

impl Observer for Recorder {
    fn decision(&self, d: &Decision) {
        self.0.lock().expect("recorder lock").push(d.clone());
    }
}

impl Recorder {
    fn all(&self) -> Vec<Decision> {
        self.0.lock().expect("recorder lock").clone()
    }
}

fn allowlist(allow: &[&str]) -> Rules {
    Rules {
        refuse_host_addresses: false,
        mode: Mode::Allowlist,
        allow: allow.iter().map(|s| s.to_string()).collect(),
        deny: Vec::new(),
        block_private: false,
    }
}

struct Proxy {
    tcp: SocketAddr,
    dns: SocketAddr,
    source: Arc<TestSource>,
    seen: Arc<Recorder>,
}

/// Starts a proxy on 127.0.0.1 (TCP and DNS) with `rules`; the names `allowed.test`,
/// `other.test` and `denied.test` all resolve to 10.77.0.1.
fn start_proxy(rules: Rules, tcp_port: u16) -> Proxy {
    let tcp = std::net::TcpListener::bind(("127.0.0.1", tcp_port)).expect("proxy listener");
    let dns = std::net::UdpSocket::bind("127.0.0.1:0").expect("dns socket");
    let (tcp_addr, dns_addr) = (
        tcp.local_addr().expect("address"),
        dns.local_addr().expect("address"),
    );
    let source = Arc::new(TestSource(Mutex::new(Arc::new(Egress {
        rules,
        bindings: Vec::new(),
    }))));
    let seen = Arc::new(Recorder::default());
    let upstream = vec![IpAddr::V4(UPSTREAM)];
    let ctx = Arc::new(Context {
        source: source.clone(),
        observer: seen.clone(),
        resolver: Resolver::fixed([
            ("allowed.test", upstream.clone()),
            ("other.test", upstream.clone()),
            ("denied.test", upstream),
        ]),
        interceptor: None,
    });
    let listeners = Listeners {
        tcp: vec![tcp],
        dns: vec![dns],
    };
    tokio::spawn(async move {
        proxy::serve(listeners, ctx)
            .await
            .expect("the proxy failed");
    });
    Proxy {
        tcp: tcp_addr,
        dns: dns_addr,
        source,
        seen,
    }
}

/// An upstream server on 10.77.0.1 that echoes what it gets.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind((UPSTREAM, 0))
        .await
        .expect("echo listener");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// An upstream HTTP server on 10.77.0.1 answering 200 with `<request line>|<host header>`.
async fn http_server() -> u16 {
    let listener = TcpListener::bind((UPSTREAM, 0))
        .await
        .expect("http listener");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let line = head.lines().next().unwrap_or_default().to_string();
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Host: "))
                    .unwrap_or_default()
                    .to_string();
                let body = format!("{line}|{host}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

/// Sends `request` and reads the whole answer until the other side closes.
async fn exchange(to: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(to)
        .await
        .expect("connecting to the proxy");
    s.write_all(request).await.expect("sending the request");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).to_string()
}

/// CONNECTs through the proxy; on 200, returns the tunnel.
async fn connect(proxy: SocketAddr, target: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(proxy)
        .await
        .expect("connecting to the proxy");
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("sending CONNECT");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if head.starts_with("HTTP/1.1 200 ") {
        Ok(s)
    } else {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        Err(format!("{head}{}", String::from_utf8_lossy(&rest)))
    }
}

/// Writes `payload` into a tunnel and reads as many bytes back.
async fn round_trip(s: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    s.write_all(payload).await.expect("writing into the tunnel");
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).await.expect("reading the echo");
    back
}

/// A TLS ClientHello record naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let n = sni.len() as u16;
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(n + 5).to_be_bytes());
    ext.extend_from_slice(&(n + 3).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&n.to_be_bytes());
    ext.extend_from_slice(sni.as_bytes());
    let mut body = vec![3, 3];
    body.extend_from_slice(&[9; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
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

/// Reads until the peer closes; what came.
async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

// ---------------------------------------------------------------- explicit mode

#[test]
fn connect_to_an_allowed_name_round_trips_and_others_get_403() {
    in_netns(|| async {
        let port = echo_server().await;
        let p = start_proxy(allowlist(&["allowed.test"]), 0);
        let mut tunnel = connect(p.tcp, &format!("allowed.test:{port}"))
            .await
            .expect("CONNECT to an allowed name");
        assert_eq!(
            round_trip(&mut tunnel, b"hello through the proxy").await,
            b"hello through the proxy"
        );
        drop(tunnel);

        let refused = connect(p.tcp, &format!("other.test:{port}"))
            .await
            .expect_err("CONNECT to a name outside the allowlist");
        assert!(
            refused.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{refused}"
        );
        assert!(
            refused.contains("agentkernel: other.test is blocked by the sandbox's network policy (not in the sandbox's allowlist)"),
            "{refused}"
        );

        let seen = p.seen.all();
        assert!(
            seen.iter()
                .any(|d| d.allowed && d.host.as_deref() == Some("allowed.test") && d.port == port)
        );
        assert!(seen.iter().any(|d| !d.allowed
            && d.host.as_deref() == Some("other.test")
            && d.reason.as_deref() == Some("not in the sandbox's allowlist")));
    });
}

#[test]
fn absolute_form_get_is_forwarded_in_origin_form() {
    in_netns(|| async {
        let port = http_server().await;
        let p = start_proxy(allowlist(&["allowed.test"]), 0);
        let req = format!(
            "GET http://allowed.test:{port}/path?q=1 HTTP/1.1\r\nHost: allowed.test:{port}\r\nProxy-Connection: keep-alive\r\n\r\n"
        );
        let reply = exchange(p.tcp, req.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(
            reply.ends_with(&format!("GET /path?q=1 HTTP/1.1|allowed.test:{port}")),
            "{reply}"
        );

        let req = format!("GET http://other.test:{port}/ HTTP/1.1\r\nHost: other.test\r\n\r\n");
        let reply = exchange(p.tcp, req.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{reply}");

        let reply = exchange(
            p.tcp,
            b"GET /relative HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
        assert!(
            p.seen
                .all()
                .iter()
                .any(|d| d.allowed && d.protocol == Protocol::Http)
        );
    });
}

#[test]
fn metadata_by_any_spelling_is_refused_even_in_full_mode() {
    in_netns(|| async {
        let p = start_proxy(
            Rules {
                refuse_host_addresses: false,
                mode: Mode::Full,
                allow: Vec::new(),
                deny: Vec::new(),
                block_private: false,
            },
            0,
        );
        for target in [
            "2852039166:80",
            "0xA9FEA9FE:80",
            "[::ffff:169.254.169.254]:80",
            "metadata.google.internal:80",
        ] {
            let refused = connect(p.tcp, target).await.expect_err(target);
            assert!(
                refused.starts_with("HTTP/1.1 403 Forbidden\r\n"),
                "{target}: {refused}"
            );
            assert!(
                refused.contains("(cloud metadata address)"),
                "{target}: {refused}"
            );
        }
        let reply = exchange(
            p.tcp,
            b"GET http://2852039166/latest/meta-data/ HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(
            reply.contains("403 Forbidden") && reply.contains("cloud metadata address"),
            "{reply}"
        );
        let refused = connect(p.tcp, "127.1:22").await.expect_err("loopback");
        assert!(refused.contains("(the host's loopback)"), "{refused}");
        // Full mode reaches a (private, not blocked) address directly.
        let port = echo_server().await;
        let mut tunnel = connect(p.tcp, &format!("10.77.0.1:{port}"))
            .await
            .expect("full mode to an address");
        assert_eq!(round_trip(&mut tunnel, b"x").await, b"x");
    });
}

#[test]
fn names_inside_a_tunnel_are_checked_too() {
    in_netns(|| async {
        let port = echo_server().await;
        let p = start_proxy(allowlist(&["allowed.test"]), 0);
        // A ClientHello naming the allowed host goes through untouched.
        let hello = client_hello("allowed.test");
        let mut tunnel = connect(p.tcp, &format!("allowed.test:{port}"))
            .await
            .expect("CONNECT");
        assert_eq!(round_trip(&mut tunnel, &hello).await, hello);
        // One naming a denied host (domain fronting) is cut off.
        let mut tunnel = connect(p.tcp, &format!("allowed.test:{port}"))
            .await
            .expect("CONNECT");
        tunnel
            .write_all(&client_hello("denied.test"))
            .await
            .expect("write");
        assert!(
            read_all(&mut tunnel).await.is_empty(),
            "the denied SNI got an answer"
        );
        let mut tunnel = connect(p.tcp, &format!("allowed.test:{port}"))
            .await
            .expect("CONNECT");
        tunnel
            .write_all(b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")
            .await
            .expect("write");
        assert!(
            read_all(&mut tunnel).await.is_empty(),
            "the denied Host got an answer"
        );
        assert!(
            p.seen
                .all()
                .iter()
                .any(|d| !d.allowed && d.host.as_deref() == Some("denied.test"))
        );
    });
}

#[test]
fn a_policy_change_applies_to_the_next_connection() {
    in_netns(|| async {
        let port = echo_server().await;
        let p = start_proxy(allowlist(&["allowed.test"]), 0);
        let target = format!("allowed.test:{port}");
        let mut first = connect(p.tcp, &target).await.expect("allowed at first");
        p.source.set(allowlist(&["other.test"]));
        let refused = connect(p.tcp, &target)
            .await
            .expect_err("refused after the change");
        assert!(refused.contains("403 Forbidden"), "{refused}");
        // The connection made before the change is not cut.
        assert_eq!(round_trip(&mut first, b"still here").await, b"still here");
        let mut other = connect(p.tcp, &format!("other.test:{port}"))
            .await
            .expect("newly allowed");
        assert_eq!(round_trip(&mut other, b"y").await, b"y");
        p.source.set(Rules {
            refuse_host_addresses: false,
            deny: vec!["*.test".into()],
            ..allowlist(&["other.test"])
        });
        let refused = connect(p.tcp, &format!("other.test:{port}"))
            .await
            .expect_err("denied by pattern");
        assert!(refused.contains("(denied by pattern *.test)"), "{refused}");
    });
}

#[test]
fn two_hundred_concurrent_connections_all_work() {
    in_netns(|| async {
        let port = echo_server().await;
        let p = start_proxy(allowlist(&["allowed.test"]), 0);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let proxy = p.tcp;
            tasks.spawn(async move {
                let mut t = connect(proxy, &format!("allowed.test:{port}")).await?;
                let payload = format!("connection {i}");
                let back = round_trip(&mut t, payload.as_bytes()).await;
                if back == payload.as_bytes() {
                    Ok(())
                } else {
                    Err(format!("connection {i} got {back:?}"))
                }
            });
        }
        let mut ok = 0;
        while let Some(done) = tasks.join_next().await {
            done.expect("a client task panicked")
                .expect("a connection failed");
            ok += 1;
        }
        assert_eq!(ok, 200);
        assert_eq!(p.seen.all().iter().filter(|d| d.allowed).count(), 200);
    });
}

// ---------------------------------------------------------------- DNS

async fn dns_query(server: SocketAddr, name: &str, kind: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    let mut q = Message::new(0x4242, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.queries
        .push(Query::query(Name::from_str(name).expect("a name"), kind));
    sock.send_to(&q.to_vec().expect("encoding"), server)
        .await
        .expect("send");
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("no DNS answer within 5 s")
        .expect("recv");
    Message::from_vec(&buf[..n]).expect("a DNS message")
}

#[test]
fn dns_answers_allowed_names_and_nxdomains_the_rest() {
    in_netns(|| async {
        let p = start_proxy(allowlist(&["allowed.test"]), 0);
        let a = dns_query(p.dns, "Allowed.Test.", RecordType::A).await;
        assert_eq!(a.metadata.id, 0x4242);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        let ips: Vec<_> = a
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(ips, vec![UPSTREAM]);
        assert!(a.answers.iter().all(|r| r.ttl == 30));

        let aaaa = dns_query(p.dns, "allowed.test.", RecordType::AAAA).await;
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        let txt = dns_query(p.dns, "allowed.test.", RecordType::TXT).await;
        assert_eq!(txt.metadata.response_code, ResponseCode::NoError);
        assert!(txt.answers.is_empty());

        for (name, kind) in [
            ("other.test.", RecordType::A),
            ("other.test.", RecordType::TXT),
            ("metadata.google.internal.", RecordType::A),
        ] {
            let r = dns_query(p.dns, name, kind).await;
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::NXDomain,
                "{name} {kind}"
            );
            assert!(r.answers.is_empty());
        }
        // Garbage is ignored and the server keeps answering.
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
        sock.send_to(b"\x00garbage", p.dns).await.expect("send");
        let again = dns_query(p.dns, "allowed.test.", RecordType::A).await;
        assert_eq!(again.answers.len(), 1);

        let seen = p.seen.all();
        assert!(seen.iter().any(|d| d.protocol == Protocol::Dns
            && d.allowed
            && d.port == 53
            && d.ip == Some(IpAddr::V4(UPSTREAM))));
        assert!(seen.iter().any(|d| d.protocol == Protocol::Dns
            && !d.allowed
            && d.host.as_deref() == Some("other.test")));
    });
}

// ---------------------------------------------------------------- transparent mode

/// Redirects TCP to 10.77.1.0/24 (addresses nothing listens on) to the proxy's port, as the
/// sandbox's nat rule does.
fn redirect_to(port: u16) {
    let script = format!(
        "table ip ak {{\n chain out {{\n  type nat hook output priority -100;\n  ip daddr 10.77.1.0/24 meta l4proto tcp redirect to :{port}\n }}\n}}\n"
    );
    match std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("nft stdin")
                .write_all(script.as_bytes())
                .expect("writing the nft script");
            let status = child.wait().expect("nft");
            assert!(
                status.success(),
                "nft could not add the redirect in the test namespace"
            );
        }
        Err(e) => panic!("nft is not available ({e}): run scripts/setup.sh (it installs nftables)"),
    }
}

#[test]
fn transparent_connections_are_decided_by_sni_and_host() {
    in_netns(|| async {
        let echo = echo_server().await;
        let http = http_server().await;
        let p = start_proxy(allowlist(&["allowed.test"]), 0);
        redirect_to(p.tcp.port());
        // The program dials an address nobody listens on; the proxy goes where the allowed
        // name resolves, on the dialled port, and the peeked bytes all arrive.
        let hello = client_hello("allowed.test");
        let mut s = TcpStream::connect(("10.77.1.9", echo)).await.expect("dial");
        assert_eq!(round_trip(&mut s, &hello).await, hello);

        let mut s = TcpStream::connect(("10.77.1.9", echo)).await.expect("dial");
        s.write_all(&client_hello("denied.test"))
            .await
            .expect("write");
        assert!(
            read_all(&mut s).await.is_empty(),
            "a denied SNI got through"
        );

        let req = b"GET /x HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
        let reply = exchange(SocketAddr::from(([10, 77, 1, 9], http)), req).await;
        assert!(
            reply.starts_with("HTTP/1.1 200 OK") && reply.ends_with("GET /x HTTP/1.1|allowed.test"),
            "{reply}"
        );

        let req = b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n";
        let reply = exchange(SocketAddr::from(([10, 77, 1, 9], http)), req).await;
        assert!(reply.starts_with("HTTP/1.1 403 Forbidden"), "{reply}");
        assert!(reply.contains("other.test is blocked by the sandbox's network policy (not in the sandbox's allowlist)"), "{reply}");

        let req = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 2852039166\r\n\r\n";
        let reply = exchange(SocketAddr::from(([10, 77, 1, 9], http)), req).await;
        assert!(
            reply.contains("403 Forbidden") && reply.contains("(cloud metadata address)"),
            "{reply}"
        );

        // A client that says nothing (server speaks first) has no name: refused in allowlist.
        let mut s = TcpStream::connect(("10.77.1.9", echo)).await.expect("dial");
        assert!(read_all(&mut s).await.is_empty());
        let seen = p.seen.all();
        assert!(seen.iter().any(|d| d.allowed
            && d.protocol == Protocol::Tls
            && d.host.as_deref() == Some("allowed.test")));
        assert!(seen.iter().any(|d| !d.allowed
            && d.protocol == Protocol::Tcp
            && d.host.is_none()
            && d.ip == Some(IpAddr::from([10, 77, 1, 9]))));
    });
}

#[test]
fn secret_bound_hosts_are_refused_without_an_interceptor() {
    in_netns(|| async {
        let port = echo_server().await;
        let http = http_server().await;
        let p = start_proxy(allowlist(&["allowed.test", "other.test"]), 0);
        p.source.set_egress(Egress {
            rules: allowlist(&["allowed.test", "other.test"]),
            bindings: vec![Binding {
                host: "allowed.test".into(),
                header: "authorization".into(),
                value: "Bearer secret".into(),
                placeholder: None,
            }],
        });
        let refused = connect(p.tcp, &format!("allowed.test:{port}"))
            .await
            .expect_err("a bound host without an interceptor");
        assert!(
            refused.contains("403 Forbidden") && refused.contains("(secret injection unavailable)"),
            "{refused}"
        );
        let req = format!("GET http://allowed.test:{http}/ HTTP/1.1\r\n\r\n");
        let reply = exchange(p.tcp, req.as_bytes()).await;
        assert!(
            reply.contains("403 Forbidden") && reply.contains("(secret injection unavailable)"),
            "{reply}"
        );
        // Hosts without bindings are unaffected.
        let mut t = connect(p.tcp, &format!("other.test:{port}"))
            .await
            .expect("unbound host");
        assert_eq!(round_trip(&mut t, b"z").await, b"z");
    });
}
