//! Running commands: fork, set the child up (session, stdio, cgroup, chroot into the sandbox's
//! root, privileges), exec; stream its output; report its end. And PID 1's reaper.
//!
//! - Everything the child needs is prepared before `fork` (C strings, pointer arrays, fds):
//!   between `fork` and `execve` the child of a multithreaded process may only make system
//!   calls, so it allocates nothing and takes no lock.
//! - A failure in the child (a missing program, a missing working directory) comes back as
//!   `(stage, errno)` through a close-on-exec pipe before `Started` is sent, as posix_spawn
//!   does: end of file on that pipe means `execve` succeeded.
//! - The [`Reaper`] owns every `waitpid`: PID 1 inherits orphans, and a second waiter would
//!   steal statuses. It hands the status of a tracked pid to that exec's exit pipe; the pid is
//!   registered while the registry lock is held across `fork`, so even a child that exits at
//!   once is found.
//! - One thread per exec polls its output fds and its exit pipe, with the timeout as poll's
//!   deadline; output already written when the command exits is drained, then `Exit` is sent
//!   (a background process holding the pipe open does not delay it).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentkernel_proto::{ErrorKind, ExecEvent, ExecRequest, GuestMessage, RequestId, User};
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pipe::PipeFlags;

use crate::boot::ROOT_DIR;
use crate::error::Fail;
use crate::files::Root;
use crate::policy::{ActivePolicy, LAST_CAP, SANDBOX_CGROUP};
use crate::port::Out;

/// The search path when the request's environment has none (the native backend's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The working directory when the request names none.
pub const DEFAULT_WORKDIR: &str = "/workspace";
/// Bytes of output per event.
const CHUNK: usize = 32 * 1024;

/// Owns every wait of PID 1.
#[derive(Debug, Default)]
pub struct Reaper {
    /// Tracked pid → the write end of its exec's exit pipe.
    tracked: Mutex<HashMap<i32, OwnedFd>>,
}

impl Reaper {
    /// Reaps every child that ended; tracked ones are reported to their exec. Call on each
    /// SIGCHLD (signals merge, so it reaps until none is left).
    pub fn reap(&self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only the status int we pass.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let fd = self
                .tracked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid);
            if let Some(fd) = fd {
                // The exec thread may be gone (the start failed): EPIPE is fine.
                let _ = rustix::io::write(&fd, &status.to_ne_bytes());
            }
        }
    }
}

/// What the connection keeps of a running exec.
#[derive(Debug)]
pub struct ExecCtl {
    pub pid: i32,
    pub stdin: Option<mpsc::Sender<StdinMsg>>,
    /// The PTY's master, for `Resize`.
    pub pty: Option<Arc<OwnedFd>>,
}

/// A message for an exec's stdin thread.
#[derive(Debug)]
pub enum StdinMsg {
    Data(Vec<u8>),
    Close,
}

/// The running execs of one connection, by request id.
pub type Execs = Arc<Mutex<HashMap<RequestId, ExecCtl>>>;

/// Where a child failed before `execve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
enum Stage {
    Setup = 1,
    Cgroup = 2,
    Chroot = 3,
    Workdir = 4,
    Privileges = 5,
    User = 6,
    Exec = 7,
}

impl Stage {
    fn from_raw(v: i32) -> Option<Self> {
        [
            Self::Setup,
            Self::Cgroup,
            Self::Chroot,
            Self::Workdir,
            Self::Privileges,
            Self::User,
            Self::Exec,
        ]
        .into_iter()
        .find(|s| *s as i32 == v)
    }
}

/// Everything the child uses, built before `fork`.
struct ChildPlan {
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    candidates: Vec<CString>,
    /// The sandbox's mount and PID namespaces, joined instead of a chroot (`sandbox.rs`).
    mount_ns: RawFd,
    pid_ns: RawFd,
    workdir: CString,
    seccomp: Option<agentkernel_seccomp::Program>,
    cgroup_procs: Option<CString>,
    uid: u32,
    gid: u32,
    no_new_privs: bool,
    keep_caps: Option<u64>,
    stdio: [RawFd; 3],
    tty: bool,
    err_w: RawFd,
}

