//! The layer store: each layer blob is unpacked once into `<root>/layers/sha256-<hex>/` and
//! reused by every image that contains it. Unpacking goes into a staging directory that is
//! renamed into place only after the whole blob matched its digest, so a tampered or truncated
//! blob leaves nothing behind that could later be mistaken for a good layer. The same holds for
//! a layer that crosses an unpack cap, or whose unpack is interrupted.

use crate::ImageError;
use crate::blob::{self, HashingReader, LayoutDir};
use crate::extract::{Extracted, extract};
use crate::limits::Budget;
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

/// Makes sure the layer `desc` of `layout` is unpacked under `layers`, charging what it writes
/// to `budget`; returns its directory.
pub(crate) fn ensure_layer(
    layers: &Path,
    layout: &LayoutDir,
    desc: &Descriptor,
    budget: &mut Budget,
) -> Result<PathBuf, ImageError> {
    let hex = blob::sha256_hex(layout.path(), desc)?;
    let target = layer_dir(layers, hex);
    if target.is_dir() {
        return Ok(target);
    }
    let file = blob::open_blob(layout, desc)?;
    std::fs::create_dir_all(layers).map_err(ImageError::io("create the layer store", layers))?;
    let staging = Staging::new(layers, &format!("sha256-{hex}"))
        .map_err(ImageError::io("create a staging directory in", layers))?;

    let digest = desc.digest().to_string();
    let mut hashing = HashingReader::new(blob::bounded(file, desc));
    let unpacked = unpack_stream(
        &mut hashing,
        desc.media_type().as_ref(),
        &staging,
        &digest,
        budget,
    );
    let kept = finish_layer(hashing, unpacked, layout, desc, staging, &target);
    budget.next_layer(kept.is_ok());
    let extracted = kept?;
    if extracted.skipped_devices > 0 {
        tracing::warn!(
            layer = %digest,
            skipped = extracted.skipped_devices,
            "device nodes in the layer were left out: images never bring devices"
        );
    }
    Ok(target)
}

/// Judges an unpacked layer and installs it: `staging` is removed (on drop) unless all of the
/// blob verified and the unpack succeeded.
fn finish_layer(
    mut hashing: HashingReader<std::io::Take<std::fs::File>>,
    unpacked: Result<Extracted, ImageError>,
    layout: &LayoutDir,
    desc: &Descriptor,
    staging: Staging,
    target: &Path,
) -> Result<Extracted, ImageError> {
    // Caps and interruptions are decided without reading the rest of the blob.
    if let Err(e @ (ImageError::UnpackTooLarge { .. } | ImageError::Interrupted { .. })) = unpacked
    {
        return Err(e);
    }
    // Hash whatever the tar reader left unread (padding, trailers) before judging the blob:
    // a digest mismatch explains a decompression error better than the error itself.
    let drained = hashing.drain();
    hashing.verify(layout.path(), desc)?;
    let hex = blob::sha256_hex(layout.path(), desc)?;
    drained.map_err(ImageError::io(
        "read layer blob",
        blob::blob_path(layout.path(), hex),
    ))?;
    let extracted = unpacked?;
    staging
        .install(target)
        .map_err(ImageError::io("install unpacked layer at", target))?;
    Ok(extracted)
}

