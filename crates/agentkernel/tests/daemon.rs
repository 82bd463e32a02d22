//! The daemon: start/stop/status/prewarm, and `agentkernel run` through its warm pools with the
//! same flags, config, output and exit codes as without it; a warm sandbox serves one run.

mod common;
use common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A daemon started in the background for `ak`'s state, stopped when dropped.
struct Daemon<'a> {
    ak: &'a Ak,
}

impl<'a> Daemon<'a> {
    fn start(ak: &'a Ak, config: &str) -> Daemon<'a> {
        let cfg = ak.cwd.path().join("daemon.toml");
        std::fs::write(&cfg, config).expect("write the daemon config");
        let out = ak.ok(&[
            "daemon",
            "start",
            "--background",
            "-c",
            cfg.to_str().expect("utf8"),
        ]);
        assert!(out.stdout.contains("daemon started"), "{out:?}");
        Daemon { ak }
    }

    fn status(&self) -> serde_json::Value {
        let out = self.ak.run(&["daemon", "status", "--json"]);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"))
    }

    /// Keeps `n` sandboxes of the host image without network warm, and waits for them.
    fn prewarm_host(&self, n: u32) {
        let count = n.to_string();
        self.ak.ok(&[
            "daemon",
            "prewarm",
            "--image",
            "host",
            "--no-network",
            "--count",
            &count,
        ]);
        self.wait_warm("host", u64::from(n));
    }

    /// Runs the daemon has served so far, warm and cold, across its pools.
    fn served(&self) -> u64 {
        self.status()["pool"]["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["runs_warm"].as_u64().unwrap_or(0) + p["runs_cold"].as_u64().unwrap_or(0))
            .sum()
    }

    /// Waits (at most 30 s) until the pool for `image` has `n` warm sandboxes.
    fn wait_warm(&self, image: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status();
            let warm = st["pool"]["pools"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["image"] == image && p["network"] == false && p["prewarmed"] == true)
                .and_then(|p| p["warm"].as_u64())
                .unwrap_or(0);
            if warm >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {n} warm sandboxes for {image} after 30 s: {st:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = self.ak.cmd(&["daemon", "stop"]).output();
    }
}

fn parent_of(pid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

const POOL: &str = "[daemon]\nmin_warm = 1\nmax_warm = 3\n";

#[test]
fn start_status_stop() {
    let ak = Ak::new();
    let out = ak.run(&["daemon", "status"]);
    assert_eq!(out.code, 1, "not running is exit 1: {out:?}");
    assert!(out.stdout.contains("not running"), "{out:?}");
    let out = ak.run(&["daemon", "prewarm", "--image", "host"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("daemon start"), "says how: {out:?}");

    let daemon = Daemon::start(&ak, POOL);
    let socket = ak.home.path().join("daemon.sock");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only its user may talk to the daemon");
    let st = daemon.status();
    assert_eq!(st["running"], true, "{st}");
    let pid = st["pid"].as_u64().expect("pid") as u32;
    assert!(!process_is_dead(pid));
    assert_eq!(st["pool"]["min_warm"], 1);
    assert_eq!(st["pool"]["max_warm"], 3);
    let text = ak.ok(&["daemon", "status"]).stdout;
    assert!(
        text.contains("Daemon: running") && text.contains("Min/Max: 1/3"),
        "{text}"
    );

    let again = ak.run(&["daemon", "start", "--background"]);
    assert_eq!(again.code, 125, "{again:?}");
    assert!(again.stderr.contains("already running"), "{again:?}");

    ak.ok(&["daemon", "stop"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_is_dead(pid) {
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!socket.exists(), "the socket is removed");
    assert_eq!(ak.run(&["daemon", "status"]).code, 1);
    let out = ak.ok(&["daemon", "stop"]);
    assert!(out.stdout.contains("not running"), "{out:?}");
}

#[test]
fn run_takes_a_warm_sandbox_once_and_keeps_its_behaviour() {
    let ak = Ak::new();
    let daemon = Daemon::start(&ak, POOL);
    daemon.prewarm_host(2);

    // From the pool: the sandbox's hostname is the warm sandbox's.
    let first = ak.ok(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "sh",
        "-c",
        "hostname; echo secret > /tmp/left-behind",
    ]);
    assert!(
        first.stdout.starts_with("warm-"),
        "run must come from the pool: {first:?}"
    );
    let second = ak.ok(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "sh",
        "-c",
        "hostname; cat /tmp/left-behind 2>&1 || true",
    ]);
    let (h1, h2) = (
        first.stdout.trim(),
        second.stdout.lines().next().unwrap_or(""),
    );
    assert!(h2.starts_with("warm-"), "{second:?}");
    assert_ne!(h1, h2, "a warm sandbox is never used twice");
    assert!(
        !second.stdout.contains("secret"),
        "what one run left must not reach the next: {second:?}"
    );

    // Exit codes, separate streams and exact bytes pass through.
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 42",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (42, "out\n", "err\n")
    );
    let bytes = ak
        .cmd(&[
            "run",
            "--image",
            "host",
            "--no-network",
            "--",
            "printf",
            "\\000\\377\\200x",
        ])
        .output()
        .expect("run");
    assert_eq!(bytes.stdout, b"\x00\xff\x80x", "binary output is exact");
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "no-such-cmd",
    ]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = ak.ok(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(out.stdout, "hi\n/tmp\n");

    let st = daemon.status();
    let pool = st["pool"]["pools"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["image"] == "host" && p["network"] == false && p["prewarmed"] == true)
        })
        .cloned()
        .unwrap_or_default();
    assert!(
        pool["runs_warm"].as_u64().unwrap_or(0) >= 2,
        "runs were served warm: {st:#}"
    );
}

#[test]
fn run_through_the_daemon_honours_profile_network_backend_and_config() {
    let ak = Ak::new();
    let daemon = Daemon::start(&ak, POOL);
    let before = daemon.served();

    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "-p",
        "restrictive",
        "--",
        "sh",
        "-c",
        "touch /x",
    ]);
    assert_ne!(out.code, 0, "restrictive root is read-only: {out:?}");
    assert!(out.stderr.contains("Read-only"), "{out:?}");

