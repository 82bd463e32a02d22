//! The agent's two kinds of failure: a boot step that failed ([`BootError`], fatal: PID 1 prints
//! it on the console and exits, which panics the kernel and ends the VM), and a request that
//! failed ([`Fail`], sent back to the host as a `GuestError` while the agent carries on).

use agentkernel_proto::{ErrorKind, GuestError};
use rustix::io::Errno;

/// A boot step that failed; the VM cannot serve anything without it.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{step} {path}: {errno}")]
    Sys {
        step: &'static str,
        path: String,
        errno: Errno,
    },
    #[error(
        "no virtio-serial port named ak.* appeared within {0} s: start QEMU with \
         `-device virtserialport,name=ak.0,…` (MicroVm::serial_ports)"
    )]
    NoPorts(u64),
    #[error("{0}")]
    Sandbox(String),
    #[error("the kernel command line has a bad value: {0}")]
    Cmdline(String),
}

/// A closure turning an errno into a [`BootError::Sys`] naming the step and path.
pub fn boot_step(step: &'static str, path: &str) -> impl FnOnce(Errno) -> BootError {
    let path = path.to_owned();
    move |errno| BootError::Sys { step, path, errno }
}

/// A request that failed: the kind the host maps and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Fail {
    pub kind: ErrorKind,
    pub message: String,
}

impl Fail {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// A system call on `what` failed with `errno`: the kind follows the errno.
    pub fn errno(what: &str, errno: Errno) -> Self {
        let kind = match errno {
            Errno::NOENT => ErrorKind::NotFound,
            Errno::ACCESS | Errno::PERM | Errno::ROFS => ErrorKind::PermissionDenied,
            Errno::NOTDIR
            | Errno::ISDIR
            | Errno::INVAL
            | Errno::LOOP
            | Errno::XDEV
            | Errno::NOTEMPTY
            | Errno::EXIST
            | Errno::NAMETOOLONG => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        let hint = match errno {
            Errno::ROFS => " (the sandbox's root is read-only; /tmp is writable)",
            Errno::XDEV => " (the path leaves the sandbox's root)",
            _ => "",
        };
        Self::new(kind, format!("{what}: {errno}{hint}"))
    }
}

impl From<Fail> for GuestError {
    fn from(f: Fail) -> Self {
        GuestError {
            kind: f.kind,
            message: f.message,
        }
    }
}
