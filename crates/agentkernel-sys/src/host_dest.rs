//! Where a copy out of a sandbox lands on the host (`cp NAME:SRC DST`), for every backend: the
//! native backend walks the sandbox's tree itself (`copy.rs`), and the container backends
//! (crates/agentkernel-docker, `files.rs`) unpack the engine's tar archive through the same
//! functions here, so the rules are written once.
//!
//! The top-level destination is the user's own path, taken as they named it (`HostDest::new`).
//! Everything beneath it came from the sandbox, which may have planted links in an earlier
//! copy, so it is created relative to an opened directory and never through a link:
//! - files with `O_CREAT|O_EXCL|O_NOFOLLOW`, after removing (`unlinkat`) whatever non-directory
//!   was at that name — a link an earlier copy made is replaced, never written through;
//! - directories with `mkdirat`, then opened with `O_NOFOLLOW|O_DIRECTORY`; a link or file
//!   where a directory is needed is removed and replaced the same way, never followed;
//! - symlinks with `symlinkat` (links are copied as links, as `docker cp` does);
//! - modes with `fchmod` on the opened file, never `chmod` by path, masked to `0o777`: no
//!   set-uid, set-gid or sticky bit from a sandbox reaches the host.
//!
//! An existing directory where the sandbox has a file or link is left alone, and the copy
//! fails: removing a host directory tree because a sandbox said so is not a copy.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

/// Bits of a sandbox file's mode that reach the host.
pub const MODE_MASK: u32 = 0o777;

/// How often an entry is removed and created again when something keeps making it in between.
const CREATE_TRIES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum HostDestError {
    #[error("{path} on the host: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} on the host is a directory, and the sandbox has {what} there: move the directory away or copy to another destination"
    )]
    DirectoryInTheWay { path: PathBuf, what: &'static str },
    #[error("{0}: give a destination with a file name, e.g. ./out")]
    NoName(PathBuf),
    #[error(
        "the copy's archive has an entry {0:?} that does not lie under what was copied: nothing more was unpacked"
    )]
    StrayEntry(PathBuf),
}

type Result<T> = std::result::Result<T, HostDestError>;

fn io_err(path: &Path) -> impl FnOnce(rustix::io::Errno) -> HostDestError + '_ {
    move |e| HostDestError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The top-level destination of one copy out of a sandbox.
#[derive(Debug)]
pub struct HostDest {
    top: Top,
    /// The path of the top-level entry as the user sees it.
    path: PathBuf,
}

#[derive(Debug)]
enum Top {
    /// The entry `name` in the opened directory `parent`.
    Entry { parent: OwnedFd, name: OsString },
    /// An existing directory of the user's that a tree's contents merge into (copying a
    /// sandbox's root, which has no name of its own).
    Into(OwnedFd),
}

impl HostDest {
    /// The destination for a copy of the sandbox's `src_name` (`None`: the sandbox's root) to
    /// `dst`, the user's own path, resolved as they named it (their links followed): into
    /// `dst` when it is an existing directory, else `dst` itself.
    pub fn new(dst: &Path, src_name: Option<&OsStr>) -> Result<HostDest> {
        let into_dir = std::fs::metadata(dst).is_ok_and(|m| m.is_dir());
        let open_dir = |p: &Path| {
            rustix::fs::open(
                p,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_err(p))
        };
        match (into_dir, src_name) {
            (true, Some(name)) => Ok(HostDest {
                top: Top::Entry {
                    parent: open_dir(dst)?,
                    name: name.to_os_string(),
                },
                path: dst.join(name),
            }),
            (true, None) => Ok(HostDest {
                top: Top::Into(open_dir(dst)?),
                path: dst.to_path_buf(),
            }),
            (false, _) => {
                let name = dst
                    .file_name()
                    .ok_or_else(|| HostDestError::NoName(dst.to_path_buf()))?;
                let parent = dst
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Ok(HostDest {
                    top: Top::Entry {
                        parent: open_dir(parent)?,
                        name: name.to_os_string(),
                    },
                    path: dst.to_path_buf(),
                })
            }
        }
    }

    /// The top-level entry's path on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The top-level entry as a regular file (see `create_file`).
    pub fn top_file(&self, mode: u32) -> Result<std::fs::File> {
        match &self.top {
            Top::Entry { parent, name } => create_file(parent, name, mode, &self.path),
            Top::Into(_) => Err(HostDestError::DirectoryInTheWay {
                path: self.path.clone(),
                what: "a file",
            }),
        }
    }

    /// The top-level entry as a directory (see `make_dir`).
    pub fn top_dir(&self) -> Result<MadeDir> {
        match &self.top {
            Top::Entry { parent, name } => make_dir(parent, name, &self.path),
            Top::Into(fd) => Ok(MadeDir {
                fd: fd.try_clone().map_err(|e| HostDestError::Io {
                    path: self.path.clone(),
                    source: e,
                })?,
                created: false,
            }),
        }
    }

