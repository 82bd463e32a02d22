//! Resolved OCI images, cached as `<root>/oci/<manifest hex>.json`, so resolving an image that
//! is already prepared reads this small file and stats its layer directories instead of
//! re-reading and re-hashing the manifest and config.
//!
//! A record is keyed by the manifest digest, a content address: it stays valid whatever later
//! happens to the layout it came from. It names layers by digest rather than by path so the
//! store can move and a damaged record cannot point a mount outside the store.

use crate::unpack::layer_dir;
use crate::{ImageConfig, ImageError, Rootfs};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    /// `sha256:<hex>` of the manifest.
    pub(crate) manifest: String,
    /// Hex digests of the compressed layers, top first, each once.
    pub(crate) layers: Vec<String>,
    pub(crate) config: ImageConfig,
}

fn record_path(store: &Path, hex: &str) -> PathBuf {
    store.join("oci").join(format!("{hex}.json"))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The prepared image with manifest `hex`, if its record exists and all its layers are still
/// unpacked; `None` sends the caller down the slow path, which repairs whatever is missing.
pub(crate) fn load(store: &Path, hex: &str) -> Option<Rootfs> {
    let bytes = std::fs::read(record_path(store, hex)).ok()?;
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    if record.manifest != format!("sha256:{hex}") || record.layers.is_empty() {
        return None;
    }
    let layers = store.join("layers");
    let mut lower_dirs = Vec::with_capacity(record.layers.len());
    for layer in &record.layers {
        if !is_sha256_hex(layer) {
            return None;
        }
        let dir = layer_dir(&layers, layer);
        if !dir.is_dir() {
            return None;
        }
        lower_dirs.push(dir);
    }
    Some(Rootfs {
        lower_dirs,
        host_binds: Vec::new(),
        config: record.config,
        id: record.manifest,
    })
}

/// Writes the record atomically (write a temporary file, rename it over).
pub(crate) fn save(store: &Path, hex: &str, record: &Record) -> Result<(), ImageError> {
    let dir = store.join("oci");
    std::fs::create_dir_all(&dir).map_err(ImageError::io("create", &dir))?;
    let path = record_path(store, hex);
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| ImageError::Io {
        action: "encode image record",
        path: path.clone(),
        source: e.into(),
    })?;
    crate::staging::write_file(&path, &bytes, "write image record")
}
