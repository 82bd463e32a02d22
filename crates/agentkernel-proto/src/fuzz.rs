//! Fuzz tests of the guest protocol: byte streams (random, and real frames mutated) read with
//! [`FrameReader`] in short reads and with [`FrameDecoder`] in pieces, every payload decoded as
//! a [`HostMessage`] and a [`GuestMessage`]. Each input must give frames or an error, never a
//! panic or a hang, never a payload above the frame limit, and the two readers must agree on
//! the frames of a stream and on whether it ended cleanly.

#[path = "../../agentkernel-core/src/fuzz_support.rs"]
mod fuzz_support;

use crate::{
    Bytes, EnvVar, ExecEvent, ExecRequest, FileKind, FrameDecoder, FrameError, FrameReader,
    GuestError, GuestMessage, HostMessage, Limits, NetworkMode, PtySize, RequestId, User,
    frame::{HEADER_LEN, decode_message, encode_message},
};
use fuzz_support::{check, json, mutated};
use proptest::prelude::*;
use std::io::Read;

/// The limit the fuzzed readers run with: small, so that announced lengths cross it often.
const MAX: u32 = 4096;

/// Payloads of real messages of both directions.
fn seed_payloads() -> &'static [&'static [u8]] {
    let id = RequestId(7);
    let host = [
        HostMessage::Hello { version: 1 },
        HostMessage::Exec {
            id,
            request: ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec![EnvVar {
                    name: "PATH".into(),
                    value: "/bin".into(),
                }],
                workdir: Some("/workspace".into()),
                user: Some(User::Id { uid: 0, gid: 0 }),
                tty: Some(PtySize { rows: 24, cols: 80 }),
                stdin: true,
                timeout_ms: Some(1000),
            },
        },
        HostMessage::WriteFile {
            id,
            path: "/tmp/x".into(),
            data: Bytes(b"data".to_vec()),
            mode: 0o644,
            create_dirs: true,
        },
        HostMessage::SetPolicy {
            id,
            policy: crate::GuestPolicy {
                network: NetworkMode::Allowlist,
                read_only_root: true,
                limits: Limits {
                    memory_mib: Some(512),
                    pids: None,
                    cpus: Some(1.5),
                },
                capabilities: vec!["CAP_CHOWN".into()],
                no_new_privileges: true,
                seccomp: None,
            },
        },
        HostMessage::Shutdown,
    ];
    let guest = [
        GuestMessage::Ready {
            version: 1,
            kernel: "6.1".into(),
        },
        GuestMessage::Exec {
            id,
            event: ExecEvent::Stdout(Bytes(b"out".to_vec())),
        },
        GuestMessage::DirListing {
            id,
            entries: vec![crate::DirEntry {
                name: "a".into(),
                kind: FileKind::File,
                size: 1,
                mode: 0o644,
                modified: -1,
            }],
        },
        GuestMessage::Error {
            id: None,
            error: GuestError {
                kind: crate::ErrorKind::Protocol,
                message: "no".into(),
            },
        },
    ];
    let mut out: Vec<&'static [u8]> = Vec::new();
    for frame in host
        .iter()
        .map(|m| encode_message(m, MAX))
        .chain(guest.iter().map(|m| encode_message(m, MAX)))
    {
        let frame = frame.expect("seed messages encode");
        out.push(Box::leak(frame[HEADER_LEN..].to_vec().into_boxed_slice()));
    }
    Box::leak(out.into_boxed_slice())
}

const KEYS: &[&str] = &[
    "hello",
    "version",
    "exec",
    "id",
    "request",
    "argv",
    "env",
    "name",
    "value",
    "workdir",
    "user",
    "tty",
    "rows",
    "cols",
    "stdin",
    "timeout_ms",
    "data",
    "path",
    "mode",
    "event",
    "stdout",
    "exit",
    "code",
    "signal",
    "started",
    "pid",
    "policy",
    "limits",
    "shutdown",
];
const TOKENS: &[&str] = &["shutdown", "stdin_close", "aGk=", "====", "/", "sh", "-1"];

