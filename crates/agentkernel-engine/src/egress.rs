//! A networked sandbox's way out: its network namespace routed to a host-side egress proxy
//! (`agentkernel_net`), the proxy's policy and secrets, and where the proxy runs.
//!
//! - A throwaway sandbox (`run`) is served by a thread of the process that runs it, for as long
//!   as the command runs.
//! - A persistent sandbox is served by a small proxy process of its own, the agentkernel
//!   executable re-run as [`PROXY_ROLE`]: it gets the sandbox's network namespace as its stdin,
//!   routes it to listening sockets (`netns::attach`), reports `ready` on its stdout and serves
//!   until the sandbox's init exits or `stop` ends it. It forks once and exits at once, so the
//!   caller reaps it right away and it outlives the CLI that started it.
//!
//! The policy a persistent sandbox's proxy enforces is `sandboxes/NAME/egress.json` (0600, in
//! the private state directory; it holds bound secrets' values): the proxy looks at its
//! modification time for every new connection and DNS query, so `sandbox policy` and `PATCH
//! /sandboxes/NAME` apply to the next connection without a restart. Every decision is an
//! audit entry (`network_allowed` / `network_blocked`, and a refusal is also a
//! `policy_violation` with policy `network`).
//!
//! Published ports (`-P`) are served by the same thread or process: a host listener per port,
//! each connection joined to one made inside the sandbox's namespace
//! (`agentkernel_net::forward`). A persistent sandbox with ports and no network still gets a
//! proxy process, which then only forwards.

use crate::audit::{AuditEvent, AuditLog};
use crate::error::{EngineError, Result};
use agentkernel_core::egress::{PLACEHOLDER, SECRET_FILE_DIR, SecretBinding};
use agentkernel_core::ports::PublishedPort;
use agentkernel_core::{NetworkMode, SandboxSpec};
use agentkernel_net::proxy::{Context, Decision, Egress, Observer, Source};
use agentkernel_net::rules::{Mode, Rules};
use agentkernel_net::tls::{Binding, Ca, Interceptor};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The hidden role of the binary that serves one persistent sandbox's egress.
pub const PROXY_ROLE: &str = "__egress-proxy";

/// The policy file of a sandbox's proxy, in its directory.
pub const EGRESS_FILE: &str = "egress.json";
/// How the proxy process marks a failure that is the caller's conflict (a host port in use).
const CONFLICT: &str = "conflict: ";
/// Where a persistent sandbox's proxy records its pid and start time.
const PROXY_PID_FILE: &str = "egress.pid";
/// How long the caller waits for a proxy process to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(10);
/// How often a proxy process checks that its sandbox still runs.
const LIVENESS_POLL: Duration = Duration::from_millis(500);

/// Where the CA certificate the sandbox trusts is put inside it, alone and with the system's
/// roots (what SSL_CERT_FILE and friends point at).
pub const CA_CERT_PATH: &str = "/run/agentkernel/ca.pem";
pub const CA_BUNDLE_PATH: &str = "/run/agentkernel/ca-bundle.pem";
/// The usual system bundle of Debian, Ubuntu and Alpine images.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What one sandbox's proxy enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressConfig {
    pub mode: NetworkMode,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub block_private: bool,
    #[serde(default)]
    pub bindings: Vec<StoredBinding>,
    /// Published ports the process forwards into the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
}

/// A secret bound to a host, with its value (never written inside the sandbox).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredBinding {
    pub key: String,
    pub host: String,
    pub header: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
}

