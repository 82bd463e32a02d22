//! The tar a directory image is imported from (`POST /images/create?fromSrc=-`).
//!
//! The directory may be one a sandbox can write, so it is read the way the native backend reads
//! sandbox content: every entry relative to its opened parent, without following a symlink
//! (a symlink is archived as a symlink), each file checked to be a regular file once open. Device
//! nodes are left out, as they are when a layer is unpacked: a block or character device in an
//! image would hand the container the host device behind its numbers (Docker's device cgroup
//! aside). Sockets cannot be archived and are left out too; FIFOs stay.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What went into the archive besides the files.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Archived {
    /// Block and character devices (and sockets) left out.
    pub(crate) skipped: u64,
}

/// Appends the tree at `root` (its own attributes as `.`, then every entry below it).
pub(crate) fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
) -> io::Result<Archived> {
    let dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&dir)?;
    append_empty(builder, &st, tar::EntryType::Directory, Path::new("."))?;
    let mut archived = Archived::default();
    let mut pending: Vec<(OwnedFd, PathBuf)> = vec![(dir, PathBuf::from("."))];
    while let Some((dir, rel)) = pending.pop() {
        for name in sorted_names(&dir)? {
            let name = OsStr::from_bytes(&name);
            let path = rel.join(name);
            let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let child = rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    let st = rustix::fs::fstat(&child)?;
                    append_empty(builder, &st, tar::EntryType::Directory, &path)?;
                    pending.push((child, path));
                }
                FileType::RegularFile => append_file(builder, &dir, name, &path)?,
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&dir, name, Vec::new())?;
                    let mut header = header_of(&st, tar::EntryType::Symlink);
                    builder.append_link(
                        &mut header,
                        &path,
                        OsStr::from_bytes(target.as_bytes()),
                    )?;
                }
                FileType::Fifo => append_empty(builder, &st, tar::EntryType::Fifo, &path)?,
                _ => archived.skipped += 1,
            }
        }
    }
    Ok(archived)
}

/// The names in `dir` (without `.` and `..`), sorted so the archive does not depend on the
/// directory's order.
fn sorted_names(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// A regular file: opened without following a link, and archived only if still a regular file
/// once open, with exactly the size it had then.
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
) -> io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!(
            "{} changed into something other than a regular file while it was archived",
            path.display()
        )));
    }
    let mut header = header_of(&st, tar::EntryType::Regular);
    let size = header.size()?;
    builder.append_data(&mut header, path, Exact::new(std::fs::File::from(fd), size))
}

fn append_empty<W: Write>(
    builder: &mut tar::Builder<W>,
    st: &Stat,
    kind: tar::EntryType,
    path: &Path,
) -> io::Result<()> {
    let mut header = header_of(st, kind);
    builder.append_data(&mut header, path, io::empty())
}

/// A header with the entry's type, permissions, owner, time and (for files) size.
fn header_of(st: &Stat, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(st.st_mode & 0o7777);
    header.set_uid(u64::from(st.st_uid));
    header.set_gid(u64::from(st.st_gid));
    header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    let size = if kind == tar::EntryType::Regular {
        u64::try_from(st.st_size).unwrap_or(0)
    } else {
        0
    };
    header.set_size(size);
    header
}

/// Reads exactly `size` bytes of `inner`: never more (a file that grows is cut where its
/// header says it ends), and an error where it ends early (a file that shrank), since a short
/// entry would corrupt the rest of the archive.
pub(crate) struct Exact<R> {
    inner: io::Take<R>,
    left: u64,
}

impl<R: Read> Exact<R> {
    pub(crate) fn new(inner: R, size: u64) -> Exact<R> {
        Exact {
            inner: inner.take(size),
            left: size,
        }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_left_out_and_links_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"host file").expect("write");
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/file"), b"image file").expect("write");
        std::os::unix::fs::symlink(&secret, root.join("link")).expect("symlink");
        let dev = |name: &str, kind: FileType, major: u32, minor: u32| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join(name),
                kind,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(major, minor),
            )
            .expect("mknod (needs root)");
        };
        dev("null", FileType::CharacterDevice, 1, 3);
        dev("disk", FileType::BlockDevice, 7, 0);
        dev("pipe", FileType::Fifo, 0, 0);

        let mut builder = tar::Builder::new(Vec::new());
        let archived = append_tree(&mut builder, root).expect("archive");
        let bytes = builder.into_inner().expect("tar");
        assert_eq!(archived, Archived { skipped: 2 });

        let mut entries = std::collections::BTreeMap::new();
        let mut archive = tar::Archive::new(&bytes[..]);
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let kind = entry.header().entry_type();
            let link = entry
                .link_name()
                .expect("link")
                .map(|l| l.display().to_string());
            let mut data = String::new();
            entry.read_to_string(&mut data).expect("read");
            entries.insert(path, (kind, link, data));
        }
        assert!(
            entries
                .values()
                .all(|(k, _, _)| !matches!(k, tar::EntryType::Char | tar::EntryType::Block)),
            "{entries:?}"
        );
        assert!(!entries.contains_key("null") && !entries.contains_key("disk"));
        assert_eq!(entries["pipe"].0, tar::EntryType::Fifo);
        assert_eq!(
            entries["link"],
            (
                tar::EntryType::Symlink,
                Some(secret.display().to_string()),
                String::new()
            ),
            "a symlink is archived as one, not followed"
        );
        assert_eq!(entries["sub/file"].2, "image file");
        assert_eq!(entries["."].0, tar::EntryType::Directory);
    }

    #[test]
    fn exact_reads_refuse_short_files_and_cut_long_ones() {
        let mut out = Vec::new();
        Exact::new(&b"0123456789"[..], 4)
            .read_to_end(&mut out)
            .expect("long");
        assert_eq!(out, b"0123");
        let err = Exact::new(&b"01"[..], 4)
            .read_to_end(&mut Vec::new())
            .expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
