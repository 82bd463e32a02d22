//! The agentkernel engine: every surface (CLI, HTTP, MCP) calls these operations, which own
//! validation, policy, state and audit. Surfaces only parse and render.

pub mod audit;
pub mod backend;
pub mod benchmark;
pub mod buffered;
mod clean;
pub mod detached;
pub mod doctor;
pub mod egress;
pub mod error;
mod files;
#[cfg(test)]
mod fuzz;
mod lock;
pub mod metadata;
pub mod owners;
pub mod parallel;
pub mod pipeline;
pub mod pool;
pub mod receipt;
pub mod resolve;
mod running;
mod seal;
pub mod session;
pub mod snapshot;
mod source;
mod state_dir;
pub mod status;
pub mod store;
pub mod template;
mod template_cache;
pub mod vault;
pub mod volumes;

pub use agentkernel_core::Sink;
use agentkernel_core::config::Config;
use agentkernel_core::{ExecEvent, ExecRequest, ExitStatus, SandboxSpec, validate_name};
use agentkernel_image::{ImageStore, Rootfs};
use audit::{AuditEvent, AuditLog};
use backend::{Backend, Controls, Persistence, Started};
pub use error::{EngineError, Result};
pub use files::{MAX_PATH_BYTES, check_path};
pub use resolve::SpecRequest;
use serde::Serialize;
use std::cell::OnceCell;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;
use store::{SandboxRecord, Store};

/// Default lifetime of a sandbox kept by `run --keep`.
pub const DEFAULT_KEEP_TTL: Duration = Duration::from_secs(3600);

/// How many sandboxes remote and MCP callers may keep, unless `[server] max_sandboxes` says.
pub const DEFAULT_MAX_SANDBOXES: usize = 100;

/// The RFC 3339 time `ttl` from now; a TTL beyond `metadata::MAX_TTL_DAYS` is refused (a
/// larger one would overflow the clock arithmetic).
pub(crate) fn expiry_after(ttl: Duration) -> Result<String> {
    let too_long = || {
        EngineError::Input(agentkernel_core::CoreError::InvalidArgument(format!(
            "a lifetime of {} s is more than the longest allowed ({} days): give a shorter TTL",
            ttl.as_secs(),
            metadata::MAX_TTL_DAYS
        )))
    };
    let secs = i64::try_from(ttl.as_secs()).map_err(|_| too_long())?;
    if secs > metadata::MAX_TTL_DAYS * 86400 {
        return Err(too_long());
    }
    let at = chrono::Utc::now()
        .checked_add_signed(chrono::Duration::seconds(secs))
        .ok_or_else(too_long)?;
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// A sandbox as listed to users.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SandboxInfo {
    pub name: String,
    pub uuid: String,
    /// `running` or `stopped`: the true state, checked against the process table.
    pub status: String,
    pub backend: String,
    pub image: String,
    pub profile: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub pid: Option<u32>,
    pub memory_mb: u64,
    pub vcpus: f64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub description: Option<String>,
    /// `none`, `allowlist` or `full`, with the host patterns the egress proxy applies.
    pub network: String,
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    /// Published ports as Docker shows them (`127.0.0.1:8080->80/tcp`).
    pub ports: Vec<String>,
    /// The project the sandbox was made for (`list --project`), when made by the local user.
    pub project: Option<String>,
    /// What is mounted from the host (`SOURCE:TARGET[:ro]`): volumes, by name for a named
    /// one, and the permissive profile's directories.
    pub mounts: Vec<String>,
}

/// `run` options beyond the sandbox spec.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Keep the sandbox afterwards (`--keep`), with this TTL.
    pub keep: bool,
    pub ttl: Option<Duration>,
    /// Reuse the sandbox named after the git project and branch (`--branch`).
    pub branch: bool,
    /// Name for the sandbox; random `run-XXXXXXXX` when absent.
    pub name: Option<String>,
}

/// What `run` did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: ExitStatus,
    pub sandbox: String,
    /// The sandbox still exists afterwards (`--keep` or `--branch`).
    pub kept: bool,
    pub memory_limit_mb: u64,
    /// The spec the command ran under (a kept sandbox's as recorded).
    pub spec: SandboxSpec,
    /// What the image resolved to (`Rootfs::id`) for a throwaway run; `None` for a kept
    /// sandbox, whose record does not keep it.
    pub image_digest: Option<String>,
}

pub struct Engine {
    home: PathBuf,
    audit: AuditLog,
    images: ImageStore,
    store: OnceCell<Store>,
    seal: OnceCell<seal::Seal>,
    /// The executable re-run as the supervisor of detached commands; `current_exe()` if unset.
    supervisor_exe: Option<PathBuf>,
}

impl Engine {
    /// An engine on `home` (`~/.agentkernel` or `$AGENTKERNEL_HOME`). Creates the directory.
    pub fn open(home: &Path) -> Result<Engine> {
        state_dir::secure(home)?;
        Ok(Engine {
            home: home.to_path_buf(),
            audit: AuditLog::new(home),
            images: ImageStore::new(home.join("images")),
            store: OnceCell::new(),
            seal: OnceCell::new(),
            supervisor_exe: None,
        })
    }

