//! Attacks on the HTTP layer of `agentkernel serve`, each performed against a real server and
//! required to fail: a web page reaching a keyless loopback server (DNS rebinding, cross-site
//! form posts, foreign origins), slowloris clients holding connections, hostile numbers and
//! durations that used to panic the server, oversized lists, and output that would pile up
//! in the server's memory.

mod common;
use common::serve::ServeProcess;
use common::*;
use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The server's header-read timeout (`agentkernel_server::HEADER_READ_TIMEOUT`) and the margin
/// a loaded test machine gets on top of it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(20);

fn addr_of(srv: &ServeProcess) -> SocketAddr {
    srv.base
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("server address {}: {e}", srv.base))
}

/// One answer read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts an error envelope with `status`; returns its message.
    fn refused(&self, status: u16, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}: not JSON: {self:?}"
        );
        let json = self.json();
        assert_eq!(json["success"], false, "{what}: not an envelope: {self:?}");
        json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message: {self:?}"))
            .to_string()
    }

    /// Asserts a 2xx answer (an envelope with success when it is JSON).
    fn accepted(&self, what: &str) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{what}: expected success: {self:?}"
        );
        let json = self.json();
        if !json.is_null() {
            assert_eq!(json["success"], true, "{what}: {self:?}");
        }
        json["data"].clone()
    }
}

/// Sends `head` (request line and headers, without the final blank line) with `body` on a
/// fresh connection (`Content-Length` added when there is a body) and reads the answer: the
/// whole body, or only the head when `head_only` (an event stream does not end).
fn send(addr: SocketAddr, head: &str, body: &str, head_only: bool) -> Answer {
    let mut conn = TcpStream::connect(addr).expect("connect to the server");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set a read timeout");
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    write!(conn, "{head}\r\nConnection: close\r\n{length}\r\n{body}").expect("send the request");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{head}: read the answer: {e} (so far {bytes:?})"),
        }
        if head_only && bytes.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head_text, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{head}: no end of headers in {text:?}"));
    let status = head_text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{head}: no status in {text:?}"));
    Answer {
        status,
        head: head_text.to_string(),
        body: body.to_string(),
    }
}

/// A request with `Host: 127.0.0.1:PORT` and a JSON body (`{}` when `body` is null).
fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Answer {
    send(
        addr,
        &format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
        &body.to_string(),
        false,
    )
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}"),
        "",
        false,
    )
}

/// The server answers, and its process is alive.
fn still_serving(addr: SocketAddr, srv: &ServeProcess, after: &str) {
    let health = get(addr, "/health");
    assert_eq!(
        health.accepted(&format!("GET /health after {after}")),
        json!("ok"),
        "server log:\n{}",
        srv.log()
    );
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A running sandbox (host image, no network) made with the CLI.
fn running_sandbox(ak: &Ak, prefix: &str) -> String {
    let name = unique(prefix);
    ak.ok(&["create", &name, "--image", "host", "--no-network"]);
    ak.ok(&["start", &name]);
    name
}

const MCP_INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"attack","version":"1"}}}"#;

// ---------------------------------------------------------------------------------------------
// Web pages against a keyless loopback server
// ---------------------------------------------------------------------------------------------

