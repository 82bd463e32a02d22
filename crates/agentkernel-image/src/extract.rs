//! Extracting one layer tar into a directory that becomes an overlayfs lower layer.
//!
//! The archive is hostile until proven otherwise, so every path is resolved component by
//! component from a directory fd with `O_NOFOLLOW`: an entry can never be written through a
//! symlink (even one pointing inside the layer), `..` and absolute paths are refused, and hard
//! links may only name entries inside the layer. OCI whiteouts become overlayfs whiteouts
//! (`.wh.NAME` → char device 0:0, `.wh..wh..opq` → `trusted.overlay.opaque=y`) because the
//! layers are stacked by overlayfs, not merged by us.
//!
//! Device nodes are never created: a block or character device in a layer would hand the
//! sandbox the host's disk or kernel log behind the device's numbers. Such entries are skipped
//! and counted (real images sometimes carry a `/dev` skeleton); the 0:0 character device stays,
//! being overlayfs's whiteout. Every byte written counts against the unpack caps, holes of
//! sparse files included, and every entry costs [`ENTRY_COST`] besides, so neither a tiny
//! sparse archive nor a million empty files can fill the disk.

use crate::ImageError;
use crate::limits::{Budget, Exceeded};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use tar::EntryType;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// aufs bookkeeping (`.wh..wh.plnk`, …) that has no meaning for overlayfs.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Extended attributes taken from the archive. Everything else is dropped: `trusted.overlay.*`
/// in particular would let a layer redirect overlayfs lookups, and `security.selinux` labels
/// belong to the host's policy, not the image's.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

/// What every archive entry costs against the unpack caps besides its data: a filesystem
/// block, about what an inode and its directory entry take.
pub(crate) const ENTRY_COST: u64 = 4096;

/// What one layer's extraction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extracted {
    /// Bytes counted against the caps: data written plus [`ENTRY_COST`] per entry.
    pub(crate) bytes: u64,
    /// Block and character devices left out (and hard links to them).
    pub(crate) skipped_devices: u64,
}

