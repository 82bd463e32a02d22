//! The host side of the guest protocol over one virtio-serial port.
//!
//! A VM has [`PORTS`] request ports; QEMU serves each as a unix socket that takes one client
//! at a time. A host process takes a free port by locking its lock file (`flock`, released
//! when the process ends however it ends), connects, says `Hello`, and reads up to the
//! guest's `Ready` — anything before it is left over from the port's previous client and
//! skipped. Closing the connection ends in the guest whatever this client still ran there.

use crate::VmError;
use crate::vmm::{PORTS, RuntimeDir};
use agentkernel_proto::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, GuestMessage, HostMessage, PROTOCOL_VERSION, RequestId,
    frame::encode_message,
};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One connection to the guest agent.
pub struct Channel {
    reader: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    decoder: FrameDecoder,
    next_id: u64,
    /// The port's lock, held for the connection's life.
    _lock: OwnedFd,
    /// The guest kernel's release, from `Ready`.
    pub kernel: String,
    /// A `Ready` not read yet (pipelined open): by when it is due, and the limit for messages.
    pending_ready: Option<(Instant, Duration)>,
}

/// Something to send on a channel from another thread (stdin, signals).
#[derive(Clone)]
pub struct Sender(Arc<Mutex<UnixStream>>);

impl Sender {
    pub fn send(&self, msg: &HostMessage) -> Result<(), VmError> {
        let frame = encode_message(msg, DEFAULT_MAX_FRAME_LEN).map_err(proto)?;
        let mut w = self
            .0
            .lock()
            .map_err(|_| VmError::Guest("a sender panicked".into()))?;
        w.write_all(&frame)
            .map_err(|e| VmError::Guest(format!("the guest connection broke: {e}")))
    }
}

fn proto(e: agentkernel_proto::FrameError) -> VmError {
    VmError::Guest(format!("protocol: {e}"))
}

impl Channel {
    /// Takes a free port of the VM in `rt` and greets the guest, waiting at most `timeout` for
    /// it (a VM that is still booting answers when its agent runs).
    pub fn open(rt: &RuntimeDir, timeout: Duration) -> Result<Channel, VmError> {
        Self::connect(rt, timeout, true)
    }

    /// As [`Channel::open`], but returns once the `Hello` is sent: requests can go out at once
    /// and the `Ready` (at most `timeout` away) is read before the first answer — one round
    /// trip less for each command into a running VM.
    pub fn open_pipelined(rt: &RuntimeDir, timeout: Duration) -> Result<Channel, VmError> {
        Self::connect(rt, timeout, false)
    }

