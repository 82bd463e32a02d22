//! The native backend: sandboxes built directly from Linux namespaces, an overlay root,
//! seccomp, Landlock, capabilities and cgroups.
//!
//! A sandbox is an init process (PID 1 of new mount, pid, net, ipc, uts and cgroup namespaces)
//! that holds the namespaces; commands are started by joining them (`exec.rs`), except the
//! command of a throwaway sandbox without network, which its init starts itself
//! (`launch.rs`, `run_throwaway`). A persistent sandbox's init outlives the process that
//! started it, so a sandbox created by one CLI process is used and stopped by later ones: a
//! sandbox is found again by its init's pid and start time, and its cgroups by its instance id.
//!
//! `start` clones the sandbox init like a fork and runs ordinary Rust code in the child, which
//! needs a single-threaded process: a multithreaded caller (the HTTP server) must call
//! `use_boot_helper` at startup, and the clone then happens in a fresh helper process.
//! `exec` starts commands with `clone(CLONE_VM | CLONE_VFORK)` and only system calls in the
//! child (`vfork.rs`), which any thread may do. `attach` takes over the caller's terminal and
//! stdin, so only an interactive CLI calls it.

pub mod attach;
mod backend;
mod boot;
pub mod cgroup;
mod copy;
pub mod devices;
pub mod disk;
pub mod exec;
mod export;
pub mod files;
mod inode;
pub mod launch;
pub mod layers;
pub mod net;
mod pty;
pub mod relay;
mod rootfs;
pub mod security;
mod treecopy;
mod vfork;

pub use backend::{NativeBackend, REGISTRY};
pub use boot::{BOOT_HELPER_ROLE, Booted, boot_helper_main, use_boot_helper};
pub use exec::Target;
pub use relay::{Ending, Sink};
pub use rootfs::{RootfsPlan, UpperDir};

use agentkernel_core::policy::Policy;
use agentkernel_core::{ExecEvent, ExitStatus};
use rustix::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// Errors of the native backend; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error("native backend: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether this host can run native sandboxes; the reason when not.
/// Removes the cgroups of sandboxes that ended without their owner cleaning up (a CLI or
/// server killed with SIGKILL): groups that are leftovers by
/// [`cgroup::Cgroup::remove_if_leftover`] (empty, not held, and used or not being made). Cheap enough for every command (one
/// directory listing and a few small reads per group), so whatever a killed process leaves is
/// gone at the next agentkernel command, not at the next `gc`. Never kills a process.
pub fn sweep_ended_sandboxes() -> Vec<String> {
    cgroup::Cgroup::list_ids()
        .into_iter()
        .filter(|id| {
            let group = cgroup::Cgroup::open(id);
            group.remove_if_leftover()
        })
        .collect()
}

pub fn probe() -> Result<(), String> {
    let admin = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false);
    if !admin {
        return Err(
            "it needs CAP_SYS_ADMIN to create namespaces and mounts: run agentkernel as root"
                .to_string(),
        );
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Err("the kernel has no overlayfs: load it with `modprobe overlay`".to_string());
    }
    cgroup::can_limit_memory_and_pids()?;
    cgroup::can_limit_devices()
}

/// A sandbox to start.
pub struct StartSpec<'a> {
    /// The instance id: names the cgroups; new at every start.
    pub id: &'a str,
    pub hostname: &'a str,
    pub rootfs: &'a RootfsPlan,
    pub policy: &'a Policy,
    /// Outlive the caller (persistent sandboxes); otherwise the sandbox ends with the caller.
    pub detach: bool,
}

/// A started sandbox; it owns a throwaway sandbox's lifeline (see `Booted`).
#[derive(Debug)]
pub struct Running {
    pub booted: Booted,
}

/// Creates the cgroups, boots the init into its namespaces and root, and connects the network.
/// On error nothing is left behind: no process, cgroup, mount or pin.
pub fn start(spec: &StartSpec<'_>) -> Result<Running, NativeError> {
    let (group, _owner) = cgroup::Cgroup::create_held(spec.id, &spec.policy.limits)?;
    let result = boot_and_connect(spec, &group);
    if result.is_err() {
        let _ = group.destroy();
    }
    result
}

fn boot_and_connect(spec: &StartSpec<'_>, group: &cgroup::Cgroup) -> Result<Running, NativeError> {
    let procs = group.open_procs_files()?;
    let booted = boot::boot(&boot::BootPlan {
        hostname: spec.hostname,
        rootfs: spec.rootfs,
        cgroup_procs: &procs,
        detach: spec.detach,
        first: None,
    })?;
    Ok(Running { booted })
}

/// Ends an init this process has just started, and reaps it when it is this process's child
/// (never otherwise: a detached init started through the boot helper belongs to the host's
/// PID 1).
fn end_started(booted: Booted, detach: bool) {
    match booted.lifeline {
        Some(fd) => boot::release(fd),
        None => {
            if agentkernel_sys::proc::is_alive(booted.pid, booted.start_time) {
                kill(booted.pid);
            }
        }
    }
    if boot::is_caller_child(detach) {
        boot::reap(booted.pid);
    }
}

fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// How long `stop` waits for a killed detached init to be gone.
const INIT_EXIT_WAIT: Duration = Duration::from_secs(5);

/// Kills a detached init and waits until it has exited (its pidfd turns readable), so that
/// `stop`/`remove` return with the sandbox's processes gone: the kernel ends every process of
/// the init's pid namespace before the init's own exit completes. On a loaded machine that
/// can take longer than the kill itself (seen as an init still listed after `remove`).
fn kill_and_wait(pid: u32) {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    // Opened before the kill: the descriptor stays with this process even if the pid is
    // reused after it exits.
    let pidfd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok();
    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    if let Some(fd) = pidfd {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let wait = rustix::event::Timespec {
            tv_sec: INIT_EXIT_WAIT.as_secs() as i64,
            tv_nsec: 0,
        };
        let _ = rustix::event::poll(&mut fds, Some(&wait));
    }
}

/// Stops a sandbox: ends its init (which takes every process of its pid namespace with it),
/// removes the network pin and the cgroups. `target` is None when the init is known to be gone
/// (another boot); `lifeline` is given for a sandbox this process started without detaching.
pub fn stop(
    id: &str,
    target: Option<Target>,
    lifeline: Option<OwnedFd>,
) -> Result<(), NativeError> {
    match (lifeline, target) {
        // An ephemeral sandbox started by this process: its init is this process's child,
        // whether it was cloned directly or by the boot helper (CLONE_PARENT).
        (Some(fd), Some(t)) => {
            boot::release(fd);
            boot::reap(t.pid);
        }
        (Some(fd), None) => boot::release(fd),
        (None, Some(t)) => {
            // A detached init is never reaped here: it was started by another process, or by
            // this one through the boot helper (reparented to PID 1), or directly by a CLI that
            // exits soon after. The pid is checked against its start time: a recycled pid is
            // never killed.
            if agentkernel_sys::proc::is_alive(t.pid, t.start_time) {
                kill_and_wait(t.pid);
            }
        }
        (None, None) => {}
    }
    cgroup::Cgroup::open(id).destroy()?;
    Ok(())
}

/// A command to start in a sandbox, and how its caller talks to it.
pub struct CommandSpec<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub workdir: &'a str,
    pub timeout: Option<Duration>,
    /// Pass the caller's stdin to the command (otherwise it reads /dev/null).
    pub forward_stdin: bool,
    /// Bytes are signal numbers to forward to the command.
    pub signals: Option<BorrowedFd<'a>>,
}

/// Whether `run_throwaway` can run a sandbox with `policy`: the init is cloned by this process
/// (no boot helper) and the sandbox has no network to route to the egress proxy before its
/// command starts.
pub fn can_run_throwaway(policy: &Policy) -> bool {
    !boot::uses_helper() && !policy.network.is_networked()
}

/// Runs one command in a new sandbox whose init starts it (`launch.rs`), streaming its events
/// to `sink`, then tears the sandbox down. The caller checks `can_run_throwaway` first. On
/// return nothing is left: no process, cgroup or mount.
pub fn run_throwaway(
    spec: &StartSpec<'_>,
    command: &CommandSpec<'_>,
    sink: &mut Sink<'_>,
) -> Result<(ExitStatus, Ending), NativeError> {
    let (group, _owner) = cgroup::Cgroup::create_held(spec.id, &spec.policy.limits)?;
    let result = run_in_group(spec, command, &group, sink);
    let destroyed = group.destroy();
    let outcome = result?;
    destroyed?;
    Ok(outcome)
}

