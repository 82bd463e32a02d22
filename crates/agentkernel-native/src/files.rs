//! Files inside a running sandbox, reached from the host through /proc/PID/root, for the files
//! API (HTTP, MCP) and `cp` (`copy.rs`).
//!
//! The host never acts on sandbox content by path with its own privileges:
//! - every path is resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) beneath the
//!   sandbox's root: `..` and symlinks (absolute ones included) resolve inside it and never
//!   lead out; a link the caller names is followed inside the root, like the sandbox would;
//! - what is found is opened `O_PATH` first and checked (`inode.rs`): only regular files and
//!   directories, and nothing on a kernel filesystem (procfs, sysfs, cgroupfs, …), are read,
//!   written or removed in; a device node, FIFO or socket is refused by name and type without
//!   ever being opened, so nothing blocks and no driver is called;
//! - a checked file is reopened through its descriptor (`O_NONBLOCK | O_CLOEXEC`): an existing
//!   file is truncated through the descriptor (`ftruncate`), never by `O_TRUNC` on a path; a
//!   new one is made with `O_CREAT | O_EXCL | O_NOFOLLOW` relative to its opened parent, and
//!   missing parents (`mkdir -p`) relative to opened directories;
//! - removal is `unlinkat` relative to the opened parent, which must not be on a kernel
//!   filesystem.

use crate::inode;
use agentkernel_sys::host_dest::HostDestError;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path} in the sandbox: {source}")]
    Sandbox {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} on the host: {source}")]
    Host {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    HostDest(#[from] HostDestError),
    #[error(
        "the working directory {0} does not exist in the sandbox: create it first or pick another with -w"
    )]
    NoWorkdir(String),
    #[error("the sandbox is not running: start it first")]
    NotRunning,
    #[error("{0} in the sandbox is a directory: give the path of a file")]
    IsDirectory(String),
    #[error(
        "{path} in the sandbox is {kind}: only regular files are read or written from outside the sandbox (and directories and links copied); work with it from inside, with `agentkernel exec`"
    )]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "{path} on the host is {kind}: only regular files, directories and symbolic links are copied into a sandbox"
    )]
    HostNotRegular { path: String, kind: &'static str },
    #[error(
        "{path} in the sandbox is on {fs}, a kernel filesystem: its files are kernel and process state, which the host never reads, writes or removes for a sandbox; look at it from inside, with `agentkernel exec`"
    )]
    KernelFilesystem { path: String, fs: &'static str },
    #[error(
        "{path} in the sandbox is a symbolic link to {target}, which does not exist: write {target} itself, or remove the link first"
    )]
    DanglingLink { path: String, target: String },
    #[error(
        "{0} in the sandbox: its path goes through a loop of symbolic links, or through a link like /proc/PID/root or /proc/PID/fd/N, which is not followed from outside the sandbox: give the path of the file itself"
    )]
    LinkNotFollowed(String),
    #[error(
        "{path} in the sandbox is {size} bytes, more than the {limit} that can be read this way: copy it out with `agentkernel cp`"
    )]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{0} in the sandbox is a directory that is not empty: remove its contents first")]
    DirectoryNotEmpty(String),
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

pub(crate) fn sandbox_err(path: &Path) -> impl FnOnce(rustix::io::Errno) -> FileError + '_ {
    move |e| FileError::Sandbox {
        path: path.display().to_string(),
        source: e.into(),
    }
}

pub(crate) fn host_err(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |e| FileError::Host {
        path: path.display().to_string(),
        source: e,
    }
}

/// The sandbox's root directory, as seen by its init.
pub fn root_of(pid: u32) -> Result<OwnedFd, FileError> {
    rustix::fs::open(
        format!("/proc/{pid}/root").as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| FileError::NotRunning)
}

/// How often `open_in` retries a resolution the kernel could not vouch for.
const RESOLVE_RETRIES: usize = 64;

pub(crate) fn open_in(
    root: &OwnedFd,
    path: &Path,
    flags: OFlags,
    mode: u32,
) -> Result<OwnedFd, FileError> {
    let mut tries = 0;
    loop {
        let opened = rustix::fs::openat2(
            root,
            path,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            RESOLVE,
        );
        match opened {
            // A rename or mount anywhere on the host raced with a `..` resolved inside the root:
            // the kernel could not vouch for the walk and asks for a retry (openat2(2)).
            Err(rustix::io::Errno::AGAIN) if tries < RESOLVE_RETRIES => tries += 1,
            Err(rustix::io::Errno::LOOP) => {
                return Err(FileError::LinkNotFollowed(path.display().to_string()));
            }
            other => return other.map_err(sandbox_err(path)),
        }
    }
}

