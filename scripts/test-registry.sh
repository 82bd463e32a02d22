#!/usr/bin/env bash
# Local Docker v2 registries with small test images, so tests never reach a public registry.
#
#   scripts/test-registry.sh start   build the images (once, cached), start two registries on
#                                    127.0.0.1 (one open, one with basic auth), push the images,
#                                    write $AGENTKERNEL_TEST_IMAGES/registry.env and print it
#   scripts/test-registry.sh stop    stop both registries and remove registry.env
#
# See docs/test-registry.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${AGENTKERNEL_TEST_IMAGES:-${HOME:-/root}/.cache/agentkernel-test-images}"
envfile="$cache/registry.env"
run="$cache/run"              # registry configs, htpasswd and logs of the running pair
storage="$cache/registry"     # registry storage: kept between runs, so a cached start pushes nothing new

# Bump to rebuild every cached image (e.g. after changing what goes into them).
IMAGES_VERSION=1

USER_NAME=agent
USER_PASSWORD=kernel-test
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Image layout (and its tag) -> names pushed to both registries.
PUSHES=(
  "busybox:latest library/busybox:latest"
  "busybox:latest library/alpine:3.20"
  "python:latest  library/python:3.12-alpine"
)
# The images the built-in templates name (crates/agentkernel-engine/templates/*.toml), as
# tagged copies of the two images above, so that every built-in's image resolves here (their
# contents are busybox or Debian's python3, not the real toolchains). Pushed to the open
# registry only. Docker Hub names sit under their Hub path (library/ for official images);
# another registry's image sits under its path there (mcr.microsoft.com/dotnet/sdk:8.0 is
# dotnet/sdk:8.0).
ALIASES=(
  "busybox:latest library/node:22-alpine"
  "busybox:latest library/rust:1.85-alpine"
  "busybox:latest library/golang:1.23-alpine"
  "busybox:latest library/ruby:3.3-alpine"
  "busybox:latest library/eclipse-temurin:21-alpine"
  "busybox:latest library/php:8.3-alpine"
  "busybox:latest library/elixir:1.16-alpine"
  "busybox:latest library/gcc:14-bookworm"
  "busybox:latest hashicorp/terraform:1.10"
  "busybox:latest dotnet/sdk:8.0"
  "python:latest  library/python:3.12-slim"
)

