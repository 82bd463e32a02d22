//! Fetching an image's manifest, config and layers from a registry into the store's blobs.
//!
//! oci-client speaks the distribution protocol (token auth, redirects, ranges); this module
//! decides what to fetch and keeps the store safe to share: a blob is written to a partial file
//! next to its final path (locked while in use), verified against its digest and size, and only
//! then renamed into place. An interrupted download is resumed by the next pull, which trusts
//! none of it until the whole blob verifies; two pulls of one blob take turns.
//!
//! Nothing a registry sends is read past what it may be: a blob stops at its descriptor's size
//! (one byte more is an error), a manifest at its descriptor's size or, fetched by tag, at
//! [`blob::MAX_JSON`]. Manifests are therefore fetched here rather than by oci-client, which
//! would read a body of any length into memory. The whole fetch stops when the user asks
//! (see [`crate::interrupt`]).

use crate::ImageError;
use crate::blob;
use futures_util::StreamExt as _;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor, DescriptorBuilder, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

/// Where an image is fetched from.
#[derive(Debug, Clone)]
pub(crate) struct PullTarget {
    pub(crate) reference: Reference,
    /// `host[:port]` actually contacted (the mirror, for Docker Hub names behind one).
    pub(crate) registry: String,
    pub(crate) plain_http: bool,
    /// As the user wrote it, for messages.
    pub(crate) original: String,
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Fetches the image's manifest for this machine, its config and its layers into the store's
/// blobs; returns the manifest's descriptor.
pub(crate) fn fetch(
    store: &Path,
    target: &PullTarget,
    progress: bool,
) -> Result<Descriptor, ImageError> {
    let blobs = store.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(ImageError::io("create", store))?;
    remove_abandoned(&blobs);
    std::fs::write(
        store.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(ImageError::io("write", &store.join("oci-layout")))?;
    // One thread: agentkernel forks sandboxes later in this process, which must then be the
    // only thread; the runtime and its resolver threads are gone when this returns.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ImageError::io("start the HTTP client for", store))?;
    let result = runtime.block_on(crate::interrupt::until_stopped(fetch_async(
        store, target, progress,
    )));
    drop(runtime);
    result
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn client(target: &PullTarget) -> Client {
    let protocol = if target.plain_http {
        ClientProtocol::HttpsExcept(vec![target.registry.clone()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    })
}

/// The HTTP client manifests are fetched with (oci-client still negotiates the token).
fn manifest_client(target: &PullTarget) -> Result<reqwest::Client, ImageError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("agentkernel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ImageError::PullFailed {
            reference: target.original.clone(),
            registry: target.registry.clone(),
            reason: format!("cannot set up the HTTP client: {e}"),
        })
}

async fn fetch_async(
    store: &Path,
    target: &PullTarget,
    progress: bool,
) -> Result<Descriptor, ImageError> {
    let client = client(target);
    let http = manifest_client(target)?;
    let auth = crate::auth::credentials_for(target.reference.registry(), &target.registry);
    let fetcher = ManifestFetcher {
        client: &client,
        http: &http,
        target,
        auth: &auth,
    };
    let (bytes, media_type) = fetcher.get(&target.reference, None).await?;
    let mut desc = save_json_blob(
        store,
        target,
        &media_type,
        &bytes,
        target.reference.digest(),
    )?;
    if is_index(&media_type, &bytes) {
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| bad(target, &desc, format!("its image index is not valid: {e}")))?;
        let arch = crate::layout::host_arch();
        let Some(entry) = index
            .manifests()
            .iter()
            .find(|d| crate::layout::matches_host(d))
        else {
            return Err(ImageError::PullFailed {
                reference: target.original.clone(),
                registry: target.registry.clone(),
                reason: format!("the image has no linux/{arch} variant"),
            });
        };
        let by_digest = target
            .reference
            .clone_with_digest(entry.digest().to_string());
        let (bytes, media_type) = fetcher.get(&by_digest, Some(entry.size())).await?;
        desc = save_json_blob(
            store,
            target,
            &media_type,
            &bytes,
            Some(entry.digest().as_ref()),
        )?;
    }
    let bytes = std::fs::read(blob::blob_path(store, blob::sha256_hex(store, &desc)?))
        .map_err(ImageError::io("read", store))?;
    let manifest: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| bad(target, &desc, format!("its manifest is not valid: {e}")))?;
    for blob_desc in std::iter::once(manifest.config()).chain(manifest.layers().iter()) {
        download(&client, store, target, blob_desc, progress).await?;
    }
    Ok(desc)
}

