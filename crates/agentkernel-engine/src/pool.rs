//! Warm pools: throwaway sandboxes booted ahead of demand, so a `run` only has to exec.
//!
//! A pool is keyed by everything that is fixed when a sandbox boots (backend, image layers,
//! policy, working directory); a request whose resolved spec has the same key takes a warm
//! sandbox, runs its one command with its own environment, and hands the sandbox to be
//! destroyed. A warm sandbox is used for exactly one run and never returned (DESIGN principle
//! 5): nothing one run leaves behind — files, processes, memory — reaches another.
//!
//! Pools are made two ways: `prewarm` (kept until shutdown) and by use: a run that found no
//! warm sandbox asks for its key to be kept warm, and a pool unused for [`IDLE_EXPIRY`] is
//! drained. Every pool keeps up to `min_warm` sandboxes; all pools together never hold more
//! than `max_warm`. One filler thread boots (one at a time, so a burst of runs does not compete
//! with a burst of boots) and one retire thread tears used sandboxes down off the request path.
//!
//! The pool lives in a long-running multithreaded process (the daemon, `serve`): that process
//! must boot native sandboxes through the boot helper (`agentkernel_native::use_boot_helper`).

use crate::backend::{Backend, Controls, Persistence, Started};
use crate::error::{EngineError, Result};
use crate::resolve::{self, SpecRequest};
use crate::{Engine, RunOutcome};
use agentkernel_core::Sink;
use agentkernel_core::config::Config;
use agentkernel_core::{ExecRequest, SandboxSpec};
use agentkernel_image::Rootfs;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A pool made by use is drained after this long without a run.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(600);
/// After a failed boot, a pool waits this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// A warm sandbox older than this is replaced (its image may have been updated meanwhile).
const MAX_AGE: Duration = Duration::from_secs(3600);

/// How many sandboxes the pools keep started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolSettings {
    /// Per pool.
    pub min_warm: usize,
    /// Across all pools.
    pub max_warm: usize,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            min_warm: 3,
            max_warm: 5,
        }
    }
}

impl PoolSettings {
    /// `[daemon] min_warm` / `max_warm`, with the defaults (3 and 5) for what is not set.
    pub fn from_config(config: &Config) -> PoolSettings {
        let d = PoolSettings::default();
        let max_warm = config.daemon.max_warm.unwrap_or(d.max_warm);
        PoolSettings {
            min_warm: config.daemon.min_warm.unwrap_or(d.min_warm.min(max_warm)),
            max_warm,
        }
    }
}

/// Agents whose pools `daemon prewarm --mode` knows without a `[daemon.agents.MODE]` entry.
pub const KNOWN_MODES: [&str; 5] = ["native", "claude", "codex", "gemini", "opencode"];
/// The runtime of an agent's pool when its config entry does not name one.
pub const DEFAULT_RUNTIME: &str = "python";

/// The pool request of agent `mode` (`daemon prewarm --mode claude`), on top of `base`: the
/// image of `[daemon.agents.MODE] runtime` (default `python`) unless `base` names one, and the
/// entry's `min_warm` if it sets one.
pub fn mode_request(
    config: &Config,
    mode: &str,
    base: SpecRequest,
) -> Result<(SpecRequest, Option<usize>)> {
    let entry = config
        .daemon
        .agents
        .as_ref()
        .and_then(|agents| agents.get(mode));
    if entry.is_none() && !KNOWN_MODES.contains(&mode) {
        return Err(agentkernel_core::CoreError::UnknownMode {
            mode: mode.to_string(),
            known: KNOWN_MODES.join(", "),
        }
        .into());
    }
    let runtime = entry
        .and_then(|e| e.runtime.as_deref())
        .unwrap_or(DEFAULT_RUNTIME);
    let image = base
        .image
        .clone()
        .unwrap_or_else(|| agentkernel_core::detect::runtime_image(runtime));
    Ok((
        SpecRequest {
            image: Some(image),
            ..base
        },
        entry.and_then(|e| e.min_warm),
    ))
}

