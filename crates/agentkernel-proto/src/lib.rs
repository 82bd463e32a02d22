//! The host⇄guest protocol of the micro-VM backend, shared by the host side
//! (`agentkernel-vm`) and the guest agent (`agentkernel-guest`, PID 1 in the guest).
//!
//! The channel is a byte stream (virtio-serial on a unix-socket chardev). On it:
//!
//! - [`frame`]: each message is one frame — a big-endian `u32` payload length, then the
//!   payload. Readers refuse a frame above a maximum size before allocating for it, cope with
//!   partial reads, and report a stream that ends inside a frame as an error, never a hang.
//! - [`message`]: the payloads. The host sends [`HostMessage`]s (exec, stdin, signals, PTY
//!   resize, file operations, policy); the guest answers with [`GuestMessage`]s (exec events,
//!   file contents, listings, acknowledgements, errors). Each request carries a [`RequestId`]
//!   chosen by the host, so several execs and file operations share one channel.
//!
//! ## Encoding
//! Payloads are JSON ([`serde_json`]), byte strings inside them base64 ([`Bytes`]). Both crates
//! are already in the workspace (the HTTP API and the image store use them), so the guest agent
//! and the host add no dependency for the protocol, and a captured frame reads as text when a
//! session is debugged. The costs are known and small next to a VM exit: base64 makes stdout
//! chunks 4/3 their size, and JSON parsing is a few microseconds per message. A binary
//! encoding can replace it behind [`frame::encode_message`]/[`frame::decode_message`] with a
//! bump of [`PROTOCOL_VERSION`], which both sides exchange first ([`HostMessage::Hello`],
//! [`GuestMessage::Ready`]).

#![forbid(unsafe_code)]

pub mod frame;
pub mod message;

#[cfg(test)]
mod fuzz;

pub use frame::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, FrameError, FrameReader, FrameWriter, HEADER_LEN,
};
pub use message::{
    Bytes, DirEntry, EnvVar, ErrorKind, ExecEvent, ExecRequest, FileKind, GuestError, GuestMessage,
    GuestPolicy, HostMessage, Limits, NetworkMode, PtySize, RequestId, SeccompMode, User,
};

/// The protocol version both sides announce first; a peer with another version is refused
/// with [`ErrorKind::Protocol`].
pub const PROTOCOL_VERSION: u32 = 1;
