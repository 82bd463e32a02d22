//! Docker, Podman and gVisor sandboxes through the Docker Engine API (bollard), one
//! implementation for every engine that speaks it: Docker Engine, Podman's Docker-compatible
//! service, and Docker Engine with the gVisor runtime (`runsc`).
//!
//! A sandbox is one container, labelled so that agentkernel finds it again from any later
//! process and never mistakes a user's own container for one of its own
//! (`agentkernel.managed=1`, `agentkernel.home=<hash of the state directory>`,
//! `agentkernel.sandbox=<name>`, `agentkernel.backend=<docker|podman|gvisor>`).
//!
//! The container's processes are agentkernel's own executable, bind-mounted read-only at
//! [`INIT_PATH`]: a persistent sandbox's PID 1 is its `__container-init` role (reaps orphans,
//! exits on SIGTERM), and every command runs under its `__container-run` role (forwards
//! signals, reports a command that is missing or not executable as 127/126 the way the native
//! backend does). Images cannot be relied on to have `sleep` or a shell, and the engines'
//! `Init: true` needs a command to run as well: the static agentkernel binary runs in any
//! image, distroless or scratch included (see `init.rs`).
//!
//! The engine API is asynchronous and agentkernel's engine is not: each client owns one
//! current-thread tokio runtime and blocks on it.

mod backend;
mod discovery;
mod disk;
mod files;
mod host_copy;
mod images;
pub mod init;
mod layers;
mod oom;
mod policy;
mod run;

pub use backend::{DockerBackend, REGISTRY};
pub use discovery::Endpoint;
pub use files::{RM_ROLE, rm_main};
pub use run::Controls;

use agentkernel_core::BackendKind;
use bollard::Docker;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Host threads of an idle gVisor sandbox, with headroom (38 measured), and per task.
const GVISOR_IDLE_THREADS: i64 = 64;
const GVISOR_THREADS_PER_TASK: i64 = 8;

/// Where agentkernel's executable is bind-mounted in every container.
pub const INIT_PATH: &str = "/dev/.agentkernel-init";

/// The Docker Engine API version spoken: 1.41 is Docker 20.10's and what Podman 4's
/// compatibility service answers; newer engines accept it. Fixed rather than negotiated, which
/// would cost a round trip on every command.
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// How long a request may wait for its answer's headers. Long operations (pulls, waits,
/// streams) answer headers at once and then stream, so this only bounds a stuck engine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long readiness waits for `/_ping`.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the container backends; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{backend}: cannot reach the engine at {endpoint}: {reason}")]
    Unreachable {
        backend: &'static str,
        endpoint: String,
        reason: String,
    },
    #[error("{backend}: {action}: {message}")]
    Api {
        backend: &'static str,
        action: String,
        message: String,
    },
    #[error(
        "{backend} cannot enforce {field}: {reason}; use {alternative} (DESIGN: a policy is enforced or refused)"
    )]
    Refused {
        backend: &'static str,
        field: &'static str,
        reason: String,
        alternative: &'static str,
    },
    #[error("{backend}: cannot pull image {image}: {message}")]
    Pull {
        backend: &'static str,
        image: String,
        message: String,
    },
    #[error("{backend}: cannot load image {image} into the engine: {message}")]
    Load {
        backend: &'static str,
        image: String,
        message: String,
    },
    #[error("{backend}: the sandbox's container {container} is gone: start the sandbox again")]
    Gone {
        backend: &'static str,
        container: String,
    },
    #[error("no such file in the sandbox: {0}")]
    FileNotFound(String),
    #[error("{0}")]
    Files(String),
    #[error(
        "{path} in the sandbox is {kind}: only regular files are read or written from outside the sandbox (and directories and links copied); work with it from inside, with `agentkernel exec`"
    )]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "{path} in the sandbox is {size} bytes, more than the {limit} that can be read this way: copy it out with `agentkernel cp`"
    )]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("{0} in the sandbox is a directory that is not empty: remove its contents first")]
    DirectoryNotEmpty(String),
    #[error(
        "{path} in the sandbox is under {fs}, a kernel filesystem: its files are kernel and process state, which the host never reads, writes or removes for a sandbox; look at it from inside, with `agentkernel exec`"
    )]
    KernelFilesystem { path: String, fs: &'static str },
    #[error(
        "{path} in the sandbox: {reason}: the sandbox's policy does not allow it (a read-only root, or a file the sandbox's user may not change); write under /tmp or another writable directory"
    )]
    FileForbidden { path: String, reason: String },
    #[error("{path} in the sandbox: {reason}")]
    BadFilePath { path: String, reason: String },
    #[error("{backend}: {context}: {source}")]
    Io {
        backend: &'static str,
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] agentkernel_image::ImageError),
}

pub type Result<T> = std::result::Result<T, DockerError>;

