//! Security profiles and the one concrete `Policy` every backend enforces (or refuses).

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;

/// The named security profiles of the CLI (`-p/--profile`) and config (`[security] profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Permissive,
    #[default]
    Moderate,
    Restrictive,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Permissive => "permissive",
            Profile::Moderate => "moderate",
            Profile::Restrictive => "restrictive",
        }
    }
}

impl FromStr for Profile {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permissive" => Ok(Profile::Permissive),
            "moderate" => Ok(Profile::Moderate),
            "restrictive" => Ok(Profile::Restrictive),
            other => Err(CoreError::UnknownProfile(other.to_string())),
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the sandbox reaches the network. In both networked modes every outbound connection
/// ends at the host-side egress proxy, which never connects to cloud metadata addresses or
/// the host's own loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A fresh network namespace with only loopback.
    None,
    /// Only the hosts of `Policy::allow_hosts` (minus `deny_hosts`), through the proxy.
    Allowlist,
    /// Any host but those of `deny_hosts`, through the proxy. (`user` was its name when
    /// pasta carried it; records written then still read.)
    #[serde(alias = "user")]
    Full,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::Full => "full",
        }
    }

    /// Whether the sandbox has a way out at all (through the proxy).
    pub fn is_networked(self) -> bool {
        self != NetworkMode::None
    }
}

/// Which seccomp filter the sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Everything but a list of dangerous calls (mount, unshare, setns, kexec, modules, bpf, …).
    DenyList,
    /// Only a list of ordinary calls; everything else fails with EPERM.
    AllowList,
}

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
    /// The named volume this mount is (`--volume NAME:/path`), whose directory `source` is
    /// kept under the state directory (`volumes/NAME`); `None` for a host directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

/// Resource limits, enforced through cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_mb: u64,
    pub pids: u64,
    /// CPU bandwidth in cores (1.5 = one and a half cores); 0 means unlimited.
    pub vcpus: f64,
    /// Most bytes, in MB, the sandbox may write to each writable filesystem of its own (the
    /// root's writable layer, `/tmp`, `/dev/shm`).
    #[serde(default = "default_disk_mb")]
    pub disk_mb: u64,
    /// The disk limit was asked for (flag, config, request) rather than taken from the profile.
    /// A backend that cannot enforce a disk limit on some writable path refuses an asked-for
    /// one; the profile's default is applied wherever the backend can.
    #[serde(default)]
    pub disk_explicit: bool,
}

fn default_disk_mb() -> u64 {
    Policy::for_profile(Profile::Moderate).limits.disk_mb
}

/// The uid/gid the command runs as inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
}

/// Capabilities Docker grants by default; moderate and permissive keep these and drop the rest.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// Locale and terminal settings: the host variables a CLI sends along when it asks the daemon
/// to run a command (permissive passes more: `crate::hostenv`).
pub const PASSTHROUGH_ENV: &[&str] = &["TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ", "NO_COLOR"];

/// Everything a sandbox may do, in one concrete value. Backends enforce every field or refuse
/// the sandbox; none is silently skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub profile: Profile,
    pub network: NetworkMode,
    pub read_only_root: bool,
    pub mounts: Vec<BindMount>,
    /// Capabilities kept (names as `CAP_*`); all others are dropped from every set.
    pub capabilities: Vec<String>,
    pub seccomp: SeccompMode,
    pub no_new_privs: bool,
    pub user: UserSpec,
    pub limits: Limits,
    /// Host patterns reachable in `NetworkMode::Allowlist` (`api.example.com`,
    /// `*.example.com`).
    #[serde(default, alias = "egress_allowlist")]
    pub allow_hosts: Vec<String>,
    /// Host patterns never reachable, in either networked mode.
    #[serde(default)]
    pub deny_hosts: Vec<String>,
    /// Private addresses (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) unreachable too.
    #[serde(default)]
    pub block_private: bool,
    /// Host environment variables passed into the sandbox.
    pub env_passthrough: Vec<String>,
    /// Paths inside the sandbox hidden under an empty read-only directory: where a mount
    /// would otherwise show agentkernel's own state directory.
    #[serde(default)]
    pub masked_paths: Vec<PathBuf>,
}

/// Overrides of a profile's defaults from flags and config, applied in `Policy::resolve`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOverrides {
    pub network: Option<bool>,
    pub memory_mb: Option<u64>,
    pub pids: Option<u64>,
    pub vcpus: Option<f64>,
    pub disk_mb: Option<u64>,
    pub read_only_root: Option<bool>,
    /// The host directory permissive sandboxes mount at /workspace (the caller's cwd).
    pub project_dir: Option<PathBuf>,
    /// The host home directory permissive sandboxes mount read-only.
    pub home_dir: Option<PathBuf>,
    /// Host patterns that narrow a networked sandbox to an allowlist (flags, config,
    /// compatibility mode).
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    pub block_private: Option<bool>,
    /// Mount `project_dir` at /workspace whatever the profile (compatibility modes).
    pub mount_project: bool,
}

