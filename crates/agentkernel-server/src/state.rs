//! What every handler shares: configuration, the concurrency gate and the engine's home.

use crate::auth::ApiKeys;
use crate::guard::AllowedHosts;
use agentkernel_engine::buffered::OutputBudget;
use agentkernel_engine::{Engine, EngineError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Limits of one server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub body_bytes: usize,
    /// A command is killed after this long unless the request sets `timeout_ms`.
    pub request_timeout: Duration,
    /// Requests served at once; more get 429.
    pub max_concurrent: usize,
    /// Output kept per stream of a buffered command.
    pub output_bytes: usize,
    /// Output all buffered commands (HTTP and MCP) may hold at once; beyond it their output is
    /// truncated.
    pub output_budget_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            body_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_concurrent: 64,
            output_bytes: 16 * 1024 * 1024,
            // Sixteen commands' worth of a full stream each: a few hundred MiB of memory at
            // most (the answer's JSON is made beside it).
            output_budget_bytes: 256 * 1024 * 1024,
        }
    }
}

pub use agentkernel_engine::MAX_TIMEOUT;

#[derive(Clone)]
pub struct AppState {
    pub home: PathBuf,
    pub keys: ApiKeys,
    pub limits: Limits,
    pub concurrency: Arc<tokio::sync::Semaphore>,
    /// The directory requests are resolved against (config file, detection, permissive mounts).
    pub cwd: PathBuf,
    /// Honour `cwd`/`config` sent by clients: only on the daemon's own socket.
    pub trust_client_paths: bool,
    /// Warm sandboxes for `run` requests with `fast` (the default).
    pub pool: Option<Arc<agentkernel_engine::pool::WarmPool>>,
    /// Set when this is the daemon (its socket also serves `/daemon/…`).
    pub daemon: Option<crate::routes::daemon::DaemonInfo>,
    /// Cancelled when the server shuts down: ends open MCP sessions (their event streams
    /// would otherwise keep a graceful shutdown waiting).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The `Host` names a TCP server answers to (and the `Origin` check); `None` on the
    /// daemon's Unix socket, which no browser can reach (see `guard`).
    pub hosts: Option<AllowedHosts>,
    /// Shared by the buffered commands of this server, `/mcp`'s included.
    pub output_budget: Arc<OutputBudget>,
}

impl AppState {
    pub fn new(home: PathBuf, keys: ApiKeys, limits: Limits, cwd: PathBuf) -> AppState {
        AppState {
            home,
            keys,
            concurrency: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent)),
            cwd,
            trust_client_paths: false,
            pool: None,
            daemon: None,
            shutdown: tokio_util::sync::CancellationToken::new(),
            hosts: Some(AllowedHosts::default()),
            output_budget: OutputBudget::new(limits.output_budget_bytes),
            limits,
        }
    }

    /// Who the requests of this server come from: the local user on the daemon's socket, a
    /// remote caller over TCP.
    pub fn caller(&self) -> agentkernel_engine::resolve::Caller {
        if self.trust_client_paths {
            agentkernel_engine::resolve::Caller::Local
        } else {
            agentkernel_engine::resolve::Caller::Remote
        }
    }

    /// An engine for one request. Cheap: the state database is opened on first use.
    pub fn engine(&self) -> Result<Engine, EngineError> {
        Engine::open(&self.home)
    }

    /// The timeout for a command: the request's, else the server's.
    pub fn timeout(&self, timeout_ms: Option<u64>) -> Result<Duration, crate::envelope::ApiError> {
        Ok(agentkernel_engine::timeout_from_ms(
            timeout_ms,
            self.limits.request_timeout,
        )?)
    }
}
