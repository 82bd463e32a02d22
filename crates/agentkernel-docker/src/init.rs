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
//! - [`RUN_ROLE`] `[--tty] [--seccomp deny|allow] -- ARGV…`: every command. Starts ARGV in a
//!   process group of its own with pipes for its output, which it relays, and ends when ARGV
//!   does, as the native backend does: output already written is delivered, and a background
//!   process ARGV left holding the pipes does not keep the caller waiting. Signals it gets are
//!   passed to ARGV's group; [`kill_signal`] kills the group and exits 137 (timeouts,
//!   cancelled streams). A command that is missing or not executable is reported on stderr
//!   and exits 127 or 126. With `--tty` (attach) it execs ARGV in place on the terminal the
//!   engine made. With `--seccomp` it installs the native backend's filter first (gVisor's
//!   runsc ignores the profile the engine is given).

use rustix::fd::{AsRawFd, OwnedFd};
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};

pub const INIT_ROLE: &str = "__container-init";
pub const RUN_ROLE: &str = "__container-run";

/// The signal asking a `RUN_ROLE` process to kill its command's group and exit.
pub fn kill_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

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

fn block(set: &libc::sigset_t) {
    // SAFETY: blocks signals for this (single-threaded) process; the set is valid.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
}

/// PID 1 of a persistent sandbox.
pub fn init_main() -> i32 {
    let set = sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    block(&set);
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
    argv: Vec<OsString>,
}

fn parse(args: impl Iterator<Item = OsString>) -> Result<RunArgs, String> {
    let mut args = args.peekable();
    let mut parsed = RunArgs {
        tty: false,
        seccomp: None,
        argv: Vec::new(),
    };
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--") => {
                parsed.argv = args.collect();
                break;
            }
            Some("--tty") => parsed.tty = true,
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
        let program = agentkernel_native::seccomp::program(mode);
        if let Err(e) = agentkernel_native::seccomp::install(&program) {
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
    let set = sigset(&forwarded);
    block(&set);
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
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return not_started(&program, &e),
    };
    let pid = child.id() as libc::pid_t;
    let mut out: Option<OwnedFd> = child.stdout.take().map(OwnedFd::from);
    let mut err: Option<OwnedFd> = child.stderr.take().map(OwnedFd::from);
    let mut buf = vec![0u8; 64 * 1024];
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
        // SAFETY: a valid array of three pollfd structs; unused slots have fd -1.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if n < 0 {
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
        assert!(a.seccomp.is_some() && !a.tty);
        assert_eq!(a.argv, ["ls", "-l"].map(OsString::from));
        assert!(parse(["--"].map(OsString::from).into_iter()).is_err());
        assert!(parse(["--bogus"].map(OsString::from).into_iter()).is_err());
    }
}
