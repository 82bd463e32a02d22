//! Turning what a user asked for (flags, `--config`, `./agentkernel.toml`, the user's own
//! `~/.agentkernel/config.toml`) into one validated `SandboxSpec`, and deciding what each caller
//! may ask for (docs/security.md, "Who may name what").
//!
//! Precedence: flags > `--config` > `./agentkernel.toml` > `--template` > the user config >
//! defaults (auto-detection among them). The project file arrived with the project, so it may
//! only tighten: the policy with it must be at least as strict as the policy without it, and
//! it may not choose mirrors, the backend, or host paths outside the project. Remote callers (HTTP) may name registry images, `host` and
//! directories under `[security] remote_paths`; MCP callers (the agent being sandboxed) also
//! may only tighten the policy the configs give.

use crate::error::{EngineError, Result};
use agentkernel_core::compat::CompatMode;
use agentkernel_core::config::{Config, PROJECT_CONFIG};
use agentkernel_core::detect::{Detection, detect_image};
use agentkernel_core::egress::SecretBinding;
use agentkernel_core::policy::PolicyOverrides;
use agentkernel_core::spec::{parse_env, validate_workdir};
use agentkernel_core::{
    BackendKind, CoreError, ImageRef, Policy, Profile, SandboxSpec, validate_name,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Who sent a request. It decides which host paths the request may name and whether the
/// configs are a ceiling for it. The default is the least trusted remote caller, so a surface
/// that forgets to say gets the narrowest rights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Caller {
    /// The local user: the CLI, and the daemon's socket (0600 in the 0700 state directory,
    /// so only the user who runs the daemon reaches it). May name host paths.
    Local,
    /// An HTTP client of `serve`: may name registry images, `host` and directories under
    /// `[security] remote_paths`; its permissive sandboxes mount only such directories.
    #[default]
    Remote,
    /// An MCP client, which is the agent being sandboxed: as `Remote`, and the policy the
    /// configs give is a ceiling it may only tighten.
    Agent,
}

impl Caller {
    /// How the audit log names the caller.
    pub fn as_str(self) -> &'static str {
        match self {
            Caller::Local => "local",
            Caller::Remote => "remote",
            Caller::Agent => "agent",
        }
    }
}

