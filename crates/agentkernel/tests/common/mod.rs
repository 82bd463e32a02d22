//! Harness for end-to-end tests of the `agentkernel` binary: each test gets its own state
//! directory, runs the real binary as root and asserts on outputs, exit codes and the host.
#![allow(dead_code)]

pub mod engines;
pub mod loopdev;
pub mod mcp;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Ak {
    pub home: tempfile::TempDir,
    pub cwd: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of the test registry: Docker Hub names (and the auto-detected
    /// images) are pulled from it, never from a public registry.
    pub mirror: String,
    /// Set for every command (the address of a container engine under test).
    pub env: Vec<(String, String)>,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentkernel")
}

impl Ak {
    pub fn new() -> Ak {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests need root: they create namespaces, mounts and cgroups"
        );
        Ak {
            home: tempfile::tempdir().expect("home"),
            cwd: tempfile::tempdir().expect("cwd"),
            mirror: format!("http://{}", test_registry().addr),
            env: Vec::new(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("AGENTKERNEL_HOME", self.home.path())
            .env("AGENTKERNEL_REGISTRY_MIRROR", &self.mirror)
            .current_dir(self.cwd.path())
            .stdin(Stdio::null())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs the CLI to completion.
    pub fn run(&self, args: &[&str]) -> Out {
        self.cmd(args).output().expect("spawn agentkernel").into()
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "agentkernel {args:?} failed:\n{out:?}");
        out
    }

    /// Starts the CLI with its stdout piped; returns it with the lines of its output.
    pub fn spawn_lines(
        &self,
        args: &[&str],
    ) -> (
        std::process::Child,
        std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    ) {
        use std::io::BufRead;
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn agentkernel");
        let stdout = child.stdout.take().expect("stdout");
        (child, std::io::BufReader::new(stdout).lines())
    }

    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["list", "--json"]);
        serde_json::from_str(&out.stdout).expect("list --json is JSON")
    }

    pub fn status_of(&self, name: &str) -> Option<String> {
        self.list_json()
            .into_iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["status"].as_str().map(str::to_string))
    }

    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.list_json()
            .into_iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["pid"].as_u64())
            .map(|p| p as u32)
    }
}

impl Drop for Ak {
    fn drop(&mut self) {
        // Remove whatever a failed test left running.
        if let Ok(out) = self.cmd(&["list", "--json"]).output()
            && let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        {
            for s in list {
                if let Some(name) = s["name"].as_str() {
                    let _ = self.cmd(&["remove", name]).output();
                }
            }
        }
    }
}

