//! The native backend behind the neutral `agentkernel_backend::Backend` trait.

use crate as native;
use crate::export;
use crate::layers::{LayerError, LayerStore, Source};
use crate::{RootfsPlan, Target, UpperDir};
use agentkernel_backend::{
    Backend, BackendError, Capabilities, Captured, Controls, Persistence, Readiness, Result,
    RuntimeState, Started,
};
use agentkernel_core::{BackendKind, ErrorKind, ExecRequest, ExitStatus, SandboxSpec, Sink};
use agentkernel_image::Rootfs;
use rustix::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

pub struct NativeBackend {
    home: PathBuf,
    layers: LayerStore,
}

impl NativeBackend {
    pub fn new(home: &Path) -> NativeBackend {
        NativeBackend {
            home: home.to_path_buf(),
            layers: LayerStore::new(home),
        }
    }

    /// The root a sandbox gets: the image's layers under an upper layer of the policy's disk
    /// limit (a tmpfs for a throwaway sandbox, an ext4 image in its directory for a persistent
    /// one), with `/tmp` of that size too.
    fn rootfs_plan(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        persistence: Persistence<'_>,
    ) -> Result<RootfsPlan> {
        check_masked_paths(&spec.policy.masked_paths)?;
        let disk_mb = spec.policy.limits.disk_mb;
        let (upper, mountpoint) = match persistence {
            Persistence::Ephemeral => (UpperDir::Tmpfs { size_mb: disk_mb }, self.home.join("mnt")),
            Persistence::Persistent { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(BackendError::io(format!("create {}", dir.display())))?;
                let image =
                    native::disk::prepare_image(dir, disk_mb).map_err(native::NativeError::from)?;
                (UpperDir::Disk { image }, dir.join("mnt"))
            }
        };
        std::fs::create_dir_all(&mountpoint)
            .map_err(BackendError::io(format!("create {}", mountpoint.display())))?;
        Ok(RootfsPlan {
            lower_dirs: self.lower_dirs(spec, rootfs)?,
            upper,
            mountpoint,
            host_binds: rootfs.host_binds.clone(),
            binds: spec.policy.mounts.clone(),
            masked: spec.policy.masked_paths.clone(),
            disk_mb,
            read_only: spec.policy.read_only_root,
            workdir: spec.workdir.clone(),
        })
    }

    /// The overlay's lower directories, top first: the captured layers the sandbox starts
    /// from (a snapshot's, a fork's, a template's), then the image's.
    fn lower_dirs(&self, spec: &SandboxSpec, rootfs: &Rootfs) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(spec.layers.len() + rootfs.lower_dirs.len());
        for layer in &spec.layers {
            dirs.push(self.layers.path(layer).map_err(layer_error)?);
        }
        dirs.extend(rootfs.lower_dirs.iter().cloned());
        Ok(dirs)
    }

    fn target(runtime: &RuntimeState) -> Target {
        Target {
            pid: runtime.pid,
            start_time: runtime.start_time,
        }
    }
}