fn is_index(media_type: &str, bytes: &[u8]) -> bool {
    media_type.contains("index")
        || media_type.contains("manifest.list")
        || serde_json::from_slice::<serde_json::Value>(bytes)
            .is_ok_and(|v| v.get("manifests").is_some())
}

fn bad(target: &PullTarget, desc: &Descriptor, reason: String) -> ImageError {
    ImageError::PullFailed {
        reference: target.original.clone(),
        registry: target.registry.clone(),
        reason: format!("{}: {reason}", desc.digest()),
    }
}

fn net_error(target: &PullTarget, e: oci_client::errors::OciDistributionError) -> ImageError {
    use oci_client::errors::OciDistributionError as E;
    let text = e.to_string();
    match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => ImageError::PullUnauthorized {
            reference: target.original.clone(),
            registry: target.registry.clone(),
            reason: text,
        },
        E::ImageManifestNotFoundError(_) => ImageError::ImageNotFound {
            reference: target.original.clone(),
            registry: target.registry.clone(),
        },
        _ if text.contains("401") || text.contains("nauthorized") => ImageError::PullUnauthorized {
            reference: target.original.clone(),
            registry: target.registry.clone(),
            reason: text,
        },
        _ if text.contains("404")
            || text.to_ascii_lowercase().contains("manifest unknown")
            || text.contains("MANIFEST_UNKNOWN")
            || text.contains("NAME_UNKNOWN") =>
        {
            ImageError::ImageNotFound {
                reference: target.original.clone(),
                registry: target.registry.clone(),
            }
        }
        _ => ImageError::PullFailed {
            reference: target.original.clone(),
            registry: target.registry.clone(),
            reason: text,
        },
    }
}

/// Fetches manifests, reading no more of a response than a manifest may hold.
struct ManifestFetcher<'a> {
    client: &'a Client,
    http: &'a reqwest::Client,
    target: &'a PullTarget,
    auth: &'a RegistryAuth,
}

impl ManifestFetcher<'_> {
    /// The manifest `reference` names and its media type. `size` is its descriptor's size when
    /// an index gave one: the body must be exactly that long. Without one, it may be at most
    /// [`blob::MAX_JSON`].
    async fn get(
        &self,
        reference: &Reference,
        size: Option<u64>,
    ) -> Result<(Vec<u8>, String), ImageError> {
        let target = self.target;
        let failed = |reason: String| ImageError::PullFailed {
            reference: target.original.clone(),
            registry: target.registry.clone(),
            reason,
        };
        let limit = size.unwrap_or(blob::MAX_JSON);
        if limit > blob::MAX_JSON {
            return Err(failed(format!(
                "its index lists a manifest of {limit} bytes, more than a manifest may be ({} bytes)",
                blob::MAX_JSON
            )));
        }
        // oci-client negotiates (and caches, for the blob requests) the registry's token.
        let token = self
            .client
            .auth(reference, self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| net_error(target, e))?;
        let registry = reference.resolve_registry();
        let scheme = if target.plain_http { "http" } else { "https" };
        let name = reference.digest().or(reference.tag()).unwrap_or("latest");
        let url = format!(
            "{scheme}://{registry}/v2/{}/manifests/{name}",
            reference.repository()
        );
        let mut request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "));
        request = match (token, self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| failed(format!("fetching the manifest: {e}")))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(ImageError::PullUnauthorized {
                    reference: target.original.clone(),
                    registry: target.registry.clone(),
                    reason: format!("HTTP {} for {url}", response.status()),
                });
            }
            404 => {
                return Err(ImageError::ImageNotFound {
                    reference: target.original.clone(),
                    registry: target.registry.clone(),
                });
            }
            _ => {
                return Err(failed(format!(
                    "the registry answered HTTP {} for {url}",
                    response.status()
                )));
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(format!("reading the manifest: {e}")))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(failed(format!(
                    "the registry sent more than the {limit} bytes a manifest may be here; \
                     refusing it"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if let Some(size) = size
            && body.len() as u64 != size
        {
            return Err(failed(format!(
                "the registry sent a shorter manifest than the {size} bytes its index lists; \
                 refusing it"
            )));
        }
        let media_type = media_type_of(&body);
        Ok((body, media_type))
    }
}

/// A manifest's own `mediaType`, or the OCI manifest type when it names none.
fn media_type_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_string())
}

