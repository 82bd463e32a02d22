//! File operations inside the sandbox's root, which no path can leave.
//!
//! The root directory is opened once; every path is resolved with `openat2` and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: `..` and absolute symlinks stop at the sandbox's
//! root as they would for a chrooted process, and `/proc/*/root`-style links are refused. A
//! symlink the sandbox planted at `/x -> /init` therefore names the sandbox's `/init`, never
//! the agent's.
//!
//! The last component is handled relative to its parent directory's descriptor (`renameat`,
//! `unlinkat`, `statat` without following), so a write replaces a symlink rather than writing
//! through it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use agentkernel_proto::{DirEntry, FileKind};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::Fail;

/// The largest file `ReadFile` returns: the files API's limit (64 MiB); base64 makes it 4/3
/// bigger, within the protocol's frame limit.
pub const MAX_READ: u64 = 64 * 1024 * 1024;

/// Kernel filesystems (`statfs` magic numbers): their files are kernel and process state,
/// which the host never reads, writes or removes for a sandbox (as on every backend).
const KERNEL_FS: &[(i64, &str)] = &[
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6367_7270, "cgroup2"),
    (0x0027_e0eb, "cgroupfs"),
    (0x1cd1, "devpts"),
    (0x7363_6673, "securityfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0xcafe_4a11, "bpffs"),
];

/// Refuses `fd` (for sandbox path `path`) when it is on a kernel filesystem.
fn refuse_kernel_fs(fd: &impl AsFd, path: &str) -> Result<(), Fail> {
    let st = rustix::fs::fstatfs(fd).map_err(|e| Fail::errno(path, e))?;
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    match KERNEL_FS.iter().find(|(m, _)| *m == magic) {
        Some((_, fs)) => Err(Fail::new(
            agentkernel_proto::ErrorKind::PermissionDenied,
            format!(
                "{path} in the sandbox is on {fs}, a kernel filesystem: its files are kernel and process state, which the host never reads, writes or removes for a sandbox; look at it from inside, with `agentkernel exec`"
            ),
        )),
        None => Ok(()),
    }
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// The sandbox's root, opened once.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
}

/// A path split into its parent (relative to the root, `.` for the root itself) and its last
/// component.
fn split(path: &str) -> Result<(String, String), Fail> {
    if !path.starts_with('/') {
        return Err(Fail::invalid(format!(
            "{path:?} is not an absolute path in the sandbox"
        )));
    }
    if path.contains('\0') {
        return Err(Fail::invalid("the path contains a NUL byte"));
    }
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || name == "." || name == ".." {
        return Err(Fail::invalid(format!(
            "{path:?} names the root or a `.`/`..` entry, not a file"
        )));
    }
    let parent = parent.trim_start_matches('/');
    Ok((
        if parent.is_empty() { "." } else { parent }.to_owned(),
        name.to_owned(),
    ))
}

fn relative(path: &str) -> Result<String, Fail> {
    if !path.starts_with('/') {
        return Err(Fail::invalid(format!(
            "{path:?} is not an absolute path in the sandbox"
        )));
    }
    let rel = path.trim_start_matches('/');
    Ok(if rel.is_empty() { "." } else { rel }.to_owned())
}

