//! Snapshots (`/snapshots`) and fork (`POST /sandboxes/{name}/fork`): the engine's snapshots
//! (`agentkernel_engine::snapshot`) over HTTP, as the published SDKs call them
//! (`take_snapshot`, `list_snapshots`, `get_snapshot`, `delete_snapshot`, `restore_snapshot`).

use crate::envelope::{ApiError, ErrorAnswers, Ok, ok};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::types::{SandboxInfo, SnapshotRequest};
use agentkernel_engine::snapshot::{SnapshotInfo, SnapshotKind};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// A snapshot of a sandbox: what it wrote and its settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotMeta {
    pub name: String,
    /// The sandbox it was taken of.
    pub sandbox: String,
    /// The captured layer: a container engine's image tag, or the native layer's id.
    pub image_tag: String,
    pub backend: String,
    /// The image the sandbox was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// RFC 3339.
    pub created_at: String,
    /// `user`, or `session` for a session's save.
    pub kind: String,
    pub profile: String,
    /// Environment variable names (values are not shown).
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// What the snapshot costs on disk.
    pub size_bytes: u64,
    /// How long the sandbox's processes were frozen while it was taken.
    pub frozen_ms: f64,
    /// Sandboxes that start from it (restored or forked), which keep its files alive.
    pub used_by: Vec<String>,
}

impl From<SnapshotInfo> for SnapshotMeta {
    fn from(s: SnapshotInfo) -> SnapshotMeta {
        SnapshotMeta {
            name: s.name,
            sandbox: s.sandbox,
            image_tag: s.image_tag,
            backend: s.backend,
            base_image: s.base_image,
            vcpus: s.vcpus.map(|v| v.ceil() as u32),
            memory_mb: s.memory_mb,
            created_at: s.created_at,
            kind: match s.kind {
                SnapshotKind::User => "user",
                SnapshotKind::Session => "session",
                SnapshotKind::Template => "template",
            }
            .to_string(),
            profile: s.profile,
            env: s.env,
            labels: s.labels,
            size_bytes: s.size_bytes,
            frozen_ms: s.frozen_ms,
            used_by: s.used_by,
        }
    }
}

/// Every snapshot, oldest first.
#[utoipa::path(get, path = "/snapshots", tag = "snapshots",
    responses((status = 200, body = Ok<Vec<SnapshotMeta>>), ErrorAnswers))]
pub async fn list(State(st): State<AppState>) -> Result<Json<Ok<Vec<SnapshotMeta>>>, ApiError> {
    let list = super::blocking(&st, |engine| engine.list_snapshots()).await?;
    Ok(ok(list.into_iter().map(SnapshotMeta::from).collect()))
}

/// Takes a snapshot of a sandbox, running or stopped, without stopping it.
#[utoipa::path(post, path = "/snapshots", tag = "snapshots", request_body = SnapshotRequest,
    responses((status = 200, body = Ok<SnapshotMeta>), ErrorAnswers))]
pub async fn take(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<SnapshotRequest>,
) -> Result<Json<Ok<SnapshotMeta>>, ApiError> {
    let meta = super::blocking(&st, move |engine| {
        engine.take_snapshot(&req.sandbox, req.name.as_deref(), SnapshotKind::User)
    })
    .await?;
    Ok(ok(meta.into()))
}

/// One snapshot.
#[utoipa::path(get, path = "/snapshots/{name}", tag = "snapshots",
    params(("name" = crate::schema::SandboxName, Path, description = "Snapshot name")),
    responses((status = 200, body = Ok<SnapshotMeta>), ErrorAnswers))]
pub async fn get(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Ok<SnapshotMeta>>, ApiError> {
    let meta = super::blocking(&st, move |engine| engine.get_snapshot(&name)).await?;
    Ok(ok(meta.into()))
}

/// `DELETE /snapshots/{name}` options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete it even if sandboxes start from it or a session keeps it (409 otherwise).
    #[serde(default)]
    pub force: Option<bool>,
}

/// Deletes a snapshot; one in use is 409 unless `force=true`.
#[utoipa::path(delete, path = "/snapshots/{name}", tag = "snapshots",
    params(("name" = crate::schema::SandboxName, Path, description = "Snapshot name"), DeleteQuery),
    responses((status = 200, body = Ok<SnapshotMeta>), ErrorAnswers))]
pub async fn delete(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Json<Ok<SnapshotMeta>>, ApiError> {
    let meta = super::blocking(&st, move |engine| {
        let meta = engine.get_snapshot(&name)?;
        engine.delete_snapshot(&name, q.force.unwrap_or(false))?;
        Ok(meta)
    })
    .await?;
    Ok(ok(meta.into()))
}

/// `POST /snapshots/{name}/restore` (the body is optional: the SDKs send none).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The new sandbox's name; default `SANDBOX-restored`.
    #[serde(default, rename = "as")]
    #[schema(value_type = Option<crate::schema::SandboxName>)]
    pub as_name: Option<String>,
}

/// Makes a new sandbox from a snapshot and starts it.
#[utoipa::path(post, path = "/snapshots/{name}/restore", tag = "snapshots",
    params(("name" = crate::schema::SandboxName, Path, description = "Snapshot name")),
    request_body(content = Option<RestoreRequest>, description = "Optional"),
    responses((status = 200, body = Ok<SandboxInfo>), ErrorAnswers))]
pub async fn restore(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> Result<Json<Ok<SandboxInfo>>, ApiError> {
    // No body, or JSON `null`, asks for the defaults.
    let req: RestoreRequest = if body.trim_ascii().is_empty() {
        RestoreRequest::default()
    } else {
        serde_json::from_slice::<Option<RestoreRequest>>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
            .unwrap_or_default()
    };
    let caller = st.caller();
    let info = super::blocking(&st, move |engine| {
        engine.restore_snapshot(&name, req.as_name.as_deref(), caller)
    })
    .await?;
    Ok(ok(info.into()))
}

/// `POST /sandboxes/{name}/fork`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many copies (1 to 1000; default 1).
    #[serde(default, deserialize_with = "crate::types::whole_count")]
    #[schema(minimum = 1, maximum = 1000)]
    pub count: Option<usize>,
    /// Copies are named PREFIX-1 … PREFIX-N; default `NAME-fork`.
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::ForkPrefix>)]
    pub name_prefix: Option<String>,
}

/// Makes copies of a sandbox, each starting with its files, started if it runs.
#[utoipa::path(post, path = "/sandboxes/{name}/fork", tag = "sandboxes",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    request_body = ForkRequest,
    responses((status = 200, body = Ok<Vec<SandboxInfo>>), ErrorAnswers))]
pub async fn fork(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ForkRequest>,
) -> Result<Json<Ok<Vec<SandboxInfo>>>, ApiError> {
    let caller = st.caller();
    let made = super::blocking(&st, move |engine| {
        engine.fork(
            &name,
            req.count.unwrap_or(1),
            req.name_prefix.as_deref(),
            caller,
        )
    })
    .await?;
    Ok(ok(made.into_iter().map(SandboxInfo::from).collect()))
}
