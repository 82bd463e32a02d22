#!/usr/bin/env bash
# Side-by-side start-up benchmarks of the container backends (docker, podman, gvisor) against
# the Docker CLI driving the same engine: one hyperfine invocation per comparison, on the
# hermetic test engines (scripts/test-engines.sh). Writes the "Container backends" section of
# docs/benchmarks.md (bench/engines.py); the native sections (bench/run.sh) are kept.
#
#   bash bench/engines.sh                   # RUNS=50 per command (~6 min and the build)
#   RUNS=20 bash bench/engines.sh           # quicker
#   ENGINES="docker" bash bench/engines.sh  # only some engines (docker podman gvisor)
#   TRACE_RUNS=0 bash bench/engines.sh      # without the strace of the API requests
#
# The docker CLI is the peer here only; agentkernel itself never runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-50}"
WARMUP="${WARMUP:-3}"
TRACE_RUNS="${TRACE_RUNS:-5}"
ENGINES="${ENGINES:-docker podman gvisor}"
IMAGE=busybox:latest
registry_env="${AGENTKERNEL_TEST_IMAGES:-${HOME:-/root}/.cache/agentkernel-test-images}/registry.env"
engines_env="${AGENTKERNEL_TEST_ENGINES:-${HOME:-/root}/.cache/agentkernel-test-engines}/engines.env"

log() { echo "bench: $*" >&2; }
# The value of KEY in an env file (empty when either is missing).
env_value() { sed -n "s/^$1=//p" "$2" 2>/dev/null | tail -n1; }
# True if PID is alive and its command line names WORD (as the test scripts check: a pid may
# have been reused, and an exited child stays a zombie with an empty cmdline).
is_proc() { [ -n "$1" ] && grep -qsF -- "$2" "/proc/$1/cmdline"; }
# The registries' pids, or nothing unless both are alive.
registry_pids() {
  local open auth
  open="$(env_value AGENTKERNEL_TEST_REGISTRY_PID "$registry_env")"
  auth="$(env_value AGENTKERNEL_TEST_AUTH_REGISTRY_PID "$registry_env")"
  if is_proc "$open" docker-registry && is_proc "$auth" docker-registry; then echo "$open $auth"; fi
}
# The engines' pids, or nothing unless all three are alive.
engine_pids() {
  local c d p
  c="$(env_value AGENTKERNEL_TEST_CONTAINERD_PID "$engines_env")"
  d="$(env_value AGENTKERNEL_TEST_DOCKERD_PID "$engines_env")"
  p="$(env_value AGENTKERNEL_TEST_PODMAN_PID "$engines_env")"
  if is_proc "$c" containerd && is_proc "$d" dockerd && is_proc "$p" podman; then echo "$c $d $p"; fi
}

work="$(mktemp -d)"
export AGENTKERNEL_HOME="$work/home"
mkdir -p "$AGENTKERNEL_HOME"
# Every container this run makes: agentkernel's carry its state directory's hash, the peers'
# this label.
home_hash="$(printf '%s' "$(realpath "$AGENTKERNEL_HOME")" | sha256sum | cut -c1-16)"
peer_label="agentkernel.bench=$$"
AK=""
started_registry=0
started_engines=0
sandboxes=()

remove_containers() { # HOST
  local ids
  ids="$(docker -H "$1" ps -aq --filter "label=agentkernel.home=$home_hash" 2>/dev/null || true)"
  ids="$ids $(docker -H "$1" ps -aq --filter "label=$peer_label" 2>/dev/null || true)"
  # shellcheck disable=SC2086 # a list of ids
  if [ -n "${ids// /}" ]; then docker -H "$1" rm -f $ids >/dev/null 2>&1 || true; fi
}

