//! The container backends (docker, podman, gvisor) behind the neutral Backend trait: one
//! implementation over the Docker Engine API (`agentkernel-docker`).

use crate::{Client, Flavor};
use agentkernel_backend::{
    Backend, BackendError, Capabilities, Captured, Controls, Persistence, Readiness, Result,
    RuntimeState, Started,
};
use agentkernel_core::{
    BackendKind, ErrorKind, ExecRequest, ExitStatus, ImageRef, SandboxSpec, Sink,
};
use agentkernel_image::{ImageStore, Rootfs};
use std::path::{Path, PathBuf};

pub struct DockerBackend {
    kind: BackendKind,
    client: Client,
}

impl DockerBackend {
    pub fn new(kind: BackendKind, home: &Path) -> DockerBackend {
        let flavor = Flavor::of(kind).unwrap_or(Flavor::Docker);
        DockerBackend {
            kind,
            client: Client::new(flavor, home, None),
        }
    }

    fn started(runtime: &RuntimeState) -> crate::Started {
        crate::Started {
            id: runtime.instance.clone(),
            pid: runtime.pid,
            start_time: runtime.start_time,
        }
    }

    /// The container's init pid, trusted only under the boot it was recorded in.
    fn same_boot(runtime: &RuntimeState) -> bool {
        runtime.boot_id == agentkernel_sys::proc::boot_id()
    }
}

impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn readiness(&self) -> Readiness {
        match self.client.readiness() {
            Ok(reason) => Readiness {
                usable: true,
                reason,
            },
            Err(reason) => Readiness {
                usable: false,
                reason,
            },
        }
    }

    fn ready_for_use(&self) -> Readiness {
        match self.client.quick_readiness() {
            Ok(()) => Readiness {
                usable: true,
                reason: String::new(),
            },
            Err(reason) => Readiness {
                usable: false,
                reason,
            },
        }
    }

    fn capabilities(&self) -> Capabilities {
        // Bind mounts of the project and home directories need the engine on this host.
        let local = self.client.endpoint().is_local();
        Capabilities {
            mount_cwd: local,
            mount_home: local,
            attach: true,
            // Volumes are host directories the engine bind-mounts: it must be on this host.
            host_volumes: local,
            // The egress proxy enters the container's network namespace on this host.
            proxy_secret_bindings: local && self.kind != BackendKind::Gvisor,
            secret_files: true,
            ..Capabilities::default()
        }
    }

    fn resolve_image(&self, image: &ImageRef, store: &ImageStore) -> Result<Rootfs> {
        Ok(self.client.resolve_image(image, store)?)
    }

    fn run_ephemeral(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        exec: &ExecRequest,
        sink: &mut Sink<'_>,
        c: Controls<'_>,
    ) -> Result<ExitStatus> {
        Ok(self.client.run_once(spec, rootfs, exec, sink, c)?)
    }

    fn check_spec(&self, spec: &SandboxSpec, _rootfs: &Rootfs) -> Result<()> {
        Ok(crate::policy::check(self.client.flavor(), &spec.policy)?)
    }

    fn start(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        _instance: &str,
        persistence: Persistence<'_>,
    ) -> Result<Started> {
        let persistent = match persistence {
            Persistence::Persistent { dir } => {
                // The engine keeps the sandbox's view beside its (otherwise empty) directory.
                std::fs::create_dir_all(dir)
                    .map_err(BackendError::io(format!("create {}", dir.display())))?;
                true
            }
            Persistence::Ephemeral => false,
        };
        let s = self.client.start(spec, rootfs, persistent)?;
        Ok(Started {
            runtime: RuntimeState {
                instance: s.id,
                pid: s.pid,
                start_time: s.start_time,
                boot_id: agentkernel_sys::proc::boot_id(),
                ephemeral: !persistent,
            },
            lifeline: None,
        })
    }

    fn stop(&self, sandbox: Started) -> Result<()> {
        let runtime = &sandbox.runtime;
        Ok(self.client.stop(&runtime.instance, runtime.ephemeral)?)
    }

    fn destroy(&self, name: &str) -> Result<()> {
        Ok(self.client.destroy(name)?)
    }

    fn usage(&self, runtime: &RuntimeState) -> Option<agentkernel_backend::usage::Usage> {
        if !Self::same_boot(runtime) {
            return None;
        }
        agentkernel_backend::usage::of_cgroups(runtime.pid)
    }

    fn written_elsewhere(&self, runtime: &RuntimeState) -> Option<u64> {
        self.client.written_bytes(&runtime.instance)
    }

    fn is_running(&self, runtime: &RuntimeState) -> bool {
        let pid = if Self::same_boot(runtime) {
            runtime.pid
        } else {
            0
        };
        self.client
            .is_running(&runtime.instance, pid, runtime.start_time)
    }

    /// The container's network namespace, entered through its init's pid on this host (the
    /// engines here run as root, so the pid is the host's). gVisor's sandboxes speak through
    /// its own network stack, which the proxy's redirect rule cannot reach: refused.
    fn network_namespace(&self, runtime: &RuntimeState) -> Result<std::fs::File> {
        if !self.capabilities().proxy_secret_bindings || !Self::same_boot(runtime) {
            return Err(BackendError::new(
                ErrorKind::NotEnforceable,
                format!(
                    "the {} backend cannot route a sandbox through the egress proxy here (gVisor has its own network stack; a remote engine's containers are not on this host): use -B native, or a local -B docker / -B podman, or --no-network",
                    self.kind.as_str()
                ),
            ));
        }
        agentkernel_sys::proc::open_netns(runtime.pid, runtime.start_time)
            .map_err(BackendError::io("open the container's network namespace"))
    }

    /// Published ports are served like a native sandbox's, by the engine's forwarder into the
    /// container's network namespace: the container runs with no network of the engine's
    /// (`NetworkMode: none`, so the egress proxy sees all its traffic), and Docker ignores
    /// port bindings on such a container. The namespace must be on this host, and gVisor's
    /// own network stack answers no connection made in it: both refused, before anything is
    /// made.
    fn publish_ports(&self) -> Result<()> {
        if !self.capabilities().proxy_secret_bindings {
            return Err(BackendError::new(
                ErrorKind::NotEnforceable,
                format!(
                    "the {} backend cannot publish ports (-P/--publish) here (gVisor has its own network stack; a remote engine's containers are not on this host): use -B native, or a local -B docker / -B podman",
                    self.kind.as_str()
                ),
            ));
        }
        Ok(())
    }

    fn exec(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        c: Controls<'_>,
    ) -> Result<ExitStatus> {
        Ok(self
            .client
            .exec(spec, &Self::started(runtime), req, sink, c)?)
    }

    fn attach(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        c: Controls<'_>,
        record: Option<&mut agentkernel_core::Recorder<'_>>,
    ) -> Result<ExitStatus> {
        let mut req = req.clone();
        if !req.env.iter().any(|(k, _)| k == "TERM") {
            req.env.push((
                "TERM".to_string(),
                std::env::var("TERM").unwrap_or_else(|_| "xterm".to_string()),
            ));
        }
        Ok(self
            .client
            .attach(spec, &Self::started(runtime), &req, c, record)?)
    }

    fn copy_in(&self, runtime: &RuntimeState, host: &Path, inside: &Path) -> Result<PathBuf> {
        Ok(self.client.copy_in(&runtime.instance, host, inside)?)
    }

    fn copy_out(&self, runtime: &RuntimeState, inside: &Path, host: &Path) -> Result<PathBuf> {
        Ok(self.client.copy_out(&runtime.instance, inside, host)?)
    }

    fn read_file(&self, runtime: &RuntimeState, path: &Path, limit: u64) -> Result<Vec<u8>> {
        Ok(self.client.read_file(&runtime.instance, path, limit)?)
    }

    fn write_file(&self, runtime: &RuntimeState, path: &Path, data: &[u8]) -> Result<()> {
        Ok(self.client.write_file(&runtime.instance, path, data)?)
    }

    fn remove_file(&self, runtime: &RuntimeState, path: &Path) -> Result<()> {
        Ok(self.client.remove_file(&runtime.instance, path)?)
    }

    /// The engine's commit of the sandbox's container (paused for it when it runs).
    fn capture(
        &self,
        spec: &SandboxSpec,
        _dir: &Path,
        runtime: Option<&RuntimeState>,
        id: &str,
    ) -> Result<Captured> {
        if self.kind == BackendKind::Gvisor {
            return Err(self.no_snapshots());
        }
        Ok(self.client.capture(spec, runtime.is_some(), id)?)
    }

    fn settle_capture(&self, runtime: &RuntimeState) -> Result<()> {
        Ok(self.client.settle_capture(&runtime.instance)?)
    }

    fn remove_layer(&self, layer: &str) -> Result<()> {
        Ok(self.client.remove_layer(layer)?)
    }

    fn list_layers(&self) -> Vec<String> {
        self.client.list_layers()
    }

    fn export(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        _dir: &Path,
        _runtime: Option<&RuntimeState>,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        if self.kind == BackendKind::Gvisor {
            return Err(self.no_snapshots());
        }
        Ok(self.client.export(spec, &rootfs.id, out)?)
    }

    /// A container stays when the process that ran it is killed.
    fn outlives_its_owner(&self) -> bool {
        true
    }

    fn collect_garbage(&self, _live_instances: &[String], sandboxes: &[String]) -> Vec<String> {
        self.client.collect_garbage(sandboxes)
    }
}

/// The container backends, for the engine's registry of backends.
pub const REGISTRY: agentkernel_backend::Registry = agentkernel_backend::Registry {
    kinds: &[
        BackendKind::Docker,
        BackendKind::Podman,
        BackendKind::Gvisor,
    ],
    make: |kind, home| {
        matches!(
            kind,
            BackendKind::Docker | BackendKind::Podman | BackendKind::Gvisor
        )
        .then(|| Box::new(DockerBackend::new(kind, home)) as Box<dyn Backend>)
    },
};
