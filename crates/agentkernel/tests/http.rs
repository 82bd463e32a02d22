//! The HTTP API end to end: a real `agentkernel serve` on an ephemeral port, driven with a plain
//! HTTP client, asserting status codes, the response envelope, command output, SSE event order
//! and timing, and what is (and is not) left on the host.

mod common;
use common::serve::{ServeProcess, serve_cmd};
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// A running `agentkernel serve --port 0` (`common::serve`) and a client for it.
struct Server {
    process: ServeProcess,
    addr: SocketAddr,
    /// Sent as `Authorization: Bearer` by the request helpers.
    key: Option<String>,
    client: reqwest::blocking::Client,
}

impl Server {
    /// Starts the server with the state of `ak` and waits for its "serving" line.
    fn start(ak: &Ak, extra: &[&str]) -> Server {
        Server::spawn(serve_cmd(ak, extra))
    }

    /// Starts `cmd` (a `serve_cmd`) and waits for its "serving" line.
    fn spawn(cmd: Command) -> Server {
        let process = ServeProcess::spawn(cmd);
        let addr: SocketAddr = process
            .base
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("server address {}: {e}", process.base));
        // A connection per request: the server closes a connection after refusing a body it
        // did not read (413), and a pooled client could otherwise pick that one up again.
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(90))
            .build()
            .expect("build the HTTP client");
        Server {
            process,
            addr,
            key: None,
            client,
        }
    }

    fn with_key(mut self, key: &str) -> Server {
        self.key = Some(key.to_string());
        self
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.process.base)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        match &self.key {
            Some(k) => builder.bearer_auth(k),
            None => builder,
        }
    }

    fn send(&self, builder: reqwest::blocking::RequestBuilder, what: &str) -> Resp {
        let response = builder
            .send()
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}\nserver log:\n{}", self.log()));
        Resp::read(response, what)
    }

    fn get(&self, path: &str) -> Resp {
        self.send(self.request(Method::GET, path), &format!("GET {path}"))
    }

    fn delete(&self, path: &str) -> Resp {
        self.send(
            self.request(Method::DELETE, path),
            &format!("DELETE {path}"),
        )
    }

    fn with_body(&self, method: Method, path: &str, body: &Value) -> Resp {
        let what = format!("{method} {path} {body}");
        self.send(self.request(method, path).json(body), &what)
    }

    fn post(&self, path: &str, body: &Value) -> Resp {
        self.with_body(Method::POST, path, body)
    }

    fn put(&self, path: &str, body: &Value) -> Resp {
        self.with_body(Method::PUT, path, body)
    }

    fn patch(&self, path: &str, body: &Value) -> Resp {
        self.with_body(Method::PATCH, path, body)
    }

    /// POSTs `body` and returns the event stream (asserting a 200 `text/event-stream`).
    fn stream(&self, path: &str, body: &Value) -> Sse {
        let response = self
            .request(Method::POST, path)
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: request failed: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if status != 200 || !content_type.starts_with("text/event-stream") {
            let body = response.text().unwrap_or_default();
            panic!(
                "POST {path} {body:?}: expected an event stream, got {status} {content_type}: {body}"
            );
        }
        Sse {
            reader: BufReader::new(response),
            what: format!("POST {path}"),
        }
    }

    /// A request written by hand on a fresh connection, so the path reaches the server exactly
    /// as given (an HTTP client library would resolve `..` segments itself).
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let what = format!("{method} {path} (raw)");
        let mut conn = TcpStream::connect(self.addr).expect("connect to the server");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set a read timeout");
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = self
            .key
            .as_ref()
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let content = if body.is_empty() {
            String::new()
        } else {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
        };
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}{content}\r\n{body}",
            self.addr
        )
        .expect("send the request");
        let mut bytes = Vec::new();
        conn.read_to_end(&mut bytes).expect("read the answer");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, payload) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: no end of headers in {text:?}"));
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no status line in {text:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let text = if chunked {
            dechunk(payload)
        } else {
            payload.to_string()
        };
        Resp::new(status, headers, text, what)
    }
}

/// The body of a chunked answer.
fn dechunk(mut payload: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = payload.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        payload = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// One HTTP answer, read whole.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    text: String,
    /// The body as JSON (`Null` when it is not JSON).
    json: Value,
    what: String,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {}",
            clip(&self.what),
            self.status,
            clip(&self.text)
        )
    }
}

/// At most 2000 characters of `s`, for failure messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(2000) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

impl Resp {
    fn new(status: u16, headers: Vec<(String, String)>, text: String, what: String) -> Resp {
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
            what,
        }
    }

    fn read(response: reqwest::blocking::Response, what: &str) -> Resp {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let text = response
            .text()
            .unwrap_or_else(|e| panic!("{what}: read the body: {e}"));
        Resp::new(status, headers, text, what.to_string())
    }

    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts a 200 success envelope; returns its `data`.
    fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200: {self:?}");
        assert_eq!(self.json["success"], true, "expected success: {self:?}");
        assert!(
            self.json.get("data").is_some(),
            "a success envelope has data: {self:?}"
        );
        assert!(
            self.json.get("error").is_none(),
            "a success envelope has no error: {self:?}"
        );
        self.json["data"].clone()
    }

    /// Asserts an error envelope with `status`; returns its message.
    fn err(&self, status: u16) -> String {
        assert_eq!(self.status, status, "expected {status}: {self:?}");
        self.envelope_error()
    }

    /// Asserts an error envelope with some 4xx status; returns its message.
    fn client_err(&self) -> String {
        assert!(
            (400..500).contains(&self.status),
            "expected a 4xx answer: {self:?}"
        );
        self.envelope_error()
    }

    fn envelope_error(&self) -> String {
        assert_eq!(
            self.json["success"], false,
            "expected an error envelope: {self:?}"
        );
        let message = self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("an error envelope has an error string: {self:?}"));
        assert!(!message.is_empty(), "empty error message: {self:?}");
        assert!(
            self.json.get("data").is_none(),
            "an error envelope has no data: {self:?}"
        );
        message.to_string()
    }
}

/// One server-sent event, with the moment it was read.
#[derive(Debug, Clone)]
struct Event {
    name: String,
    data: Value,
    at: Instant,
}

const EVENT_NAMES: [&str; 5] = ["started", "progress", "output", "done", "error"];

/// An event stream, read line by line as it arrives.
struct Sse {
    reader: BufReader<reqwest::blocking::Response>,
    what: String,
}

impl Sse {
    /// The next event; `None` when the stream has ended. Asserts the event's name is one of
    /// the contract's and its data one JSON object.
    fn next_event(&mut self) -> Option<Event> {
        let mut name: Option<String> = None;
        let mut data: Vec<String> = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("{}: read the stream: {e}", self.what));
            if n == 0 {
                assert!(
                    name.is_none() && data.is_empty(),
                    "{}: the stream ended inside an event",
                    self.what
                );
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if name.is_none() && data.is_empty() {
                    continue;
                }
                let at = Instant::now();
                let name = name.unwrap_or_else(|| "message".to_string());
                assert!(
                    EVENT_NAMES.contains(&name.as_str()),
                    "{}: event name {name:?} is not one of {EVENT_NAMES:?}",
                    self.what
                );
                assert_eq!(
                    data.len(),
                    1,
                    "{}: event {name} has {} data lines",
                    self.what,
                    data.len()
                );
                let data: Value = serde_json::from_str(&data[0]).unwrap_or_else(|e| {
                    panic!(
                        "{}: data of {name} is not JSON ({e}): {:?}",
                        self.what, data[0]
                    )
                });
                assert!(
                    data.is_object(),
                    "{}: data of {name} is not an object",
                    self.what
                );
                return Some(Event { name, data, at });
            }
            if line.starts_with(':') {
                continue; // a keep-alive comment
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => name = Some(value.to_string()),
                "data" => data.push(value.to_string()),
                _ => {}
            }
        }
    }

    /// Every event until the stream ends; asserts it ends after `done` or `error`.
    fn all(mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event() {
            events.push(e);
        }
        let last = events
            .last()
            .unwrap_or_else(|| panic!("{}: no events", self.what));
        assert!(
            last.name == "done" || last.name == "error",
            "{}: the stream ended after {last:?}, not done/error: {events:?}",
            self.what
        );
        events
    }
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// The concatenated `output` data of one stream.
fn output_of(events: &[Event], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e.name == "output" && e.data["stream"] == stream)
        .map(|e| e.data["data"].as_str().unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A throwaway-run request on the host image without network.
fn run_body(command: &[&str]) -> Value {
    json!({"command": command, "image": "host", "no_network": true})
}

/// Creates a running sandbox over HTTP (host image, no network).
fn create(srv: &Server, name: &str) -> Value {
    let info = srv
        .post(
            "/sandboxes",
            &json!({"name": name, "image": "host", "no_network": true}),
        )
        .ok();
    assert_eq!(info["name"], name, "{info}");
    assert_eq!(info["status"], "running", "{info}");
    info
}

/// Runs a command in sandbox `name` over HTTP; returns `data`.
fn exec(srv: &Server, name: &str, command: &[&str]) -> Value {
    srv.post(
        &format!("/sandboxes/{name}/exec"),
        &json!({"command": command}),
    )
    .ok()
}

/// Host processes whose command line is exactly `argv`.
fn processes_with_argv(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
                && cmdline == want
                && !process_is_dead(pid)
            {
                found.push(pid);
            }
        }
    }
    found
}

