//! Registry images end to end, against the loopback test registries (never a public one).

mod common;
use base64::Engine as _;
use common::*;

#[test]
fn python_image_through_the_mirror_then_offline() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--image",
        "python:3.12-alpine",
        "--no-network",
        "--",
        "python3",
        "-c",
        "print(6*7)",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "42\n");
    let list = ak.ok(&["images", "list", "--json"]).stdout;
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).expect("json");
    assert!(
        list.iter()
            .any(|i| i["reference"] == "docker.io/library/python:3.12-alpine"),
        "{list:?}"
    );
    // A pulled image is used without the registry: the mirror now points nowhere.
    let out: Out = ak
        .cmd(&[
            "run",
            "--image",
            "python:3.12-alpine",
            "--no-network",
            "--",
            "python3",
            "-c",
            "print('again')",
        ])
        .env("AGENTKERNEL_REGISTRY_MIRROR", "http://127.0.0.1:1")
        .output()
        .expect("spawn")
        .into();
    assert_eq!(out.stdout, "again\n", "{out:?}");
}

#[test]
fn alpine_name_runs_the_busybox_image() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--image",
        "alpine:3.20",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo $PATH; head -1 /etc/passwd",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("/usr/bin"), "{out:?}");
    assert!(out.stdout.contains("root:"), "{out:?}");
}

#[test]
fn credentials_are_required_and_used() {
    let reg = test_registry();
    let ak = Ak::new();
    let image = format!("{}/library/busybox:latest", reg.auth_addr);
    let out = ak.run(&["run", "--image", &image, "--no-network", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("refused access") && out.stderr.contains("docker login"),
        "{out:?}"
    );
    assert!(ak.list_json().is_empty());

    let docker_config = ak.cwd.path().join("docker");
    std::fs::create_dir(&docker_config).expect("mkdir");
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", reg.user, reg.password));
    let config = serde_json::json!({"auths": {reg.auth_addr.clone(): {"auth": auth}}});
    std::fs::write(docker_config.join("config.json"), config.to_string()).expect("write");
    let out: Out = ak
        .cmd(&[
            "run",
            "--image",
            &image,
            "--no-network",
            "--",
            "echo",
            "authenticated",
        ])
        .env("DOCKER_CONFIG", &docker_config)
        .output()
        .expect("spawn")
        .into();
    assert_eq!(out.stdout, "authenticated\n", "{out:?}");

    // Without DOCKER_CONFIG, ~/.docker/config.json (where `docker login` writes) is read.
    let home = ak.cwd.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).expect("mkdir");
    std::fs::copy(
        docker_config.join("config.json"),
        home.join(".docker/config.json"),
    )
    .expect("copy");
    let other = Ak::new();
    let out: Out = other
        .cmd(&["images", "pull", "-q", &image])
        .env_remove("DOCKER_CONFIG")
        .env("HOME", &home)
        .output()
        .expect("spawn")
        .into();
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn unknown_images_and_unreachable_registries_are_clear_errors() {
    let reg = test_registry();
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--image",
        &format!("{}/library/no-such-image:1", reg.addr),
        "--",
        "true",
    ]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = ak.run(&["images", "pull", "127.0.0.1:1/library/busybox:latest"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("127.0.0.1:1"), "{out:?}");
    let out = ak.run(&["images", "pull", "./not-a-registry-image"]);
    assert_eq!(out.code, 125, "{out:?}");
}

#[test]
fn concurrent_pulls_of_one_image_both_succeed() {
    let ak = Ak::new();
    let spawn = || {
        ak.cmd(&["images", "pull", "python:3.12-alpine"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out: Out = child.wait_with_output().expect("wait").into();
        assert_eq!(out.code, 0, "{out:?}");
    }
    let out = ak.run(&[
        "run",
        "--image",
        "python:3.12-alpine",
        "--no-network",
        "--",
        "python3",
        "-c",
        "print('ok')",
    ]);
    assert_eq!(out.stdout, "ok\n", "{out:?}");
}

#[test]
fn a_tampered_layer_is_rejected_and_nothing_is_kept() {
    let reg = test_registry();
    let storage = reg
        .storage
        .clone()
        .expect("AGENTKERNEL_TEST_REGISTRY_STORAGE from scripts/test-registry.sh");
    let ak = Ak::new();
    // An image of its own (unique content, so no other test shares its layer), pushed with skopeo.
    let unique = format!("{}-{}", std::process::id(), ak.home.path().display());
    let layer = agentkernel_image::testing::Layer::new()
        .dir("etc", 0o755)
        .file("etc/unique", unique.as_bytes(), 0o644)
        .finish()
        .expect("layer");
    let layout = ak.cwd.path().join("layout");
    agentkernel_image::testing::write_oci_layout(&layout, "t", &[layer], &Default::default())
        .expect("layout");
    let name = format!("{}/tamper/img{}:t", reg.addr, std::process::id());
    let push = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker://{name}"))
        .output()
        .expect("skopeo");
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );

    // The layer's digest, from the layout's manifest.
    let layer_hex = first_layer_hex(&layout);

    // The registry now serves other bytes of the same size under that digest.
    let data = storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer_hex[..2])
        .join(&layer_hex)
        .join("data");
    let mut bytes = std::fs::read(&data).expect("stored layer");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).expect("tamper");

    let out = ak.run(&["images", "pull", &name]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("does not match"), "{out:?}");
    let kept = ak.home.path().join("images/blobs/sha256").join(&layer_hex);
    assert!(
        !kept.exists(),
        "a tampered blob was kept at {}",
        kept.display()
    );
    let list = ak.ok(&["images", "list", "--json"]).stdout;
    assert!(!list.contains("tamper"), "{list}");
}

