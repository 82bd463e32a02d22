//! Files of a sandbox through the engine's archive API (tar in and out).
//!
//! The engine resolves every path inside the container's root (`..` and symlinks, absolute
//! ones included, never lead out of it). A path that is itself a symlink is followed inside
//! the container, as the native backend does: its target is resolved by the engine's stat
//! (`HEAD /archive`, `linkTarget`) and that path is read instead. What comes back for `cp` is
//! unpacked on the host by `host_copy`, through the same host-side rules as the native backend
//! (`agentkernel_sys::host_dest`): created relative to opened directories, exclusively,
//! never through a link; only regular files' contents are handed to the files API.

use crate::host_copy;
use crate::images::{api_message, append_bytes, tar_stream};
use crate::{Client, DockerError, Result};
use agentkernel_sys::host_dest::HostDest;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};

/// The role that removes one path inside a container (images may have no `rm`).
pub const RM_ROLE: &str = "__container-rm";

const S_IFLNK: u32 = 0o120000;
/// Docker's FileMode bits (Go's os.FileMode) for a directory and a symlink.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;

impl Client {
    /// Under gVisor, /tmp is a tmpfs inside runsc's own kernel: the engine's archive API
    /// reads and writes the container's root beneath it, so a copy there would silently go
    /// elsewhere (measured: a file copied in is missing inside, one written inside is missing
    /// outside). Refused rather than lost.
    fn archive_reaches(&self, path: &Path) -> Result<()> {
        let normal = normalize(path);
        if self.flavor == crate::Flavor::Gvisor && normal.starts_with("/tmp") {
            return Err(DockerError::Files(format!(
                "{}: gvisor keeps /tmp inside its own kernel, out of the engine's reach: copy to or from another directory (e.g. /workspace), or use -B docker",
                path.display()
            )));
        }
        Ok(())
    }