fn unpack_stream(
    reader: &mut impl Read,
    media_type: &str,
    staging: &Staging,
    digest: &str,
    budget: &mut Budget,
) -> Result<Extracted, ImageError> {
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
            budget,
        ),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(buffered).map_err(unpack_error)?;
            extract(decoder, fd, path, digest, budget)
        }
        Compression::None | Compression::Sniff => extract(buffered, fd, path, digest, budget),
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
            let dir = ensure_layer(
                &store.path().join("layers"),
                &LayoutDir::open(layout.path()).expect("layout"),
                &desc,
                &mut Budget::new(Default::default()),
            )
            .expect(media_type);
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
        let err = ensure_layer(
            &store.path().join("layers"),
            &LayoutDir::open(layout.path()).expect("layout"),
            &desc,
            &mut Budget::new(Default::default()),
        )
        .expect_err("truncated");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        let left: Vec<_> = std::fs::read_dir(store.path().join("layers"))
            .expect("ls")
            .collect();
        assert!(left.is_empty(), "nothing left behind");
    }

    /// Unpacks `desc` of the layout at `layout` under `store/layers` with these caps.
    fn unpack(
        store: &Path,
        layout: &Path,
        desc: &Descriptor,
        limits: crate::UnpackLimits,
    ) -> Result<PathBuf, ImageError> {
        ensure_layer(
            &store.join("layers"),
            &LayoutDir::open(layout).expect("layout"),
            desc,
            &mut Budget::new(limits),
        )
    }

    fn layer_store_is_empty(store: &Path) -> bool {
        std::fs::read_dir(store.join("layers"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    }

    #[test]
    fn layers_past_a_cap_are_refused_and_leave_nothing() {
        let one_mb = crate::UnpackLimits {
            layer_mb: 1,
            image_mb: 1,
        };
        let tiny_sparse = crate::testing::Layer::new()
            .sparse("big", 64 << 20)
            .finish()
            .expect("tar");
        let mut many_empty = crate::testing::Layer::new();
        for i in 0..300 {
            many_empty = many_empty.file(&format!("f{i}"), b"", 0o644);
        }
        let many_empty = many_empty.finish().expect("tar");
        for (what, tar) in [("sparse", tiny_sparse), ("empty files", many_empty)] {
            let layout = tempfile::tempdir().expect("tempdir");
            let store = tempfile::tempdir().expect("tempdir");
            let desc = blob(
                layout.path(),
                "application/vnd.oci.image.layer.v1.tar",
                &tar,
            );
            let err = unpack(store.path(), layout.path(), &desc, one_mb).expect_err(what);
            assert!(
                matches!(
                    err,
                    ImageError::UnpackTooLarge {
                        cap_mb: 1,
                        key: "max_layer_mb",
                        ..
                    }
                ),
                "{what}: {err}"
            );
            assert!(
                err.to_string().contains(&desc.digest().to_string()),
                "{err}"
            );
            assert!(layer_store_is_empty(store.path()), "{what}: left behind");
            // Under the default caps the same layer unpacks.
            unpack(store.path(), layout.path(), &desc, Default::default()).expect(what);
        }
    }

    #[test]
    fn blobs_are_regular_files_of_the_layout_read_no_further_than_their_size() {
        let tar = crate::testing::Layer::new()
            .file("hello", b"hi\n", 0o644)
            .finish()
            .expect("tar");
        let media_type = "application/vnd.oci.image.layer.v1.tar";
        let outside = tempfile::tempdir().expect("tempdir");
        let host_file = outside.path().join("host.tar");
        std::fs::write(&host_file, &tar).expect("write");
        let real_digest = crate::blob::digest_of(&tar);

        // A symlink to a host file with exactly the descriptor's content, a FIFO (which would
        // block a reader), a symlink to a host file of other content, a socket: all refused,
        // and no error tells what the file there holds.
        type Plant<'a> = &'a dyn Fn(&Path);
        let cases: [(&str, Plant<'_>); 4] = [
            ("symlink to the matching host file", &|blob: &Path| {
                std::os::unix::fs::symlink(&host_file, blob).expect("symlink")
            }),
            ("fifo", &|blob: &Path| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    blob,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                )
                .expect("mkfifo")
            }),
            ("symlink to /etc/passwd", &|blob: &Path| {
                std::os::unix::fs::symlink("/etc/passwd", blob).expect("symlink")
            }),
            ("socket", &|blob: &Path| {
                // Bound, then closed: the socket file stays.
                drop(std::os::unix::net::UnixListener::bind(blob).expect("bind"));
            }),
        ];
        let passwd = std::fs::read("/etc/passwd").expect("passwd");
        for (what, make) in cases {
            let layout = tempfile::tempdir().expect("tempdir");
            let store = tempfile::tempdir().expect("tempdir");
            let desc = blob(layout.path(), media_type, &tar);
            let path = crate::blob::blob_path(layout.path(), &real_digest[7..]);
            std::fs::remove_file(&path).expect("rm");
            make(&path);
            let err =
                unpack(store.path(), layout.path(), &desc, Default::default()).expect_err(what);
            assert!(
                matches!(err, ImageError::UnsafeLayoutFile { .. }),
                "{what}: {err}"
            );
            let text = err.to_string();
            let passwd_digest = crate::blob::digest_of(&passwd);
            assert!(
                !text.contains(&passwd_digest[7..])
                    && !text.contains(&format!("{} bytes", passwd.len())),
                "{what}: {text}"
            );
            assert!(layer_store_is_empty(store.path()), "{what}");
        }

        // A blob longer than its descriptor (as a file that keeps growing would be) is read to
        // one byte past its size, and the error names the descriptor only.
        let layout = tempfile::tempdir().expect("tempdir");
        let store = tempfile::tempdir().expect("tempdir");
        let desc = blob(layout.path(), media_type, &tar);
        let path = crate::blob::blob_path(layout.path(), &real_digest[7..]);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(1 << 40).expect("a sparse terabyte");
        let err = unpack(store.path(), layout.path(), &desc, Default::default())
            .expect_err("longer than its descriptor");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(
            !err.to_string().contains(&(1u64 << 40).to_string()),
            "{err}"
        );
        assert!(layer_store_is_empty(store.path()));
    }
}
