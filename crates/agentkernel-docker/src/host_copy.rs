//! The host side of `cp` on the container backends, which move files as tar archives through
//! the engine's archive API.
//!
//! Out of a sandbox, the engine's archive is unpacked entry by entry through
//! `agentkernel_sys::host_dest`, the same code the native backend copies out with: every
//! entry created relative to an opened directory, exclusively, never through a link (one an
//! earlier copy left included), modes by `fchmod` without set-uid or set-gid bits; links are
//! copied as links, hard links as copies, and FIFOs and device nodes are skipped (refused when
//! they are what was asked for). Nothing is held in memory beyond a few chunks.
//!
//! Into a sandbox, the user's files are packed without following links and without opening a
//! FIFO, device or socket: those are skipped inside a tree and refused when named.

use agentkernel_sys::host_dest::{self, HostDest, HostDestError, MadeDir, entry_parts, walk_dirs};
use bytes::Bytes;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why unpacking stopped.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Host(#[from] HostDestError),
    #[error("reading the engine's archive: {0}")]
    Archive(#[from] std::io::Error),
    #[error("the engine's archive was empty")]
    Empty,
    /// What was asked for is not a file, directory or link (`kind` as `inode` names it).
    #[error("{kind}")]
    NotCopied { kind: &'static str },
}

/// A `Read` over the chunks of a download, fed from the async side through a channel.
pub struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl ChunkReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> ChunkReader {
        ChunkReader {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// How a tar entry type is named in errors.
fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Fifo => "a named pipe (FIFO)",
        tar::EntryType::Char => "a character device",
        tar::EntryType::Block => "a block device",
        _ => "a file of a kind that is not copied",
    }
}

/// Unpacks the engine's archive of one path to `dest`.
pub fn unpack(dest: &HostDest, archive: impl Read) -> Result<(), UnpackError> {
    let shown = dest.path().to_path_buf();
    let mut archive = tar::Archive::new(archive);
    let mut top_name: Option<OsString> = None;
    let mut top_dir: Option<MadeDir> = None;
    let mut seen_top = false;
    // Directories made here, with their modes, set once their contents are in.
    let mut made_dirs: Vec<(Vec<OsString>, u32)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let top = match &top_name {
            Some(t) => t.clone(),
            None => {
                let first = path
                    .components()
                    .find_map(|c| match c {
                        std::path::Component::Normal(n) => Some(n.to_os_string()),
                        _ => None,
                    })
                    .ok_or_else(|| HostDestError::StrayEntry(path.clone()))?;
                top_name = Some(first.clone());
                first
            }
        };
        let parts = entry_parts(&path, &top)?;
        // Links carry no meaningful mode; a file without one gets an ordinary one.
        let mode = entry.header().mode().unwrap_or(0o644);
        let kind = entry.header().entry_type();
        let Some((last, dirs)) = parts.split_last() else {
            // The entry that was asked for.
            if seen_top {
                return Err(HostDestError::StrayEntry(path).into());
            }
            seen_top = true;
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut out = dest.top_file(mode)?;
                    std::io::copy(&mut entry, &mut out).map_err(|e| HostDestError::Io {
                        path: shown.clone(),
                        source: e,
                    })?;
                }
                tar::EntryType::Directory => {
                    let made = dest.top_dir()?;
                    if made.created {
                        made_dirs.push((Vec::new(), mode));
                    }
                    top_dir = Some(made);
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()?
                        .ok_or_else(|| HostDestError::StrayEntry(path.clone()))?;
                    dest.top_symlink(&target)?;
                }
                other => {
                    return Err(UnpackError::NotCopied {
                        kind: kind_name(other),
                    });
                }
            }
            continue;
        };
        // Entries beneath the top exist only when the top is a directory (an archive may
        // leave out the top's own entry).
        if top_dir.is_none() {
            if seen_top {
                return Err(HostDestError::StrayEntry(path).into());
            }
            let made = dest.top_dir()?;
            if made.created {
                made_dirs.push((Vec::new(), 0o755));
            }
            top_dir = Some(made);
        }
        seen_top = true;
        let Some(top_fd) = &top_dir else {
            return Err(HostDestError::StrayEntry(path).into());
        };
        let here = shown.join(parts.iter().collect::<PathBuf>());
        let parent = walk_dirs(&top_fd.fd, dirs, &shown)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut out = host_dest::create_file(&parent, last, mode, &here)?;
                std::io::copy(&mut entry, &mut out).map_err(|e| HostDestError::Io {
                    path: here.clone(),
                    source: e,
                })?;
            }
            tar::EntryType::Directory => {
                let made = host_dest::make_dir(&parent, last, &here)?;
                if made.created {
                    made_dirs.push((parts.clone(), mode));
                }
            }
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name()? {
                    host_dest::make_symlink(&parent, last, &target, &here)?;
                }
            }
            tar::EntryType::Link => {
                // A hard link to an earlier entry of the archive: copied as a file of its own.
                if let Some(target) = entry.link_name()?
                    && let Some(source) = open_unpacked(&top_fd.fd, &target, &top)
                {
                    let meta = source.metadata().map_err(|e| HostDestError::Io {
                        path: here.clone(),
                        source: e,
                    })?;
                    let mut out = host_dest::create_file(
                        &parent,
                        last,
                        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()),
                        &here,
                    )?;
                    std::io::copy(&mut &source, &mut out).map_err(|e| HostDestError::Io {
                        path: here.clone(),
                        source: e,
                    })?;
                }
            }
            // FIFOs and device nodes are not content (docker cp skips them too); extended
            // headers are read by the tar crate itself.
            _ => {}
        }
    }
    if top_name.is_none() {
        return Err(UnpackError::Empty);
    }
    if let Some(top_fd) = &top_dir {
        // Deepest first, so that a directory without write permission is finished last.
        made_dirs.sort_by_key(|(parts, _)| std::cmp::Reverse(parts.len()));
        for (parts, mode) in made_dirs {
            let here = shown.join(parts.iter().collect::<PathBuf>());
            let fd = walk_dirs(&top_fd.fd, &parts, &shown)?;
            host_dest::set_dir_mode(&MadeDir { fd, created: true }, mode, &here)?;
        }
    }
    Ok(())
}

