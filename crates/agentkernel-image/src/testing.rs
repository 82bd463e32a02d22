//! Fixtures: small OCI image layouts built in-process, for this crate's tests and the binary's
//! end-to-end tests (which must never reach a public registry).
//!
//! ```no_run
//! use agentkernel_image::{testing::{write_oci_layout, Layer}, ImageConfig};
//! # fn main() -> Result<(), agentkernel_image::ImageError> {
//! let layer = Layer::new().dir("etc", 0o755).file("etc/motd", b"hello\n", 0o644).finish()?;
//! write_oci_layout(std::path::Path::new("/tmp/layout"), "v1", &[layer], &ImageConfig::default())?;
//! # Ok(()) }
//! ```

use crate::blob::digest_of;
use crate::{ImageConfig, ImageError};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The mtime given to every entry a [`Layer`] writes, so tests can check it survived.
pub const ENTRY_MTIME: u64 = 1_700_000_000;

/// Writes (or adds to) an OCI image layout at `dir`: the layers (uncompressed tars, bottom
/// first) are gzip-compressed into blobs, a config and manifest are written for this machine's
/// platform, and `index.json` gets an entry tagged `tag` (replacing an entry with that tag).
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    config: &ImageConfig,
) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(ImageError::io("create", dir))?;
    write_file(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let compressed = gz
            .write_all(tar)
            .and_then(|()| gz.finish())
            .map_err(ImageError::io("compress a layer for", dir))?;
        diff_ids.push(digest_of(tar));
        layer_descs.push(put_blob(dir, LAYER_GZIP, &compressed)?);
    }

    let mut run = serde_json::Map::new();
    run.insert("Env".into(), json!(config.env));
    run.insert("Entrypoint".into(), json!(config.entrypoint));
    run.insert("Cmd".into(), json!(config.cmd));
    if let Some(w) = &config.workdir {
        run.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &config.user {
        run.insert("User".into(), json!(u));
    }
    let config_json = json!({
        "architecture": crate::layout::host_arch(),
        "os": "linux",
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config_desc = put_blob(dir, CONFIG, &to_bytes(&config_json)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc,
        "layers": layer_descs,
    });
    let mut manifest_desc = put_blob(dir, MANIFEST, &to_bytes(&manifest)?)?;
    manifest_desc["annotations"] = json!({ REF_NAME: tag });

    let index_path = dir.join("index.json");
    let mut entries: Vec<Value> = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    entries.retain(|e| e["annotations"][REF_NAME].as_str() != Some(tag));
    entries.push(manifest_desc);
    let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries });
    write_file(&index_path, &to_bytes(&index)?)
}

fn to_bytes(v: &Value) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(v).map_err(|e| ImageError::Io {
        action: "encode",
        path: "<json>".into(),
        source: e.into(),
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, bytes).map_err(ImageError::io("write", path))
}

/// Stores a blob by digest; returns its descriptor.
fn put_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Result<Value, ImageError> {
    let digest = digest_of(bytes);
    let hex = &digest["sha256:".len()..];
    write_file(&dir.join("blobs/sha256").join(hex), bytes)?;
    Ok(json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() }))
}

