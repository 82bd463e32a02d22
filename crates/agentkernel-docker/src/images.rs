//! Images: `--image` means the same on every backend.
//!
//! - Registry references are pulled by the engine itself (`POST /images/create?fromImage=`),
//!   so its own mirrors and settings apply; an image the engine has is used as it is, as
//!   `docker run` does.
//! - Directories (`--image /dir`, `./dir`) are imported as one-layer images
//!   (`POST /images/create?fromSrc=-`), tagged `agentkernel-local:dir-<digest>` where the
//!   digest covers the directory's listing (paths, types, modes, owners, sizes, mtimes and
//!   link targets), so an unchanged directory is imported once and a changed one again. The
//!   archive never holds a device node, and is read without following links (see [`import`]).
//! - OCI layouts (`oci:/path[:tag]`) are loaded as a docker-archive made of the layout's own
//!   blobs (`POST /images/load`); the image id is the config digest, so they load once. The
//!   blobs are opened beneath the layout as regular files only and sent byte for byte (the
//!   engine checks them against the config's diff ids); a device node in those layers meets
//!   the engine's device cgroup.
//!
//! Each step stops when the user asks (`agentkernel_image::interrupt`).
//! - `host`: the host image's skeleton (agentkernel's own, with copies of an allowlist of
//!   `/etc`) is imported like a directory, and the host's system directories are bind-mounted
//!   read-only over it at start, as the native backend does.

mod import;

use crate::{Client, DockerError, Result};
use agentkernel_core::ImageRef;
use agentkernel_image::{ImageConfig, ImageStore, Rootfs};
use bytes::Bytes;
use futures_util::StreamExt;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The repository local images are tagged in.
const LOCAL_REPO: &str = "agentkernel-local";

impl Client {
    /// Makes sure the engine has the image and describes it: `id` is the engine's image id
    /// (what containers are created from), `host_binds` the host directories of `host`.
    pub fn resolve_image(&self, image: &ImageRef, store: &ImageStore) -> Result<Rootfs> {
        match image {
            ImageRef::Registry { reference } => self.registry_image(reference),
            ImageRef::Directory { .. } => {
                let local = store.resolve(image)?;
                let dir = local.lower_dirs.first().cloned().unwrap_or_default();
                let id = self.directory_image(&dir, &image.display())?;
                Ok(engine_rootfs(id, Vec::new(), local.config))
            }
            ImageRef::Host => {
                let local = store.resolve(image)?;
                let skeleton = local.lower_dirs.first().cloned().unwrap_or_default();
                let id = self.directory_image(&skeleton, "host")?;
                Ok(engine_rootfs(id, local.host_binds, local.config))
            }
            ImageRef::OciLayout { path, tag } => {
                self.layout_image(path, tag.as_deref(), &image.display())
            }
        }
    }

