//! Files of a running sandbox, for surfaces that move contents rather than host paths (HTTP,
//! MCP). Paths are resolved inside the sandbox's root by the backend; a relative path is taken
//! from the sandbox's working directory.

use crate::Engine;
use crate::audit::AuditEvent;
use crate::error::{EngineError, Result};
use agentkernel_core::CoreError;
use std::path::PathBuf;

/// The largest file `read_file` returns (bigger ones are copied out with `cp`).
pub const READ_LIMIT: u64 = 64 * 1024 * 1024;

impl Engine {
    /// The contents of a file in a running sandbox.
    pub fn read_file(&self, name: &str, path: &str) -> Result<Vec<u8>> {
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

    /// Removes a file (or an empty directory) in a running sandbox.
    pub fn remove_file(&self, name: &str, path: &str) -> Result<()> {
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

/// Refuses a path with a `..` component, for surfaces whose clients are models rather than
/// programs (MCP): `..` is resolved inside the sandbox's root anyway (openat2
/// RESOLVE_IN_ROOT), but a model that writes `../../../etc/shadow` means the host's file, and
/// is told plainly that it cannot have it rather than given the sandbox's.
pub fn refuse_parent_components(path: &str) -> Result<()> {
    if std::path::Path::new(path)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(EngineError::Input(CoreError::InvalidPath(format!(
            "{path:?} leads out of the sandbox's root: '..' is not accepted here; give a path inside the sandbox, e.g. /workspace/main.py"
        ))));
    }
    Ok(())
}

/// The absolute path inside the sandbox for `path` as a client gave it.
fn inside_path(workdir: &str, path: &str) -> Result<PathBuf> {
    if path.is_empty() || path.contains('\0') {
        return Err(EngineError::Input(CoreError::InvalidPath(format!(
            "{path:?}: give a file path inside the sandbox, e.g. /workspace/main.py"
        ))));
    }
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
        for escape in [
            "../../etc/shadow",
            "/../etc/passwd",
            "/workspace/../../x",
            "a/../b",
        ] {
            let e = refuse_parent_components(escape).expect_err("has ..");
            assert!(e.to_string().contains("leads out of the sandbox"), "{e}");
        }
        refuse_parent_components("/workspace/a..b/c").expect("'a..b' is a name");
    }
}
