//! Captured layers of native sandboxes: `<home>/layers/<id>/`, each a copy of what one sandbox
//! wrote (its overlay upper directory, whiteouts included), stacked read-only by the sandboxes
//! that start from it (`RootfsPlan::lower_dirs`, above the image's layers) under their own
//! writable layer. One layer serves any number of sandboxes.
//!
//! A capture is built under `.<id>.partial` and renamed into place when complete, so a layer
//! that exists is whole; a `.partial` left by a crash is removed by `gc` (`list` names it).
//!
//! Where the writable layer is found: a running sandbox's init keeps its directory open
//! (`enter_rootfs`), and the host reaches it through `/proc/<init>/fd/…` (no path in the host's
//! tree leads there); a stopped sandbox's disk image is mounted read-only as a detached mount.

use crate::cgroup::Cgroup;
use crate::treecopy::{self, Copier};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory of the layers under the state directory.
pub const LAYERS: &str = "layers";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot snapshot the sandbox: {0}")]
    Copy(#[from] treecopy::CopyError),
    #[error(transparent)]
    Freeze(#[from] crate::cgroup::CgroupError),
    #[error("cannot read the sandbox's disk: {0}")]
    Disk(crate::rootfs::SetupError),
    #[error(
        "cannot snapshot the sandbox: its init (pid {pid}) holds no writable layer agentkernel can reach (was it started by an older agentkernel? restart it, then try again)"
    )]
    NoLayer { pid: u32 },
    #[error("the sandbox stopped while it was being captured; nothing was captured: try again")]
    Gone,
    #[error(
        "layer {0} of this sandbox is missing from {1}: the snapshot it came from was removed by hand; remove the sandbox, or restore it from another snapshot"
    )]
    Missing(String, PathBuf),
    #[error("layers {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<crate::rootfs::SetupError> for LayerError {
    fn from(e: crate::rootfs::SetupError) -> LayerError {
        LayerError::Disk(e)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The writable layer of a sandbox to capture.
pub enum Source<'a> {
    /// A running sandbox: its init, and the instance whose cgroup freezes it.
    Running {
        pid: u32,
        start_time: u64,
        instance: &'a str,
    },
    /// A stopped sandbox's directory (its disk image, if it was ever started).
    Stopped { dir: &'a Path },
}

/// What a capture made.
pub struct Capture {
    pub bytes: u64,
    pub frozen: Duration,
}

/// The layers of one state directory.
pub struct LayerStore {
    home: PathBuf,
    dir: PathBuf,
}

impl LayerStore {
    pub fn new(home: &Path) -> LayerStore {
        LayerStore {
            home: home.to_path_buf(),
            dir: home.join(LAYERS),
        }
    }

    /// The directory of layer `id`, which must exist.
    pub fn path(&self, id: &str) -> Result<PathBuf, LayerError> {
        let path = self.dir.join(id);
        if path.is_dir() {
            Ok(path)
        } else {
            Err(LayerError::Missing(id.to_string(), self.dir.clone()))
        }
    }

    /// Every layer, and every `.partial` a crashed capture left (by the name `remove` takes).
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter_map(|n| match n.strip_prefix('.') {
                Some(partial) => partial.strip_suffix(".partial").map(str::to_string),
                None => Some(n),
            })
            .collect()
    }

    /// Removes layer `id` (or its `.partial`); gone already is fine.
    pub fn remove(&self, id: &str) -> Result<(), LayerError> {
        let dir = self.open_dir()?;
        for name in [id.to_string(), format!(".{id}.partial")] {
            let c = std::ffi::CString::new(name.clone())
                .map_err(|e| io(&self.dir)(std::io::Error::other(e)))?;
            treecopy::remove_entry(dir.as_fd(), &c, Path::new(&name))?;
        }
        Ok(())
    }

    fn open_dir(&self) -> Result<OwnedFd, LayerError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        rustix::fs::open(
            &self.dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(&self.dir)(e.into()))
    }

    /// Captures `source`'s writable layer as layer `id`. A running sandbox is copied while it
    /// runs, then frozen while what changed meanwhile is copied again, then thawed. On error
    /// nothing of the layer is left.
    pub fn capture(&self, id: &str, source: Source<'_>) -> Result<Capture, LayerError> {
        let dir = self.open_dir()?;
        let partial = format!(".{id}.partial");
        let partial_c = std::ffi::CString::new(partial.clone())
            .map_err(|e| io(&self.dir)(std::io::Error::other(e)))?;
        rustix::fs::mkdirat(&dir, &partial_c, Mode::from_raw_mode(0o755))
            .map_err(|e| io(&self.dir.join(&partial))(e.into()))?;
        let made = (|| {
            let dst = rustix::fs::openat(
                &dir,
                &partial_c,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io(&self.dir.join(&partial))(e.into()))?;
            let frozen = copy_from(&self.home, source, Copier::new(dst))?;
            rustix::fs::renameat(&dir, &partial_c, &dir, id)
                .map_err(|e| io(&self.dir.join(id))(e.into()))?;
            Ok(frozen)
        })();
        match made {
            Ok(frozen) => {
                let layer = rustix::fs::openat(
                    &dir,
                    id,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io(&self.dir.join(id))(e.into()))?;
                Ok(Capture {
                    bytes: treecopy::disk_usage(layer.as_fd()),
                    frozen,
                })
            }
            Err(e) => {
                let _ = treecopy::remove_entry(dir.as_fd(), &partial_c, Path::new(&partial));
                Err(e)
            }
        }
    }
}

