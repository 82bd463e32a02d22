//! Starting a process with `clone(CLONE_VM | CLONE_VFORK)`, as posix_spawn does, but with the
//! steps that put it into a sandbox between the clone and the exec.
//!
//! std's `Command` forks as soon as a `pre_exec` hook is set: the child gets a copy of the
//! caller's page tables and the exec then tears them down, ~150-250 µs of every command. Here the
//! child borrows the caller's memory (the caller is suspended until the child has exec'd or
//! died) and runs on its own stack. Everything it needs is prepared beforehand; it only makes
//! system calls and reads what the caller built, and reports a failure as (step, errno) on a
//! close-on-exec pipe.

use rustix::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ffi::{CString, c_char, c_int, c_void};

/// What the child does before exec, in order.
pub struct ChildSteps<'a> {
    /// `cgroup.procs` files to write "0" to.
    pub cgroup_procs: &'a [OwnedFd],
    /// Namespaces to join: (descriptor, CLONE_NEW* flag).
    pub namespaces: &'a [(OwnedFd, c_int)],
    pub workdir: &'a CString,
    /// Descriptors that become 0, 1 and 2.
    pub stdio: [c_int; 3],
    /// Make fd 0 the controlling terminal (a pty slave).
    pub controlling_tty: bool,
    /// Start the command with no signal blocked, rather than with the caller's mask (a sandbox
    /// init blocks the signals it reads through a signalfd).
    pub unblock_signals: bool,
    /// Runs last before exec (credentials, Landlock, seccomp).
    pub harden: &'a (dyn Fn() -> std::io::Result<()> + Sync),
    /// Paths to try in order (the PATH search, done by the caller).
    pub candidates: &'a [CString],
    pub argv: &'a [*const c_char],
    pub envp: &'a [*const c_char],
}

/// Which step failed in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    JoinCgroup,
    JoinNamespace,
    Workdir,
    Terminal,
    Stdio,
    Harden,
    /// Every candidate failed; the errno is the most telling one (EACCES over ENOENT).
    Exec,
}

impl Step {
    const ALL: [Step; 7] = [
        Step::JoinCgroup,
        Step::JoinNamespace,
        Step::Workdir,
        Step::Terminal,
        Step::Stdio,
        Step::Harden,
        Step::Exec,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Step::JoinCgroup => "join the sandbox's cgroups",
            Step::JoinNamespace => "join the sandbox's namespaces",
            Step::Workdir => "enter the working directory",
            Step::Terminal => "take the terminal",
            Step::Stdio => "connect standard streams",
            Step::Harden => "apply the security policy",
            Step::Exec => "exec",
        }
    }
}

/// A failed spawn: the step and the OS error.
#[derive(Debug)]
pub struct SpawnError {
    pub step: Step,
    pub error: std::io::Error,
}

/// A started child: its pid and a pidfd (readable once it exits).
pub struct Started {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

const STACK_SIZE: usize = 256 * 1024;

struct Shared<'a> {
    steps: &'a ChildSteps<'a>,
    report: c_int,
    /// The caller's signal mask, restored just before exec.
    mask: libc::sigset_t,
}

/// Clones the child and waits until it has exec'd or failed.
pub fn spawn(steps: &ChildSteps<'_>) -> Result<Started, SpawnError> {
    let early = |error: std::io::Error| SpawnError {
        step: Step::Exec,
        error,
    };
    let (report_r, report_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| early(e.into()))?;
    let mut stack = vec![0u8; STACK_SIZE];
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: block every signal while the child borrows this address space, so no handler of
    // the caller runs on the child's stack; the old mask is saved for the child to restore.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut mask);
    }
    let shared = Shared {
        steps,
        report: report_w.as_raw_fd(),
        mask,
    };
    let mut pidfd: c_int = -1;
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + STACK_SIZE) & !15;
    // SAFETY: CLONE_VM | CLONE_VFORK suspends this thread until the child execs or exits, so
    // `shared`, `stack` and everything `steps` borrows outlive the child's use of them. The
    // child runs `child_main` on `stack`; CLONE_PIDFD stores a pidfd in `pidfd`.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&shared as *const Shared<'_>).cast_mut().cast(),
            &mut pidfd as *mut c_int,
        )
    };
    let clone_error = std::io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) };
    drop(report_w);
    drop(stack);
    if pid < 0 {
        return Err(early(clone_error));
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut buf = [0u8; 8];
    let n = rustix::io::read(&report_r, &mut buf).unwrap_or(0);
    if n == 8 {
        // The child failed before exec and exited: reap it.
        let mut status = 0;
        // SAFETY: waitpid on our own child; `status` is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let step = Step::ALL[(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize)
            .min(Step::ALL.len() - 1)];
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        return Err(SpawnError {
            step,
            error: std::io::Error::from_raw_os_error(errno),
        });
    }
    Ok(Started {
        pid: pid as u32,
        pidfd,
    })
}

fn errno() -> c_int {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Reports a failed step and exits the child.
fn fail(shared: &Shared<'_>, step: Step, err: c_int) -> ! {
    let index = Step::ALL
        .iter()
        .position(|s| *s == step)
        .unwrap_or(Step::ALL.len() - 1) as u32;
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&index.to_ne_bytes());
    msg[4..].copy_from_slice(&err.to_ne_bytes());
    // SAFETY: write(2) of a stack buffer, then _exit, which runs nothing of the caller's.
    unsafe {
        libc::write(shared.report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Shared` the suspended caller keeps alive (see `spawn`).
    let shared = unsafe { &*(arg as *const Shared<'_>) };
    let steps = shared.steps;
    // SAFETY: every call below is a plain system call on descriptors and buffers prepared by
    // the caller, who is suspended until this child execs or exits.
    unsafe {
        // The caller ignores SIGPIPE (Rust's runtime does); the command must not inherit that.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        for fd in steps.cgroup_procs {
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                fail(shared, Step::JoinCgroup, errno());
            }
        }
        for (fd, flag) in steps.namespaces {
            if libc::setns(fd.as_raw_fd(), *flag) != 0 {
                fail(shared, Step::JoinNamespace, errno());
            }
        }
        if libc::chdir(steps.workdir.as_ptr()) != 0 {
            fail(shared, Step::Workdir, errno());
        }
        libc::setsid();
        for (target, fd) in steps.stdio.iter().enumerate() {
            // dup2 onto itself would keep close-on-exec; dup3 with no flags clears it.
            let target = target as c_int;
            let r = if *fd == target {
                libc::fcntl(target, libc::F_SETFD, 0)
            } else {
                libc::dup3(*fd, target, 0)
            };
            if r < 0 {
                fail(shared, Step::Stdio, errno());
            }
        }
        if steps.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail(shared, Step::Terminal, errno());
        }
        if let Err(e) = (steps.harden)() {
            fail(
                shared,
                Step::Harden,
                e.raw_os_error().unwrap_or(libc::EPERM),
            );
        }
        if steps.unblock_signals {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        } else {
            libc::pthread_sigmask(libc::SIG_SETMASK, &shared.mask, std::ptr::null_mut());
        }
        let mut best = libc::ENOENT;
        for path in steps.candidates {
            libc::execve(path.as_ptr(), steps.argv.as_ptr(), steps.envp.as_ptr());
            let e = errno();
            match e {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => best = libc::EACCES,
                other => {
                    best = other;
                    break;
                }
            }
        }
        fail(shared, Step::Exec, best)
    }
}
