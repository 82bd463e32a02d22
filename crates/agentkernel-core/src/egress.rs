//! What a sandbox may reach on the network beyond its own loopback, as plain data: the host
//! patterns of an allowlist or deny list, and the secrets the egress proxy adds to requests
//! for the hosts they are bound to. `agentkernel-net` enforces them; this module only says
//! what they are and checks that they are well formed.

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// What the sandbox sees in place of a secret the proxy injects: environment variables bound
/// with `--secret` hold it, and `--secret-file` files with `--placeholder-secrets`.
pub const PLACEHOLDER: &str = "ak-proxy-managed";

/// The header a secret goes into when the binding names none (`Authorization: Bearer VALUE`).
pub const DEFAULT_HEADER: &str = "authorization";

/// Where `--secret-file KEY` puts the value inside the sandbox.
pub const SECRET_FILE_DIR: &str = "/run/agentkernel/secrets";

/// One `--secret` binding: `KEY:host`, `KEY=value:host` or `KEY:host:header`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretBinding {
    /// The environment variable (and vault key) the secret is known by.
    pub key: String,
    /// The value given inline (`KEY=value:host`); otherwise it comes from the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The only host whose requests get the secret (exact name, no wildcard).
    pub host: String,
    /// The header it goes into; `None` means `Authorization: Bearer VALUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

impl FromStr for SecretBinding {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            CoreError::InvalidSecret(format!(
                "{s:?}: {why}; write KEY:host, KEY=value:host or KEY:host:header"
            ))
        };
        // The value may hold ':' itself, so it ends at the last two fields' separators.
        let (key_value, rest) = match s.split_once('=') {
            Some((key, after)) => {
                let (value, rest) = after
                    .rsplit_once(':')
                    .ok_or_else(|| bad("no host after the value"))?;
                // `KEY=value:host` only; a header after an inline value is ambiguous with
                // values holding ':', so it is written `KEY:host:header` with the vault.
                ((key, Some(value)), vec![rest])
            }
            None => {
                let mut parts = s.splitn(3, ':');
                let key = parts.next().unwrap_or_default();
                ((key, None), parts.collect())
            }
        };
        let (key, value) = key_value;
        validate_secret_key(key).map_err(|e| bad(&e))?;
        let host = rest.first().copied().unwrap_or_default();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        validate_host_name(host).map_err(|e| bad(&e))?;
        let header = match rest.get(1) {
            Some(h) => {
                validate_header_name(h).map_err(|e| bad(&e))?;
                Some(h.to_ascii_lowercase())
            }
            None => None,
        };
        if value.is_some_and(str::is_empty) {
            return Err(bad("the value is empty"));
        }
        Ok(SecretBinding {
            key: key.to_string(),
            value: value.map(str::to_string),
            host: host.to_ascii_lowercase(),
            header,
        })
    }
}

/// A secret's key: an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most 128).
pub fn validate_secret_key(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || key.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{key:?} is not a secret key: use letters, digits and '_', not starting with a digit"
        ));
    }
    Ok(())
}

/// A host name as a binding or pattern names it: DNS labels of letters, digits and '-'
/// (or an IPv4 address), at most 253 characters.
pub fn validate_host_name(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name: use a name like api.example.com"
        ))
    }
}

/// An HTTP header name (RFC 9110 token characters).
pub fn validate_header_name(name: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || name.len() > 128 || !name.chars().all(token) {
        return Err(format!("{name:?} is not an HTTP header name"));
    }
    Ok(())
}

/// An allow or deny pattern: a host name, or `*.` and a host name for every name below it
/// (`*.googleapis.com` matches `storage.googleapis.com`, not `googleapis.com`).
pub fn validate_host_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    validate_host_name(name).map_err(|_| {
        format!(
            "{pattern:?} is not a host pattern: use a name like api.example.com or *.example.com"
        )
    })
}

/// Whether `host` (lowercase, no trailing dot) matches `pattern`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_parse_in_the_three_forms() {
        let b: SecretBinding = "OPENAI_API_KEY:api.openai.com"
            .parse()
            .expect("valid binding");
        assert_eq!(
            (b.key.as_str(), b.value, b.host.as_str(), b.header),
            ("OPENAI_API_KEY", None, "api.openai.com", None)
        );
        let b: SecretBinding = "K=a:b=c:API.example.com".parse().expect("valid binding");
        assert_eq!(b.value.as_deref(), Some("a:b=c"));
        assert_eq!(b.host, "api.example.com");
        let b: SecretBinding = "K:api.example.com:X-Api-Key"
            .parse()
            .expect("valid binding");
        assert_eq!(b.header.as_deref(), Some("x-api-key"));
        for bad in [
            "",
            "K",
            "K:",
            "1K:host",
            "K:ho st",
            "K:host:bad header",
            "K=:host",
            "K=v",
        ] {
            assert!(bad.parse::<SecretBinding>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn wildcards_match_names_below_only() {
        assert!(host_matches("*.googleapis.com", "storage.googleapis.com"));
        assert!(host_matches("*.googleapis.com", "a.b.googleapis.com."));
        assert!(!host_matches("*.googleapis.com", "googleapis.com"));
        assert!(!host_matches("*.googleapis.com", "evilgoogleapis.com"));
        assert!(host_matches("pypi.org", "PyPI.org"));
        assert!(!host_matches("pypi.org", "files.pypi.org"));
        assert!(validate_host_pattern("*.x.com").is_ok());
        assert!(validate_host_pattern("*").is_err());
        assert!(validate_host_pattern("a.*.com").is_err());
    }
}
