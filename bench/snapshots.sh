#!/usr/bin/env bash
# Snapshot benchmarks (docs/snapshots.md): take, fork ×100, first exec after restore/fork.
#
#   bash bench/snapshots.sh             # ~3 min; RUNS=3 for a quicker one, BACKEND=docker
#
# Needs the test registry for busybox (scripts/test-registry.sh start) and, for
# BACKEND=docker|podman, the test engines (scripts/test-engines.sh start).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --target "$HOST_TARGET" -p agentkernel
env_file="${AGENTKERNEL_TEST_IMAGES:-$HOME/.cache/agentkernel-test-images}/registry.env"
[ -f "$env_file" ] || { echo "bench/snapshots.sh: run scripts/test-registry.sh start first" >&2; exit 1; }
set -a; source "$env_file"; set +a
export AGENTKERNEL_REGISTRY_MIRROR="${AGENTKERNEL_REGISTRY_MIRROR:-http://$AGENTKERNEL_TEST_REGISTRY}"
python3 bench/snapshots.py "$PWD/target/$HOST_TARGET/release/agentkernel"