/// An uncompressed layer tar, built entry by entry (root-owned, mtime [`ENTRY_MTIME`]).
/// Errors are kept until [`Layer::finish`] so entries chain.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
    error: Option<std::io::Error>,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
            error: None,
        }
    }

    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.entry(
            path.as_bytes(),
            tar::EntryType::Directory,
            mode,
            (0, 0),
            None,
            b"",
        )
    }

    pub fn file(self, path: &str, contents: &[u8], mode: u32) -> Layer {
        self.entry(
            path.as_bytes(),
            tar::EntryType::Regular,
            mode,
            (0, 0),
            None,
            contents,
        )
    }

    /// A regular file with an owner.
    pub fn file_owned(self, path: &str, contents: &[u8], mode: u32, uid: u64, gid: u64) -> Layer {
        self.entry(
            path.as_bytes(),
            tar::EntryType::Regular,
            mode,
            (uid, gid),
            None,
            contents,
        )
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.entry(
            path.as_bytes(),
            tar::EntryType::Symlink,
            0o777,
            (0, 0),
            Some(target),
            b"",
        )
    }

    /// A hard link to `target`, an earlier entry of the same layer.
    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        self.entry(
            path.as_bytes(),
            tar::EntryType::Link,
            0o644,
            (0, 0),
            Some(target),
            b"",
        )
    }

    /// Deletes `path` of the layers below (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Layer {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let marker = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.entry(
            marker.as_bytes(),
            tar::EntryType::Regular,
            0o644,
            (0, 0),
            None,
            b"",
        )
    }

    /// Hides everything the layers below have in `dir` (`dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Layer {
        let marker = format!("{dir}/.wh..wh..opq");
        self.entry(
            marker.as_bytes(),
            tar::EntryType::Regular,
            0o644,
            (0, 0),
            None,
            b"",
        )
    }

    /// A block device node, for tests that an image never brings one.
    pub fn block_device(self, path: &str, major: u32, minor: u32) -> Layer {
        self.device(path, tar::EntryType::Block, major, minor)
    }

    /// A character device node (0:0 is an overlayfs whiteout, anything else a real device).
    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Layer {
        self.device(path, tar::EntryType::Char, major, minor)
    }

    fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Layer {
        if self.error.is_some() {
            return self;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o666);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(ENTRY_MTIME);
        header.set_size(0);
        let result = header
            .set_device_major(major)
            .and_then(|()| header.set_device_minor(minor))
            .and_then(|()| header.set_path(path))
            .and_then(|()| {
                header.set_cksum();
                self.builder.append(&header, &b""[..])
            });
        self.error = result.err();
        self
    }

    /// A GNU sparse file of `real_size` bytes (a multiple of 512, at least 512) that stores
    /// only its last 512 bytes (`x`): the archive stays tiny, the file unpacks to its full
    /// size.
    pub fn sparse(mut self, path: &str, real_size: u64) -> Layer {
        if self.error.is_some() {
            return self;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::GNUSparse);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(ENTRY_MTIME);
        header.set_size(512);
        let data_at = real_size.saturating_sub(512);
        let result = header.set_path(path).and_then(|()| {
            let gnu = header
                .as_gnu_mut()
                .ok_or_else(|| std::io::Error::other("not a GNU header"))?;
            gnu.sparse[0].set_offset(data_at);
            gnu.sparse[0].set_length(512);
            gnu.set_real_size(real_size);
            header.set_cksum();
            self.builder.append(&header, &[b'x'; 512][..])
        });
        self.error = result.err();
        self
    }

    /// An entry with a path written verbatim (no checks): for tests of hostile archives.
    pub fn raw(
        self,
        path: &[u8],
        kind: tar::EntryType,
        link: Option<&str>,
        contents: &[u8],
    ) -> Layer {
        self.entry(path, kind, 0o644, (0, 0), link, contents)
    }

    fn entry(
        mut self,
        path: &[u8],
        kind: tar::EntryType,
        mode: u32,
        (uid, gid): (u64, u64),
        link: Option<&str>,
        contents: &[u8],
    ) -> Layer {
        if self.error.is_some() {
            return self;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(ENTRY_MTIME);
        header.set_size(contents.len() as u64);
        let name = &mut header.as_old_mut().name;
        if path.len() > name.len() {
            self.error = Some(std::io::Error::other(
                "test layer paths are limited to 100 bytes",
            ));
            return self;
        }
        name[..path.len()].copy_from_slice(path);
        let result = link
            .map_or(Ok(()), |l| header.set_link_name_literal(l))
            .and_then(|()| {
                header.set_cksum();
                self.builder.append(&header, contents)
            });
        self.error = result.err();
        self
    }

    /// The finished tar bytes.
    pub fn finish(self) -> Result<Vec<u8>, ImageError> {
        let fail = |e: std::io::Error| ImageError::Io {
            action: "build test layer",
            path: "<layer>".into(),
            source: e,
        };
        if let Some(e) = self.error {
            return Err(fail(e));
        }
        self.builder.into_inner().map_err(fail)
    }
}
