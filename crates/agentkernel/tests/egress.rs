//! Egress through the real binary: networked sandboxes reach a test "world" only through the
//! host-side egress proxy, which enforces the policy, answers DNS and injects secrets.
//!
//! Safety: every agentkernel command of these tests runs inside a CLIENT network namespace the
//! test creates, whose only link is a veth pair to a WORLD namespace the test creates (its
//! default route goes there) and the world has no uplink. Whatever the proxy connects to can
//! only be a server of the world: even a wrong connection to 169.254.169.254 ends in the world
//! (which has that address too, so a leak shows as a 200 from the world's echo server). The
//! container engines stay where they are (unix sockets); a container's namespace is routed to
//! the proxy of the agentkernel process, which connects out from the client namespace.
//!
//! The world (tests/egress_world/servers.py): plain HTTP on :80 echoing the request's headers
//! as JSON; HTTPS on TRUSTED:443 with a certificate of a test CA (the proxy trusts it through
//! SSL_CERT_FILE in its environment); HTTPS on UNTRUSTED:443 with a certificate of another CA;
//! a PyPI simple index and an npm registry stub on the trusted server; a raw TCP banner on
//! :7000. Every request is logged in the world's directory, so a test can prove what never
//! arrived. Names are mapped with AGENTKERNEL_RESOLVE.

mod common;
use common::engines::{Engine, engine};
use common::serve::ServeProcess;
use common::*;
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const SERVERS_PY: &str = include_str!("egress_world/servers.py");
const PROBE_PY: &str = include_str!("egress_world/probe.py");

/// The world's addresses (the client is .1).
const CLIENT_IP: &str = "10.213.50.1";
const WORLD_IP: &str = "10.213.50.2";
const UNTRUSTED_IP: &str = "10.213.50.3";
const METADATA_IP: &str = "169.254.169.254";
/// The same world over IPv6 (a unique-local range: private, so reachable in full mode), and
/// the IPv6 metadata address, which a wrong decision would reach there.
const CLIENT_IP6: &str = "fd00:213:50::1";
const WORLD_IP6: &str = "fd00:213:50::2";
const METADATA_IP6: &str = "fd00:ec2::254";

/// Names the trusted certificate covers.
const TRUSTED_NAMES: &[&str] = &[
    "api.example.test",
    "a.example.test",
    "other.example.test",
    "evil.test",
    "other.test",
    "pypi.test",
    "registry.npm.test",
    "metadata.google.internal",
];

static NEXT: AtomicU32 = AtomicU32::new(0);

fn sh(cmd: &str, args: &[&str]) -> Out {
    let out: Out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
        .into();
    out
}

fn must(cmd: &str, args: &[&str]) -> Out {
    let out = sh(cmd, args);
    assert_eq!(out.code, 0, "{cmd} {args:?}: {out:?}");
    out
}

/// The client and world namespaces, the world's servers and their certificates.
struct World {
    client: String,
    world: String,
    dir: tempfile::TempDir,
    servers: Option<Child>,
}

