//! The conformance suite: what a user relies on, written once and run against every backend
//! (`conformance::<backend>::<test>`, backend = `native`, `docker`, `podman`, `gvisor`).
//!
//! Every test body takes a [`B`] (a state directory and a backend) and uses the same image,
//! `busybox:latest` (or `python:3.12-alpine` where a probe needs Python), pulled from the local
//! test registry. The container backends need the hermetic engines of
//! `scripts/test-engines.sh start` (see tests/common/engines.rs); a missing engine fails the
//! test with what to run, never passes. Where a backend legitimately differs (gVisor refuses
//! network, only a container engine has containers to count) the body says so explicitly.
//!
//! Backend-specific behaviour stays in its own file: tests/isolation.rs (native: the `host`
//! image, /proc masking, loopback and metadata probes) and tests/engines.rs (container
//! engines: users' own containers, `docker kill`, local images, device nodes).

mod common;
use common::engines::{Engine, engine};
use common::serve::ServeProcess;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A state directory and the backend under test.
struct B {
    ak: Ak,
    backend: &'static str,
    /// The engine of a container backend; `None` for native.
    eng: Option<Engine>,
}

impl B {
    fn new(backend: &'static str) -> B {
        let mut ak = Ak::new();
        let eng = matches!(backend, "docker" | "podman" | "gvisor").then(|| engine(backend));
        if let Some(eng) = &eng {
            ak.env.push((eng.var.to_string(), eng.host.clone()));
        }
        B { ak, backend, eng }
    }

    fn b(&self) -> &'static str {
        self.backend
    }

    fn run(&self, args: &[&str]) -> Out {
        self.ak.run(args)
    }

    fn ok(&self, args: &[&str]) -> Out {
        self.ak.ok(args)
    }

    /// `run -B BACKEND --image IMAGE --no-network [extra…] -- argv…`
    fn run_image(&self, image: &str, extra: &[&str], argv: &[&str]) -> Out {
        let mut args = vec!["run", "-B", self.b(), "--image", image, "--no-network"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(argv);
        self.run(&args)
    }

    /// `run` on busybox.
    fn run_bb(&self, extra: &[&str], argv: &[&str]) -> Out {
        self.run_image("busybox:latest", extra, argv)
    }

    /// `run` on the python image.
    fn run_py(&self, extra: &[&str], script: &str) -> Out {
        self.run_image("python:3.12-alpine", extra, &["python3", "-c", script])
    }

    fn spawn_lines(
        &self,
        args: &[&str],
    ) -> (
        std::process::Child,
        std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    ) {
        self.ak.spawn_lines(args)
    }

    /// A persistent busybox sandbox, created and started.
    fn started(&self, name: &str, extra: &[&str]) {
        let mut args = vec![
            "create",
            name,
            "-B",
            self.b(),
            "--image",
            "busybox:latest",
            "--no-network",
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
        self.ok(&["start", name]);
    }

    /// Containers of this state directory (any state), by name; always empty on native, which
    /// has none.
    fn containers(&self) -> Vec<String> {
        self.eng
            .as_ref()
            .map_or_else(Vec::new, |eng| eng.containers_of(self.ak.home.path()))
    }
}

impl Drop for B {
    fn drop(&mut self) {
        if let Ok(out) = self.ak.cmd(&["list", "--json"]).output()
            && let Ok(list) = serde_json::from_slice::<Vec<Value>>(&out.stdout)
        {
            for s in list {
                if let Some(name) = s["name"].as_str() {
                    let _ = self.ak.cmd(&["remove", name]).output();
                }
            }
        }
        // Snapshots, sessions and captured layers too (a container engine's are images).
        let _ = self.ak.cmd(&["sandbox", "clean", "--all"]).output();
        let _ = self.ak.cmd(&["gc"]).output();
    }
}

/// A `serve` of the test's state directory and a client for it.
struct Http {
    srv: ServeProcess,
    client: reqwest::blocking::Client,
}

impl Http {
    fn start(b: &B) -> Http {
        let srv = ServeProcess::start(&b.ak, &[]);
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        Http { srv, client }
    }

    /// Sends a request; returns the status and the JSON envelope.
    fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.srv.base);
        let mut req = self.client.request(method.clone(), &url);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.srv.log()));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None)
    }

    fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body))
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body))
    }

    fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None)
    }

    /// Asserts `status` and returns `data`.
    fn expect(&self, (status, body): (u16, Value), want: u16, what: &str) -> Value {
        assert_eq!(
            status,
            want,
            "{what}: {body}\n--- server log\n{}",
            self.srv.log()
        );
        body["data"].clone()
    }
}

// ---- HTTP streaming ---------------------------------------------------------------------

