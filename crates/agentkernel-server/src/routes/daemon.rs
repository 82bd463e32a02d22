//! Routes only the daemon serves, on its local socket: its status and pool prewarming.

use crate::envelope::{ApiError, ok};
use crate::extract::ApiJson;
use crate::state::AppState;
use agentkernel_engine::pool::{PoolStatus, PoolsStatus};
use agentkernel_engine::{SpecRequest, resolve};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Who the daemon is, for `daemon status` and `daemon stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub started_at: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    #[serde(flatten)]
    pub info: DaemonInfo,
    pub pool: PoolsStatus,
}

/// `POST /daemon/prewarm`: a pool to keep warm until the daemon stops.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrewarmRequest {
    /// An agent (`claude`, `codex`, …): its `[daemon.agents.MODE]` runtime and min_warm.
    pub mode: Option<String>,
    pub image: Option<String>,
    pub profile: Option<String>,
    pub backend: Option<String>,
    #[serde(default)]
    pub no_network: bool,
    /// Sandboxes to keep warm (default: the mode's or `[daemon] min_warm`).
    pub count: Option<usize>,
    pub cwd: Option<String>,
    pub config: Option<String>,
}

fn daemon_parts(
    st: &AppState,
) -> Result<(&DaemonInfo, &agentkernel_engine::pool::WarmPool), ApiError> {
    match (&st.daemon, &st.pool) {
        (Some(info), Some(pool)) => Ok((info, pool)),
        _ => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "only the daemon serves /daemon routes: start it with `agentkernel daemon start`",
        )),
    }
}

pub async fn status(
    State(st): State<AppState>,
) -> Result<Json<crate::envelope::Ok<DaemonStatus>>, ApiError> {
    let (info, pool) = daemon_parts(&st)?;
    Ok(ok(DaemonStatus {
        info: info.clone(),
        pool: pool.status(),
    }))
}

pub async fn prewarm(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<PrewarmRequest>,
) -> Result<Json<crate::envelope::Ok<PoolStatus>>, ApiError> {
    daemon_parts(&st)?;
    let cwd = req.cwd.map(PathBuf::from).unwrap_or_else(|| st.cwd.clone());
    if !cwd.is_absolute() {
        return Err(ApiError::bad_request("cwd must be an absolute path"));
    }
    let base = SpecRequest {
        image: req.image,
        profile: req.profile,
        backend: req.backend,
        config: req.config.map(PathBuf::from),
        no_network: req.no_network,
        cwd,
        caller: st.caller(),
        ..Default::default()
    };
    let count = req.count;
    let mode = req.mode;
    let pool = st.pool.clone();
    let home = st.home.clone();
    let status = tokio::task::spawn_blocking(move || {
        let config = resolve::load_config(&home, &base)?;
        let (request, mode_count) = match &mode {
            Some(m) => agentkernel_engine::pool::mode_request(&config, m, base)?,
            None => (base, None),
        };
        match pool {
            Some(p) => p.prewarm(&request, count.or(mode_count)),
            None => Err(agentkernel_engine::EngineError::Input(
                agentkernel_core::CoreError::Unsupported("this server keeps no warm pool".into()),
            )),
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker failed: {e}")))??;
    Ok(ok(status))
}
