//! Root filesystems for agentkernel sandboxes.
//!
//! [`ImageStore::resolve`] turns an [`ImageRef`] into a [`Rootfs`]: the overlayfs lower
//! directories (and, for the host image, read-only host binds) that a backend stacks under a
//! private upper directory. Preparing an image (unpacking layers, building the host skeleton)
//! happens once; afterwards resolving it is a handful of `stat` calls and one small read, since
//! it sits on the path of every `agentkernel run`.
//!
//! Store layout under the root (`~/.agentkernel/images`):
//! - `layers/sha256-<hex>/` — one unpacked layer per compressed layer digest;
//! - `oci/<hex>.json` — a resolved image (its layers and config) by manifest digest;
//! - `host/rootfs/` — the skeleton of the `host` image, `host/stamp.v1` its build stamp;
//! - `.tmp-*` entries anywhere — staging directories, removed once abandoned.

#![forbid(unsafe_code)]

mod auth;
mod blob;
mod directory;
mod error;
mod extract;
#[cfg(test)]
mod fuzz;
mod host;
pub mod interrupt;
mod layout;
mod limits;
mod prune;
mod pull;
mod record;
mod registry;
mod staging;
pub mod testing;
mod unpack;

pub use agentkernel_core::ImageRef;
pub use error::ImageError;
pub use layout::{LayoutBlob, LayoutImage, image_blobs};
pub use limits::UnpackLimits;
pub use prune::Pruned;
pub use registry::{ImageSummary, RegistrySettings, canonical_name};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How a sandbox should run by default, from the image's OCI config where there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// What a backend mounts as a sandbox's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// overlayfs lower directories, TOP layer first (as overlay's `lowerdir=` wants them).
    pub lower_dirs: Vec<PathBuf>,
    /// Host directories to bind-mount read-only on top of the overlay at the same path (host
    /// image only).
    pub host_binds: Vec<PathBuf>,
    /// From the OCI image config where there is one.
    pub config: ImageConfig,
    /// A stable identifier of the content for state and listings: `sha256:<manifest digest>`,
    /// `host`, or the directory's canonical path.
    pub id: String,
}

/// The image store: prepared layers, resolved OCI images and the host skeleton.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    registries: RegistrySettings,
    /// Caps on what unpacking one layer and one image may write.
    limits: UnpackLimits,
    /// Draw download progress on stderr (only ever when it is a terminal).
    progress: bool,
}

impl ImageStore {
    /// A store rooted at `root` (normally `~/.agentkernel/images`). Nothing is created until an
    /// image needs preparing.
    pub fn new(root: PathBuf) -> ImageStore {
        use std::io::IsTerminal as _;
        ImageStore {
            root,
            registries: RegistrySettings::default(),
            limits: UnpackLimits::default(),
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// No progress bars, even on a terminal (`--quiet`).
    pub fn quiet(mut self) -> ImageStore {
        self.progress = false;
        self
    }

    /// Uses these registry settings (mirrors, insecure registries) for pulls.
    pub fn with_registries(mut self, registries: RegistrySettings) -> ImageStore {
        self.registries = registries;
        self
    }

    /// Caps what unpacking a layer and an image may write (`[images] max_layer_mb` and
    /// `max_image_mb`); an image that would cross one is refused and nothing of it is kept.
    pub fn with_unpack_limits(mut self, limits: UnpackLimits) -> ImageStore {
        self.limits = limits;
        self
    }

    /// Where the store keeps its data.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pulls a registry image again (even when the store has it) and prepares it.
    pub fn pull(&self, reference: &str) -> Result<Rootfs, ImageError> {
        registry::pull(&self.root, reference, &self.settings())
    }

    /// Forgets a pulled reference (its content goes at the next prune). Returns whether the
    /// store had it.
    pub fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        prune::remove(&self.root, &canonical_name(reference)?)
    }

    /// Forgets every pulled reference not in `keep_references` (canonical names) and removes
    /// whatever neither the references left nor `keep_rootfs` reach.
    pub fn prune(
        &self,
        keep_references: &std::collections::HashSet<String>,
        keep_rootfs: &[Rootfs],
    ) -> Result<Pruned, ImageError> {
        prune::prune(&self.root, keep_references, keep_rootfs)
    }

    /// The registry images in the store; with `all`, also prepared images no reference names
    /// (from `oci:` layouts, or forgotten by `remove` and not yet pruned).
    pub fn list(&self, all: bool) -> Vec<ImageSummary> {
        registry::list(&self.root, all)
    }

    /// Prepares the image if needed and describes its root filesystem.
    pub fn resolve(&self, image: &ImageRef) -> Result<Rootfs, ImageError> {
        match image {
            ImageRef::Host => host::resolve(&self.root.join("host"), Path::new("/")),
            ImageRef::Directory { path } => directory::resolve(path),
            ImageRef::OciLayout { path, tag } => {
                layout::resolve(&self.root, path, tag.as_deref(), self.limits)
            }
            ImageRef::Registry { reference } => {
                registry::resolve(&self.root, reference, &self.settings())
            }
        }
    }

    fn settings(&self) -> registry::PullSettings<'_> {
        registry::PullSettings {
            registries: &self.registries,
            limits: self.limits,
            progress: self.progress,
        }
    }
}
