//! The processes agentkernel runs inside its containers: its own executable, bind-mounted
//! read-only at `INIT_PATH`, in one of two hidden roles.
//!
//! Why not the image's `sleep` or the engine's `Init: true`: images may have neither `sleep`
//! nor a shell (distroless, scratch), and an engine init (tini, catatonit) still needs a
//! command to run and is not installed everywhere. agentkernel is a static executable, so it
//! runs in any image, under any user, with no library from the image.
//!
//! - [`INIT_ROLE`]: PID 1 of a persistent sandbox. Reaps the orphans that commands leave
//!   behind and exits at SIGTERM/SIGINT/SIGHUP, so `stop` is immediate.
//! - [`RUN_ROLE`] `[--tty] [--seccomp deny|allow] [--timeout-ms N] [--hold] -- ARGV…`: every
//!   command. Starts ARGV in a
//!   process group of its own with pipes for its output, which it relays, and ends when ARGV
//!   does, as the native backend does: output already written is delivered, and a background
//!   process ARGV left holding the pipes does not keep the caller waiting. Signals it gets are
//!   passed to ARGV's group; [`kill_signal`] kills the group and exits 137 (timeouts,
//!   cancelled streams). A command that is missing or not executable is reported on stderr
//!   and exits 127 or 126. With `--tty` (attach) it execs ARGV in place on the terminal the
//!   engine made. With `--seccomp` it installs the native backend's filter first (gVisor's
//!   runsc ignores the profile the engine is given). With `--timeout-ms` it kills ARGV's group
//!   when the time is up and exits [`TIMED_OUT`]: the timeout holds inside the container, for an
//!   engine on another host and under gVisor (where the host sees only runsc's processes) alike.
//!   With `--hold` it starts ARGV only at [`go_signal`] (a signal to stop it first ends it),
//!   so that the host can begin watching the container's cgroup before the command runs.

use rustix::fd::{AsRawFd, OwnedFd};
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};

pub const INIT_ROLE: &str = "__container-init";
pub const RUN_ROLE: &str = "__container-run";
/// `SIGNAL_ROLE TOKEN SIGNO`: sends a signal to the run role started with `--token TOKEN`.
pub const SIGNAL_ROLE: &str = "__container-signal";

/// The exit code of a command the run role killed at its timeout (as timeout(1) exits).
pub const TIMED_OUT: i32 = 124;

/// The signal asking a `RUN_ROLE` process to kill its command's group and exit.
pub fn kill_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

/// The signal releasing a run role started with `--hold`.
pub fn go_signal() -> i32 {
    libc::SIGRTMIN() + 5
}

/// How long a held run role waits for [`go_signal`] before it starts the command anyway.
const HOLD_LIMIT_SECS: libc::time_t = 10;

