//! What a running sandbox uses now (`stats`): CPU time so far and memory, read from the
//! cgroups its init is in — the same numbers its limits are enforced on.
//!
//! Every backend whose sandbox init runs in a cgroup of its own (native; containers of Docker
//! and Podman) is measured this way through [`of_cgroups`], the trait's default. A hierarchy
//! counts only where the init's cgroup is neither the root nor the measuring process's own
//! (a container engine on a v1/v2 hybrid host leaves its containers in the root of the v2
//! tree, which would count the whole host). A backend whose sandbox is one host process
//! without a cgroup of its own (a VMM) measures that process ([`of_process`]).

use std::path::{Path, PathBuf};

/// One reading. `cpu_nanos` only grows: a CPU share needs two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the sandbox started, all its processes, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory charged now, in bytes.
    pub memory_bytes: u64,
}

/// The cgroups of process `pid`, one line of `/proc/PID/cgroup` each: (controllers, path).
fn cgroups_of(pid: u32) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _id = parts.next()?;
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect(),
    )
}

/// The directory of cgroup `path` in hierarchy `controllers` ("" for v2), if it is the
/// sandbox's own: not the root, and not this process's.
fn own_dir(
    theirs: &[(String, String)],
    ours: &[(String, String)],
    wanted: &str,
) -> Option<PathBuf> {
    let (controllers, path) = theirs.iter().find(|(c, _)| {
        if wanted.is_empty() {
            c.is_empty()
        } else {
            c.split(',').any(|one| one == wanted)
        }
    })?;
    if path == "/" || ours.iter().any(|(c, p)| c == controllers && p == path) {
        return None;
    }
    let relative = path.trim_start_matches('/');
    let candidates: Vec<PathBuf> = if controllers.is_empty() {
        vec![
            Path::new("/sys/fs/cgroup/unified").join(relative),
            Path::new("/sys/fs/cgroup").join(relative),
        ]
    } else {
        vec![
            Path::new("/sys/fs/cgroup").join(controllers).join(relative),
            Path::new("/sys/fs/cgroup").join(wanted).join(relative),
        ]
    };
    candidates.into_iter().find(|d| d.is_dir())
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The usage of the cgroups process `pid` is in; `None` when it runs in none of its own.
pub fn of_cgroups(pid: u32) -> Option<Usage> {
    if pid == 0 {
        return None;
    }
    let theirs = cgroups_of(pid)?;
    let ours = cgroups_of(std::process::id()).unwrap_or_default();
    let cpu_nanos = own_dir(&theirs, &ours, "cpuacct")
        .and_then(|d| read_u64(&d.join("cpuacct.usage")))
        .or_else(|| {
            let stat =
                std::fs::read_to_string(own_dir(&theirs, &ours, "")?.join("cpu.stat")).ok()?;
            let usec: u64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse()
                .ok()?;
            Some(usec * 1000)
        });
    let memory_bytes = own_dir(&theirs, &ours, "memory")
        .and_then(|d| read_u64(&d.join("memory.usage_in_bytes")))
        .or_else(|| read_u64(&own_dir(&theirs, &ours, "")?.join("memory.current")));
    if cpu_nanos.is_none() && memory_bytes.is_none() {
        return None;
    }
    Some(Usage {
        cpu_nanos: cpu_nanos.unwrap_or(0),
        memory_bytes: memory_bytes.unwrap_or(0),
    })
}

/// The usage of the single process `pid` (its CPU time and its proportional set size).
pub fn of_process(pid: u32) -> Option<Usage> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux architecture agentkernel builds for.
    let cpu_nanos = ticks * 10_000_000;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let pss_kb = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(Usage {
        cpu_nanos,
        memory_bytes: pss_kb * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured_as_a_process() {
        let u = of_process(std::process::id()).expect("own usage");
        assert!(u.memory_bytes > 0);
        // Our own cgroups are never taken for a sandbox's.
        assert_eq!(of_cgroups(std::process::id()), None);
        assert_eq!(of_cgroups(0), None);
    }
}
