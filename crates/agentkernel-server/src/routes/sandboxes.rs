//! Persistent sandboxes: create, list, inspect, edit, start, stop, remove, logs, TTL.

use super::blocking;
use crate::bounds;
use crate::envelope::{ApiError, ErrorAnswers, Ok, ok};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::types::{
    CreateRequest, ExtendRequest, ExtendResponse, PatchRequest, Removed, SandboxInfo,
};
use agentkernel_engine::SpecRequest;
use agentkernel_engine::metadata::MetadataUpdate;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `?label=key:value`, repeatable. Describes the query for the OpenAPI document; the handler
/// reads the pairs itself because the label may repeat.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LabelFilter {
    /// `key:value`; every given label must match.
    #[param(style = Form, explode, value_type = Option<Vec<crate::schema::LabelSelector>>)]
    pub label: Vec<String>,
}

/// Lists sandboxes with their true status, optionally only those carrying given labels.
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes",
    params(LabelFilter),
    responses((status = 200, body = Ok<Vec<SandboxInfo>>), ErrorAnswers))]
pub async fn list(
    State(st): State<AppState>,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<Ok<Vec<SandboxInfo>>>, ApiError> {
    let labels = label_filter(pairs)?;
    let list = blocking(&st, move |engine| engine.list_labelled(&labels)).await?;
    Ok(ok(list.into_iter().map(SandboxInfo::from).collect()))
}

/// The `(key, value)` pairs of the `?label=key:value` parameters of a query; other parameters
/// are ignored.
pub(crate) fn label_filter(
    pairs: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ApiError> {
    let mut labels = Vec::new();
    for (key, value) in pairs {
        if key != "label" {
            continue;
        }
        bounds::count("the label filter", labels.len() + 1, bounds::MAX_LABELS)?;
        match value.split_once(':') {
            Some((k, v)) if !k.is_empty() => labels.push((k.to_string(), v.to_string())),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "label filter {value:?}: use ?label=key:value"
                )));
            }
        }
    }
    Ok(labels)
}

/// Creates a sandbox and starts it. On any error nothing is left behind.
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes", request_body = CreateRequest,
    responses((status = 200, description = "Created and running", body = Ok<SandboxInfo>), ErrorAnswers))]
pub async fn create(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CreateRequest>,
) -> Result<Json<Ok<SandboxInfo>>, ApiError> {
    // Checked before anything is made: a bad URL or ref is a 400 and no sandbox.
    let source = match (&req.source_url, &req.source_ref) {
        (Some(url), reference) => Some(
            agentkernel_core::source::Source::new(url, reference.as_deref())
                .map_err(|e| ApiError::from(agentkernel_engine::EngineError::Input(e)))?,
        ),
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "source_ref names a branch, tag or commit of source_url: give source_url too",
            ));
        }
        (None, None) => None,
    };
    let ttl = req
        .ttl
        .as_deref()
        .map(|t| bounds::duration("ttl", t))
        .transpose()?;
    bounds::count("env", req.env.as_ref().map_or(0, Vec::len), bounds::MAX_ENV)?;
    bounds::count(
        "labels",
        req.labels.as_ref().map_or(0, BTreeMap::len),
        bounds::MAX_LABELS,
    )?;
    bounds::count(
        "volumes",
        req.volumes.as_ref().map_or(0, Vec::len),
        agentkernel_core::volume::MAX_VOLUMES,
    )?;
    let spec = SpecRequest {
        image: req.image.clone(),
        profile: req.profile.clone(),
        backend: req.backend.clone(),
        no_network: req.no_network.unwrap_or(false),
        env: req.env.clone().unwrap_or_default(),
        memory_mb: req.memory_mb,
        vcpus: req.vcpus,
        disk_mb: req.disk_mb,
        compat: req.compatibility_mode.clone(),
        allow_hosts: req.allow_hosts.clone().unwrap_or_default(),
        deny_hosts: req.deny_hosts.clone().unwrap_or_default(),
        secrets: req.secrets.clone().unwrap_or_default(),
        secret_files: req.secret_files.clone().unwrap_or_default(),
        placeholder_secrets: req.placeholder_secrets.unwrap_or(false),
        volumes: req.volumes.clone().unwrap_or_default(),
        cwd: st.cwd.clone(),
        labels: req.labels.clone().unwrap_or_default(),
        description: req.description.clone(),
        caller: st.caller(),
        ..Default::default()
    };
    let name = req.name.clone();
    let info = blocking(&st, move |engine| {
        agentkernel_core::validate_name(&name)?;
        engine.create(&spec, Some(&name), ttl)?;
        // All or nothing: a sandbox that did not start, or whose clone failed, is removed.
        let started = engine.start(&name).and_then(|_| match &source {
            Some(source) => engine.clone_source(&name, source),
            None => Ok(()),
        });
        if let Err(e) = started {
            let _ = engine.remove(&name);
            return Err(e);
        }
        engine.get(&name)
    })
    .await?;
    Ok(ok(info.into()))
}

