//! The container backends (docker, podman, gvisor) behind the engine's Backend trait: one
//! implementation over the Docker Engine API (`agentkernel-docker`).

use crate::backend::{Backend, Capabilities, Controls, Persistence, Readiness, Started};
use crate::error::{EngineError, Result};
use crate::store::RuntimeState;
use agentkernel_core::{BackendKind, ExecRequest, ExitStatus, ImageRef, SandboxSpec};
use agentkernel_docker::{Client, DockerError, Flavor};
use agentkernel_image::{ImageStore, Rootfs};
use agentkernel_native::Sink;
use agentkernel_native::files::FileError;
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

    fn started(runtime: &RuntimeState) -> agentkernel_docker::Started {
        agentkernel_docker::Started {
            id: runtime.instance.clone(),
            pid: runtime.pid,
            start_time: runtime.start_time,
        }
    }

    /// The container's init pid, trusted only under the boot it was recorded in.
    fn same_boot(runtime: &RuntimeState) -> bool {
        runtime.boot_id == agentkernel_native::proc::boot_id()
    }
}

fn controls(c: Controls<'_>) -> agentkernel_docker::Controls<'_> {
    agentkernel_docker::Controls {
        signals: c.signals,
        resized: c.resized,
    }
}

impl From<DockerError> for EngineError {
    fn from(e: DockerError) -> EngineError {
        match e {
            DockerError::FileNotFound(path) => EngineError::FileNotFound(path),
            DockerError::NotRegular { path, kind } => EngineError::NotRegularFile { path, kind },
            // File errors become the native backend's, so that every surface treats them alike
            // (the HTTP files API answers 413, 409, 403 and 400 whichever backend failed).
            DockerError::FileTooLarge { path, size, limit } => {
                file_error(FileError::TooLarge { path, size, limit })
            }
            DockerError::DirectoryNotEmpty(path) => file_error(FileError::DirectoryNotEmpty(path)),
            DockerError::KernelFilesystem { path, fs } => {
                file_error(FileError::KernelFilesystem { path, fs })
            }
            DockerError::FileForbidden { path, reason } => file_error(FileError::Sandbox {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{reason}: the sandbox does not allow it (a read-only root, or a file its user may not change); write under /tmp or another writable directory"
                    ),
                ),
            }),
            DockerError::BadFilePath { path, reason } => file_error(FileError::Sandbox {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
            }),
            DockerError::Image(e) => EngineError::Image(e),
            other => EngineError::Docker(other),
        }
    }
}

fn file_error(e: FileError) -> EngineError {
    EngineError::Native(agentkernel_native::NativeError::Files(e))
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
        Ok(self
            .client
            .run_once(spec, rootfs, exec, sink, controls(c))?)
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
                    .map_err(EngineError::io(format!("create {}", dir.display())))?;
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
                boot_id: agentkernel_native::proc::boot_id(),
                ephemeral: !persistent,
            },
            lifeline: None,
        })
    }

    fn stop(&self, runtime: &RuntimeState, _lifeline: Option<i32>) -> Result<()> {
        Ok(self.client.stop(&runtime.instance, runtime.ephemeral)?)
    }

    fn destroy(&self, name: &str) -> Result<()> {
        Ok(self.client.destroy(name)?)
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
            .exec(spec, &Self::started(runtime), req, sink, controls(c))?)
    }

    fn attach(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        c: Controls<'_>,
        record: Option<&mut agentkernel_native::attach::Recorder<'_>>,
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
            .attach(spec, &Self::started(runtime), &req, controls(c), record)?)
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

    fn collect_garbage(&self, _live_instances: &[String], sandboxes: &[String]) -> Vec<String> {
        self.client.collect_garbage(sandboxes)
    }
}
