#!/usr/bin/env bash
# Soak tests (issue 20): see bench/soak.py.
#
#   bash bench/soak.sh                                          # 10,000 CLI runs, then 10 min x 64 clients
#   bash bench/soak.sh --runs 200 --minutes 1 --clients 16      # a short run
#   bash bench/soak.sh --parts server --minutes 10 --json /tmp/soak.json
#
# Arguments go to bench/soak.py (--help lists them). Starts the test registry (busybox is pulled
# from it through AGENTKERNEL_REGISTRY_MIRROR) and stops it at the end if it started it
# (KEEP_SERVICES=1 leaves it up). Native backend only: no engine is started.
# Uses the binary already built: $AGENTKERNEL_BIN, else target/$HOST_TARGET/debug/agentkernel
# (PROFILE=release for the release one); BUILD=1 builds it first with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${HOST_TARGET:-x86_64-unknown-linux-gnu}"
profile="${PROFILE:-debug}"
if [ "${BUILD:-0}" = 1 ]; then
  source scripts/env.sh
  target="$HOST_TARGET"
  flag=(); [ "$profile" = release ] && flag=(--release)
  cargo build "${flag[@]}" --locked --target "$target" -p agentkernel -p agentkernel-guest
fi
export AGENTKERNEL_BIN="${AGENTKERNEL_BIN:-$PWD/target/$target/$profile/agentkernel}"
[ -x "$AGENTKERNEL_BIN" ] || { echo "bench/soak.sh: no $AGENTKERNEL_BIN (BUILD=1 builds it)" >&2; exit 1; }

images_env="${AGENTKERNEL_TEST_IMAGES:-$HOME/.cache/agentkernel-test-images}/registry.env"
alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/cmdline" ]; }
pid_of() { [ -f "$1" ] && sed -n "s/^$2=//p" "$1" || true; }

started_registry=0
cleanup() {
  if [ "${KEEP_SERVICES:-0}" != 1 ] && [ "$started_registry" = 1 ]; then
    bash scripts/test-registry.sh stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if ! alive "$(pid_of "$images_env" AGENTKERNEL_TEST_REGISTRY_PID)"; then started_registry=1; fi
bash scripts/test-registry.sh start >/dev/null
set -a; source "$images_env"; set +a
export AGENTKERNEL_REGISTRY_MIRROR="${AGENTKERNEL_REGISTRY_MIRROR:-http://$AGENTKERNEL_TEST_REGISTRY}"
python3 bench/soak.py --bin "$AGENTKERNEL_BIN" "$@"