/// Held by the process that freezes a sandbox for as long as it may be frozen: a sandbox found
/// frozen with nobody holding it was left so by a capture that died (`thaw_abandoned`).
struct FreezeLock {
    path: PathBuf,
    _file: std::fs::File,
}

fn freeze_lock_path(home: &Path, instance: &str) -> PathBuf {
    home.join(LAYERS).join(format!(".freeze-{instance}"))
}

impl FreezeLock {
    fn take(home: &Path, instance: &str) -> Result<FreezeLock, LayerError> {
        let path = freeze_lock_path(home, instance);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(&path)(e.into()))?;
        Ok(FreezeLock { path, _file: file })
    }
}

impl Drop for FreezeLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Thaws sandbox `instance` if a capture froze it and died before thawing it (no process
/// holds its freeze lock). Cheap when it is not frozen: one read of `cgroup.freeze`.
pub fn thaw_abandoned(home: &Path, instance: &str) -> Result<(), crate::cgroup::CgroupError> {
    let group = Cgroup::open(instance);
    if !group.is_frozen() {
        return Ok(());
    }
    let path = freeze_lock_path(home, instance);
    if let Ok(file) = std::fs::File::open(&path)
        && rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
    {
        // A capture in progress: it thaws the sandbox itself.
        return Ok(());
    }
    group.thaw()
}

/// Removes the freeze locks of captures that died (none holds them); returns their names.
pub fn remove_abandoned_locks(home: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(home.join(LAYERS)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(".freeze-") {
            continue;
        }
        if let Ok(file) = std::fs::File::open(entry.path())
            && rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_ok()
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(format!("freeze lock {name}"));
        }
    }
    removed
}

/// Copies the source's upper directory with `copier`; returns how long processes were frozen.
fn copy_from(home: &Path, source: Source<'_>, mut copier: Copier) -> Result<Duration, LayerError> {
    match source {
        Source::Stopped { dir } => {
            let legacy = dir.join("upper");
            let image = dir.join(crate::disk::IMAGE);
            if legacy.is_dir() {
                let upper = open_dir_at(rustix::fs::CWD, &legacy)?;
                copier.copy(upper.as_fd())?;
            } else if image.is_file() {
                let mount = crate::disk::mount_detached(&image)?;
                let upper = open_dir_at(mount.as_fd(), Path::new("upper"))?;
                copier.copy(upper.as_fd())?;
            }
            // Never started: it wrote nothing, and the layer is empty.
            Ok(Duration::ZERO)
        }
        Source::Running {
            pid,
            start_time,
            instance,
        } => {
            let upper = running_upper(pid, start_time)?;
            copier.copy(upper.as_fd())?;
            let group = Cgroup::open(instance);
            let _held = FreezeLock::take(home, instance)?;
            let began = Instant::now();
            group.freeze()?;
            let refreshed = copier.refresh(upper.as_fd());
            let thawed = group.thaw();
            let frozen = began.elapsed();
            refreshed?;
            thawed?;
            if !agentkernel_sys::proc::is_alive(pid, start_time) {
                return Err(LayerError::Gone);
            }
            Ok(frozen)
        }
    }
}

fn open_dir_at(dir: impl AsFd, path: &Path) -> Result<OwnedFd, LayerError> {
    rustix::fs::openat(
        dir,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(path)(e.into()))
}

/// The upper directory of a running sandbox, through the descriptor its init keeps of the
/// directory holding `upper` and `work` (the init holds no other directory open).
fn running_upper(pid: u32, start_time: u64) -> Result<OwnedFd, LayerError> {
    if !agentkernel_sys::proc::is_alive(pid, start_time) {
        return Err(LayerError::Gone);
    }
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = std::fs::read_dir(&fds).map_err(io(&fds))?;
    for entry in entries.flatten() {
        let Ok(dir) = rustix::fs::open(
            entry.path().as_path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let has = |name: &str| {
            rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        };
        if has("upper") && has("work") {
            let upper = open_dir_at(dir.as_fd(), Path::new("upper"))?;
            // The pid was checked before its descriptors were read: still the same init?
            if !agentkernel_sys::proc::is_alive(pid, start_time) {
                return Err(LayerError::Gone);
            }
            return Ok(upper);
        }
    }
    Err(LayerError::NoLayer { pid })
}
