#!/usr/bin/env bash
# Snapshot benchmarks (docs/snapshots.md): take, fork ×100, first exec after restore/fork.
#
#   bash bench/snapshots.sh             # ~3 min; RUNS=3 for a quicker one, BACKEND=docker,
#                                       # FRESH_FS=0 to measure in $TMPDIR as it is
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
bin="$PWD/target/$HOST_TARGET/release/agentkernel"
if [ "${FRESH_FS:-1}" = 1 ]; then
  # The state directory on a fresh ext4 file system, mounted in a private mount namespace (no
  # mount on the host): a disk that has seen millions of files created and deleted makes every
  # file creation slow, for agentkernel and cp alike (docs/benchmarks.md). FRESH_FS=0 measures
  # in $TMPDIR as it is.
  img="$(mktemp "${TMPDIR:-/tmp}/ak-snapbench-fs.XXXXXX")"
  trap 'rm -f "$img"' EXIT
  truncate -s 4G "$img"
  mkfs.ext4 -q -F "$img"
  mnt="$(mktemp -d "${TMPDIR:-/tmp}/ak-snapbench-mnt.XXXXXX")"
  unshare -m --propagation private env BIN="$bin" IMG="$img" MNT="$mnt" \
    BENCH_FS_NOTE="the state directory on a fresh ext4 file system (a loop image mounted in a private mount namespace)" \
    bash -c 'mount -o loop "$IMG" "$MNT" && TMPDIR="$MNT" python3 bench/snapshots.py "$BIN"'
  rmdir "$mnt"
else
  python3 bench/snapshots.py "$bin"
fi
