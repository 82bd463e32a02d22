//! `agentkernel.toml`: the project config file. Unknown keys are errors that name the key, so a
//! typo never silently weakens a policy.

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name looked up in the current directory.
pub const PROJECT_CONFIG: &str = "agentkernel.toml";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub sandbox: SandboxSection,
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub resources: ResourcesSection,
    #[serde(default)]
    pub security: SecuritySection,
    #[serde(default)]
    pub images: ImagesSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub secrets: SecretsSection,
}

/// The secrets vault (`agentkernel secret`). User config or `--config` only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// Where secrets are kept: one of [`SECRETS_BACKENDS`] (`AGENTKERNEL_SECRETS_BACKEND`
    /// overrides it); `file` when absent.
    pub backend: Option<String>,
    /// The file backend's encryption key (an absolute path; `AGENTKERNEL_SECRETS_KEY_FILE`
    /// overrides it); `<home>/keys/secrets.key` when absent.
    pub key_file: Option<String>,
    /// The vault bindings (`KEY:host` or `KEY:host:header`) an HTTP caller of `serve` may ask
    /// for. Without them a remote caller could send any vault secret to a host of its choosing;
    /// it may always bind values it gives itself (`KEY=value:host`).
    pub remote_bindings: Option<Vec<String>>,
}

/// The vault backends `[secrets] backend` may name.
pub const SECRETS_BACKENDS: &[&str] = &["file", "env", "keychain"];

/// `agentkernel serve`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Keys accepted as `Authorization: Bearer <key>` (with `--api-key` and
    /// `AGENTKERNEL_API_KEY`).
    pub api_keys: Option<Vec<String>>,
    /// Host names the server answers to besides loopback names and IP literals (the `Host`
    /// header; `Origin` must name one of them too).
    pub allowed_hosts: Option<Vec<String>>,
    /// Ceilings for what HTTP and MCP callers may ask for.
    pub max_sandboxes: Option<usize>,
    pub max_memory_mb: Option<u64>,
    pub max_vcpus: Option<f64>,
}

/// `agentkernel daemon`: warm pools of pre-started sandboxes, each used for one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// Sandboxes kept started for each pool the daemon serves.
    pub min_warm: Option<usize>,
    /// Most sandboxes kept started across all pools.
    pub max_warm: Option<usize>,
    /// Per compatibility mode (`[daemon.agents.claude]`).
    pub agents: Option<std::collections::BTreeMap<String, DaemonAgentSection>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonAgentSection {
    pub min_warm: Option<usize>,
    /// The image of this agent's pool (`python`, `node`, or an image reference).
    pub runtime: Option<String>,
}

