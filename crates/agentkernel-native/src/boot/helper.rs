//! The boot helper: booting from a multithreaded program (the HTTP server).
//!
//! The init is cloned like a fork and runs ordinary Rust code before its init loop, which a
//! multithreaded process cannot do safely (another thread may hold the allocator's lock at the
//! moment of the copy). A program that has called [`use_boot_helper`] therefore never clones
//! the init itself: `boot` spawns the agentkernel executable again as `agentkernel
//! __boot-helper`, a fresh single-threaded process, and that process performs the same clone
//! and runs the same child code.
//!
//! The exchange:
//! - The caller spawns the helper with `std::process::Command` (safe from any thread: the only
//!   `pre_exec` step is fcntl(2) clearing close-on-exec on the descriptors it passes). Those
//!   are the status pipe's write end, the lifeline's read end and the `cgroup.procs` files,
//!   inherited at numbers named in the request (copies made above the standard streams).
//! - The request (hostname, root file system plan, detach, descriptor numbers) is one
//!   JSON document on the helper's stdin.
//! - The helper clones the init, with CLONE_PARENT for an ephemeral sandbox so that the init is
//!   the caller's child (the caller reaps it, as when it boots directly), without it for a
//!   detached one (reparented to the host's PID 1 when the helper exits, as when the CLI that
//!   started a persistent sandbox exits). It closes its copies of the descriptors, answers one
//!   JSON line on stdout (the init's pid and start time, or what failed) and exits.
//! - The caller then reads the status pipe to its end, exactly as after a direct clone.

use super::{BootError, BootPlan, Cloned, clone_init};
use crate::rootfs::RootfsPlan;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The first argument that makes the agentkernel binary a boot helper.
pub const BOOT_HELPER_ROLE: &str = "__boot-helper";

static HELPER_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Makes every later `boot` of this process go through a helper process: `exe` (an agentkernel
/// binary; `/proc/self/exe` for the agentkernel binary itself) run as `exe __boot-helper`.
/// Required before a multithreaded program boots sandboxes; call it once, at startup. Later
/// calls change nothing: a process boots one way for its whole life, so that an init's
/// parentage (and who reaps it) never changes under it.
pub fn use_boot_helper(exe: PathBuf) {
    let _ = HELPER_EXE.set(exe);
}

/// The helper executable, if `use_boot_helper` was called.
pub(super) fn configured() -> Option<&'static Path> {
    HELPER_EXE.get().map(PathBuf::as_path)
}

/// What the helper needs to clone the init.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    hostname: String,
    rootfs: RootfsPlan,
    detach: bool,
    /// Inherited descriptors: the status pipe's write end, the lifeline's read end and the
    /// `cgroup.procs` files.
    status_fd: RawFd,
    life_fd: RawFd,
    cgroup_fds: Vec<RawFd>,
}

/// The helper's answer, one JSON line on its stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    /// The init was cloned; its setup is reported on the status pipe.
    Started { pid: u32, start_time: Option<u64> },
    /// clone(2) failed with this errno.
    CloneFailed { errno: i32 },
    /// Nothing was cloned.
    Failed { message: String },
}