/// A minimal root filesystem: busybox-static and its applets. Built once per target dir.
pub fn busybox_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("busybox-root");
    if dir.join("bin/sh").exists() {
        return dir;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is missing: run scripts/setup.sh");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("busybox-root.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for d in ["bin", "etc", "tmp", "root", "proc", "dev", "sys"] {
        std::fs::create_dir_all(tmp.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox, tmp.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", tmp.join("bin").join(applet));
        }
    }
    std::fs::write(
        tmp.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(tmp.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    std::fs::write(tmp.join("etc/secret-in-image"), "image-file\n").expect("file");
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another test built it first.
        Err(_) => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    dir
}

/// Mount table lines mentioning `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// cgroup directories named like `instance_prefix*` under any agentkernel/ parent.
pub fn cgroups_matching(prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            for parent in [
                h.path().join("agentkernel"),
                Path::new("/sys/fs/cgroup").join("agentkernel"),
            ] {
                if let Ok(groups) = std::fs::read_dir(&parent) {
                    for g in groups.flatten() {
                        if g.file_name().to_string_lossy().starts_with(prefix) {
                            found.push(g.path());
                        }
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Whether `pid` has exited: gone, or a zombie waiting for its reaper. A detached sandbox init
/// is reparented to the host's PID 1, which reaps it in its own time (on some hosts, seconds).
pub fn process_is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z')),
    }
}

/// The loopback registries `scripts/test-registry.sh` serves (an open one and one that wants
/// credentials), holding test images built from Debian packages under the names the seeds use.
pub struct TestRegistry {
    pub addr: String,
    pub auth_addr: String,
    pub user: String,
    pub password: String,
    pub storage: Option<PathBuf>,
}

/// The running test registries: from the environment `scripts/test.sh` sets, or started here
/// (once, under a lock shared by parallel test processes); `scripts/test-registry.sh stop`
/// stops them.
pub fn test_registry() -> TestRegistry {
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let vars: std::collections::HashMap<String, String> =
        match from_env("AGENTKERNEL_TEST_REGISTRY") {
            Some(_) => std::env::vars().collect(),
            None => {
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-registry.sh");
                let lock = std::env::temp_dir().join("agentkernel-test-registry.lock");
                let out = Command::new("flock")
                    .arg(&lock)
                    .arg("bash")
                    .arg(&script)
                    .arg("start")
                    .stdin(Stdio::null())
                    .output()
                    .expect("run scripts/test-registry.sh");
                assert!(
                    out.status.success(),
                    "scripts/test-registry.sh start failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| {
                        l.split_once('=')
                            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    })
                    .collect()
            }
        };
    let get = |k: &str| {
        vars.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} is not set by scripts/test-registry.sh"))
    };
    TestRegistry {
        addr: get("AGENTKERNEL_TEST_REGISTRY"),
        auth_addr: get("AGENTKERNEL_TEST_AUTH_REGISTRY"),
        user: get("AGENTKERNEL_TEST_REGISTRY_USER"),
        password: get("AGENTKERNEL_TEST_REGISTRY_PASSWORD"),
        storage: vars
            .get("AGENTKERNEL_TEST_REGISTRY_STORAGE")
            .map(PathBuf::from),
    }
}

/// How long a command or request in a test may take before it counts as hung: a guard that
/// fails the test instead of letting it hang, not a timing assertion.
pub const HANG: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits for `child` (its output piped) up to [`HANG`]; kills it and fails the test when it is
/// still running then.
pub fn wait_bounded(child: std::process::Child, what: &str) -> Out {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    // The output is read while waiting, so a child writing more than a pipe holds never stalls.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG) {
        Ok(output) => output.expect("wait for the child").into(),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("{what} was still running after {HANG:?}: killed it");
        }
    }
}

/// Runs the CLI to completion under [`HANG`].
pub fn run_bounded(ak: &Ak, args: &[&str]) -> Out {
    let child = ak
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentkernel");
    wait_bounded(child, &format!("agentkernel {args:?}"))
}

/// After the `cp` link attack (a sandbox's `out/link` and `out/dirlink` pointed at a host file
/// and directory, then replaced by a file and a directory before a second copy into `dst`):
/// the host file kept its content and mode, nothing went into the host directory, and the
/// copy holds the sandbox's new file, not a link.
pub fn assert_copy_did_not_escape(host_file: &Path, host_dir: &Path, dst: &Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::read_to_string(host_file).expect("host file"),
        "HOST FILE\n",
        "the copy wrote through a link into a host file"
    );
    let mode = std::fs::symlink_metadata(host_file)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600, "the copy chmodded a host file");
    assert_eq!(
        std::fs::read_dir(host_dir).expect("host dir").count(),
        0,
        "the copy wrote into a host directory through a link"
    );
    assert_eq!(
        std::fs::read_to_string(dst.join("out/link")).expect("copied"),
        "pwned\n"
    );
    assert!(!dst.join("out/link").is_symlink());
}

/// Gives this test process the backends the binary has, for tests that drive the engine
/// in-process (the binary does the same in its `main`).
#[allow(dead_code)]
pub fn install_backends() {
    agentkernel_engine::backend::install(&[
        agentkernel_native::REGISTRY,
        agentkernel_docker::REGISTRY,
    ]);
}
