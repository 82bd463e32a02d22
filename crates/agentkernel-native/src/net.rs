//! Network of a sandbox: loopback in its fresh namespace, cloud metadata addresses made
//! unreachable, and outbound network through pasta (user-mode networking) when the policy
//! allows it.

use rustix::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "cannot find pasta (Debian package `passt`): install it with `apt-get install -y passt`, or use --no-network"
    )]
    PastaMissing,
    #[error("pasta could not set up the sandbox's network: {0}")]
    Pasta(String),
    #[error("cannot pin the sandbox's network namespace at {path}: {errno}")]
    Pin {
        path: String,
        errno: rustix::io::Errno,
    },
}

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

/// Pins the network namespace of `pid` at `pin` (a bind mount of /proc/PID/ns/net) and starts
/// pasta on it. pasta configures the interface from the host's, forwards nothing inbound, maps
/// nothing to the host's loopback, and exits by itself when the pin is removed.
pub fn start_pasta(pid: u32, pin: &Path, host_loopback: bool) -> Result<(), NetError> {
    pin_netns(pid, pin)?;
    let mut cmd = Command::new("pasta");
    cmd.args([
        "--runas",
        "0",
        "--config-net",
        "--quiet",
        "-t",
        "none",
        "-u",
        "none",
        "-T",
        "none",
        "-U",
        "none",
    ]);
    if !host_loopback {
        cmd.arg("--no-map-gw");
    }
    let pid_file = pasta_pid_file(pin);
    if let Some(dir) = pid_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    cmd.arg("--pid").arg(&pid_file);
    cmd.arg("--netns").arg(pin);
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            unpin_netns(pin);
            return Err(NetError::PastaMissing);
        }
        Err(e) => {
            unpin_netns(pin);
            return Err(NetError::Pasta(e.to_string()));
        }
    };
    if !out.status.success() {
        unpin_netns(pin);
        let text = String::from_utf8_lossy(&out.stderr);
        let msg: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("Failed to send"))
            .collect();
        return Err(NetError::Pasta(msg.join("; ")));
    }
    give_process_priority(&pid_file);
    Ok(())
}

/// pasta carries the sandbox's network for its whole life, so it runs at the priority of the
/// process (its main thread), not at that of the thread that started it: a warm pool boots
/// sandboxes from a thread of lowered priority, which pasta would otherwise inherit.
fn give_process_priority(pid_file: &Path) {
    let main = rustix::process::getpid();
    let (Ok(own), Ok(process)) = (
        rustix::process::getpriority_process(None),
        rustix::process::getpriority_process(Some(main)),
    ) else {
        return;
    };
    if own == process {
        return;
    }
    if let Ok(text) = std::fs::read_to_string(pid_file)
        && let Ok(pid) = text.trim().parse::<i32>()
        && is_pasta(pid)
        && let Some(pid) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::setpriority_process(Some(pid), process);
    }
}

fn pin_netns(pid: u32, pin: &Path) -> Result<(), NetError> {
    let err = |errno| NetError::Pin {
        path: pin.display().to_string(),
        errno,
    };
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            err(rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
        })?;
    }
    rustix::fs::open(
        pin,
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(err)?;
    let source = format!("/proc/{pid}/ns/net");
    rustix::mount::mount_bind(source.as_str(), pin).map_err(|e| {
        let _ = std::fs::remove_file(pin);
        err(e)
    })
}

/// Removes a namespace pin and ends the sandbox's pasta. pasta quits by itself when it sees
/// the pin go, but only once it watches for that: a sandbox that ends within moments of its
/// start removes the pin first, and that pasta would live on (~30 MB each). So it is ended
/// through the pid it wrote.
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