cleanup() {
  local s
  set +e
  if [ -n "$AK" ]; then
    for s in "${sandboxes[@]}"; do "$AK" remove "$s" >/dev/null 2>&1; done
  fi
  [ -n "${DOCKER_HOST:-}" ] && remove_containers "$DOCKER_HOST"
  [ -n "${CONTAINER_HOST:-}" ] && remove_containers "$CONTAINER_HOST"
  if [ "$started_engines" = 1 ]; then
    log "stopping the test engines (this run started them)"
    bash scripts/test-engines.sh stop >/dev/null 2>&1
  fi
  if [ "$started_registry" = 1 ]; then
    log "stopping the test registry (this run started it)"
    bash scripts/test-registry.sh stop >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT

command -v hyperfine >/dev/null || { log "hyperfine is missing (apt-get install hyperfine)"; exit 1; }

source scripts/env.sh
cargo build --release --locked --target "$HOST_TARGET" -p agentkernel
AK="$PWD/target/$HOST_TARGET/release/agentkernel"

# The test registry and engines: reused when they run already (and then left running), else
# started here and stopped at exit. test-engines.sh restarts engines whose mirror is stale, so
# "started" means: not the same live pids as before.
before="$(registry_pids)"
bash scripts/test-registry.sh start >/dev/null
after="$(registry_pids)"
[ -n "$after" ] && [ "$after" != "$before" ] && started_registry=1
before="$(engine_pids)"
bash scripts/test-engines.sh start >/dev/null
after="$(engine_pids)"
[ -n "$after" ] && [ "$after" != "$before" ] && started_engines=1
set -a
# shellcheck disable=SC1090
source "$registry_env"
# shellcheck disable=SC1090
source "$engines_env"
set +a
# agentkernel finds dockerd (docker, gvisor) through DOCKER_HOST and Podman through
# CONTAINER_HOST; the docker CLI is given the same socket with -H.
export DOCKER_HOST="$AGENTKERNEL_TEST_DOCKER_HOST"
export CONTAINER_HOST="$AGENTKERNEL_TEST_PODMAN_HOST"
if [ -z "${AGENTKERNEL_TEST_GVISOR_RUNTIME:-}" ] && [[ " $ENGINES " == *" gvisor "* ]]; then
  log "gVisor's runtime did not pass test-engines.sh's check: gvisor is left out"
  ENGINES="${ENGINES//gvisor/}"
fi

hf() { # JSON, then hyperfine's -n/command pairs
  hyperfine -N --style basic --export-json "$1" --warmup "$WARMUP" --runs "$RUNS" "${@:2}" >&2
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# A persistent sandbox per engine, kept for the exec comparisons; its container's
# configuration, read back from the engine, is what the "same policy" peers are given.
sandbox() { # ENGINE
  local name="bench-$1"
  "$AK" create "$name" -B "$1" --image "$IMAGE" --no-network >/dev/null
  sandboxes+=("$name")
  "$AK" start "$name" >/dev/null
}
container_of() { # ENGINE HOST
  docker -H "$2" ps --filter "label=agentkernel.sandbox=bench-$1" \
    --filter "label=agentkernel.home=$home_hash" --format '{{.Names}}' | head -n1
}
# Podman's compatibility API reports a container's configuration in its own terms (capabilities
# as the ones dropped from its default set, binds not as mounts): the docker sandbox's is read
# instead, the same body agentkernel sends both but for the seccomp option.
sandbox docker
docker_container="$(container_of docker "$DOCKER_HOST")"
docker -H "$DOCKER_HOST" inspect "$docker_container" >"$work/docker-inspect.json"
mapfile -t init_mount < <(python3 bench/engines.py mount "$work/docker-inspect.json")

# The Engine API requests one command makes, from strace: TRACE_RUNS traces, each read into
# trace-LABEL-N.json; the last one is shown.
tracing=0
if [ "$TRACE_RUNS" -gt 0 ]; then
  if command -v strace >/dev/null; then tracing=1; else log "strace is missing: no request traces"; fi
fi
trace() { # LABEL COMMAND...
  local i
  for ((i = 0; i < TRACE_RUNS; i++)); do
    strace -f -ttt -s 200 -o "$work/$1.strace" \
      -e trace=connect,close,read,write,writev,recvfrom,sendto,sendmsg,recvmsg "${@:2}" >/dev/null
    python3 bench/engines.py requests "$work/$1.strace" >"$work/trace-$1-$i.json"
  done
  python3 bench/engines.py requests --text "$work/$1.strace" >&2
}

bench_engine() { # ENGINE
  local engine="$1" host container policy_src no_seccomp=() role=(__container-run)
  local runtime=()
  case "$engine" in
    docker) host="$DOCKER_HOST"; policy_src=docker ;;
    podman) host="$CONTAINER_HOST"; policy_src=docker; no_seccomp=(--no-seccomp) ;;
    gvisor)
      host="$DOCKER_HOST"; policy_src=gvisor; runtime=(--runtime "$AGENTKERNEL_TEST_GVISOR_RUNTIME")
      # The run role installs the profile's filter itself under runsc (moderate: the deny list).
      role=(__container-run --seccomp deny) ;;
  esac
  [ "$engine" = docker ] || sandbox "$engine"
  container="$(container_of "$engine" "$host")"
  if [ "$policy_src" = "$engine" ] && [ "$engine" != docker ]; then
    docker -H "$host" inspect "$container" >"$work/$engine-inspect.json"
  fi
  local -a policy
  mapfile -t policy < <(python3 bench/engines.py peer-flags "$work/$policy_src-inspect.json" \
    "$work/$engine-seccomp.json" "${no_seccomp[@]}")
  printf '%s\n' "${policy[@]}" >"$work/$engine-policy.txt"
  local dk="docker -H $host"
  local run="$dk run --rm --label $peer_label"

  log "$engine: run"
  hf "$work/$engine-run.json" \
    -n "agentkernel run -B $engine" "$AK run -B $engine --image $IMAGE --no-network -- true" \
    -n "docker run --rm (defaults)" "$run ${runtime[*]} --network none $IMAGE true" \
    -n "docker run --rm (same policy)" "$run ${policy[*]} $IMAGE true" \
    -n "docker run --rm (same container)" \
    "$run ${policy[*]} ${init_mount[*]} --entrypoint /dev/.agentkernel-init $IMAGE ${role[*]} -- true"

  log "$engine: exec"
  hf "$work/$engine-exec.json" \
    -n "agentkernel exec" "$AK exec bench-$engine -- true" \
    -n "docker exec" "$dk exec $container true" \
    -n "docker exec (same command)" "$dk exec $container /dev/.agentkernel-init ${role[*]} -- true"

  [ "$tracing" = 1 ] || return 0
  log "$engine: engine API requests (strace, $TRACE_RUNS runs each)"
  trace "$engine-ak-run" "$AK" run -B "$engine" --image "$IMAGE" --no-network -- true
  trace "$engine-docker-run" docker -H "$host" run --rm --label "$peer_label" "${runtime[@]}" \
    --network none "$IMAGE" true
  trace "$engine-ak-exec" "$AK" exec "bench-$engine" -- true
  trace "$engine-docker-exec" docker -H "$host" exec "$container" true
}