/// A DNS-rebinding page reaches 127.0.0.1 under its own name, which the browser sends as
/// `Host`: every route refuses it, `/health` and `/mcp` included; loopback names, IP literals
/// and the names the operator allowed are served.
#[test]
fn dns_rebinding_hosts_are_refused_on_every_route() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool", "--allowed-host", "sandboxes.test"]);
    let addr = addr_of(&srv);
    let port = addr.port();
    let run =
        json!({"command": ["echo", "rebound"], "image": "host", "no_network": true}).to_string();
    let routes: [(&str, &str, &str, &str); 5] = [
        ("POST", "/run", "Content-Type: application/json", &run),
        ("GET", "/sandboxes", "", ""),
        (
            "POST",
            "/mcp",
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream",
            MCP_INITIALIZE,
        ),
        ("GET", "/health", "", ""),
        ("POST", "/gc", "", ""),
    ];
    let hostile = [
        format!("attacker.example:{port}"),
        "attacker.example".to_string(),
        format!("sandboxes.test.attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("rebind.localhost:{port}"),
    ];
    for host in &hostile {
        for (method, path, headers, body) in routes {
            let extra = if headers.is_empty() {
                String::new()
            } else {
                format!("\r\n{headers}")
            };
            let what = format!("{method} {path} with Host {host}");
            let answer = send(
                addr,
                &format!("{method} {path} HTTP/1.1\r\nHost: {host}{extra}"),
                body,
                false,
            );
            let message = answer.refused(403, &what);
            assert!(
                message.contains("--allowed-host"),
                "{what}: the message says how to allow a name: {message}"
            );
        }
    }
    // No Host at all (HTTP/1.0 allows leaving it out): refused too.
    send(addr, "GET /sandboxes HTTP/1.0", "", false).refused(403, "GET /sandboxes without Host");
    // The request target's authority must agree with Host.
    send(
        addr,
        &format!("GET http://attacker.example:{port}/sandboxes HTTP/1.1\r\nHost: 127.0.0.1:{port}"),
        "",
        false,
    )
    .refused(403, "an absolute-form target naming another host");

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost.:{port}"),
        format!("[::1]:{port}"),
        format!("sandboxes.test:{port}"),
        format!("SANDBOXES.test:{port}"),
    ] {
        let what = format!("with Host {host}");
        send(
            addr,
            &format!("GET /health HTTP/1.1\r\nHost: {host}"),
            "",
            false,
        )
        .accepted(&format!("GET /health {what}"));
        assert_eq!(
            send(
                addr,
                &format!("GET /sandboxes HTTP/1.1\r\nHost: {host}"),
                "",
                false
            )
            .accepted(&format!("GET /sandboxes {what}")),
            json!([])
        );
    }
    let data = send(
        addr,
        &format!("POST /run HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json"),
        &run,
        false,
    )
    .accepted("POST /run with Host localhost");
    assert_eq!(data["stdout"], "rebound\n", "{data}");
    // /mcp with a good Host goes on to the MCP transport.
    let mcp = send(
        addr,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream"
        ),
        MCP_INITIALIZE,
        true,
    );
    assert_eq!(mcp.status, 200, "POST /mcp initialize: {mcp:?}");
    still_serving(addr, &srv, "the rebinding attempts");
}

/// A page may POST a form or `text/plain` to any origin without asking: `/gc` and `/stop`
/// refuse them (and JSON from a foreign origin, and `Origin: null`), and nothing happens.
#[test]
fn cross_site_posts_are_refused_and_change_nothing() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool"]);
    let addr = addr_of(&srv);
    let name = running_sandbox(&ak, "xsite");
    let stop = format!("/sandboxes/{name}/stop");
    for path in ["/gc", stop.as_str()] {
        for (content_type, body) in [
            ("application/x-www-form-urlencoded", "a=b"),
            ("text/plain", "{\"a\": 1}"),
            ("multipart/form-data; boundary=x", "--x--\r\n"),
        ] {
            // As a browser sends it (with its page's Origin), and without Origin.
            for origin in ["Origin: http://evil.example\r\n", ""] {
                let what = format!("POST {path} as {content_type} {origin:?}");
                let answer = send(
                    addr,
                    &format!(
                        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{origin}Content-Type: {content_type}"
                    ),
                    body,
                    false,
                );
                let status = if origin.is_empty() { 415 } else { 403 };
                answer.refused(status, &what);
            }
        }
        for origin in [
            "http://evil.example",
            "null",
            &format!("http://localhost:{}", addr.port() + 1),
        ] {
            let what = format!("POST {path} as JSON from {origin}");
            send(
                addr,
                &format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nContent-Type: application/json"
                ),
                "{}",
                false,
            )
            .refused(403, &what);
        }
    }
    send(
        addr,
        &format!("POST /run HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\nContent-Type: application/json"),
        &json!({"command": ["true"], "image": "host"}).to_string(),
        false,
    )
    .refused(403, "POST /run from a foreign origin");
    assert_eq!(
        ak.status_of(&name).as_deref(),
        Some("running"),
        "a refused stop stopped the sandbox"
    );
    // The server's own origin is not a foreign one.
    assert_eq!(
        send(
            addr,
            &format!("GET /sandboxes/{name} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}"),
            "",
            false,
        )
        .accepted("GET with the server's own Origin")["name"],
        name
    );
    still_serving(addr, &srv, "the cross-site posts");
    ak.ok(&["remove", &name]);
}

