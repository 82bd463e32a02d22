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
}