    /// Uses `exe` (an agentkernel binary) as the supervisor of detached commands instead of the
    /// current executable: for callers that are not the agentkernel binary (tests, embedders).
    pub fn with_supervisor_exe(mut self, exe: impl Into<PathBuf>) -> Engine {
        self.supervisor_exe = Some(exe.into());
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The key that authenticates stored records, read on first use.
    fn seal(&self) -> Result<&seal::Seal> {
        if let Some(s) = self.seal.get() {
            return Ok(s);
        }
        let s = seal::Seal::open(&self.home)?;
        Ok(self.seal.get_or_init(|| s))
    }

    /// The state database, opened on first use: an ephemeral `run` never touches it.
    fn store(&self) -> Result<&Store> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let s = Store::open(&self.home)?;
        Ok(self.store.get_or_init(|| s))
    }

    fn backend(&self, spec: &SandboxSpec) -> Result<Box<dyn Backend>> {
        let b = backend::backend_for(spec.backend, &self.home)?;
        let r = b.ready_for_use();
        if !r.usable {
            return Err(EngineError::BackendNotReady {
                backend: spec.backend.to_string(),
                reason: r.reason,
            });
        }
        Ok(b)
    }

    /// Resolves the spec, checks its backend can run here, then makes sure its image is local
    /// (pulling it if needed); the image's env is merged under the user's and the template's.
    /// The backend goes first so that a request no backend can serve fails before anything is
    /// downloaded. A template's files and cached setup come last (`template::apply_template`).
    pub(crate) fn prepare(
        &self,
        req: &SpecRequest,
        name: &str,
        config: &Config,
    ) -> Result<(SandboxSpec, Rootfs, Box<dyn Backend>)> {
        let template = req
            .template
            .as_deref()
            .map(|t| template::load(&self.home, t, &req.cwd, req.caller))
            .transpose()?;
        let templated;
        let spec_req = match &template {
            Some(t) => {
                templated = template::with_template_env(req, t);
                &templated
            }
            None => req,
        };
        let mut spec = resolve::resolve(spec_req, name, config)?;
        let backend = self.backend(&spec)?;
        if !spec.ports.is_empty() {
            backend.publish_ports()?;
        }
        volumes::place_named(&self.home, &mut spec.policy)?;
        let rootfs = backend.resolve_image(&spec.image, &self.images_for(Some(config))?)?;
        state_dir::hide(&self.home, &mut spec, &rootfs)?;
        resolve::merge_image_env(&mut spec, &rootfs.config.env, &spec_req.env);
        if req.workdir.is_none()
            && config.sandbox.workdir.is_none()
            && let Some(w) = rootfs
                .config
                .workdir
                .as_ref()
                .filter(|w| w.starts_with('/'))
        {
            spec.workdir = w.clone();
        }
        if let Some(t) = &template {
            self.apply_template(t, req, &mut spec)?;
        }
        backend.check_spec(&spec, &rootfs)?;
        Ok((spec, rootfs, backend))
    }

    /// The image store with the registry settings of `config` (`[images]`) and the environment
    /// (`AGENTKERNEL_REGISTRY_MIRROR`, which wins).
    pub(crate) fn images_for(&self, config: Option<&Config>) -> Result<ImageStore> {
        let images = config.map(|c| &c.images);
        let limits = agentkernel_image::UnpackLimits::from_settings(
            images.and_then(|i| i.max_layer_mb),
            images.and_then(|i| i.max_image_mb),
        );
        Ok(self
            .images
            .clone()
            .with_registries(registry_settings(config)?)
            .with_unpack_limits(limits))
    }

    /// Which config files a request reads and the profile they give, as `run` says on stderr:
    /// `None` when no file applies (flags and defaults only). A project's file took effect
    /// silently before; now the user sees it every time.
    pub fn explain_config(&self, req: &SpecRequest) -> Result<Option<String>> {
        let result = self.explain_config_unaudited(req);
        self.audit.refusal("", Some(req.caller), result)
    }

    fn explain_config_unaudited(&self, req: &SpecRequest) -> Result<Option<String>> {
        let paths = resolve::config_paths(&self.home, req)?;
        if paths.is_empty() && req.template.is_none() {
            return Ok(None);
        }
        let config = resolve::load_config(&self.home, req)?;
        let profile = req
            .profile
            .clone()
            .or(config.security.profile)
            .unwrap_or_else(|| agentkernel_core::Profile::default().to_string());
        let shown: Vec<String> = paths
            .iter()
            .map(|p| match p.strip_prefix(&req.cwd) {
                Ok(rel) => format!("./{}", rel.display()),
                Err(_) => p.display().to_string(),
            })
            .collect();
        let mut parts = Vec::new();
        if let Some(t) = &req.template {
            parts.push(format!("template {t}"));
        }
        if !shown.is_empty() {
            parts.push(format!("config {}", shown.join(", ")));
        }
        parts.push(format!("profile {profile}"));
        Ok(Some(parts.join("; ")))
    }

    /// Refuses an MCP caller a sandbox whose policy is looser than what the configs give an MCP
    /// caller resolved in `cwd` (a permissive sandbox the user made, say): otherwise the agent
    /// could step around its ceiling by using a sandbox instead of creating one.
    pub fn check_agent_access(&self, name: &str, cwd: &Path) -> Result<()> {
        let result = self.check_agent_access_unaudited(name, cwd);
        self.audit
            .refusal(name, Some(resolve::Caller::Agent), result)
    }

    fn check_agent_access_unaudited(&self, name: &str, cwd: &Path) -> Result<()> {
        let rec = self.get_record(name)?;
        self.agent_may_use(&rec.spec, &format!("sandbox {name}"), cwd)
    }

