#!/usr/bin/env bash
# Installs agentkernel on this machine (system packages, release build, /usr/local/bin) and runs
# a command in a sandbox to show it works.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked --target "$HOST_TARGET" -p agentkernel -p agentkernel-guest
install -m 0755 "target/$HOST_TARGET/release/agentkernel" /usr/local/bin/agentkernel
# The micro-VM backend (-B microvm): the guest agent and the guest kernel (built from Debian's
# linux-source once, several minutes on two cores, then cached), where `agentkernel` looks.
install -d /usr/local/lib/agentkernel
install -m 0755 "target/$HOST_TARGET/release/agentkernel-guest" /usr/local/lib/agentkernel/agentkernel-guest
install -m 0644 "$(bash scripts/build-kernel.sh)" /usr/local/lib/agentkernel/vmlinux
echo "installed /usr/local/bin/agentkernel and /usr/local/lib/agentkernel/{agentkernel-guest,vmlinux}" >&2
agentkernel run --image host -- python3 -c 'import socket; print("hello from sandbox", socket.gethostname())'