impl World {
    fn new() -> World {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let client = format!("akc-{pid}-{n}");
        let world = format!("akw-{pid}-{n}");
        let (vc, vw) = (format!("akv{pid}x{n}c"), format!("akv{pid}x{n}w"));
        assert!(vc.len() <= 15, "interface name {vc} too long");
        let dir = tempfile::tempdir().expect("world dir");
        // From here on, Drop removes whatever was made.
        let mut w = World {
            client,
            world,
            dir,
            servers: None,
        };
        must("ip", &["netns", "add", &w.client]);
        must("ip", &["netns", "add", &w.world]);
        let (c, wo) = (w.client.clone(), w.world.clone());
        must(
            "ip",
            &[
                "link", "add", &vc, "netns", &c, "type", "veth", "peer", "name", &vw, "netns", &wo,
            ],
        );
        for (ns, args) in [
            (&c, vec!["link", "set", "lo", "up"]),
            (&wo, vec!["link", "set", "lo", "up"]),
            (
                &c,
                vec!["addr", "add", &format!("{CLIENT_IP}/24"), "dev", &vc],
            ),
            (
                &wo,
                vec!["addr", "add", &format!("{WORLD_IP}/24"), "dev", &vw],
            ),
            (
                &wo,
                vec!["addr", "add", &format!("{UNTRUSTED_IP}/24"), "dev", &vw],
            ),
            (
                &wo,
                vec!["addr", "add", &format!("{METADATA_IP}/32"), "dev", &vw],
            ),
            // `nodad`: usable at once, without duplicate address detection's wait.
            (
                &c,
                vec![
                    "addr",
                    "add",
                    &format!("{CLIENT_IP6}/64"),
                    "dev",
                    &vc,
                    "nodad",
                ],
            ),
            (
                &wo,
                vec![
                    "addr",
                    "add",
                    &format!("{WORLD_IP6}/64"),
                    "dev",
                    &vw,
                    "nodad",
                ],
            ),
            (
                &wo,
                vec![
                    "addr",
                    "add",
                    &format!("{METADATA_IP6}/128"),
                    "dev",
                    &vw,
                    "nodad",
                ],
            ),
            (&c, vec!["link", "set", &vc, "up"]),
            (&wo, vec!["link", "set", &vw, "up"]),
            (&c, vec!["route", "add", "default", "via", WORLD_IP]),
            (&c, vec!["-6", "route", "add", "default", "via", WORLD_IP6]),
        ] {
            let mut full = vec!["-n", ns.as_str()];
            full.extend(args.iter().copied());
            must("ip", &full);
        }
        w.make_certs();
        w.make_wheel();
        w.start_servers();
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn make_certs(&self) {
        let d = self.dir.path();
        for ca in ["ca", "otherca"] {
            let key = d.join(format!("{ca}.key"));
            let pem = d.join(format!("{ca}.pem"));
            must(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &key.to_string_lossy(),
                    "-out",
                    &pem.to_string_lossy(),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=agentkernel egress test {ca}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        for (leaf, ca, names) in [
            ("trusted", "ca", TRUSTED_NAMES.to_vec()),
            ("untrusted", "otherca", vec!["untrusted.test"]),
        ] {
            let key = d.join(format!("{leaf}.key"));
            let csr = d.join(format!("{leaf}.csr"));
            let pem = d.join(format!("{leaf}.pem"));
            let ext = d.join(format!("{leaf}.ext"));
            let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
            std::fs::write(
                &ext,
                format!(
                    "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
                    san.join(",")
                ),
            )
            .expect("ext");
            must(
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &key.to_string_lossy(),
                    "-out",
                    &csr.to_string_lossy(),
                    "-subj",
                    &format!("/CN={}", names[0]),
                ],
            );
            must(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr.to_string_lossy(),
                    "-CA",
                    &d.join(format!("{ca}.pem")).to_string_lossy(),
                    "-CAkey",
                    &d.join(format!("{ca}.key")).to_string_lossy(),
                    "-CAcreateserial",
                    "-out",
                    &pem.to_string_lossy(),
                    "-days",
                    "2",
                    "-extfile",
                    &ext.to_string_lossy(),
                ],
            );
        }
    }

    /// A tiny wheel for the PyPI index.
    fn make_wheel(&self) {
        let script = r#"
import sys, zipfile, hashlib, base64
files = {
  "akdemo/__init__.py": b"VALUE = 42\n",
  "akdemo-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: akdemo\nVersion: 0.1\n",
  "akdemo-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: agentkernel-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for n, b in files.items():
    h = base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
    record += f"{n},sha256={h},{len(b)}\n"
record += "akdemo-0.1.dist-info/RECORD,,\n"
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for n, b in files.items():
        z.writestr(n, b)
    z.writestr("akdemo-0.1.dist-info/RECORD", record)
"#;
        must(
            "python3",
            &[
                "-c",
                script,
                &self.path("akdemo-0.1-py3-none-any.whl").to_string_lossy(),
            ],
        );
    }

    fn start_servers(&mut self) {
        let cfg = serde_json::json!({
            "dir": self.dir.path(),
            "trusted_ip": WORLD_IP,
            "untrusted_ip": UNTRUSTED_IP,
            "ipv6": WORLD_IP6,
        })
        .to_string();
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.world))
            .args(["--", "python3", "-c", SERVERS_PY, &cfg])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the world's servers");
        let stdout = child.stdout.take().expect("stdout");
        self.servers = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(HANG)
            .expect("the world's servers did not start");
        assert_eq!(line.trim(), "ready", "the world's servers did not start");
    }

    /// AGENTKERNEL_RESOLVE for the test names.
    fn resolve(&self) -> String {
        let mut m: Vec<String> = TRUSTED_NAMES
            .iter()
            .map(|n| format!("{n}={WORLD_IP}"))
            .collect();
        m.push(format!("untrusted.test={UNTRUSTED_IP}"));
        m.push(format!("v6.test={WORLD_IP6}"));
        m.join(";")
    }

    /// The requests a world server logged (`plain`, `trusted`, `untrusted`).
    fn log(&self, tag: &str) -> Vec<Value> {
        std::fs::read_to_string(self.path(&format!("{tag}.log")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }

    fn raw_log(&self) -> String {
        std::fs::read_to_string(self.path("raw.log")).unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut child) = self.servers.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever still runs in our namespaces is a leak (a proxy outliving its sandbox).
        let mut leftovers = Vec::new();
        for ns in [&self.client, &self.world] {
            let pids = sh("ip", &["netns", "pids", ns]).stdout;
            for pid in pids.split_whitespace() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                    .unwrap_or_default();
                leftovers.push(format!("{ns}: {pid} {cmdline}"));
                let _ = sh("kill", &["-9", pid]);
            }
        }
        for ns in [&self.client, &self.world] {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        let list = sh("ip", &["netns", "list"]).stdout;
        if !std::thread::panicking() {
            assert!(
                leftovers.is_empty(),
                "processes left in the test's namespaces: {leftovers:#?}"
            );
            for ns in [&self.client, &self.world] {
                assert!(
                    !list
                        .lines()
                        .any(|l| l.split_whitespace().next() == Some(ns)),
                    "namespace {ns} left behind"
                );
            }
        }
    }
}

/// A state directory, the backend under test and its world. Fields drop in order: the
/// sandboxes are removed (in `Drop`) before the world goes.
struct T {
    ak: Ak,
    backend: &'static str,
    eng: Option<Engine>,
    w: World,
}

impl T {
    fn new(backend: &'static str) -> T {
        let mut ak = Ak::new();
        let eng = (backend != "native").then(|| engine(backend));
        if let Some(eng) = &eng {
            ak.env.push((eng.var.to_string(), eng.host.clone()));
        }
        let w = World::new();
        T {
            ak,
            backend,
            eng,
            w,
        }
    }

