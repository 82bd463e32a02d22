//! The micro-VM backend behind the neutral `agentkernel_backend::Backend` trait: each sandbox
//! is a QEMU `-M microvm` guest with its own kernel; every operation inside it goes through
//! the guest agent (`agentkernel-guest`) over the protocol of `agentkernel-proto`.
//!
//! | Policy field | In the VM |
//! |---|---|
//! | network none | the VM has no network device at all |
//! | network allowlist / full | refused (no NIC and no route to the egress proxy yet) |
//! | read_only_root | the guest mounts its overlay root read-only (`ak.ro=1`); `/tmp` and `/workspace` stay writable |
//! | disk_mb | the writable layer's size: a tmpfs of that size (throwaway) or an ext4 disk of that size (persistent) |
//! | memory / pids | the guest agent's cgroup every command joins; the VM's RAM is the memory limit plus the guest's own needs |
//! | vcpus | the VM's CPUs (rounded up) |
//! | capabilities, no_new_privs, user | applied by the guest agent to every command |
//! | mounts (project, home, volumes) | refused: no host directory is shared with a guest yet |
//! | seccomp | the same filter as native (`agentkernel-seccomp`), installed by the guest agent in every command |

use crate::channel::Channel;
use crate::qemu::{Drive, MicroVm};
use crate::vmm::{self, RuntimeDir, Vmm};
use crate::{VmError, assets, clone, disk, host};
use agentkernel_backend::{
    Backend, BackendError, Capabilities, Controls, Persistence, Readiness, Result, RuntimeState,
    Started,
};
use agentkernel_core::policy::NetworkMode;
use agentkernel_core::{
    BackendKind, ErrorKind, ExecEvent, ExecRequest, ExitStatus, HasKind, Recorder, SandboxSpec,
    Sink,
};
use agentkernel_image::Rootfs;
use agentkernel_proto as proto;
use proto::{GuestMessage, HostMessage};
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a guest may take from QEMU's start to its agent's `Ready`: ~1.5 s under TCG on
/// an idle machine; parallel test runs on two cores take several times that.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How young a running VM unknown to the store may be and still be one whose start has not
/// been recorded yet (as the native backend's `gc` grace).
const GC_GRACE: Duration = Duration::from_secs(60);
/// A persistent guest's time to sync and power off before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl HasKind for VmError {
    fn kind(&self) -> ErrorKind {
        match self {
            VmError::QemuMissing { .. } | VmError::KernelMissing(_) | VmError::GuestMissing(_) => {
                ErrorKind::Unavailable
            }
            VmError::InitramfsEntry { .. } => ErrorKind::InvalidInput,
            _ => ErrorKind::Internal,
        }
    }
}

pub struct MicroVmBackend {
    home: PathBuf,
}

impl MicroVmBackend {
    pub fn new(home: &Path) -> MicroVmBackend {
        MicroVmBackend {
            home: home.to_path_buf(),
        }
    }

    fn vm_dir(&self) -> PathBuf {
        self.home.join("vm")
    }

    /// Refuses what the guest cannot enforce, naming the field and what to use instead.
    fn check(&self, spec: &SandboxSpec, rootfs: &Rootfs) -> Result<()> {
        let refuse = |field: &str, why: &str, instead: &str| {
            Err(BackendError::new(
                ErrorKind::NotEnforceable,
                format!("the microvm backend cannot enforce {field}: {why}; {instead}"),
            ))
        };
        if spec.policy.network != NetworkMode::None {
            return refuse(
                "network access",
                "its guests have no network device yet",
                "use --no-network (or -p restrictive) with -B microvm, or -B native / -B docker for network access",
            );
        }
        if !spec.policy.mounts.is_empty() {
            return refuse(
                "host directory mounts (the permissive profile, compatibility modes, volumes)",
                "no host directory is shared with a guest yet",
                "use -p moderate or -p restrictive with -B microvm and copy files in with `cp`, or -B native",
            );
        }
        if !rootfs.host_binds.is_empty() {
            return refuse(
                "--image host",
                "the host's system directories are not shared with a guest",
                "use a registry image (e.g. --image busybox:latest) with -B microvm",
            );
        }
        if !spec.layers.is_empty() {
            return Err(self.no_snapshots());
        }
        Ok(())
    }

