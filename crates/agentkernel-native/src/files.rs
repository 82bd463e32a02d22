//! Files inside a running sandbox, reached from the host through /proc/PID/root. Every path is
//! resolved with openat2(RESOLVE_IN_ROOT): `..` and symlinks (absolute ones included) resolve
//! inside the sandbox's root and can never lead out of it.

use rustix::fd::OwnedFd;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
    #[error(
        "the working directory {0} does not exist in the sandbox: create it first or pick another with -w"
    )]
    NoWorkdir(String),
    #[error("the sandbox is not running: start it first")]
    NotRunning,
    #[error("{0} in the sandbox is a directory: give the path of a file")]
    IsDirectory(String),
    #[error("{0} in the sandbox is not a regular file")]
    NotRegular(String),
    #[error(
        "{path} in the sandbox is {size} bytes, more than the {limit} that can be read this way: copy it out with `agentkernel cp`"
    )]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{0} in the sandbox is a directory that is not empty: remove its contents first")]
    DirectoryNotEmpty(String),
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn sandbox_err(path: &Path) -> impl FnOnce(rustix::io::Errno) -> FileError + '_ {
    move |e| FileError::Sandbox {
        path: path.display().to_string(),
        source: e.into(),
    }
}

fn host_err(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
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

fn open_in(root: &OwnedFd, path: &Path, flags: OFlags, mode: u32) -> Result<OwnedFd, FileError> {
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

/// Reads a whole file from the sandbox; refuses files larger than `limit` bytes.
pub fn read_file(pid: u32, path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let root = root_of(pid)?;
    let fd = open_in(&root, path, OFlags::RDONLY, 0)?;
    let st = rustix::fs::fstat(&fd).map_err(sandbox_err(path))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory => return Err(FileError::IsDirectory(path.display().to_string())),
        _ => return Err(FileError::NotRegular(path.display().to_string())),
    }
    if st.st_size as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.display().to_string(),
            size: st.st_size as u64,
            limit,
        });
    }
    let mut data = Vec::with_capacity(st.st_size as usize);
    // A file that grows while it is read stops at the limit too.
    std::io::Read::take(std::fs::File::from(fd), limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| FileError::Sandbox {
            path: path.display().to_string(),
            source: e,
        })?;
    if data.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.display().to_string(),
            size: data.len() as u64,
            limit,
        });
    }
    Ok(data)
}

/// Writes a whole file into the sandbox (created or truncated), creating missing parent
/// directories. Every directory is resolved inside the sandbox's root.
pub fn write_file(pid: u32, path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    let root = root_of(pid)?;
    if let Some(parent) = path.parent() {
        make_dirs_in(&root, parent)?;
    }
    let fd = open_in(
        &root,
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        mode,
    )?;
    std::fs::File::from(fd)
        .write_all(data)
        .map_err(|e| FileError::Sandbox {
            path: path.display().to_string(),
            source: e,
        })
}

/// `mkdir -p` inside the sandbox.
fn make_dirs_in(root: &OwnedFd, dir: &Path) -> Result<(), FileError> {
    if is_dir_in(root, dir) {
        return Ok(());
    }
    let mut so_far = PathBuf::from("/");
    for part in dir.components() {
        let std::path::Component::Normal(name) = part else {
            continue;
        };
        let parent = open_in(root, &so_far, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        so_far.push(name);
        match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(sandbox_err(&so_far)(e)),
        }
    }
    Ok(())
}

/// Removes a file, a symlink (not what it points to) or an empty directory in the sandbox.
pub fn remove_file(pid: u32, path: &Path) -> Result<(), FileError> {
    let root = root_of(pid)?;
    let (parent, name) = split(path);
    if name == "." || name == ".." || path.parent().is_none() {
        return Err(FileError::Sandbox {
            path: path.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    let dir = open_in(&root, parent, OFlags::PATH | OFlags::DIRECTORY, 0)?;
    match rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::ISDIR) => {
            rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::REMOVEDIR).map_err(|e| {
                if e == rustix::io::Errno::NOTEMPTY {
                    FileError::DirectoryNotEmpty(path.display().to_string())
                } else {
                    sandbox_err(path)(e)
                }
            })
        }
        Err(e) => Err(sandbox_err(path)(e)),
    }
}

fn is_dir_in(root: &OwnedFd, path: &Path) -> bool {
    open_in(root, path, OFlags::PATH | OFlags::DIRECTORY, 0).is_ok()
}

