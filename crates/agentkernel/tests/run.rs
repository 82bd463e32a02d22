//! `agentkernel run`: exit codes, output streams, images, profiles.

mod common;
use common::*;

#[test]
fn exit_code_passes_through() {
    let ak = Ak::new();
    let out = ak.run(&["run", "--no-network", "--", "sh", "-c", "exit 42"]);
    assert_eq!(out.code, 42, "{out:?}");
    assert_eq!(ak.run(&["run", "--no-network", "--", "true"]).code, 0);
    assert_eq!(ak.run(&["run", "--no-network", "--", "false"]).code, 1);
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; echo more-out",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "to-out\nmore-out\n");
    assert_eq!(out.stderr, "to-err\n");
}

#[test]
fn not_found_is_127_and_not_executable_is_126() {
    let ak = Ak::new();
    let out = ak.run(&["run", "--no-network", "--", "no-such-command-xyz"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = ak.run(&["run", "--no-network", "--", "/etc/passwd"]);
    assert_eq!(out.code, 126, "{out:?}");
}

#[test]
fn python_runs_on_the_host_image() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "python3",
        "-c",
        "print(6*7)",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "42\n");
}

#[test]
fn busybox_directory_image_and_relative_path() {
    let ak = Ak::new();
    let root = busybox_root();
    let out = ak.run(&[
        "run",
        "--image",
        root.to_str().expect("utf8"),
        "--no-network",
        "--",
        "cat",
        "/etc/secret-in-image",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "image-file\n");
    std::os::unix::fs::symlink(&root, ak.cwd.path().join("bb")).expect("symlink");
    let out = ak.run(&[
        "run",
        "--image",
        "./bb",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo rel",
    ]);
    assert_eq!(out.stdout, "rel\n", "{out:?}");
}

#[test]
fn env_and_workdir_flags() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--no-network",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\"; pwd",
    ]);
    assert_eq!(out.stdout, "hi there\n/tmp\n", "{out:?}");
    let out = ak.run(&["run", "--no-network", "--", "pwd"]);
    assert_eq!(out.stdout, "/workspace\n", "{out:?}");
}

#[test]
fn stdin_is_forwarded_when_piped() {
    let ak = Ak::new();
    let mut child = ak
        .cmd(&["run", "--no-network", "--", "sh", "-c", "tr a-z A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");
}

#[test]
fn written_files_vanish_after_run() {
    let ak = Ak::new();
    ak.ok(&[
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo x > /workspace/f && echo y > /etc/added",
    ]);
    let out = ak.run(&[
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        "ls /workspace/f /etc/added",
    ]);
    assert_ne!(
        out.code, 0,
        "a fresh run must not see the previous run's files: {out:?}"
    );
}

/// A networked sandbox has loopback only: its way out is the host's egress proxy, reached
/// through a redirect rule the sandbox cannot change (no CAP_NET_ADMIN).
#[test]
fn moderate_profile_reaches_out_only_through_the_proxy() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net; ip -4 route show table local | grep -c '^local default dev lo'; nft list ruleset >/dev/null 2>&1 && echo nft-readable; ip route add local 203.0.113.0/24 dev lo table local 2>/dev/null && echo route-changed; true",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    // Loopback only, every address routed locally (to the proxy's redirect), and neither the
    // rule nor the routes within the sandbox's reach.
    assert_eq!(out.stdout, "lo\n1\n", "{out:?}");
}

#[test]
fn timeout_kills_the_command() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--no-network",
        "--timeout",
        "1s",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("timed out"), "{out:?}");
}

#[test]
fn keep_leaves_a_named_sandbox_with_ttl() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--keep",
        "--ttl",
        "30m",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo kept > /workspace/k",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let list = ak.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    let name = list[0]["name"].as_str().expect("name").to_string();
    assert!(name.starts_with("run-"), "{name}");
    assert!(list[0]["expires_at"].is_string());
    let out = ak.ok(&["exec", &name, "--", "cat", "/workspace/k"]);
    assert_eq!(out.stdout, "kept\n");
    ak.ok(&["remove", &name]);
}

