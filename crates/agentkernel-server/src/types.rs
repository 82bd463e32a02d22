//! The wire types of the API (request bodies and the `data` of answers), with their OpenAPI
//! schemas. Field names follow the contract in spec/http-api.md; fields beyond it are ours.

use crate::schema::{
    Arg, BackendName, CompatModeName, DurationText, EnvVar, HostPattern, ImageText, ProfileName,
    SandboxDir, SandboxName, SecretBindingText, SecretKey,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A whole number, also when a client's JSON writes it as `16.0` (JSON has one number type).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        })
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number of at least 0")))
}

/// `POST /run` and `/run/stream`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RunRequest {
    /// The command and its arguments.
    #[schema(value_type = Vec<Arg>, min_items = 1)]
    pub command: Vec<String>,
    /// Image reference, `host`, or a local path; auto-detected from the command when absent.
    #[serde(default)]
    #[schema(value_type = Option<ImageText>)]
    pub image: Option<String>,
    /// `permissive`, `moderate` (default) or `restrictive`.
    #[serde(default)]
    #[schema(value_type = Option<ProfileName>)]
    pub profile: Option<String>,
    /// Use a pre-started sandbox from the warm pool when one matches (default true).
    #[serde(default)]
    pub fast: Option<bool>,
    /// Backend to run on (default: the server's default backend).
    #[serde(default)]
    #[schema(value_type = Option<BackendName>)]
    pub backend: Option<String>,
    /// Turn networking off whatever the profile says.
    #[serde(default)]
    pub no_network: Option<bool>,
    /// `native`, `claude`, `codex` or `gemini` (see `POST /sandboxes`).
    #[serde(default)]
    #[schema(value_type = Option<CompatModeName>)]
    pub compatibility_mode: Option<String>,
    /// Host patterns the sandbox may reach (an allowlist).
    #[serde(default)]
    #[schema(value_type = Option<Vec<HostPattern>>, max_items = 256)]
    pub allow_hosts: Option<Vec<String>>,
    /// Host patterns the sandbox never reaches.
    #[serde(default)]
    #[schema(value_type = Option<Vec<HostPattern>>, max_items = 256)]
    pub deny_hosts: Option<Vec<String>>,
    /// Secrets bound to hosts (see `POST /sandboxes`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<SecretBindingText>>, max_items = 64)]
    pub secrets: Option<Vec<String>>,
    /// Extra environment, `KEY=VALUE`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<EnvVar>>)]
    pub env: Option<Vec<String>>,
    /// Working directory inside the sandbox.
    #[serde(default)]
    #[schema(value_type = Option<SandboxDir>)]
    pub workdir: Option<String>,
    /// Memory limit in MB.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 16, maximum = 1048576)]
    pub memory_mb: Option<u64>,
    /// CPU limit (0: none).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1024)]
    pub vcpus: Option<f64>,
    /// Disk limit in MB for each writable filesystem of the sandbox.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 64, maximum = 67108864)]
    pub disk_mb: Option<u64>,
    /// Kill the command after this many milliseconds (default: the server's request timeout).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 86400000)]
    pub timeout_ms: Option<u64>,
    /// Project directory (config file, image detection, permissive mounts). Honoured only on
    /// the daemon's local socket, where the caller is the same user.
    #[serde(default)]
    #[schema(ignore)]
    pub cwd: Option<String>,
    /// A config file (`--config`), resolved like `cwd`. Daemon socket only.
    #[serde(default)]
    #[schema(ignore)]
    pub config: Option<String>,
    /// The caller's values of the variables the permissive profile passes through (`TERM`,
    /// `LANG`, …), in place of the server's own. Daemon socket only.
    #[serde(default)]
    #[schema(ignore)]
    pub host_env: Option<std::collections::BTreeMap<String, String>>,
    /// How `output` events of `/run/stream` carry the bytes (default `utf8`).
    #[serde(default)]
    pub output_encoding: Option<OutputEncoding>,
}

/// `utf8`: text, with invalid bytes replaced; `base64`: the exact bytes, base64-encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputEncoding {
    #[default]
    Utf8,
    Base64,
}

/// The answer of a buffered command.
// Its text borrows the collected bytes where they are valid UTF-8, so the answer's JSON is
// made from them without another copy.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunOutput<'a> {
    /// stdout and stderr interleaved as they were produced.
    #[schema(value_type = String)]
    pub output: std::borrow::Cow<'a, str>,
    pub exit_code: i32,
    #[schema(value_type = String)]
    pub stdout: std::borrow::Cow<'a, str>,
    #[schema(value_type = String)]
    pub stderr: std::borrow::Cow<'a, str>,
    /// Output beyond a per-stream limit or the server's output budget was dropped: what is
    /// kept is the beginning.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The sandbox's memory limit was hit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

