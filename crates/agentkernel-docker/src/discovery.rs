//! Finding an engine the way its own tools do, and whether it answers.
//!
//! - docker and gvisor: `DOCKER_HOST`, else `unix:///var/run/docker.sock`.
//! - podman: `CONTAINER_HOST` (Podman's own variable), else the first socket that exists of
//!   `/run/podman/podman.sock` (rootful service) and `$XDG_RUNTIME_DIR/podman/podman.sock`
//!   (rootless service).

use crate::{Client, Flavor, PING_TIMEOUT};
use bollard::Docker;
use std::path::Path;

/// An engine address and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `unix:///path` or `tcp://host:port`.
    pub host: String,
    /// Where the address came from (`DOCKER_HOST`, `default socket`, …).
    pub source: String,
    flavor: Flavor,
}

impl Endpoint {
    pub fn discover(flavor: Flavor) -> Endpoint {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = |host: String, source: &str| Endpoint {
            host,
            source: source.to_string(),
            flavor,
        };
        match flavor {
            Flavor::Docker | Flavor::Gvisor => match env("DOCKER_HOST") {
                Some(host) => endpoint(host, "DOCKER_HOST"),
                None => endpoint(
                    "unix:///var/run/docker.sock".to_string(),
                    "the default socket",
                ),
            },
            Flavor::Podman => {
                if let Some(host) = env("CONTAINER_HOST") {
                    return endpoint(host, "CONTAINER_HOST");
                }
                let mut candidates = vec!["/run/podman/podman.sock".to_string()];
                if let Some(runtime) = env("XDG_RUNTIME_DIR") {
                    candidates.push(format!("{runtime}/podman/podman.sock"));
                }
                let found = candidates
                    .iter()
                    .find(|p| Path::new(p).exists())
                    .unwrap_or(&candidates[0]);
                endpoint(format!("unix://{found}"), "the default socket")
            }
        }
    }

    /// The socket path of a `unix://` address.
    pub fn socket(&self) -> Option<&str> {
        self.host.strip_prefix("unix://")
    }

    /// The engine runs on this host (its processes are in our /proc).
    pub fn is_local(&self) -> bool {
        self.socket().is_some()
    }

    pub(crate) fn connect(&self) -> Result<Docker, String> {
        let timeout = crate::REQUEST_TIMEOUT.as_secs();
        if let Some(path) = self.socket() {
            return Docker::connect_with_unix(path, timeout, &crate::API_VERSION)
                .map_err(|e| e.to_string());
        }
        if let Some(rest) = self
            .host
            .strip_prefix("tcp://")
            .or_else(|| self.host.strip_prefix("http://"))
        {
            return Docker::connect_with_http(
                &format!("http://{rest}"),
                timeout,
                &crate::API_VERSION,
            )
            .map_err(|e| e.to_string());
        }
        Err(format!(
            "unsupported address {:?} (from {}): give unix:///path/to/socket or tcp://host:port",
            self.host, self.source
        ))
    }

    /// How to get the engine answering, for error messages.
    pub fn start_hint(&self) -> String {
        match (self.flavor, self.source.as_str()) {
            (Flavor::Podman, "CONTAINER_HOST") => format!(
                "start Podman's service on it (`podman system service --time=0 {}`) or fix CONTAINER_HOST",
                self.host
            ),
            (Flavor::Podman, _) => "start Podman's service (`systemctl start podman.socket`, or `podman system service --time=0` as the user), or set CONTAINER_HOST to its socket".to_string(),
            (_, "DOCKER_HOST") => {
                "start dockerd listening there, or fix DOCKER_HOST".to_string()
            }
            _ => "start dockerd (`systemctl start docker`), or set DOCKER_HOST to its socket"
                .to_string(),
        }
    }
}

impl Client {
    /// What can be known without asking the engine: agentkernel's executable can be the
    /// containers' init, the engine is on this host and its socket exists. Asked before every
    /// operation; the engine's answer to the operation itself says the rest (the docker CLI,
    /// likewise, sends no request before `create`). `readiness` is the full check, for `doctor`.
    pub fn quick_readiness(&self) -> Result<(), String> {
        let where_ = format!("{} (from {})", self.endpoint.host, self.endpoint.source);
        // Every container bind-mounts agentkernel's own executable (and, per profile, the
        // project and the host image's directories) by host path: an engine elsewhere would
        // mount whatever its own host has there.
        if !self.endpoint.is_local() {
            return Err(format!(
                "{where_} is not a unix socket on this host: the {} backend mounts agentkernel's own executable and the sandbox's host directories into each container, so it needs the engine on this machine; point {} at its socket (unix:///…)",
                self.name(),
                self.endpoint.source
            ));
        }
        if !crate::is_static_executable(&self.init_exe) {
            return Err(format!(
                "{} is not a statically linked executable: the {} backend runs agentkernel itself as the containers' init, in images without a C library; build it as scripts/env.sh does (crt-static)",
                self.init_exe.display(),
                self.name()
            ));
        }
        if let Err(e) = &self.docker {
            return Err(format!("{where_}: {e}"));
        }
        if let Some(path) = self.endpoint.socket()
            && !Path::new(path).exists()
        {
            return Err(format!(
                "no engine socket at {where_}: {}",
                self.endpoint.start_hint()
            ));
        }
        Ok(())
    }

    /// Whether the engine answers `/_ping`, with its version; the reason and the fix when not.
    pub fn readiness(&self) -> Result<String, String> {
        self.quick_readiness()?;
        let where_ = format!("{} (from {})", self.endpoint.host, self.endpoint.source);
        let docker = match &self.docker {
            Ok(d) => d,
            Err(e) => return Err(format!("{where_}: {e}")),
        };
        let versions = async {
            let version = docker
                .version()
                .await
                .map_err(|e| format!("{where_}: /version: {e}"))?;
            let info = if self.flavor == Flavor::Gvisor {
                Some(
                    docker
                        .info()
                        .await
                        .map_err(|e| format!("{where_}: /info: {e}"))?,
                )
            } else {
                None
            };
            Ok((version, info))
        };
        // /_ping and /version (and /info) in parallel: one round trip on the run path.
        let checked = self.block(async {
            let (ping, rest) =
                tokio::join!(tokio::time::timeout(PING_TIMEOUT, docker.ping()), versions);
            match ping {
                Err(_) => Err(format!(
                    "{where_} did not answer /_ping within {} s",
                    PING_TIMEOUT.as_secs()
                )),
                Ok(Err(e)) => Err(format!("{where_} does not answer /_ping: {e}")),
                Ok(Ok(_)) => rest,
            }
        });
        let (version, info) =
            checked.map_err(|e| format!("{e}: {}", self.endpoint.start_hint()))?;
        let product = version
            .components
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "Engine".to_string());
        let described = format!(
            "{product} {} (API {}) at {where_}",
            version.version.as_deref().unwrap_or("?"),
            version.api_version.as_deref().unwrap_or("?"),
        );
        if let Some(info) = info {
            let has_runsc = info
                .runtimes
                .as_ref()
                .is_some_and(|r| r.contains_key("runsc"));
            if !has_runsc {
                return Err(format!(
                    "{described} has no runsc runtime: install gVisor (`apt-get install runsc`) and register it in dockerd's daemon.json (\"runtimes\": {{\"runsc\": {{\"path\": \"/usr/bin/runsc\"}}}}), then restart dockerd"
                ));
            }
            return Ok(format!("{described}, runtime runsc"));
        }
        Ok(described)
    }
}
