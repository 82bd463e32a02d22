//! The micro-VM backend of agentkernel — its foundations only, not a usable backend yet (see
//! docs/microvm.md for what exists and what is missing).
//!
//! What is here:
//! - [`qemu`]: the command line of QEMU's `-M microvm` machine for our guest kernel (ELF
//!   `vmlinux` entered through PVH, serial console, no ACPI) and [`qemu::run_to_exit`], which
//!   boots a guest and collects its serial output with a timeout;
//! - [`initramfs`]: a writer of newc cpio archives, the initramfs format the kernel unpacks;
//! - [`host`]: facts about the host a guest needs (the TSC frequency for `tsc_early_khz`).
//!
//! The guest kernel itself is built by `scripts/build-kernel.sh` from Debian's
//! `linux-source-6.1` and the fragment `kernel/agentkernel.config` of this crate.

#![forbid(unsafe_code)]

pub mod accel;
pub mod assets;
pub mod backend;
pub mod channel;
pub mod clone;
pub mod disk;
pub mod error;
pub mod files;
pub mod host;
pub mod initramfs;
pub mod qemu;
pub mod vmm;

pub use backend::{MicroVmBackend, REGISTRY};
pub use error::VmError;
