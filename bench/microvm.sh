#!/usr/bin/env bash
# Micro-VM benchmarks (docs/microvm.md): cold boot to first output, exec round trip in a
# running VM, memory per idle VM, against the floor of the same kernel booted by bare QEMU.
#
#   bash bench/microvm.sh              # ~2 min; RUNS=5 for a quicker one
#
# Needs the test registry for busybox (scripts/test-registry.sh start) and the guest kernel
# (scripts/build-kernel.sh builds it once).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --target "$HOST_TARGET" -p agentkernel -p agentkernel-guest
env_file="${AGENTKERNEL_TEST_IMAGES:-$HOME/.cache/agentkernel-test-images}/registry.env"
[ -f "$env_file" ] || { echo "bench/microvm.sh: run scripts/test-registry.sh start first" >&2; exit 1; }
set -a; source "$env_file"; set +a
export AGENTKERNEL_REGISTRY_MIRROR="${AGENTKERNEL_REGISTRY_MIRROR:-http://$AGENTKERNEL_TEST_REGISTRY}"
export AGENTKERNEL_KERNEL="${AGENTKERNEL_KERNEL:-$(bash scripts/build-kernel.sh)}"
export AGENTKERNEL_GUEST="$PWD/target/$HOST_TARGET/release/agentkernel-guest"
python3 bench/microvm.py "$PWD/target/$HOST_TARGET/release/agentkernel"
