//! The host's channels: virtio-serial ports named `ak.*`, one thread each.
//!
//! On the host each port is a unix socket QEMU listens on, one client at a time; different
//! host processes use different ports at once. Per port, a connection is: the host sends
//! `Hello`, the guest answers `Ready`, then requests multiplexed by request id.
//!
//! **Connection state.** The guest sees a host connect and disconnect only through the port:
//! with no host connected, `read` returns 0 at once and `poll` reports `POLLHUP` at once, so a
//! retry loop would spin (a 1 ms loop cost 17.6% of a core). Instead the port is put in async
//! mode with this thread as the owner of its signals (`F_SETOWN_EX`, `F_OWNER_TID`, `O_ASYNC`):
//! virtio_console sends SIGIO on every change of the host's connection
//! (`send_sigio_to_port`). Every thread blocks SIGIO; after an end of file the port's thread
//! waits in `sigtimedwait` (5 s at most, should a signal be lost) and reads again. A SIGIO that
//! arrives between the read and the wait stays pending, so none is missed.
//!
//! **Writes.** The port is non-blocking: a write with no host connected would otherwise block
//! until the next host connects and then hand it the previous connection's output. A write that
//! would block waits in `poll` for `POLLOUT`; `POLLHUP` without it means the host is gone, and
//! the frame is dropped — after half a second, because a new host's first bytes can reach the
//! guest before the message saying it connected (a race seen in about one boot in ten, which
//! lost the answer to `Hello`). Every connection has a generation; a frame of an older one (an exec of
//! a host that left) is dropped rather than sent to the next host. A `Hello` in the middle of a
//! connection also starts a new one: the guest may not have seen the old host leave.
//!
//! When a connection ends, its running execs are killed: their output has no reader.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentkernel_proto::{
    ErrorKind, FrameError, FrameReader, GuestError, GuestMessage, HostMessage, PROTOCOL_VERSION,
    RequestId,
};
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::Agent;
use crate::error::{BootError, Fail};
use crate::exec::{self, ExecCtl, Execs, StdinMsg};

/// Longest wait for a SIGIO before the port is tried again anyway.
const SIGIO_WAIT: Duration = Duration::from_secs(5);

/// How long a write waits for a host the guest does not see connected yet.
const HOST_APPEAR_WAIT: Duration = Duration::from_millis(500);

/// One port's fd and the generation of its current connection.
#[derive(Debug)]
pub struct PortIo {
    fd: OwnedFd,
    /// The connection frames may be written for; held while a frame is written, so frames never
    /// interleave.
    generation: Mutex<u64>,
}

/// A writer of frames for one connection of a port.
#[derive(Debug, Clone)]
pub struct Out {
    io: Arc<PortIo>,
    generation: u64,
}

impl Out {
    /// Sends `msg` unless its connection is over; false when it was not sent.
    pub fn send(&self, msg: &GuestMessage) -> bool {
        let Ok(frame) =
            agentkernel_proto::frame::encode_message(msg, agentkernel_proto::DEFAULT_MAX_FRAME_LEN)
        else {
            return false;
        };
        let current = self
            .io
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *current != self.generation {
            return false;
        }
        write_frame(self.io.fd.as_fd(), &frame).is_ok()
    }
}

