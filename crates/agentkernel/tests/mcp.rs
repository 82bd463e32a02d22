//! The MCP server driven by the official MCP Python SDK (PyPI `mcp`, installed by
//! `scripts/test-clients.sh`), over stdio (`agentkernel mcp server`) and over streamable HTTP
//! (`/mcp` on `agentkernel serve`, behind its API key): initialize, the tools with their
//! schemas and annotations, each tool with real effects, failed and timed-out commands, and
//! injection and traversal attempts refused with nothing made. The script is
//! tests/clients/mcp_client.py.

mod common;
use common::serve::ServeProcess;
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KEY: &str = "mcp-test-key";

/// `clients.env` written by scripts/test-clients.sh.
fn python() -> String {
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
    let env: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    env.get("AGENTKERNEL_TEST_PYTHON")
        .expect("clients.env names AGENTKERNEL_TEST_PYTHON")
        .to_string()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/mcp_client.py")
}

fn assert_passed(out: &Output, what: &str, server_log: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the MCP client over {what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server\n{server_log}",
        out.status
    );
    assert!(
        stdout.matches("ok: ").count() > 50,
        "the MCP client over {what} checked too little:\n{stdout}"
    );
}

#[test]
fn python_mcp_sdk_over_stdio() {
    let python = python();
    let ak = Ak::new();
    // The SDK starts `agentkernel mcp server` itself, with the environment given here.
    let out = Command::new(python)
        .arg(script())
        .args(["stdio", bin()])
        .env("AGENTKERNEL_HOME", ak.home.path())
        .env("AGENTKERNEL_REGISTRY_MIRROR", &ak.mirror)
        .current_dir(ak.cwd.path())
        .output()
        .expect("run the MCP client");
    assert_passed(&out, "stdio", "");
    assert!(ak.list_json().is_empty(), "sandboxes left behind");
}

