use std::path::PathBuf;

/// The state directory: `$AGENTKERNEL_HOME`, else `~/.agentkernel`.
pub fn agentkernel_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENTKERNEL_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".agentkernel")
}

/// Where a sandbox keeps what it owns on the host (its disk, mount point, detached commands'
/// records): `<home>/sandboxes/<name>`.
pub fn sandbox_dir(home: &std::path::Path, name: &str) -> PathBuf {
    home.join("sandboxes").join(name)
}
