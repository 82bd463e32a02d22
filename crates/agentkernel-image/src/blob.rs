//! Content-addressed blobs of an OCI layout: where they are, how they are opened and how they
//! are verified.
//!
//! A layout may sit where a sandbox can write (a directory it shares with the host, or the
//! upper layer of another sandbox), so nothing in it is trusted: every file is opened beneath
//! the layout directory with `openat2` (no symlinks, no `..`, no magic links, never a FIFO or
//! device), read no further than its descriptor's size plus one byte, and used only once its
//! sha256 and size match. A mismatch names the descriptor, never what was actually found
//! there: the content's digest and size would tell a caller the hash of whatever host file it
//! managed to put in the blob's place.

use crate::ImageError;
use oci_spec::image::Descriptor;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// JSON documents (indexes, manifests, configs) larger than this are refused rather than read
/// into memory: real ones are a few kilobytes.
pub(crate) const MAX_JSON: u64 = 4 << 20;

/// The 64 lowercase hex digits of a sha256 descriptor; other algorithms are refused because the
/// store is keyed by sha256. The hex is validated by oci-spec, so it is safe to use in paths.
pub(crate) fn sha256_hex<'a>(layout: &Path, desc: &'a Descriptor) -> Result<&'a str, ImageError> {
    desc.as_digest_sha256().ok_or_else(|| ImageError::BadBlob {
        layout: layout.to_path_buf(),
        digest: desc.digest().to_string(),
        reason: "only sha256 digests are supported; re-export the image with sha256".to_string(),
    })
}

/// `<layout>/blobs/sha256/<hex>`.
pub(crate) fn blob_path(layout: &Path, hex: &str) -> PathBuf {
    layout.join("blobs").join("sha256").join(hex)
}

/// `blobs/sha256/<hex>`, relative to the layout directory.
fn blob_rel(hex: &str) -> String {
    format!("blobs/sha256/{hex}")
}

