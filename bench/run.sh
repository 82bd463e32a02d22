#!/usr/bin/env bash
# Side-by-side start-up benchmarks of the native backend against its peers, measured in one run
# with hyperfine; writes the medians and ratios to docs/benchmarks.md.
#
#   bash bench/run.sh            # full run (~2 min)
#   RUNS=20 bash bench/run.sh    # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked --target "$HOST_TARGET" -p agentkernel
AK="$PWD/target/$HOST_TARGET/release/agentkernel"
RUNS="${RUNS:-200}"
WARMUP=10
work="$(mktemp -d)"
export AGENTKERNEL_HOME="$work/home"
cleanup() {
  "$AK" remove bench-exec >/dev/null 2>&1 || true
  "$AK" daemon stop >/dev/null 2>&1 || true
  bash scripts/test-registry.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A busybox root directory, the same for every tool.
root="$work/busybox"
mkdir -p "$root/bin" "$root/proc" "$root/dev" "$root/tmp" "$root/etc"
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done

hf() { hyperfine --style none --export-json "$1" --warmup "$WARMUP" --runs "$RUNS" -N "${@:2}" >/dev/null; }

echo "bench: run" >&2
# In ROUNDS rounds of RUNS/ROUNDS runs each (report.py pools them): hyperfine runs all of one
# command's runs before the next, and this virtual machine's speed drifts over minutes, so
# rounds spread every command over the same stretch of time.
ROUNDS=4
for round in $(seq "$ROUNDS"); do
  hyperfine --style none --export-json "$work/run-$round.json" --warmup 3 --runs "$(( RUNS / ROUNDS ))" -N \
    -n "agentkernel run --no-network" "$AK run --image $root --no-network -- true" \
    -n "agentkernel run -p restrictive" "$AK run --image $root -p restrictive -- true" \
    -n "bwrap --unshare-all" "bwrap --unshare-all --ro-bind $root / true" \
    -n "bwrap --unshare-all with /proc, /dev, /tmp" "bwrap --unshare-all --ro-bind $root / --proc /proc --dev /dev --tmpfs /tmp true" \
    -n "unshare -Urmpfn chroot" "unshare -Urmpfn chroot $root true" >/dev/null
done

echo "bench: run with network" >&2
hf "$work/net.json" \
  -n "agentkernel run (moderate, network through the egress proxy)" "$AK run --image $root -- true" \
  -n "bwrap --unshare-all --share-net" "bwrap --unshare-all --share-net --ro-bind $root / true"

echo "bench: exec" >&2
"$AK" create bench-exec --image "$root" --no-network >/dev/null
"$AK" start bench-exec
pid="$("$AK" list --json | python3 -c 'import json,sys; print([s["pid"] for s in json.load(sys.stdin) if s["name"]=="bench-exec"][0])')"
hf "$work/exec.json" \
  -n "agentkernel exec" "$AK exec bench-exec -- true" \
  -n "nsenter -t PID -a" "nsenter -t $pid -a true"

echo "bench: CLI overhead" >&2
hf "$work/cli.json" \
  -n "agentkernel --version" "$AK --version" \
  -n "agentkernel list (SQLite)" "$AK list" \
  -n "true (process spawn floor)" "/bin/true"

echo "bench: HTTP API (POST /run of true)" >&2
# wrk on loopback against `serve`, cold (every sandbox booted for its request) and from warm
# pools. Closed loop: CONNS requests in flight at all times for HTTP_SECONDS.
HTTP_SECONDS="${HTTP_SECONDS:-20}"
printf '[daemon]\nmin_warm = 4\nmax_warm = 8\n' >"$work/pool.toml"
# An HTTP caller may name a host directory as its image only where the operator lists it
# (docs/security.md); the list lives in the user config, here only for the HTTP runs.
printf '[security]\nremote_paths = ["%s"]\n' "$root" >"$AGENTKERNEL_HOME/config.toml"
body="{\"command\":[\"true\"],\"image\":\"$root\",\"no_network\":true"
wrk_run() { # label port conns fast
  BODY="$body,\"fast\":$4}" wrk -t2 -c"$3" -d"${HTTP_SECONDS}s" --latency -s bench/post.lua \
    "http://127.0.0.1:$2/run" >"$work/wrk-$1.txt"
}
serve_start() { # port args...
  "$AK" serve --port "$1" "${@:2}" 2>>"$work/serve.log" &
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return; sleep 0.05; done
  echo "bench: serve did not start" >&2; cat "$work/serve.log" >&2; exit 1
}
serve_start 18931 --no-pool
cold_pid=$!
wrk_run cold-c2 18931 2 false
wrk_run cold-c4 18931 4 false
kill "$cold_pid"; wait "$cold_pid" || true
serve_start 18932 -c "$work/pool.toml"
warm_pid=$!
BODY="$body,\"fast\":true}" wrk -t1 -c1 -d2s -s bench/post.lua "http://127.0.0.1:18932/run" >/dev/null
wrk_run warm-c2 18932 2 true
wrk_run warm-c4 18932 4 true
kill "$warm_pid"; wait "$warm_pid" || true

rm "$AGENTKERNEL_HOME/config.toml"

echo "bench: run through the daemon's warm pool" >&2
"$AK" daemon start --background -c "$work/pool.toml" >/dev/null
"$AK" daemon prewarm --image "$root" --no-network --count 4 >/dev/null
sleep 1
hf "$work/daemon.json" \
  -n "agentkernel run (daemon, warm pool)" "$AK run --image $root --no-network -- true" \
  -n "agentkernel run (no daemon, cold)" "env AGENTKERNEL_NO_DAEMON=1 $AK run --image $root --no-network -- true" \
  -n "bwrap --unshare-all" "bwrap --unshare-all --ro-bind $root / true"
# With 100 ms of idle before each run, as an agent's calls arrive: the first cgroup attach
# after a quiet spell waits for an RCU grace period (kernel), which back-to-back runs hide.
hyperfine --style none --export-json "$work/daemon-idle.json" --warmup 3 --runs "$(( RUNS / 4 + 1 ))" -N \
  --prepare "sleep 0.1" \
  -n "agentkernel run (daemon, warm pool)" "$AK run --image $root --no-network -- true" \
  -n "agentkernel run (no daemon, cold)" "env AGENTKERNEL_NO_DAEMON=1 $AK run --image $root --no-network -- true" \
  -n "bwrap --unshare-all" "bwrap --unshare-all --ro-bind $root / true" >/dev/null
"$AK" daemon stop >/dev/null

echo "bench: pull" >&2
# Images come from the loopback test registry (scripts/test-registry.sh), never a public one.
bash scripts/test-registry.sh start >/dev/null
set -a
source "${AGENTKERNEL_TEST_IMAGES:-${HOME:-/root}/.cache/agentkernel-test-images}/registry.env"
set +a
reg="$AGENTKERNEL_TEST_REGISTRY"
pull_home="$work/pull-home"
PULL_RUNS="${PULL_RUNS:-20}"
hyperfine --style none --export-json "$work/pull.json" --warmup 2 --runs "$PULL_RUNS" \
  -n "agentkernel images pull (cold store)" \
  --prepare "rm -rf $pull_home" \
  "env AGENTKERNEL_HOME=$pull_home AGENTKERNEL_REGISTRY_MIRROR=http://$reg $AK images pull -q python:3.12-alpine" \
  -n "skopeo copy + tar -x" \
  "bash bench/skopeo-pull.sh $reg/library/python:3.12-alpine $work/skopeo" >/dev/null

# A pulled image against the same tree as a local directory: what resolving it costs.
AGENTKERNEL_HOME=$pull_home AGENTKERNEL_REGISTRY_MIRROR="http://$reg" "$AK" images pull -q python:3.12-alpine
hf "$work/pulled.json" \
  -n "run --image python:3.12-alpine (pulled)" "env AGENTKERNEL_HOME=$pull_home $AK run --image python:3.12-alpine --no-network -- true" \
  -n "run --image DIR (same tree)" "env AGENTKERNEL_HOME=$pull_home $AK run --image $work/skopeo/rootfs --no-network -- true"

# Keeps the "Container backends" section (bench/engines.sh) of the file.
python3 bench/report.py "$work" docs/benchmarks.md
echo "bench: wrote docs/benchmarks.md" >&2
