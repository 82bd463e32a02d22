//! The engine's errors, and the one mapping of every error (its own, core's, the image
//! store's and each backend's) to an [`ErrorKind`], from which every surface answers.

use agentkernel_core::{CoreError, ErrorKind, HasKind};

/// Errors of engine operations. Each says what went wrong and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Input(#[from] CoreError),
    #[error("no sandbox named {0:?}: see `agentkernel list`")]
    NotFound(String),
    #[error(
        "a sandbox named {0:?} already exists: pick another name or remove it with `agentkernel remove {0}`"
    )]
    NameTaken(String),
    #[error("sandbox {0:?} is not running: start it with `agentkernel start {0}`")]
    NotRunning(String),
    #[error(
        "no command given: give the command and its arguments (on the command line after the options, e.g. `agentkernel run -- echo hi`; over HTTP and MCP as a list, e.g. [\"echo\", \"hi\"])"
    )]
    NoCommand,
    #[error("backend {backend} is not available in this build: use -B with one of {available}")]
    BackendUnavailable { backend: String, available: String },
    #[error("backend {backend} cannot run here: {reason}")]
    BackendNotReady { backend: String, reason: String },
    #[error(transparent)]
    Image(#[from] agentkernel_image::ImageError),
    /// Making, writing or reading an execution receipt.
    #[error(transparent)]
    Receipt(#[from] crate::receipt::ReceiptError),
    /// The secrets vault's failure (`agentkernel secret`).
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// A backend's failure, with the kind its backend gave it.
    #[error(transparent)]
    Backend(#[from] agentkernel_backend::BackendError),
    #[error("state database {path}: {source}")]
    Store {
        path: String,
        source: rusqlite::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("no sandbox with uuid {0:?}: see `agentkernel list --json`")]
    UuidNotFound(String),
    #[error(
        "invalid copy argument {0:?}: give NAME:/path for the sandbox side and a host path for the other"
    )]
    BadCopyArg(String),
    /// An unknown detached command id, or one that is not an id at all (`../x`): the HTTP
    /// surface answers 404, as for an unknown sandbox.
    #[error(
        "no detached command {id:?} in sandbox {sandbox:?}: use an id that `agentkernel exec -d {sandbox}` printed or that the sandbox's detached list shows (records go when the sandbox is removed)"
    )]
    DetachedNotFound { sandbox: String, id: String },
    #[error("cannot start a detached command in sandbox {sandbox:?}: {reason}")]
    DetachedStart { sandbox: String, reason: String },
    #[error(
        "detached command {id} in sandbox {sandbox:?} is still running {seconds} s after SIGKILL: stop the sandbox with `agentkernel stop {sandbox}`, which ends every process in it"
    )]
    DetachedStillRunning {
        sandbox: String,
        id: String,
        seconds: u64,
    },
    #[error("unknown output stream {0:?}: use stdout or stderr")]
    BadLogStream(String),
    /// A ceiling the operator set (or its default) is reached: sandboxes, detached commands.
    #[error("{0}")]
    LimitReached(String),
    /// A stored record does not carry a valid authentication code: it was written by
    /// something other than agentkernel.
    #[error(
        "the stored record of sandbox {0:?} was changed outside agentkernel (or by an older version), so it is not trusted: remove the sandbox with `agentkernel remove {0}` and create it again"
    )]
    Tampered(String),
    #[error("no snapshot named {0:?}: see `agentkernel snapshot list`")]
    SnapshotNotFound(String),
    #[error(
        "a snapshot named {0:?} already exists: pick another --name, or delete it with `agentkernel snapshot delete {0}`"
    )]
    SnapshotNameTaken(String),
    #[error(
        "snapshot {name:?} is in use by {users}: remove those first, or delete it anyway with `agentkernel snapshot delete {name} --force` (its files stay until their last sandbox is removed)"
    )]
    SnapshotInUse { name: String, users: String },
    #[error("no session named {0:?}: see `agentkernel session list`")]
    SessionNotFound(String),
    #[error(
        "a session named {0:?} already exists: resume it with `agentkernel session resume {0}`, or delete it with `agentkernel session delete {0}`"
    )]
    SessionTaken(String),
    #[error(
        "session {0:?} has neither its sandbox nor a save left: delete it with `agentkernel session delete {0}` and start a new one"
    )]
    SessionNothingToResume(String),
    /// A template's TOML or one of its values is wrong; `message` names the line or field.
    #[error("template {origin}: {message}")]
    TemplateInvalid { origin: String, message: String },
    #[error(
        "no template {0:?}: see `agentkernel template list` for names, or give a file's path (it must contain `/` or end in .toml)"
    )]
    TemplateNotFound(String),
    #[error(
        "{0:?} is a built-in template: it cannot be removed or replaced; give your own template another name (see `agentkernel template list`)"
    )]
    TemplateBuiltIn(String),
    #[error(
        "a template named {0:?} already exists: pick another name, or remove it first with `agentkernel template remove {0}`"
    )]
    TemplateTaken(String),
    /// A template that would have to be fetched over the network (`github:`).
    #[error("{0}")]
    TemplateRemote(String),
}

impl EngineError {
    /// The CLI exit code for this error: 127 not found, 126 not executable, 125 otherwise.
    pub fn exit_code(&self) -> i32 {
        self.kind().exit_code()
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let context = context.into();
        move |source| EngineError::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl HasKind for EngineError {
    fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Input(e) => e.kind(),
            EngineError::Image(e) => e.kind(),
            EngineError::Vault(e) => e.kind(),
            EngineError::Receipt(e) => e.kind(),
            EngineError::Backend(e) => e.kind(),
            EngineError::LimitReached(_) => ErrorKind::LimitReached,
            EngineError::NoCommand
            | EngineError::TemplateInvalid { .. }
            | EngineError::TemplateRemote(_)
            | EngineError::BadCopyArg(_)
            | EngineError::BadLogStream(_)
            | EngineError::BackendUnavailable { .. } => ErrorKind::InvalidInput,
            EngineError::NotFound(_)
            | EngineError::SnapshotNotFound(_)
            | EngineError::SessionNotFound(_)
            | EngineError::TemplateNotFound(_)
            | EngineError::UuidNotFound(_)
            | EngineError::DetachedNotFound { .. } => ErrorKind::NotFound,
            EngineError::NameTaken(_)
            | EngineError::SnapshotNameTaken(_)
            | EngineError::SnapshotInUse { .. }
            | EngineError::SessionTaken(_)
            | EngineError::SessionNothingToResume(_)
            | EngineError::TemplateBuiltIn(_)
            | EngineError::TemplateTaken(_)
            | EngineError::NotRunning(_)
            | EngineError::DetachedStillRunning { .. }
            | EngineError::Tampered(_) => ErrorKind::Conflict,
            EngineError::BackendNotReady { .. } => ErrorKind::Unavailable,
            EngineError::DetachedStart { .. }
            | EngineError::Store { .. }
            | EngineError::Io { .. } => ErrorKind::Internal,
        }
    }
}
