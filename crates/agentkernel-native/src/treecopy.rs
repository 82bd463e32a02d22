//! Copying a sandbox's writable layer (an overlayfs upper directory) into a layer of its own,
//! so that other sandboxes can stack it read-only: files, directories, symlinks, fifos and the
//! overlay's whiteouts (character devices 0:0) and opaque directories, with owners, modes,
//! times, hard links and the extended attributes overlayfs and programs rely on.
//!
//! A running sandbox is copied in two passes (`Copier::copy` then `Copier::refresh`): the first
//! while its processes run, the second with them frozen, redoing only the entries whose inode
//! changed since the first copied them (their ctime, size or identity differ) and removing
//! what is gone. The freeze then lasts about one walk of the tree, not one copy of its data.
//!
//! The source is hostile (the sandbox writes it): every entry is reached one name at a time
//! from an open directory with `O_NOFOLLOW`, a symlink is copied as a symlink and never
//! followed, only regular files and directories are opened (non-blocking, and checked to be
//! what `lstat` said), and device nodes other than whiteouts are skipped. The destination is
//! ours: made fresh under the state directory, which is private.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Extended attributes a layer keeps: the overlay's own markers (an opaque directory, a
/// renamed one) and what programs set on their files.
fn keeps_xattr(name: &[u8]) -> bool {
    name == b"trusted.overlay.opaque"
        || name == b"trusted.overlay.redirect"
        || name == b"security.capability"
        || name.starts_with(b"user.")
}

/// What identifies the state of one source entry: any write, chmod, chown, rename or link
/// changes its ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mode: u32,
    size: i64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl Stamp {
    fn of(st: &Stat) -> Stamp {
        Stamp {
            ino: st.st_ino,
            mode: st.st_mode,
            size: st.st_size,
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        }
    }
}

/// A failed step of a copy, with the entry it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {source}")]
pub struct CopyError {
    step: &'static str,
    path: String,
    source: std::io::Error,
}

fn fail(step: &'static str, path: &Path) -> impl FnOnce(Errno) -> CopyError {
    let path = path.display().to_string();
    move |e| CopyError {
        step,
        path,
        source: e.into(),
    }
}

type Result<T> = std::result::Result<T, CopyError>;

/// Copies one source tree into one destination directory, then brings it up to date.
pub struct Copier {
    /// The destination's root, for hard links (named by their path from it).
    dst_root: OwnedFd,
    /// Every entry copied, by path from the root, with the source's stamp when it was copied.
    copied: HashMap<PathBuf, Stamp>,
    /// Files with more than one link, by source inode: where the first was copied to.
    links: HashMap<u64, PathBuf>,
}

impl Copier {
    pub fn new(dst_root: OwnedFd) -> Copier {
        Copier {
            dst_root,
            copied: HashMap::new(),
            links: HashMap::new(),
        }
    }

    /// Copies everything under `src` into the (empty) destination root.
    pub fn copy(&mut self, src: BorrowedFd<'_>) -> Result<()> {
        let dst = dup(self.dst_root.as_fd())?;
        self.copy_dir(src, dst.as_fd(), Path::new(""), false)
    }

    /// Makes the destination equal to `src` again, redoing only what changed since `copy`.
    pub fn refresh(&mut self, src: BorrowedFd<'_>) -> Result<()> {
        self.links.clear();
        let dst = dup(self.dst_root.as_fd())?;
        self.copy_dir(src, dst.as_fd(), Path::new(""), true)
    }