fn write_frame(fd: std::os::fd::BorrowedFd<'_>, mut data: &[u8]) -> Result<(), Errno> {
    let mut hung_up_since: Option<Instant> = None;
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => {
                data = &data[n..];
                hung_up_since = None;
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let mut p = [PollFd::new(&fd, PollFlags::OUT)];
                match rustix::event::poll(&mut p, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
                let r = p[0].revents();
                if !r.contains(PollFlags::OUT) && r.contains(PollFlags::HUP) {
                    // No host, as far as the guest knows. But a new host's first bytes can
                    // arrive before the guest learns it connected (data is taken in the
                    // interrupt, the connection message later in a workqueue): the answer to
                    // its Hello would be lost. So the host gets a moment to appear.
                    let since = *hung_up_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= HOST_APPEAR_WAIT {
                        return Err(Errno::NOTCONN);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Blocking reads on the non-blocking port: `EAGAIN` waits in poll; 0 is the host leaving.
struct PortReader<'a>(std::os::fd::BorrowedFd<'a>);

impl Read for PortReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match rustix::io::read(self.0, &mut *buf) {
                Ok(n) => return Ok(n),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    // Wakes for data or for the host leaving (POLLHUP, then read gives 0).
                    let mut p = [PollFd::new(&self.0, PollFlags::IN)];
                    match rustix::event::poll(&mut p, None) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// An `ak.*` port: its name and device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub dev: String,
}

fn scan() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") else {
        return Vec::new();
    };
    let mut ports: Vec<(String, String)> = dir
        .flatten()
        .map(|e| {
            let node = e.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
            (node, name.trim().to_owned())
        })
        .collect();
    ports.sort();
    ports
}

/// The `ak.*` ports. They appear shortly after the driver starts, and each gets its name in a
/// later message from QEMU: this waits until at least one `ak.*` port exists, every port has a
/// name and two scans 50 ms apart agree, at most `limit`.
pub fn find_ports(limit: Duration) -> Result<Vec<PortInfo>, BootError> {
    let start = Instant::now();
    let mut last = Vec::new();
    loop {
        let now = scan();
        let named = now.iter().all(|(_, name)| !name.is_empty());
        let ak = now.iter().any(|(_, name)| name.starts_with("ak."));
        if (named && ak && now == last) || start.elapsed() >= limit {
            let ports: Vec<PortInfo> = now
                .into_iter()
                .filter(|(_, name)| name.starts_with("ak."))
                .map(|(node, name)| PortInfo {
                    name,
                    dev: format!("/dev/{node}"),
                })
                .collect();
            if ports.is_empty() {
                return Err(BootError::NoPorts(limit.as_secs()));
            }
            return Ok(ports);
        }
        last = now;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `struct f_owner_ex` (the libc crate has no glibc definition).
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

/// Opens the port in non-blocking async mode, its SIGIO aimed at the calling thread.
fn open_port(dev: &str) -> Result<OwnedFd, Errno> {
    let start = Instant::now();
    let fd = loop {
        match rustix::fs::open(
            dev,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            // devtmpfs may not have the node yet.
            Err(Errno::NOENT) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r?,
        }
    };
    let owner = FOwnerEx {
        kind: F_OWNER_TID,
        pid: rustix::thread::gettid().as_raw_nonzero().get(),
    };
    // SAFETY: F_SETOWN_EX reads one `struct f_owner_ex`, which `owner` is, on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &owner) } < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    // O_ASYNC turns the driver's fasync on; rustix's OFlags has no name for it.
    let flags = flags | OFlags::NONBLOCK | OFlags::from_bits_retain(libc::O_ASYNC as u32);
    rustix::fs::fcntl_setfl(&fd, flags)?;
    Ok(fd)
}

/// Waits for a SIGIO aimed at this thread (blocked in every thread), at most `limit`.
fn wait_sigio(limit: Duration) {
    // SAFETY: sigset operations on a local set; sigtimedwait reads the set and the timeout and
    // writes nothing (no siginfo asked for).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        let ts = libc::timespec {
            tv_sec: limit.as_secs() as libc::time_t,
            tv_nsec: 0,
        };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &ts);
    }
}

/// Serves one port forever.
pub fn serve(agent: &Arc<Agent>, port: &PortInfo) {
    let fd = match open_port(&port.dev) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!(
                "agentkernel-guest: cannot open port {} ({}): {e}",
                port.name, port.dev
            );
            return;
        }
    };
    if port.name == LIFELINE {
        lifeline(&fd);
    }
    let io = Arc::new(PortIo {
        fd,
        generation: Mutex::new(0),
    });
    loop {
        let mut conn = Conn::new(&io);
        let mut reader = FrameReader::new(PortReader(io.fd.as_fd()));
        conn.serve(agent, &mut reader);
        conn.end();
        wait_sigio(SIGIO_WAIT);
    }
}

/// The port a throwaway sandbox's host process stays connected to for the sandbox's life.
pub const LIFELINE: &str = "ak.life";