/// Boots through the helper `exe`: returns the init once cloned. `status_w` and `life_r` are
/// closed here, so that the caller's end of the status pipe reaches its end when the init is
/// done with setup. On error nothing is left running.
pub(super) fn boot_through(
    exe: &Path,
    plan: &BootPlan<'_>,
    status_w: OwnedFd,
    life_r: OwnedFd,
) -> Result<Cloned, BootError> {
    // Copies to pass, never at 0, 1 or 2: the child's standard streams are set up over those
    // numbers before `pre_exec` runs (and a daemon may have closed its own, so that a pipe got
    // one of them). Close-on-exec here, so that no other process spawned meanwhile by another
    // thread inherits them.
    let inheritable = |fd: BorrowedFd<'_>| {
        rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| BootError::Io(e.into()))
    };
    let status = inheritable(status_w.as_fd())?;
    let life = inheritable(life_r.as_fd())?;
    drop(status_w);
    drop(life_r);
    let cgroups = plan
        .cgroup_procs
        .iter()
        .map(|fd| inheritable(fd.as_fd()))
        .collect::<Result<Vec<OwnedFd>, BootError>>()?;
    let request = Request {
        hostname: plan.hostname.to_string(),
        rootfs: plan.rootfs.clone(),
        detach: plan.detach,
        status_fd: status.as_raw_fd(),
        life_fd: life.as_raw_fd(),
        cgroup_fds: cgroups.iter().map(AsRawFd::as_raw_fd).collect(),
    };
    let body = serde_json::to_vec(&request)
        .map_err(|e| BootError::Helper(format!("cannot pass the sandbox's plan to it: {e}")))?;
    let mut passed = vec![request.status_fd, request.life_fd];
    passed.extend(&request.cgroup_fds);

    let mut cmd = Command::new(exe);
    // Nothing of the caller's environment (a server's secrets) goes to the helper; the init
    // overwrites its copy of the helper's strings anyway (`inherited.rs`).
    cmd.arg0("agentkernel")
        .arg(BOOT_HELPER_ROLE)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the hook runs in the forked child of a possibly multithreaded process, where only
    // async-signal-safe functions may be called: it reads a vector allocated beforehand and
    // calls fcntl(2), nothing else (no allocation: an OS error is stored inline).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &passed {
                if libc::fcntl(*fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // The helper has its copies (or there is no helper): ours go, so that only the init keeps
    // the status pipe's write end.
    drop(status);
    drop(life);
    drop(cgroups);
    let mut child = spawned.map_err(|source| BootError::HelperSpawn {
        exe: exe.to_path_buf(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that died early has closed its end: its answer (or its absence) below says
        // what happened.
        let _ = stdin.write_all(&body);
    }
    let out = child.wait_with_output().map_err(BootError::Io)?;
    let reply = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|line| serde_json::from_str::<Reply>(line).ok());
    match reply {
        Some(Reply::Started { pid, start_time }) => Ok(Cloned {
            pid,
            start_time,
            own_child: !plan.detach,
        }),
        Some(Reply::CloneFailed { errno }) => Err(BootError::Clone(
            rustix::io::Errno::from_raw_os_error(errno),
        )),
        Some(Reply::Failed { message }) => Err(BootError::Helper(message)),
        None => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            let mut msg = format!(
                "{} exited ({}) without an answer",
                exe.display(),
                out.status
            );
            if stderr.is_empty() {
                msg.push_str(": is it an agentkernel executable of the same version?");
            } else {
                msg.push_str(": ");
                msg.push_str(stderr);
            }
            Err(BootError::Helper(msg))
        }
    }
}

/// The helper process (`agentkernel __boot-helper`): reads the request on stdin, clones the
/// init, answers on stdout. Must run before anything else in the process (single-threaded).
/// Returns the exit code.
pub fn boot_helper_main() -> i32 {
    // The answer goes to a copy of stdout, close-on-exec and closed in the init right after
    // the clone; fd 1 itself becomes /dev/null. So the caller's read of the answer ends when
    // the helper exits, not when the init lets go of its inherited stdout.
    let reply_to = match answer_channel() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("agentkernel {BOOT_HELPER_ROLE}: cannot set up its output: {e}");
            return 1;
        }
    };
    let reply = serve(&reply_to);
    let code = match reply {
        Reply::Started { .. } => 0,
        _ => 1,
    };
    let line = match serde_json::to_string(&reply) {
        Ok(line) => line,
        Err(_) => return 1,
    };
    let mut out = std::fs::File::from(reply_to);
    if writeln!(out, "{line}").is_err() {
        // The caller is gone: an ephemeral init ends with its lifeline; nothing else to do.
        return 1;
    }
    code
}

fn answer_channel() -> std::io::Result<OwnedFd> {
    let reply_to = rustix::io::fcntl_dupfd_cloexec(std::io::stdout(), 3)?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    rustix::stdio::dup2_stdout(&devnull)?;
    Ok(reply_to)
}

