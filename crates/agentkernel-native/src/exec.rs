//! Starting a command inside a running sandbox by joining its init's namespaces and cgroups,
//! the way `nsenter` does, then hardening the process before it execs.

use crate::security::SecurityPlan;
use rustix::fd::{AsFd, AsRawFd, OwnedFd};

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
pub fn spawn(plan: ExecPlan<'_>) -> Result<Spawned, ExecError> {
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

    let cstr = |text: &str| {
        std::ffi::CString::new(text).map_err(|_| ExecError::Spawn {
            cmd: program.clone(),
            source: std::io::Error::other(format!("{text:?} contains a NUL byte")),
        })
    };
    let argv: Vec<std::ffi::CString> = plan
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<std::ffi::CString> = plan
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);
    let path = plan
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let candidates: Vec<std::ffi::CString> = candidates(&program, path)
        .iter()
        .map(|c| cstr(c))
        .collect::<Result<_, _>>()?;
    let workdir = cstr(plan.workdir)?;
    let io_err = |e: std::io::Error| ExecError::Spawn {
        cmd: program.clone(),
        source: e,
    };

    // The caller's ends of the standard streams, and the child's.
    let mut spawned = Spawned {
        pid: 0,
        pidfd: None,
        stdin: None,
        stdout: None,
        stderr: None,
    };
    let child_ends: [OwnedFd; 3];
    let controlling_tty = match plan.stdio {
        StdioMode::Pipes { stdin } => {
            let pipe = || {
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| io_err(e.into()))
            };
            let input: OwnedFd = if stdin {
                let (r, w) = pipe()?;
                spawned.stdin = Some(std::fs::File::from(w));
                r
            } else {
                std::fs::File::open("/dev/null").map_err(io_err)?.into()
            };
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            spawned.stdout = Some(out_r);
            spawned.stderr = Some(err_r);
            child_ends = [input, out_w, err_w];
            false
        }
        StdioMode::Pty(slave) => {
            child_ends = [
                slave.try_clone().map_err(io_err)?,
                slave.try_clone().map_err(io_err)?,
                slave,
            ];
            true
        }
    };
    let harden = || plan.security.apply();
    let steps = crate::vfork::ChildSteps {
        cgroup_procs: plan.cgroup_procs,
        namespaces: &ns_fds,
        workdir: &workdir,
        stdio: [
            child_ends[0].as_raw_fd(),
            child_ends[1].as_raw_fd(),
            child_ends[2].as_raw_fd(),
        ],
        controlling_tty,
        harden: &harden,
        candidates: &candidates,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
    };
    // Children of this thread are created in the sandbox's pid namespace until we switch back.
    rustix::thread::move_into_link_name_space(
        pid_ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    )
    .map_err(|e| io_err(e.into()))?;
    let started = crate::vfork::spawn(&steps);
    let _ = rustix::thread::move_into_link_name_space(
        own_pid_ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    );
    drop(child_ends);
    match started {
        Ok(started) => {
            spawned.pid = started.pid;
            spawned.pidfd = Some(started.pidfd);
            Ok(spawned)
        }
        Err(e) if e.step == crate::vfork::Step::Exec => Err(match e.error.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG) => {
                ExecError::NotFound(program.clone())
            }
            Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) => {
                ExecError::NotExecutable(program.clone())
            }
            _ => io_err(e.error),
        }),
        Err(e) => Err(ExecError::Spawn {
            cmd: program.clone(),
            source: std::io::Error::new(
                e.error.kind(),
                format!("cannot {}: {}", e.step.describe(), e.error),
            ),
        }),
    }
}

/// The default search path when the command's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The paths to try for `program`, as execvp would: itself when it has a slash, else each
/// directory of `path` (an empty entry is the working directory).
fn candidates(program: &str, path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    path.split(':')
        .map(|dir| {
            if dir.is_empty() {
                program.to_string()
            } else {
                format!("{}/{program}", dir.trim_end_matches('/'))
            }
        })
        .collect()
}

fn null_terminated(strings: &[std::ffi::CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A command started in a sandbox.
pub struct Spawned {
    pub pid: u32,
    /// Readable once the command has exited.
    pub pidfd: Option<OwnedFd>,
    pub stdin: Option<std::fs::File>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl Spawned {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the command to exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, 0) };
            if r >= 0 {
                return Ok(std::process::ExitStatus::from_raw(status));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_execvp() {
        assert_eq!(candidates("/bin/sh", "/usr/bin"), ["/bin/sh"]);
        assert_eq!(candidates("./run", "/usr/bin"), ["./run"]);
        assert_eq!(
            candidates("ls", "/usr/bin/:/bin::"),
            ["/usr/bin/ls", "/bin/ls", "ls", "ls"]
        );
    }
}
