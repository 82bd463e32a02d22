#!/usr/bin/env bash
# Runs the whole test suite as CI does: system packages, lints, then every test (as root: the
# tests create real namespaces, mounts and cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# A clean clone builds once; incremental caches would only double the target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all -- --check
cargo clippy --locked --target "$HOST_TARGET" --all-targets -- -D warnings
# No dependency a crate does not use (cargo-machete, installed once into ~/.cargo/bin).
cargo machete --version >/dev/null 2>&1 || cargo install --locked --quiet cargo-machete@0.9.2
cargo machete
# The dependency direction (docs/architecture.md): no surface or engine on a backend, no
# backend on another.
for crate in agentkernel-engine agentkernel-server agentkernel-mcp agentkernel-docker agentkernel-native agentkernel-vm; do
  for backend in agentkernel-native agentkernel-docker agentkernel-vm; do
    [ "$crate" = "$backend" ] && continue
    if cargo tree --locked -e normal -p "$crate" --prefix none | grep -q "^$backend "; then
      echo "test.sh: $crate depends on $backend; see docs/development.md (how to add a backend)" >&2
      exit 1
    fi
  done
done
# The registry tests pull from local registries on loopback (scripts/test-registry.sh builds
# their images once and caches them); they are stopped when this script ends.
bash scripts/test-registry.sh start >/dev/null
trap 'bash scripts/test-engines.sh stop; bash scripts/test-registry.sh stop' EXIT
# The Docker/Podman/gVisor backend tests run against a test dockerd and Podman service on their
# own sockets, pulling from the registry above (scripts/test-engines.sh, docs/test-engines.md).
bash scripts/test-engines.sh start >/dev/null
# The published SDKs (PyPI, npm) and schemathesis that tests/clients drive, installed once into
# a cache directory.
bash scripts/test-clients.sh >/dev/null
# The micro-VM guest kernel, built once from Debian's linux-source-6.1 and the checked-in
# config fragment, cached by their hash (~5 min on 2 cores the first time; docs/microvm.md).
AGENTKERNEL_KERNEL="${AGENTKERNEL_KERNEL:-$(bash scripts/build-kernel.sh)}"
export AGENTKERNEL_KERNEL
set -a
# shellcheck disable=SC1091
source "${AGENTKERNEL_TEST_IMAGES:-${HOME:-/root}/.cache/agentkernel-test-images}/registry.env"
# shellcheck disable=SC1091
source "${AGENTKERNEL_TEST_ENGINES:-${HOME:-/root}/.cache/agentkernel-test-engines}/engines.env"
set +a
# The micro-VM guest agent is a binary of its own crate, which no test target of another crate
# makes cargo build; the micro-VM tests find it beside the agentkernel binary.
cargo build --locked --target "$HOST_TARGET" -p agentkernel-guest
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --target "$HOST_TARGET" --workspace --no-fail-fast
else
  cargo test --locked --target "$HOST_TARGET" --workspace --no-fail-fast
fi