for engine in $ENGINES; do bench_engine "$engine"; done

python3 - "$work/meta.json" "$WARMUP" "$TRACE_RUNS" "$load_before" <<'EOF'
import json, os, subprocess, sys, time
def out(cmd, env=None):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env={**os.environ, **(env or {})})
        return r.stdout.strip().splitlines()[0] if r.stdout.strip() else "?"
    except Exception:
        return "?"
with open("/proc/loadavg") as f:
    load_after = " ".join(f.read().split()[:3])
json.dump({
    "warmup": sys.argv[2], "trace_runs": sys.argv[3], "load_before": sys.argv[4], "load_after": load_after,
    "date": time.strftime("%Y-%m-%d"),
    "dockerd": out(["docker", "-H", os.environ["DOCKER_HOST"], "version", "--format", "{{.Server.Version}}"]),
    "podman": out(["docker", "-H", os.environ["CONTAINER_HOST"], "version", "--format", "{{.Server.Version}}"]),
    "cli": out(["docker", "version", "--format", "{{.Client.Version}}"]),
    "runsc": out(["runsc", "--version"]),
}, open(sys.argv[1], "w"))
EOF
python3 bench/engines.py report "$work" docs/benchmarks.md
log "wrote the Container backends section of docs/benchmarks.md"