/// The largest memory limit a sandbox may ask for, in MB (1 TiB).
pub const MAX_MEMORY_MB: u64 = 1024 * 1024;

/// The smallest and largest disk limits, in MB (64 MB to 64 TiB).
pub const MIN_DISK_MB: u64 = 64;
pub const MAX_DISK_MB: u64 = 64 * 1024 * 1024;

/// Where a permissive sandbox sees the caller's working directory.
pub const WORKSPACE: &str = "/workspace";

impl Policy {
    /// The profile's defaults.
    pub fn for_profile(profile: Profile) -> Policy {
        let default_caps = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        match profile {
            Profile::Permissive => Policy {
                profile,
                network: NetworkMode::Full,
                read_only_root: false,
                mounts: Vec::new(),
                capabilities: default_caps,
                seccomp: SeccompMode::DenyList,
                no_new_privs: true,
                user: UserSpec { uid: 0, gid: 0 },
                limits: Limits {
                    memory_mb: 4096,
                    pids: 4096,
                    vcpus: 0.0,
                    disk_mb: 20480,
                    disk_explicit: false,
                },
                allow_hosts: Vec::new(),
                deny_hosts: Vec::new(),
                block_private: false,
                env_passthrough: vec![crate::hostenv::ALL.to_string()],
                masked_paths: Vec::new(),
            },
            Profile::Moderate => Policy {
                profile,
                network: NetworkMode::Full,
                read_only_root: false,
                mounts: Vec::new(),
                capabilities: default_caps,
                seccomp: SeccompMode::DenyList,
                no_new_privs: true,
                user: UserSpec { uid: 0, gid: 0 },
                limits: Limits {
                    memory_mb: 2048,
                    pids: 1024,
                    vcpus: 0.0,
                    disk_mb: 10240,
                    disk_explicit: false,
                },
                allow_hosts: Vec::new(),
                deny_hosts: Vec::new(),
                block_private: false,
                env_passthrough: Vec::new(),
                masked_paths: Vec::new(),
            },
            Profile::Restrictive => Policy {
                profile,
                network: NetworkMode::None,
                read_only_root: true,
                mounts: Vec::new(),
                capabilities: Vec::new(),
                seccomp: SeccompMode::AllowList,
                no_new_privs: true,
                user: UserSpec {
                    uid: 65534,
                    gid: 65534,
                },
                limits: Limits {
                    memory_mb: 512,
                    pids: 256,
                    vcpus: 1.0,
                    disk_mb: 1024,
                    disk_explicit: false,
                },
                allow_hosts: Vec::new(),
                deny_hosts: Vec::new(),
                block_private: false,
                env_passthrough: Vec::new(),
                masked_paths: Vec::new(),
            },
        }
    }

    /// The profile's defaults with the overrides applied.
    pub fn resolve(profile: Profile, overrides: &PolicyOverrides) -> Policy {
        let mut policy = Policy::for_profile(profile);
        if let Some(network) = overrides.network {
            policy.network = if network {
                NetworkMode::Full
            } else {
                NetworkMode::None
            };
        }
        if policy.network.is_networked() {
            if !overrides.allow_hosts.is_empty() {
                policy.network = NetworkMode::Allowlist;
                policy.allow_hosts = dedup(&overrides.allow_hosts);
            }
            policy.deny_hosts = dedup(&overrides.deny_hosts);
        }
        if let Some(b) = overrides.block_private {
            policy.block_private = b;
        }
        if let Some(m) = overrides.memory_mb {
            policy.limits.memory_mb = m;
        }
        if let Some(p) = overrides.pids {
            policy.limits.pids = p;
        }
        if let Some(v) = overrides.vcpus {
            policy.limits.vcpus = v;
        }
        if let Some(d) = overrides.disk_mb {
            policy.limits.disk_mb = d;
            policy.limits.disk_explicit = true;
        }
        if let Some(ro) = overrides.read_only_root {
            policy.read_only_root = ro;
        }
        if profile == Profile::Permissive || overrides.mount_project {
            if let Some(dir) = &overrides.project_dir {
                policy.mounts.push(BindMount {
                    source: dir.clone(),
                    target: PathBuf::from(WORKSPACE),
                    read_only: false,
                    volume: None,
                });
            }
            if let Some(home) = &overrides.home_dir
                && profile == Profile::Permissive
                && overrides.project_dir.as_deref() != Some(home.as_path())
            {
                policy.mounts.push(BindMount {
                    source: home.clone(),
                    target: home.clone(),
                    read_only: true,
                    volume: None,
                });
            }
        }
        policy
    }