impl Root {
    pub fn open(path: &str) -> Result<Self, Errno> {
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { dir })
    }

    fn open_in(&self, rel: &str, flags: OFlags, mode: u32, what: &str) -> Result<OwnedFd, Fail> {
        rustix::fs::openat2(
            &self.dir,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            RESOLVE,
        )
        .map_err(|e| Fail::errno(what, e))
    }

    fn open_dir(&self, rel: &str, what: &str) -> Result<OwnedFd, Fail> {
        self.open_in(rel, OFlags::RDONLY | OFlags::DIRECTORY, 0, what)
    }

    /// The contents of the regular file at `path`.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, Fail> {
        let rel = relative(path)?;
        // NONBLOCK: a FIFO at the path must not hang the agent before fstat sees what it is.
        let fd = self.open_in(&rel, OFlags::RDONLY | OFlags::NONBLOCK, 0, path)?;
        refuse_kernel_fs(&fd, path)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Fail::errno(path, e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => {
                return Err(Fail::invalid(format!("{path} is a directory, not a file")));
            }
            _ => {
                return Err(Fail::invalid(format!(
                    "{path} is not a regular file (a device, FIFO or socket)"
                )));
            }
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size > MAX_READ {
            return Err(Fail::new(
                agentkernel_proto::ErrorKind::TooLarge,
                format!("{path} is {size} bytes, more than the {MAX_READ} bytes one read returns"),
            ));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        std::fs::File::from(fd)
            .take(MAX_READ + 1)
            .read_to_end(&mut data)
            .map_err(|e| Fail::errno(path, Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        if data.len() as u64 > MAX_READ {
            return Err(Fail::new(
                agentkernel_proto::ErrorKind::TooLarge,
                format!("{path} grew past the {MAX_READ} bytes one read returns"),
            ));
        }
        Ok(data)
    }

    /// Replaces the file at `path` with `data`: written to a temporary file in the same
    /// directory and renamed over it, so a reader sees the old or the new contents.
    pub fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
        create_dirs: bool,
    ) -> Result<(), Fail> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (parent, name) = split(path)?;
        if create_dirs {
            self.mkdir_p(&parent)?;
        }
        let dir = self.open_dir(&parent, &format!("the directory of {path}"))?;
        refuse_kernel_fs(&dir, path)?;
        match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(Fail::invalid(format!("{path} is a directory")));
            }
            _ => {}
        }
        let tmp = format!(
            ".{name}.ak-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Fail::errno(path, e))?;
        let result = (|| {
            // The umask would cut `mode` at creation; set it exactly.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))
                .map_err(|e| Fail::errno(path, e))?;
            let mut f = std::fs::File::from(fd);
            f.write_all(data)
                .map_err(|e| Fail::errno(path, Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
            rustix::fs::renameat(&dir, tmp.as_str(), &dir, name.as_str())
                .map_err(|e| Fail::errno(path, e))
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        }
        result
    }

    /// Creates the directory `rel` (relative to the root) and its missing parents.
    fn mkdir_p(&self, rel: &str) -> Result<(), Fail> {
        let mut done = String::from(".");
        for comp in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let dir = self.open_dir(&done, &format!("/{done}"))?;
            match rustix::fs::mkdirat(&dir, comp, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Fail::errno(&format!("mkdir /{done}/{comp}"), e)),
            }
            done = format!("{done}/{comp}");
        }
        Ok(())
    }

    /// Removes a file, or a directory (with what is in it when `recursive`).
    pub fn remove(&self, path: &str, recursive: bool) -> Result<(), Fail> {
        let (parent, name) = split(path)?;
        let dir = self.open_dir(&parent, &format!("the directory of {path}"))?;
        refuse_kernel_fs(&dir, path)?;
        match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::ISDIR) => {
                if recursive {
                    remove_tree(&dir, &name).map_err(|e| Fail::errno(path, e))
                } else {
                    rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::REMOVEDIR).map_err(|e| {
                        if e == Errno::NOTEMPTY {
                            Fail::invalid(format!(
                                "{path} is a directory that is not empty (remove it recursively)"
                            ))
                        } else {
                            Fail::errno(path, e)
                        }
                    })
                }
            }
            Err(e) => Err(Fail::errno(path, e)),
        }
    }

    /// The entries of the directory at `path`, sorted by name.
    pub fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, Fail> {
        let rel = relative(path)?;
        let fd = self.open_dir(&rel, path)?;
        refuse_kernel_fs(&fd, path)?;
        let mut entries = Vec::new();
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| Fail::errno(path, e))?;
        for entry in dir {
            let entry = entry.map_err(|e| Fail::errno(path, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(st) = rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                // Gone since the listing was read.
                continue;
            };
            let kind = match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => FileKind::File,
                FileType::Directory => FileKind::Dir,
                FileType::Symlink => FileKind::Symlink,
                _ => FileKind::Other,
            };
            entries.push(DirEntry {
                name: String::from_utf8_lossy(name).into_owned(),
                kind,
                size: u64::try_from(st.st_size).unwrap_or(0),
                mode: st.st_mode & 0o7777,
                modified: st.st_mtime,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Creates the directory at `path` and its missing parents; sets `mode` on it (an existing
    /// directory too).
    pub fn make_dir(&self, path: &str, mode: u32) -> Result<(), Fail> {
        let rel = relative(path)?;
        self.mkdir_p(&rel)?;
        let fd = self.open_dir(&rel, path)?;
        refuse_kernel_fs(&fd, path)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| Fail::errno(path, e))
    }

    /// Creates the symlink `path` → `target` (stored as given), replacing a non-directory.
    pub fn symlink(&self, path: &str, target: &str) -> Result<(), Fail> {
        let (parent, name) = split(path)?;
        self.mkdir_p(&parent)?;
        let dir = self.open_dir(&parent, &format!("the directory of {path}"))?;
        refuse_kernel_fs(&dir, path)?;
        match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(Fail::invalid(format!("{path} is a directory")));
            }
            Ok(_) => {
                rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())
                    .map_err(|e| Fail::errno(path, e))?;
            }
            Err(_) => {}
        }
        rustix::fs::symlinkat(target, &dir, name.as_str()).map_err(|e| Fail::errno(path, e))
    }

    /// The target of the symlink at `path`, not followed.
    pub fn read_link(&self, path: &str) -> Result<Vec<u8>, Fail> {
        let (parent, name) = split(path)?;
        let dir = self.open_dir(&parent, &format!("the directory of {path}"))?;
        refuse_kernel_fs(&dir, path)?;
        rustix::fs::readlinkat(&dir, name.as_str(), Vec::new())
            .map(|t| t.into_bytes())
            .map_err(|e| Fail::errno(path, e))
    }

    /// `/etc/passwd` or `/etc/group` of the sandbox, empty when missing.
    pub fn read_etc(&self, path: &str) -> String {
        self.read_file(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// Removes the directory `name` of `parent` and everything in it, never following a symlink.
fn remove_tree(parent: &impl AsFd, name: &str) -> Result<(), Errno> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((entry.file_name().to_owned(), entry.file_type()));
        }
    }
    for (n, ty) in names {
        let is_dir = ty == FileType::Directory
            || (ty == FileType::Unknown
                && rustix::fs::statat(&fd, n.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory));
        if is_dir {
            remove_tree(&fd, &n.to_string_lossy())?;
        } else {
            rustix::fs::unlinkat(&fd, n.as_c_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_parent_and_name() {
        assert_eq!(
            split("/workspace/a/b.txt").expect("split"),
            ("workspace/a".into(), "b.txt".into())
        );
        assert_eq!(split("/x").expect("split"), (".".into(), "x".into()));
        assert_eq!(split("/x/").expect("split"), (".".into(), "x".into()));
        assert!(split("x").is_err());
        assert!(split("/").is_err());
        assert!(split("/a/..").is_err());
        assert_eq!(relative("/").expect("relative"), ".");
        assert_eq!(relative("/../../init").expect("relative"), "../../init");
    }

    #[test]
    fn nothing_leaves_the_root() {
        let outside = tempfile_dir();
        let root_path = outside.join("root");
        std::fs::create_dir_all(root_path.join("etc")).expect("mkdir");
        std::fs::write(outside.join("secret"), b"agent").expect("write");
        std::os::unix::fs::symlink("/secret", root_path.join("link")).expect("symlink");
        std::os::unix::fs::symlink("../secret", root_path.join("rel")).expect("symlink");
        let root = Root::open(root_path.to_str().expect("utf8")).expect("open");
        for p in ["/../secret", "/link", "/rel", "/etc/../../secret"] {
            let err = root.read_file(p).expect_err(p);
            assert_eq!(
                err.kind,
                agentkernel_proto::ErrorKind::NotFound,
                "{p}: {err}"
            );
        }
        root.write_file("/a/b/c.txt", b"hi", 0o640, true)
            .expect("write_file");
        assert_eq!(root.read_file("/a/b/c.txt").expect("read"), b"hi");
        assert_eq!(
            root.read_file("/a").expect_err("dir").kind,
            agentkernel_proto::ErrorKind::InvalidInput
        );
        // Writing through the planted link replaces the link, never the file outside.
        root.write_file("/link", b"new", 0o644, false)
            .expect("write_file");
        assert_eq!(
            std::fs::read(outside.join("secret")).expect("read"),
            b"agent"
        );
        let names: Vec<_> = root
            .list_dir("/")
            .expect("list")
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        assert!(names.contains(&("a".into(), FileKind::Dir)), "{names:?}");
        assert!(
            names.contains(&("rel".into(), FileKind::Symlink)),
            "{names:?}"
        );
        assert_eq!(
            root.remove("/a", false).expect_err("not empty").kind,
            agentkernel_proto::ErrorKind::InvalidInput
        );
        root.remove("/a", true).expect("remove");
        assert!(!root_path.join("a").exists());
        let _ = std::fs::remove_dir_all(&outside);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ak-guest-files-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
