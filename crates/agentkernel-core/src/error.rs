use thiserror::Error;

/// Errors from validating user input. Each message says what was wrong and what to do.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CoreError {
    #[error(
        "invalid sandbox name {0:?}: use 1-63 characters from letters, digits, '_', '.' and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidImage { reference: String, reason: String },
    #[error("invalid duration {0:?}: use a number followed by s, m, h or d (e.g. 30m, 1h, 3d)")]
    InvalidDuration(String),
    #[error("duration {text:?} is longer than {max}: give at most {max}")]
    DurationTooLong { text: String, max: String },
    #[error("unknown profile {0:?}: use permissive, moderate or restrictive")]
    UnknownProfile(String),
    #[error("unknown backend {0:?}: use one of {1}")]
    UnknownBackend(String, String),
    #[error("invalid environment variable {0:?}: use KEY=VALUE with a non-empty KEY without '='")]
    InvalidEnv(String),
    #[error("invalid working directory {0:?}: use an absolute path inside the sandbox")]
    InvalidWorkdir(String),
    #[error("invalid path {0}")]
    InvalidPath(String),
    #[error("invalid label {0:?}: {1}")]
    InvalidLabel(String, String),
    #[error("config file {path}: {message}")]
    Config { path: String, message: String },
    #[error("{0}")]
    Unsupported(String),
    /// The request names something its caller may not (a host path from a remote caller, a
    /// looser policy from a project's config or an MCP caller): HTTP 403.
    #[error("{0}")]
    NotPermitted(String),
    #[error("invalid command argument: {0}")]
    InvalidArgument(String),
    #[error("the description is {0} characters long: give at most 4096")]
    DescriptionTooLong(usize),
    #[error(
        "unknown agent mode {mode:?}: use one of {known}, or add a [daemon.agents.{mode}] section to the config"
    )]
    UnknownMode { mode: String, known: String },
    #[error("invalid secret binding {0}")]
    InvalidSecret(String),
    #[error("invalid host pattern: {0}")]
    InvalidHostPattern(String),
    /// Options each valid alone that cannot go together (`--secret` with `--no-network`), or
    /// a change the sandbox's state does not allow: HTTP 409.
    #[error("{0}")]
    Conflicting(String),
}

/// What kind of failure an error is, whichever part of agentkernel raised it. Every error type
/// (core, image, each backend, the engine) maps its variants to a kind once (`HasKind`), and
/// every surface takes its answer from the kind alone: the CLI's exit code, the HTTP status
/// and the MCP error's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or names something invalid.
    InvalidInput,
    /// The caller may not do what it asked (a host path from a remote caller, a looser policy).
    NotPermitted,
    /// The policy asks for what the chosen backend cannot enforce (DESIGN: enforced or
    /// refused); another backend can.
    NotEnforceable,
    /// What the request names does not exist (sandbox, file, image, detached command).
    NotFound,
    /// The request conflicts with the current state (name taken, not running, not empty).
    Conflict,
    /// The payload or file is larger than allowed.
    TooLarge,
    /// A ceiling the operator set is reached (sandboxes, detached commands).
    LimitReached,
    /// The command to run does not exist in the sandbox.
    CommandNotFound,
    /// The command exists but cannot be executed.
    NotExecutable,
    /// The backend cannot run here, or is not in this build.
    Unavailable,
    /// Something agentkernel depends on answered wrongly (a registry, a container engine).
    Upstream,
    /// agentkernel itself failed.
    Internal,
}

impl ErrorKind {
    /// The CLI's exit code: 127 command not found, 126 not executable, 125 otherwise (DESIGN:
    /// the command's own code passes through; these say agentkernel could not run it).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::CommandNotFound => crate::exec::EXIT_NOT_FOUND,
            ErrorKind::NotExecutable => crate::exec::EXIT_NOT_EXECUTABLE,
            _ => crate::exec::EXIT_AGENTKERNEL_ERROR,
        }
    }

    /// The HTTP status: the client's mistakes are 4xx, the server's 5xx.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput | ErrorKind::NotEnforceable => 400,
            ErrorKind::NotPermitted | ErrorKind::NotExecutable => 403,
            ErrorKind::NotFound | ErrorKind::CommandNotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::LimitReached => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Upstream => 502,
            ErrorKind::Unavailable => 503,
        }
    }

    /// The name MCP results carry (`structuredContent.kind`) and logs show.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NotPermitted => "not_permitted",
            ErrorKind::NotEnforceable => "not_enforceable",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::LimitReached => "limit_reached",
            ErrorKind::CommandNotFound => "command_not_found",
            ErrorKind::NotExecutable => "not_executable",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind of an I/O error on something the request named (a file in a sandbox, a local
    /// image path): what is missing is not found, what may not be touched is not permitted,
    /// what is the wrong type or a loop of links is bad input; anything else is ours.
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        // ENAMETOOLONG and ELOOP (a loop of links, a magic link refused by openat2) have no
        // stable `io::ErrorKind`; their numbers are the same on every Linux architecture.
        const ENAMETOOLONG: i32 = 36;
        const ELOOP: i32 = 40;
        match e.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::PermissionDenied | Io::ReadOnlyFilesystem => ErrorKind::NotPermitted,
            Io::InvalidInput
            | Io::NotADirectory
            | Io::IsADirectory
            | Io::AlreadyExists
            | Io::InvalidFilename => ErrorKind::InvalidInput,
            Io::DirectoryNotEmpty => ErrorKind::Conflict,
            Io::FileTooLarge | Io::StorageFull | Io::QuotaExceeded => ErrorKind::TooLarge,
            _ if matches!(e.raw_os_error(), Some(ENAMETOOLONG | ELOOP)) => ErrorKind::InvalidInput,
            _ => ErrorKind::Internal,
        }
    }
}

/// An error that knows its [`ErrorKind`].
pub trait HasKind {
    fn kind(&self) -> ErrorKind;
}

impl HasKind for CoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            CoreError::NotPermitted(_) => ErrorKind::NotPermitted,
            CoreError::Conflicting(_) => ErrorKind::Conflict,
            _ => ErrorKind::InvalidInput,
        }
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn surfaces_answer_from_the_kind() {
        assert_eq!(ErrorKind::CommandNotFound.exit_code(), 127);
        assert_eq!(ErrorKind::NotExecutable.exit_code(), 126);
        assert_eq!(ErrorKind::TooLarge.exit_code(), 125);
        assert_eq!(ErrorKind::TooLarge.http_status(), 413);
        assert_eq!(ErrorKind::NotPermitted.http_status(), 403);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(ErrorKind::of_io(&missing), ErrorKind::NotFound);
        let looped = std::io::Error::from_raw_os_error(40);
        assert_eq!(ErrorKind::of_io(&looped), ErrorKind::InvalidInput);
        assert_eq!(
            CoreError::NotPermitted("x".into()).kind(),
            ErrorKind::NotPermitted
        );
    }
}
