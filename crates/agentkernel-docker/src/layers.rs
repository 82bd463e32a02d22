//! Snapshots on container engines: a capture is the engine's commit of the sandbox's container
//! (its image and everything it wrote, as one image `agentkernel-layer:<id>`, paused for the
//! commit when it runs), and a sandbox that starts from it is created from that image under
//! its own writable layer. Export is the engine's export of the container's filesystem.
//!
//! Committed images carry the container's labels, this state directory's among them, so
//! `list_layers` names only this state directory's layers.

use crate::images::api_message;
use crate::{Client, DockerError, LABEL_HOME, Result};
use agentkernel_core::SandboxSpec;
use agentkernel_core::backend::Captured;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The repository of committed layers; the tag is the capture's id.
const LAYER_REPO: &str = "agentkernel-layer";

/// The image a sandbox's container is made from: the top captured layer (which holds the
/// image and every layer below it), else the image.
pub(crate) fn image_of<'a>(spec: &'a SandboxSpec, image_id: &'a str) -> &'a str {
    spec.layers.first().map_or(image_id, String::as_str)
}

/// A layer's name as recorded, from the name an engine lists (Podman prefixes `localhost/`).
fn layer_name(tag: &str) -> Option<String> {
    let tag = tag.strip_prefix("localhost/").unwrap_or(tag);
    let id = tag.strip_prefix(LAYER_REPO)?.strip_prefix(':')?;
    Some(format!("{LAYER_REPO}:{id}"))
}

impl Client {
    /// The id of sandbox `name`'s container, if it has one.
    async fn container_of(&self, docker: &bollard::Docker, name: &str) -> Result<Option<String>> {
        Ok(self
            .list(docker, Some(name))
            .await?
            .into_iter()
            .find_map(|c| c.id))
    }

    /// Commits sandbox `spec.name`'s container as layer `agentkernel-layer:<id>`, pausing it
    /// for the commit when it runs. A sandbox without a container (never started) wrote
    /// nothing: its layers are what it started from.
    pub fn capture(&self, spec: &SandboxSpec, running: bool, id: &str) -> Result<Captured> {
        let docker = self.docker()?;
        self.block(async {
            let Some(container) = self.container_of(docker, &spec.name).await? else {
                return Ok(Captured {
                    layers: spec.layers.clone(),
                    bytes: 0,
                    frozen: Duration::ZERO,
                });
            };
            let size = docker
                .inspect_container(
                    &container,
                    Some(bollard::query_parameters::InspectContainerOptions { size: true }),
                )
                .await
                .ok()
                .and_then(|c| c.size_rw)
                .unwrap_or(0);
            let options = bollard::query_parameters::CommitContainerOptions {
                container: Some(container.clone()),
                repo: Some(LAYER_REPO.to_string()),
                tag: Some(id.to_string()),
                comment: Some(format!("agentkernel snapshot of sandbox {}", spec.name)),
                pause: running,
                ..Default::default()
            };
            let began = Instant::now();
            docker
                .commit_container(options, bollard::models::ContainerConfig::default())
                .await
                .map_err(self.api(format!("commit container {container}")))?;
            let took = began.elapsed();
            let layer = format!("{LAYER_REPO}:{id}");
            // Podman's inspect sometimes reports `SizeRw` 0 for a container that wrote files;
            // the committed layer's own size (the newest entry of its history) is measured.
            let committed = docker
                .image_history(&layer)
                .await
                .ok()
                .and_then(|history| history.first().map(|top| top.size))
                .unwrap_or(0);
            Ok(Captured {
                layers: vec![layer],
                bytes: u64::try_from(size.max(committed)).unwrap_or(0),
                frozen: if running { took } else { Duration::ZERO },
            })
        })
    }

