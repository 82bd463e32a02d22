#!/usr/bin/env bash
# Installs what agentkernel and its tests need from Debian's packages. Idempotent.
set -euo pipefail
packages=(
  busybox-static # test and benchmark images
  bubblewrap     # benchmark peer
  hyperfine      # benchmark runner
  wrk            # HTTP load generator (bench: POST /run)
  curl           # bench: waiting for the server
  util-linux     # unshare/nsenter: benchmark peers and tests; losetup, setpriv: tests
  e2fsprogs      # mkfs.ext4: a persistent native sandbox's disk image
  python3        # used by tests through the host image
  python3-venv   # the venv scripts/test-clients.sh installs the Python SDK into
  iproute2
  nftables       # nft: a proxy test's own redirect rule inside its namespace
  openssl        # egress tests: the test CAs and server certificates of their "world"
  python3-pip    # egress tests: `pip download` through the proxy (npm comes with nodejs)
  qemu-system-x86 # the micro-VM backend's VMM (-M microvm); installed without its recommends
  fish           # tests: the fish completion script parses
  git            # source_url tests: git clone inside a host-image sandbox, git daemon in their world
)
# Installed without recommends (qemu-system-x86 would otherwise bring a desktop's worth of GUI and
# codec libraries). Note: Debian 12's qemu-system-x86 conflicts with a backported qemu-utils
# (>= 8.0), which apt then removes.
no_recommends=(qemu-system-x86)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  plain=() bare=()
  for p in "${missing[@]}"; do
    if [[ " ${no_recommends[*]} " == *" $p "* ]]; then bare+=("$p"); else plain+=("$p"); fi
  done
  [ "${#plain[@]}" -eq 0 ] || apt-get install -y -qq "${plain[@]}" >/dev/null
  [ "${#bare[@]}" -eq 0 ] || apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
fi