#[test]
fn the_image_is_detected_from_the_command_then_the_project() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--verbose",
        "--no-network",
        "python3",
        "-c",
        "print('detected')",
    ]);
    assert_eq!(out.stdout, "detected\n", "{out:?}");
    assert!(
        out.stderr
            .contains("image python:3.12-alpine (chosen by command `python3`)"),
        "{out:?}"
    );
    // A shell says nothing about the language: the project's files decide.
    std::fs::write(
        ak.cwd.path().join("pyproject.toml"),
        "[project]\nname = \"x\"\n",
    )
    .expect("write");
    let out = ak.run(&[
        "run",
        "--verbose",
        "--no-network",
        "--",
        "sh",
        "-c",
        "python3 -c 'print(2)'",
    ]);
    assert_eq!(out.stdout, "2\n", "{out:?}");
    assert!(
        out.stderr.contains("chosen by project file pyproject.toml"),
        "{out:?}"
    );
    // --image always wins.
    let out = ak.run(&[
        "run",
        "--verbose",
        "--image",
        "alpine:3.20",
        "--no-network",
        "--",
        "sh",
        "-c",
        "command -v python3 || echo none",
    ]);
    assert_eq!(out.stdout, "none\n", "{out:?}");
    assert!(out.stderr.contains("chosen by --image"), "{out:?}");
}

#[test]
fn the_config_names_the_mirror() {
    let reg = test_registry();
    let ak = Ak::new();
    // Mirrors come from the user's own config (a project's may not choose them).
    std::fs::write(
        ak.home.path().join("config.toml"),
        // The first mirror is down: the next one serves the image, as with Docker's mirrors.
        format!(
            "[images]\nmirrors = [\"http://127.0.0.1:1\", \"http://{}\"]\n",
            reg.addr
        ),
    )
    .expect("write");
    let out: Out = ak
        .cmd(&[
            "run",
            "--image",
            "busybox",
            "--no-network",
            "--",
            "echo",
            "from the config's mirror",
        ])
        .env_remove("AGENTKERNEL_REGISTRY_MIRROR")
        .output()
        .expect("spawn")
        .into();
    assert_eq!(out.stdout, "from the config's mirror\n", "{out:?}");
    std::fs::write(
        ak.home.path().join("config.toml"),
        "[images]\nmirrors = [\"ftp://x\"]\n",
    )
    .expect("write");
    let out: Out = ak
        .cmd(&["run", "--image", "busybox:1", "--", "true"])
        .env_remove("AGENTKERNEL_REGISTRY_MIRROR")
        .output()
        .expect("spawn")
        .into();
    assert_eq!(out.code, 125, "{out:?}");
}

