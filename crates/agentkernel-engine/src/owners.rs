//! Throwaway sandboxes that would outlive a killed owner.
//!
//! A container engine keeps a container after the process that started it dies; a micro-VM's
//! runtime directory stays behind its powered-off guest. Such a throwaway sandbox (a `run`, a
//! warm one of a pool) is marked while it lives: a file under `HOME/owners/` named after the
//! sandbox, holding the backend and the owner's pid and start time, written before the sandbox
//! is made and removed once it is gone ([`Claim`]). A process killed in between leaves its
//! marker behind; [`sweep`], which every agentkernel command runs before anything else, finds
//! its owner dead and has that backend remove what dead owners left — so nothing waits for
//! `gc`. With no marker (every normal run), the sweep costs one directory read.

use crate::Engine;
use agentkernel_backend::Backend;
use agentkernel_core::BackendKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

const OWNERS_DIR: &str = "owners";
/// A marker without its line is being written (or its writer died mid-way): kept this long.
const UNWRITTEN_GRACE: Duration = Duration::from_secs(10);

/// The mark of one throwaway sandbox of this process; dropping it removes the mark (the
/// sandbox is gone by then, or its owner would not drop it).
#[derive(Debug)]
pub(crate) struct Claim {
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Marks `sandbox` as this process's, if its backend keeps throwaway sandboxes after a killed
/// owner; `None` otherwise (or when the mark cannot be written: `gc` still finds the leftover).
pub(crate) fn claim(home: &Path, backend: &dyn Backend, sandbox: &str) -> Option<Claim> {
    if !backend.outlives_its_owner() {
        return None;
    }
    let dir = home.join(OWNERS_DIR);
    std::fs::create_dir_all(&dir).ok()?;
    let pid = std::process::id();
    let start = agentkernel_sys::proc::start_time(pid)?;
    let path = dir.join(sandbox);
    // One write of a short line: a reader sees the whole line or none of it.
    std::fs::write(&path, format!("{} {pid} {start}\n", backend.kind())).ok()?;
    Some(Claim { path })
}

/// Removes what killed owners left: for every marker whose owner is dead, its backend's
/// leftovers (`Backend::collect_garbage`, as `gc` runs it), then the marker. Returns what was
/// removed.
pub fn sweep(home: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(home.join(OWNERS_DIR)) else {
        return Vec::new();
    };
    let mut kinds: Vec<BackendKind> = Vec::new();
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let line = std::fs::read_to_string(&path).unwrap_or_default();
        let mut fields = line.split_whitespace();
        let owner = (|| {
            let kind: BackendKind = fields.next()?.parse().ok()?;
            let pid: u32 = fields.next()?.parse().ok()?;
            let start: u64 = fields.next()?.parse().ok()?;
            Some((kind, pid, start))
        })();
        match owner {
            Some((_, pid, start)) if agentkernel_sys::proc::is_alive(pid, start) => {}
            Some((kind, ..)) => {
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
                stale.push(path);
            }
            None => {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= UNWRITTEN_GRACE);
                if old {
                    stale.push(path);
                }
            }
        }
    }
    let mut removed = Vec::new();
    if !kinds.is_empty()
        && let Ok(engine) = Engine::open(home)
    {
        removed = engine.collect_backend_garbage(kinds.into_iter());
    }
    for path in stale {
        let _ = std::fs::remove_file(path);
    }
    removed
}