/// Polls `check` every 50 ms until it holds or `limit` passes; returns whether it held.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A string no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// 1. Authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn auth_requires_one_of_the_keys_except_for_health() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool", "--api-key", "k1", "--api-key", "k2"]);
    assert!(
        srv.log().contains("2 API key(s)"),
        "the serving line counts the keys: {}",
        srv.log()
    );

    let status = |key: Option<&str>| {
        let mut builder = srv.client.get(srv.url("/status"));
        if let Some(k) = key {
            builder = builder.bearer_auth(k);
        }
        srv.send(builder, &format!("GET /status with {key:?}"))
    };

    let missing = status(None);
    let message = missing.err(401);
    assert!(message.contains("Authorization"), "{message}");
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer"),
        "{missing:?}"
    );

    let wrong = status(Some("k3"));
    wrong.err(401);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    // A prefix or extension of a valid key is not valid.
    status(Some("k")).err(401);
    status(Some("k11")).err(401);
    // Not a Bearer header at all.
    srv.send(
        srv.client
            .get(srv.url("/status"))
            .header("Authorization", "Basic azE6azE="),
        "GET /status with Basic auth",
    )
    .err(401);

    for key in ["k1", "k2"] {
        let data = status(Some(key)).ok();
        assert!(data["version"].is_string(), "{data}");
    }
    // Every other route is behind the key too, including unknown ones and the OpenAPI document.
    srv.send(srv.client.get(srv.url("/sandboxes")), "GET /sandboxes")
        .err(401);
    srv.send(
        srv.client.post(srv.url("/run")).json(&run_body(&["true"])),
        "POST /run",
    )
    .err(401);
    srv.send(
        srv.client.get(srv.url("/openapi.json")),
        "GET /openapi.json",
    )
    .err(401);

    let health = srv.send(srv.client.get(srv.url("/health")), "GET /health");
    assert_eq!(health.ok(), json!("ok"));

    // The helpers with a key: a full request cycle behind auth.
    let srv = srv.with_key("k2");
    assert_eq!(srv.get("/sandboxes").ok(), json!([]));
    srv.raw("GET", "/status", None).ok();
    let data = srv.post("/run", &run_body(&["echo", "authed"])).ok();
    assert_eq!(data["stdout"], "authed\n", "{data}");
}

#[test]
fn keys_come_from_a_file_and_the_environment_too() {
    let ak = Ak::new();
    let file = ak.cwd.path().join("keys.txt");
    std::fs::write(&file, "# the team's keys\nfilekey\n\n  spaced  \n").expect("write keys");
    let mut cmd = serve_cmd(
        &ak,
        &[
            "--no-pool",
            "--api-key-file",
            file.to_str().expect("utf-8 path"),
        ],
    );
    cmd.env("AGENTKERNEL_API_KEY", "envkey");
    let srv = Server::spawn(cmd);
    let status = |key: &str| {
        srv.send(
            srv.client.get(srv.url("/status")).bearer_auth(key),
            &format!("GET /status with {key:?}"),
        )
    };
    for key in ["filekey", "spaced", "envkey"] {
        status(key).ok();
    }
    for key in ["# the team's keys", "the", "k1", "filekey envkey"] {
        status(key).err(401);
    }
    srv.send(srv.client.get(srv.url("/status")), "GET /status")
        .err(401);
    assert_eq!(
        srv.send(srv.client.get(srv.url("/health")), "GET /health")
            .ok(),
        json!("ok")
    );
}

#[test]
fn serving_beyond_loopback_without_a_key_is_refused() {
    let ak = Ak::new();
    let mut child = serve_cmd(&ak, &["--host", "0.0.0.0", "--no-pool"])
        .spawn()
        .expect("spawn agentkernel serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for serve") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve --host 0.0.0.0 without a key kept running");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
    assert!(!stderr.contains("serving the HTTP API"), "{stderr}");

    // With the explicit opt-out it serves, without asking for a key.
    let srv = Server::start(
        &ak,
        &["--host", "0.0.0.0", "--insecure-no-auth", "--no-pool"],
    );
    assert!(srv.log().contains("no authentication"), "{}", srv.log());
    srv.get("/status").ok();
}

// ---------------------------------------------------------------------------------------------
// 2. Buffered runs and request errors
// ---------------------------------------------------------------------------------------------

#[test]
fn run_answers_output_and_exit_code_and_rejects_bad_requests() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);

    let data = srv
        .post(
            "/run",
            &run_body(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        )
        .ok();
    assert_eq!(data["exit_code"], 3, "{data}");
    assert_eq!(data["stdout"], "out\n", "{data}");
    assert_eq!(data["stderr"], "err\n", "{data}");
    let output = data["output"].as_str().expect("output is a string");
    assert!(
        output.contains("out\n") && output.contains("err\n"),
        "{data}"
    );
    assert_eq!(output.len(), "out\nerr\n".len(), "{data}");

    // A command that does not exist is an answer, as a shell gives it.
    let data = srv.post("/run", &run_body(&["no-such-command-xyz"])).ok();
    assert_eq!(data["exit_code"], 127, "{data}");
    let stderr = data["stderr"].as_str().expect("stderr");
    assert!(stderr.contains("no-such-command-xyz"), "{data}");
    assert_eq!(data["stdout"], "", "{data}");

    // The throwaway sandboxes are gone.
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());

    // Bad input.
    srv.post("/run", &run_body(&[])).err(400);
    srv.post("/run", &json!({"image": "host"})).err(400);
    srv.post("/run", &json!({"command": "echo hi"})).err(400);
    let message = srv
        .post(
            "/run",
            &json!({"command": ["true"], "image": "host", "profile": "no-such-profile"}),
        )
        .err(400);
    assert!(message.contains("no-such-profile"), "{message}");
    srv.post(
        "/run",
        &json!({"command": ["true"], "image": "host", "timeout_ms": 0}),
    )
    .err(400);
    // cwd/config are only for the daemon's socket.
    srv.post(
        "/run",
        &json!({"command": ["true"], "image": "host", "cwd": "/"}),
    )
    .err(400);

    let malformed = srv.send(
        srv.request(Method::POST, "/run")
            .header("Content-Type", "application/json")
            .body("{\"command\": [\"true\""),
        "POST /run with malformed JSON",
    );
    malformed.err(400);
    let wrong_type = srv.send(
        srv.request(Method::POST, "/run")
            .header("Content-Type", "text/plain")
            .body(run_body(&["true"]).to_string()),
        "POST /run as text/plain",
    );
    let message = wrong_type.err(415);
    assert!(message.contains("application/json"), "{message}");

    let message = srv.get("/no/such/route").err(404);
    assert!(message.contains("/no/such/route"), "{message}");
    srv.get("/sandboxes/x/y/z/w").err(404);
    let message = srv.get("/run").err(405);
    assert!(message.contains("GET"), "{message}");
    srv.delete("/health").err(405);
    srv.put("/sandboxes", &json!({})).err(405);
}

// ---------------------------------------------------------------------------------------------
// 3. Streaming: order and timing
// ---------------------------------------------------------------------------------------------

