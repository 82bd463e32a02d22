//! The messages of the host⇄guest protocol: what the host asks ([`HostMessage`]) and what the
//! guest answers ([`GuestMessage`]).
//!
//! Every request the host makes carries a [`RequestId`] it chose; every answer names the
//! request it belongs to. An exec is a stream, as everywhere in agentkernel (DESIGN: "Exec is a
//! stream"): [`HostMessage::Exec`] is answered by [`ExecEvent::Started`], then any number of
//! [`ExecEvent::Stdout`]/[`ExecEvent::Stderr`] chunks (stdout and stderr stay separate; with a
//! TTY everything arrives as stdout), then exactly one [`ExecEvent::Exit`] — or by one
//! [`GuestMessage::Error`] if the command could not be started. File operations and policy are
//! answered by one message each: their result or an error.
//!
//! Strings (argv, env, paths) are UTF-8: JSON cannot carry other bytes in a string, and the
//! engine validates every input as UTF-8 before a backend sees it. Byte payloads (output,
//! stdin, file contents) are [`Bytes`], base64 on the wire.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Names one request of the host and every answer to it. Chosen by the host, unique among the
/// requests in flight on one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A byte string, base64 in the encoded message (JSON has no bytes).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        BASE64
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("a byte string that is not base64: {e}")))
    }
}

/// One environment variable of an exec, in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// Who a command runs as inside the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum User {
    /// Numeric ids; no lookup in the guest's `/etc/passwd`.
    Id { uid: u32, gid: u32 },
    /// A name (or `name:group`) the guest resolves in the image's `/etc/passwd` and `/etc/group`.
    Name(String),
}

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Run a command in the guest (DESIGN: `ExecRequest{argv, env, workdir, user, tty, stdin,
/// timeout}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program and its arguments; `argv[0]` is looked up in `PATH` of `env` when it has no
    /// slash. Never empty.
    pub argv: Vec<String>,
    /// The whole environment of the command: nothing is inherited from the guest agent.
    pub env: Vec<EnvVar>,
    /// The working directory; the user's home (or `/`) when absent.
    pub workdir: Option<String>,
    /// Who the command runs as; the image's default user when absent.
    pub user: Option<User>,
    /// Run on a new PTY of this initial size: output then arrives as [`ExecEvent::Stdout`] only.
    pub tty: Option<PtySize>,
    /// Keep the command's stdin open for [`HostMessage::Stdin`] until [`HostMessage::StdinClose`];
    /// when false, stdin is `/dev/null`.
    pub stdin: bool,
    /// Kill the command (SIGKILL to its process group) after this many milliseconds.
    pub timeout_ms: Option<u64>,
}

/// What one exec reports, in this order: `Started`, output chunks, `Exit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecEvent {
    /// The command runs; `pid` is its pid in the guest.
    Started { pid: u32 },
    /// A chunk of its standard output (or of the PTY).
    Stdout(Bytes),
    /// A chunk of its standard error.
    Stderr(Bytes),
    /// It ended: `code` when it exited, `signal` when a signal killed it; `timed_out` when the
    /// request's timeout killed it.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        /// The sandbox's memory limit was reached while it ran and the kernel killed a process.
        #[serde(default)]
        oom_killed: bool,
    },
}

/// Network of the sandbox (the same names as `agentkernel-core`'s `NetworkMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only.
    None,
    /// Only allow-listed hosts, through the host's egress proxy.
    Allowlist,
    /// Any host but denied ones, through the host's egress proxy.
    Full,
}

/// Limits the guest applies to the commands it runs (the VM's own size is the VMM's business).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory of all commands together, in MiB; `None` = what the VM has.
    pub memory_mib: Option<u64>,
    /// Processes and threads; `None` = no limit.
    pub pids: Option<u64>,
    /// CPU bandwidth in cores (1.5 = one and a half); `None` = what the VM has.
    pub cpus: Option<f64>,
}

/// The part of a sandbox's policy that the guest enforces inside itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestPolicy {
    pub network: NetworkMode,
    pub read_only_root: bool,
    pub limits: Limits,
    /// Capabilities commands keep (names such as `CAP_NET_BIND_SERVICE`); empty = none.
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    /// The seccomp filter every command gets: `deny_list` or `allow_list` (the lists of
    /// `agentkernel-seccomp`); `None`: no filter.
    #[serde(default)]
    pub seccomp: Option<SeccompMode>,
}

