//! Fuzz tests of the MCP tool arguments: each tool's parameters read from hostile JSON (as
//! rmcp reads a `tools/call`), then the checks the tools make before any engine work: the
//! command, the timeout, the environment, the file content's encoding, names, and the whole
//! sandbox request as `sandbox_run` and `sandbox_create` validate it (against a temporary
//! home). Each input must give a value or a refusal, never a panic, within the time limit
//! (see `fuzz_support`).

#[path = "../../agentkernel-core/src/fuzz_support.rs"]
mod fuzz_support;

use super::*;
use fuzz_support::{check, json};

const KEYS: &[&str] = &[
    "command",
    "profile",
    "compatibility_mode",
    "network",
    "cwd",
    "env",
    "secrets",
    "timeout_ms",
    "image",
    "name",
    "workdir",
    "sandbox",
    "snapshot",
    "as",
    "path",
    "content",
    "encoding",
];
const TOKENS: &[&str] = &[
    "sh",
    "-c",
    "true",
    "",
    "=",
    "A",
    "PATH",
    "LD_PRELOAD",
    "moderate",
    "permissive",
    "claude",
    "base64",
    "utf8",
    "aGk=",
    "===",
    "../",
    "/workspace",
    "\0",
    "\n",
    "python:3.12-alpine",
    "host",
    "/",
    "a:b",
    "18446744073709551615",
];

fn spec(tools: &SandboxTools, p: SpecParams<'_>, argv: Vec<String>) {
    let _ = tools.spec_request(p, argv);
}

#[test]
fn fuzz_mcp_tool_arguments() {
    let home = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let tools = SandboxTools::new(Options::new(
        home.path().to_path_buf(),
        cwd.path().to_path_buf(),
    ));
    check("mcp_tool_arguments", json(KEYS, TOKENS), |args| {
        if let Ok(p) = serde_json::from_value::<RunParams>(args.clone()) {
            let _ = command(&p.command);
            let _ = timeout(p.timeout_ms);
            spec(
                &tools,
                SpecParams {
                    image: p.image,
                    profile: p.profile,
                    mode: p.compatibility_mode.as_deref(),
                    network: p.network,
                    cwd: p.cwd.as_deref(),
                    env: p.env.as_ref(),
                    secrets: p.secrets.unwrap_or_default(),
                },
                p.command,
            );
        }
        if let Ok(p) = serde_json::from_value::<CreateParams>(args.clone()) {
            if let Some(n) = &p.name {
                let _ = agentkernel_core::validate_name(n);
            }
            spec(
                &tools,
                SpecParams {
                    image: p.image,
                    profile: p.profile,
                    mode: p.compatibility_mode.as_deref(),
                    network: p.network,
                    cwd: p.cwd.as_deref(),
                    env: p.env.as_ref(),
                    secrets: p.secrets.unwrap_or_default(),
                },
                Vec::new(),
            );
        }
        if let Ok(p) = serde_json::from_value::<ExecParams>(args.clone()) {
            let _ = agentkernel_core::validate_name(&p.name);
            let _ = command(&p.command);
            let _ = timeout(p.timeout_ms);
            let _ = env_list(p.env.as_ref());
        }
        if let Ok(p) = serde_json::from_value::<FileWriteParams>(args.clone()) {
            let _ = agentkernel_engine::check_path(&p.path);
            let _ = file_bytes(p.content, p.encoding.as_deref());
        }
        if let Ok(p) = serde_json::from_value::<FileReadParams>(args.clone()) {
            let _ = agentkernel_engine::check_path(&p.path);
        }
        let _ = serde_json::from_value::<NameParams>(args.clone());
        let _ = serde_json::from_value::<SnapshotParams>(args.clone());
        let _ = serde_json::from_value::<RestoreParams>(args);
    });
    // Refusals may be audited in the temporary home; nothing is written to the project.
    assert_eq!(
        std::fs::read_dir(cwd.path()).expect("read cwd").count(),
        0,
        "validation wrote into the working directory"
    );
}
