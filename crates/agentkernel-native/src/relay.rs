//! Turning a spawned command into the exec event stream: `Started`, stdout/stderr chunks as
//! they are produced, then `Exit`.

use crate::exec::Spawned;
use agentkernel_core::{ExecEvent, ExitStatus};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::mem::MaybeUninit;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

pub use agentkernel_core::exec::Sink;

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
        timed_out: ending == Ending::TimedOut,
        ..ExitStatus::default()
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
/// group gets the signal. Pid 0 (no process) is never signalled.
fn forward_signal(pid: u32, sig: i32) {
    if let Some(leader) = agentkernel_sys::signal::pid(pid) {
        agentkernel_sys::signal::signal_group(leader, sig);
    }
}

/// Kills the command and everything in its process group.
fn kill_group(pid: u32) {
    if let Some(leader) = agentkernel_sys::signal::pid(pid) {
        agentkernel_sys::signal::kill_group(leader);
    }
}
