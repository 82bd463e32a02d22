#!/usr/bin/env bash
# Builds the micro-VM guest kernel and prints the path of its ELF `vmlinux` (booted via PVH).
#
# The kernel is Debian's linux-source-6.1, configured as `make tinyconfig` plus the checked-in
# fragment crates/agentkernel-vm/kernel/agentkernel.config (merged with
# scripts/kconfig/merge_config.sh). The result is cached under
# ${AGENTKERNEL_KERNEL_CACHE:-$HOME/.cache/agentkernel-kernel}/<key>/vmlinux, where <key> is the
# sha256 of the fragment and the linux-source package version: a second run prints the cached
# path at once. Missing packages (linux-source-6.1 and the build tools) are installed with apt.
#
# After the build every line of the fragment is checked against the final .config, because
# merge_config.sh silently drops an option whose dependencies are unmet: the script fails
# naming the option instead of caching a kernel that lacks it.
#
# Progress goes to stderr; the only line on stdout is the vmlinux path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fragment="$root/crates/agentkernel-vm/kernel/agentkernel.config"
cache="${AGENTKERNEL_KERNEL_CACHE:-${HOME:-/root}/.cache/agentkernel-kernel}"
log() { echo "build-kernel: $*" >&2; }

packages=(
  linux-source-6.1 # the kernel source (a tarball under /usr/src)
  xz-utils         # unpacks it
  make
  gcc
  libc6-dev
  bc
  flex
  bison
  libelf-dev # objtool, which every x86_64 build runs
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version="$(dpkg-query -W -f='${Version}' linux-source-6.1)"
tarball=/usr/src/linux-source-6.1.tar.xz
[ -f "$tarball" ] || {
  log "$tarball is missing although linux-source-6.1 $version is installed; reinstall it: apt-get install --reinstall linux-source-6.1"
  exit 1
}
key="$( (cat "$fragment"; printf 'linux-source-6.1 %s\n' "$version") | sha256sum | cut -c1-16)"
out="$cache/$key"
if [ -f "$out/vmlinux" ]; then
  echo "$out/vmlinux"
  exit 0
fi

mkdir -p "$cache"
# One build at a time per cache (tests run in parallel processes); the loser of the race finds
# the winner's kernel once it gets the lock.
exec 9>"$cache/lock"
flock 9
if [ -f "$out/vmlinux" ]; then
  echo "$out/vmlinux"
  exit 0
fi

src="$cache/linux-source-6.1-$version"
if [ ! -f "$src/.unpacked" ]; then
  log "unpacking $tarball ($version)"
  rm -rf "$src" "$src.tmp"
  mkdir -p "$src.tmp"
  tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
  touch "$src.tmp/.unpacked"
  mv "$src.tmp" "$src"
fi

build="$cache/build-$key"
rm -rf "$build"
mkdir -p "$build"
start=$(date +%s)
log "configuring (tinyconfig + $(basename "$fragment")) in $build"
make -s -C "$src" O="$build" ARCH=x86_64 tinyconfig >&2
(cd "$build" && "$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >&2)
make -s -C "$src" O="$build" ARCH=x86_64 olddefconfig >&2

# Every option of the fragment as asked, or fail naming it.
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      opt="${line%%=*}"
      grep -qxF "$line" "$build/.config" || {
        got="$(grep -E "^($opt=|# $opt is not set)" "$build/.config" || echo "absent")"
        log "$opt: asked '$line', .config has '$got' (an unmet dependency? see: make O=$build menuconfig, search $opt)"
        bad=1
      }
      ;;
    "# CONFIG_"*" is not set")
      opt="${line#\# }"
      opt="${opt%% *}"
      if grep -qE "^$opt=" "$build/.config"; then
        log "$opt: asked not set, .config has '$(grep -E "^$opt=" "$build/.config")'"
        bad=1
      fi
      ;;
  esac
done <"$fragment"
[ "$bad" -eq 0 ] || {
  log "the fragment $fragment asks for options the kernel did not take; fix it"
  exit 1
}

log "building vmlinux with -j$(nproc)"
make -s -C "$src" O="$build" ARCH=x86_64 -j"$(nproc)" vmlinux >&2
mkdir -p "$out.tmp"
cp "$build/vmlinux" "$out.tmp/vmlinux"
cp "$build/.config" "$out.tmp/config"
printf 'linux-source-6.1 %s\nbuild seconds %s\n' "$version" "$(($(date +%s) - start))" >"$out.tmp/info"
rm -rf "$out"
mv "$out.tmp" "$out"
rm -rf "$build"
log "built in $(($(date +%s) - start)) s"
echo "$out/vmlinux"
