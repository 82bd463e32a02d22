//! Interactive sessions: a command on a pty inside the sandbox, wired to the caller's terminal
//! in raw mode, with window-size changes passed through.

use crate::exec::{ExecPlan, StdioMode, Target};
use crate::security::SecurityPlan;
use agentkernel_core::ExitStatus;
use agentkernel_core::policy::Policy;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;

pub use agentkernel_core::exec::Recorder;

pub struct AttachSpec<'a> {
    pub id: &'a str,
    pub target: Target,
    pub policy: &'a Policy,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub workdir: &'a str,
    /// Readable when the caller's terminal was resized (a SIGWINCH pipe).
    pub resized: Option<BorrowedFd<'a>>,
}

/// Runs the session until the command exits; everything the command prints is also passed to
/// `record` (asciicast recording) when given.
pub fn attach(
    spec: &AttachSpec<'_>,
    mut record: Option<&mut Recorder<'_>>,
) -> Result<ExitStatus, crate::NativeError> {
    let root = crate::files::root_of(spec.target.pid)?;
    crate::files::check_workdir(&root, spec.workdir)?;
    let security = SecurityPlan::prepare(spec.policy, &root)?;
    let group = crate::cgroup::Cgroup::open(spec.id);
    let procs = group.open_procs_files()?;
    let (master, slave) = crate::pty::open_in_sandbox(spec.target.pid)?;
    copy_size(&master);
    let mut child = crate::exec::spawn(ExecPlan {
        target: spec.target,
        argv: spec.argv,
        env: spec.env,
        workdir: spec.workdir,
        security: &security,
        cgroup_procs: &procs,
        stdio: StdioMode::Pty(slave),
    })?;
    drop(procs);

    let _raw = agentkernel_sys::terminal::RawTerminal::enter();
    let to_master: OwnedFd = master.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(std::io::stdin(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if write_all(&to_master, &buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdout = std::io::stdout();
    loop {
        use rustix::event::{PollFd, PollFlags};
        let mut fds = vec![PollFd::new(&master, PollFlags::IN)];
        if let Some(r) = &spec.resized {
            fds.push(PollFd::new(r, PollFlags::IN));
        }
        if rustix::event::poll(&mut fds, None).is_err() {
            continue;
        }
        let master_ready = !fds[0].revents().is_empty();
        let resized = fds
            .get(1)
            .is_some_and(|f| f.revents().contains(PollFlags::IN));
        drop(fds);
        if resized && let Some(r) = spec.resized {
            let mut drain = [0u8; 64];
            let _ = rustix::io::read(r, &mut drain);
            copy_size(&master);
        }
        if master_ready {
            match rustix::io::read(&master, &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = stdout.write_all(&buf[..n]);
                    let _ = stdout.flush();
                    if let Some(rec) = record.as_mut() {
                        rec(&buf[..n]);
                    }
                }
                // EIO: every holder of the slave closed it, i.e. the session ended.
                _ => break,
            }
        }
    }
    let status = child.wait()?;
    let mut exit = ExitStatus {
        code: status.code().unwrap_or(0),
        signal: status.signal(),
        ..Default::default()
    };
    if let Some(sig) = exit.signal {
        exit.code = 128 + sig;
    }
    Ok(exit)
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> rustix::io::Result<()> {
    while !data.is_empty() {
        let n = rustix::io::write(fd.as_fd(), data)?;
        data = &data[n..];
    }
    Ok(())
}

/// Gives the pty the caller's terminal size (80x24 when the caller has no terminal).
pub fn copy_size(master: &OwnedFd) {
    let (rows, cols) = agentkernel_sys::terminal::size().unwrap_or((24, 80));
    crate::pty::set_size(master, rows, cols);
}
