//! Commands in a persistent sandbox: buffered and streamed.

use super::parse_env;
use crate::envelope::{ApiError, ErrorAnswers, Ok};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::stream::{ExecOp, answer, buffered, streamed};
use crate::types::{ExecRequest, OutputEncoding, RunOutput};
use agentkernel_engine::Engine;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// The engine's exec request for an API one, checked.
pub fn exec_request(
    st: &AppState,
    req: &ExecRequest,
) -> Result<(agentkernel_core::ExecRequest, Duration), ApiError> {
    agentkernel_engine::require_command(&req.command)?;
    let timeout = st.timeout(req.timeout_ms)?;
    let exec = agentkernel_core::ExecRequest {
        argv: req.command.clone(),
        env: parse_env(req.env.as_ref())?,
        workdir: req.workdir.clone(),
        timeout: Some(timeout),
        ..Default::default()
    };
    // Checked before a stream starts, so bad input is a 400 rather than an `error` event.
    agentkernel_engine::validate_exec(&exec)?;
    Ok((exec, timeout))
}

fn exec_op(st: &AppState, name: String, req: agentkernel_core::ExecRequest) -> ExecOp {
    let home = st.home.clone();
    Box::new(move |sink, controls| Engine::open(&home)?.exec(&name, &req, sink, controls))
}

/// Runs a command in a running sandbox; answers when it has finished.
#[utoipa::path(post, path = "/sandboxes/{name}/exec", tag = "exec", request_body = ExecRequest,
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, description = "The command ran (whatever its exit code)", body = Ok<RunOutput>), ErrorAnswers))]
pub async fn exec(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let (req, timeout) = exec_request(&st, &req)?;
    let out = buffered(exec_op(&st, name, req), &st, timeout).await?;
    Ok(answer(out))
}

/// Like `/exec`, streaming Server-Sent Events as the command writes.
#[utoipa::path(post, path = "/sandboxes/{name}/exec/stream", tag = "exec", request_body = ExecRequest,
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = crate::schema::StreamEvent), ErrorAnswers))]
pub async fn exec_stream(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (req, timeout) = exec_request(&st, &req)?;
    // Unknown or stopped sandboxes are answered with a status, before the stream starts.
    let checked = name.clone();
    super::blocking(&st, move |engine| {
        let info = engine.get(&checked)?;
        if info.status != "running" {
            return Err(agentkernel_engine::EngineError::NotRunning(checked));
        }
        Ok(())
    })
    .await?;
    streamed(
        exec_op(&st, name.clone(), req),
        Some(name),
        None,
        timeout,
        OutputEncoding::Utf8,
    )
}
