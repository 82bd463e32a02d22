//! Snapshots, restore and fork (DESIGN: "Snapshots, fork, templates").
//!
//! A snapshot is what a sandbox wrote, captured by its backend as a read-only layer
//! (`Backend::capture`), plus its spec. Restoring one, or forking a sandbox, makes new sandboxes
//! whose spec stacks those layers on the image under each one's own writable layer: one capture
//! serves any number of them, and none sees what another writes.
//!
//! Crash safety: every capture is announced first as a pending object (`PENDING`, named by the
//! capture's id, with the capturing process) and the records that use its layers are written
//! afterwards; the pending object goes last. A crash at any point leaves either a pending
//! object, whose layer `gc` removes once its process is gone, or records that name complete
//! layers. A layer is removed only when no sandbox, snapshot or capture in progress names it.

use crate::audit::AuditEvent;
use crate::error::{EngineError, Result};
use crate::resolve::Caller;
use crate::{Engine, SandboxInfo, lock};
use agentkernel_core::{CoreError, SandboxSpec, validate_name};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The store kind of snapshots.
pub(crate) const SNAPSHOT: &str = "snapshot";
/// The store kind of captures in progress.
const PENDING: &str = "capture";
/// How long a pending capture is left alone by `gc`: a capture of 100 MB takes about a
/// second, so an older one is a crash's leftover.
const PENDING_GRACE: Duration = Duration::from_secs(600);
/// The most sandboxes one fork makes.
pub const MAX_FORK: usize = 1000;
/// The longest prefix of forked names: room for `-1000`.
pub const MAX_FORK_PREFIX: usize = agentkernel_core::name::MAX_NAME_LEN - 5;

/// Who made a snapshot: the user (`snapshot take`), a session's save, or a template's setup
/// (hidden from `snapshot list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    #[default]
    User,
    Session,
    Template,
}

/// A snapshot as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    /// The sandbox it was taken of.
    pub sandbox: String,
    #[serde(default)]
    pub kind: SnapshotKind,
    /// The sandbox's spec, with `layers` the captured stack.
    pub spec: SandboxSpec,
    /// What the new layer costs on disk.
    pub bytes: u64,
    /// How long the sandbox's processes were frozen, in milliseconds.
    pub frozen_ms: f64,
}

/// A capture in progress, and the process making it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingCapture {
    sandbox: String,
    backend: String,
    pid: u32,
    start_time: u64,
    boot_id: String,
}

impl PendingCapture {
    /// Whether the process making it may still finish it: alive (same boot, same start time)
    /// and within the grace period.
    fn in_progress(&self, age: Duration) -> bool {
        age < PENDING_GRACE
            && self.boot_id == agentkernel_sys::proc::boot_id()
            && agentkernel_sys::proc::is_alive(self.pid, self.start_time)
    }
}

/// A snapshot as listed (`SnapshotMeta` of the HTTP contract, plus what our CLI shows).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotInfo {
    pub name: String,
    pub sandbox: String,
    /// The top captured layer: a container engine's image tag, the native layer's id.
    pub image_tag: String,
    pub backend: String,
    /// The image the sandbox was made from.
    pub base_image: Option<String>,
    pub vcpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub created_at: String,
    pub kind: SnapshotKind,
    pub profile: String,
    /// Names only: values stay in the store.
    pub env: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub size_bytes: u64,
    pub frozen_ms: f64,
    /// Sandboxes that start from it (forks, restores), which keep its layers alive.
    pub used_by: Vec<String>,
}

/// What a capture made.
pub(crate) struct Capture {
    pub id: String,
    pub captured: agentkernel_core::backend::Captured,
}