fn cstring(s: &str, what: &str) -> Result<CString, Fail> {
    CString::new(s).map_err(|_| Fail::invalid(format!("{what} contains a NUL byte")))
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Resolves a [`User`] against the sandbox's `/etc/passwd` and `/etc/group`.
pub fn resolve_user(root: &Root, user: Option<&User>) -> Result<(u32, u32), Fail> {
    let name = match user {
        None => return Ok((0, 0)),
        Some(User::Id { uid, gid }) => return Ok((*uid, *gid)),
        Some(User::Name(n)) => n,
    };
    let (user, group) = match name.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (name.as_str(), None),
    };
    let passwd = root.read_etc("/etc/passwd");
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let uid = f.get(2)?.parse::<u32>().ok()?;
        let gid = f.get(3)?.parse::<u32>().ok()?;
        (f[0] == user || user.parse::<u32>() == Ok(uid)).then_some((uid, gid))
    });
    let (uid, mut gid) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => e,
        // A numeric uid the image does not list runs with group 0, as Docker does.
        (None, Ok(uid)) => (uid, 0),
        (None, Err(_)) => {
            return Err(Fail::invalid(format!(
                "no user {user:?} in the sandbox's /etc/passwd"
            )));
        }
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => root
                .read_etc("/etc/group")
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f[0] == g).then(|| f.get(2)?.parse::<u32>().ok())?
                })
                .ok_or_else(|| {
                    Fail::invalid(format!("no group {g:?} in the sandbox's /etc/group"))
                })?,
        };
    }
    Ok((uid, gid))
}

/// The paths to try for `program`, as execvp would.
fn candidates(program: &str, path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    path.split(':')
        .map(|dir| {
            if dir.is_empty() {
                program.to_owned()
            } else {
                format!("{}/{program}", dir.trim_end_matches('/'))
            }
        })
        .collect()
}

/// The fds of a started exec that the agent keeps.
struct Spawned {
    pid: i32,
    /// (fd, is stderr) of each output.
    outputs: Vec<(OwnedFd, bool)>,
    stdin: Option<Arc<OwnedFd>>,
    pty: Option<Arc<OwnedFd>>,
    exit: OwnedFd,
}

/// Starts `req`; on success `Started` has been sent and a thread streams the rest.
pub fn start(
    reaper: &Arc<Reaper>,
    root: &Root,
    policy: &ActivePolicy,
    out: &Out,
    execs: &Execs,
    id: RequestId,
    req: &ExecRequest,
) -> Result<(), Fail> {
    if execs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains_key(&id)
    {
        return Err(Fail::new(
            ErrorKind::Protocol,
            format!("request {id} is already running"),
        ));
    }
    let mut spawned = spawn(reaper, root, policy, req)?;
    out.send(&GuestMessage::Exec {
        id,
        event: ExecEvent::Started {
            pid: spawned.pid.unsigned_abs(),
        },
    });
    let stdin = if req.stdin || spawned.pty.is_some() {
        let (tx, rx) = mpsc::channel();
        // Moved out: the stdin thread must hold the only copy, so that closing it is the
        // command's end of file.
        let target = spawned.stdin.take();
        let tty = spawned.pty.is_some();
        std::thread::spawn(move || feed_stdin(&rx, target, tty));
        Some(tx)
    } else {
        None
    };
    execs.lock().unwrap_or_else(PoisonError::into_inner).insert(
        id,
        ExecCtl {
            pid: spawned.pid,
            stdin,
            pty: spawned.pty.clone(),
        },
    );
    let deadline = req
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let out = out.clone();
    let execs = Arc::clone(execs);
    std::thread::spawn(move || pump(&out, id, spawned, deadline, &execs));
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Fail> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|e| Fail::errno("pipe", e))
}

