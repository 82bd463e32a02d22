#!/usr/bin/env bash
# Egress benchmarks (docs/network.md), measured in one run; results in docs/benchmarks.md.
#
#   bash bench/egress.sh            # ~2 min
#   RUNS=40 bash bench/egress.sh    # quicker
#
# Nothing leaves the machine: "the internet" is a network namespace this script makes, joined to
# the host by a veth pair with addresses chosen here (10.213.250.0/30), with no uplink of its
# own. Everything it starts is stopped and the namespace removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked --target "$HOST_TARGET" -p agentkernel
AK="$PWD/target/$HOST_TARGET/release/agentkernel"
RUNS="${RUNS:-200}"
work="$(mktemp -d)"
export AGENTKERNEL_HOME="$work/home" AGENTKERNEL_NO_DAEMON=1
ns="akbench-$$"
host_if="akb$$h"
world_if="akb$$w"
world=10.213.250.2
export AGENTKERNEL_RESOLVE="bench.test=$world"
pids=()
cleanup() {
  for i in $(seq 10); do "$AK" remove "bench-idle-$i" >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ip link del "$host_if" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip link add "$host_if" type veth peer name "$world_if"
ip link set "$world_if" netns "$ns"
ip addr add 10.213.250.1/30 dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" addr add "$world/30" dev "$world_if"
ip -n "$ns" link set "$world_if" up
ip -n "$ns" link set lo up

# A file server in the world namespace that sends with sendfile(2), so that the server is not
# what is measured, and a 1 GiB sparse file (reads cost no disk).
truncate -s 1G "$work/blob"
cat >"$work/serve.py" <<'EOF'
import os, socket, sys, threading
path, addr = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
s = socket.create_server((addr, 80), backlog=1024)
def handle(c):
    try:
        req = b""
        while b"\r\n\r\n" not in req:
            chunk = c.recv(4096)
            if not chunk:
                return
            req += chunk
        small = b" /small" in req.split(b"\r\n", 1)[0]
        if small:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            return
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        with open(path, "rb") as f:
            c.sendfile(f)
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
EOF
nsenter --net="/run/netns/$ns" python3 "$work/serve.py" "$work/blob" "$world" &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://$world/small" && break; sleep 0.05; done

root="$work/busybox"
mkdir -p "$root/bin" "$root/proc" "$root/dev" "$root/tmp" "$root/etc"
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done

echo "bench: run with and without network" >&2
ROUNDS=4
for round in $(seq "$ROUNDS"); do
  hyperfine --style none --export-json "$work/egress-run-$round.json" --warmup 3 --runs "$(( RUNS / ROUNDS ))" -N \
    -n "agentkernel run --no-network" "$AK run --image $root --no-network -- true" \
    -n "agentkernel run (full network)" "$AK run --image $root -- true" \
    -n "agentkernel run --allow-host bench.test" "$AK run --image $root --allow-host bench.test -- true" >/dev/null
done

echo "bench: 1 GiB through the proxy" >&2
# The same download, the same client (the host's curl, run inside the sandbox's view of the
# host), direct from the host and through the proxy; best of 3 each.
best() { sort -n | head -1; }
direct=$(for _ in 1 2 3; do curl -s -o /dev/null -w '%{time_total}\n' "http://$world/blob"; done | best)
proxied=$(for _ in 1 2 3; do "$AK" run --image host --allow-host bench.test -- curl -s -o /dev/null -w '%{time_total}\n' http://bench.test/blob; done | best)

echo "bench: 200 concurrent connections" >&2
concurrent=$("$AK" run --image host --allow-host bench.test -- python3 -c '
import concurrent.futures, urllib.request
def get(_):
    with urllib.request.urlopen("http://bench.test/small", timeout=30) as r:
        return r.read() == b"ok"
with concurrent.futures.ThreadPoolExecutor(200) as ex:
    ok = sum(ex.map(get, range(200)))
print(ok)')

echo "bench: idle memory of networked sandboxes" >&2
# Ten networked persistent sandboxes, each with its proxy process: what one more adds is its
# proxy's own memory (private dirty pages) plus its share of the executable's pages, which all
# proxies map (PSS). With one proxy alone the executable's text would all count as its own.
IDLE=10
for i in $(seq "$IDLE"); do
  "$AK" create "bench-idle-$i" --image "$root" >/dev/null
  "$AK" start "bench-idle-$i"
done
sleep 1
read -r rss_kb pss_kb private_kb < <(for i in $(seq "$IDLE"); do
  p=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$AGENTKERNEL_HOME/sandboxes/bench-idle-$i/egress.pid")
  awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} /^Private_Dirty:/ {d=$2} END {print r, p, d}' "/proc/$p/smaps_rollup"
done | awk -v n="$IDLE" '{r+=$1; p+=$2; d+=$3} END {printf "%d %d %d\n", r/n, p/n, d/n}')
for i in $(seq "$IDLE"); do "$AK" remove "bench-idle-$i" >/dev/null; done

python3 bench/egress_report.py "$work" "$direct" "$proxied" "$concurrent" "$rss_kb" "$pss_kb" "$private_kb"
