//! The Policy as a container configuration: what the engine enforces, and what is refused.
//!
//! | Policy field | Engine setting |
//! |---|---|
//! | network none / allowlist / full | `NetworkMode: none` always; a networked container's namespace is then routed to the host's egress proxy by the engine (`Backend::network_namespace`), as native's is; gVisor (its own network stack) refuses it |
//! | read_only_root | `ReadonlyRootfs` (and a tmpfs `/tmp` always, as native) |
//! | mounts | `Mounts` of type bind, read-only where the policy says |
//! | masked_paths | `Tmpfs` read-only at each path (after the binds: the engine mounts by depth; Podman with `notmpcopyup`) |
//! | disk_mb | `/tmp` tmpfs `size=`; `StorageOpt size` on the writable layer where the storage driver can (`disk.rs`) |
//! | devices | none added: `Devices`, `DeviceCgroupRules` empty and `Privileged` false, so the engine's default device cgroup (its allow-list) applies; gVisor has no host devices |
//! | capabilities | `CapDrop: ALL` + `CapAdd` of the kept ones |
//! | seccomp | `SecurityOpt seccomp=` the profile from the native lists |
//! | no_new_privs | `SecurityOpt no-new-privileges` |
//! | user | `User: uid:gid` |
//! | memory / pids / vcpus | `Memory` (= `MemorySwap`, no swap) / `PidsLimit` / `NanoCpus` |
//! | pids on gVisor | `Ulimits nproc` (counted by gVisor's own kernel) + `PidsLimit` as a backstop |
//! | allow_hosts / deny_hosts / block_private | the egress proxy's rules, as on native |

use crate::{Client, DockerError, Flavor, INIT_PATH, Result};
use agentkernel_core::SandboxSpec;
use agentkernel_core::policy::{NetworkMode, Policy, SeccompMode};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use std::collections::HashMap;
use std::path::PathBuf;

/// Refuses what this engine cannot enforce, naming the field and the backend that can.
pub(crate) fn check(flavor: Flavor, policy: &Policy) -> Result<()> {
    let backend = flavor.name();
    if let Some(p) = policy.masked_paths.iter().find(|p| {
        !p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
    }) {
        return Err(DockerError::Refused {
            backend,
            field: "masked_paths",
            reason: format!("{} is not an absolute path inside the sandbox", p.display()),
            alternative: "absolute paths without '..'",
        });
    }
    if flavor == Flavor::Gvisor && policy.network != NetworkMode::None {
        return Err(DockerError::Refused {
            backend,
            field: "network",
            reason: "the gVisor runtime here (Debian's runsc of 2022-12) starts no container with networking on".to_string(),
            alternative: "--no-network (or -p restrictive) with gvisor, or -B docker / -B native for network access",
        });
    }
    Ok(())
}