fn spawn(
    reaper: &Arc<Reaper>,
    root: &Root,
    policy: &ActivePolicy,
    req: &ExecRequest,
) -> Result<Spawned, Fail> {
    let Some(program) = req.argv.first() else {
        return Err(Fail::invalid("the command is empty (argv has no program)"));
    };
    let (uid, gid) = resolve_user(root, req.user.as_ref())?;
    let workdir = req.workdir.as_deref().unwrap_or(DEFAULT_WORKDIR);
    if !workdir.starts_with('/') {
        return Err(Fail::invalid(format!(
            "the working directory {workdir:?} is not an absolute path"
        )));
    }
    let mut env: Vec<(String, String)> = req
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    if env.is_empty() {
        // What the engine gives a native sandbox's commands.
        env.push(("PATH".into(), DEFAULT_PATH.into()));
        let home = if uid == 0 { "/root" } else { "/tmp" };
        env.push(("HOME".into(), home.into()));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let argv = req
        .argv
        .iter()
        .map(|a| cstring(a, "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                return Err(Fail::invalid(format!(
                    "{k:?} is not an environment variable name"
                )));
            }
            cstring(&format!("{k}={v}"), "an environment variable")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cands = candidates(program, path)
        .iter()
        .map(|c| cstring(c, "the program"))
        .collect::<Result<Vec<_>, _>>()?;

    // The child's ends are dropped (closed) in the parent when this function returns.
    let (err_r, err_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    let mut outputs = Vec::new();
    let mut keep_for_child: Vec<OwnedFd> = Vec::new();
    let (stdio, stdin, pty) = if let Some(size) = req.tty {
        let (master, slave) = open_pty(size)?;
        let s = slave.as_raw_fd();
        keep_for_child.push(slave);
        let master = Arc::new(master);
        let dup = rustix::io::fcntl_dupfd_cloexec(&*master, 3)
            .map_err(|e| Fail::errno("dup the PTY", e))?;
        outputs.push((dup, false));
        ([s, s, s], Some(Arc::clone(&master)), Some(master))
    } else {
        let (stdin_fd, stdin_w) = if req.stdin {
            let (r, w) = pipe()?;
            (r, Some(Arc::new(w)))
        } else {
            let null = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| Fail::errno("/dev/null", e))?;
            (null, None)
        };
        let (out_r, out_w) = pipe()?;
        let (err_out_r, err_out_w) = pipe()?;
        outputs.push((out_r, false));
        outputs.push((err_out_r, true));
        let stdio = [
            stdin_fd.as_raw_fd(),
            out_w.as_raw_fd(),
            err_out_w.as_raw_fd(),
        ];
        keep_for_child.extend([stdin_fd, out_w, err_out_w]);
        (stdio, stdin_w, None)
    };
    let argv_ptrs = pointers(&argv);
    let envp_ptrs = pointers(&envp);
    let namespaces = crate::sandbox::namespaces()
        .ok_or_else(|| Fail::new(ErrorKind::Io, "the sandbox's namespaces are not set up"))?;
    let plan = ChildPlan {
        argv: argv_ptrs,
        envp: envp_ptrs,
        candidates: cands,
        mount_ns: namespaces.0,
        pid_ns: namespaces.1,
        workdir: cstring(workdir, "the working directory")?,
        seccomp: policy.seccomp.map(|m| {
            agentkernel_seccomp::program(match m {
                agentkernel_proto::SeccompMode::DenyList => {
                    agentkernel_core::policy::SeccompMode::DenyList
                }
                agentkernel_proto::SeccompMode::AllowList => {
                    agentkernel_core::policy::SeccompMode::AllowList
                }
            })
        }),
        cgroup_procs: policy
            .cgroup
            .then(|| cstring(&format!("{SANDBOX_CGROUP}/cgroup.procs"), "the cgroup"))
            .transpose()?,
        uid,
        gid,
        no_new_privs: policy.no_new_privs,
        keep_caps: policy.keep_caps,
        stdio,
        tty: req.tty.is_some(),
        err_w: err_w.as_raw_fd(),
    };

    let pid = {
        let mut tracked = reaper
            .tracked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the child only runs `child`, which makes system calls on data prepared above
        // and never returns; the parent continues normally.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child of fork, with a plan whose pointers stay valid (the parent's
            // memory was copied).
            unsafe { child(&plan) }
        }
        if pid < 0 {
            return Err(Fail::errno(
                "fork",
                Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO),
            ));
        }
        tracked.insert(pid, exit_w);
        pid
    };
    drop(keep_for_child);
    drop(err_w);
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match rustix::io::read(&err_r, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(Fail::errno("reading the child's start report", e)),
        }
    }
    if got == 0 {
        return Ok(Spawned {
            pid,
            outputs,
            stdin,
            pty,
            exit: exit_r,
        });
    }
    let stage = i32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = Errno::from_raw_os_error(i32::from_ne_bytes([
        report[4], report[5], report[6], report[7],
    ]));
    // The child exits 127 at once; the reaper collects it.
    Err(start_failure(
        Stage::from_raw(stage),
        errno,
        program,
        workdir,
    ))
}

