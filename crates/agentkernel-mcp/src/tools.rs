//! The tools, their parameters and how their results read.

// A refused request is the tool's answer (`CallToolResult` with isError), returned once per
// call through `?`: its size does not matter, and boxing it would only add noise.
#![allow(clippy::result_large_err)]

use agentkernel_engine::buffered::{Buffered, BufferedError, ExecOp, buffered, timeout_message};
use agentkernel_engine::resolve::Caller;
use agentkernel_engine::snapshot::SnapshotKind;
use agentkernel_engine::{Engine, EngineError, RunOptions, SpecRequest};
use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default `timeout_ms` of `sandbox_run` and `sandbox_exec`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// How one server is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The engine's home (`~/.agentkernel`).
    pub home: PathBuf,
    /// The project directory requests are resolved against (config file, image detection,
    /// what a permissive sandbox mounts): the server's own directory, never a client's.
    pub cwd: PathBuf,
    /// Output kept per stream of a command.
    pub output_bytes: usize,
    /// Output all commands of the server may hold at once (shared with its HTTP API).
    pub output_budget: Option<Arc<agentkernel_engine::buffered::OutputBudget>>,
}

impl Options {
    pub fn new(home: PathBuf, cwd: PathBuf) -> Options {
        Options {
            home,
            cwd,
            output_bytes: 16 * 1024 * 1024,
            output_budget: None,
        }
    }
}

