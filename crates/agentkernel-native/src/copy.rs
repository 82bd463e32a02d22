//! `agentkernel cp` on the native backend, both ways, docker-cp style (into the destination
//! when it is an existing directory; symlinks inside a copied tree copied as links).
//!
//! The sandbox side follows the rules of `files.rs`: paths resolved beneath the sandbox's root,
//! every entry opened `O_PATH` without following a link and checked before it is read or
//! written, nothing on a kernel filesystem, FIFOs, devices and sockets skipped without being
//! opened. The host side of a copy out is `host_dest.rs` (shared with the container backends):
//! created relative to opened directories, exclusively, never through a link, modes by
//! `fchmod` without set-uid or set-gid bits. The host side of a copy in is the user's own path;
//! its FIFOs, devices and sockets are skipped (refused when named), never opened.

use crate::files::{
    FileError, check_filesystem, host_err, inspect, kind_in, open_dir_in, reopen_in, root_of,
    sandbox_err,
};
use crate::inode;
use agentkernel_sys::host_dest::{self, HostDest};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `cp NAME:SRC DST`: copies a file or directory tree out of the sandbox. A link named as SRC
/// is followed inside the sandbox's root; links inside a tree are copied as links; FIFOs,
/// devices and sockets inside a tree are skipped (named as SRC: refused). Returns the path
/// made on the host.
pub fn copy_out(pid: u32, src: &Path, dst: &Path) -> Result<PathBuf, FileError> {
    let root = root_of(pid)?;
    let (fd, kind) = inspect(&root, src)?;
    let dest = HostDest::new(dst, src.file_name())?;
    let mode = rustix::fs::fstat(&fd).map_err(sandbox_err(src))?.st_mode;
    match kind {
        FileType::RegularFile => {
            let mut out = dest.top_file(mode)?;
            copy_file_out(&fd, src, &mut out, dest.path())?;
        }
        FileType::Directory => {
            let made = dest.top_dir()?;
            copy_tree_out(&fd, src, &made.fd, dest.path())?;
            host_dest::set_dir_mode(&made, mode, dest.path())?;
        }
        other => {
            return Err(FileError::NotRegular {
                path: src.display().to_string(),
                kind: inode::kind_name(other),
            });
        }
    }
    Ok(dest.path().to_path_buf())
}

fn copy_file_out(
    fd: &OwnedFd,
    src: &Path,
    out: &mut std::fs::File,
    shown: &Path,
) -> Result<(), FileError> {
    let mut input = std::fs::File::from(reopen_in(fd, OFlags::RDONLY, src)?);
    std::io::copy(&mut input, out).map_err(host_err(shown))?;
    Ok(())
}

/// Copies the entries of the sandbox directory `dir` (opened `O_PATH`) into the host directory
/// `host`.
fn copy_tree_out(dir: &OwnedFd, src: &Path, host: &OwnedFd, shown: &Path) -> Result<(), FileError> {
    let listing = inode::reopen_dir(dir).map_err(|e| FileError::Sandbox {
        path: src.display().to_string(),
        source: e,
    })?;
    let mut entries = rustix::fs::Dir::new(listing).map_err(sandbox_err(src))?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(sandbox_err(src))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let child_src = src.join(name);
        let child_dst = shown.join(name);
        // The entry itself, never what a link points to; opening it `O_PATH` opens nothing.
        let child = match rustix::fs::openat(
            entries.fd().map_err(sandbox_err(src))?,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Removed by the sandbox since it was listed.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(sandbox_err(&child_src)(e)),
        };
        let st = rustix::fs::fstat(&child).map_err(sandbox_err(&child_src))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&child, "", Vec::new())
                    .map_err(sandbox_err(&child_src))?;
                let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                host_dest::make_symlink(host, name, target, &child_dst)?;
            }
            FileType::RegularFile if on_content(&child) => {
                let mut out = host_dest::create_file(host, name, st.st_mode, &child_dst)?;
                copy_file_out(&child, &child_src, &mut out, &child_dst)?;
            }
            FileType::Directory if on_content(&child) => {
                let made = host_dest::make_dir(host, name, &child_dst)?;
                copy_tree_out(&child, &child_src, &made.fd, &child_dst)?;
                host_dest::set_dir_mode(&made, st.st_mode, &child_dst)?;
            }
            // FIFOs, devices, sockets and kernel filesystems (a sandbox's /proc when its root
            // is copied) are not content: skipped, as `docker cp` skips them.
            _ => {}
        }
    }
    Ok(())
}

/// Whether `fd` is on a filesystem that holds content (not a kernel one).
fn on_content(fd: &OwnedFd) -> bool {
    matches!(inode::kernel_filesystem(fd), Ok(None))
}

/// `cp SRC NAME:DST`: copies a host file or tree into the sandbox (into DST when it resolves to
/// a directory there). Host links are copied as links, never followed; host FIFOs, devices and
/// sockets are skipped (named as SRC: refused), never opened. In the sandbox, a link or other
/// non-directory at a destination name is replaced, never written through; an existing
/// regular file is rewritten through its checked descriptor.
pub fn copy_in(pid: u32, src: &Path, dst: &Path) -> Result<PathBuf, FileError> {
    let root = root_of(pid)?;
    let meta = std::fs::symlink_metadata(src).map_err(host_err(src))?;
    let src_name = src.file_name().ok_or_else(|| FileError::Host {
        path: src.display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "give a source with a name, e.g. ./dir",
        ),
    })?;
    let (parent, name, shown) = match open_dir_in(&root, dst) {
        Ok(dir) => (dir, src_name.to_os_string(), dst.join(src_name)),
        Err(FileError::KernelFilesystem { path, fs }) => {
            return Err(FileError::KernelFilesystem { path, fs });
        }
        Err(_) => {
            let Some(name) = dst.file_name() else {
                return Err(FileError::IsDirectory(dst.display().to_string()));
            };
            let parent = dst.parent().unwrap_or(Path::new("/"));
            (
                open_dir_in(&root, parent)?,
                name.to_os_string(),
                dst.to_path_buf(),
            )
        }
    };
    let kind = inode::kind_name(file_type_of(&meta));
    if !copy_entry_in(&parent, &name, src, &meta, &shown)? {
        return Err(FileError::HostNotRegular {
            path: src.display().to_string(),
            kind,
        });
    }
    Ok(shown)
}

