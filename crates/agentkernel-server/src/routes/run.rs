//! Throwaway sandboxes: `POST /run`, `/run/stream` and `/batch/run`.

use crate::envelope::{ApiError, ErrorAnswers, Ok};
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::stream::{ExecOp, buffered, streamed};
use crate::types::{
    BatchRequest, BatchResponse, BatchResult, OutputEncoding, RunOutput, RunRequest,
};
use agentkernel_core::ExecRequest;
use agentkernel_engine::{Engine, RunOptions, SpecRequest};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::time::Duration;

/// The engine's view of a run request, checked.
pub struct RunParts {
    /// The throwaway sandbox's name, chosen here so the stream can report it.
    pub name: String,
    pub spec: SpecRequest,
    pub exec: ExecRequest,
    pub timeout: Duration,
    pub fast: bool,
    pub encoding: OutputEncoding,
}

pub fn run_parts(st: &AppState, req: &RunRequest) -> Result<RunParts, ApiError> {
    agentkernel_engine::require_command(&req.command)?;
    let (cwd, config) = client_paths(st, req.cwd.as_deref(), req.config.as_deref())?;
    if req.host_env.is_some() && !st.trust_client_paths {
        return Err(ApiError::bad_request(
            "host_env is accepted only on the daemon's local socket: send the variables in env instead",
        ));
    }
    let timeout = st.timeout(req.timeout_ms)?;
    crate::bounds::count(
        "env",
        req.env.as_ref().map_or(0, Vec::len),
        crate::bounds::MAX_ENV,
    )?;
    let spec = SpecRequest {
        image: req.image.clone(),
        profile: req.profile.clone(),
        backend: req.backend.clone(),
        config,
        no_network: req.no_network.unwrap_or(false),
        compat: req.compatibility_mode.clone(),
        allow_hosts: req.allow_hosts.clone().unwrap_or_default(),
        deny_hosts: req.deny_hosts.clone().unwrap_or_default(),
        secrets: req.secrets.clone().unwrap_or_default(),
        env: req.env.clone().unwrap_or_default(),
        workdir: req.workdir.clone(),
        memory_mb: req.memory_mb,
        vcpus: req.vcpus,
        disk_mb: req.disk_mb,
        cwd,
        command: req.command.clone(),
        host_env: req.host_env.clone(),
        caller: st.caller(),
        ..Default::default()
    };
    let exec = ExecRequest {
        argv: req.command.clone(),
        timeout: Some(timeout),
        ..Default::default()
    };
    // Checked before a stream starts, so bad input is a 400 rather than an `error` event.
    agentkernel_engine::validate_exec(&exec)?;
    agentkernel_engine::resolve::validate_request(&st.home, &spec)?;
    Ok(RunParts {
        name: agentkernel_engine::throwaway_name(),
        spec,
        exec,
        timeout,
        fast: req.fast.unwrap_or(true),
        encoding: req.output_encoding.unwrap_or_default(),
    })
}

/// The directory a request is resolved against, and its config file. Clients name their own
/// only on the daemon's socket; over TCP they could otherwise mount any host directory into a
/// permissive sandbox.
fn client_paths(
    st: &AppState,
    cwd: Option<&str>,
    config: Option<&str>,
) -> Result<(PathBuf, Option<PathBuf>), ApiError> {
    if !st.trust_client_paths && (cwd.is_some() || config.is_some()) {
        return Err(ApiError::bad_request(
            "cwd and config are accepted only on the daemon's local socket: drop them, or run `agentkernel` on this host",
        ));
    }
    let cwd = match cwd {
        Some(c) if c.starts_with('/') => PathBuf::from(c),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "cwd {c:?} must be an absolute path"
            )));
        }
        None => st.cwd.clone(),
    };
    Ok((cwd, config.map(PathBuf::from)))
}

/// The operation that runs one throwaway sandbox: from the warm pool when the server keeps one
/// and the request allows it (`fast`, the default), else booted for the request.
pub fn run_op(st: &AppState, parts: RunParts) -> ExecOp {
    let home = st.home.clone();
    let pool = st.pool.clone().filter(|_| parts.fast);
    Box::new(move |sink, controls| {
        if let Some(pool) = pool {
            return pool
                .run(&parts.spec, &parts.exec, sink, controls)
                .map(|o| o.status);
        }
        let engine = Engine::open(&home)?;
        engine
            .run(
                &parts.spec,
                &RunOptions {
                    name: Some(parts.name),
                    ..RunOptions::default()
                },
                &parts.exec,
                sink,
                controls,
            )
            .map(|o| o.status)
    })
}