/// Which of `agentkernel-seccomp`'s lists a command's filter is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    DenyList,
    AllowList,
}

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a [`GuestMessage::DirListing`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Seconds since the epoch.
    pub modified: i64,
}

/// Why the guest could not do what was asked; the host maps it to the engine's error kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A path or program does not exist (exit code 127 for an exec).
    NotFound,
    /// The program exists but cannot be executed (exit code 126).
    NotExecutable,
    PermissionDenied,
    /// A field of the request is invalid (empty argv, a relative path, an unknown user).
    InvalidInput,
    /// The guest cannot do this (a policy field this guest kernel cannot enforce).
    Unsupported,
    /// The request names an exec that is not running.
    UnknownRequest,
    /// The peer broke the protocol (wrong version, a message out of order).
    Protocol,
    /// Anything else the guest's kernel reported.
    Io,
    /// More than one request carries (a file above the files API's 64 MiB limit).
    TooLarge,
}

/// An error the guest reports, with a message meant for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestError {
    pub kind: ErrorKind,
    pub message: String,
}

/// What the host sends to the guest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMessage {
    /// First message on a channel: the host's [`crate::PROTOCOL_VERSION`].
    Hello { version: u32 },
    /// Start a command; answered by [`GuestMessage::Exec`] events or one error.
    Exec { id: RequestId, request: ExecRequest },
    /// Bytes for the stdin of exec `id` (which asked for `stdin`).
    Stdin { id: RequestId, data: Bytes },
    /// End of the stdin of exec `id`.
    StdinClose { id: RequestId },
    /// Send a signal (its Linux number) to the process group of exec `id`.
    Signal { id: RequestId, signal: i32 },
    /// The terminal of exec `id` (which asked for a `tty`) changed size.
    Resize { id: RequestId, size: PtySize },
    /// Read a regular file (absolute path in the sandbox); answered by [`GuestMessage::FileData`].
    ReadFile { id: RequestId, path: String },
    /// Write a regular file, replacing it; answered by [`GuestMessage::Done`].
    WriteFile {
        id: RequestId,
        path: String,
        data: Bytes,
        /// Permission bits of a file it creates.
        mode: u32,
        /// Create missing parent directories.
        create_dirs: bool,
    },
    /// Remove a file, or a directory (and what is in it when `recursive`); answered by
    /// [`GuestMessage::Done`].
    Remove {
        id: RequestId,
        path: String,
        recursive: bool,
    },
    /// List a directory; answered by [`GuestMessage::DirListing`].
    ListDir { id: RequestId, path: String },
    /// Create a directory (its missing parents too; an existing directory is no error), with
    /// `mode` on the last one; answered by [`GuestMessage::Done`].
    MakeDir {
        id: RequestId,
        path: String,
        mode: u32,
    },
    /// Create a symbolic link at `path` pointing to `target` (stored as given, never
    /// followed), replacing a non-directory there; answered by [`GuestMessage::Done`].
    Symlink {
        id: RequestId,
        path: String,
        target: String,
    },
    /// The target of the symbolic link at `path` (not followed); answered by
    /// [`GuestMessage::FileData`].
    ReadLink { id: RequestId, path: String },
    /// What makes one VM this sandbox's and no other's, sent after every boot and every
    /// restore of a snapshot clone (whose kernel state, clock and random pool are the
    /// template's until then): its hostname, the time, and fresh randomness the guest mixes
    /// into its pool and reseeds from. Answered by [`GuestMessage::Done`].
    Configure {
        id: RequestId,
        hostname: String,
        /// Wall-clock time, nanoseconds since the Unix epoch.
        realtime_ns: u64,
        entropy: Bytes,
    },
    /// Apply a policy to every later exec; answered by [`GuestMessage::Done`] or an error naming
    /// the field the guest cannot enforce.
    SetPolicy { id: RequestId, policy: GuestPolicy },
    /// Stop every command, sync the disks and power the VM off.
    Shutdown,
}

