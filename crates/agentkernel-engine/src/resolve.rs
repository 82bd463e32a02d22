//! Turning what a user asked for (flags, `--config`, `./agentkernel.toml`) into one validated
//! `SandboxSpec`. Precedence: flags > `--config` > `./agentkernel.toml` > defaults.

use crate::error::Result;
use agentkernel_core::config::{Config, PROJECT_CONFIG};
use agentkernel_core::detect::{Detection, detect_image};
use agentkernel_core::policy::PolicyOverrides;
use agentkernel_core::spec::{parse_env, validate_workdir};
use agentkernel_core::{
    BackendKind, CoreError, ImageRef, Policy, Profile, SandboxSpec, validate_name,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Sandbox options as given on a surface (CLI flags, HTTP fields).
#[derive(Debug, Clone, Default)]
pub struct SpecRequest {
    pub image: Option<String>,
    pub profile: Option<String>,
    pub backend: Option<String>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--no-network`.
    pub no_network: bool,
    /// Network on or off whatever the profile says, from a surface that can say both (the MCP
    /// `network` parameter); `no_network` wins.
    pub network: Option<bool>,
    /// `-e KEY=VALUE`.
    pub env: Vec<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    pub memory_mb: Option<u64>,
    pub vcpus: Option<f64>,
    /// `--disk MB`.
    pub disk_mb: Option<u64>,
    /// The caller's working directory: where `./agentkernel.toml` and relative image paths are
    /// looked up, and what permissive sandboxes mount at /workspace.
    pub cwd: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub description: Option<String>,
    /// The command `run` will execute, for image auto-detection (empty for `create`).
    pub command: Vec<String>,
    /// The caller's environment, for the variables a profile passes through, when the caller
    /// is another process (a CLI talking to the daemon); `None` reads this process's.
    pub host_env: Option<BTreeMap<String, String>>,
}

/// The image for a request: `--image`, else `[sandbox] base_image`, else auto-detected from the
/// command, the project's files and its Procfile (`agentkernel_core::detect`).
pub fn choose_image(req: &SpecRequest, config: &Config) -> Detection {
    if let Some(image) = &req.image {
        return Detection {
            image: image.clone(),
            rule: "--image".to_string(),
        };
    }
    if let Some(image) = &config.sandbox.base_image {
        return Detection {
            image: image.clone(),
            rule: "[sandbox] base_image".to_string(),
        };
    }
    detect_image(&req.command, &req.cwd)
}

/// The default working directory inside a sandbox.
pub const DEFAULT_WORKDIR: &str = "/workspace";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Checks everything about a request that can be checked without images or backends (names,
/// profile, backend, image reference syntax, limits, working directory, environment, labels):
/// surfaces call it to refuse bad input before they answer.
pub fn validate_request(req: &SpecRequest) -> Result<()> {
    resolve(req, "validate", &load_config(req)?).map(drop)
}

/// Reads the config layers for a request.
pub fn load_config(req: &SpecRequest) -> Result<Config> {
    let project = req.cwd.join(PROJECT_CONFIG);
    let mut config = if project.is_file() {
        Config::load(&project)?
    } else {
        Config::default()
    };
    if let Some(path) = &req.config {
        let path = if path.is_absolute() {
            path.clone()
        } else {
            req.cwd.join(path)
        };
        config = Config::load(&path)?.over(config);
    }
    Ok(config)
}

/// Builds the spec for sandbox `name`. Image contents (its env and workdir) are merged later,
/// when the image is resolved.
pub fn resolve(req: &SpecRequest, name: &str, config: &Config) -> Result<SandboxSpec> {
    validate_name(name)?;
    let profile: Profile = match req
        .profile
        .as_deref()
        .or(config.security.profile.as_deref())
    {
        Some(p) => p.parse()?,
        None => Profile::default(),
    };
    let backend: BackendKind = match req.backend.as_deref().or(config.sandbox.backend.as_deref()) {
        Some(b) => b.parse()?,
        None => BackendKind::Native,
    };
    let image = ImageRef::parse(&choose_image(req, config).image, &req.cwd)?;
    let network = if req.no_network {
        Some(false)
    } else {
        req.network.or(config.security.network)
    };
    let home_dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_dir());
    let overrides = PolicyOverrides {
        network,
        memory_mb: req.memory_mb.or(config.resources.memory_mb),
        pids: config.resources.pids,
        vcpus: req.vcpus.or(config.resources.vcpus),
        disk_mb: req.disk_mb.or(config.resources.disk_mb),
        read_only_root: config.security.read_only,
        project_dir: Some(req.cwd.clone()),
        home_dir,
    };
    let policy = Policy::resolve(profile, &overrides);
    policy.validate()?;
    let workdir = req
        .workdir
        .clone()
        .or_else(|| config.sandbox.workdir.clone())
        .unwrap_or_else(|| DEFAULT_WORKDIR.to_string());
    validate_workdir(&workdir)?;
    let mut env = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        (
            "HOME".to_string(),
            if policy.user.uid == 0 {
                "/root".to_string()
            } else {
                "/tmp".to_string()
            },
        ),
        ("HOSTNAME".to_string(), name.to_string()),
    ];
    for key in &policy.env_passthrough {
        let value = match &req.host_env {
            Some(vars) => vars.get(key).cloned(),
            None => std::env::var(key).ok(),
        };
        if let Some(value) = value {
            set_env(&mut env, key.clone(), value);
        }
    }
    for kv in &req.env {
        let (k, v) = parse_env(kv)?;
        set_env(&mut env, k, v);
    }
    validate_labels(&req.labels)?;
    if let Some(d) = &req.description {
        validate_description(d)?;
    }
    Ok(SandboxSpec {
        name: name.to_string(),
        image,
        backend,
        policy,
        env,
        workdir,
        labels: req.labels.clone(),
        description: req.description.clone(),
    })
}

/// Label keys are 1-128 characters without ':' (which separates key and value in the
/// `?label=key:value` filter); values at most 256 characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> std::result::Result<(), CoreError> {
    for (k, v) in labels {
        let why = if k.is_empty() || k.chars().count() > 128 {
            "a key must be 1-128 characters"
        } else if k.contains(':') || k.contains('\0') {
            "a key cannot contain ':' (it separates key and value in ?label=key:value)"
        } else if v.chars().count() > 256 || v.contains('\0') {
            "a value must be at most 256 characters"
        } else {
            continue;
        };
        return Err(CoreError::InvalidLabel(format!("{k}={v}"), why.to_string()));
    }
    Ok(())
}

/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 4096;

pub fn validate_description(text: &str) -> std::result::Result<(), CoreError> {
    let n = text.chars().count();
    if n > MAX_DESCRIPTION {
        return Err(CoreError::DescriptionTooLong(n));
    }
    Ok(())
}

/// Sets or replaces one variable, keeping the order of first appearance.
pub fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}

/// Applies an image's own environment (`Env` of its OCI config) under the explicit one: image
/// values replace defaults but never what the user passed with `-e`.
pub fn merge_image_env(spec: &mut SandboxSpec, image_env: &[String], user_env: &[String]) {
    let user_keys: Vec<&str> = user_env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    for kv in image_env {
        if let Some((k, v)) = kv.split_once('=')
            && !user_keys.contains(&k)
        {
            set_env(&mut spec.env, k.to_string(), v.to_string());
        }
    }
}

/// The sandbox name `--branch` uses: `<project>-<branch>` from the git work tree at `cwd`.
pub fn branch_name(cwd: &std::path::Path) -> Result<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"]).ok_or_else(|| {
        CoreError::Unsupported(
            "--branch needs a git repository: run it inside one, or give a name".to_string(),
        )
    })?;
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "HEAD".to_string());
    let project = std::path::Path::new(&top)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(agentkernel_core::name::sanitize_name(&format!(
        "{project}-{branch}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dir: &std::path::Path) -> SpecRequest {
        SpecRequest {
            cwd: dir.to_path_buf(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_beat_config_beat_project_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(PROJECT_CONFIG),
            "[security]\nprofile = \"restrictive\"\n[resources]\nmemory_mb = 300\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("other.toml"),
            "[resources]\nmemory_mb = 400\n",
        )
        .expect("write");
        let mut r = req(dir.path());
        let c = load_config(&r).expect("config");
        let s = resolve(&r, "a", &c).expect("spec");
        assert_eq!(s.policy.profile, Profile::Restrictive);
        assert_eq!(s.policy.limits.memory_mb, 300);
        r.config = Some("other.toml".into());
        let c = load_config(&r).expect("config");
        assert_eq!(
            resolve(&r, "a", &c).expect("spec").policy.limits.memory_mb,
            400
        );
        r.profile = Some("moderate".into());
        r.memory_mb = Some(500);
        let s = resolve(&r, "a", &c).expect("spec");
        assert_eq!(s.policy.profile, Profile::Moderate);
        assert_eq!(s.policy.limits.memory_mb, 500);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Config::default();
        let mut r = req(dir.path());
        assert!(resolve(&r, "../x", &c).is_err());
        r.image = Some("--volume=/:/host".into());
        assert!(resolve(&r, "x", &c).is_err());
        r.image = None;
        r.env = vec!["NOEQUALS".into()];
        assert!(resolve(&r, "x", &c).is_err());
        r.env = vec![];
        r.workdir = Some("relative".into());
        assert!(resolve(&r, "x", &c).is_err());
        std::fs::write(dir.path().join(PROJECT_CONFIG), "[security\n").expect("write");
        assert!(load_config(&req(dir.path())).is_err());
    }

    #[test]
    fn env_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = req(dir.path());
        r.env = vec!["A=1".into(), "PATH=/x".into()];
        let mut s = resolve(&r, "n", &Config::default()).expect("spec");
        merge_image_env(&mut s, &["A=image".into(), "B=2".into()], &r.env);
        let get = |k: &str| s.env.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        assert_eq!(get("A").as_deref(), Some("1"));
        assert_eq!(get("B").as_deref(), Some("2"));
        assert_eq!(get("PATH").as_deref(), Some("/x"));
        assert_eq!(get("HOSTNAME").as_deref(), Some("n"));
    }
}
