//! OCI image layouts (`oci-layout` + `index.json` + `blobs/sha256/…`): choosing the image by
//! tag and platform, verifying its manifest and config, and unpacking its layers.
//!
//! The fast path reads `index.json` (and a nested image index, if the entry is one) to learn
//! the manifest digest, then loads the record of that manifest. Only when there is none are
//! the manifest, config and layers read, all verified against their digests.
//!
//! Every file of the layout is opened beneath it, never through a symlink, and only if it is a
//! regular file (see [`blob::LayoutDir`]): a layout may have been written by a sandbox.

use crate::blob::{self, LayoutDir};
use crate::limits::{Budget, UnpackLimits};
use crate::record::{self, Record};
use crate::unpack;
use crate::{ImageConfig, ImageError, Rootfs};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;
use std::io::Read;
use std::path::Path;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MAX_INDEX: u64 = 16 << 20;

pub(crate) fn resolve(
    store: &Path,
    layout_path: &Path,
    tag: Option<&str>,
    limits: UnpackLimits,
) -> Result<Rootfs, ImageError> {
    let layout = LayoutDir::open(layout_path)?;
    let index = read_index(&layout)?;
    let entry = select(layout_path, &index, tag)?;
    let manifest = platform_manifest(&layout, entry)?;
    let hex = blob::sha256_hex(layout_path, &manifest)?;
    if let Some(rootfs) = record::load(store, hex) {
        return Ok(rootfs);
    }
    prepare(store, &layout, &manifest, limits)
}

