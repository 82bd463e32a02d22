//! Starting a command inside a running sandbox by joining its init's namespaces and cgroups,
//! the way `nsenter` does, then hardening the process before it execs.

use crate::security::SecurityPlan;
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// The init whose namespaces a command joins.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub pid: u32,
    pub start_time: u64,
}

/// How the command's standard streams are connected.
pub enum StdioMode {
    /// stdout and stderr are pipes read by the caller; stdin a pipe when `stdin` is set, else
    /// /dev/null. Pipes, not the caller's terminal: a sandboxed process holding the caller's
    /// tty could push keystrokes into it (TIOCSTI).
    Pipes { stdin: bool },
    /// All three on this pseudo-terminal slave, which becomes the command's controlling tty.
    Pty(OwnedFd),
}

pub struct ExecPlan<'a> {
    pub target: Target,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub workdir: &'a str,
    pub security: &'a SecurityPlan,
    pub cgroup_procs: &'a [OwnedFd],
    pub stdio: StdioMode,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("the sandbox is not running (its init process is gone): start it again")]
    NotRunning,
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("command not executable: {0}: permission denied")]
    NotExecutable(String),
    #[error("cannot start {cmd} in the sandbox: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("no command given: say what to run after `--`")]
    NoCommand,
}

const NAMESPACES: [(&str, libc::c_int); 5] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// Spawns the command. Must be called from a thread that may change its pid namespace for
/// children briefly (the CLI's main thread).
pub fn spawn(plan: ExecPlan<'_>) -> Result<Child, ExecError> {
    let program = plan.argv.first().ok_or(ExecError::NoCommand)?.clone();
    let pid = plan.target.pid;
    let open_ns = |name: &str| -> Result<OwnedFd, ExecError> {
        rustix::fs::open(
            format!("/proc/{pid}/ns/{name}").as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|_| ExecError::NotRunning)
    };
    let pid_ns = open_ns("pid")?;
    let mut ns_fds = Vec::with_capacity(NAMESPACES.len());
    for (name, flag) in NAMESPACES {
        ns_fds.push((open_ns(name)?, flag));
    }
    // Checked after opening: the descriptors now pin the namespaces of the process we verified,
    // even if the pid were recycled a moment later.
    if !crate::proc::is_alive(pid, plan.target.start_time) {
        return Err(ExecError::NotRunning);
    }
    let own_pid_ns = rustix::fs::open(
        "/proc/self/ns/pid",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| ExecError::Spawn {
        cmd: program.clone(),
        source: e.into(),
    })?;

    let mut cmd = Command::new(&program);
    cmd.args(&plan.argv[1..]);
    cmd.env_clear();
    cmd.envs(plan.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let tty_fd = match plan.stdio {
        StdioMode::Pipes { stdin } => {
            cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
        StdioMode::Pty(slave) => {
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| ExecError::Spawn {
                        cmd: program.clone(),
                        source: e,
                    })
            };
            cmd.stdin(dup(&slave)?)
                .stdout(dup(&slave)?)
                .stderr(Stdio::from(slave));
            Some(0)
        }
    };
    let workdir = std::ffi::CString::new(plan.workdir).map_err(|e| ExecError::Spawn {
        cmd: program.clone(),
        source: std::io::Error::other(e),
    })?;
    // The closure must be 'static, but it only runs inside `cmd.spawn()` below, while `plan`
    // (and with it the security plan and descriptors) is alive: pass them as raw values.
    let security_addr = plan.security as *const SecurityPlan as usize;
    let cgroup_procs: Vec<i32> = plan.cgroup_procs.iter().map(|fd| fd.as_raw_fd()).collect();
    let ns_raw: Vec<(i32, libc::c_int)> = ns_fds
        .iter()
        .map(|(fd, flag)| (fd.as_raw_fd(), *flag))
        .collect();
    // SAFETY: the closure runs in the forked child before exec. The caller is single-threaded
    // (documented), so allocation there cannot deadlock; it only makes system calls on
    // descriptors and data prepared above.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &cgroup_procs {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, flag) in &ns_raw {
                if libc::setns(*fd, *flag) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::chdir(workdir.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            if let Some(fd) = tty_fd
                && libc::ioctl(fd, libc::TIOCSCTTY, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: see `security_addr` above: the plan outlives the spawn.
            let security = &*(security_addr as *const SecurityPlan);
            security
                .apply()
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    // Children of this thread are created in the sandbox's pid namespace until we switch back.
    rustix::thread::move_into_link_name_space(
        pid_ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    )
    .map_err(|e| ExecError::Spawn {
        cmd: program.clone(),
        source: e.into(),
    })?;
    let spawned = cmd.spawn();
    let _ = rustix::thread::move_into_link_name_space(
        own_pid_ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    );
    drop(ns_fds);
    spawned.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ExecError::NotFound(program.clone()),
        std::io::ErrorKind::PermissionDenied => ExecError::NotExecutable(program.clone()),
        _ if e.raw_os_error() == Some(libc::ENOEXEC) => ExecError::NotExecutable(program.clone()),
        _ => ExecError::Spawn {
            cmd: program.clone(),
            source: e,
        },
    })
}