    /// Refuses an MCP caller a snapshot whose sandbox's policy is looser than its ceiling in
    /// `cwd`, as `check_agent_access` does for a sandbox: restoring it would make one.
    pub fn check_agent_snapshot_access(&self, snapshot: &str, cwd: &Path) -> Result<()> {
        let spec = self.snapshot_spec(snapshot)?;
        let result = self.agent_may_use(&spec, &format!("snapshot {snapshot}"), cwd);
        self.audit
            .refusal(&spec.name, Some(resolve::Caller::Agent), result)
    }

    fn agent_may_use(&self, spec: &SandboxSpec, what_it_is: &str, cwd: &Path) -> Result<()> {
        let req = SpecRequest {
            cwd: cwd.to_path_buf(),
            caller: resolve::Caller::Agent,
            ..Default::default()
        };
        let ceiling = resolve::ceiling(&self.home, &req)?;
        match spec.policy.loosening_of(&ceiling) {
            None => Ok(()),
            Some(what) => Err(EngineError::Input(
                agentkernel_core::CoreError::NotPermitted(format!(
                    "{what_it_is} allows {what}, more than an MCP caller may use here ({} profile): use a sandbox made through MCP, or have the user change ~/.agentkernel/config.toml",
                    ceiling.profile
                )),
            )),
        }
    }

    /// Which image a request would use and which rule chose it (`run -v`).
    pub fn explain_image(&self, req: &SpecRequest) -> Result<agentkernel_core::detect::Detection> {
        let config =
            self.audit
                .refusal("", Some(req.caller), resolve::load_config(&self.home, req))?;
        let mut chosen = resolve::choose_image(req, &config);
        if chosen.rule == "[sandbox] base_image"
            && let Some(reference) = &req.template
            && let Ok(t) = template::load(&self.home, reference, &req.cwd, req.caller)
            && t.template.image.as_deref() == Some(chosen.image.as_str())
        {
            chosen.rule = format!("template {}", t.name);
        }
        Ok(chosen)
    }