    fn copy_dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        rel: &Path,
        refresh: bool,
    ) -> Result<()> {
        let mut seen: HashSet<CString> = HashSet::new();
        for entry in Dir::read_from(src).map_err(fail("read directory", rel))? {
            let entry = entry.map_err(fail("read directory", rel))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let child = rel.join(OsStr::from_bytes(name.to_bytes()));
            let st = match rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed since the directory was read: the next pass sees it gone.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(fail("stat", &child)(e)),
            };
            seen.insert(name.to_owned());
            let stamp = Stamp::of(&st);
            let kind = FileType::from_raw_mode(st.st_mode);
            let unchanged = refresh && self.copied.get(&child) == Some(&stamp);
            if unchanged && kind != FileType::Directory {
                continue;
            }
            if refresh {
                let keep_dir = kind == FileType::Directory
                    && rustix::fs::statat(dst, name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|d| FileType::from_raw_mode(d.st_mode) == FileType::Directory);
                if !keep_dir {
                    remove_entry(dst, name, &child)?;
                }
            }
            match self.copy_entry(src, dst, name, &child, &st, refresh) {
                Ok(()) => {}
                // Changed kind or vanished between lstat and open: copied by the next pass
                // (the stamp recorded below no longer matches it).
                Err(e) if e.source.raw_os_error() == Some(libc::ESTALE) => {}
                Err(e) => return Err(e),
            }
            self.copied.insert(child, stamp);
        }
        if refresh {
            for entry in Dir::read_from(dst).map_err(fail("read directory", rel))? {
                let entry = entry.map_err(fail("read directory", rel))?;
                let name = entry.file_name();
                if name == c"." || name == c".." || seen.contains(name) {
                    continue;
                }
                let child = rel.join(OsStr::from_bytes(name.to_bytes()));
                remove_entry(dst, name, &child)?;
                self.copied.remove(&child);
            }
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
        st: &Stat,
        refresh: bool,
    ) -> Result<()> {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let from = open_checked(src, name, rel, OFlags::DIRECTORY, st)?;
                match rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail("create directory", rel)(e)),
                }
                let to = rustix::fs::openat(
                    dst,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(fail("open directory", rel))?;
                self.copy_dir(from.as_fd(), to.as_fd(), rel, refresh)?;
                set_meta(from.as_fd(), to.as_fd(), st, rel)
            }
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&st.st_ino) {
                        return rustix::fs::linkat(
                            self.dst_root.as_fd(),
                            first.as_path(),
                            dst,
                            name,
                            AtFlags::empty(),
                        )
                        .map_err(fail("link", rel));
                    }
                    self.links.insert(st.st_ino, rel.to_path_buf());
                }
                let from = open_checked(src, name, rel, OFlags::empty(), st)?;
                let to = rustix::fs::openat(
                    dst,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(fail("create", rel))?;
                let (mut reader, mut writer) = (std::fs::File::from(from), std::fs::File::from(to));
                std::io::copy(&mut reader, &mut writer).map_err(|source| CopyError {
                    step: "copy",
                    path: rel.display().to_string(),
                    source,
                })?;
                set_meta(reader.as_fd(), writer.as_fd(), st, rel)
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, name, Vec::new())
                    .map_err(fail("read link", rel))?;
                rustix::fs::symlinkat(target.as_c_str(), dst, name)
                    .map_err(fail("create link", rel))?;
                set_meta_at(dst, name, st, rel)
            }
            FileType::CharacterDevice if st.st_rdev == 0 => {
                // An overlay whiteout: this name was deleted from the layers below.
                rustix::fs::mknodat(
                    dst,
                    name,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(fail("create whiteout", rel))?;
                set_meta_at(dst, name, st, rel)
            }
            FileType::Fifo => {
                rustix::fs::mkfifoat(dst, name, Mode::from_raw_mode(0o600))
                    .map_err(fail("create fifo", rel))?;
                set_meta_at(dst, name, st, rel)
            }
            // Sockets mean nothing once copied; device nodes are inert in a sandbox (nodev)
            // and never carried from one to another.
            _ => Ok(()),
        }
    }
}