fn run_in_group(
    spec: &StartSpec<'_>,
    command: &CommandSpec<'_>,
    group: &cgroup::Cgroup,
    sink: &mut Sink<'_>,
) -> Result<(ExitStatus, Ending), NativeError> {
    let procs = group.open_procs_files()?;
    let pipes = exec::StdioPipes::new(command.forward_stdin)?;
    let first = launch::FirstCommand {
        argv: command.argv,
        env: command.env,
        workdir: command.workdir,
        policy: spec.policy,
        stdio: [
            pipes.child_ends[0].as_raw_fd(),
            pipes.child_ends[1].as_raw_fd(),
            pipes.child_ends[2].as_raw_fd(),
        ],
    };
    let oom_before = group.oom_kills();
    let booted = boot::boot_reporting(&boot::BootPlan {
        hostname: spec.hostname,
        rootfs: spec.rootfs,
        cgroup_procs: &procs,
        detach: false,
        first: Some(&first),
    });
    drop(procs);
    drop(pipes.child_ends);
    let (booted, status) = match booted {
        Ok(b) => b,
        Err(boot::BootError::Setup(report)) => {
            return Err(launch::start_failure(&report, &first)
                .unwrap_or(boot::BootError::Setup(report).into()));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(lifeline) = booted.lifeline else {
        end_started(booted, false);
        return Err(boot::BootError::Setup("the sandbox has no lifeline".into()).into());
    };
    let mut launched = launch::Launched {
        pid: launch::child_of(booted.pid),
        stdin: pipes.stdin.map(std::fs::File::from),
        stdout: Some(pipes.stdout),
        stderr: Some(pipes.stderr),
        status: status.fd,
        early: status.early,
        lifeline,
    };
    let relayed = relay::relay(
        &mut launched,
        sink,
        command.timeout,
        command.signals,
        command.forward_stdin,
    );
    // Read while the sandbox's filesystems still exist: they go with its init.
    let files_in_memory = group.shmem_bytes();
    // The init exits when its lifeline closes and takes every process of the sandbox with it.
    drop(launched);
    boot::reap(booted.pid);
    let (mut status, ending) = relayed?;
    status.oom_killed = group.oom_kills() > oom_before;
    if status.oom_killed {
        status.files_in_memory_mb = files_in_memory.map(|b| b >> 20);
    }
    let _ = sink(ExecEvent::Exit(status));
    Ok((status, ending))
}

/// A command to run in a running sandbox.
pub struct ExecSpec<'a> {
    pub id: &'a str,
    pub target: Target,
    pub policy: &'a Policy,
    pub command: CommandSpec<'a>,
}

/// Runs a command in the sandbox, streaming `Started`, output and `Exit` events to `sink`.
pub fn exec(spec: &ExecSpec<'_>, sink: &mut Sink<'_>) -> Result<(ExitStatus, Ending), NativeError> {
    let root = files::root_of(spec.target.pid)?;
    files::check_workdir(&root, spec.command.workdir)?;
    let security = security::SecurityPlan::prepare(spec.policy, &root)?;
    let group = cgroup::Cgroup::open(spec.id);
    let procs = group.open_procs_files()?;
    let oom_before = group.oom_kills();
    let mut child = exec::spawn(exec::ExecPlan {
        target: spec.target,
        argv: spec.command.argv,
        env: spec.command.env,
        workdir: spec.command.workdir,
        security: &security,
        cgroup_procs: &procs,
        stdio: exec::StdioMode::Pipes {
            stdin: spec.command.forward_stdin,
        },
    })?;
    drop(procs);
    let (mut status, ending) = relay::relay(
        &mut child,
        sink,
        spec.command.timeout,
        spec.command.signals,
        spec.command.forward_stdin,
    )?;
    status.oom_killed = group.oom_kills() > oom_before;
    if status.oom_killed {
        status.files_in_memory_mb = group.shmem_bytes().map(|b| b >> 20);
    }
    let _ = sink(ExecEvent::Exit(status));
    Ok((status, ending))
}

impl agentkernel_core::HasKind for NativeError {
    /// The one place native errors become a kind (and so an exit code, an HTTP status and an
    /// MCP error).
    fn kind(&self) -> agentkernel_core::ErrorKind {
        use agentkernel_core::ErrorKind;
        use exec::ExecError;
        use files::FileError;
        match self {
            NativeError::Exec(e) => match e {
                ExecError::NotFound(_) => ErrorKind::CommandNotFound,
                ExecError::NotExecutable(_) => ErrorKind::NotExecutable,
                ExecError::NoCommand => ErrorKind::InvalidInput,
                ExecError::NotRunning => ErrorKind::Conflict,
                ExecError::Spawn { .. } => ErrorKind::Internal,
            },
            NativeError::Files(f) => match f {
                FileError::TooLarge { .. } => ErrorKind::TooLarge,
                // The request is well formed; what the sandbox holds at that path now is
                // what stands in its way (409, as for a directory that is not empty).
                FileError::DirectoryNotEmpty(_)
                | FileError::NotRunning
                | FileError::IsDirectory(_)
                | FileError::NotRegular { .. }
                | FileError::DanglingLink { .. }
                | FileError::LinkNotFollowed(_) => ErrorKind::Conflict,
                FileError::HostNotRegular { .. } => ErrorKind::InvalidInput,
                FileError::KernelFilesystem { .. } => ErrorKind::NotPermitted,
                FileError::NoWorkdir(_) => ErrorKind::NotFound,
                FileError::Sandbox { source, .. } => ErrorKind::of_io(source),
                FileError::Host { .. } | FileError::HostDest(_) => ErrorKind::Internal,
            },
            NativeError::Disk(disk::DiskError::TooLarge { .. }) => ErrorKind::InvalidInput,
            NativeError::Boot(_)
            | NativeError::Cgroup(_)
            | NativeError::Security(_)
            | NativeError::Disk(_)
            | NativeError::Io(_) => ErrorKind::Internal,
        }
    }
}
