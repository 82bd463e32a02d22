//! Per-sandbox locks: lifecycle changes of one sandbox from several processes (two CLIs, the
//! CLI and the server) happen one at a time.

use crate::error::{EngineError, Result};
use rustix::fd::OwnedFd;
use rustix::fs::{FlockOperation, Mode, OFlags};
use std::path::{Path, PathBuf};

pub struct SandboxLock {
    _fd: OwnedFd,
    path: PathBuf,
}

impl SandboxLock {
    /// Waits for the sandbox's lock. The lock file is removed with its sandbox
    /// ([`SandboxLock::remove_file`]), so a lock taken on a file that has meanwhile been
    /// removed (or replaced) is not the lock: it is let go and taken again on the file now
    /// at the path.
    pub fn acquire(home: &Path, name: &str) -> Result<SandboxLock> {
        agentkernel_core::validate_name(name)?;
        let dir = home.join("locks");
        std::fs::create_dir_all(&dir)
            .map_err(EngineError::io(format!("create {}", dir.display())))?;
        let path = dir.join(format!("{name}.lock"));
        loop {
            let fd = rustix::fs::open(
                &path,
                OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| EngineError::io(format!("open {}", path.display()))(e.into()))?;
            rustix::fs::flock(&fd, FlockOperation::LockExclusive)
                .map_err(|e| EngineError::io(format!("lock {}", path.display()))(e.into()))?;
            let held = rustix::fs::fstat(&fd)
                .map_err(|e| EngineError::io(format!("stat {}", path.display()))(e.into()))?;
            match rustix::fs::stat(&path) {
                Ok(now) if now.st_ino == held.st_ino && now.st_dev == held.st_dev => {
                    return Ok(SandboxLock { _fd: fd, path });
                }
                _ => continue,
            }
        }
    }

    /// Removes the lock file while the lock is held: for a sandbox that is gone, so that
    /// `locks/` holds a file per sandbox that exists rather than per name ever used.
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
