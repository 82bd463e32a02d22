//! `agentkernel-guest`: the guest agent of the micro-VM backend, PID 1 (`/init` of the
//! initramfs) in the guest.
//!
//! It mounts what it needs and the sandbox's root ([`boot`]), then serves the host on every
//! virtio-serial port named `ak.*` ([`port`]): commands ([`exec`]), files ([`files`]) and policy
//! ([`policy`]), speaking `agentkernel-proto`. As PID 1 it also reaps every orphan.
//!
//! It is quiet: the serial console is the VM's log file, so it prints only failures. A boot
//! failure is fatal: the agent prints it and exits, the kernel panics (`panic=-1`) and the VM
//! ends, which the host sees at once instead of a channel that never answers.

mod boot;
mod error;
mod exec;
mod files;
mod policy;
mod port;
mod sandbox;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::boot::Booted;
use crate::exec::Reaper;
use crate::files::Root;
use crate::policy::ActivePolicy;

/// Everything the ports share.
#[derive(Debug)]
pub struct Agent {
    pub root: Root,
    pub booted: Booted,
    pub policy: Mutex<ActivePolicy>,
    pub reaper: Arc<Reaper>,
    /// The kernel's release, for `Ready`.
    pub kernel: String,
}

/// How long boot waits for the `ak.*` ports to appear.
const PORT_WAIT: Duration = Duration::from_secs(5);

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Blocks SIGIO and SIGCHLD in this thread and so in every thread started after: they are only
/// ever taken with `sigtimedwait`/`sigwaitinfo`. A handler is installed too, because the kernel
/// drops signals whose action is the default for PID 1 unless they are blocked; with a handler
/// nothing depends on that rule.
fn block_signals() {
    // SAFETY: sigaction with a handler that does nothing (async-signal-safe), and mask
    // operations on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGIO, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Reaps children whenever SIGCHLD arrives, forever.
fn reap_forever(reaper: &Reaper) -> ! {
    // SAFETY: mask operations on a local set; sigwaitinfo writes only into `info`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        loop {
            reaper.reap();
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(&set, &mut info);
        }
    }
}

/// Makes sure fds 0-2 are open (the console, or /dev/null without one), so that no pipe of an
/// exec lands on them.
fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD on a number is harmless whether or not it is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // The lowest free number is `fd` itself; leaked on purpose, it stays open.
            if let Ok(null) = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDWR,
                rustix::fs::Mode::empty(),
            ) {
                std::mem::forget(null);
            }
        }
    }
}

/// Stops every command, syncs and unmounts, and ends the VM.
pub fn shutdown() -> ! {
    // SAFETY: kill(-1) from PID 1 signals every process but itself.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    boot::unmount_all();
    // RESTART, not POWER_OFF: without ACPI the guest cannot power off and would halt with QEMU
    // still running; with `reboot=t` and QEMU's `-no-reboot` a restart ends QEMU
    // (docs/microvm.md).
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    eprintln!("agentkernel-guest: reboot failed; exiting (the kernel panics and the VM ends)");
    std::process::exit(1)
}

fn run() -> Result<(), error::BootError> {
    block_signals();
    let booted = boot::boot()?;
    sandbox::enter(booted.options.hostname.as_deref())?;
    ensure_stdio();
    let root = Root::open(boot::ROOT_DIR)
        .map_err(error::boot_step("open the sandbox's root", boot::ROOT_DIR))?;
    let reaper = Arc::new(Reaper::default());
    let agent = Arc::new(Agent {
        root,
        booted,
        policy: Mutex::new(ActivePolicy::default()),
        reaper: Arc::clone(&reaper),
        kernel: rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned(),
    });
    let ports = port::find_ports(PORT_WAIT)?;
    for p in ports {
        let agent = Arc::clone(&agent);
        std::thread::Builder::new()
            .name(p.name.clone())
            .spawn(move || port::serve(&agent, &p))
            .map_err(|e| error::BootError::Sys {
                step: "start the thread of port",
                path: e.to_string(),
                errno: rustix::io::Errno::AGAIN,
            })?;
    }
    reap_forever(&reaper)
}

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "agentkernel-guest is the init of agentkernel's micro-VM guests; it runs as PID 1 \
             inside the VM, not on a host"
        );
        std::process::exit(2);
    }
    if let Err(e) = run() {
        eprintln!("agentkernel-guest: boot failed: {e}");
        std::process::exit(1);
    }
}