impl Engine {
    /// Captures a sandbox, running or stopped, as a pending capture; the caller writes the
    /// records that use it, then calls `finish_capture`. Needs the sandbox's lock held.
    pub(crate) fn capture(&self, rec: &crate::store::SandboxRecord) -> Result<Capture> {
        let backend = self.backend(&rec.spec)?;
        self.settle_captures_of(&rec.name)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let pid = std::process::id();
        let pending = PendingCapture {
            sandbox: rec.name.clone(),
            backend: rec.spec.backend.to_string(),
            pid,
            start_time: agentkernel_sys::proc::start_time(pid).unwrap_or_default(),
            boot_id: agentkernel_sys::proc::boot_id(),
        };
        self.store()?.insert_object(PENDING, &id, &pending, || {
            EngineError::NameTaken(id.clone())
        })?;
        let runtime = rec.runtime.as_ref().filter(|_| self.is_running(rec));
        let dir = self.sandbox_dir(&rec.name);
        match backend.capture(&rec.spec, &dir, runtime, &id) {
            Ok(captured) => {
                for layer in &captured.layers {
                    agentkernel_core::spec::validate_layer(layer)?;
                }
                Ok(Capture { id, captured })
            }
            Err(e) => {
                let _ = self.store()?.delete_object(PENDING, &id);
                Err(e.into())
            }
        }
    }

    /// Ends a capture whose records are written (or which failed: its layers then have no user
    /// and go with the next `gc`, or at once when `release` is set).
    pub(crate) fn finish_capture(&self, capture: &Capture, backend: &SandboxSpec, release: bool) {
        if let Ok(store) = self.store() {
            let _ = store.delete_object(PENDING, &capture.id);
        }
        if release {
            self.release_layers(backend);
        }
    }

    /// Takes a snapshot of sandbox `sandbox`, running or stopped, without stopping it.
    pub fn take_snapshot(
        &self,
        sandbox: &str,
        name: Option<&str>,
        kind: SnapshotKind,
    ) -> Result<SnapshotInfo> {
        let _lock = lock::SandboxLock::acquire(&self.home, sandbox)?;
        let rec = self.get_record(sandbox)?;
        let name = match name {
            Some(n) => {
                validate_name(n)?;
                if self
                    .store()?
                    .get_object::<SnapshotRecord>(SNAPSHOT, n)?
                    .is_some()
                {
                    return Err(EngineError::SnapshotNameTaken(n.to_string()));
                }
                n.to_string()
            }
            None => self.fresh_snapshot_name(sandbox)?,
        };
        let capture = self.capture(&rec)?;
        let mut spec = rec.spec.clone();
        spec.layers = capture.captured.layers.clone();
        let record = SnapshotRecord {
            sandbox: sandbox.to_string(),
            kind,
            spec,
            bytes: capture.captured.bytes,
            frozen_ms: capture.captured.frozen.as_secs_f64() * 1000.0,
        };
        let stored = self.store()?.insert_object(SNAPSHOT, &name, &record, || {
            EngineError::SnapshotNameTaken(name.clone())
        });
        self.finish_capture(&capture, &rec.spec, stored.is_err());
        stored?;
        self.audit.record(AuditEvent::SnapshotTaken {
            sandbox: sandbox.to_string(),
            snapshot: name.clone(),
        });
        self.get_snapshot(&name)
    }

    /// `SANDBOX-YYYYMMDD-HHMMSS`, with a counter when that is taken, within the name length.
    fn fresh_snapshot_name(&self, sandbox: &str) -> Result<String> {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
        let base: String = sandbox
            .chars()
            .take(agentkernel_core::name::MAX_NAME_LEN - stamp.len() - 5)
            .collect();
        let store = self.store()?;
        for n in 1..1000 {
            let candidate = if n == 1 {
                format!("{base}-{stamp}")
            } else {
                format!("{base}-{stamp}-{n}")
            };
            if store
                .get_object::<SnapshotRecord>(SNAPSHOT, &candidate)?
                .is_none()
            {
                return Ok(candidate);
            }
        }
        Err(EngineError::SnapshotNameTaken(format!("{base}-{stamp}")))
    }

