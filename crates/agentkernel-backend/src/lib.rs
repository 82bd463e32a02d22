//! The neutral boundary between the engine and the sandbox technologies (DESIGN: "The
//! Backend trait"), modelled on Cloud Hypervisor's `hypervisor` crate: the engine drives every
//! backend through [`Backend`] alone, and each backend crate (`agentkernel-native`,
//! `agentkernel-docker`, and the ones to come) implements it without knowing the engine or
//! any other backend. The types the trait passes (sinks, recorders, readiness, capabilities,
//! runtime state, started handles) are in `agentkernel_core::backend`; failures are a
//! [`BackendError`] that carries its [`ErrorKind`], decided once where the backend's own
//! error is defined (`HasKind`).
//!
//! The binary chooses which backends a process has ([`Registry`]); the engine asks it for
//! one by kind.

#![forbid(unsafe_code)]

pub mod usage;

pub use agentkernel_core::backend::{
    Capabilities, Captured, Controls, Persistence, Readiness, RuntimeState, Started,
};
use agentkernel_core::exec::{Recorder, Sink};
use agentkernel_core::{
    BackendKind, ErrorKind, ExecRequest, ExitStatus, HasKind, ImageRef, SandboxSpec,
};
use agentkernel_image::{ImageStore, Rootfs};
use std::path::{Path, PathBuf};

/// A backend's failure: what to tell the user, and its kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// An error with no underlying cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> BackendError {
        BackendError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The kind every surface answers from.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend's own error underneath, to look for a particular one.
    pub fn source_as<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.as_deref().and_then(|s| s.downcast_ref::<E>())
    }

    /// For `map_err`: a host I/O failure of agentkernel's own (creating a directory, say).
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let context = context.into();
        move |source| BackendError {
            kind: ErrorKind::Internal,
            message: format!("{context}: {source}"),
            source: Some(Box::new(source)),
        }
    }
}