impl Backend for NativeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    fn readiness(&self) -> Readiness {
        match native::probe() {
            Ok(()) => Readiness {
                usable: true,
                reason: "namespaces, overlayfs and cgroups available".to_string(),
            },
            Err(reason) => Readiness {
                usable: false,
                reason,
            },
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            mount_cwd: true,
            mount_home: true,
            attach: true,
            host_volumes: true,
            proxy_secret_bindings: true,
            secret_files: true,
            ..Capabilities::default()
        }
    }

    /// A throwaway sandbox whose init starts the command itself (`native::run_throwaway`):
    /// no namespaces to join from outside and no second round trip. Sandboxes it cannot serve
    /// (a network to route to the egress proxy first, or inits cloned by the boot helper) take the general path.
    fn run_ephemeral(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        if !native::can_run_throwaway(&spec.policy) {
            return agentkernel_backend::start_exec_stop(self, spec, rootfs, exec, sink, controls);
        }
        let plan = self.rootfs_plan(spec, rootfs, Persistence::Ephemeral)?;
        let start = native::StartSpec {
            id: &spec.name,
            hostname: &spec.name,
            rootfs: &plan,
            policy: &spec.policy,
            detach: false,
        };
        let env = merged_env(spec, exec);
        let (status, _ending) =
            native::run_throwaway(&start, &command_spec(spec, exec, &env, &controls), sink)?;
        Ok(status)
    }

    fn start(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        instance: &str,
        persistence: Persistence<'_>,
    ) -> Result<Started> {
        let ephemeral = matches!(persistence, Persistence::Ephemeral);
        let plan = self.rootfs_plan(spec, rootfs, persistence)?;
        let running = native::start(&native::StartSpec {
            id: instance,
            hostname: &spec.name,
            rootfs: &plan,
            policy: &spec.policy,
            detach: !ephemeral,
        })?;
        Ok(Started {
            runtime: RuntimeState {
                instance: instance.to_string(),
                pid: running.booted.pid,
                start_time: running.booted.start_time,
                boot_id: agentkernel_sys::proc::boot_id(),
                ephemeral,
            },
            lifeline: running.booted.lifeline,
        })
    }

    fn stop(&self, sandbox: Started) -> Result<()> {
        let Started { runtime, lifeline } = sandbox;
        let target =
            (runtime.boot_id == agentkernel_sys::proc::boot_id()).then(|| Self::target(&runtime));
        native::stop(&runtime.instance, target, lifeline)?;
        Ok(())
    }

    fn is_running(&self, runtime: &RuntimeState) -> bool {
        runtime.boot_id == agentkernel_sys::proc::boot_id()
            && agentkernel_sys::proc::is_alive(runtime.pid, runtime.start_time)
    }

    fn network_namespace(&self, runtime: &RuntimeState) -> Result<std::fs::File> {
        agentkernel_sys::proc::open_netns(runtime.pid, runtime.start_time)
            .map_err(BackendError::io("open the sandbox's network namespace"))
    }

    /// Every native sandbox has a network namespace of its own, with or without network.
    fn publish_ports(&self) -> Result<()> {
        Ok(())
    }

    fn exec(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        self.settle_capture(runtime)?;
        let env = merged_env(spec, req);
        let (status, _ending) = native::exec(
            &native::ExecSpec {
                id: &runtime.instance,
                target: Self::target(runtime),
                policy: &spec.policy,
                command: command_spec(spec, req, &env, &controls),
            },
            sink,
        )?;
        Ok(status)
    }

    fn attach(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        controls: Controls<'_>,
        record: Option<&mut agentkernel_core::Recorder<'_>>,
    ) -> Result<ExitStatus> {
        self.settle_capture(runtime)?;
        let env = merged_env(spec, req);
        let workdir = req.workdir.as_deref().unwrap_or(&spec.workdir);
        let status = native::attach::attach(
            &native::attach::AttachSpec {
                id: &runtime.instance,
                target: Self::target(runtime),
                policy: &spec.policy,
                argv: &req.argv,
                env: &env,
                workdir,
                resized: controls.resized,
            },
            record,
        )?;
        Ok(status)
    }

    fn copy_in(&self, runtime: &RuntimeState, host: &Path, inside: &Path) -> Result<PathBuf> {
        self.settle_capture(runtime)?;
        Ok(native::files::copy_in(runtime.pid, host, inside).map_err(native::NativeError::from)?)
    }

    fn copy_out(&self, runtime: &RuntimeState, inside: &Path, host: &Path) -> Result<PathBuf> {
        self.settle_capture(runtime)?;
        Ok(
            native::files::copy_out(runtime.pid, inside, host)
                .map_err(native::NativeError::from)?,
        )
    }

    fn read_file(&self, runtime: &RuntimeState, path: &Path, limit: u64) -> Result<Vec<u8>> {
        self.settle_capture(runtime)?;
        native::files::read_file(runtime.pid, path, limit).map_err(file_error)
    }

    fn write_file(&self, runtime: &RuntimeState, path: &Path, data: &[u8]) -> Result<()> {
        self.settle_capture(runtime)?;
        native::files::write_file(runtime.pid, path, data, 0o644).map_err(file_error)
    }

    fn remove_file(&self, runtime: &RuntimeState, path: &Path) -> Result<()> {
        self.settle_capture(runtime)?;
        native::files::remove_file(runtime.pid, path).map_err(file_error)
    }

    /// The sandbox's upper directory copied into a new layer (`layers.rs`): while it runs,
    /// then again frozen for what changed meanwhile.
    fn capture(
        &self,
        spec: &SandboxSpec,
        dir: &Path,
        runtime: Option<&RuntimeState>,
        id: &str,
    ) -> Result<Captured> {
        let source = match runtime {
            Some(rt) => Source::Running {
                pid: rt.pid,
                start_time: rt.start_time,
                instance: &rt.instance,
            },
            None => Source::Stopped { dir },
        };
        let made = self.layers.capture(id, source).map_err(layer_error)?;
        let mut layers = vec![id.to_string()];
        layers.extend(spec.layers.iter().cloned());
        Ok(Captured {
            layers,
            bytes: made.bytes,
            frozen: made.frozen,
        })
    }

    fn settle_capture(&self, runtime: &RuntimeState) -> Result<()> {
        native::layers::thaw_abandoned(&self.home, &runtime.instance)
            .map_err(|e| layer_error(e.into()))
    }

    fn remove_layer(&self, layer: &str) -> Result<()> {
        self.layers.remove(layer).map_err(layer_error)
    }

    fn list_layers(&self) -> Vec<String> {
        self.layers.list()
    }

    fn export(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        dir: &Path,
        runtime: Option<&RuntimeState>,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        if let Some(rt) = runtime {
            let root = export::running_root(rt.pid, rt.start_time).map_err(layer_error)?;
            return export::write_tar(root.as_fd(), true, out).map_err(layer_error);
        }
        let image = dir.join(native::disk::IMAGE);
        let disk = if image.is_file() {
            Some(native::disk::mount_detached(&image).map_err(|e| layer_error(e.into()))?)
        } else {
            None
        };
        let mut lowers = Vec::new();
        if let Some(disk) = &disk {
            // The detached mount has no path of its own: overlayfs reaches it through ours.
            lowers.push(PathBuf::from(format!(
                "/proc/self/fd/{}/upper",
                disk.as_raw_fd()
            )));
        }
        lowers.extend(self.lower_dirs(spec, rootfs)?);
        let root = export::stacked_root(&lowers).map_err(layer_error)?;
        drop(disk);
        match root {
            Some(root) => export::write_tar(root.as_fd(), false, out),
            None => export::write_empty(out),
        }
        .map_err(layer_error)
    }

    fn collect_garbage(&self, live_instances: &[String], _sandboxes: &[String]) -> Vec<String> {
        let mut removed = native::layers::remove_abandoned_locks(&self.home);
        for id in native::cgroup::Cgroup::list_ids() {
            if live_instances.contains(&id) {
                continue;
            }
            let group = native::cgroup::Cgroup::open(&id);
            // A group with processes belongs to a sandbox still in use (an ephemeral `run` of
            // another process), and a held one to a sandbox still booting: only leftovers go.
            if group.remove_if_leftover() {
                removed.push(format!("cgroup {id}"));
            }
        }
        if let Ok(pins) = std::fs::read_dir(self.home.join("netns")) {
            for pin in pins.flatten() {
                let id = pin.file_name().to_string_lossy().into_owned();
                let young = std::fs::symlink_metadata(pin.path())
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < GC_GRACE);
                let group = native::cgroup::Cgroup::open(&id);
                // The pin of a sandbox whose group is gone (removed above) or ended.
                let ended = group.age().is_none();
                if (young && !ended) || live_instances.contains(&id) || !group.pids().is_empty() {
                    continue;
                }
                native::net::unpin_netns(&pin.path());
                removed.push(format!("network namespace pin {id}"));
            }
        }
        removed
    }
}

