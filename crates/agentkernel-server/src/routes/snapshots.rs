//! Snapshots. No backend of this build can take one yet: the list is truthfully empty and the
//! operations that would make or use one answer 501 with what to do instead.

use crate::envelope::{ApiError, ErrorAnswers, Ok, ok};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::types::{SandboxInfo, SnapshotRequest};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

/// A snapshot of a sandbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotMeta {
    pub name: String,
    pub sandbox: String,
    pub image_tag: String,
    pub backend: String,
    pub created_at: String,
}

fn unsupported() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "snapshots are not supported by the backends of this server yet: keep the sandbox (it persists across stop/start) or copy files out with GET /sandboxes/{name}/files/{path}",
    )
}

/// Snapshots (none can exist yet).
#[utoipa::path(get, path = "/snapshots", tag = "snapshots",
    responses((status = 200, body = Ok<Vec<SnapshotMeta>>), ErrorAnswers))]
pub async fn list() -> Json<Ok<Vec<SnapshotMeta>>> {
    ok(Vec::new())
}

/// Takes a snapshot: not supported yet (501).
#[utoipa::path(post, path = "/snapshots", tag = "snapshots", request_body = SnapshotRequest,
    responses((status = 200, body = Ok<SnapshotMeta>), ErrorAnswers))]
pub async fn take(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<SnapshotRequest>,
) -> Result<Json<Ok<SnapshotMeta>>, ApiError> {
    if let Some(name) = &req.name {
        agentkernel_core::validate_name(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    // An unknown sandbox is a 404 whatever the backend can do.
    super::blocking(&st, move |engine| engine.get(&req.sandbox).map(drop)).await?;
    Err(unsupported())
}

fn no_snapshot(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no snapshot named {name:?}: this server cannot take snapshots yet"),
    )
}

/// One snapshot (none can exist yet: 404).
#[utoipa::path(get, path = "/snapshots/{name}", tag = "snapshots",
    params(("name" = crate::schema::SandboxName, Path, description = "Snapshot name")),
    responses((status = 200, body = Ok<SnapshotMeta>), ErrorAnswers))]
pub async fn get(ApiPath(name): ApiPath<String>) -> Result<Json<Ok<SnapshotMeta>>, ApiError> {
    Err(no_snapshot(&name))
}

/// Deletes a snapshot (none can exist yet: 404).
#[utoipa::path(delete, path = "/snapshots/{name}", tag = "snapshots",
    params(("name" = crate::schema::SandboxName, Path, description = "Snapshot name")),
    responses((status = 200, body = Ok<SnapshotMeta>), ErrorAnswers))]
pub async fn delete(ApiPath(name): ApiPath<String>) -> Result<Json<Ok<SnapshotMeta>>, ApiError> {
    Err(no_snapshot(&name))
}

/// Restores a sandbox from a snapshot (none can exist yet: 404).
#[utoipa::path(post, path = "/snapshots/{name}/restore", tag = "snapshots",
    params(("name" = crate::schema::SandboxName, Path, description = "Snapshot name")),
    responses((status = 200, body = Ok<SandboxInfo>), ErrorAnswers))]
pub async fn restore(ApiPath(name): ApiPath<String>) -> Result<Json<Ok<SandboxInfo>>, ApiError> {
    Err(no_snapshot(&name))
}