    /// The top-level entry as a symbolic link (see `make_symlink`).
    pub fn top_symlink(&self, target: &Path) -> Result<()> {
        match &self.top {
            Top::Entry { parent, name } => make_symlink(parent, name, target, &self.path),
            Top::Into(_) => Err(HostDestError::DirectoryInTheWay {
                path: self.path.clone(),
                what: "a symbolic link",
            }),
        }
    }
}

/// Whether the entry `name` in `dir` is a directory (not following a link).
fn is_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    })
}

/// Removes the non-directory entry `name` in `dir` (a file, a link, a FIFO…) so that it can be
/// created afresh; refuses when it is a directory.
fn clear_for(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path, what: &'static str) -> Result<()> {
    if is_dir_at(dir, name) {
        return Err(HostDestError::DirectoryInTheWay {
            path: shown.to_path_buf(),
            what,
        });
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(shown)(e)),
    }
}

/// Creates the regular file `name` in `dir` exclusively, replacing a non-directory entry that
/// was there (never writing through it), with `mode & 0o777` set on the new file. Returns it
/// open for writing.
pub fn create_file(dir: impl AsFd, name: &OsStr, mode: u32, shown: &Path) -> Result<std::fs::File> {
    let dir = dir.as_fd();
    let mut tries = 0;
    let fd = loop {
        match rustix::fs::openat(dir, name, crate::fs::NEW_FILE, Mode::from_raw_mode(0o600)) {
            Ok(fd) => break fd,
            Err(rustix::io::Errno::EXIST) if tries < CREATE_TRIES => {
                tries += 1;
                clear_for(dir, name, shown, "a file")?;
            }
            Err(e) => return Err(io_err(shown)(e)),
        }
    };
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & MODE_MASK)).map_err(io_err(shown))?;
    Ok(std::fs::File::from(fd))
}

/// A directory made (or found) by `make_dir`.
#[derive(Debug)]
pub struct MadeDir {
    /// The directory, opened (never through a link).
    pub fd: OwnedFd,
    /// Whether it was made by this copy (its mode is then the sandbox's: `set_dir_mode`).
    pub created: bool,
}

/// The directory `name` in `dir`: an existing directory is used as it is; a link or file there
/// is removed and a directory made in its place (mode 0700 until `set_dir_mode`).
pub fn make_dir(dir: impl AsFd, name: &OsStr, shown: &Path) -> Result<MadeDir> {
    let dir = dir.as_fd();
    let mut tries = 0;
    loop {
        let created = match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(io_err(shown)(e)),
        };
        match rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => return Ok(MadeDir { fd, created }),
            // A link (ELOOP) or a non-directory (ENOTDIR) is in the way: replace it.
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT)
                if tries < CREATE_TRIES =>
            {
                tries += 1;
                match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(io_err(shown)(e)),
                }
            }
            Err(e) => return Err(io_err(shown)(e)),
        }
    }
}

/// Sets a directory's mode (masked to `0o777`) once its contents are in place: a sandbox
/// directory without write permission would otherwise stop the copy of its own entries.
pub fn set_dir_mode(made: &MadeDir, mode: u32, shown: &Path) -> Result<()> {
    if made.created {
        rustix::fs::fchmod(&made.fd, Mode::from_raw_mode(mode & MODE_MASK))
            .map_err(io_err(shown))?;
    }
    Ok(())
}

/// Creates the symbolic link `name` → `target` in `dir`, replacing a non-directory entry there.
/// The target is copied as it is: the link is never followed here.
pub fn make_symlink(dir: impl AsFd, name: &OsStr, target: &Path, shown: &Path) -> Result<()> {
    let dir = dir.as_fd();
    let mut tries = 0;
    loop {
        match rustix::fs::symlinkat(target, dir, name) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::EXIST) if tries < CREATE_TRIES => {
                tries += 1;
                clear_for(dir, name, shown, "a symbolic link")?;
            }
            Err(e) => return Err(io_err(shown)(e)),
        }
    }
}

/// The parts of an archive entry's path beneath the top-level entry (the first component),
/// refusing anything that could point elsewhere: absolute paths, `..`, a different top.
pub fn entry_parts(entry: &Path, top: &OsStr) -> Result<Vec<OsString>> {
    let mut parts = Vec::new();
    let mut first = None;
    for c in entry.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) if first.is_none() => first = Some(p.to_os_string()),
            Component::Normal(p) => parts.push(p.to_os_string()),
            _ => return Err(HostDestError::StrayEntry(entry.to_path_buf())),
        }
    }
    match first {
        Some(f) if f == top => Ok(parts),
        _ => Err(HostDestError::StrayEntry(entry.to_path_buf())),
    }
}

