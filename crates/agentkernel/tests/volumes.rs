//! Volumes (`--volume` on `run` and `create`, the HTTP `volumes` field): host directories and
//! named volumes mounted in sandboxes on native and Docker, `:ro` really read-only inside, named
//! volumes kept after their sandbox; and the attacks on them — an HTTP caller naming host
//! directories outside `[security] remote_paths` (directly, relatively, or through a symlink
//! under a listed one), bad volume names, `/proc` as a target — each refused (CLI exit 125, HTTP
//! 4xx with the error envelope) with nothing left behind.

mod common;
use common::engines::engine;
use common::serve::ServeProcess;
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("build the HTTP client")
}

/// Sends JSON to the server; returns the status and the envelope.
fn send(
    srv: &ServeProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = client().request(method, format!("{}{path}", srv.base));
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, body)
}

fn post(srv: &ServeProcess, path: &str, body: &Value) -> (u16, Value) {
    send(srv, reqwest::Method::POST, path, Some(body))
}

/// A state directory for `backend`, with the engine's address for a container backend.
fn ak_for(backend: &'static str) -> Ak {
    let mut ak = Ak::new();
    if backend != "native" {
        let eng = engine(backend);
        ak.env.push((eng.var.to_string(), eng.host.clone()));
    }
    ak
}

/// Host directories (absolute and `./` relative, `:ro`) and a named volume on `backend`: the
/// sandbox reads and writes the host's files, cannot write a read-only one, and a named
/// volume's files outlive the sandbox and reach the next one; `run --volume` mounts too.
fn bind_and_named_volumes(backend: &'static str) {
    let ak = ak_for(backend);
    let shared = tempfile::tempdir().expect("shared");
    std::fs::write(shared.path().join("f"), "from-host\n").expect("write");
    let rel = ak.cwd.path().join("rel");
    std::fs::create_dir(&rel).expect("mkdir");
    std::fs::write(rel.join("r"), "read-only\n").expect("write");
    let shared_arg = format!("{}:/data", shared.path().display());
    let base = ["-B", backend, "--image", "busybox:latest", "--no-network"];
    let mut create = vec!["create", "v1"];
    create.extend_from_slice(&base);
    create.extend_from_slice(&[
        "--volume",
        &shared_arg,
        "--volume",
        "./rel:/rel:ro",
        "--volume",
        "cache:/cache",
    ]);
    ak.ok(&create);
    ak.ok(&["start", "v1"]);
    let out = ak.ok(&[
        "exec",
        "v1",
        "--",
        "sh",
        "-c",
        "cat /data/f; echo from-sandbox > /data/new; cat /rel/r; \
         touch /rel/x 2>/dev/null && echo rel-writable; echo kept > /cache/k; echo done",
    ]);
    assert_eq!(out.stdout, "from-host\nread-only\ndone\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("new")).expect("the sandbox's file"),
        "from-sandbox\n"
    );
    assert!(!rel.join("x").exists(), "a :ro volume was written");
    let listed = ak.list_json();
    let mounts = listed[0]["mounts"].to_string();
    assert!(
        mounts.contains("cache:/cache") && mounts.contains("/rel:ro"),
        "{listed:?}"
    );
    ak.ok(&["remove", "v1"]);
    let kept = ak.home.path().join("volumes/cache/k");
    assert_eq!(
        std::fs::read_to_string(&kept).expect("a named volume is kept"),
        "kept\n"
    );
    let mut create = vec!["create", "v2"];
    create.extend_from_slice(&base);
    create.extend_from_slice(&["--volume", "cache:/c:ro"]);
    ak.ok(&create);
    ak.ok(&["start", "v2"]);
    let out = ak.ok(&[
        "exec",
        "v2",
        "--",
        "sh",
        "-c",
        "cat /c/k; echo x > /c/k 2>/dev/null && echo writable; echo done",
    ]);
    assert_eq!(out.stdout, "kept\ndone\n", "{out:?}");
    ak.ok(&["remove", "v2"]);
    let mut run = vec!["run"];
    run.extend_from_slice(&base);
    run.extend_from_slice(&["--volume", &shared_arg, "--", "cat", "/data/new"]);
    let out = ak.ok(&run);
    assert_eq!(out.stdout, "from-sandbox\n", "{out:?}");
}

#[test]
fn native_bind_and_named_volumes() {
    bind_and_named_volumes("native");
}

#[test]
fn docker_bind_and_named_volumes() {
    bind_and_named_volumes("docker");
}

