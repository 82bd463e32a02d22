//! The agentkernel MCP server: the nine sandbox tools of the seeds (`sandbox_run`,
//! `sandbox_create`, `sandbox_exec`, `sandbox_list`, `sandbox_remove`, `sandbox_file_write`,
//! `sandbox_file_read`, `sandbox_start`, `sandbox_stop`) and the snapshot tools
//! (`sandbox_snapshot`, `sandbox_restore`) on rmcp, over stdio
//! (`agentkernel mcp server`) and streamable HTTP (`/mcp` on `agentkernel serve`).
//!
//! Like every surface it only parses and renders: each input goes through the engine's own
//! validation (names, image references, paths inside the sandbox, env, limits), commands run
//! through the engine's `buffered` exec (the same as the buffered HTTP endpoints), and a
//! failed command or refused input is a tool result with `isError: true` that says why.

#![forbid(unsafe_code)]

mod tools;

pub use tools::{Options, SandboxTools};

use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;

/// Serves the tools on this process's stdin and stdout until the client closes them.
pub async fn serve_stdio(options: Options) -> std::io::Result<()> {
    let running = SandboxTools::new(options)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| std::io::Error::other(format!("MCP initialization failed: {e}")))?;
    running
        .waiting()
        .await
        .map_err(|e| std::io::Error::other(format!("the MCP server stopped: {e}")))?;
    Ok(())
}

/// The streamable HTTP service to mount at `/mcp` (a tower service). Authentication and the
/// checks against browsers are the caller's: agentkernel-server checks the `Host` header (DNS
/// rebinding), `Origin` and the content type of every route, `/mcp` included, by one rule
/// that also accepts IP literals and the names the operator allows. rmcp's own `Host` list
/// (loopback names only) would refuse some of those, so it is turned off here rather than kept
/// as a second, different rule. `shutdown` ends open sessions when cancelled.
pub fn http_service(
    options: Options,
    shutdown: tokio_util::sync::CancellationToken,
) -> StreamableHttpService<SandboxTools, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown)
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(SandboxTools::new(options.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