#[test]
fn run_stream_sends_events_as_they_happen() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    let events = srv
        .stream(
            "/run/stream",
            &run_body(&[
                "sh",
                "-c",
                "echo first; sleep 2; echo second; echo third >&2",
            ]),
        )
        .all();
    let got = names(&events);

    // progress*, started, output…, done
    let started = got
        .iter()
        .position(|n| *n == "started")
        .unwrap_or_else(|| panic!("no started event: {events:?}"));
    assert!(
        got[..started].iter().all(|n| *n == "progress"),
        "only progress before started: {got:?}"
    );
    for e in &events[..started] {
        assert!(
            e.data["stage"].is_string() && e.data["message"].is_string(),
            "{e:?}"
        );
    }
    assert!(
        events[started].data["sandbox"].is_string(),
        "{:?}",
        events[started]
    );
    assert_eq!(got.last(), Some(&"done"), "{got:?}");
    assert!(
        got[started + 1..got.len() - 1]
            .iter()
            .all(|n| *n == "output"),
        "only output between started and done: {got:?}"
    );
    assert_eq!(events[events.len() - 1].data["exit_code"], 0, "{events:?}");
    for e in events.iter().filter(|e| e.name == "output") {
        let stream = e.data["stream"].as_str().unwrap_or_default();
        assert!(stream == "stdout" || stream == "stderr", "{e:?}");
        assert!(e.data["data"].is_string(), "{e:?}");
    }
    assert_eq!(
        output_of(&events, "stdout"),
        "first\nsecond\n",
        "{events:?}"
    );
    assert_eq!(output_of(&events, "stderr"), "third\n", "{events:?}");

    let first = events
        .iter()
        .position(|e| e.name == "output" && e.data["data"].as_str() == Some("first\n"))
        .unwrap_or_else(|| panic!("`first` is one output event: {events:?}"));
    let second = events
        .iter()
        .position(|e| {
            e.name == "output"
                && e.data["data"]
                    .as_str()
                    .is_some_and(|d| d.contains("second"))
        })
        .unwrap_or_else(|| panic!("no `second` output: {events:?}"));
    assert!(first < second, "{events:?}");
    let done = &events[events.len() - 1];
    let gap = done.at.duration_since(events[first].at);
    assert!(
        gap >= Duration::from_millis(1500),
        "`first` arrived only {gap:?} before done: the stream was buffered"
    );
    let gap = events[second].at.duration_since(events[first].at);
    assert!(
        gap >= Duration::from_millis(1500),
        "{gap:?} between first and second"
    );

    // A command that fails to start still ends with done, its reason on stderr.
    let events = srv
        .stream("/run/stream", &run_body(&["no-such-command-xyz"]))
        .all();
    let done = events.last().expect("events");
    assert_eq!(done.name, "done", "{events:?}");
    assert_eq!(done.data["exit_code"], 127, "{events:?}");
    assert!(
        output_of(&events, "stderr").contains("no-such-command-xyz"),
        "{events:?}"
    );

    // Raw bytes, base64-encoded on request.
    let events = srv
        .stream(
            "/run/stream",
            &json!({"command": ["printf", "\\377\\000ok"], "image": "host",
                    "no_network": true, "output_encoding": "base64"}),
        )
        .all();
    use base64::Engine as _;
    let bytes: Vec<u8> = events
        .iter()
        .filter(|e| e.name == "output")
        .flat_map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e.data["data"].as_str().unwrap_or_default())
                .unwrap_or_else(|err| panic!("output data is not base64 ({err}): {e:?}"))
        })
        .collect();
    assert_eq!(bytes, b"\xff\x00ok", "{events:?}");

    // Bad input is refused with a status before any stream starts.
    srv.post("/run/stream", &run_body(&[])).err(400);
    srv.post(
        "/run/stream",
        &json!({"command": ["true"], "image": "host", "output_encoding": "hex"}),
    )
    .err(400);
}

// ---------------------------------------------------------------------------------------------
// 4. A client that goes away kills the command
// ---------------------------------------------------------------------------------------------

#[test]
fn closing_a_stream_kills_the_command() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    // A duration no other process on the host sleeps for.
    let secs = format!("61.{}", std::process::id());
    let argv = ["sleep", secs.as_str()];
    let script = format!("echo ready; exec sleep {secs}");
    let mut sse = srv.stream("/run/stream", &run_body(&["sh", "-c", &script]));
    loop {
        let e = sse
            .next_event()
            .expect("the stream ended before the command said ready");
        assert_ne!(e.name, "done", "{e:?}");
        assert_ne!(e.name, "error", "{e:?}");
        if e.name == "output" && e.data["data"] == "ready\n" {
            break;
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || !processes_with_argv(&argv)
            .is_empty()),
        "`sleep {secs}` is not running while the stream is open"
    );
    drop(sse);
    assert!(
        eventually(Duration::from_secs(10), || processes_with_argv(&argv)
            .is_empty()),
        "`sleep {secs}` still runs 10 s after the client went away: {:?}",
        processes_with_argv(&argv)
    );
    // And the throwaway sandbox is gone.
    assert!(
        eventually(Duration::from_secs(10), || ak.list_json().is_empty()),
        "the run's sandbox is left: {:?}",
        ak.list_json()
    );
    // The server is still fine.
    assert_eq!(srv.get("/health").ok(), json!("ok"));
}

#[test]
fn a_client_that_gives_up_on_a_buffered_run_kills_the_command() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    let secs = format!("62.{}", std::process::id());
    let argv = ["sleep", secs.as_str()];
    // A client that waits three seconds for the answer, then closes the connection.
    let url = srv.url("/run");
    let body = run_body(&argv);
    let client = std::thread::spawn(move || {
        let impatient = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("build the HTTP client");
        impatient.post(url).json(&body).send().map(|r| r.status())
    });
    let ran = eventually(Duration::from_secs(3), || {
        !processes_with_argv(&argv).is_empty()
    });
    let result = client.join().expect("the client thread");
    assert!(
        result.is_err(),
        "the run answered before the client's timeout: {result:?}"
    );
    assert!(ran, "`sleep {secs}` never ran");
    // Well before the server's own 30 s timeout.
    assert!(
        eventually(Duration::from_secs(10), || processes_with_argv(&argv)
            .is_empty()),
        "`sleep {secs}` still runs 10 s after its client went away: {:?}",
        processes_with_argv(&argv)
    );
    assert!(
        eventually(Duration::from_secs(10), || ak.list_json().is_empty()),
        "the run's sandbox is left: {:?}",
        ak.list_json()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Sandboxes: CRUD, and the same state as the CLI
// ---------------------------------------------------------------------------------------------

#[test]
fn sandboxes_crud_shares_state_with_the_cli() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);

    let info = srv
        .post(
            "/sandboxes",
            &json!({"name": "web1", "image": "host", "no_network": true,
                    "labels": {"team": "a"}, "description": "first"}),
        )
        .ok();
    assert_eq!(info["name"], "web1", "{info}");
    assert_eq!(info["status"], "running", "{info}");
    assert_eq!(info["labels"], json!({"team": "a"}), "{info}");
    assert_eq!(info["description"], "first", "{info}");
    assert_eq!(info["backend"], "native", "{info}");
    let uuid = info["uuid"].as_str().expect("uuid").to_string();
    assert!(!uuid.is_empty(), "{info}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(info["created_at"].as_str().unwrap_or_default())
            .is_ok(),
        "created_at is RFC 3339: {info}"
    );

    // The CLI sees it, running.
    assert_eq!(ak.status_of("web1").as_deref(), Some("running"));
    let out = ak.ok(&["exec", "web1", "--", "echo", "from-cli"]);
    assert_eq!(out.stdout, "from-cli\n");

    let listed = |query: &str| -> Vec<String> {
        srv.get(&format!("/sandboxes{query}"))
            .ok()
            .as_array()
            .unwrap_or_else(|| panic!("GET /sandboxes{query} is an array"))
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(listed(""), ["web1"]);
    assert_eq!(listed("?label=team:a"), ["web1"]);
    assert!(listed("?label=team:b").is_empty());
    srv.get("/sandboxes?label=nocolon").err(400);

    let got = srv.get("/sandboxes/web1").ok();
    assert_eq!(got["uuid"], uuid.as_str(), "{got}");
    assert_eq!(got["status"], "running", "{got}");
    let got = srv.get(&format!("/sandboxes/by-uuid/{uuid}")).ok();
    assert_eq!(got["name"], "web1", "{got}");
    srv.get("/sandboxes/by-uuid/00000000-0000-0000-0000-000000000000")
        .err(404);

    let patched = srv
        .patch(
            "/sandboxes/web1",
            &json!({"labels": {"team": "b", "tier": "x"}, "description": "second"}),
        )
        .ok();
    assert_eq!(
        patched["labels"],
        json!({"team": "b", "tier": "x"}),
        "{patched}"
    );
    assert_eq!(patched["description"], "second", "{patched}");
    let got = srv.get("/sandboxes/web1").ok();
    assert_eq!(got["labels"], json!({"team": "b", "tier": "x"}), "{got}");
    assert_eq!(got["description"], "second", "{got}");
    assert!(listed("?label=team:a").is_empty());
    assert_eq!(listed("?label=team:b&label=tier:x"), ["web1"]);
    assert!(listed("?label=team:b&label=tier:y").is_empty());

    // Names: taken, invalid.
    let message = srv
        .post(
            "/sandboxes",
            &json!({"name": "web1", "image": "host", "no_network": true}),
        )
        .err(409);
    assert!(message.contains("web1"), "{message}");
    let too_long = "a".repeat(64);
    for bad in ["../x", "-x", "a/b", "", ".hidden", "a b", &too_long] {
        srv.post(
            "/sandboxes",
            &json!({"name": bad, "image": "host", "no_network": true}),
        )
        .err(400);
    }
    assert_eq!(ak.list_json().len(), 1, "{:?}", ak.list_json());
    // A host directory outside `[security] remote_paths` is refused, not ignored
    // (tests/volumes.rs has the rest).
    srv.post(
        "/sandboxes",
        &json!({"name": "vol1", "image": "host", "volumes": ["/:/host"]}),
    )
    .err(403);
    srv.get("/sandboxes/vol1").err(404);

    // A sandbox made by the CLI is visible and usable over HTTP.
    ak.ok(&["create", "cli1", "--image", "host", "--no-network"]);
    ak.ok(&["start", "cli1"]);
    let got = srv.get("/sandboxes/cli1").ok();
    assert_eq!(got["status"], "running", "{got}");
    let data = exec(&srv, "cli1", &["echo", "over-http"]);
    assert_eq!(data["stdout"], "over-http\n", "{data}");
    assert_eq!(data["exit_code"], 0, "{data}");
    let mut all = listed("");
    all.sort();
    assert_eq!(all, ["cli1", "web1"]);

    // Stop and start.
    let stopped = srv.post("/sandboxes/web1/stop", &json!({})).ok();
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert_eq!(ak.status_of("web1").as_deref(), Some("stopped"));
    assert_eq!(srv.get("/sandboxes/web1").ok()["status"], "stopped");
    let started = srv.post("/sandboxes/web1/start", &json!({})).ok();
    assert_eq!(started["status"], "running", "{started}");
    assert_eq!(ak.status_of("web1").as_deref(), Some("running"));
    let data = exec(&srv, "web1", &["echo", "again"]);
    assert_eq!(data["stdout"], "again\n", "{data}");

    // Remove.
    let web1_dir = ak.home.path().join("sandboxes").join("web1");
    assert!(web1_dir.exists(), "{}", web1_dir.display());
    let removed = srv.delete("/sandboxes/web1").ok();
    assert_eq!(removed["name"], "web1", "{removed}");
    assert!(!web1_dir.exists(), "{} is left", web1_dir.display());
    srv.get("/sandboxes/web1").err(404);
    srv.get(&format!("/sandboxes/by-uuid/{uuid}")).err(404);
    assert_eq!(ak.status_of("web1"), None);
    srv.delete("/sandboxes/web1").err(404);
    let removed = srv.delete("/sandboxes/cli1").ok();
    assert_eq!(removed["name"], "cli1", "{removed}");
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());

    // Unknown sandboxes.
    srv.get("/sandboxes/ghost").err(404);
    srv.post("/sandboxes/ghost/exec", &json!({"command": ["true"]}))
        .err(404);
    srv.post(
        "/sandboxes/ghost/exec/stream",
        &json!({"command": ["true"]}),
    )
    .err(404);
    srv.get("/sandboxes/ghost/files/a.txt").err(404);
    srv.put("/sandboxes/ghost/files/a.txt", &json!({"content": "x"}))
        .err(404);
    srv.post("/sandboxes/ghost/stop", &json!({})).err(404);
    srv.post("/sandboxes/ghost/start", &json!({})).err(404);
    srv.patch("/sandboxes/ghost", &json!({"description": "x"}))
        .err(404);
}

