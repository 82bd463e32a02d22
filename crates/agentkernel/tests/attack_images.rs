//! Attacks through images, end to end: each test builds the hostile image (an OCI layout, or a
//! registry of its own on 127.0.0.1 that serves what the attack needs), performs the attack
//! with the real binary and asserts it fails without touching the host:
//! - device nodes in a layer (a host block device, the kernel log) never reach a sandbox;
//! - a layout's blobs are read only as regular files inside it: a symlink to a host file is
//!   refused, and the error does not tell the file's hash or size;
//! - a layer that unpacks past the configured cap (a tiny sparse archive) is refused and leaves
//!   nothing in the store;
//! - a blob or manifest that never ends fails the pull on its own;
//! - Ctrl-C and SIGTERM stop a slow pull; only a resumable download is left.

mod common;
use agentkernel_image::testing::{Layer, write_oci_layout};
use common::loopdev::LoopDevice;
use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// busybox with the applets these tests use, as the bottom layer of an image.
fn busybox_layer() -> Layer {
    let mut layer = Layer::new().dir("bin", 0o755).file(
        "bin/busybox",
        &std::fs::read(busybox_root().join("bin/busybox")).expect("busybox"),
        0o755,
    );
    for applet in ["sh", "ls", "cat", "head", "echo"] {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

/// The blob files of the layers of the layout's first image, bottom first.
fn layer_blobs(layout: &Path) -> Vec<PathBuf> {
    let blob = |digest: &serde_json::Value| {
        layout.join("blobs/sha256").join(
            digest
                .as_str()
                .expect("digest")
                .trim_start_matches("sha256:"),
        )
    };
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(&index["manifests"][0]["digest"]));
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| blob(&l["digest"]))
        .collect()
}

/// Every entry under `dir` whose name starts with `prefix`, at any depth.
fn entries_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                found.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(e.path());
            }
        }
    }
    found
}

