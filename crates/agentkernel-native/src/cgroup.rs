//! A sandbox's cgroups: `agentkernel/<instance>` in the hierarchies that enforce its limits.
//!
//! Hosts differ: a pure cgroup v2 host has every controller in one tree; a hybrid host (this
//! project's CI machine among them) has memory, pids and cpu only as v1 hierarchies and a v2
//! tree without those controllers. So each limit goes to the v2 tree when it has the
//! controller, else to the v1 hierarchy of that controller, and a limit that neither can
//! enforce is refused (never silently skipped). The v2 group is always created when v2 is
//! mounted: its `cgroup.kill` ends a whole tree at once.
//!
//! The device allow-list (`devices.rs`) goes to the v1 devices controller where it is mounted,
//! else to the v2 tree as a BPF device program on `agentkernel/`, which every sandbox's group
//! inherits.

use agentkernel_core::policy::Limits;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory under each hierarchy root that holds every sandbox's group.
const PARENT: &str = "agentkernel";
/// CPU bandwidth period (µs); the quota is `vcpus` times this.
const CPU_PERIOD_US: u64 = 100_000;
/// How long `freeze` waits for every process to stop (one in an uninterruptible wait, e.g. on
/// slow I/O, stops only when it returns).
const FREEZE_WAIT: Duration = Duration::from_secs(5);
/// An agentkernel from before the parent lock (or another installation's) makes and holds its
/// groups without it, within milliseconds: a never-used group younger than this may be its,
/// being made, whatever the lock says.
pub const UNLOCKED_MAKER_GRACE: Duration = Duration::from_secs(1);
/// How long an empty group nobody holds and no process ever joined may be its maker's between
/// making and holding it before it counts as a leftover even while some group is being made
/// (makers hold the parent meanwhile, so this is only for a sweeper that finds it busy).
pub const UNHELD_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "the {limit} limit cannot be enforced: no cgroup {controller} controller is mounted (v1 or v2); mount one, or run without the limit"
    )]
    Unsupported {
        limit: &'static str,
        controller: &'static str,
    },
    #[error("cgroup {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cgroup {path} still has processes after they were killed")]
    Busy { path: String },
    #[error(
        "the device allow-list cannot be enforced: neither the cgroup v1 devices controller nor cgroup2 is mounted; mount one of them"
    )]
    NoDeviceCgroup,
    #[error(
        "a running sandbox cannot be snapshotted here: its processes are frozen for the copy, and this host has no cgroup v2 freezer (cgroup.freeze); stop the sandbox and snapshot it stopped"
    )]
    NoFreezer,
    #[error(
        "the processes of the sandbox did not freeze within {waited:?} ({path}); nothing was captured: try again, or stop the sandbox and snapshot it stopped"
    )]
    FreezeTimeout { path: String, waited: Duration },
    #[error(transparent)]
    DeviceFilter(#[from] crate::devices::DeviceFilterError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where the cgroup hierarchies of this host are mounted.
#[derive(Debug, Default, Clone)]
struct Hierarchies {
    v2: Option<PathBuf>,
    v2_controllers: Vec<String>,
    v1_memory: Option<PathBuf>,
    v1_pids: Option<PathBuf>,
    v1_cpu: Option<PathBuf>,
    v1_devices: Option<PathBuf>,
}

impl Hierarchies {
    /// The host's hierarchies, read from mountinfo once per process: the probe, `create` and
    /// `open` of one CLI call all need them, and they do not change under a running process
    /// in any way agentkernel could act on.
    fn get() -> &'static Hierarchies {
        static DETECTED: std::sync::OnceLock<Hierarchies> = std::sync::OnceLock::new();
        DETECTED.get_or_init(Hierarchies::detect)
    }

    fn detect() -> Hierarchies {
        let mut h = Hierarchies::default();
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return h;
        };
        for line in info.lines() {
            // mountinfo: id parent major:minor root mountpoint options [optional...] - fstype source super-options
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mountpoint) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or("");
            let super_opts = right.nth(1).unwrap_or("");
            let mountpoint = PathBuf::from(unescape(mountpoint));
            match fstype {
                "cgroup2" if h.v2.is_none() => h.v2 = Some(mountpoint),
                "cgroup" => {
                    for opt in super_opts.split(',') {
                        let slot = match opt {
                            "memory" => &mut h.v1_memory,
                            "pids" => &mut h.v1_pids,
                            "cpu" => &mut h.v1_cpu,
                            "devices" => &mut h.v1_devices,
                            _ => continue,
                        };
                        if slot.is_none() {
                            *slot = Some(mountpoint.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(v2) = &h.v2 {
            h.v2_controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
        }
        h
    }

    fn v2_has(&self, controller: &str) -> bool {
        self.v2.is_some() && self.v2_controllers.iter().any(|c| c == controller)
    }

    /// Every hierarchy root a sandbox group may live under.
    fn roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = [
            &self.v2,
            &self.v1_memory,
            &self.v1_pids,
            &self.v1_cpu,
            &self.v1_devices,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        roots.dedup();
        roots
    }
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The cgroups of one sandbox instance.
#[derive(Debug, Clone)]
pub struct Cgroup {
    hierarchies: &'static Hierarchies,
    id: String,
}

impl Cgroup {
    /// The groups of instance `id`, whether or not they exist.
    pub fn open(id: &str) -> Cgroup {
        Cgroup {
            hierarchies: Hierarchies::get(),
            id: id.to_string(),
        }
    }

    /// Creates the groups of instance `id` with `limits` applied. On error nothing is left.
    /// `create`, then `hold`, with no moment between them at which a sweeper could take the
    /// new groups for a leftover: the maker holds the parent of all groups shared meanwhile
    /// ([`Cgroup::remove_if_leftover`]).
    pub fn create_held(
        id: &str,
        limits: &Limits,
    ) -> Result<(Cgroup, Option<OwnedFd>), CgroupError> {
        let making = lock_parent(rustix::fs::FlockOperation::LockShared);
        let group = Cgroup::create(id, limits)?;
        let held = group.hold();
        drop(making);
        Ok((group, held))
    }

    pub fn create(id: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let group = Cgroup::open(id);
        let h = group.hierarchies;
        let result = (|| {
            if let Some(v2) = &h.v2 {
                let wanted: Vec<&str> = ["memory", "pids", "cpu"]
                    .into_iter()
                    .filter(|c| h.v2_has(c))
                    .collect();
                let dir = make_dir(v2, id, &wanted)?;
                group.limit_v2(&dir, limits)?;
                if h.v1_devices.is_none() {
                    // On the parent of every sandbox's group, once (see `devices::attach_v2`).
                    crate::devices::attach_v2(&v2.join(PARENT))?;
                }
            }
            match &h.v1_devices {
                Some(root) => {
                    let dir = make_dir(root, id, &[])?;
                    crate::devices::limit_v1(&dir).map_err(io_err(&dir))?;
                }
                None if h.v2.is_none() => return Err(CgroupError::NoDeviceCgroup),
                None => {}
            }
            if !h.v2_has("memory") {
                let root = h.v1_memory.as_ref().ok_or(CgroupError::Unsupported {
                    limit: "memory",
                    controller: "memory",
                })?;
                let dir = make_dir(root, id, &[])?;
                let bytes = (limits.memory_mb * 1024 * 1024).to_string();
                write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                // Without this, a host with swap lets the sandbox swap past its limit.
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &bytes)?;
                }
            }
            if !h.v2_has("pids") {
                let root = h.v1_pids.as_ref().ok_or(CgroupError::Unsupported {
                    limit: "pids",
                    controller: "pids",
                })?;
                let dir = make_dir(root, id, &[])?;
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
            if limits.vcpus > 0.0 && !h.v2_has("cpu") {
                let root = h.v1_cpu.as_ref().ok_or(CgroupError::Unsupported {
                    limit: "cpu",
                    controller: "cpu",
                })?;
                let dir = make_dir(root, id, &[])?;
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(
                    &dir.join("cpu.cfs_quota_us"),
                    &cpu_quota(limits.vcpus).to_string(),
                )?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = group.destroy();
            return Err(e);
        }
        Ok(group)
    }

    fn limit_v2(&self, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
        let h = self.hierarchies;
        if h.v2_has("memory") {
            write(
                &dir.join("memory.max"),
                &(limits.memory_mb * 1024 * 1024).to_string(),
            )?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        if h.v2_has("pids") {
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
        }
        if h.v2_has("cpu") && limits.vcpus > 0.0 {
            write(
                &dir.join("cpu.max"),
                &format!("{} {CPU_PERIOD_US}", cpu_quota(limits.vcpus)),
            )?;
        }
        Ok(())
    }

    /// This instance's directory in every hierarchy where it exists.
    fn dirs(&self) -> Vec<PathBuf> {
        self.hierarchies
            .roots()
            .into_iter()
            .map(|root| root.join(PARENT).join(&self.id))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// `cgroup.procs` of every group, opened for writing: a process joins all of them by
    /// writing "0" to each (done between fork and exec, where paths are no longer reachable).
    pub fn open_procs_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.dirs()
            .into_iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                rustix::fs::open(&p, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| io_err(&p)(e.into()))
            })
            .collect()
    }

    /// How long ago the newest of the group's directories was made (`None` if it has none).
    pub fn age(&self) -> Option<std::time::Duration> {
        self.dirs()
            .iter()
            .filter_map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
            .filter_map(|t| t.elapsed().ok())
            .min()
    }

    /// Whether a process has ever been in the groups: a high-water mark the kernel keeps is
    /// above zero — the pids controller's `pids.peak`, memory's `memory.peak` (v2) or
    /// `memory.max_usage_in_bytes` (v1) — or the group has used CPU time (`cpu.stat`, in every
    /// v2 group). An empty group that was used is a leftover whatever its age; one never used
    /// may be a sandbox still booting. `None` where the kernel keeps none of these.
    pub fn was_used(&self) -> Option<bool> {
        let mut marks: Vec<u64> = Vec::new();
        for dir in self.dirs() {
            for file in ["pids.peak", "memory.peak", "memory.max_usage_in_bytes"] {
                if let Some(n) = std::fs::read_to_string(dir.join(file))
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                {
                    marks.push(n);
                }
            }
            if let Some(usec) =
                std::fs::read_to_string(dir.join("cpu.stat"))
                    .ok()
                    .and_then(|stat| {
                        stat.lines()
                            .find_map(|l| l.strip_prefix("usage_usec "))
                            .and_then(|v| v.trim().parse().ok())
                    })
            {
                marks.push(usec);
            }
        }
        if marks.is_empty() {
            None
        } else {
            Some(marks.iter().any(|&m| m > 0))
        }
    }

    /// Marks the groups as this process's while the returned lock lives (a shared `flock` on
    /// the first directory): a sweep of ended sandboxes from another process leaves a held
    /// group alone even when it is empty, as it is for an instant after the sandbox's init
    /// exits and before its owner reads the OOM count and removes it. Taken before the init
    /// joins, so a group that was used and is not held has no owner left.
    pub fn hold(&self) -> Option<OwnedFd> {
        let dir = self.dirs().into_iter().next()?;
        let fd = rustix::fs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockShared).ok()?;
        Some(fd)
    }

    /// Removes the groups if they are what an ended sandbox left: empty, not held by a live
    /// owner ([`Cgroup::hold`]), and either used (their sandbox ran and ended) or not being
    /// made (a maker holds the parent of all groups from before it makes a group until it
    /// holds it, [`Cgroup::create_held`]; checked under that lock, so no maker can slip in)
    /// and older than [`UNLOCKED_MAKER_GRACE`], or, when some group is being made, older than
    /// [`UNHELD_GRACE`]. Never kills: a group a
    /// process joined meanwhile is kept. Returns whether the groups were removed.
    pub fn remove_if_leftover(&self) -> bool {
        let unmade = lock_parent(rustix::fs::FlockOperation::NonBlockingLockExclusive);
        let leftover = self.pids().is_empty()
            && !self.is_held()
            && (self.was_used() == Some(true)
                || self.age().is_some_and(|age| {
                    (unmade.is_some() && age >= UNLOCKED_MAKER_GRACE) || age >= UNHELD_GRACE
                }));
        leftover
            && self
                .dirs()
                .iter()
                .all(|dir| match std::fs::remove_dir(dir) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                })
    }

    /// Whether a live process holds the groups ([`Cgroup::hold`]).
    pub fn is_held(&self) -> bool {
        let Some(dir) = self.dirs().into_iter().next() else {
            return false;
        };
        let Ok(fd) = rustix::fs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    }

    /// Processes in any of the groups.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The bytes of the sandbox's memory that are files on in-memory filesystems (tmpfs):
    /// `shmem` in `memory.stat` (v1: `total_shmem`, with its children).
    pub fn shmem_bytes(&self) -> Option<u64> {
        let h = self.hierarchies;
        let (root, key) = if h.v2_has("memory") {
            (h.v2.as_ref(), "shmem ")
        } else {
            (h.v1_memory.as_ref(), "total_shmem ")
        };
        std::fs::read_to_string(root?.join(PARENT).join(&self.id).join("memory.stat"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|n| n.trim().parse().ok()))
    }

    /// How many processes the kernel's OOM killer has killed in this sandbox so far.
    pub fn oom_kills(&self) -> u64 {
        let h = self.hierarchies;
        let (root, file) = if h.v2_has("memory") {
            (h.v2.as_ref(), "memory.events")
        } else {
            (h.v1_memory.as_ref(), "memory.oom_control")
        };
        let Some(root) = root else { return 0 };
        std::fs::read_to_string(root.join(PARENT).join(&self.id).join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Kills every process in the groups: `cgroup.kill` where v2 has it, else SIGKILL to each
    /// listed process until none is left.
    pub fn kill_all(&self) {
        if let Some(v2) = &self.hierarchies.v2 {
            let kill = v2.join(PARENT).join(&self.id).join("cgroup.kill");
            if kill.exists() && std::fs::write(&kill, "1").is_ok() {
                return;
            }
        }
        for pid in self.pids() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Kills what is left and removes the groups. Removing a group that does not exist is fine.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        // Usually the sandbox's init is gone and its pid namespace with it, so the groups are
        // empty: remove them straight away, and kill only when one is still busy.
        let mut dirs = self.dirs();
        while !dirs.is_empty() {
            let mut busy = Vec::new();
            for dir in dirs {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy.push(dir),
                    Err(e) => return Err(io_err(&dir)(e)),
                }
            }
            if busy.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy {
                    path: busy[0].display().to_string(),
                });
            }
            // Again each round: a process forked between a listing and its kill survives it;
            // rmdir can also fail for a moment after the last process exited.
            self.kill_all();
            std::thread::sleep(Duration::from_millis(2));
            dirs = busy;
        }
        Ok(())
    }

    /// The v2 group's directory, where the freezer is (`cgroup.freeze`).
    fn v2_dir(&self) -> Option<PathBuf> {
        let dir = self.hierarchies.v2.as_ref()?.join(PARENT).join(&self.id);
        dir.join("cgroup.freeze").exists().then_some(dir)
    }

    /// Freezes every process of the sandbox and waits until the kernel reports them frozen
    /// (each stops at its next return to user space, so no write is half done). The caller
    /// thaws with `thaw`, also on error.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let dir = self.v2_dir().ok_or(CgroupError::NoFreezer)?;
        write(&dir.join("cgroup.freeze"), "1")?;
        let events = dir.join("cgroup.events");
        let deadline = Instant::now() + FREEZE_WAIT;
        loop {
            let text = std::fs::read_to_string(&events).map_err(io_err(&events))?;
            if text.lines().any(|l| l.trim() == "frozen 1") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.thaw();
                return Err(CgroupError::FreezeTimeout {
                    path: dir.display().to_string(),
                    waited: FREEZE_WAIT,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Whether the group is frozen (or being frozen).
    pub fn is_frozen(&self) -> bool {
        let Some(v2) = &self.hierarchies.v2 else {
            return false;
        };
        std::fs::read_to_string(v2.join(PARENT).join(&self.id).join("cgroup.freeze"))
            .is_ok_and(|t| t.trim() == "1")
    }

    /// Lets the sandbox's processes run again; a group not frozen (or gone) is left as it is.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let Some(dir) = self.v2_dir() else {
            return Ok(());
        };
        let file = dir.join("cgroup.freeze");
        if std::fs::read_to_string(&file).is_ok_and(|t| t.trim() == "0") {
            return Ok(());
        }
        write(&file, "0")
    }

    /// Instance ids that have a group in any hierarchy.
    pub fn list_ids() -> Vec<String> {
        let mut ids: Vec<String> = Hierarchies::get()
            .roots()
            .iter()
            .filter_map(|root| std::fs::read_dir(root.join(PARENT)).ok())
            .flat_map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Whether memory and pids limits can be enforced here (the backend's readiness probe).
pub fn can_limit_memory_and_pids() -> Result<(), String> {
    let h = Hierarchies::get();
    for (controller, v1) in [("memory", &h.v1_memory), ("pids", &h.v1_pids)] {
        if !h.v2_has(controller) && v1.is_none() {
            return Err(format!(
                "no cgroup {controller} controller is mounted (v1 or v2)"
            ));
        }
    }
    Ok(())
}

/// Whether the device allow-list can be enforced here (the backend's readiness probe).
pub fn can_limit_devices() -> Result<(), String> {
    let h = Hierarchies::get();
    if h.v1_devices.is_none() && h.v2.is_none() {
        return Err(CgroupError::NoDeviceCgroup.to_string());
    }
    Ok(())
}

fn cpu_quota(vcpus: f64) -> u64 {
    ((vcpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

/// Creates `root/agentkernel/<id>`; in v2, first enables `controllers` for the children of the
/// root and of `agentkernel/`.
/// A lock on the parent of every sandbox's group in the first hierarchy (made if missing):
/// makers hold it shared from before they make a group until they hold the group.
fn lock_parent(op: rustix::fs::FlockOperation) -> Option<OwnedFd> {
    let root = Hierarchies::get().roots().into_iter().next()?;
    let parent = root.join(PARENT);
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let fd = rustix::fs::open(
        &parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    rustix::fs::flock(&fd, op).ok()?;
    Some(fd)
}

fn make_dir(root: &Path, id: &str, controllers: &[&str]) -> Result<PathBuf, CgroupError> {
    let parent = root.join(PARENT);
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(&parent)(e)),
    }
    if !controllers.is_empty() {
        let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
        for dir in [root, parent.as_path()] {
            let control = dir.join("cgroup.subtree_control");
            let current = std::fs::read_to_string(&control).unwrap_or_default();
            if controllers
                .iter()
                .any(|c| !current.split_whitespace().any(|x| x == *c))
            {
                write(&control, enable.trim_end())?;
            }
        }
    }
    let dir = parent.join(id);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(io_err(&dir)(e)),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            memory_mb: 64,
            pids: 16,
            vcpus: 0.0,
            disk_mb: 64,
            disk_explicit: false,
        }
    }

    /// The sweep's rule on real groups (run as root, like the suite): a held group stays, a
    /// group never used stays while some maker is between making and holding one, and goes
    /// once none is — young as it is.
    #[test]
    fn a_group_goes_only_when_nobody_holds_or_makes_it() {
        let id = format!("unit-sweep-{}", std::process::id());
        let (group, held) = Cgroup::create_held(&id, &limits()).expect("make a group");
        assert!(held.is_some(), "the maker holds its group");
        assert!(!group.remove_if_leftover(), "a held group was taken");
        drop(held);
        // Another maker is between making a group and holding it.
        let making = lock_parent(rustix::fs::FlockOperation::LockShared).expect("parent lock");
        assert!(
            !group.remove_if_leftover(),
            "taken while a group was being made"
        );
        drop(making);
        // It goes once older than UNLOCKED_MAKER_GRACE; other tests make groups meanwhile (for
        // milliseconds each), and past UNHELD_GRACE it goes even then.
        let deadline = Instant::now() + UNHELD_GRACE + Duration::from_secs(1);
        while !group.remove_if_leftover() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(group.age().is_none(), "its directories are gone");
    }
}