/// `POST /batch/run`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// At most 64 commands.
    #[schema(max_items = 64)]
    pub commands: Vec<BatchCommand>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct BatchCommand {
    #[schema(value_type = Vec<Arg>, min_items = 1)]
    pub command: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<ImageText>)]
    pub image: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<ProfileName>)]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchResponse {
    /// In the order of the request.
    pub results: Vec<BatchResult>,
}

/// `POST /sandboxes`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateRequest {
    #[schema(value_type = SandboxName)]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<BackendName>)]
    pub backend: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<ImageText>)]
    pub image: Option<String>,
    /// CPU limit (0: none).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1024)]
    pub vcpus: Option<f64>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 16, maximum = 1048576)]
    pub memory_mb: Option<u64>,
    /// Disk limit in MB for each writable filesystem of the sandbox.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 64, maximum = 67108864)]
    pub disk_mb: Option<u64>,
    #[serde(default)]
    #[schema(value_type = Option<ProfileName>)]
    pub profile: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::schema::labels_schema)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    /// Remove the sandbox after this long (`30m`, `2h`, `1d`); never when absent.
    #[serde(default)]
    #[schema(value_type = Option<DurationText>)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub no_network: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<EnvVar>>)]
    pub env: Option<Vec<String>>,
    /// Secrets bound to hosts (`KEY:host`, `KEY=value:host`, `KEY:host:header`): the egress
    /// proxy adds each to requests for its host only; the sandbox sees a placeholder.
    #[serde(default)]
    #[schema(value_type = Option<Vec<SecretBindingText>>, max_items = 64)]
    pub secrets: Option<Vec<String>>,
    /// Vault keys put in files at /run/agentkernel/secrets/KEY.
    #[serde(default)]
    #[schema(value_type = Option<Vec<SecretKey>>, max_items = 64)]
    pub secret_files: Option<Vec<String>>,
    /// The secret files hold placeholders the proxy swaps for the values on the way out.
    #[serde(default)]
    pub placeholder_secrets: Option<bool>,
    /// `native`, `claude`, `codex` or `gemini`: the agent's API hosts and the package
    /// registries as the allowlist, and its isolation level.
    #[serde(default)]
    #[schema(value_type = Option<CompatModeName>)]
    pub compatibility_mode: Option<String>,
    /// Host patterns the sandbox may reach (an allowlist).
    #[serde(default)]
    #[schema(value_type = Option<Vec<HostPattern>>, max_items = 256)]
    pub allow_hosts: Option<Vec<String>>,
    /// Host patterns the sandbox never reaches.
    #[serde(default)]
    #[schema(value_type = Option<Vec<HostPattern>>, max_items = 256)]
    pub deny_hosts: Option<Vec<String>>,
    /// Volumes: `NAME:/sandbox/dir[:ro]` (a named volume the server keeps), or
    /// `/host/dir:/sandbox/dir[:ro]` for a directory under the operator's
    /// `[security] remote_paths`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, max_items = 64)]
    pub volumes: Option<Vec<String>>,
    /// A git repository cloned into /workspace once the sandbox runs, by git inside the
    /// sandbox over its own network policy (the image needs git): `https://`, `http://`,
    /// `git://`, `ssh://` or `user@host:path`.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub source_url: Option<String>,
    /// The branch, tag or commit of `source_url` to check out (its default branch when absent).
    #[serde(default)]
    #[schema(max_length = 255)]
    pub source_ref: Option<String>,
}

/// `PATCH /sandboxes/{name}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PatchRequest {
    /// Replaces all labels.
    #[serde(default)]
    #[schema(schema_with = crate::schema::labels_schema)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Replaces the description.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    /// Changes the network policy; a running sandbox's next connection sees it.
    #[serde(default)]
    pub network: Option<NetworkPatch>,
}

/// `{"allow": [hosts], "deny": [hosts]}`: hosts let through (taken off the deny list, added to
/// an allowlist) and hosts refused.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct NetworkPatch {
    #[serde(default)]
    #[schema(value_type = Vec<HostPattern>, max_items = 256)]
    pub allow: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<HostPattern>, max_items = 256)]
    pub deny: Vec<String>,
}

/// A sandbox.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxInfo {
    pub name: String,
    pub uuid: String,
    /// `running` or `stopped`, checked against the host's processes.
    pub status: String,
    pub backend: String,
    pub image: String,
    pub profile: String,
    /// CPUs, rounded up to a whole number (`cpus` has the exact limit).
    pub vcpus: u32,
    pub cpus: f64,
    pub memory_mb: u64,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The sandbox's init process on the host, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `none`, `allowlist` or `full`.
    pub network: String,
    /// Host patterns reachable in `allowlist` mode.
    pub allow_hosts: Vec<String>,
    /// Host patterns never reachable.
    pub deny_hosts: Vec<String>,
    /// What is mounted from the host, `SOURCE:TARGET[:ro]`: volumes (a named one by its name)
    /// and the permissive profile's directories.
    pub mounts: Vec<String>,
}