    fn machine(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        upper: Option<PathBuf>,
    ) -> Result<MicroVm> {
        let kernel = assets::kernel()?;
        let agent = assets::guest_agent()?;
        let initrd = assets::initramfs(&agent, &self.vm_dir())?;
        let image = disk::image_disk(
            &rootfs.id,
            &rootfs.lower_dirs,
            &self.vm_dir().join("images"),
        )?;
        let limits = &spec.policy.limits;
        let mut vm = MicroVm::new(kernel);
        vm.accel = crate::accel::choose(&vm.kernel, &vm.qemu).accel;
        vm.initrd = Some(initrd);
        // The guest kernel and agent need ~40 MiB of their own; a throwaway sandbox's writable
        // layer is a tmpfs in guest RAM too, but its pages are only allocated when written.
        vm.memory_mib =
            u32::try_from(limits.memory_mb.clamp(64, 64 * 1024) + 64).unwrap_or(u32::MAX);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        vm.cpus = limits.vcpus.clamp(1.0, cores).ceil() as u32;
        vm.tsc_khz = Some(host::tsc_khz()?);
        vm.cmdline_extra = vec![
            "quiet".to_string(),
            format!("ak.rw_size={}", limits.disk_mb),
        ];
        if spec.policy.read_only_root {
            vm.cmdline_extra.push("ak.ro=1".to_string());
        }
        vm.drives.push(Drive {
            path: image,
            read_only: true,
        });
        if let Some(upper) = upper {
            vm.drives.push(Drive {
                path: upper,
                read_only: false,
            });
        }
        Ok(vm)
    }

    fn open(&self, runtime: &RuntimeState) -> Result<Channel> {
        let rt = RuntimeDir::of(&self.home, &runtime.instance);
        if !self.is_running(runtime) {
            return Err(BackendError::new(
                ErrorKind::Conflict,
                "the sandbox's VM is not running (it was stopped or crashed): start it again",
            ));
        }
        Ok(Channel::open_pipelined(&rt, BOOT_TIMEOUT)?)
    }

    fn guest_policy(spec: &SandboxSpec) -> proto::GuestPolicy {
        let limits = &spec.policy.limits;
        proto::GuestPolicy {
            network: proto::NetworkMode::None,
            read_only_root: spec.policy.read_only_root,
            limits: proto::Limits {
                memory_mib: (limits.memory_mb > 0).then_some(limits.memory_mb),
                pids: (limits.pids > 0).then_some(limits.pids),
                cpus: (limits.vcpus > 0.0).then_some(limits.vcpus),
            },
            capabilities: spec.policy.capabilities.clone(),
            no_new_privileges: spec.policy.no_new_privs,
            seccomp: Some(match spec.policy.seccomp {
                agentkernel_core::policy::SeccompMode::DenyList => proto::SeccompMode::DenyList,
                agentkernel_core::policy::SeccompMode::AllowList => proto::SeccompMode::AllowList,
            }),
        }
    }
}

/// A guest's refusal as the error its kind is everywhere else.
fn guest_error(e: proto::GuestError, what: &str) -> BackendError {
    let kind = match e.kind {
        proto::ErrorKind::NotFound => ErrorKind::NotFound,
        proto::ErrorKind::NotExecutable | proto::ErrorKind::PermissionDenied => {
            ErrorKind::NotPermitted
        }
        proto::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
        proto::ErrorKind::Unsupported => ErrorKind::NotEnforceable,
        proto::ErrorKind::TooLarge => ErrorKind::TooLarge,
        _ => ErrorKind::Internal,
    };
    BackendError::new(kind, format!("{what}: {}", e.message))
}

fn expect_done(reply: GuestMessage, what: &str) -> Result<()> {
    match reply {
        GuestMessage::Done { .. } => Ok(()),
        GuestMessage::Error { error, .. } => Err(guest_error(error, what)),
        other => Err(BackendError::new(
            ErrorKind::Internal,
            format!("{what}: unexpected answer from the guest: {other:?}"),
        )),
    }
}

