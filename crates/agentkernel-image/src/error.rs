//! What can go wrong while turning an image reference into a root filesystem. Every message
//! names the image, path or digest concerned and says what to do next.

use std::path::PathBuf;

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// A failure to resolve or prepare an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image directory {} does not exist: give an unpacked root filesystem directory", path.display())]
    DirectoryMissing { path: PathBuf },
    #[error("OCI image layout {} does not exist: give a directory written by e.g. `skopeo copy docker://IMAGE oci:DIR:TAG`", path.display())]
    LayoutMissing { path: PathBuf },

    #[error("image directory {} is not a directory: give an unpacked root filesystem directory", path.display())]
    NotADirectory { path: PathBuf },

    #[error(
        "{} is not an OCI image layout ({reason}): give a directory written by e.g. \
         `skopeo copy docker://IMAGE oci:DIR:TAG` or `docker buildx build --output type=oci,tar=false`",
        path.display()
    )]
    NotALayout { path: PathBuf, reason: String },

    #[error(
        "OCI layout {} has no image tagged {tag:?}; available tags: {}",
        layout.display(),
        list(available)
    )]
    TagNotFound {
        layout: PathBuf,
        tag: String,
        available: Vec<String>,
    },

    #[error(
        "OCI layout {} holds {count} images; pick one with `oci:{}:TAG` (available tags: {})",
        layout.display(),
        layout.display(),
        list(available)
    )]
    AmbiguousImage {
        layout: PathBuf,
        count: usize,
        available: Vec<String>,
    },

    #[error(
        "OCI layout {}: image index {digest} has no linux/{arch} image (it has: {}); \
         use an image built for this machine",
        layout.display(),
        list(available)
    )]
    NoPlatform {
        layout: PathBuf,
        digest: String,
        arch: String,
        available: Vec<String>,
    },

    #[error(
        "blob {digest} is missing from OCI layout {} (expected at {}): the layout is incomplete; export the image again",
        layout.display(),
        path.display()
    )]
    BlobMissing {
        layout: PathBuf,
        digest: String,
        path: PathBuf,
    },

    /// What the blob actually holds is deliberately left out: its digest and size would leak
    /// the hash of whatever file was put in the blob's place.
    #[error(
        "blob {digest} in OCI layout {} does not match its descriptor ({digest}, {expected_size} bytes): \
         the layout is corrupt or was tampered with; export the image again",
        layout.display()
    )]
    DigestMismatch {
        layout: PathBuf,
        digest: String,
        expected_size: u64,
    },

    #[error(
        "OCI layout {}: {file} {reason}; refusing to read it (a layout's files must be regular files \
         inside it): export the image again, e.g. with `skopeo copy docker://IMAGE oci:DIR:TAG`",
        layout.display()
    )]
    UnsafeLayoutFile {
        layout: PathBuf,
        file: String,
        reason: &'static str,
    },

    #[error(
        "layer {digest} unpacks to more than {cap_mb} MB, the most {scope} may take: nothing of it \
         was kept; if you trust this image, raise `[images] {key}` in agentkernel.toml"
    )]
    UnpackTooLarge {
        digest: String,
        cap_mb: u64,
        /// `one layer` or `one image`.
        scope: &'static str,
        /// `max_layer_mb` or `max_image_mb`.
        key: &'static str,
    },

    #[error(
        "stopped by {} while preparing the image: nothing half-unpacked was kept, and what was \
         downloaded is kept for the next pull to resume",
        crate::interrupt::signal_name(*signal)
    )]
    Interrupted { signal: i32 },

    #[error("blob {digest} in OCI layout {}: {reason}", layout.display())]
    BadBlob {
        layout: PathBuf,
        digest: String,
        reason: String,
    },

    #[error("layer {digest} contains an unsafe entry {entry:?}: {reason}; refusing to unpack it")]
    UnsafeEntry {
        digest: String,
        entry: String,
        reason: String,
    },

    #[error("could not unpack layer {digest} (at entry {entry:?}): {source}")]
    Unpack {
        digest: String,
        entry: String,
        #[source]
        source: std::io::Error,
    },

    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },

    #[error("AGENTKERNEL_REGISTRY_MIRROR={value:?} is not usable: {reason}")]
    BadMirror { value: String, reason: String },

    #[error(
        "registry {registry} would be reached over plain HTTP, which is allowed only for loopback \
         registries: use https://, or list it in [images] insecure_registries of agentkernel.toml"
    )]
    InsecureRegistry { registry: String },

    #[error(
        "image {reference:?} was not found on {registry}: check the name and tag (`agentkernel images pull` \
         shows what the registry answers)"
    )]
    ImageNotFound { reference: String, registry: String },

    #[error(
        "registry {registry} refused access to {reference:?} ({reason}): log in with `docker login {registry}` \
         (credentials are read from ~/.docker/config.json or $DOCKER_CONFIG)"
    )]
    PullUnauthorized {
        reference: String,
        registry: String,
        reason: String,
    },

    #[error("the disk is full writing {}: free space there (`agentkernel images prune` removes unused images) and pull again", path.display())]
    DiskFull { path: PathBuf },

    #[error(
        "registry {registry} sent content for {digest} that does not match it ({detail}): its copy is \
         corrupt or was tampered with; nothing of it was kept, pull again or from another registry"
    )]
    TamperedBlob {
        registry: String,
        digest: String,
        detail: String,
    },

    #[error(
        "could not pull {reference:?} from {registry}: {reason} (set AGENTKERNEL_REGISTRY_MIRROR to use a \
         mirror, or use `--image host` or a local directory)"
    )]
    PullFailed {
        reference: String,
        registry: String,
        reason: String,
    },
}

