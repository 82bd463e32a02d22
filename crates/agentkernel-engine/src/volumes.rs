//! Volumes: the `--volume` flags and HTTP `volumes` of a request as bind mounts of the policy,
//! and who may name which (docs/security.md, "Volumes").
//!
//! A host directory is resolved (relative ones against the caller's directory, for the local
//! user only), must exist, and is canonicalized before any check, so a symlink is judged by
//! where it leads: the local user may name any directory; HTTP and MCP callers only those under
//! `[security] remote_paths`, the rule their images and permissive mounts follow. A named
//! volume is a directory the engine keeps in the state directory (`volumes/NAME`, made on first
//! use, kept after the sandboxes that used it are removed, as Docker keeps its named volumes);
//! any caller may use one. Every volume becomes a `BindMount` of the policy, so each backend
//! enforces it as it does the permissive mounts (`nodev,nosuid` binds on native, `Mounts` on
//! the container engines) or refuses it (microvm).

use crate::error::{EngineError, Result};
use crate::resolve::{Caller, SpecRequest, is_within, not_permitted, remote_paths};
use agentkernel_core::config::Config;
use agentkernel_core::policy::BindMount;
use agentkernel_core::volume::{MAX_VOLUMES, VolumeSource, parse_volume};
use agentkernel_core::{CoreError, Policy};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where named volumes live in the state directory `home`.
pub fn volumes_dir(home: &Path) -> PathBuf {
    home.join("volumes")
}

/// Adds the request's volumes to `policy.mounts`, refusing what its caller may not name, a
/// host path that is not a directory, and two mounts at one place. A named volume's `source`
/// is left relative (`volumes/NAME`) until [`place_named`] puts it in a state directory.
pub(crate) fn add_volumes(req: &SpecRequest, config: &Config, policy: &mut Policy) -> Result<()> {
    if req.volumes.len() > MAX_VOLUMES {
        return Err(CoreError::InvalidArgument(format!(
            "{} volumes: give at most {MAX_VOLUMES}",
            req.volumes.len()
        ))
        .into());
    }
    for text in &req.volumes {
        let volume = parse_volume(text)?;
        let mount = match volume.source {
            VolumeSource::Host(path) => BindMount {
                source: host_dir(req, config, text, &path)?,
                target: volume.target,
                read_only: volume.read_only,
                volume: None,
            },
            VolumeSource::Named(name) => BindMount {
                source: volumes_dir(Path::new("")).join(&name),
                target: volume.target,
                read_only: volume.read_only,
                volume: Some(name),
            },
        };
        if let Some(other) = policy.mounts.iter().find(|m| m.target == mount.target) {
            return Err(CoreError::Conflicting(format!(
                "volume {text:?}: {} is already mounted from {}: give each sandbox path once",
                mount.target.display(),
                other.source.display()
            ))
            .into());
        }
        policy.mounts.push(mount);
    }
    Ok(())
}

/// The canonical host directory of volume `text`, if its caller may name it.
fn host_dir(req: &SpecRequest, config: &Config, text: &str, path: &Path) -> Result<PathBuf> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else if req.caller == Caller::Local {
        req.cwd.join(path)
    } else {
        return Err(not_permitted(format!(
            "volume {text:?}: a relative host path is the local CLI's (it is taken from the caller's directory): give an absolute directory under [security] remote_paths, or a volume name"
        )));
    };
    // Resolved first: a symlink is judged by where it leads, never by where it sits.
    let real = path.canonicalize().map_err(|e| {
        EngineError::Input(CoreError::InvalidArgument(format!(
            "volume {text:?}: the host directory {} cannot be used ({e}): create it first, or give a volume name to have agentkernel keep one",
            path.display()
        )))
    })?;
    if req.caller != Caller::Local && !is_within(&real, &remote_paths(config)) {
        return Err(not_permitted(format!(
            "volume {text:?}: {} is a host path, which a remote or MCP caller may not name: use a named volume (NAME:/path), or have the operator list the directory in [security] remote_paths of ~/.agentkernel/config.toml",
            real.display()
        )));
    }
    if !real.is_dir() {
        return Err(CoreError::InvalidArgument(format!(
            "volume {text:?}: {} is not a directory: give a directory",
            real.display()
        ))
        .into());
    }
    Ok(real)
}