    fn image(&self) -> &'static str {
        if self.backend == "native" {
            "host"
        } else {
            "python:3.12-alpine"
        }
    }

    /// `agentkernel ARGS` in the client namespace, with the world's names and CA.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.w.client))
            .arg("--")
            .arg(bin())
            .args(args)
            .env("AGENTKERNEL_HOME", self.ak.home.path())
            .env("AGENTKERNEL_REGISTRY_MIRROR", &self.ak.mirror)
            .env("AGENTKERNEL_RESOLVE", self.w.resolve())
            .env("SSL_CERT_FILE", self.w.path("ca.pem"))
            .current_dir(self.ak.cwd.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .envs(self.ak.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, b"")
    }

    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn nsenter agentkernel");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        // Written on a thread: a command that never reads must not block the test.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        wait_bounded(child, &format!("agentkernel {args:?}"))
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "agentkernel {args:?} failed:\n{out:?}");
        out
    }

    /// `run -B BACKEND --image IMAGE [flags…] -- python3 -c PROBE OPS`: one result per op.
    fn probe(&self, flags: &[&str], ops: &Value) -> Vec<Value> {
        let ops = ops.to_string();
        let mut args = vec!["run", "-B", self.backend, "--image", self.image()];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "python3", "-c", PROBE_PY, &ops]);
        let out = self.run(&args);
        assert_eq!(out.code, 0, "probe {ops}:\n{out:?}");
        let results: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{out:?}")))
            .collect();
        assert_eq!(
            results.len(),
            ops.matches("[\"").count(),
            "one result per op: {out:?}"
        );
        results
    }

    /// The same probe in a persistent sandbox `name`.
    fn exec_probe(&self, name: &str, ops: &Value) -> Vec<Value> {
        let ops = ops.to_string();
        let out = self.run(&["exec", name, "--", "python3", "-c", PROBE_PY, &ops]);
        assert_eq!(out.code, 0, "exec probe {ops}:\n{out:?}");
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{out:?}")))
            .collect()
    }

    /// A program (not agentkernel) in the client namespace, bounded.
    fn in_client(&self, argv: &[&str]) -> Out {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.w.client))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsenter");
        wait_bounded(child, &format!("{argv:?} in the client namespace"))
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.ak.home.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line"))
            .collect()
    }
}

impl Drop for T {
    fn drop(&mut self) {
        if let Ok(out) = self.cmd(&["list", "--json"]).output()
            && let Ok(list) = serde_json::from_slice::<Vec<Value>>(&out.stdout)
        {
            for s in list {
                if let Some(name) = s["name"].as_str() {
                    let _ = self.cmd(&["remove", name]).output();
                }
            }
        }
        if let Some(eng) = &self.eng {
            let left = eng.containers_of(self.ak.home.path());
            if !std::thread::panicking() {
                assert!(left.is_empty(), "containers left: {left:?}");
            }
        }
    }
}

fn get(url: &str) -> Value {
    serde_json::json!(["get", url])
}

fn get_h(url: &str, headers: Value) -> Value {
    serde_json::json!(["get", url, headers])
}

/// A 200 from the world's echo server: the JSON it echoed.
fn echoed(r: &Value) -> Value {
    assert_eq!(r["status"], 200, "expected a 200 from the world: {r}");
    serde_json::from_str(r["body"].as_str().expect("body")).expect("echo JSON")
}

/// Refused: no HTTP answer at all, or the proxy's 403 (whose reason contains `reason` when
/// given). Never anything from the world.
fn refused(r: &Value, what: &str, reason: Option<&str>) {
    let status = r["status"].as_u64().unwrap_or(0);
    let body = r["body"].as_str().unwrap_or_default();
    assert!(status == 0 || status == 403, "{what} was not refused: {r}");
    assert!(
        !body.contains("\"server\""),
        "{what} reached the world: {r}"
    );
    if status == 403 {
        assert!(
            body.contains("is blocked by the sandbox's network policy"),
            "{what}: 403 without the proxy's message: {r}"
        );
        if let Some(reason) = reason {
            assert!(
                body.contains(reason),
                "{what}: expected reason {reason:?}: {r}"
            );
        }
    } else {
        assert!(reason.is_none(), "{what}: expected a 403 ({reason:?}): {r}");
    }
}