impl Backend for MicroVmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }

    fn readiness(&self) -> Readiness {
        let missing = |reason: String| Readiness {
            usable: false,
            reason,
        };
        let kernel = match assets::kernel() {
            Ok(k) if k.is_file() => k,
            Ok(k) => return missing(VmError::KernelMissing(k).to_string()),
            Err(e) => return missing(e.to_string()),
        };
        if let Err(e) = assets::guest_agent() {
            return missing(e.to_string());
        }
        let qemu = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
            .unwrap_or(false);
        if !qemu {
            return missing(
                VmError::QemuMissing {
                    qemu: "qemu-system-x86_64".into(),
                }
                .to_string(),
            );
        }
        let choice = crate::accel::choose(&kernel, Path::new("qemu-system-x86_64"));
        Readiness {
            usable: true,
            reason: format!(
                "QEMU microvm, kernel {}; {}",
                kernel.display(),
                choice.reason
            ),
        }
    }

    /// The cheap checks only: the accelerator probe runs on the first start.
    fn ready_for_use(&self) -> Readiness {
        match (assets::kernel(), assets::guest_agent()) {
            (Err(e), _) | (_, Err(e)) => Readiness {
                usable: false,
                reason: e.to_string(),
            },
            _ => Readiness {
                usable: true,
                reason: String::new(),
            },
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            attach: true,
            ..Capabilities::default()
        }
    }

    fn check_spec(&self, spec: &SandboxSpec, rootfs: &Rootfs) -> Result<()> {
        self.check(spec, rootfs)
    }

    fn start(
        &self,
        spec: &SandboxSpec,
        rootfs: &Rootfs,
        instance: &str,
        persistence: Persistence<'_>,
    ) -> Result<Started> {
        self.check(spec, rootfs)?;
        let ephemeral = matches!(persistence, Persistence::Ephemeral);
        let upper = match persistence {
            Persistence::Ephemeral => None,
            Persistence::Persistent { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(BackendError::io(format!("create {}", dir.display())))?;
                self.end_unrecorded(&spec.name, instance);
                Some(disk::upper_disk(dir, spec.policy.limits.disk_mb)?)
            }
        };
        let mut vm = self.machine(spec, rootfs, upper)?;
        // A throwaway sandbox starts as a clone of its machine's template (made on first use);
        // AGENTKERNEL_VM_CLONES=0 boots every one cold.
        let template =
            if ephemeral && std::env::var_os("AGENTKERNEL_VM_CLONES").is_none_or(|v| v != "0") {
                Some(clone::template(
                    &vm,
                    &self.vm_dir().join("templates"),
                    &Self::guest_policy(spec),
                )?)
            } else {
                None
            };
        let rt = RuntimeDir::of(&self.home, instance);
        if rt.dir.exists() {
            remove_runtime_dir(&rt);
        }
        std::fs::create_dir_all(&rt.dir)
            .map_err(BackendError::io(format!("create {}", rt.dir.display())))?;
        // Held while the VM starts: `gc` leaves a VM alone while its owner lock is held (and,
        // after that, for a grace period: the engine records a persistent sandbox only once
        // `start` has returned).
        let owner = std::fs::File::create(rt.owner_lock()).map_err(BackendError::io(format!(
            "create {}",
            rt.owner_lock().display()
        )))?;
        rustix::fs::flock(&owner, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| BackendError::io("lock the VM's owner lock")(e.into()))?;
        std::fs::write(rt.instance_file(), instance).map_err(BackendError::io(format!(
            "write {}",
            rt.instance_file().display()
        )))?;
        rt.wire(&mut vm);
        let started = (|| -> Result<(Vmm, Option<std::os::fd::OwnedFd>)> {
            let vmm = match &template {
                Some(t) => clone::start_clone(&mut vm, &rt, t)?,
                None => vmm::launch(&vm, &rt)?,
            };
            let lifeline = if ephemeral {
                // The guest powers off when this connection closes: a throwaway VM ends with
                // the process that owns it, however that process ends.
                let life = std::os::unix::net::UnixStream::connect(rt.lifeline())
                    .map_err(BackendError::io("connect to the VM's lifeline port"))?;
                Some(std::os::fd::OwnedFd::from(life))
            } else {
                None
            };
            let mut ch = Channel::open(&rt, BOOT_TIMEOUT).inspect_err(|_| vmm.kill())?;
            // Both requests at once: one round trip to the guest instead of two.
            let configure = ch.next_id();
            ch.sender().send(&HostMessage::Configure {
                id: configure,
                hostname: spec.name.clone(),
                realtime_ns: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                entropy: proto::Bytes(entropy()?),
            })?;
            let policy = ch.next_id();
            ch.sender().send(&HostMessage::SetPolicy {
                id: policy,
                policy: Self::guest_policy(spec),
            })?;
            let reply = ch.reply(configure)?;
            expect_done(reply, "configuring the guest").inspect_err(|_| vmm.kill())?;
            let reply = ch.reply(policy)?;
            expect_done(reply, "applying the policy in the guest").inspect_err(|_| vmm.kill())?;
            Ok((vmm, lifeline))
        })();
        let (vmm, lifeline) = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(vmm) = vmm::read_pid(&rt) {
                    vmm.kill();
                }
                remove_runtime_dir(&rt);
                return Err(e);
            }
        };
        // From here the lifeline says whether a throwaway VM is in use (the guest powers off
        // when its owner's connection closes). A persistent VM's owner lock stays held until
        // the engine has recorded it: its lifeline is that lock, released by
        // `Started::release`, so a VM whose start was killed before that is known for a
        // leftover at once (`end_unrecorded`, `gc`).
        let lifeline = if ephemeral {
            drop(owner);
            lifeline
        } else {
            Some(std::os::fd::OwnedFd::from(owner))
        };
        Ok(Started {
            runtime: RuntimeState {
                instance: instance.to_string(),
                pid: vmm.pid,
                start_time: vmm.start_time,
                boot_id: agentkernel_sys::proc::boot_id(),
                ephemeral,
            },
            lifeline,
        })
    }

    fn stop(&self, sandbox: Started) -> Result<()> {
        let Started { runtime, lifeline } = sandbox;
        let rt = RuntimeDir::of(&self.home, &runtime.instance);
        let vmm = Vmm {
            pid: runtime.pid,
            start_time: runtime.start_time,
        };
        if runtime.boot_id == agentkernel_sys::proc::boot_id() {
            if runtime.ephemeral {
                // Nothing of a throwaway VM is kept: no reason to wait for a clean shutdown.
                vmm.kill();
            } else {
                if vmm.is_alive()
                    && let Ok(ch) = Channel::open(&rt, Duration::from_secs(5))
                {
                    let _ = ch.sender().send(&HostMessage::Shutdown);
                    let deadline = std::time::Instant::now() + STOP_GRACE;
                    while vmm.is_alive() && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                vmm.end(&rt, Duration::from_secs(2));
            }
        }
        drop(lifeline);
        remove_runtime_dir(&rt);
        Ok(())
    }

    /// The VMM is one host process without a cgroup of its own: its CPU time (every vCPU
    /// thread's) and its proportional set size (the guest's RAM it touched, shared template
    /// pages split among the clones).
    fn usage(&self, runtime: &RuntimeState) -> Option<agentkernel_backend::usage::Usage> {
        if runtime.boot_id != agentkernel_sys::proc::boot_id() {
            return None;
        }
        agentkernel_backend::usage::of_process(runtime.pid)
    }

    fn is_running(&self, runtime: &RuntimeState) -> bool {
        runtime.boot_id == agentkernel_sys::proc::boot_id()
            && agentkernel_sys::proc::is_alive(runtime.pid, runtime.start_time)
    }

    fn exec(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        controls: Controls<'_>,
    ) -> Result<ExitStatus> {
        let mut ch = self.open(runtime)?;
        let request = proto_exec(spec, req, None);
        stream_exec(&mut ch, request, sink, controls, None)
    }

    fn attach(
        &self,
        spec: &SandboxSpec,
        runtime: &RuntimeState,
        req: &ExecRequest,
        controls: Controls<'_>,
        mut record: Option<&mut Recorder<'_>>,
    ) -> Result<ExitStatus> {
        let mut ch = self.open(runtime)?;
        let (cols, rows) = agentkernel_sys::terminal::size().unwrap_or((80, 24));
        let request = proto_exec(spec, req, Some(proto::PtySize { rows, cols }));
        let _raw = agentkernel_sys::terminal::RawTerminal::enter();
        let mut out = std::io::stdout();
        let mut to_terminal = |event: ExecEvent| {
            if let ExecEvent::Stdout(bytes) | ExecEvent::Stderr(bytes) = &event {
                let _ = out.write_all(bytes);
                let _ = out.flush();
                if let Some(r) = record.as_mut() {
                    r(bytes);
                }
            }
            std::ops::ControlFlow::Continue(())
        };
        stream_exec(
            &mut ch,
            request,
            &mut to_terminal,
            controls,
            controls.resized,
        )
    }

    fn copy_in(&self, runtime: &RuntimeState, host: &Path, inside: &Path) -> Result<PathBuf> {
        let mut ch = self.open(runtime)?;
        crate::files::copy_in(&mut ch, host, inside)
    }

    fn copy_out(&self, runtime: &RuntimeState, inside: &Path, host: &Path) -> Result<PathBuf> {
        let mut ch = self.open(runtime)?;
        crate::files::copy_out(&mut ch, inside, host)
    }

    fn read_file(&self, runtime: &RuntimeState, path: &Path, limit: u64) -> Result<Vec<u8>> {
        let mut ch = self.open(runtime)?;
        crate::files::read(&mut ch, path, limit)
    }

    fn write_file(&self, runtime: &RuntimeState, path: &Path, data: &[u8]) -> Result<()> {
        let mut ch = self.open(runtime)?;
        crate::files::write(&mut ch, path, data, 0o644)
    }

    fn remove_file(&self, runtime: &RuntimeState, path: &Path) -> Result<()> {
        let mut ch = self.open(runtime)?;
        crate::files::remove(&mut ch, path)
    }

    fn no_snapshots(&self) -> BackendError {
        BackendError::new(
            ErrorKind::NotEnforceable,
            "the microvm backend cannot capture or restore a sandbox's files yet (snapshots, fork, templates with setup, export): use -B native, -B docker or -B podman",
        )
    }

    /// VMs whose sandbox is gone or not running by the store's account, and whose owner
    /// lock nobody holds (no start in progress): killed, and their runtime directories
    /// removed. A running throwaway VM is left alone: it powers off by itself when the process
    /// that owns it ends (its lifeline port closes).
    /// A throwaway VM powers off with its owner, but its runtime directory stays behind.
    fn outlives_its_owner(&self) -> bool {
        true
    }

    fn collect_garbage(&self, live_instances: &[String], _sandboxes: &[String]) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.vm_dir()) else {
            return removed;
        };
        for entry in dirs.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "images" || name == "templates" || !entry.path().is_dir() {
                continue;
            }
            let rt = RuntimeDir { dir: entry.path() };
            let instance = std::fs::read_to_string(rt.instance_file()).unwrap_or_default();
            if live_instances.contains(&instance) || owner_held(&rt) {
                continue;
            }
            let vmm = vmm::read_pid(&rt);
            let young = std::fs::metadata(rt.instance_file())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < GC_GRACE);
            if young && vmm.is_some_and(|v| v.is_alive()) {
                continue;
            }
            // A running throwaway VM ends with its owner; one whose owner has gone (its
            // lifeline disconnected) but that is still there hangs, and goes too.
            if rt.ephemeral_marker().exists()
                && vmm.is_some_and(|v| v.is_alive())
                && !lifeline_lost(&rt)
            {
                continue;
            }
            if let Some(vmm) = vmm {
                vmm.kill();
            }
            remove_runtime_dir(&rt);
            removed.push(format!(
                "micro-VM {}",
                if instance.is_empty() {
                    &name
                } else {
                    &instance
                }
            ));
        }
        // Disks first: a template made from a removed disk is stale in the same pass.
        removed.extend(disk::collect_image_disks(&self.vm_dir().join("images")));
        removed.extend(clone::collect_templates(&self.vm_dir().join("templates")));
        removed
    }
}