#[test]
fn mcp_server_alias_answers_initialize() {
    let ak = Ak::new();
    let mut child = ak
        .cmd(&["mcp-server"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agentkernel mcp-server");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        writeln!(
            stdin,
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
        )
        .expect("send initialize");
    } // stdin closes: the server answers, then ends
    let out = child.wait_with_output().expect("wait for mcp-server");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mcp-server failed: {out:?}");
    assert!(
        stdout.contains(r#""name":"agentkernel""#) && stdout.contains(r#""tools""#),
        "no initialize answer: {stdout}"
    );
}

#[test]
fn python_mcp_sdk_over_streamable_http() {
    let python = python();
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--api-key", KEY]);
    // Without the key, /mcp is refused like every other endpoint.
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/mcp", srv.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .expect("POST /mcp");
    assert_eq!(resp.status().as_u16(), 401, "{resp:?}");
    let out = Command::new(python)
        .arg(script())
        .args(["http", &srv.base])
        .env("AGENTKERNEL_API_KEY", KEY)
        .output()
        .expect("run the MCP client");
    assert_passed(&out, "streamable HTTP", &srv.log());
    assert!(ak.list_json().is_empty(), "sandboxes left behind");
}

/// An MCP `sandbox_run` without an image is detected from its command, not from the project
/// files of the directory the MCP server runs in.
#[test]
fn sandbox_run_is_not_detected_from_the_servers_directory() {
    for (file, wrong) in [("Cargo.toml", "rust:"), ("package.json", "node:")] {
        let ak = Ak::new();
        std::fs::write(ak.cwd.path().join(file), "{}\n").expect("write a project file");
        let mut mcp = common::mcp::Mcp::start(&ak);
        let (is_error, text) = mcp.call(
            "sandbox_run",
            serde_json::json!({"command": ["sh", "-c", "echo detected"], "network": false}),
        );
        assert!(!text.contains(wrong), "{file}: {text}");
        assert!(!is_error, "{file}: {text}");
        assert!(text.contains("detected"), "{file}: {text}");
    }
}

/// The MCP file tools follow the HTTP API's path rule, checked once in the engine: `..` is
/// resolved inside the sandbox's root and never leads out of it; an over-long path is refused.
#[test]
fn file_tool_paths_with_dot_dot_stay_inside_the_sandbox() {
    let ak = Ak::new();
    let mut mcp = common::mcp::Mcp::start(&ak);
    let (is_error, text) = mcp.call(
        "sandbox_create",
        serde_json::json!({"name": "dotdot", "network": false}),
    );
    assert!(!is_error, "{text}");
    let marker = format!("mcp-dotdot-{}", std::process::id());
    let host = std::path::Path::new("/tmp").join(&marker);
    for path in [
        format!("../../../tmp/{marker}"),
        format!("/workspace/../../../tmp/{marker}"),
        format!("/../../tmp/{marker}"),
    ] {
        let (is_error, text) = mcp.call(
            "sandbox_file_write",
            serde_json::json!({"name": "dotdot", "path": path, "content": path}),
        );
        assert!(!is_error, "{path}: {text}");
        assert!(
            !host.exists(),
            "{path} wrote {} on the host",
            host.display()
        );
        let (is_error, text) = mcp.call(
            "sandbox_file_read",
            serde_json::json!({"name": "dotdot", "path": format!("/tmp/{marker}")}),
        );
        assert!(!is_error && text.contains(&path), "{path}: {text}");
    }
    let (is_error, text) = mcp.call(
        "sandbox_file_read",
        serde_json::json!({"name": "dotdot", "path": "a".repeat(4096)}),
    );
    assert!(is_error && text.contains("give at most 4095"), "{text}");
    let (is_error, text) = mcp.call("sandbox_remove", serde_json::json!({"name": "dotdot"}));
    assert!(!is_error, "{text}");
}

/// Empty commands, timeouts and environment variables follow one rule, the engine's, over HTTP
/// and MCP alike: the same refusal in the same words, and nothing run.
#[test]
fn commands_timeouts_and_env_follow_the_engines_rule_on_both_surfaces() {
    let ak = Ak::new();
    let srv = ServeProcess::start(&ak, &["--no-pool"]);
    let mut mcp = common::mcp::Mcp::start(&ak);
    let http = |body: serde_json::Value| -> (u16, String) {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/run", srv.base))
            .json(&body)
            .send()
            .expect("POST /run");
        (resp.status().as_u16(), resp.text().expect("body"))
    };
    for (timeout_ms, words) in [
        (0u64, "timeout_ms must be at least 1"),
        (86_400_001, "more than the maximum"),
    ] {
        let (status, text) = http(serde_json::json!({"command": ["true"], "image": "host",
            "no_network": true, "timeout_ms": timeout_ms}));
        assert_eq!(status, 400, "{timeout_ms}: {text}");
        assert!(text.contains(words), "{timeout_ms}: {text}");
        let (is_error, text) = mcp.call(
            "sandbox_run",
            serde_json::json!({"command": ["true"], "image": "host", "timeout_ms": timeout_ms}),
        );
        assert!(is_error && text.contains(words), "{timeout_ms}: {text}");
    }
    let (status, text) = http(serde_json::json!({"command": [], "image": "host"}));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("no command given"), "{text}");
    let (is_error, text) = mcp.call(
        "sandbox_run",
        serde_json::json!({"command": [], "image": "host"}),
    );
    assert!(is_error && text.contains("no command given"), "{text}");
    let (status, text) = http(serde_json::json!({"command": ["true"], "image": "host",
        "no_network": true, "env": ["=value"]}));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("invalid environment variable"), "{text}");
    let (is_error, text) = mcp.call(
        "sandbox_run",
        serde_json::json!({"command": ["true"], "image": "host", "env": {"A=B": "c"}}),
    );
    assert!(
        is_error && text.contains("invalid environment variable"),
        "{text}"
    );
    // The refusal carries the engine's error kind, as HTTP's status and the CLI's exit code
    // come from it; a missing sandbox is `not_found` (HTTP 404).
    let answer = mcp.request(
        "tools/call",
        serde_json::json!({"name": "sandbox_run",
            "arguments": {"command": ["true"], "image": "host", "timeout_ms": 0}}),
    );
    assert_eq!(
        answer["result"]["structuredContent"]["kind"], "invalid_input",
        "{answer}"
    );
    let answer = mcp.request(
        "tools/call",
        serde_json::json!({"name": "sandbox_exec",
            "arguments": {"name": "no-such-box", "command": ["true"]}}),
    );
    assert_eq!(
        answer["result"]["structuredContent"]["kind"], "not_found",
        "{answer}"
    );
    assert!(ak.list_json().is_empty());
}
