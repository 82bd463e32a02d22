//! `plugin install` and `plugin list`: the files each agent needs, merged into what is there.
//!
//! An install is planned in full before anything is written (every existing file is read and
//! parsed first, so invalid JSON or TOML stops it with nothing changed), then every new file is
//! written to a temporary file next to its target, and only when all of them are written are
//! they renamed into place.

use super::{display, env_dir, home, which};
use crate::cli::PluginInstallArgs;
use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};

const SKILL: &str = include_str!("../../assets/plugins/SKILL.md");
const SLASH_COMMAND: &str = include_str!("../../assets/plugins/sandbox.md");
const OPENCODE_PLUGIN: &str = include_str!("../../assets/plugins/agentkernel.ts");

/// The name of our entry in every MCP server table.
const SERVER: &str = "agentkernel";
const SERVER_ARGS: [&str; 2] = ["mcp", "server"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Agent {
    Claude,
    Codex,
    Gemini,
    Opencode,
    Mcp,
}

impl Agent {
    const ALL: [Agent; 5] = [
        Agent::Claude,
        Agent::Codex,
        Agent::Gemini,
        Agent::Opencode,
        Agent::Mcp,
    ];

    fn id(self) -> &'static str {
        match self {
            Agent::Claude => "claude",
            Agent::Codex => "codex",
            Agent::Gemini => "gemini",
            Agent::Opencode => "opencode",
            Agent::Mcp => "mcp",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Vec<Agent>> {
        if s == "all" {
            return Ok(Agent::ALL.to_vec());
        }
        Agent::ALL
            .into_iter()
            .find(|a| a.id() == s)
            .map(|a| vec![a])
            .ok_or_else(|| {
                anyhow!("unknown agent {s:?}: choose claude, codex, gemini, opencode, mcp or all")
            })
    }
}

/// `[agent] preferred` of the configs (`./agentkernel.toml` over `~/.agentkernel/config.toml`),
/// for `plugin install` without an agent.
fn preferred_agent() -> anyhow::Result<String> {
    use agentkernel_core::config::{Config, PROJECT_CONFIG};
    let user = agentkernel_core::paths::agentkernel_home().join("config.toml");
    let project = std::env::current_dir()
        .context("cannot read the current directory")?
        .join(PROJECT_CONFIG);
    for path in [project, user] {
        if path.is_file()
            && let Some(agent) = Config::load(&path)?.agent.preferred
        {
            return Ok(agent);
        }
    }
    bail!(
        "no agent named: give one (claude, codex, gemini, opencode, mcp or all), or set `[agent] preferred` in ~/.agentkernel/config.toml or ./agentkernel.toml"
    )
}

/// Where the files go: a project directory, or the user's home (`--global`).
struct Scope {
    global: bool,
    base: PathBuf,
}

impl Scope {
    fn project() -> anyhow::Result<Scope> {
        let base = std::env::current_dir().context("cannot read the current directory")?;
        Ok(Scope {
            global: false,
            base,
        })
    }

    fn global() -> anyhow::Result<Scope> {
        Ok(Scope {
            global: true,
            base: home()?,
        })
    }

    fn show(&self, path: &Path) -> String {
        display(path, &self.base, self.global)
    }
}

/// One thing an agent needs.
#[derive(Clone, PartialEq, Debug)]
enum Artifact {
    /// A whole file whose content is ours.
    Owned {
        path: PathBuf,
        content: &'static str,
    },
    /// `mcpServers.agentkernel` in a JSON file (Claude Code, Gemini CLI, generic MCP).
    JsonServer { path: PathBuf },
    /// `[mcp_servers.agentkernel]` in a TOML file (Codex).
    TomlServer { path: PathBuf },
}

impl Artifact {
    fn path(&self) -> &Path {
        match self {
            Artifact::Owned { path, .. }
            | Artifact::JsonServer { path }
            | Artifact::TomlServer { path } => path,
        }
    }
}

/// The files `agent` needs in `scope`; `None` when it has nothing there.
fn artifacts(agent: Agent, scope: &Scope) -> anyhow::Result<Option<Vec<Artifact>>> {
    let b = &scope.base;
    let owned = |path: PathBuf, content| Artifact::Owned { path, content };
    let claude_dir = b.join(".claude");
    let arts = match (agent, scope.global) {
        (Agent::Claude, global) => vec![
            owned(claude_dir.join("skills/agentkernel/SKILL.md"), SKILL),
            owned(claude_dir.join("commands/sandbox.md"), SLASH_COMMAND),
            Artifact::JsonServer {
                // Claude Code keeps user-scope MCP servers in ~/.claude.json.
                path: b.join(if global { ".claude.json" } else { ".mcp.json" }),
            },
        ],
        (Agent::Codex, false) | (Agent::Mcp, false) => vec![Artifact::JsonServer {
            path: b.join(".mcp.json"),
        }],
        (Agent::Codex, true) => vec![Artifact::TomlServer {
            path: env_dir("CODEX_HOME", b.join(".codex")).join("config.toml"),
        }],
        (Agent::Gemini, _) => vec![Artifact::JsonServer {
            path: b.join(".gemini/settings.json"),
        }],
        (Agent::Opencode, false) => vec![owned(
            b.join(".opencode/plugins/agentkernel.ts"),
            OPENCODE_PLUGIN,
        )],
        (Agent::Opencode, true) => vec![owned(
            env_dir("XDG_CONFIG_HOME", b.join(".config")).join("opencode/plugins/agentkernel.ts"),
            OPENCODE_PLUGIN,
        )],
        // No agent reads a generic user-wide MCP file.
        (Agent::Mcp, true) => return Ok(None),
    };
    Ok(Some(arts))
}

/// The command MCP entries run: `agentkernel` when the `agentkernel` on PATH is this very
/// binary (portable, survives upgrades, fine to commit), otherwise this binary's absolute path
/// (works whatever the agent's PATH is).
fn server_command() -> String {
    let me = std::env::current_exe().and_then(|p| p.canonicalize()).ok();
    let on_path = which("agentkernel").and_then(|p| p.canonicalize().ok());
    match (me, on_path) {
        (Some(me), Some(p)) if me == p => "agentkernel".to_string(),
        (Some(me), _) => me.display().to_string(),
        (None, _) => "agentkernel".to_string(),
    }
}

/// What an install would do to one file.
#[derive(Debug, PartialEq)]
enum Action {
    Create,
    Update,
    Unchanged,
    /// An owned file the user changed: left alone without `--force`.
    Edited,
}

struct Planned {
    /// Where to write: the target, or what it links to.
    path: PathBuf,
    shown: String,
    old: Option<String>,
    new: String,
    action: Action,
    what: &'static str,
}

fn read_existing(path: &Path, shown: &str) -> anyhow::Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| anyhow!("{shown} is not UTF-8 text; fix or move it, then run again")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("cannot read {shown}: {e}")),
    }
}

