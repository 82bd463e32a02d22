//! `plugin install`, `plugin list` and `agents`: the files each agent needs, merged into what is
//! there, idempotent, atomic; and the agents found on PATH, without ever printing a key.

mod common;
use common::{Out, bin};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SKILL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/plugins/SKILL.md"
));

/// A project directory and a home directory of its own; nothing from the real environment.
struct Env {
    project: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            project: tempfile::tempdir().expect("project dir"),
            home: tempfile::tempdir().expect("home dir"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("AGENTKERNEL_HOME", self.home.path().join(".agentkernel"))
            .current_dir(self.project.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        self.cmd(args).output().expect("spawn agentkernel").into()
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "agentkernel {args:?}:\n{out:?}");
        out
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.project.path().join(rel)
    }

    fn h(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                out.insert(rel.display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read file")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).expect("valid JSON")
}

/// Our MCP server entry: runs `<this binary> mcp server`.
fn assert_server_entry(entry: &Value) {
    assert_eq!(
        entry["args"],
        serde_json::json!(["mcp", "server"]),
        "{entry}"
    );
    let command = entry["command"].as_str().expect("command is a string");
    let me = Path::new(bin())
        .canonicalize()
        .expect("canonical binary path");
    assert_eq!(Path::new(command), me, "not on PATH: the absolute path");
}

#[test]
fn claude_install_writes_exactly_its_files() {
    let env = Env::new();
    let out = env.ok(&["plugin", "install", "claude"]);
    assert!(out.stdout.contains("created"), "{out:?}");
    assert_eq!(
        files(env.project.path()),
        set(&[
            ".claude/commands/sandbox.md",
            ".claude/skills/agentkernel/SKILL.md",
            ".mcp.json",
        ])
    );
    assert_eq!(read(&env.p(".claude/skills/agentkernel/SKILL.md")), SKILL);
    let skill = read(&env.p(".claude/skills/agentkernel/SKILL.md"));
    assert!(skill.starts_with("---\nname: agentkernel\n"), "{skill}");
    for tool in [
        "sandbox_run",
        "sandbox_exec",
        "sandbox_file_read",
        "sandbox_stop",
    ] {
        assert!(skill.contains(tool), "SKILL.md names {tool}");
    }
    assert!(read(&env.p(".claude/commands/sandbox.md")).contains("$ARGUMENTS"));
    assert_server_entry(&json(&env.p(".mcp.json"))["mcpServers"]["agentkernel"]);
    assert!(files(env.home.path()).is_empty(), "nothing global");
}

/// The installed skill says what this build isolates with: the micro-VM backend is QEMU's, no
/// Firecracker, and no hardware isolation is promised (it depends on the host).
#[test]
fn the_installed_skill_promises_only_what_this_build_isolates_with() {
    let env = Env::new();
    env.ok(&["plugin", "install", "claude"]);
    let skill = read(&env.p(".claude/skills/agentkernel/SKILL.md")).to_lowercase();
    assert!(skill.contains("-b microvm"), "{skill}");
    for promise in ["firecracker", "hardware isolation"] {
        assert!(
            !skill.contains(promise),
            "SKILL.md promises {promise:?}:\n{skill}"
        );
    }
    assert!(skill.contains("linux namespaces"), "{skill}");
    assert!(skill.contains("-b docker"), "{skill}");
}

/// `plugin install` without an agent sets up `[agent] preferred`; an unknown preferred agent
/// is refused, naming the allowed ones.
#[test]
fn plugin_install_without_an_agent_uses_the_preferred_one() {
    let env = Env::new();
    let out = env.run(&["plugin", "install"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("[agent] preferred"), "{out:?}");
    std::fs::write(
        env.p("agentkernel.toml"),
        "[agent]\npreferred = \"opencode\"\n",
    )
    .expect("write");
    env.ok(&["plugin", "install"]);
    assert_eq!(
        files(env.project.path()),
        set(&[".opencode/plugins/agentkernel.ts", "agentkernel.toml"])
    );
    std::fs::write(env.p("agentkernel.toml"), "[agent]\npreferred = \"vim\"\n").expect("write");
    let out = env.run(&["plugin", "install"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("\"vim\"") && out.stderr.contains("claude, codex, gemini, opencode"),
        "{out:?}"
    );
}

#[test]
fn all_installs_every_agent() {
    let env = Env::new();
    env.ok(&["plugin", "install", "all"]);
    assert_eq!(
        files(env.project.path()),
        set(&[
            ".claude/commands/sandbox.md",
            ".claude/skills/agentkernel/SKILL.md",
            ".gemini/settings.json",
            ".mcp.json",
            ".opencode/plugins/agentkernel.ts",
        ])
    );
    assert_server_entry(&json(&env.p(".gemini/settings.json"))["mcpServers"]["agentkernel"]);
    let ts = read(&env.p(".opencode/plugins/agentkernel.ts"));
    for needle in [
        "from \"@opencode-ai/plugin\"",
        "export const AgentkernelPlugin: Plugin",
        "\"/run\"",
        "/exec`",
        "AGENTKERNEL_BASE_URL",
        "http://127.0.0.1:18888",
    ] {
        assert!(ts.contains(needle), "plugin has {needle}");
    }
    let list = env.ok(&["plugin", "list", "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&list.stdout).expect("list --json");
    for r in &rows {
        assert_eq!(r["project"]["status"], "installed", "{r}");
        if r["agent"] != "mcp" {
            assert_eq!(r["global"]["status"], "not installed", "{r}");
        }
    }
}

#[test]
fn merge_keeps_other_servers_keys_and_order() {
    let env = Env::new();
    let before = r#"{
  "zeta": 1,
  "mcpServers": {
    "other": { "command": "other-server", "args": ["--x"] },
    "agentkernel": { "command": "old", "args": [], "env": { "A": "1" } }
  },
  "alpha": [1, 2]
}
"#;
    std::fs::write(env.p(".mcp.json"), before).expect("write .mcp.json");
    env.ok(&["plugin", "install", "mcp"]);
    let text = read(&env.p(".mcp.json"));
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["zeta"], 1);
    assert_eq!(v["alpha"], serde_json::json!([1, 2]));
    assert_eq!(v["mcpServers"]["other"]["command"], "other-server");
    assert_eq!(v["mcpServers"]["other"]["args"], serde_json::json!(["--x"]));
    assert_server_entry(&v["mcpServers"]["agentkernel"]);
    assert_eq!(
        v["mcpServers"]["agentkernel"]["env"]["A"], "1",
        "user's env kept"
    );
    let pos = |k: &str| text.find(k).expect("key present");
    assert!(pos("\"zeta\"") < pos("\"mcpServers\"") && pos("\"mcpServers\"") < pos("\"alpha\""));
    assert!(pos("\"other\"") < pos("\"agentkernel\""), "{text}");
}

#[test]
fn second_install_changes_nothing() {
    let env = Env::new();
    env.ok(&["plugin", "install", "all"]);
    let snapshot: Vec<(String, Vec<u8>, std::time::SystemTime)> = files(env.project.path())
        .into_iter()
        .map(|f| {
            let p = env.p(&f);
            let mtime = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .expect("mtime");
            (f, std::fs::read(&p).expect("read"), mtime)
        })
        .collect();
    let out = env.ok(&["plugin", "install", "all"]);
    assert!(out.stdout.contains("nothing changed"), "{out:?}");
    assert!(
        !out.stdout.contains("created") && !out.stdout.contains("updated"),
        "{out:?}"
    );
    for (f, bytes, mtime) in snapshot {
        let p = env.p(&f);
        assert_eq!(
            std::fs::read(&p).expect("read"),
            bytes,
            "{f} is byte-identical"
        );
        let now = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(now, mtime, "{f} was not rewritten");
    }
}

#[test]
fn dry_run_shows_a_diff_and_writes_nothing() {
    let env = Env::new();
    let out = env.ok(&["plugin", "install", "claude", "--dry-run"]);
    assert!(out.stdout.contains("+++ b/.mcp.json"), "{out:?}");
    assert!(out.stdout.contains("--- /dev/null"), "{out:?}");
    assert!(out.stdout.contains("@@ "), "{out:?}");
    assert!(out.stdout.contains("+name: agentkernel"), "{out:?}");
    assert!(out.stdout.contains("nothing was written"), "{out:?}");
    assert!(files(env.project.path()).is_empty(), "dry run wrote files");

    // On an existing file: the diff shows what changes in it.
    let before = "{\"mcpServers\": {\"other\": {\"command\": \"x\"}}}\n";
    std::fs::write(env.p(".mcp.json"), before).expect("write");
    let out = env.ok(&["plugin", "install", "gemini", "--dry-run"]);
    assert!(
        out.stdout.contains("+++ b/.gemini/settings.json"),
        "{out:?}"
    );
    let out = env.ok(&["plugin", "install", "mcp", "--dry-run"]);
    assert!(out.stdout.contains("--- a/.mcp.json"), "{out:?}");
    assert!(out.stdout.contains("+    \"agentkernel\": {"), "{out:?}");
    assert_eq!(read(&env.p(".mcp.json")), before);
    assert_eq!(files(env.project.path()), set(&[".mcp.json"]));
}

#[test]
fn edited_files_are_kept_unless_forced() {
    let env = Env::new();
    env.ok(&["plugin", "install", "claude"]);
    let skill = env.p(".claude/skills/agentkernel/SKILL.md");
    std::fs::write(&skill, "my own notes\n").expect("edit skill");
    let out = env.ok(&["plugin", "install", "claude"]);
    assert!(out.stderr.contains("--force"), "{out:?}");
    assert!(
        out.stderr.contains(".claude/skills/agentkernel/SKILL.md"),
        "{out:?}"
    );
    assert_eq!(read(&skill), "my own notes\n");

    let list = env.ok(&["plugin", "list", "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&list.stdout).expect("list --json");
    let claude = rows
        .iter()
        .find(|r| r["agent"] == "claude")
        .expect("claude row");
    assert_eq!(claude["project"]["status"], "outdated", "{claude}");

    let out = env.ok(&["plugin", "install", "claude", "--force"]);
    assert!(
        out.stdout
            .contains("updated   .claude/skills/agentkernel/SKILL.md"),
        "{out:?}"
    );
    assert_eq!(read(&skill), SKILL);
}

#[test]
fn global_installs_go_under_home() {
    let env = Env::new();
    let codex_before =
        "# my settings\nmodel = \"o3\"\n\n[mcp_servers.other]\ncommand = \"other\" # keep me\n";
    std::fs::create_dir_all(env.h(".codex")).expect("mkdir .codex");
    std::fs::write(env.h(".codex/config.toml"), codex_before).expect("write config.toml");
    std::fs::write(
        env.h(".claude.json"),
        "{\"numStartups\": 3, \"projects\": {}}",
    )
    .expect("write");

    env.ok(&["plugin", "install", "all", "--global"]);
    assert!(
        files(env.project.path()).is_empty(),
        "nothing in the project"
    );
    assert_eq!(
        files(env.home.path()),
        set(&[
            ".claude.json",
            ".claude/commands/sandbox.md",
            ".claude/skills/agentkernel/SKILL.md",
            ".codex/config.toml",
            ".config/opencode/plugins/agentkernel.ts",
            ".gemini/settings.json",
        ])
    );
    let claude = json(&env.h(".claude.json"));
    assert_eq!(claude["numStartups"], 3);
    assert_server_entry(&claude["mcpServers"]["agentkernel"]);
    assert_server_entry(&json(&env.h(".gemini/settings.json"))["mcpServers"]["agentkernel"]);

    let text = read(&env.h(".codex/config.toml"));
    assert!(
        text.starts_with(codex_before),
        "user's TOML kept as written:\n{text}"
    );
    let toml: toml::Table = text.parse().expect("valid TOML");
    assert_eq!(toml["model"].as_str(), Some("o3"));
    let servers = toml["mcp_servers"].as_table().expect("mcp_servers table");
    assert_eq!(servers["other"]["command"].as_str(), Some("other"));
    let ours = servers["agentkernel"].as_table().expect("our entry");
    let entry = serde_json::to_value(ours).expect("entry as JSON");
    assert_server_entry(&entry);

    let out = env.ok(&["plugin", "install", "all", "--global"]);
    assert!(out.stdout.contains("nothing changed"), "{out:?}");
    let rows: Vec<Value> =
        serde_json::from_str(&env.ok(&["plugin", "list", "--json"]).stdout).expect("json");
    for r in &rows {
        if r["agent"] != "mcp" {
            assert_eq!(r["global"]["status"], "installed", "{r}");
            assert_eq!(r["project"]["status"], "not installed", "{r}");
        }
    }

    let out = env.run(&["plugin", "install", "mcp", "--global"]);
    assert_eq!(out.code, 125, "{out:?}");
}

#[test]
fn invalid_json_is_refused_and_left_untouched() {
    let env = Env::new();
    std::fs::write(env.p(".mcp.json"), "{ not json").expect("write");
    let out = env.run(&["plugin", "install", "claude"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(
        out.stderr.contains(".mcp.json is not valid JSON"),
        "{out:?}"
    );
    assert_eq!(read(&env.p(".mcp.json")), "{ not json");
    assert_eq!(
        files(env.project.path()),
        set(&[".mcp.json"]),
        "nothing else written"
    );

    std::fs::create_dir(env.p(".gemini")).expect("mkdir");
    std::fs::write(env.p(".gemini/settings.json"), "[1, 2]").expect("write");
    let out = env.run(&["plugin", "install", "gemini"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("not a JSON object"), "{out:?}");
}

#[test]
fn unwritable_paths_leave_nothing_half_written() {
    let env = Env::new();
    // A file where the OpenCode plugin directory should be: the last file of `all` fails.
    std::fs::write(env.p(".opencode"), "in the way").expect("write");
    let out = env.run(&["plugin", "install", "all"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(
        out.stderr.contains(".opencode/plugins/agentkernel.ts"),
        "{out:?}"
    );
    assert_eq!(
        files(env.project.path()),
        set(&[".opencode"]),
        "nothing written"
    );
    let leftovers: Vec<_> = std::fs::read_dir(env.project.path())
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no directories left behind: {leftovers:?}"
    );
}

#[test]
fn unknown_agent_is_one_line_and_125() {
    let env = Env::new();
    let out = env.run(&["plugin", "install", "cursor"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("unknown agent \"cursor\""), "{out:?}");
    assert!(files(env.project.path()).is_empty());
}

fn script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn agents_reports_installed_agents_and_keys_without_values() {
    let env = Env::new();
    let bin_dir = tempfile::tempdir().expect("bin dir");
    script(bin_dir.path(), "claude", "echo '9.8.7 (Claude Code)'");
    // An agent whose --version never answers: reported installed, without a version.
    script(bin_dir.path(), "gemini", "exec /bin/sleep 60");
    let secret = "sk-ant-test-secret-value-123";
    let run = |args: &[&str]| -> Out {
        env.cmd(args)
            .env("PATH", bin_dir.path())
            .env("ANTHROPIC_API_KEY", secret)
            .output()
            .expect("spawn")
            .into()
    };
    let out = run(&["agents", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).expect("agents --json");
    let row = |id: &str| rows.iter().find(|r| r["agent"] == id).expect("agent row");
    let claude = row("claude");
    assert_eq!(claude["installed"], true, "{claude}");
    assert_eq!(claude["version"], "9.8.7 (Claude Code)", "{claude}");
    assert_eq!(claude["api_key"], "set", "{claude}");
    assert_eq!(claude["api_key_var"], "ANTHROPIC_API_KEY", "{claude}");
    let gemini = row("gemini");
    assert_eq!(gemini["installed"], true, "{gemini}");
    assert_eq!(gemini["version"], Value::Null, "{gemini}");
    assert_eq!(gemini["api_key"], "missing", "{gemini}");
    let codex = row("codex");
    assert_eq!(codex["installed"], false, "{codex}");
    assert_eq!(codex["api_key"], "missing", "{codex}");
    assert_eq!(row("opencode")["installed"], false);

    let out = run(&["agents"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(secret));
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Claude Code"))
        .expect("Claude Code line");
    assert!(
        line.contains("installed") && line.contains("set (ANTHROPIC_API_KEY)"),
        "{line}"
    );
    assert!(out.stdout.contains("Codex        not installed"), "{out:?}");
}
