//! OCI layouts end to end: layers unpacked once, stacked by a real overlayfs mount, verified
//! against their digests, and hostile archives refused. Runs as root (mknod, chown, mount).

use agentkernel_image::testing::{ENTRY_MTIME, Layer, write_oci_layout};
use agentkernel_image::{ImageConfig, ImageError, ImageRef, ImageStore, Rootfs};
use rustix::mount::{MountFlags, UnmountFlags};
use serde_json::Value;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

fn oci(path: &Path, tag: Option<&str>) -> ImageRef {
    ImageRef::OciLayout {
        path: path.to_path_buf(),
        tag: tag.map(str::to_string),
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).expect("read json")).expect("parse json")
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The layer blobs of the layout's first image, bottom first.
fn layer_blobs(layout: &Path) -> Vec<PathBuf> {
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(
        layout,
        index["manifests"][0]["digest"].as_str().expect("digest"),
    ));
    let layers = manifest["layers"].as_array().expect("layers");
    layers
        .iter()
        .map(|l| blob(layout, l["digest"].as_str().expect("digest")))
        .collect()
}

/// Names in the store's layer directory: (unpacked layers, staging leftovers).
fn layer_store(store: &Path) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = match fs::read_dir(store.join("layers")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    let (tmp, layers) = names.into_iter().partition(|n| n.starts_with(".tmp-"));
    (layers, tmp)
}

/// An overlayfs mount of the image's lower dirs, unmounted on drop.
struct Merged {
    dir: tempfile::TempDir,
}

impl Merged {
    fn mount(rootfs: &Rootfs) -> Merged {
        let dir = tempfile::tempdir().expect("tempdir");
        let lower: Vec<String> = rootfs
            .lower_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let opts = CString::new(format!("lowerdir={}", lower.join(":"))).expect("options");
        rustix::mount::mount(
            "overlay",
            dir.path(),
            "overlay",
            MountFlags::RDONLY,
            opts.as_c_str(),
        )
        .expect("mount overlay (needs root)");
        Merged { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.dir.path(), UnmountFlags::DETACH);
    }
}

fn two_layer_image(layout: &Path) {
    let base = Layer::new()
        .dir("etc", 0o755)
        .file_owned("etc/keep", b"keep me\n", 0o640, 1000, 1001)
        .file("etc/gone", b"delete me\n", 0o644)
        .dir("data", 0o755)
        .file("data/old1", b"1", 0o644)
        .file("data/old2", b"2", 0o644)
        .symlink("link", "etc/keep")
        .hardlink("hard", "etc/keep")
        .dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\n", 0o4755)
        .finish()
        .expect("layer 1");
    let top = Layer::new()
        .dir("etc", 0o755)
        .whiteout("etc/gone")
        .file("etc/added", b"added\n", 0o644)
        .dir("data", 0o700)
        .opaque("data")
        .file("data/new", b"new\n", 0o644)
        .finish()
        .expect("layer 2");
    let config = ImageConfig {
        env: vec!["PATH=/bin".into(), "LANG=C.UTF-8".into()],
        workdir: Some("/data".into()),
        entrypoint: vec!["/bin/tool".into()],
        cmd: vec!["--help".into()],
        user: Some("1000:1001".into()),
    };
    write_oci_layout(layout, "v1", &[base, top], &config).expect("write layout");
}