/// Write through symlinks (dotfile managers link these files) instead of replacing them.
fn resolve(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

fn json_entry(command: &str) -> Value {
    json!({ "command": command, "args": SERVER_ARGS })
}

/// Parses a JSON config file's text into its top-level object (empty for a blank file).
fn parse_json(text: &str, shown: &str) -> anyhow::Result<Map<String, Value>> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => bail!("{shown} is not a JSON object; fix or move it, then run again"),
        Err(e) => bail!("{shown} is not valid JSON ({e}); fix or move it, then run again"),
    }
}

/// The existing text with our server entry merged in: other servers, other keys and their
/// order are kept; in our entry, `command` and `args` are set and anything else (env, …) kept.
fn merge_json(old: Option<&str>, shown: &str, command: &str) -> anyhow::Result<(String, bool)> {
    let mut root = parse_json(old.unwrap_or(""), shown)?;
    let before = Value::Object(root.clone());
    let servers = root
        .entry("mcpServers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(servers) = servers else {
        bail!("mcpServers in {shown} is not a JSON object; fix or move it, then run again");
    };
    match servers.get_mut(SERVER) {
        Some(Value::Object(entry)) => {
            entry.insert("command".into(), json!(command));
            entry.insert("args".into(), json!(SERVER_ARGS));
        }
        _ => {
            servers.insert(SERVER.into(), json_entry(command));
        }
    }
    let after = Value::Object(root);
    let changed = old.is_none() || after != before;
    let mut text = serde_json::to_string_pretty(&after)?;
    text.push('\n');
    Ok((text, changed))
}