    /// The first way in which `self` lets a sandbox do more than `bound` does, or `None` when
    /// `self` is at least as strict in every field. A project's config and an MCP caller may
    /// only tighten: their policy is checked against the one the user's own settings give.
    pub fn loosening_of(&self, bound: &Policy) -> Option<String> {
        if let Some(more) = self.network_loosening_of(bound) {
            return Some(more);
        }
        if !self.read_only_root && bound.read_only_root {
            return Some("a writable root filesystem".to_string());
        }
        if let Some(m) = self.mounts.iter().find(|m| {
            !bound.mounts.iter().any(|b| {
                b.source == m.source && b.target == m.target && (m.read_only || !b.read_only)
            })
        }) {
            return Some(format!(
                "the host directory {} mounted at {}{}",
                m.source.display(),
                m.target.display(),
                if m.read_only { "" } else { " (writable)" }
            ));
        }
        if let Some(c) = self
            .capabilities
            .iter()
            .find(|c| !bound.capabilities.contains(c))
        {
            return Some(format!("the capability {c}"));
        }
        if self.seccomp == SeccompMode::DenyList && bound.seccomp == SeccompMode::AllowList {
            return Some("the seccomp deny-list instead of the allow-list".to_string());
        }
        if !self.no_new_privs && bound.no_new_privs {
            return Some("gaining privileges through set-uid programs".to_string());
        }
        if self.user.uid == 0 && bound.user.uid != 0 {
            return Some("running as root".to_string());
        }
        let (l, b) = (&self.limits, &bound.limits);
        if l.memory_mb > b.memory_mb {
            return Some(format!(
                "{} MB of memory (more than {} MB)",
                l.memory_mb, b.memory_mb
            ));
        }
        if l.pids > b.pids {
            return Some(format!("{} processes (more than {})", l.pids, b.pids));
        }
        if b.vcpus > 0.0 && (l.vcpus == 0.0 || l.vcpus > b.vcpus) {
            let asked = if l.vcpus == 0.0 {
                "unlimited CPU".to_string()
            } else {
                format!("{} CPUs", l.vcpus)
            };
            return Some(format!("{asked} (more than {})", b.vcpus));
        }
        if l.disk_mb > b.disk_mb {
            return Some(format!(
                "{} MB of disk (more than {} MB)",
                l.disk_mb, b.disk_mb
            ));
        }
        let all = crate::hostenv::ALL.to_string();
        if self.env_passthrough.contains(&all) && !bound.env_passthrough.contains(&all) {
            return Some("the caller's environment passed through (permissive)".to_string());
        }
        None
    }

    /// Checks the limits are ones a backend can apply.
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.limits.memory_mb < 16 {
            return Err(CoreError::Unsupported(format!(
                "memory limit {} MB is too small: give at least 16 MB",
                self.limits.memory_mb
            )));
        }
        if self.limits.memory_mb > MAX_MEMORY_MB {
            return Err(CoreError::Unsupported(format!(
                "memory limit {} MB is more than {MAX_MEMORY_MB} MB (1 TiB): give less",
                self.limits.memory_mb
            )));
        }
        if self.limits.pids < 8 {
            return Err(CoreError::Unsupported(format!(
                "pids limit {} is too small: give at least 8",
                self.limits.pids
            )));
        }
        if !(self.limits.vcpus >= 0.0 && self.limits.vcpus <= 1024.0) {
            return Err(CoreError::Unsupported(format!(
                "vcpus {} is out of range: give 0 (unlimited) to 1024",
                self.limits.vcpus
            )));
        }
        if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&self.limits.disk_mb) {
            return Err(CoreError::Unsupported(format!(
                "disk limit {} MB is out of range: give {MIN_DISK_MB} MB to {MAX_DISK_MB} MB (64 TiB)",
                self.limits.disk_mb
            )));
        }
        for pattern in self.allow_hosts.iter().chain(&self.deny_hosts) {
            crate::egress::validate_host_pattern(pattern).map_err(CoreError::InvalidHostPattern)?;
        }
        Ok(())
    }

    /// How `self` reaches more of the network than `bound`, if it does.
    fn network_loosening_of(&self, bound: &Policy) -> Option<String> {
        use crate::egress::host_matches;
        match (bound.network, self.network) {
            (NetworkMode::None, NetworkMode::None) => {}
            (NetworkMode::None, _) => return Some("network access".to_string()),
            (NetworkMode::Allowlist, NetworkMode::Full) => {
                return Some("network access beyond the allowlist".to_string());
            }
            (NetworkMode::Allowlist, NetworkMode::Allowlist) => {
                // A pattern is covered when a bound pattern matches every name it matches.
                let covered = |p: &String| {
                    bound.allow_hosts.iter().any(|b| {
                        b == p
                            || (b.starts_with("*.")
                                && host_matches(b, p.strip_prefix("*.").unwrap_or(p)))
                    })
                };
                if let Some(p) = self.allow_hosts.iter().find(|p| !covered(p)) {
                    return Some(format!("the host {p} (not in the allowlist)"));
                }
            }
            _ => {}
        }
        if let Some(d) = bound
            .deny_hosts
            .iter()
            .find(|d| !self.deny_hosts.contains(d))
        {
            return Some(format!("the denied host {d}"));
        }
        if bound.block_private && !self.block_private && self.network.is_networked() {
            return Some("private network addresses".to_string());
        }
        None
    }
}