fn not_layout(layout: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::NotALayout {
        path: layout.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_index(layout: &LayoutDir) -> Result<ImageIndex, ImageError> {
    let path = layout.path();
    let (file, _) = layout.open_file("index.json").map_err(|e| {
        layout.open_error("index.json", e, || not_layout(path, "it has no index.json"))
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_INDEX + 1)
        .read_to_end(&mut bytes)
        .map_err(ImageError::io("read", path.join("index.json")))?;
    if bytes.len() as u64 > MAX_INDEX {
        return Err(not_layout(
            path,
            format!("its index.json is larger than {} MB", MAX_INDEX >> 20),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| not_layout(path, format!("its index.json is not valid: {e}")))
}

fn tags_of<'a>(entries: impl Iterator<Item = &'a Descriptor>) -> Vec<String> {
    let mut tags: Vec<String> = entries.filter_map(ref_name).map(str::to_string).collect();
    tags.sort();
    tags.dedup();
    tags
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()?
        .get(REF_NAME)
        .map(String::as_str)
}

/// The `index.json` entry for `tag`, or the only entry when no tag is given. Several entries
/// that differ only by platform are told apart by the host's platform.
fn select<'a>(
    layout: &Path,
    index: &'a ImageIndex,
    tag: Option<&str>,
) -> Result<&'a Descriptor, ImageError> {
    let all = index.manifests();
    let candidates: Vec<&Descriptor> = match tag {
        Some(t) => all.iter().filter(|d| ref_name(d) == Some(t)).collect(),
        None => all.iter().collect(),
    };
    match candidates.as_slice() {
        [] => match tag {
            Some(t) => Err(ImageError::TagNotFound {
                layout: layout.to_path_buf(),
                tag: t.to_string(),
                available: tags_of(all.iter()),
            }),
            None => Err(not_layout(layout, "its index.json lists no images")),
        },
        [one] => Ok(one),
        many => {
            if many.iter().all(|d| d.platform().is_some())
                && let Some(d) = many.iter().find(|d| matches_host(d))
            {
                return Ok(d);
            }
            Err(ImageError::AmbiguousImage {
                layout: layout.to_path_buf(),
                count: many.len(),
                available: tags_of(many.iter().copied()),
            })
        }
    }
}

/// The GOARCH name of the machine we run on, as image platforms spell it.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Whether an index entry is for linux on this machine's architecture.
pub(crate) fn matches_host(desc: &Descriptor) -> bool {
    desc.platform().as_ref().is_some_and(|p| {
        p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
    })
}

enum Kind {
    Index,
    Manifest,
    Unknown,
}

fn kind_of(desc: &Descriptor) -> Kind {
    match desc.media_type().as_ref() {
        "application/vnd.oci.image.index.v1+json"
        | "application/vnd.docker.distribution.manifest.list.v2+json" => Kind::Index,
        "application/vnd.oci.image.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v2+json" => Kind::Manifest,
        _ => Kind::Unknown,
    }
}

/// Follows image indexes down to the manifest for this machine's platform.
fn platform_manifest(layout: &LayoutDir, entry: &Descriptor) -> Result<Descriptor, ImageError> {
    let mut desc = entry.clone();
    // Indexes may nest; a few levels is all real images use.
    for _ in 0..4 {
        match kind_of(&desc) {
            Kind::Manifest => return Ok(desc),
            Kind::Index | Kind::Unknown => {
                let bytes = blob::read_verified(layout, &desc)?;
                let probe: serde_json::Value =
                    blob::parse_json(layout.path(), &desc, &bytes, "JSON document")?;
                if probe.get("manifests").is_none() {
                    if probe.get("layers").is_some() {
                        return Ok(desc);
                    }
                    return Err(ImageError::BadBlob {
                        layout: layout.path().to_path_buf(),
                        digest: desc.digest().to_string(),
                        reason: format!(
                            "it is neither an image manifest nor an image index (media type {})",
                            desc.media_type()
                        ),
                    });
                }
                let index: ImageIndex =
                    blob::parse_json(layout.path(), &desc, &bytes, "image index")?;
                let Some(found) = index.manifests().iter().find(|d| matches_host(d)) else {
                    let mut available: Vec<String> = index
                        .manifests()
                        .iter()
                        .filter_map(|d| d.platform().as_ref())
                        .map(|p| format!("{}/{}", p.os(), p.architecture()))
                        .collect();
                    available.dedup();
                    return Err(ImageError::NoPlatform {
                        layout: layout.path().to_path_buf(),
                        digest: desc.digest().to_string(),
                        arch: host_arch().to_string(),
                        available,
                    });
                };
                desc = found.clone();
            }
        }
    }
    Err(ImageError::BadBlob {
        layout: layout.path().to_path_buf(),
        digest: desc.digest().to_string(),
        reason: "image indexes are nested too deeply".to_string(),
    })
}

/// The part of an OCI image config we use. Parsed leniently: `null` and missing fields are
/// common in real images.
#[derive(Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
}

impl From<ConfigBlob> for ImageConfig {
    fn from(blob: ConfigBlob) -> Self {
        let Some(c) = blob.config else {
            return ImageConfig::default();
        };
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            env: c.env.unwrap_or_default(),
            workdir: non_empty(c.working_dir),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            user: non_empty(c.user),
        }
    }
}

