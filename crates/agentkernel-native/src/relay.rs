//! Turning a spawned command into the exec event stream: `Started`, stdout/stderr chunks as
//! they are produced, then `Exit`.

use crate::exec::Spawned;
use agentkernel_core::{ExecEvent, ExitStatus};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::io::Write;
use std::mem::MaybeUninit;
use std::ops::ControlFlow;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// Receives events; `Break` means the consumer went away and the command must be killed.
pub type Sink<'a> = dyn FnMut(ExecEvent) -> ControlFlow<()> + 'a;

/// How a relay ended besides the command's own exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited,
    TimedOut,
    Cancelled,
}

/// A started command as the relay sees it: a process this one spawned (`Spawned`), or the first
/// command of a throwaway sandbox, spawned by the sandbox's init (`launch::Launched`).
pub trait Command {
    /// The command's pid, as reported in `Started`.
    fn pid(&self) -> u32;
    /// The caller's ends of the command's stdin, stdout and stderr.
    fn take_stdio(&mut self) -> (Option<std::fs::File>, Option<OwnedFd>, Option<OwnedFd>);
    /// Readable once the command has exited.
    fn exited(&self) -> Option<BorrowedFd<'_>>;
    /// Sends `sig` to the command's process group.
    fn signal(&self, sig: i32);
    /// Kills the command and everything in its process group.
    fn kill(&self);
    /// Waits for the command to exit.
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus>;
}

impl Command for Spawned {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn take_stdio(&mut self) -> (Option<std::fs::File>, Option<OwnedFd>, Option<OwnedFd>) {
        (self.stdin.take(), self.stdout.take(), self.stderr.take())
    }

    fn exited(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    fn signal(&self, sig: i32) {
        forward_signal(self.pid, sig);
    }

    fn kill(&self) {
        kill_group(self.pid);
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        Spawned::wait(self)
    }
}

/// Streams the child's output to `sink` until it exits, the timeout passes, or the sink breaks.
/// The command's exit ends the stream, as with `docker exec`: output already written is
/// delivered, but a background process it left holding the pipes (`server &`) does not keep the
/// caller waiting.
/// `signals` is a pipe whose bytes are signal numbers to forward to the command (Ctrl-C at the
/// CLI); `stdin` forwards the caller's standard input.
pub fn relay(
    child: &mut dyn Command,
    sink: &mut Sink<'_>,
    timeout: Option<Duration>,
    signals: Option<BorrowedFd<'_>>,
    forward_stdin: bool,
) -> std::io::Result<(ExitStatus, Ending)> {
    let _ = sink(ExecEvent::Started { pid: child.pid() });
    let (stdin, out, err) = child.take_stdio();
    let stdin_thread = match (forward_stdin, stdin) {
        (true, Some(mut to_child)) => Some(std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_child);
        })),
        _ => None,
    };
    let (mut out, mut err) = (out, err);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut ending = Ending::Exited;
    // Left uninitialised: only the pages the kernel fills get touched (a zeroed 64 KiB buffer
    // costs 16 page faults on every run, output or not).
    let mut buf = Box::<[u8]>::new_uninit_slice(64 * 1024);
    while out.is_some() || err.is_some() {
        let wait_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    ending = Ending::TimedOut;
                    break;
                }
                left.as_millis().min(i32::MAX as u128) as i32
            }
            None => -1,
        };
        let mut fds = [
            pollfd(out.as_ref().map(|f| f.as_fd())),
            pollfd(err.as_ref().map(|f| f.as_fd())),
            pollfd(signals),
            pollfd(child.exited()),
        ];
        // SAFETY: `fds` is a valid array of pollfd structs; unused slots have fd -1.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[2].revents & libc::POLLIN != 0
            && let Some(sig_fd) = signals
        {
            let mut sig = [0u8; 16];
            if let Ok(n) = rustix::io::read(sig_fd, &mut sig) {
                for s in &sig[..n] {
                    child.signal(*s as i32);
                }
            }
        }
        if fds[3].revents != 0 {
            for (stream, is_out) in [(&mut out, true), (&mut err, false)] {
                if let Some(fd) = stream.take() {
                    drain(&fd, is_out, sink, &mut buf);
                }
            }
            break;
        }
        for (slot, is_out) in [(0usize, true), (1, false)] {
            if fds[slot].revents == 0 {
                continue;
            }
            let stream = if is_out { &mut out } else { &mut err };
            let Some(fd) = stream.as_ref() else { continue };
            match rustix::io::read(fd, &mut buf[..]) {
                Err(_) | Ok(([], _)) => *stream = None,
                Ok((read, _)) => {
                    let chunk = read.to_vec();
                    let event = if is_out {
                        ExecEvent::Stdout(chunk)
                    } else {
                        ExecEvent::Stderr(chunk)
                    };
                    if sink(event).is_break() {
                        ending = Ending::Cancelled;
                        out = None;
                        err = None;
                    }
                }
            }
        }
    }
    if ending != Ending::Exited {
        child.kill();
    }
    let status = child.wait()?;
    drop(stdin_thread);
    let mut exit = ExitStatus {
        code: status.code().unwrap_or(0),
        signal: status.signal(),
        oom_killed: false,
        timed_out: ending == Ending::TimedOut,
    };
    if let Some(sig) = exit.signal {
        exit.code = 128 + sig;
    }
    if ending == Ending::TimedOut && exit.signal.is_some() {
        exit.code = 124;
    }
    Ok((exit, ending))
}

