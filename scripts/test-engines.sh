#!/usr/bin/env bash
# Container engines for the Docker/Podman/gVisor backend tests: Debian's dockerd (with its own
# containerd, and gVisor's runsc as a runtime) and Podman's Docker-compatible service, each on
# its own socket and storage, pulling from the local test registry. They never touch the host's
# firewall, its ip_forward setting, /var/run/docker.sock or /var/lib/{docker,containers}.
#
#   scripts/test-engines.sh start   install what is missing, start both engines (or reuse the
#                                   running pair), write $AGENTKERNEL_TEST_ENGINES/engines.env
#                                   and print it
#   scripts/test-engines.sh stop    remove every container of both engines, stop them, their
#                                   containerd, shims, conmon and runsc processes, unmount what
#                                   they mounted and remove engines.env (image stores are kept)
#
# Start scripts/test-registry.sh first: the engines use its registry as their docker.io mirror.
# See docs/test-engines.md.
set -euo pipefail

cache="${AGENTKERNEL_TEST_ENGINES:-${HOME:-/root}/.cache/agentkernel-test-engines}"
envfile="$cache/engines.env"
logs="$cache/logs"
registry_env="${AGENTKERNEL_TEST_IMAGES:-${HOME:-/root}/.cache/agentkernel-test-images}/registry.env"
# Sockets, pid files, exec roots and run roots: on a short path, not in the cache dir, because
# Podman refuses a run root longer than 50 characters (the cleanup process that conmon starts
# when a container exits fails with "the specified runroot is longer than 50 characters", so
# `--rm` containers are never removed and waits hang) and unix socket paths must stay under 108
# bytes. One directory per cache dir: two caches never share engines.
run="/run/agentkernel-test-engines/$(printf '%s' "$cache" | sha256sum | cut -c1-8)"
conf="$run/conf"

docker_sock="$run/docker.sock"
podman_sock="$run/podman.sock"
containerd_sock="$run/containerd/containerd.sock"
# Docker puts its containers' cgroups (v1: memory, pids, ...) under this parent; stop removes it.
docker_cgroup_parent=agentkernel-test-docker
DOCKER=/usr/bin/docker   # Debian's client (docker.io), used only by this script
SPAWN_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { echo "test-engines: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_missing() {
  # runc, not crun: crun 1.8 refuses this machine's cgroup layout (v1 controllers with a v2
  # hierarchy mounted beside them at /sys/fs/cgroup/unified) unless the hugetlb controller is
  # mounted as a v1 hierarchy, and mounting one would change the host's cgroup tree for everyone
  # on it. runc 1.1 handles the hybrid layout (it uses the v1 controllers, so memory and pids
  # limits work), and dockerd uses it too: both engines then run containers the same way.
  # containernetworking-plugins: the CNI loopback plugin of Podman's default network (below).
  local packages=(docker.io containerd runc podman conmon golang-github-containers-common
    containernetworking-plugins runsc curl python3)
  local missing=() p
  for p in "${packages[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return
  log "installing ${missing[*]}"
  # The packages' maintainer scripts would start a system dockerd and containerd (with the
  # default iptables rules) where no policy-rc.d says otherwise: deny that while installing.
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local rc=0
  {
    apt-get update -qq &&
      # No recommends: they would add buildah, fuse-overlayfs, slirp4netns, apparmor, git, ...
      apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
  } || rc=$?
  if [ -n "$own_policy" ]; then rm -f "$policy"; fi
  [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed"
}

# True if PID is alive and its command line contains WORD (checked by name, not kill -0: the pid
# may have been reused, and an exited child stays a zombie with an empty cmdline).
is_proc() { [ -n "$1" ] && grep -qsF -- "$2" "/proc/$1/cmdline"; }

# Sends SIGTERM, waits up to SECONDS, then SIGKILL.
stop_pid() {
  local pid="$1" word="$2" seconds="${3:-10}" i
  is_proc "$pid" "$word" || return 0
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < seconds * 10; i++)); do
    is_proc "$pid" "$word" || return 0
    sleep 0.1
  done
  log "$word (pid $pid) did not stop in ${seconds}s: killing it"
  kill -9 "$pid" 2>/dev/null || true
}