fn serve(reply_to: &OwnedFd) -> Reply {
    let failed = |message: String| Reply::Failed { message };
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return failed(format!("cannot read the request: {e}"));
    }
    let req: Request = match serde_json::from_str(&input) {
        Ok(r) => r,
        Err(e) => return failed(format!("invalid request: {e}")),
    };
    let mut numbers = vec![req.status_fd, req.life_fd];
    numbers.extend(&req.cgroup_fds);
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != numbers.len() {
        return failed("the request names a descriptor twice".into());
    }
    let mut owned = Vec::with_capacity(numbers.len());
    for fd in numbers {
        match inherited(fd, reply_to) {
            Ok(o) => owned.push(o),
            Err(message) => return failed(message),
        }
    }
    let mut owned = owned.into_iter();
    let (Some(status_w), Some(life_r)) = (owned.next(), owned.next()) else {
        return failed("the request names no status pipe".into());
    };
    let cgroup_procs: Vec<OwnedFd> = owned.collect();
    let plan = BootPlan {
        hostname: &req.hostname,
        rootfs: &req.rootfs,
        cgroup_procs: &cgroup_procs,
        detach: req.detach,
        first: None,
    };
    // An ephemeral init becomes the caller's child, which holds its lifeline and reaps it; a
    // detached one stays ours until we exit, then belongs to the host's PID 1.
    let extra = if req.detach { 0 } else { libc::CLONE_PARENT };
    match clone_init(&plan, status_w, life_r, &[reply_to.as_raw_fd()], extra) {
        // The init cannot have been reaped yet (it is our child or our waiting caller's), so
        // its start time names it.
        Ok(pid) => Reply::Started {
            pid,
            start_time: agentkernel_sys::proc::start_time(pid),
        },
        Err(errno) => Reply::CloneFailed {
            errno: errno.raw_os_error(),
        },
    }
}

/// Takes ownership of a descriptor the caller passed at number `fd`, after checking it is open
/// and not one of ours.
fn inherited(fd: RawFd, reply_to: &OwnedFd) -> Result<OwnedFd, String> {
    let not_passed = || format!("descriptor {fd} was not passed to the boot helper");
    if fd < 3 || fd == reply_to.as_raw_fd() {
        return Err(not_passed());
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; an unused number yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(not_passed());
    }
    // SAFETY: the descriptor is open, was inherited for this purpose (it is not 0-2 nor the
    // answer channel, and each number is taken once), and nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Nothing the helper might start inherits it; the init keeps its own copy regardless.
    let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::UpperDir;

    #[test]
    fn request_and_reply_round_trip() {
        let req = Request {
            hostname: "h".into(),
            rootfs: RootfsPlan {
                lower_dirs: vec!["/a".into(), "/b".into()],
                upper: UpperDir::Disk {
                    image: "/d/disk.img".into(),
                },
                mountpoint: "/m".into(),
                host_binds: vec!["/usr".into()],
                binds: vec![agentkernel_core::policy::BindMount {
                    source: "/src".into(),
                    target: "/workspace".into(),
                    read_only: false,
                    volume: None,
                }],
                masked: vec!["/workspace/.agentkernel".into()],
                disk_mb: 64,
                read_only: true,
                workdir: "/workspace".into(),
            },
            detach: true,
            status_fd: 7,
            life_fd: 8,
            cgroup_fds: vec![9, 10],
        };
        let text = serde_json::to_string(&req).expect("serialize");
        let back: Request = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(format!("{req:?}"), format!("{back:?}"));

        let line = serde_json::to_string(&Reply::Started {
            pid: 42,
            start_time: Some(7),
        })
        .expect("serialize");
        assert!(matches!(
            serde_json::from_str::<Reply>(&line).expect("deserialize"),
            Reply::Started {
                pid: 42,
                start_time: Some(7)
            }
        ));
    }
}