impl std::fmt::Debug for StoredBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredBinding")
            .field("key", &self.key)
            .field("host", &self.host)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl EgressConfig {
    /// The policy's rules with `bindings`. Bound hosts join the allowlist; a sandbox with
    /// secrets bound in full mode is narrowed to its bound hosts (plus any allow patterns),
    /// as the reference documents: "unauthorized hosts are blocked entirely".
    pub fn new(spec: &SandboxSpec, bindings: Vec<StoredBinding>) -> EgressConfig {
        let policy = &spec.policy;
        let mut mode = policy.network;
        let mut allow = policy.allow_hosts.clone();
        if !bindings.is_empty() {
            mode = NetworkMode::Allowlist;
            for b in &bindings {
                if !allow.contains(&b.host) {
                    allow.push(b.host.clone());
                }
            }
        }
        EgressConfig {
            mode,
            allow,
            deny: policy.deny_hosts.clone(),
            block_private: policy.block_private,
            bindings,
            ports: spec.ports.clone(),
        }
    }

    /// What the proxy enforces.
    pub fn egress(&self) -> Egress {
        Egress {
            rules: Rules {
                mode: if self.mode == NetworkMode::Allowlist {
                    Mode::Allowlist
                } else {
                    Mode::Full
                },
                allow: self.allow.clone(),
                deny: self.deny.clone(),
                block_private: self.block_private,
                refuse_host_addresses: true,
            },
            bindings: self
                .bindings
                .iter()
                .map(|b| Binding {
                    host: b.host.clone(),
                    header: b.header.clone(),
                    value: b.value.clone(),
                    placeholder: b.placeholder.clone(),
                })
                .collect(),
        }
    }

    pub fn read(path: &Path) -> Result<EgressConfig> {
        let text =
            std::fs::read(path).map_err(EngineError::io(format!("read {}", path.display())))?;
        serde_json::from_slice(&text).map_err(|e| EngineError::Io {
            context: format!("read {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Replaces the file atomically, readable by its owner only (it holds secrets).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| EngineError::Io {
            context: "encode the egress policy".into(),
            source: std::io::Error::other(e),
        })?;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(EngineError::io(format!("write {}", path.display())))
    }
}

/// The secrets of `spec` with their values: inline ones as given, the others from the vault.
/// A `--placeholder-secrets` file's token is swapped for the value only in requests to the
/// hosts its key is bound to.
pub fn resolve_bindings(
    spec: &SandboxSpec,
    lookup: &mut dyn FnMut(&str) -> Result<String>,
) -> Result<Vec<StoredBinding>> {
    let mut out = Vec::with_capacity(spec.secrets.len());
    for b in &spec.secrets {
        let value = match &b.value {
            Some(v) => v.clone(),
            None => lookup(&b.key)?,
        };
        let placeholder = (spec.placeholder_secrets && spec.secret_files.contains(&b.key))
            .then(|| placeholder_token(&spec.name, &b.key));
        let binding = Binding::from_secret(b, &value, placeholder.clone());
        out.push(StoredBinding {
            key: b.key.clone(),
            host: binding.host,
            header: binding.header,
            value: binding.value,
            placeholder,
        });
    }
    Ok(out)
}

/// The token a `--placeholder-secrets` file holds: names the key, unguessable elsewhere.
pub fn placeholder_token(sandbox: &str, key: &str) -> String {
    use sha2::Digest;
    let salt = uuid::Uuid::new_v4();
    let digest = sha2::Sha256::digest(format!("{sandbox}\0{key}\0{salt}").as_bytes());
    format!("{PLACEHOLDER}-{key}-{}", &hex::encode(digest)[..24])
}

/// The variables a sandbox with bound secrets starts with: each bound key holds the
/// placeholder, and the TLS libraries that read a CA bundle from the environment are pointed
/// at the one that includes the proxy's CA.
pub fn secret_env(secrets: &[SecretBinding]) -> Vec<(String, String)> {
    if secrets.is_empty() {
        return Vec::new();
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for b in secrets {
        if !env.iter().any(|(k, _)| k == &b.key) {
            env.push((b.key.clone(), PLACEHOLDER.to_string()));
        }
    }
    for var in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "PIP_CERT",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "DENO_CERT",
    ] {
        env.push((var.to_string(), CA_BUNDLE_PATH.to_string()));
    }
    env.push(("NODE_EXTRA_CA_CERTS".to_string(), CA_CERT_PATH.to_string()));
    env
}

/// The files a started sandbox gets before its first command: the proxy's CA (alone, and
/// appended to the image's system bundle, or the host's when the image has none) when
/// secrets are bound, and the `--secret-file` files.
pub fn sandbox_files(
    spec: &SandboxSpec,
    bindings: &[StoredBinding],
    ca_pem: Option<&str>,
    image_bundle: Option<Vec<u8>>,
    lookup: &mut dyn FnMut(&str) -> Result<String>,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    if let Some(ca) = ca_pem {
        let mut bundle = match image_bundle {
            Some(b) => b,
            None => std::fs::read(SYSTEM_BUNDLE).unwrap_or_default(),
        };
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(ca.as_bytes());
        files.push((PathBuf::from(CA_CERT_PATH), ca.as_bytes().to_vec()));
        files.push((PathBuf::from(SYSTEM_BUNDLE), bundle.clone()));
        files.push((PathBuf::from(CA_BUNDLE_PATH), bundle));
    }
    for key in &spec.secret_files {
        let content = match bindings.iter().find(|b| &b.key == key) {
            Some(b) if spec.placeholder_secrets => b.placeholder.clone().unwrap_or_default(),
            _ => match spec
                .secrets
                .iter()
                .find(|b| &b.key == key)
                .and_then(|b| b.value.clone())
            {
                Some(v) => v,
                None => lookup(key)?,
            },
        };
        files.push((Path::new(SECRET_FILE_DIR).join(key), content.into_bytes()));
    }
    Ok(files)
}

/// Asked by the proxy for every connection: the file's policy, re-read when it changed.
struct FileSource {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Arc<Egress>)>,
}

