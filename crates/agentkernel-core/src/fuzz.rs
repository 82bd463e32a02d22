//! Fuzz tests of the parsers in core that take text from users and clients: image references
//! (`--image`, `image =` in files, the API's `image`) and `agentkernel.toml`. Each input must
//! give `Ok` or `Err`, never a panic, within the time limit (see `fuzz_support`).

#[path = "fuzz_support.rs"]
mod fuzz_support;

use crate::ImageRef;
use crate::config::Config;
use fuzz_support::{check, json_bytes, mutated, soup};
use proptest::prelude::*;
use std::path::Path;

const LONG: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Pieces of image references: prefixes, separators, digests, registries.
const IMAGE_TOKENS: &[&str] = &[
    "host",
    "oci:",
    "/",
    "./",
    "../",
    ".",
    "..",
    ":",
    "@",
    "@sha256:",
    "sha256:",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "docker.io/",
    "index.docker.io/",
    "localhost:5000/",
    "127.0.0.1:5000/",
    "[::1]:5000/",
    "ghcr.io/",
    "library/",
    "python",
    "3.12-alpine",
    "latest",
    "//",
    "\0",
    "\n",
    "\u{7f}",
    "\u{202e}",
    "é",
    " ",
    LONG,
];

#[test]
fn fuzz_image_references() {
    let cwd = Path::new("/work/project");
    check("image_references", soup(IMAGE_TOKENS, 12), |text| {
        if let Ok(ImageRef::Directory { path } | ImageRef::OciLayout { path, .. }) =
            ImageRef::parse(&text, cwd)
        {
            assert!(path.is_absolute(), "{text:?} gave relative {path:?}");
        }
    });
}

#[test]
fn fuzz_image_reference_json() {
    const KEYS: &[&str] = &["kind", "path", "tag", "reference"];
    const TOKENS: &[&str] = &["host", "directory", "oci_layout", "registry", "/x", "a:b"];
    check("image_reference_json", json_bytes(KEYS, TOKENS), |bytes| {
        let _ = serde_json::from_slice::<ImageRef>(&bytes);
    });
}

/// Every section and key of `agentkernel.toml` (docs/configuration.md).
const CONFIG_SEED: &str = r#"[sandbox]
name = "my-project"
base_image = "python:3.12-alpine"
backend = "native"
workdir = "/workspace"

[agent]
preferred = "claude"
compatibility_mode = "claude"

[resources]
vcpus = 2
memory_mb = 1024
pids = 512
disk_mb = 4096

[security]
profile = "moderate"
network = false
read_only = true
remote_paths = ["/srv/images"]
block_private = true

[security.domains]
allow = ["pypi.org", "*.githubusercontent.com"]
deny = ["evil.example"]

[images]
mirrors = ["http://127.0.0.1:5000"]
insecure_registries = ["10.0.0.5:5000"]
max_layer_mb = 8192
max_image_mb = 16384

[server]
host = "127.0.0.1"
port = 18888
api_keys = ["sk-..."]
allowed_hosts = ["sandbox.internal"]
max_sandboxes = 100
max_memory_mb = 8192
max_vcpus = 2

[daemon]
min_warm = 1
max_warm = 5

[secrets]
backend = "file"
key_file = "/media/usb/agentkernel-secrets.key"
remote_bindings = ["OPENAI_API_KEY:api.openai.com"]
"#;

/// TOML syntax and the values the checks look at.
const TOML_TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
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
    "18446744073709551615",
    "1e400",
    "nan",
    "inf",
    "1979-05-27T07:32:00Z",
    "true",
    "\"../../etc\"",
    "\"/\"",
    "\"\"",
    "é",
    "sandbox",
    "security.domains",
    "name",
    "workdir",
    "profile",
    "backend",
];

#[test]
fn fuzz_config_files() {
    static SEEDS: &[&[u8]] = &[CONFIG_SEED.as_bytes(), b"[sandbox]\nname = \"a\"\n", b""];
    let text = prop_oneof![
        4 => mutated(SEEDS, TOML_TOKENS).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => soup(TOML_TOKENS, 40),
    ];
    check("config_files", text, |text| {
        let _ = Config::parse(&text);
    });
}
