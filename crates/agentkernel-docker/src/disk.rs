//! The disk limit on a container: `/tmp` is a tmpfs of the limit's size (`policy.rs`), and the
//! container's writable layer gets `HostConfig.StorageOpt size` where the engine's storage
//! driver can enforce one (overlay2 on xfs mounted with `pquota`, btrfs, zfs, devicemapper).
//!
//! Whether it can is learnt from the engine itself, once: a create with the option is refused
//! by an engine that cannot (Docker: "--storage-opt is supported only for overlay over xfs with
//! 'pquota' mount option"), and the answer is kept in the state directory so that later
//! processes do not ask again. Then:
//! - a disk limit the user asked for (`limits.disk_explicit`) is refused, naming the backend and
//!   what it would need: never applied to `/tmp` only while the root layer stays unlimited;
//! - the profile's default limit applies to `/tmp` alone (docs/container-backends.md says so).
//!
//! An asked-for limit is always sent to the engine, whatever the kept answer says, so an engine
//! that gained support is used as soon as it has it.

use crate::{Client, DockerError};
use agentkernel_core::policy::Limits;
use bollard::models::ContainerCreateBody;
use std::collections::HashMap;
use std::path::PathBuf;

/// The kept answer's value when the engine refused a size.
const UNSUPPORTED: &str = "unsupported";

/// Whether an engine's error answers a create refused because of its `StorageOpt`.
pub(crate) fn refuses_storage_opt(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("storage-opt")
        || m.contains("storage opt")
        || m.contains("storageopt")
        || (m.contains("size") && m.contains("quota"))
}

impl Client {
    /// Where the engine's answer is kept: one file per engine address and flavor.
    fn root_size_answer(&self) -> PathBuf {
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(self.endpoint.host.as_bytes()))
        };
        self.profile_dir()
            .join(format!("root-size-{}-{}", self.name(), &digest[..12]))
    }

    fn root_size_refused_before(&self) -> bool {
        std::fs::read_to_string(self.root_size_answer()).is_ok_and(|s| s.trim() == UNSUPPORTED)
    }

    fn remember_root_size_refused(&self) {
        let path = self.root_size_answer();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(path, UNSUPPORTED);
    }

    /// Adds the root layer's size to `body` unless the engine is known to refuse it and the
    /// limit is the profile's default. Returns whether it was added.
    pub(crate) fn size_root_layer(&self, body: &mut ContainerCreateBody, limits: &Limits) -> bool {
        if !limits.disk_explicit && self.root_size_refused_before() {
            return false;
        }
        if let Some(hc) = body.host_config.as_mut() {
            hc.storage_opt = Some(HashMap::from([(
                "size".to_string(),
                format!("{}M", limits.disk_mb),
            )]));
            return true;
        }
        false
    }

    /// After the engine refused the size in `body`: remembers it, and either drops the size
    /// (a default limit; returns Ok) or refuses the sandbox (an asked-for one).
    pub(crate) fn root_size_refused(
        &self,
        body: &mut ContainerCreateBody,
        limits: &Limits,
        message: &str,
    ) -> Result<(), DockerError> {
        self.remember_root_size_refused();
        if limits.disk_explicit {
            return Err(DockerError::Refused {
                backend: self.name(),
                field: "the disk limit",
                reason: format!(
                    "its storage driver cannot limit a container's writable layer ({message}); it would need overlay2 on an xfs filesystem mounted with the pquota option, or the btrfs, zfs or devicemapper driver"
                ),
                alternative: "-B native (which enforces it on every writable path), an engine with such a driver, or no --disk / disk_mb",
            });
        }
        if let Some(hc) = body.host_config.as_mut() {
            hc.storage_opt = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Flavor;
    use agentkernel_core::Profile;
    use agentkernel_core::policy::Policy;
    use bollard::models::HostConfig;

    fn body() -> ContainerCreateBody {
        ContainerCreateBody {
            host_config: Some(HostConfig::default()),
            ..Default::default()
        }
    }

    #[test]
    fn engine_refusals_are_recognised() {
        assert!(refuses_storage_opt(
            "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
        ));
        assert!(!refuses_storage_opt("no such image: busybox"));
        assert!(!refuses_storage_opt(
            "Conflict. The container name is already in use"
        ));
    }

    #[test]
    fn an_asked_for_limit_is_refused_and_a_default_one_dropped_once_refused() {
        let home = tempfile::tempdir().expect("home");
        let client = Client::new(Flavor::Docker, home.path(), None);
        let default = Policy::for_profile(Profile::Moderate).limits;
        let asked = Limits {
            disk_mb: 100,
            disk_explicit: true,
            ..default
        };

        // Unknown yet: both are sent.
        let mut b = body();
        assert!(client.size_root_layer(&mut b, &default));
        let size = b
            .host_config
            .as_ref()
            .and_then(|h| h.storage_opt.as_ref())
            .and_then(|o| o.get("size").cloned());
        assert_eq!(size.as_deref(), Some("10240M"));

        // The engine refuses: the default limit is dropped from the body.
        client
            .root_size_refused(&mut b, &default, "--storage-opt is supported only for …")
            .expect("a default limit is dropped, not refused");
        assert!(
            b.host_config
                .as_ref()
                .is_some_and(|h| h.storage_opt.is_none())
        );

        // Known now: a default limit is not sent again, an asked-for one still is …
        let mut b = body();
        assert!(!client.size_root_layer(&mut b, &default));
        let mut b = body();
        assert!(client.size_root_layer(&mut b, &asked));
        // … and refused with what the engine would need.
        let e = client
            .root_size_refused(&mut b, &asked, "--storage-opt is supported only for …")
            .expect_err("an asked-for limit is refused");
        let text = e.to_string();
        assert!(
            text.contains("docker") && text.contains("pquota") && text.contains("-B native"),
            "{text}"
        );
    }
}