impl FileSource {
    fn new(path: PathBuf, first: &EgressConfig) -> FileSource {
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        FileSource {
            path,
            cached: Mutex::new((mtime, Arc::new(first.egress()))),
        }
    }
}

impl Source for FileSource {
    fn current(&self) -> Arc<Egress> {
        let mut cached = match self.cached.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime != cached.0
            && let Ok(config) = EgressConfig::read(&self.path)
        {
            *cached = (mtime, Arc::new(config.egress()));
        }
        cached.1.clone()
    }
}

/// A throwaway sandbox's policy, fixed for its one command.
struct FixedSource(Arc<Egress>);

impl Source for FixedSource {
    fn current(&self) -> Arc<Egress> {
        self.0.clone()
    }
}

/// Writes every decision to the audit log.
struct AuditObserver {
    audit: AuditLog,
    sandbox: String,
}

impl Observer for AuditObserver {
    fn decision(&self, d: &Decision) {
        let host = d
            .host
            .clone()
            .or_else(|| d.ip.map(|ip| ip.to_string()))
            .unwrap_or_default();
        if d.allowed {
            self.audit.record(AuditEvent::NetworkAllowed {
                sandbox: self.sandbox.clone(),
                host,
                port: d.port,
                protocol: d.protocol.to_string(),
                ip: d.ip.map(|ip| ip.to_string()),
            });
            return;
        }
        let reason = d.reason.clone().unwrap_or_default();
        self.audit.record(AuditEvent::NetworkBlocked {
            sandbox: self.sandbox.clone(),
            host: host.clone(),
            port: d.port,
            protocol: d.protocol.to_string(),
            reason: reason.clone(),
        });
        self.audit.record(AuditEvent::PolicyViolation {
            sandbox: self.sandbox.clone(),
            policy: "network".to_string(),
            details: format!("{}:{} ({}): {reason}", host, d.port, d.protocol),
            caller: None,
        });
    }
}

/// The proxy's context: policy source, audit, resolver and, with secrets bound, the
/// interceptor (the installation's CA, the host's roots for upstreams).
fn context(
    home: &Path,
    sandbox: &str,
    source: Arc<dyn Source>,
    with_secrets: bool,
) -> std::io::Result<Context> {
    let interceptor = if with_secrets {
        let ca = load_ca(home)?;
        let interceptor = Interceptor::with_system_roots(Arc::new(ca))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Some(Arc::new(interceptor))
    } else {
        None
    };
    Ok(Context {
        source,
        observer: Arc::new(AuditObserver {
            audit: AuditLog::new(home),
            sandbox: sandbox.to_string(),
        }),
        resolver: agentkernel_net::resolve::Resolver::from_env()?,
        interceptor,
    })
}