/// Makes each named volume's `source` its directory in the state directory `home`, creating
/// the directory on first use (`volumes/` 0700, as the state directory; the volume 0755, as a
/// project directory, for the sandbox to write).
pub(crate) fn place_named(home: &Path, policy: &mut Policy) -> Result<()> {
    let dir = volumes_dir(home);
    for m in &mut policy.mounts {
        let Some(name) = &m.volume else { continue };
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(EngineError::io(format!("create {}", dir.display())))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(EngineError::io(format!("make {} private", dir.display())))?;
        }
        let path = dir.join(name);
        match std::fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(EngineError::io(format!("create {}", path.display()))(e)),
        }
        let meta = std::fs::symlink_metadata(&path)
            .map_err(EngineError::io(format!("read {}", path.display())))?;
        if !meta.is_dir() {
            return Err(CoreError::Conflicting(format!(
                "volume {name}: {} is not a directory: remove it, or use another volume name",
                path.display()
            ))
            .into());
        }
        m.source = path;
    }
    Ok(())
}

/// The named volumes in the state directory `home`, sorted.
pub fn list_named(home: &Path) -> Result<Vec<String>> {
    let dir = volumes_dir(home);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EngineError::io(format!("read {}", dir.display()))(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(caller: Caller, cwd: &Path, volumes: &[&str]) -> SpecRequest {
        SpecRequest {
            caller,
            cwd: cwd.to_path_buf(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        }
    }

    fn mounts(r: &SpecRequest, config: &Config) -> Result<Vec<BindMount>> {
        let mut policy = Policy::for_profile(agentkernel_core::Profile::Moderate);
        add_volumes(r, config, &mut policy)?;
        Ok(policy.mounts)
    }

    #[test]
    fn the_local_user_names_host_directories_relative_or_not() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        let real = dir.path().canonicalize().expect("real");
        let m = mounts(
            &req(
                Caller::Local,
                dir.path(),
                &["./src:/src:ro", "/tmp:/t", "data:/data"],
            ),
            &Config::default(),
        )
        .expect("mounts");
        assert_eq!(m[0].source, real.join("src"));
        assert!(m[0].read_only);
        assert_eq!(m[1].source, Path::new("/tmp").canonicalize().expect("tmp"));
        assert_eq!(m[2].volume.as_deref(), Some("data"));
        for (bad, kind) in [
            ("./missing:/x", agentkernel_core::ErrorKind::InvalidInput),
            ("/etc/passwd:/x", agentkernel_core::ErrorKind::InvalidInput),
        ] {
            let e =
                mounts(&req(Caller::Local, dir.path(), &[bad]), &Config::default()).expect_err(bad);
            assert_eq!(agentkernel_core::HasKind::kind(&e), kind, "{bad}: {e}");
        }
        let e = mounts(
            &req(Caller::Local, dir.path(), &["/tmp:/x", "v:/x"]),
            &Config::default(),
        )
        .expect_err("twice");
        assert_eq!(
            agentkernel_core::HasKind::kind(&e),
            agentkernel_core::ErrorKind::Conflict
        );
    }

    #[test]
    fn remote_callers_name_only_listed_directories_after_resolving_links() {
        let top = tempfile::tempdir().expect("dir");
        let listed = top.path().join("listed");
        std::fs::create_dir(&listed).expect("mkdir");
        std::fs::create_dir(listed.join("inside")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", listed.join("out")).expect("symlink");
        let config: Config = toml::from_str(&format!(
            "[security]\nremote_paths = [{:?}]\n",
            listed.display().to_string()
        ))
        .expect("config");
        for caller in [Caller::Remote, Caller::Agent] {
            for bad in [
                "/etc:/x".to_string(),
                "/:/host".to_string(),
                "./inside:/x".to_string(),
                "../../etc:/x".to_string(),
                format!("{}:/x", listed.join("out").display()),
                format!("{}:/x", listed.join("inside/../../").display()),
            ] {
                let e = mounts(&req(caller, &listed, &[&bad]), &config).expect_err(&bad);
                assert_eq!(
                    agentkernel_core::HasKind::kind(&e),
                    agentkernel_core::ErrorKind::NotPermitted,
                    "{bad}: {e}"
                );
            }
            let ok = format!("{}:/x:ro", listed.join("inside").display());
            mounts(&req(caller, &listed, &[&ok, "cache:/cache"]), &config).expect("allowed");
        }
    }

    #[test]
    fn named_volumes_are_made_private_and_kept() {
        let home = tempfile::tempdir().expect("home");
        let mut policy = Policy::for_profile(agentkernel_core::Profile::Moderate);
        add_volumes(
            &req(Caller::Remote, home.path(), &["cache:/cache"]),
            &Config::default(),
            &mut policy,
        )
        .expect("volumes");
        place_named(home.path(), &mut policy).expect("placed");
        let dir = volumes_dir(home.path());
        assert_eq!(policy.mounts[0].source, dir.join("cache"));
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(dir.join("cache").is_dir());
        assert_eq!(list_named(home.path()).expect("list"), vec!["cache"]);
    }
}
