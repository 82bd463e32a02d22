//! Files in a micro-VM: the files API and `cp`, as guest protocol requests.
//!
//! The guest agent resolves every path beneath the sandbox's root (`openat2` with
//! `RESOLVE_IN_ROOT`), so neither `..` nor a link leads out of it; on the host, a copy out
//! creates each entry relative to an opened directory and never through a link
//! (`agentkernel_sys::host_dest`, the rules every backend shares). Host links are copied as
//! links; FIFOs, devices and sockets are skipped inside a tree and refused when named.

use crate::channel::Channel;
use agentkernel_backend::{BackendError, Result};
use agentkernel_core::ErrorKind;
use agentkernel_proto::{self as proto, FileKind, GuestMessage, HostMessage};
use agentkernel_sys::host_dest::{self, HostDest};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The largest file one request carries (the files API's limit); the protocol's frames hold
/// it base64-encoded.
pub const MAX_FILE: u64 = 64 * 1024 * 1024;

fn path_str(p: &Path) -> Result<String> {
    p.to_str().map(str::to_owned).ok_or_else(|| {
        BackendError::new(
            ErrorKind::InvalidInput,
            format!(
                "{}: the micro-VM backend takes UTF-8 paths only",
                p.display()
            ),
        )
    })
}

/// A file operation's refusal: a missing path is NotFound (HTTP 404); a directory or
/// non-regular file where a file is needed is a Conflict with the sandbox's state (409).
fn file_error(error: proto::GuestError, path: &str) -> BackendError {
    match error.kind {
        proto::ErrorKind::NotFound => BackendError::new(
            ErrorKind::NotFound,
            format!("no such file in the sandbox: {path}"),
        ),
        proto::ErrorKind::InvalidInput => {
            BackendError::new(ErrorKind::Conflict, format!("{path}: {}", error.message))
        }
        proto::ErrorKind::TooLarge => {
            BackendError::new(ErrorKind::TooLarge, format!("{path}: {}", error.message))
        }
        proto::ErrorKind::PermissionDenied => BackendError::new(
            ErrorKind::NotPermitted,
            format!("{path}: {}", error.message),
        ),
        _ => BackendError::new(
            ErrorKind::Internal,
            format!("{path} in the sandbox: {}", error.message),
        ),
    }
}

fn unexpected(what: &str, msg: &GuestMessage) -> BackendError {
    BackendError::new(
        ErrorKind::Internal,
        format!("{what}: unexpected answer from the guest: {msg:?}"),
    )
}

fn data(
    ch: &mut Channel,
    msg: impl FnOnce(proto::RequestId) -> HostMessage,
    path: &str,
) -> Result<Vec<u8>> {
    let id = ch.next_id();
    match ch.call(id, &msg(id))? {
        GuestMessage::FileData { data, .. } => Ok(data.0),
        GuestMessage::Error { error, .. } => Err(file_error(error, path)),
        other => Err(unexpected(path, &other)),
    }
}

fn done(
    ch: &mut Channel,
    msg: impl FnOnce(proto::RequestId) -> HostMessage,
    path: &str,
) -> Result<()> {
    let id = ch.next_id();
    match ch.call(id, &msg(id))? {
        GuestMessage::Done { .. } => Ok(()),
        GuestMessage::Error { error, .. } => Err(file_error(error, path)),
        other => Err(unexpected(path, &other)),
    }
}

fn list(ch: &mut Channel, path: &str) -> Result<Vec<proto::DirEntry>> {
    let id = ch.next_id();
    let msg = HostMessage::ListDir {
        id,
        path: path.to_string(),
    };
    match ch.call(id, &msg)? {
        GuestMessage::DirListing { entries, .. } => Ok(entries),
        GuestMessage::Error { error, .. } => Err(file_error(error, path)),
        other => Err(unexpected(path, &other)),
    }
}

/// The bytes of the regular file at `path` in the sandbox.
fn file_bytes(ch: &mut Channel, path: &str) -> Result<Vec<u8>> {
    let p = path.to_string();
    data(ch, |id| HostMessage::ReadFile { id, path: p }, path)
}

/// The target of the symlink at `path` in the sandbox, not followed.
fn link_target(ch: &mut Channel, path: &str) -> Result<Vec<u8>> {
    let p = path.to_string();
    data(ch, |id| HostMessage::ReadLink { id, path: p }, path)
}

/// A whole file, refused above `limit` bytes.
pub fn read(ch: &mut Channel, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let p = path_str(path)?;
    let bytes = file_bytes(ch, &p)?;
    if bytes.len() as u64 > limit {
        return Err(BackendError::new(
            ErrorKind::TooLarge,
            format!(
                "{p} is {} bytes, more than the {limit} allowed: copy it out with `cp`",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Creates or replaces a file and its missing parent directories.
pub fn write(ch: &mut Channel, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let p = path_str(path)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_large(&p, bytes.len() as u64));
    }
    done(
        ch,
        |id| HostMessage::WriteFile {
            id,
            path: p.clone(),
            data: proto::Bytes(bytes.to_vec()),
            mode,
            create_dirs: true,
        },
        &p,
    )
}

fn too_large(p: &str, len: u64) -> BackendError {
    BackendError::new(
        ErrorKind::TooLarge,
        format!(
            "{p}: {len} bytes is more than the micro-VM backend moves in one file ({MAX_FILE} bytes)"
        ),
    )
}

/// Removes a file, a link or an empty directory.
pub fn remove(ch: &mut Channel, path: &Path) -> Result<()> {
    let p = path_str(path)?;
    done(
        ch,
        |id| HostMessage::Remove {
            id,
            path: p.clone(),
            recursive: false,
        },
        &p,
    )
}

/// `cp SRC NAME:DST`: into DST when it is a directory in the sandbox, else as DST.
pub fn copy_in(ch: &mut Channel, src: &Path, dst: &Path) -> Result<PathBuf> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| {
        BackendError::new(
            if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::InvalidInput
            },
            format!("{} on the host: {e}", src.display()),
        )
    })?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
        return Err(BackendError::new(
            ErrorKind::InvalidInput,
            format!(
                "{}: only files, directories and links can be copied",
                src.display()
            ),
        ));
    }
    let name = src.file_name().ok_or_else(|| {
        BackendError::new(
            ErrorKind::InvalidInput,
            format!("{}: give a source with a name, e.g. ./dir", src.display()),
        )
    })?;
    let into_dir = list(ch, &path_str(dst)?).is_ok();
    let target = if into_dir {
        dst.join(name)
    } else {
        dst.to_path_buf()
    };
    put(ch, src, &target)?;
    Ok(target)
}

