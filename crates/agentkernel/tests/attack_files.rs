//! Attacks on the host through the operations the host performs on sandbox content: the files
//! API (HTTP `GET/PUT/DELETE /sandboxes/NAME/files/PATH`, MCP `sandbox_file_read` and
//! `sandbox_file_write`) and `agentkernel cp` both ways, on the native backend (the container
//! backends' `cp` is attacked in tests/engines.rs). Each test performs the attack and asserts
//! that it fails: a device node is never opened for the caller, kernel files (procfs, sysfs)
//! are never read or written with the host's privileges, a FIFO never blocks the host, and a
//! copy out never writes through a link that a sandbox (or an earlier copy) left behind.
//!
//! Every request and command that could hang runs under a deadline (`common::HANG`) and fails the test
//! when it passes (a hang guard, not a timing assertion).

mod common;
use common::loopdev::LoopDevice;
use common::mcp::Mcp;
use common::serve::{ServeProcess, serve_cmd};
use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A running `serve` and a client whose requests fail after `HANG`.
struct Api {
    process: ServeProcess,
    client: reqwest::blocking::Client,
}

/// An HTTP answer: status and JSON envelope.
#[derive(Debug)]
struct Answer {
    status: u16,
    json: Value,
    text: String,
}

impl Answer {
    /// Asserts a 4xx error envelope; returns its message.
    fn refused(&self, what: &str) -> String {
        assert!(
            (400..500).contains(&self.status),
            "{what}: expected a 4xx refusal, got {self:?}"
        );
        assert_eq!(self.json["success"], false, "{what}: {self:?}");
        self.json["error"].as_str().unwrap_or_default().to_string()
    }
}

impl Api {
    fn start(ak: &Ak, env: &[(&str, &str)]) -> Api {
        let mut cmd = serve_cmd(ak, &["--no-pool"]);
        cmd.envs(env.iter().copied());
        Api {
            process: ServeProcess::spawn(cmd),
            client: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(HANG)
                .build()
                .expect("build the HTTP client"),
        }
    }

    fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let what = format!("{method} {path}");
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.process.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().unwrap_or_else(|e| {
            panic!(
                "{what}: no answer within {HANG:?} (the server is stuck on sandbox content?): {e}\nserver log:\n{}",
                self.process.log()
            )
        });
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, json, text }
    }

    fn get(&self, name: &str, path: &str) -> Answer {
        self.send(
            reqwest::Method::GET,
            &format!("/sandboxes/{name}/files/{path}"),
            None,
        )
    }

    fn put(&self, name: &str, path: &str, content: &str) -> Answer {
        self.send(
            reqwest::Method::PUT,
            &format!("/sandboxes/{name}/files/{path}"),
            Some(json!({ "content": content })),
        )
    }

    fn delete(&self, name: &str, path: &str) -> Answer {
        self.send(
            reqwest::Method::DELETE,
            &format!("/sandboxes/{name}/files/{path}"),
            None,
        )
    }
}

/// Runs a shell script in a sandbox and asserts it succeeded.
fn sh(ak: &Ak, name: &str, script: &str) -> Out {
    ak.ok(&["exec", name, "--", "sh", "-c", script])
}

