//! Low-level host helpers shared by every agentkernel backend and surface, below them all in
//! the dependency graph (DESIGN: "what two backends share lives in a small crate of its own
//! below them"):
//!
//! - [`proc`]: identity of host processes (start time, liveness, the boot id), so that a pid
//!   recorded by one process is only ever acted on while it is still the same process;
//! - [`signal`]: signals to a process or its group, by a non-zero [`Pid`] only — pid 0 (the
//!   caller's own group) cannot be spelled;
//! - [`terminal`]: the caller's terminal: its size and raw mode for the life of a guard;
//! - [`host_dest`] and [`fs`]: where a copy out of a sandbox lands on the host, created
//!   relative to opened directories and never through a link.

#![forbid(unsafe_code)]

pub mod fs;
pub mod host_dest;
pub mod proc;
pub mod signal;
pub mod terminal;

pub use rustix::process::Pid;
