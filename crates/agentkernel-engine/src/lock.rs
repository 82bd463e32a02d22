//! Per-sandbox locks: lifecycle changes of one sandbox from several processes (two CLIs, the
//! CLI and the server) happen one at a time.

use crate::error::{EngineError, Result};
use rustix::fd::OwnedFd;
use rustix::fs::{FlockOperation, Mode, OFlags};
use std::path::Path;

pub struct SandboxLock {
    _fd: OwnedFd,
}

impl SandboxLock {
    pub fn acquire(home: &Path, name: &str) -> Result<SandboxLock> {
        agentkernel_core::validate_name(name)?;
        let dir = home.join("locks");
        std::fs::create_dir_all(&dir)
            .map_err(EngineError::io(format!("create {}", dir.display())))?;
        let path = dir.join(format!("{name}.lock"));
        let fd = rustix::fs::open(
            &path,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| EngineError::io(format!("open {}", path.display()))(e.into()))?;
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)
            .map_err(|e| EngineError::io(format!("lock {}", path.display()))(e.into()))?;
        Ok(SandboxLock { _fd: fd })
    }
}
