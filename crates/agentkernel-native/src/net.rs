//! Network of a sandbox seen from inside its fresh namespace: loopback up, and cloud metadata
//! addresses made unreachable in the main routing table. A networked sandbox's way out is the
//! host's egress proxy (`agentkernel_net::netns::attach`, done by the engine once the sandbox
//! has started), which refuses metadata addresses itself; the routes are a second wall.

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

/// Cloud metadata services: never reachable from a sandbox, whatever the policy.
const METADATA_V4: [[u8; 4]; 2] = [[169, 254, 169, 254], [100, 100, 100, 200]];

/// Adds `prohibit` routes for the metadata addresses in the current network namespace. The
/// sandbox has no CAP_NET_ADMIN, so it cannot remove them. Hand-written netlink: one fixed
/// message, where a netlink crate would pull in an async runtime for it.
pub fn block_metadata() -> std::io::Result<()> {
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::NETLINK,
        rustix::net::SocketType::RAW,
        rustix::net::SocketFlags::CLOEXEC,
        // Protocol 0 of AF_NETLINK is NETLINK_ROUTE.
        None,
    )?;
    for (seq, addr) in METADATA_V4.iter().enumerate() {
        let mut msg = Vec::with_capacity(40);
        let total: u32 = 16 + 12 + 8;
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
        let flags =
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&(seq as u32 + 1).to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // struct rtmsg
        msg.extend_from_slice(&[
            libc::AF_INET as u8,
            32, // dst_len
            0,  // src_len
            0,  // tos
            libc::RT_TABLE_MAIN,
            libc::RTPROT_STATIC,
            libc::RT_SCOPE_UNIVERSE,
            libc::RTN_PROHIBIT,
        ]);
        msg.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
        // RTA_DST attribute
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
        msg.extend_from_slice(addr);
        rustix::io::write(&sock, &msg)?;
        let mut reply = [0u8; 256];
        let n = rustix::io::read(&sock, &mut reply)?;
        // An NLMSG_ERROR reply carries a negative errno at offset 16 (0 = acknowledged).
        if n >= 20 {
            let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
            if code != 0 && code != -libc::EEXIST {
                return Err(std::io::Error::from_raw_os_error(-code));
            }
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