/// An OCI layout directory, held open: each of its files is opened beneath it.
#[derive(Debug)]
pub(crate) struct LayoutDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// Why a file of a layout could not be opened.
pub(crate) enum OpenError {
    /// Nothing is there.
    Missing,
    /// Something is there that a layout must not hold: a symlink, a FIFO, a device, a
    /// directory, or a path that leads out of the layout.
    Refused(&'static str),
    Io(io::Error),
}

impl LayoutDir {
    /// Opens the directory the caller named (a symlink to it is followed: the caller chose the
    /// path; only what lies beneath it is untrusted).
    pub(crate) fn open(path: &Path) -> Result<LayoutDir, ImageError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => Ok(LayoutDir {
                path: path.to_path_buf(),
                fd,
            }),
            Err(Errno::NOENT) => Err(ImageError::LayoutMissing {
                path: path.to_path_buf(),
            }),
            Err(Errno::NOTDIR) => Err(ImageError::NotALayout {
                path: path.to_path_buf(),
                reason: "it is not a directory".to_string(),
            }),
            Err(e) => Err(ImageError::Io {
                action: "open OCI layout",
                path: path.to_path_buf(),
                source: e.into(),
            }),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` (a relative path such as `blobs/sha256/<hex>`) for reading, only if it is a
    /// regular file inside the layout reached without any symlink; returns it with its size.
    pub(crate) fn open_file(&self, rel: &str) -> Result<(std::fs::File, u64), OpenError> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd = match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(OpenError::Missing),
            // ELOOP: a symlink on the way; EXDEV: the path leads out of the layout.
            Err(Errno::LOOP | Errno::XDEV) => {
                return Err(OpenError::Refused(
                    "is a symbolic link or lies outside the layout",
                ));
            }
            // ENXIO: a socket.
            Err(Errno::NXIO) => return Err(OpenError::Refused("is not a regular file")),
            Err(Errno::NOTDIR) => {
                return Err(OpenError::Refused(
                    "lies below something that is not a directory",
                ));
            }
            Err(e) => return Err(OpenError::Io(e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| OpenError::Io(e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(OpenError::Refused("is not a regular file"));
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        Ok((std::fs::File::from(fd), size))
    }

    /// The error for a file of this layout that could not be opened; `missing` says what its
    /// absence means.
    pub(crate) fn open_error(
        &self,
        rel: &str,
        e: OpenError,
        missing: impl FnOnce() -> ImageError,
    ) -> ImageError {
        match e {
            OpenError::Missing => missing(),
            OpenError::Refused(reason) => ImageError::UnsafeLayoutFile {
                layout: self.path.clone(),
                file: rel.to_string(),
                reason,
            },
            OpenError::Io(source) => ImageError::Io {
                action: "open",
                path: self.path.join(rel),
                source,
            },
        }
    }
}

/// Opens a blob (a regular file of the layout, see [`LayoutDir::open_file`]), mapping a missing
/// file to an error that says the layout is incomplete.
pub(crate) fn open_blob(
    layout: &LayoutDir,
    desc: &Descriptor,
) -> Result<std::fs::File, ImageError> {
    let hex = sha256_hex(layout.path(), desc)?;
    let rel = blob_rel(hex);
    layout.open_file(&rel).map(|(file, _)| file).map_err(|e| {
        layout.open_error(&rel, e, || ImageError::BlobMissing {
            layout: layout.path().to_path_buf(),
            digest: desc.digest().to_string(),
            path: blob_path(layout.path(), hex),
        })
    })
}

/// A blob's reader that stops one byte past the descriptor's size: enough to tell a longer blob
/// from a matching one, never more (a file that keeps growing cannot keep a reader busy).
pub(crate) fn bounded(file: std::fs::File, desc: &Descriptor) -> io::Take<std::fs::File> {
    file.take(desc.size().saturating_add(1))
}

/// Reads a small JSON blob whole and checks it against its descriptor.
pub(crate) fn read_verified(layout: &LayoutDir, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let bad = |reason: String| ImageError::BadBlob {
        layout: layout.path().to_path_buf(),
        digest: desc.digest().to_string(),
        reason,
    };
    if desc.size() > MAX_JSON {
        return Err(bad(format!(
            "its descriptor says {} bytes, more than a JSON document may be",
            desc.size()
        )));
    }
    let file = open_blob(layout, desc)?;
    let mut reader = HashingReader::new(bounded(file, desc));
    let mut bytes = Vec::with_capacity(usize::try_from(desc.size()).unwrap_or(0));
    reader.read_to_end(&mut bytes).map_err(ImageError::io(
        "read blob",
        blob_path(layout.path(), sha256_hex(layout.path(), desc)?),
    ))?;
    reader.verify(layout.path(), desc)?;
    Ok(bytes)
}

/// Parses a verified JSON blob, naming the blob when it is not what it claims to be.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    layout: &Path,
    desc: &Descriptor,
    bytes: &[u8],
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::BadBlob {
        layout: layout.to_path_buf(),
        digest: desc.digest().to_string(),
        reason: format!("it is not a valid {what}: {e}"),
    })
}

/// A reader that hashes and counts every byte that passes through it, so a blob is verified
/// in the same pass that consumes it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads whatever the consumer left unread, so the digest covers the whole blob.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// Compares what was read with the descriptor's digest and size. The error names the
    /// descriptor only: what the content actually hashed to stays unsaid.
    pub(crate) fn verify(self, layout: &Path, desc: &Descriptor) -> Result<(), ImageError> {
        let actual = hex::encode(self.hasher.finalize());
        let expected = sha256_hex(layout, desc)?;
        if actual == expected && self.len == desc.size() {
            return Ok(());
        }
        Err(ImageError::DigestMismatch {
            layout: layout.to_path_buf(),
            digest: desc.digest().to_string(),
            expected_size: desc.size(),
        })
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>` of some bytes.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