#[test]
fn config_file_feeds_the_policy_and_unknown_keys_fail() {
    let ak = Ak::new();
    std::fs::write(
        ak.cwd.path().join("agentkernel.toml"),
        "[security]\nprofile = \"restrictive\"\n",
    )
    .expect("write");
    let out = ak.run(&["run", "--", "sh", "-c", "touch /x"]);
    assert_ne!(
        out.code, 0,
        "restrictive from ./agentkernel.toml must make / read-only: {out:?}"
    );
    std::fs::write(
        ak.cwd.path().join("custom.toml"),
        "[security]\nprofile = \"moderate\"\nnetwork = false\n",
    )
    .expect("write");
    let out = ak.run(&[
        "run",
        "-c",
        "custom.toml",
        "--",
        "sh",
        "-c",
        "touch /x && echo ok",
    ]);
    assert_eq!(
        out.stdout, "ok\n",
        "--config must win over ./agentkernel.toml: {out:?}"
    );
    std::fs::write(
        ak.cwd.path().join("bad.toml"),
        "[security]\nprofiel = \"moderate\"\n",
    )
    .expect("write");
    let out = ak.run(&["run", "-c", "bad.toml", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("profiel"),
        "the error must name the key: {out:?}"
    );
}

#[test]
fn audit_log_records_runs_and_can_be_disabled() {
    let ak = Ak::new();
    ak.ok(&["run", "--no-network", "--", "true"]);
    let out = ak.ok(&["audit", "list", "--json"]);
    let entries: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let e = entries
        .iter()
        .find(|e| e["event"] == "command_executed")
        .expect("command_executed entry");
    assert_eq!(e["command"], serde_json::json!(["true"]));
    assert_eq!(e["exit_code"], 0);
    let path = ak.ok(&["audit", "path"]).stdout;
    assert_eq!(
        path.trim(),
        ak.home.path().join("audit.jsonl").to_str().expect("utf8")
    );
    let before = std::fs::read_to_string(path.trim())
        .expect("log")
        .lines()
        .count();
    let out = ak
        .cmd(&["run", "--no-network", "--", "true"])
        .env("AGENTKERNEL_AUDIT", "0")
        .output()
        .expect("run");
    assert!(out.status.success());
    let after = std::fs::read_to_string(path.trim())
        .expect("log")
        .lines()
        .count();
    assert_eq!(before, after, "AGENTKERNEL_AUDIT=0 must not write");
}

/// A networked throwaway sandbox is served by a thread of the process that runs it: no
/// process of its own is started, and none outlives it.
#[test]
fn networked_runs_leave_no_process_behind() {
    let ak = Ak::new();
    for _ in 0..10 {
        ak.ok(&["run", "--image", "host", "--", "true"]);
    }
    let home = ak.home.path().to_string_lossy().into_owned();
    let ps = std::process::Command::new("ps")
        .args(["-eo", "stat=,args="])
        .output()
        .expect("ps");
    let left: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&home) || l.contains("pasta") || l.contains("__egress-proxy"))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "left running: {left:#?}");
}

