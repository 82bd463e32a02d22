//! The sandbox's own namespaces inside the guest, as on the native backend: commands see only
//! their own processes (a PID namespace whose init is a small reaper forked here), only a
//! loopback interface (a network namespace: the guest kernel's fallback tunnel devices such as
//! `sit0` are kept out of it), their own IPC, the VM's hostname, and a mount namespace whose
//! root *is* the sandbox's root (moved onto `/`, as `switch_root` does), so that nothing of the
//! agent's initramfs — its binary, the raw disks, the host's ports — is reachable even by a
//! process that could escape a chroot.
//!
//! The agent itself stays in the initial mount namespace (its file operations resolve beneath
//! [`crate::boot::ROOT_DIR`] there) and in the initial PID namespace (it sees and signals every
//! command). Each command's child joins the sandbox's mount and PID namespaces with `setns`
//! before it drops privileges, and forks the command itself into the PID namespace (a process
//! cannot move into one, only its children are born there; nor can a multithreaded agent
//! unshare one for all its children: the kernel then refuses to start threads). That first
//! child stays outside, waits for the command and ends the way it ended (`exec.rs`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use crate::boot::ROOT_DIR;
use crate::error::{BootError, boot_step};

/// The sandbox's mount and PID namespaces (`/proc/<its init>/ns/{mnt,pid}`, opened once).
static NAMESPACES: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();

/// The fds every command's child passes to `setns` (mount, PID), once [`enter`] has run.
pub fn namespaces() -> Option<(RawFd, RawFd)> {
    NAMESPACES
        .get()
        .map(|(mnt, pid)| (mnt.as_raw_fd(), pid.as_raw_fd()))
}

/// Makes the sandbox's namespaces and starts their init. Runs before the agent starts any
/// thread (the network and IPC namespaces are the agent's own from here on).
pub fn enter(hostname: Option<&str>) -> Result<(), BootError> {
    // New network namespaces get no fallback tunnel devices (sit0, ip6tnl0…), as a host's
    // container runtime would show; and memory is promised freely, so that a command over the
    // sandbox's memory limit is killed by the limit (137, "out of memory") rather than refused
    // an allocation by the guest's small RAM.
    let _ = std::fs::write("/proc/sys/net/core/fb_tunnels_only_for_init_net", "2");
    let _ = std::fs::write("/proc/sys/vm/overcommit_memory", "1");
    if let Some(name) = hostname {
        rustix::system::sethostname(name.as_bytes())
            .map_err(boot_step("set the hostname", name))?;
    }
    // SAFETY: unshare with namespace flags only; the agent is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWIPC) } < 0 {
        return Err(boot_step("unshare", "the sandbox's namespaces")(
            last_errno(),
        ));
    }
    loopback_up().map_err(boot_step("bring up", "lo"))?;
    let (ready_r, ready_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(boot_step("pipe", ""))?;
    let root = std::ffi::CString::new(ROOT_DIR).map_err(|_| BootError::Sandbox(ROOT_DIR.into()))?;
    let proc_dir = std::ffi::CString::new(format!("{ROOT_DIR}/proc"))
        .map_err(|_| BootError::Sandbox(ROOT_DIR.into()))?;
    let sys_dir = std::ffi::CString::new(format!("{ROOT_DIR}/sys"))
        .map_err(|_| BootError::Sandbox(ROOT_DIR.into()))?;
    // SAFETY: clone without a new stack behaves as fork, the child PID 1 of a new PID
    // namespace; it runs `sandbox_init`, which makes system calls on the C strings prepared
    // above and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWPID | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    } as libc::pid_t;
    if pid < 0 {
        return Err(boot_step("fork", "the sandbox's init")(last_errno()));
    }
    if pid == 0 {
        drop(ready_r);
        // SAFETY: in the child of fork (see above).
        unsafe { sandbox_init(ready_w.as_raw_fd(), &root, &proc_dir, &sys_dir) }
    }
    drop(ready_w);
    let mut b = [0u8; 1];
    if !matches!(rustix::io::read(&ready_r, &mut b), Ok(1)) {
        return Err(BootError::Sandbox(
            "the sandbox's init failed to set up its root (see the console)".into(),
        ));
    }
    let open = |ns: &str| {
        rustix::fs::open(
            format!("/proc/{pid}/ns/{ns}"),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(boot_step("open the namespace of the sandbox's init", ns))
    };
    let _ = NAMESPACES.set((open("mnt")?, open("pid")?));
    Ok(())
}

fn last_errno() -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
        .unwrap_or(rustix::io::Errno::IO)
}