/// Every error that knows its kind becomes a `BackendError` with `?`.
impl<E: HasKind + std::error::Error + Send + Sync + 'static> From<E> for BackendError {
    fn from(e: E) -> BackendError {
        BackendError {
            kind: e.kind(),
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// The general throwaway sandbox: started, the command exec'd into it, stopped.
pub fn start_exec_stop<B: Backend + ?Sized>(
    backend: &B,
    spec: &SandboxSpec,
    rootfs: &Rootfs,
    exec: &ExecRequest,
    sink: &mut Sink<'_>,
    controls: Controls<'_>,
) -> Result<ExitStatus> {
    let started = backend.start(spec, rootfs, &spec.name, Persistence::Ephemeral)?;
    let result = backend.exec(spec, &started.runtime, exec, sink, controls);
    let stopped = backend.stop(started);
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
    /// Refuses a sandbox the backend could never start (a policy it cannot enforce), when it
    /// is resolved: `create` fails then, with nothing made, rather than every later `start`.
    fn check_spec(&self, _spec: &SandboxSpec, _rootfs: &Rootfs) -> Result<()> {
        Ok(())
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
    /// Stops the sandbox `sandbox` owns, closing its lifeline if it has one.
    fn stop(&self, sandbox: Started) -> Result<()>;
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
        record: Option<&mut Recorder<'_>>,
    ) -> Result<ExitStatus>;
    /// What the running sandbox uses now (`stats`): by default the cgroups its init is in;
    /// `None` when it cannot be measured.
    fn usage(&self, runtime: &RuntimeState) -> Option<usage::Usage> {
        usage::of_cgroups(runtime.pid)
    }
    /// Bytes the sandbox wrote that live outside its directory under the state directory (a
    /// container's writable layer); `None` when everything it wrote is in that directory.
    fn written_elsewhere(&self, _runtime: &RuntimeState) -> Option<u64> {
        None
    }
    /// The running sandbox's network namespace, for the engine to route to the host's egress
    /// proxy (`agentkernel_net::netns::attach`). A backend whose sandboxes have no kernel
    /// network namespace of their own that the proxy can serve refuses, saying which can.
    fn network_namespace(&self, _runtime: &RuntimeState) -> Result<std::fs::File> {
        Err(BackendError::new(
            ErrorKind::NotEnforceable,
            format!(
                "the {} backend cannot route a sandbox through the egress proxy (network allowlists, full network and --secret need it): use -B native, -B docker or -B podman, or --no-network",
                self.kind().as_str()
            ),
        ))
    }
    /// Whether this backend can publish ports (`-P`): the engine serves them from host
    /// listeners joined to connections made in the sandbox's network namespace
    /// (`agentkernel_net::forward`), so only backends whose sandboxes have one on this host
    /// can. Asked before a sandbox is made, so a refusal leaves nothing behind.
    fn publish_ports(&self) -> Result<()> {
        Err(BackendError::new(
            ErrorKind::NotEnforceable,
            format!(
                "the {} backend cannot publish ports (-P/--publish): its sandboxes have no network namespace on this host to forward into; use -B native, -B docker or -B podman",
                self.kind().as_str()
            ),
        ))
    }
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
    /// Captures the files sandbox `spec.name` has written — its writable layer, over its own
    /// `spec.layers` — as a new read-only layer named from `id` (engine-made: 32 lowercase hex
    /// digits), without stopping it: a running sandbox (`runtime` given) has its processes
    /// frozen only for the instant a consistent copy needs. `dir` is the sandbox's directory.
    /// On error nothing of the new layer is left. Any number of sandboxes may then start from
    /// the returned layers at once, each with its own writable layer over them.
    fn capture(
        &self,
        _spec: &SandboxSpec,
        _dir: &Path,
        _runtime: Option<&RuntimeState>,
        _id: &str,
    ) -> Result<Captured> {
        Err(self.no_snapshots())
    }
    /// Undoes what a capture interrupted by a crash left on a running sandbox (its processes
    /// frozen or paused), so it runs again. Nothing to undo is no error.
    fn settle_capture(&self, _runtime: &RuntimeState) -> Result<()> {
        Ok(())
    }
    /// Deletes a layer `capture` made; the engine calls it once no sandbox or snapshot names
    /// it. A layer already gone is no error.
    fn remove_layer(&self, _layer: &str) -> Result<()> {
        Ok(())
    }
    /// The layers this backend holds, for `gc` to remove those no record names.
    fn list_layers(&self) -> Vec<String> {
        Vec::new()
    }
    /// Writes the sandbox's whole filesystem — image (`rootfs`, from `resolve_image`), layers
    /// and what it wrote, as the sandbox sees its root (no /proc, /sys, /dev or /tmp contents)
    /// — to `out` as a tar stream; returns the bytes written. The sandbox may be running
    /// (`runtime`) or stopped.
    fn export(
        &self,
        _spec: &SandboxSpec,
        _rootfs: &Rootfs,
        _dir: &Path,
        _runtime: Option<&RuntimeState>,
        _out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        Err(self.no_snapshots())
    }
    /// The refusal of a backend without snapshots.
    fn no_snapshots(&self) -> BackendError {
        BackendError::new(
            ErrorKind::NotEnforceable,
            format!(
                "the {} backend cannot capture a sandbox's files (snapshots, fork, templates with setup, export): use -B native, -B docker or -B podman",
                self.kind().as_str()
            ),
        )
    }
    /// Whether a throwaway sandbox stays behind when the process that started it dies without
    /// stopping it (a container engine keeps its containers). The engine then marks each one
    /// while it lives, so that the next agentkernel command removes what a killed owner left
    /// (`agentkernel_engine::owners`) rather than `gc`.
    fn outlives_its_owner(&self) -> bool {
        false
    }
    /// Removes leftovers of instances that are no longer running (after crashes), and of
    /// sandboxes no longer in the store (`sandboxes` lists those that are); returns what was
    /// removed.
    fn collect_garbage(&self, live_instances: &[String], sandboxes: &[String]) -> Vec<String>;
}

/// What one backend crate offers: the kinds it implements and how to make one. The binary
/// installs the registries of the backends it links in the engine at startup: which backends
/// a process has is the binary's choice, not the engine's, so the engine (and the HTTP and MCP
/// surfaces above it) depend on no backend crate.
#[derive(Clone, Copy)]
pub struct Registry {
    /// The kinds `make` answers, in the order `doctor` and help list them.
    pub kinds: &'static [BackendKind],
    /// The backend of a kind for a state directory; `None` for a kind this program lacks.
    pub make: fn(BackendKind, &Path) -> Option<Box<dyn Backend>>,
}
