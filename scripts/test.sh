#!/usr/bin/env bash
# Runs the whole test suite as CI does: system packages, lints, then every test (as root: the
# tests create real namespaces, mounts and cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
else
  cargo test --locked --workspace --no-fail-fast
fi