/// PID 1 of the sandbox's PID namespace: its own mount namespace with the sandbox's root as
/// `/` and a procfs and sysfs of its namespaces, then reaping orphans forever.
///
/// # Safety
/// Only in the child of `fork`.
unsafe fn sandbox_init(
    ready: RawFd,
    root: &std::ffi::CStr,
    proc_dir: &std::ffi::CStr,
    sys_dir: &std::ffi::CStr,
) -> ! {
    // SAFETY: system calls on C strings that live across them, and on local sets.
    unsafe {
        let fail = |what: &str| -> ! {
            eprintln!(
                "agentkernel-guest: the sandbox's init: {what}: {}",
                std::io::Error::last_os_error()
            );
            libc::_exit(1)
        };
        let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::unshare(libc::CLONE_NEWNS) < 0 {
            fail("unshare its mount namespace");
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) < 0
        {
            fail("make its mounts private");
        }
        // The agent's procfs and sysfs show the guest's first namespaces: this namespace's own
        // replace them.
        libc::umount2(proc_dir.as_ptr(), libc::MNT_DETACH);
        if libc::mount(
            c"proc".as_ptr(),
            proc_dir.as_ptr(),
            c"proc".as_ptr(),
            nosuid,
            std::ptr::null(),
        ) < 0
        {
            fail("mount /proc");
        }
        libc::umount2(sys_dir.as_ptr(), libc::MNT_DETACH);
        if libc::mount(
            c"sysfs".as_ptr(),
            sys_dir.as_ptr(),
            c"sysfs".as_ptr(),
            nosuid | libc::MS_RDONLY,
            std::ptr::null(),
        ) < 0
        {
            fail("mount /sys");
        }
        if libc::chdir(root.as_ptr()) < 0
            || libc::mount(
                root.as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ) < 0
            || libc::chroot(c".".as_ptr()) < 0
            || libc::chdir(c"/".as_ptr()) < 0
        {
            fail("move the sandbox's root onto /");
        }
        libc::write(ready, b"1".as_ptr().cast(), 1);
        libc::close(ready);
        // SIGCHLD stays blocked (the agent's mask): taken with sigwaitinfo, never spinning.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(&set, &mut info);
        }
    }
}

/// Sets `lo` up in the current network namespace.
fn loopback_up() -> Result<(), rustix::io::Errno> {
    // SAFETY: a socket, then SIOCGIFFLAGS/SIOCSIFFLAGS on a local `ifreq` it owns.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(last_errno());
        }
        let sock = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(last_errno());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(last_errno());
        }
    }
    Ok(())
}

/// `Configure`: this sandbox's hostname, the host's time, and fresh randomness mixed into the
/// pool with the kernel reseeding from it at once (a clone's pool is otherwise its template's,
/// and every clone would draw the same numbers).
pub fn configure(
    hostname: &str,
    realtime_ns: u64,
    entropy: &[u8],
) -> Result<(), crate::error::Fail> {
    use crate::error::Fail;
    let ok = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !ok {
        return Err(Fail::invalid(format!("{hostname:?} is not a hostname")));
    }
    rustix::system::sethostname(hostname.as_bytes()).map_err(|e| Fail::errno("sethostname", e))?;
    let ts = libc::timespec {
        tv_sec: (realtime_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (realtime_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the local `ts`.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(Fail::errno("set the clock", last_errno()));
    }
    if !entropy.is_empty() {
        add_entropy(entropy).map_err(|e| Fail::errno("seed the random pool", e))?;
    }
    Ok(())
}

/// RNDADDENTROPY (credited) then RNDRESEEDCRNG on /dev/urandom.
fn add_entropy(bytes: &[u8]) -> Result<(), rustix::io::Errno> {
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let dev = rustix::fs::open(
        "/dev/urandom",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // `struct rand_pool_info`: entropy_count (bits), buf_size (bytes), then the bytes.
    let mut info: Vec<u8> = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: the ioctls read a `rand_pool_info` laid out above (header and its bytes), on an
    // fd we own; RNDRESEEDCRNG takes no argument.
    unsafe {
        if libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) < 0
            || libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG) < 0
        {
            return Err(last_errno());
        }
    }
    Ok(())
}