/// The audit entries of `ak`, oldest first.
fn audit_entries(ak: &Ak) -> Vec<serde_json::Value> {
    ak.ok(&["audit", "list", "--json"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// An option `run` does not know is refused before anything runs, in clap's words; one the
/// reference documents but this build does not have says so and what to do instead. Neither is
/// ever taken for the command.
#[test]
fn unknown_and_unbuilt_options_are_refused_before_anything_runs() {
    let ak = Ak::new();
    for (args, needle) in [
        (
            &["run", "--bogus-flag", "--", "true"][..],
            "unexpected argument '--bogus-flag'",
        ),
        (&["run", "-x", "true"], "unexpected argument '-x'"),
        (
            &["run", "--template", "no-such-template", "--", "true"],
            "no template \"no-such-template\"",
        ),
        (&["run", "--ssh", "true"], "`--ssh` is not supported yet"),
        (
            &["run", "-P", "8080:80/udp", "true"],
            "only TCP ports can be published",
        ),
        (
            &["run", "--publish", "70000", "true"],
            "out of range 1-65535",
        ),
        (
            &["run", "--compatibility-mode", "claud", "true"],
            "unknown compatibility mode \"claud\"",
        ),
        (
            &["run", "-S", "KEY", "--", "true"],
            "invalid secret binding",
        ),
        (
            &["run", "--allow-host", "a b", "--", "true"],
            "invalid host pattern",
        ),
        (
            &[
                "run",
                "--no-network",
                "--secret",
                "K=v:api.example.com",
                "true",
            ],
            "--secret needs the sandbox's network",
        ),
        (
            &["run", "--placeholder-secrets", "true"],
            "--placeholder-secrets applies to --secret-file files",
        ),
        (
            &["create", "--template", "github:org/repo/t.toml", "box"],
            "does not fetch templates",
        ),
        (&["create", "--ssh", "box"], "`--ssh` is not supported yet"),
        (
            &["create", "box", "--dir", "./no-such-dir"],
            "give the path of an existing project directory",
        ),
    ] {
        let out = ak.run(args);
        assert_eq!(out.code, 125, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected {needle:?}: {out:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    assert!(
        !ak.home.path().join("audit.jsonl").exists(),
        "a refused command ran something"
    );
    assert!(ak.list_json().is_empty());
}

/// Everything after the command's first word, or after `--`, is the command's.
#[test]
fn the_command_keeps_its_hyphens() {
    let ak = Ak::new();
    let out = ak.ok(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "sh",
        "-c",
        "echo \"$0\" -v",
        "-x",
    ]);
    assert_eq!(out.stdout, "-x -v\n");
    let out = ak.ok(&["run", "--image", "host", "--no-network", "ls", "-la", "/"]);
    assert!(out.stdout.contains(".."), "{out:?}");
    // A program whose name starts with a hyphen, after `--`.
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "--weird-prog",
    ]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("--weird-prog"), "{out:?}");
    // --fast=false (boot a new sandbox rather than take a warm one) and -F are accepted.
    let out = ak.ok(&[
        "run",
        "--fast=false",
        "--image",
        "host",
        "--no-network",
        "echo",
        "new",
    ]);
    assert_eq!(out.stdout, "new\n");
    let out = ak.ok(&[
        "run",
        "-F",
        "--image",
        "host",
        "--no-network",
        "echo",
        "warm",
    ]);
    assert_eq!(out.stdout, "warm\n");
    let out = ak.ok(&[
        "run",
        "--compatibility-mode",
        "native",
        "--image",
        "host",
        "--no-network",
        "echo",
        "native",
    ]);
    assert_eq!(out.stdout, "native\n");
}

/// `-B`'s help lists the backends this build has, not a fixed text.
#[test]
fn run_help_lists_the_backends_of_this_build() {
    let ak = Ak::new();
    let out = ak.ok(&["run", "--help"]);
    let line = out
        .stdout
        .lines()
        .skip_while(|l| !l.contains("--backend"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    for backend in ["native", "docker", "podman", "gvisor"] {
        assert!(line.contains(backend), "{backend} missing from: {line}");
    }
}

/// A command that cannot start leaves an audit entry too, with the code the caller got.
#[test]
fn commands_that_cannot_start_are_audited_with_127_and_126() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "no-such-command-xyz",
    ]);
    assert_eq!(out.code, 127, "{out:?}");
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "/etc/passwd",
    ]);
    assert_eq!(out.code, 126, "{out:?}");
    ak.ok(&["create", "audited", "--image", "host", "--no-network"]);
    ak.ok(&["start", "audited"]);
    assert_eq!(
        ak.run(&["exec", "audited", "--", "no-such-command-xyz"])
            .code,
        127
    );
    assert_eq!(ak.run(&["exec", "audited", "--", "/etc/passwd"]).code, 126);
    ak.ok(&["remove", "audited"]);
    let executed: Vec<(String, serde_json::Value, i64)> = audit_entries(&ak)
        .into_iter()
        .filter(|e| e["event"] == "command_executed")
        .map(|e| {
            (
                e["sandbox"].as_str().unwrap_or_default().to_string(),
                e["command"].clone(),
                e["exit_code"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let commands: Vec<(serde_json::Value, i64)> = executed
        .iter()
        .map(|(_, c, code)| (c.clone(), *code))
        .collect();
    assert_eq!(
        commands,
        vec![
            (serde_json::json!(["no-such-command-xyz"]), 127),
            (serde_json::json!(["/etc/passwd"]), 126),
            (serde_json::json!(["no-such-command-xyz"]), 127),
            (serde_json::json!(["/etc/passwd"]), 126),
        ],
        "{executed:?}"
    );
    assert!(
        executed[2..].iter().all(|(s, _, _)| s == "audited"),
        "{executed:?}"
    );
}

/// A refusal by policy is audited as `policy_violation`, with the caller and the reason: here
/// a project's `agentkernel.toml` that asks for more than the user's settings give.
#[test]
fn policy_refusals_are_audited() {
    let ak = Ak::new();
    std::fs::write(
        ak.cwd.path().join("agentkernel.toml"),
        "[security]\nprofile = \"permissive\"\n",
    )
    .expect("write");
    let out = ak.run(&["run", "--image", "host", "--no-network", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    let violation = audit_entries(&ak)
        .into_iter()
        .find(|e| e["event"] == "policy_violation")
        .unwrap_or_else(|| panic!("no policy_violation entry after {out:?}"));
    assert_eq!(violation["caller"], "local", "{violation}");
    assert_eq!(violation["policy"], "access", "{violation}");
    let details = violation["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("agentkernel.toml") && details.contains("may only tighten"),
        "{violation}"
    );
}

/// The permissive profile passes the caller's environment through, except credentials and
/// host-specific variables (docs/security.md); `-e NAME` passes one by name whatever it is;
/// moderate passes none of it.
#[test]
fn permissive_passes_the_environment_but_not_credentials() {
    let mut ak = Ak::new();
    for (k, v) in [
        ("MY_SETTING", "kept"),
        ("GITHUB_TOKEN", "ghp_leak"),
        ("AWS_SECRET_ACCESS_KEY", "aws_leak"),
        ("OPENAI_API_KEY", "sk_named"),
        ("DB_PASSWORD", "pw_leak"),
        ("LD_PRELOAD", "/nonexistent.so"),
    ] {
        ak.env.push((k.to_string(), v.to_string()));
    }
    let show = "for v in MY_SETTING GITHUB_TOKEN AWS_SECRET_ACCESS_KEY OPENAI_API_KEY DB_PASSWORD \
                LD_PRELOAD; do eval \"echo $v=\\${$v-unset}\"; done; echo HOME=$HOME";
    let out = ak.run(&[
        "run",
        "--no-network",
        "-p",
        "permissive",
        "-e",
        "OPENAI_API_KEY",
        "--",
        "sh",
        "-c",
        show,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "MY_SETTING=kept\nGITHUB_TOKEN=unset\nAWS_SECRET_ACCESS_KEY=unset\n\
         OPENAI_API_KEY=sk_named\nDB_PASSWORD=unset\nLD_PRELOAD=unset\nHOME=/root\n",
        "{out:?}"
    );
    // Moderate passes nothing of the caller's; `-e NAME` of an unset variable sets nothing.
    let out = ak.run(&[
        "run",
        "--no-network",
        "-e",
        "NOT_SET_ANYWHERE",
        "--",
        "sh",
        "-c",
        "echo ${MY_SETTING-unset} ${NOT_SET_ANYWHERE-unset}",
    ]);
    assert_eq!(out.stdout, "unset unset\n", "{out:?}");
    // A kept permissive sandbox records which variables passed, never a denied one's value.
    ak.ok(&["create", "env-box", "--no-network", "-p", "permissive"]);
    let mut db = std::fs::read(ak.home.path().join("state.db")).expect("state.db");
    db.extend(std::fs::read(ak.home.path().join("state.db-wal")).unwrap_or_default());
    let db = String::from_utf8_lossy(&db);
    for leak in ["ghp_leak", "aws_leak", "pw_leak"] {
        assert!(!db.contains(leak), "{leak} reached the state database");
    }
    ak.ok(&["remove", "env-box"]);
    // `exec -e NAME` takes this shell's value too.
    ak.ok(&["create", "env-exec", "--no-network"]);
    ak.ok(&["start", "env-exec"]);
    let out = ak.ok(&[
        "exec",
        "-e",
        "MY_SETTING",
        "env-exec",
        "--",
        "sh",
        "-c",
        "echo $MY_SETTING",
    ]);
    assert_eq!(out.stdout, "kept\n");
    ak.ok(&["remove", "env-exec"]);
}
