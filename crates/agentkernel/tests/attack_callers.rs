//! Attacks through what callers, config files and stored state control (issue 14): each test
//! performs the attack of one finding and asserts it fails — host paths named by HTTP and MCP
//! callers, a cloned repository's `./agentkernel.toml`, an MCP caller choosing its own
//! sandbox's strength, a project's `[server]` settings, tampered stored records, a server that
//! dies, resource ceilings, and the state directory's permissions.

mod common;
use common::mcp::Mcp;
use common::serve::ServeProcess;
use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("build the HTTP client")
}

/// POSTs JSON to the server; returns the status and the envelope.
fn post(srv: &ServeProcess, path: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .post(format!("{}{path}", srv.base))
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, body)
}

fn write_user_config(ak: &Ak, text: &str) {
    std::fs::write(ak.home.path().join("config.toml"), text).expect("write the user config");
}

fn write_project_config(ak: &Ak, text: &str) {
    std::fs::write(ak.cwd.path().join("agentkernel.toml"), text).expect("write the project config");
}

/// Finding 3: `POST /run {"image":"/"}` printed the host's /etc/shadow. Remote callers may name
/// registry images and `host` only, plus directories the operator lists.
#[test]
fn http_callers_cannot_name_host_directories_as_images() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &[]);
    for image in ["/", "/dev", "/etc", "oci:/tmp"] {
        let (status, body) = post(
            &srv,
            "/run",
            &json!({"command": ["cat", "/etc/shadow"], "image": image, "no_network": true}),
        );
        assert_eq!(status, 403, "{image}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("remote_paths")),
            "{image}: {body}"
        );
        let (status, body) = post(
            &srv,
            "/sandboxes",
            &json!({"name": "dev1", "image": image, "no_network": true}),
        );
        assert_eq!(status, 403, "{image}: {body}");
    }
    assert!(ak.list_json().is_empty(), "a refused create left a sandbox");
    // A directory the operator lists may be named.
    let listed = busybox_root();
    drop(srv);
    write_user_config(
        &ak,
        &format!(
            "[security]\nremote_paths = [{:?}]\n",
            listed.display().to_string()
        ),
    );
    let srv = ServeProcess::start(&ak, &[]);
    let (status, body) = post(
        &srv,
        "/run",
        &json!({"command": ["cat", "/etc/secret-in-image"],
                "image": listed.display().to_string(), "no_network": true}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["stdout"], "image-file\n", "{body}");
}

/// A server-side ceiling: memory_mb up to 1 TiB was accepted from any caller (finding 18), and
/// sandboxes had no count limit.
#[test]
fn http_callers_are_held_to_the_servers_ceilings() {
    let ak = Ak::new();
    write_user_config(&ak, "[server]\nmax_sandboxes = 1\nmax_memory_mb = 1024\n");
    let srv = ServeProcess::start(&ak, &[]);
    let (status, body) = post(
        &srv,
        "/run",
        &json!({"command": ["true"], "image": "host", "no_network": true, "memory_mb": 1048576}),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_memory_mb")),
        "{body}"
    );
    let (status, body) = post(
        &srv,
        "/sandboxes",
        &json!({"name": "one", "image": "host", "no_network": true, "memory_mb": 512}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &srv,
        "/sandboxes",
        &json!({"name": "two", "image": "host", "no_network": true, "memory_mb": 512}),
    );
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_sandboxes")),
        "{body}"
    );
    let names: Vec<Value> = ak
        .list_json()
        .into_iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("one")]);
}

