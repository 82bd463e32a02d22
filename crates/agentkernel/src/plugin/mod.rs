//! `agentkernel plugin` and `agentkernel agents`: set up AI coding agents to use agentkernel
//! (skill, slash command, MCP server entries, OpenCode plugin) and report which agents are here.
//! CLI-only: nothing here touches the engine or its state.

pub mod agents;
mod install;

use crate::cli::PluginCommand;
use agentkernel_core::exec::EXIT_AGENTKERNEL_ERROR;
use std::path::{Path, PathBuf};

/// Runs `plugin …`; errors are one line on stderr and exit 125.
pub fn command(cmd: PluginCommand) -> i32 {
    let result = match cmd {
        PluginCommand::Install(a) => install::install(&a),
        PluginCommand::List(a) => install::list(a.json),
    };
    report(result)
}

/// Runs `agents`.
pub fn agents_command(json: bool) -> i32 {
    report(agents::agents(json))
}

fn report(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentkernel: error: {e:#}");
            EXIT_AGENTKERNEL_ERROR
        }
    }
}

/// The user's home directory (global installs and login files).
fn home() -> anyhow::Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h)),
        _ => anyhow::bail!("HOME is not set: cannot find the global configuration of the agents"),
    }
}

/// An environment variable naming a directory, or `default` when unset or empty.
fn env_dir(var: &str, default: PathBuf) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => default,
    }
}

/// The first executable file called `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `path` as the user should read it: relative to the project, or with `~` for the home.
fn display(path: &Path, base: &Path, tilde: bool) -> String {
    match path.strip_prefix(base) {
        Ok(rel) if tilde => format!("~/{}", rel.display()),
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}
