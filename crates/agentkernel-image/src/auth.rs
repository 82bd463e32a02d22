//! Registry credentials as Docker keeps them: `auths` of `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`. Credential helpers (`credsStore`, `credHelpers`) are not run.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Docker Hub's credentials are stored under its v1 URL.
fn keys_for(host: &str) -> Vec<String> {
    let mut keys = vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
    ];
    if host == "docker.io" || host == "index.docker.io" {
        keys.push("https://index.docker.io/v1/".to_string());
    }
    keys
}

/// Credentials for the registry contacted (`contacted`, a mirror or the registry itself), else
/// for the registry the image belongs to; anonymous when there are none.
pub(crate) fn credentials_for(registry: &str, contacted: &str) -> RegistryAuth {
    let Some(path) = config_path() else {
        return RegistryAuth::Anonymous;
    };
    let Ok(text) = std::fs::read(&path) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(config) = serde_json::from_slice::<DockerConfig>(&text) else {
        return RegistryAuth::Anonymous;
    };
    for host in [contacted, registry] {
        for key in keys_for(host) {
            if let Some(entry) = config.auths.get(&key)
                && let Some(auth) = decode(entry)
            {
                return auth;
            }
        }
    }
    RegistryAuth::Anonymous
}

fn decode(entry: &AuthEntry) -> Option<RegistryAuth> {
    if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        return Some(RegistryAuth::Basic(user.clone(), pass.clone()));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.as_deref()?)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some(RegistryAuth::Basic(user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_auth_and_username_password() {
        let entry = AuthEntry {
            auth: Some("YWdlbnQ6a2VybmVs".into()),
            ..Default::default()
        };
        assert!(
            matches!(decode(&entry), Some(RegistryAuth::Basic(u, p)) if u == "agent" && p == "kernel")
        );
        let entry = AuthEntry {
            username: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        assert!(matches!(decode(&entry), Some(RegistryAuth::Basic(u, _)) if u == "u"));
        assert!(decode(&AuthEntry::default()).is_none());
        assert!(keys_for("docker.io").contains(&"https://index.docker.io/v1/".to_string()));
    }
}