impl Client {
    /// The seccomp option for the engine: Docker takes the profile inline, Podman's
    /// compatibility service takes a path to it (written once under the state directory).
    fn seccomp_option(&self, mode: SeccompMode) -> Result<String> {
        let profile = agentkernel_seccomp::docker_profile(mode).to_string();
        if self.flavor != Flavor::Podman {
            return Ok(format!("seccomp={profile}"));
        }
        let dir = self.profile_dir();
        let name = match mode {
            SeccompMode::DenyList => "seccomp-denylist",
            SeccompMode::AllowList => "seccomp-allowlist",
        };
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(profile.as_bytes()))
        };
        let path: PathBuf = dir.join(format!("{name}-{}.json", &digest[..12]));
        if !path.exists() {
            let io = |context: String| {
                move |source| DockerError::Io {
                    backend: "podman",
                    context,
                    source,
                }
            };
            std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&tmp, &profile).map_err(io(format!("write {}", tmp.display())))?;
            std::fs::rename(&tmp, &path).map_err(io(format!("write {}", path.display())))?;
        }
        Ok(format!("seccomp={}", path.display()))
    }

    /// The container's tmpfs mounts: `/tmp` of the disk limit's size, and an empty read-only one
    /// over each masked path. Engines mount these after the binds (they sort every mount by
    /// depth), so a masked path inside a bind is covered. Podman fills a tmpfs with what was
    /// at its path unless told `notmpcopyup` (Docker copies only when told `tmpcopyup`).
    fn tmpfs_mounts(&self, policy: &Policy) -> HashMap<String, String> {
        let mut tmpfs = HashMap::from([(
            "/tmp".to_string(),
            format!("rw,nosuid,nodev,mode=1777,size={}m", policy.limits.disk_mb),
        )]);
        let mut hidden = "ro,nosuid,nodev,noexec,mode=0555,size=4k".to_string();
        if self.flavor == Flavor::Podman {
            hidden.push_str(",notmpcopyup");
        }
        for path in &policy.masked_paths {
            tmpfs.insert(path.display().to_string(), hidden.clone());
        }
        tmpfs
    }

    /// The container for `spec`: `cmd` runs under agentkernel's executable (mounted at
    /// INIT_PATH), with the policy as the host configuration.
    pub(crate) fn container_body(
        &self,
        spec: &SandboxSpec,
        image: &str,
        host_binds: &[PathBuf],
        entrypoint: Vec<String>,
        labels: HashMap<String, String>,
        attach: bool,
    ) -> Result<ContainerCreateBody> {
        let policy = &spec.policy;
        check(self.flavor, policy)?;
        let mut mounts = vec![Mount {
            target: Some(INIT_PATH.to_string()),
            source: Some(self.init_exe.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        }];
        // The host image: its system directories, read-only at the same place.
        for dir in host_binds {
            mounts.push(Mount {
                target: Some(dir.display().to_string()),
                source: Some(dir.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        for m in &policy.mounts {
            mounts.push(Mount {
                target: Some(m.target.display().to_string()),
                source: Some(m.source.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            });
        }
        let mut security_opt = vec![self.seccomp_option(policy.seccomp)?];
        if policy.no_new_privs {
            security_opt.push("no-new-privileges".to_string());
        }
        let memory = (policy.limits.memory_mb * 1024 * 1024) as i64;
        let host_config = HostConfig {
            // Networked or not, the container gets no network of the engine's: the egress
            // proxy is its only way out.
            network_mode: Some("none".to_string()),
            readonly_rootfs: Some(policy.read_only_root),
            tmpfs: Some(self.tmpfs_mounts(policy)),
            // No host device is ever added and the engine's default device cgroup (its
            // allow-list of null, zero, full, random, urandom, tty, ptmx and the ptys) stays.
            privileged: Some(false),
            devices: None,
            device_cgroup_rules: None,
            device_requests: None,
            mounts: Some(mounts),
            cap_drop: Some(vec!["ALL".to_string()]),
            cap_add: Some(policy.capabilities.clone()),
            security_opt: Some(security_opt),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(self.flavor.host_pids_limit(policy.limits.pids)),
            ulimits: self.flavor.nproc_ulimit(policy.limits.pids),
            nano_cpus: (policy.limits.vcpus > 0.0)
                .then_some((policy.limits.vcpus * 1_000_000_000.0) as i64),
            ipc_mode: Some("private".to_string()),
            init: Some(false),
            auto_remove: Some(false),
            runtime: self.flavor.runtime().map(str::to_string),
            ..Default::default()
        };
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok(ContainerCreateBody {
            image: Some(image.to_string()),
            hostname: Some(spec.name.clone()),
            user: Some(format!("{}:{}", policy.user.uid, policy.user.gid)),
            env: Some(env),
            working_dir: Some(spec.workdir.clone()),
            entrypoint: Some(entrypoint),
            cmd: Some(Vec::new()),
            labels: Some(labels),
            attach_stdout: Some(attach),
            attach_stderr: Some(attach),
            open_stdin: Some(false),
            tty: Some(false),
            stop_signal: Some("SIGTERM".to_string()),
            host_config: Some(host_config),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: Policy) -> SandboxSpec {
        SandboxSpec {
            name: "t".into(),
            image: agentkernel_core::ImageRef::Host,
            backend: agentkernel_core::BackendKind::Docker,
            policy,
            env: Vec::new(),
            workdir: "/".into(),
            labels: Default::default(),
            description: None,
            secrets: Vec::new(),
            secret_files: Vec::new(),
            placeholder_secrets: false,
            layers: Vec::new(),
            ports: Vec::new(),
            project: None,
        }
    }

    /// No profile gives a container a host device, a device cgroup rule or privileges; /tmp
    /// is sized by the disk limit and masked paths are read-only tmpfs mounts.
    #[test]
    fn containers_get_no_devices_and_sized_tmp() {
        let home = tempfile::tempdir().expect("home");
        for flavor in [Flavor::Docker, Flavor::Podman, Flavor::Gvisor] {
            let client = Client::new(flavor, home.path(), None);
            for profile in [
                agentkernel_core::Profile::Permissive,
                agentkernel_core::Profile::Moderate,
                agentkernel_core::Profile::Restrictive,
            ] {
                let mut policy = Policy::for_profile(profile);
                policy.network = NetworkMode::None;
                policy.masked_paths = vec![PathBuf::from("/workspace/.agentkernel")];
                let body = client
                    .container_body(
                        &spec(policy.clone()),
                        "img",
                        &[],
                        vec![],
                        HashMap::new(),
                        false,
                    )
                    .expect("body");
                let hc = body.host_config.expect("host config");
                assert_eq!(hc.privileged, Some(false), "{profile}");
                assert!(hc.devices.is_none_or(|d| d.is_empty()), "{profile}");
                assert!(hc.device_cgroup_rules.is_none_or(|d| d.is_empty()));
                assert!(hc.device_requests.is_none_or(|d| d.is_empty()));
                let tmp = hc.tmpfs.as_ref().and_then(|t| t.get("/tmp")).cloned();
                assert_eq!(
                    tmp.as_deref(),
                    Some(
                        format!("rw,nosuid,nodev,mode=1777,size={}m", policy.limits.disk_mb)
                            .as_str()
                    )
                );
                let masked = hc
                    .tmpfs
                    .as_ref()
                    .and_then(|t| t.get("/workspace/.agentkernel"))
                    .expect("masked path mounted");
                assert!(masked.starts_with("ro,"), "{masked}");
                assert_eq!(masked.contains("notmpcopyup"), flavor == Flavor::Podman);
            }
        }
    }

    #[test]
    fn relative_masked_paths_are_refused() {
        let mut p = Policy::for_profile(agentkernel_core::Profile::Moderate);
        for bad in ["relative/dir", "/a/../b"] {
            p.masked_paths = vec![PathBuf::from(bad)];
            let e = check(Flavor::Docker, &p).expect_err("refused");
            assert!(e.to_string().contains("masked_paths"), "{e}");
        }
    }

    #[test]
    fn gvisor_refuses_network() {
        let p = Policy::for_profile(agentkernel_core::Profile::Moderate);
        let e = check(Flavor::Gvisor, &p).expect_err("refused");
        assert!(e.to_string().contains("network") && e.to_string().contains("--no-network"));
        assert!(check(Flavor::Docker, &p).is_ok());
        let r = Policy::for_profile(agentkernel_core::Profile::Restrictive);
        assert!(check(Flavor::Gvisor, &r).is_ok());
    }
}