/// One sandbox.
#[utoipa::path(get, path = "/sandboxes/{name}", tag = "sandboxes",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<SandboxInfo>), ErrorAnswers))]
pub async fn get(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Ok<SandboxInfo>>, ApiError> {
    let info = blocking(&st, move |engine| engine.get(&name)).await?;
    Ok(ok(info.into()))
}

/// One sandbox by its uuid.
#[utoipa::path(get, path = "/sandboxes/by-uuid/{uuid}", tag = "sandboxes",
    params(("uuid" = String, Path, description = "Sandbox uuid")),
    responses((status = 200, body = Ok<SandboxInfo>), ErrorAnswers))]
pub async fn by_uuid(
    State(st): State<AppState>,
    ApiPath(uuid): ApiPath<String>,
) -> Result<Json<Ok<SandboxInfo>>, ApiError> {
    let info = blocking(&st, move |engine| engine.get_by_uuid(&uuid)).await?;
    Ok(ok(info.into()))
}

/// Changes labels and description.
#[utoipa::path(patch, path = "/sandboxes/{name}", tag = "sandboxes", request_body = PatchRequest,
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<SandboxInfo>), ErrorAnswers))]
pub async fn patch(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PatchRequest>,
) -> Result<Json<Ok<SandboxInfo>>, ApiError> {
    bounds::count(
        "labels",
        req.labels.as_ref().map_or(0, BTreeMap::len),
        bounds::MAX_LABELS,
    )?;
    if let Some(n) = &req.network {
        bounds::count("network.allow", n.allow.len(), 256)?;
        bounds::count("network.deny", n.deny.len(), 256)?;
    }
    let update = MetadataUpdate {
        labels: req.labels,
        description: req.description.map(Some),
        network: req
            .network
            .map(|n| agentkernel_engine::egress::NetworkChange {
                allow: n.allow,
                deny: n.deny,
            }),
    };
    let info = blocking(&st, move |engine| engine.update_metadata(&name, &update)).await?;
    Ok(ok(info.into()))
}

/// Stops and removes a sandbox and everything written in it.
#[utoipa::path(delete, path = "/sandboxes/{name}", tag = "sandboxes",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<Removed>), ErrorAnswers))]
pub async fn remove(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Ok<Removed>>, ApiError> {
    let shown = name.clone();
    blocking(&st, move |engine| engine.remove(&name)).await?;
    Ok(ok(Removed {
        name: shown,
        removed: true,
    }))
}

/// Starts a stopped sandbox (a running one is left as it is).
#[utoipa::path(post, path = "/sandboxes/{name}/start", tag = "sandboxes",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<SandboxInfo>), ErrorAnswers))]
pub async fn start(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Ok<SandboxInfo>>, ApiError> {
    let info = blocking(&st, move |engine| {
        engine.start(&name)?;
        engine.get(&name)
    })
    .await?;
    Ok(ok(info.into()))
}

/// Stops a sandbox; its files stay for the next start.
#[utoipa::path(post, path = "/sandboxes/{name}/stop", tag = "sandboxes",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<SandboxInfo>), ErrorAnswers))]
pub async fn stop(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Ok<SandboxInfo>>, ApiError> {
    let info = blocking(&st, move |engine| {
        engine.stop(&name)?;
        engine.get(&name)
    })
    .await?;
    Ok(ok(info.into()))
}

/// An audit log entry (the fields depend on its `type`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct AuditEntry(serde_json::Value);

/// Most audit entries one answer carries: the newest ones (the log itself is never cut).
const MAX_LOG_ENTRIES: usize = 10_000;

/// The audit log entries of one sandbox, oldest first (at most the newest 10 000).
#[utoipa::path(get, path = "/sandboxes/{name}/logs", tag = "sandboxes",
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<Vec<AuditEntry>>), ErrorAnswers))]
pub async fn logs(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Ok<Vec<AuditEntry>>>, ApiError> {
    let entries = blocking(&st, move |engine| {
        engine.get(&name)?;
        engine
            .audit()
            .entries(Some(&name), Some(MAX_LOG_ENTRIES))
            .map_err(|e| agentkernel_engine::EngineError::Io {
                context: format!("read {}", engine.audit().path().display()),
                source: e,
            })
    })
    .await?;
    Ok(ok(entries.into_iter().map(AuditEntry).collect()))
}

/// Pushes the sandbox's expiry back.
#[utoipa::path(post, path = "/sandboxes/{name}/extend", tag = "sandboxes", request_body = ExtendRequest,
    params(("name" = crate::schema::SandboxName, Path, description = "Sandbox name")),
    responses((status = 200, body = Ok<ExtendResponse>), ErrorAnswers))]
pub async fn extend(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ExtendRequest>,
) -> Result<Json<Ok<ExtendResponse>>, ApiError> {
    let by = bounds::duration("by", &req.by)?;
    let expires_at = blocking(&st, move |engine| engine.extend(&name, by)).await?;
    Ok(ok(ExtendResponse { expires_at }))
}
