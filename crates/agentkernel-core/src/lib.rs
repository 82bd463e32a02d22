//! Domain types shared by every part of agentkernel: what a sandbox is (`SandboxSpec`), what it
//! may do (`Policy`, built from a `Profile`), how it is configured (`Config`), what an exec
//! produces (`ExecEvent`), and the validation every surface relies on.

#![forbid(unsafe_code)]

pub mod backend;
pub mod compat;
pub mod config;
pub mod detect;
pub mod duration;
pub mod egress;
pub mod error;
pub mod exec;
pub mod hostenv;
pub mod image;
pub mod name;
pub mod paths;
pub mod policy;
pub mod ports;
pub mod source;
pub mod spec;
pub mod volume;

#[cfg(test)]
mod fuzz;

pub use error::{CoreError, ErrorKind, HasKind};
pub use exec::{ExecEvent, ExecRequest, ExitStatus, Recorder, Sink};
pub use image::ImageRef;
pub use name::validate_name;
pub use policy::{NetworkMode, Policy, Profile};
pub use spec::{BackendKind, SandboxSpec};