/// `POST /run/stream` sends a command's output as it comes and ends with `done` and the exit
/// code, on every backend. (A container backend calls the stream's sink from inside its
/// engine's runtime, where the sink's blocking send once panicked: the stream then sent
/// keep-alives forever and its container outlived the server.)
fn http_run_streams_to_done(b: &B) {
    let h = Http::start(b);
    let (status, body) = h.post(
        "/run/stream",
        &json!({
            "command": ["sh", "-c", "echo streamed; echo apart >&2; exit 3"],
            "image": "busybox:latest",
            "backend": b.b(),
            "no_network": true,
            "timeout_ms": 60000,
        }),
    );
    assert_eq!(status, 200, "{body}\n--- server log\n{}", h.srv.log());
    let text = body.as_str().unwrap_or_default();
    let data_of = |event: &str| -> Vec<Value> {
        text.split("\n\n")
            .filter(|block| block.lines().any(|l| l == format!("event: {event}")))
            .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    };
    let output = |stream: &str| -> String {
        data_of("output")
            .iter()
            .filter(|d| d["stream"] == stream)
            .filter_map(|d| d["data"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(output("stdout"), "streamed\n", "{text}");
    assert_eq!(output("stderr"), "apart\n", "{text}");
    let done = data_of("done");
    assert_eq!(done.len(), 1, "{text}\n--- server log\n{}", h.srv.log());
    assert_eq!(done[0]["exit_code"], 3, "{text}");
}

// ---- files ------------------------------------------------------------------------------

/// `cp` in and out, and the HTTP files API with the statuses docs/http-api.md promises.
fn files_through_cp_and_http(b: &B) {
    b.started("files", &[]);
    b.ok(&["exec", "files", "--", "mkdir", "-p", "/srv"]);
    let host_file = b.ak.cwd.path().join("in.txt");
    std::fs::write(&host_file, "from host\n").expect("write");
    b.ok(&["cp", host_file.to_str().expect("utf8"), "files:/srv/in.txt"]);
    let back = b.ak.cwd.path().join("back.txt");
    b.ok(&["cp", "files:/srv/in.txt", back.to_str().expect("utf8")]);
    assert_eq!(std::fs::read_to_string(&back).expect("back"), "from host\n");

    let h = Http::start(b);
    let f = "/sandboxes/files/files/";
    // Round trip, parents made.
    h.expect(
        h.put(&format!("{f}/data/d/a.txt"), &json!({"content": "hello"})),
        200,
        "PUT a new file",
    );
    let read = h.expect(h.get(&format!("{f}/data/d/a.txt")), 200, "GET it back");
    assert_eq!(read["content"], "hello", "{read}");
    let read = h.expect(h.get(&format!("{f}/srv/in.txt")), 200, "GET what cp put");
    assert_eq!(read["content"], "from host\n", "{read}");
    h.expect(
        h.get(&format!("{f}/data/missing")),
        404,
        "GET a missing file",
    );
    h.expect(
        h.delete(&format!("{f}/data/missing")),
        404,
        "DELETE a missing file",
    );
    // The path is well formed; what is there now stands in the way: 409, as for DELETE of a
    // directory that is not empty.
    h.expect(h.get(&format!("{f}/data/d")), 409, "GET a directory");
    h.expect(
        h.put(&format!("{f}/data/d"), &json!({"content": "x"})),
        409,
        "PUT over a directory",
    );
    h.expect(
        h.delete(&format!("{f}/data/d")),
        409,
        "DELETE a non-empty directory",
    );
    for kernel in ["/proc/1/status", "/proc/1/environ", "/sys/class/net/lo/mtu"] {
        h.expect(h.get(&format!("{f}{kernel}")), 403, kernel);
    }
    h.expect(
        h.put(
            &format!("{f}/proc/sys/kernel/domainname"),
            &json!({"content": "x"}),
        ),
        403,
        "PUT into /proc",
    );
    // Over the 64 MiB read limit.
    b.ok(&[
        "exec",
        "files",
        "--",
        "sh",
        "-c",
        "head -c 68157440 /dev/zero > /data/big",
    ]);
    h.expect(
        h.get(&format!("{f}/data/big")),
        413,
        "GET a file over the limit",
    );
    // `..` stays inside the sandbox's root.
    let marker = format!("conformance-{}-{}", b.b(), std::process::id());
    h.expect(
        h.put(
            &format!("{f}..%2F..%2F..%2F..%2F..%2Fdata%2F{marker}"),
            &json!({"content": "inside"}),
        ),
        200,
        "PUT through ..",
    );
    assert!(
        !std::path::Path::new("/data").join(&marker).exists(),
        "a PUT through .. wrote on the host"
    );
    let out = b.ok(&["exec", "files", "--", "cat", &format!("/data/{marker}")]);
    assert_eq!(out.stdout, "inside");
    // Removal, then the directory empties.
    h.expect(h.delete(&format!("{f}/data/d/a.txt")), 200, "DELETE a file");
    h.expect(
        h.delete(&format!("{f}/data/d")),
        200,
        "DELETE an empty directory",
    );
    h.expect(
        h.get(&format!("{f}/data/d/a.txt")),
        404,
        "GET a removed file",
    );
    // A read-only root refuses writes with 403.
    b.started("ro", &["-p", "restrictive"]);
    h.expect(
        h.put("/sandboxes/ro/files//etc/x", &json!({"content": "x"})),
        403,
        "PUT into a read-only root",
    );
}

// ---- detached commands ------------------------------------------------------------------

/// The supervisor's pid, from the command's record.
fn supervisor_pid(b: &B, sandbox: &str, id: &str) -> u32 {
    let path =
        b.ak.home
            .path()
            .join("sandboxes")
            .join(sandbox)
            .join("detached")
            .join(id)
            .join("command.json");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("command.json")).expect("JSON");
    meta["supervisor_pid"].as_u64().expect("supervisor_pid") as u32
}

/// `exec -d` starts a command that outlives the CLI; its logs and status read through HTTP;
/// a kill ends it (137) promptly through its supervisor, on every backend, and leaves nothing
/// running: not the command, not the supervisor.
fn detached_commands_start_report_and_die(b: &B) {
    b.started("bg", &[]);
    let out = b.ok(&[
        "exec",
        "-d",
        "bg",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    let done_id = out.stdout.trim().to_string();
    let h = Http::start(b);
    let base = "/sandboxes/bg/exec/detached";
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let c = h.expect(
            h.get(&format!("{base}/{done_id}")),
            200,
            "GET a detached command",
        );
        if c["status"] != "running" {
            break c;
        }
        assert!(Instant::now() < deadline, "still running: {c}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["exit_code"], 3, "{done}");
    let logs = h.expect(h.get(&format!("{base}/{done_id}/logs")), 200, "logs");
    assert_eq!(
        (logs["stdout"].as_str(), logs["stderr"].as_str()),
        (Some("out\n"), Some("err\n"))
    );

    let started = h.expect(
        h.post(
            "/sandboxes/bg/exec/detach",
            &json!({"command": ["sleep", "1000"]}),
        ),
        200,
        "POST exec/detach",
    );
    let id = started["id"].as_str().expect("id").to_string();
    assert_eq!(started["status"], "running", "{started}");
    let supervisor = supervisor_pid(b, "bg", &id);
    let t = Instant::now();
    let killed = h.expect(
        h.delete(&format!("{base}/{id}")),
        200,
        "DELETE a detached command",
    );
    let took = t.elapsed();
    assert_eq!(killed["status"], "failed", "{killed}");
    assert_eq!(killed["exit_code"], 137, "{killed}");
    assert!(took < Duration::from_secs(5), "the kill took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_is_dead(supervisor) {
        assert!(
            Instant::now() < deadline,
            "the supervisor {supervisor} outlived its command"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Only native reports a host pid: an engine's and a guest's pids are their own.
    if b.b() == "native" {
        let pid = started["pid"].as_u64().expect("pid") as u32;
        assert!(pid > 1, "native reports the host pid: {started}");
        assert!(
            process_is_dead(pid),
            "sleep 1000 ({pid}) still runs on the host"
        );
    }
    let ps = b.ok(&["exec", "bg", "--", "ps", "-o", "args"]);
    assert!(
        !ps.stdout.lines().any(|l| l.trim() == "sleep 1000"),
        "the killed command still runs in the sandbox: {ps:?}"
    );
    let listed = h.expect(h.get(base), 200, "list");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
}

// ---- exec, isolation, limits -------------------------------------------------------------

fn exit_codes(e: &B) {
    assert_eq!(e.run_bb(&[], &["sh", "-c", "exit 42"]).code, 42);
    assert_eq!(e.run_bb(&[], &["true"]).code, 0);
    assert_eq!(e.run_bb(&[], &["false"]).code, 1);
    let out = e.run_bb(&[], &["no-such-command-xyz"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = e.run_bb(&[], &["/etc/passwd"]);
    assert_eq!(out.code, 126, "{out:?}");
    e.started("codes", &[]);
    assert_eq!(
        e.run(&["exec", "codes", "--", "sh", "-c", "exit 42"]).code,
        42
    );
    assert_eq!(
        e.run(&["exec", "codes", "--", "no-such-command-xyz"]).code,
        127
    );
    assert_eq!(e.run(&["exec", "codes", "--", "/etc/passwd"]).code, 126);
    let t = Instant::now();
    let out = e.run(&["exec", "--timeout", "1s", "codes", "--", "sleep", "30"]);
    assert_eq!(out.code, 124, "a timed-out command: {out:?}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the timeout did not end the command"
    );
    let out = e.ok(&["exec", "codes", "--", "ps", "-o", "args"]);
    assert!(
        !out.stdout.contains("sleep 30"),
        "the timed-out command still runs: {out:?}"
    );
    let t = Instant::now();
    let out = e.run_bb(&["--timeout", "1s"], &["sh", "-c", "yes > /dev/null & yes"]);
    assert_eq!(
        out.code, 124,
        "a timed-out run that writes without pause: {}",
        out.stderr
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the timeout did not end the run"
    );
}

/// SIGTERM to `exec` reaches the command inside, through the container (by a second exec of
/// agentkernel's signal role, so it holds for a remote engine and under gVisor too).
fn signals_reach_an_exec(e: &B) {
    e.started("sig", &[]);
    let (mut child, mut lines) = e.spawn_lines(&[
        "exec",
        "sig",
        "--",
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 1; done",
    ]);
    assert_eq!(lines.next().expect("a line").expect("read"), "ready");
    let t = Instant::now();
    // SAFETY: kill(2) on the agentkernel process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().expect("wait");
    assert_eq!(rest, ["got-term"], "the command's trap did not run");
    assert_eq!(status.code(), Some(7), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "SIGTERM took {:?}",
        t.elapsed()
    );
}

fn interrupting_a_run_ends_it(e: &B) {
    let (mut child, mut lines) = e.spawn_lines(&[
        "run",
        "-B",
        e.b(),
        "--image",
        "busybox:latest",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo up; sleep 60",
    ]);
    assert_eq!(lines.next().expect("a line").expect("read"), "up");
    let t = Instant::now();
    // SAFETY: kill(2) on the agentkernel process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "SIGTERM did not end the run"
    );
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(
        e.containers().is_empty(),
        "left behind: {:?}",
        e.containers()
    );
}

fn streams_stay_separate(e: &B) {
    let out = e.run_bb(
        &[],
        &["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "to-out\nmore-out\n");
    assert_eq!(out.stderr, "to-err\n");
    e.started("streams", &[]);
    let out = e.ok(&["exec", "streams", "--", "sh", "-c", "echo o; echo e >&2"]);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("o\n", "e\n"));
    // A background process left holding the pipes does not keep the caller waiting.
    let t = Instant::now();
    let out = e.ok(&[
        "exec",
        "streams",
        "--",
        "sh",
        "-c",
        "sleep 20 & echo started",
    ]);
    assert_eq!(out.stdout, "started\n");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "waited for the background process"
    );
}

fn output_streams_while_running(e: &B) {
    let t = Instant::now();
    let (mut child, mut lines) = e.spawn_lines(&[
        "run",
        "-B",
        e.b(),
        "--image",
        "busybox:latest",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo first; sleep 4; echo second",
    ]);
    let first = lines.next().expect("a line").expect("read");
    let took = t.elapsed();
    assert_eq!(first, "first");
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert_eq!(rest, ["second"]);
    assert!(child.wait().expect("wait").success());
    assert!(
        took < t.elapsed() - Duration::from_secs(2),
        "the first line came only at the end ({took:?})"
    );
}

fn persistence_across_processes(e: &B) {
    e.ok(&[
        "create",
        "keep",
        "-B",
        e.b(),
        "--image",
        "busybox:latest",
        "--no-network",
    ]);
    assert_eq!(e.ak.status_of("keep").as_deref(), Some("stopped"));
    e.ok(&["start", "keep"]);
    assert_eq!(e.ak.status_of("keep").as_deref(), Some("running"));
    e.ok(&[
        "exec",
        "keep",
        "--",
        "sh",
        "-c",
        "mkdir -p /data && echo kept > /data/f",
    ]);
    let host_file = e.ak.cwd.path().join("in.txt");
    std::fs::write(&host_file, "from host\n").expect("write");
    e.ok(&["cp", host_file.to_str().expect("utf8"), "keep:/data/in.txt"]);
    e.ok(&["stop", "keep"]);
    assert_eq!(e.ak.status_of("keep").as_deref(), Some("stopped"));
    let out = e.run(&["exec", "keep", "--", "true"]);
    assert_eq!(out.code, 125, "exec into a stopped sandbox: {out:?}");
    e.ok(&["start", "keep"]);
    let out = e.ok(&["exec", "keep", "--", "cat", "/data/f", "/data/in.txt"]);
    assert_eq!(out.stdout, "kept\nfrom host\n", "files survive stop/start");
    let back = e.ak.cwd.path().join("back.txt");
    e.ok(&["cp", "keep:/data/f", back.to_str().expect("utf8")]);
    assert_eq!(
        std::fs::read_to_string(&back).expect("copied out"),
        "kept\n"
    );
    if e.eng.is_some() {
        assert_eq!(e.containers().len(), 1, "one container per sandbox");
    }
    e.ok(&["remove", "keep"]);
    assert!(
        e.containers().is_empty(),
        "remove deletes the container: {:?}",
        e.containers()
    );
    assert!(e.ak.list_json().is_empty());
}

fn host_processes_are_invisible(e: &B) {
    let out = e.run_bb(
        &[],
        &[
            "sh",
            "-c",
            "ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let pids: Vec<u32> = out
        .stdout
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert!(!pids.contains(&std::process::id()), "{pids:?}");
    assert!(
        pids.len() <= 6,
        "only the sandbox's own processes: {pids:?}"
    );
    assert_eq!(pids.first(), Some(&1), "{pids:?}");
}

fn host_files_are_unreadable(e: &B) {
    let secret = e.ak.cwd.path().join("secret.txt");
    std::fs::write(&secret, "TOP SECRET\n").expect("write");
    let s = secret.to_str().expect("utf8");
    let out = e.run_bb(
        &[],
        &[
            "sh",
            "-c",
            &format!("cat {s} /etc/shadow 2>&1; echo checked"),
        ],
    );
    assert!(
        out.stdout.ends_with("checked\n") && out.stdout.contains(s),
        "{out:?}"
    );
    assert!(!out.stdout.contains("TOP SECRET"), "{out:?}");
}

fn restrictive_root_is_read_only(e: &B) {
    let out = e.run_bb(
        &["-p", "restrictive"],
        &[
            "sh",
            "-c",
            "touch /etc/x 2>&1; echo rc=$?; echo t > /tmp/t && cat /tmp/t",
        ],
    );
    assert!(out.stdout.contains("rc=1"), "{out:?}");
    assert!(
        out.stdout.contains("Read-only file system") || out.stdout.contains("Permission denied"),
        "{out:?}"
    );
    assert!(
        out.stdout.ends_with("t\n"),
        "/tmp must stay writable: {out:?}"
    );
}

fn no_network_when_off(e: &B) {
    for flags in [&["-p", "restrictive"][..], &[][..]] {
        let out = e.run_bb(flags, &["ls", "/sys/class/net"]);
        assert_eq!(
            out.stdout.trim(),
            "lo",
            "only loopback with {flags:?}: {out:?}"
        );
    }
}

fn hostname_is_the_sandbox_name(e: &B) {
    e.started("named-box", &[]);
    let out = e.ok(&["exec", "named-box", "--", "hostname"]);
    assert_eq!(out.stdout, "named-box\n");
    let out = e.run_bb(&[], &["hostname"]);
    assert!(out.stdout.starts_with("run-"), "{out:?}");
}

/// A field of /proc/self/status ("CapEff:\t0000…"; gVisor writes no tab).
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn capabilities_are_dropped(e: &B) {
    let out = e.run_bb(
        &["-p", "restrictive"],
        &["sh", "-c", "cat /proc/self/status; id -u"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        status_field(&out.stdout, "CapEff"),
        Some("0000000000000000"),
        "{out:?}"
    );
    assert_eq!(
        status_field(&out.stdout, "CapBnd"),
        Some("0000000000000000"),
        "{out:?}"
    );
    assert!(
        out.stdout.ends_with("65534\n"),
        "restrictive runs as nobody: {out:?}"
    );
    // PR_GET_NO_NEW_PRIVS (gVisor's /proc has no NoNewPrivs line).
    for profile in ["moderate", "restrictive"] {
        let out = e.run_py(
            &["-p", profile],
            "import ctypes\nprint(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))",
        );
        assert_eq!(out.stdout, "1\n", "no_new_privs with {profile}: {out:?}");
    }
    let out = e.run_bb(&[], &["cat", "/proc/self/status"]);
    let hex = status_field(&out.stdout, "CapBnd").expect("CapBnd");
    let caps = u64::from_str_radix(hex, 16).expect("hex");
    for (name, bit) in [
        ("SYS_ADMIN", 21),
        ("NET_ADMIN", 12),
        ("SYS_PTRACE", 19),
        ("SYS_MODULE", 16),
    ] {
        assert_eq!(caps & (1u64 << bit), 0, "moderate keeps CAP_{name}: {hex}");
    }
}

fn seccomp_denies_namespaces_mount_and_keyctl(e: &B) {
    let script = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfor name, nr, args in [('keyctl', 250, (0, 0, 0, 0)), ('unshare', 272, (0x10000000,)), ('mount', 165, (b'none', b'/tmp', b'tmpfs', 0, 0)), ('bpf', 321, (0, 0, 0)), ('clone_newuser', 56, (0x10000000 | 17, 0, 0, 0, 0))]:\n    r = libc.syscall(nr, *args)\n    print(name, r, os.strerror(ctypes.get_errno()))\n";
    for profile in ["moderate", "restrictive"] {
        let out = e.run_py(&["-p", profile], script);
        assert_eq!(out.code, 0, "{out:?}");
        for call in ["keyctl", "unshare", "mount", "bpf", "clone_newuser"] {
            let line = out
                .stdout
                .lines()
                .find(|l| l.starts_with(call))
                .expect("line per call");
            assert!(
                line.contains(" -1 ") && line.contains("Operation not permitted"),
                "{profile}: {line}"
            );
        }
    }
}

fn memory_limit_kills_a_hog(e: &B) {
    let out = e.run_py(&["--memory", "64"], "x = bytearray(400 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')");
    assert_eq!(out.code, 137, "{out:?}");
    assert!(!out.stdout.contains("survived"));
    assert!(
        out.stderr.contains("out of memory"),
        "a clear status is expected: {out:?}"
    );
    // A command killed otherwise is not reported as out of memory.
    let out = e.run_py(&["--memory", "64"], "import os\nos.kill(os.getpid(), 9)");
    assert_eq!(out.code, 137, "{out:?}");
    assert!(!out.stderr.contains("out of memory"), "{out:?}");
}

fn pids_limit_stops_a_fork_bomb(e: &B) {
    std::fs::write(
        e.ak.cwd.path().join("agentkernel.toml"),
        "[resources]\npids = 32\n",
    )
    .expect("write");
    let script = "import os, time, errno\npids = []\ntry:\n    for i in range(200):\n        pid = os.fork()\n        if pid == 0:\n            time.sleep(30)\n            os._exit(0)\n        pids.append(pid)\n    print('forked', len(pids))\nexcept OSError as e:\n    print('refused', len(pids), errno.errorcode[e.errno])\n";
    let out = e.run_py(&["--timeout", "60s"], script);
    assert_eq!(out.code, 0, "{out:?}");
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(
        words.first(),
        Some(&"refused"),
        "forking was never refused: {out:?}"
    );
    assert_eq!(words.get(2), Some(&"EAGAIN"), "{out:?}");
    let forked: usize = words.get(1).and_then(|n| n.parse().ok()).expect("count");
    assert!(forked < 32, "more processes than the pids limit: {out:?}");
}

/// Instantiates every body once per backend: `conformance::<backend>::<body>`.
/// The backends whose sandboxes can be captured (snapshots, fork, export); the others refuse
/// with what to use instead.
fn captures(e: &B) -> bool {
    !matches!(e.b(), "gvisor" | "microvm")
}

/// Whether a refusal to capture says which backends can.
fn assert_capture_refused(out: &Out) {
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("-B native, -B docker or -B podman"),
        "the refusal says which backends can: {out:?}"
    );
}

/// Snapshots: a take while a process keeps writing gives a consistent state without stopping
/// the sandbox; restore shows the files as of the take (deleted ones stay deleted); a snapshot
/// a sandbox starts from is not deleted without --force; a stopped sandbox is captured too, and
/// its snapshot restores after the source is removed.
fn snapshots_take_restore_delete(e: &B) {
    e.started("snap", &[]);
    e.ok(&[
        "exec",
        "snap",
        "--",
        "sh",
        "-c",
        "mkdir -p /data && echo before > /data/kept && echo x > /data/will-go",
    ]);
    if !captures(e) {
        assert_capture_refused(&e.run(&["snapshot", "take", "snap"]));
        assert_capture_refused(&e.run(&["sandbox", "fork", "snap"]));
        let out = e.ok(&["snapshot", "list", "--json"]);
        assert_eq!(out.stdout.trim(), "[]", "a refused take leaves nothing");
        return;
    }
    // Two files written in lockstep, each replaced whole (written aside, renamed over): a
    // consistent capture has them equal, or the first one step ahead.
    e.ok(&[
        "exec", "-d", "snap", "--", "sh", "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /data/.a; mv /data/.a /data/a; echo $i > /data/.b; mv /data/.b /data/b; done",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    e.ok(&["exec", "snap", "--", "rm", "/data/will-go"]);
    let out = e.ok(&["snapshot", "take", "snap", "--name", "s1", "--json"]);
    let meta: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(meta["sandbox"], "snap", "{meta}");
    assert_eq!(meta["backend"], e.b(), "{meta}");
    assert!(meta["size_bytes"].as_u64().is_some_and(|n| n > 0), "{meta}");
    assert_eq!(
        e.ak.status_of("snap").as_deref(),
        Some("running"),
        "still running"
    );
    e.ok(&["exec", "snap", "--", "sh", "-c", "echo after > /data/after"]);

    let out = e.ok(&["snapshot", "restore", "s1", "--as", "snap-r"]);
    assert_eq!(out.stdout.trim(), "snap-r");
    assert_eq!(e.ak.status_of("snap-r").as_deref(), Some("running"));
    let out = e.ok(&["exec", "snap-r", "--", "cat", "/data/kept"]);
    assert_eq!(out.stdout, "before\n");
    let out = e.run(&["exec", "snap-r", "--", "ls", "/data"]);
    let files: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(files, ["a", "b", "kept"], "as of the take: {out:?}");
    let out = e.ok(&["exec", "snap-r", "--", "cat", "/data/a", "/data/b"]);
    let n: Vec<u64> = out
        .stdout
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    assert!(
        n.len() == 2 && n[1] > 0 && (n[0] == n[1] || n[0] == n[1] + 1),
        "the writer's two files are consistent: {n:?}"
    );
    // The source goes on, unchanged by the restore.
    let out = e.ok(&["exec", "snap", "--", "cat", "/data/after"]);
    assert_eq!(out.stdout, "after\n");

    let out = e.ok(&["snapshot", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "s1");
    assert_eq!(list[0]["used_by"], json!(["snap-r"]));
    let out = e.run(&["snapshot", "delete", "s1"]);
    assert_eq!(out.code, 125, "in use: {out:?}");
    assert!(out.stderr.contains("in use by sandbox snap-r"), "{out:?}");
    e.ok(&["remove", "snap-r"]);
    e.ok(&["snapshot", "delete", "s1"]);
    let out = e.run(&["snapshot", "restore", "s1"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("no snapshot named"), "{out:?}");

    e.ok(&["stop", "snap"]);
    e.ok(&["snapshot", "take", "snap", "--name", "s2"]);
    e.ok(&["remove", "snap"]);
    e.ok(&["snapshot", "restore", "s2", "--as", "snap-r2"]);
    let out = e.ok(&["exec", "snap-r2", "--", "cat", "/data/kept", "/data/after"]);
    assert_eq!(
        out.stdout, "before\nafter\n",
        "restored after the source was removed"
    );
    // A snapshot of a restored sandbox stacks on it; the first can go with --force while the
    // second's sandboxes still use its files.
    e.ok(&[
        "exec",
        "snap-r2",
        "--",
        "sh",
        "-c",
        "echo third > /data/third",
    ]);
    e.ok(&["snapshot", "take", "snap-r2", "--name", "s3"]);
    e.ok(&["snapshot", "delete", "s2", "--force"]);
    e.ok(&["snapshot", "restore", "s3", "--as", "snap-r3"]);
    let out = e.ok(&["exec", "snap-r3", "--", "cat", "/data/kept", "/data/third"]);
    assert_eq!(out.stdout, "before\nthird\n");
}

/// `sandbox fork`: N copies, each starting with the source's files, each one's writes invisible
/// to the others and to the source.
fn fork_makes_independent_copies(e: &B) {
    if !captures(e) {
        return; // the refusal is asserted in snapshots_take_restore_delete
    }
    // Twenty on native; five on the container engines, where each copy is a container.
    let count = if e.eng.is_none() { 20 } else { 5 };
    e.started("src", &[]);
    e.ok(&[
        "exec",
        "src",
        "--",
        "sh",
        "-c",
        "mkdir -p /data && echo src > /data/f",
    ]);
    let out = e.ok(&[
        "sandbox",
        "fork",
        "src",
        "--count",
        &count.to_string(),
        "--name-prefix",
        "kid",
        "--json",
    ]);
    let kids: Vec<Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(kids.len(), count);
    for (i, kid) in kids.iter().enumerate() {
        assert_eq!(kid["name"], format!("kid-{}", i + 1));
        assert_eq!(kid["status"], "running", "copies of a running sandbox run");
    }
    for i in 1..=count {
        let name = format!("kid-{i}");
        let out = e.ok(&[
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            &format!("cat /data/f; echo kid-{i} > /data/f; echo {i} > /data/own-{i}"),
        ]);
        assert_eq!(out.stdout, "src\n", "{name} starts with the source's files");
    }
    for i in 1..=count {
        let name = format!("kid-{i}");
        let out = e.ok(&["exec", &name, "--", "sh", "-c", "cat /data/f; ls /data"]);
        assert_eq!(
            out.stdout,
            format!("kid-{i}\nf\nown-{i}\n"),
            "{name} sees only its own writes"
        );
    }
    let out = e.ok(&["exec", "src", "--", "sh", "-c", "cat /data/f; ls /data"]);
    assert_eq!(
        out.stdout, "src\nf\n",
        "the source sees none of the copies' writes"
    );
    let out = e.run(&[
        "sandbox",
        "fork",
        "src",
        "--count",
        "2",
        "--name-prefix",
        "kid",
    ]);
    assert_eq!(out.code, 125, "names taken: {out:?}");
    assert!(out.stderr.contains("kid-1"), "{out:?}");
    let out = e.run(&["sandbox", "fork", "src", "--count", "0"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert_eq!(
        e.ak.list_json().len(),
        count + 1,
        "refused forks made nothing"
    );
}

/// `sandbox export`: the sandbox's whole filesystem as a tar, running or stopped.
fn export_writes_the_filesystem(e: &B) {
    e.started("exp", &[]);
    e.ok(&[
        "exec",
        "exp",
        "--",
        "sh",
        "-c",
        "mkdir -p /data && echo hello > /data/x",
    ]);
    let tar = e.ak.cwd.path().join("exp.tar");
    let tar_arg = tar.to_str().expect("utf8");
    if !captures(e) {
        assert_capture_refused(&e.run(&["sandbox", "export", "exp", "-o", tar_arg]));
        assert!(!tar.exists(), "a refused export leaves no file");
        return;
    }
    for state in ["running", "stopped"] {
        if state == "stopped" {
            e.ok(&["stop", "exp"]);
        }
        e.ok(&["sandbox", "export", "exp", "-o", tar_arg]);
        let listing = std::process::Command::new("tar")
            .args(["-tf", tar_arg])
            .output()
            .expect("tar");
        assert!(listing.status.success(), "a valid tar ({state})");
        let names = String::from_utf8_lossy(&listing.stdout).to_string();
        let has = |p: &str| {
            names
                .lines()
                .any(|l| l.trim_start_matches("./").trim_end_matches('/') == p)
        };
        assert!(has("data/x"), "{state}: the written file: {names}");
        assert!(has("bin/busybox"), "{state}: the image's files: {names}");
        let out = std::process::Command::new("tar")
            .args(["-xOf", tar_arg, "data/x"])
            .output()
            .or_else(|_| {
                std::process::Command::new("tar")
                    .args(["-xOf", tar_arg, "./data/x"])
                    .output()
            })
            .expect("tar");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{state}");
        std::fs::remove_file(&tar).expect("remove");
    }
    let out = e.run(&["sandbox", "export", "nope", "-o", tar_arg]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(!tar.exists(), "a failed export leaves no file");
}

/// Sessions: a sandbox per session; saves survive its removal and `resume` brings the latest
/// back, across CLI processes.
fn sessions_save_and_resume(e: &B) {
    if !captures(e) {
        return;
    }
    e.ok(&[
        "session",
        "start",
        "--name",
        "work",
        "--agent",
        "opencode",
        "-B",
        e.b(),
        "--image",
        "busybox:latest",
        "--no-network",
    ]);
    assert_eq!(e.ak.status_of("session-work").as_deref(), Some("running"));
    e.ok(&[
        "exec",
        "session-work",
        "--",
        "sh",
        "-c",
        "echo one > /root/progress",
    ]);
    let out = e.ok(&["session", "save", "work"]);
    assert!(out.stdout.contains("saved (snapshot: "), "{out:?}");
    e.ok(&[
        "exec",
        "session-work",
        "--",
        "sh",
        "-c",
        "echo two > /root/progress",
    ]);
    e.ok(&["session", "save", "work"]);
    let out = e.ok(&["session", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["agent"], "opencode");
    assert_eq!(list[0]["saves"].as_array().map(Vec::len), Some(2));
    e.ok(&["remove", "session-work"]);
    let out = e.ok(&["session", "list", "--json"]);
    assert!(out.stdout.contains("\"saved\""), "{out:?}");
    let out = e.run(&[
        "snapshot",
        "delete",
        list[0]["saves"][0].as_str().expect("save"),
    ]);
    assert_eq!(out.code, 125, "a session's save is in use: {out:?}");
    e.ok(&["session", "resume", "work"]);
    let out = e.ok(&["exec", "session-work", "--", "cat", "/root/progress"]);
    assert_eq!(out.stdout, "two\n", "the latest save");
    let out = e.run(&[
        "session",
        "start",
        "--name",
        "work",
        "--agent",
        "opencode",
        "-B",
        e.b(),
    ]);
    assert_eq!(out.code, 125, "taken: {out:?}");
    e.ok(&["session", "delete", "work"]);
    assert_eq!(
        e.ak.status_of("session-work"),
        None,
        "its sandbox went with it"
    );
    let out = e.run(&["session", "start", "--name", "x", "--agent", "nobody"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("unknown agent"), "{out:?}");
}

/// `stats` measures each sandbox: a running one that spins has CPU and memory, a stopped one
/// has neither, what one wrote shows as disk, and the totals add the rows up.
fn stats_measure_each_sandbox(e: &B) {
    e.started("spin", &[]);
    e.ok(&[
        "create",
        "still",
        "-B",
        e.b(),
        "--image",
        "busybox:latest",
        "--no-network",
    ]);
    e.ok(&[
        "exec",
        "spin",
        "--",
        "sh",
        "-c",
        "head -c 8000000 /dev/urandom > /written; sync",
    ]);
    e.ok(&[
        "exec",
        "-d",
        "spin",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let out = e.ok(&["stats", "--json"]);
    let stats: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(stats["sandbox_count"], 2, "{stats}");
    assert_eq!(stats["running_count"], 1, "{stats}");
    let row = |name: &str| {
        stats["sandboxes"]
            .as_array()
            .expect("sandboxes")
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {name}: {stats}"))
    };
    let spin = row("spin");
    assert_eq!(spin["backend"], e.b(), "{spin}");
    // A spinning loop gets a share of a CPU even on a loaded machine.
    let cpu = spin["cpu_percent"]
        .as_f64()
        .expect("cpu of a running sandbox");
    assert!(cpu > 5.0, "{spin}");
    assert!(
        spin["memory_mb"].as_f64().is_some_and(|m| m > 0.0),
        "{spin}"
    );
    assert!(spin["disk_mb"].as_f64().is_some_and(|d| d >= 7.0), "{spin}");
    let still = row("still");
    assert_eq!(still["status"], "stopped", "{still}");
    assert!(still["cpu_percent"].is_null(), "{still}");
    assert!(still["memory_mb"].is_null(), "{still}");
    let totals = &stats["sandbox_totals"];
    let sum = |key: &str| {
        stats["sandboxes"]
            .as_array()
            .expect("sandboxes")
            .iter()
            .filter_map(|s| s[key].as_f64())
            .sum::<f64>()
    };
    for key in ["cpu_percent", "memory_mb", "disk_mb"] {
        let total = totals[key].as_f64().expect("total");
        assert!((total - sum(key)).abs() < 0.2, "{key}: {stats}");
    }
    let table = e.ok(&["stats"]).stdout;
    assert!(table.contains("sandboxes: 2 (1 running)"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("spin ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("TOTAL")), "{table}");
}

macro_rules! per_backend {
    ($($body:ident),* $(,)?) => {
        mod native {
            $(#[test] fn $body() { super::$body(&super::B::new("native")); })*
        }
        mod docker {
            $(#[test] fn $body() { super::$body(&super::B::new("docker")); })*
        }
        mod podman {
            $(#[test] fn $body() { super::$body(&super::B::new("podman")); })*
        }
        mod gvisor {
            $(#[test] fn $body() { super::$body(&super::B::new("gvisor")); })*
        }
        mod microvm {
            $(#[test] fn $body() { super::$body(&super::B::new("microvm")); })*
        }
    };
}

per_backend!(
    http_run_streams_to_done,
    stats_measure_each_sandbox,
    files_through_cp_and_http,
    detached_commands_start_report_and_die,
    exit_codes,
    signals_reach_an_exec,
    interrupting_a_run_ends_it,
    streams_stay_separate,
    output_streams_while_running,
    persistence_across_processes,
    host_processes_are_invisible,
    host_files_are_unreadable,
    restrictive_root_is_read_only,
    no_network_when_off,
    hostname_is_the_sandbox_name,
    capabilities_are_dropped,
    seccomp_denies_namespaces_mount_and_keyctl,
    memory_limit_kills_a_hog,
    pids_limit_stops_a_fork_bomb,
    snapshots_take_restore_delete,
    fork_makes_independent_copies,
    export_writes_the_filesystem,
    sessions_save_and_resume,
);
