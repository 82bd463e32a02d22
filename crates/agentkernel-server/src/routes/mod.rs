//! The routes of the API, one module per resource.

pub mod daemon;
pub mod detached;
pub mod exec;
pub mod files;
pub mod run;
pub mod sandboxes;
pub mod snapshots;
pub mod system;

use crate::envelope::ApiError;
use agentkernel_engine::{Engine, EngineError};

/// Runs blocking engine work off the async threads.
pub async fn blocking<T: Send + 'static>(
    state: &crate::state::AppState,
    work: impl FnOnce(Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    let home = state.home.clone();
    tokio::task::spawn_blocking(move || work(Engine::open(&home)?))
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
        .map_err(ApiError::from)
}

/// `KEY=VALUE` strings as the engine takes them.
pub fn parse_env(list: Option<&Vec<String>>) -> Result<Vec<(String, String)>, ApiError> {
    crate::bounds::count("env", list.map_or(0, Vec::len), crate::bounds::MAX_ENV)?;
    list.map(|l| l.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            agentkernel_core::spec::parse_env(kv).map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .collect()
}