/// The names in `dir` (none when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn device_nodes_in_a_layer_never_reach_the_sandbox() {
    let ak = Ak::new();
    let disk = LoopDevice::new();
    let (major, minor) = disk.numbers();
    let evil = Layer::new()
        .dir("evil", 0o755)
        .block_device("evil/disk", major, minor)
        .char_device("evil/kmsg", 1, 11)
        .char_device("evil/null", 1, 3)
        .file("evil/plain", b"a plain file\n", 0o644)
        .finish()
        .expect("layer");
    let base = busybox_layer().finish().expect("busybox layer");
    let layout = ak.cwd.path().join("layout");
    write_oci_layout(&layout, "t", &[base, evil], &Default::default()).expect("layout");
    let image = format!("oci:{}:t", layout.display());
    let out = run_bounded(
        &ak,
        &[
            "run",
            "--image",
            &image,
            "--no-network",
            "--",
            "sh",
            "-c",
            "ls -l /evil; echo OVERWRITTEN > /evil/disk; head -c 64 /evil/disk; echo end",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let listing: Vec<&str> = out.stdout.lines().collect();
    assert!(
        listing
            .iter()
            .all(|l| !l.starts_with('b') && !l.starts_with('c')),
        "a device node reached the sandbox: {out:?}"
    );
    assert!(
        out.stdout.contains("plain") && !out.stdout.contains("kmsg"),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains("HOST-DISK-SECRET"),
        "the sandbox read the host disk: {out:?}"
    );
    assert!(out.stdout.contains("OVERWRITTEN\nend"), "{out:?}");
    disk.assert_unchanged("the sandbox");
}

#[test]
fn a_directory_image_brings_no_device_nodes_into_a_docker_container() {
    let eng = common::engines::engine("docker");
    let mut ak = Ak::new();
    ak.env.push((eng.var.to_string(), eng.host.clone()));
    let disk = LoopDevice::new();
    let (major, minor) = disk.numbers();
    let root = ak.cwd.path().join("rootdir");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::create_dir_all(root.join("evil")).expect("mkdir");
    std::fs::copy(busybox_root().join("bin/busybox"), root.join("bin/busybox")).expect("busybox");
    for applet in ["sh", "ls", "head"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    let unique = format!("{}-{}", std::process::id(), ak.home.path().display());
    std::fs::write(root.join("evil/plain"), &unique).expect("plain");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("evil/disk"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(major, minor),
    )
    .expect("mknod");
    let out = run_bounded(
        &ak,
        &[
            "run",
            "-B",
            eng.backend,
            "--image",
            "./rootdir",
            "--no-network",
            "--",
            "sh",
            "-c",
            "ls -l /evil; head -c 64 /evil/disk; echo end",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("plain"), "{out:?}");
    assert!(
        out.stdout
            .lines()
            .all(|l| !l.starts_with('b') && !l.starts_with('c')),
        "a device node reached the container: {out:?}"
    );
    assert!(!out.stdout.contains("HOST-DISK-SECRET"), "{out:?}");
}

#[test]
fn layout_blobs_that_are_symlinks_to_host_files_are_refused_without_leaking_them() {
    let ak = Ak::new();
    // A host tar whose digest the attacker knows: the layout names it, and its blob is a
    // symlink to the host's copy.
    let host_tar = Layer::new()
        .file("marker", b"HOST-TAR-CONTENT\n", 0o644)
        .finish()
        .expect("layer");
    let base = busybox_layer().finish().expect("busybox layer");
    let layout = ak.cwd.path().join("layout");
    write_oci_layout(&layout, "t", &[base, host_tar], &Default::default()).expect("layout");
    let host_dir = tempfile::tempdir().expect("tempdir");
    let host_copy = host_dir.path().join("host-archive.tar.gz");
    let blob = layer_blobs(&layout)[1].clone();
    std::fs::rename(&blob, &host_copy).expect("move the blob out");
    std::os::unix::fs::symlink(&host_copy, &blob).expect("symlink");
    let image = format!("oci:{}:t", layout.display());
    let out = run_bounded(
        &ak,
        &[
            "run",
            "--image",
            &image,
            "--no-network",
            "--",
            "cat",
            "/marker",
        ],
    );
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        !out.stdout.contains("HOST-TAR-CONTENT"),
        "a host archive was unpacked into the sandbox: {out:?}"
    );
    assert!(out.stderr.contains("symbolic link"), "{out:?}");

    // A blob that is a symlink to a file the attacker cannot read: neither its hash nor its
    // size may come back in the error.
    let shadow = std::fs::read("/etc/shadow").expect("/etc/shadow");
    let other = tempfile::tempdir().expect("tempdir");
    let layout = other.path().join("layout");
    let base = busybox_layer().finish().expect("busybox layer");
    let decoy = Layer::new().file("x", b"x", 0o644).finish().expect("layer");
    write_oci_layout(&layout, "t", &[base, decoy], &Default::default()).expect("layout");
    let blob = layer_blobs(&layout)[1].clone();
    std::fs::remove_file(&blob).expect("rm");
    std::os::unix::fs::symlink("/etc/shadow", &blob).expect("symlink");
    let image = format!("oci:{}:t", layout.display());
    let out = run_bounded(
        &ak,
        &["run", "--image", &image, "--no-network", "--", "true"],
    );
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        !out.stderr.contains(&sha256_hex(&shadow)),
        "the error told the hash of /etc/shadow: {out:?}"
    );
    assert!(
        !out.stderr.contains(&format!("{} bytes", shadow.len())),
        "the error told the size of /etc/shadow: {out:?}"
    );
    assert!(out.stderr.contains("symbolic link"), "{out:?}");
}

#[test]
fn a_layer_that_unpacks_past_the_cap_is_refused_and_leaves_nothing() {
    let ak = Ak::new();
    // Two hundred bytes or so of archive, compressed, that describe a 64 MB file.
    let sparse = Layer::new()
        .sparse("huge", 64 << 20)
        .finish()
        .expect("layer");
    let layout = ak.cwd.path().join("layout");
    write_oci_layout(&layout, "t", &[sparse], &Default::default()).expect("layout");
    let blob = layer_blobs(&layout)[0].clone();
    assert!(
        std::fs::metadata(&blob).expect("blob").len() < 1024,
        "the layer should be tiny"
    );
    let layer_hex = blob
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let config = ak.cwd.path().join("caps.toml");
    std::fs::write(&config, "[images]\nmax_layer_mb = 16\n").expect("config");
    let image = format!("oci:{}:t", layout.display());
    let out = run_bounded(
        &ak,
        &[
            "run",
            "--config",
            config.to_str().expect("utf-8"),
            "--image",
            &image,
            "--no-network",
            "--",
            "true",
        ],
    );
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains(&layer_hex)
            && out.stderr.contains("more than 16 MB")
            && out.stderr.contains("max_layer_mb"),
        "{out:?}"
    );
    let images = ak.home.path().join("images");
    assert_eq!(names_in(&images.join("layers")), Vec::<String>::new());
    assert_eq!(names_in(&images.join("oci")), Vec::<String>::new());
    assert!(entries_named(&images, ".tmp-").is_empty());
}