/// Finding 10: MCP `profile: permissive` and `network: true` overrode the user's restrictive
/// project config: the sandboxed agent chose its own sandbox's strength. Finding 3 over MCP.
#[test]
fn an_mcp_caller_may_only_tighten_its_sandbox_and_names_no_host_paths() {
    let ak = Ak::new();
    write_project_config(&ak, "[security]\nprofile = \"restrictive\"\n");
    let mut mcp = Mcp::start(&ak);
    for args in [
        json!({"command": ["true"], "image": "host", "profile": "permissive"}),
        json!({"command": ["true"], "image": "host", "profile": "moderate"}),
        json!({"command": ["true"], "image": "host", "network": true}),
    ] {
        let (is_error, text) = mcp.call("sandbox_run", args.clone());
        assert!(is_error, "{args}: {text}");
        assert!(text.contains("only tighten"), "{args}: {text}");
        let (is_error, text) = mcp.call(
            "sandbox_create",
            json!({"name": "loose", "image": "host", "profile": args.get("profile"),
                   "network": args.get("network")}),
        );
        assert!(is_error, "{args}: {text}");
    }
    for image in ["/", "oci:/tmp", "/dev"] {
        let (is_error, text) = mcp.call(
            "sandbox_run",
            json!({"command": ["cat", "/etc/shadow"], "image": image}),
        );
        assert!(is_error, "{image}: {text}");
        assert!(text.contains("remote_paths"), "{image}: {text}");
    }
    let (is_error, text) = mcp.call(
        "sandbox_run",
        json!({"command": ["sh", "-c", "id -u"], "image": "host", "profile": "restrictive",
               "network": false}),
    );
    assert!(!is_error, "{text}");
    assert!(text.contains("65534"), "{text}");
    assert!(ak.list_json().is_empty(), "a refused create left a sandbox");
}

/// Finding 6: a cloned repository's `./agentkernel.toml` silently set `base_image = "/"`, an
/// `oci:` layout, or `profile = "permissive"` for the user's next `agentkernel run`.
#[test]
fn a_project_config_cannot_loosen_the_sandbox_or_name_host_paths() {
    let ak = Ak::new();
    for (text, says) in [
        ("[sandbox]\nbase_image = \"/\"\n", "outside the project"),
        (
            "[sandbox]\nbase_image = \"oci:/tmp/layout\"\n",
            "outside the project",
        ),
        ("[security]\nprofile = \"permissive\"\n", "-p permissive"),
        ("[resources]\nmemory_mb = 65536\n", "65536 MB"),
        ("[images]\nmirrors = [\"http://127.0.0.1:1\"]\n", "[images]"),
        ("[sandbox]\nbackend = \"docker\"\n", "backend"),
    ] {
        write_project_config(&ak, text);
        // A base image only counts where no --image is given.
        let image: &[&str] = if text.contains("base_image") {
            &[]
        } else {
            &["--image", "host"]
        };
        let out = ak.run(&[&["run"], image, &["--", "cat", "/etc/hostname"]].concat());
        assert_eq!(out.code, 125, "{text}: {out:?}");
        assert!(out.stderr.contains(says), "{text}: {out:?}");
        assert!(out.stderr.contains("agentkernel.toml"), "{text}: {out:?}");
        let out = ak.run(&[&["create", "p1"], image].concat());
        assert_eq!(out.code, 125, "{text}: {out:?}");
    }
    assert!(ak.list_json().is_empty(), "a refused create left a sandbox");
    // The user's own flag decides; tightening needs nothing; and `run` says what applied.
    write_project_config(&ak, "[security]\nprofile = \"permissive\"\n");
    let out = ak.ok(&[
        "run",
        "-p",
        "permissive",
        "--image",
        "host",
        "--no-network",
        "--",
        "true",
    ]);
    assert!(
        out.stderr
            .contains("config ./agentkernel.toml; profile permissive"),
        "{out:?}"
    );
    write_project_config(&ak, "[security]\nprofile = \"restrictive\"\n");
    let out = ak.ok(&["run", "--image", "host", "--", "id", "-u"]);
    assert_eq!(out.stdout.trim(), "65534", "{out:?}");
    assert!(
        out.stderr
            .contains("config ./agentkernel.toml; profile restrictive"),
        "{out:?}"
    );
    // A user config that allows more lets the project have it.
    write_user_config(&ak, "[security]\nprofile = \"permissive\"\n");
    write_project_config(
        &ak,
        "[security]\nprofile = \"permissive\"\nnetwork = false\n",
    );
    let out = ak.ok(&["run", "--image", "host", "--", "true"]);
    assert!(out.stderr.contains("profile permissive"), "{out:?}");
}

