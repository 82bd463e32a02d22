//! The command of a throwaway sandbox (`run`), started by the sandbox's init itself, the way
//! bwrap's PID 1 starts its command.
//!
//! A command started in a running sandbox (`exec`) joins the init's namespaces and cgroups from
//! outside (`exec.rs`). For `run` the init is already inside all of them when its setup ends, so
//! it starts the command there: no namespace descriptors to open, no setns, no cgroup
//! migration, and no second round trip to the caller. The caller keeps its ends of the
//! command's pipes, learns the exit status from the init, and sends signals through the init.
//!
//! Only an init cloned directly by the caller (`boot::direct`) starts a command this way: the
//! boot helper's protocol carries no command, and a networked sandbox must have its namespace
//! routed to the egress proxy (by the engine, after the boot) before anything runs in it.

use crate::NativeError;
use crate::exec::{CommandLine, ExecError, Joining};
use crate::files::FileError;
use crate::security::SecurityPlan;
use agentkernel_core::policy::Policy;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;

/// What the init needs to start the command, prepared by the caller before the clone.
pub struct FirstCommand<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub workdir: &'a str,
    pub policy: &'a Policy,
    /// The command's ends of its stdin, stdout and stderr.
    pub stdio: [RawFd; 3],
}

/// Marks a report of the init whose setup succeeded but whose command could not start; the
/// rest is `<kind>:<message>`.
pub(crate) const FAILED_TO_START: char = '\u{1}';

/// Why the command could not start, as the caller reports it (126, 127, or 125 with the
/// reason).
enum Failure {
    NotFound,
    NotExecutable,
    NoWorkdir,
    Other,
}

impl Failure {
    fn tag(&self) -> &'static str {
        match self {
            Failure::NotFound => "not-found",
            Failure::NotExecutable => "not-executable",
            Failure::NoWorkdir => "no-workdir",
            Failure::Other => "other",
        }
    }

    fn from_tag(tag: &str) -> Failure {
        [
            Failure::NotFound,
            Failure::NotExecutable,
            Failure::NoWorkdir,
        ]
        .into_iter()
        .find(|f| f.tag() == tag)
        .unwrap_or(Failure::Other)
    }
}

/// In the init, once its setup is done: starts the command as its child. Returns its pid, or
/// the report for the caller (`FAILED_TO_START`…).
pub(crate) fn start_in_init(first: &FirstCommand<'_>) -> Result<libc::pid_t, String> {
    let report =
        |failure: Failure, message: String| format!("{FAILED_TO_START}{}:{message}", failure.tag());
    let command = CommandLine::new(first.argv, first.env, first.workdir)
        .map_err(|e| report(Failure::Other, e.to_string()))?;
    // The init has pivoted into the sandbox's root: its "/" is the root that `exec` opens
    // through /proc/PID/root from outside.
    let root = rustix::fs::open(
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| report(Failure::Other, format!("open the sandbox's root: {e}")))?;
    crate::files::check_workdir(&root, first.workdir)
        .map_err(|e| report(Failure::NoWorkdir, e.to_string()))?;
    let security = SecurityPlan::prepare(first.policy, &root)
        .map_err(|e| report(Failure::Other, e.to_string()))?;
    let started = command
        .start(&Joining {
            cgroup_procs: &[],
            namespaces: &[],
            stdio: first.stdio,
            controlling_tty: false,
            from_init: true,
            security: &security,
        })
        .map_err(|e| match e {
            ExecError::NotFound(_) => report(Failure::NotFound, e.to_string()),
            ExecError::NotExecutable(_) => report(Failure::NotExecutable, e.to_string()),
            other => report(Failure::Other, other.to_string()),
        })?;
    Ok(started.pid as libc::pid_t)
}

/// The caller's error for a report that starts with `FAILED_TO_START`, or None for any other
/// report (a failed setup).
pub(crate) fn start_failure(report: &str, first: &FirstCommand<'_>) -> Option<NativeError> {
    let rest = report.strip_prefix(FAILED_TO_START)?;
    let (tag, message) = rest.split_once(':').unwrap_or(("other", rest));
    let program = first.argv.first().cloned().unwrap_or_default();
    Some(match Failure::from_tag(tag) {
        Failure::NotFound => ExecError::NotFound(program).into(),
        Failure::NotExecutable => ExecError::NotExecutable(program).into(),
        Failure::NoWorkdir => FileError::NoWorkdir(first.workdir.to_string()).into(),
        Failure::Other => ExecError::Spawn {
            cmd: program,
            source: std::io::Error::other(message.to_string()),
        }
        .into(),
    })
}

/// The command as its caller sees it: its pipes, the init's report of its exit, and the
/// lifeline through which signals reach it (`relay::Command`).
pub struct Launched {
    /// The command's pid on the host.
    pub pid: u32,
    pub stdin: Option<std::fs::File>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The init writes the command's wait status here, then closes it.
    pub status: OwnedFd,
    /// Status bytes the init wrote right behind its setup report.
    pub early: Vec<u8>,
    /// The write end of the sandbox's lifeline: signal numbers written here are sent to the
    /// command's process group by the init. Dropping it (with the `Launched`) ends the sandbox.
    pub lifeline: OwnedFd,
}

impl Launched {
    fn send(&self, sig: u8) {
        let _ = rustix::io::write(&self.lifeline, &[sig]);
    }
}

impl crate::relay::Command for Launched {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn take_stdio(&mut self) -> (Option<std::fs::File>, Option<OwnedFd>, Option<OwnedFd>) {
        (self.stdin.take(), self.stdout.take(), self.stderr.take())
    }

    fn exited(&self) -> Option<BorrowedFd<'_>> {
        Some(self.status.as_fd())
    }

    fn signal(&self, sig: i32) {
        if let Ok(sig) = u8::try_from(sig)
            && sig != 0
        {
            self.send(sig);
        }
    }

    fn kill(&self) {
        self.send(libc::SIGKILL as u8);
    }

    /// The status the init reported; a command whose init died before reporting (killed with
    /// its whole sandbox) counts as killed by SIGKILL.
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let mut bytes = std::mem::take(&mut self.early);
        let mut buf = [0u8; 16];
        while bytes.len() < 4 {
            match rustix::io::read(&self.status, &mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let raw = match bytes.get(..4) {
            Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            None => libc::SIGKILL,
        };
        Ok(std::process::ExitStatus::from_raw(raw))
    }
}

/// The init's side of a lifeline byte: sends signal `sig` to the command's process group (it
/// leads its own session), and for SIGKILL to the command itself too, in case it left its
/// group.
pub(crate) fn forward_in_init(command: libc::pid_t, sig: u8) {
    let Some(command) = rustix::process::Pid::from_raw(command) else {
        return;
    };
    if sig as libc::c_int == libc::SIGKILL {
        agentkernel_sys::signal::kill_group(command);
    } else {
        agentkernel_sys::signal::signal_group(command, sig as libc::c_int);
    }
}

/// The host pid of the init's only child (the command), from the kernel's list of its
/// children; 0 when it cannot be read.
pub(crate) fn child_of(init: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(0)
}