    let ifaces = ak.ok(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(ifaces.stdout, "lo\n", "--no-network leaves only loopback");
    // With network, the sandbox's namespace is routed to the egress proxy: every address is
    // local (a `local default` route on lo), which no sandbox without network has.
    let routes = ak.ok(&[
        "run", "--image", "host", "--", "ip", "-4", "route", "show", "table", "local",
    ]);
    assert!(
        routes.stdout.contains("local default dev lo"),
        "moderate is routed to the egress proxy: {routes:?}"
    );
    assert_eq!(
        daemon.served(),
        before + 3,
        "the three runs went through the daemon"
    );
    // --fast=false boots its own sandbox: the daemon serves nothing more.
    let out = ak.ok(&[
        "run",
        "--fast=false",
        "--image",
        "host",
        "--no-network",
        "--",
        "echo",
        "own",
    ]);
    assert_eq!(out.stdout, "own\n");
    assert_eq!(
        daemon.served(),
        before + 3,
        "--fast=false went to the daemon"
    );

    let out = ak.run(&["run", "--image", "host", "-B", "docker", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("docker"), "{out:?}");
    let out = ak.run(&["run", "--image", "host", "-p", "paranoid", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("paranoid"), "{out:?}");

    // The project's config in the CLI's directory is the one that counts.
    std::fs::write(
        ak.cwd.path().join("agentkernel.toml"),
        "[security]\nprofile = \"restrictive\"\n",
    )
    .expect("write project config");
    let out = ak.run(&["run", "--image", "host", "--", "sh", "-c", "touch /y"]);
    assert_ne!(out.code, 0, "project config must apply: {out:?}");
    assert!(out.stderr.contains("Read-only"), "{out:?}");
    assert_eq!(
        daemon.served(),
        before + 4,
        "the project-config run went through the daemon (refused ones never reach a pool)"
    );
}

#[test]
fn run_without_a_daemon_or_with_stdin_boots_its_own() {
    let ak = Ak::new();
    // A socket file nobody listens on (a daemon that died): run still works.
    std::fs::create_dir_all(ak.home.path()).expect("home");
    let listener =
        std::os::unix::net::UnixListener::bind(ak.home.path().join("daemon.sock")).expect("bind");
    drop(listener);
    let out = ak.ok(&["run", "--image", "host", "--no-network", "--", "hostname"]);
    assert!(out.stdout.starts_with("run-"), "{out:?}");

    let _daemon = Daemon::start(&ak, POOL);
    // Data on stdin is forwarded by the CLI itself, not through the daemon.
    let mut child = ak
        .cmd(&[
            "run",
            "--image",
            "host",
            "--no-network",
            "--",
            "sh",
            "-c",
            "hostname; cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"from stdin\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("run-") && text.ends_with("from stdin\n"),
        "{text}"
    );
    let out = ak
        .cmd(&["run", "--image", "host", "--no-network", "--", "hostname"])
        .env("AGENTKERNEL_NO_DAEMON", "1")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("run-"));
}

#[test]
fn stop_destroys_the_warm_sandboxes() {
    let ak = Ak::new();
    let daemon = Daemon::start(&ak, POOL);
    daemon.prewarm_host(2);
    let pid = daemon.status()["pid"].as_u64().expect("pid") as u32;
    // This daemon's warm sandboxes: cgroups whose init is the daemon's child (other tests'
    // daemons run alongside).
    let groups: Vec<_> = cgroups_matching("warm-")
        .into_iter()
        .filter(|g| {
            std::fs::read_to_string(g.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .any(|p| parent_of(p) == Some(pid))
        })
        .collect();
    assert!(groups.len() >= 2, "warm sandboxes have cgroups: {groups:?}");
    drop(daemon);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_is_dead(pid) {
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = groups.iter().filter(|g| g.exists()).collect();
    assert!(left.is_empty(), "warm sandboxes left behind: {left:?}");
}