/// Finding 11: `[server] host` and `api_keys` from `./agentkernel.toml` were honoured by `serve`.
#[test]
fn serve_takes_no_settings_from_a_project_config() {
    let ak = Ak::new();
    write_project_config(
        &ak,
        "[server]\nhost = \"0.0.0.0\"\napi_keys = [\"from-the-repo\"]\n",
    );
    let srv = ServeProcess::start(&ak, &[]);
    assert!(srv.base.starts_with("http://127.0.0.1:"), "{}", srv.base);
    let resp = client()
        .get(format!("{}/status", srv.base))
        .send()
        .expect("GET /status");
    assert_eq!(
        resp.status().as_u16(),
        200,
        "the repository's key was taken"
    );
    assert!(srv.log().contains("are not used"), "{}", srv.log());
    // The user's own file is read.
    drop(srv);
    write_user_config(&ak, "[server]\napi_keys = [\"from-the-user\"]\n");
    let srv = ServeProcess::start(&ak, &[]);
    let status = |key: Option<&str>| {
        let mut req = client().get(format!("{}/status", srv.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().expect("GET /status").status().as_u16()
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("from-the-repo")), 401);
    assert_eq!(status(Some("from-the-user")), 200);
}

/// Finding 7: a sandbox that could write `state.db` rewrote another sandbox's stored policy,
/// and `start` trusted it. A stored record changed outside agentkernel is now refused.
#[test]
fn a_stored_record_changed_outside_agentkernel_is_refused() {
    let ak = Ak::new();
    ak.ok(&["create", "victim", "--image", "host", "-p", "restrictive"]);
    let db = ak.home.path().join("state.db");
    let conn = rusqlite::Connection::open(&db).expect("open state.db");
    let changed = conn
        .execute(
            "UPDATE sandboxes SET spec = replace(spec, '\"restrictive\"', '\"permissive\"') WHERE name = 'victim'",
            [],
        )
        .expect("edit the stored spec");
    assert_eq!(changed, 1);
    drop(conn);
    let out = ak.run(&["start", "victim"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("changed outside agentkernel"),
        "{out:?}"
    );
    assert!(
        ak.list_json().is_empty(),
        "a record that does not verify is listed: {:?}",
        ak.list_json()
    );
    ak.ok(&["remove", "victim"]);
    // The running view `exec` reads first is authenticated too.
    ak.ok(&["create", "box", "--image", "host", "-p", "restrictive"]);
    ak.ok(&["start", "box"]);
    let view = ak.home.path().join("sandboxes/box/running.json");
    let text = std::fs::read_to_string(&view).expect("running.json");
    assert!(text.contains("restrictive"), "{text}");
    std::fs::write(&view, text.replace("65534", "0")).expect("edit the view");
    let out = ak.ok(&["exec", "box", "--", "id", "-u"]);
    assert_eq!(
        out.stdout.trim(),
        "65534",
        "the edited view was used: {out:?}"
    );
    ak.ok(&["remove", "box"]);
}

/// Finding 7: a permissive sandbox whose project directory contains the state directory could
/// read and write it. It is hidden under an empty read-only directory.
#[test]
fn the_state_directory_is_hidden_from_a_permissive_project_mount() {
    let ak = Ak::new();
    let home = ak.cwd.path().join(".agentkernel");
    let run = |args: &[&str]| -> Out {
        ak.cmd(args)
            .env("AGENTKERNEL_HOME", &home)
            .output()
            .expect("spawn agentkernel")
            .into()
    };
    let out = run(&["create", "keeper", "--image", "host", "-e", "TOKEN=s3cret"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&[
        "run",
        "-p",
        "permissive",
        "--image",
        "host",
        "--no-network",
        "--",
        "sh",
        "-c",
        "ls -A /workspace/.agentkernel | wc -l; cat /workspace/.agentkernel/state.db; touch /workspace/.agentkernel/x && echo wrote",
    ]);
    assert_eq!(out.stdout.lines().next(), Some("0"), "{out:?}");
    assert!(
        !out.stdout.contains("s3cret") && !out.stdout.contains("wrote"),
        "{out:?}"
    );
    assert!(!home.join("x").exists());
    // A directory inside the state directory is never given to a sandbox.
    let inside = home.join("keys");
    let out = ak
        .cmd(&[
            "run",
            "-p",
            "permissive",
            "--image",
            "host",
            "--no-network",
            "--",
            "true",
        ])
        .env("AGENTKERNEL_HOME", &home)
        .current_dir(&inside)
        .output()
        .expect("spawn agentkernel");
    let out: Out = out.into();
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("state directory"), "{out:?}");
    let out = run(&["remove", "keeper"]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// Finding 19: a state directory agentkernel created was 0755 with 0644 files, so `-e` secrets
/// in state.db were readable by other local users.
#[test]
fn the_state_directory_is_private() {
    let top = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ak = Ak::new();
    let home = top.path().join("state");
    let run = |args: &[&str]| {
        let out: Out = ak
            .cmd(args)
            .env("AGENTKERNEL_HOME", &home)
            .output()
            .expect("spawn agentkernel")
            .into();
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
    };
    run(&["create", "s1", "--image", "host", "-e", "TOKEN=s3cret"]);
    run(&["start", "s1"]);
    run(&["exec", "s1", "--", "true"]);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    for file in [
        "state.db",
        "audit.jsonl",
        "keys/state.key",
        "sandboxes/s1/running.json",
    ] {
        assert_eq!(mode(&home.join(file)), 0o600, "{file}");
    }
    // Another local user cannot read it even with the directory opened up again.
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let read = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
        ])
        .arg(home.join("state.db"))
        .output()
        .expect("setpriv");
    assert!(!read.status.success(), "nobody read state.db");
    // And the next command makes the directory private again.
    run(&["list"]);
    assert_eq!(mode(&home), 0o700);
    run(&["remove", "s1"]);
}

/// Finding 13: an aborted server's warm-pool sandboxes left network pins and pasta processes,
/// and `gc` said "nothing to remove". Networked warm sandboxes now have no process of their
/// own (their proxy is a thread of the daemon, started when one is taken): killing the daemon
/// leaves only their cgroups, which the next command (`gc` here) removes at once.
#[test]
fn gc_removes_what_a_killed_daemon_left() {
    let ak = Ak::new();
    let out = ak.ok(&["daemon", "start", "--background"]);
    assert!(out.stdout.contains("daemon started"), "{out:?}");
    ak.ok(&["daemon", "prewarm", "--image", "host", "--count", "2"]);
    let pid: i32 = std::fs::read_to_string(ak.home.path().join("daemon.pid"))
        .expect("daemon.pid")
        .trim()
        .parse()
        .expect("a pid");
    // The warm inits are the daemon's children (the boot helper clones them with
    // CLONE_PARENT); their cgroups are named after their instances.
    let warm_groups = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|st| {
                    st.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                        .is_some_and(|ppid| ppid == pid.to_string())
                })
            })
            .filter_map(|p| {
                let cg = std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok()?;
                cg.lines()
                    .filter_map(|l| l.rsplit('/').next())
                    .find(|id| id.starts_with("warm-"))
                    .map(str::to_string)
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while warm_groups().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the warm sandboxes never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let warm = warm_groups();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill the daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !process_is_dead(pid as u32) {
        assert!(Instant::now() < deadline, "the daemon did not die");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The warm inits end with their lifeline; what is left goes at the next command (here
    // `gc`, whose start sweeps the ended sandboxes' groups before it looks for more).
    std::thread::sleep(Duration::from_millis(500));
    ak.ok(&["gc"]);
    for id in &warm {
        assert!(
            cgroups_matching(id).is_empty(),
            "{:?}",
            cgroups_matching(id)
        );
    }
    let _ = std::fs::remove_file(ak.home.path().join("daemon.sock"));
}

/// Daemon-socket callers other than the local user would be trusted like the CLI (they may
/// name host paths): the socket is reachable by its owner only.
#[test]
fn only_the_local_user_reaches_the_daemon_socket() {
    let ak = Ak::new();
    let out = ak.ok(&["daemon", "start", "--background"]);
    assert!(out.stdout.contains("daemon started"), "{out:?}");
    let socket = ak.home.path().join("daemon.sock");
    let connect = |uid: &str| {
        Command::new("setpriv")
            .args([
                "--reuid",
                uid,
                "--regid",
                uid,
                "--clear-groups",
                "python3",
                "-c",
            ])
            .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])")
            .arg(&socket)
            .output()
            .expect("setpriv python3")
    };
    assert!(connect("0").status.success(), "the owner cannot connect");
    let other = connect("65534");
    assert!(
        !other.status.success(),
        "another user connected to the daemon"
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "{other:?}"
    );
    ak.ok(&["daemon", "stop"]);
}

/// The ceiling holds for sandboxes an MCP caller did not make: a permissive sandbox the user
/// created is not the agent's to use.
#[test]
fn an_mcp_caller_cannot_use_a_sandbox_looser_than_its_ceiling() {
    let ak = Ak::new();
    ak.ok(&[
        "create",
        "userbox",
        "--image",
        "host",
        "-p",
        "permissive",
        "--no-network",
    ]);
    ak.ok(&["start", "userbox"]);
    ak.ok(&["create", "tight", "--image", "host", "-p", "restrictive"]);
    ak.ok(&["start", "tight"]);
    let mut mcp = Mcp::start(&ak);
    for (tool, args) in [
        (
            "sandbox_exec",
            json!({"name": "userbox", "command": ["true"]}),
        ),
        (
            "sandbox_file_read",
            json!({"name": "userbox", "path": "/etc/hostname"}),
        ),
        (
            "sandbox_file_write",
            json!({"name": "userbox", "path": "/tmp/x", "content": "x"}),
        ),
        ("sandbox_start", json!({"name": "userbox"})),
    ] {
        let (is_error, text) = mcp.call(tool, args);
        assert!(is_error, "{tool}: {text}");
        assert!(
            text.contains("more than an MCP caller may use"),
            "{tool}: {text}"
        );
    }
    let (is_error, text) = mcp.call(
        "sandbox_exec",
        json!({"name": "tight", "command": ["id", "-u"]}),
    );
    assert!(!is_error, "{text}");
    drop(mcp);
    ak.ok(&["remove", "userbox"]);
    ak.ok(&["remove", "tight"]);
}

/// Found in the review after the fixes: a remote caller naming a registry on the host's own
/// network (`127.0.0.1:PORT/x`, `169.254.169.254/x`) made the server send requests there. The
/// test listens on loopback and asserts nothing connected.
#[test]
fn remote_callers_cannot_make_the_server_contact_internal_registries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &[]);
    for image in [
        format!("127.0.0.1:{port}/internal/app:1"),
        format!("localhost:{port}/internal/app:1"),
        "169.254.169.254/latest/meta-data".to_string(),
    ] {
        let (status, body) = post(
            &srv,
            "/run",
            &json!({"command": ["true"], "image": image, "no_network": true}),
        );
        assert_eq!(status, 403, "{image}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("private network")),
            "{image}: {body}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "the server connected to the internal registry"
    );
}