/// Sandbox options as given on a surface (CLI flags, HTTP fields).
#[derive(Debug, Clone, Default)]
pub struct SpecRequest {
    pub image: Option<String>,
    pub profile: Option<String>,
    pub backend: Option<String>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--template NAME` (a built-in or user template, or a file's path): defaults under
    /// `./agentkernel.toml`, `--config` and the flags (`crate::template`).
    pub template: Option<String>,
    /// `--no-network`.
    pub no_network: bool,
    /// Network on or off whatever the profile says, from a surface that can say both (the MCP
    /// `network` parameter); `no_network` wins.
    pub network: Option<bool>,
    /// `-e KEY=VALUE`.
    pub env: Vec<String>,
    /// `--compatibility-mode` (or the HTTP/MCP field).
    pub compat: Option<String>,
    /// `--allow-host`, `--deny-host`: host patterns added to the config's.
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    /// `--secret` bindings (`KEY:host`, `KEY=value:host`, `KEY:host:header`).
    pub secrets: Vec<String>,
    /// `--secret-file` keys.
    pub secret_files: Vec<String>,
    /// `--placeholder-secrets`.
    pub placeholder_secrets: bool,
    /// `-P/--publish` (`agentkernel_core::ports`).
    pub publish: Vec<String>,
    /// `--volume` (`HOST_DIR:SANDBOX_DIR[:ro]`, `NAME:SANDBOX_DIR[:ro]`; `crate::volumes`).
    pub volumes: Vec<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    pub memory_mb: Option<u64>,
    pub vcpus: Option<f64>,
    /// `--disk MB`.
    pub disk_mb: Option<u64>,
    /// The caller's working directory: where `./agentkernel.toml` and relative image paths are
    /// looked up, and what permissive sandboxes mount at /workspace.
    pub cwd: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub description: Option<String>,
    /// The command `run` will execute, for image auto-detection (empty for `create`).
    pub command: Vec<String>,
    /// The caller's environment, for the variables a profile passes through, when the caller
    /// is another process (a CLI talking to the daemon); `None` reads this process's.
    pub host_env: Option<BTreeMap<String, String>>,
    /// Who is asking.
    pub caller: Caller,
}

/// The image for a request: `--image`, else `[sandbox] base_image`, else auto-detected from the
/// command, then (for the local user only) the project's files and its Procfile
/// (`agentkernel_core::detect`). An HTTP or MCP caller has no project on this host: the
/// directory the server runs in is the operator's, not the caller's, so its files never choose
/// the caller's image.
pub fn choose_image(req: &SpecRequest, config: &Config) -> Detection {
    if let Some(image) = &req.image {
        return Detection {
            image: image.clone(),
            rule: "--image".to_string(),
        };
    }
    if let Some(image) = &config.sandbox.base_image {
        return Detection {
            image: image.clone(),
            rule: "[sandbox] base_image".to_string(),
        };
    }
    let project = (req.caller == Caller::Local).then_some(req.cwd.as_path());
    detect_image(&req.command, project)
}

/// The default working directory inside a sandbox.
pub const DEFAULT_WORKDIR: &str = "/workspace";

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user's own config file in the state directory `home`: trusted, like flags.
pub fn user_config_path(home: &Path) -> PathBuf {
    home.join("config.toml")
}

/// The user's own config (`~/.agentkernel/config.toml`), or the defaults when there is none.
/// What `serve` and the daemon read for their own settings: a project's file never sets them.
pub fn user_config(home: &Path) -> Result<Config> {
    let path = user_config_path(home);
    Ok(if path.is_file() {
        Config::load(&path)?
    } else {
        Config::default()
    })
}

/// The settings of `serve` and the daemon: the user's own config with `--config FILE` over it.
/// A project's `./agentkernel.toml` never sets them (it came with the project).
pub fn operator_config(home: &Path, explicit: Option<&Path>) -> Result<Config> {
    let user = user_config(home)?;
    Ok(match explicit {
        Some(path) => Config::load(path)?.over(user),
        None => user,
    })
}

/// Checks everything about a request that can be checked without images or backends (names,
/// profile, backend, image reference syntax, who may name what, limits, working directory,
/// environment, labels): surfaces call it to refuse bad input before they answer.
pub fn validate_request(home: &Path, req: &SpecRequest) -> Result<()> {
    let result = load_config(home, req).and_then(|config| resolve(req, "validate", &config));
    crate::audit::AuditLog::new(home)
        .refusal("", Some(req.caller), result)
        .map(drop)
}

/// The config files that apply to a request, kept apart by how far they are trusted.
struct ConfigFiles {
    user: Config,
    /// The template's settings (`--template`), over the user's own.
    template: Option<Config>,
    /// `./agentkernel.toml`: came with the project.
    project: Option<(PathBuf, Config)>,
    /// `--config FILE`: named by the caller.
    explicit: Option<Config>,
    /// Paths of the files read, in precedence order (lowest first).
    paths: Vec<PathBuf>,
}

fn read_config_files(home: &Path, req: &SpecRequest) -> Result<ConfigFiles> {
    let mut paths = Vec::new();
    let user_path = user_config_path(home);
    let user = if user_path.is_file() {
        paths.push(user_path.clone());
        Config::load(&user_path)?
    } else {
        Config::default()
    };
    let template = match &req.template {
        Some(reference) => Some(
            crate::template::load(home, reference, &req.cwd, req.caller)?
                .template
                .as_config(),
        ),
        None => None,
    };
    // An HTTP caller's request has no project: `req.cwd` is the server's own directory, and
    // what lies there is not the caller's (MCP agents work in the project the user started
    // them in, whose file may only tighten).
    let project_path = req.cwd.join(PROJECT_CONFIG);
    let project = if req.caller != Caller::Remote && project_path.is_file() {
        paths.push(project_path.clone());
        Some((project_path.clone(), Config::load(&project_path)?))
    } else {
        None
    };
    let explicit = match &req.config {
        Some(path) => {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                req.cwd.join(path)
            };
            paths.push(path.clone());
            Some(Config::load(&path)?)
        }
        None => None,
    };
    Ok(ConfigFiles {
        user,
        template,
        project,
        explicit,
        paths,
    })
}

impl ConfigFiles {
    fn merged(&self, with_project: bool) -> Config {
        let mut config = self.user.clone();
        if let Some(template) = &self.template {
            config = template.clone().over(config);
        }
        if with_project && let Some((_, project)) = &self.project {
            config = project.clone().over(config);
        }
        if let Some(explicit) = &self.explicit {
            config = explicit.clone().over(config);
        }
        config
    }
}

/// Reads the config layers for a request, after checking that the project's own file only
/// tightens what the user's settings give.
pub fn load_config(home: &Path, req: &SpecRequest) -> Result<Config> {
    let files = read_config_files(home, req)?;
    let config = files.merged(true);
    if let Some((path, project)) = &files.project {
        check_project_config(req, path, project, &config, &files.merged(false))?;
    }
    Ok(config)
}

/// The config files a request reads, lowest precedence first (`run` names them on stderr).
pub fn config_paths(home: &Path, req: &SpecRequest) -> Result<Vec<PathBuf>> {
    Ok(read_config_files(home, req)?.paths)
}

pub(crate) fn not_permitted(message: String) -> EngineError {
    EngineError::Input(CoreError::NotPermitted(message))
}

/// A project's `./agentkernel.toml` may tighten the sandbox, never loosen it: no registry
/// settings, no backend choice, no images outside the project, and a policy at least as strict
/// as the one the user's own settings (`without`) give.
fn check_project_config(
    req: &SpecRequest,
    path: &Path,
    project: &Config,
    with: &Config,
    without: &Config,
) -> Result<()> {
    let refuse = |key: &str, how: &str| {
        not_permitted(format!(
            "{} sets {key}, which a project's config may not set (it came with the project, not from you): {how}, or remove it from that file",
            path.display()
        ))
    };
    let user_file = "put it in ~/.agentkernel/config.toml";
    if project.images != Default::default() {
        return Err(refuse("[images]", user_file));
    }
    // Which vault and key file hold your secrets is yours to choose, never a project's.
    if project.secrets != Default::default() {
        return Err(refuse("[secrets]", user_file));
    }
    if project.security.remote_paths.is_some() {
        return Err(refuse("[security] remote_paths", user_file));
    }
    if with.sandbox.backend != without.sandbox.backend && req.backend.is_none() {
        return Err(refuse(
            "[sandbox] backend",
            "choose the backend with -B or in ~/.agentkernel/config.toml",
        ));
    }
    if req.image.is_none()
        && with.sandbox.base_image != without.sandbox.base_image
        && let Some(image) = &with.sandbox.base_image
    {
        match ImageRef::parse(image, &req.cwd)? {
            ImageRef::Registry { .. } | ImageRef::Host => {}
            ImageRef::Directory { path } | ImageRef::OciLayout { path, .. } => {
                if !is_within(&path, std::slice::from_ref(&req.cwd)) {
                    return Err(refuse(
                        &format!("[sandbox] base_image = {image:?} outside the project"),
                        "pass --image yourself",
                    ));
                }
            }
        }
    }
    let loose = resolve_policy(req, with)?;
    let bound = resolve_policy(req, without)?;
    if let Some(what) = loose.loosening_of(&bound) {
        return Err(not_permitted(format!(
            "{} asks for {what}, more than your own settings give ({} profile): a project's config may only tighten the sandbox; pass the option yourself (e.g. -p {}) or remove it from that file",
            path.display(),
            bound.profile,
            loose.profile,
        )));
    }
    Ok(())
}

/// Whether `path` (made absolute, symlinks resolved where it exists) lies inside one of `roots`.
pub(crate) fn is_within(path: &Path, roots: &[PathBuf]) -> bool {
    let path = real_path(path);
    roots.iter().any(|root| path.starts_with(real_path(root)))
}

/// `path` with symlinks resolved as far as it exists (a missing tail is kept as written).
fn real_path(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => real_path(parent).join(name),
        _ => path.to_path_buf(),
    }
}

/// The profile, with the request's and the configs' overrides applied, and, for callers that
/// are not the local user, only the mounts under `[security] remote_paths`, no variables of
/// this process, and the operator's resource ceilings.
fn resolve_policy(req: &SpecRequest, config: &Config) -> Result<Policy> {
    let compat: Option<CompatMode> = req
        .compat
        .as_deref()
        .or(config.agent.compatibility_mode.as_deref())
        .map(str::parse)
        .transpose()?;
    let profile: Profile = match req
        .profile
        .as_deref()
        .or(config.security.profile.as_deref())
    {
        Some(p) => p.parse()?,
        None => compat.map(CompatMode::profile).unwrap_or_default(),
    };
    let network = if req.no_network {
        Some(false)
    } else {
        // An agent mode's allowlist is its network, whatever isolation it starts from.
        req.network
            .or(config.security.network)
            .or(compat.filter(|c| *c != CompatMode::Native).map(|_| true))
    };
    let domains = config.security.domains.clone().unwrap_or_default();
    let mut allow_hosts: Vec<String> = compat.map(CompatMode::allow_hosts).unwrap_or_default();
    allow_hosts.extend(domains.allow.unwrap_or_default());
    allow_hosts.extend(req.allow_hosts.iter().cloned());
    let mut deny_hosts = domains.deny.unwrap_or_default();
    deny_hosts.extend(req.deny_hosts.iter().cloned());
    for p in allow_hosts.iter().chain(&deny_hosts) {
        agentkernel_core::egress::validate_host_pattern(p)
            .map_err(agentkernel_core::CoreError::InvalidHostPattern)?;
    }
    let home_dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_dir());
    let overrides = PolicyOverrides {
        network,
        memory_mb: req.memory_mb.or(config.resources.memory_mb),
        pids: config.resources.pids,
        vcpus: req.vcpus.or(config.resources.vcpus),
        disk_mb: req.disk_mb.or(config.resources.disk_mb),
        read_only_root: config.security.read_only,
        project_dir: Some(req.cwd.clone()),
        home_dir,
        allow_hosts,
        deny_hosts,
        block_private: config.security.block_private,
        mount_project: compat.is_some_and(CompatMode::mounts_project),
    };
    let mut policy = Policy::resolve(profile, &overrides);
    if req.caller != Caller::Local {
        let allowed = remote_paths(config);
        policy.mounts.retain(|m| is_within(&m.source, &allowed));
        policy.env_passthrough.clear();
    }
    Ok(policy)
}

/// The policy the configs give `req`'s caller when it asks for nothing itself: the ceiling of
/// an MCP caller.
pub fn ceiling(home: &Path, req: &SpecRequest) -> Result<Policy> {
    resolve_policy(&asking_nothing(req), &load_config(home, req)?)
}

/// `req` without the policy options a caller may give.
fn asking_nothing(req: &SpecRequest) -> SpecRequest {
    SpecRequest {
        profile: None,
        network: None,
        no_network: false,
        compat: None,
        allow_hosts: Vec::new(),
        deny_hosts: Vec::new(),
        secrets: Vec::new(),
        secret_files: Vec::new(),
        placeholder_secrets: false,
        volumes: Vec::new(),
        memory_mb: None,
        vcpus: None,
        disk_mb: None,
        ..req.clone()
    }
}

/// `[security] remote_paths`, the host directories remote and MCP callers may name.
pub(crate) fn remote_paths(config: &Config) -> Vec<PathBuf> {
    config
        .security
        .remote_paths
        .iter()
        .flatten()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .collect()
}

/// Refuses what a caller other than the local user may not have: host paths outside
/// `[security] remote_paths` as its image, more than the operator's ceilings, and, for an MCP
/// caller, anything looser than the policy the configs alone give.
fn check_caller(
    req: &SpecRequest,
    config: &Config,
    image: &ImageRef,
    policy: &Policy,
) -> Result<()> {
    if req.caller == Caller::Local {
        return Ok(());
    }
    if req.image.is_some()
        && let ImageRef::Directory { path } | ImageRef::OciLayout { path, .. } = image
        && !is_within(path, &remote_paths(config))
    {
        return Err(not_permitted(format!(
            "image {} is a host path, which a remote or MCP caller may not name: use a registry image or `host`, or have the operator list the directory in [security] remote_paths of ~/.agentkernel/config.toml",
            image.display()
        )));
    }
    if let ImageRef::Registry { reference } = image
        && let Some(host) = internal_registry(reference, config)
    {
        return Err(not_permitted(format!(
            "image {reference} names the registry {host}, an address on this host or its private network, which a remote or MCP caller may not make the server contact: use a public registry, or have the operator list it in [images] insecure_registries or mirrors"
        )));
    }
    let max_memory = config.server.max_memory_mb.unwrap_or_else(host_memory_mb);
    if policy.limits.memory_mb > max_memory {
        return Err(not_permitted(format!(
            "memory_mb {} is more than this server allows ({max_memory} MB): ask for less, or have the operator raise [server] max_memory_mb",
            policy.limits.memory_mb
        )));
    }
    let max_vcpus = config.server.max_vcpus.unwrap_or_else(host_cpus);
    if policy.limits.vcpus > max_vcpus {
        return Err(not_permitted(format!(
            "vcpus {} is more than this server allows ({max_vcpus}): ask for less, or have the operator raise [server] max_vcpus",
            policy.limits.vcpus
        )));
    }
    if req.caller == Caller::Agent {
        let ceiling = resolve_policy(&asking_nothing(req), config)?;
        if let Some(what) = policy.loosening_of(&ceiling) {
            return Err(not_permitted(format!(
                "this asks for {what}, more than the operator's settings give ({} profile): an MCP caller may only tighten its sandbox; drop the option, or have the user change ~/.agentkernel/config.toml",
                ceiling.profile
            )));
        }
    }
    Ok(())
}

/// The registry `host[:port]` of `reference` when it is loopback, private, link-local or a
/// cloud metadata name and the operator has not configured it: a remote caller naming such a
/// registry would make the server send requests into the host's own network.
fn internal_registry(reference: &str, config: &Config) -> Option<String> {
    let canonical = agentkernel_image::canonical_name(reference).ok()?;
    let host = canonical.split('/').next()?.to_string();
    let configured = config
        .images
        .insecure_registries
        .iter()
        .flatten()
        .chain(config.images.mirrors.iter().flatten())
        .any(|r| {
            r.trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/')
                == host
        });
    if configured {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let internal = match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                // 100.64.0.0/10: carrier-grade NAT, where some clouds keep their metadata.
                || (ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64)
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some()
        }
        Err(_) => {
            name == "localhost"
                || name.ends_with(".localhost")
                || name.ends_with(".internal")
                || name.ends_with(".local")
        }
    };
    internal.then_some(host)
}

/// The host's memory in MB: the default ceiling for remote callers.
fn host_memory_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    total_kb.map_or(agentkernel_core::policy::MAX_MEMORY_MB, |kb| kb / 1024)
}

/// The host's CPUs: the default vcpus ceiling for remote callers.
fn host_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// The caller's environment: what a CLI sent to the daemon, or this process's own.
fn host_vars(req: &SpecRequest) -> Vec<(String, String)> {
    match &req.host_env {
        Some(vars) => vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
    }
}

/// One variable of the caller's environment.
fn host_var(req: &SpecRequest, key: &str) -> Option<String> {
    match &req.host_env {
        Some(vars) => vars.get(key).cloned(),
        None => std::env::var(key).ok(),
    }
}

/// Builds the spec for sandbox `name`. Image contents (its env and workdir) are merged later,
/// when the image is resolved.
pub fn resolve(req: &SpecRequest, name: &str, config: &Config) -> Result<SandboxSpec> {
    validate_name(name)?;
    let backend: BackendKind = match req.backend.as_deref().or(config.sandbox.backend.as_deref()) {
        Some(b) => b.parse()?,
        None => BackendKind::Native,
    };
    let image = ImageRef::parse(&choose_image(req, config).image, &req.cwd)?;
    let mut policy = resolve_policy(req, config)?;
    policy.validate()?;
    check_caller(req, config, &image, &policy)?;
    // After the caller's check of the policy: volumes are what the caller asks for itself,
    // each checked by `crate::volumes` against what that caller may name.
    crate::volumes::add_volumes(req, config, &mut policy)?;
    let workdir = req
        .workdir
        .clone()
        .or_else(|| config.sandbox.workdir.clone())
        .unwrap_or_else(|| DEFAULT_WORKDIR.to_string());
    validate_workdir(&workdir)?;
    let mut env = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        (
            "HOME".to_string(),
            if policy.user.uid == 0 {
                "/root".to_string()
            } else {
                "/tmp".to_string()
            },
        ),
        ("HOSTNAME".to_string(), name.to_string()),
    ];
    // The caller's variables the profile passes: named ones, or (permissive) every one
    // `hostenv` lets through. The policy keeps the names that passed, never the values.
    let mut passed = Vec::new();
    for key in &policy.env_passthrough {
        if key == agentkernel_core::hostenv::ALL {
            for (k, v) in host_vars(req) {
                if agentkernel_core::hostenv::passes_through(&k)
                    && agentkernel_core::spec::validate_env_var(&k, &v).is_ok()
                {
                    passed.push(k.clone());
                    set_env(&mut env, k, v);
                }
            }
        } else if let Some(value) = host_var(req, key) {
            passed.push(key.clone());
            set_env(&mut env, key.clone(), value);
        }
    }
    passed.sort();
    passed.dedup();
    policy.env_passthrough = passed;
    for kv in &req.env {
        let (k, v) = if kv.contains('=') {
            parse_env(kv)?
        } else {
            // `-e NAME`: the local caller's own value, as `docker run -e NAME` takes it; not
            // set there, not set here.
            if req.caller != Caller::Local && req.host_env.is_none() {
                return Err(agentkernel_core::CoreError::InvalidEnv(kv.clone()).into());
            }
            agentkernel_core::spec::validate_env_var(kv, "")?;
            match host_var(req, kv) {
                Some(v) => (kv.clone(), v),
                None => continue,
            }
        };
        set_env(&mut env, k, v);
    }
    validate_labels(&req.labels)?;
    if let Some(d) = &req.description {
        validate_description(d)?;
    }
    let (secrets, secret_files) = resolve_secrets(req, config, &policy)?;
    for (k, v) in crate::egress::secret_env(&secrets) {
        set_env(&mut env, k, v);
    }
    Ok(SandboxSpec {
        name: name.to_string(),
        image,
        backend,
        policy,
        env,
        workdir,
        labels: req.labels.clone(),
        description: req.description.clone(),
        secrets,
        secret_files,
        placeholder_secrets: req.placeholder_secrets,
        layers: Vec::new(),
        ports: agentkernel_core::ports::parse_ports(&req.publish)?,
        project: None,
    })
}

/// The request's secret bindings and secret files, checked: well formed, a network to use
/// them on, and — for an MCP caller, the agent being sandboxed — only values it gave itself:
/// naming a vault key would let it send the user's secret to a host of its choosing.
fn resolve_secrets(
    req: &SpecRequest,
    config: &Config,
    policy: &agentkernel_core::Policy,
) -> Result<(Vec<SecretBinding>, Vec<String>)> {
    const MAX_SECRETS: usize = 64;
    if req.secrets.len() > MAX_SECRETS || req.secret_files.len() > MAX_SECRETS {
        return Err(CoreError::InvalidArgument(format!(
            "at most {MAX_SECRETS} secret bindings and {MAX_SECRETS} secret files per sandbox"
        ))
        .into());
    }
    let mut secrets = Vec::with_capacity(req.secrets.len());
    for text in &req.secrets {
        let binding: SecretBinding = text.parse()?;
        if req.caller == Caller::Agent && binding.value.is_none() {
            return Err(not_permitted(format!(
                "secret {}: an MCP caller may bind only values it gives (KEY=value:host), not the user's vault: have the user pass --secret on the command line",
                binding.key
            )));
        }
        if req.caller == Caller::Remote
            && binding.value.is_none()
            && !remote_may_bind(config, &binding)
        {
            return Err(not_permitted(format!(
                "secret binding {text:?}: an HTTP caller may bind a vault key only as the operator lists it in [secrets] remote_bindings (user config); send the value itself (KEY=value:host) instead"
            )));
        }
        if secrets
            .iter()
            .any(|b: &SecretBinding| b.key == binding.key && b.host == binding.host)
        {
            return Err(CoreError::Conflicting(format!(
                "secret binding {text:?}: {} is bound to {} twice: give each binding once",
                binding.key, binding.host
            ))
            .into());
        }
        secrets.push(binding);
    }
    let mut files = Vec::with_capacity(req.secret_files.len());
    for key in &req.secret_files {
        agentkernel_core::egress::validate_secret_key(key).map_err(CoreError::InvalidSecret)?;
        if req.caller != Caller::Local
            && !secrets.iter().any(|b| &b.key == key && b.value.is_some())
        {
            return Err(not_permitted(format!(
                "secret file {key}: an HTTP or MCP caller may put only values it gives in secret files (bind KEY=value:host), not the vault's"
            )));
        }
        if req.placeholder_secrets && !secrets.iter().any(|b| &b.key == key) {
            return Err(CoreError::Conflicting(format!(
                "--secret-file {key} with --placeholder-secrets: the proxy swaps the placeholder only in requests to the hosts {key} is bound to; bind it with --secret {key}:HOST"
            ))
            .into());
        }
        if !files.contains(key) {
            files.push(key.clone());
        }
    }
    if req.placeholder_secrets && files.is_empty() {
        return Err(CoreError::Conflicting(
            "--placeholder-secrets applies to --secret-file files: name one with --secret-file KEY"
                .to_string(),
        )
        .into());
    }
    if !secrets.is_empty() && !policy.network.is_networked() {
        return Err(CoreError::Conflicting(
            "--secret needs the sandbox's network (the proxy adds the secret to its requests): drop --no-network, or use a profile with network".to_string(),
        )
        .into());
    }
    Ok((secrets, files))
}

/// Whether `[secrets] remote_bindings` lists `binding` (same key, host and header).
fn remote_may_bind(config: &Config, binding: &SecretBinding) -> bool {
    config
        .secrets
        .remote_bindings
        .iter()
        .flatten()
        .filter_map(|b| b.parse::<SecretBinding>().ok())
        .any(|b| b.key == binding.key && b.host == binding.host && b.header == binding.header)
}

/// Label keys are 1-128 characters without ':' (which separates key and value in the
/// `?label=key:value` filter); values at most 256 characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> std::result::Result<(), CoreError> {
    for (k, v) in labels {
        let why = if k.is_empty() || k.chars().count() > 128 {
            "a key must be 1-128 characters"
        } else if k.contains(':') || k.contains('\0') {
            "a key cannot contain ':' (it separates key and value in ?label=key:value)"
        } else if v.chars().count() > 256 || v.contains('\0') {
            "a value must be at most 256 characters"
        } else {
            continue;
        };
        return Err(CoreError::InvalidLabel(format!("{k}={v}"), why.to_string()));
    }
    Ok(())
}

/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 4096;

pub fn validate_description(text: &str) -> std::result::Result<(), CoreError> {
    let n = text.chars().count();
    if n > MAX_DESCRIPTION {
        return Err(CoreError::DescriptionTooLong(n));
    }
    Ok(())
}

/// Sets or replaces one variable, keeping the order of first appearance.
pub use agentkernel_core::exec::set_env;

/// Applies an image's own environment (`Env` of its OCI config) under the explicit one: image
/// values replace defaults but never what the user passed with `-e`.
pub fn merge_image_env(spec: &mut SandboxSpec, image_env: &[String], user_env: &[String]) {
    let user_keys: Vec<&str> = user_env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    for kv in image_env {
        if let Some((k, v)) = kv.split_once('=')
            && !user_keys.contains(&k)
        {
            set_env(&mut spec.env, k.to_string(), v.to_string());
        }
    }
}

/// The sandbox name `--branch` uses: `<project>-<branch>` from the git work tree at `cwd`.
pub fn branch_name(cwd: &std::path::Path) -> Result<String> {
    let git = |args: &[&str]| git_in(cwd, args);
    let top = git(&["rev-parse", "--show-toplevel"]).ok_or_else(|| {
        CoreError::Unsupported(
            "--branch needs a git repository: run it inside one, or give a name".to_string(),
        )
    })?;
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "HEAD".to_string());
    let project = std::path::Path::new(&top)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(agentkernel_core::name::sanitize_name(&format!(
        "{project}-{branch}"
    )))
}

/// A git command's trimmed output in `cwd`, or `None` when it fails.
fn git_in(cwd: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(cwd)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The project a request from `cwd` is for (`list --project`): the name of its git
/// repository's top directory, as `--branch` names sandboxes, else of `cwd` itself.
pub fn project_name(cwd: &std::path::Path) -> Option<String> {
    let top = git_in(cwd, &["rev-parse", "--show-toplevel"])
        .map(PathBuf::from)
        .unwrap_or_else(|| cwd.to_path_buf());
    top.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkernel_core::HasKind;

    /// A request of the local user in `dir`, and a state directory with no user config.
    fn req(dir: &Path) -> SpecRequest {
        SpecRequest {
            cwd: dir.to_path_buf(),
            caller: Caller::Local,
            ..Default::default()
        }
    }

    fn no_home() -> tempfile::TempDir {
        tempfile::tempdir().expect("home")
    }

    fn project(dir: &Path, text: &str) {
        std::fs::write(dir.join(PROJECT_CONFIG), text).expect("write project config");
    }

    fn spec_of(home: &Path, r: &SpecRequest) -> Result<SandboxSpec> {
        resolve(r, "a", &load_config(home, r)?)
    }

    #[test]
    fn flags_beat_config_beat_project_file_beat_user_file() {
        let home = no_home();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            user_config_path(home.path()),
            "[security]\nprofile = \"moderate\"\n[resources]\nmemory_mb = 1000\n",
        )
        .expect("write");
        project(
            dir.path(),
            "[security]\nprofile = \"restrictive\"\n[resources]\nmemory_mb = 300\n",
        );
        std::fs::write(
            dir.path().join("other.toml"),
            "[resources]\nmemory_mb = 400\n",
        )
        .expect("write");
        let mut r = req(dir.path());
        let s = spec_of(home.path(), &r).expect("spec");
        assert_eq!(s.policy.profile, Profile::Restrictive);
        assert_eq!(s.policy.limits.memory_mb, 300);
        r.config = Some("other.toml".into());
        assert_eq!(
            spec_of(home.path(), &r)
                .expect("spec")
                .policy
                .limits
                .memory_mb,
            400
        );
        r.profile = Some("moderate".into());
        r.memory_mb = Some(500);
        let s = spec_of(home.path(), &r).expect("spec");
        assert_eq!(s.policy.profile, Profile::Moderate);
        assert_eq!(s.policy.limits.memory_mb, 500);
        assert_eq!(
            config_paths(home.path(), &r).expect("paths"),
            vec![
                user_config_path(home.path()),
                dir.path().join(PROJECT_CONFIG),
                dir.path().join("other.toml")
            ]
        );
    }

    #[test]
    fn a_project_config_may_tighten_but_never_loosen() {
        let home = no_home();
        let dir = tempfile::tempdir().expect("tempdir");
        let r = req(dir.path());
        for (text, key) in [
            ("[security]\nprofile = \"permissive\"\n", "permissive"),
            ("[resources]\npids = 100000\n", "processes"),
            ("[resources]\nmemory_mb = 8192\n", "8192 MB"),
            ("[resources]\ndisk_mb = 999999\n", "disk"),
            ("[sandbox]\nbase_image = \"/\"\n", "outside the project"),
            (
                "[sandbox]\nbase_image = \"oci:/srv/layout\"\n",
                "outside the project",
            ),
            (
                "[sandbox]\nbase_image = \"../elsewhere\"\n",
                "outside the project",
            ),
            ("[sandbox]\nbackend = \"docker\"\n", "backend"),
            (
                "[images]\nmirrors = [\"http://evil.example\"]\n",
                "[images]",
            ),
            ("[security]\nremote_paths = [\"/\"]\n", "remote_paths"),
        ] {
            project(dir.path(), text);
            let e = load_config(home.path(), &r).expect_err(text);
            assert!(
                matches!(e, EngineError::Input(CoreError::NotPermitted(_))),
                "{text}: {e}"
            );
            assert!(e.to_string().contains(key), "{text}: {e}");
            assert!(e.to_string().contains(PROJECT_CONFIG), "{text}: {e}");
        }
        // Tightening, choosing an image inside the project, and what the flags already give.
        std::fs::create_dir(dir.path().join("rootfs")).expect("mkdir");
        for text in [
            "[security]\nprofile = \"restrictive\"\n",
            "[security]\nnetwork = false\nread_only = true\n",
            "[resources]\nmemory_mb = 256\nvcpus = 1\n",
            "[sandbox]\nbase_image = \"./rootfs\"\nname = \"x\"\n",
            "[sandbox]\nbase_image = \"python:3.12-alpine\"\n",
            "[server]\nport = 9000\n",
        ] {
            project(dir.path(), text);
            load_config(home.path(), &r).expect(text);
        }
        project(dir.path(), "[security]\nprofile = \"permissive\"\n");
        let flagged = SpecRequest {
            profile: Some("permissive".into()),
            ..req(dir.path())
        };
        load_config(home.path(), &flagged).expect("the flag allows it");
        // The user's own file sets the bound the project is measured against.
        std::fs::write(
            user_config_path(home.path()),
            "[security]\nprofile = \"permissive\"\n",
        )
        .expect("write");
        load_config(home.path(), &r).expect("the user's default is permissive");
        std::fs::write(
            user_config_path(home.path()),
            "[security]\nprofile = \"restrictive\"\n",
        )
        .expect("write");
        project(
            dir.path(),
            "[security]\nnetwork = true\nread_only = false\n",
        );
        let e = load_config(home.path(), &r).expect_err("network over restrictive");
        assert!(e.to_string().contains("network"), "{e}");
    }

    #[test]
    fn remote_callers_name_no_host_paths_and_mount_only_listed_ones() {
        let home = no_home();
        let dir = tempfile::tempdir().expect("tempdir");
        let remote = SpecRequest {
            caller: Caller::Remote,
            ..req(dir.path())
        };
        for image in ["/", "/dev", "oci:/tmp/layout", "./x"] {
            let r = SpecRequest {
                image: Some(image.into()),
                ..remote.clone()
            };
            let e = spec_of(home.path(), &r).expect_err(image);
            assert!(
                matches!(e, EngineError::Input(CoreError::NotPermitted(_))),
                "{image}: {e}"
            );
            assert!(e.to_string().contains("remote_paths"), "{e}");
        }
        for image in [
            "127.0.0.1:5000/x:1",
            "localhost:6379/x",
            "169.254.169.254/latest/meta-data",
            "10.0.0.5:5000/x",
            "[::1]:5000/x",
            "metadata.google.internal/x",
        ] {
            let r = SpecRequest {
                image: Some(image.into()),
                ..remote.clone()
            };
            let e = spec_of(home.path(), &r).expect_err(image);
            assert!(e.to_string().contains("private network"), "{image}: {e}");
        }
        for image in ["host", "python:3.12-alpine", "ghcr.io/org/img:1"] {
            let r = SpecRequest {
                image: Some(image.into()),
                ..remote.clone()
            };
            spec_of(home.path(), &r).expect(image);
        }
        let permissive = SpecRequest {
            image: Some("host".into()),
            profile: Some("permissive".into()),
            ..remote.clone()
        };
        let s = spec_of(home.path(), &permissive).expect("spec");
        assert!(s.policy.mounts.is_empty(), "{:?}", s.policy.mounts);
        assert!(s.policy.env_passthrough.is_empty());
        let listed = dir.path().display().to_string();
        std::fs::write(
            user_config_path(home.path()),
            format!("[security]\nremote_paths = [{listed:?}]\n"),
        )
        .expect("write");
        let s = spec_of(home.path(), &permissive).expect("spec");
        assert_eq!(s.policy.mounts.len(), 1, "{:?}", s.policy.mounts);
        assert_eq!(s.policy.mounts[0].source, dir.path());
        let r = SpecRequest {
            image: Some(listed.clone()),
            ..remote.clone()
        };
        spec_of(home.path(), &r).expect("a listed directory");
        let huge = SpecRequest {
            image: Some("host".into()),
            memory_mb: Some(1024 * 1024),
            ..remote.clone()
        };
        let e = spec_of(home.path(), &huge).expect_err("1 TiB");
        assert!(e.to_string().contains("max_memory_mb"), "{e}");
        let local = SpecRequest {
            image: Some("/".into()),
            ..req(dir.path())
        };
        spec_of(home.path(), &local).expect("the local user names host paths");
    }

    #[test]
    fn an_mcp_caller_may_only_tighten_the_operators_policy() {
        let home = no_home();
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = SpecRequest {
            caller: Caller::Agent,
            image: Some("host".into()),
            ..req(dir.path())
        };
        for (profile, network) in [(Some("permissive"), None), (None, Some(true))] {
            project(dir.path(), "[security]\nprofile = \"restrictive\"\n");
            let r = SpecRequest {
                profile: profile.map(str::to_string),
                network,
                ..agent.clone()
            };
            let e = spec_of(home.path(), &r).expect_err("looser than the ceiling");
            assert!(
                matches!(e, EngineError::Input(CoreError::NotPermitted(_))),
                "{e}"
            );
        }
        std::fs::remove_file(dir.path().join(PROJECT_CONFIG)).expect("rm");
        let e = spec_of(
            home.path(),
            &SpecRequest {
                profile: Some("permissive".into()),
                ..agent.clone()
            },
        )
        .expect_err("permissive over the default moderate");
        assert!(e.to_string().contains("MCP"), "{e}");
        for (profile, network) in [
            (Some("restrictive"), None),
            (None, Some(false)),
            (None, None),
        ] {
            let r = SpecRequest {
                profile: profile.map(str::to_string),
                network,
                ..agent.clone()
            };
            spec_of(home.path(), &r).expect("tighter or equal");
        }
    }

    #[test]
    fn only_the_local_user_binds_vault_keys_freely() {
        let home = no_home();
        let dir = tempfile::tempdir().expect("dir");
        let ask = |caller: Caller, secrets: &[&str], files: &[&str]| SpecRequest {
            caller,
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            secret_files: files.iter().map(|s| s.to_string()).collect(),
            ..req(dir.path())
        };
        // The local user names any vault key; the placeholder is what the sandbox sees.
        let spec = spec_of(
            home.path(),
            &ask(Caller::Local, &["K:api.example.com"], &["K"]),
        )
        .expect("local");
        assert!(
            spec.env
                .contains(&("K".to_string(), "ak-proxy-managed".to_string()))
        );
        // MCP and HTTP callers bind values they give; vault keys are refused...
        for caller in [Caller::Agent, Caller::Remote] {
            spec_of(home.path(), &ask(caller, &["K=v:api.example.com"], &["K"])).expect("inline");
            let e = spec_of(home.path(), &ask(caller, &["K:api.example.com"], &[]))
                .expect_err("a vault key");
            assert_eq!(e.kind(), agentkernel_core::ErrorKind::NotPermitted, "{e}");
            let e = spec_of(home.path(), &ask(caller, &[], &["K"])).expect_err("a vault file");
            assert_eq!(e.kind(), agentkernel_core::ErrorKind::NotPermitted, "{e}");
        }
        // ...unless the operator lists the binding for HTTP callers.
        std::fs::write(
            user_config_path(home.path()),
            "[secrets]\nremote_bindings = [\"K:api.example.com\"]\n",
        )
        .expect("config");
        spec_of(
            home.path(),
            &ask(Caller::Remote, &["K:api.example.com"], &[]),
        )
        .expect("listed");
        spec_of(home.path(), &ask(Caller::Remote, &["K:evil.example"], &[]))
            .expect_err("another host");
        spec_of(
            home.path(),
            &ask(Caller::Agent, &["K:api.example.com"], &[]),
        )
        .expect_err("MCP never");
        // Secrets without network, or a placeholder without a binding, conflict.
        let mut r = ask(Caller::Local, &["K=v:api.example.com"], &[]);
        r.no_network = true;
        let e = spec_of(home.path(), &r).expect_err("no network");
        assert_eq!(e.kind(), agentkernel_core::ErrorKind::Conflict, "{e}");
    }

    #[test]
    fn bad_inputs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Config::default();
        let mut r = req(dir.path());
        assert!(resolve(&r, "../x", &c).is_err());
        r.image = Some("--volume=/:/host".into());
        assert!(resolve(&r, "x", &c).is_err());
        r.image = None;
        r.env = vec!["=novalue".into()];
        assert!(resolve(&r, "x", &c).is_err());
        // A name alone is the local caller's own value; anyone else must give the value.
        r.env = vec!["NOEQUALS".into()];
        assert!(resolve(&r, "x", &c).is_ok());
        r.caller = Caller::Remote;
        assert!(resolve(&r, "x", &c).is_err());
        r.caller = Caller::Local;
        r.env = vec![];
        r.workdir = Some("relative".into());
        assert!(resolve(&r, "x", &c).is_err());
        project(dir.path(), "[security\n");
        assert!(load_config(no_home().path(), &req(dir.path())).is_err());
    }

    #[test]
    fn env_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = req(dir.path());
        r.env = vec!["A=1".into(), "PATH=/x".into()];
        let mut s = resolve(&r, "n", &Config::default()).expect("spec");
        merge_image_env(&mut s, &["A=image".into(), "B=2".into()], &r.env);
        let get = |k: &str| s.env.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        assert_eq!(get("A").as_deref(), Some("1"));
        assert_eq!(get("B").as_deref(), Some("2"));
        assert_eq!(get("PATH").as_deref(), Some("/x"));
        assert_eq!(get("HOSTNAME").as_deref(), Some("n"));
    }
}