env_value() {
  [ -f "$2" ] || return 0
  sed -n "s/^$1=//p" "$2" | tail -n 1
}

ping_ok() { [ "$(curl -s -m 3 --unix-socket "$1" http://engine/_ping 2>/dev/null || true)" = OK ]; }

# The docker.io mirror: the local test registry, if it runs.
current_mirror() { env_value AGENTKERNEL_TEST_REGISTRY "$registry_env"; }

# Starts a daemon in its own session (so it outlives this script), with a clean environment plus
# the KEY=value words before `--`; prints its pid. Through Popen, which closes every inherited fd:
# a daemon that kept a caller's lock file or pipe open would hold that lock until it stops.
spawn() {
  local name="$1"
  shift
  python3 - "$logs/$name.log" "$run" "$SPAWN_PATH" "$@" <<'EOF'
import os, subprocess, sys
log_path, cwd, path = sys.argv[1:4]
args = sys.argv[4:]
env = {"PATH": path, "HOME": os.environ.get("HOME", "/root")}
while args and args[0] != "--":
    key, _, value = args.pop(0).partition("=")
    env[key] = value
args.pop(0)
with open(log_path, "ab") as log:
    p = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True)
print(p.pid)
EOF
}

wait_ready() {
  local sock="$1" pid="$2" word="$3" name="$4" timeout="${5:-60}" i
  for ((i = 0; i < timeout * 10; i++)); do
    ping_ok "$sock" && return 0
    is_proc "$pid" "$word" || break
    sleep 0.1
  done
  tail -n 30 "$logs/$name.log" >&2 || true
  if is_proc "$pid" "$word"; then
    die "$name (pid $pid) did not answer GET /_ping on $sock within ${timeout}s (log: $logs/$name.log)"
  fi
  die "$name exited before answering GET /_ping on $sock (log: $logs/$name.log)"
}

# ---------------------------------------------------------------------------------------------
# Docker

write_docker_config() {
  local mirror="$1"
  mkdir -p "$conf" "$run/containerd" "$cache/containerd" "$cache/docker"
  # dockerd would start its own containerd only when /run/containerd/containerd.sock is absent
  # and use the system one otherwise; started here, ours is always ours (own root, state and
  # socket), whatever else runs on the machine.
  cat >"$conf/containerd.toml" <<EOF
version = 2
root = "$cache/containerd"
state = "$run/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$containerd_sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$cache/containerd/opt"
EOF
  python3 - "$conf/daemon.json" "$mirror" <<'EOF'
import json, os, sys
path, mirror = sys.argv[1:3]
config = {}
if mirror:
    # http://: the test registry is plain HTTP on loopback.
    config["registry-mirrors"] = [f"http://{mirror}"]
if os.access("/usr/bin/runsc", os.X_OK):
    # --network=none: Debian's runsc (2022-12) takes every network namespace for the host's on
    # this kernel (it looks for /proc/sys/net/core/rmem_default, which kernels since 6.x have in
    # every namespace) and refuses to start with "cannot run with network enabled in root network
    # namespace", so its containers get gVisor's loopback only, whatever the network mode.
    # --oci-seccomp: apply the container's seccomp profile inside the sandbox too (runsc ignores
    # it otherwise).
    config["runtimes"] = {"runsc": {"path": "/usr/bin/runsc",
                                    "runtimeArgs": ["--network=none", "--oci-seccomp"]}}
with open(path, "w") as f:
    json.dump(config, f, indent=2)
EOF
}

