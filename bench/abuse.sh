#!/usr/bin/env bash
# Resource abuse inside sandboxes with the default limits (issue 20): see bench/abuse.py.
#
#   bash bench/abuse.sh                                   # native, every case, 3 GiB floods
#   bash bench/abuse.sh --backends native --flood-mb 512  # a short run
#   bash bench/abuse.sh --backends native,docker,podman,gvisor,microvm --json /tmp/abuse.json
#
# Arguments go to bench/abuse.py (--help lists them). Starts the test registry (busybox is
# pulled from it through AGENTKERNEL_REGISTRY_MIRROR) and, when a container backend is asked
# for, the test engines; stops what it started when it ends (KEEP_SERVICES=1 leaves them up).
# Uses the binary already built: $AGENTKERNEL_BIN, else target/$HOST_TARGET/debug/agentkernel
# (PROFILE=release for the release one); BUILD=1 builds it first with cargo.
# The micro-VM backend needs AGENTKERNEL_KERNEL (defaults to the cached kernel when there is one).
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
[ -x "$AGENTKERNEL_BIN" ] || { echo "bench/abuse.sh: no $AGENTKERNEL_BIN (BUILD=1 builds it)" >&2; exit 1; }

args=("$@")
backends=native
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --backends) backends="${args[$((i + 1))]:-native}" ;;
    --backends=*) backends="${args[$i]#--backends=}" ;;
  esac
done

images_env="${AGENTKERNEL_TEST_IMAGES:-$HOME/.cache/agentkernel-test-images}/registry.env"
engines_env="${AGENTKERNEL_TEST_ENGINES:-$HOME/.cache/agentkernel-test-engines}/engines.env"
alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/cmdline" ]; }
pid_of() { [ -f "$1" ] && sed -n "s/^$2=//p" "$1" || true; }

started_registry=0 started_engines=0
cleanup() {
  if [ "${KEEP_SERVICES:-0}" != 1 ]; then
    [ "$started_engines" = 1 ] && bash scripts/test-engines.sh stop >/dev/null 2>&1 || true
    [ "$started_registry" = 1 ] && bash scripts/test-registry.sh stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if ! alive "$(pid_of "$images_env" AGENTKERNEL_TEST_REGISTRY_PID)"; then started_registry=1; fi
bash scripts/test-registry.sh start >/dev/null
set -a; source "$images_env"; set +a
if [[ ",$backends," =~ ,(docker|podman|gvisor), ]]; then
  if ! alive "$(pid_of "$engines_env" AGENTKERNEL_TEST_DOCKERD_PID)"; then started_engines=1; fi
  bash scripts/test-engines.sh start >/dev/null
  set -a; source "$engines_env"; set +a
fi
if [[ ",$backends," == *,microvm,* ]] && [ -z "${AGENTKERNEL_KERNEL:-}" ]; then
  k="$(ls -d "$HOME"/.cache/agentkernel-kernel/*/vmlinux 2>/dev/null | head -1 || true)"
  [ -n "$k" ] && export AGENTKERNEL_KERNEL="$k"
fi
export AGENTKERNEL_REGISTRY_MIRROR="${AGENTKERNEL_REGISTRY_MIRROR:-http://$AGENTKERNEL_TEST_REGISTRY}"
python3 bench/abuse.py --bin "$AGENTKERNEL_BIN" "$@"
