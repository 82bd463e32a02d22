//! `sandbox clean --all`: everything agentkernel keeps — sandboxes, sessions, snapshots,
//! template caches, captured layers and pulled images — removed (or, with `--dry-run`, listed),
//! with the disk space that frees.

use crate::Engine;
use crate::error::Result;
use crate::snapshot::{SNAPSHOT, SnapshotRecord};
use std::path::Path;

/// What `clean_all` removed (or would remove), and the bytes that freed.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub removed: Vec<String>,
    pub bytes: u64,
}

impl Engine {
    /// Removes every sandbox (stopped first), session, snapshot, captured layer and pulled
    /// image. With `dry_run`, only says what it would remove.
    pub fn clean_all(&self, dry_run: bool) -> Result<Cleaned> {
        let mut cleaned = Cleaned::default();
        for session in self.session_list()? {
            if !dry_run {
                self.session_delete(&session.name)?;
            }
            cleaned.removed.push(format!("session {}", session.name));
        }
        for sandbox in self.list()? {
            let bytes = disk_usage(&self.sandbox_dir(&sandbox.name));
            if !dry_run {
                match self.remove(&sandbox.name) {
                    Ok(()) | Err(crate::EngineError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            cleaned.bytes += bytes;
            cleaned.removed.push(format!("sandbox {}", sandbox.name));
        }
        let snapshots = self.store()?.list_objects::<SnapshotRecord>(SNAPSHOT)?;
        for (name, _, rec) in snapshots {
            if !dry_run {
                self.store()?.delete_object(SNAPSHOT, &name)?;
            }
            cleaned.bytes += rec.bytes;
            cleaned.removed.push(format!("snapshot {name}"));
        }
        if dry_run {
            for image in self.list_images(false) {
                cleaned.bytes += image.size_bytes;
                cleaned.removed.push(format!("image {}", image.reference));
            }
            cleaned.removed.extend(self.collect_all_layers(true));
        } else {
            cleaned.removed.extend(self.collect_all_layers(false));
            let pruned = self.prune_images()?;
            cleaned.bytes += pruned.bytes_freed;
            cleaned
                .removed
                .extend(pruned.references.iter().map(|r| format!("image {r}")));
        }
        Ok(cleaned)
    }

    /// The unnamed layers of every usable backend, removed unless `dry_run`.
    pub(crate) fn collect_all_layers(&self, dry_run: bool) -> Vec<String> {
        let mut removed = Vec::new();
        for kind in crate::backend::available() {
            if let Ok(b) = crate::backend::backend_for(kind, &self.home)
                && b.readiness().usable
                && let Ok(layers) = self.collect_layers(b.as_ref(), dry_run)
            {
                removed.extend(layers);
            }
        }
        removed
    }
}

/// What a directory tree takes on disk (allocated blocks: a sparse disk image counts what was
/// written), not following links.
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}
