//! The published clients, unmodified, against a real server: the Python SDK (PyPI
//! `agentkernel-sdk`), the Node SDK (npm `agentkernel`) and schemathesis on `/openapi.json`.
//! They are installed by `scripts/test-clients.sh` (run by `scripts/test.sh`); a test fails
//! with that instruction when they are missing.

mod common;
use common::serve::ServeProcess;
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const KEY: &str = "clients-test-key";

/// `clients.env` written by scripts/test-clients.sh.
fn clients() -> HashMap<String, String> {
    let path = std::env::var_os("AGENTKERNEL_TEST_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/agentkernel-test-clients")
        })
        .join("clients.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: install the published clients with `bash scripts/test-clients.sh`",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

/// A server with one key, and a sandbox with a TTL (made by the CLI) for the extend checks.
fn server_with_ttl_sandbox(ak: &Ak, ttl_box: &str) -> ServeProcess {
    ak.ok(&[
        "create",
        ttl_box,
        "--image",
        "host",
        "--no-network",
        "--ttl",
        "1h",
    ]);
    ServeProcess::start(ak, &["--api-key", KEY])
}

/// Runs a client script with the SDK's environment; asserts it passed, printing its output.
fn run_client(mut cmd: Command, srv: &ServeProcess, ttl_box: &str, what: &str) {
    let out = cmd
        .env("AGENTKERNEL_BASE_URL", &srv.base)
        .env("AGENTKERNEL_API_KEY", KEY)
        .env("AK_TTL_SANDBOX", ttl_box)
        .output()
        .unwrap_or_else(|e| panic!("run the {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server\n{}",
        out.status,
        srv.log()
    );
    assert!(
        stdout.contains("ok: "),
        "the {what} checked nothing:\n{stdout}"
    );
}

#[test]
fn python_sdk_drives_the_server_unmodified() {
    let env = clients();
    let ak = Ak::new();
    let srv = server_with_ttl_sandbox(&ak, "py-ttl");
    let mut cmd = Command::new(&env["AGENTKERNEL_TEST_PYTHON"]);
    cmd.arg(scripts_dir().join("python_sdk.py"));
    run_client(cmd, &srv, "py-ttl", "Python SDK (agentkernel-sdk)");
    ak.ok(&["remove", "py-ttl"]);
}

#[test]
fn node_sdk_drives_the_server_unmodified() {
    let env = clients();
    let ak = Ak::new();
    let srv = server_with_ttl_sandbox(&ak, "npm-ttl");
    let mut cmd = Command::new("node");
    cmd.arg(scripts_dir().join("npm_sdk.mjs")).env(
        "AGENTKERNEL_TEST_NODE_MODULES",
        &env["AGENTKERNEL_TEST_NODE_MODULES"],
    );
    run_client(cmd, &srv, "npm-ttl", "Node SDK (npm agentkernel)");
    ak.ok(&["remove", "npm-ttl"]);
}

/// Property-based tests generated from the server's own OpenAPI document: every check
/// schemathesis has (server errors, status codes and schemas of answers, valid input accepted,
/// invalid input refused, auth enforced), over the examples, coverage, fuzzing and stateful
/// phases. Settings and the one deliberate exception (502 from unreachable registries) are in
/// tests/clients/schemathesis.toml.
#[test]
fn schemathesis_finds_no_failures() {
    let env = clients();
    let ak = Ak::new();
    let srv = ServeProcess::spawn(without_name_servers(
        &ak,
        common::serve::serve_cmd(&ak, &["--api-key", KEY]),
    ));
    let out = Command::new(&env["AGENTKERNEL_TEST_SCHEMATHESIS"])
        .arg("--config-file")
        .arg(scripts_dir().join("schemathesis.toml"))
        .args(["run", &format!("{}/openapi.json", srv.base)])
        .args(["--header", &format!("Authorization: Bearer {KEY}")])
        .args(["--checks", "all", "--max-examples", "10", "--workers", "1"])
        .args(["--seed", "20261124", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        // It keeps a cache of what it found in its working directory.
        .current_dir(ak.cwd.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{}\n--- server\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    assert!(
        stdout.contains("Tested:"),
        "schemathesis tested nothing:\n{stdout}"
    );
}

/// `cmd` in a mount namespace of its own whose /etc/resolv.conf names only 127.0.0.1, where no
/// name server listens: the names schemathesis makes up (registry hosts, `source_url` hosts)
/// fail to resolve on this machine instead of sending a query to the host's name server.
fn without_name_servers(ak: &Ak, mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    let resolv = ak.cwd.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n",
    )
    .expect("write resolv.conf");
    // SAFETY: between fork and exec the closure only makes system calls (unshare, mount) on
    // paths prepared before the fork; it allocates nothing the parent could hold locked.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
            rustix::mount::mount_change(
                "/",
                rustix::mount::MountPropagationFlags::PRIVATE
                    | rustix::mount::MountPropagationFlags::REC,
            )?;
            rustix::mount::mount_bind(&resolv, "/etc/resolv.conf")?;
            Ok(())
        });
    }
    cmd
}

/// The OpenCode plugin that `plugin install opencode` writes type-checks (strict) against the
/// published `@opencode-ai/plugin` API and Node's types.
#[test]
fn opencode_plugin_type_checks_against_the_published_plugin_api() {
    let env = clients();
    let modules = PathBuf::from(&env["AGENTKERNEL_TEST_NODE_MODULES"]);
    let node_dir = modules.parent().expect("node_modules has a parent");
    let ak = Ak::new();
    ak.ok(&["plugin", "install", "opencode"]);
    let written = ak.cwd.path().join(".opencode/plugins/agentkernel.ts");
    // Beside the installed packages, so `@opencode-ai/plugin` resolves.
    let checked = node_dir.join(format!("agentkernel-plugin-{}.ts", std::process::id()));
    std::fs::copy(&written, &checked).expect("copy the plugin");
    let out = Command::new(modules.join(".bin/tsc"))
        .args([
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--target",
            "es2022",
        ])
        .args(["--module", "nodenext", "--moduleResolution", "nodenext"])
        .args(["--types", "node"])
        .arg(&checked)
        .current_dir(node_dir)
        .output()
        .expect("run tsc");
    let _ = std::fs::remove_file(&checked);
    assert!(
        out.status.success(),
        "tsc found errors in the OpenCode plugin:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