/// A body-less POST is what a page's form without fields sends: refused when it comes with an
/// Origin (every browser POST does). The published SDKs send body-less POSTs without Origin or
/// Content-Type (`restore_snapshot`, and start/stop/gc): those are served.
#[test]
fn bodyless_posts_from_pages_are_refused_and_the_sdks_are_served() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool"]);
    let addr = addr_of(&srv);
    let name = running_sandbox(&ak, "bare");
    let stop = format!("/sandboxes/{name}/stop");
    send(
        addr,
        &format!("POST {stop} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example"),
        "",
        false,
    )
    .refused(403, "a body-less POST from a foreign origin");
    // Even from the server's own origin a body-less POST needs the JSON content type: only
    // the exact shape the SDKs send (no Origin, no Content-Type) passes without it.
    send(
        addr,
        &format!(
            "POST {stop} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nContent-Length: 0"
        ),
        "",
        false,
    )
    .refused(415, "a body-less POST with the server's own Origin");
    assert_eq!(ak.status_of(&name).as_deref(), Some("running"));

    // The SDKs: `POST /snapshots/{name}/restore` with neither body nor Content-Type.
    let message = send(
        addr,
        &format!("POST /snapshots/{name}/restore HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0"),
        "",
        false,
    )
    .refused(404, "the SDKs' body-less restore");
    assert!(message.contains("snapshot"), "{message}");
    let stopped = send(
        addr,
        &format!("POST {stop} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0"),
        "",
        false,
    )
    .accepted("an SDK's body-less stop");
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    ak.ok(&["remove", &name]);
}

// ---------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------