    fn registry_image(&self, reference: &str) -> Result<Rootfs> {
        let docker = self.docker()?;
        let backend = self.name();
        self.block(interruptible(async {
            let inspected = match docker.inspect_image(reference).await {
                Ok(i) => i,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                }) => {
                    let options = bollard::query_parameters::CreateImageOptions {
                        from_image: Some(reference.to_string()),
                        ..Default::default()
                    };
                    let mut progress = docker.create_image(Some(options), None, None);
                    while let Some(item) = progress.next().await {
                        if let Err(e) = item {
                            return Err(DockerError::Pull {
                                backend,
                                image: reference.to_string(),
                                message: format!(
                                    "{}: check the name, and the engine's registry mirrors and network",
                                    api_message(e)
                                ),
                            });
                        }
                    }
                    docker
                        .inspect_image(reference)
                        .await
                        .map_err(|e| DockerError::Pull {
                            backend,
                            image: reference.to_string(),
                            message: api_message(e),
                        })?
                }
                Err(e) => return Err(self.api(format!("inspect image {reference}"))(e)),
            };
            Ok(inspected_rootfs(inspected, reference))
        }))
    }

    /// Imports `dir` (once per content) and returns the image id.
    fn directory_image(&self, dir: &Path, shown: &str) -> Result<String> {
        let docker = self.docker()?;
        let backend = self.name();
        let load_err = |message: String| DockerError::Load {
            backend,
            image: shown.to_string(),
            message,
        };
        let digest = listing_digest(dir)
            .map_err(|e| load_err(format!("cannot read {}: {e}", dir.display())))?;
        let tag = format!("dir-{}", &digest[..16]);
        let name = format!("{LOCAL_REPO}:{tag}");
        self.block(interruptible(async {
            if let Ok(img) = docker.inspect_image(&name).await {
                return Ok(img.id.unwrap_or(name));
            }
            let root = dir.to_path_buf();
            let (stream, writer) = tar_stream(move |builder| {
                let archived = import::append_tree(builder, &root)?;
                if archived.skipped > 0 {
                    tracing::warn!(
                        directory = %root.display(),
                        skipped = archived.skipped,
                        "device nodes and sockets were left out of the image: images never bring devices"
                    );
                }
                Ok(())
            });
            let body = bollard::body_try_stream(stream);
            let options = bollard::query_parameters::CreateImageOptions {
                from_src: Some("-".to_string()),
                // The tag inside `repo` (the API allows both): Podman's service ignores a
                // separate `tag` and names the import `:latest`.
                repo: Some(name.clone()),
                ..Default::default()
            };
            let mut progress = docker.create_image(Some(options), Some(body), None);
            let mut failed = None;
            while let Some(item) = progress.next().await {
                if let Err(e) = item {
                    failed = Some(api_message(e));
                }
            }
            let written = writer.await;
            if let Ok(Err(e)) = written {
                return Err(load_err(format!("reading {}: {e}", dir.display())));
            }
            if let Some(message) = failed {
                return Err(load_err(message));
            }
            let img = docker
                .inspect_image(&name)
                .await
                .map_err(|e| load_err(api_message(e)))?;
            Ok(img.id.unwrap_or(name))
        }))
    }

    fn layout_image(&self, layout: &Path, tag: Option<&str>, shown: &str) -> Result<Rootfs> {
        let docker = self.docker()?;
        let backend = self.name();
        let blobs = agentkernel_image::image_blobs(layout, tag)?;
        let id = format!("sha256:{}", blobs.config_hex);
        let load_err = |message: String| DockerError::Load {
            backend,
            image: shown.to_string(),
            message,
        };
        let agentkernel_image::LayoutImage {
            config_hex,
            config_bytes,
            layers,
            ..
        } = blobs;
        self.block(interruptible(async {
            if docker.inspect_image(&id).await.is_err() {
                let repo_tag = format!("{LOCAL_REPO}:oci-{}", &config_hex[..16]);
                let names: Vec<String> =
                    (0..layers.len()).map(|i| format!("layer{i}.tar")).collect();
                let manifest = serde_json::json!([{
                    "Config": "config.json",
                    "RepoTags": [repo_tag],
                    "Layers": names,
                }]);
                let (stream, writer) = tar_stream(move |builder| {
                    append_bytes(builder, "manifest.json", manifest.to_string().as_bytes())?;
                    append_bytes(builder, "config.json", &config_bytes)?;
                    for (name, layer) in names.iter().zip(layers) {
                        let mut header = tar::Header::new_gnu();
                        header.set_size(layer.size);
                        header.set_mode(0o644);
                        header.set_mtime(0);
                        let data = import::Exact::new(layer.file, layer.size);
                        builder.append_data(&mut header, name, data).map_err(|e| {
                            std::io::Error::new(e.kind(), format!("layer {}: {e}", layer.digest))
                        })?;
                    }
                    Ok(())
                });
                let options = bollard::query_parameters::ImportImageOptions {
                    quiet: true,
                    ..Default::default()
                };
                let body = bollard::body_try_stream(stream);
                let mut progress = docker.import_image(options, body, None);
                let mut failed = None;
                while let Some(item) = progress.next().await {
                    match item {
                        Err(e) => failed = Some(api_message(e)),
                        Ok(info) => {
                            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                                failed = Some(detail);
                            }
                        }
                    }
                }
                if let Ok(Err(e)) = writer.await {
                    return Err(load_err(format!("reading {}: {e}", layout.display())));
                }
                if let Some(message) = failed {
                    return Err(load_err(message));
                }
            }
            let img = docker
                .inspect_image(&id)
                .await
                .map_err(|e| load_err(api_message(e)))?;
            Ok(inspected_rootfs(img, &id))
        }))
    }
}

/// Runs an engine request until it completes or the user asks to stop (Ctrl-C, SIGTERM).
async fn interruptible<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    agentkernel_image::interrupt::until_stopped(work).await
}

fn engine_rootfs(id: String, host_binds: Vec<PathBuf>, config: ImageConfig) -> Rootfs {
    Rootfs {
        lower_dirs: Vec::new(),
        host_binds,
        config,
        id,
    }
}

/// The engine's description of an image as a Rootfs (id and run configuration).
fn inspected_rootfs(img: bollard::models::ImageInspect, fallback: &str) -> Rootfs {
    let c = img.config.unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    engine_rootfs(
        img.id.unwrap_or_else(|| fallback.to_string()),
        Vec::new(),
        ImageConfig {
            env: c.env.unwrap_or_default(),
            workdir: non_empty(c.working_dir),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            user: non_empty(c.user),
        },
    )
}

/// The engine's message of an API error.
pub(crate) fn api_message(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        bollard::errors::Error::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

/// sha256 over the listing of `dir`: every entry's relative path, type, mode, owner, size,
/// modification time and link target, in a fixed order. Contents are not read: a change to
/// a file changes its mtime.
fn listing_digest(dir: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir.join(&rel))?.collect::<std::io::Result<Vec<_>>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(dir.join(&path))?;
            hasher.update(path.as_os_str().as_encoded_bytes());
            hasher.update(
                format!(
                    "\0{:o}:{}:{}:{}:{}.{}\0",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec()
                )
                .as_bytes(),
            );
            if m.file_type().is_symlink() {
                hasher.update(
                    std::fs::read_link(dir.join(&path))?
                        .as_os_str()
                        .as_encoded_bytes(),
                );
            } else if m.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Sends what a tar builder writes as chunks of a request body.
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the engine stopped reading"))
    }
}

/// The chunks of the tar archive `build` writes (on a thread of its own), for a request body
/// (`bollard::body_try_stream`), and that thread's result.
pub(crate) fn tar_stream(
    build: impl FnOnce(&mut tar::Builder<ChannelWriter>) -> std::io::Result<()> + Send + 'static,
) -> (
    impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut builder = tar::Builder::new(ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        });
        let result = build(&mut builder).and_then(|()| builder.finish());
        match builder.into_inner() {
            Ok(mut w) => {
                let flushed = w.flush();
                if let Err(e) = &result {
                    let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                }
                result.and(flushed)
            }
            Err(e) => Err(e),
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (stream, writer)
}

/// Appends a regular file of `data` named `name`.
pub(crate) fn append_bytes<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder.append_data(&mut header, name, data)
}
