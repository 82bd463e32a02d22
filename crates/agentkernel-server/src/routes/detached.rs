//! Detached commands: started in a sandbox, they run on without a client, with their output
//! kept on disk (bounded) until the sandbox is removed.

use super::{blocking, parse_env};
use crate::envelope::{ApiError, ErrorAnswers, Ok, ok};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::types::{DetachedCommand, DetachedLogs, ExecRequest, LogsQuery};
use axum::Json;
use axum::extract::State;

/// Starts a command in a running sandbox and answers at once, while it runs on. It has no
/// timeout unless `timeout_ms` is given.
#[utoipa::path(post, path = "/sandboxes/{name}/exec/detach", tag = "exec", request_body = ExecRequest,
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<DetachedCommand>), ErrorAnswers))]
pub async fn start(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Json<Ok<DetachedCommand>>, ApiError> {
    agentkernel_engine::require_command(&req.command)?;
    let timeout = match req.timeout_ms {
        Some(ms) => Some(st.timeout(Some(ms))?),
        None => None,
    };
    let exec = agentkernel_core::ExecRequest {
        argv: req.command.clone(),
        env: parse_env(req.env.as_ref())?,
        workdir: req.workdir.clone(),
        timeout,
        ..Default::default()
    };
    agentkernel_engine::validate_exec(&exec)?;
    let started = blocking(&st, move |engine| engine.exec_detached(&name, &exec)).await?;
    Ok(ok(started.into()))
}

/// The sandbox's detached commands, oldest first.
#[utoipa::path(get, path = "/sandboxes/{name}/exec/detached", tag = "exec",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<Vec<DetachedCommand>>), ErrorAnswers))]
pub async fn list(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Ok<Vec<DetachedCommand>>>, ApiError> {
    let list = blocking(&st, move |engine| engine.detached_list(&name)).await?;
    Ok(ok(list.into_iter().map(Into::into).collect()))
}

/// One detached command: its status and, once it ended, its exit code.
#[utoipa::path(get, path = "/sandboxes/{name}/exec/detached/{id}", tag = "exec",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name"), ("id" = crate::schema::DetachedId, Path, description = "Command id")),
    responses((status = 200, body = Ok<DetachedCommand>), ErrorAnswers))]
pub async fn get(
    State(st): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<Json<Ok<DetachedCommand>>, ApiError> {
    let c = blocking(&st, move |engine| engine.detached_get(&name, &id)).await?;
    Ok(ok(c.into()))
}

/// A detached command's output so far (both streams, or `?stream=stdout|stderr`).
#[utoipa::path(get, path = "/sandboxes/{name}/exec/detached/{id}/logs", tag = "exec",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name"), ("id" = crate::schema::DetachedId, Path, description = "Command id"), LogsQuery),
    responses((status = 200, body = Ok<DetachedLogs>), ErrorAnswers))]
pub async fn logs(
    State(st): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<Ok<DetachedLogs>>, ApiError> {
    let stream = q
        .stream
        .as_deref()
        .map(str::parse::<agentkernel_engine::detached::LogStream>)
        .transpose()?;
    let logs = blocking(&st, move |engine| engine.detached_logs(&name, &id, stream)).await?;
    Ok(ok(logs.into()))
}

/// Kills a detached command and its process group; answers with its final state.
#[utoipa::path(delete, path = "/sandboxes/{name}/exec/detached/{id}", tag = "exec",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name"), ("id" = crate::schema::DetachedId, Path, description = "Command id")),
    responses((status = 200, body = Ok<DetachedCommand>), ErrorAnswers))]
pub async fn kill(
    State(st): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<Json<Ok<DetachedCommand>>, ApiError> {
    let c = blocking(&st, move |engine| engine.detached_kill(&name, &id)).await?;
    Ok(ok(c.into()))
}