/// The slow path: verify and read the manifest and config, unpack missing layers, record the
/// result.
pub(crate) fn prepare(
    store: &Path,
    layout_dir: &LayoutDir,
    manifest_desc: &Descriptor,
    limits: UnpackLimits,
) -> Result<Rootfs, ImageError> {
    let layout = layout_dir.path();
    if let Err(e) = layout_dir.open_file("oci-layout") {
        return Err(layout_dir.open_error("oci-layout", e, || {
            not_layout(layout, "it has no oci-layout file")
        }));
    }
    let hex = blob::sha256_hex(layout, manifest_desc)?;
    let bytes = blob::read_verified(layout_dir, manifest_desc)?;
    let manifest: ImageManifest =
        blob::parse_json(layout, manifest_desc, &bytes, "image manifest")?;

    let config_desc = manifest.config();
    let config_type = config_desc.media_type().as_ref();
    if !matches!(
        config_type,
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    ) {
        return Err(ImageError::BadBlob {
            layout: layout.to_path_buf(),
            digest: manifest_desc.digest().to_string(),
            reason: format!(
                "it is not a container image (its config has media type {config_type})"
            ),
        });
    }
    let config_bytes = blob::read_verified(layout_dir, config_desc)?;
    let config: ConfigBlob = blob::parse_json(layout, config_desc, &config_bytes, "image config")?;

    if manifest.layers().is_empty() {
        return Err(ImageError::BadBlob {
            layout: layout.to_path_buf(),
            digest: manifest_desc.digest().to_string(),
            reason: "the image has no layers, so there is no root filesystem to run".to_string(),
        });
    }
    let layers_dir = store.join("layers");
    let mut top_first: Vec<String> = Vec::with_capacity(manifest.layers().len());
    let mut budget = Budget::new(limits);
    for desc in manifest.layers() {
        unpack::ensure_layer(&layers_dir, layout_dir, desc, &mut budget)?;
        top_first.insert(0, blob::sha256_hex(layout, desc)?.to_string());
    }
    // overlayfs refuses a directory twice; the topmost copy of a repeated layer already
    // decides everything the lower copies would.
    let mut seen = std::collections::HashSet::new();
    top_first.retain(|h| seen.insert(h.clone()));

    let record = Record {
        manifest: format!("sha256:{hex}"),
        layers: top_first,
        config: config.into(),
    };
    record::save(store, hex, &record)?;
    Ok(Rootfs {
        lower_dirs: record
            .layers
            .iter()
            .map(|h| unpack::layer_dir(&layers_dir, h))
            .collect(),
        host_binds: Vec::new(),
        config: record.config,
        id: record.manifest,
    })
}

/// The blobs of the image a layout holds for `tag`, for engines that load images themselves
/// (the container backends): its config (verified) and its layers, bottom first, opened as
/// regular files beneath the layout.
#[derive(Debug)]
pub struct LayoutImage {
    pub config: ImageConfig,
    /// Hex sha256 of the config blob: the image's id in Docker's and Podman's stores.
    pub config_hex: String,
    /// The config blob's bytes, verified against its descriptor.
    pub config_bytes: Vec<u8>,
    pub layers: Vec<LayoutBlob>,
}

/// A layer blob of a layout, opened: send exactly `size` bytes of it (the descriptor's size),
/// so a file that grows or shrinks under the reader cannot change what is sent unnoticed.
#[derive(Debug)]
pub struct LayoutBlob {
    pub file: std::fs::File,
    pub size: u64,
    /// `sha256:<hex>`, for messages.
    pub digest: String,
}

/// Chooses the image of `tag` (as `resolve` does), verifies its manifest and config, and opens
/// its layers; the layers are verified by the engine that loads them (against the config's
/// diff ids).
pub fn image_blobs(layout_path: &Path, tag: Option<&str>) -> Result<LayoutImage, ImageError> {
    let layout = LayoutDir::open(layout_path)?;
    let index = read_index(&layout)?;
    let entry = select(layout_path, &index, tag)?;
    let manifest_desc = platform_manifest(&layout, entry)?;
    let bytes = blob::read_verified(&layout, &manifest_desc)?;
    let manifest: ImageManifest =
        blob::parse_json(layout_path, &manifest_desc, &bytes, "image manifest")?;
    let config_desc = manifest.config();
    let config_bytes = blob::read_verified(&layout, config_desc)?;
    let config: ConfigBlob =
        blob::parse_json(layout_path, config_desc, &config_bytes, "image config")?;
    let config_hex = blob::sha256_hex(layout_path, config_desc)?.to_string();
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for desc in manifest.layers() {
        layers.push(LayoutBlob {
            file: blob::open_blob(&layout, desc)?,
            size: desc.size(),
            digest: desc.digest().to_string(),
        });
    }
    Ok(LayoutImage {
        config: config.into(),
        config_hex,
        config_bytes,
        layers,
    })
}