fn json_status(text: &str, shown: &str, command: &str) -> anyhow::Result<State> {
    let root = parse_json(text, shown)?;
    Ok(match root.get("mcpServers").and_then(|s| s.get(SERVER)) {
        None => State::Missing,
        Some(e)
            if e.get("command") == Some(&json!(command))
                && e.get("args") == Some(&json!(SERVER_ARGS)) =>
        {
            State::UpToDate
        }
        Some(_) => State::Differs,
    })
}

fn parse_toml(text: &str, shown: &str) -> anyhow::Result<toml_edit::DocumentMut> {
    text.parse::<toml_edit::DocumentMut>().map_err(|e| {
        anyhow!(
            "{shown} is not valid TOML ({}); fix or move it, then run again",
            e.message()
        )
    })
}

fn toml_entry_is_ours(doc: &toml_edit::DocumentMut, command: &str) -> Option<bool> {
    let entry = doc.get("mcp_servers")?.get(SERVER)?;
    let cmd_ok = entry.get("command").and_then(|c| c.as_str()) == Some(command);
    let args: Option<Vec<&str>> = entry
        .get("args")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect());
    Some(cmd_ok && args.as_deref() == Some(&SERVER_ARGS[..]))
}

/// The existing TOML with `[mcp_servers.agentkernel]` merged in, comments and layout kept.
fn merge_toml(old: Option<&str>, shown: &str, command: &str) -> anyhow::Result<(String, bool)> {
    let text = old.unwrap_or("");
    let mut doc = parse_toml(text, shown)?;
    if old.is_some() && toml_entry_is_ours(&doc, command) == Some(true) {
        return Ok((text.to_string(), false));
    }
    let servers = doc.entry("mcp_servers").or_insert_with(|| {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        toml_edit::Item::Table(t)
    });
    let Some(servers) = servers.as_table_like_mut() else {
        bail!("mcp_servers in {shown} is not a table; fix or move it, then run again");
    };
    if !servers.contains_key(SERVER) {
        servers.insert(SERVER, toml_edit::Item::Table(toml_edit::Table::new()));
    }
    let Some(entry) = servers.get_mut(SERVER).and_then(|e| e.as_table_like_mut()) else {
        bail!("mcp_servers.{SERVER} in {shown} is not a table; fix or move it, then run again");
    };
    entry.insert("command", toml_edit::value(command));
    let mut args = toml_edit::Array::new();
    for a in SERVER_ARGS {
        args.push(a);
    }
    entry.insert("args", toml_edit::value(args));
    Ok((doc.to_string(), true))
}

fn plan_one(art: &Artifact, scope: &Scope, command: &str, force: bool) -> anyhow::Result<Planned> {
    let shown = scope.show(art.path());
    let path = resolve(art.path());
    let old = read_existing(&path, &shown)?;
    let (new, action, what) = match art {
        Artifact::Owned { content, .. } => {
            let action = match &old {
                None => Action::Create,
                Some(o) if o == content => Action::Unchanged,
                Some(_) if force => Action::Update,
                Some(_) => Action::Edited,
            };
            (content.to_string(), action, "")
        }
        Artifact::JsonServer { .. } | Artifact::TomlServer { .. } => {
            let (new, changed) = if matches!(art, Artifact::JsonServer { .. }) {
                merge_json(old.as_deref(), &shown, command)?
            } else {
                merge_toml(old.as_deref(), &shown, command)?
            };
            let action = match (&old, changed) {
                (None, _) => Action::Create,
                (Some(_), true) => Action::Update,
                (Some(_), false) => Action::Unchanged,
            };
            let what = if matches!(art, Artifact::JsonServer { .. }) {
                "mcpServers.agentkernel"
            } else {
                "mcp_servers.agentkernel"
            };
            (new, action, what)
        }
    };
    Ok(Planned {
        path,
        shown,
        old,
        new,
        action,
        what,
    })
}