impl From<agentkernel_engine::SandboxInfo> for SandboxInfo {
    fn from(s: agentkernel_engine::SandboxInfo) -> SandboxInfo {
        SandboxInfo {
            vcpus: s.vcpus.ceil().max(0.0) as u32,
            cpus: s.vcpus,
            name: s.name,
            uuid: s.uuid,
            status: s.status,
            backend: s.backend,
            image: s.image,
            profile: s.profile,
            memory_mb: s.memory_mb,
            created_at: s.created_at,
            labels: s.labels,
            description: s.description,
            expires_at: s.expires_at,
            pid: s.pid,
            network: s.network,
            allow_hosts: s.allow_hosts,
            deny_hosts: s.deny_hosts,
            mounts: s.mounts,
        }
    }
}

/// `POST /sandboxes/{name}/exec` (and `/exec/stream`, `/exec/detach`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ExecRequest {
    #[schema(value_type = Vec<Arg>, min_items = 1)]
    pub command: Vec<String>,
    /// `KEY=VALUE` pairs.
    #[serde(default)]
    #[schema(value_type = Option<Vec<EnvVar>>)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<SandboxDir>)]
    pub workdir: Option<String>,
    /// Accepted for compatibility: commands already run as the sandbox's root user.
    #[serde(default)]
    #[allow(dead_code)]
    pub sudo: Option<bool>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 86400000)]
    pub timeout_ms: Option<u64>,
}

/// `GET /sandboxes/{name}/files/{path}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileContent {
    pub content: String,
    /// `utf8` when the file is valid UTF-8, else `base64`.
    pub encoding: String,
    pub size: u64,
}

/// `PUT /sandboxes/{name}/files/{path}`.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteFileRequest {
    pub content: String,
    /// `utf8` (default) or `base64`; when given, a string (`null` is refused, as the schema
    /// says).
    #[serde(default, deserialize_with = "crate::types::present_string")]
    pub encoding: Option<String>,
}

/// A field that may be absent but, when present, must be a string.
pub(crate) fn present_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// A count that may be absent or null; when present a whole number, which JSON may write as `1000.0`
/// (JSON Schema's `integer` admits it).
pub(crate) fn whole_count<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(u) = n.as_u64() {
        return usize::try_from(u)
            .map(Some)
            .map_err(serde::de::Error::custom);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= usize::MAX as f64 => Ok(Some(f as usize)),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole number of copies"
        ))),
    }
}

/// Either text (`encoding` absent or `utf8`) or base64 (`encoding: base64`, `content` valid
/// base64): written by hand because the content's form depends on the encoding.
impl utoipa::PartialSchema for WriteFileRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let text = ObjectBuilder::new()
            .property("content", ObjectBuilder::new().schema_type(Type::String))
            .property(
                "encoding",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["utf8"])),
            )
            .required("content");
        let binary = ObjectBuilder::new()
            .property(
                "content",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(crate::schema::BASE64_PATTERN)),
            )
            .property(
                "encoding",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["base64"])),
            )
            .required("content")
            .required("encoding");
        OneOfBuilder::new()
            .item(text)
            .item(binary)
            .description(Some(
                "The file's content: text (encoding absent or `utf8`) or base64 (`encoding: base64`).",
            ))
            .into()
    }
}