    /// The size of what container `id` wrote (its writable layer), as the engine measures it.
    pub fn written_bytes(&self, id: &str) -> Option<u64> {
        let docker = self.docker().ok()?;
        self.block(async {
            let inspect = docker
                .inspect_container(
                    id,
                    Some(bollard::query_parameters::InspectContainerOptions { size: true }),
                )
                .await
                .ok()?;
            inspect.size_rw.and_then(|n| u64::try_from(n).ok())
        })
    }

    /// Unpauses a container a commit left paused (an engine that died mid-commit).
    pub fn settle_capture(&self, container: &str) -> Result<()> {
        let docker = self.docker()?;
        self.block(async {
            let paused = docker
                .inspect_container(container, None)
                .await
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.paused)
                .unwrap_or(false);
            if paused {
                docker
                    .unpause_container(container)
                    .await
                    .map_err(self.api(format!("unpause container {container}")))?;
            }
            Ok(())
        })
    }

    /// Removes a committed layer; gone already is fine.
    pub fn remove_layer(&self, layer: &str) -> Result<()> {
        let docker = self.docker()?;
        self.block(async {
            let options = bollard::query_parameters::RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            };
            match docker.remove_image(layer, Some(options), None).await {
                Ok(_) => Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(()),
                Err(e) => Err(DockerError::Api {
                    backend: self.name(),
                    action: format!("remove layer {layer}"),
                    message: api_message(e),
                }),
            }
        })
    }

    /// This state directory's committed layers.
    pub fn list_layers(&self) -> Vec<String> {
        let Ok(docker) = self.docker() else {
            return Vec::new();
        };
        self.block(async {
            let options = bollard::query_parameters::ListImagesOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("{LABEL_HOME}={}", self.home_hash)],
                )])),
                ..Default::default()
            };
            let Ok(images) = docker.list_images(Some(options)).await else {
                return Vec::new();
            };
            let mut layers: Vec<String> = images
                .into_iter()
                .flat_map(|i| i.repo_tags)
                .filter_map(|t| layer_name(&t))
                .collect();
            layers.sort();
            layers.dedup();
            layers
        })
    }

    /// Writes the sandbox's filesystem as the engine exports it (a tar stream) to `out`. A
    /// sandbox without a container gets a container made for the export (never started)
    /// and removed after.
    pub fn export(
        &self,
        spec: &SandboxSpec,
        image_id: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let docker = self.docker()?;
        self.block(async {
            let (container, made) = match self.container_of(docker, &spec.name).await? {
                Some(id) => (id, false),
                None => {
                    let body = bollard::models::ContainerCreateBody {
                        image: Some(image_of(spec, image_id).to_string()),
                        cmd: Some(vec!["/nonexistent".to_string()]),
                        labels: Some(self.base_labels()),
                        ..Default::default()
                    };
                    let id = docker
                        .create_container(
                            None::<bollard::query_parameters::CreateContainerOptions>,
                            body,
                        )
                        .await
                        .map_err(self.api("create a container to export"))?
                        .id;
                    (id, true)
                }
            };
            let mut written = 0u64;
            let mut stream = docker.export_container(&container);
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        if let Err(source) = out.write_all(&bytes) {
                            failed = Some(DockerError::Io {
                                backend: self.name(),
                                context: "write the export".to_string(),
                                source,
                            });
                            break;
                        }
                        written += bytes.len() as u64;
                    }
                    Err(e) => {
                        failed = Some(self.api(format!("export container {container}"))(e));
                        break;
                    }
                }
            }
            drop(stream);
            if made {
                crate::run::remove(docker, &container).await;
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(written),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_names_become_recorded_names() {
        assert_eq!(
            layer_name("localhost/agentkernel-layer:abc").as_deref(),
            Some("agentkernel-layer:abc")
        );
        assert_eq!(
            layer_name("agentkernel-layer:abc").as_deref(),
            Some("agentkernel-layer:abc")
        );
        assert_eq!(layer_name("python:3.12"), None);
        assert_eq!(layer_name("agentkernel-layerx:abc"), None);
    }
}
