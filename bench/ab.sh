#!/usr/bin/env bash
# A/B of two agentkernel builds in one run: `run --no-network` and `exec` of each, beside the
# peers they are held to (bwrap with /proc, /dev and /tmp; nsenter), in alternating rounds so
# that the machine's drift touches both alike. Prints the pooled medians.
#
#   bash bench/ab.sh OLD_BINARY [NEW_BINARY]     # NEW defaults to this tree's release build
#   RUNS=400 bash bench/ab.sh …                  # runs per command (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="$(realpath "${1:?give the baseline agentkernel binary}")"
if [ -n "${2:-}" ]; then
  NEW="$(realpath "$2")"
else
  source scripts/env.sh
  cargo build --release --locked --target "$HOST_TARGET" -p agentkernel >&2
  NEW="$PWD/target/$HOST_TARGET/release/agentkernel"
fi
RUNS="${RUNS:-200}"
ROUNDS=8
work="$(mktemp -d)"
cleanup() {
  AGENTKERNEL_HOME="$work/old" "$OLD" remove ab-exec >/dev/null 2>&1 || true
  AGENTKERNEL_HOME="$work/new" "$NEW" remove ab-exec >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

root="$work/busybox"
mkdir -p "$root/bin" "$root/proc" "$root/dev" "$root/tmp" "$root/etc"
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done

pid_of() { # home binary
  AGENTKERNEL_HOME="$1" "$2" list --json |
    python3 -c 'import json,sys; print([s["pid"] for s in json.load(sys.stdin) if s["name"]=="ab-exec"][0])'
}
for side in old new; do
  bin="$OLD"; [ "$side" = new ] && bin="$NEW"
  AGENTKERNEL_HOME="$work/$side" "$bin" create ab-exec --image "$root" --no-network >/dev/null
  AGENTKERNEL_HOME="$work/$side" "$bin" start ab-exec
done
pid="$(pid_of "$work/new" "$NEW")"

# Each command's runs of a round are consecutive (hyperfine), so the order flips every round:
# neither build always goes first.
cmds() { # side
  local bin="$OLD"; [ "$1" = new ] && bin="$NEW"
  printf '%s\0' -n "run --no-network ($1)" "env AGENTKERNEL_HOME=$work/$1 $bin run --image $root --no-network -- true" \
    -n "exec ($1)" "env AGENTKERNEL_HOME=$work/$1 $bin exec ab-exec -- true"
}
for round in $(seq "$ROUNDS"); do
  first=old second=new
  [ $(( round % 2 )) -eq 0 ] && first=new second=old
  mapfile -d '' a < <(cmds "$first")
  mapfile -d '' b < <(cmds "$second")
  hyperfine --style none -N --warmup 3 --runs "$(( RUNS / ROUNDS ))" \
    --export-json "$work/ab-$round.json" "${a[@]}" \
    -n "bwrap with /proc, /dev, /tmp" "env bwrap --unshare-all --ro-bind $root / --proc /proc --dev /dev --tmpfs /tmp true" \
    -n "nsenter -t PID -a" "env nsenter -t $pid -a true" \
    "${b[@]}" >/dev/null
done

python3 - "$work" "$ROUNDS" <<'EOF'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
times = {}
for r in range(1, rounds + 1):
    for result in json.load(open(f"{work}/ab-{r}.json"))["results"]:
        times.setdefault(result["command"], []).extend(result["times"])
print("| command | median ms | mean ms | runs |")
print("|---|---:|---:|---:|")
for name, t in sorted(times.items()):
    print(f"| {name} | {statistics.median(t) * 1000:.2f} | {statistics.mean(t) * 1000:.2f} | {len(t)} |")
EOF
