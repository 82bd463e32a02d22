//! Snapshots beyond what every backend promises (tests/conformance.rs has take/restore/fork/
//! export/sessions per backend): crash safety of a capture, fork over HTTP, `gc` of expired
//! sandboxes with `--dry-run`, and `sandbox clean --all`. On the native backend.

mod common;
use common::serve::ServeProcess;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A running busybox sandbox that wrote `files` files of `kb` KB each under /data.
fn sandbox_with_files(ak: &Ak, name: &str, files: u32, kb: u32) {
    ak.ok(&[
        "create",
        name,
        "-B",
        "native",
        "--image",
        "busybox:latest",
        "--no-network",
    ]);
    ak.ok(&["start", name]);
    ak.ok(&[
        "exec", name, "--", "sh", "-c",
        &format!(
            "mkdir -p /data && i=0; while [ $i -lt {files} ]; do dd if=/dev/zero of=/data/f$i bs=1k count={kb} 2>/dev/null; i=$((i+1)); done"
        ),
    ]);
}

/// The native layers of a state directory (`layers/<id>`, finished or not).
fn layer_dirs(ak: &Ak) -> Vec<String> {
    std::fs::read_dir(ak.home.path().join("layers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A `snapshot take` killed with SIGKILL at any point leaves what `gc` finishes or rolls
/// back: the sandbox runs on (not left frozen), every layer left is one a snapshot names, and
/// no capture stays pending.
#[test]
fn a_killed_take_leaves_what_gc_cleans() {
    let ak = Ak::new();
    sandbox_with_files(&ak, "victim", 400, 64);
    for delay_ms in [5u64, 20, 60, 120, 250] {
        let mut child = ak
            .cmd(&["snapshot", "take", "victim"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        ak.ok(&["gc"]);
        // The sandbox answers: nothing left it frozen.
        let started = Instant::now();
        let out = run_bounded(&ak, &["exec", "victim", "--", "echo", "alive"]);
        assert_eq!(
            out.stdout, "alive\n",
            "after a kill at {delay_ms} ms: {out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        let snapshots: Vec<Value> =
            serde_json::from_str(&ak.ok(&["snapshot", "list", "--json"]).stdout).expect("json");
        let named: Vec<String> = snapshots
            .iter()
            .filter_map(|s| s["image_tag"].as_str().map(str::to_string))
            .collect();
        let mut left = layer_dirs(&ak);
        left.sort();
        let mut expected = named.clone();
        expected.sort();
        assert_eq!(
            left, expected,
            "after a kill at {delay_ms} ms and gc, only the layers of finished snapshots remain"
        );
    }
    // Whatever finished restores.
    let snapshots: Vec<Value> =
        serde_json::from_str(&ak.ok(&["snapshot", "list", "--json"]).stdout).expect("json");
    if let Some(s) = snapshots.first() {
        let name = s["name"].as_str().expect("name");
        ak.ok(&["snapshot", "restore", name, "--as", "survivor"]);
        let out = ak.ok(&["exec", "survivor", "--", "sh", "-c", "ls /data | wc -l"]);
        assert_eq!(out.stdout.trim(), "400");
    }
    ak.ok(&["sandbox", "clean", "--all"]);
    assert!(layer_dirs(&ak).is_empty(), "clean --all leaves no layer");
}

/// `POST /sandboxes/{name}/fork` and `/snapshots` over HTTP: copies with their own writes; a
/// remote caller's fork is bounded by `[server] max_sandboxes`; unknown names are 404.
#[test]
fn fork_and_snapshots_over_http() {
    let ak = Ak::new();
    std::fs::write(
        ak.home.path().join("config.toml"),
        "[server]\nmax_sandboxes = 4\n",
    )
    .expect("config");
    sandbox_with_files(&ak, "web", 2, 1);
    let srv = ServeProcess::start(&ak, &[]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let post = |path: &str, body: Value| {
        let r = client
            .post(format!("{}{path}", srv.base))
            .json(&body)
            .send()
            .expect("send");
        (r.status().as_u16(), r.json::<Value>().expect("json"))
    };
    let (status, body) = post(
        "/sandboxes/web/fork",
        json!({"count": 2, "name_prefix": "copy"}),
    );
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["copy-1", "copy-2"]);
    assert_eq!(body["data"][0]["status"], "running");
    ak.ok(&["exec", "copy-1", "--", "sh", "-c", "echo mine > /data/f0"]);
    let out = ak.ok(&["exec", "copy-2", "--", "wc", "-c", "/data/f0"]);
    assert!(
        out.stdout.starts_with("1024 "),
        "copy-2 keeps the source's file: {out:?}"
    );
    let (status, body) = post("/sandboxes/web/fork", json!({"count": 2}));
    assert_eq!(status, 429, "3 + 2 passes the limit of 4: {body}");
    assert!(
        ak.status_of("web-fork-1").is_none(),
        "a refused fork makes nothing"
    );
    let (status, _) = post("/sandboxes/nope/fork", json!({}));
    assert_eq!(status, 404);

    let (status, body) = post("/snapshots", json!({"sandbox": "web", "name": "h1"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["sandbox"], "web");
    let (status, body) = post("/snapshots", json!({"sandbox": "web", "name": "h1"}));
    assert_eq!(status, 409, "a taken name: {body}");
    let (status, _) = post("/snapshots", json!({"sandbox": "nope"}));
    assert_eq!(status, 404);
    let r = client
        .post(format!("{}/snapshots/h1/restore", srv.base))
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 200, "no body, as the SDKs send it");
    let body: Value = r.json().expect("json");
    assert_eq!(body["data"]["name"], "web-restored");
    let r = client
        .delete(format!("{}/snapshots/h1", srv.base))
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 409, "in use by web-restored");
    let r = client
        .delete(format!("{}/snapshots/h1?force=true", srv.base))
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .get(format!("{}/snapshots/h1", srv.base))
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 404);
    drop(srv);
    let out = ak.ok(&["exec", "web-restored", "--", "ls", "/data"]);
    assert_eq!(
        out.stdout, "f0\nf1\n",
        "a forced delete keeps the files its sandbox uses"
    );
    ak.ok(&["sandbox", "clean", "--all"]);
}

/// `gc` removes stopped sandboxes past their TTL; `--dry-run` only says so.
#[test]
fn gc_removes_expired_sandboxes_and_dry_run_keeps_them() {
    let ak = Ak::new();
    ak.ok(&[
        "create",
        "short",
        "-B",
        "native",
        "--image",
        "busybox:latest",
        "--no-network",
        "--ttl",
        "1s",
    ]);
    ak.ok(&[
        "create",
        "long",
        "-B",
        "native",
        "--image",
        "busybox:latest",
        "--no-network",
        "--ttl",
        "1h",
    ]);
    std::thread::sleep(Duration::from_millis(2100));
    let out = ak.ok(&["gc", "--dry-run"]);
    assert!(
        out.stdout.contains("would remove sandbox short (expired)"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("long"), "{out:?}");
    assert_eq!(
        ak.status_of("short").as_deref(),
        Some("stopped"),
        "dry run kept it"
    );
    let out = ak.ok(&["gc"]);
    assert!(
        out.stdout.contains("removed sandbox short (expired)"),
        "{out:?}"
    );
    assert_eq!(ak.status_of("short"), None);
    assert_eq!(ak.status_of("long").as_deref(), Some("stopped"));
    ak.ok(&["remove", "long"]);
}

/// `sandbox clean --all`: `--dry-run` lists everything and removes nothing; then everything
/// goes, and it says how much it freed. Without `--all` it refuses.
#[test]
fn clean_all_removes_everything_and_says_what_it_freed() {
    let ak = Ak::new();
    sandbox_with_files(&ak, "big", 8, 256);
    ak.ok(&["snapshot", "take", "big", "--name", "keep-me"]);
    ak.ok(&[
        "session",
        "start",
        "--name",
        "s",
        "--agent",
        "opencode",
        "-B",
        "native",
        "--image",
        "busybox:latest",
        "--no-network",
    ]);
    let out = ak.run(&["sandbox", "clean"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("--all"), "{out:?}");
    let out = ak.ok(&["sandbox", "clean", "--all", "--dry-run"]);
    for item in [
        "would remove sandbox big",
        "would remove sandbox session-s",
        "would remove session s",
        "would remove snapshot keep-me",
        "would remove image",
    ] {
        assert!(out.stdout.contains(item), "{item}: {out:?}");
    }
    assert_eq!(ak.list_json().len(), 2, "a dry run removes nothing");
    let out = ak.ok(&["sandbox", "clean", "--all"]);
    assert!(out.stdout.contains("removed snapshot keep-me"), "{out:?}");
    let freed = out.stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        freed.contains("freed") && !freed.contains(" 0 B freed"),
        "it says what it freed: {out:?}"
    );
    assert!(ak.list_json().is_empty());
    assert_eq!(ak.ok(&["snapshot", "list", "--json"]).stdout.trim(), "[]");
    assert_eq!(ak.ok(&["session", "list", "--json"]).stdout.trim(), "[]");
    assert!(layer_dirs(&ak).is_empty());
    assert!(ak.ok(&["images", "list", "--json"]).stdout.trim() == "[]");
}
