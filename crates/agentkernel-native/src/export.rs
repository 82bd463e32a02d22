//! `sandbox export`: a native sandbox's whole filesystem as the sandbox sees its root — image,
//! captured layers and what it wrote — as a tar stream.
//!
//! A running sandbox's root is read through `/proc/<init>/root`; the mounts on it (`/proc`,
//! `/sys`, `/dev`, `/tmp`, binds of host directories) are written as empty directories, never
//! entered. A stopped sandbox's root is assembled read-only as a detached overlay mount of its
//! disk's upper directory over its layers and image. Either way every entry is reached one name
//! at a time from an open directory without following links (the content is the sandbox's),
//! and only directories, regular files and symlinks are written.

use crate::layers::LayerError;
use crate::treecopy::open_checked;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, StatxFlags};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Counts what passes through to the output.
struct Counting<'a> {
    out: &'a mut dyn Write,
    bytes: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the tree under `root` to `out` as tar; returns the bytes written. With `one_mount`,
/// directories on other mounts than `root`'s are written empty.
pub fn write_tar(
    root: BorrowedFd<'_>,
    one_mount: bool,
    out: &mut dyn Write,
) -> Result<u64, LayerError> {
    let mut counting = Counting { out, bytes: 0 };
    {
        let mut tar = tar::Builder::new(&mut counting);
        tar.follow_symlinks(false);
        let mount = if one_mount {
            Some(mount_id(root, c".")?)
        } else {
            None
        };
        walk(&mut tar, root, Path::new(""), mount)?;
        tar.finish().map_err(io(Path::new("tar")))?;
    }
    Ok(counting.bytes)
}

/// An archive with no entries (a sandbox of nothing: no image layers, no writes).
pub fn write_empty(out: &mut dyn Write) -> Result<u64, LayerError> {
    let mut counting = Counting { out, bytes: 0 };
    tar::Builder::new(&mut counting)
        .finish()
        .map_err(io(Path::new("tar")))?;
    Ok(counting.bytes)
}

fn mount_id(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<u64, LayerError> {
    rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)
        .map(|s| s.stx_mnt_id)
        .map_err(|e| io(Path::new(OsStr::from_bytes(name.to_bytes())))(e.into()))
}

fn header(st: &rustix::fs::Stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

fn walk(
    tar: &mut tar::Builder<&mut Counting<'_>>,
    dir: BorrowedFd<'_>,
    rel: &Path,
    mount: Option<u64>,
) -> Result<(), LayerError> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir).map_err(|e| io(rel)(e.into()))? {
        let name = entry.map_err(|e| io(rel)(e.into()))?.file_name().to_owned();
        if name.as_c_str() != c"." && name.as_c_str() != c".." {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let path: PathBuf = rel.join(OsStr::from_bytes(name.to_bytes()));
        let Ok(st) = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let mut h = header(&st, tar::EntryType::Directory);
                tar.append_data(&mut h, &path, std::io::empty())
                    .map_err(io(&path))?;
                if let Some(root_mount) = mount
                    && mount_id(dir, &name)? != root_mount
                {
                    continue;
                }
                let Ok(sub) = open_checked(dir, &name, &path, OFlags::DIRECTORY, &st) else {
                    continue;
                };
                walk(tar, sub.as_fd(), &path, mount)?;
            }
            FileType::RegularFile => {
                // Still the regular file `lstat` saw, or skipped (it changed meanwhile).
                let Ok(file) = open_checked(dir, &name, &path, OFlags::empty(), &st) else {
                    continue;
                };
                let now = rustix::fs::fstat(&file).map_err(|e| io(&path)(e.into()))?;
                let mut h = header(&now, tar::EntryType::Regular);
                h.set_size(now.st_size as u64);
                // The file may change while it is read: exactly the size in the header goes
                // out, cut or padded with zeros.
                let reader = std::io::Read::chain(
                    std::io::Read::take(std::fs::File::from(file), now.st_size as u64),
                    std::io::repeat(0),
                );
                tar.append_data(
                    &mut h,
                    &path,
                    std::io::Read::take(reader, now.st_size as u64),
                )
                .map_err(io(&path))?;
            }
            FileType::Symlink => {
                let Ok(target) = rustix::fs::readlinkat(dir, &name, Vec::new()) else {
                    continue;
                };
                let mut h = header(&st, tar::EntryType::Symlink);
                tar.append_link(&mut h, &path, OsStr::from_bytes(target.as_bytes()))
                    .map_err(io(&path))?;
            }
            // Devices, fifos and sockets are not part of what a sandbox keeps.
            _ => {}
        }
    }
    Ok(())
}

/// A running sandbox's root, through its init.
pub fn running_root(pid: u32, start_time: u64) -> Result<OwnedFd, LayerError> {
    let path = PathBuf::from(format!("/proc/{pid}/root"));
    let root = rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(&path)(e.into()))?;
    if !agentkernel_sys::proc::is_alive(pid, start_time) {
        return Err(LayerError::Gone);
    }
    Ok(root)
}

/// A stopped sandbox's root: `lowers` (top first) as a read-only overlay, detached. Returns the
/// mount (or the only directory when there is one; `None` when there is none).
pub fn stacked_root(lowers: &[PathBuf]) -> Result<Option<OwnedFd>, LayerError> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    match lowers {
        [] => Ok(None),
        [only] => Ok(Some(
            rustix::fs::open(
                only,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io(only)(e.into()))?,
        )),
        _ => {
            let joined = lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            let fail = |e: rustix::io::Errno| io(Path::new("overlay"))(e.into());
            let context =
                rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(fail)?;
            rustix::mount::fsconfig_set_string(&context, "lowerdir", joined.as_str())
                .and_then(|()| rustix::mount::fsconfig_create(&context))
                .map_err(fail)?;
            let mount = rustix::mount::fsmount(
                &context,
                FsMountFlags::FSMOUNT_CLOEXEC,
                MountAttrFlags::MOUNT_ATTR_RDONLY
                    | MountAttrFlags::MOUNT_ATTR_NODEV
                    | MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NOEXEC,
            )
            .map_err(fail)?;
            // A mount's descriptor is a path descriptor: reopen its root to read it.
            let root = rustix::fs::openat(
                &mount,
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(fail)?;
            Ok(Some(root))
        }
    }
}
