#!/usr/bin/env bash
# The chaos harness (bench/chaos.py, docs/reliability.md): kills agentkernel processes with
# SIGKILL at random points, 100 times per target, and checks that nothing leaks and no state is
# half-made. Builds the binary, starts the test registry (and the test engines when a container
# backend is asked for), runs, and stops what it started.
#
#   bash bench/chaos.sh                                # native, every target, 100 rounds each
#   BACKENDS=native,docker,podman,gvisor,microvm bash bench/chaos.sh
#   ITERATIONS=10 TARGETS=run,exec bash bench/chaos.sh # a quick look
#
# Run it alone: it counts the cgroups and processes that appear while it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BACKENDS="${BACKENDS:-native}"
ITERATIONS="${ITERATIONS:-100}"
TARGETS="${TARGETS:-}"
JSON="${JSON:-$(mktemp --suffix=.json)}"

cargo build --locked --target "$HOST_TARGET" -p agentkernel -p agentkernel-guest
bash scripts/test-registry.sh start >/dev/null
stop() {
  case ",$BACKENDS," in *,docker,*|*,podman,*|*,gvisor,*) bash scripts/test-engines.sh stop ;; esac
  bash scripts/test-registry.sh stop
}
trap stop EXIT
case ",$BACKENDS," in
  *,docker,*|*,podman,*|*,gvisor,*) bash scripts/test-engines.sh start >/dev/null ;;
esac
case ",$BACKENDS," in
  *,microvm,*) AGENTKERNEL_KERNEL="${AGENTKERNEL_KERNEL:-$(bash scripts/build-kernel.sh)}"; export AGENTKERNEL_KERNEL ;;
esac
set -a
# shellcheck disable=SC1091
source "${AGENTKERNEL_TEST_IMAGES:-${HOME:-/root}/.cache/agentkernel-test-images}/registry.env"
# shellcheck disable=SC1091
[ -f "${AGENTKERNEL_TEST_ENGINES:-${HOME:-/root}/.cache/agentkernel-test-engines}/engines.env" ] &&
  source "${AGENTKERNEL_TEST_ENGINES:-${HOME:-/root}/.cache/agentkernel-test-engines}/engines.env"
set +a
export AGENTKERNEL_REGISTRY_MIRROR="http://$AGENTKERNEL_TEST_REGISTRY"
args=(--backends "$BACKENDS" --iterations "$ITERATIONS" --json "$JSON" --keep-going)
[ -n "$TARGETS" ] && args+=(--targets "$TARGETS")
python3 bench/chaos.py --binary "target/$HOST_TARGET/debug/agentkernel" "${args[@]}"
echo "chaos: every round in $JSON" >&2