/// The regular file this copy unpacked at archive path `target` (under `top`), opened for
/// reading without following any link on the way.
fn open_unpacked(
    top: &OwnedFd,
    target: &Path,
    top_name: &std::ffi::OsStr,
) -> Option<std::fs::File> {
    let parts = entry_parts(target, top_name).ok()?;
    let (last, dirs) = parts.split_last()?;
    let mut dir = top.try_clone().ok()?;
    for part in dirs {
        dir = rustix::fs::openat(
            &dir,
            part,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
    }
    let fd = rustix::fs::openat(
        &dir,
        last,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let file = std::fs::File::from(fd);
    file.metadata().ok()?.is_file().then_some(file)
}

/// What `pack` does with one host path.
enum HostKind {
    File,
    Dir,
    Link,
    /// A FIFO, device or socket: never opened.
    Special(&'static str),
}

fn host_kind(meta: &std::fs::Metadata) -> HostKind {
    let t = meta.file_type();
    if t.is_symlink() {
        HostKind::Link
    } else if t.is_dir() {
        HostKind::Dir
    } else if t.is_file() {
        HostKind::File
    } else if t.is_fifo() {
        HostKind::Special("a named pipe (FIFO)")
    } else if t.is_socket() {
        HostKind::Special("a socket")
    } else if t.is_block_device() {
        HostKind::Special("a block device")
    } else {
        HostKind::Special("a character device")
    }
}

/// A tar header for a host file or directory, its mode without set-uid, set-gid or sticky bits.
fn header_of(meta: &std::fs::Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777);
    header
}

/// Refuses a host source that is a FIFO, device or socket (what `cp` was asked to copy in).
pub fn check_source(src: &Path) -> std::io::Result<()> {
    match host_kind(&std::fs::symlink_metadata(src)?) {
        HostKind::Special(kind) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} on the host is {kind}: only regular files, directories and symbolic links are copied into a sandbox",
                src.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Packs the host path `src` as `name` into `builder`: links as links, directories with their
/// contents, regular files opened without following a link or waiting on a FIFO, modes without
/// set-uid, set-gid or sticky bits; FIFOs, devices and sockets skipped.
pub fn pack<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    name: &Path,
    src: &Path,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    match host_kind(&meta) {
        HostKind::Link => builder.append_path_with_name(src, name),
        HostKind::Dir => {
            builder.append_data(&mut header_of(&meta), name, std::io::empty())?;
            for entry in std::fs::read_dir(src)? {
                let entry = entry?;
                pack(builder, &name.join(entry.file_name()), &entry.path())?;
            }
            Ok(())
        }
        HostKind::File => {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(src)?;
            let meta = file.metadata()?;
            if meta.is_file() {
                builder.append_data(&mut header_of(&meta), name, &mut file)?;
            }
            Ok(())
        }
        HostKind::Special(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// An archive like the engine's for `out/`: a link to a host file, a set-uid file, a FIFO.
    fn archive(link_target: &Path, file_mode: u32) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_cksum();
        b.append_data(&mut dir, "out/", std::io::empty())
            .expect("dir");
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "out/link", link_target)
            .expect("link");
        let mut fifo = tar::Header::new_gnu();
        fifo.set_entry_type(tar::EntryType::Fifo);
        fifo.set_mode(0o644);
        fifo.set_size(0);
        fifo.set_cksum();
        b.append_data(&mut fifo, "out/fifo", std::io::empty())
            .expect("fifo");
        let mut file = tar::Header::new_gnu();
        file.set_mode(file_mode);
        file.set_size(4);
        file.set_cksum();
        b.append_data(&mut file, "out/suid", &b"data"[..])
            .expect("file");
        b.into_inner().expect("tar")
    }

    #[test]
    fn a_second_copy_replaces_links_and_drops_set_uid() {
        let host = tempfile::tempdir().expect("tempdir");
        let victim = host.path().join("victim");
        std::fs::write(&victim, "mine\n").expect("write");
        let dst = host.path().join("dst");
        std::fs::create_dir(&dst).expect("mkdir");
        let dest = HostDest::new(&dst, Some(std::ffi::OsStr::new("out"))).expect("dest");
        unpack(&dest, archive(&victim, 0o4755).as_slice()).expect("first copy");
        assert!(dst.join("out/link").is_symlink());
        assert!(!dst.join("out/fifo").exists(), "FIFOs are skipped");
        let mode = std::fs::metadata(dst.join("out/suid"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "no set-uid bit from a sandbox");

        // The sandbox made `link` a regular file in between.
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_cksum();
        b.append_data(&mut dir, "out", std::io::empty())
            .expect("dir");
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o777);
        file.set_size(7);
        file.set_cksum();
        b.append_data(&mut file, "out/link", &b"pwned!\n"[..])
            .expect("file");
        let dest = HostDest::new(&dst, Some(std::ffi::OsStr::new("out"))).expect("dest");
        unpack(&dest, b.into_inner().expect("tar").as_slice()).expect("second copy");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "mine\n");
        assert_eq!(
            std::fs::read_to_string(dst.join("out/link")).expect("read"),
            "pwned!\n"
        );
    }

    #[test]
    fn entries_outside_the_top_are_refused() {
        let host = tempfile::tempdir().expect("tempdir");
        let mut b = tar::Builder::new(Vec::new());
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o644);
        file.set_size(1);
        file.set_cksum();
        b.append_data(&mut file, "f", &b"x"[..]).expect("file");
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o644);
        file.set_size(1);
        file.set_cksum();
        b.append_data(&mut file, "g/x", &b"x"[..]).expect("file");
        let dest =
            HostDest::new(&host.path().join("f"), Some(std::ffi::OsStr::new("f"))).expect("dest");
        let e = unpack(&dest, b.into_inner().expect("tar").as_slice()).expect_err("stray");
        assert!(e.to_string().contains("does not lie under"), "{e}");
        assert!(!host.path().join("g").exists());
    }

    #[test]
    fn a_fifo_asked_for_is_refused() {
        let host = tempfile::tempdir().expect("tempdir");
        let mut b = tar::Builder::new(Vec::new());
        let mut fifo = tar::Header::new_gnu();
        fifo.set_entry_type(tar::EntryType::Fifo);
        fifo.set_mode(0o644);
        fifo.set_size(0);
        fifo.set_cksum();
        b.append_data(&mut fifo, "f", std::io::empty())
            .expect("fifo");
        let dest =
            HostDest::new(&host.path().join("f"), Some(std::ffi::OsStr::new("f"))).expect("dest");
        let e = unpack(&dest, b.into_inner().expect("tar").as_slice()).expect_err("a FIFO");
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(!host.path().join("f").exists());
    }

    #[test]
    fn packing_skips_fifos_keeps_links_and_drops_set_uid() {
        let host = tempfile::tempdir().expect("tempdir");
        let dir = host.path().join("d");
        std::fs::create_dir(&dir).expect("mkdir");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        std::fs::write(dir.join("suid"), "x").expect("write");
        std::fs::set_permissions(dir.join("suid"), std::fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).expect("symlink");
        let e = check_source(&dir.join("fifo")).expect_err("a FIFO is refused");
        assert!(e.to_string().contains("FIFO"), "{e}");

        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        pack(&mut b, Path::new("d"), &dir).expect("pack");
        let bytes = b.into_inner().expect("tar");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen: Vec<(String, tar::EntryType, u32)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    e.path().expect("path").display().to_string(),
                    h.entry_type(),
                    h.mode().expect("mode") & 0o7777,
                )
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = seen.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["d", "d/link", "d/suid"], "the FIFO is skipped");
        assert_eq!(seen[1].1, tar::EntryType::Symlink);
        assert_eq!(seen[2].2, 0o755, "no set-uid bit into a sandbox");
    }
}