/// The installation's egress CA (`HOME/keys/ca.pem`, made on first use).
pub fn load_ca(home: &Path) -> std::io::Result<Ca> {
    Ca::load_or_create(&home.join("keys")).map_err(|e| std::io::Error::other(e.to_string()))
}

/// A proxy serving a throwaway sandbox from a thread of this process; dropping it ends the
/// proxy and every connection it carries.
pub struct ProxyThread {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Routes the namespace `netns` to a proxy thread of this process enforcing `config`.
pub fn serve_in_thread(
    home: &Path,
    sandbox: &str,
    netns: &std::fs::File,
    config: &EgressConfig,
) -> Result<ProxyThread> {
    use std::os::fd::AsFd;
    let attached = agentkernel_net::netns::attach(netns.as_fd()).map_err(EngineError::io(
        "route the sandbox's network to the egress proxy",
    ))?;
    let source: Arc<dyn Source> = Arc::new(FixedSource(Arc::new(config.egress())));
    let ctx = context(home, sandbox, source, !config.bindings.is_empty())
        .map_err(EngineError::io("start the egress proxy"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(EngineError::io("start the egress proxy's runtime"))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listeners = attached.listeners;
    let thread = std::thread::Builder::new()
        .name("egress-proxy".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = agentkernel_net::proxy::serve(listeners, Arc::new(ctx)) => {}
                    _ = rx => {}
                }
            });
        })
        .map_err(EngineError::io("start the egress proxy's thread"))?;
    Ok(ProxyThread {
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Binds the host side of `ports`, a port in use refused as a conflict that names it.
fn bind_ports(ports: &[PublishedPort]) -> Result<Vec<(PublishedPort, std::net::TcpListener)>> {
    agentkernel_net::forward::bind(ports)
        .map_err(|e| agentkernel_core::CoreError::Conflicting(e.to_string()).into())
}

/// Whether the host ports of `ports` can be bound now (`create`: a port taken would fail every
/// start). They are released again at once.
pub fn check_ports_free(ports: &[PublishedPort]) -> Result<()> {
    bind_ports(ports).map(drop)
}

/// Forwards the host ports of `ports` into the namespace `netns` from a thread of this
/// process (a throwaway sandbox's, for as long as its command runs). The ports are bound
/// before this returns: one in use is an error here.
pub fn forward_in_thread(netns: &std::fs::File, ports: &[PublishedPort]) -> Result<ProxyThread> {
    use std::os::fd::AsFd;
    let listeners = bind_ports(ports)?;
    agentkernel_net::forward::allow_low_ports(netns.as_fd(), ports).map_err(EngineError::io(
        "let the sandbox bind its published ports below 1024",
    ))?;
    let netns = std::os::fd::OwnedFd::from(
        netns
            .try_clone()
            .map_err(EngineError::io("keep the sandbox's network namespace"))?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(EngineError::io("start the port forwarder's runtime"))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = agentkernel_net::forward::serve(listeners, netns) => {}
                    _ = rx => {}
                }
            });
        })
        .map_err(EngineError::io("start the port forwarder's thread"))?;
    Ok(ProxyThread {
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// The pid and start time of a persistent sandbox's proxy process.
#[derive(Debug, Serialize, Deserialize)]
struct ProxyPid {
    pid: u32,
    start_time: u64,
}

/// Starts the proxy process of the persistent sandbox `name`, whose policy is already in
/// `dir/egress.json`; returns once it serves. `init` is the sandbox's init (pid, start time):
/// the proxy ends when it does.
pub fn spawn_proxy(
    exe: &Path,
    home: &Path,
    name: &str,
    dir: &Path,
    netns: std::fs::File,
    init: (u32, u64),
) -> Result<()> {
    let fail = |reason: String| EngineError::Io {
        context: format!("start the egress proxy of {name}"),
        source: std::io::Error::other(reason),
    };
    let (pid, start) = (init.0.to_string(), init.1.to_string());
    let line = crate::detached::spawn_role(
        exe,
        &[
            PROXY_ROLE.as_ref(),
            home.as_os_str(),
            name.as_ref(),
            dir.as_os_str(),
            pid.as_ref(),
            start.as_ref(),
        ],
        Stdio::from(netns),
        READY_WAIT,
    )
    .map_err(|e| fail(format!("{}: {e}", exe.display())))?;
    match line.as_slice() {
        b"ready" => Ok(()),
        other => {
            let message = String::from_utf8_lossy(other).into_owned();
            match message.strip_prefix(CONFLICT) {
                Some(why) => Err(agentkernel_core::CoreError::Conflicting(why.to_string()).into()),
                None => Err(fail(message)),
            }
        }
    }
}

/// Ends the proxy process of the sandbox whose directory is `dir`, if one runs, and removes its
/// policy file (it holds bound secrets' values, which a stopped sandbox does not need: `start`
/// writes it again).
pub fn stop_proxy(dir: &Path) {
    let path = dir.join(PROXY_PID_FILE);
    if let Ok(text) = std::fs::read(&path)
        && let Ok(p) = serde_json::from_slice::<ProxyPid>(&text)
        && agentkernel_sys::proc::is_alive(p.pid, p.start_time)
        && let Some(pid) = rustix::process::Pid::from_raw(p.pid as i32)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(dir.join(EGRESS_FILE));
}

/// The proxy role: `agentkernel __egress-proxy HOME NAME DIR INIT_PID INIT_START`, with the
/// sandbox's network namespace as stdin. Must run first thing in a fresh process of the
/// binary, before anything starts a thread: it forks.
pub fn proxy_main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    let [home, name, dir, pid, start] = args.as_slice() else {
        println!("usage: agentkernel {PROXY_ROLE} HOME NAME DIR INIT_PID INIT_START");
        return 2;
    };
    let (Some(name), Some(pid), Some(start)) = (
        name.to_str(),
        pid.to_str().and_then(|p| p.parse::<u32>().ok()),
        start.to_str().and_then(|s| s.parse::<u64>().ok()),
    ) else {
        println!("bad arguments");
        return 2;
    };
    // SAFETY: this process is a fresh exec of the binary and has started no thread (roles are
    // dispatched before anything else in main), so the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => {
            println!("fork: {}", std::io::Error::last_os_error());
            1
        }
        0 => serve_sandbox(Path::new(home), name, Path::new(dir), (pid, start)),
        _ => 0,
    }
}