/// What the fake registry answers for a path.
#[derive(Clone)]
enum Body {
    /// The whole body, with its length.
    Bytes(Vec<u8>),
    /// Zeros until the client hangs up (or, at most, 256 MB).
    Endless,
    /// The body with its length, 4 KiB at a time, slowly; the test hears when it starts.
    Trickle(Vec<u8>),
}

/// What an endless body sends at most: far beyond anything a client should read.
const ENDLESS_CEILING: usize = 256 << 20;

#[derive(Default)]
struct Shared {
    routes: Mutex<HashMap<String, Body>>,
    /// A client closed the connection in the middle of a body.
    hung_up: AtomicBool,
    /// Told when a trickled body starts.
    trickling: Mutex<Option<mpsc::Sender<()>>>,
}

/// A one-repository registry (`evil`) on 127.0.0.1, plain HTTP, no auth.
struct FakeRegistry {
    addr: String,
    shared: Arc<Shared>,
}

impl FakeRegistry {
    fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(Shared::default());
        let server = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = server.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        FakeRegistry { addr, shared }
    }

    fn route(&self, path: &str, body: Body) {
        self.shared
            .routes
            .lock()
            .expect("lock")
            .insert(path.to_string(), body);
    }

    /// Serves `tag` of `evil`: a manifest of `config` and `layers` (descriptors as JSON).
    fn manifest(&self, tag: &str, manifest: Body) {
        self.route(&format!("/v2/evil/manifests/{tag}"), manifest);
    }

    fn blob(&self, digest: &str, body: Body) {
        self.route(&format!("/v2/evil/blobs/{digest}"), body);
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let body = if path == "/v2/" {
        Some(Body::Bytes(b"{}".to_vec()))
    } else {
        shared.routes.lock().expect("lock").get(&path).cloned()
    };
    let mut out = stream;
    let head = |len: Option<usize>| {
        let length = len.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{length}Connection: close\r\n\r\n"
        )
    };
    match body {
        None => {
            let _ = out.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 52\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"no\"}]}",
            );
        }
        Some(Body::Bytes(bytes)) => {
            let _ = out
                .write_all(head(Some(bytes.len())).as_bytes())
                .and_then(|()| out.write_all(&bytes));
        }
        Some(Body::Endless) => {
            if out.write_all(head(None).as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b' '; 64 << 10];
            let mut sent = 0;
            while sent < ENDLESS_CEILING {
                if out.write_all(&chunk).is_err() {
                    shared.hung_up.store(true, Ordering::SeqCst);
                    return;
                }
                sent += chunk.len();
            }
        }
        Some(Body::Trickle(bytes)) => {
            if out.write_all(head(Some(bytes.len())).as_bytes()).is_err() {
                return;
            }
            for (i, chunk) in bytes.chunks(4096).enumerate() {
                if out.write_all(chunk).and_then(|()| out.flush()).is_err() {
                    shared.hung_up.store(true, Ordering::SeqCst);
                    return;
                }
                if i == 0
                    && let Some(tx) = shared.trickling.lock().expect("lock").as_ref()
                {
                    let _ = tx.send(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A descriptor as registries write them.
fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256_hex(bytes)),
        "size": bytes.len(),
    })
}