    fn snapshot_record(&self, name: &str) -> Result<(String, SnapshotRecord)> {
        validate_name(name).map_err(|_| EngineError::SnapshotNotFound(name.to_string()))?;
        self.store()?
            .list_objects::<SnapshotRecord>(SNAPSHOT)?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, created_at, r)| (created_at, r))
            .ok_or_else(|| EngineError::SnapshotNotFound(name.to_string()))
    }

    fn snapshot_info(
        &self,
        name: &str,
        created_at: &str,
        rec: &SnapshotRecord,
        users: &[(String, Vec<String>)],
    ) -> SnapshotInfo {
        let spec = &rec.spec;
        SnapshotInfo {
            name: name.to_string(),
            sandbox: rec.sandbox.clone(),
            image_tag: spec.layers.first().cloned().unwrap_or_default(),
            backend: spec.backend.to_string(),
            base_image: Some(spec.image.display()),
            vcpus: Some(spec.policy.limits.vcpus),
            memory_mb: Some(spec.policy.limits.memory_mb),
            created_at: created_at.to_string(),
            kind: rec.kind,
            profile: spec.policy.profile.to_string(),
            env: spec.env.iter().map(|(k, _)| k.clone()).collect(),
            labels: spec.labels.clone(),
            size_bytes: rec.bytes,
            frozen_ms: rec.frozen_ms,
            used_by: users
                .iter()
                .filter(|(_, layers)| starts_with_layers(layers, &spec.layers))
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }

    /// The sandboxes' layer stacks, for `used_by`.
    fn layer_users(&self) -> Result<Vec<(String, Vec<String>)>> {
        Ok(self
            .store()?
            .list()?
            .into_iter()
            .filter(|r| !r.spec.layers.is_empty())
            .map(|r| (r.name, r.spec.layers))
            .collect())
    }

    /// Every snapshot users made (sessions' saves included, template caches not), oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let users = self.layer_users()?;
        Ok(self
            .store()?
            .list_objects::<SnapshotRecord>(SNAPSHOT)?
            .into_iter()
            .filter(|(_, _, r)| r.kind != SnapshotKind::Template)
            .map(|(name, created_at, r)| self.snapshot_info(&name, &created_at, &r, &users))
            .collect())
    }

    /// The spec a snapshot restores.
    pub(crate) fn snapshot_spec(&self, name: &str) -> Result<SandboxSpec> {
        Ok(self.snapshot_record(name)?.1.spec)
    }

    pub fn get_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        let (created_at, rec) = self.snapshot_record(name)?;
        Ok(self.snapshot_info(name, &created_at, &rec, &self.layer_users()?))
    }

    /// Deletes a snapshot. One that a sandbox starts from, or that a session keeps, is refused
    /// unless `force`; forced, its layers stay until their last user is removed.
    pub fn delete_snapshot(&self, name: &str, force: bool) -> Result<()> {
        let info = self.get_snapshot(name)?;
        let (_, rec) = self.snapshot_record(name)?;
        let mut users: Vec<String> = info
            .used_by
            .iter()
            .map(|s| format!("sandbox {s}"))
            .collect();
        users.extend(
            self.sessions_using(name)?
                .into_iter()
                .map(|s| format!("session {s}")),
        );
        if !users.is_empty() && !force {
            return Err(EngineError::SnapshotInUse {
                name: name.to_string(),
                users: users.join(", "),
            });
        }
        self.store()?.delete_object(SNAPSHOT, name)?;
        self.release_layers(&rec.spec);
        self.audit.record(AuditEvent::SnapshotDeleted {
            snapshot: name.to_string(),
            sandbox: rec.sandbox.clone(),
        });
        Ok(())
    }

    /// Makes sandbox `as_name` (default `SANDBOX-restored`) from a snapshot and starts it. It
    /// restores on the backend that took the snapshot; nothing is left if it fails.
    pub fn restore_snapshot(
        &self,
        name: &str,
        as_name: Option<&str>,
        caller: Caller,
    ) -> Result<SandboxInfo> {
        let (_, rec) = self.snapshot_record(name)?;
        self.check_room(caller, 1)?;
        let target = match as_name {
            Some(n) => n.to_string(),
            None => {
                let base: String = rec
                    .sandbox
                    .chars()
                    .take(agentkernel_core::name::MAX_NAME_LEN - 9)
                    .collect();
                format!("{base}-restored")
            }
        };
        validate_name(&target)?;
        let info = self.create_from(&rec.spec, &target, &[])?;
        if let Err(e) = self.start(&target) {
            let _ = self.remove(&target);
            return Err(e);
        }
        self.audit.record(AuditEvent::SnapshotRestored {
            snapshot: name.to_string(),
            sandbox: target.clone(),
        });
        Ok(SandboxInfo {
            status: "running".to_string(),
            ..info
        })
    }

    /// Refuses a remote or MCP caller's request for `adding` more sandboxes beyond the
    /// operator's `[server] max_sandboxes`.
    fn check_room(&self, caller: Caller, adding: usize) -> Result<()> {
        if caller == Caller::Local {
            return Ok(());
        }
        let config = crate::resolve::user_config(&self.home)?;
        let most = config
            .server
            .max_sandboxes
            .unwrap_or(crate::DEFAULT_MAX_SANDBOXES);
        let count = self.store()?.list()?.len();
        if count + adding > most {
            return Err(EngineError::LimitReached(format!(
                "this server keeps {count} sandboxes and its limit is {most}: {adding} more would pass it; remove some (DELETE /sandboxes/NAME), or have the operator raise [server] max_sandboxes"
            )));
        }
        Ok(())
    }

    /// Inserts a new stopped sandbox `name` with `spec` (its layers included), labels added.
    pub(crate) fn create_from(
        &self,
        spec: &SandboxSpec,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<SandboxInfo> {
        let mut spec = spec.clone();
        spec.name = name.to_string();
        for (k, v) in labels {
            spec.labels.insert(k.to_string(), v.to_string());
        }
        let rec = crate::store::SandboxRecord {
            name: name.to_string(),
            uuid: uuid::Uuid::new_v4().to_string(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            expires_at: None,
            runtime: None,
            spec,
        };
        let _lock = lock::SandboxLock::acquire(&self.home, name)?;
        self.store()?.insert(&rec)?;
        self.audit.record(AuditEvent::SandboxCreated {
            name: name.to_string(),
            image: rec.spec.image.display(),
            backend: rec.spec.backend.to_string(),
        });
        Ok(self.info(&rec))
    }

    /// `count` new sandboxes `PREFIX-1` … `PREFIX-count` (default prefix `NAME-fork`), each
    /// starting with `name`'s files and independent of it and of each other; started when
    /// `name` runs. One capture serves them all. All or nothing: if one cannot be made, none is
    /// left.
    pub fn fork(
        &self,
        name: &str,
        count: usize,
        prefix: Option<&str>,
        caller: Caller,
    ) -> Result<Vec<SandboxInfo>> {
        if count == 0 || count > MAX_FORK {
            return Err(CoreError::InvalidArgument(format!(
                "--count {count}: give 1 to {MAX_FORK} copies"
            ))
            .into());
        }
        self.check_room(caller, count)?;
        if let Some(p) = prefix
            && p.len() > MAX_FORK_PREFIX
        {
            return Err(CoreError::InvalidArgument(format!(
                "--name-prefix {p:?} is {} characters: use at most {MAX_FORK_PREFIX}, leaving room for the copies' numbers",
                p.len()
            ))
            .into());
        }
        // The default prefix gives up the end of a long source name so the copies' names fit.
        let prefix = prefix.map_or_else(
            || {
                let room =
                    agentkernel_core::name::MAX_NAME_LEN - "-fork-".len() - count.to_string().len();
                let kept: String = name.chars().take(room).collect();
                format!("{}-fork", kept.trim_end_matches(['-', '.', '_']))
            },
            str::to_string,
        );
        let names: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i}")).collect();
        for n in &names {
            validate_name(n).map_err(|_| {
                CoreError::InvalidArgument(format!(
                    "--name-prefix {prefix:?} makes the name {n:?}, which is not a valid sandbox name: use a shorter prefix of letters, digits, '_', '.' and '-'"
                ))
            })?;
        }
        let taken: Vec<&String> = {
            let existing = self.store()?.list()?;
            names
                .iter()
                .filter(|n| existing.iter().any(|r| &r.name == *n))
                .collect()
        };
        if let Some(n) = taken.first() {
            return Err(EngineError::NameTaken(n.to_string()));
        }
        let (capture, source, running) = {
            let _lock = lock::SandboxLock::acquire(&self.home, name)?;
            let rec = self.get_record(name)?;
            let running = self.is_running(&rec);
            (self.capture(&rec)?, rec, running)
        };
        let mut spec = source.spec.clone();
        spec.layers = capture.captured.layers.clone();
        let made = self.make_forks(&spec, &names, name, running);
        self.finish_capture(&capture, &source.spec, made.is_err());
        let made = made?;
        self.audit.record(AuditEvent::SandboxForked {
            sandbox: name.to_string(),
            copies: names.clone(),
        });
        Ok(made)
    }

    fn make_forks(
        &self,
        spec: &SandboxSpec,
        names: &[String],
        source: &str,
        start: bool,
    ) -> Result<Vec<SandboxInfo>> {
        let mut made = Vec::with_capacity(names.len());
        let mut result = Ok(());
        for n in names {
            match self.create_from(spec, n, &[("agentkernel.forked-from", source)]) {
                Ok(info) => made.push(info),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() && start {
            result = self.start_many(names);
        }
        if let Err(e) = result {
            for info in &made {
                let _ = self.remove(&info.name);
            }
            return Err(e);
        }
        if start {
            for info in &mut made {
                info.status = "running".to_string();
            }
        }
        Ok(made)
    }

    /// Starts sandboxes on as many threads as there are cores (each with its own engine: the
    /// store connection is per engine); the first failure is returned.
    fn start_many(&self, names: &[String]) -> Result<()> {
        // A start spends much of its time waiting (the boot helper's exec, the kernel's RCU
        // grace period on the first cgroup attach), so more starts than cores overlap.
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .saturating_mul(4)
            .clamp(1, 16);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let home = self.home.clone();
        let exe = self.supervisor_exe.clone();
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers.min(names.len()))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        let mut engine = Engine::open(&home)?;
                        if let Some(exe) = &exe {
                            engine = engine.with_supervisor_exe(exe.clone());
                        }
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(n) = names.get(i) else {
                                return Ok(());
                            };
                            engine.start(n)?;
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EngineError::io("start forked sandboxes")(
                            std::io::Error::other("a starting thread panicked"),
                        ))
                    })
                })
                .collect()
        });
        results.into_iter().collect()
    }

    /// Removes the layers of `spec`'s backend that nothing names any more (no sandbox, no
    /// snapshot, no capture in progress). Best effort: what fails now goes with a later `gc`.
    pub(crate) fn release_layers(&self, spec: &SandboxSpec) {
        if let Ok(backend) = crate::backend::backend_for(spec.backend, &self.home) {
            let _ = self.collect_layers(backend.as_ref(), false);
        }
    }

    /// The layers of `backend` that nothing names, removed unless `dry_run`.
    pub(crate) fn collect_layers(
        &self,
        backend: &dyn crate::backend::Backend,
        dry_run: bool,
    ) -> Result<Vec<String>> {
        let store = self.store()?;
        let mut named: std::collections::HashSet<String> = store
            .list()?
            .into_iter()
            .flat_map(|r| r.spec.layers)
            .collect();
        // A sandbox record that does not verify may name layers we cannot read: keep every
        // layer until it is removed (`remove` of an untrusted record, then `gc`).
        if !store.untrusted()?.is_empty() {
            return Ok(Vec::new());
        }
        named.extend(
            store
                .list_objects::<SnapshotRecord>(SNAPSHOT)?
                .into_iter()
                .flat_map(|(_, _, r)| r.spec.layers),
        );
        let now = chrono::Utc::now();
        let mut pending = Vec::new();
        for (id, created_at, capture) in store.list_objects::<PendingCapture>(PENDING)? {
            let age = chrono::DateTime::parse_from_rfc3339(&created_at)
                .ok()
                .and_then(|t| (now - t.with_timezone(&chrono::Utc)).to_std().ok())
                .unwrap_or_default();
            if capture.in_progress(age) {
                pending.push(id);
            } else if !dry_run {
                self.settle_interrupted(&capture.sandbox);
                let _ = store.delete_object(PENDING, &id);
            }
        }
        let mut removed = Vec::new();
        for layer in backend.list_layers() {
            let in_capture = pending
                .iter()
                .any(|id| layer == *id || layer.ends_with(&format!(":{id}")));
            if named.contains(&layer) || in_capture {
                continue;
            }
            if dry_run || backend.remove_layer(&layer).is_ok() {
                removed.push(format!("layer {layer} ({})", backend.kind().as_str()));
            }
        }
        Ok(removed)
    }

    /// Lets a running sandbox whose capture was interrupted (the capturing process died) run
    /// again.
    fn settle_interrupted(&self, sandbox: &str) {
        if let Ok(rec) = self.get_record(sandbox)
            && let Some(rt) = rec.runtime.as_ref().filter(|_| self.is_running(&rec))
            && let Ok(backend) = crate::backend::backend_for(rec.spec.backend, &self.home)
        {
            let _ = backend.settle_capture(rt);
        }
    }

    /// Settles the interrupted captures of sandbox `name` (before a new capture or a start).
    pub(crate) fn settle_captures_of(&self, name: &str) -> Result<()> {
        let store = self.store()?;
        for (id, _, capture) in store.list_objects::<PendingCapture>(PENDING)? {
            if capture.sandbox == name && !capture.in_progress(Duration::ZERO) {
                self.settle_interrupted(name);
                store.delete_object(PENDING, &id)?;
            }
        }
        Ok(())
    }

    /// Writes sandbox `name`'s whole filesystem as a tar stream to `out`; returns its size.
    pub fn export(&self, name: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        let _lock = lock::SandboxLock::acquire(&self.home, name)?;
        let rec = self.get_record(name)?;
        let backend = self.backend(&rec.spec)?;
        let rootfs = backend.resolve_image(&rec.spec.image, &self.images_for(None)?)?;
        let runtime = rec.runtime.as_ref().filter(|_| self.is_running(&rec));
        Ok(backend.export(&rec.spec, &rootfs, &self.sandbox_dir(name), runtime, out)?)
    }

    /// Exports sandbox `name` to the host file `path`: written beside it under a temporary name
    /// and renamed into place, so a failure leaves no partial archive.
    pub fn export_to_file(&self, name: &str, path: &Path) -> Result<u64> {
        use std::os::unix::fs::OpenOptionsExt;
        let file_name = path.file_name().ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "-o {}: give a file path for the archive",
                path.display()
            ))
        })?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.partial",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(EngineError::io(format!("create {}", tmp.display())))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let written = self.export(name, &mut out).and_then(|n| {
            use std::io::Write;
            out.flush()
                .map_err(EngineError::io(format!("write {}", tmp.display())))?;
            std::fs::rename(&tmp, path)
                .map_err(EngineError::io(format!("rename to {}", path.display())))?;
            Ok(n)
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// Whether a sandbox's layer stack starts from a snapshot's (it was restored or forked from
/// it, or from a snapshot taken of one that was).
fn starts_with_layers(sandbox: &[String], snapshot: &[String]) -> bool {
    !snapshot.is_empty() && sandbox.ends_with(snapshot)
}