/// One pool as `daemon status` and `GET /daemon/status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub backend: String,
    pub image: String,
    pub profile: String,
    pub network: bool,
    /// Sandboxes booted and waiting.
    pub warm: usize,
    pub booting: usize,
    /// Runs in progress on sandboxes taken from this pool.
    pub in_use: usize,
    /// What the pool is kept at.
    pub target: usize,
    /// Made by `prewarm` (kept until shutdown) rather than by use.
    pub prewarmed: bool,
    pub runs_warm: u64,
    pub runs_cold: u64,
    /// The last boot failure, while the pool waits to retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolsStatus {
    pub min_warm: usize,
    pub max_warm: usize,
    pub warm: usize,
    pub in_use: usize,
    pub pools: Vec<PoolStatus>,
}

/// A booted sandbox waiting for its one run.
struct Warm {
    name: String,
    /// Owns the sandbox: dropping a `Warm` ends it (its lifeline closes).
    sandbox: Started,
    backend: agentkernel_core::BackendKind,
    booted: Instant,
    /// Its mark for a killed owner's successor (`owners`), removed after the sandbox is.
    _claim: Option<crate::owners::Claim>,
}

/// What the filler keeps warm for one key.
struct Pool {
    /// The request that resolves to this key (re-resolved at each boot).
    request: SpecRequest,
    label: PoolLabel,
    target: usize,
    prewarmed: bool,
    last_used: Instant,
    warm: VecDeque<Warm>,
    booting: usize,
    in_use: usize,
    runs_warm: u64,
    runs_cold: u64,
    failed: Option<(Instant, String)>,
}

#[derive(Clone)]
struct PoolLabel {
    backend: String,
    image: String,
    profile: String,
    network: bool,
}

struct Pools {
    by_key: HashMap<String, Pool>,
    /// Runs booting their own sandbox because their pool was empty. While there are any, the
    /// machine is busier than the pools can keep up with: the filler waits rather than add
    /// boots of its own to the contention (warm sandboxes are made in spare time).
    cold_running: usize,
    shutdown: bool,
}

struct Shared {
    home: PathBuf,
    settings: PoolSettings,
    pools: Mutex<Pools>,
    /// Signalled when the filler may have work: a pool changed, a sandbox was taken.
    changed: Condvar,
    retire: Mutex<Option<mpsc::Sender<Warm>>>,
}

/// The warm pools of one process.
pub struct WarmPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What a pool is keyed by: everything the backend fixes at boot. The environment, the command
/// and its working directory are chosen at exec and are not part of it.
fn pool_key(spec: &SandboxSpec, rootfs: &Rootfs) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        backend: &'a agentkernel_core::BackendKind,
        image: &'a agentkernel_core::ImageRef,
        layers: &'a [PathBuf],
        host_binds: &'a [PathBuf],
        policy: &'a agentkernel_core::Policy,
        workdir: &'a str,
    }
    serde_json::to_string(&Key {
        backend: &spec.backend,
        image: &spec.image,
        layers: &rootfs.lower_dirs,
        host_binds: &rootfs.host_binds,
        policy: &spec.policy,
        workdir: &spec.workdir,
    })
    .unwrap_or_default()
}

fn label_of(spec: &SandboxSpec) -> PoolLabel {
    PoolLabel {
        backend: spec.backend.to_string(),
        image: spec.image.display(),
        profile: spec.policy.profile.as_str().to_string(),
        network: spec.policy.network != agentkernel_core::NetworkMode::None,
    }
}

