//! Relaying bytes between two TCP sockets with splice(2) through a pipe: the data never enters
//! the proxy's memory, which is what lets a download through the proxy run near the speed of a
//! direct one (a user-space copy loop moves every byte twice more). Readiness comes from
//! tokio; each direction ends with a half-close of its destination, as `copy_bidirectional`
//! does. Hand-written: tokio has no splice, and the crates that wrap it bring their own
//! runtimes.

use rustix::pipe::{SpliceFlags, splice};
use std::io;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// How much one splice moves at most, and the pipe's capacity.
const CHUNK: usize = 1 << 20;

/// Relays both directions until both have ended; errors end the relay.
pub async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    let (one, two) = tokio::join!(one_way(a, b), one_way(b, a));
    one.and(two)
}

async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (pipe_r, pipe_w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    // A bigger pipe moves more per system call; the default (64 KiB) still works.
    let _ = rustix::pipe::fcntl_setpipe_size(&pipe_w, CHUNK);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        // The pipe is empty here, so "would block" can only mean the socket has nothing.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // End of stream: pass the half-close on.
            let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
            return Ok(());
        }
        // The pipe holds `left` bytes, so "would block" can only mean the socket is full.
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
