//! The agentkernel HTTP API (`agentkernel serve`, and the daemon on its Unix socket): axum
//! routes over the engine, the OpenAPI document at `/openapi.json`, SSE streaming, Bearer
//! authentication, the checks that keep web pages out (`Host`, `Origin`, content type),
//! request limits and timeouts, and the MCP tools over streamable HTTP at `/mcp`. Handlers
//! parse, call the engine and render; the engine owns validation, policy, state and audit (the
//! same calls as the CLI).

#![forbid(unsafe_code)]

mod auth;
mod bounds;
mod envelope;
mod extract;
#[cfg(test)]
mod fuzz;
mod guard;
mod limits;
mod routes;
mod schema;
mod serve;
mod state;
mod stream;
mod types;

pub use auth::ApiKeys;
pub use bounds::MAX_TTL;
pub use guard::{AllowedHosts, NotAHostName};
pub use routes::daemon::{DaemonInfo, DaemonStatus};
pub use serve::{BODY_STALL_TIMEOUT, HEADER_READ_TIMEOUT, serve_tcp, serve_unix};
pub use state::{AppState, Limits, MAX_TIMEOUT};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use envelope::ApiError;
use utoipa::OpenApi;

/// The OpenAPI document, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "agentkernel", description = "Sandboxes for AI coding agents: run untrusted commands in isolated sandboxes."),
    paths(
        routes::system::health, routes::system::status, routes::system::stats,
        routes::system::backends, routes::system::gc,
        routes::run::run, routes::run::run_stream, routes::run::batch,
        routes::sandboxes::list, routes::sandboxes::create, routes::sandboxes::get,
        routes::sandboxes::by_uuid, routes::sandboxes::patch, routes::sandboxes::remove,
        routes::sandboxes::start, routes::sandboxes::stop, routes::sandboxes::logs,
        routes::sandboxes::extend,
        routes::exec::exec, routes::exec::exec_stream,
        routes::detached::start, routes::detached::list, routes::detached::get,
        routes::detached::logs, routes::detached::kill,
        routes::files::read, routes::files::write, routes::files::remove, routes::files::write_many,
        routes::snapshots::list, routes::snapshots::take, routes::snapshots::get,
        routes::snapshots::delete, routes::snapshots::restore, routes::snapshots::fork,
    ),
    components(schemas(
        envelope::ErrorBody, schema::SandboxName, schema::ForkPrefix, schema::DetachedId, schema::LabelSelector,
        schema::StreamEvent, schema::StreamEventName,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route of the API over `state`.
pub fn router(state: AppState) -> Router {
    use routes::{daemon, detached, exec, files, run, sandboxes, snapshots, system};
    let body_limit = state.limits.body_bytes;
    // The MCP tools over streamable HTTP, behind the same keys and concurrency limit.
    let mcp = agentkernel_mcp::http_service(
        agentkernel_mcp::Options {
            output_bytes: state.limits.output_bytes,
            output_budget: Some(state.output_budget.clone()),
            ..agentkernel_mcp::Options::new(state.home.clone(), state.cwd.clone())
        },
        state.shutdown.clone(),
    );
    Router::new()
        .route_service("/mcp", mcp)
        .route("/health", get(system::health))
        .route("/status", get(system::status))
        .route("/stats", get(system::stats))
        .route("/backends", get(system::backends))
        .route("/gc", post(system::gc))
        .route("/openapi.json", get(openapi_json))
        .route("/run", post(run::run))
        .route("/run/stream", post(run::run_stream))
        .route("/batch/run", post(run::batch))
        .route("/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route(
            "/sandboxes/{name}",
            get(sandboxes::get)
                .patch(sandboxes::patch)
                .delete(sandboxes::remove),
        )
        .route("/sandboxes/by-uuid/{uuid}", get(sandboxes::by_uuid))
        .route("/sandboxes/{name}/start", post(sandboxes::start))
        .route("/sandboxes/{name}/stop", post(sandboxes::stop))
        .route("/sandboxes/{name}/logs", get(sandboxes::logs))
        .route("/sandboxes/{name}/extend", post(sandboxes::extend))
        .route("/sandboxes/{name}/exec", post(exec::exec))
        .route("/sandboxes/{name}/exec/stream", post(exec::exec_stream))
        .route("/sandboxes/{name}/exec/detach", post(detached::start))
        .route("/sandboxes/{name}/exec/detached", get(detached::list))
        .route(
            "/sandboxes/{name}/exec/detached/{id}",
            get(detached::get).delete(detached::kill),
        )
        .route(
            "/sandboxes/{name}/exec/detached/{id}/logs",
            get(detached::logs),
        )
        .route("/daemon/status", get(daemon::status))
        .route("/daemon/prewarm", post(daemon::prewarm))
        .route("/sandboxes/{name}/files", post(files::write_many))
        .route(
            "/sandboxes/{name}/files/{*path}",
            get(files::read).put(files::write).delete(files::remove),
        )
        .route("/snapshots", get(snapshots::list).post(snapshots::take))
        .route(
            "/snapshots/{name}",
            get(snapshots::get).delete(snapshots::delete),
        )
        .route("/snapshots/{name}/restore", post(snapshots::restore))
        .route("/sandboxes/{name}/fork", post(snapshots::fork))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The last layer added sees a request first: the browser checks, then the key, then
        // the limits.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_concurrency,
        ))
        .layer(middleware::from_fn(serve::time_bodies))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::check_request,
        ))
        .with_state(state)
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint {}: see /openapi.json", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}: see /openapi.json",
            uri.path()
        ),
    )
}
