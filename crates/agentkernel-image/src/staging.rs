//! Directories built next to their final place and renamed in when complete, so a reader never
//! sees half of one. Each staging directory holds an exclusive `flock` while it is being built:
//! one left behind by a crashed process has lost its lock and is removed by the next builder.

use rustix::fs::{FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const PREFIX: &str = ".tmp-";

/// Writes a small file whole or not at all: a temporary sibling (`.tmp-…`, unique to this
/// process and call) renamed over `path`. `action` names the write in the error.
pub(crate) fn write_file(
    path: &Path,
    bytes: &[u8],
    action: &'static str,
) -> Result<(), crate::ImageError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("{PREFIX}{name}-{}-{n}", std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(crate::ImageError::io(action, path))
}

/// A staging directory that is created, locked and opened between `create_dir` and `flock`
/// could be taken for an abandoned one; abandoned ones are only removed once this old.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// A directory under construction; removed on drop unless it was installed.
pub(crate) struct Staging {
    path: PathBuf,
    dir: OwnedFd,
    done: bool,
}

impl Staging {
    /// Creates `<parent>/.tmp-<label>-…` (mode 0700 until installed) after clearing abandoned
    /// siblings.
    pub(crate) fn new(parent: &Path, label: &str) -> std::io::Result<Staging> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        clean_abandoned(parent);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!(
            "{PREFIX}{label}-{}-{nanos}-{n}",
            std::process::id()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let opened = open_dir(&path).and_then(|dir| {
            rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive)?;
            Ok(dir)
        });
        match opened {
            Ok(dir) => Ok(Staging {
                path,
                dir,
                done: false,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(e.into())
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Flushes, opens up (0755) and renames the directory to `target`. Returns false when
    /// another builder installed `target` first; ours is then discarded.
    pub(crate) fn install(mut self, target: &Path) -> std::io::Result<bool> {
        self.finish()?;
        match rustix::fs::rename(&self.path, target) {
            Ok(()) => {
                self.done = true;
                Ok(true)
            }
            Err(Errno::EXIST | Errno::NOTEMPTY) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Installs the directory at `target`, atomically swapping out any directory already there;
    /// the old one is renamed to `retired` (not deleted: running sandboxes may still use it).
    pub(crate) fn replace(mut self, target: &Path, retired: &Path) -> std::io::Result<()> {
        self.finish()?;
        match rustix::fs::rename(&self.path, target) {
            Ok(()) => {
                self.done = true;
                return Ok(());
            }
            Err(Errno::EXIST | Errno::NOTEMPTY) => {}
            Err(e) => return Err(e.into()),
        }
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, &self.path, cwd, target, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // Our path now names the old directory.
                self.done = true;
                rustix::fs::rename(&self.path, retired)?;
            }
            // No RENAME_EXCHANGE on this filesystem: two renames, briefly leaving no target
            // (a concurrent reader then rebuilds, which is merely wasted work).
            Err(Errno::INVAL) => {
                rustix::fs::rename(target, retired)?;
                rustix::fs::rename(&self.path, target)?;
                self.done = true;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn finish(&self) -> std::io::Result<()> {
        rustix::fs::fchmod(&self.dir, Mode::from_raw_mode(0o755))?;
        // The rename must not become durable before the content: a power loss would otherwise
        // leave a complete-looking directory with truncated files.
        rustix::fs::syncfs(&self.dir)?;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Removes staging directories of builders that died: old enough and not locked.
fn clean_abandoned(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if !old {
            continue;
        }
        let Ok(dir) = open_dir(&path) else { continue };
        if rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive).is_ok() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_staging_is_removed_and_installed_one_stays() {
        let parent = tempfile::tempdir().expect("tempdir");
        let s = Staging::new(parent.path(), "x").expect("staging");
        let p = s.path().to_path_buf();
        assert!(p.is_dir());
        drop(s);
        assert!(!p.exists());

        let s = Staging::new(parent.path(), "y").expect("staging");
        std::fs::write(s.path().join("f"), b"1").expect("write");
        let target = parent.path().join("y");
        assert!(s.install(&target).expect("install"));
        assert!(target.join("f").is_file());

        // A second builder losing the race leaves the first one's result alone.
        let s = Staging::new(parent.path(), "y").expect("staging");
        let p = s.path().to_path_buf();
        assert!(!s.install(&target).expect("install"));
        assert!(!p.exists());
        assert!(target.join("f").is_file());
    }

    #[test]
    fn abandoned_staging_is_cleaned_but_locked_one_is_not() {
        let parent = tempfile::tempdir().expect("tempdir");
        let abandoned = parent.path().join(".tmp-old-1-2-3");
        std::fs::create_dir(&abandoned).expect("mkdir");
        let live = Staging::new(parent.path(), "live").expect("staging");
        let old = SystemTime::now() - Duration::from_secs(3600);
        for p in [abandoned.as_path(), live.path()] {
            std::fs::File::open(p)
                .and_then(|f| f.set_modified(old))
                .expect("set mtime");
        }
        let _next = Staging::new(parent.path(), "next").expect("staging");
        assert!(
            !abandoned.exists(),
            "abandoned staging dir should be cleaned"
        );
        assert!(live.path().exists(), "a locked staging dir must survive");
    }
}
