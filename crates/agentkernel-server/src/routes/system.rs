//! Health, status, stats, backends and garbage collection.

use super::blocking;
use crate::envelope::{ApiError, ErrorAnswers, Ok, ok};
use crate::state::AppState;
use crate::types::{BackendsResponse, GcResponse, StatsResponse, StatusResponse};
use axum::Json;
use axum::extract::State;

/// Liveness; needs no API key.
#[utoipa::path(get, path = "/health", tag = "system", security(()),
    responses((status = 200, description = "The server is up", body = Ok<String>)))]
pub async fn health() -> Json<Ok<String>> {
    ok("ok".to_string())
}

/// Version, default backend and the backends that can run sandboxes here.
#[utoipa::path(get, path = "/status", tag = "system",
    responses((status = 200, body = Ok<StatusResponse>), ErrorAnswers))]
pub async fn status(State(st): State<AppState>) -> Result<Json<Ok<StatusResponse>>, ApiError> {
    let (backends, count) =
        blocking(&st, |engine| Ok((engine.backends(), engine.list()?.len()))).await?;
    Ok(ok(StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        default_backend: backends.default_backend,
        backends: backends
            .backends
            .into_iter()
            .filter(|b| b.usable)
            .map(|b| b.backend)
            .collect(),
        sandbox_count: count,
    }))
}

/// Sandbox counts and the host's resource use (for fleet load balancing).
#[utoipa::path(get, path = "/stats", tag = "system",
    responses((status = 200, body = Ok<StatsResponse>), ErrorAnswers))]
pub async fn stats(State(st): State<AppState>) -> Result<Json<Ok<StatsResponse>>, ApiError> {
    let stats = blocking(&st, |engine| {
        engine.stats(std::time::Duration::from_millis(100))
    })
    .await?;
    Ok(ok(stats.into()))
}

/// Every backend: whether this build has it, whether it can run here and why not.
#[utoipa::path(get, path = "/backends", tag = "system",
    responses((status = 200, body = Ok<BackendsResponse>), ErrorAnswers))]
pub async fn backends(State(st): State<AppState>) -> Result<Json<Ok<BackendsResponse>>, ApiError> {
    let backends = blocking(&st, |engine| Ok(engine.backends())).await?;
    Ok(ok(backends.into()))
}

/// Removes expired sandboxes and leftovers of crashed ones.
#[utoipa::path(post, path = "/gc", tag = "system",
    responses((status = 200, body = Ok<GcResponse>), ErrorAnswers))]
pub async fn gc(State(st): State<AppState>) -> Result<Json<Ok<GcResponse>>, ApiError> {
    let removed = blocking(&st, |engine| engine.gc(false)).await?;
    Ok(ok(GcResponse { removed }))
}