/// The MCP server: the nine sandbox tools over one engine home.
#[derive(Clone)]
pub struct SandboxTools {
    options: Options,
    tool_router: ToolRouter<SandboxTools>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunParams {
    /// The command and its arguments, e.g. ["python3", "-c", "print('hi')"]. For `&&` or
    /// pipes, use ["sh", "-c", "..."].
    pub command: Vec<String>,
    /// Security profile: restrictive, moderate (default) or permissive.
    pub profile: Option<String>,
    /// Agent compatibility mode: native (allow all), claude, codex or gemini (the agent's API
    /// and the package registries only).
    pub compatibility_mode: Option<String>,
    /// Network access on or off, whatever the profile says.
    pub network: Option<bool>,
    /// Working directory inside the sandbox (an absolute path; default /workspace).
    pub cwd: Option<String>,
    /// Environment variables for the command.
    pub env: Option<BTreeMap<String, String>>,
    /// Secrets for the egress proxy to add to requests for one host each, as `KEY=value:host`:
    /// the command sees the placeholder `ak-proxy-managed` in KEY, and the sandbox may then
    /// reach only its bound hosts. Values from the user's vault cannot be named here.
    pub secrets: Option<Vec<String>>,
    /// Kill the command after this many milliseconds (default 30000).
    pub timeout_ms: Option<u64>,
    /// OCI image reference (e.g. python:3.12-alpine) or "host"; auto-detected from the command
    /// when absent.
    pub image: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateParams {
    /// Sandbox name (letters, digits, '-', '_', '.'); generated when absent.
    pub name: Option<String>,
    /// OCI image reference or "host"; the default image (alpine:3.20) when absent.
    pub image: Option<String>,
    /// Security profile: restrictive, moderate (default) or permissive.
    pub profile: Option<String>,
    /// Agent compatibility mode: native (allow all), claude, codex or gemini (the agent's API
    /// and the package registries only).
    pub compatibility_mode: Option<String>,
    /// Network access on or off, whatever the profile says.
    pub network: Option<bool>,
    /// Default working directory inside the sandbox (an absolute path; default /workspace).
    pub cwd: Option<String>,
    /// Environment variables of the sandbox.
    pub env: Option<BTreeMap<String, String>>,
    /// Secrets for the egress proxy to add to requests for one host each, as `KEY=value:host`:
    /// the command sees the placeholder `ak-proxy-managed` in KEY, and the sandbox may then
    /// reach only its bound hosts. Values from the user's vault cannot be named here.
    pub secrets: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecParams {
    /// Name of a running sandbox.
    pub name: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Environment variables for the command.
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory inside the sandbox (absolute).
    pub workdir: Option<String>,
    /// Kill the command after this many milliseconds (default 30000).
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct NameParams {
    /// Sandbox name.
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SnapshotParams {
    /// The sandbox to capture (running or stopped; it keeps running).
    pub sandbox: String,
    /// The snapshot's name; default SANDBOX-YYYYMMDD-HHMMSS.
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RestoreParams {
    /// The snapshot to restore.
    pub snapshot: String,
    /// Name of the new sandbox; default SANDBOX-restored.
    #[serde(rename = "as")]
    pub as_name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FileWriteParams {
    /// Name of a running sandbox.
    pub name: String,
    /// File path inside the sandbox; a relative path starts at the sandbox's working
    /// directory (/workspace).
    pub path: String,
    /// The file's contents: text, or base64 when `encoding` is "base64".
    pub content: String,
    /// "utf8" (default) or "base64" (for binary contents).
    pub encoding: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FileReadParams {
    /// Name of a running sandbox.
    pub name: String,
    /// File path inside the sandbox; a relative path starts at the sandbox's working
    /// directory (/workspace).
    pub path: String,
}

/// The sandbox options shared by `sandbox_run` and `sandbox_create`.
struct SpecParams<'a> {
    image: Option<String>,
    profile: Option<String>,
    mode: Option<&'a str>,
    network: Option<bool>,
    cwd: Option<&'a str>,
    env: Option<&'a BTreeMap<String, String>>,
    secrets: Vec<String>,
}

/// A refusal or failure, as a tool result the model can read (`isError: true`).
fn failure(message: impl Into<String>) -> CallToolResult {
    let message = message.into();
    let mut result = CallToolResult::error(vec![ContentBlock::text(message.clone())]);
    result.structured_content = Some(json!({ "error": message }));
    result
}

/// A result with readable text and the same facts as structured content.
fn answer(text: String, structured: Value, is_error: bool) -> CallToolResult {
    let mut result = if is_error {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    result.structured_content = Some(structured);
    result
}

type ToolResult = Result<CallToolResult, ErrorData>;

/// An engine error as a tool result: its message, and its kind (the same `ErrorKind` the CLI
/// takes its exit code and HTTP its status from) for a client that branches on it.
fn engine_failure(e: EngineError) -> CallToolResult {
    use agentkernel_core::HasKind;
    let message = e.to_string();
    let mut result = CallToolResult::error(vec![ContentBlock::text(message.clone())]);
    result.structured_content = Some(json!({ "error": message, "kind": e.kind().name() }));
    result
}

fn timeout(timeout_ms: Option<u64>) -> Result<Duration, CallToolResult> {
    agentkernel_engine::timeout_from_ms(timeout_ms, Duration::from_millis(DEFAULT_TIMEOUT_MS))
        .map_err(engine_failure)
}

/// `KEY=VALUE` strings as the engine takes them; keys the engine could misread are refused
/// here, values are checked by the engine.
fn env_list(env: Option<&BTreeMap<String, String>>) -> Result<Vec<String>, CallToolResult> {
    let mut list = Vec::new();
    for (k, v) in env.into_iter().flatten() {
        agentkernel_core::spec::validate_env_var(k, v).map_err(|e| failure(e.to_string()))?;
        list.push(format!("{k}={v}"));
    }
    Ok(list)
}

/// The bytes `sandbox_file_write` writes: `content` as it is, or decoded from base64.
fn file_bytes(content: String, encoding: Option<&str>) -> Result<Vec<u8>, CallToolResult> {
    match encoding.unwrap_or("utf8") {
        "utf8" | "utf-8" | "text" => Ok(content.into_bytes()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| failure(format!("content is not valid base64: {e}"))),
        other => Err(failure(format!(
            "unknown encoding {other:?}: use utf8 or base64"
        ))),
    }
}

fn command(argv: &[String]) -> Result<(), CallToolResult> {
    agentkernel_engine::require_command(argv).map_err(engine_failure)
}

/// The text of what a command wrote, for the readable part of a result.
fn render(out: &Buffered, timeout: Duration, sandbox: Option<&str>) -> (String, Value) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut text = String::new();
    if out.status.timed_out {
        text.push_str(&timeout_message(timeout));
        text.push('\n');
    }
    text.push_str(&format!("exit code: {}\n", out.status.code));
    if out.status.oom_killed {
        text.push_str("the sandbox ran out of memory and a process was killed\n");
    }
    if !stdout.is_empty() {
        text.push_str(&format!("--- stdout\n{stdout}"));
        if !stdout.ends_with('\n') {
            text.push('\n');
        }
    }
    if !stderr.is_empty() {
        text.push_str(&format!("--- stderr\n{stderr}"));
        if !stderr.ends_with('\n') {
            text.push('\n');
        }
    }
    if out.truncated {
        text.push_str("(output truncated)\n");
    }
    let mut structured = json!({
        "exit_code": out.status.code,
        "stdout": stdout,
        "stderr": stderr,
        "timed_out": out.status.timed_out,
        "oom_killed": out.status.oom_killed,
        "truncated": out.truncated,
    });
    if out.status.timed_out {
        structured["error"] = json!(timeout_message(timeout));
    }
    if let Some(name) = sandbox {
        structured["sandbox"] = json!(name);
    }
    (text, structured)
}

#[tool_router(router = tool_router)]
impl SandboxTools {
    pub fn new(options: Options) -> SandboxTools {
        SandboxTools {
            options,
            tool_router: Self::tool_router(),
        }
    }

    /// Runs blocking engine work off the async threads; an engine error is a tool error.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Engine) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, CallToolResult> {
        let home = self.options.home.clone();
        tokio::task::spawn_blocking(move || work(Engine::open(&home)?))
            .await
            .map_err(|e| failure(format!("agentkernel's worker failed: {e}")))?
            .map_err(engine_failure)
    }

    /// Runs one command through the engine's buffered exec and renders it.
    async fn run_command(
        &self,
        op: ExecOp,
        timeout: Duration,
        sandbox: Option<&str>,
    ) -> CallToolResult {
        match buffered(
            op,
            self.options.output_bytes,
            self.options.output_budget.clone(),
        )
        .await
        {
            Ok(out) => {
                let (text, structured) = render(&out, timeout, sandbox);
                let is_error = out.status.timed_out || out.status.code != 0;
                answer(text, structured, is_error)
            }
            Err(BufferedError::Engine(e)) => engine_failure(e),
            Err(BufferedError::Internal(m)) => failure(m),
        }
    }

    fn spec_request(
        &self,
        p: SpecParams<'_>,
        command: Vec<String>,
    ) -> Result<SpecRequest, CallToolResult> {
        let spec = SpecRequest {
            image: p.image,
            profile: p.profile,
            compat: p.mode.map(str::to_string),
            secrets: p.secrets,
            network: p.network,
            env: env_list(p.env)?,
            workdir: p.cwd.map(str::to_string),
            cwd: self.options.cwd.clone(),
            command,
            caller: agentkernel_engine::resolve::Caller::Agent,
            ..Default::default()
        };
        agentkernel_engine::resolve::validate_request(&self.options.home, &spec)
            .map_err(engine_failure)?;
        Ok(spec)
    }

    /// Run a command in a temporary sandbox that is removed afterwards. Returns the exit code,
    /// stdout and stderr; a command that fails or times out is an error result that says so.
    #[tool(
        name = "sandbox_run",
        annotations(
            title = "Run a command in a temporary sandbox",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn sandbox_run(&self, Parameters(p): Parameters<RunParams>) -> ToolResult {
        Ok(self.run(p).await.unwrap_or_else(|e| e))
    }

    async fn run(&self, p: RunParams) -> Result<CallToolResult, CallToolResult> {
        command(&p.command)?;
        let timeout = timeout(p.timeout_ms)?;
        let spec = self.spec_request(
            SpecParams {
                image: p.image,
                profile: p.profile,
                mode: p.compatibility_mode.as_deref(),
                network: p.network,
                cwd: p.cwd.as_deref(),
                env: p.env.as_ref(),
                secrets: p.secrets.clone().unwrap_or_default(),
            },
            p.command.clone(),
        )?;
        let exec = agentkernel_core::ExecRequest {
            argv: p.command,
            timeout: Some(timeout),
            ..Default::default()
        };
        agentkernel_engine::validate_exec(&exec).map_err(engine_failure)?;
        let home = self.options.home.clone();
        let name = agentkernel_engine::throwaway_name();
        let run_name = name.clone();
        let op: ExecOp = Box::new(move |sink, controls| {
            Engine::open(&home)?
                .run(
                    &spec,
                    &RunOptions {
                        name: Some(run_name),
                        ..RunOptions::default()
                    },
                    &exec,
                    sink,
                    controls,
                )
                .map(|o| o.status)
        });
        Ok(self.run_command(op, timeout, None).await)
    }

    /// Create a persistent sandbox and start it, ready for sandbox_exec and the file tools.
    #[tool(
        name = "sandbox_create",
        annotations(
            title = "Create a persistent sandbox",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_create(&self, Parameters(p): Parameters<CreateParams>) -> ToolResult {
        Ok(self.create(p).await.unwrap_or_else(|e| e))
    }

    async fn create(&self, p: CreateParams) -> Result<CallToolResult, CallToolResult> {
        let spec = self.spec_request(
            SpecParams {
                image: p.image,
                profile: p.profile,
                mode: p.compatibility_mode.as_deref(),
                network: p.network,
                cwd: p.cwd.as_deref(),
                env: p.env.as_ref(),
                secrets: p.secrets.clone().unwrap_or_default(),
            },
            Vec::new(),
        )?;
        if let Some(name) = &p.name {
            agentkernel_core::validate_name(name).map_err(|e| failure(e.to_string()))?;
        }
        let info = self
            .blocking(move |engine| {
                let info = engine.create(&spec, p.name.as_deref(), None)?;
                if let Err(e) = engine.start(&info.name) {
                    // Nothing half-made is left behind.
                    let _ = engine.remove(&info.name);
                    return Err(e);
                }
                engine.get(&info.name)
            })
            .await?;
        let text = format!(
            "created and started sandbox {} (image {}, profile {})",
            info.name, info.image, info.profile
        );
        Ok(answer(text, json!(info), false))
    }

    /// Execute a command in a running sandbox. Returns the exit code, stdout and stderr.
    #[tool(
        name = "sandbox_exec",
        annotations(
            title = "Run a command in a sandbox",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn sandbox_exec(&self, Parameters(p): Parameters<ExecParams>) -> ToolResult {
        Ok(self.exec(p).await.unwrap_or_else(|e| e))
    }

    async fn exec(&self, p: ExecParams) -> Result<CallToolResult, CallToolResult> {
        command(&p.command)?;
        agentkernel_core::validate_name(&p.name).map_err(|e| failure(e.to_string()))?;
        let timeout = timeout(p.timeout_ms)?;
        let env = env_list(p.env.as_ref())?
            .iter()
            .map(|kv| agentkernel_core::spec::parse_env(kv).map_err(|e| failure(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let exec = agentkernel_core::ExecRequest {
            argv: p.command,
            env,
            workdir: p.workdir,
            timeout: Some(timeout),
            ..Default::default()
        };
        agentkernel_engine::validate_exec(&exec).map_err(engine_failure)?;
        let (home, cwd) = (self.options.home.clone(), self.options.cwd.clone());
        let name = p.name.clone();
        let op: ExecOp = Box::new(move |sink, controls| {
            let engine = Engine::open(&home)?;
            engine.check_agent_access(&name, &cwd)?;
            engine.exec(&name, &exec, sink, controls)
        });
        Ok(self.run_command(op, timeout, Some(&p.name)).await)
    }

    /// List all sandboxes with their status.
    #[tool(
        name = "sandbox_list",
        annotations(
            title = "List sandboxes",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn sandbox_list(&self) -> ToolResult {
        let list = match self.blocking(|engine| engine.list()).await {
            Ok(list) => list,
            Err(e) => return Ok(e),
        };
        let text = if list.is_empty() {
            "no sandboxes".to_string()
        } else {
            list.iter()
                .map(|s| format!("{}\t{}\t{}\t{}", s.name, s.status, s.image, s.profile))
                .collect::<Vec<_>>()
                .join("\n")
        };
        Ok(answer(text, json!({ "sandboxes": list }), false))
    }

    /// Remove a sandbox: stop it and delete everything it wrote.
    #[tool(
        name = "sandbox_remove",
        annotations(
            title = "Remove a sandbox",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_remove(&self, Parameters(p): Parameters<NameParams>) -> ToolResult {
        let name = p.name.clone();
        Ok(
            match self.blocking(move |engine| engine.remove(&name)).await {
                Ok(()) => answer(
                    format!("removed sandbox {}", p.name),
                    json!({ "name": p.name, "removed": true }),
                    false,
                ),
                Err(e) => e,
            },
        )
    }

    /// Write a file into a running sandbox (text, or binary as base64).
    #[tool(
        name = "sandbox_file_write",
        annotations(
            title = "Write a file into a sandbox",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn sandbox_file_write(&self, Parameters(p): Parameters<FileWriteParams>) -> ToolResult {
        let data = match file_bytes(p.content, p.encoding.as_deref()) {
            Ok(d) => d,
            Err(refused) => return Ok(refused),
        };
        let size = data.len();
        let (name, path) = (p.name.clone(), p.path);
        let cwd = self.options.cwd.clone();
        Ok(
            match self
                .blocking(move |engine| {
                    engine.check_agent_access(&name, &cwd)?;
                    engine.write_file(&name, &path, &data)
                })
                .await
            {
                Ok(written) => answer(
                    format!("wrote {size} bytes to {written} in sandbox {}", p.name),
                    json!({ "path": written, "size": size }),
                    false,
                ),
                Err(e) => e,
            },
        )
    }

    /// Read a file from a running sandbox: UTF-8 text as is, anything else as base64.
    #[tool(
        name = "sandbox_file_read",
        annotations(
            title = "Read a file from a sandbox",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn sandbox_file_read(&self, Parameters(p): Parameters<FileReadParams>) -> ToolResult {
        let (name, path) = (p.name, p.path.clone());
        let cwd = self.options.cwd.clone();
        let data = match self
            .blocking(move |engine| {
                engine.check_agent_access(&name, &cwd)?;
                engine.read_file(&name, &path)
            })
            .await
        {
            Ok(d) => d,
            Err(e) => return Ok(e),
        };
        let size = data.len();
        let (content, encoding) = match String::from_utf8(data) {
            Ok(text) => (text, "utf8"),
            Err(e) => (
                base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                "base64",
            ),
        };
        Ok(answer(
            content.clone(),
            json!({ "path": p.path, "content": content, "encoding": encoding, "size": size }),
            false,
        ))
    }

    /// Start a stopped sandbox (starting a running one does nothing).
    #[tool(
        name = "sandbox_start",
        annotations(
            title = "Start a sandbox",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn sandbox_start(&self, Parameters(p): Parameters<NameParams>) -> ToolResult {
        let name = p.name.clone();
        let cwd = self.options.cwd.clone();
        Ok(
            match self
                .blocking(move |engine| {
                    engine.check_agent_access(&name, &cwd)?;
                    engine.start(&name)
                })
                .await
            {
                Ok(started) => answer(
                    if started {
                        format!("started sandbox {}", p.name)
                    } else {
                        format!("sandbox {} was already running", p.name)
                    },
                    json!({ "name": p.name, "status": "running", "started": started }),
                    false,
                ),
                Err(e) => e,
            },
        )
    }

    /// Save a sandbox's files and settings as a snapshot, without stopping it; bring them back
    /// later with sandbox_restore.
    #[tool(
        name = "sandbox_snapshot",
        annotations(
            title = "Snapshot a sandbox",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_snapshot(&self, Parameters(p): Parameters<SnapshotParams>) -> ToolResult {
        let cwd = self.options.cwd.clone();
        Ok(
            match self
                .blocking(move |engine| {
                    engine.check_agent_access(&p.sandbox, &cwd)?;
                    engine.take_snapshot(&p.sandbox, p.name.as_deref(), SnapshotKind::User)
                })
                .await
            {
                Ok(s) => answer(
                    format!(
                        "snapshot {} of sandbox {} taken ({} bytes written)",
                        s.name, s.sandbox, s.size_bytes
                    ),
                    json!({ "name": s.name, "sandbox": s.sandbox, "size_bytes": s.size_bytes, "created_at": s.created_at }),
                    false,
                ),
                Err(e) => e,
            },
        )
    }

    /// Make a new sandbox from a snapshot (its files as they were when it was taken) and start
    /// it.
    #[tool(
        name = "sandbox_restore",
        annotations(
            title = "Restore a snapshot",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_restore(&self, Parameters(p): Parameters<RestoreParams>) -> ToolResult {
        let cwd = self.options.cwd.clone();
        Ok(
            match self
                .blocking(move |engine| {
                    engine.check_agent_snapshot_access(&p.snapshot, &cwd)?;
                    engine.restore_snapshot(&p.snapshot, p.as_name.as_deref(), Caller::Agent)
                })
                .await
            {
                Ok(info) => answer(
                    format!("restored sandbox {} (running)", info.name),
                    json!({ "name": info.name, "status": info.status }),
                    false,
                ),
                Err(e) => e,
            },
        )
    }

    /// Stop a running sandbox (its files stay; start it again with sandbox_start).
    #[tool(
        name = "sandbox_stop",
        annotations(
            title = "Stop a sandbox",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn sandbox_stop(&self, Parameters(p): Parameters<NameParams>) -> ToolResult {
        let name = p.name.clone();
        Ok(
            match self.blocking(move |engine| engine.stop(&name)).await {
                Ok(was_running) => answer(
                    if was_running {
                        format!("stopped sandbox {}", p.name)
                    } else {
                        format!("sandbox {} was not running", p.name)
                    },
                    json!({ "name": p.name, "status": "stopped", "was_running": was_running }),
                    false,
                ),
                Err(e) => e,
            },
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentkernel", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Run commands in isolated sandboxes: sandbox_run for one command in a throwaway sandbox; sandbox_create, sandbox_exec, the file tools, sandbox_stop/start and sandbox_remove for persistent ones.",
            )
    }
}

#[cfg(test)]
#[path = "fuzz.rs"]
mod fuzz;
