//! The errors of the micro-VM backend, each naming its cause and what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong preparing or running a micro-VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "the VMM {qemu} was not found: install Debian's qemu-system-x86 (bash scripts/setup.sh \
         installs it)"
    )]
    QemuMissing { qemu: PathBuf },
    #[error("could not start the VMM {qemu}: {source}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the guest kernel {0} does not exist: build it with scripts/build-kernel.sh or set AGENTKERNEL_KERNEL to a vmlinux"
    )]
    KernelMissing(PathBuf),
    #[error(
        "the VM did not exit within {after:?} and was killed; the end of its serial console:\n{tail}"
    )]
    Timeout { after: Duration, tail: String },
    #[error("reading the VM's console failed: {0}")]
    Console(#[source] std::io::Error),
    #[error(
        "could not tell the host's TSC frequency ({0}); the guest needs it under TCG \
         (tsc_early_khz): set it with MicroVm::tsc_khz"
    )]
    TscUnknown(String),
    #[error(
        "initramfs entry {path:?}: {reason}; use a relative path of plain components and data \
         below 4 GiB"
    )]
    InitramfsEntry { path: String, reason: &'static str },
    #[error(
        "the guest agent (agentkernel-guest) was not found at {}: build it with `cargo build -p agentkernel-guest` or set AGENTKERNEL_GUEST",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
    )]
    GuestMissing(Vec<PathBuf>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the VM's image disk: {0}")]
    Image(String),
    #[error("the VMM did not start: {0}")]
    Launch(String),
    #[error("the guest did not answer: {0}")]
    Guest(String),
    #[error("QMP: {0}")]
    Qmp(String),
}