// ---------------------------------------------------------------------------------------------
// 6. exec
// ---------------------------------------------------------------------------------------------

#[test]
fn exec_runs_in_the_sandbox_with_env_and_workdir() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    create(&srv, "ex1");

    let data = srv
        .post(
            "/sandboxes/ex1/exec",
            &json!({"command": ["sh", "-c", "echo A=$A; pwd; echo oops >&2; exit 2"],
                    "env": ["A=1"], "workdir": "/tmp"}),
        )
        .ok();
    assert_eq!(data["stdout"], "A=1\n/tmp\n", "{data}");
    assert_eq!(data["stderr"], "oops\n", "{data}");
    assert_eq!(data["exit_code"], 2, "{data}");
    assert_eq!(data["output"], "A=1\n/tmp\noops\n", "{data}");

    // State persists between execs of the same sandbox.
    exec(&srv, "ex1", &["sh", "-c", "echo kept > /tmp/state"]);
    let data = exec(&srv, "ex1", &["cat", "/tmp/state"]);
    assert_eq!(data["stdout"], "kept\n", "{data}");

    let data = exec(&srv, "ex1", &["no-such-command-xyz"]);
    assert_eq!(data["exit_code"], 127, "{data}");

    srv.post("/sandboxes/ex1/exec", &json!({"command": []}))
        .err(400);
    srv.post(
        "/sandboxes/ex1/exec",
        &json!({"command": ["true"], "env": ["NOEQUALS"]}),
    )
    .err(400);
    let data = srv.post(
        "/sandboxes/ex1/exec",
        &json!({"command": ["true"], "workdir": "/no/such/dir"}),
    );
    assert!(
        data.status != 200 || data.json["data"]["exit_code"] != 0,
        "a missing workdir is not a success: {data:?}"
    );

    let events = srv
        .stream(
            "/sandboxes/ex1/exec/stream",
            &json!({"command": ["sh", "-c", "echo one; echo two >&2; exit 5"],
                    "env": ["B=2"]}),
        )
        .all();
    let got = names(&events);
    assert_eq!(got.first(), Some(&"started"), "{got:?}");
    assert_eq!(events[0].data["sandbox"], "ex1", "{events:?}");
    assert_eq!(got.last(), Some(&"done"), "{got:?}");
    assert!(
        got[1..got.len() - 1].iter().all(|n| *n == "output"),
        "{got:?}"
    );
    assert_eq!(output_of(&events, "stdout"), "one\n", "{events:?}");
    assert_eq!(output_of(&events, "stderr"), "two\n", "{events:?}");
    assert_eq!(events[events.len() - 1].data["exit_code"], 5, "{events:?}");

    let events = srv
        .stream(
            "/sandboxes/ex1/exec/stream",
            &json!({"command": ["sh", "-c", "echo $B"], "env": ["B=2"]}),
        )
        .all();
    assert_eq!(output_of(&events, "stdout"), "2\n", "{events:?}");

    // A stopped sandbox runs nothing: 409, for the buffered, detached and streamed forms.
    srv.post("/sandboxes/ex1/stop", &json!({})).ok();
    let message = srv
        .post("/sandboxes/ex1/exec", &json!({"command": ["true"]}))
        .err(409);
    assert!(
        message.contains("ex1") || message.contains("running"),
        "{message}"
    );
    srv.post("/sandboxes/ex1/exec/detach", &json!({"command": ["true"]}))
        .err(409);
    // The stream is refused with the status before it starts, like an unknown sandbox's 404.
    srv.post("/sandboxes/ex1/exec/stream", &json!({"command": ["true"]}))
        .err(409);
}

// ---------------------------------------------------------------------------------------------
// 7. Files
// ---------------------------------------------------------------------------------------------

