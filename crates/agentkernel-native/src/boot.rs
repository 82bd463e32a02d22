//! Starting a sandbox: clone an init process into new mount, pid, net, ipc and uts namespaces,
//! let it join the sandbox's cgroups, build the root and become the namespace's PID 1.
//!
//! The init reaps orphans and keeps the namespaces alive. Commands are started later by joining
//! its namespaces (`exec.rs`), except the command of a throwaway sandbox booted directly, which
//! the init starts itself once its setup is done (`launch.rs`).
//!
//! The clone is fork-like and the child runs ordinary Rust code (allocation included) until its
//! init loop, which is only safe in a single-threaded process. So there are two ways to boot:
//! - directly (the default, the CLI): the caller itself clones the init;
//! - through the boot helper (`use_boot_helper`, for multithreaded programs): the caller
//!   spawns this executable again in the `BOOT_HELPER_ROLE` role, a fresh single-threaded
//!   process that performs the same clone and runs the same child code (`helper.rs`).
//!
//! Either way the init starts with nothing of its parent that a sandbox could see: its copy of
//! the parent's command line and environment is overwritten right after the clone
//! (`inherited.rs`), it closes every descriptor it does not need, and it leaves the parent's
//! working directory for the sandbox's root.

mod helper;
mod inherited;

pub use helper::{BOOT_HELPER_ROLE, boot_helper_main, use_boot_helper};

use crate::launch::FirstCommand;
use crate::rootfs::{RootfsPlan, enter_rootfs};
use rustix::fd::{AsRawFd, OwnedFd, RawFd};
use std::io::Write;

/// What the init needs, prepared before the clone.
pub struct BootPlan<'a> {
    pub hostname: &'a str,
    pub rootfs: &'a RootfsPlan,
    /// `cgroup.procs` files opened for writing; the init writes "0" to each.
    pub cgroup_procs: &'a [OwnedFd],
    /// When false (an ephemeral `run`), the init exits as soon as the caller goes away.
    pub detach: bool,
    /// A command the init starts as soon as its setup is done (booting directly only; see
    /// `launch.rs`).
    pub first: Option<&'a FirstCommand<'a>>,
}

/// A started sandbox init. It owns the lifeline of a throwaway sandbox, so it is not `Copy`:
/// the lifeline is closed once, when it is dropped or `release`d.
#[derive(Debug)]
pub struct Booted {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it names
    /// the process uniquely, so a recycled pid is never mistaken for the sandbox.
    pub start_time: u64,
    /// Held by an ephemeral sandbox's caller: when it closes, the init exits.
    pub lifeline: Option<OwnedFd>,
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
    #[error("cannot start the boot helper {exe}: {source}")]
    HelperSpawn {
        exe: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the boot helper failed: {0}")]
    Helper(String),
    /// Cloning an init runs ordinary Rust code in the child, which another thread may have
    /// left mid-allocation: refused rather than risked.
    #[error(
        "this process has {threads} threads, and a sandbox init can only be cloned from a single-threaded one: a multithreaded program must call agentkernel_native::use_boot_helper before it starts its threads (agentkernel's server, daemon and MCP server do)"
    )]
    Multithreaded { threads: u64 },
}

/// The number of threads of this process (field 20 of /proc/self/stat); `None` if unreadable.
fn thread_count() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields resume after the command name's last ')'; field 20 is the 18th from field 3.
    stat[stat.rfind(')')? + 2..]
        .split(' ')
        .nth(17)?
        .parse()
        .ok()
}

/// Namespaces of every sandbox init.
const NAMESPACE_FLAGS: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;

/// Starts the init and waits until it has finished its setup.
///
/// By default the caller clones the init itself, which requires a single-threaded caller (the
/// child runs ordinary Rust code, allocation included, until its init loop). After
/// `use_boot_helper`, the clone happens in a fresh helper process instead, and any caller may
/// be multithreaded. Either way an ephemeral sandbox's init is the caller's child (`reap` it);
/// a detached one started through the helper is not (it was reparented when the helper exited).
pub fn boot(plan: &BootPlan<'_>) -> Result<Booted, BootError> {
    boot_reporting(plan).map(|(booted, _)| booted)
}

/// The init's status pipe after a successful boot: where an init that started a first command
/// reports its exit status.
pub struct StatusPipe {
    pub fd: OwnedFd,
    /// Bytes already read behind the setup report.
    pub early: Vec<u8>,
}

/// What the init writes when its setup has succeeded.
const SETUP_DONE: &[u8] = b"ok\n";