fn serve_sandbox(home: &Path, name: &str, dir: &Path, init: (u32, u64)) -> i32 {
    let fail = |message: String| {
        println!("{message}");
        1
    };
    let netns = match rustix::io::dup(rustix::stdio::stdin()) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return fail(format!("no network namespace on stdin: {e}")),
    };
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    let path = dir.join(EGRESS_FILE);
    let config = match EgressConfig::read(&path) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    use std::os::fd::AsFd;
    // Ports first, as a throwaway sandbox's: a host port in use is the caller's to fix.
    let forwards = if config.ports.is_empty() {
        None
    } else {
        let listeners = match agentkernel_net::forward::bind(&config.ports) {
            Ok(l) => l,
            Err(e) => return fail(format!("{CONFLICT}{e}")),
        };
        if let Err(e) = agentkernel_net::forward::allow_low_ports(netns.as_fd(), &config.ports) {
            return fail(format!(
                "let the sandbox bind its published ports below 1024: {e}"
            ));
        }
        match netns.try_clone() {
            Ok(ns) => Some((listeners, std::os::fd::OwnedFd::from(ns))),
            Err(e) => return fail(format!("keep the sandbox's network namespace: {e}")),
        }
    };
    // A sandbox with ports and no network is only forwarded to.
    let egress = if config.mode.is_networked() {
        let attached = match agentkernel_net::netns::attach(netns.as_fd()) {
            Ok(a) => a,
            Err(e) => return fail(format!("route the sandbox's network to the proxy: {e}")),
        };
        let source: Arc<dyn Source> = Arc::new(FileSource::new(path, &config));
        // Secrets may be bound later only with a restart, so the interceptor is made when the
        // sandbox starts with some.
        let ctx = match context(home, name, source, !config.bindings.is_empty()) {
            Ok(c) => c,
            Err(e) => return fail(format!("start the egress proxy: {e}")),
        };
        Some((attached.listeners, ctx))
    } else {
        None
    };
    drop(netns);
    let me = std::process::id();
    let record = ProxyPid {
        pid: me,
        start_time: agentkernel_sys::proc::start_time(me).unwrap_or_default(),
    };
    let pid_path = dir.join(PROXY_PID_FILE);
    if let Err(e) = serde_json::to_vec(&record)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&pid_path, json))
    {
        return fail(format!("write {}: {e}", pid_path.display()));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("start the proxy's runtime: {e}")),
    };
    println!("ready");
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
    runtime.block_on(async move {
        let ended = async {
            while agentkernel_sys::proc::is_alive(init.0, init.1) {
                tokio::time::sleep(LIVENESS_POLL).await;
            }
        };
        let proxy = async {
            match egress {
                Some((listeners, ctx)) => {
                    agentkernel_net::proxy::serve(listeners, Arc::new(ctx)).await
                }
                None => std::future::pending().await,
            }
        };
        let forward = async {
            match forwards {
                Some((listeners, netns)) => {
                    let _ = agentkernel_net::forward::serve(listeners, netns).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = proxy => {}
            _ = forward => {}
            _ = ended => {}
        }
    });
    let _ = std::fs::remove_file(&pid_path);
    0
}

/// A change of a sandbox's network policy (`sandbox policy NAME --allow H --deny H`, the
/// `network` field of `PATCH /sandboxes/NAME`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NetworkChange {
    /// Hosts to let through: taken off the deny list and, in allowlist mode, added to the
    /// allowlist (full mode lets them through already).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Hosts to refuse: added to the deny list and taken off the allowlist.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl NetworkChange {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Applies the change to `policy`; refused for a sandbox without network (one cannot be
    /// added to a running namespace) and for malformed patterns.
    pub fn apply(&self, policy: &mut agentkernel_core::Policy) -> Result<()> {
        use agentkernel_core::CoreError;
        if !policy.network.is_networked() {
            return Err(CoreError::Conflicting(
                "the sandbox has no network, so there is no policy to change: recreate it without --no-network (or with a profile that has network) and --allow-host".to_string(),
            )
            .into());
        }
        const MAX_PATTERNS: usize = 1024;
        for p in self.allow.iter().chain(&self.deny) {
            agentkernel_core::egress::validate_host_pattern(p)
                .map_err(CoreError::InvalidHostPattern)?;
        }
        for host in &self.allow {
            let host = host.to_ascii_lowercase();
            policy.deny_hosts.retain(|d| d != &host);
            if policy.network == NetworkMode::Allowlist && !policy.allow_hosts.contains(&host) {
                policy.allow_hosts.push(host);
            }
        }
        for host in &self.deny {
            let host = host.to_ascii_lowercase();
            policy.allow_hosts.retain(|a| a != &host);
            if !policy.deny_hosts.contains(&host) {
                policy.deny_hosts.push(host);
            }
        }
        if policy.allow_hosts.len() + policy.deny_hosts.len() > MAX_PATTERNS {
            return Err(CoreError::Conflicting(format!(
                "a sandbox's policy holds at most {MAX_PATTERNS} host patterns: use wildcards (*.example.com)"
            ))
            .into());
        }
        Ok(())
    }
}