/// Opens a regular file or a directory of the source without following a link or blocking on
/// a fifo, and checks that it is still the entry `lstat` saw (`ESTALE` when not).
pub(crate) fn open_checked(
    dir: BorrowedFd<'_>,
    name: &CStr,
    rel: &Path,
    extra: OFlags,
    st: &Stat,
) -> Result<OwnedFd> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | extra,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT | Errno::LOOP | Errno::NOTDIR => fail("open", rel)(Errno::STALE),
        e => fail("open", rel)(e),
    })?;
    let now = rustix::fs::fstat(&fd).map_err(fail("stat", rel))?;
    if now.st_ino != st.st_ino || (now.st_mode & libc::S_IFMT) != (st.st_mode & libc::S_IFMT) {
        return Err(fail("open", rel)(Errno::STALE));
    }
    Ok(fd)
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(fail("duplicate", Path::new("")))
}

fn timestamps(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Owner, mode, kept extended attributes and times of an opened entry, in the order that
/// keeps each (chown clears set-id bits and file capabilities).
fn set_meta(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, st: &Stat, rel: &Path) -> Result<()> {
    rustix::fs::fchown(
        dst,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )
    .map_err(fail("chown", rel))?;
    rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))
        .map_err(fail("chmod", rel))?;
    copy_xattrs(src, dst, rel)?;
    rustix::fs::futimens(dst, &timestamps(st)).map_err(fail("set times", rel))
}

/// Owner and times of an entry that is not opened (a symlink, a whiteout, a fifo).
fn set_meta_at(dir: BorrowedFd<'_>, name: &CStr, st: &Stat, rel: &Path) -> Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(fail("chown", rel))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(st.st_mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(fail("chmod", rel))?;
    }
    rustix::fs::utimensat(dir, name, &timestamps(st), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(fail("set times", rel))
}

fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &Path) -> Result<()> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::flistxattr(src, &mut names[..]) {
        Ok(len) => len,
        Err(Errno::RANGE) => {
            let need = rustix::fs::flistxattr_query(src).map_err(fail("list xattrs", rel))?;
            names.resize(need, 0);
            rustix::fs::flistxattr(src, &mut names[..]).map_err(fail("list xattrs", rel))?
        }
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(fail("list xattrs", rel)(e)),
    };
    for name in names[..len].split(|b| *b == 0).filter(|n| keeps_xattr(n)) {
        let Ok(name) = CString::new(name) else {
            continue;
        };
        let need = match rustix::fs::fgetxattr_query(src, name.as_c_str()) {
            Ok(n) => n,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(fail("read xattr", rel)(e)),
        };
        let mut value = vec![0u8; need];
        let got = rustix::fs::fgetxattr(src, name.as_c_str(), &mut value[..])
            .map_err(fail("read xattr", rel))?;
        rustix::fs::fsetxattr(dst, name.as_c_str(), &value[..got], XattrFlags::empty())
            .map_err(fail("write xattr", rel))?;
    }
    Ok(())
}

/// Removes `name` from `dir`, a whole directory tree included; gone already is fine.
pub fn remove_entry(dir: BorrowedFd<'_>, name: &CStr, rel: &Path) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(fail("remove", rel)(e)),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open directory", rel))?;
    let names: Vec<CString> = Dir::read_from(&sub)
        .map_err(fail("read directory", rel))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_c_str() != c"." && n.as_c_str() != c"..")
        .collect();
    for child in names {
        let child_rel = rel.join(OsStr::from_bytes(child.to_bytes()));
        remove_entry(sub.as_fd(), &child, &child_rel)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(fail("remove", rel))
}

/// What a tree costs on disk, in bytes (allocated blocks; a hard-linked file once).
pub fn disk_usage(dir: BorrowedFd<'_>) -> u64 {
    fn walk(dir: BorrowedFd<'_>, seen: &mut HashSet<u64>) -> u64 {
        let Ok(entries) = Dir::read_from(dir) else {
            return 0;
        };
        let mut total = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if st.st_nlink > 1 && !seen.insert(st.st_ino) {
                continue;
            }
            total += st.st_blocks as u64 * 512;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory
                && let Ok(sub) = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            {
                total += walk(sub.as_fd(), seen);
            }
        }
        total
    }
    walk(dir, &mut HashSet::new())
}
