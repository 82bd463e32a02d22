//! Whether a container's command was killed for memory, where the engine does not say.
//!
//! Docker records it (`State.OOMKilled`). Podman 4.3 on this kind of host (memory only on a
//! cgroup v1 hierarchy) never does: its inspect says `OOMKilled: false` for a container the
//! kernel OOM-killed (measured with `podman --remote inspect`). The kernel's own count is
//! read instead, from the container's memory cgroup on this host: `memory.events` (v2) or
//! `memory.oom_control` (v1), both with an `oom_kill N` line.
//!
//! A throwaway container's cgroup is removed as soon as it exits, often before its exit is
//! reported, so for `run` the count is watched while it runs: on v1 an eventfd registered
//! through `cgroup.event_control` wakes at each OOM (and once more when the cgroup is
//! removed, told apart because the cgroup's files are then gone), as conmon does. The
//! command is held until the watch is in place (the run role's `--hold`).

use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use tokio::io::unix::AsyncFd;

/// Where the v1 memory hierarchy and the v2 unified one are mounted.
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";
const V2: &str = "/sys/fs/cgroup";

/// A process's memory cgroup on this host.
pub(crate) struct MemoryCgroup {
    dir: PathBuf,
    /// `memory.oom_control` (v1) or `memory.events` (v2).
    counter: &'static str,
}

impl MemoryCgroup {
    /// The memory cgroup of host process `pid`, if this host has one for it.
    pub(crate) fn of_process(pid: u32) -> Option<MemoryCgroup> {
        if pid == 0 {
            return None;
        }
        let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        for line in table.lines() {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let path = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                let dir = PathBuf::from(V1_MEMORY).join(path);
                return dir.is_dir().then_some(MemoryCgroup {
                    dir,
                    counter: "memory.oom_control",
                });
            }
        }
        // No v1 memory controller: the unified hierarchy, if memory is enabled there.
        let path = table.lines().find_map(|l| l.strip_prefix("0::"))?;
        let dir = PathBuf::from(V2).join(path.trim_start_matches('/'));
        dir.join("memory.events").is_file().then_some(MemoryCgroup {
            dir,
            counter: "memory.events",
        })
    }

    /// The kernel's count of OOM kills in the cgroup; None once the cgroup is gone.
    pub(crate) fn oom_kills(&self) -> Option<u64> {
        parse_oom_kills(&std::fs::read_to_string(self.dir.join(self.counter)).ok()?)
    }
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// A v1 memory cgroup watched for OOM kills while its container runs.
pub(crate) struct OomWatch {
    cgroup: MemoryCgroup,
    event: AsyncFd<OwnedFd>,
    /// Kept open: the registration lasts as long as the file the eventfd was registered on.
    _counter: std::fs::File,
    /// An OOM kill was already counted when the watch began.
    before: bool,
}

impl OomWatch {
    /// Registers for OOM notifications of `cgroup`; None on v2 (no such notification) or
    /// when the kernel refuses.
    pub(crate) fn new(cgroup: MemoryCgroup) -> Option<OomWatch> {
        if cgroup.counter != "memory.oom_control" {
            return None;
        }
        let counter = std::fs::File::open(cgroup.dir.join(cgroup.counter)).ok()?;
        let event = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .ok()?;
        let line = format!(
            "{} {}",
            event.as_fd().as_raw_fd(),
            counter.as_fd().as_raw_fd()
        );
        std::fs::write(cgroup.dir.join("cgroup.event_control"), line).ok()?;
        // SAFETY: the AsyncFd owns the eventfd (an OwnedFd), so the descriptor stays open
        // for exactly as long as it is registered with the reactor.
        let event =
            unsafe { AsyncFd::register_with_interest(event, tokio::io::Interest::READABLE) }
                .ok()?;
        // A command that ran out of memory before the registration is counted already.
        let before = cgroup.oom_kills().is_some_and(|n| n > 0);
        Some(OomWatch {
            cgroup,
            event,
            _counter: counter,
            before,
        })
    }

    /// Waits until the cgroup runs out of memory (true) or goes away (false).
    pub(crate) async fn killed(&self) -> bool {
        if self.before {
            return true;
        }
        loop {
            let Ok(mut ready) = self.event.readable().await else {
                return false;
            };
            let mut count = [0u8; 8];
            let events = match rustix::io::read(self.event.get_ref(), &mut count) {
                Ok(8) => u64::from_ne_bytes(count),
                Ok(_) => return false,
                Err(rustix::io::Errno::AGAIN) => {
                    ready.clear_ready();
                    continue;
                }
                Err(_) => return false,
            };
            // The kernel notifies when the cgroup enters OOM, before its killer has counted
            // the kill: a wake-up while the cgroup still exists is an OOM. Once it is gone,
            // its removal accounts for one wake-up; any more were OOMs that came first.
            return self.cgroup.oom_kills().is_some() || events > 1;
        }
    }

    /// Whether an OOM kill is recorded now, without waiting.
    pub(crate) fn killed_so_far(&self) -> bool {
        if self.before || self.cgroup.oom_kills().is_some_and(|n| n > 0) {
            return true;
        }
        let mut count = [0u8; 8];
        matches!(rustix::io::read(self.event.get_ref(), &mut count), Ok(8) if u64::from_ne_bytes(count) > 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_both_versions() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v1), Some(3));
        assert_eq!(parse_oom_kills(v2), Some(1));
        assert_eq!(parse_oom_kills("under_oom 0\n"), None);
    }

    #[test]
    fn a_process_has_its_memory_cgroup() {
        // Every process of this host is in some memory cgroup, or the host has none at all.
        let has_memory = std::path::Path::new(V1_MEMORY).is_dir()
            || std::fs::read_to_string(format!("{V2}/cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let own = MemoryCgroup::of_process(std::process::id());
        assert_eq!(own.is_some(), has_memory);
        if let Some(own) = own {
            assert!(own.oom_kills().is_some());
        }
        assert!(MemoryCgroup::of_process(0).is_none());
    }
}
