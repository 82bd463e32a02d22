//! `agentkernel agents`: which AI coding agents are installed and whether they have credentials.
//! Key values are never read beyond "is it set", and never printed.

use super::{env_dir, home, which};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long `AGENT --version` may take before we stop waiting for it.
const VERSION_TIMEOUT: Duration = Duration::from_secs(3);

struct Known {
    id: &'static str,
    name: &'static str,
    command: &'static str,
    /// Environment variables holding an API key, any one of which is enough.
    key_vars: &'static [&'static str],
    /// Where the agent keeps the credentials of `login` (relative to HOME unless it says).
    login: fn(&Path) -> PathBuf,
}

const AGENTS: [Known; 4] = [
    Known {
        id: "claude",
        name: "Claude Code",
        command: "claude",
        key_vars: &["ANTHROPIC_API_KEY"],
        login: |h| h.join(".claude/.credentials.json"),
    },
    Known {
        id: "gemini",
        name: "Gemini CLI",
        command: "gemini",
        key_vars: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        login: |h| h.join(".gemini/oauth_creds.json"),
    },
    Known {
        id: "codex",
        name: "Codex",
        command: "codex",
        key_vars: &["OPENAI_API_KEY"],
        login: |h| env_dir("CODEX_HOME", h.join(".codex")).join("auth.json"),
    },
    Known {
        id: "opencode",
        name: "OpenCode",
        command: "opencode",
        // OpenCode talks to many providers; these are the usual ones.
        key_vars: &[
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GEMINI_API_KEY",
            "GOOGLE_GENERATIVE_AI_API_KEY",
            "OPENROUTER_API_KEY",
        ],
        login: |h| env_dir("XDG_DATA_HOME", h.join(".local/share")).join("opencode/auth.json"),
    },
];

fn is_set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

/// The first line `program --version` prints, if it answers within [`VERSION_TIMEOUT`].
fn version_of(program: &Path) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .ok()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(VERSION_TIMEOUT) {
        Ok(Ok(out)) if out.status.success() => {
            let text = if out.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
                out.stdout
            } else {
                out.stderr
            };
            let text = String::from_utf8_lossy(&text);
            let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
            Some(line.chars().take(60).collect())
        }
        Ok(_) => None,
        Err(_) => {
            // Too slow: stop it and everything it started.
            if let Some(pgid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            None
        }
    }
}

pub fn agents(json_out: bool) -> anyhow::Result<i32> {
    let home = home().ok();
    let found: Vec<Option<PathBuf>> = AGENTS.iter().map(|a| which(a.command)).collect();
    let versions: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = found
            .iter()
            .map(|p| s.spawn(move || p.as_deref().and_then(version_of)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let mut rows = Vec::new();
    for ((a, path), version) in AGENTS.iter().zip(&found).zip(versions) {
        let key_var = a.key_vars.iter().copied().find(|v| is_set(v));
        let login = home.as_deref().is_some_and(|h| (a.login)(h).is_file());
        let api_key = match (key_var, login) {
            (Some(_), _) => "set",
            (None, true) => "login",
            (None, false) => "missing",
        };
        rows.push(json!({
            "agent": a.id,
            "name": a.name,
            "command": a.command,
            "installed": path.is_some(),
            "path": path.as_ref().map(|p| p.display().to_string()),
            "version": version,
            "api_key": api_key,
            "api_key_var": key_var,
            "api_key_vars": a.key_vars,
        }));
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!("{:<12} {:<14} {:<24} API KEY", "AGENT", "STATUS", "VERSION");
    println!("{}", "-".repeat(72));
    for (r, a) in rows.iter().zip(&AGENTS) {
        let status = if r["installed"] == true {
            "installed"
        } else {
            "not installed"
        };
        let version = r["version"].as_str().unwrap_or("-");
        let key = match (r["api_key"].as_str(), r["api_key_var"].as_str()) {
            (Some("set"), Some(var)) => format!("set ({var})"),
            (Some("login"), _) => "login (stored credentials)".to_string(),
            _ if a.key_vars.len() > 2 => format!("missing (one of {})", a.key_vars.join(", ")),
            _ => format!("missing ({})", a.key_vars.join(" or ")),
        };
        println!("{:<12} {:<14} {:<24} {key}", a.name, status, version);
    }
    Ok(0)
}