/// Stores a manifest or index fetched by tag or digest; when a digest was asked for, the bytes
/// must hash to it.
fn save_json_blob(
    store: &Path,
    target: &PullTarget,
    media_type: &str,
    bytes: &[u8],
    expected: Option<&str>,
) -> Result<Descriptor, ImageError> {
    let hex = hex::encode(Sha256::digest(bytes));
    let digest = format!("sha256:{hex}");
    if let Some(want) = expected
        && want != digest
    {
        return Err(ImageError::PullFailed {
            reference: target.original.clone(),
            registry: target.registry.clone(),
            reason: format!(
                "the registry sent a manifest with digest {digest} for {want}; refusing it"
            ),
        });
    }
    let path = blob::blob_path(store, &hex);
    if !path.is_file() {
        crate::staging::write_file(&path, bytes, "write")?;
    }
    descriptor(media_type, &digest, bytes.len() as u64)
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Result<Descriptor, ImageError> {
    let digest =
        oci_spec::image::Digest::from_str(digest).map_err(|e| ImageError::BadReference {
            reference: digest.to_string(),
            reason: e.to_string(),
        })?;
    DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest)
        .size(size)
        .build()
        .map_err(|e| ImageError::BadReference {
            reference: media_type.to_string(),
            reason: e.to_string(),
        })
}

/// A bar on stderr for one blob: its short digest, bytes so far and total.
fn progress_bar(desc: &Descriptor, hex: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(desc.size()),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(hex[..12.min(hex.len())].to_string());
    bar
}

/// A download in progress holds an exclusive lock on its temporary file: one that can be locked
/// and is older than a minute was left by an interrupted pull, and nothing will finish it.
fn remove_abandoned(blobs: &Path) {
    let Ok(entries) = std::fs::read_dir(blobs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Partial downloads are kept a day for resuming; other temporaries a minute.
        let keep_for = if name.starts_with(PARTIAL) {
            std::time::Duration::from_secs(24 * 3600)
        } else if name.starts_with(".tmp-") {
            std::time::Duration::from_secs(60)
        } else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > keep_for));
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        if old
            && rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_ok()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Downloads one blob unless the store has it, into `.partial-<hex>` next to its final path,