fn nxdomain(r: &Value, what: &str) {
    assert!(
        r.get("error").is_some(),
        "{what} resolved though it should not: {r}"
    );
}

// ---- 1. full mode ----------------------------------------------------------------------------

fn full_mode_reaches_the_world_but_never_metadata(t: &T) {
    let ops = serde_json::json!([
        get("http://api.example.test/by-name"),
        get(&format!("http://{WORLD_IP}/by-ip")),
        get("http://169.254.169.254/latest/meta-data/"),
        get("http://2852039166/latest/meta-data/"),
        get("http://[::ffff:169.254.169.254]/latest/meta-data/"),
        get("http://metadata.google.internal/computeMetadata/v1/"),
        ["dns", "api.example.test"],
        ["dns", "nosuch.test"],
    ]);
    let r = t.probe(&[], &ops);
    assert_eq!(echoed(&r[0])["path"], "/by-name");
    assert_eq!(echoed(&r[0])["headers"]["host"], "api.example.test");
    assert_eq!(echoed(&r[1])["path"], "/by-ip");
    refused(&r[2], "169.254.169.254", None);
    refused(&r[3], "2852039166", None);
    refused(&r[4], "[::ffff:169.254.169.254]", None);
    refused(&r[5], "metadata.google.internal", None);
    assert_eq!(r[6]["addrs"], serde_json::json!([WORLD_IP]), "{}", r[6]);
    nxdomain(&r[7], "nosuch.test");
    // The world's metadata address never saw a request, through any spelling.
    let hits: Vec<Value> = t
        .w
        .log("plain")
        .into_iter()
        .filter(|e| e["local"] == METADATA_IP || e["path"].as_str().unwrap_or("").contains("meta"))
        .collect();
    assert!(
        hits.is_empty(),
        "metadata requests reached the world: {hits:#?}"
    );
}

/// IPv6 goes the same way (native: a container's namespace may have IPv6 turned off): by
/// address and by a name with only an AAAA record, and the IPv6 metadata address is refused
/// without reaching the world.
fn ipv6_goes_through_the_proxy_too(t: &T) {
    let ops = serde_json::json!([
        get(&format!("http://[{WORLD_IP6}]/v6-by-ip")),
        get("http://v6.test/v6-by-name"),
        get(&format!("http://[{METADATA_IP6}]/latest/meta-data/")),
        ["dns", "v6.test"],
    ]);
    let r = t.probe(&[], &ops);
    assert_eq!(echoed(&r[0])["path"], "/v6-by-ip", "{}", r[0]);
    assert_eq!(echoed(&r[1])["path"], "/v6-by-name", "{}", r[1]);
    refused(&r[2], METADATA_IP6, None);
    assert_eq!(r[3]["addrs"], serde_json::json!([WORLD_IP6]), "{}", r[3]);
    let reached: Vec<Value> =
        t.w.log("plain")
            .into_iter()
            .filter(|e| e["path"].as_str().unwrap_or("").starts_with("/v6-"))
            .collect();
    assert_eq!(reached.len(), 2, "{reached:#?}");
    assert!(
        !t.w.log("plain")
            .iter()
            .any(|e| e["path"].as_str().unwrap_or("").contains("meta")),
        "the IPv6 metadata address was reached"
    );
}

#[test]
fn native_ipv6_goes_through_the_proxy_too() {
    ipv6_goes_through_the_proxy_too(&T::new("native"));
}

