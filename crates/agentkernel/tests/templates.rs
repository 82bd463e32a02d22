//! Templates (docs/templates.md): the built-ins, user templates (`template add|list|show|
//! remove|save`), `--template` on `run` and `create`, `sandbox export-config` /
//! `import-config`, and `sandbox create --dir`. On the native backend, against the loopback
//! test registry.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

/// The built-ins the reference documentation names, and the agents'.
const BUILT_INS: &[&str] = &[
    "python",
    "node",
    "rust",
    "go",
    "ruby",
    "java",
    "dotnet",
    "php",
    "elixir",
    "c-cpp",
    "shell",
    "terraform",
    "python-ci",
    "node-ci",
    "rust-ci",
    "data-science",
    "web-dev",
    "fullstack",
    "claude",
    "codex",
    "gemini",
    "opencode",
];

fn templates(ak: &Ak) -> Vec<Value> {
    serde_json::from_str(&ak.ok(&["template", "list", "--json"]).stdout).expect("list --json")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write template");
    path.display().to_string()
}

fn sandbox(ak: &Ak, name: &str) -> Value {
    ak.list_json()
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sandbox {name}"))
}

fn names(ak: &Ak) -> Vec<String> {
    ak.list_json()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn every_built_in_parses_and_validates() {
    let ak = Ak::new();
    let list = templates(&ak);
    let built_in: Vec<&str> = list
        .iter()
        .filter(|t| t["source"] == "built-in")
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(built_in, BUILT_INS, "the built-ins, in order");
    for t in &list {
        assert!(t["error"].is_null(), "{t}");
        assert!(
            t["image"].is_string(),
            "every built-in names its image: {t}"
        );
        assert!(t["description"].is_string(), "{t}");
    }
    for name in BUILT_INS {
        let out = ak.ok(&["template", "show", name]);
        let parsed: toml::Table = toml::from_str(&out.stdout).expect("show prints TOML");
        assert_eq!(parsed["name"].as_str(), Some(*name), "{}", out.stdout);
    }
    // The agents' templates carry their compatibility modes.
    for agent in ["claude", "codex", "gemini"] {
        let t = list.iter().find(|t| t["name"] == agent).expect(agent);
        assert_eq!(t["compatibility"], agent, "{t}");
        assert_eq!(t["setup"], true, "{t}");
    }
}

/// The registry part of an image name, when it names one (`mcr.microsoft.com/…`); Docker Hub
/// names have none.
fn registry_of(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

#[test]
fn every_built_ins_image_resolves_through_the_test_registry() {
    let ak = Ak::new();
    let registry = test_registry().addr;
    let mut images: Vec<String> = templates(&ak)
        .iter()
        .filter(|t| t["source"] == "built-in")
        .filter_map(|t| t["image"].as_str().map(str::to_string))
        .collect();
    images.sort();
    images.dedup();
    for image in &images {
        // Docker Hub names go through the mirror (the test registry); another registry's
        // image is served under its path there (docs/test-registry.md): nothing here ever
        // reaches a public registry.
        let pulled = match registry_of(image) {
            None => image.clone(),
            Some(host) => format!("{registry}/{}", &image[host.len() + 1..]),
        };
        let out = run_bounded(&ak, &["images", "pull", "-q", &pulled]);
        assert_eq!(out.code, 0, "{image} (as {pulled}): {out:?}");
    }
    // And a built-in's image really starts a sandbox.
    let out = ak.ok(&[
        "run",
        "--template",
        "shell",
        "--no-network",
        "--",
        "echo",
        "ok",
    ]);
    assert_eq!(out.stdout, "ok\n");
}

#[test]
fn add_list_show_remove_round_trip() {
    let ak = Ak::new();
    let text = "# my own\nimage = \"busybox:latest\"\ndescription = \"mine\"\nports = [8080]\n\n[env]\nA = \"1\"\n";
    let file = write(ak.cwd.path(), "mine.toml", text);
    ak.ok(&["template", "add", "mine", &file]);
    let list = templates(&ak);
    let mine = list.iter().find(|t| t["name"] == "mine").expect("listed");
    assert_eq!(mine["source"], "user", "{mine}");
    assert_eq!(mine["ports"], serde_json::json!([8080]), "{mine}");
    let human = ak.ok(&["template", "list"]).stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("mine ") && l.contains("user")),
        "{human}"
    );
    assert_eq!(
        ak.ok(&["template", "show", "mine"]).stdout,
        text,
        "kept as written"
    );
    // Stored privately, in the state directory.
    let stored = ak.home.path().join("templates/mine.toml");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&stored)
        .expect("stored")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Taken names, built-ins' names and bad names are refused; nothing changes.
    let out = ak.run(&["template", "add", "mine", &file]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("already exists"), "{out:?}");
    let out = ak.run(&["template", "add", "python", &file]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("built-in"), "{out:?}");
    for bad in ["../x", "x.toml"] {
        let out = ak.run(&["template", "add", bad, &file]);
        assert_eq!(out.code, 125, "{bad}: {out:?}");
    }
    assert_eq!(ak.ok(&["template", "show", "mine"]).stdout, text);
    // Removing: built-ins stay, unknown names say so.
    let out = ak.run(&["template", "remove", "python"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("built-in"), "{out:?}");
    ak.ok(&["template", "remove", "mine"]);
    assert!(!stored.exists());
    assert!(!templates(&ak).iter().any(|t| t["name"] == "mine"));
    let out = ak.run(&["template", "remove", "mine"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("template list"), "{out:?}");
    let out = ak.run(&["run", "--template", "mine", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(templates(&ak).iter().any(|t| t["name"] == "python"));
}

#[test]
fn a_template_gives_its_image_env_and_resources_and_flags_override_them() {
    let ak = Ak::new();
    let file = write(
        ak.cwd.path(),
        "t.toml",
        "image = \"busybox:latest\"\n[env]\nGREETING = \"hello\"\nFOO = \"template\"\n[resources]\nmemory_mb = 300\n",
    );
    ak.ok(&["template", "add", "greet", &file]);
    let out = ak.ok(&[
        "run",
        "--template",
        "greet",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo $GREETING $FOO",
    ]);
    assert_eq!(out.stdout, "hello template\n");
    assert!(out.stderr.contains("template greet"), "{out:?}");
    let out = ak.ok(&[
        "run",
        "--template",
        "greet",
        "--no-network",
        "-e",
        "FOO=flag",
        "--",
        "sh",
        "-c",
        "echo $GREETING $FOO",
    ]);
    assert_eq!(out.stdout, "hello flag\n", "-e beats the template");
    let out = ak.ok(&[
        "run",
        "--verbose",
        "--template",
        "greet",
        "--no-network",
        "--",
        "true",
    ]);
    assert!(
        out.stderr
            .contains("image busybox:latest (chosen by template greet)"),
        "{out:?}"
    );
    // A file's path works as well as a name.
    let out = ak.ok(&[
        "run",
        "--template",
        "./t.toml",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo $GREETING",
    ]);
    assert_eq!(out.stdout, "hello\n");
    // --image beats the template's image; a built-in sets its own environment.
    let out = ak.ok(&[
        "run",
        "--template",
        "greet",
        "--image",
        "python:3.12-alpine",
        "--no-network",
        "--",
        "python3",
        "-c",
        "import os; print(os.environ['GREETING'])",
    ]);
    assert_eq!(out.stdout, "hello\n");
    let out = ak.ok(&[
        "run",
        "--template",
        "python",
        "--no-network",
        "--",
        "python3",
        "-c",
        "import os; print(os.environ['PYTHONUNBUFFERED'])",
    ]);
    assert_eq!(out.stdout, "1\n");
    // Resources: template < ./agentkernel.toml < flags.
    ak.ok(&["create", "t1", "--template", "greet"]);
    assert_eq!(sandbox(&ak, "t1")["memory_mb"], 300);
    assert_eq!(
        sandbox(&ak, "t1")["labels"]["agentkernel.template"],
        "greet"
    );
    std::fs::write(
        ak.cwd.path().join("agentkernel.toml"),
        "[resources]\nmemory_mb = 200\n",
    )
    .expect("project config");
    ak.ok(&["sandbox", "create", "t2", "--template", "greet"]);
    assert_eq!(sandbox(&ak, "t2")["memory_mb"], 200);
    ak.ok(&["create", "t3", "--template", "greet", "--memory", "100"]);
    assert_eq!(sandbox(&ak, "t3")["memory_mb"], 100);
}

#[test]
fn bad_template_files_exit_125_with_the_line_and_make_nothing() {
    let ak = Ak::new();
    let bad = write(
        ak.cwd.path(),
        "bad.toml",
        "image = \"busybox:latest\"\n[env]\nA = \n",
    );
    let out = ak.run(&["template", "add", "bad", &bad]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("line 3"), "{out:?}");
    assert!(!templates(&ak).iter().any(|t| t["name"] == "bad"));
    let out = ak.run(&["run", "--template", "./bad.toml", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("line 3"), "{out:?}");
    write(
        ak.cwd.path(),
        "typo.toml",
        "image = \"busybox:latest\"\nprofle = \"x\"\n",
    );
    let out = ak.run(&["create", "x", "--template", "./typo.toml"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("profle") && out.stderr.contains("line 2"),
        "{out:?}"
    );
    let wrong = write(
        ak.cwd.path(),
        "wrong.toml",
        "image = \"busybox:latest\"\n[resources]\nmemory_mb = 1\n",
    );
    let out = ak.run(&["create", "x", "--template", &wrong]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("memory_mb"), "{out:?}");
    assert!(names(&ak).is_empty(), "nothing made");
}

#[test]
fn github_templates_are_refused_with_what_to_do() {
    let ak = Ak::new();
    for args in [
        &[
            "run",
            "--template",
            "github:org/repo/tpl/py.toml",
            "--",
            "true",
        ][..],
        &["create", "g", "--template", "github:org/repo/tpl/py.toml"],
        &["template", "show", "github:org/repo/tpl/py.toml"],
    ] {
        let out = ak.run(args);
        assert_eq!(out.code, 125, "{out:?}");
        assert!(out.stderr.contains("does not fetch"), "{out:?}");
        assert!(out.stderr.contains("--template ./py.toml"), "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    }
    assert!(names(&ak).is_empty());
}

#[test]
fn export_config_round_trips_through_import_config() {
    let ak = Ak::new();
    ak.ok(&[
        "create",
        "src",
        "--image",
        "busybox:latest",
        "-e",
        "A=1",
        "-e",
        "B=two words",
        "--memory",
        "300",
        "--vcpus",
        "1.5",
        "--disk",
        "500",
        "--secret",
        "TOKEN=s3cr3t-value:api.example.com",
    ]);
    let exported = ak.ok(&["sandbox", "export-config", "src"]).stdout;
    assert!(!exported.contains("s3cr3t-value"), "{exported}");
    assert!(exported.contains("TOKEN"), "secrets are named: {exported}");
    let parsed: toml::Table = toml::from_str(&exported).expect("TOML");
    assert_eq!(parsed["image"].as_str(), Some("busybox:latest"));
    let file = write(ak.cwd.path(), "src.toml", &exported);
    // Names without a `/` or .toml are files here too.
    write(ak.cwd.path(), "srcconfig", &exported);
    ak.ok(&[
        "sandbox",
        "import-config",
        &file,
        "--as",
        "copy",
        "-B",
        "native",
    ]);
    ak.ok(&["sandbox", "import-config", "srcconfig", "--as", "copy2"]);
    let (a, b) = (sandbox(&ak, "src"), sandbox(&ak, "copy"));
    for key in [
        "image",
        "memory_mb",
        "vcpus",
        "profile",
        "backend",
        "network",
    ] {
        assert_eq!(a[key], b[key], "{key}: {a} / {b}");
    }
    assert_eq!(sandbox(&ak, "copy2")["memory_mb"], 300);
    ak.ok(&["start", "copy"]);
    let out = ak.ok(&[
        "exec",
        "copy",
        "--",
        "sh",
        "-c",
        "echo \"$A|$B|${TOKEN:-none}\"",
    ]);
    assert_eq!(out.stdout, "1|two words|none\n");
    // The network carries over: none, and an allowlist with denied hosts.
    ak.ok(&[
        "create",
        "quiet",
        "--image",
        "busybox:latest",
        "--no-network",
    ]);
    ak.ok(&[
        "create",
        "narrow",
        "--image",
        "busybox:latest",
        "--allow-host",
        "api.example.com",
        "--deny-host",
        "bad.example.com",
    ]);
    for name in ["quiet", "narrow"] {
        let exported = ak.ok(&["sandbox", "export-config", name]).stdout;
        let f = write(ak.cwd.path(), &format!("{name}.toml"), &exported);
        let copy = format!("{name}-copy");
        ak.ok(&["sandbox", "import-config", &f, "--as", &copy]);
        let (a, b) = (sandbox(&ak, name), sandbox(&ak, &copy));
        for key in ["network", "allow_hosts", "deny_hosts"] {
            assert_eq!(a[key], b[key], "{name} {key}: {exported}");
        }
    }
    assert_eq!(sandbox(&ak, "quiet-copy")["network"], "none");
    assert_eq!(sandbox(&ak, "narrow-copy")["network"], "allowlist");
    // A failed import leaves no sandbox.
    let before = names(&ak);
    let out = ak.run(&["sandbox", "import-config", &file, "--as", "copy"]);
    assert_eq!(out.code, 125, "{out:?}");
    let out = ak.run(&["sandbox", "import-config", "missing.toml", "--as", "copy3"]);
    assert_eq!(out.code, 125, "{out:?}");
    let bad = write(ak.cwd.path(), "bad.toml", "image = 3\n");
    let out = ak.run(&["sandbox", "import-config", &bad, "--as", "copy3"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("line 1"), "{out:?}");
    assert_eq!(names(&ak), before);
    let out = ak.run(&["sandbox", "export-config", "nope"]);
    assert_eq!(out.code, 125, "{out:?}");
}

#[test]
fn create_dir_copies_the_project_and_permissive_mounts_it() {
    let ak = Ak::new();
    let project = tempfile::tempdir().expect("project");
    std::fs::create_dir(project.path().join("sub")).expect("mkdir");
    std::fs::write(project.path().join("a.txt"), "hello\n").expect("write");
    std::fs::write(project.path().join("sub/b.txt"), "deep\n").expect("write");
    let dir = project.path().display().to_string();
    ak.ok(&[
        "sandbox",
        "create",
        "copied",
        "--dir",
        &dir,
        "--image",
        "busybox:latest",
        "--no-network",
    ]);
    assert_eq!(
        ak.status_of("copied").as_deref(),
        Some("stopped"),
        "left stopped"
    );
    ak.ok(&["start", "copied"]);
    let out = ak.ok(&[
        "exec",
        "copied",
        "--",
        "sh",
        "-c",
        "cat /workspace/a.txt /workspace/sub/b.txt && echo changed > /workspace/a.txt",
    ]);
    assert_eq!(out.stdout, "hello\ndeep\n");
    assert_eq!(
        std::fs::read_to_string(project.path().join("a.txt")).expect("read"),
        "hello\n",
        "a copy: the sandbox's writes stay in it"
    );
    // Permissive mounts the directory instead: writes reach the host.
    ak.ok(&[
        "sandbox",
        "create",
        "mounted",
        "--dir",
        &dir,
        "--image",
        "busybox:latest",
        "-p",
        "permissive",
        "--no-network",
    ]);
    ak.ok(&["start", "mounted"]);
    ak.ok(&[
        "exec",
        "mounted",
        "--",
        "sh",
        "-c",
        "echo from-sandbox > /workspace/new.txt",
    ]);
    assert_eq!(
        std::fs::read_to_string(project.path().join("new.txt")).expect("read"),
        "from-sandbox\n"
    );
    // What cannot work is refused and leaves nothing.
    let before = names(&ak);
    let out = ak.run(&["sandbox", "create", "x", "--dir", "/nonexistent-dir"]);
    assert_eq!(out.code, 125, "{out:?}");
    let out = ak.run(&[
        "sandbox",
        "create",
        "x",
        "--dir",
        &dir,
        "--image",
        "busybox:latest",
        "-p",
        "restrictive",
    ]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("read-only"), "{out:?}");
    assert_eq!(names(&ak), before);
}

/// A template's setup runs once: two sandboxes from it start with the same result, and the
/// second creation runs nothing (needs the native backend's capture).
#[test]
fn template_setup_runs_once_and_is_cached() {
    let ak = Ak::new();
    let file = write(
        ak.cwd.path(),
        "s.toml",
        "image = \"busybox:latest\"\n[setup]\ncommands = [\"echo built > /built\", \"cat /proc/sys/kernel/random/uuid > /stamp\"]\n",
    );
    ak.ok(&["template", "add", "setup", &file]);
    for name in ["s1", "s2"] {
        ak.ok(&["create", name, "--template", "setup", "--no-network"]);
        ak.ok(&["start", name]);
    }
    let one = ak
        .ok(&["exec", "s1", "--", "cat", "/built", "/stamp"])
        .stdout;
    let two = ak
        .ok(&["exec", "s2", "--", "cat", "/built", "/stamp"])
        .stdout;
    assert!(one.starts_with("built\n"), "{one}");
    assert_eq!(one, two, "the setup ran once");
    let out = ak.ok(&[
        "run",
        "--template",
        "setup",
        "--no-network",
        "--",
        "cat",
        "/stamp",
    ]);
    assert_eq!(format!("built\n{}", out.stdout), one);
    // A failing setup is refused with its output, and caches nothing.
    let failing = write(
        ak.cwd.path(),
        "f.toml",
        "image = \"busybox:latest\"\n[setup]\ncommands = [\"echo doomed; exit 3\"]\n",
    );
    let before = names(&ak);
    let out = ak.run(&["create", "f", "--template", &failing, "--no-network"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("doomed") && out.stderr.contains("exited with 3"),
        "{out:?}"
    );
    assert_eq!(names(&ak), before, "no builder left");
}

/// `template save --from`: a sandbox's settings and files become a template; removing the
/// template removes its snapshot (needs the native backend's capture).
#[test]
fn template_save_keeps_the_sandboxs_files_and_settings() {
    let ak = Ak::new();
    ak.ok(&[
        "create",
        "base",
        "--image",
        "busybox:latest",
        "--no-network",
        "-e",
        "ROLE=saved",
        "--memory",
        "256",
    ]);
    ak.ok(&["start", "base"]);
    ak.ok(&[
        "exec",
        "base",
        "--",
        "sh",
        "-c",
        "echo prepared > /prepared",
    ]);
    ak.ok(&["template", "save", "--from", "base", "prepared"]);
    let list = templates(&ak);
    let t = list
        .iter()
        .find(|t| t["name"] == "prepared")
        .expect("listed");
    assert_eq!(t["source"], "user");
    assert_eq!(t["snapshot"], "tpl-save-prepared", "{t}");
    ak.ok(&["create", "again", "--template", "prepared", "--no-network"]);
    assert_eq!(sandbox(&ak, "again")["memory_mb"], 256);
    ak.ok(&["start", "again"]);
    let out = ak.ok(&[
        "exec",
        "again",
        "--",
        "sh",
        "-c",
        "cat /prepared; echo $ROLE",
    ]);
    assert_eq!(out.stdout, "prepared\nsaved\n");
    let out = ak.run(&["template", "save", "--from", "base", "prepared"]);
    assert_eq!(out.code, 125, "{out:?}");
    ak.ok(&["template", "remove", "prepared"]);
    // Its files stay while a sandbox made from it uses them.
    let out = ak.ok(&["exec", "again", "--", "cat", "/prepared"]);
    assert_eq!(out.stdout, "prepared\n");
}