    /// Runs one command in a new sandbox (removed afterwards unless kept).
    pub fn run(
        &self,
        req: &SpecRequest,
        opts: &RunOptions,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<RunOutcome> {
        let result = self.run_unaudited(req, opts, exec, sink, controls);
        let sandbox = opts.name.as_deref().unwrap_or_default();
        self.audit.refusal(sandbox, Some(req.caller), result)
    }

    fn run_unaudited(
        &self,
        req: &SpecRequest,
        opts: &RunOptions,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<RunOutcome> {
        let req = run_request(req, exec)?;
        let req = req.as_ref();
        if opts.branch {
            return self.run_on_branch(req, exec, sink, controls);
        }
        let name = opts.name.clone().unwrap_or_else(throwaway_name);
        if opts.keep {
            let ttl = Some(opts.ttl.unwrap_or(DEFAULT_KEEP_TTL));
            let info = self.create_unaudited(req, Some(&name), ttl)?;
            self.start_unaudited(&info.name)?;
            let status = self.exec(&info.name, exec, sink, controls)?;
            let spec = self.get_record(&info.name)?.spec;
            return Ok(RunOutcome {
                status,
                sandbox: info.name,
                kept: true,
                memory_limit_mb: spec.policy.limits.memory_mb,
                spec,
                image_digest: None,
            });
        }
        let config = resolve::load_config(&self.home, req)?;
        let (spec, rootfs, backend) = self.prepare(req, &name, &config)?;
        let status = self.run_prepared(&spec, &rootfs, backend.as_ref(), exec, sink, controls)?;
        Ok(RunOutcome {
            status,
            sandbox: name,
            kept: false,
            memory_limit_mb: spec.policy.limits.memory_mb,
            spec,
            image_digest: Some(rootfs.id),
        })
    }

    /// The throwaway path of `run` once the spec is resolved: start, run, tear down.
    pub(crate) fn run_prepared(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        backend: &dyn Backend,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        let _claim = owners::claim(&self.home, backend, &spec.name);
        let result = if needs_connecting(spec) {
            self.run_connected(spec, rootfs, backend, exec, sink, controls)
        } else {
            backend
                .run_ephemeral(spec, rootfs, exec, sink, controls)
                .map_err(EngineError::from)
        };
        self.audit.attempt(&spec.name, &exec.argv, &result, None);
        result
    }

    /// A throwaway sandbox with a network or secret files: started, connected to a proxy
    /// thread of this process and given its files, the command run, stopped.
    fn run_connected(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        backend: &dyn Backend,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        let started = backend.start(spec, rootfs, &spec.name, Persistence::Ephemeral)?;
        let result = self.exec_connected(spec, backend, &started.runtime, exec, sink, controls);
        let stopped = backend.stop(started);
        let status = result?;
        stopped?;
        Ok(status)
    }

    /// One command in a started throwaway sandbox (a fresh one, or a warm one from a pool),
    /// connected first ([`Engine::connect`]); its proxy thread ends with the command.
    pub(crate) fn exec_connected(
        &self,
        spec: &SandboxSpec,
        backend: &dyn Backend,
        runtime: &agentkernel_core::backend::RuntimeState,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        let _served = self.connect(spec, backend, runtime, None)?;
        Ok(backend.exec(spec, runtime, exec, sink, controls)?)
    }

    /// What a started sandbox needs before its first command: its network routed to an egress
    /// proxy and its published ports forwarded into it (threads of this process for a
    /// throwaway sandbox, returned; a proxy process for a persistent one, whose directory is
    /// `dir`), the proxy's CA when secrets are bound, and its secret files.
    pub(crate) fn connect(
        &self,
        spec: &SandboxSpec,
        backend: &dyn Backend,
        runtime: &agentkernel_core::backend::RuntimeState,
        dir: Option<&Path>,
    ) -> Result<Vec<egress::ProxyThread>> {
        if !needs_connecting(spec) {
            return Ok(Vec::new());
        }
        let mut vault: Option<vault::Vault> = None;
        let home = self.home.clone();
        let mut lookup = |key: &str| -> Result<String> {
            if vault.is_none() {
                let config = resolve::user_config(&home)?;
                vault = Some(vault::Vault::open(&home, &config)?);
            }
            match &vault {
                Some(v) => Ok(v.get(key)?),
                None => Err(EngineError::Io {
                    context: "open the secrets vault".into(),
                    source: std::io::Error::other("no vault"),
                }),
            }
        };
        let bindings = egress::resolve_bindings(spec, &mut lookup)?;
        let ca = if bindings.is_empty() {
            None
        } else {
            Some(egress::load_ca(&self.home).map_err(EngineError::io("load the egress CA"))?)
        };
        let image_bundle = ca.as_ref().and_then(|_| {
            backend
                .read_file(
                    runtime,
                    Path::new("/etc/ssl/certs/ca-certificates.crt"),
                    8 << 20,
                )
                .ok()
        });
        let files = egress::sandbox_files(
            spec,
            &bindings,
            ca.as_ref().map(|c| c.cert_pem()),
            image_bundle,
            &mut lookup,
        )?;
        for (path, data) in &files {
            let written = backend.write_file(runtime, path, data);
            // The image's own bundle is replaced where the root is writable; the copy under
            // /run/agentkernel, which the environment points at, is what must succeed.
            if path != Path::new("/etc/ssl/certs/ca-certificates.crt") {
                written?;
            }
        }
        let networked = spec.policy.network.is_networked();
        if !networked && spec.ports.is_empty() {
            return Ok(Vec::new());
        }
        let config = egress::EgressConfig::new(spec, bindings);
        let netns = backend.network_namespace(runtime)?;
        match dir {
            None => {
                let mut served = Vec::new();
                // Ports first: a host port in use is the likeliest failure, and the clearest.
                if !spec.ports.is_empty() {
                    served.push(egress::forward_in_thread(&netns, &spec.ports)?);
                }
                if networked {
                    served.push(egress::serve_in_thread(
                        &self.home, &spec.name, &netns, &config,
                    )?);
                }
                Ok(served)
            }
            Some(dir) => {
                let path = dir.join(egress::EGRESS_FILE);
                config.write(&path)?;
                let home = std::path::absolute(&self.home)
                    .map_err(EngineError::io(format!("resolve {}", self.home.display())))?;
                egress::spawn_proxy(
                    &self.supervisor_exe()?,
                    &home,
                    &spec.name,
                    dir,
                    netns,
                    (runtime.pid, runtime.start_time),
                )?;
                Ok(Vec::new())
            }
        }
    }

    fn run_on_branch(
        &self,
        req: &SpecRequest,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<RunOutcome> {
        let name = resolve::branch_name(&req.cwd)?;
        if self.store()?.get(&name)?.is_none() {
            self.create_unaudited(req, Some(&name), None)?;
        }
        self.start_unaudited(&name)?;
        let status = self.exec(&name, exec, sink, controls)?;
        let spec = self.get_record(&name)?.spec;
        Ok(RunOutcome {
            status,
            sandbox: name,
            kept: true,
            memory_limit_mb: spec.policy.limits.memory_mb,
            spec,
            image_digest: None,
        })
    }

    /// Creates a persistent sandbox (not started). Nothing is left behind on error.
    pub fn create(
        &self,
        req: &SpecRequest,
        name: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<SandboxInfo> {
        let result = self.create_unaudited(req, name, ttl);
        self.audit
            .refusal(name.unwrap_or_default(), Some(req.caller), result)
    }

    fn create_unaudited(
        &self,
        req: &SpecRequest,
        name: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<SandboxInfo> {
        let config = resolve::load_config(&self.home, req)?;
        // An explicit name, else the project's `[sandbox] name`, else a generated one.
        let name = match name
            .map(str::to_string)
            .or_else(|| config.sandbox.name.clone())
        {
            Some(n) => n,
            None => format!(
                "sandbox-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        };
        validate_name(&name)?;
        let expires_at = ttl.map(expiry_after).transpose()?;
        let (mut spec, _rootfs, _backend) = self.prepare(req, &name, &config)?;
        // A host port taken now would fail every start: refused before anything is made.
        egress::check_ports_free(&spec.ports)?;
        if req.caller == resolve::Caller::Local {
            spec.project = resolve::project_name(&req.cwd);
        }
        let rec = SandboxRecord {
            name: name.clone(),
            uuid: uuid::Uuid::new_v4().to_string(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            expires_at,
            runtime: None,
            spec,
        };
        let lock = lock::SandboxLock::acquire(&self.home, &name)?;
        let inserted = self.insert_within_limit(&rec, req.caller, &config);
        if inserted.is_err() && matches!(self.store().and_then(|s| s.get(&name)), Ok(None)) {
            // Refused: no sandbox of that name, so no lock file for it either.
            lock.remove_file();
        }
        inserted?;
        self.audit.record(AuditEvent::SandboxCreated {
            name: name.clone(),
            image: rec.spec.image.display(),
            backend: rec.spec.backend.to_string(),
        });
        Ok(self.info(&rec))
    }

    /// Stores a new sandbox's record, unless a remote caller would pass the server's
    /// `[server] max_sandboxes`.
    fn insert_within_limit(
        &self,
        rec: &SandboxRecord,
        caller: resolve::Caller,
        config: &Config,
    ) -> Result<()> {
        if caller != resolve::Caller::Local {
            let most = config.server.max_sandboxes.unwrap_or(DEFAULT_MAX_SANDBOXES);
            let count = self.store()?.list()?.len();
            if count >= most {
                return Err(EngineError::LimitReached(format!(
                    "this server already keeps {count} sandboxes, its limit: remove some (DELETE /sandboxes/NAME), or have the operator raise [server] max_sandboxes"
                )));
            }
        }
        self.store()?.insert(rec)
    }

    fn get_record(&self, name: &str) -> Result<SandboxRecord> {
        validate_name(name)?;
        self.store()?
            .get(name)?
            .ok_or_else(|| EngineError::NotFound(name.to_string()))
    }

    fn sandbox_dir(&self, name: &str) -> PathBuf {
        agentkernel_core::paths::sandbox_dir(&self.home, name)
    }

    fn is_running(&self, rec: &SandboxRecord) -> bool {
        match (
            &rec.runtime,
            backend::backend_for(rec.spec.backend, &self.home),
        ) {
            (Some(rt), Ok(b)) => b.is_running(rt),
            _ => false,
        }
    }

    fn info(&self, rec: &SandboxRecord) -> SandboxInfo {
        let running = self.is_running(rec);
        SandboxInfo {
            name: rec.name.clone(),
            uuid: rec.uuid.clone(),
            status: if running { "running" } else { "stopped" }.to_string(),
            backend: rec.spec.backend.to_string(),
            image: rec.spec.image.display(),
            profile: rec.spec.policy.profile.to_string(),
            created_at: rec.created_at.clone(),
            expires_at: rec.expires_at.clone(),
            pid: rec.runtime.as_ref().filter(|_| running).map(|r| r.pid),
            memory_mb: rec.spec.policy.limits.memory_mb,
            vcpus: rec.spec.policy.limits.vcpus,
            labels: rec.spec.labels.clone(),
            description: rec.spec.description.clone(),
            network: rec.spec.policy.network.as_str().to_string(),
            allow_hosts: rec.spec.policy.allow_hosts.clone(),
            deny_hosts: rec.spec.policy.deny_hosts.clone(),
            ports: rec.spec.ports.iter().map(|p| p.to_string()).collect(),
            project: rec.spec.project.clone(),
            mounts: rec
                .spec
                .policy
                .mounts
                .iter()
                .map(|m| {
                    let source = match &m.volume {
                        Some(name) => name.clone(),
                        None => m.source.display().to_string(),
                    };
                    let mode = if m.read_only { ":ro" } else { "" };
                    format!("{source}:{}{mode}", m.target.display())
                })
                .collect(),
        }
    }

    /// One sandbox with its true status.
    pub fn get(&self, name: &str) -> Result<SandboxInfo> {
        Ok(self.info(&self.get_record(name)?))
    }

    /// All persistent sandboxes with their true status.
    pub fn list(&self) -> Result<Vec<SandboxInfo>> {
        Ok(self.store()?.list()?.iter().map(|r| self.info(r)).collect())
    }

    /// Starts a sandbox; starting a running one does nothing. Returns whether it was started.
    pub fn start(&self, name: &str) -> Result<bool> {
        let result = self.start_unaudited(name);
        self.audit.refusal(name, None, result)
    }

    fn start_unaudited(&self, name: &str) -> Result<bool> {
        let _lock = lock::SandboxLock::acquire(&self.home, name)?;
        let rec = self.get_record(name)?;
        if self.is_running(&rec) {
            return Ok(false);
        }
        let backend = self.backend(&rec.spec)?;
        if let Some(rt) = &rec.runtime {
            // Leftovers of an earlier start that died (crash, reboot).
            let _ = backend.stop(Started::found(rt.clone()));
        }
        let rootfs = backend.resolve_image(&rec.spec.image, &self.images_for(None)?)?;
        let instance = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let dir = self.sandbox_dir(name);
        let started = backend.start(
            &rec.spec,
            &rootfs,
            &instance,
            Persistence::Persistent { dir: &dir },
        )?;
        if let Err(e) = self.connect(&rec.spec, backend.as_ref(), &started.runtime, Some(&dir)) {
            egress::stop_proxy(&dir);
            let _ = backend.stop(started);
            return Err(e);
        }
        let recorded = self
            .store()
            .and_then(|store| store.set_runtime(name, Some(&started.runtime)))
            .and_then(|()| {
                let rec = SandboxRecord {
                    runtime: Some(started.runtime.clone()),
                    ..rec.clone()
                };
                running::write(&dir, &rec, self.seal()?)
                    .map_err(EngineError::io(format!("write {}", dir.display())))
            });
        if let Err(e) = recorded {
            egress::stop_proxy(&dir);
            let _ = running::clear(&dir);
            let _ = self.store().and_then(|store| store.set_runtime(name, None));
            let _ = backend.stop(started);
            return Err(e);
        }
        // Recorded: from now on the sandbox outlives this process.
        started.release();
        self.audit.record(AuditEvent::SandboxStarted {
            name: name.to_string(),
            profile: rec.spec.policy.profile.to_string(),
        });
        Ok(true)
    }

    /// Stops a sandbox; stopping a stopped one does nothing. Returns whether it was running.
    pub fn stop(&self, name: &str) -> Result<bool> {
        let _lock = lock::SandboxLock::acquire(&self.home, name)?;
        let rec = self.get_record(name)?;
        let was_running = self.is_running(&rec);
        let dir = self.sandbox_dir(name);
        running::clear(&dir).map_err(EngineError::io(format!("update {}", dir.display())))?;
        if let Some(rt) = &rec.runtime {
            let backend = backend::backend_for(rec.spec.backend, &self.home)?;
            backend.stop(Started::found(rt.clone()))?;
            self.store()?.set_runtime(name, None)?;
        }
        egress::stop_proxy(&dir);
        // Detached commands died with the sandbox: their supervisors record how.
        detached::settle(&self.home, name);
        if was_running {
            self.audit.record(AuditEvent::SandboxStopped {
                name: name.to_string(),
            });
        }
        Ok(was_running)
    }

    /// Stops and deletes a sandbox and everything it wrote.
    pub fn remove(&self, name: &str) -> Result<()> {
        let lock = lock::SandboxLock::acquire(&self.home, name)?;
        let result = self.remove_locked(name);
        if matches!(self.store().and_then(|s| s.get(name)), Ok(None)) {
            lock.remove_file();
        }
        result
    }

    fn remove_locked(&self, name: &str) -> Result<()> {
        let rec = match self.get_record(name) {
            // A record that does not verify: its spec and runtime are not trusted, so nothing
            // they name is stopped; what still runs is in no verified record, and `gc` removes
            // it.
            Err(EngineError::Tampered(_)) => return self.forget(name),
            other => other?,
        };
        let backend = backend::backend_for(rec.spec.backend, &self.home)?;
        if let Some(rt) = &rec.runtime {
            backend.stop(Started::found(rt.clone()))?;
        }
        egress::stop_proxy(&self.sandbox_dir(name));
        backend.destroy(name)?;
        self.forget(name)?;
        // The layers it started from go with it when nothing else names them.
        if !rec.spec.layers.is_empty() {
            self.release_layers(&rec.spec);
        }
        Ok(())
    }

    /// Deletes a stopped sandbox's directory and record.
    fn forget(&self, name: &str) -> Result<()> {
        // Supervisors of detached commands write into the directory until they have recorded
        // the end of their command: let them finish before it goes.
        detached::settle(&self.home, name);
        let dir = self.sandbox_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io(format!("remove {}", dir.display()))(e)),
        }
        self.store()?.delete(name)?;
        self.audit.record(AuditEvent::SandboxRemoved {
            name: name.to_string(),
        });
        Ok(())
    }

    fn running_record(
        &self,
        name: &str,
    ) -> Result<(SandboxSpec, Box<dyn Backend>, store::RuntimeState)> {
        validate_name(name)?;
        // The fast path: the view `start` left, trusted only if its init is alive.
        if let Ok(seal) = self.seal()
            && let Some((spec, rt)) = running::read(&self.sandbox_dir(name), seal)
            && let Ok(backend) = backend::backend_for(spec.backend, &self.home)
            && backend.is_running(&rt)
        {
            return Ok((spec, backend, rt));
        }
        let rec = self.get_record(name)?;
        let backend = backend::backend_for(rec.spec.backend, &self.home)?;
        match &rec.runtime {
            Some(rt) if backend.is_running(rt) => {
                let rt = rt.clone();
                Ok((rec.spec, backend, rt))
            }
            _ => Err(EngineError::NotRunning(name.to_string())),
        }
    }

    /// Runs a command in a running sandbox, streaming events to `sink`.
    pub fn exec(
        &self,
        name: &str,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        self.exec_audited(name, req, sink, controls, None)
    }

    /// `exec`, with the id of the detached command it runs for (the audit entry says so).
    fn exec_audited(
        &self,
        name: &str,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
        detached: Option<&str>,
    ) -> Result<ExitStatus> {
        if req.argv.is_empty() {
            return Err(EngineError::NoCommand);
        }
        validate_exec(req)?;
        let (spec, backend, rt) = self.running_record(name)?;
        let result = backend
            .exec(&spec, &rt, req, sink, controls)
            .map_err(EngineError::from);
        self.audit.attempt(name, &req.argv, &result, detached);
        result
    }

    /// An interactive session on a pty (`attach`).
    pub fn attach(
        &self,
        name: &str,
        req: &ExecRequest,
        controls: Controls<'_>,
        record: Option<&mut agentkernel_core::Recorder<'_>>,
    ) -> Result<ExitStatus> {
        validate_exec(req)?;
        let (spec, backend, rt) = self.running_record(name)?;
        self.audit.record(AuditEvent::SessionAttached {
            sandbox: name.to_string(),
        });
        Ok(backend.attach(&spec, &rt, req, controls, record)?)
    }

    /// `cp SRC DST` where exactly one side is `NAME:/path`.
    pub fn copy(&self, src: &str, dst: &str) -> Result<PathBuf> {
        match (split_sandbox_path(src)?, split_sandbox_path(dst)?) {
            (Some((name, inside)), None) => {
                let (_, backend, rt) = self.running_record(name)?;
                let out = backend.copy_out(&rt, Path::new(inside), Path::new(dst))?;
                self.audit.record(AuditEvent::FileRead {
                    sandbox: name.to_string(),
                    path: inside.to_string(),
                });
                Ok(out)
            }
            (None, Some((name, inside))) => {
                let (_, backend, rt) = self.running_record(name)?;
                let out = backend.copy_in(&rt, Path::new(src), Path::new(inside))?;
                self.audit.record(AuditEvent::FileWritten {
                    sandbox: name.to_string(),
                    path: out.display().to_string(),
                });
                Ok(out)
            }
            _ => Err(EngineError::BadCopyArg(format!("{src} {dst}"))),
        }
    }

    /// Pulls a registry image (again, even when the store has it). Returns the manifest digest.
    /// `quiet` draws no progress bars (they are only ever drawn on a terminal).
    pub fn pull_image(&self, reference: &str, cwd: &Path, quiet: bool) -> Result<String> {
        match agentkernel_core::ImageRef::parse(reference, cwd)? {
            agentkernel_core::ImageRef::Registry { reference } => {
                let config = resolve::load_config(
                    &self.home,
                    &SpecRequest {
                        cwd: cwd.to_path_buf(),
                        caller: resolve::Caller::Local,
                        ..Default::default()
                    },
                )?;
                let images = self.images_for(Some(&config))?;
                let images = if quiet { images.quiet() } else { images };
                Ok(images.pull(&reference)?.id)
            }
            other => Err(agentkernel_core::CoreError::Unsupported(format!(
                "{} is not a registry image: only registry images are pulled (local directories and layouts are used in place)",
                other.display()
            ))
            .into()),
        }
    }

    /// Forgets a pulled image; refused while a sandbox uses it.
    pub fn remove_image(&self, reference: &str) -> Result<()> {
        let canonical = agentkernel_image::canonical_name(reference)?;
        if let Some(user) = self
            .image_users()?
            .into_iter()
            .find(|(name, _)| *name == canonical)
        {
            return Err(agentkernel_core::CoreError::Unsupported(format!(
                "image {reference} is used by sandbox {}: remove that sandbox first (`agentkernel remove {}`)",
                user.1, user.1
            ))
            .into());
        }
        if !self.images.remove(reference)? {
            return Err(agentkernel_core::CoreError::Unsupported(format!(
                "no image {reference} in the store: see `agentkernel images list`"
            ))
            .into());
        }
        Ok(())
    }

    /// Removes every pulled image no sandbox uses and whatever nothing else reaches.
    pub fn prune_images(&self) -> Result<agentkernel_image::Pruned> {
        let keep: std::collections::HashSet<String> = self
            .image_users()?
            .into_iter()
            .map(|(image, _)| image)
            .collect();
        // Local OCI layouts unpack into the store too: keep what sandboxes built on them use.
        let images = self.images_for(None)?;
        let keep_rootfs: Vec<Rootfs> = self
            .store()?
            .list()?
            .iter()
            .filter(|r| matches!(r.spec.image, agentkernel_core::ImageRef::OciLayout { .. }))
            .filter_map(|r| images.resolve(&r.spec.image).ok())
            .collect();
        Ok(self.images.prune(&keep, &keep_rootfs)?)
    }

    /// (canonical image name, user) for every sandbox and snapshot built on a registry image:
    /// a snapshot's layers stack on its image, so restoring it needs the image.
    fn image_users(&self) -> Result<Vec<(String, String)>> {
        let store = self.store()?;
        let sandboxes = store.list()?.into_iter().map(|r| (r.spec, r.name));
        let snapshots = store
            .list_objects::<snapshot::SnapshotRecord>(snapshot::SNAPSHOT)?
            .into_iter()
            .map(|(name, _, r)| (r.spec, format!("snapshot {name}")));
        Ok(sandboxes
            .chain(snapshots)
            .filter_map(|(spec, user)| match &spec.image {
                agentkernel_core::ImageRef::Registry { reference } => {
                    agentkernel_image::canonical_name(reference)
                        .ok()
                        .map(|c| (c, user))
                }
                _ => None,
            })
            .collect())
    }

    /// Registry images in the store.
    pub fn list_images(&self, all: bool) -> Vec<agentkernel_image::ImageSummary> {
        self.images.list(all)
    }

    /// Removes expired sandboxes and the leftovers of crashed ones. Returns what was removed.
    pub fn gc(&self, dry_run: bool) -> Result<Vec<String>> {
        let now = chrono::Utc::now();
        let mut removed = Vec::new();
        for rec in self.store()?.list()? {
            let expired = rec
                .expires_at
                .as_deref()
                .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
                .is_some_and(|e| e < now);
            if expired {
                if !dry_run {
                    self.remove(&rec.name)?;
                }
                removed.push(format!("sandbox {} (expired)", rec.name));
            }
        }
        removed.extend(self.collect_all_layers(dry_run));
        if !dry_run {
            // Every backend of this process that can run here (container engines that
            // answer): what crashes left, and what belongs to sandboxes no longer stored.
            removed.extend(self.collect_backend_garbage(backend::available()));
        }
        Ok(removed)
    }

    /// What crashes left in these backends (those that can run here), and what belongs to
    /// sandboxes no longer stored: `Backend::collect_garbage` with the running instances and
    /// the stored names. For `gc`, and for [`owners::sweep`] with the backends of dead owners.
    pub(crate) fn collect_backend_garbage(
        &self,
        kinds: impl Iterator<Item = agentkernel_core::BackendKind>,
    ) -> Vec<String> {
        let Ok(records) = self.store().and_then(|s| s.list()) else {
            return Vec::new();
        };
        let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
        let live: Vec<String> = records
            .into_iter()
            .filter(|r| self.is_running(r))
            .filter_map(|r| r.runtime.map(|rt| rt.instance))
            .collect();
        let mut removed = Vec::new();
        for kind in kinds {
            if let Ok(b) = backend::backend_for(kind, &self.home)
                && b.readiness().usable
            {
                removed.extend(b.collect_garbage(&live, &names));
            }
        }
        removed
    }
}

/// The spec request of a `run`: the command is required, and also chooses the image when
/// nothing else does.
pub(crate) fn run_request<'a>(
    req: &'a SpecRequest,
    exec: &ExecRequest,
) -> Result<std::borrow::Cow<'a, SpecRequest>> {
    if exec.argv.is_empty() {
        return Err(EngineError::NoCommand);
    }
    Ok(if req.command.is_empty() {
        std::borrow::Cow::Owned(SpecRequest {
            command: exec.argv.clone(),
            ..req.clone()
        })
    } else {
        std::borrow::Cow::Borrowed(req)
    })
}

/// A fresh name for a throwaway sandbox: `run-` and eight hex digits.
/// Whether a started sandbox needs [`Engine::connect`] before its first command: a network
/// (through the egress proxy), published ports or secret files.
pub(crate) fn needs_connecting(spec: &SandboxSpec) -> bool {
    spec.policy.network.is_networked() || !spec.ports.is_empty() || !spec.secret_files.is_empty()
}

pub fn throwaway_name() -> String {
    format!("run-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// The registry settings of `config` (`[images]`) under the environment's.
pub(crate) fn registry_settings(
    config: Option<&Config>,
) -> Result<agentkernel_image::RegistrySettings> {
    let section = config.map(|c| c.images.clone()).unwrap_or_default();
    Ok(agentkernel_image::RegistrySettings::new(
        section.mirrors.as_deref().unwrap_or_default(),
        section.insecure_registries.as_deref().unwrap_or_default(),
    )?)
}

/// Checks an exec request's own fields.
pub fn validate_exec(req: &ExecRequest) -> Result<()> {
    use agentkernel_core::CoreError::InvalidArgument;
    for arg in &req.argv {
        if arg.contains('\0') {
            return Err(InvalidArgument(format!("{arg:?} contains a NUL byte")).into());
        }
        // The kernel's limit on one argument is 128 KiB with its NUL: 32767 characters of up
        // to 4 bytes always fit.
        let n = arg.chars().count();
        if n > MAX_ARG_CHARS {
            return Err(InvalidArgument(format!(
                "one argument is {n} characters long: give at most {MAX_ARG_CHARS}, or pass the data in a file"
            ))
            .into());
        }
    }
    let total: usize = req.argv.iter().map(|a| a.len() + 1).sum::<usize>()
        + req
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    if total > MAX_ARGS_BYTES {
        return Err(InvalidArgument(format!(
            "the command and its environment take {total} bytes: give at most {MAX_ARGS_BYTES}, or pass the data in a file"
        ))
        .into());
    }
    if let Some(w) = &req.workdir {
        agentkernel_core::spec::validate_workdir(w)?;
    }
    for (k, v) in &req.env {
        agentkernel_core::spec::validate_env_var(k, v)?;
    }
    Ok(())
}

/// Refuses an empty command: one rule and one message for the CLI, HTTP and MCP.
pub fn require_command(argv: &[String]) -> Result<()> {
    if argv.is_empty() {
        return Err(EngineError::NoCommand);
    }
    Ok(())
}

/// Longest timeout a request may ask for (HTTP `timeout_ms`, the MCP tools).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A request's `timeout_ms` as a duration, `default` when it gives none: at least 1 ms and at
/// most [`MAX_TIMEOUT`]. One rule for every surface that takes milliseconds.
pub fn timeout_from_ms(timeout_ms: Option<u64>, default: Duration) -> Result<Duration> {
    use agentkernel_core::CoreError::InvalidArgument;
    match timeout_ms {
        None => Ok(default),
        Some(0) => Err(InvalidArgument("timeout_ms must be at least 1".into()).into()),
        Some(ms) if Duration::from_millis(ms) > MAX_TIMEOUT => Err(InvalidArgument(format!(
            "timeout_ms {ms} is more than the maximum of {} (24 hours): use a detached command for longer work",
            MAX_TIMEOUT.as_millis()
        ))
        .into()),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// Longest single argument, in characters.
pub const MAX_ARG_CHARS: usize = 32767;
/// Most bytes of arguments and environment together (the kernel allows 2 MiB or more).
pub const MAX_ARGS_BYTES: usize = 1024 * 1024;

/// `NAME:/path` → Some((NAME, /path)); a plain host path → None.
fn split_sandbox_path(arg: &str) -> Result<Option<(&str, &str)>> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return Ok(None);
    }
    match arg.split_once(':') {
        Some((name, path)) => {
            validate_name(name)?;
            if !path.starts_with('/') {
                return Err(EngineError::BadCopyArg(arg.to_string()));
            }
            Ok(Some((name, path)))
        }
        None => Ok(None),
    }
}

/// A sink that collects output (buffered surfaces).
pub fn collect_into<'a>(
    stdout: &'a mut Vec<u8>,
    stderr: &'a mut Vec<u8>,
) -> impl FnMut(ExecEvent) -> ControlFlow<()> + 'a {
    move |event| {
        match event {
            ExecEvent::Stdout(d) => stdout.extend_from_slice(&d),
            ExecEvent::Stderr(d) => stderr.extend_from_slice(&d),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}