fn put(ch: &mut Channel, src: &Path, dst: &Path) -> Result<()> {
    let host_err = |e: std::io::Error| {
        BackendError::new(
            ErrorKind::InvalidInput,
            format!("{} on the host: {e}", src.display()),
        )
    };
    let meta = std::fs::symlink_metadata(src).map_err(host_err)?;
    let p = path_str(dst)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(host_err)?;
        let target = path_str(&target)?;
        return done(
            ch,
            |id| HostMessage::Symlink {
                id,
                path: p.clone(),
                target,
            },
            &p,
        );
    }
    if ft.is_file() {
        if meta.len() > MAX_FILE {
            return Err(too_large(&p, meta.len()));
        }
        // Opened without following a link swapped in since the lstat above.
        let file = rustix::fs::open(
            src,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC
                | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| host_err(e.into()))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(file), &mut bytes).map_err(host_err)?;
        return write(ch, dst, &bytes, meta.permissions().mode() & 0o777);
    }
    if ft.is_dir() {
        let mode = meta.permissions().mode() & 0o777;
        done(
            ch,
            |id| HostMessage::MakeDir {
                id,
                path: p.clone(),
                mode: mode | 0o700,
            },
            &p,
        )?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(host_err)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for name in entries {
            let child = src.join(&name);
            let Ok(m) = std::fs::symlink_metadata(&child) else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_file() || ft.is_dir() || ft.is_symlink() {
                put(ch, &child, &dst.join(&name))?;
            }
        }
        if mode | 0o700 != mode {
            done(
                ch,
                |id| HostMessage::MakeDir {
                    id,
                    path: p.clone(),
                    mode,
                },
                &p,
            )?;
        }
    }
    Ok(())
}

/// `cp NAME:SRC DST`: a file or tree out of the sandbox; returns the path made on the host.
pub fn copy_out(ch: &mut Channel, src: &Path, dst: &Path) -> Result<PathBuf> {
    let p = path_str(src)?;
    let host =
        |e: host_dest::HostDestError| BackendError::new(ErrorKind::InvalidInput, e.to_string());
    let name = src.file_name();
    let dest = HostDest::new(dst, name).map_err(host)?;
    match list(ch, &p) {
        Ok(entries) => {
            let made = dest.top_dir().map_err(host)?;
            get_tree(ch, &p, entries, made.fd.as_fd(), dest.path())?;
        }
        Err(e) if e.kind() == ErrorKind::Conflict => {
            let bytes = file_bytes(ch, &p)?;
            let mut f = dest.top_file(0o644).map_err(host)?;
            std::io::Write::write_all(&mut f, &bytes)
                .map_err(|e| BackendError::io(format!("write {}", dest.path().display()))(e))?;
        }
        Err(e) => return Err(e),
    }
    Ok(dest.path().to_path_buf())
}

fn get_tree(
    ch: &mut Channel,
    inside: &str,
    entries: Vec<proto::DirEntry>,
    dir: std::os::fd::BorrowedFd<'_>,
    shown: &Path,
) -> Result<()> {
    let host =
        |e: host_dest::HostDestError| BackendError::new(ErrorKind::InvalidInput, e.to_string());
    for entry in entries {
        let child = format!("{}/{}", inside.trim_end_matches('/'), entry.name);
        let name = OsStr::from_bytes(entry.name.as_bytes());
        let shown_child = shown.join(name);
        match entry.kind {
            FileKind::File => {
                let bytes = file_bytes(ch, &child)?;
                let mut f =
                    host_dest::create_file(dir, name, entry.mode, &shown_child).map_err(host)?;
                std::io::Write::write_all(&mut f, &bytes)
                    .map_err(|e| BackendError::io(format!("write {}", shown_child.display()))(e))?;
            }
            FileKind::Dir => {
                let sub = list(ch, &child)?;
                let made = host_dest::make_dir(dir, name, &shown_child).map_err(host)?;
                get_tree(ch, &child, sub, made.fd.as_fd(), &shown_child)?;
                if made.created {
                    host_dest::set_dir_mode(&made, entry.mode, &shown_child).map_err(host)?;
                }
            }
            FileKind::Symlink => {
                let target = link_target(ch, &child)?;
                let target = Path::new(OsStr::from_bytes(&target));
                host_dest::make_symlink(dir, name, target, &shown_child).map_err(host)?;
            }
            FileKind::Other => {}
        }
    }
    Ok(())
}