/// Over HTTP (the SDKs' `secrets` field): a value the caller gives is injected for its host
/// only; a vault key the operator did not list in `[secrets] remote_bindings` is refused (403)
/// and nothing is made.
fn http_callers_bind_the_secrets_they_give(t: &T) {
    let mut cmd = t.cmd(&["serve", "--port", "0"]);
    cmd.env_remove("AGENTKERNEL_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let srv = ServeProcess::spawn(cmd);
    let post = |body: &Value| {
        t.in_client(&[
            "curl",
            "-sS",
            "-m",
            "60",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
            &format!("{}/sandboxes", srv.base),
        ])
    };
    let out = post(&serde_json::json!({
        "name": "hsec",
        "backend": t.backend,
        "image": t.image(),
        "secrets": ["TOKEN=sk-over-http-77:api.example.test"],
    }));
    assert!(out.stdout.ends_with("\n200"), "{out:?}\n{}", srv.log());
    let ops = serde_json::json!([
        get("https://api.example.test/h"),
        get("http://other.test/o"),
    ]);
    let r = t.exec_probe("hsec", &ops);
    assert_eq!(
        echoed(&r[0])["headers"]["authorization"],
        "Bearer sk-over-http-77",
        "{}",
        r[0]
    );
    // Bound secrets narrow the sandbox to their hosts.
    refused(&r[1], "other.test beside a bound secret", None);
    let out = post(&serde_json::json!({
        "name": "hvault",
        "backend": t.backend,
        "image": t.image(),
        "secrets": ["TOKEN:api.example.test"],
    }));
    assert!(
        out.stdout.ends_with("\n403") && out.stdout.contains("remote_bindings"),
        "{out:?}"
    );
    assert!(
        !t.ok(&["list", "--json"]).stdout.contains("hvault"),
        "a refused request made a sandbox"
    );
    t.ok(&["remove", "hsec"]);
}

// ---- 2. allowlist ----------------------------------------------------------------------------

fn allowlist_lets_only_the_allowed_names_through(t: &T) {
    let ops = serde_json::json!([
        get("http://api.example.test/allowed"),
        ["dns", "evil.test"],
        get_h(
            &format!("http://{WORLD_IP}/smuggled"),
            serde_json::json!({"Host": "evil.test"})
        ),
        get("http://evil.test/direct"),
        ["raw", WORLD_IP, 7000],
        ["dns", "api.example.test"],
    ]);
    let r = t.probe(&["--allow-host", "api.example.test"], &ops);
    assert_eq!(echoed(&r[0])["path"], "/allowed");
    nxdomain(&r[1], "evil.test under an allowlist");
    let status = r[2]["status"].as_u64().unwrap_or(0);
    assert_eq!(status, 403, "Host: evil.test to the allowed IP: {}", r[2]);
    refused(&r[2], "Host: evil.test", None);
    refused(&r[3], "http://evil.test", None);
    assert!(
        r[4].get("data")
            .is_none_or(|d| !d.as_str().unwrap_or("").contains("RAW-BANNER")),
        "raw TCP to a non-HTTP port got through: {}",
        r[4]
    );
    assert_eq!(r[5]["addrs"], serde_json::json!([WORLD_IP]), "{}", r[5]);
    assert_eq!(t.w.raw_log(), "", "the raw server saw a connection");
    let paths: Vec<String> =
        t.w.log("plain")
            .iter()
            .map(|e| e["path"].as_str().unwrap_or("").to_string())
            .collect();
    assert_eq!(
        paths,
        ["/allowed"],
        "only the allowed request reached the world"
    );

    // A wildcard.
    let ops = serde_json::json!([
        get("http://a.example.test/wild"),
        get("http://evil.test/wild"),
    ]);
    let r = t.probe(&["--allow-host", "*.example.test"], &ops);
    assert_eq!(echoed(&r[0])["path"], "/wild");
    refused(&r[1], "evil.test under *.example.test", None);
}

// ---- 3. config: domains deny and block_private -------------------------------------------------

fn config_deny_and_block_private(t: &T) {
    let deny = t.ak.cwd.path().join("deny.toml");
    std::fs::write(&deny, "[security.domains]\ndeny = [\"evil.test\"]\n").expect("config");
    let deny = deny.to_string_lossy().into_owned();
    let ops = serde_json::json!([
        get("http://evil.test/denied"),
        get("http://api.example.test/ok")
    ]);
    let r = t.probe(&["--config", &deny], &ops);
    let s = r[0]["status"].as_u64().unwrap_or(0);
    assert!(
        s == 403 || r[0]["body"].as_str().unwrap_or("").contains("Error"),
        "{}",
        r[0]
    );
    refused(&r[0], "evil.test denied by config", None);
    assert_eq!(echoed(&r[1])["path"], "/ok");

    let private = t.ak.cwd.path().join("private.toml");
    std::fs::write(&private, "[security]\nblock_private = true\n").expect("config");
    let private = private.to_string_lossy().into_owned();
    let ops = serde_json::json!([
        get(&format!("http://{WORLD_IP}/private-ip")),
        get("http://api.example.test/private-name"),
    ]);
    let r = t.probe(&["--config", &private], &ops);
    assert_eq!(r[0]["status"], 403, "{}", r[0]);
    refused(
        &r[0],
        "a private address with block_private",
        Some("private"),
    );
    refused(
        &r[1],
        "a name of a private address with block_private",
        None,
    );
    let logged: Vec<String> =
        t.w.log("plain")
            .iter()
            .map(|e| e["path"].as_str().unwrap_or("").to_string())
            .collect();
    assert_eq!(logged, ["/ok"], "refused requests reached the world");
}

// ---- 4. secrets --------------------------------------------------------------------------------

const SECRET: &str = "sk-test-XYZ";
const SECRET2: &str = "sk-header-ABC";

fn secrets_reach_only_their_hosts(t: &T) {
    t.ok(&["secret", "set", "TOKEN", SECRET]);
    t.ok(&["secret", "set", "HDRKEY", SECRET2]);
    let ops = serde_json::json!([
        get("https://api.example.test/bearer"),
        get("https://other.example.test/x-api-key"),
        // Not bound: passed through, so the sandbox checks the world's certificate itself.
        serde_json::json!(["get", "https://evil.test/other-host", {}, "/tmp/testca.pem"]),
        get("https://untrusted.test/untrusted"),
    ]);
    let ops_s = ops.to_string();
    // The probe, then a search for the values anywhere the sandbox can read: the environment,
    // every process's environ and cmdline, files under /run /tmp /etc /root. The patterns are
    // written so that they do not match themselves in the searching commands' cmdlines.
    let pats = "-e sk-test-XY[Z] -e sk-header-AB[C]";
    let script = format!(
        "cat > /tmp/testca.pem; python3 -c \"$P\" '{ops_s}'; echo \"ENV=$TOKEN\"; \
         {{ env; cat /proc/*/environ /proc/*/cmdline; }} 2>/dev/null | grep -a -c {pats}; \
         grep -r -a -s -l {pats} /run /tmp /etc /root 2>/dev/null | wc -l"
    );
    let ca = std::fs::read(t.w.path("ca.pem")).expect("test CA");
    let out = t.run_stdin(
        &[
            "run",
            "-B",
            t.backend,
            "--image",
            t.image(),
            "-S",
            "TOKEN:api.example.test",
            "-S",
            "HDRKEY:other.example.test:x-api-key",
            "-S",
            "TOKEN:untrusted.test",
            "--allow-host",
            "evil.test",
            "-e",
            &format!("P={PROBE_PY}"),
            "--",
            "sh",
            "-c",
            &script,
        ],
        &ca,
    );
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.len() >= 7, "{out:?}");
    let r: Vec<Value> = lines[..4]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {out:?}")))
        .collect();
    let bearer = echoed(&r[0]);
    assert_eq!(
        bearer["headers"]["authorization"],
        format!("Bearer {SECRET}"),
        "{bearer}"
    );
    let hdr = echoed(&r[1]);
    assert_eq!(hdr["headers"]["x-api-key"], SECRET2, "{hdr}");
    assert!(hdr["headers"].get("authorization").is_none(), "{hdr}");
    let other = echoed(&r[2]);
    assert!(
        !other.to_string().contains(SECRET) && !other.to_string().contains(SECRET2),
        "a host without a binding got a secret: {other}"
    );
    assert_eq!(r[3]["status"], 502, "untrusted upstream: {}", r[3]);
    let body = r[3]["body"].as_str().unwrap_or("");
    assert!(
        body.contains("is not trusted") && body.contains("no secret was sent"),
        "{}",
        r[3]
    );
    assert!(
        t.w.log("untrusted").is_empty(),
        "the untrusted upstream got a request: {:?}",
        t.w.log("untrusted")
    );
    assert_eq!(lines[4], "ENV=ak-proxy-managed", "{out:?}");
    assert_eq!(
        lines[5], "0",
        "a secret's value is in an environment or command line inside the sandbox:\n{out:?}"
    );
    assert_eq!(
        lines[6].trim(),
        "0",
        "a secret's value is in a file inside the sandbox:\n{out:?}"
    );
    // Over the whole world: the values went only to their own hosts.
    for e in t.w.log("trusted") {
        let host = e["headers"]["host"].as_str().unwrap_or("").to_string();
        let text = e.to_string();
        if text.contains(SECRET) {
            assert_eq!(host, "api.example.test", "{e}");
        }
        if text.contains(SECRET2) {
            assert_eq!(host, "other.example.test", "{e}");
        }
    }
}