fn dedup(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for i in items {
        let i = i.to_ascii_lowercase();
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_loosening_is_found() {
        let full = Policy::for_profile(Profile::Moderate);
        let mut allow = full.clone();
        allow.network = NetworkMode::Allowlist;
        allow.allow_hosts = vec!["*.example.com".into()];
        assert_eq!(
            full.loosening_of(&allow).as_deref(),
            Some("network access beyond the allowlist")
        );
        assert!(allow.loosening_of(&full).is_none());
        let mut narrower = allow.clone();
        narrower.allow_hosts = vec!["api.example.com".into()];
        assert!(
            narrower.loosening_of(&allow).is_none(),
            "covered by the wildcard"
        );
        let mut wider = allow.clone();
        wider.allow_hosts.push("evil.test".into());
        assert!(
            wider
                .loosening_of(&allow)
                .is_some_and(|w| w.contains("evil.test"))
        );
        let mut denying = full.clone();
        denying.deny_hosts = vec!["evil.test".into()];
        assert!(
            full.loosening_of(&denying)
                .is_some_and(|w| w.contains("evil.test"))
        );
        let mut private = full.clone();
        private.block_private = true;
        assert!(full.loosening_of(&private).is_some());
        assert!(
            allow
                .loosening_of(&Policy::for_profile(Profile::Restrictive))
                .is_some()
        );
    }

    #[test]
    fn restrictive_is_locked_down() {
        let p = Policy::for_profile(Profile::Restrictive);
        assert_eq!(p.network, NetworkMode::None);
        assert!(p.read_only_root);
        assert!(p.capabilities.is_empty());
        assert_eq!(p.seccomp, SeccompMode::AllowList);
    }

    #[test]
    fn overrides_apply() {
        let o = PolicyOverrides {
            network: Some(false),
            memory_mb: Some(64),
            ..Default::default()
        };
        let p = Policy::resolve(Profile::Moderate, &o);
        assert_eq!(p.network, NetworkMode::None);
        assert_eq!(p.limits.memory_mb, 64);
    }

    #[test]
    fn only_tighter_policies_are_within_a_bound() {
        let moderate = Policy::for_profile(Profile::Moderate);
        let restrictive = Policy::for_profile(Profile::Restrictive);
        let permissive = Policy::resolve(
            Profile::Permissive,
            &PolicyOverrides {
                project_dir: Some("/src/app".into()),
                ..Default::default()
            },
        );
        assert_eq!(restrictive.loosening_of(&moderate), None);
        assert_eq!(moderate.loosening_of(&moderate), None);
        assert!(moderate.loosening_of(&restrictive).is_some());
        let why = permissive
            .loosening_of(&moderate)
            .expect("permissive is looser");
        assert!(why.contains("/src/app"), "{why}");
        let more_memory = Policy::resolve(
            Profile::Restrictive,
            &PolicyOverrides {
                memory_mb: Some(4096),
                ..Default::default()
            },
        );
        let why = more_memory.loosening_of(&moderate).expect("more memory");
        assert!(why.contains("4096 MB"), "{why}");
        let unlimited_cpu = Policy::resolve(
            Profile::Moderate,
            &PolicyOverrides {
                vcpus: Some(0.0),
                ..Default::default()
            },
        );
        assert!(unlimited_cpu.loosening_of(&restrictive).is_some());
        let network = Policy::resolve(
            Profile::Restrictive,
            &PolicyOverrides {
                network: Some(true),
                ..Default::default()
            },
        );
        assert_eq!(
            network.loosening_of(&restrictive).as_deref(),
            Some("network access")
        );
    }

    #[test]
    fn permissive_mounts_project_and_home() {
        let o = PolicyOverrides {
            project_dir: Some("/src/app".into()),
            home_dir: Some("/home/u".into()),
            ..Default::default()
        };
        let p = Policy::resolve(Profile::Permissive, &o);
        assert_eq!(p.mounts.len(), 2);
        assert_eq!(p.mounts[0].target, PathBuf::from(WORKSPACE));
        assert!(p.mounts[1].read_only);
        let m = Policy::resolve(Profile::Moderate, &o);
        assert!(m.mounts.is_empty());
    }
}