/// Delivers what is already in a pipe without waiting for more (the command has exited; a
/// process it left behind may hold the pipe open forever).
fn drain(fd: &OwnedFd, is_out: bool, sink: &mut Sink<'_>, buf: &mut [MaybeUninit<u8>]) {
    if rustix::io::ioctl_fionbio(fd, true).is_err() {
        return;
    }
    while let Ok((read, _)) = rustix::io::read(fd, &mut *buf) {
        if read.is_empty() {
            break;
        }
        let chunk = read.to_vec();
        let event = if is_out {
            ExecEvent::Stdout(chunk)
        } else {
            ExecEvent::Stderr(chunk)
        };
        if sink(event).is_break() {
            break;
        }
    }
}

fn pollfd(fd: Option<BorrowedFd<'_>>) -> libc::pollfd {
    libc::pollfd {
        fd: fd.map_or(-1, |f| f.as_raw_fd()),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The command leads its own session and process group (it called setsid), so its whole
/// group gets the signal.
///
/// Pid 0 (what a container engine reports for a command whose host pid it does not give) is
/// refused, as is a pid that is no positive `pid_t`: `kill(0, sig)` and `kill(-1, sig)` would
/// signal the caller's own group or every process it may signal.
fn forward_signal(pid: u32, sig: i32) {
    let Some(pid) = signallable(pid) else {
        return;
    };
    // SAFETY: kill(2) on our child's process group; a stale group at worst yields ESRCH.
    unsafe { libc::kill(-pid, sig) };
}

/// `pid` as a `pid_t` that names one process (or, negated, one group): never 0, never -1.
fn signallable(pid: u32) -> Option<libc::pid_t> {
    libc::pid_t::try_from(pid).ok().filter(|p| *p > 1)
}

/// Kills the command and everything in its process group. Pid 0 and 1 are refused (see
/// `forward_signal`).
pub fn kill_group(pid: u32) {
    let Some(leader) = signallable(pid) else {
        return;
    };
    forward_signal(pid, libc::SIGKILL);
    // SAFETY: as above, for the leader itself in case it left its group.
    unsafe { libc::kill(leader, libc::SIGKILL) };
}

/// Writes events to the caller's stdout and stderr as they come: the CLI's sink.
pub fn write_to_stdio(event: ExecEvent) -> ControlFlow<()> {
    let result = match &event {
        ExecEvent::Stdout(data) => {
            let mut o = std::io::stdout().lock();
            o.write_all(data).and_then(|_| o.flush())
        }
        ExecEvent::Stderr(data) => {
            let mut e = std::io::stderr().lock();
            e.write_all(data).and_then(|_| e.flush())
        }
        _ => Ok(()),
    };
    match result {
        // A closed stdout (`| head`) means nobody wants more output.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_zero_and_one_are_never_signalled() {
        assert_eq!(signallable(0), None);
        assert_eq!(signallable(1), None);
        assert_eq!(signallable(u32::MAX), None, "would be kill(1, …) negated");
        assert_eq!(signallable(42), Some(42));
        // Before the guard this was kill(0, SIGKILL): the test's own process group died.
        kill_group(0);
        forward_signal(0, libc::SIGKILL);
    }
}
