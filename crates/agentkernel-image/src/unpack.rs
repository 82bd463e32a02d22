//! The layer store: each layer blob is unpacked once into `<root>/layers/sha256-<hex>/` and
//! reused by every image that contains it. Unpacking goes into a staging directory that is
//! renamed into place only after the whole blob matched its digest, so a tampered or truncated
//! blob leaves nothing behind that could later be mistaken for a good layer.

use crate::ImageError;
use crate::blob::{self, HashingReader};
use crate::extract::extract;
use crate::staging::Staging;
use oci_spec::image::Descriptor;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
    /// Unknown media type: decided by the blob's first bytes.
    Sniff,
}

fn compression_of(media_type: &str) -> Compression {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        _ => Compression::Sniff,
    }
}

fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The directory a layer unpacks to.
pub(crate) fn layer_dir(layers: &Path, hex: &str) -> PathBuf {
    layers.join(format!("sha256-{hex}"))
}

/// Makes sure the layer `desc` of `layout` is unpacked under `layers`; returns its directory.
pub(crate) fn ensure_layer(
    layers: &Path,
    layout: &Path,
    desc: &Descriptor,
) -> Result<PathBuf, ImageError> {
    let hex = blob::sha256_hex(layout, desc)?;
    let target = layer_dir(layers, hex);
    if target.is_dir() {
        return Ok(target);
    }
    let file = blob::open_blob(layout, desc)?;
    std::fs::create_dir_all(layers).map_err(ImageError::io("create the layer store", layers))?;
    let staging = Staging::new(layers, &format!("sha256-{hex}"))
        .map_err(ImageError::io("create a staging directory in", layers))?;

    let digest = desc.digest().to_string();
    let mut hashing = HashingReader::new(file);
    let unpacked = unpack_stream(&mut hashing, desc.media_type().as_ref(), &staging, &digest);
    // Hash whatever the tar reader left unread (padding, trailers) before judging the blob:
    // a digest mismatch explains a decompression error better than the error itself.
    let drained = hashing.drain();
    hashing.verify(layout, desc)?;
    let blob_path = blob::blob_path(layout, hex);
    drained.map_err(ImageError::io("read layer blob", &blob_path))?;
    unpacked?;

    staging
        .install(&target)
        .map_err(ImageError::io("install unpacked layer at", &target))?;
    Ok(target)
}

fn unpack_stream(
    reader: &mut impl Read,
    media_type: &str,
    staging: &Staging,
    digest: &str,
) -> Result<(), ImageError> {
    let unpack_error = |source: std::io::Error| ImageError::Unpack {
        digest: digest.to_string(),
        entry: String::new(),
        source,
    };
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let compression = match compression_of(media_type) {
        Compression::Sniff => sniff(buffered.fill_buf().map_err(unpack_error)?),
        known => known,
    };
    let (fd, path) = (staging.fd(), staging.path());
    match compression {
        Compression::Gzip => extract(
            flate2::bufread::MultiGzDecoder::new(buffered),
            fd,
            path,
            digest,
        ),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(buffered).map_err(unpack_error)?;
            extract(decoder, fd, path, digest)
        }
        Compression::None | Compression::Sniff => extract(buffered, fd, path, digest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_and_magic() {
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+gzip"),
            Compression::Gzip
        );
        assert_eq!(
            compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Compression::Gzip
        );
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+zstd"),
            Compression::Zstd
        );
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar"),
            Compression::None
        );
        assert_eq!(
            compression_of("application/octet-stream"),
            Compression::Sniff
        );
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(b"etc/passwd\0"), Compression::None);
    }

    /// Stores `bytes` as a blob of a bare layout; returns its descriptor.
    fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = crate::blob::digest_of(bytes);
        let dir = layout.join("blobs/sha256");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(&digest[7..]), bytes).expect("write blob");
        let digest: oci_spec::image::Digest = digest.parse().expect("digest");
        Descriptor::new(media_type.into(), bytes.len() as u64, digest)
    }

    #[test]
    fn zstd_plain_and_sniffed_layers_unpack() {
        let layout = tempfile::tempdir().expect("tempdir");
        let store = tempfile::tempdir().expect("tempdir");
        let tar = crate::testing::Layer::new()
            .file("hello", b"hi\n", 0o644)
            .finish()
            .expect("tar");
        let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
        for (media_type, bytes) in [
            ("application/vnd.oci.image.layer.v1.tar+zstd", &zst),
            ("application/octet-stream", &zst),
            ("application/vnd.oci.image.layer.v1.tar", &tar),
            ("application/x-unknown", &tar),
        ] {
            let desc = blob(layout.path(), media_type, bytes);
            let dir =
                ensure_layer(&store.path().join("layers"), layout.path(), &desc).expect(media_type);
            assert_eq!(
                std::fs::read(dir.join("hello")).expect("hello"),
                b"hi\n",
                "{media_type}"
            );
        }
    }

    #[test]
    fn truncated_blob_is_a_digest_mismatch() {
        let layout = tempfile::tempdir().expect("tempdir");
        let store = tempfile::tempdir().expect("tempdir");
        let tar = crate::testing::Layer::new()
            .file("hello", b"hi\n", 0o644)
            .finish()
            .expect("tar");
        let desc = blob(
            layout.path(),
            "application/vnd.oci.image.layer.v1.tar",
            &tar,
        );
        let path = crate::blob::blob_path(layout.path(), desc.as_digest_sha256().expect("sha256"));
        std::fs::write(&path, &tar[..700]).expect("truncate");
        let err = ensure_layer(&store.path().join("layers"), layout.path(), &desc)
            .expect_err("truncated");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        let left: Vec<_> = std::fs::read_dir(store.path().join("layers"))
            .expect("ls")
            .collect();
        assert!(left.is_empty(), "nothing left behind");
    }
}