// ---- 5. secret files ---------------------------------------------------------------------------

fn secret_files_and_placeholders(t: &T) {
    t.ok(&["secret", "set", "FILEKEY", "sk-file-123"]);
    let base = ["run", "-B", t.backend, "--image", t.image()];
    let mut args = base.to_vec();
    args.extend_from_slice(&[
        "--secret-file",
        "FILEKEY",
        "--",
        "cat",
        "/run/agentkernel/secrets/FILEKEY",
    ]);
    let out = t.ok(&args);
    assert_eq!(out.stdout.trim_end(), "sk-file-123", "{out:?}");

    let script = "T=$(cat /run/agentkernel/secrets/FILEKEY); echo \"FILE=$T\"; \
         python3 -c \"$P\" \"[[\\\"get\\\", \\\"https://api.example.test/ph\\\", {\\\"x-token\\\": \\\"$T\\\"}]]\"";
    let mut args = base.to_vec();
    args.extend_from_slice(&[
        "--secret-file",
        "FILEKEY",
        "--placeholder-secrets",
        "-S",
        "FILEKEY:api.example.test",
        "-e",
    ]);
    let p = format!("P={PROBE_PY}");
    args.push(&p);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let out = t.ok(&args);
    let mut lines = out.stdout.lines();
    let file = lines.next().expect("FILE line");
    let token = file.strip_prefix("FILE=").expect("FILE=");
    assert!(!token.is_empty(), "{out:?}");
    assert!(
        !token.contains("sk-file-123"),
        "the placeholder file holds the real value: {out:?}"
    );
    let r: Value = serde_json::from_str(lines.next().expect("probe line")).expect("json");
    let e = echoed(&r);
    assert_eq!(e["headers"]["x-token"], "sk-file-123", "{e}");
}

// ---- 6. runtime policy change ------------------------------------------------------------------