/// `boot`, keeping the init's status pipe.
pub fn boot_reporting(plan: &BootPlan<'_>) -> Result<(Booted, StatusPipe), BootError> {
    let (status_r, status_w) = pipe()?;
    let (life_r, life_w) = pipe()?;
    let init = match helper::configured() {
        Some(_) if plan.first.is_some() => {
            return Err(BootError::Setup(
                "a first command needs an init cloned by its caller (no boot helper)".into(),
            ));
        }
        None => {
            match thread_count() {
                Some(1) => {}
                Some(threads) => return Err(BootError::Multithreaded { threads }),
                None => {
                    return Err(BootError::Setup(
                        "cannot read /proc/self/stat to check that this process is single-threaded"
                            .into(),
                    ));
                }
            }
            let caller_ends = [status_r.as_raw_fd(), life_w.as_raw_fd()];
            let pid =
                clone_init(plan, status_w, life_r, &caller_ends, 0).map_err(BootError::Clone)?;
            Cloned {
                pid,
                start_time: None,
                own_child: true,
            }
        }
        Some(exe) => helper::boot_through(exe, plan, status_w, life_r)?,
    };
    // Every copy of the status pipe's write end but the init's is closed by now (ours, and the
    // helper's, which has exited): end of file means the init finished or abandoned its setup.
    let early = match read_report(&status_r) {
        Ok(Ok(early)) => early,
        Ok(Err(report)) => {
            init.end();
            let msg = if report.is_empty() {
                "the init exited during setup".to_string()
            } else {
                report
            };
            return Err(BootError::Setup(msg));
        }
        Err(e) => {
            init.end();
            return Err(e.into());
        }
    };
    let start_time = agentkernel_sys::proc::start_time(init.pid)
        .filter(|t| init.start_time.is_none_or(|known| known == *t));
    let Some(start_time) = start_time else {
        init.end();
        return Err(BootError::Setup("the init exited right after setup".into()));
    };
    // The write end stays open for as long as the caller holds the sandbox's handle; a
    // detached sandbox's until the caller releases it (`Started::release`), once recorded.
    let lifeline = Some(life_w);
    Ok((
        Booted {
            pid: init.pid,
            start_time,
            lifeline,
        },
        StatusPipe {
            fd: status_r,
            early,
        },
    ))
}

/// Reads the init's setup report: `SETUP_DONE` (Ok, with any bytes behind it), or the reason
/// the setup failed, up to end of file (Err).
fn read_report(status: &OwnedFd) -> std::io::Result<Result<Vec<u8>, String>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if got.starts_with(SETUP_DONE) {
            return Ok(Ok(got.split_off(SETUP_DONE.len())));
        }
        match rustix::io::read(status, &mut buf) {
            Ok(0) => return Ok(Err(String::from_utf8_lossy(&got).into_owned())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// An init just cloned, whose setup is not known to have succeeded yet.
struct Cloned {
    pid: u32,
    /// Known when the init was cloned by the helper (it reads it while the pid is still pinned
    /// as its own child or the caller's).
    start_time: Option<u64>,
    /// The init is this process's child: it must be reaped, and its pid cannot be recycled
    /// before that.
    own_child: bool,
}

impl Cloned {
    /// Ends the init on a failed boot and leaves no zombie of ours behind.
    fn end(&self) {
        if self.own_child {
            crate::kill(self.pid);
            reap(self.pid);
        } else if let Some(start) = self.start_time
            && agentkernel_sys::proc::is_alive(self.pid, start)
        {
            // Not our child: the host's PID 1 (or the nearest subreaper) reaps it.
            crate::kill(self.pid);
        }
    }
}

/// Whether inits are cloned by the boot helper (`use_boot_helper`) rather than by this process.
pub(crate) fn uses_helper() -> bool {
    helper::configured().is_some()
}

/// Whether a sandbox init started by this process with `detach` is this process's child, which
/// it must `reap`: always when booting directly; through the helper only for ephemeral
/// sandboxes (the helper clones those with CLONE_PARENT).
pub(crate) fn is_caller_child(detach: bool) -> bool {
    helper::configured().is_none() || !detach
}

/// Clones the init with `extra_flags` added to the namespace flags; the child closes its copies
/// of `caller_ends` (descriptors of the cloning process it must not keep, such as the caller's
/// ends of the pipes), runs `child` and never returns. The parent gets the init's pid and
/// closes its copies of the child's ends. The calling process must be single-threaded.
fn clone_init(
    plan: &BootPlan<'_>,
    status_w: OwnedFd,
    life_r: OwnedFd,
    caller_ends: &[RawFd],
    extra_flags: libc::c_int,
) -> Result<u32, rustix::io::Errno> {
    let flags = NAMESPACE_FLAGS | extra_flags | libc::SIGCHLD;
    // Read before the clone (once per process): the child must not depend on the host's /proc.
    let strings = inherited::StartStrings::of_this_process().ok_or(rustix::io::Errno::NOENT)?;
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork: the child gets a
    // copy of the address space and continues here. The calling process is single-threaded
    // (the CLI, or the boot helper), so no lock can be held by another thread at the moment of
    // the copy.
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
        return Err(rustix::io::Errno::from_raw_os_error(errno()));
    }
    if pid == 0 {
        // SAFETY: this is a fork-like clone of the process whose string ranges were read.
        unsafe { strings.scrub() };
        for fd in caller_ends {
            // SAFETY: the child's copies of descriptors owned by the caller's stack frame; the
            // child never returns to that frame (see below), so nothing uses or closes them
            // again.
            unsafe { libc::close(*fd) };
        }
        // A panic must not unwind out of the child into the caller's code (which would go on
        // as a second copy of the caller); the status pipe closes with it, so the caller sees
        // a failed setup.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            child(plan, status_w, life_r);
        }));
        // SAFETY: ends the cloned child without running the caller's exit handlers.
        unsafe { libc::_exit(1) };
    }
    drop(status_w);
    drop(life_r);
    Ok(pid as u32)
}

