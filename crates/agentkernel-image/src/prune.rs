//! Removing images: `images rm` forgets a reference; `images prune` forgets every reference no
//! sandbox uses, then sweeps what nothing kept reaches (blobs, image records, unpacked layers).
//!
//! What is kept: the images of the references left, and the prepared images (records) that
//! the caller says are in use, e.g. a sandbox's `oci:` layout image. A `run` in progress that
//! uses an image no sandbox is recorded with can lose its layers under it: prune between runs.

use crate::registry;
use crate::{ImageError, Rootfs, record};
use oci_spec::image::ImageManifest;
use std::collections::HashSet;
use std::path::Path;

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// References forgotten (canonical names).
    pub references: Vec<String>,
    pub bytes_freed: u64,
}

/// Forgets `reference`; its content goes at the next prune. Returns whether it was stored.
pub(crate) fn remove(store: &Path, canonical: &str) -> Result<bool, ImageError> {
    let path = registry::ref_path(store, canonical);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ImageError::io("remove", &path)(e)),
    }
}

/// Forgets every reference not in `keep_references` (canonical names), then removes records,
/// layers and blobs reached neither from the references left nor from `keep_rootfs`.
pub(crate) fn prune(
    store: &Path,
    keep_references: &HashSet<String>,
    keep_rootfs: &[Rootfs],
) -> Result<Pruned, ImageError> {
    let mut pruned = Pruned::default();
    let mut live_manifests: HashSet<String> = keep_rootfs
        .iter()
        .filter_map(|r| r.id.strip_prefix("sha256:").map(str::to_string))
        .collect();
    for (path, entry) in registry::ref_entries(store) {
        if keep_references.contains(&entry.reference) {
            if let Some(hex) = entry.manifest.strip_prefix("sha256:") {
                live_manifests.insert(hex.to_string());
            }
        } else {
            pruned.bytes_freed += size_of(&path);
            std::fs::remove_file(&path).map_err(ImageError::io("remove", &path))?;
            pruned.references.push(entry.reference);
        }
    }
    // Everything a live manifest reaches: its record's layers, and its blobs.
    let mut live_layers: HashSet<String> = HashSet::new();
    let mut live_blobs: HashSet<String> = HashSet::new();
    for hex in &live_manifests {
        live_blobs.insert(hex.clone());
        if let Some(rootfs) = record::load(store, hex) {
            for dir in &rootfs.lower_dirs {
                if let Some(layer) = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("sha256-"))
                {
                    live_layers.insert(layer.to_string());
                }
            }
        }
        if let Ok(bytes) = std::fs::read(crate::blob::blob_path(store, hex))
            && let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes)
        {
            for desc in std::iter::once(manifest.config()).chain(manifest.layers()) {
                if let Some(h) = desc.as_digest_sha256() {
                    live_blobs.insert(h.to_string());
                }
            }
        }
    }
    sweep(
        &store.join("oci"),
        |name| {
            name.strip_suffix(".json")
                .is_some_and(|h| live_manifests.contains(h))
        },
        &mut pruned,
    )?;
    sweep(
        &store.join("layers"),
        |name| {
            name.strip_prefix("sha256-")
                .is_some_and(|h| live_layers.contains(h))
        },
        &mut pruned,
    )?;
    sweep(
        &store.join("blobs/sha256"),
        |name| live_blobs.contains(name),
        &mut pruned,
    )?;
    Ok(pruned)
}

/// Removes the entries of `dir` that `keep` refuses, except temporary ones (another process's
/// work in progress, cleaned by its own code).
fn sweep(dir: &Path, keep: impl Fn(&str) -> bool, pruned: &mut Pruned) -> Result<(), ImageError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || keep(&name) {
            continue;
        }
        let path = entry.path();
        pruned.bytes_freed += size_of(&path);
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(ImageError::io("remove", &path))?;
    }
    Ok(())
}

/// Bytes on disk under `path` (a file or a tree; links are not followed).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}