fn policy_changes_apply_to_a_running_sandbox(t: &T) {
    t.ok(&["create", "pol", "-B", t.backend, "--image", t.image()]);
    t.ok(&["start", "pol"]);
    let ops = serde_json::json!([get("http://api.example.test/p")]);
    let r = t.exec_probe("pol", &ops);
    assert_eq!(echoed(&r[0])["path"], "/p");
    t.ok(&["sandbox", "policy", "pol", "--deny", "api.example.test"]);
    let r = t.exec_probe("pol", &ops);
    refused(&r[0], "api.example.test after --deny", None);
    t.ok(&["sandbox", "policy", "pol", "--allow", "api.example.test"]);
    let r = t.exec_probe("pol", &ops);
    assert_eq!(echoed(&r[0])["path"], "/p", "--allow did not restore it");

    // The same over HTTP: `serve` in the client namespace, curl from there too.
    let mut cmd = t.cmd(&["serve", "--port", "0"]);
    cmd.env_remove("AGENTKERNEL_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let srv = ServeProcess::spawn(cmd);
    let patch = |body: &str| {
        let out = t.in_client(&[
            "curl",
            "-sS",
            "-m",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PATCH",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &format!("{}/sandboxes/pol", srv.base),
        ]);
        assert_eq!(out.stdout, "200", "PATCH {body}: {out:?}\n{}", srv.log());
    };
    patch(r#"{"network":{"deny":["api.example.test"]}}"#);
    let r = t.exec_probe("pol", &ops);
    refused(&r[0], "api.example.test after PATCH deny", None);
    patch(r#"{"network":{"allow":["api.example.test"]}}"#);
    let r = t.exec_probe("pol", &ops);
    assert_eq!(
        echoed(&r[0])["path"],
        "/p",
        "PATCH allow did not restore it"
    );
    // Stopped, the sandbox keeps its policy (in its spec) but no copy of it with secret values
    // on disk, and no proxy; started again, the changed policy is what its new proxy enforces.
    let policy_file = t.ak.home.path().join("sandboxes/pol/egress.json");
    assert!(policy_file.exists(), "a running sandbox's proxy policy");
    t.ok(&["stop", "pol"]);
    assert!(!policy_file.exists(), "the policy file outlived the proxy");
    t.ok(&["start", "pol"]);
    let out = t.ok(&["sandbox", "policy", "pol", "--json"]);
    let policy: Value = serde_json::from_str(&out.stdout).expect("policy JSON");
    assert_eq!(policy["deny_hosts"], serde_json::json!([]), "{policy}");
    let r = t.exec_probe("pol", &ops);
    assert_eq!(echoed(&r[0])["path"], "/p", "after a restart");
}

// ---- 7. audit ----------------------------------------------------------------------------------

fn decisions_are_audited(t: &T) {
    let ops = serde_json::json!([
        get("http://api.example.test/audited"),
        get("http://evil.test/audited"),
        get_h(
            &format!("http://{WORLD_IP}/smuggled"),
            serde_json::json!({"Host": "evil.test"})
        ),
    ]);
    t.ok(&[
        "create",
        "aud",
        "-B",
        t.backend,
        "--image",
        t.image(),
        "--allow-host",
        "api.example.test",
    ]);
    t.ok(&["start", "aud"]);
    let r = t.exec_probe("aud", &ops);
    assert_eq!(echoed(&r[0])["path"], "/audited");
    refused(&r[1], "evil.test", None);
    refused(&r[2], "Host: evil.test", None);
    let audit = t.audit();
    let of = |ev: &str| -> Vec<&Value> {
        audit
            .iter()
            .filter(|e| e["event"] == ev && e["sandbox"] == "aud")
            .collect()
    };
    assert!(
        of("network_allowed")
            .iter()
            .any(|e| e["host"] == "api.example.test" && e["port"] == 80),
        "no network_allowed for api.example.test:80: {audit:#?}"
    );
    // The name is refused at DNS (port 53), the smuggled Host header at HTTP (port 80).
    for port in [53, 80] {
        assert!(
            of("network_blocked")
                .iter()
                .any(|e| e["host"] == "evil.test"
                    && e["port"] == port
                    && e["reason"].as_str().is_some_and(|s| !s.is_empty())),
            "no network_blocked for evil.test:{port}: {audit:#?}"
        );
    }
    assert!(
        of("policy_violation")
            .iter()
            .any(|e| e["policy"] == "network"),
        "no policy_violation with policy network: {audit:#?}"
    );
}

// ---- 9. refusals -------------------------------------------------------------------------------

fn bad_network_options_are_refused(t: &T) {
    let base = ["run", "-B", t.backend, "--image", t.image()];
    for (extra, needle) in [
        (
            &["--no-network", "-S", "K=v:api.example.test"][..],
            "network",
        ),
        (&["-S", "NOHOST"], "KEY"),
        (&["-S", "K=v:"], "host"),
        (&["--allow-host", "a b"], "a b"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "true"]);
        let out = t.run(&args);
        assert_eq!(out.code, 125, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected {needle:?}: {out:?}"
        );
    }
}

// ---- 8. tools, unmodified ---------------------------------------------------------------------

/// curl, Python's urllib, pip and npm through the proxy with no proxy settings of their own:
/// hosts with a secret bound are intercepted (the tools trust the proxy's CA through the
/// variables agentkernel sets), others passed through (curl checks the world's CA itself).
#[test]
fn native_tools_work_unmodified_through_the_proxy() {
    let t = T::new("native");
    t.ok(&["secret", "set", "TOKEN", SECRET]);
    let script = r#"set -e
cat > /tmp/testca.pem
echo "== curl-bound"; curl -sS -m 30 https://api.example.test/curl-bound; echo
echo "== curl-passthrough"; curl -sS -m 30 --cacert /tmp/testca.pem https://other.test/curl-pass; echo
echo "== urllib"; python3 -c 'import urllib.request; print(urllib.request.urlopen("https://api.example.test/urllib", timeout=30).read().decode())'
echo "== pip"; pip download -q --no-deps -d /tmp/dl --index-url https://pypi.test/simple/ akdemo; ls /tmp/dl
echo "== npm"; npm view akdemo --registry https://registry.npm.test/
"#;
    let ca = std::fs::read(t.w.path("ca.pem")).expect("test CA");
    let out = t.run_stdin(
        &[
            "run",
            "--image",
            "host",
            "-S",
            "TOKEN:api.example.test",
            "-S",
            "TOKEN:pypi.test",
            "-S",
            "TOKEN:registry.npm.test",
            "--allow-host",
            "other.test",
            "-e",
            "PIP_DISABLE_PIP_VERSION_CHECK=1",
            "-e",
            "npm_config_cache=/tmp/npm-cache",
            "-e",
            "npm_config_update_notifier=false",
            "--",
            "sh",
            "-c",
            script,
        ],
        &ca,
    );
    assert_eq!(out.code, 0, "{out:?}");
    let section = |name: &str| -> String {
        out.stdout
            .split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n== ").next())
            .unwrap_or_else(|| panic!("no {name} section: {out:?}"))
            .to_string()
    };
    let bound: Value = serde_json::from_str(section("curl-bound").trim()).expect("json");
    assert_eq!(
        bound["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
    assert_eq!(
        bound["headers"]["user-agent"]
            .as_str()
            .map(|s| s.starts_with("curl/")),
        Some(true)
    );
    let pass: Value = serde_json::from_str(section("curl-passthrough").trim()).expect("json");
    assert_eq!(pass["path"], "/curl-pass");
    assert!(pass["headers"].get("authorization").is_none(), "{pass}");
    let py: Value = serde_json::from_str(section("urllib").trim()).expect("json");
    assert_eq!(py["headers"]["authorization"], format!("Bearer {SECRET}"));
    assert!(
        section("pip").contains("akdemo-0.1-py3-none-any.whl"),
        "{out:?}"
    );
    assert!(section("npm").contains("akdemo@1.0.0"), "{out:?}");
    let paths: Vec<String> =
        t.w.log("trusted")
            .iter()
            .map(|e| {
                format!(
                    "{}{}",
                    e["headers"]["host"].as_str().unwrap_or(""),
                    e["path"].as_str().unwrap_or("")
                )
            })
            .collect();
    for want in [
        "pypi.test/simple/akdemo/",
        "pypi.test/files/akdemo-0.1-py3-none-any.whl",
        "registry.npm.test/akdemo",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} not requested: {paths:?}"
        );
    }
}

// ---- 9b. gVisor --------------------------------------------------------------------------------

/// gVisor has no egress proxy wiring: a networked sandbox is refused (125, saying what to do),
/// one without network runs.
#[test]
fn gvisor_refuses_networked_sandboxes() {
    let t = T::new("gvisor");
    for extra in [&[][..], &["--allow-host", "api.example.test"]] {
        let mut args = vec!["run", "-B", "gvisor", "--image", "busybox:latest"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "true"]);
        let out = t.run(&args);
        assert_eq!(out.code, 125, "{args:?}: {out:?}");
        assert!(out.stderr.contains("network"), "{args:?}: {out:?}");
    }
    let out = t.run(&[
        "run",
        "-B",
        "gvisor",
        "--image",
        "busybox:latest",
        "--no-network",
        "--",
        "echo",
        "ok",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "ok\n");
}

macro_rules! per_backend {
    ($($body:ident),* $(,)?) => {
        mod native {
            $(#[test] fn $body() { super::$body(&super::T::new("native")); })*
        }
        mod docker {
            $(#[test] fn $body() { super::$body(&super::T::new("docker")); })*
        }
        mod podman {
            $(#[test] fn $body() { super::$body(&super::T::new("podman")); })*
        }
    };
}

per_backend!(
    full_mode_reaches_the_world_but_never_metadata,
    allowlist_lets_only_the_allowed_names_through,
    config_deny_and_block_private,
    secrets_reach_only_their_hosts,
    secret_files_and_placeholders,
    policy_changes_apply_to_a_running_sandbox,
    decisions_are_audited,
    bad_network_options_are_refused,
    http_callers_bind_the_secrets_they_give,
);
