//! Length-prefixed frames on a byte stream: a big-endian `u32` payload length ([`HEADER_LEN`]
//! bytes), then the payload.
//!
//! Three ways to use them:
//! - [`FrameReader`]/[`FrameWriter`] over blocking `Read`/`Write` (a thread per channel);
//! - [`FrameDecoder`] for an event loop: push whatever bytes one `read` returned, take out the
//!   whole frames, and call [`FrameDecoder::finish`] at end of stream;
//! - [`encode_message`]/[`decode_message`] to turn a message into a frame and a payload back.
//!
//! Each of them refuses a frame whose length is above its maximum ([`FrameError::TooLarge`])
//! as soon as the header is read, before allocating for it: a confused or hostile peer cannot
//! make the other side allocate 4 GiB. A stream that ends inside a frame is
//! [`FrameError::Truncated`]; one that ends between frames is the normal end (`None`).

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// The largest payload accepted unless a reader or writer is given another limit: 96 MiB, so
/// that one file of the files API's 64 MiB limit fits (base64 makes it 4/3 bigger). Output
/// travels in chunks well below it.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 96 * 1024 * 1024;

/// What can go wrong with frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "a frame of {len} bytes is larger than the limit of {max} bytes: the peer does not speak \
         this protocol version, or sent data that should have been split into chunks"
    )]
    TooLarge { len: u64, max: u32 },
    #[error(
        "the stream ended inside a frame ({got} of {expected} bytes): the peer closed the \
         channel or died mid-message; reconnect or restart the VM"
    )]
    Truncated { expected: u64, got: u64 },
    #[error("reading or writing the channel failed: {0}")]
    Io(#[from] io::Error),
    #[error("could not encode a message (a bug in agentkernel; please report it): {0}")]
    Encode(#[source] serde_json::Error),
    #[error(
        "a frame is not a message of this protocol ({0}): the two sides run different \
         agentkernel versions; rebuild the guest image"
    )]
    Decode(#[source] serde_json::Error),
}

/// Encodes `msg` as one whole frame (header and payload), refusing a payload above `max`.
pub fn encode_message<T: Serialize>(msg: &T, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut frame, msg).map_err(FrameError::Encode)?;
    let len = frame.len() - HEADER_LEN;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= max)
        .ok_or(FrameError::TooLarge {
            len: len as u64,
            max,
        })?;
    frame[..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(frame)
}

/// Decodes the payload of one frame.
pub fn decode_message<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(FrameError::Decode)
}

fn check_len(header: [u8; HEADER_LEN], max: u32) -> Result<u32, FrameError> {
    let len = u32::from_be_bytes(header);
    if len > max {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(len)
}

/// Splits a byte stream into frames, whatever the sizes of the pieces it arrives in.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that refuses payloads above `max` bytes.
    pub fn new(max: u32) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that do not make a whole frame yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame's payload, or `None` until more bytes arrive. A header announcing
    /// more than the maximum is an error at once, before its payload arrives.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = check_len(*header, self.max)? as usize;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(payload))
    }

    /// The next whole frame decoded as a message, or `None` until more bytes arrive.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.next_frame()?.map(|p| decode_message(&p)).transpose()
    }

    /// Call at end of stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let expected = match self.buf.first_chunk::<HEADER_LEN>() {
            Some(h) => HEADER_LEN as u64 + u64::from(u32::from_be_bytes(*h)),
            None => HEADER_LEN as u64,
        };
        Err(FrameError::Truncated {
            expected,
            got: self.buf.len() as u64,
        })
    }
}

/// Reads frames from a blocking reader.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    max: u32,
}

impl<R: Read> FrameReader<R> {
    /// A reader that refuses payloads above [`DEFAULT_MAX_FRAME_LEN`].
    pub fn new(inner: R) -> Self {
        Self::with_max(inner, DEFAULT_MAX_FRAME_LEN)
    }

    /// A reader that refuses payloads above `max` bytes.
    pub fn with_max(inner: R, max: u32) -> Self {
        Self { inner, max }
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next frame's payload; `None` when the stream ended cleanly between frames.
    pub fn read_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.inner.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(FrameError::Truncated {
                        expected: HEADER_LEN as u64,
                        got: got as u64,
                    });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u64::from(check_len(header, self.max)?);
        // Grows with what arrives rather than trusting the header with one allocation.
        let mut payload = Vec::new();
        let n = (&mut self.inner).take(len).read_to_end(&mut payload)? as u64;
        if n < len {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN as u64 + len,
                got: HEADER_LEN as u64 + n,
            });
        }
        Ok(Some(payload))
    }

    /// The next frame decoded as a message; `None` when the stream ended cleanly.
    pub fn read_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.read_frame()?.map(|p| decode_message(&p)).transpose()
    }
}

/// Writes frames to a blocking writer, each with one `write_all` so that frames written under a
/// lock never interleave.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    max: u32,
}

impl<W: Write> FrameWriter<W> {
    /// A writer that refuses payloads above [`DEFAULT_MAX_FRAME_LEN`].
    pub fn new(inner: W) -> Self {
        Self::with_max(inner, DEFAULT_MAX_FRAME_LEN)
    }