/// A warm sandbox's name: `warm-` and eight hex digits (also its hostname).
fn warm_name() -> String {
    format!("warm-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl WarmPool {
    /// Starts the filler and retire threads for the engine state under `home`.
    pub fn start(home: &Path, settings: PoolSettings) -> Result<WarmPool> {
        let (tx, rx) = mpsc::channel::<Warm>();
        let shared = Arc::new(Shared {
            home: home.to_path_buf(),
            settings,
            pools: Mutex::new(Pools {
                by_key: HashMap::new(),
                cold_running: 0,
                shutdown: false,
            }),
            changed: Condvar::new(),
            retire: Mutex::new(Some(tx)),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    run_in_background();
                    f()
                })
                .map_err(EngineError::io(format!("start the {name} thread")))
        };
        let filler = {
            let shared = shared.clone();
            spawn("pool-filler", Box::new(move || fill(&shared)))?
        };
        let retirer = {
            let home = home.to_path_buf();
            spawn(
                "pool-retire",
                Box::new(move || {
                    for warm in rx {
                        destroy(&home, warm);
                    }
                }),
            )?
        };
        Ok(WarmPool {
            shared,
            threads: Mutex::new(vec![filler, retirer]),
        })
    }

    pub fn settings(&self) -> PoolSettings {
        self.shared.settings
    }

    /// Keeps `count` sandboxes (default `min_warm`, at most `max_warm`) warm for `req` until
    /// shutdown. Resolves the request first, so a bad image or profile is an error here.
    pub fn prewarm(&self, req: &SpecRequest, count: Option<usize>) -> Result<PoolStatus> {
        let engine = Engine::open(&self.shared.home)?;
        let config = resolve::load_config(&self.shared.home, req)?;
        let (spec, rootfs, _) = engine.prepare(req, "warm-check", &config)?;
        let key = pool_key(&spec, &rootfs);
        let target = count
            .unwrap_or(self.shared.settings.min_warm)
            .min(self.shared.settings.max_warm);
        let mut pools = self.lock();
        let pool = pools
            .by_key
            .entry(key)
            .or_insert_with(|| new_pool(req, &spec, 0));
        pool.prewarmed = true;
        pool.target = target;
        pool.failed = None;
        let status = pool.status();
        drop(pools);
        self.shared.changed.notify_all();
        Ok(status)
    }

    /// `Engine::run` for a throwaway sandbox, from a warm sandbox when the pool for the
    /// request has one, else booted now (and the pool for the request is then kept warm).
    pub fn run(
        &self,
        req: &SpecRequest,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<RunOutcome> {
        let result = self.run_unaudited(req, exec, sink, controls);
        crate::audit::AuditLog::new(&self.shared.home).refusal("", Some(req.caller), result)
    }

    fn run_unaudited(
        &self,
        req: &SpecRequest,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<RunOutcome> {
        let req = crate::run_request(req, exec)?;
        let req = req.as_ref();
        let engine = Engine::open(&self.shared.home)?;
        let config = resolve::load_config(&self.shared.home, req)?;
        let name = crate::throwaway_name();
        let (spec, rootfs, backend) = engine.prepare(req, &name, &config)?;
        let key = pool_key(&spec, &rootfs);
        let Some(warm) = self.take(&key, req, &spec, backend.as_ref()) else {
            let _cold = ColdRun::begin(&self.shared);
            let status =
                engine.run_prepared(&spec, &rootfs, backend.as_ref(), exec, sink, controls)?;
            return Ok(RunOutcome {
                status,
                sandbox: name,
                kept: false,
                memory_limit_mb: spec.policy.limits.memory_mb,
                spec,
                image_digest: Some(rootfs.id),
            });
        };
        let mut spec = SandboxSpec {
            name: warm.name.clone(),
            ..spec
        };
        resolve::set_env(&mut spec.env, "HOSTNAME".to_string(), warm.name.clone());
        // A warm sandbox is connected to its proxy (a thread of this process) when it is
        // taken, for the one command it runs.
        let result = engine.exec_connected(
            &spec,
            backend.as_ref(),
            &warm.sandbox.runtime,
            exec,
            sink,
            controls,
        );
        self.retire(warm);
        if let Some(pool) = self.lock().by_key.get_mut(&key) {
            pool.in_use = pool.in_use.saturating_sub(1);
        }
        engine.audit.attempt(&spec.name, &exec.argv, &result, None);
        let status = result?;
        Ok(RunOutcome {
            status,
            sandbox: spec.name.clone(),
            kept: false,
            memory_limit_mb: spec.policy.limits.memory_mb,
            spec,
            image_digest: Some(rootfs.id),
        })
    }

    /// Takes a live warm sandbox for `key`, registering the pool when it is new.
    fn take(
        &self,
        key: &str,
        req: &SpecRequest,
        spec: &SandboxSpec,
        backend: &dyn Backend,
    ) -> Option<Warm> {
        let mut pools = self.lock();
        let min_warm = self.shared.settings.min_warm;
        let pool = pools
            .by_key
            .entry(key.to_string())
            .or_insert_with(|| new_pool(req, spec, min_warm));
        pool.last_used = Instant::now();
        let mut dead = Vec::new();
        let found = loop {
            match pool.warm.pop_front() {
                Some(w) if backend.is_running(&w.sandbox.runtime) => break Some(w),
                Some(w) => dead.push(w),
                None => break None,
            }
        };
        match found {
            Some(_) => {
                pool.runs_warm += 1;
                pool.in_use += 1;
            }
            None => pool.runs_cold += 1,
        }
        drop(pools);
        self.shared.changed.notify_all();
        for w in dead {
            self.retire(w);
        }
        found
    }

    fn retire(&self, warm: Warm) {
        let sender = self
            .shared
            .retire
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match sender {
            Some(tx) => {
                if let Err(mpsc::SendError(w)) = tx.send(warm) {
                    destroy(&self.shared.home, w);
                }
            }
            None => destroy(&self.shared.home, warm),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pools> {
        self.shared.lock()
    }

    pub fn status(&self) -> PoolsStatus {
        let pools = self.lock();
        let mut list: Vec<PoolStatus> = pools.by_key.values().map(Pool::status).collect();
        list.sort_by(|a, b| (&a.image, &a.profile).cmp(&(&b.image, &b.profile)));
        PoolsStatus {
            min_warm: self.shared.settings.min_warm,
            max_warm: self.shared.settings.max_warm,
            warm: list.iter().map(|p| p.warm).sum(),
            in_use: list.iter().map(|p| p.in_use).sum(),
            pools: list,
        }
    }

    /// Stops the threads and destroys every warm sandbox. Runs in progress finish on their own.
    pub fn shutdown(&self) {
        let drained: Vec<Warm> = {
            let mut pools = self.lock();
            pools.shutdown = true;
            pools
                .by_key
                .values_mut()
                .flat_map(|p| p.warm.drain(..))
                .collect()
        };
        self.shared.changed.notify_all();
        for w in drained {
            destroy(&self.shared.home, w);
        }
        // Closing the channel ends the retire thread once it has destroyed what it holds.
        self.shared
            .retire
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn new_pool(req: &SpecRequest, spec: &SandboxSpec, target: usize) -> Pool {
    Pool {
        request: SpecRequest {
            // Image detection already happened: keep the detected image, not the command. An
            // image from a config file is found there again (naming a host directory here
            // would be refused for a remote caller, who may not name one).
            image: req.image.clone().or_else(|| {
                matches!(
                    spec.image,
                    agentkernel_core::ImageRef::Registry { .. } | agentkernel_core::ImageRef::Host
                )
                .then(|| spec.image.display())
            }),
            command: Vec::new(),
            env: Vec::new(),
            ..req.clone()
        },
        label: label_of(spec),
        target,
        prewarmed: false,
        last_used: Instant::now(),
        warm: VecDeque::new(),
        booting: 0,
        in_use: 0,
        runs_warm: 0,
        runs_cold: 0,
        failed: None,
    }
}

impl Pool {
    fn status(&self) -> PoolStatus {
        PoolStatus {
            backend: self.label.backend.clone(),
            image: self.label.image.clone(),
            profile: self.label.profile.clone(),
            network: self.label.network,
            warm: self.warm.len(),
            booting: self.booting,
            in_use: self.in_use,
            target: self.target,
            prewarmed: self.prewarmed,
            runs_warm: self.runs_warm,
            runs_cold: self.runs_cold,
            last_error: self.failed.as_ref().map(|(_, e)| e.clone()),
        }
    }

    /// Whether the filler should boot one more for this pool now.
    fn wants_one(&self, now: Instant) -> bool {
        let waiting = self
            .failed
            .as_ref()
            .is_some_and(|(at, _)| now.duration_since(*at) < RETRY_AFTER);
        !waiting && self.warm.len() + self.booting < self.target
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pools> {
        // A panic while holding the lock leaves counters, not broken invariants: go on.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a run booting its own sandbox (`Pools::cold_running`) for as long as it lives.
struct ColdRun<'a>(&'a Shared);

impl<'a> ColdRun<'a> {
    fn begin(shared: &'a Shared) -> ColdRun<'a> {
        shared.lock().cold_running += 1;
        ColdRun(shared)
    }
}

impl Drop for ColdRun<'_> {
    fn drop(&mut self) {
        self.0.lock().cold_running -= 1;
        self.0.changed.notify_all();
    }
}

/// How much nicer than the process the pool's own threads run (and the boot helpers and inits
/// they start, which inherit it).
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority (Linux nice values are per thread). Booting
/// replacements and tearing used sandboxes down is work nobody waits for; on a machine with few
/// cores it otherwise competes with the run a client is waiting for (docs/benchmarks.md has the
/// measurement). Processes in a sandbox are not
/// affected: commands are started by the request's thread, and pasta is given the process's own
/// priority (`agentkernel_native::net`).
fn run_in_background() {
    let tid = rustix::thread::gettid();
    let base = rustix::process::getpriority_process(None).unwrap_or(0);
    let _ = rustix::process::setpriority_process(Some(tid), (base + BACKGROUND_NICE).min(19));
}

/// The filler thread: boots one sandbox at a time for the pool furthest below its target,
/// drains expired pools and replaces warm sandboxes that got old.
fn fill(shared: &Shared) {
    let mut pools = shared.lock();
    loop {
        if pools.shutdown {
            return;
        }
        let now = Instant::now();
        let mut stale = Vec::new();
        pools.by_key.retain(|_, p| {
            let idle = !p.prewarmed
                && p.in_use == 0
                && p.booting == 0
                && now.duration_since(p.last_used) > IDLE_EXPIRY;
            if idle {
                stale.extend(p.warm.drain(..));
            }
            !idle
        });
        for p in pools.by_key.values_mut() {
            while p
                .warm
                .front()
                .is_some_and(|w| now.duration_since(w.booted) > MAX_AGE)
            {
                stale.extend(p.warm.pop_front());
            }
        }
        if !stale.is_empty() {
            drop(pools);
            for w in stale {
                destroy(&shared.home, w);
            }
            pools = shared.lock();
            continue;
        }
        let total: usize = pools
            .by_key
            .values()
            .map(|p| p.warm.len() + p.booting)
            .sum();
        let next = if total < shared.settings.max_warm && pools.cold_running == 0 {
            pools
                .by_key
                .iter()
                .filter(|(_, p)| p.wants_one(now))
                .min_by_key(|(_, p)| p.warm.len() + p.booting)
                .map(|(k, p)| (k.clone(), p.request.clone()))
        } else {
            None
        };
        let Some((key, request)) = next else {
            let (guard, _) = shared
                .changed
                .wait_timeout(pools, Duration::from_secs(10))
                .unwrap_or_else(|e| e.into_inner());
            pools = guard;
            continue;
        };
        if let Some(p) = pools.by_key.get_mut(&key) {
            p.booting += 1;
        }
        drop(pools);
        let booted = boot(&shared.home, &request);
        pools = shared.lock();
        let shutting_down = pools.shutdown;
        match (pools.by_key.get_mut(&key), booted) {
            (Some(p), Ok((booted_key, warm))) if booted_key == key && !shutting_down => {
                p.booting -= 1;
                p.failed = None;
                p.warm.push_back(warm);
            }
            (p, Ok((_, warm))) => {
                // The pool went away, shutdown began, or the request now resolves differently
                // (the config or image changed): this sandbox serves nobody.
                if let Some(p) = p {
                    p.booting -= 1;
                }
                drop(pools);
                destroy(&shared.home, warm);
                pools = shared.lock();
            }
            (Some(p), Err(e)) => {
                p.booting -= 1;
                p.failed = Some((Instant::now(), e.to_string()));
            }
            (None, Err(_)) => {}
        }
    }
}

/// Boots one warm sandbox for `request`; returns the key it resolved to with it.
fn boot(home: &Path, request: &SpecRequest) -> Result<(String, Warm)> {
    let engine = Engine::open(home)?;
    let config = resolve::load_config(home, request)?;
    let name = warm_name();
    let (spec, rootfs, backend) = engine.prepare(request, &name, &config)?;
    let claim = crate::owners::claim(home, backend.as_ref(), &name);
    let started = backend.start(&spec, &rootfs, &name, Persistence::Ephemeral)?;
    Ok((
        pool_key(&spec, &rootfs),
        Warm {
            name,
            sandbox: started,
            backend: spec.backend,
            booted: Instant::now(),
            _claim: claim,
        },
    ))
}

/// Tears a warm sandbox down (used, dead or no longer wanted).
fn destroy(home: &Path, warm: Warm) {
    if let Ok(backend) = crate::backend::backend_for(warm.backend, home) {
        let _ = backend.stop(warm.sandbox);
    }
}