fn file_type_of(meta: &std::fs::Metadata) -> FileType {
    FileType::from_raw_mode(meta.mode())
}

/// Copies the host entry `src` to `name` in the sandbox directory `parent` (opened `O_PATH`,
/// not on a kernel filesystem). Returns false when `src` was skipped (not a regular file,
/// directory or link).
fn copy_entry_in(
    parent: &OwnedFd,
    name: &OsStr,
    src: &Path,
    meta: &std::fs::Metadata,
    shown: &Path,
) -> Result<bool, FileError> {
    match file_type_of(meta) {
        FileType::Symlink => {
            let target = std::fs::read_link(src).map_err(host_err(src))?;
            replace_in(parent, name, shown, |dir| {
                rustix::fs::symlinkat(target.as_path(), dir, name)
            })?;
        }
        FileType::Directory => {
            let dir = make_dir_in(parent, name, shown)?;
            for entry in std::fs::read_dir(src).map_err(host_err(src))? {
                let entry = entry.map_err(host_err(src))?;
                let meta = entry
                    .path()
                    .symlink_metadata()
                    .map_err(host_err(&entry.path()))?;
                copy_entry_in(
                    &dir,
                    &entry.file_name(),
                    &entry.path(),
                    &meta,
                    &shown.join(entry.file_name()),
                )?;
            }
            let opened = inode::reopen_dir(&dir).map_err(|e| FileError::Sandbox {
                path: shown.display().to_string(),
                source: e,
            })?;
            rustix::fs::fchmod(&opened, Mode::from_raw_mode(meta.mode() & 0o777))
                .map_err(sandbox_err(shown))?;
        }
        FileType::RegularFile => {
            // The user's own file, opened without following a link and without waiting for a
            // writer, should it have turned into a FIFO since it was listed.
            let mut input = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(src)
                .map_err(host_err(src))?;
            if !input.metadata().map_err(host_err(src))?.is_file() {
                return Ok(false);
            }
            let out = file_in(parent, name, meta.mode(), shown)?;
            std::io::copy(&mut input, &mut std::fs::File::from(out)).map_err(|e| {
                FileError::Sandbox {
                    path: shown.display().to_string(),
                    source: e,
                }
            })?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Runs `make` (which creates `name` in `dir`), first removing a non-directory entry that is in
/// the way (never following it).
fn replace_in(
    dir: &OwnedFd,
    name: &OsStr,
    shown: &Path,
    make: impl Fn(&OwnedFd) -> rustix::io::Result<()>,
) -> Result<(), FileError> {
    for _ in 0..16 {
        match make(dir) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::EXIST) => clear_in(dir, name, shown)?,
            Err(e) => return Err(sandbox_err(shown)(e)),
        }
    }
    Err(sandbox_err(shown)(rustix::io::Errno::AGAIN))
}

/// Removes the non-directory entry `name` in the sandbox directory `dir`.
fn clear_in(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), FileError> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(rustix::io::Errno::ISDIR) => Err(FileError::IsDirectory(shown.display().to_string())),
        Err(e) => Err(sandbox_err(shown)(e)),
    }
}

/// The directory `name` in the sandbox directory `dir`, made when missing (a non-directory in
/// the way is replaced), opened `O_PATH` without following a link, not on a kernel filesystem.
fn make_dir_in(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<OwnedFd, FileError> {
    for _ in 0..16 {
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(sandbox_err(shown)(e)),
        }
        match rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                check_filesystem(&fd, shown)?;
                return Ok(fd);
            }
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT) => {
                clear_in(dir, name, shown)?;
            }
            Err(e) => return Err(sandbox_err(shown)(e)),
        }
    }
    Err(sandbox_err(shown)(rustix::io::Errno::AGAIN))
}

/// The regular file `name` in the sandbox directory `dir`, open for writing with its contents
/// gone and `mode & 0o777`: an existing regular file is checked and truncated through its
/// descriptor; any other non-directory there is replaced; a new one is created exclusively.
fn file_in(dir: &OwnedFd, name: &OsStr, mode: u32, shown: &Path) -> Result<OwnedFd, FileError> {
    for _ in 0..16 {
        let existing = match rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(sandbox_err(shown)(e)),
        };
        let fd = match existing {
            Some(fd) => match kind_in(&fd, shown)? {
                FileType::RegularFile => {
                    check_filesystem(&fd, shown)?;
                    let file = reopen_in(&fd, OFlags::WRONLY, shown)?;
                    rustix::fs::ftruncate(&file, 0).map_err(sandbox_err(shown))?;
                    file
                }
                FileType::Directory => {
                    return Err(FileError::IsDirectory(shown.display().to_string()));
                }
                _ => {
                    clear_in(dir, name, shown)?;
                    continue;
                }
            },
            None => match rustix::fs::openat(
                dir,
                name,
                agentkernel_sys::fs::NEW_FILE,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(sandbox_err(shown)(e)),
            },
        };
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777)).map_err(sandbox_err(shown))?;
        return Ok(fd);
    }
    Err(sandbox_err(shown)(rustix::io::Errno::AGAIN))
}