impl crate::Engine {
    /// Changes a sandbox's network policy: recorded in its spec, and, while it runs, in its
    /// proxy's policy file, which the proxy reads before the next connection.
    pub fn set_network_policy(
        &self,
        name: &str,
        change: &NetworkChange,
    ) -> Result<crate::SandboxInfo> {
        let _lock = crate::lock::SandboxLock::acquire(&self.home, name)?;
        let mut rec = self.get_record(name)?;
        change.apply(&mut rec.spec.policy)?;
        self.store()?.set_spec(name, &rec.spec)?;
        let dir = self.sandbox_dir(name);
        let path = dir.join(EGRESS_FILE);
        if self.is_running(&rec)
            && let Ok(current) = EgressConfig::read(&path)
        {
            EgressConfig::new(&rec.spec, current.bindings).write(&path)?;
        }
        self.audit.record(AuditEvent::NetworkPolicyChanged {
            sandbox: name.to_string(),
            allow: rec.spec.policy.allow_hosts.clone(),
            deny: rec.spec.policy.deny_hosts.clone(),
        });
        Ok(self.info(&rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkernel_core::{BackendKind, ImageRef, Policy, Profile};

    fn spec(policy: Policy, secrets: &[&str]) -> SandboxSpec {
        SandboxSpec {
            name: "t".into(),
            image: ImageRef::Host,
            backend: BackendKind::Native,
            policy,
            env: Vec::new(),
            workdir: "/".into(),
            labels: Default::default(),
            description: None,
            secrets: secrets
                .iter()
                .map(|s| s.parse().expect("binding"))
                .collect(),
            secret_files: Vec::new(),
            placeholder_secrets: false,
            layers: Vec::new(),
            ports: Vec::new(),
            project: None,
        }
    }

    #[test]
    fn bound_secrets_narrow_full_network_to_their_hosts() {
        let s = spec(
            Policy::for_profile(Profile::Moderate),
            &["K=v:api.example.com"],
        );
        let bindings = resolve_bindings(&s, &mut |_| panic!("no vault lookup for inline values"))
            .expect("bindings");
        assert_eq!(bindings[0].header, "authorization");
        assert_eq!(bindings[0].value, "Bearer v");
        let config = EgressConfig::new(&s, bindings);
        assert_eq!(config.mode, NetworkMode::Allowlist);
        assert_eq!(config.allow, vec!["api.example.com".to_string()]);
        // Without secrets, full stays full.
        let config = EgressConfig::new(&spec(Policy::for_profile(Profile::Moderate), &[]), vec![]);
        assert_eq!(config.mode, NetworkMode::Full);
    }

    #[test]
    fn vault_keys_are_looked_up_and_their_errors_returned() {
        let s = spec(
            Policy::for_profile(Profile::Moderate),
            &["K:api.example.com:x-key"],
        );
        let b = resolve_bindings(&s, &mut |k| Ok(format!("{k}-value"))).expect("bindings");
        assert_eq!(
            (b[0].header.as_str(), b[0].value.as_str()),
            ("x-key", "K-value")
        );
        let e = resolve_bindings(&s, &mut |_| {
            Err(agentkernel_core::CoreError::InvalidArgument("nope".into()).into())
        });
        assert!(e.is_err());
    }

    #[test]
    fn policy_changes_move_hosts_between_the_lists() {
        let mut p = Policy::for_profile(Profile::Moderate);
        p.network = NetworkMode::Allowlist;
        p.allow_hosts = vec!["a.example".into()];
        let change = NetworkChange {
            allow: vec!["B.example".into()],
            deny: vec!["a.example".into()],
        };
        change.apply(&mut p).expect("apply");
        assert_eq!(p.allow_hosts, vec!["b.example".to_string()]);
        assert_eq!(p.deny_hosts, vec!["a.example".to_string()]);
        NetworkChange {
            allow: vec!["a.example".into()],
            deny: vec![],
        }
        .apply(&mut p)
        .expect("apply");
        assert!(p.deny_hosts.is_empty());
        let bad = NetworkChange {
            allow: vec!["a b".into()],
            deny: vec![],
        };
        assert!(bad.apply(&mut p.clone()).is_err());
        let mut none = Policy::for_profile(Profile::Restrictive);
        assert!(
            change.apply(&mut none).is_err(),
            "no network, no policy to change"
        );
    }
}
