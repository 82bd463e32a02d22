//! Files of a running sandbox, for surfaces that move contents rather than host paths (HTTP,
//! MCP). One rule for a path, whichever surface gave it ([`check_path`]): not empty, no NUL
//! byte, at most [`MAX_PATH_BYTES`]; a relative path is taken from the sandbox's working
//! directory; `..` is resolved inside the sandbox's root by the backend (openat2
//! RESOLVE_IN_ROOT on native), so it can never lead out of it.

use crate::Engine;
use crate::audit::AuditEvent;
use crate::error::{EngineError, Result};
use agentkernel_core::CoreError;
use std::path::{Path, PathBuf};

/// The largest file `read_file` returns (bigger ones are copied out with `cp`).
pub const READ_LIMIT: u64 = 64 * 1024 * 1024;
/// The longest path inside a sandbox, in bytes (Linux's `PATH_MAX` less its NUL).
pub const MAX_PATH_BYTES: usize = 4095;

impl Engine {
    /// The contents of a file in a running sandbox.
    pub fn read_file(&self, name: &str, path: &str) -> Result<Vec<u8>> {
        check_path(path)?;
        let (spec, backend, rt) = self.running_record(name)?;
        let path = inside_path(&spec.workdir, path)?;
        let data = backend.read_file(&rt, &path, READ_LIMIT)?;
        self.audit.record(AuditEvent::FileRead {
            sandbox: name.to_string(),
            path: path.display().to_string(),
        });
        Ok(data)
    }

    /// Creates or replaces a file in a running sandbox. Returns the absolute path written.
    pub fn write_file(&self, name: &str, path: &str, data: &[u8]) -> Result<String> {
        let written = self.write_files(name, &[(path, data)])?;
        Ok(written.into_iter().next().unwrap_or_default())
    }

    /// Writes several files; stops at the first that fails. Returns the absolute paths written.
    pub fn write_files(&self, name: &str, files: &[(&str, &[u8])]) -> Result<Vec<String>> {
        for (path, _) in files {
            check_path(path)?;
        }
        let (spec, backend, rt) = self.running_record(name)?;
        // Every path is checked before anything is written.
        let paths = files
            .iter()
            .map(|(p, _)| inside_path(&spec.workdir, p))
            .collect::<Result<Vec<_>>>()?;
        let mut written = Vec::with_capacity(files.len());
        for (path, (_, data)) in paths.iter().zip(files) {
            backend.write_file(&rt, path, data)?;
            let shown = path.display().to_string();
            self.audit.record(AuditEvent::FileWritten {
                sandbox: name.to_string(),
                path: shown.clone(),
            });
            written.push(shown);
        }
        Ok(written)
    }

    /// `sandbox create --dir DIR`: copies what host directory `dir` holds into sandbox
    /// `name`'s /workspace, starting the sandbox for the copy and stopping it again if it was
    /// stopped. A sandbox whose policy mounts a host directory at /workspace (permissive, the
    /// agent modes) sees it there already: nothing is copied, and `false` is returned.
    pub fn copy_project(&self, name: &str, dir: &Path) -> Result<bool> {
        let rec = self.get_record(name)?;
        let workspace = Path::new(agentkernel_core::policy::WORKSPACE);
        if rec.spec.policy.mounts.iter().any(|m| m.target == workspace) {
            return Ok(false);
        }
        if rec.spec.policy.read_only_root {
            return Err(CoreError::Conflicting(format!(
                "--dir copies {} into /workspace, and the {} profile's root is read-only: use -p moderate, or -p permissive to mount the directory instead",
                dir.display(),
                rec.spec.policy.profile
            ))
            .into());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| {
                EngineError::Input(CoreError::InvalidArgument(format!(
                    "--dir {}: cannot read it ({e}): give a directory you can read",
                    dir.display()
                )))
            })?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(EngineError::io(format!("read {}", dir.display())))?;
        entries.sort();
        let was_running = self.is_running(&rec);
        self.start(name)?;
        let copied = self.copy_into_workspace(name, workspace, &entries);
        let stopped = if was_running {
            Ok(false)
        } else {
            self.stop(name)
        };
        copied?;
        stopped?;
        self.audit.record(AuditEvent::FileWritten {
            sandbox: name.to_string(),
            path: workspace.display().to_string(),
        });
        Ok(true)
    }

    /// Copies `entries` (host paths) into `workspace` of running sandbox `name`, made a
    /// directory first if the image has none.
    fn copy_into_workspace(&self, name: &str, workspace: &Path, entries: &[PathBuf]) -> Result<()> {
        let (_, backend, rt) = self.running_record(name)?;
        // `write_file` makes missing parent directories: a marker file makes /workspace a
        // directory, so that each entry is copied into it rather than as it.
        let marker = workspace.join(format!(
            ".agentkernel-dir-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        backend.write_file(&rt, &marker, b"")?;
        backend.remove_file(&rt, &marker)?;
        for entry in entries {
            backend.copy_in(&rt, entry, workspace)?;
        }
        Ok(())
    }

    /// Removes a file (or an empty directory) in a running sandbox.
    pub fn remove_file(&self, name: &str, path: &str) -> Result<()> {
        check_path(path)?;
        let (spec, backend, rt) = self.running_record(name)?;
        let path = inside_path(&spec.workdir, path)?;
        backend.remove_file(&rt, &path)?;
        self.audit.record(AuditEvent::FileWritten {
            sandbox: name.to_string(),
            path: path.display().to_string(),
        });
        Ok(())
    }
}

/// Checks a file path a client gave, before any sandbox is looked up: not empty, no NUL byte,
/// at most [`MAX_PATH_BYTES`]. `..` is allowed: the backend resolves it inside the sandbox's
/// root, where it stays (`/../etc/passwd` is the sandbox's `/etc/passwd`).
pub fn check_path(path: &str) -> Result<()> {
    if path.is_empty() || path.contains('\0') {
        return Err(EngineError::Input(CoreError::InvalidPath(format!(
            "{path:?}: give a file path inside the sandbox, e.g. /workspace/main.py"
        ))));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(EngineError::Input(CoreError::InvalidPath(format!(
            "the path is {} bytes long: give at most {MAX_PATH_BYTES}",
            path.len()
        ))));
    }
    Ok(())
}

/// The absolute path inside the sandbox for `path` as a client gave it.
fn inside_path(workdir: &str, path: &str) -> Result<PathBuf> {
    check_path(path)?;
    let path = PathBuf::from(path);
    Ok(if path.is_absolute() {
        path
    } else {
        PathBuf::from(workdir).join(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_start_at_the_workdir() {
        assert_eq!(
            inside_path("/workspace", "a/b.txt").expect("relative path"),
            PathBuf::from("/workspace/a/b.txt")
        );
        assert_eq!(
            inside_path("/workspace", "/etc/hostname").expect("absolute path"),
            PathBuf::from("/etc/hostname")
        );
        assert!(inside_path("/workspace", "").is_err());
        assert!(inside_path("/workspace", "a\0b").is_err());
        assert!(inside_path("/workspace", &"a".repeat(MAX_PATH_BYTES)).is_ok());
        let e = inside_path("/workspace", &"a".repeat(MAX_PATH_BYTES + 1)).expect_err("long");
        assert!(e.to_string().contains("give at most 4095"), "{e}");
        // `..` is the backend's to resolve inside the root, for every surface alike.
        assert_eq!(
            inside_path("/workspace", "../../etc/passwd").expect("dot-dot"),
            PathBuf::from("/workspace/../../etc/passwd")
        );
    }
}
