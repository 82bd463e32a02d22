//! Flags shared by every place that makes a file the host or a sandbox must not be tricked
//! into writing through.

use rustix::fs::OFlags;

/// A file made exclusively: never through an existing entry or a link, and without blocking
/// on a FIFO or device that appeared at its name.
pub const NEW_FILE: OFlags = OFlags::WRONLY
    .union(OFlags::CREATE)
    .union(OFlags::EXCL)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);
