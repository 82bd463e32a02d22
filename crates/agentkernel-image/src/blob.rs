//! Content-addressed blobs of an OCI layout: where they are and how they are verified.
//! Nothing read from a blob is trusted until its sha256 and size match the descriptor.

use crate::ImageError;
use oci_spec::image::Descriptor;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// JSON documents (indexes, manifests, configs) larger than this are refused rather than read
/// into memory: real ones are a few kilobytes.
const MAX_JSON: u64 = 4 << 20;

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

/// Opens a blob, mapping a missing file to an error that says the layout is incomplete.
pub(crate) fn open_blob(layout: &Path, desc: &Descriptor) -> Result<std::fs::File, ImageError> {
    let hex = sha256_hex(layout, desc)?;
    let path = blob_path(layout, hex);
    std::fs::File::open(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::BlobMissing {
                layout: layout.to_path_buf(),
                digest: desc.digest().to_string(),
                path: path.clone(),
            }
        } else {
            ImageError::Io {
                action: "open blob",
                path: path.clone(),
                source: e,
            }
        }
    })
}

/// Reads a small JSON blob whole and checks it against its descriptor.
pub(crate) fn read_verified(layout: &Path, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let bad = |reason: String| ImageError::BadBlob {
        layout: layout.to_path_buf(),
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
    let mut reader = HashingReader::new(file.take(MAX_JSON + 1));
    let mut bytes = Vec::with_capacity(usize::try_from(desc.size()).unwrap_or(0));
    reader.read_to_end(&mut bytes).map_err(ImageError::io(
        "read blob",
        blob_path(layout, sha256_hex(layout, desc)?),
    ))?;
    reader.verify(layout, desc)?;
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

    /// Compares what was read with the descriptor's digest and size.
    pub(crate) fn verify(self, layout: &Path, desc: &Descriptor) -> Result<(), ImageError> {
        let actual = hex::encode(self.hasher.finalize());
        let expected = sha256_hex(layout, desc)?;
        if actual == expected && self.len == desc.size() {
            return Ok(());
        }
        Err(ImageError::DigestMismatch {
            layout: layout.to_path_buf(),
            digest: desc.digest().to_string(),
            actual: format!("sha256:{actual}"),
            size: self.len,
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
