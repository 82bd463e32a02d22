//! Keeping agentkernel's own state directory (`~/.agentkernel`) out of every sandbox and away
//! from other local users.
//!
//! The directory holds every sandbox's spec (with the values given by `-e`), the audit log,
//! other sandboxes' files and the key that authenticates stored records. A sandbox that could
//! see it could read other sandboxes' secrets; one that could write it could rewrite another
//! sandbox's policy. So: the directory is 0700 and the engine's files in it 0600; a host
//! directory a sandbox is given (a permissive project or home mount, a directory image, the
//! `host` image's binds) that contains it gets it hidden under an empty read-only directory
//! (`Policy::masked_paths`, enforced by every backend); and a host directory inside it is never
//! given to a sandbox at all, but for a named volume's own directory (`volumes/NAME`).

use crate::error::{EngineError, Result};
use agentkernel_core::{CoreError, ImageRef, SandboxSpec};
use agentkernel_image::Rootfs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of the state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files the engine writes in it.
pub const FILE_MODE: u32 = 0o600;

/// Creates the state directory (and its parents) if needed and makes it 0700, whoever made it
/// before and with whatever mode.
pub fn secure(home: &Path) -> Result<()> {
    // One stat on every engine open; the directory is made only the first time.
    let meta = match std::fs::metadata(home) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(home)
            .and_then(|()| std::fs::metadata(home))
            .map_err(EngineError::io(format!("create {}", home.display())))?,
        other => other.map_err(EngineError::io(format!("read {}", home.display())))?,
    };
    if meta.permissions().mode() & 0o7777 != DIR_MODE {
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(DIR_MODE)).map_err(
            EngineError::io(format!("make {} private (chmod 0700)", home.display())),
        )?;
    }
    Ok(())
}

/// Hides the state directory in everything `spec` gives the sandbox from the host, and refuses
/// host directories that lie inside it.
pub fn hide(home: &Path, spec: &mut SandboxSpec, rootfs: &Rootfs) -> Result<()> {
    let home = real(home);
    // A named volume is the one directory inside the state directory a sandbox is given: its
    // own, `volumes/NAME`, made by the engine (`crate::volumes`).
    let volumes = crate::volumes::volumes_dir(&home);
    let mut given: Vec<(PathBuf, PathBuf)> = spec
        .policy
        .mounts
        .iter()
        .filter(|m| {
            m.volume
                .as_ref()
                .is_none_or(|name| real(&m.source) != volumes.join(name))
        })
        .map(|m| (m.source.clone(), m.target.clone()))
        .collect();
    match &spec.image {
        ImageRef::Directory { path } => given.push((path.clone(), PathBuf::from("/"))),
        ImageRef::OciLayout { path, .. } => {
            // A layout's blobs are read, never shown: only its place matters.
            refuse_inside(&home, path)?;
        }
        ImageRef::Host | ImageRef::Registry { .. } => {}
    }
    given.extend(rootfs.host_binds.iter().map(|b| (b.clone(), b.clone())));
    for (source, target) in given {
        let source = real(&source);
        refuse_inside(&home, &source)?;
        if let Ok(rest) = home.strip_prefix(&source) {
            let masked = target.join(rest);
            if !spec.policy.masked_paths.contains(&masked) {
                spec.policy.masked_paths.push(masked);
            }
        }
    }
    Ok(())
}

fn refuse_inside(home: &Path, source: &Path) -> Result<()> {
    if real(source).starts_with(home) {
        return Err(EngineError::Input(CoreError::NotPermitted(format!(
            "{} is inside agentkernel's state directory {}, which no sandbox may see: use a directory outside it",
            source.display(),
            home.display()
        ))));
    }
    Ok(())
}

/// `path` with symlinks resolved, or as given when it does not exist.
fn real(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkernel_core::policy::{BindMount, Policy, Profile};

    fn spec(image: ImageRef, mounts: Vec<BindMount>) -> SandboxSpec {
        let mut policy = Policy::for_profile(Profile::Permissive);
        policy.mounts = mounts;
        SandboxSpec {
            name: "t".into(),
            image,
            backend: agentkernel_core::BackendKind::Native,
            policy,
            env: Vec::new(),
            workdir: "/workspace".into(),
            labels: Default::default(),
            description: None,
            secrets: Vec::new(),
            secret_files: Vec::new(),
            placeholder_secrets: false,
            layers: Vec::new(),
            ports: Vec::new(),
            project: None,
        }
    }

    fn rootfs() -> Rootfs {
        Rootfs {
            lower_dirs: Vec::new(),
            host_binds: Vec::new(),
            config: Default::default(),
            id: "x".into(),
        }
    }

    #[test]
    fn a_mount_containing_the_state_directory_hides_it() {
        let top = tempfile::tempdir().expect("tempdir");
        let home = top.path().join("project/.agentkernel");
        std::fs::create_dir_all(&home).expect("home");
        let mut s = spec(
            ImageRef::Host,
            vec![BindMount {
                source: top.path().join("project"),
                target: "/workspace".into(),
                read_only: false,
                volume: None,
            }],
        );
        hide(&home, &mut s, &rootfs()).expect("hidden");
        assert_eq!(
            s.policy.masked_paths,
            vec![PathBuf::from("/workspace/.agentkernel")]
        );
        let mut s = spec(
            ImageRef::Directory {
                path: top.path().to_path_buf(),
            },
            Vec::new(),
        );
        hide(&home, &mut s, &rootfs()).expect("hidden");
        assert_eq!(
            s.policy.masked_paths,
            vec![PathBuf::from("/project/.agentkernel")]
        );
    }

    #[test]
    fn a_directory_inside_the_state_directory_is_refused() {
        let home = tempfile::tempdir().expect("tempdir");
        let inside = home.path().join("sandboxes/other/upper");
        std::fs::create_dir_all(&inside).expect("dir");
        let mut s = spec(
            ImageRef::Directory {
                path: inside.clone(),
            },
            Vec::new(),
        );
        let e = hide(home.path(), &mut s, &rootfs()).expect_err("refused");
        assert!(e.to_string().contains("state directory"), "{e}");
        let mut s = spec(
            ImageRef::Host,
            vec![BindMount {
                source: inside,
                target: "/workspace".into(),
                read_only: false,
                volume: None,
            }],
        );
        assert!(hide(home.path(), &mut s, &rootfs()).is_err());
    }

    #[test]
    fn only_a_named_volumes_own_directory_is_given_from_inside() {
        let home = tempfile::tempdir().expect("tempdir");
        let volume = crate::volumes::volumes_dir(home.path()).join("cache");
        std::fs::create_dir_all(&volume).expect("dir");
        let mount = |source: PathBuf, name: Option<&str>| BindMount {
            source,
            target: "/cache".into(),
            read_only: false,
            volume: name.map(str::to_string),
        };
        let mut s = spec(ImageRef::Host, vec![mount(volume.clone(), Some("cache"))]);
        hide(home.path(), &mut s, &rootfs()).expect("its own directory");
        assert!(s.policy.masked_paths.is_empty());
        // The same directory as a plain host path, or another name's claim on it, is refused.
        for (source, name) in [
            (volume.clone(), None),
            (volume.clone(), Some("other")),
            (home.path().to_path_buf(), Some("cache")),
        ] {
            let mut s = spec(ImageRef::Host, vec![mount(source, name)]);
            assert!(hide(home.path(), &mut s, &rootfs()).is_err(), "{name:?}");
        }
    }
}
