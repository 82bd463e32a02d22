//! Network of a sandbox seen from inside its fresh namespace: loopback up. A networked
//! sandbox's only way out is the host's egress proxy (`agentkernel_net::netns::attach`, done
//! by the engine once the sandbox has started), which refuses cloud metadata addresses and
//! audits every attempt; so no route here answers for it first.

use rustix::fd::AsRawFd;
use std::path::Path;

/// Sets `lo` up in the current network namespace.
pub fn loopback_up() -> std::io::Result<()> {
    // A plain datagram socket, used only for interface ioctls.
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq for "lo".
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes a network namespace pin left by versions that connected sandboxes through pasta
/// (`gc` finds them under `HOME/netns`), and ends that pasta if it still runs.
pub fn unpin_netns(pin: &Path) {
    let _ = rustix::mount::unmount(pin, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_file(pin);
    let pid_file = pasta_pid_file(pin);
    if let Ok(text) = std::fs::read_to_string(&pid_file)
        && let Ok(pid) = text.trim().parse::<i32>()
        && is_pasta(pid)
        && let Some(pid) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = std::fs::remove_file(&pid_file);
}

/// Where the pasta of the sandbox pinned at `pin` (`HOME/netns/ID`) writes its pid:
/// `HOME/pasta/ID.pid`, outside the pin directory that `gc` walks.
fn pasta_pid_file(pin: &Path) -> std::path::PathBuf {
    let id = pin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let home = pin
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"));
    home.join("pasta").join(format!("{id}.pid"))
}

/// Whether `pid` is (still) a pasta process, not a recycled pid.
fn is_pasta(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.starts_with("pasta") || comm.starts_with("passt"))
}