#[test]
fn files_round_trip_as_text_and_base64() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    create(&srv, "f1");

    let text = "héllo wörld\n";
    let written = srv
        .put("/sandboxes/f1/files/hello.txt", &json!({"content": text}))
        .ok();
    assert_eq!(written["size"], text.len(), "{written}");
    let hello = written["path"].as_str().expect("path").to_string();
    assert!(
        hello.starts_with('/') && hello.ends_with("/hello.txt"),
        "{written}"
    );
    let read = srv.get("/sandboxes/f1/files/hello.txt").ok();
    assert_eq!(read["content"], text, "{read}");
    assert_eq!(read["encoding"], "utf8", "{read}");
    assert_eq!(read["size"], text.len(), "{read}");
    // The same file by its absolute path (sent after a second slash), and from inside.
    let read = srv.get(&format!("/sandboxes/f1/files/{hello}")).ok();
    assert_eq!(read["content"], text, "{read}");
    assert_eq!(exec(&srv, "f1", &["cat", &hello])["stdout"], text);

    // Text sent as base64 reads back as text.
    let read = {
        srv.put(
            "/sandboxes/f1/files/b64.txt",
            &json!({"content": "YWJjCg==", "encoding": "base64"}),
        )
        .ok();
        srv.get("/sandboxes/f1/files/b64.txt").ok()
    };
    assert_eq!(read["content"], "abc\n", "{read}");
    assert_eq!(read["encoding"], "utf8", "{read}");

    // Bytes that are not UTF-8 read back as base64, exactly.
    let bytes: [u8; 8] = [0x00, 0x9f, 0x92, 0x96, 0xff, 0xfe, b'\n', 0x01];
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let written = srv
        .put(
            "/sandboxes/f1/files/bin/data.bin",
            &json!({"content": b64, "encoding": "base64"}),
        )
        .ok();
    assert_eq!(written["size"], bytes.len(), "{written}");
    let read = srv.get("/sandboxes/f1/files/bin/data.bin").ok();
    assert_eq!(read["encoding"], "base64", "{read}");
    assert_eq!(read["content"], b64.as_str(), "{read}");
    assert_eq!(read["size"], bytes.len(), "{read}");
    let data = exec(
        &srv,
        "f1",
        &["sh", "-c", "od -An -tx1 bin/data.bin | tr -d ' \\n'"],
    );
    assert_eq!(data["stdout"], "009f9296fffe0a01", "{data}");

    srv.put(
        "/sandboxes/f1/files/bad.bin",
        &json!({"content": "!!not base64!!", "encoding": "base64"}),
    )
    .err(400);
    srv.put(
        "/sandboxes/f1/files/bad.bin",
        &json!({"content": "x", "encoding": "rot13"}),
    )
    .err(400);
    srv.get("/sandboxes/f1/files/bad.bin").err(404);

    // Several at once.
    let data = srv
        .post(
            "/sandboxes/f1/files",
            &json!({"files": {"a.txt": "x", "d/b.txt": "y"}}),
        )
        .ok();
    assert_eq!(data["written"], 2, "{data}");
    let paths: Vec<&str> = data["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(paths.len(), 2, "{data}");
    let mut argv = vec!["cat"];
    argv.extend(paths.iter().copied());
    let out = exec(&srv, "f1", &argv);
    assert_eq!(out["exit_code"], 0, "{out}");
    let mut got: Vec<char> = out["stdout"].as_str().unwrap_or_default().chars().collect();
    got.sort_unstable();
    assert_eq!(got, ['x', 'y'], "{out}");

    // Remove.
    let removed = srv.delete("/sandboxes/f1/files/a.txt").ok();
    assert_eq!(removed["removed"], true, "{removed}");
    srv.get("/sandboxes/f1/files/a.txt").err(404);
    srv.delete("/sandboxes/f1/files/a.txt").err(404);
    let out = exec(&srv, "f1", &["cat", paths[0]]);
    assert_ne!(out["exit_code"], 0, "{out}");
    srv.get("/sandboxes/f1/files/d").client_err(); // a directory

    // The files of a stopped sandbox are not reachable this way: 409.
    srv.post("/sandboxes/f1/stop", &json!({})).ok();
    srv.get("/sandboxes/f1/files/hello.txt").err(409);
}

#[test]
fn file_paths_cannot_leave_the_sandbox() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    create(&srv, "jail");

    // A host directory with a file only the host has.
    let outside = tempfile::tempdir().expect("host temp dir");
    let outside_path = outside
        .path()
        .to_str()
        .expect("utf-8 temp path")
        .to_string();
    let canary = unique("host-canary");
    std::fs::write(outside.path().join("canary.txt"), &canary).expect("write the canary");
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let shadow_root = shadow
        .lines()
        .find(|l| l.starts_with("root:"))
        .unwrap_or("root:")
        .to_string();
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();

    // Symlinks made inside the sandbox, pointing at its root and far above it.
    let up = "../".repeat(12);
    let out = exec(
        &srv,
        "jail",
        &[
            "sh",
            "-c",
            &format!(
                "ln -s / rootlink && ln -s {up} uplink && ln -s {outside_path} hostdir && pwd"
            ),
        ],
    );
    assert_eq!(out["exit_code"], 0, "{out}");
    let workdir = out["stdout"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string();

    // What the sandbox itself sees at a path (None: no such file in the sandbox).
    let inside = |path: &str| -> Option<String> {
        let out = exec(&srv, "jail", &["cat", path]);
        (out["exit_code"] == 0).then(|| out["stdout"].as_str().unwrap_or_default().to_string())
    };
    let never_host = |resp: &Resp| {
        assert!(!resp.text.contains(&canary), "host file returned: {resp:?}");
        assert!(
            !resp.text.contains(&shadow_root),
            "host /etc/shadow returned: {resp:?}"
        );
        assert!(resp.status < 500, "{resp:?}");
    };
    // Each request may only answer what the sandbox sees at `sandbox_path`.
    let check = |raw_path: &str, sandbox_path: &str| {
        let resp = srv.raw("GET", &format!("/sandboxes/jail/files/{raw_path}"), None);
        never_host(&resp);
        match inside(sandbox_path) {
            Some(content) if resp.status == 200 => {
                assert_eq!(resp.json["data"]["content"], content.as_str(), "{resp:?}");
            }
            _ => {
                resp.client_err();
            }
        }
    };
    let canary_path = format!("{outside_path}/canary.txt");
    let encoded = |p: &str| p.replace('/', "%2F");

    check("../../etc/shadow", "/etc/shadow");
    check("//../../etc/shadow", "/etc/shadow");
    check("/../../etc/passwd", "/etc/passwd");
    check("//../../etc/passwd", "/etc/passwd");
    check("..%2F..%2Fetc%2Fhostname", "/etc/hostname");
    check("..%2F..%2Fetc%2Fshadow", "/etc/shadow");
    check("%2E%2E/%2E%2E/etc/shadow", "/etc/shadow");
    check("rootlink/etc/shadow", "/etc/shadow");
    check("uplink/etc/shadow", "/etc/shadow");
    check(&format!("{up}{canary_path}"), &canary_path);
    check(&format!("/{up}{canary_path}"), &canary_path);
    check(&encoded(&format!("{up}{canary_path}")), &canary_path);
    check(&format!("rootlink{canary_path}"), &canary_path);
    check(&format!("uplink{canary_path}"), &canary_path);
    check("hostdir/canary.txt", &canary_path);
    if !host_hostname.is_empty()
        && let Some(mine) = inside("/etc/hostname")
    {
        assert_ne!(
            mine, host_hostname,
            "the sandbox shows the host's /etc/hostname"
        );
    }
    // The canary must not appear through the sandbox's own eyes either.
    assert_eq!(inside(&canary_path), None);

    // Writing through links that point out of the sandbox creates nothing on the host.
    for (i, path) in [
        "hostdir/pwned0.txt".to_string(),
        format!("uplink{outside_path}/pwned1.txt"),
        format!("rootlink{outside_path}/pwned2.txt"),
        format!("{up}{outside_path}/pwned3.txt"),
        encoded(&format!("{up}{outside_path}/pwned4.txt")),
        format!("/{up}{outside_path}/pwned5.txt"),
    ]
    .iter()
    .enumerate()
    {
        let resp = srv.raw(
            "PUT",
            &format!("/sandboxes/jail/files/{path}"),
            Some(&json!({"content": "pwned"})),
        );
        assert!(resp.status < 500, "{resp:?}");
        let host_file = outside.path().join(format!("pwned{i}.txt"));
        assert!(
            !host_file.exists(),
            "PUT {path} wrote {} on the host: {resp:?}",
            host_file.display()
        );
        if resp.status == 200 {
            // It went to the same path inside the sandbox.
            let target = resp.json["data"]["path"].as_str().unwrap_or_default();
            assert_eq!(inside(target).as_deref(), Some("pwned"), "{resp:?}");
        }
        let resp = srv.raw("DELETE", &format!("/sandboxes/jail/files/{path}"), None);
        assert!(resp.status < 500, "{resp:?}");
    }
    let resp = srv.raw(
        "POST",
        "/sandboxes/jail/files",
        Some(&json!({"files": {
            "hostdir/many.txt": "pwned",
            format!("{up}{outside_path}/many2.txt"): "pwned",
        }})),
    );
    assert!(resp.status < 500, "{resp:?}");
    assert!(!outside.path().join("many.txt").exists(), "{resp:?}");
    assert!(!outside.path().join("many2.txt").exists(), "{resp:?}");
    // Deleting through a link cannot remove the host's file.
    for path in [
        "hostdir/canary.txt".to_string(),
        format!("{up}{canary_path}"),
        format!("rootlink{canary_path}"),
    ] {
        let resp = srv.raw("DELETE", &format!("/sandboxes/jail/files/{path}"), None);
        assert!(resp.status < 500, "{resp:?}");
        assert_eq!(
            std::fs::read_to_string(outside.path().join("canary.txt")).ok(),
            Some(canary.clone()),
            "DELETE {path} removed the host's file: {resp:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(outside.path())
            .expect("read the host dir")
            .count(),
        1,
        "only the canary is in the host directory"
    );
    // The links themselves are files of the sandbox, and removable.
    srv.delete("/sandboxes/jail/files/uplink").ok();
    let out = exec(
        &srv,
        "jail",
        &["sh", "-c", &format!("test -L {workdir}/uplink")],
    );
    assert_ne!(out["exit_code"], 0, "{out}");
}

#[test]
fn dot_dot_paths_resolve_while_the_host_renames_files() {
    // The kernel fails a `..` resolved under RESOLVE_IN_ROOT with EAGAIN when a rename or
    // mount anywhere on the host races with it, and asks the caller to retry: a busy host
    // (other sandboxes starting, a build renaming files) must not turn into 500s.
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    create(&srv, "busy");
    let expected = exec(&srv, "busy", &["cat", "/etc/passwd"]);
    let expected = expected["stdout"].as_str().expect("stdout").to_string();
    let scratch = tempfile::tempdir().expect("scratch dir");
    let (a, b) = (scratch.path().join("a"), scratch.path().join("b"));
    std::fs::write(&a, "x").expect("write a");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(&a, &b);
                let _ = std::fs::rename(&b, &a);
            }
        })
    };
    let mut failures = Vec::new();
    for i in 0..200 {
        let path = if i % 2 == 0 {
            "/sandboxes/busy/files/../../etc/passwd"
        } else {
            "/sandboxes/busy/files/..%2F..%2Fetc%2Fpasswd"
        };
        let resp = srv.raw("GET", path, None);
        if resp.status != 200 || resp.json["data"]["content"] != expected.as_str() {
            failures.push(format!("{resp:?}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renamer.join().expect("the renamer thread");
    assert!(
        failures.is_empty(),
        "{} of 200 reads failed while the host renamed files, e.g. {}",
        failures.len(),
        failures[0]
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Detached commands
// ---------------------------------------------------------------------------------------------

#[test]
fn detached_commands_run_on_and_report() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    create(&srv, "dt1");

    let started = srv
        .post(
            "/sandboxes/dt1/exec/detach",
            &json!({"command": ["sh", "-c", "echo out; echo err >&2; sleep 1; exit 4"]}),
        )
        .ok();
    let id = started["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 12, "{started}");
    assert_eq!(started["status"], "running", "{started}");
    assert_eq!(started["sandbox"], "dt1", "{started}");
    assert!(started["pid"].as_u64().is_some_and(|p| p > 1), "{started}");
    assert!(started.get("exit_code").is_none(), "{started}");
    assert_eq!(
        started["command"],
        json!(["sh", "-c", "echo out; echo err >&2; sleep 1; exit 4"])
    );

    let list = srv.get("/sandboxes/dt1/exec/detached").ok();
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|c| c["id"] == id.as_str()),
        "{list}"
    );

    let path = format!("/sandboxes/dt1/exec/detached/{id}");
    let mut last = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            last = srv.get(&path).ok();
            last["status"] != "running"
        }),
        "still running after 20 s: {last}"
    );
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(last["exit_code"], 4, "{last}");

    let logs = srv.get(&format!("{path}/logs")).ok();
    assert_eq!(logs["stdout"], "out\n", "{logs}");
    assert_eq!(logs["stderr"], "err\n", "{logs}");
    let logs = srv.get(&format!("{path}/logs?stream=stderr")).ok();
    assert_eq!(logs["stderr"], "err\n", "{logs}");
    assert!(logs.get("stdout").is_none_or(Value::is_null), "{logs}");
    let logs = srv.get(&format!("{path}/logs?stream=stdout")).ok();
    assert_eq!(logs["stdout"], "out\n", "{logs}");
    assert!(logs.get("stderr").is_none_or(Value::is_null), "{logs}");
    srv.get(&format!("{path}/logs?stream=both")).err(400);

    // A successful one is completed.
    let ok_cmd = srv
        .post("/sandboxes/dt1/exec/detach", &json!({"command": ["true"]}))
        .ok();
    let ok_path = format!(
        "/sandboxes/dt1/exec/detached/{}",
        ok_cmd["id"].as_str().expect("id")
    );
    assert!(
        eventually(Duration::from_secs(20), || {
            last = srv.get(&ok_path).ok();
            last["status"] != "running"
        }),
        "{last}"
    );
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last["exit_code"], 0, "{last}");

    // Killing a long one.
    let long = srv
        .post(
            "/sandboxes/dt1/exec/detach",
            &json!({"command": ["sleep", "30"]}),
        )
        .ok();
    let long_id = long["id"].as_str().expect("id").to_string();
    let long_pid = long["pid"].as_u64().expect("pid") as u32;
    assert_eq!(long["status"], "running", "{long}");
    let killed = srv
        .delete(&format!("/sandboxes/dt1/exec/detached/{long_id}"))
        .ok();
    assert_eq!(killed["status"], "failed", "{killed}");
    assert_eq!(killed["exit_code"], 137, "{killed}");
    assert!(
        eventually(Duration::from_secs(10), || process_is_dead(long_pid)),
        "pid {long_pid} still alive after DELETE"
    );
    let got = srv
        .get(&format!("/sandboxes/dt1/exec/detached/{long_id}"))
        .ok();
    assert_eq!(got["exit_code"], 137, "{got}");

    // Unknown and malformed ids.
    for bad in ["0123456789ab", "..%2F..", "..%2F..%2F..%2Fetc", "zzz"] {
        srv.raw("GET", &format!("/sandboxes/dt1/exec/detached/{bad}"), None)
            .err(404);
        srv.raw(
            "GET",
            &format!("/sandboxes/dt1/exec/detached/{bad}/logs"),
            None,
        )
        .err(404);
        srv.raw(
            "DELETE",
            &format!("/sandboxes/dt1/exec/detached/{bad}"),
            None,
        )
        .err(404);
    }
    srv.get(&format!("/sandboxes/ghost/exec/detached/{id}"))
        .err(404);
    srv.post(
        "/sandboxes/ghost/exec/detach",
        &json!({"command": ["true"]}),
    )
    .err(404);
    srv.post("/sandboxes/dt1/exec/detach", &json!({"command": []}))
        .err(400);
}

