//! The types every backend implements and every part of the engine passes around: whether a
//! backend is usable here (`Readiness`), what it offers (`Capabilities`), where a sandbox's
//! writable layer lives (`Persistence`), how a started sandbox is found again and owned
//! (`RuntimeState`, `Started`), and what a surface passes through to a running command
//! (`Controls`). They live in core so that every backend crate, present and future, can
//! produce them without depending on the engine or on another backend.

use serde::{Deserialize, Serialize};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

/// Whether a backend can be used here, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub usable: bool,
    pub reason: String,
}

/// What a backend offers beyond the lifecycle, as `GET /backends` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// A started sandbox: how to find it again, and the lifeline that keeps it alive while its
/// caller holds it. It owns the sandbox, so it is neither `Copy` nor `Clone`: `stop` takes it
/// by value, and a lifeline is closed exactly once — by `stop`, or by dropping the handle,
/// which ends the sandbox instead of leaking it — unless it is [`Started::release`]d.
#[derive(Debug)]
pub struct Started {
    pub runtime: RuntimeState,
    /// The write end of the pipe whose closing ends the sandbox: a throwaway sandbox's for its
    /// whole life, a persistent one's until the engine has recorded it (a caller killed while
    /// starting it takes the half-started sandbox along instead of leaving it unrecorded).
    pub lifeline: Option<OwnedFd>,
}

/// The byte that releases a lifeline: the sandbox outlives its caller from then on. Other
/// bytes on a lifeline are signal numbers for a throwaway sandbox's first command.
pub const LIFELINE_RELEASE: u8 = 0xff;

impl Started {
    /// Lets a persistent sandbox outlive this process (once it is recorded): its lifeline, if
    /// it has one, is released rather than closed.
    pub fn release(mut self) -> RuntimeState {
        if let Some(fd) = self.lifeline.take() {
            use std::io::Write;
            // A failed write means the sandbox's init is already gone: `list` shows it stopped.
            let _ = std::fs::File::from(fd).write_all(&[LIFELINE_RELEASE]);
        }
        self.runtime
    }

    /// The handle of a persistent sandbox found in the store: nothing to close but the
    /// sandbox itself.
    pub fn found(runtime: RuntimeState) -> Started {
        Started {
            runtime,
            lifeline: None,
        }
    }
}

/// What `Backend::capture` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The layers a new sandbox stacks on its image to start with the captured sandbox's files
    /// (`SandboxSpec::layers`), top first: the new layer over the captured sandbox's own
    /// layers, or a single layer where the backend's capture holds everything (an engine's
    /// commit).
    pub layers: Vec<String>,
    /// What the new layer costs on the host's disk, in bytes (what the sandbox wrote).
    pub bytes: u64,
    /// How long the sandbox's processes were frozen (zero for a stopped sandbox).
    pub frozen: std::time::Duration,
}

/// Signals and terminal events a surface passes through to a command.
#[derive(Clone, Copy, Default)]
pub struct Controls<'a> {
    /// Bytes are signal numbers to forward to the command.
    pub signals: Option<BorrowedFd<'a>>,
    /// Readable when the caller's terminal was resized (attach).
    pub resized: Option<BorrowedFd<'a>>,
}

/// What a backend needs to find a started sandbox again from another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// native: names the sandbox's cgroups and network pin, new at every start. docker,
    /// podman, gvisor: the container id.
    pub instance: String,
    /// The sandbox's init on this host (0 when the engine's processes are not visible here).
    pub pid: u32,
    pub start_time: u64,
    pub boot_id: String,
    /// A throwaway sandbox (`run`, warm pools): stopping it removes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}
