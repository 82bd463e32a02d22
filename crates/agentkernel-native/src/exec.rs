//! Starting a command inside a running sandbox by joining its init's namespaces and cgroups,
//! the way `nsenter` does, then hardening the process before it execs.

use crate::security::SecurityPlan;
use rustix::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::ffi::CString;

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
    let command = CommandLine::new(plan.argv, plan.env, plan.workdir)?;
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
    if !agentkernel_sys::proc::is_alive(pid, plan.target.start_time) {
        return Err(ExecError::NotRunning);
    }
    let own_pid_ns = rustix::fs::open(
        "/proc/self/ns/pid",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| command.spawn_error(e.into()))?;

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
            let pipes = StdioPipes::new(stdin).map_err(|e| command.spawn_error(e))?;
            spawned.stdin = pipes.stdin.map(std::fs::File::from);
            spawned.stdout = Some(pipes.stdout);
            spawned.stderr = Some(pipes.stderr);
            child_ends = pipes.child_ends;
            false
        }
        StdioMode::Pty(slave) => {
            let copy = |fd: &OwnedFd| fd.try_clone().map_err(|e| command.spawn_error(e));
            child_ends = [copy(&slave)?, copy(&slave)?, slave];
            true
        }
    };
    // Children of this thread are created in the sandbox's pid namespace until we switch back.
    rustix::thread::move_into_link_name_space(
        pid_ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    )
    .map_err(|e| command.spawn_error(e.into()))?;
    let started = command.start(&Joining {
        cgroup_procs: plan.cgroup_procs,
        namespaces: &ns_fds,
        stdio: [
            child_ends[0].as_raw_fd(),
            child_ends[1].as_raw_fd(),
            child_ends[2].as_raw_fd(),
        ],
        controlling_tty,
        from_init: false,
        security: plan.security,
    });
    let _ = rustix::thread::move_into_link_name_space(
        own_pid_ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    );
    drop(child_ends);
    let started = started?;
    spawned.pid = started.pid;
    spawned.pidfd = Some(started.pidfd);
    Ok(spawned)
}

/// The pipes of a command's standard streams: the caller's ends and the command's
/// (stdin, stdout, stderr). Without `stdin`, the command reads /dev/null. Pipes, not the
/// caller's terminal: a sandboxed process holding the caller's tty could push keystrokes into
/// it (TIOCSTI).
pub(crate) struct StdioPipes {
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub child_ends: [OwnedFd; 3],
}

impl StdioPipes {
    pub fn new(stdin: bool) -> std::io::Result<StdioPipes> {
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
        let (input, stdin) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            (std::fs::File::open("/dev/null")?.into(), None)
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        Ok(StdioPipes {
            stdin,
            stdout: out_r,
            stderr: err_r,
            child_ends: [input, out_w, err_w],
        })
    }
}

/// What a command's process joins and becomes before it execs.
pub(crate) struct Joining<'a> {
    pub cgroup_procs: &'a [OwnedFd],
    pub namespaces: &'a [(OwnedFd, libc::c_int)],
    /// Descriptors that become 0, 1 and 2.
    pub stdio: [RawFd; 3],
    pub controlling_tty: bool,
    /// The caller is a sandbox init, whose blocked signals the command must not inherit.
    pub from_init: bool,
    pub security: &'a SecurityPlan,
}

/// A command line made ready for exec: C strings, and the paths a PATH search would try.
pub(crate) struct CommandLine {
    pub program: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    candidates: Vec<CString>,
    workdir: CString,
}

impl CommandLine {
    pub fn new(
        argv: &[String],
        env: &[(String, String)],
        workdir: &str,
    ) -> Result<CommandLine, ExecError> {
        let program = argv.first().ok_or(ExecError::NoCommand)?.clone();
        let cstr = |text: &str| {
            CString::new(text).map_err(|_| ExecError::Spawn {
                cmd: program.clone(),
                source: std::io::Error::other(format!("{text:?} contains a NUL byte")),
            })
        };
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH);
        Ok(CommandLine {
            argv: argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|(k, v)| cstr(&format!("{k}={v}")))
                .collect::<Result<_, _>>()?,
            candidates: candidates(&program, path)
                .iter()
                .map(|c| cstr(c))
                .collect::<Result<_, _>>()?,
            workdir: cstr(workdir)?,
            program,
        })
    }

    /// Starts the command as a child of the calling thread (in the pid namespace it has set
    /// for its children), joining and hardening as `joining` says.
    pub fn start(&self, joining: &Joining<'_>) -> Result<crate::vfork::Started, ExecError> {
        let argv = null_terminated(&self.argv);
        let envp = null_terminated(&self.envp);
        let harden = || joining.security.apply();
        let steps = crate::vfork::ChildSteps {
            cgroup_procs: joining.cgroup_procs,
            namespaces: joining.namespaces,
            workdir: &self.workdir,
            stdio: joining.stdio,
            controlling_tty: joining.controlling_tty,
            unblock_signals: joining.from_init,
            harden: &harden,
            candidates: &self.candidates,
            argv: &argv,
            envp: &envp,
        };
        crate::vfork::spawn(&steps).map_err(|e| self.failed(e))
    }

    /// The error for a failed start, with the exit code a shell would give (127 not found,
    /// 126 not executable).
    pub fn failed(&self, e: crate::vfork::SpawnError) -> ExecError {
        if e.step != crate::vfork::Step::Exec {
            return self.spawn_error(std::io::Error::new(
                e.error.kind(),
                format!("cannot {}: {}", e.step.describe(), e.error),
            ));
        }
        match e.error.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG) => {
                ExecError::NotFound(self.program.clone())
            }
            Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) => {
                ExecError::NotExecutable(self.program.clone())
            }
            _ => self.spawn_error(e.error),
        }
    }

    pub fn spawn_error(&self, source: std::io::Error) -> ExecError {
        ExecError::Spawn {
            cmd: self.program.clone(),
            source,
        }
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

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
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
    /// Waits for the command to exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let pid = agentkernel_sys::signal::pid(self.pid).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no process to wait for")
        })?;
        loop {
            match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
                Ok(Some((_, status))) => {
                    return Ok(std::process::ExitStatus::from_raw(status.as_raw()));
                }
                Ok(None) => continue,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
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
