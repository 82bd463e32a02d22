#!/usr/bin/env bash
# Installs agentkernel on this machine (system packages, release build, /usr/local/bin) and runs
# a command in a sandbox to show it works.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked --target "$HOST_TARGET" -p agentkernel
install -m 0755 "target/$HOST_TARGET/release/agentkernel" /usr/local/bin/agentkernel
echo "installed /usr/local/bin/agentkernel" >&2
agentkernel run --image host -- python3 -c 'import socket; print("hello from sandbox", socket.gethostname())'