start_docker() {
  local containerd_pid dockerd_pid i
  : >"$logs/containerd.log"
  : >"$logs/dockerd.log"
  containerd_pid="$(spawn containerd -- /usr/bin/containerd --config "$conf/containerd.toml")"
  echo "$containerd_pid" >"$run/containerd.pid"
  for ((i = 0; i < 300; i++)); do
    [ -S "$containerd_sock" ] && break
    is_proc "$containerd_pid" containerd || break
    sleep 0.1
  done
  if [ ! -S "$containerd_sock" ]; then
    tail -n 30 "$logs/containerd.log" >&2 || true
    die "containerd did not create $containerd_sock (log: $logs/containerd.log)"
  fi
  # --bridge=none: no docker0 and no default bridge network, so "default" and "bridge" networking
  # give a network namespace with loopback only. --iptables=false --ip-masq=false
  # --ip-forward=false: the host's firewall and net.ipv4.ip_forward are left as they are.
  dockerd_pid="$(spawn dockerd -- /usr/sbin/dockerd \
    --host "unix://$docker_sock" \
    --data-root "$cache/docker" \
    --exec-root "$run/docker" \
    --pidfile "$run/docker.pid" \
    --containerd "$containerd_sock" \
    --config-file "$conf/daemon.json" \
    --cgroup-parent "/$docker_cgroup_parent" \
    --storage-driver overlay2 \
    --bridge=none --iptables=false --ip-masq=false --ip-forward=false)"
  wait_ready "$docker_sock" "$dockerd_pid" dockerd dockerd
  echo "$containerd_pid $dockerd_pid"
}

# Removes every container of the test dockerd, stops it, its containerd, and whatever a shim or
# runsc left behind.
stop_docker() {
  local dockerd_pid containerd_pid ids
  dockerd_pid="$(env_value AGENTKERNEL_TEST_DOCKERD_PID "$envfile")"
  containerd_pid="$(env_value AGENTKERNEL_TEST_CONTAINERD_PID "$envfile")"
  [ -n "$dockerd_pid" ] || dockerd_pid="$(cat "$run/docker.pid" 2>/dev/null || true)"
  [ -n "$containerd_pid" ] || containerd_pid="$(cat "$run/containerd.pid" 2>/dev/null || true)"
  if ping_ok "$docker_sock"; then
    ids="$(timeout 30 "$DOCKER" -H "unix://$docker_sock" ps -aq 2>/dev/null || true)"
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086  # one id per word
      timeout 60 "$DOCKER" -H "unix://$docker_sock" rm -f $ids >/dev/null 2>&1 ||
        log "docker rm -f did not remove every container; killing what is left"
    fi
  fi
  stop_pid "$dockerd_pid" dockerd 20
  # Tasks dockerd no longer knows of (e.g. a runsc sandbox stuck in "created"): through containerd.
  if [ -S "$containerd_sock" ] && is_proc "$containerd_pid" containerd; then
    local ctr=(timeout 10 ctr --address "$containerd_sock" --namespace moby) task
    for task in $("${ctr[@]}" tasks ls -q 2>/dev/null || true); do
      "${ctr[@]}" tasks kill -a -s SIGKILL "$task" >/dev/null 2>&1 || true
      "${ctr[@]}" tasks delete -f "$task" >/dev/null 2>&1 || true
    done
  fi
  stop_pid "$containerd_pid" containerd 10
  # Last resort: any process still in a cgroup of ours, and shims, runsc gofers and sandboxes,
  # which name our directories on their command lines. A killed shim leaves its socket in
  # /run/containerd/s (a fixed path in containerd 1.6), named by the sha256 of
  # "<containerd address>/<namespace>/<id>": removed too.
  local sockets
  mapfile -t sockets < <(shim_sockets)
  kill_cgroup_tree "$docker_cgroup_parent"
  kill_matching "$run/"
  if [ "${#sockets[@]}" -gt 0 ]; then rm -f "${sockets[@]}"; fi
}