fn manifest_of(config: &serde_json::Value, layers: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    }))
    .expect("json")
}

const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[test]
fn blobs_and_manifests_that_never_end_fail_on_their_own() {
    // From a layout: a layer blob that goes on (a sparse terabyte after the real layer, as a
    // file a sandbox keeps appending to would).
    let ak = Ak::new();
    let layout = ak.cwd.path().join("layout");
    let base = busybox_layer().finish().expect("busybox layer");
    write_oci_layout(&layout, "t", &[base], &Default::default()).expect("layout");
    let blob = layer_blobs(&layout)[0].clone();
    let len = std::fs::metadata(&blob).expect("blob").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .and_then(|f| f.set_len(len + (1 << 40)))
        .expect("grow the blob");
    let image = format!("oci:{}:t", layout.display());
    let out = run_bounded(
        &ak,
        &["run", "--image", &image, "--no-network", "--", "true"],
    );
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("does not match its descriptor"),
        "{out:?}"
    );

    // From a registry: a manifest that never ends, then a layer that never ends.
    let reg = FakeRegistry::start();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_desc = descriptor("application/vnd.oci.image.config.v1+json", config);
    reg.blob(
        config_desc["digest"].as_str().expect("digest"),
        Body::Bytes(config.to_vec()),
    );
    reg.manifest("endless-manifest", Body::Endless);
    let layer_desc = descriptor(LAYER_GZIP, &[0u8; 1000]);
    reg.blob(
        layer_desc["digest"].as_str().expect("digest"),
        Body::Endless,
    );
    reg.manifest(
        "endless-layer",
        Body::Bytes(manifest_of(&config_desc, &[layer_desc])),
    );

    let ak = Ak::new();
    let image = format!("{}/evil:endless-manifest", reg.addr);
    let out = run_bounded(&ak, &["images", "pull", "-q", &image]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("more than the") && out.stderr.contains("manifest"),
        "{out:?}"
    );
    assert!(
        reg.shared.hung_up.swap(false, Ordering::SeqCst),
        "the client read the endless manifest to the server's ceiling"
    );

    let image = format!("{}/evil:endless-layer", reg.addr);
    let out = run_bounded(&ak, &["images", "pull", "-q", &image]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("more than its 1000 bytes"), "{out:?}");
    assert!(reg.shared.hung_up.load(Ordering::SeqCst));
    let images = ak.home.path().join("images");
    assert!(entries_named(&images, ".tmp-").is_empty());
    assert_eq!(names_in(&images.join("refs")), Vec::<String>::new());
}

/// A registry serving `evil:slow`, a busybox image whose layer trickles; returns it with the
/// layer's bytes and digest hex.
fn slow_registry(ak: &Ak) -> (FakeRegistry, Vec<u8>, String, mpsc::Receiver<()>) {
    let layout = ak.cwd.path().join("slow-layout");
    let base = busybox_layer().finish().expect("busybox layer");
    write_oci_layout(&layout, "t", &[base], &Default::default()).expect("layout");
    let index = json(&layout.join("index.json"));
    let manifest_hex = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:")
        .to_string();
    let manifest_bytes =
        std::fs::read(layout.join("blobs/sha256").join(&manifest_hex)).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).expect("json");
    let reg = FakeRegistry::start();
    let blob_of = |desc: &serde_json::Value| {
        let digest = desc["digest"].as_str().expect("digest").to_string();
        let bytes = std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .expect("blob");
        (digest, bytes)
    };
    let (config_digest, config) = blob_of(&manifest["config"]);
    reg.blob(&config_digest, Body::Bytes(config));
    let (layer_digest, layer) = blob_of(&manifest["layers"][0]);
    reg.blob(&layer_digest, Body::Trickle(layer.clone()));
    reg.manifest("slow", Body::Bytes(manifest_bytes));
    let (tx, rx) = mpsc::channel();
    *reg.shared.trickling.lock().expect("lock") = Some(tx);
    let hex = layer_digest.trim_start_matches("sha256:").to_string();
    (reg, layer, hex, rx)
}