// ---------------------------------------------------------------------------------------------
// 9. Logs, extend, stats, status, backends, gc, OpenAPI
// ---------------------------------------------------------------------------------------------

#[test]
fn system_endpoints_and_sandbox_metadata() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    let info = srv
        .post(
            "/sandboxes",
            &json!({"name": "ttl1", "image": "host", "no_network": true, "ttl": "1h"}),
        )
        .ok();
    let expires = |v: &Value| -> chrono::DateTime<chrono::FixedOffset> {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("expires_at {v} is not RFC 3339: {e}"))
    };
    let first = expires(&info["expires_at"]);
    let from_now = first.signed_duration_since(chrono::Utc::now());
    assert!(
        from_now > chrono::Duration::minutes(58) && from_now <= chrono::Duration::minutes(61),
        "a 1h TTL expires in {from_now}"
    );
    let extended = srv
        .post("/sandboxes/ttl1/extend", &json!({"by": "30m"}))
        .ok();
    let second = expires(&extended["expires_at"]);
    let added = second.signed_duration_since(first);
    assert!(
        added >= chrono::Duration::minutes(29) && added <= chrono::Duration::minutes(31),
        "extending by 30m moved the expiry by {added}"
    );
    assert_eq!(
        expires(&srv.get("/sandboxes/ttl1").ok()["expires_at"]),
        second
    );
    srv.post("/sandboxes/ttl1/extend", &json!({"by": "soon"}))
        .err(400);
    srv.post("/sandboxes/ttl1/extend", &json!({})).err(400);
    srv.post("/sandboxes/ghost/extend", &json!({"by": "30m"}))
        .err(404);
    srv.post(
        "/sandboxes",
        &json!({"name": "ttlbad", "image": "host", "ttl": "forever"}),
    )
    .err(400);
    srv.get("/sandboxes/ttlbad").err(404);

    // Without a TTL it never expires, and extending keeps it so.
    let plain = create(&srv, "plain1");
    assert!(
        plain.get("expires_at").is_none_or(Value::is_null),
        "{plain}"
    );
    let extended = srv
        .post("/sandboxes/plain1/extend", &json!({"by": "30m"}))
        .ok();
    assert!(extended["expires_at"].is_null(), "{extended}");

    // Audit entries of that sandbox only.
    exec(&srv, "plain1", &["true"]);
    let logs = srv.get("/sandboxes/plain1/logs").ok();
    let entries = logs.as_array().expect("an array of entries");
    assert!(
        entries
            .iter()
            .any(|e| e["event"] == "sandbox_created" && e["name"] == "plain1"),
        "{logs}"
    );
    assert!(
        entries.iter().any(|e| e["event"] == "command_executed"),
        "{logs}"
    );
    assert!(
        !logs.to_string().contains("ttl1"),
        "another sandbox's entries: {logs}"
    );
    srv.get("/sandboxes/ghost/logs").err(404);

    let stats = srv.get("/stats").ok();
    assert_eq!(stats["sandbox_count"], 2, "{stats}");
    assert_eq!(stats["running_count"], 2, "{stats}");
    let usage = &stats["resource_usage"];
    assert!(
        usage["memory_total_mb"].as_u64().is_some_and(|m| m > 0),
        "{stats}"
    );
    assert!(usage["memory_used_mb"].as_u64().is_some(), "{stats}");
    assert!(usage["disk_used_mb"].as_u64().is_some(), "{stats}");
    assert!(usage["cpu_percent"].as_f64().is_some(), "{stats}");
    // Each running sandbox has its own row with CPU and memory, as `agentkernel stats` shows.
    let rows = stats["sandboxes"].as_array().expect("sandboxes");
    assert_eq!(rows.len(), 2, "{stats}");
    for row in rows {
        assert!(row["memory_mb"].as_f64().is_some(), "{stats}");
        assert!(row["cpu_percent"].as_f64().is_some(), "{stats}");
    }
    assert!(
        stats["sandbox_totals"]["memory_mb"].as_f64().is_some(),
        "{stats}"
    );

    let status = srv.get("/status").ok();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    assert_eq!(status["default_backend"], "native", "{status}");
    assert!(
        status["backends"]
            .as_array()
            .is_some_and(|b| b.contains(&json!("native"))),
        "{status}"
    );

    let backends = srv.get("/backends").ok();
    assert_eq!(backends["default_backend"], "native", "{backends}");
    let native = backends["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .find(|b| b["backend"] == "native")
        .unwrap_or_else(|| panic!("no native backend: {backends}"))
        .clone();
    assert_eq!(native["usable"], true, "{native}");
    assert!(native["configured"].is_boolean(), "{native}");
    assert!(native["readiness_reason"].is_string(), "{native}");
    for key in [
        "mount_cwd",
        "mount_home",
        "attach",
        "host_volumes",
        "ssh",
        "proxy_secret_bindings",
        "secret_files",
        "snapshots",
        "resume",
        "full_state_pause_resume",
        "full_state_fork",
        "endpoints",
    ] {
        assert!(
            native["capabilities"][key].is_boolean(),
            "capability {key}: {native}"
        );
    }

    let gc = srv.post("/gc", &json!({})).ok();
    assert!(gc["removed"].is_array(), "{gc}");
    // Nothing of ours has expired: both sandboxes stay.
    assert_eq!(srv.get("/sandboxes").ok().as_array().map(Vec::len), Some(2));
    // One that has expired is removed by gc, and said so.
    srv.post(
        "/sandboxes",
        &json!({"name": "short1", "image": "host", "no_network": true, "ttl": "1s"}),
    )
    .ok();
    std::thread::sleep(Duration::from_millis(2500));
    let gc = srv.post("/gc", &json!({})).ok();
    let removed = gc["removed"].as_array().expect("removed is an array");
    assert!(
        removed
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("short1"))),
        "{gc}"
    );
    assert!(
        !gc.to_string().contains("plain1") && !gc.to_string().contains("ttl1"),
        "{gc}"
    );
    srv.get("/sandboxes/short1").err(404);
    assert!(!ak.home.path().join("sandboxes").join("short1").exists());
    assert_eq!(srv.get("/sandboxes").ok().as_array().map(Vec::len), Some(2));

    let doc = srv.get("/openapi.json");
    assert_eq!(doc.status, 200, "{doc:?}");
    assert!(
        doc.json["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "{doc:?}"
    );
    let paths = doc.json["paths"].as_object().expect("paths object");
    for p in [
        "/run",
        "/run/stream",
        "/health",
        "/sandboxes",
        "/sandboxes/{name}",
        "/sandboxes/{name}/exec",
        "/sandboxes/{name}/exec/detach",
        "/sandboxes/{name}/extend",
    ] {
        assert!(paths.contains_key(p), "the OpenAPI document lacks {p}");
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Limits
// ---------------------------------------------------------------------------------------------

#[test]
fn body_size_limit_is_413() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool", "--max-body-mb", "1"]);
    let big = "x".repeat(2 * 1024 * 1024);
    let resp = srv.post(
        "/run",
        &json!({"command": ["echo", big], "image": "host", "no_network": true}),
    );
    let message = resp.err(413);
    assert!(message.contains("too large"), "{message}");
    let resp = srv.post("/sandboxes", &json!({"name": "big", "description": big}));
    resp.err(413);
    srv.get("/sandboxes/big").err(404);
    // Just under the limit is fine: 40 arguments of 16 KiB.
    let mut command = vec![
        "sh".to_string(),
        "-c".into(),
        "echo $# ${#40}".into(),
        "sh".into(),
    ];
    command.extend((0..40).map(|_| "y".repeat(16 * 1024)));
    let data = srv
        .post(
            "/run",
            &json!({"command": command, "image": "host", "no_network": true}),
        )
        .ok();
    assert_eq!(
        data["stdout"],
        format!("40 {}\n", 16 * 1024),
        "{}",
        data["stderr"]
    );
}

#[test]
fn concurrency_limit_is_429_until_a_slot_frees() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool", "--max-concurrent", "1"]);
    let mut sse = srv.stream("/run/stream", &run_body(&["sh", "-c", "echo go; sleep 3"]));
    // Wait until the command runs, so the slot is surely held.
    loop {
        let e = sse.next_event().expect("the stream ended early");
        if e.name == "output" {
            break;
        }
    }
    let busy = srv.get("/status");
    let message = busy.err(429);
    assert!(message.contains('1'), "{message}");
    let retry = busy
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {busy:?}"));
    assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "{retry}");
    srv.post("/run", &run_body(&["true"])).err(429);
    // Health stays answerable.
    assert_eq!(srv.get("/health").ok(), json!("ok"));

    let mut rest = Vec::new();
    while let Some(e) = sse.next_event() {
        rest.push(e);
    }
    assert_eq!(
        rest.last().map(|e| e.name.as_str()),
        Some("done"),
        "{rest:?}"
    );
    drop(sse);
    let mut last = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            let r = srv.get("/status");
            let free = r.status == 200;
            last = Some(r);
            free
        }),
        "still busy after the stream ended: {last:?}"
    );
    let data = srv.post("/run", &run_body(&["echo", "again"])).ok();
    assert_eq!(data["stdout"], "again\n", "{data}");
}