pub fn install(args: &PluginInstallArgs) -> anyhow::Result<i32> {
    let agents = match &args.agent {
        Some(agent) => Agent::parse(agent)?,
        None => Agent::parse(&preferred_agent()?)?,
    };
    let scope = if args.global {
        Scope::global()?
    } else {
        Scope::project()?
    };
    let mut arts: Vec<Artifact> = Vec::new();
    for agent in &agents {
        match artifacts(*agent, &scope)? {
            Some(list) => {
                for a in list {
                    if !arts.contains(&a) {
                        arts.push(a);
                    }
                }
            }
            None if agents.len() == 1 => bail!(
                "the generic MCP entry has no global location (no agent reads one); install it into a project, or use `plugin install claude|codex|gemini --global`"
            ),
            None => {}
        }
    }
    let command = server_command();
    let plan = arts
        .iter()
        .map(|a| plan_one(a, &scope, &command, args.force))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<&str> = agents
        .iter()
        .filter(|a| !(scope.global && **a == Agent::Mcp))
        .map(|a| a.id())
        .collect();
    let names = names.join(", ");
    let where_ = if scope.global {
        "globally"
    } else {
        "in this project"
    };

    let to_write: Vec<&Planned> = plan
        .iter()
        .filter(|p| matches!(p.action, Action::Create | Action::Update))
        .collect();
    let edited: Vec<&Planned> = plan.iter().filter(|p| p.action == Action::Edited).collect();

    if args.dry_run {
        for p in &to_write {
            let verb = if p.action == Action::Create {
                "create"
            } else {
                "update"
            };
            println!("would {verb} {}", p.shown);
            let old = p.old.as_deref().unwrap_or("");
            // git-style a/ b/ prefixes for project paths; home paths are shown as they are.
            let prefixed = |side: &str| {
                if scope.global {
                    p.shown.clone()
                } else {
                    format!("{side}/{}", p.shown)
                }
            };
            let a = if p.old.is_some() {
                prefixed("a")
            } else {
                "/dev/null".to_string()
            };
            let b = prefixed("b");
            let diff = similar::TextDiff::from_lines(old, &p.new);
            print!("{}", diff.unified_diff().context_radius(3).header(&a, &b));
        }
        for p in &edited {
            println!(
                "would leave {} alone: it differs from agentkernel's version (use --force to replace it)",
                p.shown
            );
        }
        if to_write.is_empty() {
            println!("dry run: nothing would change ({names} up to date {where_})");
        } else {
            println!(
                "dry run: {} file(s) would be written; nothing was written",
                to_write.len()
            );
        }
        return Ok(0);
    }

    write_all(&to_write)?;
    for p in &plan {
        let what = if p.what.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.what)
        };
        match p.action {
            Action::Create => println!("created   {}{what}", p.shown),
            Action::Update => println!("updated   {}{what}", p.shown),
            Action::Unchanged => println!("unchanged {}", p.shown),
            Action::Edited => {}
        }
    }
    for p in &edited {
        eprintln!(
            "agentkernel: left {} alone: it differs from agentkernel's version (edited?); use --force to replace it",
            p.shown
        );
    }
    if to_write.is_empty() {
        println!("nothing changed: {names} already installed {where_} and up to date");
    } else {
        println!(
            "installed {names} {where_}: {} file(s) written; the MCP server runs `{command} mcp server`",
            to_write.len()
        );
    }
    Ok(0)
}

/// Writes every planned file to a temporary file beside it, then renames them all into place;
/// if any temporary file cannot be written, removes what was made and changes nothing.
fn write_all(plan: &[&Planned]) -> anyhow::Result<()> {
    let mut temps: Vec<(PathBuf, &Planned)> = Vec::new();
    let mut made_dirs: Vec<PathBuf> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for p in plan {
            let dir = p
                .path
                .parent()
                .ok_or_else(|| anyhow!("{} has no parent directory", p.shown))?;
            let mut missing = Vec::new();
            let mut d = dir;
            while !d.exists() {
                missing.push(d.to_path_buf());
                match d.parent() {
                    Some(parent) => d = parent,
                    None => break,
                }
            }
            for m in missing.into_iter().rev() {
                std::fs::create_dir(&m).with_context(|| {
                    format!("cannot write {}: cannot create {}", p.shown, m.display())
                })?;
                made_dirs.push(m);
            }
            let name = p
                .path
                .file_name()
                .ok_or_else(|| anyhow!("{} has no file name", p.shown))?;
            let tmp = dir.join(format!(
                ".{}.agentkernel-{}.tmp",
                name.to_string_lossy(),
                std::process::id()
            ));
            let mut f =
                std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", p.shown))?;
            temps.push((tmp.clone(), p));
            f.write_all(p.new.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write {}", p.shown))?;
            // Keep the permissions of a file we replace (~/.claude.json is private).
            if let Ok(meta) = std::fs::metadata(&p.path) {
                std::fs::set_permissions(&tmp, meta.permissions())
                    .with_context(|| format!("cannot write {}", p.shown))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _) in &temps {
            let _ = std::fs::remove_file(tmp);
        }
        for d in made_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        return Err(e);
    }
    for (tmp, p) in &temps {
        std::fs::rename(tmp, &p.path).with_context(|| format!("cannot write {}", p.shown))?;
    }
    Ok(())
}

/// The state of one artifact, for `plugin list`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Missing,
    UpToDate,
    Differs,
}

