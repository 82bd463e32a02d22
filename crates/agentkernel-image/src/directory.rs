//! An unpacked root directory used as is: the single, read-only lower layer.

use crate::{ImageConfig, ImageError, Rootfs};
use std::path::Path;

/// The directory is canonicalized so the id (and the mount) do not depend on how it was named.
pub(crate) fn resolve(path: &Path) -> Result<Rootfs, ImageError> {
    let canonical = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::DirectoryMissing {
            path: path.to_path_buf(),
        },
        std::io::ErrorKind::NotADirectory => ImageError::NotADirectory {
            path: path.to_path_buf(),
        },
        _ => ImageError::Io {
            action: "resolve image directory",
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if !canonical.is_dir() {
        return Err(ImageError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    Ok(Rootfs {
        id: canonical.display().to_string(),
        lower_dirs: vec![canonical],
        host_binds: Vec::new(),
        config: ImageConfig::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_and_symlinked_directories() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("nope");
        let err = resolve(&missing).expect_err("missing dir");
        assert!(matches!(err, ImageError::DirectoryMissing { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("does not exist: give an unpacked root filesystem directory")
        );
        assert!(err.to_string().contains(&missing.display().to_string()));

        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = resolve(&file).expect_err("file");
        assert!(matches!(err, ImageError::NotADirectory { .. }), "{err}");

        let real = tmp.path().join("root");
        std::fs::create_dir(&real).expect("mkdir");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let rootfs = resolve(&link).expect("resolve");
        let canonical = std::fs::canonicalize(&real).expect("canonicalize");
        assert_eq!(rootfs.lower_dirs, vec![canonical.clone()]);
        assert_eq!(rootfs.id, canonical.display().to_string());
        assert!(rootfs.host_binds.is_empty());
    }
}