#[test]
fn timeouts_kill_the_command() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    let secs = format!("5.{}", std::process::id());
    let argv = ["sleep", secs.as_str()];

    let begun = Instant::now();
    let resp = srv.post(
        "/run",
        &json!({"command": argv, "image": "host", "no_network": true, "timeout_ms": 500}),
    );
    let took = begun.elapsed();
    let message = resp.err(408);
    assert!(message.contains("timeout_ms"), "{message}");
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    assert!(
        eventually(Duration::from_secs(5), || processes_with_argv(&argv)
            .is_empty()),
        "`sleep {secs}` outlived its timeout"
    );

    // Streamed: an error event.
    let begun = Instant::now();
    let events = srv
        .stream(
            "/run/stream",
            &json!({"command": argv, "image": "host", "no_network": true, "timeout_ms": 500}),
        )
        .all();
    assert!(begun.elapsed() < Duration::from_secs(4), "{events:?}");
    let last = events.last().expect("events");
    assert_eq!(last.name, "error", "{events:?}");
    assert!(last.data["message"].is_string(), "{events:?}");
    assert!(
        eventually(Duration::from_secs(5), || processes_with_argv(&argv)
            .is_empty()),
        "`sleep {secs}` outlived its timeout"
    );

    // In a persistent sandbox too; the sandbox stays usable.
    create(&srv, "slow");
    srv.post(
        "/sandboxes/slow/exec",
        &json!({"command": argv, "timeout_ms": 500}),
    )
    .err(408);
    assert!(
        eventually(Duration::from_secs(5), || processes_with_argv(&argv)
            .is_empty()),
        "`sleep {secs}` outlived its timeout"
    );
    assert_eq!(exec(&srv, "slow", &["echo", "ok"])["stdout"], "ok\n");
    assert_eq!(ak.list_json().len(), 1, "{:?}", ak.list_json());
}

#[test]
fn server_timeout_applies_without_timeout_ms() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool", "--timeout", "1s"]);
    let begun = Instant::now();
    srv.post("/run", &run_body(&["sleep", "7.25"])).err(408);
    assert!(begun.elapsed() < Duration::from_secs(5));
    // A request may ask for longer than the server's default.
    let data = srv
        .post(
            "/run",
            &json!({"command": ["sh", "-c", "sleep 1.5; echo done"], "image": "host",
                    "no_network": true, "timeout_ms": 10000}),
        )
        .ok();
    assert_eq!(data["stdout"], "done\n", "{data}");
}

