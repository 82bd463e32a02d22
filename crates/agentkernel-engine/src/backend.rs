//! Which backends this process has: the registry the binary installs at startup, and the
//! lookup the engine makes through it. The trait itself is `agentkernel_backend::Backend`.

use crate::error::{EngineError, Result};
pub use agentkernel_backend::{
    Backend, BackendError, Capabilities, Controls, Persistence, Readiness, Registry, RuntimeState,
    Started, start_exec_stop,
};
use agentkernel_core::BackendKind;
use std::path::Path;
use std::sync::OnceLock;

static REGISTRIES: OnceLock<&'static [Registry]> = OnceLock::new();

/// Gives this process its backends; the binary calls it once, before any engine work. Later
/// calls change nothing.
pub fn install(registries: &'static [Registry]) {
    let _ = REGISTRIES.set(registries);
}

/// The backend kinds this process has, in the registry's order (none before `install`).
pub fn available() -> impl Iterator<Item = BackendKind> {
    REGISTRIES
        .get()
        .into_iter()
        .flat_map(|all| all.iter())
        .flat_map(|r| r.kinds.iter().copied())
}

/// The backend for `kind`, if this process has it.
pub fn backend_for(kind: BackendKind, home: &Path) -> Result<Box<dyn Backend>> {
    REGISTRIES
        .get()
        .into_iter()
        .flat_map(|all| all.iter())
        .find(|r| r.kinds.contains(&kind))
        .and_then(|r| (r.make)(kind, home))
        .ok_or_else(|| EngineError::BackendUnavailable {
            backend: kind.to_string(),
            available: available()
                .map(|b| b.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}
