//! `create --source-url URL [--source-ref REF]` and the HTTP `source_url`/`source_ref`: a
//! repository cloned into /workspace by git inside the sandbox, over the sandbox's own network.
//!
//! The repository is served by `git daemon` in a WORLD network namespace the test creates; the
//! agentkernel commands run in a CLIENT namespace whose only link leads there (as in
//! tests/egress.rs), so the sandbox's clone can only go through its egress proxy to the world:
//! `git.test` is mapped to the world with AGENTKERNEL_RESOLVE. The native sandboxes use
//! `--image host`, which has the host's git. Also: a branch, a commit, and the refusals —
//! no network, no git in the image, a denied host, a missing ref, and URLs and refs that could
//! read local files or pass options (`file:///etc`, `-oProxyCommand=…`, `ext::sh`) — each exit
//! 125 or a 4xx with nothing left behind.

mod common;
use common::serve::ServeProcess;
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "10.213.60.1";
const WORLD_IP: &str = "10.213.60.2";
const URL: &str = "git://git.test/repo.git";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn sh(cmd: &str, args: &[&str]) -> Out {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
        .into()
}

fn must(cmd: &str, args: &[&str]) -> Out {
    let out = sh(cmd, args);
    assert_eq!(out.code, 0, "{cmd} {args:?}: {out:?}");
    out
}

/// A client namespace linked only to a world namespace where `git daemon` serves a repository
/// with two commits on `main` and a `feature` branch.
struct World {
    client: String,
    world: String,
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    /// The first commit of `main` (its README says "first").
    first: String,
}

impl World {
    fn new() -> World {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let (vc, vw) = (format!("aks{pid}x{n}c"), format!("aks{pid}x{n}w"));
        assert!(vc.len() <= 15, "interface name {vc} too long");
        let mut w = World {
            client: format!("aksc-{pid}-{n}"),
            world: format!("aksw-{pid}-{n}"),
            dir: tempfile::tempdir().expect("world dir"),
            daemon: None,
            first: String::new(),
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
            (&c, vec!["link", "set", &vc, "up"]),
            (&wo, vec!["link", "set", &vw, "up"]),
            (&c, vec!["route", "add", "default", "via", WORLD_IP]),
        ] {
            let mut full = vec!["-n", ns.as_str()];
            full.extend(args.iter().copied());
            must("ip", &full);
        }
        w.first = w.make_repository();
        w.start_daemon();
        w
    }