    fn connect(rt: &RuntimeDir, timeout: Duration, wait_ready: bool) -> Result<Channel, VmError> {
        let (i, lock) = take_port(rt)?;
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(rt.port(i)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(VmError::Guest(format!(
                        "could not connect to {}: {e}",
                        rt.port(i).display()
                    )));
                }
            }
        };
        let writer = stream
            .try_clone()
            .map_err(|e| VmError::Guest(format!("duplicate the connection: {e}")))?;
        let mut ch = Channel {
            reader: stream,
            writer: Arc::new(Mutex::new(writer)),
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_LEN),
            next_id: 1,
            _lock: lock,
            kernel: String::new(),
            pending_ready: None,
        };
        ch.sender().send(&HostMessage::Hello {
            version: PROTOCOL_VERSION,
        })?;
        if !wait_ready {
            // Requests may follow the Hello at once (the guest takes them in order); the
            // Ready is read with the first answer.
            ch.pending_ready = Some((deadline, timeout));
            return Ok(ch);
        }
        let tail = || rt.tail();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = if left.is_zero() {
                None
            } else {
                ch.recv_raw(Some(left))?
            };
            match msg {
                Some(m) => {
                    if ch.ready_from(m)? {
                        return Ok(ch);
                    }
                }
                None => {
                    return Err(VmError::Guest(format!(
                        "the guest agent did not answer within {timeout:?}{}",
                        tail()
                    )));
                }
            }
        }
    }

    /// Whether `m` is the guest's `Ready` (recorded); anything else before it is left over
    /// from the port's previous client and skipped, but a refusal of the connection is an
    /// error.
    fn ready_from(&mut self, m: GuestMessage) -> Result<bool, VmError> {
        match m {
            GuestMessage::Ready { version, kernel } if version == PROTOCOL_VERSION => {
                self.kernel = kernel;
                self.pending_ready = None;
                Ok(true)
            }
            GuestMessage::Ready { version, .. } => Err(VmError::Guest(format!(
                "the guest agent speaks protocol {version}, this agentkernel {PROTOCOL_VERSION}: boot it with the guest agent built with this agentkernel"
            ))),
            GuestMessage::Error { id: None, error } => Err(VmError::Guest(error.message)),
            _ => Ok(false),
        }
    }

    pub fn sender(&self) -> Sender {
        Sender(self.writer.clone())
    }

    pub fn next_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    /// The connection's socket, to poll beside other descriptors.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
    }

    /// The next message after the guest's `Ready`: waits at most `timeout` (`None`: forever;
    /// the `Ready` itself at most until the connection's deadline); `Ok(None)` on timeout.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<GuestMessage>, VmError> {
        while let Some((deadline, limit)) = self.pending_ready {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = if left.is_zero() {
                None
            } else {
                self.recv_raw(Some(left))?
            };
            match msg {
                Some(m) => {
                    self.ready_from(m)?;
                }
                None => {
                    return Err(VmError::Guest(format!(
                        "the guest agent did not answer within {limit:?}"
                    )));
                }
            }
        }
        self.recv_raw(timeout)
    }

    fn recv_raw(&mut self, timeout: Option<Duration>) -> Result<Option<GuestMessage>, VmError> {
        loop {
            if let Some(msg) = self.decoder.next_message::<GuestMessage>().map_err(proto)? {
                return Ok(Some(msg));
            }
            if let Some(t) = timeout
                && !self.readable(t)?
            {
                return Ok(None);
            }
            self.fill()?;
        }
    }

    /// The next message after `Ready` if one is already complete in the buffer.
    pub fn try_recv(&mut self) -> Result<Option<GuestMessage>, VmError> {
        while self.pending_ready.is_some() {
            match self.decoder.next_message::<GuestMessage>().map_err(proto)? {
                Some(m) => {
                    self.ready_from(m)?;
                }
                None => return Ok(None),
            }
        }
        self.decoder.next_message::<GuestMessage>().map_err(proto)
    }

    /// Reads what the socket has (blocking until something arrives).
    pub fn fill(&mut self) -> Result<(), VmError> {
        let mut buf = [0u8; 64 * 1024];
        let n = loop {
            match self.reader.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VmError::Guest(format!("reading from the guest: {e}"))),
            }
        };
        if n == 0 {
            return Err(VmError::Guest(
                "the VM closed the connection (it stopped or crashed)".into(),
            ));
        }
        self.decoder.push(&buf[..n]);
        Ok(())
    }

    fn readable(&self, timeout: Duration) -> Result<bool, VmError> {
        let mut fds = [rustix::event::PollFd::new(
            &self.reader,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(VmError::Guest(format!("poll: {e}"))),
        }
    }

    /// Sends `msg` and waits for the reply to `id` (`Done`, `FileData`, `DirListing` or
    /// `Error`).
    pub fn call(&mut self, id: RequestId, msg: &HostMessage) -> Result<GuestMessage, VmError> {
        self.sender().send(msg)?;
        self.reply(id)
    }

    /// Waits for the reply to request `id` (sent earlier: several requests may be in flight).
    pub fn reply(&mut self, id: RequestId) -> Result<GuestMessage, VmError> {
        loop {
            match self.recv(None)? {
                Some(m @ GuestMessage::Done { id: i })
                | Some(m @ GuestMessage::FileData { id: i, .. })
                | Some(m @ GuestMessage::DirListing { id: i, .. })
                    if i == id =>
                {
                    return Ok(m);
                }
                Some(m @ GuestMessage::Error { id: Some(i), .. }) if i == id => return Ok(m),
                Some(GuestMessage::Error { id: None, error }) => {
                    return Err(VmError::Guest(error.message));
                }
                _ => {}
            }
        }
    }
}

/// Locks a free port's lock file; when all are taken, waits for one.
fn take_port(rt: &RuntimeDir) -> Result<(usize, OwnedFd), VmError> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let open = |i: usize| {
        rustix::fs::open(
            rt.port_lock(i),
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| VmError::Io {
            what: format!("open {}", rt.port_lock(i).display()),
            source: e.into(),
        })
    };
    for i in 0..PORTS {
        let fd = open(i)?;
        if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
            return Ok((i, fd));
        }
    }
    let i = std::process::id() as usize % PORTS;
    let fd = open(i)?;
    rustix::fs::flock(&fd, FlockOperation::LockExclusive).map_err(|e| VmError::Io {
        what: format!("lock {}", rt.port_lock(i).display()),
        source: e.into(),
    })?;
    Ok((i, fd))
}