/// Closes an ephemeral sandbox's lifeline: its init exits and the kernel kills every process
/// left in the namespace.
pub fn release(lifeline: OwnedFd) {
    drop(lifeline);
}

/// Waits for a child init that the caller started (see `is_caller_child`).
pub fn reap(pid: u32) {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 || errno() != libc::EINTR {
            return;
        }
    }
}

fn child(plan: &BootPlan<'_>, status_w: OwnedFd, life_r: OwnedFd) -> ! {
    let mut status = std::fs::File::from(status_w);
    let fail = |status: &mut std::fs::File, msg: String| -> ! {
        let _ = status.write_all(msg.as_bytes());
        // SAFETY: terminating the forked child without running the parent's atexit state.
        unsafe { libc::_exit(1) }
    };
    let layer_dir = match setup(plan) {
        Ok(fd) => fd,
        Err(msg) => fail(&mut status, msg),
    };
    let mut keep = vec![
        status.as_raw_fd(),
        life_r.as_raw_fd(),
        layer_dir.as_raw_fd(),
    ];
    if let Some(first) = plan.first {
        keep.extend_from_slice(&first.stdio);
    }
    close_other_fds(&keep);
    let first = match plan.first {
        None => None,
        Some(first) => {
            let pid = match crate::launch::start_in_init(first) {
                Ok(pid) => pid,
                Err(msg) => fail(&mut status, msg),
            };
            for fd in first.stdio {
                // SAFETY: the command's ends of its pipes, inherited from the caller and now
                // held by the command; the init never uses them.
                unsafe { libc::close(fd) };
            }
            Some(pid)
        }
    };
    let _ = status.write_all(SETUP_DONE);
    let report_to = match first {
        Some(pid) => Some((pid, status)),
        None => {
            drop(status);
            None
        }
    };
    init_loop(life_r, plan.detach, report_to)
}

/// Returns the writable layer's directory, which the init keeps open (`enter_rootfs`).
fn setup(plan: &BootPlan<'_>) -> Result<OwnedFd, String> {
    block_signals();
    // The root first, then the cgroups: building it opens the host's loop devices (a
    // persistent sandbox's disk) and makes the nodes of /dev, which the sandbox's device
    // allow-list refuses. Nothing of the sandbox runs before the init has joined them.
    let layer_dir = enter_rootfs(plan.rootfs).map_err(|e| e.to_string())?;
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
    rustix::system::sethostname(plan.hostname.as_bytes())
        .map_err(|e| format!("sethostname: {e}"))?;
    crate::net::loopback_up().map_err(|e| format!("bring up loopback: {e}"))?;
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
    Ok(layer_dir)
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
/// SIGTERM/SIGINT/SIGHUP or when its caller goes away (its lifeline closes) before releasing a
/// detached sandbox (`LIFELINE_RELEASE`, after which the lifeline is no longer watched).
/// With a first command (`report_to`): its wait status goes to the caller when it exits, and
/// bytes on the lifeline are signals for it.
fn init_loop(
    lifeline: OwnedFd,
    detach: bool,
    mut report_to: Option<(libc::pid_t, std::fs::File)>,
) -> ! {
    let mut lifeline = Some(lifeline);
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
            let mut sigs = [0u8; 16];
            let got = match &lifeline {
                Some(fd) => rustix::io::read(fd, &mut sigs).unwrap_or(0),
                None => 0,
            };
            if got == 0 {
                // SAFETY: ending PID 1 makes the kernel kill the rest of the namespace.
                unsafe { libc::_exit(0) };
            }
            if detach && sigs[..got].contains(&agentkernel_core::backend::LIFELINE_RELEASE) {
                lifeline = None;
                continue;
            }
            if let Some((command, _)) = &report_to {
                for sig in &sigs[..got] {
                    crate::launch::forward_in_init(*command, *sig);
                }
            }
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
                if let Some((_, mut status)) = report_to.take_if(|(command, _)| *command == r) {
                    let _ = status.write_all(&st.to_ne_bytes());
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
