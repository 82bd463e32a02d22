//! Starting a sandbox: clone an init process into new mount, pid, net, ipc and uts namespaces,
//! let it join the sandbox's cgroups, build the root and become the namespace's PID 1.
//!
//! The init only reaps orphans and keeps the namespaces alive; commands are started later by
//! joining its namespaces (`exec.rs`), so `run` and `exec` share one path.

use crate::rootfs::{RootfsPlan, enter_rootfs};
use rustix::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::io::{Read, Write};

/// What the init needs, prepared before the clone.
pub struct BootPlan<'a> {
    pub hostname: &'a str,
    pub rootfs: &'a RootfsPlan,
    /// `cgroup.procs` files opened for writing; the init writes "0" to each.
    pub cgroup_procs: &'a [OwnedFd],
    /// When false (an ephemeral `run`), the init exits as soon as the caller goes away.
    pub detach: bool,
    /// The namespace will get an uplink (pasta): cloud metadata addresses are blocked first.
    /// Without one it has only loopback, and no route to block.
    pub uplink: bool,
}

/// A started sandbox init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booted {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it names
    /// the process uniquely, so a recycled pid is never mistaken for the sandbox.
    pub start_time: u64,
    /// Held by an ephemeral sandbox's caller: when it closes, the init exits.
    pub lifeline: Option<RawFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(
        "cannot create the sandbox's namespaces: {0} (agentkernel's native backend needs root)"
    )]
    Clone(rustix::io::Errno),
    #[error("setting up the sandbox failed: {0}")]
    Setup(String),
    #[error("cannot talk to the sandbox init: {0}")]
    Io(#[from] std::io::Error),
}

/// Clones the init. The caller must be single-threaded: the child runs ordinary Rust code
/// (allocation included) between the clone and its init loop.
pub fn boot(plan: &BootPlan<'_>) -> Result<Booted, BootError> {
    let (status_r, status_w) = pipe()?;
    let (life_r, life_w) = pipe()?;
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD;
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork: the child gets a
    // copy of the address space and continues here. The caller is single-threaded (documented
    // contract), so no lock can be held by another thread at the moment of the copy.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(BootError::Clone(rustix::io::Errno::from_raw_os_error(
            errno(),
        )));
    }
    if pid == 0 {
        drop(status_r);
        drop(life_w);
        child(plan, status_w, life_r);
    }
    drop(status_w);
    drop(life_r);
    let pid = pid as u32;
    let mut report = String::new();
    std::fs::File::from(status_r).read_to_string(&mut report)?;
    if report != "ok" {
        reap(pid);
        let msg = if report.is_empty() {
            "the init exited during setup".to_string()
        } else {
            report
        };
        return Err(BootError::Setup(msg));
    }
    let start_time = crate::proc::start_time(pid)
        .ok_or_else(|| BootError::Setup("the init exited right after setup".into()))?;
    let lifeline = if plan.detach {
        drop(life_w);
        None
    } else {
        // The write end stays open for as long as the caller wants the sandbox; `release`
        // closes it.
        let fd = life_w.as_raw_fd();
        std::mem::forget(life_w);
        Some(fd)
    };
    Ok(Booted {
        pid,
        start_time,
        lifeline,
    })
}

/// Closes an ephemeral sandbox's lifeline: its init exits and the kernel kills every process
/// left in the namespace.
pub fn release(lifeline: RawFd) {
    // SAFETY: `lifeline` is the write end created by `boot` and leaked there for this purpose.
    drop(unsafe { OwnedFd::from_raw_fd(lifeline) });
}

/// Waits for a child init that the caller started (ephemeral sandboxes).
pub fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: plain waitpid on our own child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
}

fn child(plan: &BootPlan<'_>, status_w: OwnedFd, life_r: OwnedFd) -> ! {
    let mut status = std::fs::File::from(status_w);
    match setup(plan) {
        Ok(()) => {}
        Err(msg) => {
            let _ = status.write_all(msg.as_bytes());
            // SAFETY: terminating the forked child without running the parent's atexit state.
            unsafe { libc::_exit(1) };
        }
    }
    let keep = [status.as_raw_fd(), life_r.as_raw_fd()];
    close_other_fds(&keep);
    let _ = status.write_all(b"ok");
    drop(status);
    init_loop(if plan.detach { None } else { Some(life_r) })
}

fn setup(plan: &BootPlan<'_>) -> Result<(), String> {
    block_signals();
    for fd in plan.cgroup_procs {
        rustix::io::write(fd, b"0").map_err(|e| format!("join cgroup: {e}"))?;
    }
    // SAFETY: unshare of the cgroup namespace only changes this process's view of cgroups.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(format!(
            "unshare cgroup namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    enter_rootfs(plan.rootfs).map_err(|e| e.to_string())?;
    rustix::system::sethostname(plan.hostname.as_bytes())
        .map_err(|e| format!("sethostname: {e}"))?;
    crate::net::loopback_up().map_err(|e| format!("bring up loopback: {e}"))?;
    if plan.uplink {
        crate::net::block_metadata().map_err(|e| format!("block cloud metadata addresses: {e}"))?;
    }
    let _ = rustix::process::setsid();
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this single-threaded child.
        unsafe { libc::dup2(devnull.as_raw_fd(), target) };
    }
    Ok(())
}

/// The init holds no descriptor of its caller (a database, a lock, a terminal) beyond setup.
fn close_other_fds(keep: &[RawFd]) {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut next = 3;
    for fd in keep {
        if fd > next {
            // SAFETY: closes a range of descriptors in the single-threaded child.
            unsafe { libc::syscall(libc::SYS_close_range, next as u32, (fd - 1) as u32, 0u32) };
        }
        next = fd + 1;
    }
    // SAFETY: as above, up to the highest possible descriptor.
    unsafe { libc::syscall(libc::SYS_close_range, next as u32, u32::MAX, 0u32) };
}

const INIT_SIGNALS: [libc::c_int; 5] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
];

fn sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in INIT_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn block_signals() {
    let set = sigset();
    // SAFETY: changes the signal mask of this single-threaded child only.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// PID 1 of the sandbox: reaps orphaned processes, and exits (taking the namespace down) on
/// SIGTERM/SIGINT/SIGHUP or when an ephemeral sandbox's caller goes away.
fn init_loop(lifeline: Option<OwnedFd>) -> ! {
    let set = sigset();
    // SAFETY: signalfd on a valid sigset; the returned descriptor is owned below.
    let sfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: lifeline.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            // SAFETY: ending PID 1 makes the kernel kill the rest of the namespace.
            unsafe { libc::_exit(0) };
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: signalfd_siginfo is plain data, read whole from the signalfd.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: `info` is a writable buffer of `size` bytes.
            let got =
                unsafe { libc::read(sfd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
            if got as usize == size && info.ssi_signo as libc::c_int != libc::SIGCHLD {
                // SAFETY: see above.
                unsafe { libc::_exit(0) };
            }
            loop {
                let mut st = 0;
                // SAFETY: non-blocking reap of any child.
                let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if r <= 0 {
                    break;
                }
            }
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), BootError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| BootError::Io(e.into()))
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