impl ImageError {
    /// Wraps an I/O error with the step and path it concerned.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}

impl ImageError {
    /// The request named an image that does not exist or cannot be used, as opposed to a
    /// failure of this host or the network (HTTP answers 400 for these, 5xx for the rest).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ImageError::DirectoryMissing { .. }
                | ImageError::LayoutMissing { .. }
                | ImageError::NotADirectory { .. }
                | ImageError::NotALayout { .. }
                | ImageError::TagNotFound { .. }
                | ImageError::AmbiguousImage { .. }
                | ImageError::NoPlatform { .. }
                | ImageError::BadReference { .. }
                | ImageError::InsecureRegistry { .. }
                | ImageError::ImageNotFound { .. }
                | ImageError::PullUnauthorized { .. }
                | ImageError::UnsafeLayoutFile { .. }
                | ImageError::UnpackTooLarge { .. }
        )
    }
}

impl agentkernel_core::HasKind for ImageError {
    /// What does not exist where the request pointed is not found, what the request got wrong
    /// is bad input, a registry that refused the credentials is not permitted, and one that did
    /// not answer properly is an upstream failure.
    fn kind(&self) -> agentkernel_core::ErrorKind {
        use agentkernel_core::ErrorKind;
        match self {
            ImageError::DirectoryMissing { .. }
            | ImageError::LayoutMissing { .. }
            | ImageError::NotADirectory { .. }
            | ImageError::NotALayout { .. }
            | ImageError::TagNotFound { .. }
            | ImageError::ImageNotFound { .. } => ErrorKind::NotFound,
            ImageError::PullUnauthorized { .. } => ErrorKind::NotPermitted,
            // A local image path that cannot be read: too long, not there, or a loop of links.
            ImageError::Io { source, .. } if ErrorKind::of_io(source) != ErrorKind::Internal => {
                match ErrorKind::of_io(source) {
                    ErrorKind::InvalidInput => ErrorKind::NotFound,
                    other => other,
                }
            }
            ImageError::PullFailed { .. } => ErrorKind::Upstream,
            e if e.is_client_error() => ErrorKind::InvalidInput,
            _ => ErrorKind::Internal,
        }
    }
}