/// `cp NAME:SRC DST`: copies a file or directory tree out of the sandbox, docker-cp style (into
/// DST when it is an existing directory). Symlinks inside a copied tree are copied as links.
pub fn copy_out(pid: u32, src: &Path, dst: &Path) -> Result<PathBuf, FileError> {
    let root = root_of(pid)?;
    let fd = open_in(&root, src, OFlags::RDONLY, 0)?;
    let dst = if dst.is_dir() {
        dst.join(src.file_name().unwrap_or(src.as_os_str()))
    } else {
        dst.to_path_buf()
    };
    copy_fd_out(fd, src, &dst)?;
    Ok(dst)
}

fn copy_fd_out(fd: OwnedFd, src: &Path, dst: &Path) -> Result<(), FileError> {
    let st = rustix::fs::fstat(&fd).map_err(sandbox_err(src))?;
    let mode = st.st_mode & 0o7777;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let mut out = std::fs::File::create(dst).map_err(host_err(dst))?;
            std::io::copy(&mut std::fs::File::from(fd), &mut out).map_err(host_err(dst))?;
            std::fs::set_permissions(
                dst,
                std::os::unix::fs::PermissionsExt::from_mode(mode & 0o777),
            )
            .map_err(host_err(dst))?;
        }
        FileType::Directory => {
            match std::fs::create_dir(dst) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dst.is_dir() => {}
                Err(e) => return Err(host_err(dst)(e)),
            }
            let mut dir = rustix::fs::Dir::read_from(&fd).map_err(sandbox_err(src))?;
            while let Some(entry) = dir.read() {
                let entry = entry.map_err(sandbox_err(src))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                let child_src = src.join(&name);
                let child_dst = dst.join(&name);
                // Entries are opened relative to the directory, never following a final symlink.
                match rustix::fs::openat(
                    &fd,
                    name.as_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(child) => copy_fd_out(child, &child_src, &child_dst)?,
                    Err(rustix::io::Errno::LOOP) => {
                        let target = rustix::fs::readlinkat(&fd, name.as_str(), Vec::new())
                            .map_err(sandbox_err(&child_src))?;
                        let target = PathBuf::from(target.to_string_lossy().into_owned());
                        std::os::unix::fs::symlink(&target, &child_dst)
                            .map_err(host_err(&child_dst))?;
                    }
                    // Sockets, fifos and devices are not copied.
                    Err(rustix::io::Errno::NXIO) | Err(rustix::io::Errno::ACCESS) => {}
                    Err(e) => return Err(sandbox_err(&child_src)(e)),
                }
            }
        }
        // Devices and fifos are not copied.
        _ => {}
    }
    Ok(())
}

/// `cp SRC NAME:DST`: copies a host file or tree into the sandbox.
pub fn copy_in(pid: u32, src: &Path, dst: &Path) -> Result<PathBuf, FileError> {
    let root = root_of(pid)?;
    let meta = std::fs::symlink_metadata(src).map_err(host_err(src))?;
    let dst = if is_dir_in(&root, dst) {
        dst.join(src.file_name().unwrap_or(src.as_os_str()))
    } else {
        dst.to_path_buf()
    };
    copy_path_in(&root, src, &meta, &dst)?;
    Ok(dst)
}

fn copy_path_in(
    root: &OwnedFd,
    src: &Path,
    meta: &std::fs::Metadata,
    dst: &Path,
) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_symlink() {
        let target = std::fs::read_link(src).map_err(host_err(src))?;
        let (parent, name) = split(dst);
        let dir = open_in(root, parent, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        rustix::fs::symlinkat(target.as_path(), &dir, name).map_err(sandbox_err(dst))?;
    } else if meta.is_dir() {
        let (parent, name) = split(dst);
        let dir = open_in(root, parent, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(sandbox_err(dst)(e)),
        }
        for entry in std::fs::read_dir(src).map_err(host_err(src))? {
            let entry = entry.map_err(host_err(src))?;
            let meta = entry
                .path()
                .symlink_metadata()
                .map_err(host_err(&entry.path()))?;
            copy_path_in(root, &entry.path(), &meta, &dst.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        let fd = open_in(
            root,
            dst,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            mode,
        )?;
        let mut input = std::fs::File::open(src).map_err(host_err(src))?;
        std::io::copy(&mut input, &mut std::fs::File::from(fd)).map_err(|e| {
            FileError::Sandbox {
                path: dst.display().to_string(),
                source: e,
            }
        })?;
    }
    Ok(())
}

fn split(path: &Path) -> (&Path, &std::ffi::OsStr) {
    (
        path.parent().unwrap_or(Path::new("/")),
        path.file_name().unwrap_or(std::ffi::OsStr::new(".")),
    )
}