/// Signals the run role passes on to its command.
const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGALRM,
    libc::SIGCONT,
];

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset only writes into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` (they are then read with sigwait or a signalfd), then gives each a
/// handler: the kernel drops a signal sent from outside to a PID namespace's init while its
/// disposition is the default and it is not blocked, so `docker kill`/`stop` would never reach
/// a role that is PID 1. Blocked first, so that none is lost in between: the host sends
/// [`go_signal`] once it sees the signal blocked. execve resets handlers for the command.
fn block(signals: &[i32]) -> libc::sigset_t {
    extern "C" fn ignore(_: libc::c_int) {}
    let set = sigset(signals);
    // SAFETY: blocks signals for this (single-threaded) process; the set is valid.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    for &sig in signals {
        // SAFETY: a zeroed sigaction with a valid handler function; the signal number is one
        // of the fixed catchable ones above.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            if sig == libc::SIGCHLD {
                action.sa_flags = libc::SA_NOCLDSTOP;
            }
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    set
}

/// PID 1 of a persistent sandbox.
pub fn init_main() -> i32 {
    let set = block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait reads the valid set and writes the signal number.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            // SAFETY: reaping any exited child; a null status pointer is allowed.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        } else {
            return 0;
        }
    }
}

/// Options of the run role.
struct RunArgs {
    tty: bool,
    seccomp: Option<agentkernel_core::policy::SeccompMode>,
    timeout: Option<std::time::Duration>,
    hold: bool,
    argv: Vec<OsString>,
}

/// Delivers a signal to the run role named by a token, from a second exec in the same
/// container: how an `exec`'s signals reach it whatever the engine (a remote one, or gVisor,
/// where the host sees only runsc's processes). Exits 0 when a process got it, 1 when none
/// has that token (the command already ended), 2 on bad arguments.
pub fn signal_main(mut args: impl Iterator<Item = OsString>) -> i32 {
    let (Some(token), Some(sig)) = (args.next(), args.next()) else {
        eprintln!("usage: {SIGNAL_ROLE} TOKEN SIGNO");
        return 2;
    };
    let Some(sig) = sig.to_str().and_then(|s| s.parse::<i32>().ok()) else {
        eprintln!("{SIGNAL_ROLE}: bad signal number");
        return 2;
    };
    let wanted: Vec<&[u8]> = vec![RUN_ROLE.as_bytes(), b"--token", token.as_encoded_bytes()];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 1;
    };
    let mut sent = 1;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let parts: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        // The run role's own arguments, before its `--`: the command's cannot forge them.
        let own = parts
            .iter()
            .position(|p| *p == b"--")
            .map_or(&parts[..], |end| &parts[..end]);
        if wanted.iter().all(|w| own.contains(w))
            && own
                .windows(2)
                .any(|w| w[0] == b"--token" && w[1] == token.as_encoded_bytes())
        {
            // SAFETY: kill(2) on a process of this container found by its own command line.
            if unsafe { libc::kill(pid, sig) } == 0 {
                sent = 0;
            }
        }
    }
    sent
}

fn parse(args: impl Iterator<Item = OsString>) -> Result<RunArgs, String> {
    let mut args = args.peekable();
    let mut parsed = RunArgs {
        tty: false,
        seccomp: None,
        timeout: None,
        hold: false,
        argv: Vec::new(),
    };
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--") => {
                parsed.argv = args.collect();
                break;
            }
            Some("--tty") => parsed.tty = true,
            Some("--hold") => parsed.hold = true,
            // Only names the process for SIGNAL_ROLE.
            Some("--token") => {
                if args.next().is_none() {
                    return Err("--token needs a value".to_string());
                }
            }
            Some("--timeout-ms") => {
                let ms = args.next();
                let ms = ms.as_ref().and_then(|m| m.to_str()?.parse::<u64>().ok());
                match ms {
                    Some(ms) => parsed.timeout = Some(std::time::Duration::from_millis(ms)),
                    None => return Err("--timeout-ms needs a number of milliseconds".to_string()),
                }
            }
            Some("--seccomp") => {
                parsed.seccomp = match args.next().as_ref().and_then(|m| m.to_str()) {
                    Some("deny") => Some(agentkernel_core::policy::SeccompMode::DenyList),
                    Some("allow") => Some(agentkernel_core::policy::SeccompMode::AllowList),
                    other => return Err(format!("bad --seccomp value {other:?}")),
                }
            }
            _ => return Err(format!("unknown option {a:?}")),
        }
    }
    if parsed.argv.is_empty() {
        return Err("no command after --".to_string());
    }
    Ok(parsed)
}

/// Reports a command that could not be started, as the native backend's errors read, and
/// returns the shell's exit code for it.
fn not_started(program: &OsString, e: &std::io::Error) -> i32 {
    let program = program.to_string_lossy();
    let (code, text) = match (e.kind(), e.raw_os_error()) {
        (std::io::ErrorKind::NotFound, _) | (_, Some(libc::ENOTDIR | libc::ENAMETOOLONG)) => {
            (127, format!("command not found: {program}"))
        }
        (std::io::ErrorKind::PermissionDenied, _) | (_, Some(libc::EISDIR)) => (
            126,
            format!("command not executable: {program}: permission denied"),
        ),
        _ => (126, format!("cannot start {program} in the sandbox: {e}")),
    };
    eprintln!("agentkernel: error: {text}");
    code
}

/// Runs one command (see the module documentation); returns the exit code.
pub fn run_main(args: impl Iterator<Item = OsString>) -> i32 {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("agentkernel {RUN_ROLE}: {e}");
            return 125;
        }
    };
    if let Some(mode) = args.seccomp {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        let program = agentkernel_seccomp::program(mode);
        if let Err(e) = agentkernel_seccomp::install(&program) {
            eprintln!("agentkernel: error: cannot install the seccomp filter: {e}");
            return 125;
        }
    }
    let program = args.argv[0].clone();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args.argv[1..]);
    if args.tty {
        let e = cmd.exec();
        return not_started(&program, &e);
    }
    let mut forwarded = FORWARDED.to_vec();
    forwarded.push(kill_signal());
    forwarded.push(libc::SIGCHLD);
    if args.hold {
        let waiting: Vec<i32> = forwarded
            .iter()
            .copied()
            .filter(|&s| s != libc::SIGCHLD)
            .chain([go_signal()])
            .collect();
        let held = block(&waiting);
        // Not held forever: a host that cannot release it only loses the OOM watch.
        let wait = libc::timespec {
            tv_sec: HOLD_LIMIT_SECS,
            tv_nsec: 0,
        };
        let sig = loop {
            // SAFETY: sigtimedwait reads the valid set and timeout; no siginfo is asked for.
            let sig = unsafe { libc::sigtimedwait(&held, std::ptr::null_mut(), &wait) };
            if sig >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break sig;
            }
        };
        if sig > 0 && sig != go_signal() {
            return 128 + sig;
        }
    }
    let set = block(&forwarded);
    // SAFETY: a signalfd for the blocked set; the kernel validates the arguments.
    let sigfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if sigfd < 0 {
        eprintln!(
            "agentkernel: error: signalfd: {}",
            std::io::Error::last_os_error()
        );
        return 125;
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    let sigfd: OwnedFd = unsafe { rustix::fd::FromRawFd::from_raw_fd(sigfd) };
    cmd.process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // The command starts with no signal blocked: the mask above is this process's own, and a
    // child would inherit it (measured: SigBlk of the command equalled the role's).
    // SAFETY: sigprocmask with a valid empty set is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            let empty = sigset(&[]);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return not_started(&program, &e),
    };
    let pid = child.id() as libc::pid_t;
    let mut out: Option<OwnedFd> = child.stdout.take().map(OwnedFd::from);
    let mut err: Option<OwnedFd> = child.stderr.take().map(OwnedFd::from);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = args.timeout.map(|t| std::time::Instant::now() + t);
    let mut timed_out = false;
    let status = loop {
        let mut fds = [
            pollfd(out.as_ref()),
            pollfd(err.as_ref()),
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let wait_ms = match deadline {
            Some(d) if !timed_out => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                // Rounded up, so that the deadline has passed when poll returns.
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
            _ => -1,
        };
        // SAFETY: a valid array of three pollfd structs; unused slots have fd -1.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, wait_ms) };
        if n < 0 {
            continue;
        }
        // Checked whatever poll answered: a command that writes without pause keeps it busy.
        if !timed_out && deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            timed_out = true;
            // SAFETY: kill(2) on the command's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        if n == 0 {
            continue;
        }
        for (slot, target) in [(0usize, 1), (1, 2)] {
            if fds[slot].revents == 0 {
                continue;
            }
            let stream = if slot == 0 { &mut out } else { &mut err };
            if let Some(fd) = stream.as_ref() {
                match rustix::io::read(fd, &mut buf) {
                    Ok(0) | Err(_) => *stream = None,
                    Ok(n) => write_all(target, &buf[..n]),
                }
            }
        }
        if fds[2].revents & libc::POLLIN == 0 {
            continue;
        }
        let mut info = [0u8; 128];
        let Ok(n) = rustix::io::read(&sigfd, &mut info) else {
            continue;
        };
        if n < 4 {
            continue;
        }
        let sig = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32;
        if sig == libc::SIGCHLD {
            // Reap the command and any orphan reparented to this process (when it is PID 1).
            let mut ended = None;
            loop {
                let mut st = 0;
                // SAFETY: waitpid on our own children, with a valid status pointer.
                let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if r <= 0 {
                    break;
                }
                if r == pid {
                    ended = Some(std::process::ExitStatus::from_raw(st));
                }
            }
            if let Some(status) = ended {
                break status;
            }
        } else if sig == kill_signal() {
            // SAFETY: kill(2) on the command's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        } else {
            // SAFETY: as above; a group that is gone yields ESRCH.
            unsafe { libc::kill(-pid, sig) };
        }
    };
    // What the command wrote before it ended is delivered; nothing after.
    for (stream, target) in [(out.take(), 1), (err.take(), 2)] {
        if let Some(fd) = stream
            && rustix::io::ioctl_fionbio(&fd, true).is_ok()
        {
            while let Ok(n) = rustix::io::read(&fd, &mut buf) {
                if n == 0 {
                    break;
                }
                write_all(target, &buf[..n]);
            }
        }
    }
    if timed_out {
        return TIMED_OUT;
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 125,
    }
}

fn pollfd(fd: Option<&OwnedFd>) -> libc::pollfd {
    libc::pollfd {
        fd: fd.map_or(-1, |f| f.as_raw_fd()),
        events: libc::POLLIN,
        revents: 0,
    }
}

fn write_all(fd: i32, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: writing from a valid buffer to our own stdout/stderr.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        data = &data[n as usize..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_role_arguments() {
        let a = parse(
            ["--seccomp", "deny", "--", "ls", "-l"]
                .map(OsString::from)
                .into_iter(),
        )
        .expect("parse");
        assert!(a.seccomp.is_some() && !a.tty && a.timeout.is_none());
        assert_eq!(a.argv, ["ls", "-l"].map(OsString::from));
        let a = parse(
            ["--timeout-ms", "1500", "--", "true"]
                .map(OsString::from)
                .into_iter(),
        )
        .expect("parse");
        assert_eq!(a.timeout, Some(std::time::Duration::from_millis(1500)));
        assert!(
            parse(
                ["--timeout-ms", "soon", "--", "true"]
                    .map(OsString::from)
                    .into_iter()
            )
            .is_err()
        );
        assert!(parse(["--"].map(OsString::from).into_iter()).is_err());
        assert!(parse(["--bogus"].map(OsString::from).into_iter()).is_err());
    }
}