impl ToSchema for WriteFileRequest {}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileWritten {
    /// The absolute path inside the sandbox.
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileRemoved {
    pub path: String,
    pub removed: bool,
}

/// `POST /sandboxes/{name}/files`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct WriteFilesRequest {
    /// Path → UTF-8 content.
    #[schema(schema_with = crate::schema::files_schema)]
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FilesWritten {
    pub written: usize,
    pub paths: Vec<String>,
}

/// `POST /sandboxes/{name}/extend`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ExtendRequest {
    /// How much longer, e.g. `30m`, `2h`.
    #[schema(value_type = DurationText)]
    pub by: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExtendResponse {
    /// The new expiry; null for a sandbox without a TTL (it never expires).
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Removed {
    pub name: String,
    pub removed: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GcResponse {
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusResponse {
    pub version: String,
    pub default_backend: String,
    /// Backends that can run sandboxes here now.
    pub backends: Vec<String>,
    pub sandbox_count: usize,
}

/// What a backend offers, as the engine reports it (`agentkernel_core::backend`).
pub use agentkernel_core::backend::Capabilities;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackendDescriptor {
    pub backend: String,
    pub configured: bool,
    pub usable: bool,
    pub readiness_reason: String,
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackendsResponse {
    pub default_backend: String,
    pub backends: Vec<BackendDescriptor>,
}

impl From<agentkernel_engine::status::Backends> for BackendsResponse {
    fn from(b: agentkernel_engine::status::Backends) -> BackendsResponse {
        BackendsResponse {
            default_backend: b.default_backend,
            backends: b
                .backends
                .into_iter()
                .map(|d| BackendDescriptor {
                    backend: d.backend,
                    configured: d.configured,
                    usable: d.usable,
                    readiness_reason: d.readiness_reason,
                    capabilities: d.capabilities,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResourceUsage {
    pub cpu_percent: f64,
    pub cpu_count: usize,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
    pub disk_used_mb: u64,
    pub disk_total_mb: u64,
    pub load_average: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsResponse {
    pub sandbox_count: usize,
    pub running_count: usize,
    pub resource_usage: ResourceUsage,
    /// Each sandbox's CPU (percent of one CPU over a short sample) and memory while it runs,
    /// and the disk it wrote.
    pub sandboxes: Vec<SandboxUsage>,
    pub sandbox_totals: SandboxTotals,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxUsage {
    pub name: String,
    pub backend: String,
    pub status: String,
    pub cpu_percent: Option<f64>,
    pub memory_mb: Option<f64>,
    pub disk_mb: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxTotals {
    pub cpu_percent: f64,
    pub memory_mb: f64,
    pub disk_mb: f64,
}

impl From<agentkernel_engine::status::Stats> for StatsResponse {
    fn from(s: agentkernel_engine::status::Stats) -> StatsResponse {
        let r = s.resource_usage;
        StatsResponse {
            sandbox_count: s.sandbox_count,
            running_count: s.running_count,
            resource_usage: ResourceUsage {
                cpu_percent: r.cpu_percent,
                cpu_count: r.cpu_count,
                memory_used_mb: r.memory_used_mb,
                memory_total_mb: r.memory_total_mb,
                disk_used_mb: r.disk_used_mb,
                disk_total_mb: r.disk_total_mb,
                load_average: r.load_average.to_vec(),
            },
            sandboxes: s
                .sandboxes
                .into_iter()
                .map(|u| SandboxUsage {
                    name: u.name,
                    backend: u.backend,
                    status: u.status,
                    cpu_percent: u.cpu_percent,
                    memory_mb: u.memory_mb,
                    disk_mb: u.disk_mb,
                })
                .collect(),
            sandbox_totals: SandboxTotals {
                cpu_percent: s.sandbox_totals.cpu_percent,
                memory_mb: s.sandbox_totals.memory_mb,
                disk_mb: s.sandbox_totals.disk_mb,
            },
        }
    }
}

/// `POST /snapshots`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct SnapshotRequest {
    #[schema(value_type = SandboxName)]
    pub sandbox: String,
    #[serde(default)]
    #[schema(value_type = Option<SandboxName>)]
    pub name: Option<String>,
}

/// A command started with `exec/detach`, running on without a client.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetachedCommand {
    /// 12 hex digits.
    pub id: String,
    pub sandbox: String,
    pub command: Vec<String>,
    /// The command's pid as the host sees it.
    pub pid: u32,
    /// `running`, `completed` (exit code 0) or `failed`.
    pub status: String,
    /// Absent while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// RFC 3339.
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl From<agentkernel_engine::detached::DetachedCommand> for DetachedCommand {
    fn from(c: agentkernel_engine::detached::DetachedCommand) -> DetachedCommand {
        use agentkernel_engine::detached::DetachedStatus;
        DetachedCommand {
            id: c.id,
            sandbox: c.sandbox,
            command: c.command,
            pid: c.pid,
            status: match c.status {
                DetachedStatus::Running => "running",
                DetachedStatus::Completed => "completed",
                DetachedStatus::Failed => "failed",
            }
            .to_string(),
            exit_code: c.exit_code,
            started_at: c.started_at,
            finished_at: c.finished_at,
        }
    }
}

/// A detached command's output so far: the first 8 MiB of each stream, then a marker.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetachedLogs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Output beyond the kept part was discarded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stdout_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stderr_truncated: bool,
}

impl From<agentkernel_engine::detached::DetachedLogs> for DetachedLogs {
    fn from(l: agentkernel_engine::detached::DetachedLogs) -> DetachedLogs {
        DetachedLogs {
            stdout: l.stdout,
            stderr: l.stderr,
            stdout_truncated: l.stdout_truncated,
            stderr_truncated: l.stderr_truncated,
        }
    }
}

/// `GET /sandboxes/{name}/exec/detached/{id}/logs?stream=stdout|stderr`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct LogsQuery {
    /// Only this stream (`stdout` or `stderr`); both when absent.
    pub stream: Option<String>,
}