/// What the guest sends to the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestMessage {
    /// First message on a channel: the guest's [`crate::PROTOCOL_VERSION`] and kernel release.
    Ready { version: u32, kernel: String },
    /// An event of exec `id`.
    Exec { id: RequestId, event: ExecEvent },
    /// The contents of the file request `id` read.
    FileData { id: RequestId, data: Bytes },
    /// The entries of the directory request `id` listed.
    DirListing {
        id: RequestId,
        entries: Vec<DirEntry>,
    },
    /// Request `id` succeeded and has nothing more to say.
    Done { id: RequestId },
    /// Request `id` failed; `id` is `None` when the error concerns no request (a frame the
    /// guest could not decode).
    Error {
        id: Option<RequestId>,
        error: GuestError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader, FrameWriter};

    fn id(n: u64) -> RequestId {
        RequestId(n)
    }

    /// One of every host message, with every optional field both present and absent somewhere.
    fn host_messages() -> Vec<HostMessage> {
        let full = ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo \"hi\" ünïcode".into()],
            env: vec![EnvVar {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            workdir: Some("/workspace".into()),
            user: Some(User::Id {
                uid: 1000,
                gid: 1000,
            }),
            tty: Some(PtySize { rows: 24, cols: 80 }),
            stdin: true,
            timeout_ms: Some(30_000),
        };
        let bare = ExecRequest {
            argv: vec!["true".into()],
            env: vec![],
            workdir: None,
            user: Some(User::Name("nobody:nogroup".into())),
            tty: None,
            stdin: false,
            timeout_ms: None,
        };
        let policy = GuestPolicy {
            network: NetworkMode::None,
            read_only_root: true,
            limits: Limits {
                memory_mib: Some(512),
                pids: Some(256),
                cpus: Some(1.5),
            },
            capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
            no_new_privileges: true,
            seccomp: Some(SeccompMode::AllowList),
        };
        let open = GuestPolicy {
            network: NetworkMode::Full,
            read_only_root: false,
            limits: Limits {
                memory_mib: None,
                pids: None,
                cpus: None,
            },
            capabilities: vec![],
            no_new_privileges: false,
            seccomp: None,
        };
        vec![
            HostMessage::Hello {
                version: crate::PROTOCOL_VERSION,
            },
            HostMessage::Exec {
                id: id(1),
                request: full,
            },
            HostMessage::Exec {
                id: id(2),
                request: bare,
            },
            HostMessage::Stdin {
                id: id(1),
                data: Bytes((0..=255).collect()),
            },
            HostMessage::Stdin {
                id: id(1),
                data: Bytes(vec![]),
            },
            HostMessage::StdinClose { id: id(1) },
            HostMessage::Signal {
                id: id(1),
                signal: 15,
            },
            HostMessage::Resize {
                id: id(1),
                size: PtySize {
                    rows: 50,
                    cols: 200,
                },
            },
            HostMessage::ReadFile {
                id: id(3),
                path: "/etc/hostname".into(),
            },
            HostMessage::WriteFile {
                id: id(4),
                path: "/workspace/a b/x.bin".into(),
                data: Bytes(vec![0, 1, 2, 0xff]),
                mode: 0o644,
                create_dirs: true,
            },
            HostMessage::Remove {
                id: id(5),
                path: "/workspace/a b".into(),
                recursive: true,
            },
            HostMessage::ListDir {
                id: id(6),
                path: "/".into(),
            },
            HostMessage::MakeDir {
                id: id(7),
                path: "/workspace/d".into(),
                mode: 0o755,
            },
            HostMessage::Symlink {
                id: id(8),
                path: "/workspace/l".into(),
                target: "../etc/passwd".into(),
            },
            HostMessage::ReadLink {
                id: id(9),
                path: "/workspace/l".into(),
            },
            HostMessage::SetPolicy { id: id(7), policy },
            HostMessage::SetPolicy {
                id: id(8),
                policy: open,
            },
            HostMessage::Shutdown,
        ]
    }

    /// One of every guest message and exec event.
    fn guest_messages() -> Vec<GuestMessage> {
        let ev = |event| GuestMessage::Exec { id: id(1), event };
        vec![
            GuestMessage::Ready {
                version: crate::PROTOCOL_VERSION,
                kernel: "6.1.0".into(),
            },
            ev(ExecEvent::Started { pid: 42 }),
            ev(ExecEvent::Stdout(Bytes(b"hello\n".to_vec()))),
            ev(ExecEvent::Stderr(Bytes(vec![0xff, 0xfe, 0]))),
            ev(ExecEvent::Exit {
                code: Some(3),
                signal: None,
                timed_out: false,
                oom_killed: false,
            }),
            ev(ExecEvent::Exit {
                code: None,
                signal: Some(9),
                timed_out: true,
                oom_killed: true,
            }),
            GuestMessage::FileData {
                id: id(3),
                data: Bytes(b"sandbox\n".to_vec()),
            },
            GuestMessage::DirListing {
                id: id(6),
                entries: vec![
                    DirEntry {
                        name: "bin".into(),
                        kind: FileKind::Symlink,
                        size: 7,
                        mode: 0o777,
                        modified: 1_700_000_000,
                    },
                    DirEntry {
                        name: "etc".into(),
                        kind: FileKind::Dir,
                        size: 4096,
                        mode: 0o755,
                        modified: -1,
                    },
                    DirEntry {
                        name: "x".into(),
                        kind: FileKind::File,
                        size: 0,
                        mode: 0o600,
                        modified: 0,
                    },
                    DirEntry {
                        name: "fifo".into(),
                        kind: FileKind::Other,
                        size: 0,
                        mode: 0o644,
                        modified: 0,
                    },
                ],
            },
            GuestMessage::DirListing {
                id: id(9),
                entries: vec![],
            },
            GuestMessage::Done { id: id(4) },
            GuestMessage::Error {
                id: Some(id(2)),
                error: GuestError {
                    kind: ErrorKind::NotFound,
                    message: "true: not found in PATH".into(),
                },
            },
            GuestMessage::Error {
                id: None,
                error: GuestError {
                    kind: ErrorKind::Protocol,
                    message: "bad frame".into(),
                },
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_frames() {
        let mut wire = Vec::new();
        let mut w = FrameWriter::new(&mut wire);
        for m in host_messages() {
            w.write_message(&m).expect("write_message");
        }
        for m in guest_messages() {
            w.write_message(&m).expect("write_message");
        }
        let mut r = FrameReader::new(wire.as_slice());
        for m in host_messages() {
            assert_eq!(r.read_message::<HostMessage>().expect("test step"), Some(m));
        }
        for m in guest_messages() {
            assert_eq!(
                r.read_message::<GuestMessage>().expect("test step"),
                Some(m)
            );
        }
        assert!(
            r.read_message::<GuestMessage>()
                .expect("test step")
                .is_none()
        );
    }

    #[test]
    fn every_error_kind_round_trips() {
        use ErrorKind::*;
        for kind in [
            NotFound,
            NotExecutable,
            PermissionDenied,
            InvalidInput,
            Unsupported,
            UnknownRequest,
            Protocol,
            Io,
        ] {
            let m = GuestMessage::Error {
                id: Some(id(1)),
                error: GuestError {
                    kind,
                    message: format!("{kind:?}"),
                },
            };
            let frame =
                crate::frame::encode_message(&m, DEFAULT_MAX_FRAME_LEN).expect("encode_message");
            let back: GuestMessage =
                crate::frame::decode_message(&frame[4..]).expect("decode_message");
            assert_eq!(back, m);
        }
        for mode in [NetworkMode::None, NetworkMode::Allowlist, NetworkMode::Full] {
            let json = serde_json::to_string(&mode).expect("to_string");
            assert_eq!(
                serde_json::from_str::<NetworkMode>(&json).expect("test step"),
                mode
            );
        }
    }

    #[test]
    fn bytes_are_base64_on_the_wire() {
        let m = GuestMessage::Exec {
            id: id(7),
            event: ExecEvent::Stdout(Bytes(b"hi\n".to_vec())),
        };
        assert_eq!(
            serde_json::to_string(&m).expect("to_string"),
            r#"{"exec":{"id":7,"event":{"stdout":"aGkK"}}}"#
        );
        let bad = r#"{"exec":{"id":7,"event":{"stdout":"not base64!"}}}"#;
        let err =
            crate::frame::decode_message::<GuestMessage>(bad.as_bytes()).expect_err("should fail");
        assert!(err.to_string().contains("base64"), "{err}");
    }
}
