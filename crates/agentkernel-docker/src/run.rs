//! Containers' lifecycle and the commands run in them.

use crate::images::api_message;
use crate::init::{INIT_ROLE, RUN_ROLE, kill_signal};
use crate::{
    Client, DockerError, Flavor, INIT_PATH, LABEL_EPHEMERAL, LABEL_MANAGED, LABEL_OWNER,
    LABEL_SANDBOX, Result, Started, local_init, owner_alive, owner_label,
};
use agentkernel_core::exec::Sink;
use agentkernel_core::policy::SeccompMode;
use agentkernel_core::{ExecEvent, ExecRequest, ExitStatus, SandboxSpec};
use agentkernel_image::Rootfs;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as ApiError;
use futures_util::{Stream, StreamExt};
use rustix::fd::BorrowedFd;
use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub use agentkernel_core::backend::Controls;

fn status_of(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

type Output = Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, ApiError>> + Send>>;
type Input = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// How a stream of a command's output ended besides its own exit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exited,
    /// The command ended after its timeout: the run role killed it if it exited TIMED_OUT.
    ExitedLate,
    /// The run role did not end the command in time and the host killed it.
    TimedOut,
    Cancelled,
}

/// How long past a command's timeout the host waits for the run role (which enforces it
/// inside the container) before killing the command itself.
const TIMEOUT_BACKSTOP: Duration = Duration::from_secs(5);

/// How long a throwaway run waits for the engine to remove its container.
const REMOVE_WAIT: Duration = Duration::from_secs(30);

impl Client {
    /// The argv prefix that runs a command under the run role.
    fn run_prefix(&self, spec: &SandboxSpec, tty: bool, timeout: Option<Duration>) -> Vec<String> {
        let mut v = vec![INIT_PATH.to_string(), RUN_ROLE.to_string()];
        if tty {
            v.push("--tty".to_string());
        }
        if let Some(t) = timeout {
            v.push("--timeout-ms".to_string());
            v.push(t.as_millis().max(1).to_string());
        }
        // runsc ignores the seccomp profile the engine passes unless registered with
        // --oci-seccomp: the run role installs the native filter itself.
        if self.flavor == Flavor::Gvisor {
            v.push("--seccomp".to_string());
            v.push(
                match spec.policy.seccomp {
                    SeccompMode::DenyList => "deny",
                    SeccompMode::AllowList => "allow",
                }
                .to_string(),
            );
        }
        v.push("--".to_string());
        v
    }

    fn labels(&self, sandbox: &str, ephemeral: bool) -> HashMap<String, String> {
        let mut labels = self.base_labels();
        labels.insert(LABEL_SANDBOX.to_string(), sandbox.to_string());
        if ephemeral {
            labels.insert(LABEL_EPHEMERAL.to_string(), "1".to_string());
            labels.insert(LABEL_OWNER.to_string(), owner_label());
        }
        labels
    }