fn start_failure(stage: Option<Stage>, errno: Errno, program: &str, workdir: &str) -> Fail {
    match stage {
        Some(Stage::Exec) => match errno {
            Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => Fail::new(
                ErrorKind::NotFound,
                format!("{program}: command not found in the sandbox"),
            ),
            Errno::ACCESS | Errno::NOEXEC | Errno::ISDIR | Errno::PERM => Fail::new(
                ErrorKind::NotExecutable,
                format!("{program}: cannot be executed ({errno})"),
            ),
            _ => Fail::errno(&format!("executing {program}"), errno),
        },
        Some(Stage::Workdir) if matches!(errno, Errno::NOENT | Errno::NOTDIR) => Fail::new(
            ErrorKind::NotFound,
            format!("the working directory {workdir} does not exist in the sandbox"),
        ),
        Some(Stage::Workdir) => Fail::errno(&format!("entering {workdir}"), errno),
        Some(Stage::User) => Fail::errno("switching to the command's user", errno),
        Some(Stage::Privileges) => Fail::errno("dropping the command's privileges", errno),
        Some(Stage::Cgroup) => Fail::errno("joining the sandbox's cgroup", errno),
        Some(Stage::Chroot) => Fail::errno("entering the sandbox's root", errno),
        Some(Stage::Setup) | None => Fail::errno("setting up the command", errno),
    }
}

fn open_pty(size: agentkernel_proto::PtySize) -> Result<(OwnedFd, OwnedFd), Fail> {
    // The sandbox's own devpts: the slave's name is then valid inside the sandbox.
    let ptmx = format!("{ROOT_DIR}/dev/pts/ptmx");
    let master = rustix::fs::open(
        ptmx.as_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Fail::errno("opening a PTY", e))?;
    rustix::pty::unlockpt(&master).map_err(|e| Fail::errno("unlockpt", e))?;
    rustix::termios::tcsetwinsize(&master, winsize(size))
        .map_err(|e| Fail::errno("setting the PTY size", e))?;
    let slave = rustix::pty::ioctl_tiocgptpeer(
        &master,
        rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY,
    )
    .map_err(|e| Fail::errno("opening the PTY's slave", e))?;
    // TIOCGPTPEER has no close-on-exec flag in OpenptFlags: set it.
    rustix::io::fcntl_setfd(&slave, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| Fail::errno("fcntl", e))?;
    Ok((master, slave))
}