#[test]
fn prune_keeps_what_sandboxes_use_and_rm_refuses_it() {
    let ak = Ak::new();
    ak.ok(&["images", "pull", "-q", "python:3.12-alpine"]);
    ak.ok(&["create", "uses-bb", "--image", "busybox", "--no-network"]);
    let out = ak.run(&["images", "rm", "busybox"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("used by sandbox uses-bb"), "{out:?}");

    let out = ak.ok(&["images", "prune"]);
    assert!(
        out.stdout
            .contains("removed docker.io/library/python:3.12-alpine"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("busybox"), "{out:?}");
    let freed: f64 = out
        .stdout
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("freed N MB");
    assert!(freed > 1.0, "the python image is tens of MB: {out:?}");
    let list = ak.ok(&["images", "list"]).stdout;
    assert!(
        list.contains("library/busybox") && !list.contains("python"),
        "{list}"
    );
    // What the sandbox uses still runs, without the registry.
    ak.ok(&["start", "uses-bb"]);
    assert_eq!(
        ak.ok(&["exec", "uses-bb", "--", "echo", "still here"])
            .stdout,
        "still here\n"
    );

    ak.ok(&["remove", "uses-bb"]);
    ak.ok(&["images", "rm", "busybox"]);
    // Forgotten but not yet pruned: only `--all` shows it, without a name.
    assert!(!ak.ok(&["images", "list"]).stdout.contains("<none>"));
    let all = ak.ok(&["images", "list", "--all", "--json"]).stdout;
    let all: Vec<serde_json::Value> = serde_json::from_str(&all).expect("json");
    assert!(all.iter().any(|i| i["reference"] == "<none>"), "{all:?}");
    let out = ak.run(&["images", "rm", "busybox"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("no image busybox"), "{out:?}");
    ak.ok(&["images", "prune"]);
    for dir in ["images/blobs/sha256", "images/layers", "images/refs"] {
        let left: Vec<_> = std::fs::read_dir(ak.home.path().join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir} still has {left:?}");
    }
}

/// Runs `args` with stderr on a fresh pty (a terminal) and returns what it drew there.
fn stderr_on_a_terminal(ak: &Ak, args: &[&str]) -> (Out, String) {
    use rustix::pty::OpenptFlags;
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    rustix::pty::grantpt(&master).expect("grantpt");
    rustix::pty::unlockpt(&master).expect("unlockpt");
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)
        .expect("peer");
    let child = ak
        .cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(slave))
        .spawn()
        .expect("spawn");
    let out: Out = child.wait_with_output().expect("wait").into();
    let flags = rustix::fs::fcntl_getfl(&master).expect("getfl");
    rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK).expect("setfl");
    let mut drawn = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = rustix::io::read(&master, &mut buf) {
        if n == 0 {
            break;
        }
        drawn.extend_from_slice(&buf[..n]);
    }
    (out, String::from_utf8_lossy(&drawn).into_owned())
}

#[test]
fn progress_is_drawn_on_a_terminal_unless_quiet() {
    let ak = Ak::new();
    let (out, drawn) = stderr_on_a_terminal(&ak, &["images", "pull", "python:3.12-alpine"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        drawn.contains("MiB"),
        "a progress bar with sizes was expected: {drawn:?}"
    );
    let (out, drawn) = stderr_on_a_terminal(&ak, &["images", "pull", "--quiet", "busybox"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(drawn.is_empty(), "--quiet draws nothing: {drawn:?}");
    // Not a terminal: nothing but the result line.
    let out = ak.ok(&["images", "pull", "alpine:3.20"]);
    assert!(out.stderr.is_empty(), "{out:?}");
    assert!(out.stdout.starts_with("alpine:3.20: sha256:"), "{out:?}");
}

/// The hex digest of the first layer of the only image in an OCI layout.
fn first_layer_hex(layout: &std::path::Path) -> String {
    let json = |path: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).expect("layout file")).expect("json")
    };
    let hex = |v: &serde_json::Value| {
        v.as_str()
            .expect("digest")
            .trim_start_matches("sha256:")
            .to_string()
    };
    let index = json(layout.join("index.json"));
    let manifest = json(
        layout
            .join("blobs/sha256")
            .join(hex(&index["manifests"][0]["digest"])),
    );
    hex(&manifest["layers"][0]["digest"])
}