// ---------------------------------------------------------------------------------------------
// 11. The warm pool
// ---------------------------------------------------------------------------------------------

#[test]
fn warm_pool_never_reuses_a_sandbox() {
    let ak = Ak::new();
    let config = ak.cwd.path().join("pool.toml");
    std::fs::write(&config, "[daemon]\nmin_warm = 1\nmax_warm = 2\n").expect("write config");
    let srv = Server::start(&ak, &["-c", config.to_str().expect("utf-8 path")]);

    // A background process per run, with an argument no other process has.
    let secs = format!("31.{}", std::process::id());
    let script = format!(
        "hostname; if cat /tmp/leak 2>/dev/null; then echo LEAKED; fi; echo secret > /tmp/leak; \
         sleep {secs} >/dev/null 2>&1 & echo started-bg"
    );
    let mut hostnames: Vec<String> = Vec::new();
    let mut warm_runs = 0;
    for attempt in 0..10 {
        let data = srv
            .post(
                "/run",
                &json!({"command": ["sh", "-c", &script], "image": "host",
                        "no_network": true, "fast": true}),
            )
            .ok();
        assert_eq!(data["exit_code"], 0, "run {attempt}: {data}");
        let stdout = data["stdout"].as_str().unwrap_or_default();
        assert!(
            !stdout.contains("secret") && !stdout.contains("LEAKED"),
            "run {attempt} saw a file of an earlier run: {data}"
        );
        assert!(stdout.ends_with("started-bg\n"), "{data}");
        let host = stdout.lines().next().unwrap_or_default().to_string();
        assert!(!host.is_empty(), "{data}");
        assert!(
            !hostnames.contains(&host),
            "run {attempt} ran in sandbox {host} again: {hostnames:?}"
        );
        if host.starts_with("warm-") {
            warm_runs += 1;
        }
        hostnames.push(host);
        if warm_runs >= 2 && hostnames.len() >= 3 {
            break;
        }
        // Give the pool time to boot the next one.
        std::thread::sleep(Duration::from_millis(1500));
    }
    eprintln!("DEBUG {hostnames:?}");
    assert!(
        warm_runs >= 2,
        "no two runs came from the warm pool: {hostnames:?}\n{}",
        srv.log()
    );

    // Not fast: booted for the request, same isolation.
    let data = srv
        .post(
            "/run",
            &json!({"command": ["sh", "-c", "hostname; cat /tmp/leak"], "image": "host",
                    "no_network": true, "fast": false}),
        )
        .ok();
    assert_ne!(data["exit_code"], 0, "{data}");
    let stdout = data["stdout"].as_str().unwrap_or_default();
    assert!(!stdout.contains("secret"), "{data}");
    let host = stdout.lines().next().unwrap_or_default();
    assert!(
        !host.starts_with("warm-"),
        "fast:false took a warm sandbox: {data}"
    );
    assert!(!hostnames.iter().any(|h| h == host), "{data}");

    // The runs' background processes did not survive their runs.
    assert!(
        eventually(Duration::from_secs(10), || processes_with_argv(&[
            "sleep", &secs
        ])
        .is_empty()),
        "a run's background process outlived its sandbox: {:?}",
        processes_with_argv(&["sleep", &secs])
    );
    // Streams use the pool the same way.
    let events = srv
        .stream(
            "/run/stream",
            &json!({"command": ["sh", "-c", "cat /tmp/leak; hostname"], "image": "host",
                    "no_network": true}),
        )
        .all();
    assert!(
        !output_of(&events, "stdout").contains("secret"),
        "{events:?}"
    );

    // Stopping the server destroys its warm sandboxes: nothing is left of any run.
    drop(srv);
    let left: Vec<String> = std::fs::read_dir(ak.home.path().join("sandboxes"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "sandboxes left after shutdown: {left:?}");
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());
}

/// With the default host the server also answers on ::1, where `localhost` often resolves
/// first (Node's resolver, and so the npm SDK's default base URL).
#[test]
fn default_host_also_listens_on_ipv6_loopback() {
    assert!(
        std::fs::read_to_string("/proc/net/if_inet6")
            .unwrap_or_default()
            .contains("00000000000000000000000000000001"),
        "this test needs the IPv6 loopback address ::1 on lo"
    );
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    let line = srv.log();
    assert!(line.contains("http://[::1]:"), "{line}");
    let url = format!("http://[::1]:{}/health", srv.addr.port());
    let resp = reqwest::blocking::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().expect("JSON");
    assert_eq!(body["data"], "ok");
    // An explicit host is only that host.
    let only_v4 = Server::start(&ak, &["--no-pool", "--host", "127.0.0.1"]);
    assert!(!only_v4.log().contains("[::1]"), "{}", only_v4.log());
}

// ---------------------------------------------------------------------------------------------
// Image detection belongs to the request
// ---------------------------------------------------------------------------------------------

/// A request without an image is detected from its command and the operator's config, never
/// from the project files of the directory the server happens to run in: `serve` started in a
/// Rust or Node checkout still gives `echo` the default image (alpine:3.20, from the test
/// registry), not rust:1.85-alpine or node:22-alpine.
#[test]
fn image_less_requests_are_not_detected_from_the_servers_directory() {
    for (file, wrong) in [("Cargo.toml", "rust:"), ("package.json", "node:")] {
        let ak = Ak::new();
        std::fs::write(ak.cwd.path().join(file), "{}\n").expect("write a project file");
        let srv = Server::start(&ak, &["--no-pool"]);
        let resp = srv.post(
            "/run",
            &json!({"command": ["sh", "-c", "echo detected"], "no_network": true}),
        );
        assert!(!resp.text.contains(wrong), "{file}: {resp:?}");
        let data = resp.ok();
        assert_eq!(data["stdout"], "detected\n", "{file}: {data}");
        let resp = srv.post(
            "/batch/run",
            &json!({"commands": [{"command": ["echo", "batched"], "profile": "restrictive"}]}),
        );
        assert!(!resp.text.contains(wrong), "{file}: {resp:?}");
        let data = resp.ok();
        assert_eq!(data["results"][0]["exit_code"], 0, "{file}: {data}");
        assert!(
            data["results"][0]["output"]
                .as_str()
                .is_some_and(|o| o.contains("batched")),
            "{file}: {data}"
        );
        // A command that names its language still decides.
        let resp = srv.post(
            "/run",
            &json!({"command": ["python3", "-c", "print(1)"], "no_network": true}),
        );
        assert!(!resp.text.contains(wrong), "{file}: {resp:?}");
    }
}

/// An `agentkernel.toml` in the server's own directory is not an HTTP caller's project: it is
/// neither applied to nor refused for their requests (a project file there that sets what a
/// project may not used to fail every request, and one that set a profile changed them all).
#[test]
fn the_servers_directory_is_no_callers_project() {
    let ak = Ak::new();
    std::fs::write(
        ak.cwd.path().join("agentkernel.toml"),
        "[images]\nmax_layer_mb = 1\n[security]\nprofile = \"restrictive\"\n",
    )
    .expect("write a project config");
    let srv = Server::start(&ak, &["--no-pool"]);
    let data = srv
        .post(
            "/run",
            &json!({"command": ["sh", "-c", "touch /root-is-writable && echo written"],
                    "image": "host", "no_network": true, "profile": "moderate"}),
        )
        .ok();
    assert_eq!(data["exit_code"], 0, "{data}");
    assert_eq!(data["stdout"], "written\n", "{data}");
}

/// The files endpoints follow the engine's path rule, as the MCP file tools do: `..` stays
/// inside the sandbox, and an over-long path is a 400 that names the bound.
#[test]
fn file_paths_follow_the_engines_rule() {
    let ak = Ak::new();
    let srv = Server::start(&ak, &["--no-pool"]);
    create(&srv, "rule");
    let marker = unique("http-dotdot");
    let path = format!("/sandboxes/rule/files/..%2F..%2F..%2Ftmp%2F{marker}");
    srv.raw("PUT", &path, Some(&json!({"content": "inside"})))
        .ok();
    assert!(!std::path::Path::new("/tmp").join(&marker).exists());
    let data = exec(&srv, "rule", &["cat", &format!("/tmp/{marker}")]);
    assert_eq!(data["stdout"], "inside", "{data}");
    let long = "a".repeat(4096);
    let message = srv.get(&format!("/sandboxes/rule/files/{long}")).err(400);
    assert!(message.contains("give at most 4095"), "{message}");
    srv.delete("/sandboxes/rule").ok();
}
