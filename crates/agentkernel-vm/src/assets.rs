//! What every micro-VM boots from besides its image: the guest kernel and the guest agent, and
//! the initramfs made of the agent (built once per agent binary and cached in the state
//! directory).
//!
//! Where they are found, first match wins:
//! - kernel: `AGENTKERNEL_KERNEL`; `<prefix>/lib/agentkernel/vmlinux` next to the running
//!   binary's `bin/` (what `scripts/quickstart.sh` installs); the newest build in
//!   `~/.cache/agentkernel-kernel/*/vmlinux` (what `scripts/build-kernel.sh` leaves).
//! - guest agent: `AGENTKERNEL_GUEST`; `agentkernel-guest` beside the running binary (a cargo
//!   target directory); `<prefix>/lib/agentkernel/agentkernel-guest`.

use crate::VmError;
use crate::initramfs::Initramfs;
use sha2::Digest;
use std::path::{Path, PathBuf};

/// The guest kernel to boot.
pub fn kernel() -> Result<PathBuf, VmError> {
    if let Some(k) = std::env::var_os("AGENTKERNEL_KERNEL") {
        return Ok(PathBuf::from(k));
    }
    if let Some(lib) = install_lib_dir() {
        let k = lib.join("vmlinux");
        if k.is_file() {
            return Ok(k);
        }
    }
    let cache = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/agentkernel-kernel");
    let newest = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|k| Some((k.metadata().ok()?.modified().ok()?, k)))
        .max();
    newest
        .map(|(_, k)| k)
        .ok_or_else(|| VmError::KernelMissing(cache.join("<hash>/vmlinux")))
}

/// The guest agent binary (static, PID 1 in the guest).
pub fn guest_agent() -> Result<PathBuf, VmError> {
    if let Some(g) = std::env::var_os("AGENTKERNEL_GUEST") {
        return Ok(PathBuf::from(g));
    }
    let exe = std::env::current_exe().ok();
    let mut tried = Vec::new();
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        tried.push(dir.join("agentkernel-guest"));
    }
    if let Some(lib) = install_lib_dir() {
        tried.push(lib.join("agentkernel-guest"));
    }
    match tried.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(VmError::GuestMissing(tried)),
    }
}

/// `<prefix>/lib/agentkernel` for a binary installed as `<prefix>/bin/agentkernel`.
fn install_lib_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("lib/agentkernel"))
}

/// The initramfs holding `agent` as `/init`, built once per agent binary under `cache_dir`
/// (known by its path, size and modification time: hashing its contents on every start would
/// cost more than the rest of a clone's start).
pub fn initramfs(agent: &Path, cache_dir: &Path) -> Result<PathBuf, VmError> {
    let io = |what: String| move |source| VmError::Io { what, source };
    let meta = std::fs::metadata(agent)
        .map_err(io(format!("read the guest agent {}", agent.display())))?;
    let mut key = sha2::Sha256::new();
    key.update(agent.as_os_str().as_encoded_bytes());
    key.update(meta.len().to_le_bytes());
    key.update(format!("{:?}", meta.modified().ok()).as_bytes());
    let digest = hex::encode(&key.finalize()[..8]);
    let path = cache_dir.join(format!("initramfs-{digest}.cpio"));
    if path.is_file() {
        return Ok(path);
    }
    let bytes =
        std::fs::read(agent).map_err(io(format!("read the guest agent {}", agent.display())))?;
    std::fs::create_dir_all(cache_dir).map_err(io(format!("create {}", cache_dir.display())))?;
    let mut cpio = Initramfs::new();
    cpio.dir("dev", 0o755)?;
    cpio.char_dev("dev/console", 0o600, 5, 1)?;
    cpio.file("init", 0o755, &bytes)?;
    let tmp = cache_dir.join(format!(".initramfs-{digest}.{}", std::process::id()));
    std::fs::write(&tmp, cpio.finish()).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))?;
    Ok(path)
}
