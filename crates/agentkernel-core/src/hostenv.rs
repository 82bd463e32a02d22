//! Which of the caller's environment variables the permissive profile passes into a sandbox.
//!
//! Permissive passes the environment through (the reference's "environment passthrough"), as
//! `docker run --env-file <(env)` would, minus two kinds of variable:
//! - credentials, by name: anything containing `TOKEN`, `SECRET`, `PASSWORD`/`PASSWD`,
//!   `CREDENTIAL`, `API_KEY`/`APIKEY`, `PRIVATE_KEY`, `ACCESS_KEY`; ending in `_KEY`, `_PAT`,
//!   `_AUTH`, `_PWD`, `_DSN`, `_COOKIE`; the cloud and agent families `AWS_*`, `AZURE_*`,
//!   `GOOGLE_*`, `GCLOUD_*`, `GCP_*`, `VAULT_*`, `SSH_*`, `GPG_*`; and `DATABASE_URL`,
//!   `KUBECONFIG`, `NETRC`, `KRB5CCNAME`;
//! - what describes the host and would mislead the sandbox: `PATH`, `HOME`, `HOSTNAME`,
//!   `PWD`, `OLDPWD`, `SHELL`, `SHLVL`, `USER`, `LOGNAME`, `MAIL`, `TMPDIR`, `_`, display and
//!   session sockets (`DISPLAY`, `WAYLAND_DISPLAY`, `XAUTHORITY`, `DBUS_SESSION_BUS_ADDRESS`,
//!   `XDG_*`), the dynamic loader's (`LD_*`), container engines' (`DOCKER_*`), and
//!   agentkernel's own (`AGENTKERNEL_*`).
//!
//! Naming a variable with `-e NAME` passes it whatever this list says: the user asked for it.
//! Callers other than the local user get none of this process's environment.

/// The `env_passthrough` entry that stands for "every variable [`passes_through`] allows".
pub const ALL: &str = "*";

const DENIED_EXACT: &[&str] = &[
    "PATH",
    "HOME",
    "HOSTNAME",
    "PWD",
    "OLDPWD",
    "SHELL",
    "SHLVL",
    "USER",
    "LOGNAME",
    "MAIL",
    "TMPDIR",
    "_",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "DBUS_SESSION_BUS_ADDRESS",
    "DATABASE_URL",
    "KUBECONFIG",
    "NETRC",
    "KRB5CCNAME",
];

const DENIED_PREFIXES: &[&str] = &[
    "AGENTKERNEL_",
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "GCLOUD_",
    "GCP_",
    "VAULT_",
    "SSH_",
    "GPG_",
    "XDG_",
    "LD_",
    "DOCKER_",
];

const DENIED_PARTS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "ACCESS_KEY",
];

const DENIED_SUFFIXES: &[&str] = &["_KEY", "_PAT", "_AUTH", "_PWD", "_DSN", "_COOKIE"];

/// Whether whole-environment passthrough passes variable `name` (compared without regard to
/// case: `github_token` is as secret as `GITHUB_TOKEN`).
pub fn passes_through(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    !(name.is_empty()
        || DENIED_EXACT.contains(&upper.as_str())
        || DENIED_PREFIXES.iter().any(|p| upper.starts_with(p))
        || DENIED_PARTS.iter().any(|p| upper.contains(p))
        || DENIED_SUFFIXES.iter().any(|s| upper.ends_with(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_host_variables_stay_out() {
        for name in [
            "GITHUB_TOKEN",
            "github_token",
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "NPM_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "MY_SECRET",
            "DB_PASSWORD",
            "MYSQL_PWD",
            "SENTRY_DSN",
            "SSH_AUTH_SOCK",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "STRIPE_KEY",
            "GH_PAT",
            "DATABASE_URL",
            "PATH",
            "HOME",
            "LD_PRELOAD",
            "XDG_RUNTIME_DIR",
            "AGENTKERNEL_HOME",
            "DOCKER_HOST",
        ] {
            assert!(!passes_through(name), "{name} passed");
        }
    }

    #[test]
    fn ordinary_settings_pass() {
        for name in [
            "TERM",
            "LANG",
            "TZ",
            "EDITOR",
            "CARGO_TERM_COLOR",
            "RUST_LOG",
            "NODE_ENV",
            "CI",
            "KEYBOARD",
            "MONKEY",
        ] {
            assert!(passes_through(name), "{name} was held back");
        }
    }
}
