#!/usr/bin/env bash
# Installs agentkernel on this machine (system packages, release build, /usr/local/bin) and runs
# a command in a sandbox to show it works.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p agentkernel
install -m 0755 target/release/agentkernel /usr/local/bin/agentkernel
echo "installed /usr/local/bin/agentkernel" >&2
agentkernel run --image host -- python3 -c 'import socket; print("hello from sandbox", socket.gethostname())'