log() { echo "test-registry: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_missing() {
  local packages=(docker-registry skopeo mmdebstrap busybox-static apache2-utils curl python3)
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The same Debian sources apt uses: this machine may reach only that mirror.
apt_sources() {
  local f found=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -Eqs '^[^#]*(deb |URIs:).*/debian' "$f" && found+=("$f")
  done
  if [ "${#found[@]}" -eq 0 ]; then found=(http://deb.debian.org/debian); fi
  printf '%s\n' "${found[@]}"
}

# Files every image has: users, and the directories a runtime mounts over or writes to.
base_files() {
  local root="$1"
  mkdir -p "$root"/{etc,root,proc,dev,sys,tmp}
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

# A symlink to busybox for each applet, where nothing of that name is installed already.
busybox_links() {
  local root="$1" applet
  for applet in $("$root/bin/busybox" --list-full); do
    [ "$applet" = linuxrc ] && continue   # an initrd's /linuxrc: not wanted in a container image
    # Keep what is there: busybox itself, and in the python image Debian's own tools.
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] && continue
    [ -e "$root/usr/bin/${applet##*/}" ] || [ -L "$root/usr/bin/${applet##*/}" ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -s /bin/busybox "$root/$applet"
  done
}

build_busybox() {
  local root="$cache/rootfs/busybox"
  rm -rf "$root" && mkdir -p "$root/bin"
  cp /bin/busybox "$root/bin/busybox"
  busybox_links "$root"
  base_files "$root"
  python3 "$here/test-images.py" "$root" "$cache/oci/busybox" --tag latest \
    --env "$PATH_ENV" --cmd /bin/sh
}

build_python() {
  local root="$cache/rootfs/python" sources
  rm -rf "$root"
  mapfile -t sources < <(apt_sources)
  # extract: unpack the packages and their dependencies, run no maintainer script (fast, no
  # chroot needed). Docs, man pages and translations are left out to keep the image small.
  mmdebstrap --quiet --variant=extract --include=python3,busybox-static \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$root" "${sources[@]}"
  rm -rf "${root:?}"/var/cache/apt/* "${root:?}"/var/lib/apt/lists/*
  # dash is not in the image (extract installs no Essential packages): busybox is the shell.
  [ -e "$root/bin/sh" ] || ln -s busybox "$root/bin/sh"
  busybox_links "$root"
  base_files "$root"
  rm -rf "${root:?}"/dev/*   # mmdebstrap may create device nodes; the runtime provides /dev
  chroot "$root" /usr/bin/python3 -c 'print(1)' >/dev/null || die "python3 does not run in $root"
  chroot "$root" /bin/sh -c 'true' || die "/bin/sh does not run in $root"
  python3 "$here/test-images.py" "$root" "$cache/oci/python" --tag latest \
    --env "$PATH_ENV" --cmd python3
}

# Builds an image unless its layout is there from this IMAGES_VERSION.
ensure_image() {
  local name="$1" stamp="$cache/oci/$1.stamp"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$IMAGES_VERSION" ] && [ -f "$cache/oci/$name/index.json" ]; then
    return
  fi
  log "building the $name image"
  rm -f "$stamp"
  mkdir -p "$cache/oci" "$cache/rootfs"
  "build_$name"
  rm -rf "${cache:?}/rootfs/$name"   # the layout has it all
  echo "$IMAGES_VERSION" >"$stamp"
}

free_ports() {
  python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))'
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$1/v2/" || true; }

# True if PID is a live registry. Checked by name, not kill -0: the pid may have been reused, and
# a registry that exited stays a zombie (empty cmdline) until init reaps it.
is_registry() { [ -n "$1" ] && grep -qs docker-registry "/proc/$1/cmdline"; }

stop_pid() {
  local pid="$1"
  is_registry "$pid" || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do   # it exits at once on SIGTERM; 5 s at most, then SIGKILL
    is_registry "$pid" || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

stop_registries() {
  if [ -f "$envfile" ]; then
    stop_pid "$(sed -n 's/^AGENTKERNEL_TEST_REGISTRY_PID=//p' "$envfile")"
    stop_pid "$(sed -n 's/^AGENTKERNEL_TEST_AUTH_REGISTRY_PID=//p' "$envfile")"
  fi
  rm -f "$envfile"
}

# True if registry.env describes a pair that is up and answering as it should.
running() {
  [ -f "$envfile" ] || return 1
  local open auth open_pid auth_pid
  open="$(sed -n 's/^AGENTKERNEL_TEST_REGISTRY=//p' "$envfile")"
  auth="$(sed -n 's/^AGENTKERNEL_TEST_AUTH_REGISTRY=//p' "$envfile")"
  open_pid="$(sed -n 's/^AGENTKERNEL_TEST_REGISTRY_PID=//p' "$envfile")"
  auth_pid="$(sed -n 's/^AGENTKERNEL_TEST_AUTH_REGISTRY_PID=//p' "$envfile")"
  is_registry "$open_pid" && is_registry "$auth_pid" &&
    [ "$(http_code "$open")" = 200 ] && [ "$(http_code "$auth")" = 401 ]
}

# Writes a registry config; with a 4th argument, requires basic auth from that htpasswd file.
write_config() {
  local file="$1" port="$2" dir="$3" htpasswd="${4:-}"
  cat >"$file" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
EOF
  if [ -n "$htpasswd" ]; then
    printf 'auth:\n  htpasswd:\n    realm: agentkernel-test\n    path: %s\n' "$htpasswd" >>"$file"
  fi
}

# Starts one registry in its own session (so it outlives this script); prints its pid.
# Through Popen, which closes every inherited fd: a registry that kept a caller's lock file or
# pipe open (e.g. `flock LOCK test-registry.sh start`) would hold that lock until it stops.
spawn() {
  python3 - "$run/$1.yml" "$run/$1.log" <<'EOF'
import subprocess, sys
with open(sys.argv[2], "wb") as log:
    p = subprocess.Popen(["/usr/bin/docker-registry", "serve", sys.argv[1]], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True, close_fds=True)
print(p.pid)
EOF
}

wait_ready() {
  local addr="$1" want="$2" pid="$3" name="$4" code=
  for _ in $(seq 100); do   # 100 x 0.1 s: 10 s at most
    code="$(http_code "$addr")"
    [ "$code" = "$want" ] && return 0
    is_registry "$pid" || break
    sleep 0.1
  done
  tail -n 20 "$run/$name.log" >&2 || true
  die "the $name registry on $addr did not answer GET /v2/ with $want (last: ${code:-none})"
}

start_registries() {
  local open_port auth_port open_pid auth_pid
  mkdir -p "$run" "$storage/open" "$storage/auth"
  read -r open_port auth_port < <(free_ports)
  htpasswd -Bbn "$USER_NAME" "$USER_PASSWORD" >"$run/htpasswd"
  write_config "$run/open.yml" "$open_port" "$storage/open"
  write_config "$run/auth.yml" "$auth_port" "$storage/auth" "$run/htpasswd"
  open_pid="$(spawn open)"
  auth_pid="$(spawn auth)"
  wait_ready "127.0.0.1:$open_port" 200 "$open_pid" open
  wait_ready "127.0.0.1:$auth_port" 401 "$auth_pid" auth
  cat >"$envfile" <<EOF
AGENTKERNEL_TEST_REGISTRY=127.0.0.1:$open_port
AGENTKERNEL_TEST_AUTH_REGISTRY=127.0.0.1:$auth_port
AGENTKERNEL_TEST_REGISTRY_USER=$USER_NAME
AGENTKERNEL_TEST_REGISTRY_PASSWORD=$USER_PASSWORD
AGENTKERNEL_TEST_REGISTRY_PID=$open_pid
AGENTKERNEL_TEST_AUTH_REGISTRY_PID=$auth_pid
AGENTKERNEL_TEST_REGISTRY_STORAGE=$storage/open
EOF
}

# Pushes every image to both registries, and the aliases to the open one. Idempotent: blobs
# already there are not sent again.
push_images() {
  local open auth entry src dest
  open="$(sed -n 's/^AGENTKERNEL_TEST_REGISTRY=//p' "$envfile")"
  auth="$(sed -n 's/^AGENTKERNEL_TEST_AUTH_REGISTRY=//p' "$envfile")"
  for entry in "${PUSHES[@]}"; do
    read -r src dest <<<"$entry"
    # --insecure-policy: local layouts we just built, no /etc/containers/policy.json needed.
    # --preserve-digests: the registry serves the very manifest the layout has.
    skopeo --insecure-policy copy --quiet --preserve-digests --dest-tls-verify=false \
      "oci:$cache/oci/${src%%:*}:${src#*:}" "docker://$open/$dest"
    skopeo --insecure-policy copy --quiet --preserve-digests --dest-tls-verify=false \
      --dest-creds "$USER_NAME:$USER_PASSWORD" \
      "oci:$cache/oci/${src%%:*}:${src#*:}" "docker://$auth/$dest"
  done
  for entry in "${ALIASES[@]}"; do
    read -r src dest <<<"$entry"
    skopeo --insecure-policy copy --quiet --preserve-digests --dest-tls-verify=false \
      "oci:$cache/oci/${src%%:*}:${src#*:}" "docker://$open/$dest"
  done
}

main() {
  local cmd="${1:-}"
  case "$cmd" in start | stop) ;; *) echo "usage: $0 start|stop" >&2; exit 2 ;; esac
  [ "$(id -u)" = 0 ] || die "run as root (apt-get, mmdebstrap and chroot need it)"
  mkdir -p "$cache"
  # One start or stop at a time: parallel test runs may all call start.
  exec 9>"$cache/.lock"
  flock 9
  case "$cmd" in
    start)
      install_missing
      ensure_image busybox
      ensure_image python
      if running; then
        log "registries already running: reusing them"
      else
        stop_registries
        start_registries
      fi
      push_images
      cat "$envfile"
      ;;
    stop)
      stop_registries
      ;;
  esac
}

main "$@"
