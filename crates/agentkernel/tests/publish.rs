//! Published ports (`-P/--publish`) through the real binary: a host port on loopback reaches a
//! server inside a sandbox (native, and a container of the test engines), for as long as the
//! sandbox runs; bad mappings and taken ports are refused before anything is made; `list`
//! shows the ports and filters by project.
//!
//! Every connection goes to 127.0.0.1 of the host, on ports the test picked free.

mod common;
use common::engines::engine;
use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A host port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind a free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// One HTTP GET of `/` at 127.0.0.1:`port`: the response, or the error.
fn get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::other("connection closed without an answer"));
    }
    Ok(answer)
}

/// The answer of `port` once the server behind it is up (it starts in the background).
fn get_eventually(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match get(port) {
            Ok(a) => return a,
            Err(e) if Instant::now() > deadline => panic!("127.0.0.1:{port} never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Whether nothing listens on 127.0.0.1:`port`.
fn closed(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err()
}

/// A busybox httpd serving `text` as index.html on `port` inside sandbox `name`, in the
/// background.
fn serve_in(ak: &Ak, name: &str, port: u16, text: &str) {
    ak.ok(&[
        "exec",
        name,
        "--",
        "sh",
        "-c",
        &format!("mkdir -p /tmp/www && echo {text} > /tmp/www/index.html"),
    ]);
    ak.ok(&[
        "exec",
        "-d",
        name,
        "--",
        "httpd",
        "-f",
        "-p",
        &port.to_string(),
        "-h",
        "/tmp/www",
    ]);
}

/// create -P: the port answers while the sandbox runs, is closed when it stops, answers again
/// after start, and is closed when the sandbox is removed. Checked on `backend`, with and
/// without network.
fn persistent_port_follows_the_sandbox(ak: &Ak, backend: &str, extra: &[&str], sandbox_port: u16) {
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:{sandbox_port}");
    let mut args = vec![
        "create",
        "pub1",
        "-B",
        backend,
        "--image",
        "busybox:latest",
        "-P",
        &publish,
    ];
    args.extend_from_slice(extra);
    ak.ok(&args);
    assert!(closed(port), "a created sandbox does not publish yet");
    ak.ok(&["start", "pub1"]);
    serve_in(ak, "pub1", sandbox_port, "hello-from-the-sandbox");
    let answer = get_eventually(port);
    assert!(answer.contains("200 OK"), "{answer}");
    assert!(answer.contains("hello-from-the-sandbox"), "{answer}");

    ak.ok(&["stop", "pub1"]);
    assert!(closed(port), "a stopped sandbox publishes nothing");
    ak.ok(&["start", "pub1"]);
    serve_in(ak, "pub1", sandbox_port, "hello-again");
    assert!(get_eventually(port).contains("hello-again"));

    ak.ok(&["remove", "pub1"]);
    assert!(closed(port), "a removed sandbox publishes nothing");
}

#[test]
fn native_published_port_follows_the_sandbox_without_network() {
    persistent_port_follows_the_sandbox(&Ak::new(), "native", &["--no-network"], 8000);
}

/// With network (the egress proxy in the same process) and a port below 1024.
#[test]
fn native_published_port_reaches_a_networked_sandbox_on_a_low_port() {
    persistent_port_follows_the_sandbox(&Ak::new(), "native", &[], 80);
}

/// A restrictive sandbox (every capability dropped, so no CAP_NET_BIND_SERVICE) serves a port
/// below 1024: the first unprivileged port is lowered in its namespace, never on the host.
#[test]
fn native_restrictive_sandbox_serves_a_low_port_set_in_its_namespace_only() {
    let ak = Ak::new();
    let port = free_port();
    let publish = format!("{port}:81");
    ak.ok(&[
        "create",
        "low",
        "-p",
        "restrictive",
        "--image",
        "busybox:latest",
        "-P",
        &publish,
    ]);
    ak.ok(&["start", "low"]);
    let inside = ak.ok(&[
        "exec",
        "low",
        "--",
        "cat",
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    ]);
    assert_eq!(inside.stdout.trim(), "81", "{inside:?}");
    let caps = ak.ok(&["exec", "low", "--", "grep", "CapEff", "/proc/self/status"]);
    assert!(caps.stdout.contains("0000000000000000"), "{caps:?}");
    serve_in(&ak, "low", 81, "low-port");
    assert!(get_eventually(port).contains("low-port"));
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .expect("read the host's setting");
    assert_ne!(host.trim(), "81", "the host's setting changed");
    ak.ok(&["remove", "low"]);
}

#[test]
fn docker_published_port_follows_the_container() {
    let mut ak = Ak::new();
    let eng = engine("docker");
    ak.env.push((eng.var.to_string(), eng.host.clone()));
    persistent_port_follows_the_sandbox(&ak, "docker", &["--no-network"], 8000);
    assert!(eng.containers_of(ak.home.path()).is_empty());
}

#[test]
fn podman_published_port_follows_the_container() {
    let mut ak = Ak::new();
    let eng = engine("podman");
    ak.env.push((eng.var.to_string(), eng.host.clone()));
    persistent_port_follows_the_sandbox(&ak, "podman", &[], 8000);
}

/// run -P: a throwaway server (one that ends by itself after a few seconds) answers while the
/// command runs, and the port closes with the run.
fn run_publishes_for_the_run(ak: &Ak, backend: &str) {
    let port = free_port();
    let publish = format!("{port}:8000");
    let script = "mkdir -p /tmp/www && echo served-by-run > /tmp/www/index.html && timeout 8 httpd -f -p 8000 -h /tmp/www; true";
    let child = ak
        .cmd(&[
            "run",
            "-B",
            backend,
            "--image",
            "busybox:latest",
            "--no-network",
            "-P",
            &publish,
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agentkernel run");
    let answer = get_eventually(port);
    assert!(answer.contains("served-by-run"), "{answer}");
    let out = wait_bounded(child, "agentkernel run -P");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(closed(port), "the port outlived the run");
    assert!(ak.list_json().is_empty());
}

#[test]
fn native_run_publishes_a_port_for_the_run() {
    run_publishes_for_the_run(&Ak::new(), "native");
}

#[test]
fn docker_run_publishes_a_port_for_the_run() {
    let mut ak = Ak::new();
    let eng = engine("docker");
    ak.env.push((eng.var.to_string(), eng.host.clone()));
    run_publishes_for_the_run(&ak, "docker");
}

/// Bad mappings, UDP and a host port in use are refused (125) with what to do, and nothing is
/// left behind; a port taken between create and start fails the start, not the sandbox.
#[test]
fn bad_and_taken_ports_are_refused_before_anything_is_made() {
    let ak = Ak::new();
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let taken_port = taken.local_addr().expect("addr").port().to_string();
    let taken_map = format!("{taken_port}:80");
    for (map, says) in [
        ("70000", "out of range 1-65535"),
        ("abc", "not a port number"),
        ("8080:80/udp", "only TCP ports"),
        ("0.0.0.0:8080", "HOST_PORT:SANDBOX_PORT"),
        (taken_map.as_str(), "already in use"),
    ] {
        for verb in ["create", "run"] {
            let mut args = vec![verb, "--image", "busybox:latest", "--no-network", "-P", map];
            if verb == "run" {
                args.extend_from_slice(&["--", "true"]);
            }
            let out = ak.run(&args);
            assert_eq!(out.code, 125, "{verb} -P {map}: {out:?}");
            assert!(out.stderr.contains(says), "{verb} -P {map}: {out:?}");
        }
    }
    let out = ak.run(&[
        "create",
        "--image",
        "busybox:latest",
        "-P",
        "9000:80",
        "-P",
        "9000:81",
    ]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("already published"), "{out:?}");
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());
    drop(taken);

    // A port taken after create: start refuses (125, naming it) and leaves the sandbox stopped
    // with no proxy process; it starts once the port is free again.
    let port = free_port();
    let publish = format!("{port}:8000");
    ak.ok(&[
        "create",
        "later",
        "--image",
        "busybox:latest",
        "--no-network",
        "-P",
        &publish,
    ]);
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("take the port");
    let out = ak.run(&["start", "later"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("already in use"), "{out:?}");
    assert_eq!(ak.status_of("later").as_deref(), Some("stopped"));
    let dir = ak.home.path().join("sandboxes/later");
    assert!(!dir.join("egress.pid").exists(), "a proxy was left running");
    drop(squatter);
    ak.ok(&["start", "later"]);
    assert_eq!(ak.status_of("later").as_deref(), Some("running"));
    ak.ok(&["remove", "later"]);
}

/// gVisor's own network stack answers no connection made in the container's namespace:
/// refused before a container is made.
#[test]
fn gvisor_refuses_published_ports() {
    let mut ak = Ak::new();
    let eng = engine("gvisor");
    ak.env.push((eng.var.to_string(), eng.host.clone()));
    let out = ak.run(&[
        "create",
        "-B",
        "gvisor",
        "--image",
        "busybox:latest",
        "--no-network",
        "-P",
        "9000:80",
    ]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("cannot publish ports"), "{out:?}");
    assert!(out.stderr.contains("-B native"), "{out:?}");
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());
    assert!(eng.containers_of(ak.home.path()).is_empty());
}

/// `list` shows published ports (text and JSON) and `--project` keeps the sandboxes made in
/// that project's directory.
#[test]
fn list_shows_ports_and_filters_by_project() {
    let ak = Ak::new();
    let port = free_port();
    let publish = format!("{port}:80");
    let port2 = free_port();
    let publish2 = format!("127.0.0.2:{port2}:81/tcp");
    ak.ok(&[
        "create",
        "web",
        "--image",
        "busybox:latest",
        "--no-network",
        "-P",
        &publish,
        "-P",
        &publish2,
    ]);
    let project = std::fs::canonicalize(ak.cwd.path())
        .expect("cwd")
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let other = tempfile::tempdir().expect("another project");
    let out: Out = ak
        .cmd(&[
            "create",
            "elsewhere",
            "--image",
            "busybox:latest",
            "--no-network",
        ])
        .current_dir(other.path())
        .output()
        .expect("create")
        .into();
    assert_eq!(out.code, 0, "{out:?}");

    let text = ak.ok(&["list"]).stdout;
    assert!(text.contains("PORTS"), "{text}");
    let want = format!("127.0.0.1:{port}->80/tcp");
    assert!(text.contains(&want), "{text}");
    let json = ak.list_json();
    let web = json.iter().find(|s| s["name"] == "web").expect("web");
    assert_eq!(
        web["ports"],
        serde_json::json!([want, format!("127.0.0.2:{port2}->81/tcp")]),
        "{web}"
    );
    assert_eq!(web["project"], project.as_str());

    let only: Vec<serde_json::Value> =
        serde_json::from_str(&ak.ok(&["list", "--json", "--project", &project]).stdout)
            .expect("JSON");
    let names: Vec<&str> = only.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["web"]);
    let none = ak.ok(&["list", "--project", "no-such-project"]).stdout;
    assert!(
        !none.contains("web") && !none.contains("elsewhere"),
        "{none}"
    );
}