    fn files_err(&self, path: &Path, e: bollard::errors::Error) -> DockerError {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => DockerError::FileNotFound(path.display().to_string()),
            // The archive API's answer for a read-only root or volume.
            bollard::errors::Error::DockerResponseServerError {
                status_code: 403,
                message,
            } => DockerError::FileForbidden {
                path: path.display().to_string(),
                reason: message,
            },
            // Docker answers 500 for a read-only root ("container rootfs is marked read-only"),
            // Podman 500 with the EROFS of its copier: the message is all there is to go by.
            bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message,
            } if message.to_ascii_lowercase().contains("read-only")
                || message.to_ascii_lowercase().contains("permission denied") =>
            {
                DockerError::FileForbidden {
                    path: path.display().to_string(),
                    reason: message,
                }
            }
            // A path the engine cannot use (a parent that is a file, say).
            bollard::errors::Error::DockerResponseServerError {
                status_code: 400,
                message,
            } => DockerError::BadFilePath {
                path: path.display().to_string(),
                reason: message,
            },
            other => DockerError::Files(format!(
                "{} in the sandbox: {}",
                path.display(),
                api_message(other)
            )),
        }
    }

    /// The path to read for `path`: its target when it is a symlink, resolved in the
    /// container's root by the engine. Also whether it is a directory.
    async fn resolve(
        &self,
        docker: &bollard::Docker,
        id: &str,
        path: &Path,
    ) -> Result<(PathBuf, bool)> {
        let mut current = path.to_path_buf();
        for _ in 0..40 {
            refuse_kernel_filesystem(path, &current)?;
            let options = bollard::query_parameters::ContainerArchiveInfoOptions {
                path: current.display().to_string(),
            };
            let info = docker
                .get_container_archive_info(id, Some(options))
                .await
                .map_err(|e| self.files_err(path, e))?;
            let mode = info.file_mode;
            let is_link = mode & GO_MODE_SYMLINK != 0 || mode & 0o170000 == S_IFLNK;
            if !is_link {
                return Ok((current, mode & GO_MODE_DIR != 0));
            }
            if info.link_target.is_empty() {
                return Err(DockerError::FileNotFound(path.display().to_string()));
            }
            let target = PathBuf::from(&info.link_target);
            current = if target.is_absolute() {
                target
            } else {
                current.parent().unwrap_or(Path::new("/")).join(target)
            };
        }
        Err(DockerError::Files(format!(
            "{}: too many levels of symbolic links",
            path.display()
        )))
    }

    /// The archive of `path` (after `resolve`), whole, in memory up to `limit` bytes.
    async fn download(
        &self,
        docker: &bollard::Docker,
        id: &str,
        path: &Path,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let options = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.display().to_string(),
        };
        let mut stream = docker.download_from_container(id, Some(options));
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.files_err(path, e))?;
            data.extend_from_slice(&chunk);
            if data.len() as u64 > limit {
                return Err(DockerError::FileTooLarge {
                    path: path.display().to_string(),
                    size: data.len() as u64,
                    limit,
                });
            }
        }
        Ok(data)
    }

    /// `cp NAME:SRC DST`: a file or tree out of the sandbox (into DST when it is an existing
    /// directory). A link named as SRC is followed inside the container; links inside a tree
    /// are copied as links. The archive is unpacked as it arrives, through the host-side rules
    /// the native backend uses (`host_copy`, `agentkernel_sys::host_dest`).
    pub fn copy_out(&self, id: &str, src: &Path, dst: &Path) -> Result<PathBuf> {
        self.archive_reaches(src)?;
        let docker = self.docker()?;
        let dest =
            HostDest::new(dst, src.file_name()).map_err(|e| DockerError::Files(e.to_string()))?;
        let shown = dest.path().to_path_buf();
        let unpacked = self.block(async {
            let (real, _) = self.resolve(docker, id, src).await?;
            let options = bollard::query_parameters::DownloadFromContainerOptions {
                path: real.display().to_string(),
            };
            let mut stream = docker.download_from_container(id, Some(options));
            let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
            let unpacking = tokio::task::spawn_blocking(move || {
                host_copy::unpack(&dest, host_copy::ChunkReader::new(rx))
            });
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        if tx.send(chunk).await.is_err() {
                            break; // the unpacking stopped: its error says why
                        }
                    }
                    Err(e) => {
                        failed = Some(self.files_err(src, e));
                        break;
                    }
                }
            }
            drop(tx);
            let unpacked = unpacking
                .await
                .map_err(|e| DockerError::Files(format!("unpacking the copy: {e}")))?;
            match failed {
                Some(e) => Err(e),
                None => Ok(unpacked),
            }
        })?;
        match unpacked {
            Ok(()) => Ok(shown),
            Err(host_copy::UnpackError::NotCopied { kind }) => Err(DockerError::NotRegular {
                path: src.display().to_string(),
                kind,
            }),
            Err(e) => Err(DockerError::Files(format!(
                "copying {} to {}: {e}",
                src.display(),
                shown.display()
            ))),
        }
    }

    /// `cp SRC NAME:DST`: a host file or tree into the sandbox (into DST when it is an
    /// existing directory there). Host symlinks are copied as links, never followed; host
    /// FIFOs, devices and sockets are skipped (refused when named), never opened.
    pub fn copy_in(&self, id: &str, src: &Path, dst: &Path) -> Result<PathBuf> {
        self.archive_reaches(dst)?;
        let docker = self.docker()?;
        host_copy::check_source(src).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => DockerError::Files(e.to_string()),
            _ => DockerError::Files(format!("{} on the host: {e}", src.display())),
        })?;
        let src_name = src.file_name().ok_or_else(|| {
            DockerError::Files(format!(
                "{}: give a source with a name, e.g. ./dir",
                src.display()
            ))
        })?;
        self.block(async {
            let into_dir = match self.resolve(docker, id, dst).await {
                Ok((_, is_dir)) => is_dir,
                Err(DockerError::FileNotFound(_)) => false,
                Err(e) => return Err(e),
            };
            let dst = if into_dir {
                dst.join(src_name)
            } else {
                dst.to_path_buf()
            };
            let (parent, name) = split(&dst)?;
            let src = src.to_path_buf();
            let entry = PathBuf::from(name);
            let (stream, writer) = tar_stream(move |builder| {
                builder.follow_symlinks(false);
                host_copy::pack(builder, &entry, &src)
            });
            let options = bollard::query_parameters::UploadToContainerOptions {
                path: parent.display().to_string(),
                ..Default::default()
            };
            docker
                .upload_to_container(id, Some(options), bollard::body_try_stream(stream))
                .await
                .map_err(|e| self.files_err(&dst, e))?;
            if let Ok(Err(e)) = writer.await {
                return Err(DockerError::Files(format!("reading the host files: {e}")));
            }
            Ok(dst)
        })
    }

    /// A whole file, refused above `limit` bytes.
    pub fn read_file(&self, id: &str, path: &Path, limit: u64) -> Result<Vec<u8>> {
        // `..` resolved here, as inside the root (never above `/`): the engine's archive API
        // refuses paths with `..` in them.
        let normal = normalize(path);
        let path = normal.as_path();
        self.archive_reaches(path)?;
        let docker = self.docker()?;
        let archive = self.block(async {
            let (real, is_dir) = self.resolve(docker, id, path).await?;
            if is_dir {
                return Err(DockerError::NotRegular {
                    path: path.display().to_string(),
                    kind: "a directory",
                });
            }
            // The tar framing adds headers and padding around the file.
            let framed = limit.saturating_add(64 * 1024);
            self.download(docker, id, &real, framed)
                .await
                .map_err(|e| match e {
                    // Past the framing too: the file itself is over the limit.
                    DockerError::FileTooLarge { path, size, .. } => {
                        DockerError::FileTooLarge { path, size, limit }
                    }
                    other => other,
                })
        })?;
        let mut tar = tar::Archive::new(archive.as_slice());
        let mut entries = tar
            .entries()
            .map_err(|e| DockerError::Files(format!("{}: {e}", path.display())))?;
        let Some(Ok(mut entry)) = entries.next() else {
            return Err(DockerError::FileNotFound(path.display().to_string()));
        };
        // The engine archives a FIFO or device as a header alone (it never opens one); only a
        // regular file's contents are handed out.
        let kind = entry.header().entry_type();
        if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
            return Err(DockerError::NotRegular {
                path: path.display().to_string(),
                kind: match kind {
                    tar::EntryType::Directory => "a directory",
                    tar::EntryType::Fifo => "a named pipe (FIFO)",
                    tar::EntryType::Char => "a character device",
                    tar::EntryType::Block => "a block device",
                    tar::EntryType::Symlink => "a symbolic link",
                    _ => "a special file",
                },
            });
        }
        if entry.size() > limit {
            return Err(DockerError::FileTooLarge {
                path: path.display().to_string(),
                size: entry.size(),
                limit,
            });
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data)
            .map_err(|e| DockerError::Files(format!("{}: {e}", path.display())))?;
        Ok(data)
    }

    /// Creates or replaces a file and its missing parent directories.
    pub fn write_file(&self, id: &str, path: &Path, data: &[u8]) -> Result<()> {
        // `..` resolved here, as inside the root (never above `/`): the engine's archive API
        // refuses paths with `..` in them.
        let normal = normalize(path);
        let path = normal.as_path();
        self.archive_reaches(path)?;
        refuse_kernel_filesystem(path, path)?;
        let docker = self.docker()?;
        // A directory is not replaced by a file (the native backend refuses it alike).
        let existing = self.block(async { self.resolve(docker, id, path).await });
        match existing {
            Ok((_, true)) => {
                return Err(DockerError::NotRegular {
                    path: path.display().to_string(),
                    kind: "a directory",
                });
            }
            Ok(_) | Err(DockerError::FileNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let relative = path
            .strip_prefix("/")
            .map_err(|_| DockerError::Files(format!("{}: give an absolute path", path.display())))?
            .to_path_buf();
        let mut archive = tar::Builder::new(Vec::new());
        let mut made = PathBuf::new();
        let components: Vec<_> = relative.components().collect();
        for c in &components[..components.len().saturating_sub(1)] {
            made.push(c);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_mtime(0);
            header.set_cksum();
            archive
                .append_data(&mut header, &made, std::io::empty())
                .map_err(|e| DockerError::Files(e.to_string()))?;
        }
        append_bytes(&mut archive, &relative.display().to_string(), data)
            .map_err(|e| DockerError::Files(e.to_string()))?;
        let bytes = archive
            .into_inner()
            .map_err(|e| DockerError::Files(e.to_string()))?;
        let options = bollard::query_parameters::UploadToContainerOptions {
            path: "/".to_string(),
            ..Default::default()
        };
        self.block(async {
            docker
                .upload_to_container(id, Some(options), bollard::body_full(bytes.into()))
                .await
                .map_err(|e| self.files_err(path, e))
        })
    }

    /// Removes a file, a symlink or an empty directory (by agentkernel's own executable in
    /// the container: images may have no `rm`).
    pub fn remove_file(&self, id: &str, path: &Path) -> Result<()> {
        // `..` resolved here, as inside the root (never above `/`): the engine's archive API
        // refuses paths with `..` in them.
        let normal = normalize(path);
        let path = normal.as_path();
        refuse_kernel_filesystem(path, path)?;
        let docker = self.docker()?;
        let options = bollard::exec::CreateExecOptions::<String> {
            cmd: Some(vec![
                crate::INIT_PATH.to_string(),
                RM_ROLE.to_string(),
                path.display().to_string(),
            ]),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let (code, message) = self.block(async {
            let exec = docker
                .create_exec(id, options)
                .await
                .map_err(|e| self.files_err(path, e))?;
            let mut text = Vec::new();
            if let bollard::exec::StartExecResults::Attached { mut output, .. } = docker
                .start_exec(&exec.id, None)
                .await
                .map_err(|e| self.files_err(path, e))?
            {
                while let Some(Ok(chunk)) = output.next().await {
                    text.extend_from_slice(&chunk.into_bytes());
                }
            }
            let info = docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| self.files_err(path, e))?;
            Ok::<_, DockerError>((
                info.exit_code.unwrap_or(1),
                String::from_utf8_lossy(&text).trim().to_string(),
            ))
        })?;
        match code {
            0 => Ok(()),
            RM_MISSING => Err(DockerError::FileNotFound(path.display().to_string())),
            RM_NOT_EMPTY => Err(DockerError::DirectoryNotEmpty(path.display().to_string())),
            RM_FORBIDDEN => Err(DockerError::FileForbidden {
                path: path.display().to_string(),
                reason: message,
            }),
            _ => Err(DockerError::Files(message)),
        }
    }
}

/// `rm_main`'s exit code for a path that does not exist.
const RM_MISSING: i64 = 2;
/// `rm_main`'s exit code for a directory that is not empty.
const RM_NOT_EMPTY: i64 = 3;
/// `rm_main`'s exit code for a removal the sandbox's permissions or read-only root refuse.
const RM_FORBIDDEN: i64 = 4;

/// `rm` inside a container: a file, a symlink or an empty directory. Exit 0 done, 2 missing,
/// 3 a directory that is not empty, 4 not permitted (read-only, permission), 1 anything else
/// (said on stderr).
pub fn rm_main(mut args: impl Iterator<Item = std::ffi::OsString>) -> i32 {
    let Some(path) = args.next() else {
        eprintln!("usage: {RM_ROLE} PATH");
        return 1;
    };
    let path = PathBuf::from(path);
    let removed = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(&path),
        Ok(_) => std::fs::remove_file(&path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 2,
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            eprintln!(
                "{} in the sandbox is a directory that is not empty: remove its contents first",
                path.display()
            );
            3
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            ) =>
        {
            eprintln!("{e}");
            4
        }
        Err(e) => {
            eprintln!("{} in the sandbox: {e}", path.display());
            1
        }
    }
}

/// `path` made absolute with `..` and `.` resolved lexically (the engine resolves it the same
/// way inside the container's root: `..` never leads above `/`).
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::from("/");
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::Normal(p) => normal.push(p),
            _ => {}
        }
    }
    normal
}

/// Refuses `current` (reached from `asked`) when it is under /proc or /sys, the kernel
/// filesystems of every container: the native backend refuses them by filesystem type, the
/// engine's archive API gives no type, so they are refused by place.
fn refuse_kernel_filesystem(asked: &Path, current: &Path) -> Result<()> {
    let normal = normalize(current);
    for (top, fs) in [("/proc", "procfs"), ("/sys", "sysfs")] {
        if normal.starts_with(top) {
            return Err(DockerError::KernelFilesystem {
                path: asked.display().to_string(),
                fs,
            });
        }
    }
    Ok(())
}

fn split(path: &Path) -> Result<(PathBuf, String)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            Ok((parent.to_path_buf(), name.to_string_lossy().into_owned()))
        }
        _ => Err(DockerError::Files(format!(
            "{}: give the path of a file or directory, not the root",
            path.display()
        ))),
    }
}