    /// `repo.git` (bare) under the world's directory; returns the first commit.
    fn make_repository(&self) -> String {
        let work = self.dir.path().join("work");
        std::fs::create_dir(&work).expect("mkdir");
        let git = |args: &[&str]| -> Out {
            let out: Out = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
                .arg(&work)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("git")
                .into();
            assert_eq!(out.code, 0, "git {args:?}: {out:?}");
            out
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::write(work.join("README"), "first\n").expect("write");
        git(&["add", "README"]);
        git(&["commit", "-q", "-m", "first"]);
        let first = git(&["rev-parse", "HEAD"]).stdout.trim().to_string();
        std::fs::write(work.join("README"), "main\n").expect("write");
        git(&["commit", "-q", "-am", "second"]);
        git(&["checkout", "-q", "-b", "feature"]);
        std::fs::write(work.join("feature.txt"), "feature\n").expect("write");
        git(&["add", "feature.txt"]);
        git(&["commit", "-q", "-m", "feature"]);
        git(&["checkout", "-q", "main"]);
        must(
            "git",
            &[
                "clone",
                "-q",
                "--bare",
                &work.to_string_lossy(),
                &self.dir.path().join("repo.git").to_string_lossy(),
            ],
        );
        first
    }

    fn start_daemon(&mut self) {
        // git-daemon itself, not `git daemon` (which would leave it running when killed).
        let exec_path = must("git", &["--exec-path"]).stdout.trim().to_string();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.world))
            .arg("--")
            .arg(Path::new(&exec_path).join("git-daemon"))
            .args(["--export-all", "--reuseaddr"])
            .arg(format!("--base-path={}", self.dir.path().display()))
            .arg(format!("--listen={WORLD_IP}"))
            .arg("--port=9418")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn git daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + HANG;
        loop {
            let out = sh("ip", &["netns", "exec", &self.world, "ss", "-ltnH"]);
            if out.stdout.contains(&format!("{WORLD_IP}:9418")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "git daemon did not listen: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `agentkernel ARGS` in the client namespace, with `git.test` mapped to the world.
    fn ak(&self, ak: &Ak, args: &[&str]) -> Out {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client))
            .arg("--")
            .arg(bin())
            .args(args)
            .env("AGENTKERNEL_HOME", ak.home.path())
            .env("AGENTKERNEL_REGISTRY_MIRROR", &ak.mirror)
            .env("AGENTKERNEL_RESOLVE", format!("git.test={WORLD_IP}"))
            .env("AGENTKERNEL_NO_DAEMON", "1")
            .current_dir(ak.cwd.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsenter agentkernel");
        wait_bounded(child, &format!("agentkernel {args:?}"))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A process left in the client namespace is a leak (a proxy outliving its sandbox);
        // the world's are the daemon's own connections.
        let mut leftovers = Vec::new();
        for ns in [&self.client, &self.world] {
            for pid in sh("ip", &["netns", "pids", ns]).stdout.split_whitespace() {
                if ns == &self.client {
                    leftovers.push(format!("{ns}: {pid}"));
                }
                let _ = sh("kill", &["-9", pid]);
            }
        }
        for ns in [&self.client, &self.world] {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        if !std::thread::panicking() {
            assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
        }
    }
}

/// `create NAME --image host [extra…]` in the client namespace.
fn create(w: &World, ak: &Ak, name: &str, extra: &[&str]) -> Out {
    let mut args = vec!["create", name, "--image", "host"];
    args.extend_from_slice(extra);
    w.ak(ak, &args)
}

/// What `cmd` prints in sandbox `name` (started first).
fn exec(ak: &Ak, name: &str, cmd: &str) -> String {
    ak.ok(&["start", name]);
    ak.ok(&["exec", name, "--", "sh", "-c", cmd]).stdout
}

#[test]
fn a_repository_is_cloned_over_the_sandboxs_network() {
    let w = World::new();
    let ak = Ak::new();
    let url = format!("--source-url={URL}");
    let out = create(&w, &ak, "plain", &[&url]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "plain\n", "{out:?}");
    assert_eq!(ak.status_of("plain").as_deref(), Some("stopped"));
    assert_eq!(
        exec(
            &ak,
            "plain",
            "cat /workspace/README; git -C /workspace rev-list --count HEAD; ls /workspace"
        ),
        "main\n1\nREADME\n",
        "a shallow clone of the default branch"
    );
    let out = create(&w, &ak, "branch", &[&url, "--source-ref", "feature"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        exec(&ak, "branch", "cat /workspace/feature.txt"),
        "feature\n"
    );
    let out = create(&w, &ak, "commit", &[&url, "--source-ref", &w.first]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        exec(
            &ak,
            "commit",
            "cat /workspace/README; git -C /workspace rev-parse HEAD"
        ),
        format!("first\n{}\n", w.first)
    );
    // The clone went through the egress proxy, which audited it.
    let audit = std::fs::read_to_string(ak.home.path().join("audit.jsonl")).expect("audit");
    assert!(
        audit.contains("network_allowed") && audit.contains("9418"),
        "{audit}"
    );
}

#[test]
fn a_clone_needs_network_git_an_allowed_host_and_a_real_ref() {
    let w = World::new();
    let ak = Ak::new();
    let url = format!("--source-url={URL}");
    for (extra, says) in [
        (vec!["--no-network"], "network"),
        (vec!["--deny-host", "git.test"], "clone failed"),
        (vec!["--source-ref", "no-such-branch"], "no-such-branch"),
    ] {
        let mut args = vec![url.as_str()];
        args.extend_from_slice(&extra);
        let out = create(&w, &ak, "bad", &args);
        assert_eq!(out.code, 125, "{extra:?}: {out:?}");
        assert!(out.stderr.contains(says), "{extra:?}: {out:?}");
        assert!(ak.list_json().is_empty(), "{extra:?} left a sandbox");
    }
    // Outside the world: the image comes from the test registry on the host's loopback, and
    // the missing git is found before any connection.
    let out = ak.run(&["create", "nogit", "--image", "busybox:latest", &url]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("has no git"), "{out:?}");
    assert!(ak.list_json().is_empty(), "a sandbox without git was kept");
}

fn post(srv: &ServeProcess, body: &Value) -> (u16, Value) {
    let resp = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
        .post(format!("{}/sandboxes", srv.base))
        .json(body)
        .send()
        .expect("POST /sandboxes");
    let status = resp.status().as_u16();
    (status, resp.json().expect("JSON"))
}

#[test]
fn urls_and_refs_that_could_read_files_or_pass_options_are_refused() {
    let ak = Ak::new();
    let bad_urls = [
        "file:///etc",
        "/etc",
        "./repo",
        "-oProxyCommand=touch /tmp/ak-pwned",
        "--upload-pack=touch /tmp/ak-pwned",
        "ext::sh -c touch% /tmp/ak-pwned",
        "ssh://-oProxyCommand=touch /tmp/ak-pwned/x",
        "fd::3",
    ];
    for url in bad_urls {
        let flag = format!("--source-url={url}");
        let out = ak.run(&["create", "bad", "--image", "host", &flag]);
        assert_eq!(out.code, 125, "{url}: {out:?}");
        assert!(out.stderr.contains("source_url"), "{url}: {out:?}");
    }
    for r in ["-x", "--upload-pack=x", "a..b", "@{0}"] {
        let flag = format!("--source-ref={r}");
        let out = ak.run(&[
            "create",
            "bad",
            "--image",
            "host",
            "--source-url",
            URL,
            &flag,
        ]);
        assert_eq!(out.code, 125, "{r}: {out:?}");
    }
    let srv = ServeProcess::start(&ak, &[]);
    for url in bad_urls {
        let (status, body) = post(
            &srv,
            &json!({"name": "bad", "image": "host", "source_url": url}),
        );
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["success"], false, "{body}");
    }
    let (status, body) = post(
        &srv,
        &json!({"name": "bad", "image": "host", "source_url": URL, "source_ref": "-x"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &srv,
        &json!({"name": "bad", "image": "host", "source_ref": "main"}),
    );
    assert_eq!(status, 400, "{body}");
    // Valid URLs a sandbox cannot clone: no network (409), no git in the image (400); the
    // sandbox made for them is removed.
    let (status, body) = post(
        &srv,
        &json!({"name": "bad", "image": "host", "no_network": true, "source_url": URL}),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(
        &srv,
        &json!({"name": "bad", "image": "busybox:latest", "source_url": URL}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("has no git")),
        "{body}"
    );
    assert!(ak.list_json().is_empty(), "a refused create left a sandbox");
    assert!(!Path::new("/tmp/ak-pwned").exists());
}