#[test]
fn two_layers_stack_with_whiteouts_opaque_dirs_and_links() {
    let layout = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    two_layer_image(layout.path());
    let rootfs = ImageStore::new(store.path().to_path_buf())
        .resolve(&oci(layout.path(), Some("v1")))
        .expect("resolve");

    assert_eq!(rootfs.lower_dirs.len(), 2);
    let blobs = layer_blobs(layout.path());
    let hex = |p: &PathBuf| p.file_name().expect("name").to_string_lossy().into_owned();
    assert_eq!(
        rootfs.lower_dirs[0],
        store
            .path()
            .join(format!("layers/sha256-{}", hex(&blobs[1]))),
        "top first"
    );
    assert_eq!(
        rootfs.lower_dirs[1],
        store
            .path()
            .join(format!("layers/sha256-{}", hex(&blobs[0])))
    );
    assert!(
        rootfs.id.starts_with("sha256:") && rootfs.id.len() == 71,
        "{}",
        rootfs.id
    );
    assert!(rootfs.host_binds.is_empty());
    assert_eq!(rootfs.config.env, ["PATH=/bin", "LANG=C.UTF-8"]);
    assert_eq!(rootfs.config.workdir.as_deref(), Some("/data"));
    assert_eq!(rootfs.config.entrypoint, ["/bin/tool"]);
    assert_eq!(rootfs.config.cmd, ["--help"]);
    assert_eq!(rootfs.config.user.as_deref(), Some("1000:1001"));

    // The top layer holds overlayfs-format whiteouts.
    let top = &rootfs.lower_dirs[0];
    let whiteout = fs::symlink_metadata(top.join("etc/gone")).expect("whiteout");
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    let mut opaque = [0u8; 8];
    let n = rustix::fs::lgetxattr(top.join("data"), "trusted.overlay.opaque", &mut opaque)
        .expect("opaque xattr");
    assert_eq!(&opaque[..n], b"y");
    assert!(!top.join("data/.wh..wh..opq").exists() && !top.join("etc/.wh.gone").exists());

    let merged = Merged::mount(&rootfs);
    let m = merged.path();
    assert!(
        fs::symlink_metadata(m.join("etc/gone")).is_err(),
        "whited-out file is gone"
    );
    let mut data: Vec<String> = fs::read_dir(m.join("data"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    data.sort();
    assert_eq!(data, ["new"], "opaque dir shows only the top layer");
    assert_eq!(
        fs::read_to_string(m.join("etc/added")).expect("added"),
        "added\n"
    );
    assert_eq!(
        fs::read_to_string(m.join("etc/keep")).expect("keep"),
        "keep me\n"
    );
    assert_eq!(
        fs::read_link(m.join("link")).expect("symlink"),
        Path::new("etc/keep")
    );
    assert_eq!(
        fs::read_to_string(m.join("link")).expect("through symlink"),
        "keep me\n"
    );

    let keep = fs::metadata(m.join("etc/keep")).expect("keep");
    let hard = fs::metadata(m.join("hard")).expect("hard");
    assert_eq!(
        (keep.ino(), keep.nlink()),
        (hard.ino(), 2),
        "hard link preserved"
    );
    assert_eq!(
        (keep.mode() & 0o7777, keep.uid(), keep.gid()),
        (0o640, 1000, 1001)
    );
    assert_eq!(keep.mtime(), ENTRY_MTIME as i64);
    assert_eq!(
        fs::metadata(m.join("bin/tool")).expect("tool").mode() & 0o7777,
        0o4755,
        "setuid kept"
    );
    assert_eq!(
        fs::metadata(m.join("data")).expect("data").mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(m.join("data")).expect("data").mtime(),
        ENTRY_MTIME as i64,
        "dir mtime kept"
    );
}

#[test]
fn resolving_again_unpacks_nothing() {
    let layout = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    two_layer_image(layout.path());
    let images = ImageStore::new(store.path().to_path_buf());
    let first = images
        .resolve(&oci(layout.path(), Some("v1")))
        .expect("resolve");
    let before: Vec<(u64, i64)> = first
        .lower_dirs
        .iter()
        .map(|d| {
            fs::metadata(d)
                .map(|m| (m.ino(), m.ctime_nsec()))
                .expect("stat")
        })
        .collect();

    // Without the layer blobs, only an already-unpacked image can resolve.
    for b in layer_blobs(layout.path()) {
        fs::remove_file(b).expect("remove blob");
    }
    let second = images
        .resolve(&oci(layout.path(), Some("v1")))
        .expect("resolve again");
    assert_eq!(first, second);
    let after: Vec<(u64, i64)> = second
        .lower_dirs
        .iter()
        .map(|d| {
            fs::metadata(d)
                .map(|m| (m.ino(), m.ctime_nsec()))
                .expect("stat")
        })
        .collect();
    assert_eq!(before, after, "layer directories are untouched");

    // A second image sharing the base layer reuses it; the missing top blob is reported.
    let record = store
        .path()
        .join("oci")
        .join(format!("{}.json", &first.id["sha256:".len()..]));
    assert!(
        record.is_file(),
        "resolved image is recorded at {}",
        record.display()
    );
    fs::remove_dir_all(&first.lower_dirs[0]).expect("remove top layer");
    let err = images
        .resolve(&oci(layout.path(), Some("v1")))
        .expect_err("top layer blob is gone");
    assert!(matches!(err, ImageError::BlobMissing { .. }), "{err}");
    assert!(err.to_string().contains("export the image again"), "{err}");
}

#[test]
fn tampered_layer_is_rejected_and_leaves_nothing() {
    let layout = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    two_layer_image(layout.path());
    let blobs = layer_blobs(layout.path());
    let mut bytes = fs::read(&blobs[0]).expect("read blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&blobs[0], &bytes).expect("write blob");

    let err = ImageStore::new(store.path().to_path_buf())
        .resolve(&oci(layout.path(), None))
        .expect_err("tampered blob must be refused");
    let digest = format!(
        "sha256:{}",
        blobs[0].file_name().expect("name").to_string_lossy()
    );
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&digest),
        "error names the digest: {err}"
    );
    assert_eq!(
        layer_store(store.path()),
        (vec![], vec![]),
        "no layer dir, no staging leftovers"
    );
    assert!(
        !store.path().join("oci").exists()
            || fs::read_dir(store.path().join("oci"))
                .expect("ls")
                .next()
                .is_none()
    );
}

/// Resolves a one-layer image made of `layer`; returns the error it must produce.
fn refused(layer: Vec<u8>) -> (ImageError, tempfile::TempDir) {
    let layout = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    write_oci_layout(layout.path(), "bad", &[layer], &ImageConfig::default())
        .expect("write layout");
    let err = ImageStore::new(store.path().to_path_buf())
        .resolve(&oci(layout.path(), Some("bad")))
        .expect_err("hostile layer must be refused");
    eprintln!("refused: {err}");
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    assert_eq!(
        layer_store(store.path()),
        (vec![], vec![]),
        "nothing left in the layer store"
    );
    (err, store)
}

#[test]
fn hostile_archives_write_nothing_outside() {
    let outside = tempfile::tempdir().expect("tempdir");
    let out = outside.path().display().to_string();

    let (err, store) = refused(
        Layer::new()
            .raw(b"../evil", tar::EntryType::Regular, None, b"x")
            .finish()
            .expect("tar"),
    );
    assert!(err.to_string().contains("`..`"), "{err}");
    assert!(!store.path().join("layers/evil").exists() && !store.path().join("evil").exists());

    let abs = format!("{out}/abs");
    let (err, _) = refused(
        Layer::new()
            .raw(abs.as_bytes(), tar::EntryType::Regular, None, b"x")
            .finish()
            .expect("tar"),
    );
    assert!(err.to_string().contains("absolute"), "{err}");

    // A symlink to outside, then a file "through" it.
    let (err, _) = refused(
        Layer::new()
            .symlink("escape", &out)
            .file("escape/pwned", b"x", 0o644)
            .finish()
            .expect("tar"),
    );
    assert!(err.to_string().contains("escape"), "{err}");
    // The same with a relative symlink climbing out, and a directory through it.
    let (_, _) = refused(
        Layer::new()
            .symlink("up", "../../../../../../../../..")
            .dir("up/tmp/made-by-layer", 0o755)
            .finish()
            .expect("tar"),
    );
    assert!(!Path::new("/tmp/made-by-layer").exists());
    // Even a symlink that stays inside the layer is never written through.
    let (_, _) = refused(
        Layer::new()
            .dir("sub", 0o755)
            .symlink("inner", "sub")
            .file("inner/x", b"x", 0o644)
            .finish()
            .expect("tar"),
    );
    // Hard links may only name entries of the layer.
    let (err, _) = refused(
        Layer::new()
            .hardlink("pw", "../../../../etc/passwd")
            .finish()
            .expect("tar"),
    );
    assert!(err.to_string().contains("hard link"), "{err}");
    let (_, _) = refused(
        Layer::new()
            .symlink("etc", "/etc")
            .hardlink("pw", "etc/passwd")
            .finish()
            .expect("tar"),
    );

    assert_eq!(
        fs::read_dir(outside.path()).expect("ls").count(),
        0,
        "nothing was written outside"
    );
}

#[test]
fn tags_select_images_and_errors_list_them() {
    let layout = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    let images = ImageStore::new(store.path().to_path_buf());
    for tag in ["one", "two"] {
        let layer = Layer::new()
            .file("which", tag.as_bytes(), 0o644)
            .finish()
            .expect("tar");
        let config = ImageConfig {
            cmd: vec![tag.to_string()],
            ..ImageConfig::default()
        };
        write_oci_layout(layout.path(), tag, &[layer], &config).expect("write layout");
    }
    let two = images
        .resolve(&oci(layout.path(), Some("two")))
        .expect("tag two");
    assert_eq!(two.config.cmd, ["two"]);
    assert_eq!(
        fs::read_to_string(two.lower_dirs[0].join("which")).expect("which"),
        "two"
    );
    let one = images
        .resolve(&oci(layout.path(), Some("one")))
        .expect("tag one");
    assert_ne!(one.id, two.id);

    let err = images
        .resolve(&oci(layout.path(), Some("three")))
        .expect_err("unknown tag");
    assert!(matches!(err, ImageError::TagNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("available tags: one, two"),
        "{err}"
    );
    let err = images
        .resolve(&oci(layout.path(), None))
        .expect_err("ambiguous");
    assert!(matches!(err, ImageError::AmbiguousImage { .. }), "{err}");
    assert!(
        err.to_string().contains("one, two") && err.to_string().contains(":TAG"),
        "{err}"
    );

    // A layout holding a single image needs no tag.
    let single = tempfile::tempdir().expect("tempdir");
    let layer = Layer::new().file("f", b"", 0o644).finish().expect("tar");
    write_oci_layout(single.path(), "latest", &[layer], &ImageConfig::default())
        .expect("write layout");
    images
        .resolve(&oci(single.path(), None))
        .expect("only image");
}

#[test]
fn image_index_entries_pick_this_platform() {
    let layout = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    let layer = Layer::new().file("f", b"", 0o644).finish().expect("tar");
    write_oci_layout(layout.path(), "multi", &[layer], &ImageConfig::default())
        .expect("write layout");

    // Move the manifest into an image index next to a foreign-platform entry.
    let index_path = layout.path().join("index.json");
    let mut manifest = json(&index_path)["manifests"][0].clone();
    manifest
        .as_object_mut()
        .expect("object")
        .remove("annotations");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut foreign = manifest.clone();
    foreign["platform"] = serde_json::json!({"os": "linux", "architecture": "s390x"});
    foreign["digest"] = serde_json::json!(format!("sha256:{}", "0".repeat(64)));
    manifest["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [foreign, manifest.clone()],
    });
    let nested_bytes = serde_json::to_vec(&nested).expect("json");
    let digest = {
        use sha2::Digest;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(&nested_bytes))
        )
    };
    fs::write(blob(layout.path(), &digest), &nested_bytes).expect("write index blob");
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": nested_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    fs::write(&index_path, serde_json::to_vec(&top).expect("json")).expect("write index.json");

    let images = ImageStore::new(store.path().to_path_buf());
    let rootfs = images
        .resolve(&oci(layout.path(), Some("multi")))
        .expect("resolve index");
    assert_eq!(
        rootfs.id,
        manifest["digest"].as_str().expect("digest"),
        "id is the platform manifest's digest"
    );

    // Without an entry for this machine the error lists what there is.
    let only_foreign =
        serde_json::json!({"schemaVersion": 2, "manifests": [nested["manifests"][0].clone()]});
    let bytes = serde_json::to_vec(&only_foreign).expect("json");
    let digest = {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
    };
    fs::write(blob(layout.path(), &digest), &bytes).expect("write");
    let mut top = top;
    top["manifests"][0]["digest"] = serde_json::json!(digest);
    top["manifests"][0]["size"] = serde_json::json!(bytes.len());
    fs::write(&index_path, serde_json::to_vec(&top).expect("json")).expect("write index.json");
    let err = images
        .resolve(&oci(layout.path(), Some("multi")))
        .expect_err("no platform");
    assert!(matches!(err, ImageError::NoPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/s390x"), "{err}");
}

#[test]
fn layout_errors_say_what_to_do() {
    let store = tempfile::tempdir().expect("tempdir");
    let images = ImageStore::new(store.path().to_path_buf());
    let missing = store.path().join("no-such-layout");
    let err = images
        .resolve(&oci(&missing, None))
        .expect_err("missing layout");
    assert!(matches!(err, ImageError::LayoutMissing { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let err = images
        .resolve(&oci(store.path(), None))
        .expect_err("not a layout");
    assert!(err.to_string().contains("no index.json"), "{err}");

    // A registry that is not there (a closed loopback port): a clear error, nothing stored.
    let err = images
        .resolve(&ImageRef::Registry {
            reference: "127.0.0.1:1/nothing/here:1".into(),
        })
        .expect_err("registry");
    assert!(matches!(err, ImageError::PullFailed { .. }), "{err}");
    assert!(
        err.to_string().contains("127.0.0.1:1") && err.to_string().contains("--image host"),
        "{err}"
    );
    assert!(
        !store.path().join("refs").exists(),
        "a failed pull records no reference"
    );
}

#[test]
fn an_image_past_its_cap_is_refused_though_each_layer_fits() {
    let layout = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    let layer = |name: &str| {
        Layer::new()
            .sparse(name, 1536 << 10)
            .finish()
            .expect("layer")
    };
    write_oci_layout(
        layout.path(),
        "t",
        &[layer("a"), layer("b")],
        &ImageConfig::default(),
    )
    .expect("layout");
    let limits = agentkernel_image::UnpackLimits {
        layer_mb: 2,
        image_mb: 2,
    };
    let images = ImageStore::new(store.path().to_path_buf())
        .quiet()
        .with_unpack_limits(limits);
    let err = images
        .resolve(&oci(layout.path(), Some("t")))
        .expect_err("the two layers together are over the image's cap");
    assert!(
        matches!(
            err,
            ImageError::UnpackTooLarge {
                cap_mb: 2,
                key: "max_image_mb",
                ..
            }
        ),
        "{err}"
    );
    let blobs = layer_blobs(layout.path());
    let second = blobs[1]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(err.to_string().contains(&second), "names the layer: {err}");
    let (layers, staging) = layer_store(store.path());
    assert!(staging.is_empty(), "{staging:?}");
    assert!(
        !layers.contains(&format!("sha256-{second}")),
        "the layer past the cap was kept: {layers:?}"
    );
    assert!(
        fs::read_dir(store.path().join("oci")).is_err(),
        "no record of a refused image"
    );
    // Within a bigger cap the image prepares.
    let images = images.with_unpack_limits(agentkernel_image::UnpackLimits {
        layer_mb: 2,
        image_mb: 4,
    });
    images
        .resolve(&oci(layout.path(), Some("t")))
        .expect("within the caps");
}