# The socket paths of the running shims of our containerd.
shim_sockets() {
  local pid
  while IFS= read -r pid; do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = containerd-shim ] || continue
    tr '\0' '\n' <"/proc/$pid/cmdline" | awk '
      prev == "-namespace" { ns = $0 } prev == "-id" { id = $0 } prev == "-address" { addr = $0 }
      { prev = $0 }
      END { if (ns != "" && id != "" && addr != "") print addr "/" ns "/" id }' |
      while IFS= read -r key; do
        echo "/run/containerd/s/$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)"
      done
  done < <(grep -lsF -- "$containerd_sock" /proc/[0-9]*/cmdline | cut -d/ -f3)
}

# ---------------------------------------------------------------------------------------------
# Podman

podman_env() {
  echo "CONTAINERS_CONF=$conf/containers.conf"
  echo "CONTAINERS_STORAGE_CONF=$conf/storage.conf"
  echo "CONTAINERS_REGISTRIES_CONF=$conf/registries.conf"
}

write_podman_config() {
  local mirror="$1" env_list
  mkdir -p "$conf/cni" "$run/podman" "$run/podman-tmp" "$cache/podman/storage"
  env_list="$(podman_env | sed 's/.*/"&"/' | paste -sd, | sed 's/,/, /g')"
  cat >"$conf/containers.conf" <<EOF
[containers]
# Root here lacks CAP_SYS_RESOURCE, so a container's rlimits can only be lowered; Podman's
# default (nofile 1048576) fails with "setrlimit RLIMIT_NOFILE: operation not permitted".
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"

[engine]
# No systemd and no journald on this machine.
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$run/podman-tmp/events.log"
runtime = "runc"
tmp_dir = "$run/podman-tmp"
static_dir = "$cache/podman/storage/libpod"
volume_path = "$cache/podman/storage/volumes"
# File locks under tmp_dir, not the shared-memory segment /libpod_lock that every rootful Podman
# on the machine would share.
lock_type = "file"
# conmon runs "podman container cleanup" when a container exits: it must read these files too.
conmon_env_vars = [$env_list]

[network]
# CNI with a default network that only brings up loopback (conf/cni/podman.conflist): Podman's
# Docker API maps "default" and "bridge" networking to its default network, and a netavark or CNI
# bridge would add iptables rules and turn on net.ipv4.ip_forward (netavark does so even for
# --internal networks). This matches dockerd's --bridge=none: loopback only.
network_backend = "cni"
network_config_dir = "$conf/cni"
EOF
  cat >"$conf/cni/podman.conflist" <<'EOF'
{
  "cniVersion": "0.4.0",
  "name": "podman",
  "plugins": [{ "type": "loopback" }]
}
EOF
  cat >"$conf/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$cache/podman/storage"
runroot = "$run/podman"
EOF
  {
    echo 'unqualified-search-registries = ["docker.io"]'
    echo 'short-name-mode = "permissive"'
    echo
    echo '[[registry]]'
    echo 'prefix = "docker.io"'
    echo 'location = "docker.io"'
    if [ -n "$mirror" ]; then
      echo
      echo '[[registry.mirror]]'
      echo "location = \"$mirror\""
      echo 'insecure = true'
    fi
  } >"$conf/registries.conf"
}

start_podman() {
  local pid env_words
  : >"$logs/podman.log"
  mapfile -t env_words < <(podman_env)
  pid="$(spawn podman "${env_words[@]}" -- /usr/bin/podman \
    --root "$cache/podman/storage" --runroot "$run/podman" \
    system service --time=0 "unix://$podman_sock")"
  echo "$pid" >"$run/podman.pid"
  wait_ready "$podman_sock" "$pid" podman podman
  echo "$pid"
}

# Podman run locally (no service) on the test store: works while the service is down.
podman_local() {
  local env_words
  mapfile -t env_words < <(podman_env)
  env "${env_words[@]}" timeout 60 /usr/bin/podman \
    --root "$cache/podman/storage" --runroot "$run/podman" "$@"
}