/// Whether a throwaway VM's lifeline port has no host connected, by QEMU's account (QMP
/// `query-chardev` names a listening socket without a client "disconnected:…"). A VM whose
/// QMP does not answer (another client has it: QMP takes one at a time) is not taken for
/// lost: killing a VM in use would be worse than keeping a hung one.
fn lifeline_lost(rt: &RuntimeDir) -> bool {
    let Ok(mut qmp) = vmm::Qmp::connect(&rt.qmp(), Duration::from_secs(2)) else {
        return false;
    };
    let Ok(chardevs) = qmp.execute("query-chardev", None) else {
        return false;
    };
    let life = format!("port{}", vmm::PORTS);
    chardevs.as_array().into_iter().flatten().any(|c| {
        c["label"] == life.as_str()
            && c["filename"]
                .as_str()
                .is_some_and(|f| f.starts_with("disconnected:"))
    })
}

/// Fresh randomness from the host for the guest's pool (a clone's is its template's).
fn entropy() -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; 64];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(BackendError::io("open /dev/urandom"))?,
        &mut bytes,
    )
    .map_err(BackendError::io("read /dev/urandom"))?;
    Ok(bytes)
}

/// Whether some process holds the VM's owner lock (it is starting, or a throwaway sandbox's
/// process still runs).
fn owner_held(rt: &RuntimeDir) -> bool {
    let Ok(f) = std::fs::File::open(rt.owner_lock()) else {
        return false;
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
}

impl MicroVmBackend {
    /// Ends the VMs of sandbox `name` other than `instance` whose owner lock nobody holds: a
    /// persistent sandbox is started under its sandbox lock, and only when the store says it is
    /// not running, so such a VM was left by a start killed before the engine recorded it. It
    /// would hold the sandbox's disk and fail this start.
    fn end_unrecorded(&self, name: &str, instance: &str) {
        let Ok(dirs) = std::fs::read_dir(self.vm_dir()) else {
            return;
        };
        for entry in dirs.flatten() {
            let rt = RuntimeDir { dir: entry.path() };
            let other = std::fs::read_to_string(rt.instance_file()).unwrap_or_default();
            let of_this_sandbox = other
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()));
            if !of_this_sandbox || other == instance || owner_held(&rt) {
                continue;
            }
            if let Some(vmm) = vmm::read_pid(&rt) {
                vmm.kill();
            }
            remove_runtime_dir(&rt);
        }
    }
}