impl agentkernel_core::HasKind for DockerError {
    /// The one place container-engine errors become a kind (and so an exit code, an HTTP
    /// status and an MCP error).
    fn kind(&self) -> agentkernel_core::ErrorKind {
        use agentkernel_core::ErrorKind;
        match self {
            DockerError::Unreachable { .. } => ErrorKind::Unavailable,
            DockerError::Api { .. } | DockerError::Pull { .. } => ErrorKind::Upstream,
            // The request asked for what this engine cannot enforce: another backend can.
            DockerError::Refused { .. } => ErrorKind::NotEnforceable,
            DockerError::Gone { .. } => ErrorKind::Conflict,
            DockerError::FileNotFound(_) => ErrorKind::NotFound,
            DockerError::BadFilePath { .. } => ErrorKind::InvalidInput,
            // What the sandbox holds at the path stands in the way (as for `DirectoryNotEmpty`).
            DockerError::NotRegular { .. } => ErrorKind::Conflict,
            DockerError::FileTooLarge { .. } => ErrorKind::TooLarge,
            DockerError::DirectoryNotEmpty(_) => ErrorKind::Conflict,
            DockerError::KernelFilesystem { .. } | DockerError::FileForbidden { .. } => {
                ErrorKind::NotPermitted
            }
            DockerError::Image(e) => e.kind(),
            DockerError::Files(_) | DockerError::Load { .. } | DockerError::Io { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

/// Which engine a client talks to, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Docker,
    Podman,
    /// Docker Engine with the `runsc` runtime.
    Gvisor,
}

impl Flavor {
    pub fn of(kind: BackendKind) -> Option<Flavor> {
        match kind {
            BackendKind::Docker => Some(Flavor::Docker),
            BackendKind::Podman => Some(Flavor::Podman),
            BackendKind::Gvisor => Some(Flavor::Gvisor),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Docker => "docker",
            Flavor::Podman => "podman",
            Flavor::Gvisor => "gvisor",
        }
    }

    /// The host's pids limit for a sandbox of `pids` processes. gVisor's kernel runs in host
    /// threads of its own (38 with nothing running, about 7 more per process on the ptrace
    /// platform of Debian's runsc, measured in the sandbox's pids cgroup), and when the host
    /// refuses it a thread it crashes (exit 2) or hangs while booting: the host limit is only
    /// a backstop there, and the policy's count is enforced inside by `nproc_ulimit`.
    fn host_pids_limit(self, pids: u64) -> i64 {
        let pids = i64::try_from(pids).unwrap_or(i64::MAX / 16);
        match self {
            Flavor::Gvisor => {
                GVISOR_IDLE_THREADS.saturating_add(pids.saturating_mul(GVISOR_THREADS_PER_TASK))
            }
            Flavor::Docker | Flavor::Podman => pids,
        }
    }

    /// gVisor counts a sandbox's tasks against RLIMIT_NPROC in its own kernel, root included,
    /// so the limit is exact there (fork fails with EAGAIN, as under a pids cgroup). Not set
    /// for runc: the host kernel counts RLIMIT_NPROC per user across every container and
    /// process of that uid.
    fn nproc_ulimit(self, pids: u64) -> Option<Vec<bollard::models::ResourcesUlimits>> {
        (self == Flavor::Gvisor).then(|| {
            let n = i64::try_from(pids).unwrap_or(i64::MAX);
            vec![bollard::models::ResourcesUlimits {
                name: Some("nproc".to_string()),
                soft: Some(n),
                hard: Some(n),
            }]
        })
    }

    /// The OCI runtime asked of the engine, if not its default.
    fn runtime(self) -> Option<&'static str> {
        (self == Flavor::Gvisor).then_some("runsc")
    }
}

/// Label keys.
pub const LABEL_MANAGED: &str = "agentkernel.managed";
pub const LABEL_HOME: &str = "agentkernel.home";
pub const LABEL_SANDBOX: &str = "agentkernel.sandbox";
pub const LABEL_BACKEND: &str = "agentkernel.backend";
/// Set on throwaway containers (`run`, warm pools), with the process that owns them.
pub const LABEL_EPHEMERAL: &str = "agentkernel.ephemeral";
pub const LABEL_OWNER: &str = "agentkernel.owner";

/// A client of one engine for one state directory.
pub struct Client {
    flavor: Flavor,
    endpoint: Endpoint,
    rt: tokio::runtime::Runtime,
    docker: std::result::Result<Docker, String>,
    /// First 16 hex digits of sha256(canonical state directory).
    home_hash: String,
    /// The state directory uses the default location (container names carry no suffix then).
    default_home: bool,
    home: PathBuf,
    /// The agentkernel executable mounted into containers.
    init_exe: PathBuf,
}

/// A started container as the engine's state records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub id: String,
    /// The container's init on this host (0 when the engine's processes are not visible here).
    pub pid: u32,
    /// Its start time in clock ticks after boot (0 with pid 0).
    pub start_time: u64,
}

impl Client {
    /// A client for `flavor`, found the way its users expect (see `discovery.rs`). Nothing is
    /// contacted yet. `init_exe` is the agentkernel executable to mount as containers' init
    /// (the current executable when None).
    pub fn new(flavor: Flavor, home: &Path, init_exe: Option<PathBuf>) -> Client {
        let endpoint = Endpoint::discover(flavor);
        let docker = endpoint.connect();
        let canonical = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
        let default_home = std::fs::canonicalize(agentkernel_core::paths::agentkernel_home())
            .ok()
            .is_some_and(|d| d == canonical)
            && std::env::var_os("AGENTKERNEL_HOME").is_none_or(|v| v.is_empty());
        let home_hash = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
            hex::encode(digest)[..16].to_string()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread tokio runtime builds (no I/O is done to build it)");
        Client {
            flavor,
            endpoint,
            rt,
            docker,
            home_hash,
            default_home,
            home: home.to_path_buf(),
            init_exe: init_exe
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| PathBuf::from("/proc/self/exe")),
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn name(&self) -> &'static str {
        self.flavor.name()
    }