/// 200 slowloris connections trickle their headers a byte at a time; the server closes each
/// within its header timeout (plus a margin for a loaded machine) and serves a normal client
/// meanwhile. A keep-alive connection left idle, and a request whose body stops arriving, are
/// closed the same way.
#[test]
fn slowloris_connections_are_closed_and_others_are_served() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool"]);
    let addr = addr_of(&srv);
    let started = Instant::now();
    let mut slow: Vec<Option<TcpStream>> = (0..200)
        .map(|i| {
            let mut conn = TcpStream::connect(addr).expect("open a slow connection");
            write!(conn, "GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow-{i}: ")
                .expect("start the slow request");
            conn.set_nonblocking(true).expect("non-blocking");
            Some(conn)
        })
        .collect();
    // An idle keep-alive connection, after one answered request.
    let mut idle = TcpStream::connect(addr).expect("open a keep-alive connection");
    write!(idle, "GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut first = [0u8; 1024];
    let n = idle.read(&mut first).expect("read the first answer");
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    idle.set_nonblocking(true).expect("non-blocking");
    let mut idle = Some(idle);
    let mut idle_closed = false;
    // A body that stops arriving.
    let mut stalled = TcpStream::connect(addr).expect("open a stalled-body connection");
    write!(
        stalled,
        "POST /run HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"comm"
    )
    .expect("send part of a body");
    stalled
        .set_read_timeout(Some(HEADER_TIMEOUT + MARGIN))
        .expect("read timeout");

    // While they hang on, the server serves others.
    assert_eq!(
        get(addr, "/sandboxes").accepted("GET /sandboxes during the slowloris"),
        json!([])
    );
    let data = post_json(
        addr,
        "/run",
        &json!({"command": ["echo", "served"], "image": "host", "no_network": true}),
    )
    .accepted("POST /run during the slowloris");
    assert_eq!(data["stdout"], "served\n");
    let open_meanwhile = slow.iter().filter(|c| c.is_some()).count();

    let deadline = started + HEADER_TIMEOUT + MARGIN;
    while Instant::now() < deadline && (slow.iter().any(Option::is_some) || !idle_closed) {
        for conn in slow.iter_mut() {
            if let Some(c) = conn
                && (closed_by_server(c) || c.write_all(b"x").is_err())
            {
                *conn = None;
            }
        }
        // The idle connection is only watched: a byte would start a new request.
        if let Some(c) = &mut idle
            && closed_by_server(c)
        {
            idle_closed = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let still_open = slow.iter().filter(|c| c.is_some()).count();
    assert_eq!(
        still_open,
        0,
        "{still_open} of 200 slowloris connections were still open {}s after they started (header timeout {}s)",
        (HEADER_TIMEOUT + MARGIN).as_secs(),
        HEADER_TIMEOUT.as_secs()
    );
    assert!(
        idle_closed,
        "an idle keep-alive connection was still open after {}s",
        (HEADER_TIMEOUT + MARGIN).as_secs()
    );
    assert!(
        open_meanwhile > 0,
        "the slow connections were closed before the normal requests were served: the test proved nothing"
    );
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = stalled.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body is answered 408: {answer:?}"
    );
    still_serving(addr, &srv, "the slowloris");
}

/// Whether the server has closed `conn` (a non-blocking socket).
fn closed_by_server(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer the server sent before closing
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile values
// ---------------------------------------------------------------------------------------------

/// `ttl: "999999999999d"` used to panic the server (and, built with `panic = "abort"`, kill
/// it): now it is a 400 that says the bound, nothing is made, and the server answers on.
#[test]
fn a_huge_ttl_is_refused_and_the_server_lives() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool"]);
    let addr = addr_of(&srv);
    let name = unique("ttl");
    let message = post_json(
        addr,
        "/sandboxes",
        &json!({"name": name, "image": "host", "no_network": true, "ttl": "999999999999d"}),
    )
    .refused(400, "a TTL of 999999999999 days");
    assert!(
        message.contains("3650d"),
        "the message says the bound: {message}"
    );
    assert!(ak.list_json().is_empty(), "a refused create left a sandbox");
    still_serving(addr, &srv, "the huge TTL");
    // The bound itself is accepted.
    let info = post_json(
        addr,
        "/sandboxes",
        &json!({"name": name, "image": "host", "no_network": true, "ttl": "3650d"}),
    )
    .accepted("a TTL of ten years");
    assert!(info["expires_at"].is_string(), "{info}");
    ak.ok(&["remove", &name]);
}

/// Every number and duration a request can carry, with hostile values: huge, negative,
/// fractional, out of any range, and strings that only look like numbers. Each is a 4xx in
/// the envelope, nothing runs or is made, and the server answers on.
#[test]
fn hostile_numbers_and_durations_are_refused_and_the_server_lives() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool"]);
    let addr = addr_of(&srv);
    let target = running_sandbox(&ak, "hostile");
    let with_ttl = format!("{target}-ttl");
    ak.ok(&[
        "create",
        &with_ttl,
        "--image",
        "host",
        "--no-network",
        "--ttl",
        "1h",
    ]);
    let expiry = |ak: &Ak| {
        ak.list_json()
            .into_iter()
            .find(|s| s["name"] == with_ttl.as_str())
            .map(|s| s["expires_at"].clone())
            .expect("the TTL sandbox is listed")
    };
    let expires_at = expiry(&ak);
    assert!(expires_at.is_string(), "{expires_at}");
    let numbers: Vec<Value> = vec![
        json!(1e30),
        json!(-1),
        json!(-1.5),
        json!(1.5),
        json!(u64::MAX),
        serde_json::from_str("18446744073709551616").expect("a big number"),
        serde_json::from_str("1e400").unwrap_or(json!("1e400")),
        json!("NaN"),
        json!("Infinity"),
        json!("-0x10"),
        json!("12"),
        json!(true),
        json!([1]),
        json!({"n": 1}),
    ];
    let durations: Vec<Value> = vec![
        json!("999999999999d"),
        json!("18446744073709551615"),
        json!("99999999999999999999999999s"),
        json!("3651d"),
        json!("-1h"),
        json!("1.5h"),
        json!("NaN"),
        json!("1e9s"),
        json!(""),
        json!("0m"),
        json!("1y"),
        json!(3600),
        json!(["1h"]),
    ];
    let run = |field: &str, value: &Value| {
        let mut body = json!({"command": ["true"], "image": "host", "no_network": true});
        body[field] = value.clone();
        body
    };
    let mut cases: Vec<(String, Value)> = Vec::new();
    for v in &numbers {
        for field in ["timeout_ms", "memory_mb", "disk_mb"] {
            cases.push(("/run".into(), run(field, v)));
        }
        // vcpus is a real number: only its hostile values.
        if v.as_f64().is_none_or(|f| !(0.0..=1024.0).contains(&f)) {
            cases.push(("/run".into(), run("vcpus", v)));
            cases.push((
                "/sandboxes".into(),
                json!({"name": unique("n"), "image": "host", "no_network": true, "vcpus": v}),
            ));
        }
        for field in ["memory_mb", "disk_mb"] {
            let mut create = json!({"name": unique("n"), "image": "host", "no_network": true});
            create[field] = v.clone();
            cases.push(("/sandboxes".into(), create));
        }
        for path in ["exec", "exec/stream", "exec/detach"] {
            cases.push((
                format!("/sandboxes/{target}/{path}"),
                json!({"command": ["true"], "timeout_ms": v}),
            ));
        }
    }
    cases.push(("/run".into(), run("timeout_ms", &json!(0))));
    cases.push(("/run".into(), run("timeout_ms", &json!(86_400_001))));
    for d in &durations {
        cases.push((
            "/sandboxes".into(),
            json!({"name": unique("n"), "image": "host", "no_network": true, "ttl": d}),
        ));
        cases.push((format!("/sandboxes/{with_ttl}/extend"), json!({"by": d})));
    }
    for (path, body) in &cases {
        let answer = post_json(addr, path, body);
        assert!(
            (400..500).contains(&answer.status),
            "POST {path} {body}: expected a 4xx: {answer:?}\nserver log:\n{}",
            srv.log()
        );
        assert_eq!(
            answer.json()["success"],
            false,
            "POST {path} {body}: {answer:?}"
        );
    }
    // Nothing was made but the two sandboxes of the test, and the TTL is unchanged.
    assert_eq!(expiry(&ak), expires_at);
    let mut names: Vec<String> = ak
        .list_json()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    let mut expected = [target.clone(), with_ttl.clone()];
    expected.sort();
    assert_eq!(names, expected);
    still_serving(addr, &srv, &format!("{} hostile requests", cases.len()));
    ak.ok(&["remove", &target]);
    ak.ok(&["remove", &with_ttl]);
}