stop_podman() {
  local pid id
  pid="$(env_value AGENTKERNEL_TEST_PODMAN_PID "$envfile")"
  [ -n "$pid" ] || pid="$(cat "$run/podman.pid" 2>/dev/null || true)"
  if ping_ok "$podman_sock"; then
    timeout 60 podman --remote --url "unix://$podman_sock" pod rm --all --force >/dev/null 2>&1 || true
    timeout 60 podman --remote --url "unix://$podman_sock" rm --all --force --time 0 >/dev/null 2>&1 ||
      log "podman rm did not remove every container"
  fi
  stop_pid "$pid" podman 15
  [ -f "$conf/containers.conf" ] || return 0
  # Anything the service could not remove (or if it was not running): the same store, locally.
  for id in $(podman_local ps --all --quiet --no-trunc 2>/dev/null || true); do
    podman_local rm --force --time 0 "$id" >/dev/null 2>&1 || true
    kill_cgroup_tree "libpod_parent/libpod-$id"
  done
  kill_matching "$run/"   # conmon names our directories on its command line
}

# ---------------------------------------------------------------------------------------------
# Clean-up helpers

# SIGKILLs every process in the v1 cgroup tree DIR (relative to each controller's root), then
# removes the empty cgroup directories.
kill_cgroup_tree() {
  local rel="$1" root pid found
  for root in /sys/fs/cgroup/pids /sys/fs/cgroup/memory; do
    [ -d "$root/$rel" ] || continue
    for _ in 1 2 3; do
      found=
      while IFS= read -r pid; do
        [ -n "$pid" ] || continue
        found=1
        kill -9 "$pid" 2>/dev/null || true
      done < <(find "$root/$rel" -name cgroup.procs -exec cat {} + 2>/dev/null)
      [ -z "$found" ] && break
      sleep 0.2
    done
  done
  for root in /sys/fs/cgroup/*/; do
    [ -d "$root$rel" ] || continue
    find "$root$rel" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# SIGKILLs the engines' own processes (not clients such as docker -H ...) whose command line
# contains TEXT (our run directory).
kill_matching() {
  local text="$1" pid comm
  while IFS= read -r pid; do
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    case "$comm" in
      conmon | containerd* | runsc* | runc | exe | dockerd) ;;
      podman) grep -qsF -- --remote "/proc/$pid/cmdline" && continue ;;
      *) continue ;;
    esac
    kill -9 "$pid" 2>/dev/null || true
  done < <(grep -lsF -- "$text" /proc/[0-9]*/cmdline | cut -d/ -f3)
}

# Unmounts everything mounted under the cache and run directories, deepest first.
unmount_all() {
  local mnt pass mounts
  for pass in 1 2 3; do
    mapfile -t mounts < <(awk -v c="$cache" -v r="$run" \
      '$5 == c || index($5, c "/") == 1 || $5 == r || index($5, r "/") == 1 { print $5 }' \
      /proc/self/mountinfo | awk '{ print length($0), $0 }' | sort -rn | cut -d' ' -f2-)
    [ "${#mounts[@]}" -eq 0 ] && return 0
    for mnt in "${mounts[@]}"; do
      umount "$mnt" 2>/dev/null || { [ "$pass" = 3 ] && umount -l "$mnt" 2>/dev/null; } || true
    done
  done
}

stop_engines() {
  stop_podman
  stop_docker
  unmount_all
  rm -rf "$run"
  rmdir /run/agentkernel-test-engines 2>/dev/null || true
  rm -f "$envfile"
}

# ---------------------------------------------------------------------------------------------

# True if engines.env describes engines that are up, answering, and using the current mirror.
running() {
  [ -f "$envfile" ] || return 1
  is_proc "$(env_value AGENTKERNEL_TEST_DOCKERD_PID "$envfile")" dockerd &&
    is_proc "$(env_value AGENTKERNEL_TEST_CONTAINERD_PID "$envfile")" containerd &&
    is_proc "$(env_value AGENTKERNEL_TEST_PODMAN_PID "$envfile")" podman &&
    ping_ok "$docker_sock" && ping_ok "$podman_sock" &&
    [ "$(env_value AGENTKERNEL_TEST_ENGINES_MIRROR "$envfile")" = "$(current_mirror)" ]
}

