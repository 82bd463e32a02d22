//! Fuzz tests of the engine's own file formats: templates (`template add`, `--template FILE`)
//! and pipeline files (`pipeline FILE`, read from a temporary file as the command reads it).
//! Each input must give `Ok` or `Err`, never a panic, within the time limit (see
//! `fuzz_support`); a template that parses must also survive its own `to_toml` (what
//! `template save` writes is read back by `template add`).

#[path = "../../agentkernel-core/src/fuzz_support.rs"]
mod fuzz_support;

use crate::pipeline::Pipeline;
use crate::template::Template;
use fuzz_support::{check, check_on_disk, mutated, soup};
use proptest::prelude::*;

const TEMPLATE_SEED: &str = r#"name = "web"
description = "Node.js 22 with git"
image = "node:22-alpine"
profile = "moderate"
compatibility = "claude"
network = true
ports = [3000, 5173]

[domains]
allow = ["registry.npmjs.org"]
deny = ["tracker.example.com"]

[setup]
packages = ["git"]
package_manager = "apk"
commands = ["npm install -g pnpm"]

[env]
NODE_ENV = "development"

[resources]
vcpus = 2
memory_mb = 4096
disk_mb = 20480
"#;

const PIPELINE_SEED: &str = r#"input = "src"
output = "results"

[[steps]]
name = "split"
image = "busybox"
command = "tr ' ' '\n' < /in/words > /out/lines"
input = "/in"
output = "/out"

[[steps]]
name = "count"
image = "python:3.12-alpine"
command = ["python3", "-c", "print(len(open('/data/lines').readlines()))"]
input = "/data"
"#;

const TOML_TOKENS: &[&str] = &[
    "[",
    "]",
    "[[steps]]",
    "=",
    "\"",
    "'''",
    "\"\"\"",
    "{",
    "}",
    ",",
    ".",
    "#",
    "\n",
    "\r\n",
    "\\u0000",
    "\\",
    "-1",
    "0",
    "65536",
    "18446744073709551615",
    "1e400",
    "nan",
    "true",
    "[]",
    "\"../..\"",
    "\"/\"",
    "\"\"",
    "\"host\"",
    "é",
    "name",
    "image",
    "command",
    "input",
    "output",
    "ports",
    "env",
    "setup",
    "packages",
    "vcpus",
    "\"a b\"",
    "\"x=y\"",
    "\"oci:/x\"",
];

fn toml_text(seeds: &'static [&'static [u8]]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => mutated(seeds, TOML_TOKENS).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => soup(TOML_TOKENS, 40),
    ]
}

#[test]
fn fuzz_template_files() {
    static SEEDS: &[&[u8]] = &[TEMPLATE_SEED.as_bytes(), b"image = \"alpine\"\n"];
    check("template_files", toml_text(SEEDS), |text| {
        if let Ok(t) = Template::parse(&text, "fuzz") {
            let written = t.to_toml().expect("a parsed template writes back");
            if let Err(e) = Template::parse(&written, "written") {
                panic!("a parsed template wrote {written:?}, which does not parse: {e}");
            }
        }
    });
}

#[test]
fn fuzz_pipeline_files() {
    static SEEDS: &[&[u8]] = &[PIPELINE_SEED.as_bytes(), b"[[steps]]\nname = \"a\"\n"];
    check_on_disk("pipeline_files", toml_text(SEEDS), |text| {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, text).expect("write the pipeline");
        let _ = Pipeline::load(&file);
    });
}
