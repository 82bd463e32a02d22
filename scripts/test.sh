#!/usr/bin/env bash
# Runs the whole test suite as CI does: system packages, lints, then every test (as root: the
# tests create real namespaces, mounts and cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo fmt --all -- --check
cargo clippy --locked --target "$HOST_TARGET" --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --target "$HOST_TARGET" --workspace --no-fail-fast
else
  cargo test --locked --target "$HOST_TARGET" --workspace --no-fail-fast
fi