/// Extracts `reader` (an uncompressed tar) into the directory `root` (whose path is
/// `root_path`), charging what it writes to `budget`. `digest` names the layer in errors.
pub(crate) fn extract(
    reader: impl Read,
    root: BorrowedFd<'_>,
    root_path: &Path,
    digest: &str,
    budget: &mut Budget,
) -> std::result::Result<Extracted, ImageError> {
    let mut ex = Extractor {
        root,
        root_path,
        digest,
        cached_parent: None,
        dir_times: Vec::new(),
        buf: vec![0; 256 * 1024],
        budget,
        skipped_devices: 0,
        skipped_paths: std::collections::HashSet::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| ex.io_error("", e))?;
    for entry in entries {
        crate::interrupt::check()?;
        let mut entry = entry.map_err(|e| ex.io_error("", e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        ex.entry(&mut entry, &name).map_err(|e| match e {
            Failure::Unsafe(reason) => ImageError::UnsafeEntry {
                digest: digest.to_string(),
                entry: name.clone(),
                reason,
            },
            Failure::Io(err) => ex.io_error(&name, err),
            Failure::TooLarge(exceeded) => exceeded.error(digest),
            Failure::Stopped(e) => e,
        })?;
    }
    ex.apply_dir_times().map_err(|e| ex.io_error("", e))?;
    Ok(Extracted {
        bytes: ex.budget.layer_bytes(),
        skipped_devices: ex.skipped_devices,
    })
}

enum Failure {
    Unsafe(String),
    Io(std::io::Error),
    /// An unpack cap was crossed.
    TooLarge(Exceeded),
    /// Asked to stop (a signal).
    Stopped(ImageError),
}

impl From<Exceeded> for Failure {
    fn from(e: Exceeded) -> Self {
        Failure::TooLarge(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

impl From<Errno> for Failure {
    fn from(e: Errno) -> Self {
        Failure::Io(e.into())
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Ownership, permissions, time and extended attributes of one entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Extractor<'a> {
    root: BorrowedFd<'a>,
    root_path: &'a Path,
    digest: &'a str,
    /// The parent directory of the previous entry: archives list a directory's entries
    /// together, so this saves re-walking the path for almost every entry.
    cached_parent: Option<(Vec<OsString>, OwnedFd)>,
    /// Directory times are applied last, since creating entries inside changes them.
    dir_times: Vec<(Vec<OsString>, Timespec)>,
    buf: Vec<u8>,
    budget: &'a mut Budget,
    skipped_devices: u64,
    /// Where skipped devices would have been: a hard link to one is skipped too.
    skipped_paths: std::collections::HashSet<Vec<OsString>>,
}

impl Extractor<'_> {
    fn io_error(&self, entry: &str, source: std::io::Error) -> ImageError {
        ImageError::Unpack {
            digest: self.digest.to_string(),
            entry: entry.to_string(),
            source,
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<()> {
        self.budget.charge(ENTRY_COST)?;
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let comps = components(&entry.path_bytes())?;
        let Some((file_name, parent)) = comps.split_last() else {
            // The layer root itself: its attributes are ours (0755 root:root).
            return Ok(());
        };
        let file_bytes = file_name.as_bytes();
        if file_bytes == OPAQUE_MARKER {
            let dir = self.parent(parent)?;
            rustix::fs::fsetxattr(dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())?;
            return Ok(());
        }
        if comps
            .iter()
            .any(|c| c.as_bytes().starts_with(AUFS_META_PREFIX))
        {
            return Ok(());
        }
        if let Some(hidden) = file_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(Failure::Unsafe(format!("whiteout {name:?} names no file")));
            }
            let hidden = OsStr::from_bytes(hidden);
            let dir = self.parent_owned(parent)?;
            let whiteout = |d: BorrowedFd<'_>| {
                rustix::fs::mknodat(
                    d,
                    hidden,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
            };
            return self.create(dir.as_fd(), parent, hidden, whiteout);
        }

        let meta = read_meta(entry)?;
        let dir = self.parent_owned(parent)?;
        let dir = dir.as_fd();
        match kind {
            // Pre-POSIX archives mark directories as regular files named with a trailing `/`.
            EntryType::Regular if entry.path_bytes().ends_with(b"/") => {
                self.directory(dir, &comps, &meta)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(dir, parent, file_name, entry, &meta)
            }
            EntryType::Directory => self.directory(dir, &comps, &meta),
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Failure::Unsafe("symlink without a target".into()))?;
                let target = OsStr::from_bytes(&target).to_os_string();
                self.budget.charge(target.len() as u64)?;
                self.create(dir, parent, file_name, |d| {
                    rustix::fs::symlinkat(&target, d, file_name)
                })?;
                self.own(dir, file_name, &meta)?;
                set_times_at(dir, file_name, meta.mtime)
            }
            EntryType::Link => self.hardlink(dir, parent, file_name, entry),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    EntryType::Char => (FileType::CharacterDevice, device_number(entry.header())?),
                    EntryType::Block => (FileType::BlockDevice, device_number(entry.header())?),
                    // Writers often leave a fifo's device fields empty.
                    _ => (FileType::Fifo, 0),
                };
                let whiteout = file_type == FileType::CharacterDevice && dev == 0;
                if file_type != FileType::Fifo && !whiteout {
                    self.skipped_devices += 1;
                    self.skipped_paths.insert(comps.clone());
                    return Ok(());
                }
                let perm = Mode::from_raw_mode(meta.mode & 0o777);
                self.create(dir, parent, file_name, |d| {
                    rustix::fs::mknodat(d, file_name, file_type, perm, dev)
                })?;
                self.own(dir, file_name, &meta)?;
                rustix::fs::chmodat(
                    dir,
                    file_name,
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )?;
                set_times_at(dir, file_name, meta.mtime)
            }
            other => Err(Failure::Unsafe(format!(
                "unsupported tar entry type {other:?}"
            ))),
        }
    }

    fn file<R: Read>(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: &[OsString],
        name: &OsStr,
        data: &mut R,
        meta: &Meta,
    ) -> Result<()> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut created = None;
        self.create(dir, parent, name, |d| {
            created = Some(rustix::fs::openat(
                d,
                name,
                flags,
                Mode::from_raw_mode(0o600),
            )?);
            Ok(())
        })?;
        let fd =
            created.ok_or_else(|| Failure::Io(std::io::Error::other("file was not created")))?;
        let mut file = std::fs::File::from(fd);
        loop {
            // Holes of a sparse entry come out of the reader as zeros, so they count too.
            let n = data.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            self.budget.charge(n as u64)?;
            crate::interrupt::check().map_err(Failure::Stopped)?;
            file.write_all(&self.buf[..n])?;
        }
        // chown clears set-id bits and file capabilities, so it goes first.
        rustix::fs::fchown(&file, Some(uid(meta.uid)), Some(gid(meta.gid)))?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))?;
        set_xattrs(&file, meta)?;
        rustix::fs::futimens(&file, &times(meta.mtime))?;
        Ok(())
    }

    fn directory(
        &mut self,
        parent_dir: BorrowedFd<'_>,
        comps: &[OsString],
        meta: &Meta,
    ) -> Result<()> {
        let (name, parent) = comps
            .split_last()
            .ok_or_else(|| Failure::Unsafe("empty directory path".into()))?;
        match rustix::fs::mkdirat(parent_dir, name.as_os_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st =
                    rustix::fs::statat(parent_dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    self.remove(parent_dir, parent, name)?;
                    rustix::fs::mkdirat(parent_dir, name.as_os_str(), Mode::from_raw_mode(0o700))?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        let dir = rustix::fs::openat(parent_dir, name.as_os_str(), DIR_FLAGS, Mode::empty())?;
        rustix::fs::fchown(&dir, Some(uid(meta.uid)), Some(gid(meta.gid)))?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(meta.mode))?;
        set_xattrs(&dir, meta)?;
        self.dir_times.push((comps.to_vec(), meta.mtime));
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: &[OsString],
        name: &OsStr,
        entry: &tar::Entry<'_, R>,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| Failure::Unsafe("hard link without a target".into()))?;
        let target = components(&target).map_err(|e| match e {
            Failure::Unsafe(r) => Failure::Unsafe(format!("hard link target: {r}")),
            other => other,
        })?;
        if self.skipped_paths.contains(&target) {
            self.skipped_devices += 1;
            return Ok(());
        }
        let (target_name, target_parent) = target
            .split_last()
            .ok_or_else(|| Failure::Unsafe("hard link to the layer root".into()))?;
        let target_dir = walk(self.root, target_parent, false)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        self.create(dir, parent, name, |d| {
            rustix::fs::linkat(
                &target_dir,
                target_name.as_os_str(),
                d,
                name,
                AtFlags::empty(),
            )
        })
    }

    /// Runs `make` to create `name` in `dir`; an existing entry there is replaced (the last
    /// entry of an archive wins, as with tar).
    fn create(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: &[OsString],
        name: &OsStr,
        mut make: impl FnMut(BorrowedFd<'_>) -> rustix::io::Result<()>,
    ) -> Result<()> {
        match make(dir) {
            Err(Errno::EXIST) => {
                self.remove(dir, parent, name)?;
                Ok(make(dir)?)
            }
            other => Ok(other?),
        }
    }

    /// Removes `name` from `dir`, recursively when it is a directory.
    fn remove(&mut self, dir: BorrowedFd<'_>, parent: &[OsString], name: &OsStr) -> Result<()> {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR | Errno::PERM) => {
                // Every component was opened with O_NOFOLLOW, so this path stays inside the
                // layer; remove_dir_all itself never follows symlinks.
                let mut path: PathBuf = self.root_path.to_path_buf();
                path.extend(parent);
                path.push(name);
                self.cached_parent = None;
                Ok(std::fs::remove_dir_all(path)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn parent(&mut self, parent: &[OsString]) -> Result<BorrowedFd<'_>> {
        let hit = self
            .cached_parent
            .as_ref()
            .is_some_and(|(p, _)| p.as_slice() == parent);
        if !hit {
            let fd = walk(self.root, parent, true)?;
            self.cached_parent = Some((parent.to_vec(), fd));
        }
        match &self.cached_parent {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(Failure::Io(std::io::Error::other(
                "parent directory cache is empty",
            ))),
        }
    }

    /// Like `parent`, as an owned fd (a dup) so `self` stays free for the entry's creation.
    fn parent_owned(&mut self, parent: &[OsString]) -> Result<OwnedFd> {
        let fd = self.parent(parent)?;
        Ok(fd.try_clone_to_owned()?)
    }

    fn own(&self, dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta) -> Result<()> {
        rustix::fs::chownat(
            dir,
            name,
            Some(uid(meta.uid)),
            Some(gid(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    fn apply_dir_times(&mut self) -> std::io::Result<()> {
        for (comps, mtime) in self.dir_times.iter().rev() {
            // A directory replaced by a later entry is simply gone.
            match walk(self.root, comps, false) {
                Ok(dir) => rustix::fs::futimens(&dir, &times(*mtime))?,
                Err(Failure::Io(e)) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }
}

/// Splits an archive path into components, refusing absolute paths and `..`.
fn components(raw: &[u8]) -> Result<Vec<OsString>> {
    if raw.first() == Some(&b'/') {
        return Err(Failure::Unsafe("absolute path".into()));
    }
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(Failure::Unsafe("path contains `..`".into())),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

/// Opens the directory `comps` below `root` without following any symlink, creating missing
/// directories (0755) when `create` is set.
fn walk(root: BorrowedFd<'_>, comps: &[OsString], create: bool) -> Result<OwnedFd> {
    let mut cur = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty())?;
    for (i, comp) in comps.iter().enumerate() {
        let next = match rustix::fs::openat(&cur, comp.as_os_str(), DIR_FLAGS, Mode::empty()) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&cur, comp.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(&cur, comp.as_os_str(), DIR_FLAGS, Mode::empty())
            }
            other => other,
        };
        cur = match next {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR) => {
                let at: PathBuf = comps[..=i].iter().collect();
                return Err(Failure::Unsafe(format!(
                    "{} is a symlink or not a directory, and entries are never written through one",
                    at.display()
                )));
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(cur)
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
    let header = entry.header();
    let mut meta = Meta {
        mode: header.mode()? & 0o7777,
        uid: id_from(header.uid()?)?,
        gid: id_from(header.gid()?)?,
        mtime: Timespec {
            tv_sec: i64::try_from(header.mtime()?).unwrap_or(0),
            tv_nsec: 0,
        },
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                "uid" => {
                    meta.uid = id_from(
                        text.parse()
                            .map_err(|_| Failure::Unsafe(format!("bad pax uid {text:?}")))?,
                    )?
                }
                "gid" => {
                    meta.gid = id_from(
                        text.parse()
                            .map_err(|_| Failure::Unsafe(format!("bad pax gid {text:?}")))?,
                    )?
                }
                "mtime" => meta.mtime = pax_time(text).unwrap_or(meta.mtime),
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                        && xattr_allowed(name)
                    {
                        meta.xattrs.push((name.to_string(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

fn device_number(header: &tar::Header) -> Result<rustix::fs::Dev> {
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    Ok(rustix::fs::makedev(major, minor))
}

fn id_from(raw: u64) -> Result<u32> {
    u32::try_from(raw)
        .ok()
        .filter(|id| *id != u32::MAX)
        .ok_or_else(|| Failure::Unsafe(format!("owner id {raw} is out of range")))
}

/// PAX times are decimal seconds with an optional fraction: `1700000000.25`.
fn pax_time(text: &str) -> Option<Timespec> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let tv_nsec = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(Timespec { tv_sec, tv_nsec })
}

fn set_xattrs(fd: impl AsFd, meta: &Meta) -> Result<()> {
    for (name, value) in &meta.xattrs {
        match rustix::fs::fsetxattr(&fd, name.as_str(), value, XattrFlags::empty()) {
            Ok(()) | Err(Errno::NOTSUP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn set_times_at(dir: BorrowedFd<'_>, name: &OsStr, mtime: Timespec) -> Result<()> {
    rustix::fs::utimensat(dir, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

fn uid(raw: u32) -> Uid {
    Uid::from_raw(raw)
}

fn gid(raw: u32) -> Gid {
    Gid::from_raw(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: EntryType, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_path(path).expect("path");
        h.set_cksum();
        b.append(&h, data).expect("append");
    }

    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in records {
            let body = [format!(" {key}=").as_bytes(), value, b"\n"].concat();
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len}").as_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    #[test]
    fn pax_metadata_skipped_devices_replacements_and_aufs_leftovers() {
        let mut b = tar::Builder::new(Vec::new());
        append(&mut b, "./", EntryType::Directory, b"");
        let ext = pax(&[
            ("SCHILY.xattr.user.test", b"hello"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
            ("uid", b"3000000"),
            ("mtime", b"1700000000.5"),
        ]);
        append(&mut b, "PaxHeaders/f", EntryType::XHeader, &ext);
        append(&mut b, "f", EntryType::Regular, b"data");
        let mut dev = tar::Header::new_ustar();
        dev.set_entry_type(EntryType::Char);
        dev.set_mode(0o666);
        dev.set_uid(0);
        dev.set_gid(0);
        dev.set_mtime(0);
        dev.set_path("null").expect("path");
        dev.set_device_major(1).expect("major");
        dev.set_device_minor(3).expect("minor");
        dev.set_size(0);
        dev.set_cksum();
        b.append(&dev, &b""[..]).expect("append");
        let mut link = tar::Header::new_ustar();
        link.set_entry_type(EntryType::Link);
        link.set_mode(0o666);
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(0);
        link.set_path("null-link").expect("path");
        link.set_link_name("null").expect("link");
        link.set_size(0);
        link.set_cksum();
        b.append(&link, &b""[..]).expect("append");
        append(&mut b, "pipe", EntryType::Fifo, b"");
        append(&mut b, "d/", EntryType::Directory, b"");
        append(&mut b, "d/inner", EntryType::Regular, b"x");
        append(&mut b, "d", EntryType::Regular, b"now a file");
        append(&mut b, ".wh..wh.plnk/123.456", EntryType::Regular, b"aufs");
        append(&mut b, "e/.wh.x", EntryType::Regular, b"");
        append(&mut b, "e/x", EntryType::Regular, b"recreated");
        let tar = b.into_inner().expect("tar");

        let dir = tempfile::tempdir().expect("tempdir");
        let fd = rustix::fs::open(dir.path(), DIR_FLAGS, Mode::empty()).expect("open");
        let mut budget = Budget::new(Default::default());
        let extracted =
            extract(&tar[..], fd.as_fd(), dir.path(), "sha256:test", &mut budget).expect("extract");
        assert_eq!(
            extracted.skipped_devices, 2,
            "the 1:3 device and the hard link to it are left out"
        );
        let p = dir.path();

        let f = std::fs::metadata(p.join("f")).expect("f");
        assert_eq!(
            (f.uid(), f.mtime(), f.mtime_nsec()),
            (3_000_000, 1_700_000_000, 500_000_000)
        );
        let mut buf = [0u8; 16];
        let n = rustix::fs::getxattr(p.join("f"), "user.test", &mut buf).expect("user xattr");
        assert_eq!(&buf[..n], b"hello");
        assert!(rustix::fs::getxattr(p.join("f"), "trusted.overlay.redirect", &mut buf).is_err());

        assert!(
            std::fs::symlink_metadata(p.join("null")).is_err()
                && std::fs::symlink_metadata(p.join("null-link")).is_err(),
            "no device node is ever created"
        );
        assert!(
            std::fs::symlink_metadata(p.join("pipe"))
                .expect("pipe")
                .file_type()
                .is_fifo()
        );
        assert_eq!(std::fs::read(p.join("d")).expect("d"), b"now a file");
        assert!(!p.join(".wh..wh.plnk").exists());
        assert_eq!(std::fs::read(p.join("e/x")).expect("e/x"), b"recreated");
    }

    #[test]
    fn components_refuse_escapes() {
        assert!(matches!(
            components(b"/etc/passwd"),
            Err(Failure::Unsafe(_))
        ));
        assert!(matches!(components(b"a/../../b"), Err(Failure::Unsafe(_))));
        let ok = components(b"./a//b/./c/").ok().expect("valid path");
        assert_eq!(ok, ["a", "b", "c"].map(OsString::from));
        assert!(components(b"./").ok().expect("root").is_empty());
    }

    #[test]
    fn pax_times_parse() {
        let t = pax_time("1700000000.25").expect("time");
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 250_000_000));
        let t = pax_time("12").expect("time");
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        assert!(pax_time("x").is_none());
    }
}