/// What the CLI refuses, each with exit 125 and no sandbox made: a missing host directory, a
/// file, bad names, `/`, `/proc` and `/dev` as targets, a target twice, an unknown mode.
#[test]
fn bad_volumes_are_refused_by_the_cli() {
    let ak = Ak::new();
    std::fs::write(ak.cwd.path().join("file"), "x").expect("write");
    for volumes in [
        &["/does/not/exist:/x"][..],
        &["./file:/x"],
        &[".x:/x"],
        &["-oops:/x"],
        &["a/b:/x"],
        &["/tmp:/"],
        &["/tmp:/proc"],
        &["/tmp:/proc/sys"],
        &["v:/dev"],
        &["/tmp:relative"],
        &["/tmp:/x/../etc"],
        &["/tmp:/x:rx"],
        &["/tmp:/x", "v:/x"],
    ] {
        // `--volume=` keeps a value starting with '-' a value.
        let flags: Vec<String> = volumes.iter().map(|v| format!("--volume={v}")).collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut args = vec!["create", "bad", "--image", "busybox:latest", "--no-network"];
        args.extend_from_slice(&flags);
        let out = ak.run(&args);
        assert_eq!(out.code, 125, "{volumes:?}: {out:?}");
        assert!(out.stderr.contains("volume"), "{volumes:?}: {out:?}");
        let mut run = vec!["run", "--image", "busybox:latest", "--no-network"];
        run.extend_from_slice(&flags);
        run.extend_from_slice(&["--", "true"]);
        let out = ak.run(&run);
        assert_eq!(out.code, 125, "run {volumes:?}: {out:?}");
    }
    assert!(ak.list_json().is_empty(), "a refused volume left a sandbox");
    assert!(
        !ak.home.path().join("volumes").exists(),
        "a refused request made a named volume"
    );
}

/// An HTTP caller may name named volumes and directories under `[security] remote_paths`
/// only: `/etc`, `/`, relative paths, and a symlink under a listed directory that leads out of
/// it are 403; bad names and targets 400; each with the error envelope and nothing made.
#[test]
fn http_callers_name_only_listed_host_directories() {
    let ak = Ak::new();
    let listed = tempfile::tempdir().expect("listed");
    let listed_path = listed.path().canonicalize().expect("real");
    std::fs::create_dir(listed_path.join("inside")).expect("mkdir");
    std::fs::write(listed_path.join("inside/f"), "listed\n").expect("write");
    std::os::unix::fs::symlink("/etc", listed_path.join("out")).expect("symlink");
    std::fs::write(
        ak.home.path().join("config.toml"),
        format!(
            "[security]\nremote_paths = [{:?}]\n",
            listed_path.display().to_string()
        ),
    )
    .expect("config");
    let srv = ServeProcess::start(&ak, &[]);
    let create = |volumes: &[&str]| {
        post(
            &srv,
            "/sandboxes",
            &json!({"name": "vol", "image": "busybox:latest", "no_network": true, "volumes": volumes}),
        )
    };
    let out_link = format!("{}:/x", listed_path.join("out").display());
    let dotdot = format!("{}:/x", listed_path.join("inside/../..").display());
    for (volume, want) in [
        ("/etc:/x", 403),
        ("/:/host", 403),
        ("../../etc:/x", 403),
        ("./inside:/x", 403),
        (out_link.as_str(), 403),
        (dotdot.as_str(), 403),
        (".x:/x", 400),
        ("-x:/x", 400),
        ("a/b:/x", 400),
        ("v:/proc", 400),
        ("v:/", 400),
    ] {
        let (status, body) = create(&[volume]);
        assert_eq!(status, want, "{volume}: {body}");
        assert_eq!(body["success"], false, "{volume}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("volume")),
            "{volume}: {body}"
        );
        if want == 403 {
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("remote_paths")),
                "{volume}: {body}"
            );
        }
    }
    assert!(ak.list_json().is_empty(), "a refused create left a sandbox");
    assert!(!ak.home.path().join("volumes").exists());
    // What it may name: a listed directory, read-only, and a named volume.
    let inside = format!("{}:/in:ro", listed_path.join("inside").display());
    let (status, body) = create(&[&inside, "shared:/shared"]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &srv,
        "/sandboxes/vol/exec",
        &json!({"command": ["sh", "-c", "cat /in/f; touch /in/x 2>/dev/null && echo writable; echo s > /shared/s; echo done"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["stdout"], "listed\ndone\n", "{body}");
    assert!(!listed_path.join("inside/x").exists());
    assert_eq!(
        std::fs::read_to_string(ak.home.path().join("volumes/shared/s")).expect("volume"),
        "s\n"
    );
    let (status, body) = send(&srv, reqwest::Method::GET, "/backends", None);
    assert_eq!(status, 200, "{body}");
    let native = body["data"]["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["backend"] == "native"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(native["capabilities"]["host_volumes"], true, "{body}");
}

/// A named volume is the one directory in the state directory a sandbox may be given (the
/// engine refuses every other one there): a fresh volume is empty, and its sandbox's files
/// land in it.
#[test]
fn a_named_volume_is_made_on_first_use() {
    let ak = Ak::new();
    let out = ak.ok(&[
        "run",
        "--image",
        "busybox:latest",
        "--no-network",
        "--volume",
        "v:/v",
        "--",
        "sh",
        "-c",
        "echo hi > /v/f; ls -A /v",
    ]);
    assert_eq!(out.stdout, "f\n", "{out:?}");
    assert!(Path::new(&ak.home.path().join("volumes/v/f")).is_file());
}