/// Registries, as Docker's `registry-mirrors` and `insecure-registries` configure them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesSection {
    /// Tried in order for Docker Hub images before Docker Hub itself: `http://127.0.0.1:5000`,
    /// `https://mirror.example`. `AGENTKERNEL_REGISTRY_MIRROR` replaces the list.
    pub mirrors: Option<Vec<String>>,
    /// `host[:port]` of registries that may be reached over plain HTTP (loopback ones may
    /// always).
    pub insecure_registries: Option<Vec<String>>,
    /// Most bytes, in MB, one unpacked layer and one whole unpacked image may take.
    pub max_layer_mb: Option<u64>,
    pub max_image_mb: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    pub name: Option<String>,
    pub base_image: Option<String>,
    pub backend: Option<String>,
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The agent `plugin install` sets up when none is named: one of [`AGENTS`].
    pub preferred: Option<String>,
    pub compatibility_mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSection {
    pub vcpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub pids: Option<u64>,
    /// Per writable filesystem of the sandbox (root layer, `/tmp`, `/dev/shm`), in MB.
    pub disk_mb: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    pub profile: Option<String>,
    pub network: Option<bool>,
    pub read_only: Option<bool>,
    /// Host directories that HTTP and MCP callers may name (as image directories and OCI
    /// layouts) and that their permissive sandboxes may mount. User config only.
    pub remote_paths: Option<Vec<String>>,
    /// Private addresses unreachable even in full network mode.
    pub block_private: Option<bool>,
    /// `[security.domains] allow = [...]`, `deny = [...]`: host patterns that narrow a
    /// networked sandbox to an allowlist, and hosts it never reaches.
    pub domains: Option<DomainsSection>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsSection {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

/// The AI coding agents `[agent] preferred` may name (the reference documentation's list).
pub const AGENTS: &[&str] = &["claude", "codex", "gemini", "opencode"];

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, CoreError> {
        let err = |message: String| CoreError::Config {
            path: path.display().to_string(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        Config::parse(&text).map_err(err)
    }

    /// Parses config text; the error names the offending key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })?;
        config.check_values()?;
        Ok(config)
    }

    fn check_values(&self) -> Result<(), String> {
        if let Some(p) = &self.security.profile {
            p.parse::<crate::Profile>()
                .map_err(|e| format!("[security] profile: {e}"))?;
        }
        if let Some(b) = &self.sandbox.backend {
            b.parse::<crate::BackendKind>()
                .map_err(|e| format!("[sandbox] backend: {e}"))?;
        }
        if let Some(n) = &self.sandbox.name {
            crate::validate_name(n).map_err(|e| format!("[sandbox] name: {e}"))?;
        }
        if let Some(w) = &self.sandbox.workdir {
            crate::spec::validate_workdir(w).map_err(|e| format!("[sandbox] workdir: {e}"))?;
        }
        if let Some(agent) = &self.agent.preferred
            && !AGENTS.contains(&agent.as_str())
        {
            return Err(format!(
                "[agent] preferred: unknown agent {agent:?}: use one of {}",
                AGENTS.join(", ")
            ));
        }
        if let Some(mode) = &self.agent.compatibility_mode {
            mode.parse::<crate::compat::CompatMode>()
                .map_err(|e| format!("[agent] compatibility_mode: {e}"))?;
        }
        if let Some(domains) = &self.security.domains {
            for (key, list) in [("allow", &domains.allow), ("deny", &domains.deny)] {
                for p in list.iter().flatten() {
                    crate::egress::validate_host_pattern(p)
                        .map_err(|e| format!("[security.domains] {key}: {e}"))?;
                }
            }
        }
        if let (Some(min), Some(max)) = (self.daemon.min_warm, self.daemon.max_warm)
            && min > max
        {
            return Err(format!(
                "[daemon] min_warm = {min} is more than max_warm = {max}: lower min_warm or raise max_warm"
            ));
        }
        if let Some(backend) = &self.secrets.backend
            && !SECRETS_BACKENDS.contains(&backend.as_str())
        {
            return Err(format!(
                "[secrets] backend: unknown secrets backend {backend:?}: use one of {}",
                SECRETS_BACKENDS.join(", ")
            ));
        }
        for b in self.secrets.remote_bindings.iter().flatten() {
            let parsed: crate::egress::SecretBinding = b
                .parse()
                .map_err(|e| format!("[secrets] remote_bindings: {e}"))?;
            if parsed.value.is_some() {
                return Err(format!(
                    "[secrets] remote_bindings: {b:?} holds a value: list vault keys as KEY:host, and keep the value in the vault (`agentkernel secret set`)"
                ));
            }
        }
        if let Some(path) = &self.secrets.key_file
            && !Path::new(path).is_absolute()
        {
            return Err(format!(
                "[secrets] key_file = {path:?} is not an absolute path: give the key file's full path (e.g. \"/media/usb/agentkernel-secrets.key\")"
            ));
        }
        Ok(())
    }

    /// Layers `self` over `lower`: every key set here wins.
    pub fn over(self, lower: Config) -> Config {
        Config {
            sandbox: SandboxSection {
                name: self.sandbox.name.or(lower.sandbox.name),
                base_image: self.sandbox.base_image.or(lower.sandbox.base_image),
                backend: self.sandbox.backend.or(lower.sandbox.backend),
                workdir: self.sandbox.workdir.or(lower.sandbox.workdir),
            },
            agent: AgentSection {
                preferred: self.agent.preferred.or(lower.agent.preferred),
                compatibility_mode: self
                    .agent
                    .compatibility_mode
                    .or(lower.agent.compatibility_mode),
            },
            resources: ResourcesSection {
                vcpus: self.resources.vcpus.or(lower.resources.vcpus),
                memory_mb: self.resources.memory_mb.or(lower.resources.memory_mb),
                pids: self.resources.pids.or(lower.resources.pids),
                disk_mb: self.resources.disk_mb.or(lower.resources.disk_mb),
            },
            security: SecuritySection {
                profile: self.security.profile.or(lower.security.profile),
                network: self.security.network.or(lower.security.network),
                read_only: self.security.read_only.or(lower.security.read_only),
                remote_paths: self.security.remote_paths.or(lower.security.remote_paths),
                block_private: self.security.block_private.or(lower.security.block_private),
                domains: self.security.domains.or(lower.security.domains),
            },
            images: ImagesSection {
                mirrors: self.images.mirrors.or(lower.images.mirrors),
                insecure_registries: self
                    .images
                    .insecure_registries
                    .or(lower.images.insecure_registries),
                max_layer_mb: self.images.max_layer_mb.or(lower.images.max_layer_mb),
                max_image_mb: self.images.max_image_mb.or(lower.images.max_image_mb),
            },
            server: ServerSection {
                host: self.server.host.or(lower.server.host),
                port: self.server.port.or(lower.server.port),
                api_keys: self.server.api_keys.or(lower.server.api_keys),
                allowed_hosts: self.server.allowed_hosts.or(lower.server.allowed_hosts),
                max_sandboxes: self.server.max_sandboxes.or(lower.server.max_sandboxes),
                max_memory_mb: self.server.max_memory_mb.or(lower.server.max_memory_mb),
                max_vcpus: self.server.max_vcpus.or(lower.server.max_vcpus),
            },
            daemon: DaemonSection {
                min_warm: self.daemon.min_warm.or(lower.daemon.min_warm),
                max_warm: self.daemon.max_warm.or(lower.daemon.max_warm),
                agents: self.daemon.agents.or(lower.daemon.agents),
            },
            secrets: SecretsSection {
                backend: self.secrets.backend.or(lower.secrets.backend),
                key_file: self.secrets.key_file.or(lower.secrets.key_file),
                remote_bindings: self
                    .secrets
                    .remote_bindings
                    .or(lower.secrets.remote_bindings),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seed_example() {
        let c = Config::parse(
            r#"
[sandbox]
name = "my-project"
base_image = "python:3.12-alpine"
[agent]
preferred = "claude"
[resources]
vcpus = 2
memory_mb = 1024
[security]
profile = "restrictive"
network = false
"#,
        )
        .expect("valid config");
        assert_eq!(c.resources.memory_mb, Some(1024));
        assert_eq!(c.security.network, Some(false));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[security]\nprofle = \"x\"\n").expect_err("must fail");
        assert!(e.contains("profle"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = Config::parse("[nope]\n").expect_err("must fail");
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("[security]\nprofile = \"lax\"\n").expect_err("must fail");
        assert!(e.contains("lax"), "{e}");
        let e = Config::parse("[agent]\npreferred = \"vim\"\n").expect_err("must fail");
        assert!(
            e.contains("\"vim\"") && e.contains("claude, codex, gemini, opencode"),
            "{e}"
        );
        for agent in AGENTS {
            Config::parse(&format!("[agent]\npreferred = \"{agent}\"\n")).expect(agent);
        }
    }

    #[test]
    fn parses_daemon_and_server_sections() {
        let c = Config::parse(
            r#"
[daemon]
min_warm = 3
max_warm = 5
[daemon.agents.claude]
min_warm = 2
runtime = "python"
[server]
port = 9000
api_keys = ["k1", "k2"]
"#,
        )
        .expect("valid config");
        assert_eq!(c.daemon.min_warm, Some(3));
        assert_eq!(c.server.api_keys.as_deref().map(<[String]>::len), Some(2));
        let e = Config::parse("[daemon]\nmin_warm = 6\nmax_warm = 5\n").expect_err("must fail");
        assert!(e.contains("min_warm"), "{e}");
    }

    #[test]
    fn secrets_section_is_checked() {
        let c = Config::parse("[secrets]\nbackend = \"env\"\nkey_file = \"/k/secrets.key\"\n")
            .expect("valid config");
        assert_eq!(c.secrets.backend.as_deref(), Some("env"));
        let e = Config::parse("[secrets]\nbackend = \"vault\"\n").expect_err("must fail");
        assert!(
            e.contains("\"vault\"") && e.contains("file, env, keychain"),
            "{e}"
        );
        let e = Config::parse("[secrets]\nkey_file = \"rel/key\"\n").expect_err("must fail");
        assert!(e.contains("absolute"), "{e}");
        let e = Config::parse("[secrets]\nbakend = \"file\"\n").expect_err("must fail");
        assert!(e.contains("bakend"), "{e}");
    }

    #[test]
    fn layering() {
        let hi = Config::parse("[resources]\nmemory_mb = 10\n").expect("ok");
        let lo = Config::parse("[resources]\nmemory_mb = 20\nvcpus = 1\n").expect("ok");
        let m = hi.over(lo);
        assert_eq!(m.resources.memory_mb, Some(10));
        assert_eq!(m.resources.vcpus, Some(1.0));
    }
}