/// Fails with a clear error when `workdir` is not a directory inside the sandbox whose root
/// is `root` (from `root_of`).
pub fn check_workdir(root: &OwnedFd, workdir: &str) -> Result<(), FileError> {
    open_in(
        root,
        Path::new(workdir),
        OFlags::PATH | OFlags::DIRECTORY,
        0,
    )
    .map(drop)
    .map_err(|_| FileError::NoWorkdir(workdir.to_string()))
}

/// A directory inside the sandbox, opened as a path (for Landlock rules).
pub fn dir_in(root: &OwnedFd, path: &str) -> Result<OwnedFd, FileError> {
    open_in(root, Path::new(path), OFlags::PATH | OFlags::DIRECTORY, 0)
}

/// How often a write retries when the file it is making appears or vanishes in between (the
/// sandbox is running and may be changing the same directory).
const WRITE_RETRIES: usize = 16;

/// Refuses `fd` (for sandbox path `path`) when it is on a kernel filesystem.
pub(crate) fn check_filesystem(fd: impl AsFd, path: &Path) -> Result<(), FileError> {
    match inode::kernel_filesystem(fd) {
        Ok(None) => Ok(()),
        Ok(Some(fs)) => Err(FileError::KernelFilesystem {
            path: path.display().to_string(),
            fs,
        }),
        Err(e) => Err(FileError::Sandbox {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// The type of the file `fd` (for sandbox path `path`) refers to.
pub(crate) fn kind_in(fd: impl AsFd, path: &Path) -> Result<FileType, FileError> {
    inode::kind_of(fd).map_err(|e| FileError::Sandbox {
        path: path.display().to_string(),
        source: e,
    })
}

/// `path` in the sandbox, opened `O_PATH` (a final link followed inside the root) and refused
/// when it is on a kernel filesystem; with its type.
pub(crate) fn inspect(root: &OwnedFd, path: &Path) -> Result<(OwnedFd, FileType), FileError> {
    let fd = open_in(root, path, OFlags::PATH, 0)?;
    check_filesystem(&fd, path)?;
    let kind = kind_in(&fd, path)?;
    Ok((fd, kind))
}

/// The directory `path` in the sandbox, opened `O_PATH`, refused when on a kernel filesystem.
pub(crate) fn open_dir_in(root: &OwnedFd, path: &Path) -> Result<OwnedFd, FileError> {
    let fd = open_in(root, path, OFlags::PATH | OFlags::DIRECTORY, 0)?;
    check_filesystem(&fd, path)?;
    Ok(fd)
}

/// A checked regular file, reopened for real (`flags`) through its `O_PATH` descriptor.
pub(crate) fn reopen_in(fd: &OwnedFd, flags: OFlags, path: &Path) -> Result<OwnedFd, FileError> {
    inode::reopen_file(fd, flags).map_err(|e| FileError::Sandbox {
        path: path.display().to_string(),
        source: e,
    })
}

/// Refuses anything but a regular file, naming what it is.
fn require_regular(kind: FileType, path: &Path) -> Result<(), FileError> {
    match kind {
        FileType::RegularFile => Ok(()),
        FileType::Directory => Err(FileError::IsDirectory(path.display().to_string())),
        other => Err(FileError::NotRegular {
            path: path.display().to_string(),
            kind: inode::kind_name(other),
        }),
    }
}

/// Reads a whole file from the sandbox; refuses files larger than `limit` bytes.
pub fn read_file(pid: u32, path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let root = root_of(pid)?;
    let (fd, kind) = inspect(&root, path)?;
    require_regular(kind, path)?;
    let file = std::fs::File::from(reopen_in(&fd, OFlags::RDONLY, path)?);
    let io_err = |e| FileError::Sandbox {
        path: path.display().to_string(),
        source: e,
    };
    let size = file.metadata().map_err(io_err)?.len();
    if size > limit {
        return Err(FileError::TooLarge {
            path: path.display().to_string(),
            size,
            limit,
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // A file that grows while it is read stops at the limit too.
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.display().to_string(),
            size: data.len() as u64,
            limit,
        });
    }
    Ok(data)
}

/// The parent directory and final name of a path that names an entry (not `/`, not ending in
/// `..`).
fn entry_of(path: &Path) -> Option<(&Path, &std::ffi::OsStr)> {
    Some((path.parent()?, path.file_name()?))
}

/// Writes a whole file into the sandbox, creating it or replacing its contents, and making
/// missing parent directories. An existing file (a link the caller names is followed inside the
/// root) is checked, then truncated and written through its descriptor; a new one is created
/// exclusively in its opened parent.
pub fn write_file(pid: u32, path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    let root = root_of(pid)?;
    let Some((parent_path, name)) = entry_of(path) else {
        return Err(FileError::IsDirectory(path.display().to_string()));
    };
    let parent = make_dirs_in(&root, parent_path)?;
    let write_err = |e| FileError::Sandbox {
        path: path.display().to_string(),
        source: e,
    };
    for _ in 0..WRITE_RETRIES {
        let file = match open_in(&root, path, OFlags::PATH, 0) {
            Ok(fd) => {
                check_filesystem(&fd, path)?;
                require_regular(kind_in(&fd, path)?, path)?;
                let file = reopen_in(&fd, OFlags::WRONLY, path)?;
                rustix::fs::ftruncate(&file, 0).map_err(sandbox_err(path))?;
                file
            }
            Err(FileError::Sandbox { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                match rustix::fs::openat(
                    &parent,
                    name,
                    agentkernel_sys::fs::NEW_FILE,
                    Mode::from_raw_mode(mode & 0o777),
                ) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::EXIST) => {
                        // Something is at the name, yet the path does not resolve: a link to
                        // nothing (or a race with the sandbox: look again).
                        if let Ok(target) = rustix::fs::readlinkat(&parent, name, Vec::new())
                            && matches!(
                                open_in(&root, path, OFlags::PATH, 0),
                                Err(FileError::Sandbox { ref source, .. })
                                    if source.kind() == std::io::ErrorKind::NotFound
                            )
                        {
                            return Err(FileError::DanglingLink {
                                path: path.display().to_string(),
                                target: target.to_string_lossy().into_owned(),
                            });
                        }
                        continue;
                    }
                    Err(e) => return Err(sandbox_err(path)(e)),
                }
            }
            Err(e) => return Err(e),
        };
        return std::fs::File::from(file).write_all(data).map_err(write_err);
    }
    Err(sandbox_err(path)(rustix::io::Errno::AGAIN))
}

/// `mkdir -p` inside the sandbox: each directory made relative to its opened parent, which must
/// not be on a kernel filesystem. Returns the last directory, opened `O_PATH`.
fn make_dirs_in(root: &OwnedFd, dir: &Path) -> Result<OwnedFd, FileError> {
    if let Ok(fd) = open_in(root, dir, OFlags::PATH | OFlags::DIRECTORY, 0) {
        check_filesystem(&fd, dir)?;
        return Ok(fd);
    }
    let mut so_far = PathBuf::from("/");
    let mut parent = open_dir_in(root, &so_far)?;
    for part in dir.components() {
        match part {
            Component::Normal(name) => {
                so_far.push(name);
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(sandbox_err(&so_far)(e)),
                }
            }
            Component::ParentDir => so_far.push(".."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        }
        parent = open_dir_in(root, &so_far)?;
    }
    Ok(parent)
}

/// Removes a file, a symlink (not what it points to) or an empty directory in the sandbox,
/// relative to its opened parent directory.
pub fn remove_file(pid: u32, path: &Path) -> Result<(), FileError> {
    let root = root_of(pid)?;
    let Some((parent, name)) = entry_of(path) else {
        return Err(FileError::Sandbox {
            path: path.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    };
    let dir = open_dir_in(&root, parent)?;
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::ISDIR) => rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)
            .map_err(|e| {
                if e == rustix::io::Errno::NOTEMPTY {
                    FileError::DirectoryNotEmpty(path.display().to_string())
                } else {
                    sandbox_err(path)(e)
                }
            }),
        Err(e) => Err(sandbox_err(path)(e)),
    }
}

pub use crate::copy::{copy_in, copy_out};
