//! Pseudo-terminals for `attach`, allocated from the sandbox's own devpts instance so the
//! command sees a /dev/pts/N that exists inside the sandbox.

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::pty::OpenptFlags;

/// Opens a new pty pair in the sandbox whose init is `pid`: (master, slave).
pub fn open_in_sandbox(pid: u32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let root = crate::files::root_of(pid).map_err(std::io::Error::other)?;
    let master = rustix::fs::openat2(
        &root,
        "dev/pts/ptmx",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    rustix::pty::unlockpt(&master)?;
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    Ok((master, slave))
}

/// Sets the terminal size of a pty.
pub fn set_size(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(master, ws);
}