    /// Label filters selecting this client's containers (of one sandbox when given).
    fn filters(&self, sandbox: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels: Vec<String> = self
            .base_labels()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Some(s) = sandbox {
            labels.push(format!("{LABEL_SANDBOX}={s}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    pub(crate) async fn list(
        &self,
        docker: &Docker,
        sandbox: Option<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let options = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(self.filters(sandbox)),
            ..Default::default()
        };
        docker
            .list_containers(Some(options))
            .await
            .map_err(self.api("list containers"))
    }

    /// Creates a container named after `sandbox`. A container of the same name left by this
    /// state directory (a crash) is replaced; one agentkernel does not manage is never touched.
    /// Creates the container of `body` with its root layer sized by the disk limit where the
    /// engine can (`disk.rs`).
    async fn create(
        &self,
        docker: &Docker,
        sandbox: &str,
        mut body: bollard::models::ContainerCreateBody,
        limits: &agentkernel_core::policy::Limits,
    ) -> Result<String> {
        let name = self.container_name(sandbox);
        let mut replaced = false;
        let mut sized = self.size_root_layer(&mut body, limits);
        loop {
            let options = bollard::query_parameters::CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            };
            match docker.create_container(Some(options), body.clone()).await {
                Ok(r) => return Ok(r.id),
                Err(e) => {
                    let mut message = api_message(e);
                    if sized && crate::disk::refuses_storage_opt(&message) {
                        self.root_size_refused(&mut body, limits, &message)?;
                        sized = false;
                        continue;
                    }
                    if self.flavor == Flavor::Gvisor && message.contains("runtime") {
                        message.push_str(": register gVisor's runsc with the engine (dockerd's daemon.json: \"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\"}}) and restart it; `agentkernel doctor` checks it");
                    }
                    let taken = message.contains("already in use") || message.contains("Conflict");
                    if !taken || replaced {
                        return Err(DockerError::Api {
                            backend: self.name(),
                            action: format!("create container {name}"),
                            message,
                        });
                    }
                    let ours = docker
                        .inspect_container(&name, None)
                        .await
                        .ok()
                        .and_then(|c| c.config)
                        .and_then(|c| c.labels)
                        .is_some_and(|l| {
                            l.get(crate::LABEL_HOME) == Some(&self.home_hash)
                                && l.contains_key(LABEL_MANAGED)
                        });
                    if !ours {
                        return Err(DockerError::Api {
                            backend: self.name(),
                            action: format!("create container {name}"),
                            message: format!(
                                "{message}: that container is not one of this agentkernel's; rename or remove it"
                            ),
                        });
                    }
                    remove(docker, &name).await;
                    replaced = true;
                }
            }
        }
    }

    async fn started(&self, docker: &Docker, id: &str) -> Result<Started> {
        let c = docker
            .inspect_container(id, None)
            .await
            .map_err(self.api("inspect container"))?;
        let pid = c.state.and_then(|s| s.pid).unwrap_or(0);
        let local = local_init(pid, id);
        Ok(Started {
            id: id.to_string(),
            pid: local.map_or(0, |l| l.0),
            start_time: local.map_or(0, |l| l.1),
        })
    }

    /// Starts the sandbox's container: a persistent sandbox's container is created at its
    /// first start and started again afterwards (its writable layer is the sandbox's disk);
    /// an ephemeral one is new each time. A container whose start fails is removed.
    pub fn start(&self, spec: &SandboxSpec, rootfs: &Rootfs, persistent: bool) -> Result<Started> {
        let docker = self.docker()?;
        crate::policy::check(self.flavor, &spec.policy)?;
        self.block(async {
            if persistent
                && let Some(existing) = self.list(docker, Some(&spec.name)).await?.first()
                && let Some(id) = existing.id.clone()
            {
                // Running, though the store says the sandbox is not: an earlier start was
                // killed before it recorded the sandbox. Its network may already be routed to a
                // proxy that is gone: restarted, it comes up clean. (Asked first: Podman
                // answers a start of a running container as if it had started it.)
                if existing
                    .state
                    .as_ref()
                    .is_some_and(|s| s.to_string() == "running")
                {
                    let stop = bollard::query_parameters::StopContainerOptions {
                        t: Some(0),
                        ..Default::default()
                    };
                    match docker.stop_container(&id, Some(stop)).await {
                        Ok(()) => {}
                        Err(e) if status_of(&e) == Some(304) => {}
                        Err(e) => return Err(self.api(format!("stop container {id}"))(e)),
                    }
                }
                match docker.start_container(&id, None).await {
                    Ok(()) => {}
                    Err(e) if status_of(&e) == Some(304) => {}
                    Err(e) => return Err(self.api(format!("start container {id}"))(e)),
                }
                return self.started(docker, &id).await;
            }
            let body = self.container_body(
                spec,
                crate::layers::image_of(spec, &rootfs.id),
                &rootfs.host_binds,
                vec![INIT_PATH.to_string(), INIT_ROLE.to_string()],
                self.labels(&spec.name, !persistent),
                false,
            )?;
            let id = self
                .create(docker, &spec.name, body, &spec.policy.limits)
                .await?;
            if let Err(e) = docker.start_container(&id, None).await {
                remove(docker, &id).await;
                return Err(self.api("start container")(e));
            }
            self.started(docker, &id).await
        })
    }

    /// Stops a container (kept: a persistent sandbox's disk), or removes it.
    pub fn stop(&self, id: &str, remove_it: bool) -> Result<()> {
        let docker = self.docker()?;
        self.block(async {
            if remove_it {
                let options = bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                return match docker.remove_container(id, Some(options)).await {
                    Ok(()) => Ok(()),
                    Err(e) if status_of(&e) == Some(404) => Ok(()),
                    Err(e) => Err(self.api(format!("remove container {id}"))(e)),
                };
            }
            let options = bollard::query_parameters::StopContainerOptions {
                t: Some(10),
                ..Default::default()
            };
            match docker.stop_container(id, Some(options)).await {
                Ok(()) => Ok(()),
                Err(e) if matches!(status_of(&e), Some(304 | 404)) => Ok(()),
                Err(e) => Err(self.api(format!("stop container {id}"))(e)),
            }
        })
    }

    /// Removes every container of sandbox `name` (its disk goes with it).
    pub fn destroy(&self, name: &str) -> Result<()> {
        let docker = self.docker()?;
        self.block(async {
            for c in self.list(docker, Some(name)).await? {
                if let Some(id) = c.id {
                    remove(docker, &id).await;
                }
            }
            Ok(())
        })
    }

    /// Whether the container runs: its init checked through /proc when the engine is local,
    /// else asked of the engine.
    pub fn is_running(&self, id: &str, pid: u32, start_time: u64) -> bool {
        if pid != 0 {
            return agentkernel_sys::proc::is_alive(pid, start_time);
        }
        let Ok(docker) = self.docker() else {
            return false;
        };
        self.block(async {
            docker
                .inspect_container(id, None)
                .await
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.running)
                .unwrap_or(false)
        })
    }