/// Powers the VM off once a host that connected to the lifeline port has gone: a throwaway
/// VM ends with the process that owns it, however that process ends. Until a host connects
/// (never, for a persistent VM) this only waits.
fn lifeline(fd: &OwnedFd) -> ! {
    let mut seen = false;
    let mut buf = [0u8; 256];
    loop {
        match rustix::io::read(fd, &mut buf) {
            // No host connected: gone, if one was.
            Ok(0) if seen => crate::shutdown(),
            Ok(0) => wait_sigio(SIGIO_WAIT),
            // Connected, nothing to read (or bytes, which mean nothing): wait for a change.
            Ok(_) | Err(Errno::AGAIN) => {
                seen = true;
                wait_sigio(SIGIO_WAIT);
            }
            Err(Errno::INTR) => {}
            Err(_) => wait_sigio(SIGIO_WAIT),
        }
    }
}

/// One connection of a port.
struct Conn {
    io: Arc<PortIo>,
    out: Out,
    execs: Execs,
    ready: bool,
}

impl Conn {
    fn new(io: &Arc<PortIo>) -> Self {
        let generation = *io.generation.lock().unwrap_or_else(PoisonError::into_inner);
        Self {
            io: Arc::clone(io),
            out: Out {
                io: Arc::clone(io),
                generation,
            },
            execs: Arc::new(Mutex::new(HashMap::new())),
            ready: false,
        }
    }

    /// Ends the connection: later frames of its execs are dropped, and the execs are killed.
    fn end(&mut self) {
        {
            let mut g = self
                .io
                .generation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *g += 1;
            self.out.generation = *g;
        }
        let execs = std::mem::take(&mut *self.execs.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, ctl) in execs {
            let _ = exec::kill_group(ctl.pid, libc::SIGKILL);
        }
        // The execs' threads still hold the old map; give the next connection its own.
        self.execs = Arc::new(Mutex::new(HashMap::new()));
        self.ready = false;
    }

    fn error(&self, id: Option<RequestId>, f: Fail) {
        self.out.send(&GuestMessage::Error {
            id,
            error: GuestError::from(f),
        });
    }

