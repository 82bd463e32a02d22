//! Signals the CLI passes on: Ctrl-C and friends go to the command in the sandbox, terminal
//! resizes to its pty. Handlers only write one byte to a pipe (async-signal-safe) and need no
//! thread, which matters because the native backend forks without exec.
//!
//! Before the command exists, the same signals stop the image being prepared (a pull, an
//! unpack): the CLI then exits as a killed command would (128 + the signal's number).

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
}

impl SignalPipe {
    /// A pipe receiving the number of each of `signals` as it arrives; with `stop_images`,
    /// the same handler also stops image preparation (`run`: one handler per signal).
    pub fn register(signals: &[i32], stop_images: bool) -> std::io::Result<SignalPipe> {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        for &sig in signals {
            let fd = write.try_clone()?;
            // SAFETY: the handler only calls write(2), which is async-signal-safe, on a
            // descriptor it owns for the rest of the process's life, and makes one atomic
            // store (`interrupt::request`).
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    if stop_images {
                        agentkernel_image::interrupt::request(sig);
                    }
                    let _ = rustix::io::write(&fd, &[sig as u8]);
                })?;
            }
        }
        Ok(SignalPipe {
            read,
            _write: write,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

/// Makes `signals` stop image preparation in this process (see `agentkernel_image::interrupt`):
/// a handler that forwards them to a command would otherwise leave a pull running on.
pub fn stop_image_preparation_on(signals: &[i32]) -> std::io::Result<()> {
    for &sig in signals {
        // SAFETY: the action is one atomic store (`interrupt::request`), async-signal-safe.
        unsafe {
            signal_hook::low_level::register(sig, move || {
                agentkernel_image::interrupt::request(sig);
            })?;
        }
    }
    Ok(())
}

/// The exit code after a failure: a failure caused by a signal that stopped image preparation
/// exits as a command killed by that signal would (130 for Ctrl-C, 143 for SIGTERM).
pub fn exit_code_after(error_code: i32) -> i32 {
    agentkernel_image::interrupt::requested().map_or(error_code, |signal| 128 + signal)
}

/// Signals forwarded to a running command.
pub const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