/// A directory image: the busybox root plus whatever `extra` adds.
fn directory_image(extra: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("image dir");
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", busybox_root().display()))
        .arg(dir.path())
        .output()
        .expect("cp -a");
    assert!(out.status.success(), "copy the busybox root: {out:?}");
    std::fs::create_dir_all(dir.path().join("workspace")).expect("mkdir workspace");
    extra(dir.path());
    dir
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

// ---------------------------------------------------------------------------------------------
// 1. Device nodes
// ---------------------------------------------------------------------------------------------

#[test]
fn device_nodes_in_a_sandbox_are_never_opened_for_a_caller() {
    let loopdev = LoopDevice::new();
    let ak = Ak::new();
    // A local user's directory image with a node for a real host device, and the same node in
    // the project directory a permissive sandbox mounts at /workspace.
    let image = directory_image(|root| loopdev.node_at(&root.join("loopdev")));
    loopdev.node_at(&ak.cwd.path().join("loopdev2"));
    let image_arg = image.path().to_str().expect("utf-8 path");
    ak.ok(&[
        "create",
        "devbox",
        "--image",
        image_arg,
        "--no-network",
        "-p",
        "permissive",
    ]);
    ak.ok(&["start", "devbox"]);
    // The attack is real: the nodes are there, inside the sandbox.
    sh(
        &ak,
        "devbox",
        "test -b /loopdev && test -b /workspace/loopdev2",
    );

    let api = Api::start(&ak, &[]);
    for path in ["/loopdev", "/workspace/loopdev2", "loopdev2"] {
        let e = api
            .put("devbox", path, "PWNED-THE-HOST-DISK")
            .refused(&format!("PUT {path}"));
        assert!(e.contains("block device"), "PUT {path}: {e}");
        loopdev.assert_unchanged(&format!("PUT {path}"));
        let e = api.get("devbox", path).refused(&format!("GET {path}"));
        assert!(e.contains("block device"), "GET {path}: {e}");
    }
    // Several files at once: refused at the device, nothing written through it.
    let answer = api.send(
        reqwest::Method::POST,
        "/sandboxes/devbox/files",
        Some(json!({"files": {"/loopdev": "PWNED"}})),
    );
    answer.refused("POST files /loopdev");
    loopdev.assert_unchanged("POST files");
    // The sandbox's own /dev/null is the host's device node too.
    let e = api.put("devbox", "/dev/null", "x").refused("PUT /dev/null");
    assert!(e.contains("character device"), "{e}");
    api.get("devbox", "/dev/zero").refused("GET /dev/zero");
    drop(api);

    // An MCP caller may only use sandboxes within what the operator's config gives it: allow
    // this permissive one (its project and home mounts).
    let home = std::env::var("HOME").expect("HOME");
    std::fs::write(
        ak.home.path().join("config.toml"),
        format!(
            "[security]\nprofile = \"permissive\"\nremote_paths = [{:?}, {home:?}]\n",
            ak.cwd.path().display().to_string()
        ),
    )
    .expect("write the user config");
    let mut mcp = Mcp::start(&ak);
    for path in ["/loopdev", "/workspace/loopdev2", "/dev/null"] {
        let (is_error, text) = mcp.call(
            "sandbox_file_write",
            json!({"name": "devbox", "path": path, "content": "PWNED-THE-HOST-DISK"}),
        );
        assert!(is_error, "MCP write {path} succeeded: {text}");
        assert!(text.contains("device"), "MCP write {path}: {text}");
        loopdev.assert_unchanged(&format!("MCP sandbox_file_write {path}"));
        let (is_error, text) =
            mcp.call("sandbox_file_read", json!({"name": "devbox", "path": path}));
        assert!(is_error, "MCP read {path} succeeded: {text}");
    }
    // Removing a device node removes the sandbox's node, not the device.
    let api = Api::start(&ak, &[]);
    let removed = api.delete("devbox", "/loopdev");
    assert_eq!(removed.status, 200, "{removed:?}");
    assert!(Path::new(&loopdev.path).exists());
    loopdev.assert_unchanged("DELETE /loopdev");
}

// ---------------------------------------------------------------------------------------------
// 2. Kernel filesystems
// ---------------------------------------------------------------------------------------------

#[test]
fn kernel_files_are_never_read_or_written_with_the_hosts_privileges() {
    let ak = Ak::new();
    let marker = format!("files-attack-marker-{}", std::process::id());
    let api = Api::start(&ak, &[("AGENTKERNEL_TEST_SERVER_MARKER", &marker)]);
    // Made by the server, so its init started from the server's environment.
    let made = api.send(
        reqwest::Method::POST,
        "/sandboxes",
        Some(json!({"name": "kern", "image": "host", "no_network": true})),
    );
    assert_eq!(made.status, 200, "{made:?}");

    for path in [
        "/proc/1/environ",
        "/proc/self/environ",
        "/proc/kmsg",
        "/proc/1/cmdline",
        "/sys/kernel/uevent_seqnum",
        "/sys/fs/cgroup",
    ] {
        let answer = api.get("kern", path);
        assert!(
            !answer.text.contains(&marker),
            "GET {path} returned the server's environment: {answer:?}"
        );
        answer.refused(&format!("GET {path}"));
    }
    let e = api.get("kern", "/proc/1/environ").refused("GET environ");
    assert!(e.contains("kernel filesystem"), "{e}");
    let e = api.get("kern", "/proc/kmsg").refused("GET kmsg");
    assert!(e.contains("kernel filesystem"), "{e}");
    // Writes and removals in kernel filesystems (only files whose change could not harm the
    // host, should the refusal ever regress: the sandbox init's own name and score).
    for path in ["/proc/1/comm", "/proc/1/oom_score_adj", "/sys/kernel/x"] {
        api.put("kern", path, "0").refused(&format!("PUT {path}"));
        api.delete("kern", path).refused(&format!("DELETE {path}"));
    }
    let comm = api.send(
        reqwest::Method::POST,
        "/sandboxes/kern/exec",
        Some(json!({"command": ["cat", "/proc/1/comm"]})),
    );
    assert_ne!(comm.json["data"]["stdout"], "0\n", "{comm:?}");
    let exec = api.send(
        reqwest::Method::POST,
        "/sandboxes/kern/exec",
        Some(json!({"command": ["ln", "-s", "/proc/1", "/tmp/p"]})),
    );
    assert_eq!(exec.json["data"]["exit_code"], 0, "{exec:?}");
    let answer = api.get("kern", "/tmp/p/environ");
    assert!(!answer.text.contains(&marker), "{answer:?}");
    answer.refused("GET /tmp/p/environ");

    let mut mcp = Mcp::start(&ak);
    for path in ["/proc/1/environ", "/proc/kmsg", "/sys/kernel/uevent_seqnum"] {
        let (is_error, text) = mcp.call("sandbox_file_read", json!({"name": "kern", "path": path}));
        assert!(is_error, "MCP read {path} succeeded: {text}");
        assert!(!text.contains(&marker), "MCP read {path}: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. FIFOs
// ---------------------------------------------------------------------------------------------

#[test]
fn fifos_never_block_the_host() {
    let ak = Ak::new();
    ak.ok(&["create", "pipes", "--image", "host", "--no-network"]);
    ak.ok(&["start", "pipes"]);
    sh(
        &ak,
        "pipes",
        "mkfifo /tmp/f && mkdir -p /workspace/d && mkfifo /workspace/d/p && echo kept > /workspace/d/file",
    );

    let api = Api::start(&ak, &[]);
    for path in ["/tmp/f", "/workspace/d/p"] {
        let e = api.get("pipes", path).refused(&format!("GET {path}"));
        assert!(e.contains("FIFO"), "GET {path}: {e}");
        let e = api.put("pipes", path, "x").refused(&format!("PUT {path}"));
        assert!(e.contains("FIFO"), "PUT {path}: {e}");
    }
    api.get("pipes", "d/p").refused("GET d/p");
    // The server still answers, and stops cleanly (ServeProcess checks that when dropped).
    let answer = api.get("pipes", "d/file");
    assert_eq!(answer.json["data"]["content"], "kept\n", "{answer:?}");
    drop(api);

    let mut mcp = Mcp::start(&ak);
    let (is_error, text) = mcp.call(
        "sandbox_file_read",
        json!({"name": "pipes", "path": "/tmp/f"}),
    );
    assert!(is_error && text.contains("FIFO"), "{text}");
    let (is_error, text) = mcp.call(
        "sandbox_file_write",
        json!({"name": "pipes", "path": "/workspace/d/p", "content": "x"}),
    );
    assert!(is_error && text.contains("FIFO"), "{text}");
    drop(mcp);

    let host = tempfile::tempdir().expect("host dir");
    let dst = host.path().join("f");
    let out = run_bounded(&ak, &["cp", "pipes:/tmp/f", dst.to_str().expect("utf-8")]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("FIFO"), "{out:?}");
    assert!(!dst.exists(), "a copy of a FIFO was made");
    let dst = host.path().join("d");
    let out = run_bounded(
        &ak,
        &["cp", "pipes:/workspace/d", dst.to_str().expect("utf-8")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(dst.join("file")).expect("the regular file is copied"),
        "kept\n"
    );
    assert!(!dst.join("p").exists(), "the FIFO is skipped");

    // A FIFO on the host is never opened by a copy in either.
    let fifo = host.path().join("host-fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    let out = run_bounded(&ak, &["cp", fifo.to_str().expect("utf-8"), "pipes:/tmp/in"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("FIFO"), "{out:?}");
    std::fs::write(host.path().join("regular"), "r\n").expect("write");
    let out = run_bounded(
        &ak,
        &[
            "cp",
            host.path().to_str().expect("utf-8"),
            "pipes:/tmp/tree",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = sh(
        &ak,
        "pipes",
        "cat /tmp/tree/regular; test -e /tmp/tree/host-fifo || echo skipped",
    );
    assert_eq!(out.stdout, "r\nskipped\n");
}

// ---------------------------------------------------------------------------------------------
// 4. Links left by an earlier copy
// ---------------------------------------------------------------------------------------------

#[test]
fn cp_out_never_writes_through_a_link_an_earlier_copy_left() {
    let ak = Ak::new();
    let host = tempfile::tempdir().expect("host dir");
    let host_file = host.path().join("host-file");
    std::fs::write(&host_file, "HOST FILE\n").expect("write");
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let host_dir = host.path().join("host-dir");
    std::fs::create_dir(&host_dir).expect("mkdir");
    let dst = host.path().join("dst");
    std::fs::create_dir(&dst).expect("mkdir");

    ak.ok(&["create", "links", "--image", "host", "--no-network"]);
    ak.ok(&["start", "links"]);
    sh(
        &ak,
        "links",
        &format!(
            "mkdir /out && ln -s {} /out/link && ln -s {} /out/dirlink && echo s > /out/suid && chmod 6755 /out/suid",
            host_file.display(),
            host_dir.display()
        ),
    );
    let dst_arg = dst.to_str().expect("utf-8");
    let out = run_bounded(&ak, &["cp", "links:/out", dst_arg]);
    assert_eq!(out.code, 0, "{out:?}");
    // Links are copied as links (docker cp does the same).
    assert_eq!(
        std::fs::read_link(dst.join("out/link")).expect("a link"),
        host_file
    );
    assert_eq!(
        mode_of(&dst.join("out/suid")),
        0o755,
        "set-uid/set-gid from a sandbox"
    );

    // The sandbox replaces them, and the user copies again into the same place.
    sh(
        &ak,
        "links",
        "rm /out/link /out/dirlink && echo pwned > /out/link && chmod 777 /out/link && mkdir /out/dirlink && echo '* * * * * root id' > /out/dirlink/cron",
    );
    let out = run_bounded(&ak, &["cp", "links:/out", dst_arg]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_copy_did_not_escape(&host_file, &host_dir, &dst);
    assert_eq!(mode_of(&dst.join("out/link")), 0o777);
    assert!(dst.join("out/dirlink/cron").is_file());
    assert!(!dst.join("out/dirlink").is_symlink());

    // A file copied over a link that a copy left at the top-level name replaces the link too.
    let top = host.path().join("top");
    std::os::unix::fs::symlink(&host_file, &top).expect("symlink");
    let out = run_bounded(
        &ak,
        &["cp", "links:/out/link", top.to_str().expect("utf-8")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&host_file).expect("host file"),
        "HOST FILE\n"
    );
    assert_eq!(std::fs::read_to_string(&top).expect("copied"), "pwned\n");
}

#[test]
fn cp_of_a_sandbox_root_stays_in_the_destination() {
    let ak = Ak::new();
    let image = directory_image(|root| {
        std::fs::write(root.join("etc/only-in-this-image"), "image\n").expect("write");
    });
    ak.ok(&[
        "create",
        "rootcp",
        "--image",
        image.path().to_str().expect("utf-8"),
        "--no-network",
    ]);
    ak.ok(&["start", "rootcp"]);
    let dst = tempfile::tempdir().expect("host dir");
    let out = run_bounded(
        &ak,
        &["cp", "rootcp:/", dst.path().to_str().expect("utf-8")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    // The root has no name: its contents merge into the destination, not into the host's /.
    assert!(
        !Path::new("/etc/only-in-this-image").exists(),
        "cp NAME:/ DIR wrote into the host's root"
    );
    assert_eq!(
        std::fs::read_to_string(dst.path().join("etc/only-in-this-image")).expect("copied"),
        "image\n"
    );
    // Kernel filesystems and device nodes are not content: /proc, /sys and /dev/null stay out.
    assert!(!dst.path().join("proc/self").exists());
    assert!(!dst.path().join("sys/kernel").exists());
    assert!(!dst.path().join("dev/null").exists());
}