/// Starts `args`, sends `signal` once the layer download is under way, and returns how the
/// CLI ended.
fn interrupt_download(
    ak: &Ak,
    args: &[&str],
    started: &mpsc::Receiver<()>,
    signal: rustix::process::Signal,
) -> Out {
    let child = ak
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentkernel");
    let pid = rustix::process::Pid::from_child(&child);
    if started.recv_timeout(HANG).is_err() {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        panic!(
            "the download never started: {:?}",
            wait_bounded(child, "agentkernel")
        );
    }
    rustix::process::kill_process(pid, signal).expect("signal");
    wait_bounded(child, &format!("agentkernel {args:?} after {signal:?}"))
}

/// Only a resumable download is left: no staging directory, no half-written file elsewhere, no
/// record of the image, and the partial blob unlocked (no process holds it).
fn only_a_resumable_download_is_left(ak: &Ak, layer_hex: &str) {
    let images = ak.home.path().join("images");
    assert_eq!(
        entries_named(&images, ".tmp-"),
        Vec::<PathBuf>::new(),
        "a staging directory or temporary file was left"
    );
    for dir in ["refs", "oci", "layers"] {
        assert_eq!(names_in(&images.join(dir)), Vec::<String>::new(), "{dir}");
    }
    let blobs = images.join("blobs/sha256");
    let partial = blobs.join(format!(".partial-{layer_hex}"));
    let held = std::fs::File::open(&partial).expect("the partial download is kept");
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("nobody holds the partial download");
    assert!(!blobs.join(layer_hex).exists());
}

#[test]
fn ctrl_c_and_sigterm_stop_a_slow_pull_and_leave_only_a_resumable_download() {
    let ak = Ak::new();
    let (reg, layer, layer_hex, started) = slow_registry(&ak);
    let image = format!("{}/evil:slow", reg.addr);

    let out = interrupt_download(
        &ak,
        &["images", "pull", "-q", &image],
        &started,
        rustix::process::Signal::INT,
    );
    assert_eq!(out.code, 130, "{out:?}");
    assert!(out.stderr.contains("stopped by SIGINT"), "{out:?}");
    only_a_resumable_download_is_left(&ak, &layer_hex);

    // The next pull finishes the download.
    reg.blob(&format!("sha256:{layer_hex}"), Body::Bytes(layer.clone()));
    let out = run_bounded(&ak, &["images", "pull", "-q", &image]);
    assert_eq!(out.code, 0, "{out:?}");
    let blobs = ak.home.path().join("images/blobs/sha256");
    assert_eq!(std::fs::read(blobs.join(&layer_hex)).expect("blob"), layer);
    assert!(!blobs.join(format!(".partial-{layer_hex}")).exists());

    // `run` forwards signals to its command: before there is one, SIGTERM stops the pull.
    let other = Ak::new();
    reg.blob(&format!("sha256:{layer_hex}"), Body::Trickle(layer));
    let out = interrupt_download(
        &other,
        &["run", "--image", &image, "--no-network", "--", "true"],
        &started,
        rustix::process::Signal::TERM,
    );
    assert_eq!(out.code, 143, "{out:?}");
    assert!(out.stderr.contains("stopped by SIGTERM"), "{out:?}");
    only_a_resumable_download_is_left(&other, &layer_hex);
    assert!(other.list_json().is_empty(), "no sandbox was left");
}