# True if dockerd accepted the runsc runtime and runs a container with it (with a timeout: a
# runsc that fails to boot can leave its task hanging in "created").
gvisor_works() {
  local d=("$DOCKER" -H "unix://$docker_sock") name="agentkernel-test-engines-gvisor-check"
  [ -x /usr/bin/runsc ] || return 1
  local runtimes
  runtimes="$("${d[@]}" info --format '{{json .Runtimes}}' 2>/dev/null || true)"
  case "$runtimes" in *'"runsc"'*) ;; *) log "dockerd did not register the runsc runtime"; return 1 ;; esac
  if ! "${d[@]}" image inspect busybox:latest >/dev/null 2>&1; then
    timeout 120 "${d[@]}" pull -q busybox:latest >/dev/null 2>&1 || {
      log "cannot pull busybox:latest (is the test registry running?): gVisor not checked"
      return 1
    }
  fi
  local rc=0
  timeout 60 "${d[@]}" run --name "$name" --runtime runsc --network none busybox:latest true \
    >"$logs/gvisor-check.log" 2>&1 || rc=$?
  timeout 30 "${d[@]}" rm -f "$name" >/dev/null 2>&1 || true
  if [ "$rc" != 0 ]; then
    log "docker run --runtime runsc failed (exit $rc): $(tail -n 3 "$logs/gvisor-check.log")"
    return 1
  fi
}

start_engines() {
  local mirror containerd_pid dockerd_pid podman_pid gvisor=
  mirror="$(current_mirror)"
  [ -n "$mirror" ] || log "warning: no $registry_env: the engines get no registry mirror and cannot pull"
  mkdir -p "$run" "$logs"
  write_docker_config "$mirror"
  write_podman_config "$mirror"
  local pids
  pids="$(start_docker)"   # a plain assignment: a failure stops the script (set -e)
  read -r containerd_pid dockerd_pid <<<"$pids"
  podman_pid="$(start_podman)"
  if gvisor_works; then gvisor=runsc; fi
  {
    echo "AGENTKERNEL_TEST_DOCKER_HOST=unix://$docker_sock"
    echo "AGENTKERNEL_TEST_PODMAN_HOST=unix://$podman_sock"
    if [ -n "$gvisor" ]; then echo "AGENTKERNEL_TEST_GVISOR_RUNTIME=$gvisor"; fi
    echo "AGENTKERNEL_TEST_ENGINES_MIRROR=$mirror"
    echo "AGENTKERNEL_TEST_DOCKERD_PID=$dockerd_pid"
    echo "AGENTKERNEL_TEST_CONTAINERD_PID=$containerd_pid"
    echo "AGENTKERNEL_TEST_PODMAN_PID=$podman_pid"
  } >"$envfile.tmp"
  mv "$envfile.tmp" "$envfile"
}

main() {
  local cmd="${1:-}"
  case "$cmd" in start | stop) ;; *) echo "usage: $0 start|stop" >&2; exit 2 ;; esac
  [ "$(id -u)" = 0 ] || die "run as root (the engines run rootful)"
  mkdir -p "$cache"
  # One start or stop at a time: parallel test runs may all call start.
  exec 9>"$cache/.lock"
  flock 9
  case "$cmd" in
    start)
      install_missing
      if running; then
        log "engines already running: reusing them"
      else
        stop_engines
        # A failed start leaves nothing running.
        trap 'log "start failed: stopping what was started"; stop_engines' EXIT
        start_engines
        trap - EXIT
      fi
      cat "$envfile"
      ;;
    stop)
      stop_engines
      ;;
  esac
}

main "$@"