/// then checks digest and size before renaming it into place.
///
/// Resumable: an interrupted download leaves its partial file, and the next pull asks the
/// registry only for the rest (an HTTP range). Nothing of it is trusted on the way: the bytes
/// already there are hashed again, and a resumed blob that does not verify is fetched once more
/// from the start. Two pulls of one blob take turns on the partial file's lock; the second finds
/// the blob in place.
async fn download(
    client: &Client,
    store: &Path,
    target: &PullTarget,
    desc: &Descriptor,
    progress: bool,
) -> Result<(), ImageError> {
    let hex = blob::sha256_hex(store, desc)?;
    let path = blob::blob_path(store, hex);
    let present = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() == desc.size());
    if present(&path) {
        return Ok(());
    }
    let partial = path.with_file_name(format!("{PARTIAL}{hex}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .map_err(ImageError::io("create", &partial))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| ImageError::io("lock", &partial)(e.into()))?;
    if present(&path) {
        return Ok(());
    }
    let mut resumed = true;
    loop {
        match fetch_into(
            client, target, desc, hex, &mut file, &partial, resumed, progress,
        )
        .await
        {
            Ok(()) => break,
            // A resumed download that does not verify: the part kept from before was not the
            // blob's. Start over once.
            Err(ImageError::TamperedBlob { .. }) if resumed => {
                file.set_len(0)
                    .map_err(ImageError::io("truncate", &partial))?;
                resumed = false;
            }
            Err(e) => {
                if matches!(e, ImageError::TamperedBlob { .. }) {
                    let _ = std::fs::remove_file(&partial);
                }
                return Err(e);
            }
        }
    }
    file.sync_all().map_err(ImageError::io("write", &partial))?;
    std::fs::rename(&partial, &path).map_err(ImageError::io("write", &path))
}

/// Files of downloads in progress (or interrupted, to be resumed).
const PARTIAL: &str = ".partial-";

/// Completes `file` (which may hold the start of the blob) from the registry and verifies it.
#[allow(clippy::too_many_arguments)]
async fn fetch_into(
    client: &Client,
    target: &PullTarget,
    desc: &Descriptor,
    hex: &str,
    file: &mut std::fs::File,
    partial: &Path,
    resume: bool,
    progress: bool,
) -> Result<(), ImageError> {
    use std::io::{Read as _, Seek as _};
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let have = if resume {
        file.metadata().map(|m| m.len()).unwrap_or(0)
    } else {
        0
    };
    if have > 0 && have < desc.size() {
        file.rewind().map_err(ImageError::io("read", partial))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(ImageError::io("read", partial))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
    } else if have > 0 {
        file.set_len(0)
            .map_err(ImageError::io("truncate", partial))?;
    }
    let stream = if size > 0 {
        match client
            .pull_blob_stream_partial(&target.reference, desc.digest().as_ref(), size, None)
            .await
            .map_err(|e| net_error(target, e))?
        {
            oci_client::client::BlobResponse::Partial(s) => s,
            // The registry ignored the range: take the whole blob.
            oci_client::client::BlobResponse::Full(s) => {
                file.set_len(0)
                    .map_err(ImageError::io("truncate", partial))?;
                hasher = Sha256::new();
                size = 0;
                s
            }
        }
    } else {
        client
            .pull_blob_stream(&target.reference, desc.digest().as_ref())
            .await
            .map_err(|e| net_error(target, e))?
    };
    file.seek(std::io::SeekFrom::Start(size))
        .map_err(ImageError::io("write", partial))?;
    let bar = progress.then(|| progress_bar(desc, hex));
    if let Some(bar) = &bar {
        bar.set_position(size);
    }
    let mut stream = stream.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let text = e.to_string();
            if text.contains("Invalid digest") || (text.contains("digest") && text.contains("got"))
            {
                ImageError::TamperedBlob {
                    registry: target.registry.clone(),
                    digest: desc.digest().to_string(),
                    detail: text,
                }
            } else {
                ImageError::PullFailed {
                    reference: target.original.clone(),
                    registry: target.registry.clone(),
                    reason: format!("downloading {}: {text}", desc.digest()),
                }
            }
        })?;
        size += chunk.len() as u64;
        if size > desc.size() {
            return Err(ImageError::TamperedBlob {
                registry: target.registry.clone(),
                digest: desc.digest().to_string(),
                detail: format!("more than its {} bytes", desc.size()),
            });
        }
        hasher.update(&chunk);
        if let Some(bar) = &bar {
            bar.set_position(size);
        }
        file.write_all(&chunk)
            .map_err(|e| write_error(partial, e))?;
    }
    let got = hex::encode(hasher.finalize());
    if got != hex || size != desc.size() {
        return Err(ImageError::TamperedBlob {
            registry: target.registry.clone(),
            digest: desc.digest().to_string(),
            detail: format!("got sha256:{got}, {size} of {} bytes", desc.size()),
        });
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    Ok(())
}

/// A full disk says so, with the place to free.
fn write_error(path: &Path, e: std::io::Error) -> ImageError {
    if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
        return ImageError::DiskFull {
            path: path.to_path_buf(),
        };
    }
    ImageError::io("write", path)(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_abandoned_downloads_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        let make = |name: &str, aged: bool| {
            let path = dir.path().join(name);
            let file = std::fs::File::create(&path).expect("create");
            if aged {
                file.set_modified(old).expect("mtime");
            }
            file
        };
        drop(make(".tmp-abandoned", true));
        let in_progress = make(".tmp-in-progress", true);
        rustix::fs::flock(&in_progress, rustix::fs::FlockOperation::LockExclusive).expect("lock");
        drop(make(".tmp-fresh", false));
        drop(make(".partial-resumable", true));
        drop(make("0123abcd", true));
        remove_abandoned(dir.path());
        let left: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            [
                ".partial-resumable",
                ".tmp-fresh",
                ".tmp-in-progress",
                "0123abcd"
            ]
            .into_iter()
            .map(String::from)
            .collect()
        );
    }
}