    fn docker(&self) -> Result<&Docker> {
        self.docker
            .as_ref()
            .map_err(|reason| DockerError::Unreachable {
                backend: self.name(),
                endpoint: self.endpoint.host.clone(),
                reason: reason.clone(),
            })
    }

    /// Blocks on `fut` on this client's runtime.
    fn block<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// An API error as this crate's error, with what was being done.
    fn api(&self, action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let backend = self.name();
        let action = action.into();
        let endpoint = self.endpoint.host.clone();
        let hint = self.endpoint.start_hint();
        move |e| match e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => DockerError::Api {
                backend,
                action,
                message,
            },
            bollard::errors::Error::IOError { err } => DockerError::Unreachable {
                backend,
                endpoint,
                reason: format!("{err} ({hint})"),
            },
            other => DockerError::Api {
                backend,
                action,
                message: other.to_string(),
            },
        }
    }

    /// The labels every container of this client carries.
    fn base_labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "1".to_string()),
            (LABEL_HOME.to_string(), self.home_hash.clone()),
            (LABEL_BACKEND.to_string(), self.name().to_string()),
        ])
    }

    /// The container name of sandbox `name`: `agentkernel-NAME`, as users know it, with the
    /// state directory's hash appended when it is not the default one (tests, several users
    /// of one engine), so that two state directories never claim the same name.
    fn container_name(&self, name: &str) -> String {
        if self.default_home {
            format!("agentkernel-{name}")
        } else {
            format!("agentkernel-{name}-{}", &self.home_hash[..8])
        }
    }

    /// Whether the engine's processes are visible in this host's /proc (a local socket).
    /// Where the Podman seccomp profiles are written (it reads them by path).
    fn profile_dir(&self) -> PathBuf {
        self.home.join("docker")
    }
}

/// Whether `id` names a container of this host found alive through /proc: the init pid and
/// its start time, checked against the container's cgroup so a pid of another pid namespace
/// is never trusted.
fn local_init(pid: i64, id: &str) -> Option<(u32, u64)> {
    let pid = u32::try_from(pid).ok().filter(|p| *p > 0)?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    if !cgroup.contains(&id[..12.min(id.len())]) {
        return None;
    }
    let start = agentkernel_sys::proc::start_time(pid)?;
    Some((pid, start))
}

/// The owner label of this process: pid and start time.
fn owner_label() -> String {
    let pid = std::process::id();
    let start = agentkernel_sys::proc::start_time(pid).unwrap_or(0);
    format!("{pid}:{start}")
}

/// Whether the process named by an owner label is alive.
fn owner_alive(label: &str) -> bool {
    let Some((pid, start)) = label.split_once(':') else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => agentkernel_sys::proc::is_alive(pid, start),
        _ => false,
    }
}

/// Whether `path` is an ELF executable that needs no dynamic loader (it runs in any image).
pub fn is_static_executable(path: &Path) -> bool {
    let mut data = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| {
        std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 * 1024), &mut data)
    });
    if read.is_err() {
        return false;
    }
    // ELF64 little-endian: program headers at e_phoff (0x20), e_phentsize (0x36), e_phnum (0x38).
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != PT_INTERP)
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_check_reads_elf_headers() {
        assert!(!is_static_executable(Path::new("/nonexistent")));
        assert!(!is_static_executable(Path::new("/etc/passwd")));
        // Debian's /bin/sh is dynamically linked.
        assert!(!is_static_executable(Path::new("/bin/sh")));
    }

    #[test]
    fn owner_labels_name_live_processes() {
        assert!(owner_alive(&owner_label()));
        assert!(!owner_alive("1:0"));
        assert!(!owner_alive("junk"));
    }
}