    fn serve(&mut self, agent: &Arc<Agent>, reader: &mut FrameReader<PortReader<'_>>) {
        loop {
            let msg = match reader.read_message::<HostMessage>() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(FrameError::Decode(e)) => {
                    self.error(
                        None,
                        Fail::new(
                            ErrorKind::Protocol,
                            format!("a frame that is not a host message of this version: {e}"),
                        ),
                    );
                    continue;
                }
                // Truncated (the host left mid-frame), too large (the stream cannot be
                // followed any more), or a read error: the connection is over.
                Err(_) => return,
            };
            if let HostMessage::Hello { version } = msg {
                if self.ready {
                    // A new host on a port whose previous host the guest did not see leave.
                    self.end();
                }
                if version == PROTOCOL_VERSION {
                    self.ready = true;
                    self.out.send(&GuestMessage::Ready {
                        version: PROTOCOL_VERSION,
                        kernel: agent.kernel.clone(),
                    });
                } else {
                    self.error(
                        None,
                        Fail::new(
                            ErrorKind::Protocol,
                            format!(
                                "the host speaks protocol version {version}, this guest agent \
                                 {PROTOCOL_VERSION}: rebuild the guest image with this \
                                 agentkernel"
                            ),
                        ),
                    );
                }
                continue;
            }
            if !self.ready {
                self.error(
                    None,
                    Fail::new(ErrorKind::Protocol, "the first message must be Hello"),
                );
                continue;
            }
            self.handle(agent, msg);
        }
    }

    fn with_exec<T>(
        &self,
        id: RequestId,
        f: impl FnOnce(&ExecCtl) -> Result<T, Fail>,
    ) -> Option<T> {
        let execs = self.execs.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match execs.get(&id) {
            Some(ctl) => f(ctl),
            None => Err(Fail::new(
                ErrorKind::UnknownRequest,
                format!("no exec {id} is running on this channel"),
            )),
        };
        drop(execs);
        result.map_err(|e| self.error(Some(id), e)).ok()
    }

    fn handle(&mut self, agent: &Arc<Agent>, msg: HostMessage) {
        let done = |r: Result<(), Fail>, id| match r {
            Ok(()) => self.out.send(&GuestMessage::Done { id }),
            Err(f) => self.out.send(&GuestMessage::Error {
                id: Some(id),
                error: f.into(),
            }),
        };
        match msg {
            HostMessage::Hello { .. } => {}
            HostMessage::Exec { id, request } => {
                let policy = agent
                    .policy
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Err(f) = exec::start(
                    &agent.reaper,
                    &agent.root,
                    &policy,
                    &self.out,
                    &self.execs,
                    id,
                    &request,
                ) {
                    self.error(Some(id), f);
                }
            }
            HostMessage::Stdin { id, data } => {
                self.with_exec(id, |ctl| stdin(ctl, id, StdinMsg::Data(data.0)));
            }
            HostMessage::StdinClose { id } => {
                self.with_exec(id, |ctl| stdin(ctl, id, StdinMsg::Close));
            }
            HostMessage::Signal { id, signal } => {
                self.with_exec(id, |ctl| {
                    exec::kill_group(ctl.pid, signal)
                        .map_err(|e| Fail::errno(&format!("signal {signal} to exec {id}"), e))
                });
            }
            HostMessage::Resize { id, size } => {
                self.with_exec(id, |ctl| {
                    let pty = ctl.pty.as_ref().ok_or_else(|| {
                        Fail::invalid(format!("exec {id} has no terminal to resize"))
                    })?;
                    rustix::termios::tcsetwinsize(&**pty, exec::winsize(size))
                        .map_err(|e| Fail::errno("resizing the terminal", e))
                });
            }
            HostMessage::ReadFile { id, path } => match agent.root.read_file(&path) {
                Ok(data) => {
                    self.out.send(&GuestMessage::FileData {
                        id,
                        data: data.into(),
                    });
                }
                Err(f) => self.error(Some(id), f),
            },
            HostMessage::WriteFile {
                id,
                path,
                data,
                mode,
                create_dirs,
            } => {
                done(agent.root.write_file(&path, &data.0, mode, create_dirs), id);
            }
            HostMessage::Remove {
                id,
                path,
                recursive,
            } => {
                done(agent.root.remove(&path, recursive), id);
            }
            HostMessage::Configure {
                id,
                hostname,
                realtime_ns,
                entropy,
            } => {
                done(
                    crate::sandbox::configure(&hostname, realtime_ns, &entropy.0),
                    id,
                );
            }
            HostMessage::MakeDir { id, path, mode } => {
                done(agent.root.make_dir(&path, mode), id);
            }
            HostMessage::Symlink { id, path, target } => {
                done(agent.root.symlink(&path, &target), id);
            }
            HostMessage::ReadLink { id, path } => match agent.root.read_link(&path) {
                Ok(data) => {
                    self.out.send(&GuestMessage::FileData {
                        id,
                        data: data.into(),
                    });
                }
                Err(f) => self.error(Some(id), f),
            },
            HostMessage::ListDir { id, path } => match agent.root.list_dir(&path) {
                Ok(entries) => {
                    self.out.send(&GuestMessage::DirListing { id, entries });
                }
                Err(f) => self.error(Some(id), f),
            },
            HostMessage::SetPolicy { id, policy } => {
                let r = crate::policy::apply(
                    &policy,
                    agent.booted.options.read_only,
                    agent.booted.cgroup,
                )
                .map(|active| {
                    *agent.policy.lock().unwrap_or_else(PoisonError::into_inner) = active;
                });
                done(r, id);
            }
            HostMessage::Shutdown => crate::shutdown(),
        }
    }
}

fn stdin(ctl: &ExecCtl, id: RequestId, msg: StdinMsg) -> Result<(), Fail> {
    let tx = ctl
        .stdin
        .as_ref()
        .ok_or_else(|| Fail::invalid(format!("exec {id} was started without stdin")))?;
    // The stdin thread is gone only when the exec is: nothing to feed.
    let _ = tx.send(msg);
    Ok(())
}