/// One piece of a stream.
#[derive(Debug, Clone)]
enum Piece {
    /// A payload with its true length in front.
    Frame(Vec<u8>),
    /// A header announcing any length, then what follows.
    Header(u32),
    /// Bytes as they are.
    Raw(Vec<u8>),
}

fn stream() -> impl Strategy<Value = (Vec<Piece>, Vec<usize>)> {
    let seeds = seed_payloads();
    let payload = prop_oneof![
        3 => mutated(seeds, TOKENS),
        2 => json(KEYS, TOKENS).prop_map(|v| v.to_string().into_bytes()),
    ];
    let piece = prop_oneof![
        6 => payload.prop_map(Piece::Frame),
        1 => prop_oneof![Just(0u32), Just(MAX), Just(MAX + 1), Just(u32::MAX), any::<u32>()]
            .prop_map(Piece::Header),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Raw),
    ];
    (
        prop::collection::vec(piece, 0..8),
        prop::collection::vec(1usize..64, 1..8),
    )
}

/// A reader that returns at most the next of `sizes` bytes per read, in turn.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: &'a [usize],
    turn: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn decode_both(payload: &[u8]) {
    assert!(payload.len() <= MAX as usize, "a payload above the limit");
    let _ = decode_message::<HostMessage>(payload);
    let _ = decode_message::<GuestMessage>(payload);
}

#[test]
fn fuzz_guest_protocol_frames() {
    check("guest_protocol", stream(), |(pieces, sizes)| {
        let mut bytes = Vec::new();
        for p in pieces {
            match p {
                Piece::Frame(payload) => {
                    let len = u32::try_from(payload.len()).expect("small payload");
                    bytes.extend_from_slice(&len.to_be_bytes());
                    bytes.extend_from_slice(&payload);
                }
                Piece::Header(len) => bytes.extend_from_slice(&len.to_be_bytes()),
                Piece::Raw(raw) => bytes.extend_from_slice(&raw),
            }
        }

        // Blocking reader, in short reads.
        let mut reader = FrameReader::with_max(
            Trickle {
                data: &bytes,
                sizes: &sizes,
                turn: 0,
            },
            MAX,
        );
        let mut read_frames = Vec::new();
        let read_clean = loop {
            assert!(
                read_frames.len() <= bytes.len() / HEADER_LEN,
                "more frames than headers"
            );
            match reader.read_frame() {
                Ok(Some(payload)) => {
                    decode_both(&payload);
                    read_frames.push(payload);
                }
                Ok(None) => break true,
                Err(FrameError::TooLarge { len, max }) => {
                    assert!(len > u64::from(max));
                    break false;
                }
                Err(_) => break false,
            }
        };

        // Event-loop decoder, in pieces of the same sizes.
        let mut decoder = FrameDecoder::new(MAX);
        let mut decoded_frames = Vec::new();
        let mut rest: &[u8] = &bytes;
        let mut turn = 0;
        let mut failed = false;
        'feed: while !rest.is_empty() {
            let n = sizes[turn % sizes.len()].min(rest.len());
            turn += 1;
            decoder.push(&rest[..n]);
            rest = &rest[n..];
            loop {
                match decoder.next_frame() {
                    Ok(Some(payload)) => {
                        assert!(payload.len() <= MAX as usize);
                        decoded_frames.push(payload);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break 'feed;
                    }
                }
            }
            assert!(
                decoder.buffered() <= HEADER_LEN + MAX as usize + 64,
                "the decoder holds more than one frame and one read"
            );
        }
        let decoded_clean = !failed && decoder.finish().is_ok();
        assert_eq!(
            read_frames, decoded_frames,
            "the readers disagree on the frames"
        );
        assert_eq!(read_clean, decoded_clean, "the readers disagree on the end");
    });
}