fn artifact_state(art: &Artifact, scope: &Scope, command: &str) -> anyhow::Result<State> {
    let shown = scope.show(art.path());
    let Some(text) = read_existing(&resolve(art.path()), &shown)? else {
        return Ok(State::Missing);
    };
    match art {
        Artifact::Owned { content, .. } => Ok(if text == *content {
            State::UpToDate
        } else {
            State::Differs
        }),
        Artifact::JsonServer { .. } => json_status(&text, &shown, command),
        Artifact::TomlServer { .. } => {
            let doc = parse_toml(&text, &shown)?;
            Ok(match toml_entry_is_ours(&doc, command) {
                None => State::Missing,
                Some(true) => State::UpToDate,
                Some(false) => State::Differs,
            })
        }
    }
}

/// One agent in one scope: a summary and each file's state.
fn scope_status(agent: Agent, scope: &Scope, command: &str) -> anyhow::Result<Value> {
    let Some(arts) = artifacts(agent, scope)? else {
        return Ok(json!({ "status": "-", "files": [] }));
    };
    let mut files = Vec::new();
    let mut states = Vec::new();
    for a in &arts {
        let shown = scope.show(a.path());
        let (state, label) = match artifact_state(a, scope, command) {
            Ok(State::Missing) => (Some(State::Missing), "missing".to_string()),
            Ok(State::UpToDate) => (Some(State::UpToDate), "up to date".to_string()),
            Ok(State::Differs) => (Some(State::Differs), "differs".to_string()),
            Err(e) => (None, format!("invalid: {e}")),
        };
        states.push(state);
        files.push(json!({ "path": shown, "state": label }));
    }
    let summary = if states.iter().any(Option::is_none) {
        "invalid"
    } else if states.iter().all(|s| *s == Some(State::UpToDate)) {
        "installed"
    } else if states.iter().all(|s| *s == Some(State::Missing)) {
        "not installed"
    } else if states.contains(&Some(State::Missing)) {
        "partial"
    } else {
        "outdated"
    };
    Ok(json!({ "status": summary, "files": files }))
}

pub fn list(json_out: bool) -> anyhow::Result<i32> {
    let project = Scope::project()?;
    let global = Scope::global()?;
    let command = server_command();
    let mut rows = Vec::new();
    for agent in Agent::ALL {
        rows.push(json!({
            "agent": agent.id(),
            "project": scope_status(agent, &project, &command)?,
            "global": scope_status(agent, &global, &command)?,
        }));
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!("{:<10} {:<15} GLOBAL", "PLUGIN", "PROJECT");
    for r in &rows {
        println!(
            "{:<10} {:<15} {}",
            r["agent"].as_str().unwrap_or(""),
            r["project"]["status"].as_str().unwrap_or(""),
            r["global"]["status"].as_str().unwrap_or("")
        );
    }
    let mut notes = Vec::new();
    for r in &rows {
        for scope in ["project", "global"] {
            if let Some(files) = r[scope]["files"].as_array() {
                for f in files {
                    let state = f["state"].as_str().unwrap_or("");
                    if state != "up to date" && state != "missing" {
                        notes.push(format!("  {}: {state}", f["path"].as_str().unwrap_or("")));
                    }
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert(n.clone()));
    if !notes.is_empty() {
        println!(
            "\nfiles that need attention (`plugin install AGENT --force` replaces edited files of ours):"
        );
        for n in notes {
            println!("{n}");
        }
    }
    Ok(0)
}
