//! Agent compatibility modes (`--compatibility-mode`, `[agent] compatibility_mode`, the HTTP
//! and MCP `compatibility_mode` field): each agent's API hosts plus the common package
//! registries as the sandbox's allowlist, the project mounted at /workspace, and the
//! isolation level the reference documentation gives it. `[security]` keys override them.

use crate::{CoreError, Profile};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatMode {
    /// Allow all (the profile's network), no project mount.
    Native,
    Claude,
    Codex,
    Gemini,
}

/// Package registries and source hosts every agent mode reaches: PyPI, npm, crates.io, the Go
/// module proxy, RubyGems, Debian and Alpine mirrors, GitHub.
pub const PACKAGE_REGISTRIES: &[&str] = &[
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "crates.io",
    "index.crates.io",
    "static.crates.io",
    "proxy.golang.org",
    "sum.golang.org",
    "storage.googleapis.com",
    "rubygems.org",
    "index.rubygems.org",
    "deb.debian.org",
    "security.debian.org",
    "dl-cdn.alpinelinux.org",
    "github.com",
    "api.github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "raw.githubusercontent.com",
];

impl CompatMode {
    pub const ALL: &[&str] = &["native", "claude", "codex", "gemini"];

    pub fn as_str(self) -> &'static str {
        match self {
            CompatMode::Native => "native",
            CompatMode::Claude => "claude",
            CompatMode::Codex => "codex",
            CompatMode::Gemini => "gemini",
        }
    }

    /// The agent's own API hosts.
    pub fn api_hosts(self) -> &'static [&'static str] {
        match self {
            CompatMode::Native => &[],
            CompatMode::Claude => &["api.anthropic.com", "cdn.anthropic.com"],
            CompatMode::Codex => &["api.openai.com", "cdn.openai.com"],
            CompatMode::Gemini => &["*.googleapis.com"],
        }
    }

    /// The allowlist the mode narrows a networked sandbox to; empty for `native` (allow all).
    pub fn allow_hosts(self) -> Vec<String> {
        if self == CompatMode::Native {
            return Vec::new();
        }
        self.api_hosts()
            .iter()
            .chain(PACKAGE_REGISTRIES)
            .map(|h| h.to_string())
            .collect()
    }

    /// The profile the mode starts from when `[security] profile` / `--profile` names none:
    /// Codex's "strict" isolation is the restrictive profile (with the allowlist's network).
    pub fn profile(self) -> Profile {
        match self {
            CompatMode::Codex => Profile::Restrictive,
            _ => Profile::Moderate,
        }
    }

    /// Whether the project directory is mounted at /workspace.
    pub fn mounts_project(self) -> bool {
        self != CompatMode::Native
    }
}

impl FromStr for CompatMode {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(CompatMode::Native),
            "claude" => Ok(CompatMode::Claude),
            "codex" => Ok(CompatMode::Codex),
            "gemini" => Ok(CompatMode::Gemini),
            other => Err(CoreError::InvalidArgument(format!(
                "unknown compatibility mode {other:?}: use native, claude, codex or gemini"
            ))),
        }
    }
}

impl std::fmt::Display for CompatMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_allow_their_agents_api_and_the_registries() {
        let claude = CompatMode::Claude.allow_hosts();
        assert!(claude.iter().any(|h| h == "api.anthropic.com"));
        assert!(claude.iter().any(|h| h == "pypi.org"));
        assert!(!claude.iter().any(|h| h == "api.openai.com"));
        assert!(
            CompatMode::Gemini
                .allow_hosts()
                .iter()
                .any(|h| h == "*.googleapis.com")
        );
        assert!(CompatMode::Native.allow_hosts().is_empty());
        assert_eq!(CompatMode::Codex.profile(), Profile::Restrictive);
        for h in CompatMode::Claude.allow_hosts() {
            crate::egress::validate_host_pattern(&h).expect("valid pattern");
        }
        assert!("claud".parse::<CompatMode>().is_err());
    }
}
