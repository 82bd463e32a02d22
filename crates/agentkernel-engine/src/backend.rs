//! The Backend trait: what the engine needs from a sandbox technology, and the registry of the
//! backends this build has.

use crate::error::{EngineError, Result};
use crate::store::RuntimeState;
use agentkernel_core::{BackendKind, ExecRequest, ExitStatus, ImageRef, SandboxSpec};
use agentkernel_image::{ImageStore, Rootfs};
use agentkernel_native::Sink;
use rustix::fd::BorrowedFd;
use std::path::{Path, PathBuf};

/// Whether a backend can be used here, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub usable: bool,
    pub reason: String,
}

/// What a backend offers beyond the lifecycle, as `GET /backends` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// The project directory can be mounted (permissive profile, compatibility modes).
    pub mount_cwd: bool,
    /// The user's home can be mounted read-only (permissive profile).
    pub mount_home: bool,
    /// Interactive sessions on a pty (`attach`).
    pub attach: bool,
    pub host_volumes: bool,
    pub ssh: bool,
    pub proxy_secret_bindings: bool,
    pub secret_files: bool,
    pub snapshots: bool,
    pub resume: bool,
    pub full_state_pause_resume: bool,
    pub full_state_fork: bool,
    pub endpoints: bool,
}

/// Where a sandbox's writable layer lives.
pub enum Persistence<'a> {
    /// In memory; gone when the sandbox stops. The sandbox dies with the calling process.
    Ephemeral,
    /// On disk under this directory; survives stop/start and the calling process.
    Persistent { dir: &'a Path },
}

/// A started sandbox as seen by the engine.
pub struct Started {
    pub runtime: RuntimeState,
    /// Ephemeral sandboxes: closing this ends the sandbox.
    pub lifeline: Option<i32>,
}

/// Signals and terminal events a surface passes through to a command.
#[derive(Clone, Copy, Default)]
pub struct Controls<'a> {
    /// Bytes are signal numbers to forward to the command.
    pub signals: Option<BorrowedFd<'a>>,
    /// Readable when the caller's terminal was resized (attach).
    pub resized: Option<BorrowedFd<'a>>,
}

/// The general throwaway sandbox: started, the command exec'd into it, stopped.
pub(crate) fn start_exec_stop<B: Backend + ?Sized>(
    backend: &B,
    spec: &SandboxSpec,
    rootfs: &Rootfs,
    exec: &ExecRequest,
    sink: &mut Sink<'_>,
    controls: Controls<'_>,
) -> Result<ExitStatus> {
    let started = backend.start(spec, rootfs, &spec.name, Persistence::Ephemeral)?;
    let result = backend.exec(spec, &started.runtime, exec, sink, controls);
    let stopped = backend.stop(&started.runtime, started.lifeline);
    let status = result?;
    stopped?;
    Ok(status)
}

pub trait Backend {
    fn kind(&self) -> BackendKind;
    fn readiness(&self) -> Readiness;
    /// The check made before each operation: what `readiness` says, unless the backend has a
    /// cheaper one (what it leaves out then fails on the operation itself, with its reason).
    fn ready_for_use(&self) -> Readiness {
        self.readiness()
    }
    fn capabilities(&self) -> Capabilities;
    /// Makes the image ready for this backend: agentkernel's own store prepares root
    /// directories for the native backend; container engines pull or load it themselves.
    fn resolve_image(&self, image: &ImageRef, store: &ImageStore) -> Result<Rootfs> {
        Ok(store.resolve(image)?)
    }
    /// A throwaway sandbox for one command (`run`): started, the command run, torn down.
    /// Backends with a cheaper one-shot path (a container whose command is the user's)
    /// override it.
    fn run_ephemeral(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        start_exec_stop(self, spec, rootfs, exec, sink, controls)
    }
    /// Deletes what the backend keeps for sandbox `name` beyond its directory (a container's
    /// writable layer), when the sandbox is removed.
    fn destroy(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    fn start(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        instance: &str,
        persistence: Persistence<'_>,
    ) -> Result<Started>;
    fn stop(&self, runtime: &RuntimeState, lifeline: Option<i32>) -> Result<()>;
    fn is_running(&self, runtime: &RuntimeState) -> bool;
    fn exec(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus>;
    fn attach(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        controls: Controls<'_>,
        record: Option<&mut agentkernel_native::attach::Recorder<'_>>,
    ) -> Result<ExitStatus>;
    fn copy_in(&self, runtime: &RuntimeState, host: &Path, inside: &Path) -> Result<PathBuf>;
    fn copy_out(&self, runtime: &RuntimeState, inside: &Path, host: &Path) -> Result<PathBuf>;
    /// A whole file of the sandbox, refused above `limit` bytes. `path` is absolute and is
    /// resolved inside the sandbox's root: neither `..` nor a symlink leads out of it.
    fn read_file(&self, runtime: &RuntimeState, path: &Path, limit: u64) -> Result<Vec<u8>>;
    /// Creates or replaces a file (and its missing parent directories), resolved like
    /// `read_file`.
    fn write_file(&self, runtime: &RuntimeState, path: &Path, data: &[u8]) -> Result<()>;
    /// Removes a file, a symlink or an empty directory, resolved like `read_file`.
    fn remove_file(&self, runtime: &RuntimeState, path: &Path) -> Result<()>;
    /// Removes leftovers of instances that are no longer running (after crashes), and of
    /// sandboxes no longer in the store (`sandboxes` lists those that are); returns what was
    /// removed.
    fn collect_garbage(&self, live_instances: &[String], sandboxes: &[String]) -> Vec<String>;
}

/// The backends this build has (`backend_for` gives each of them and no other).
pub const BUILT: &[BackendKind] = &[
    BackendKind::Native,
    BackendKind::Docker,
    BackendKind::Podman,
    BackendKind::Gvisor,
];

/// The backend for `kind`, if this build has it.
pub fn backend_for(kind: BackendKind, home: &Path) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Native => Ok(Box::new(crate::native::NativeBackend::new(home))),
        BackendKind::Docker | BackendKind::Podman | BackendKind::Gvisor => {
            Ok(Box::new(crate::docker::DockerBackend::new(kind, home)))
        }
        other => Err(EngineError::BackendUnavailable(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_lists_exactly_the_backends_this_build_gives() {
        let home = std::env::temp_dir();
        for kind in BackendKind::ALL {
            assert_eq!(
                backend_for(kind, &home).is_ok(),
                BUILT.contains(&kind),
                "{kind}"
            );
        }
    }
}