/// Runs a command in a new sandbox that is removed afterwards; answers when it has finished.
#[utoipa::path(post, path = "/run", tag = "run", request_body = RunRequest,
    responses((status = 200, description = "The command ran (whatever its exit code)", body = Ok<RunOutput>), ErrorAnswers))]
pub async fn run(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    let parts = run_parts(&st, &req)?;
    let timeout = parts.timeout;
    let out = buffered(run_op(&st, parts), &st, timeout).await?;
    Ok(crate::stream::answer(out))
}

/// Like `/run`, streaming Server-Sent Events as the command writes: `progress`, `started`,
/// `output` `{stream, data}` per chunk, then `done` `{exit_code}` or `error` `{message}`.
#[utoipa::path(post, path = "/run/stream", tag = "run", request_body = RunRequest,
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = crate::schema::StreamEvent), ErrorAnswers))]
pub async fn run_stream(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let parts = run_parts(&st, &req)?;
    let timeout = parts.timeout;
    let name = parts.name.clone();
    let encoding = parts.encoding;
    streamed(
        run_op(&st, parts),
        Some(name),
        Some(("starting", "starting a sandbox".to_string())),
        timeout,
        encoding,
    )
}

/// Runs several commands, each in its own throwaway sandbox, at the same time; answers with
/// one result per command in the order given.
#[utoipa::path(post, path = "/batch/run", tag = "run", request_body = BatchRequest,
    responses((status = 200, body = Ok<BatchResponse>), ErrorAnswers))]
pub async fn batch(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<Response, ApiError> {
    crate::bounds::count("commands", req.commands.len(), crate::bounds::MAX_BATCH)?;
    // Bad input anywhere refuses the whole batch before anything runs.
    let mut all_parts = Vec::with_capacity(req.commands.len());
    for (i, c) in req.commands.into_iter().enumerate() {
        let request = RunRequest {
            command: c.command,
            image: c.image,
            profile: c.profile,
            fast: None,
            backend: None,
            no_network: None,
            compatibility_mode: None,
            allow_hosts: None,
            deny_hosts: None,
            secrets: None,
            env: None,
            workdir: None,
            memory_mb: None,
            vcpus: None,
            disk_mb: None,
            timeout_ms: None,
            cwd: None,
            config: None,
            host_env: None,
            output_encoding: None,
        };
        // The status stays the error's own (400 bad input, 403 not permitted).
        let parts = run_parts(&st, &request).map_err(|e| ApiError {
            message: format!("commands[{i}]: {}", e.message),
            ..e
        })?;
        all_parts.push(parts);
    }
    let jobs = all_parts.into_iter().map(|parts| {
        let st = st.clone();
        async move {
            let timeout = parts.timeout;
            match buffered(run_op(&st, parts), &st, timeout).await {
                Result::Ok(mut out) => {
                    let exit_code = out.status.code;
                    // Only the interleaved output is answered: the rest is freed now.
                    let reservation = std::mem::take(&mut out.reservation);
                    (
                        BatchResult {
                            output: Some(crate::stream::into_text(out.into_output())),
                            exit_code: Some(exit_code),
                            error: None,
                        },
                        Some(reservation),
                    )
                }
                Err(e) => (
                    BatchResult {
                        output: None,
                        exit_code: None,
                        error: Some(e.message),
                    },
                    None,
                ),
            }
        }
    });
    let (results, reservations): (Vec<BatchResult>, Vec<Option<_>>) =
        futures_util::future::join_all(jobs)
            .await
            .into_iter()
            .unzip();
    let text_bytes = results
        .iter()
        .map(|r| r.output.as_ref().map_or(0, String::len))
        .sum();
    let response = crate::envelope::large_ok(&BatchResponse { results }, text_bytes);
    let reservations: Vec<_> = reservations.into_iter().flatten().collect();
    Ok(crate::limits::guard_body(response, reservations))
}