/// Lists and paths beyond their bounds are refused before anything runs.
#[test]
fn oversized_lists_and_paths_are_refused() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool"]);
    let addr = addr_of(&srv);
    let target = running_sandbox(&ak, "lists");
    let env: Vec<String> = (0..1025).map(|i| format!("V{i}=x")).collect();
    let labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let files: serde_json::Map<String, Value> = (0..1025)
        .map(|i| (format!("f{i}.txt"), json!("x")))
        .collect();
    let commands: Vec<Value> = (0..65)
        .map(|_| json!({"command": ["true"], "image": "host"}))
        .collect();
    let long_path = "a/".repeat(2100);
    for (path, body) in [
        (
            "/run".to_string(),
            json!({"command": ["true"], "image": "host", "no_network": true, "env": env}),
        ),
        (
            "/sandboxes".to_string(),
            json!({"name": unique("n"), "image": "host", "no_network": true, "env": env}),
        ),
        (
            "/sandboxes".to_string(),
            json!({"name": unique("n"), "image": "host", "no_network": true, "labels": labels}),
        ),
        (
            format!("/sandboxes/{target}/exec"),
            json!({"command": ["true"], "env": env}),
        ),
        (
            format!("/sandboxes/{target}/files"),
            json!({"files": files}),
        ),
        (
            format!("/sandboxes/{target}/files"),
            json!({"files": {long_path.clone(): "x"}}),
        ),
        ("/batch/run".to_string(), json!({"commands": commands})),
    ] {
        let what = format!("POST {path} (oversized)");
        let message = post_json(addr, &path, &body).refused(400, &what);
        assert!(message.contains("at most"), "{what}: {message}");
    }
    send(
        addr,
        &format!(
            "PATCH /sandboxes/{target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"
        ),
        &json!({"labels": labels}).to_string(),
        false,
    )
    .refused(400, "PATCH with 65 labels");
    get(addr, &format!("/sandboxes/{target}/files/{long_path}"))
        .refused(400, "GET a 4200-byte path");
    let filter: String = (0..65).map(|i| format!("label=k{i}:v&")).collect();
    get(addr, &format!("/sandboxes?{filter}")).refused(400, "a filter of 65 labels");
    get(addr, &format!("/sandboxes/{target}/files/f0.txt"))
        .refused(404, "a file of the refused write");
    assert_eq!(ak.list_json().len(), 1, "a refused create made a sandbox");
    still_serving(addr, &srv, "the oversized lists");
    ak.ok(&["remove", &target]);
}