/// Masked paths are places inside the sandbox: absolute, without `..`.
fn check_masked_paths(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        let relative = !p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if relative {
            return Err(agentkernel_core::CoreError::InvalidPath(format!(
                "{} to hide in the sandbox: give an absolute path without '..'",
                p.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// How old a network-namespace pin must be before `gc` removes it while its group has not ended.
const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// A path missing in the sandbox is its own error (HTTP answers 404 for it).
fn layer_error(e: LayerError) -> BackendError {
    let kind = match &e {
        LayerError::Missing(..) => ErrorKind::NotFound,
        LayerError::Gone | LayerError::NoLayer { .. } => ErrorKind::Conflict,
        LayerError::Freeze(native::cgroup::CgroupError::NoFreezer) => ErrorKind::NotEnforceable,
        _ => ErrorKind::Internal,
    };
    BackendError::new(kind, e.to_string())
}

fn file_error(e: native::files::FileError) -> BackendError {
    match e {
        native::files::FileError::Sandbox { path, source }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            BackendError::new(
                ErrorKind::NotFound,
                format!("no such file in the sandbox: {path}"),
            )
        }
        other => native::NativeError::from(other).into(),
    }
}

/// The sandbox's environment with the request's on top; TERM comes from the request (attach).
/// The command of `req` as the native backend starts it, in `run` and `exec` alike: `env` is
/// its `merged_env`, the working directory defaults to the sandbox's.
fn command_spec<'a>(
    spec: &'a SandboxSpec,
    req: &'a ExecRequest,
    env: &'a [(String, String)],
    controls: &Controls<'a>,
) -> native::CommandSpec<'a> {
    native::CommandSpec {
        argv: &req.argv,
        env,
        workdir: req.workdir.as_deref().unwrap_or(&spec.workdir),
        timeout: req.timeout,
        forward_stdin: req.stdin,
        signals: controls.signals,
    }
}

fn merged_env(spec: &SandboxSpec, req: &ExecRequest) -> Vec<(String, String)> {
    agentkernel_core::exec::merged_env(&spec.env, req)
}

/// The native backend, for the engine's registry of backends.
pub const REGISTRY: agentkernel_backend::Registry = agentkernel_backend::Registry {
    kinds: &[BackendKind::Native],
    make: |kind, home| {
        (kind == BackendKind::Native)
            .then(|| Box::new(NativeBackend::new(home)) as Box<dyn Backend>)
    },
};