    /// A writer that refuses payloads above `max` bytes.
    pub fn with_max(inner: W, max: u32) -> Self {
        Self { inner, max }
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Writes one frame carrying `payload` and flushes.
    pub fn write_frame(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= self.max)
            .ok_or(FrameError::TooLarge {
                len: payload.len() as u64,
                max: self.max,
            })?;
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        self.inner.write_all(&frame)?;
        self.inner.flush()?;
        Ok(())
    }

    /// Writes one message as a frame and flushes.
    pub fn write_message<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        let frame = encode_message(msg, self.max)?;
        self.inner.write_all(&frame)?;
        self.inner.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A reader that hands out at most `step` bytes per `read`, and an `Interrupted` error
    /// before every other read, like a slow pipe under signals.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut w = FrameWriter::new(&mut wire);
        for p in payloads {
            w.write_frame(p).expect("write_frame");
        }
        wire
    }

    #[test]
    fn header_is_big_endian_length() {
        assert_eq!(frames(&[b"abc"]), b"\0\0\0\x03abc");
        assert_eq!(frames(&[b""]), b"\0\0\0\0");
    }

    #[test]
    fn partial_reads_still_give_whole_frames() {
        let big = vec![7u8; 100_000];
        let wire = frames(&[b"one", b"", &big]);
        for step in [1, 3, 4, 5, 4096] {
            let mut r = FrameReader::new(Trickle {
                data: &wire,
                step,
                interrupt: false,
            });
            assert_eq!(r.read_frame().expect("read_frame").expect("expect"), b"one");
            assert_eq!(r.read_frame().expect("read_frame").expect("expect"), b"");
            assert_eq!(r.read_frame().expect("read_frame").expect("expect"), big);
            assert!(r.read_frame().expect("read_frame").is_none());
        }
    }

    #[test]
    fn decoder_takes_bytes_in_any_pieces() {
        let wire = frames(&[b"one", b"", b"three"]);
        for step in [1, 2, 5, wire.len()] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                d.push(chunk);
                while let Some(f) = d.next_frame().expect("next_frame") {
                    got.push(f);
                }
            }
            assert_eq!(got, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
            assert_eq!(d.buffered(), 0);
            d.finish().expect("finish");
        }
    }

    #[test]
    fn oversized_frame_is_refused_by_reader_writer_and_decoder() {
        // The reader refuses on the header alone: the payload is never read or allocated.
        let wire = u32::MAX.to_be_bytes();
        let err = FrameReader::with_max(&wire[..], 1024)
            .read_frame()
            .expect_err("read_frame should fail");
        assert!(
            matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u64::from(u32::MAX)),
            "{err:?}"
        );
        assert!(err.to_string().contains("larger than the limit"), "{err}");

        // Exactly the limit is fine, one more is not.
        let wire = frames(&[&[1u8; 16], &[1u8; 17]]);
        let mut r = FrameReader::with_max(wire.as_slice(), 16);
        assert_eq!(
            r.read_frame().expect("read_frame").expect("expect").len(),
            16
        );
        assert!(matches!(
            r.read_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));

        let mut sink = Vec::new();
        let mut w = FrameWriter::with_max(&mut sink, 16);
        assert!(matches!(
            w.write_frame(&[0u8; 17]),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));
        assert!(matches!(
            w.write_message(&"seventeen chars!!"),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(sink.is_empty(), "nothing of a refused frame is written");

        let mut d = FrameDecoder::new(16);
        d.push(&17u32.to_be_bytes());
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let wire = frames(&[b"hello"]);
        // Cut inside the header and inside the payload.
        for cut in [1, 3, 4, 6, wire.len() - 1] {
            let err = FrameReader::new(&wire[..cut])
                .read_frame()
                .expect_err("read_frame should fail");
            assert!(
                matches!(err, FrameError::Truncated { got, .. } if got == cut as u64),
                "cut {cut}: {err:?}"
            );
            let mut d = FrameDecoder::default();
            d.push(&wire[..cut]);
            assert!(d.next_frame().expect("next_frame").is_none());
            assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));
        }
        // Ending between frames is the normal end.
        assert!(
            FrameReader::new(&b""[..])
                .read_frame()
                .expect("read_frame")
                .is_none()
        );
    }

    #[test]
    fn peer_closing_mid_frame_is_an_error_not_a_hang() {
        let (mut ours, theirs) = UnixStream::pair().expect("pair");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let r = FrameReader::new(theirs).read_frame();
            tx.send(()).expect("send");
            r
        });
        // A header promising 100 bytes, 10 of them, then the peer goes away.
        ours.write_all(&100u32.to_be_bytes()).expect("write_all");
        ours.write_all(&[0u8; 10]).expect("write_all");
        drop(ours);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the reader must return when the peer closes, not hang");
        let err = reader
            .join()
            .expect("join")
            .expect_err("expect should fail");
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 104,
                    got: 14
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let wire = frames(&[b"{not json"]);
        let err = FrameReader::new(wire.as_slice())
            .read_message::<crate::HostMessage>()
            .expect_err("should fail");
        assert!(matches!(err, FrameError::Decode(_)), "{err:?}");
    }
}