fn remove_runtime_dir(rt: &RuntimeDir) {
    let _ = std::fs::remove_dir_all(&rt.dir);
}

/// The request the guest runs: the sandbox's environment with the request's on top, its
/// working directory by default, its user.
fn proto_exec(
    spec: &SandboxSpec,
    req: &ExecRequest,
    tty: Option<proto::PtySize>,
) -> proto::ExecRequest {
    let env = agentkernel_core::exec::merged_env(&spec.env, req);
    proto::ExecRequest {
        argv: req.argv.clone(),
        env: env
            .into_iter()
            .map(|(name, value)| proto::EnvVar { name, value })
            .collect(),
        workdir: Some(req.workdir.clone().unwrap_or_else(|| spec.workdir.clone())),
        user: Some(proto::User::Id {
            uid: spec.policy.user.uid,
            gid: spec.policy.user.gid,
        }),
        tty,
        stdin: req.stdin || tty.is_some(),
        timeout_ms: req
            .timeout
            .map(|t| t.as_millis().min(u64::MAX as u128) as u64),
    }
}

/// Runs `request` on `ch` and streams its events into `sink` until it exits: the caller's
/// stdin is forwarded when the request asks for it, bytes on `controls.signals` become
/// signals, and readability of `resized` a terminal resize.
fn stream_exec(
    ch: &mut Channel,
    request: proto::ExecRequest,
    sink: &mut Sink<'_>,
    controls: Controls<'_>,
    resized: Option<BorrowedFd<'_>>,
) -> Result<ExitStatus> {
    let id = ch.next_id();
    let argv0 = request.argv.first().cloned().unwrap_or_default();
    let forward_stdin = request.stdin;
    ch.sender().send(&HostMessage::Exec { id, request })?;
    if forward_stdin {
        let sender = ch.sender();
        // Detached: a read of the caller's stdin cannot be interrupted; the thread ends with
        // the process, or when the connection is gone.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rustix::io::read(std::io::stdin(), &mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = sender.send(&HostMessage::StdinClose { id });
                        return;
                    }
                    Ok(n) => {
                        let data = proto::Bytes(buf[..n].to_vec());
                        if sender.send(&HostMessage::Stdin { id, data }).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    loop {
        while let Some(msg) = ch.try_recv()? {
            match msg {
                GuestMessage::Exec { id: i, event } if i == id => {
                    let event = match event {
                        proto::ExecEvent::Started { pid } => ExecEvent::Started { pid },
                        proto::ExecEvent::Stdout(b) => ExecEvent::Stdout(b.0),
                        proto::ExecEvent::Stderr(b) => ExecEvent::Stderr(b.0),
                        proto::ExecEvent::Exit {
                            code,
                            signal,
                            timed_out,
                            oom_killed,
                        } => {
                            // 124 for a timeout, as `timeout(1)` and the other backends say.
                            let code = if timed_out {
                                124
                            } else {
                                code.unwrap_or_else(|| 128 + signal.unwrap_or(0))
                            };
                            let status = ExitStatus {
                                code,
                                signal,
                                oom_killed,
                                timed_out,
                                // The guest's tmpfs is its own memory, not the host's to read.
                                files_in_memory_mb: None,
                            };
                            let _ = sink(ExecEvent::Exit(status));
                            return Ok(status);
                        }
                    };
                    if sink(event).is_break() {
                        // Closing the connection (when `ch` is dropped) ends the command.
                        let _ = ch.sender().send(&HostMessage::Signal { id, signal: 9 });
                        return Ok(ExitStatus {
                            code: 137,
                            signal: Some(9),
                            ..ExitStatus::default()
                        });
                    }
                }
                GuestMessage::Error { id: Some(i), error } if i == id => {
                    return Err(match error.kind {
                        proto::ErrorKind::NotFound => BackendError::new(
                            ErrorKind::CommandNotFound,
                            format!("command not found: {argv0}"),
                        ),
                        proto::ErrorKind::NotExecutable | proto::ErrorKind::PermissionDenied => {
                            BackendError::new(
                                ErrorKind::NotExecutable,
                                format!("command not executable: {argv0}: permission denied"),
                            )
                        }
                        _ => guest_error(error, "running the command in the guest"),
                    });
                }
                GuestMessage::Error { id: None, error } => {
                    return Err(guest_error(error, "the guest agent"));
                }
                _ => {}
            }
        }
        let extra: Vec<BorrowedFd<'_>> =
            [controls.signals, resized].into_iter().flatten().collect();
        let ready: Vec<bool> = {
            let conn = ch.fd();
            let mut fds = vec![rustix::event::PollFd::new(
                &conn,
                rustix::event::PollFlags::IN,
            )];
            for fd in &extra {
                fds.push(rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(BackendError::io("poll")(e.into())),
            }
            fds.iter().map(|f| !f.revents().is_empty()).collect()
        };
        if let Some(sig_fd) = controls.signals
            && ready.get(1).copied().unwrap_or(false)
        {
            let mut sig = [0u8; 16];
            if let Ok(n) = rustix::io::read(sig_fd, &mut sig) {
                for s in &sig[..n] {
                    ch.sender().send(&HostMessage::Signal {
                        id,
                        signal: i32::from(*s),
                    })?;
                }
            }
        }
        let resize_slot = if controls.signals.is_some() { 2 } else { 1 };
        if let Some(fd) = resized
            && ready.get(resize_slot).copied().unwrap_or(false)
        {
            let mut drain = [0u8; 64];
            let _ = rustix::io::read(fd, &mut drain);
            if let Some((cols, rows)) = agentkernel_sys::terminal::size() {
                ch.sender().send(&HostMessage::Resize {
                    id,
                    size: proto::PtySize { rows, cols },
                })?;
            }
        }
        if ready[0] {
            ch.fill()?;
        }
    }
}

/// The micro-VM backend, for the engine's registry of backends. `firecracker` and `qemu`
/// name the VMM explicitly; only QEMU exists (no Firecracker can be tested here).
pub const REGISTRY: agentkernel_backend::Registry = agentkernel_backend::Registry {
    kinds: &[BackendKind::Microvm],
    make: |kind, home| {
        (kind == BackendKind::Microvm)
            .then(|| Box::new(MicroVmBackend::new(home)) as Box<dyn Backend>)
    },
};