    /// Removes containers of this state directory whose sandbox is gone (not in `known`), and
    /// throwaway ones whose owning process died. Returns what was removed.
    pub fn collect_garbage(&self, known: &[String]) -> Vec<String> {
        let Ok(docker) = self.docker() else {
            return Vec::new();
        };
        self.block(async {
            let mut removed = Vec::new();
            let Ok(all) = self.list(docker, None).await else {
                return removed;
            };
            for c in all {
                let labels = c.labels.unwrap_or_default();
                let sandbox = labels.get(LABEL_SANDBOX).cloned().unwrap_or_default();
                let orphan = if labels.contains_key(LABEL_EPHEMERAL) {
                    !labels.get(LABEL_OWNER).is_some_and(|o| owner_alive(o))
                } else {
                    !known.contains(&sandbox)
                };
                if let (true, Some(id)) = (orphan, c.id) {
                    remove(docker, &id).await;
                    let name = c
                        .names
                        .and_then(|n| n.first().cloned())
                        .unwrap_or_else(|| id.clone());
                    removed.push(format!(
                        "{} container {} (sandbox {sandbox})",
                        self.name(),
                        name.trim_start_matches('/')
                    ));
                }
            }
            removed
        })
    }

    /// Runs a command in a running sandbox's container (`docker exec`), streaming its output.
    pub fn exec(
        &self,
        spec: &SandboxSpec,
        started: &Started,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        let docker = self.docker()?;
        let mut cmd = self.run_prefix(spec, false, req.timeout);
        // Names this command's run role for the signals sent to it (`signal_exec`).
        let token = exec_token();
        cmd.insert(cmd.len() - 1, "--token".to_string());
        cmd.insert(cmd.len() - 1, token.clone());
        cmd.extend(req.argv.iter().cloned());
        let options = bollard::exec::CreateExecOptions::<String> {
            cmd: Some(cmd),
            env: Some(req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(req.workdir.clone().unwrap_or_else(|| spec.workdir.clone())),
            attach_stdin: Some(req.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            ..Default::default()
        };
        let memory = crate::oom::MemoryCgroup::of_process(started.pid);
        let oom_before = memory.as_ref().and_then(|m| m.oom_kills());
        let id = started.id.as_str();
        let (code, ending) = with_signals(controls.signals, |signals| {
            self.block(async {
                let exec = docker
                    .create_exec(id, options)
                    .await
                    .map_err(|e| self.exec_error(id, e))?;
                let start = bollard::exec::StartExecOptions {
                    output_capacity: Some(64 * 1024),
                    ..Default::default()
                };
                let (output, input) = match docker
                    .start_exec(&exec.id, Some(start))
                    .await
                    .map_err(|e| self.exec_error(id, e))?
                {
                    bollard::exec::StartExecResults::Attached { output, input } => (output, input),
                    bollard::exec::StartExecResults::Detached => {
                        return Err(DockerError::Api {
                            backend: self.name(),
                            action: "start exec".to_string(),
                            message: "the engine did not attach the command's output".to_string(),
                        });
                    }
                };
                let token = token.as_str();
                let deliver = |sig: i32| async move { signal_exec(docker, id, token, sig).await };
                let ending = relay(
                    output,
                    req.stdin.then_some(input),
                    sink,
                    signals,
                    req.timeout,
                    deliver,
                )
                .await;
                let code = exec_exit(docker, &exec.id)
                    .await
                    .map_err(self.api("inspect exec"))?;
                Ok((code, ending))
            })
        })?;
        let mut status = exit_status(code, ending);
        status.oom_killed = code == 137
            && memory
                .as_ref()
                .and_then(|m| m.oom_kills())
                .is_some_and(|after| after > oom_before.unwrap_or(0));
        let _ = sink(ExecEvent::Exit(status));
        Ok(status)
    }

    /// The throwaway path of `run`, as `docker run` does it: one container whose command is
    /// the user's, created, attached, started, waited for and removed (never AutoRemove:
    /// Podman's compatibility service then reports exit code 0).
    pub fn run_once(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        let docker = self.docker()?;
        let mut entrypoint = self.run_prefix(spec, false, req.timeout);
        if self.watches_oom() {
            // Held until the host watches its cgroup (`oom_watch`); before the `--`.
            entrypoint.insert(entrypoint.len() - 1, "--hold".to_string());
        }
        entrypoint.extend(req.argv.iter().cloned());
        let mut spec = spec.clone();
        for (k, v) in &req.env {
            spec.env.retain(|(key, _)| key != k);
            spec.env.push((k.clone(), v.clone()));
        }
        if let Some(w) = &req.workdir {
            spec.workdir = w.clone();
        }
        let mut body = self.container_body(
            &spec,
            &rootfs.id,
            &rootfs.host_binds,
            entrypoint,
            self.labels(&spec.name, true),
            true,
        )?;
        body.open_stdin = Some(req.stdin);
        body.stdin_once = Some(req.stdin);
        body.attach_stdin = Some(req.stdin);
        let result = with_signals(controls.signals, |signals| {
            self.block(async {
                let id = self
                    .create(docker, &spec.name, body, &spec.policy.limits)
                    .await?;
                let outcome = self.run_created(docker, &id, req, sink, signals).await;
                // Bounded: an engine that cannot remove it now (runsc stuck booting) leaves it
                // to `gc`, which finds it by its labels once this process is gone.
                let _ = tokio::time::timeout(REMOVE_WAIT, remove(docker, &id)).await;
                outcome
            })
        })?;
        let _ = sink(ExecEvent::Exit(result));
        Ok(result)
    }

    async fn run_created(
        &self,
        docker: &Docker,
        id: &str,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        mut signals: Option<&mut tokio::sync::mpsc::UnboundedReceiver<i32>>,
    ) -> Result<ExitStatus> {
        let options = bollard::query_parameters::AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            stdin: req.stdin,
            ..Default::default()
        };
        let begin = async {
            let attached = docker
                .attach_container(id, Some(options))
                .await
                .map_err(self.api("attach to the container"))?;
            docker
                .start_container(id, None)
                .await
                .map_err(|e| self.exec_error(id, e))?;
            Ok::<_, DockerError>(attached)
        };
        // A signal before the command runs (an engine slow or stuck starting it) ends the run:
        // the caller removes the container.
        let attached = tokio::select! {
            attached = begin => attached?,
            Some(sig) = recv(&mut signals) => return Ok(ExitStatus {
                code: 128 + sig,
                signal: Some(sig),
                ..ExitStatus::default()
            }),
        };
        let watch = self.oom_watch(docker, id).await;
        let deliver = |sig: i32| async move {
            let options = bollard::query_parameters::KillContainerOptions {
                signal: if sig == kill_signal() {
                    "SIGKILL".to_string()
                } else {
                    sig.to_string()
                },
            };
            let _ = docker.kill_container(id, Some(options)).await;
        };
        let finish = async {
            let ending = relay(
                attached.output,
                req.stdin.then_some(attached.input),
                sink,
                signals,
                req.timeout,
                deliver,
            )
            .await;
            let options = bollard::query_parameters::WaitContainerOptions {
                condition: "not-running".to_string(),
            };
            let mut waited = docker.wait_container(id, Some(options));
            let code = match waited.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(ApiError::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(self.api("wait for the container")(e)),
                None => {
                    return Err(DockerError::Api {
                        backend: self.name(),
                        action: "wait for the container".to_string(),
                        message: "the engine gave no exit code".to_string(),
                    });
                }
            };
            Ok((code, ending))
        };
        tokio::pin!(finish);
        // The OOM watch is read while the container runs: its cgroup goes when it exits.
        let mut watching = watch.is_some();
        let mut oom = false;
        let (code, ending) = loop {
            tokio::select! {
                done = &mut finish => break done?,
                killed = async {
                    match &watch {
                        Some(w) => w.killed().await,
                        None => std::future::pending().await,
                    }
                }, if watching => {
                    oom = killed;
                    watching = false;
                }
            }
        };
        let mut status = exit_status(code, ending);
        if code == 137 {
            oom = oom || watch.as_ref().is_some_and(|w| w.killed_so_far());
            status.oom_killed = oom
                || docker
                    .inspect_container(id, None)
                    .await
                    .ok()
                    .and_then(|c| c.state)
                    .and_then(|s| s.oom_killed)
                    .unwrap_or(false);
        }
        Ok(status)
    }

    /// Podman does not record an OOM kill on a v1 memory hierarchy (see `oom.rs`): its
    /// containers on this host are watched for one. Docker records it; nothing is watched.
    fn watches_oom(&self) -> bool {
        self.flavor == Flavor::Podman
    }

    /// Begins watching a started container's memory cgroup, then releases its run role
    /// (started with `--hold`), so that no OOM kill comes before the watch.
    async fn oom_watch(&self, docker: &Docker, id: &str) -> Option<crate::oom::OomWatch> {
        if !self.watches_oom() {
            return None;
        }
        // The engine may answer `start` a moment before it records the process.
        let mut pid = None;
        for _ in 0..50 {
            pid = docker
                .inspect_container(id, None)
                .await
                .ok()
                .and_then(|c| c.state?.pid)
                .and_then(|p| u32::try_from(p).ok())
                .filter(|&p| p > 0);
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let watch = pid
            .and_then(crate::oom::MemoryCgroup::of_process)
            .and_then(crate::oom::OomWatch::new);
        let go = crate::init::go_signal();
        match pid {
            Some(pid) => {
                // A signal that comes before the run role blocks it is dropped (it is PID 1).
                for _ in 0..500 {
                    if catches_signal(pid, go) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // The container's init, whose host pid the engine just gave (never pid 0).
                if let Some(init) = agentkernel_sys::signal::pid(pid) {
                    agentkernel_sys::signal::signal_process(init, go);
                }
            }
            None => {
                let options = bollard::query_parameters::KillContainerOptions {
                    signal: go.to_string(),
                };
                let _ = docker.kill_container(id, Some(options)).await;
            }
        }
        watch
    }

    /// An interactive session on a terminal the engine makes (`attach`).
    pub fn attach(
        &self,
        spec: &SandboxSpec,
        started: &Started,
        req: &ExecRequest,
        controls: Controls<'_>,
        mut record: Option<&mut agentkernel_core::exec::Recorder<'_>>,
    ) -> Result<ExitStatus> {
        let docker = self.docker()?;
        let id = started.id.as_str();
        let mut cmd = self.run_prefix(spec, true, None);
        cmd.extend(req.argv.iter().cloned());
        let options = bollard::exec::CreateExecOptions::<String> {
            cmd: Some(cmd),
            env: Some(req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(req.workdir.clone().unwrap_or_else(|| spec.workdir.clone())),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(true),
            ..Default::default()
        };
        let _raw = agentkernel_sys::terminal::RawTerminal::enter();
        let resized = controls.resized;
        let code = with_signals(resized, |resizes| {
            self.block(async {
                let exec = docker
                    .create_exec(id, options)
                    .await
                    .map_err(|e| self.exec_error(id, e))?;
                let start = bollard::exec::StartExecOptions {
                    tty: true,
                    ..Default::default()
                };
                let bollard::exec::StartExecResults::Attached { mut output, input } = docker
                    .start_exec(&exec.id, Some(start))
                    .await
                    .map_err(|e| self.exec_error(id, e))?
                else {
                    return Err(DockerError::Api {
                        backend: self.name(),
                        action: "start exec".to_string(),
                        message: "the engine did not attach the terminal".to_string(),
                    });
                };
                resize(docker, &exec.id).await;
                let stdin = stdin_pump(input);
                let mut resizes = resizes;
                loop {
                    tokio::select! {
                        chunk = output.next() => match chunk {
                            Some(Ok(out)) => {
                                let data = out.into_bytes();
                                let mut o = std::io::stdout().lock();
                                let _ = std::io::Write::write_all(&mut o, &data);
                                let _ = std::io::Write::flush(&mut o);
                                if let Some(rec) = record.as_mut() {
                                    rec(&data);
                                }
                            }
                            _ => break,
                        },
                        Some(_) = recv(&mut resizes) => resize(docker, &exec.id).await,
                    }
                }
                stdin.abort();
                exec_exit(docker, &exec.id)
                    .await
                    .map_err(self.api("inspect exec"))
            })
        })?;
        Ok(exit_status(code, Ending::Exited))
    }

    /// An error starting a command: the container went away, or the engine refused.
    fn exec_error(&self, id: &str, e: ApiError) -> DockerError {
        if status_of(&e) == Some(404) || status_of(&e) == Some(409) {
            return DockerError::Gone {
                backend: self.name(),
                container: id.chars().take(12).collect(),
            };
        }
        self.api("start the command")(e)
    }
}

/// A name for one exec's run role, unique within its container.
fn exec_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

/// Sends `sig` to the run role of an exec, by a second exec of agentkernel's signal role in
/// the same container: it works for an engine on another host and under gVisor alike (the
/// host's view of an exec's pid is the engine's process there, not the command).
/// SIGKILL becomes the run role's `kill_signal`: SIGKILL itself would end the run role and
/// leave its command running, orphaned, in the container.
async fn signal_exec(docker: &Docker, container: &str, token: &str, sig: i32) {
    let sig = if sig == libc::SIGKILL {
        crate::init::kill_signal()
    } else {
        sig
    };
    let options = bollard::exec::CreateExecOptions::<String> {
        cmd: Some(vec![
            INIT_PATH.to_string(),
            crate::init::SIGNAL_ROLE.to_string(),
            token.to_string(),
            sig.to_string(),
        ]),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        ..Default::default()
    };
    if let Ok(exec) = docker.create_exec(container, options).await {
        let start = bollard::exec::StartExecOptions {
            detach: true,
            ..Default::default()
        };
        let _ = docker.start_exec(&exec.id, Some(start)).await;
    }
}

/// Removes a container, whatever its state; a missing one is fine.
pub(crate) async fn remove(docker: &Docker, id: &str) {
    let options = bollard::query_parameters::RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    let _ = docker.remove_container(id, Some(options)).await;
}

/// The exit code of a finished exec; the engine may record it a moment after the stream ends.
async fn exec_exit(docker: &Docker, exec_id: &str) -> std::result::Result<i64, ApiError> {
    for _ in 0..400 {
        let info = docker.inspect_exec(exec_id).await?;
        if info.running != Some(true)
            && let Some(code) = info.exit_code
        {
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(125)
}

async fn resize(docker: &Docker, exec_id: &str) {
    let (rows, cols) = agentkernel_sys::terminal::size().unwrap_or((24, 80));
    let options = bollard::exec::ResizeExecOptions {
        height: rows,
        width: cols,
    };
    let _ = docker.resize_exec(exec_id, options).await;
}

async fn recv(rx: &mut Option<&mut tokio::sync::mpsc::UnboundedReceiver<i32>>) -> Option<i32> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Copies the caller's stdin to the command until it ends, then closes the command's stdin.
fn stdin_pump(mut input: Input) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rustix::io::read(std::io::stdin(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if input.write_all(&chunk).await.is_err() {
                return;
            }
            let _ = input.flush().await;
        }
        let _ = input.shutdown().await;
    })
}

/// Streams a command's output to `sink` until it ends, forwarding signals and enforcing the
/// timeout through `deliver` (which sends a signal to the command's run role).
async fn relay<F, Fut>(
    mut output: Output,
    input: Option<Input>,
    sink: &mut Sink<'_>,
    mut signals: Option<&mut tokio::sync::mpsc::UnboundedReceiver<i32>>,
    timeout: Option<Duration>,
    deliver: F,
) -> Ending
where
    F: Fn(i32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _ = sink(ExecEvent::Started { pid: 0 });
    let pump = input.map(stdin_pump);
    let begun = tokio::time::Instant::now();
    let deadline = timeout.map(|t| begun + t + TIMEOUT_BACKSTOP);
    let mut ending = Ending::Exited;
    let mut killed = false;
    loop {
        let sleep = async {
            match deadline {
                Some(d) if !killed => tokio::time::sleep_until(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            chunk = output.next() => {
                let event = match chunk {
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                        ExecEvent::Stdout(message.to_vec())
                    }
                    Some(Ok(LogOutput::StdErr { message })) => ExecEvent::Stderr(message.to_vec()),
                    Some(Ok(LogOutput::StdIn { .. })) => continue,
                    Some(Err(_)) | None => break,
                };
                if !killed && sink(event).is_break() {
                    ending = Ending::Cancelled;
                    killed = true;
                    deliver(kill_signal()).await;
                }
            }
            Some(sig) = recv(&mut signals) => deliver(sig).await,
            () = sleep => {
                ending = Ending::TimedOut;
                killed = true;
                deliver(kill_signal()).await;
            }
        }
    }
    if let Some(p) = pump {
        p.abort();
    }
    if ending == Ending::Exited && timeout.is_some_and(|t| begun.elapsed() >= t) {
        ending = Ending::ExitedLate;
    }
    ending
}

fn exit_status(code: i64, ending: Ending) -> ExitStatus {
    let code = i32::try_from(code).unwrap_or(125);
    let timed_out = ending == Ending::TimedOut
        || (ending == Ending::ExitedLate && code == crate::init::TIMED_OUT);
    ExitStatus {
        code: if timed_out {
            crate::init::TIMED_OUT
        } else {
            code
        },
        timed_out,
        ..ExitStatus::default()
    }
}

/// Whether host process `pid` has a handler for `sig` (SigCgt in /proc). The run role blocks
/// a signal before it handles it; SigBlk itself reads 0 while it waits in sigtimedwait.
fn catches_signal(pid: u32, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| sig > 0 && mask & (1u64 << (sig - 1)) != 0)
}

/// Runs `f` with a channel of the signal numbers read from `fd` (by a thread of its own,
/// woken through an eventfd the moment `f` returns: a polling thread would hold every command
/// up to its poll interval, which measured as a constant 100 ms on each `exec`).
fn with_signals<T>(
    fd: Option<BorrowedFd<'_>>,
    f: impl FnOnce(Option<&mut tokio::sync::mpsc::UnboundedReceiver<i32>>) -> T,
) -> T {
    let Some(fd) = fd else {
        return f(None);
    };
    let Ok(stop) = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC) else {
        return f(None);
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            loop {
                use rustix::event::{PollFd, PollFlags};
                let mut fds = [
                    PollFd::new(&fd, PollFlags::IN),
                    PollFd::new(&stop, PollFlags::IN),
                ];
                if rustix::event::poll(&mut fds, None).is_err() {
                    continue;
                }
                if !fds[1].revents().is_empty() {
                    return;
                }
                let ready = fds[0].revents();
                if !ready.contains(PollFlags::IN) {
                    if ready.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                        return;
                    }
                    continue;
                }
                let mut buf = [0u8; 16];
                match rustix::io::read(fd, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        for s in &buf[..n] {
                            let _ = tx.send(*s as i32);
                        }
                    }
                }
            }
        });
        let out = f(Some(&mut rx));
        let _ = rustix::io::write(&stop, &1u64.to_ne_bytes());
        out
    })
}
