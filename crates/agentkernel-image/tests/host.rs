//! The `host` image and plain directories, against this machine's real `/`.

use agentkernel_image::{ImageError, ImageRef, ImageStore};
use std::fs;
use std::path::Path;

#[test]
fn host_skeleton_has_passwd_but_never_secrets() {
    let store = tempfile::tempdir().expect("tempdir");
    let images = ImageStore::new(store.path().to_path_buf());
    let rootfs = images.resolve(&ImageRef::Host).expect("resolve host");
    assert_eq!(rootfs.id, "host");
    assert_eq!(rootfs.lower_dirs, vec![store.path().join("host/rootfs")]);
    assert_eq!(
        rootfs.host_binds.first().map(|p| p.as_path()),
        Some(Path::new("/usr"))
    );
    assert!(
        rootfs
            .config
            .env
            .iter()
            .any(|e| e.starts_with("PATH=") && e.contains("/usr/bin"))
    );

    let sk = &rootfs.lower_dirs[0];
    assert_eq!(
        fs::read(sk.join("etc/passwd")).expect("skeleton passwd"),
        fs::read("/etc/passwd").expect("host passwd")
    );
    for secret in [
        "etc/shadow",
        "etc/gshadow",
        "etc/ssh",
        "etc/sudoers",
        "etc/ssl/private",
        "etc/machine-id",
    ] {
        assert!(
            fs::symlink_metadata(sk.join(secret)).is_err(),
            "{secret} must never be in the host skeleton"
        );
    }
    // Each of /bin, /lib64, … is mirrored: a symlink stays a symlink, a directory is bound.
    for name in ["bin", "sbin", "lib", "lib64"] {
        let host = match fs::symlink_metadata(Path::new("/").join(name)) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let copy = fs::symlink_metadata(sk.join(name)).expect("mirrored system dir");
        if host.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(sk.join(name)).ok(),
                fs::read_link(Path::new("/").join(name)).ok()
            );
        } else {
            assert!(copy.is_dir() && rootfs.host_binds.contains(&Path::new("/").join(name)));
        }
    }

    let again = images.resolve(&ImageRef::Host).expect("resolve host again");
    assert_eq!(again, rootfs);
}

#[test]
fn directory_images_must_exist() {
    let store = tempfile::tempdir().expect("tempdir");
    let images = ImageStore::new(store.path().to_path_buf());
    let missing = store.path().join("missing-root");
    let err = images
        .resolve(&ImageRef::Directory {
            path: missing.clone(),
        })
        .expect_err("missing");
    assert!(matches!(err, ImageError::DirectoryMissing { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "image directory {} does not exist: give an unpacked root filesystem directory",
            missing.display()
        )
    );
    let rootfs = images
        .resolve(&ImageRef::Directory {
            path: store.path().to_path_buf(),
        })
        .expect("dir");
    assert_eq!(
        rootfs.lower_dirs,
        vec![fs::canonicalize(store.path()).expect("canonical")]
    );
}