/// Writes `layers` as an OCI layout at `layout` and pushes it to the open test registry with
/// skopeo under a name of its own; returns that name.
fn push_layers(
    reg: &TestRegistry,
    layout: &std::path::Path,
    repo: &str,
    layers: &[Vec<u8>],
) -> String {
    agentkernel_image::testing::write_oci_layout(layout, "t", layers, &Default::default())
        .expect("layout");
    let name = format!(
        "{}/{repo}/img{}-{}:t",
        reg.addr,
        std::process::id(),
        layout.display().to_string().len()
    );
    let push = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker://{name}"))
        .output()
        .expect("skopeo");
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    name
}

#[test]
fn whiteouts_and_opaque_directories_of_pulled_layers() {
    use agentkernel_image::testing::Layer;
    let reg = test_registry();
    let ak = Ak::new();
    let bottom = Layer::new()
        .dir("bin", 0o755)
        .file(
            "bin/busybox",
            &std::fs::read("/bin/busybox").expect("busybox-static"),
            0o755,
        )
        .symlink("bin/sh", "busybox")
        .symlink("bin/ls", "busybox")
        .symlink("bin/cat", "busybox")
        .dir("etc", 0o755)
        .file("etc/gone", b"deleted above\n", 0o644)
        .file("etc/kept", b"kept\n", 0o644)
        .dir("data", 0o755)
        .file("data/old", b"hidden by the opaque dir\n", 0o644)
        .finish()
        .expect("bottom");
    let top = Layer::new()
        .whiteout("etc/gone")
        .opaque("data")
        .file("data/new", b"new\n", 0o644)
        .finish()
        .expect("top");
    let name = push_layers(
        &reg,
        &ak.cwd.path().join("layout"),
        "layers",
        &[bottom, top],
    );
    let out = ak.run(&[
        "run",
        "--image",
        &name,
        "--no-network",
        "--",
        "/bin/sh",
        "-c",
        "ls /etc /data; cat /etc/kept",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !out.stdout.contains("gone"),
        "a whiteout must delete the file below: {out:?}"
    );
    assert!(
        !out.stdout.contains("old"),
        "an opaque directory hides what is below: {out:?}"
    );
    assert!(
        out.stdout.contains("new") && out.stdout.contains("kept"),
        "{out:?}"
    );
}

#[test]
fn an_interrupted_download_is_resumed_and_a_bad_start_is_not_trusted() {
    use agentkernel_image::testing::Layer;
    let reg = test_registry();
    let layer = Layer::new()
        .dir("bin", 0o755)
        .file(
            "bin/busybox",
            &std::fs::read("/bin/busybox").expect("busybox-static"),
            0o755,
        )
        .symlink("bin/sh", "busybox")
        .finish()
        .expect("layer");
    let setup = Ak::new();
    let layout = setup.cwd.path().join("layout");
    let name = push_layers(&reg, &layout, "resume", &[layer]);
    let layer_hex = first_layer_hex(&layout);
    let blob = std::fs::read(layout.join("blobs/sha256").join(&layer_hex)).expect("blob");

    let half = blob.len() / 2;
    let mut garbage = blob[..half].to_vec();
    garbage[10] ^= 0x55;
    for (what, start) in [
        ("the first half of the blob", blob[..half].to_vec()),
        ("a wrong first half", garbage),
    ] {
        let ak = Ak::new();
        let blobs = ak.home.path().join("images/blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        std::fs::write(blobs.join(format!(".partial-{layer_hex}")), &start).expect("partial");
        let out = ak.run(&["images", "pull", &name]);
        assert_eq!(out.code, 0, "{what}: {out:?}");
        assert_eq!(
            std::fs::read(blobs.join(&layer_hex)).expect("blob kept"),
            blob,
            "{what}"
        );
        assert!(
            !blobs.join(format!(".partial-{layer_hex}")).exists(),
            "{what}"
        );
        let out = ak.run(&[
            "run",
            "--image",
            &name,
            "--no-network",
            "--",
            "/bin/sh",
            "-c",
            "echo resumed",
        ]);
        assert_eq!(out.stdout, "resumed\n", "{what}: {out:?}");
    }
}

#[test]
fn a_full_disk_is_reported_with_what_to_do() {
    let ak = Ak::new();
    // A 4 MB tmpfs as the whole state directory: the python image's layer does not fit.
    let small = ak.cwd.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let out: Out = ak
        .cmd(&["images", "pull", "python:3.12-alpine"])
        .env("AGENTKERNEL_HOME", &small)
        .output()
        .expect("spawn")
        .into();
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("disk is full") && out.stderr.contains("images prune"),
        "{out:?}"
    );
}
