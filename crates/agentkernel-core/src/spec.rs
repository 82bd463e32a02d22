//! What a sandbox is: the resolved, validated description every backend receives.

use crate::{CoreError, ImageRef, Policy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;

/// The backends agentkernel knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Native,
    Microvm,
    Firecracker,
    Qemu,
    Docker,
    Podman,
    Gvisor,
    Kubernetes,
    Nomad,
    Wasm,
}

impl BackendKind {
    pub const ALL: [BackendKind; 10] = [
        BackendKind::Native,
        BackendKind::Microvm,
        BackendKind::Firecracker,
        BackendKind::Qemu,
        BackendKind::Docker,
        BackendKind::Podman,
        BackendKind::Gvisor,
        BackendKind::Kubernetes,
        BackendKind::Nomad,
        BackendKind::Wasm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Microvm => "microvm",
            BackendKind::Firecracker => "firecracker",
            BackendKind::Qemu => "qemu",
            BackendKind::Docker => "docker",
            BackendKind::Podman => "podman",
            BackendKind::Gvisor => "gvisor",
            BackendKind::Kubernetes => "kubernetes",
            BackendKind::Nomad => "nomad",
            BackendKind::Wasm => "wasm",
        }
    }
}

impl FromStr for BackendKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = BackendKind::ALL.iter().map(|b| b.as_str()).collect();
                CoreError::UnknownBackend(s.to_string(), names.join(", "))
            })
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fully resolved sandbox description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub name: String,
    pub image: ImageRef,
    pub backend: BackendKind,
    pub policy: Policy,
    /// Environment every command in the sandbox starts with.
    pub env: Vec<(String, String)>,
    /// Default working directory inside the sandbox.
    pub workdir: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `--secret` bindings: the proxy adds each value to requests for its host only; the
    /// sandbox's variable holds the placeholder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::egress::SecretBinding>,
    /// `--secret-file` keys: files at /run/agentkernel/secrets/KEY.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<String>,
    /// `--placeholder-secrets`: those files hold a placeholder the proxy swaps on the way out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placeholder_secrets: bool,
    /// What earlier sandboxes wrote, captured by `Backend::capture` (snapshots, fork,
    /// templates), stacked on the image under this sandbox's own writable layer, top first.
    /// Each names a layer of the sandbox's backend (`validate_layer`), never a host path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// `-P/--publish`: host ports that reach ports on the sandbox's loopback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::ports::PublishedPort>,
    /// The project the sandbox was made for (`list --project`): the name of the git
    /// repository's top directory the request came from, else of that directory itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Checks a layer name as backends make them (`Backend::capture`): 1 to 128 characters of
/// ASCII letters, digits, `-`, `_`, `.`, `:` and `/`, with no `..` and no leading `/`, so a
/// layer name never reaches outside the backend's own layer store.
pub fn validate_layer(layer: &str) -> Result<(), CoreError> {
    let ok = !layer.is_empty()
        && layer.len() <= 128
        && !layer.starts_with('/')
        && !layer.contains("..")
        && layer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "layer name {layer:?} is not one agentkernel made: the snapshot or sandbox record naming it is damaged; remove it"
        )))
    }
}

/// Parses `KEY=VALUE` as given to `-e/--env`.
pub fn parse_env(text: &str) -> Result<(String, String), CoreError> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| CoreError::InvalidEnv(text.to_string()))?;
    validate_env_var(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Checks one environment variable given as a name and a value (every surface's rule): a
/// non-empty name without `=` or NUL, a value without NUL.
pub fn validate_env_var(key: &str, value: &str) -> Result<(), CoreError> {
    if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
        return Err(CoreError::InvalidEnv(format!("{key}={value}")));
    }
    Ok(())
}

/// Whether a path is one the kernel can take: no NUL, at most 4095 bytes, and no component
/// longer than 255 bytes.
pub fn path_fits(path: &str) -> bool {
    !path.contains('\0') && path.len() < 4096 && path.split('/').all(|c| c.len() <= 255)
}

/// Checks a working directory given for inside the sandbox.
pub fn validate_workdir(dir: &str) -> Result<(), CoreError> {
    if dir.starts_with('/') && path_fits(dir) {
        Ok(())
    } else {
        Err(CoreError::InvalidWorkdir(dir.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_parsing() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), "".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("NOEQ").is_err());
    }

    #[test]
    fn backend_names() {
        assert_eq!("native".parse::<BackendKind>(), Ok(BackendKind::Native));
        assert!("vmware".parse::<BackendKind>().is_err());
    }
}