/// Walks from an opened directory down `parts` (each a directory, made when missing and
/// never followed when a link: see `make_dir`), returning the last one opened.
pub fn walk_dirs(from: &OwnedFd, parts: &[OsString], shown: &Path) -> Result<OwnedFd> {
    let mut dir = from.try_clone().map_err(|e| HostDestError::Io {
        path: shown.to_path_buf(),
        source: e,
    })?;
    let mut here = shown.to_path_buf();
    for part in parts {
        here.push(part);
        dir = make_dir(&dir, part, &here)?.fd;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_link_left_by_an_earlier_copy_is_replaced_not_written_through() {
        let host = tempfile::tempdir().expect("tempdir");
        let victim = host.path().join("victim");
        std::fs::write(&victim, "mine\n").expect("write");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let victim_dir = host.path().join("victim-dir");
        std::fs::create_dir(&victim_dir).expect("mkdir");

        let dst = host.path().join("dst");
        std::fs::create_dir(&dst).expect("mkdir");
        let dest = HostDest::new(&dst, Some(OsStr::new("out"))).expect("dest");
        let top = dest.top_dir().expect("top dir");
        make_symlink(&top.fd, OsStr::new("link"), &victim, &dst.join("out/link")).expect("link");
        make_symlink(
            &top.fd,
            OsStr::new("dirlink"),
            &victim_dir,
            &dst.join("out/dirlink"),
        )
        .expect("link");

        // The second copy: the sandbox now has a file and a directory under those names.
        let dest = HostDest::new(&dst, Some(OsStr::new("out"))).expect("dest");
        let top = dest.top_dir().expect("top dir");
        assert!(!top.created, "the existing directory is reused");
        let mut f =
            create_file(&top.fd, OsStr::new("link"), 0o4777, &dst.join("out/link")).expect("file");
        std::io::Write::write_all(&mut f, b"sandbox\n").expect("write");
        let sub = make_dir(&top.fd, OsStr::new("dirlink"), &dst.join("out/dirlink")).expect("dir");
        assert!(sub.created);
        create_file(&sub.fd, OsStr::new("pwned"), 0o644, &dst.join("x")).expect("file");

        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "mine\n");
        assert_eq!(mode_of(&victim), 0o600);
        assert_eq!(std::fs::read_dir(&victim_dir).expect("ls").count(), 0);
        let link = dst.join("out/link");
        assert!(!link.is_symlink());
        assert_eq!(std::fs::read_to_string(&link).expect("read"), "sandbox\n");
        assert_eq!(mode_of(&link), 0o777, "no set-uid bit from a sandbox");
        assert!(dst.join("out/dirlink/pwned").is_file());
    }

    #[test]
    fn a_directory_in_the_way_is_left_alone() {
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(host.path().join("d")).expect("mkdir");
        std::fs::write(host.path().join("d/keep"), "k").expect("write");
        let dir = rustix::fs::open(
            host.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .expect("open");
        let e = create_file(&dir, OsStr::new("d"), 0o644, &host.path().join("d"))
            .expect_err("a directory is in the way");
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = make_symlink(
            &dir,
            OsStr::new("d"),
            Path::new("/etc"),
            &host.path().join("d"),
        )
        .expect_err("a directory is in the way");
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert!(host.path().join("d/keep").is_file());
    }

    #[test]
    fn the_top_is_into_an_existing_directory_or_the_path_itself() {
        let host = tempfile::tempdir().expect("tempdir");
        let d = HostDest::new(host.path(), Some(OsStr::new("f"))).expect("dest");
        assert_eq!(d.path(), host.path().join("f"));
        let d = HostDest::new(&host.path().join("new"), Some(OsStr::new("f"))).expect("dest");
        assert_eq!(d.path(), host.path().join("new"));
        // The sandbox's root has no name: it merges into an existing directory.
        let d = HostDest::new(host.path(), None).expect("dest");
        assert!(d.top_file(0o644).is_err());
        assert!(!d.top_dir().expect("dir").created);
        assert!(HostDest::new(Path::new("/"), None).is_ok());
        assert!(HostDest::new(&host.path().join("missing/x"), None).is_err());
    }

    #[test]
    fn archive_entries_stay_under_the_top() {
        let top = OsStr::new("out");
        assert_eq!(
            entry_parts(Path::new("out/a/b"), top).expect("inside"),
            vec![OsString::from("a"), OsString::from("b")]
        );
        assert!(
            entry_parts(Path::new("./out/"), top)
                .expect("top")
                .is_empty()
        );
        for bad in ["/etc/passwd", "out/../x", "other/a", "..", ""] {
            assert!(entry_parts(Path::new(bad), top).is_err(), "{bad}");
        }
    }
}