pub fn winsize(size: agentkernel_proto::PtySize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Reports `(stage, errno)` to the parent and exits 127.
///
/// # Safety
/// Only in the child of `fork`.
unsafe fn fail_child(fd: RawFd, stage: Stage, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(stage as i32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes 8 bytes from a local buffer; _exit never returns.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child between `fork` and `execve`: system calls only, no allocation, no lock.
///
/// # Safety
/// Only in the child of `fork`; `p`'s pointers are valid (the parent's memory was copied).
unsafe fn child(p: &ChildPlan) -> ! {
    // SAFETY: each call in this block is a system call (or its thin libc wrapper) on
    // NUL-terminated strings and NULL-terminated pointer arrays prepared before fork, on
    // locals, or on fds this process holds.
    unsafe {
        let fail = |stage, e| fail_child(p.err_w, stage, e);
        // The agent blocks SIGIO and SIGCHLD, and Rust ignores SIGPIPE: a command starts with
        // neither.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in [libc::SIGPIPE, libc::SIGIO, libc::SIGCHLD] {
            libc::signal(sig, libc::SIG_DFL);
        }
        if libc::setsid() < 0 {
            fail(Stage::Setup, errno());
        }
        if p.tty && libc::ioctl(p.stdio[0], libc::TIOCSCTTY, 0) < 0 {
            fail(Stage::Setup, errno());
        }
        for (target, fd) in p.stdio.iter().enumerate() {
            // `fd` is a pipe or PTY at 3 or above (0-2 are the console), so dup2 always copies
            // and the copy has no close-on-exec flag.
            if libc::dup2(*fd, target as RawFd) < 0 {
                fail(Stage::Setup, errno());
            }
        }
        if let Some(procs) = &p.cgroup_procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(Stage::Cgroup, errno());
            }
            libc::close(fd);
        }
        if libc::setns(p.mount_ns, libc::CLONE_NEWNS) < 0
            || libc::chdir(c"/".as_ptr()) < 0
            || libc::setns(p.pid_ns, libc::CLONE_NEWPID) < 0
        {
            fail(Stage::Chroot, errno());
        }
        // The command is this process's child, born in the sandbox's PID namespace; this one
        // stays outside and ends as the command ends.
        let command = libc::fork();
        if command < 0 {
            fail(Stage::Setup, errno());
        }
        if command > 0 {
            relay_end(command);
        }
        if libc::chdir(p.workdir.as_ptr()) < 0 {
            fail(Stage::Workdir, errno());
        }
        if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(Stage::Privileges, errno());
        }
        if let Some(keep) = p.keep_caps {
            // The bounding set first, while this process still has CAP_SETPCAP.
            for cap in 0..=LAST_CAP {
                if keep & (1 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                    && errno() != libc::EINVAL
                {
                    fail(Stage::Privileges, errno());
                }
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
        }
        if libc::setgroups(0, std::ptr::null()) < 0
            || libc::setgid(p.gid) < 0
            || libc::setuid(p.uid) < 0
        {
            fail(Stage::User, errno());
        }
        if let Some(keep) = p.keep_caps
            && p.uid == 0
        {
            // Root keeps only the listed capabilities (another uid lost them all in setuid).
            let header = CapHeader {
                version: 0x2008_0522,
                pid: 0,
            };
            let lo = keep as u32;
            let hi = (keep >> 32) as u32;
            let data = [
                CapData {
                    effective: lo,
                    permitted: lo,
                    inheritable: lo,
                },
                CapData {
                    effective: hi,
                    permitted: hi,
                    inheritable: hi,
                },
            ];
            if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
                fail(Stage::Privileges, errno());
            }
        }
        if let Some(prog) = &p.seccomp
            && agentkernel_seccomp::install(prog).is_err()
        {
            fail(Stage::Privileges, errno());
        }
        // As execvp: try each PATH entry; a directory that denies access is remembered, so
        // "exists but not executable" wins over "not found".
        let mut err = libc::ENOENT;
        let mut denied = false;
        for cand in &p.candidates {
            libc::execve(cand.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
            err = errno();
            match err {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => denied = true,
                _ => break,
            }
        }
        if denied && matches!(err, libc::ENOENT | libc::ENOTDIR) {
            err = libc::EACCES;
        }
        fail(Stage::Exec, err)
    }
}

/// The first child after it forked the command: holds no fd at all, ignores the signals meant for the command's process group, waits for
/// it and ends the same way — its exit code, or killed by the same signal — so the agent,
/// which tracks this process, reports the command's end.
///
/// # Safety
/// Only in the child of `fork` (system calls on locals only).
unsafe fn relay_end(command: libc::pid_t) -> ! {
    // SAFETY: system calls on locals.
    unsafe {
        // Every fd: the command's stdio and error pipe, and the agent's own (close-on-exec
        // fds stay open in a process that never execs — a stdin pipe's write end among them,
        // whose copy here would keep the command from ever reading its end).
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        for sig in 1..32 {
            if !matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD) {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
        let mut status = 0;
        loop {
            let r = libc::waitpid(command, &mut status, 0);
            if r == command {
                break;
            }
            if r < 0 && errno() != libc::EINTR {
                libc::_exit(125);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let sig = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig)
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn feed_stdin(rx: &mpsc::Receiver<StdinMsg>, target: Option<Arc<OwnedFd>>, tty: bool) {
    let mut target = target;
    while let Ok(msg) = rx.recv() {
        let Some(fd) = &target else { continue };
        match msg {
            StdinMsg::Data(data) => {
                if write_all(fd.as_fd(), &data).is_err() {
                    // The command closed its stdin: later bytes have nowhere to go.
                    target = None;
                }
            }
            StdinMsg::Close if tty => {
                // A terminal has no end of file of its own: ^D is what a user would type.
                let _ = write_all(fd.as_fd(), b"\x04");
            }
            StdinMsg::Close => {
                target = None;
            }
        }
    }
}

fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Streams an exec's output until it exits, then sends `Exit`.
fn pump(out: &Out, id: RequestId, s: Spawned, deadline: Option<Instant>, execs: &Execs) {
    let oom_before = crate::policy::oom_kills();
    let mut outputs: Vec<Option<(OwnedFd, bool)>> = s.outputs.into_iter().map(Some).collect();
    let mut status = None;
    let mut timed_out = false;
    let mut buf = vec![0u8; CHUNK];
    while status.is_none() {
        let left = deadline
            .filter(|_| !timed_out)
            .map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            timed_out = true;
            let _ = kill_group(s.pid, libc::SIGKILL);
            continue;
        }
        let timeout = left.map(|d| rustix::event::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        let mut fds: Vec<PollFd<'_>> = outputs
            .iter()
            .flatten()
            .map(|(fd, _)| PollFd::new(fd, PollFlags::IN))
            .collect();
        fds.push(PollFd::new(&s.exit, PollFlags::IN));
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => break,
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let exit_ready = ready.last().copied().unwrap_or(false);
        let mut i = 0;
        for slot in outputs.iter_mut() {
            let Some((fd, is_err)) = slot else { continue };
            let r = ready[i];
            i += 1;
            if r && !forward(out, id, fd, *is_err, &mut buf) {
                *slot = None;
            }
        }
        if exit_ready {
            let mut b = [0u8; 4];
            if let Ok(4) = rustix::io::read(&s.exit, &mut b) {
                status = Some(i32::from_ne_bytes(b));
            } else {
                break;
            }
        }
    }
    // What the command wrote before it ended is in the pipes: send it, without waiting for
    // processes it left behind that still hold them.
    for (fd, is_err) in outputs.iter().flatten() {
        if rustix::fs::fcntl_setfl(fd, OFlags::NONBLOCK).is_ok() {
            while forward(out, id, fd, *is_err, &mut buf) {}
        }
    }
    execs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    let status = status.unwrap_or(0);
    let (code, signal) = if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (Some(libc::WEXITSTATUS(status)), None)
    };
    out.send(&GuestMessage::Exec {
        id,
        event: ExecEvent::Exit {
            code,
            signal,
            timed_out,
            oom_killed: signal == Some(libc::SIGKILL) && crate::policy::oom_kills() > oom_before,
        },
    });
}

/// Reads one chunk of output and sends it; false at its end (or when nothing is left of a
/// non-blocking fd).
fn forward(out: &Out, id: RequestId, fd: &OwnedFd, is_err: bool, buf: &mut [u8]) -> bool {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return false,
            Ok(n) => {
                let data = agentkernel_proto::Bytes(buf[..n].to_vec());
                let event = if is_err {
                    ExecEvent::Stderr(data)
                } else {
                    ExecEvent::Stdout(data)
                };
                out.send(&GuestMessage::Exec { id, event });
                return true;
            }
            Err(Errno::INTR) => {}
            // EIO: a PTY whose slave side is closed; EAGAIN: drained.
            Err(_) => return false,
        }
    }
}

/// Sends `sig` to the process group `pgid` (each command leads its own session).
pub fn kill_group(pgid: i32, sig: i32) -> Result<(), Errno> {
    if pgid <= 1 {
        return Err(Errno::SRCH);
    }
    // SAFETY: kill with a negative pid signals a process group; pgid > 1, so never all
    // processes (-1) and never our own group (0).
    if unsafe { libc::kill(-pgid, sig) } < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::SRCH));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        assert_eq!(candidates("/bin/sh", "/x"), vec!["/bin/sh"]);
        assert_eq!(
            candidates("sh", "/usr/bin:/bin/:"),
            vec!["/usr/bin/sh", "/bin/sh", "sh"]
        );
    }

    #[test]
    fn failures_map_to_kinds() {
        let k = |stage, errno| start_failure(Some(stage), errno, "prog", "/w").kind;
        assert_eq!(k(Stage::Exec, Errno::NOENT), ErrorKind::NotFound);
        assert_eq!(k(Stage::Exec, Errno::ACCESS), ErrorKind::NotExecutable);
        assert_eq!(k(Stage::Exec, Errno::NOEXEC), ErrorKind::NotExecutable);
        assert_eq!(k(Stage::Workdir, Errno::NOENT), ErrorKind::NotFound);
        assert_eq!(k(Stage::User, Errno::PERM), ErrorKind::PermissionDenied);
    }
}