// ---------------------------------------------------------------------------------------------
// Output held in memory
// ---------------------------------------------------------------------------------------------

/// Buffered output counts against one budget for the whole server (`--max-output-mb`): a
/// command that writes more than the budget gets its output truncated (a prefix, marked
/// `truncated`), with its exit code, instead of growing the server's memory; once its answer
/// has gone, the budget is whole again.
#[test]
fn buffered_output_is_bounded_across_requests() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool", "--max-output-mb", "1"]);
    let addr = addr_of(&srv);
    // 3 MiB of 'y' lines on stdout, far under the per-stream limit (16 MiB).
    let flood = json!({
        "command": ["sh", "-c", "yes | head -c 3145728; exit 3"],
        "image": "host",
        "no_network": true,
    });
    for round in 0..2 {
        let data = post_json(addr, "/run", &flood).accepted(&format!("the flood, round {round}"));
        assert_eq!(data["exit_code"], 3, "{}", clip(&data));
        assert_eq!(data["truncated"], true, "round {round}: {}", clip(&data));
        let stdout = data["stdout"].as_str().expect("stdout");
        // stdout and the interleaved output share the 1 MiB.
        assert!(
            !stdout.is_empty() && stdout.len() <= 1024 * 1024,
            "round {round}: kept {} bytes of stdout",
            stdout.len()
        );
        assert!(
            stdout
                .bytes()
                .enumerate()
                .all(|(i, b)| b == if i % 2 == 0 { b'y' } else { b'\n' }),
            "round {round}: the kept stdout is not a prefix of what was written"
        );
    }
    // Small output is whole: the floods gave their budget back.
    let data = post_json(
        addr,
        "/run",
        &json!({"command": ["echo", "small"], "image": "host", "no_network": true}),
    )
    .accepted("a small run after the floods");
    assert_eq!(data["stdout"], "small\n");
    assert!(data.get("truncated").is_none(), "{data}");
    still_serving(addr, &srv, "the floods");
}

fn clip(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(300).collect()
}
