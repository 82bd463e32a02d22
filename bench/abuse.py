#!/usr/bin/env python3
"""Resource abuse inside a sandbox with the DEFAULT limits (issue 20), per backend.

    bash bench/abuse.sh                           # starts the services, then runs this
    python3 bench/abuse.py --bin target/.../agentkernel --backends native --json out.json

What it does, per backend (`--backends native,docker,podman,gvisor,microvm`), each case in its
own throwaway sandbox (image `--image`, default busybox; `--no-network` everywhere so that the
micro-VM backend, which has no network, runs the same commands), nothing else changed from the
default profile (moderate: 2048 MB memory, 1024 pids, no CPU limit, 10240 MB disk per writable
filesystem):

  baseline       no sandbox: the host latency of `true` on an idle machine
  warmup         `run -- true` (pulls the image once; not an abuse case)
  fork-bomb      `b(){ b|b & }; b` then the shell waits ~20 s (a builtin `read -t` on a FIFO,
                 which needs no fork) and exits 0; the pids cgroup of the sandbox is sampled
  memory-hog     awk doubling a string until the memory limit (goal: 137, "out of memory")
  cpu-spin       one busy loop per host core for ~20 s (no CPU limit by default)
  cpu-spin-many  --spin-many (200) busy loops for ~20 s: many runnable processes, no CPU limit
  fill-tmp       64 MiB `dd` chunks into /tmp until a write fails or limit + 512 MB is reached
  fill-root      the same into /var/fill (the root overlay's writable layer)
  fill-workspace the same into /workspace/fill
  flood-cli-stdout / flood-cli-stderr
                 `yes | head -c N` (N = --flood-mb) to stdout / stderr through `agentkernel run`;
                 the harness reads and counts every byte
  flood-http-run `agentkernel serve` on 127.0.0.1, POST /run (buffered) of a command writing N
                 bytes to stdout and N to stderr at once (goal: answered, truncated, bounded RSS)
  flood-http-sse the same command through POST /run/stream (N = --sse-flood-mb if given), every
                 SSE event parsed and counted
  files-api      POST /sandboxes, 10,000 files through POST /sandboxes/{name}/files in batches of
                 at most 1024, 200 read back and compared, the count checked with `find` inside,
                 DELETE

During every case a separate sampler process runs the host's `/bin/true` every ~100 ms
(posix_spawn + waitpid) and records its wall time: p50/p99/max are reported (goal: < 50 ms).
A watcher thread polls /proc/PID/status (VmRSS, VmHWM) of the CLI process or the server every
100 ms, and the pids and memory cgroups of sandboxes (native: agentkernel/*, docker/gvisor:
the test dockerd's cgroup parent, podman: libpod_parent) for their peaks.

Every case has a timeout (the CLI's own `--timeout`, and the harness kills the process group
after it); afterwards `gc` runs, and leftover sandboxes, cgroups, mounts and processes are
counted. Output: a table on stdout and, with --json FILE, every figure as JSON.
"""
import argparse
import glob
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from hostprobe import Sampler, attribute, pct, proc_status  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(REPO, "target/x86_64-unknown-linux-gnu/debug/agentkernel")
MB = 1024 * 1024
# The moderate profile's defaults (docs/security.md); --disk-limit-mb/--memory-limit-mb if the
# defaults change.
DEFAULT_DISK_MB = 10240
DEFAULT_MEMORY_MB = 2048
DEFAULT_PIDS = 1024


def log(msg):
    print(f"[abuse {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


CGROUP_PIDS = ["/sys/fs/cgroup/pids/agentkernel/*/pids.current",
               "/sys/fs/cgroup/agentkernel/*/pids.current",
               "/sys/fs/cgroup/pids/agentkernel-test-docker/*/pids.current",
               "/sys/fs/cgroup/pids/libpod_parent/*/pids.current",
               "/sys/fs/cgroup/pids/libpod_parent/*/*/pids.current"]
CGROUP_MEM = ["/sys/fs/cgroup/memory/agentkernel/*/memory.usage_in_bytes",
              "/sys/fs/cgroup/agentkernel/*/memory.current",
              "/sys/fs/cgroup/memory/agentkernel-test-docker/*/memory.usage_in_bytes",
              "/sys/fs/cgroup/memory/libpod_parent/*/memory.usage_in_bytes",
              "/sys/fs/cgroup/memory/libpod_parent/*/*/memory.usage_in_bytes"]


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Watcher(threading.Thread):
    """Polls the peak RSS of tracked processes and the peaks of the sandboxes' cgroups."""

    def __init__(self, interval=0.1, skip=None):
        super().__init__(daemon=True)
        self.skip = skip
        self.interval = interval
        self.lock = threading.Lock()
        self.pids = {}
        self.reset()
        self.start()

    def reset(self):
        with self.lock:
            self.peak = {}
            self.cg_pids = 0
            self.cg_mem = 0

    def track(self, role, pid):
        with self.lock:
            self.pids[role] = pid

    def untrack(self, role):
        with self.lock:
            self.pids.pop(role, None)

    def snapshot(self):
        with self.lock:
            return dict(self.peak), self.cg_pids, self.cg_mem

    def poll_once(self):
        with self.lock:
            pids = dict(self.pids)
        for role, pid in pids.items():
            st = proc_status(pid)
            with self.lock:
                pk = self.peak.setdefault(role, {"rss": 0, "hwm": 0})
                pk["rss"] = max(pk["rss"], st.get("VmRSS", 0))
                pk["hwm"] = max(pk["hwm"], st.get("VmHWM", 0))
        skip = self.skip or (lambda name: False)
        cp = max([read_int(p) or 0 for pat in CGROUP_PIDS for p in glob.glob(pat)
                  if not skip(os.path.basename(os.path.dirname(p)))] or [0])
        cm = max([read_int(p) or 0 for pat in CGROUP_MEM for p in glob.glob(pat)
                  if not skip(os.path.basename(os.path.dirname(p)))] or [0])
        with self.lock:
            self.cg_pids = max(self.cg_pids, cp)
            self.cg_mem = max(self.cg_mem, cm)

    def run(self):
        while True:
            self.poll_once()
            time.sleep(self.interval)


def kill_group(p, grace=10):
    """SIGTERM then SIGKILL to a process started with start_new_session=True."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def drain(fd, acc, keep_tail=65536, keep_head=4096):
    """Reads fd to EOF, counting bytes, keeping the first and last few KiB."""
    n = 0
    head = bytearray()
    tail = bytearray()
    while True:
        try:
            b = os.read(fd, 1 << 20)
        except OSError:
            break
        if not b:
            break
        n += len(b)
        if len(head) < keep_head:
            head += b[: keep_head - len(head)]
        tail += b
        if len(tail) > 2 * keep_tail:
            del tail[: len(tail) - keep_tail]
    acc["bytes"] = n
    acc["head"] = bytes(head)
    acc["tail"] = bytes(tail[-keep_tail:])


def interesting_lines(data, limit=4):
    """The lines of a stream tail that are not the flood itself ('y')."""
    text = data.decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and set(ln) != {"y"}]
    return lines[-limit:]


class Harness:
    def __init__(self, a):
        self.a = a
        self.bin = os.path.abspath(a.bin)
        self.home = tempfile.mkdtemp(prefix="ak-abuse-home-")
        self.cwd = tempfile.mkdtemp(prefix="ak-abuse-cwd-")
        self.env = dict(os.environ, AGENTKERNEL_HOME=self.home, AGENTKERNEL_NO_DAEMON="1")
        # The engines' sockets: docker and gvisor read DOCKER_HOST, podman CONTAINER_HOST.
        if os.environ.get("AGENTKERNEL_TEST_DOCKER_HOST"):
            self.env["DOCKER_HOST"] = os.environ["AGENTKERNEL_TEST_DOCKER_HOST"]
        if os.environ.get("AGENTKERNEL_TEST_PODMAN_HOST"):
            self.env["CONTAINER_HOST"] = os.environ["AGENTKERNEL_TEST_PODMAN_HOST"]
        if not self.env.get("AGENTKERNEL_REGISTRY_MIRROR") and os.environ.get("AGENTKERNEL_TEST_REGISTRY"):
            self.env["AGENTKERNEL_REGISTRY_MIRROR"] = "http://" + os.environ["AGENTKERNEL_TEST_REGISTRY"]
        self.before_cgroups = self.all_cgroups()
        self.before_names = set(os.path.basename(c) for c in self.before_cgroups)
        self.before_pids = set(int(p) for p in os.listdir("/proc") if p.isdigit())
        self.watcher = Watcher(skip=self.foreign)
        self.results = []
        self.server = None
        self.server_port = None
        self.backend = None

    # ---------------------------------------------------------------- helpers
    def ak(self, *args, timeout=120):
        try:
            r = subprocess.run([self.bin, *args], env=self.env, cwd=self.cwd, capture_output=True,
                               text=True, timeout=timeout)
            return r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired:
            return None, "", f"timed out after {timeout}s"

    def base_run_args(self, timeout_s):
        return ["run", "-B", self.backend, "--image", self.a.image, "--no-network",
                "--timeout", f"{int(timeout_s)}s"]

    def cli(self, argv, timeout):
        """Runs the CLI with stdout/stderr read and counted by threads; returns the figures."""
        t0 = time.perf_counter()
        p = subprocess.Popen([self.bin, *argv], env=self.env, cwd=self.cwd,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        self.watcher.track("cli", p.pid)
        out, err = {}, {}
        ts = [threading.Thread(target=drain, args=(p.stdout.fileno(), out)),
              threading.Thread(target=drain, args=(p.stderr.fileno(), err))]
        for t in ts:
            t.start()
        timed_out = False
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            log(f"  harness timeout after {timeout}s: killing the CLI's process group")
            kill_group(p)
            rc = p.returncode
        for t in ts:
            t.join(timeout=60)
        p.stdout.close()
        p.stderr.close()
        wall = time.perf_counter() - t0
        self.watcher.poll_once()
        self.watcher.untrack("cli")
        return {"rc": rc, "wall_s": round(wall, 2), "harness_timeout": timed_out,
                "stdout_bytes": out.get("bytes", 0), "stderr_bytes": err.get("bytes", 0),
                "stdout_head": out.get("head", b""), "stdout_tail": out.get("tail", b""),
                "stderr_tail": err.get("tail", b"")}

    # ------------------------------------------------------------- HTTP server
    def start_server(self):
        logf = open(os.path.join(self.home, f"serve-{self.backend}.log"), "wb")
        args = [self.bin, "serve", "--host", "127.0.0.1", "--port", "0"]
        if self.a.no_pool:
            args.append("--no-pool")
        self.server = subprocess.Popen(args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                       stdout=logf, stderr=logf, start_new_session=True)
        self.server_log = logf.name
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(logf.name, "rb") as f:
                m = re.search(rb"serving the HTTP API on http://127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.server_port = int(m.group(1))
                break
            if self.server.poll() is not None:
                raise RuntimeError(f"serve exited {self.server.returncode}: {open(logf.name).read()}")
            time.sleep(0.1)
        else:
            raise RuntimeError("serve did not print its address within 60 s")
        self.watcher.track("server", self.server.pid)
        log(f"  serve pid {self.server.pid} on 127.0.0.1:{self.server_port}")

    def stop_server(self):
        if not self.server:
            return None
        self.watcher.untrack("server")
        t0 = time.perf_counter()
        self.server.send_signal(signal.SIGTERM)
        try:
            rc = self.server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log("  serve did not stop within 60 s of SIGTERM: SIGKILL")
            kill_group(self.server, grace=0)
            rc = self.server.returncode
        took = time.perf_counter() - t0
        self.server = None
        return {"rc": rc, "stop_s": round(took, 2)}

    def http(self, method, path, body=None, timeout=120, raw=False):
        c = http.client.HTTPConnection("127.0.0.1", self.server_port, timeout=timeout)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            payload = r.read()
            if raw:
                return r.status, payload
            try:
                return r.status, json.loads(payload)
            except ValueError:
                return r.status, {"raw": payload[:2000].decode("utf-8", "replace")}
        finally:
            c.close()

    # ----------------------------------------------------------------- cases
    def record(self, name, res, sampler, extra_note=""):
        peak, cg_pids, cg_mem = self.watcher.snapshot()
        res.update({"backend": self.backend, "case": name, "latency": sampler,
                    "load1_after": round(os.getloadavg()[0], 2),
                    "cli_peak_rss": peak.get("cli", {}).get("rss"),
                    "cli_peak_hwm": peak.get("cli", {}).get("hwm"),
                    "server_peak_rss": peak.get("server", {}).get("rss"),
                    "server_hwm": peak.get("server", {}).get("hwm"),
                    "cgroup_pids_peak": cg_pids or None,
                    "cgroup_mem_peak": cg_mem or None})
        if extra_note:
            res["note"] = (res.get("note", "") + " " + extra_note).strip()
        for k in ("stdout_head", "stdout_tail", "stderr_tail"):
            res.pop(k, None)
        self.results.append(res)
        self.save_partial()
        lat = sampler or {}
        log(f"  {name}: rc={res.get('rc')} wall={res.get('wall_s')}s true p99={lat.get('p99_ms')} "
            f"max={lat.get('max_ms')} ms  msg={str(res.get('message') or res.get('error') or '')[:160]!r}")

    def save_partial(self):
        """Every result so far, after each case: an interrupted run keeps its figures."""
        if self.a.json:
            with open(self.a.json + ".partial", "w") as f:
                json.dump({"results": self.results}, f, indent=1, default=str)

    def case(self, name, fn):
        if self.a.cases and name not in self.a.cases:
            return
        log(f"{self.backend}: {name}")
        self.watcher.reset()
        s = Sampler(self.a.sample_interval)
        try:
            res = fn()
        except Exception as e:  # a harness failure is a result too, not a crash of the run
            res = {"rc": None, "error": f"harness: {type(e).__name__}: {e}"}
        sampler = s.stop()
        self.record(name, res, sampler)
        self.after_case(name)

    def after_case(self, name):
        # Remove anything a case may have left (a killed CLI's container, a kept sandbox).
        rc, out, err = self.ak("gc", timeout=180)
        left = self.leftovers()
        self.results[-1]["leftovers_after_gc"] = left
        if any(left.get(k) for k in ("sandboxes", "cgroups", "processes", "containers")):
            log(f"  leftovers after {name}: {left}")

    def all_cgroups(self):
        return set(d for d in glob.glob("/sys/fs/cgroup/*/agentkernel/*") + glob.glob("/sys/fs/cgroup/agentkernel/*")
                   if os.path.isdir(d))

    def foreign(self, sandbox):
        """A sandbox this harness did not make: there before it started, or named by another
        harness sharing the machine (--foreign-prefix)."""
        return sandbox in self.before_names or sandbox.startswith(tuple(self.a.foreign_prefix))

    def leftovers(self):
        rc, out, _ = self.ak("list", "--json", timeout=60)
        try:
            sandboxes = [s.get("name") for s in json.loads(out or "[]")]
        except ValueError:
            sandboxes = [f"unparsable list output rc={rc}"]
        cg = sorted(d for d in self.all_cgroups() - self.before_cgroups
                    if not self.foreign(os.path.basename(d)))
        mounts = 0
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if "agentkernel" in line and "agentkernel-test-engines" not in line:
                    mounts += 1
        procs, foreign = [], 0
        me = os.getpid()
        srv = self.server.pid if self.server else -1
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) in (me, srv) or int(d) in self.before_pids:
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
                with open(f"/proc/{d}/comm") as f:
                    comm = f.read().strip()
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                state, ppid = rest[0], int(rest[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == srv:  # the running server's own helpers and warm sandboxes
                continue
            if not (comm.startswith("agentkernel") or "agentkernel-init" in cmd
                    or cmd.startswith(self.bin) or "__egress-proxy" in cmd
                    or ("qemu" in comm and self.home in cmd)):
                continue
            sandbox = None
            try:
                with open(f"/proc/{d}/cgroup") as f:
                    m = re.search(r"/agentkernel/([^/\n]+)", f.read())
                    sandbox = m.group(1) if m else None
            except OSError:
                pass
            owner = "foreign" if sandbox and self.foreign(sandbox) else attribute(d, self.home, self.bin, cmd)
            if owner == "foreign":
                foreign += 1
                continue
            procs.append(f"{d} state={state} ppid={ppid} {comm} {cmd[:80]} cg={sandbox} owner={owner}")
        return {"sandboxes": sandboxes, "cgroups": len(cg), "cgroup_names": sorted(set(os.path.basename(c) for c in cg))[:20],
                "mounts": mounts, "processes": procs, "foreign_processes_ignored": foreign,
                "containers": self.engine_containers()}

    def engine_containers(self):
        sock = None
        if self.backend in ("docker", "gvisor"):
            sock = self.env.get("DOCKER_HOST", "")
        elif self.backend == "podman":
            sock = self.env.get("CONTAINER_HOST", "")
        if not sock or not sock.startswith("unix://"):
            return None
        path = sock[len("unix://"):]

        class Conn(http.client.HTTPConnection):
            def connect(self):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(30)
                s.connect(path)
                self.sock = s
        try:
            c = Conn("localhost")
            c.request("GET", "/containers/json?all=1")
            data = json.loads(c.getresponse().read())
            return len([x for x in data if "agentkernel.sandbox" in (x.get("Labels") or {})])
        except Exception as e:
            return f"error: {e}"

    def msg_of(self, r):
        lines = interesting_lines(r.get("stderr_tail", b""))
        return " | ".join(lines)

    # --- the cases
    def c_baseline(self):
        time.sleep(self.a.baseline_s)
        return {"rc": 0, "wall_s": self.a.baseline_s, "note": "idle host, no sandbox"}

    def c_warmup(self):
        r = self.cli(self.base_run_args(600) + ["--", "true"], timeout=660)
        r["message"] = self.msg_of(r)
        return r

    def c_fork_bomb(self):
        secs = self.a.bomb_s
        script = ("mkfifo /tmp/.p; b(){ b|b & }; b; read -t %d x <> /tmp/.p; echo survived; exit 0" % secs)
        r = self.cli(self.base_run_args(secs + 120) + ["--", "sh", "-c", script], timeout=secs + 180)
        r["message"] = self.msg_of(r)
        r["stdout"] = r["stdout_tail"].decode("utf-8", "replace")[-300:]
        r["limit"] = f"pids {self.a.pids_limit}"
        r["goal"] = "rc 0 after ~%ds, pids capped at the limit, host stays responsive" % secs
        return r

    def c_memory_hog(self):
        script = "awk 'BEGIN{s=\"xxxxxxxxxxxxxxxx\"; while(1){s=s s}}'"
        r = self.cli(self.base_run_args(300) + ["--", "sh", "-c", script], timeout=360)
        r["message"] = self.msg_of(r)
        r["limit"] = f"memory {self.a.memory_limit_mb} MB"
        r["goal"] = "rc 137 and 'out of memory' on stderr"
        r["goal_met"] = r["rc"] == 137 and "out of memory" in r["message"]
        return r

    def c_cpu_spin(self):
        n = os.cpu_count() or 2
        secs = self.a.spin_s
        script = ("i=0; while [ $i -lt %d ]; do (while :; do :; done) & i=$((i+1)); done; "
                  "sleep %d; echo spun; exit 0" % (n, secs))
        r = self.cli(self.base_run_args(secs + 120) + ["--", "sh", "-c", script], timeout=secs + 180)
        r["message"] = self.msg_of(r)
        r["note"] = f"{n} spinning loops (host cores), no CPU limit by default"
        return r

    def c_cpu_spin_many(self):
        n = self.a.spin_many
        secs = self.a.spin_s
        script = ("i=0; while [ $i -lt %d ]; do (while :; do :; done) & i=$((i+1)); done; "
                  "sleep %d; echo spun; exit 0" % (n, secs))
        r = self.cli(self.base_run_args(secs + 120) + ["--", "sh", "-c", script], timeout=secs + 180)
        r["message"] = self.msg_of(r)
        r["note"] = (f"{n} spinning processes (within the pids limit); with no CPU limit the sandbox "
                     "gets no cpu cgroup, so each process competes with host tasks one for one")
        return r

    def fill(self, path):
        limit = self.a.disk_limit_mb
        cap_chunks = (limit + self.a.fill_extra_mb) // 64 + 1
        d = os.path.dirname(path)
        script = f"""
f={path}; mkdir -p {d} || exit 90; : > $f || exit 91; n=0
while [ $n -lt {cap_chunks} ]; do
  err=$(dd if=/dev/zero of=$f bs=1048576 count=64 seek=$((n*64)) conv=notrunc 2>&1); rc=$?
  if [ $rc -ne 0 ]; then echo "dd_failed rc=$rc chunk=$n: $(echo "$err" | head -1)"; break; fi
  n=$((n+1)); echo "chunks=$n"
done
echo "size=$(stat -c %s $f)"
df -k {d} | tail -1
echo end
"""
        r = self.cli(self.base_run_args(self.a.fill_timeout) + ["--", "sh", "-c", script],
                     timeout=self.a.fill_timeout + 60)
        out = r["stdout_tail"].decode("utf-8", "replace")
        size = re.findall(r"size=(\d+)", out)
        chunks = re.findall(r"chunks=(\d+)", out)
        failed = re.findall(r"dd_failed.*", out)
        written = int(size[-1]) if size else (int(chunks[-1]) * 64 * MB if chunks else 0)
        r["written_mb"] = round(written / MB, 1)
        r["written_known"] = "stat" if size else ("last completed chunk" if chunks else "unknown")
        r["limit_mb"] = limit
        r["cap_mb"] = cap_chunks * 64
        r["held"] = written <= limit * MB
        nospace = any("space" in f.lower() for f in failed)
        if nospace:
            r["stopped_by"] = "ENOSPC inside (the disk limit)"
        elif r["rc"] == 137:
            r["stopped_by"] = "OOM kill (the memory limit), not the disk limit"
        elif failed:
            r["stopped_by"] = "a write failed: " + failed[-1]
        elif chunks and int(chunks[-1]) >= cap_chunks:
            r["stopped_by"] = "nothing: the harness's cap was reached (limit not enforced)"
        elif r.get("harness_timeout") or r["rc"] == 124:
            r["stopped_by"] = "timeout"
        else:
            r["stopped_by"] = f"unknown (rc {r['rc']})"
        lines = out.strip().splitlines()
        df = [lines[i + 1] for i, ln in enumerate(lines[:-1]) if ln.startswith("size=")]
        r["inside"] = " ".join(x for x in ((failed[-1] if failed else ""), ("df: " + df[-1]) if df else "") if x)
        r["message"] = self.msg_of(r)
        r["goal"] = "a clear disk-limit error or ENOSPC inside, written <= limit, clear exit"
        return r

    def flood_cli(self, stream):
        n = self.a.flood_mb * MB
        redir = " >&2" if stream == "stderr" else ""
        script = f"yes | head -c {n}{redir}"
        r = self.cli(self.base_run_args(self.a.flood_timeout) + ["--", "sh", "-c", script],
                     timeout=self.a.flood_timeout + 60)
        got = r[f"{stream}_bytes"]
        r["message"] = self.msg_of(r)
        r["expected_bytes"] = n
        r["complete"] = got == n
        r["mb_per_s"] = round(got / MB / max(r["wall_s"], 0.001), 1)
        return r

    def flood_command(self, mb=None):
        n = (mb or self.a.flood_mb) * MB
        return ["sh", "-c", f"yes | head -c {n} & yes | head -c {n} >&2; wait"]

    def c_flood_http_run(self):
        n = self.a.flood_mb * MB
        body = {"command": self.flood_command(), "image": self.a.image, "backend": self.backend,
                "no_network": True, "timeout_ms": self.a.flood_timeout * 1000}
        t0 = time.perf_counter()
        try:
            status, payload = self.http("POST", "/run", body, timeout=self.a.flood_timeout + 60, raw=True)
        except Exception as e:
            return {"rc": None, "wall_s": round(time.perf_counter() - t0, 2),
                    "error": f"{type(e).__name__}: {e}"}
        wall = time.perf_counter() - t0
        self.watcher.poll_once()
        res = {"http_status": status, "wall_s": round(wall, 2), "response_bytes": len(payload),
               "expected_bytes": 2 * n}
        try:
            j = json.loads(payload)
            d = j.get("data") or {}
            res.update({"rc": d.get("exit_code"), "truncated": d.get("truncated"),
                        "stdout_bytes": len(d.get("stdout", "")), "stderr_bytes": len(d.get("stderr", "")),
                        "output_bytes": len(d.get("output", "")), "oom_killed": d.get("oom_killed"),
                        "message": j.get("error") or ""})
        except ValueError:
            res["message"] = payload[:300].decode("utf-8", "replace")
        return res

    def c_flood_http_sse(self):
        mb = self.a.sse_flood_mb or self.a.flood_mb
        n = mb * MB
        body = {"command": self.flood_command(mb), "image": self.a.image, "backend": self.backend,
                "no_network": True, "timeout_ms": self.a.flood_timeout * 1000}
        c = http.client.HTTPConnection("127.0.0.1", self.server_port, timeout=self.a.flood_timeout + 60)
        t0 = time.perf_counter()
        counts = {"stdout": 0, "stderr": 0}
        events = {}
        last = None
        raw = 0
        buf = b""
        try:
            c.request("POST", "/run/stream", body=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            status = r.status
            deadline = time.time() + self.a.flood_timeout + 60
            while time.time() < deadline:
                chunk = r.read1(1 << 20)
                if not chunk:
                    break
                raw += len(chunk)
                buf += chunk
                while True:
                    i = buf.find(b"\n\n")
                    if i < 0:
                        break
                    block, buf = buf[:i], buf[i + 2:]
                    ev, data = None, []
                    for line in block.split(b"\n"):
                        if line.startswith(b"event:"):
                            ev = line[6:].strip().decode()
                        elif line.startswith(b"data:"):
                            data.append(line[5:])
                    if ev is None:
                        continue
                    events[ev] = events.get(ev, 0) + 1
                    payload = json.loads(b"\n".join(data)) if data else {}
                    if ev == "output":
                        counts[payload.get("stream", "?")] = counts.get(payload.get("stream", "?"), 0) + len(payload.get("data", ""))
                    elif ev in ("done", "error"):
                        last = (ev, payload)
        except Exception as e:
            return {"rc": None, "wall_s": round(time.perf_counter() - t0, 2), "error": f"{type(e).__name__}: {e}",
                    "stdout_bytes": counts["stdout"], "stderr_bytes": counts["stderr"], "sse_bytes": raw}
        finally:
            c.close()
        wall = time.perf_counter() - t0
        self.watcher.poll_once()
        res = {"http_status": status, "wall_s": round(wall, 2), "sse_bytes": raw, "events": events,
               "stdout_bytes": counts["stdout"], "stderr_bytes": counts["stderr"], "expected_bytes": 2 * n,
               "complete": counts["stdout"] == n and counts["stderr"] == n,
               "mb_per_s": round((counts["stdout"] + counts["stderr"]) / MB / max(wall, 0.001), 1)}
        if last:
            res["end_event"] = last[0]
            res["rc"] = last[1].get("exit_code")
            res["message"] = last[1].get("message", "") if last[0] == "error" else ""
        else:
            res["rc"] = None
            res["message"] = "stream ended without done/error"
        return res

    def c_files_api(self):
        name = f"abuse-files-{random.randrange(1 << 30):x}"
        total = self.a.files
        res = {"files": total}
        t0 = time.perf_counter()
        st, j = self.http("POST", "/sandboxes", {"name": name, "image": self.a.image,
                                                 "backend": self.backend, "no_network": True},
                          timeout=600)
        res["create_status"] = st
        if st != 200:
            res.update(rc=None, message=str(j.get("error", j))[:300], wall_s=round(time.perf_counter() - t0, 2))
            return res
        res["create_s"] = round(time.perf_counter() - t0, 2)
        try:
            content = lambda i: f"file {i} " + ("x" * (i % 200)) + "\n"
            statuses = {}
            tw = time.perf_counter()
            batch = 1000 if self.a.batch > 1024 else self.a.batch
            for start in range(0, total, batch):
                files = {f"ak-files/d{i // 1000}/f{i}.txt": content(i)
                         for i in range(start, min(total, start + batch))}
                s, jj = self.http("POST", f"/sandboxes/{name}/files", {"files": files}, timeout=600)
                statuses[s] = statuses.get(s, 0) + 1
                if s != 200:
                    res.setdefault("write_errors", []).append(str(jj.get("error", jj))[:200])
                elif jj.get("data", {}).get("written") != len(files):
                    res.setdefault("write_errors", []).append(f"written {jj.get('data', {}).get('written')} of {len(files)}")
            res["write_s"] = round(time.perf_counter() - tw, 2)
            res["write_statuses"] = statuses
            tr = time.perf_counter()
            bad = 0
            rstat = {}
            for i in random.sample(range(total), min(200, total)):
                s, jj = self.http("GET", f"/sandboxes/{name}/files/ak-files/d{i // 1000}/f{i}.txt", timeout=120)
                rstat[s] = rstat.get(s, 0) + 1
                if s != 200 or jj.get("data", {}).get("content") != content(i):
                    bad += 1
            res["read_s"] = round(time.perf_counter() - tr, 2)
            res["read_statuses"] = rstat
            res["read_mismatches"] = bad
            s, jj = self.http("POST", f"/sandboxes/{name}/exec",
                              {"command": ["sh", "-c", "find /workspace/ak-files -type f | wc -l"]}, timeout=300)
            counted = (jj.get("data") or {}).get("stdout", "").strip()
            res["counted_inside"] = int(counted) if counted.isdigit() else counted
            res["rc"] = 0 if (res["counted_inside"] == total and not bad and list(statuses) == [200]) else 1
            res["message"] = "; ".join(res.get("write_errors", [])[:2])
        finally:
            s, jj = self.http("DELETE", f"/sandboxes/{name}", timeout=300)
            res["delete_status"] = s
            res["wall_s"] = round(time.perf_counter() - t0, 2)
        return res

    # ---------------------------------------------------------------- driver
    def run_backend(self, backend):
        self.backend = backend
        log(f"=== backend {backend} (home {self.home})")
        self.case("warmup", self.c_warmup)
        if self.results and self.results[-1]["case"] == "warmup" and self.results[-1].get("rc") != 0:
            log(f"{backend}: warmup failed ({self.results[-1].get('message')}); skipping the backend")
            return
        self.case("fork-bomb", self.c_fork_bomb)
        self.case("memory-hog", self.c_memory_hog)
        self.case("cpu-spin", self.c_cpu_spin)
        self.case("cpu-spin-many", self.c_cpu_spin_many)
        self.case("fill-tmp", lambda: self.fill("/tmp/fill"))
        self.case("fill-root", lambda: self.fill("/var/fill"))
        self.case("fill-workspace", lambda: self.fill("/workspace/fill"))
        self.case("flood-cli-stdout", lambda: self.flood_cli("stdout"))
        self.case("flood-cli-stderr", lambda: self.flood_cli("stderr"))
        http_cases = [c for c in ("flood-http-run", "flood-http-sse", "files-api")
                      if not self.a.cases or c in self.a.cases]
        if http_cases:
            try:
                self.start_server()
            except Exception as e:
                self.results.append({"backend": backend, "case": "serve", "rc": None, "error": str(e)})
                log(f"  serve failed: {e}")
                return
            hwm0 = proc_status(self.server.pid).get("VmHWM")
            self.case("flood-http-run", self.c_flood_http_run)
            self.case("flood-http-sse", self.c_flood_http_sse)
            self.case("files-api", self.c_files_api)
            hwm1 = proc_status(self.server.pid).get("VmHWM")
            stopped = self.stop_server()
            self.results.append({"backend": backend, "case": "serve-stop", "rc": stopped["rc"],
                                 "wall_s": stopped["stop_s"], "server_hwm_before": hwm0,
                                 "server_hwm": hwm1,
                                 "note": "rc and time of serve after SIGTERM; server_hwm = VmHWM over its life"})
            self.after_case("serve-stop")

    def main(self):
        meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bin": self.bin,
                "bin_mtime": time.ctime(os.path.getmtime(self.bin)), "argv": sys.argv,
                "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
                "home": self.home, "image": self.a.image}
        try:
            meta["git"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
        self.backend = "host"
        self.case("baseline", self.c_baseline)
        for b in self.a.backends:
            if b == "microvm" and not self.env.get("AGENTKERNEL_KERNEL"):
                log("microvm: AGENTKERNEL_KERNEL is not set; skipping")
                self.results.append({"backend": b, "case": "skipped", "error": "AGENTKERNEL_KERNEL not set"})
                continue
            try:
                self.run_backend(b)
            finally:
                if self.server:
                    self.stop_server()
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.print_table()
        if self.a.json:
            with open(self.a.json, "w") as f:
                json.dump({"meta": meta, "results": self.results}, f, indent=1, default=str)
            log(f"wrote {self.a.json}")
            try:
                os.unlink(self.a.json + ".partial")
            except OSError:
                pass
        if not self.a.keep_home:
            self.ak("gc", timeout=180)
            shutil.rmtree(self.home, ignore_errors=True)
            shutil.rmtree(self.cwd, ignore_errors=True)

    def print_table(self):
        def mb(x):
            return "-" if not x else f"{x / MB:.0f}"
        hdr = ["backend", "case", "rc", "wall s", "true p99/max ms", "cli rss MB", "srv rss MB",
               "pids pk", "mem pk MB", "data", "held/ok", "message"]
        rows = []
        for r in self.results:
            lat = r.get("latency") or {}
            p99 = lat.get("p99_ms")
            mx = lat.get("max_ms")
            latency = "-" if p99 is None else f"{p99:.1f}/{mx:.1f}"
            data, ok = "", ""
            case = r.get("case", "")
            if case.startswith("fill"):
                data = f"{r.get('written_mb')}/{r.get('limit_mb')} MB"
                ok = ("held" if r.get("held") else "NOT HELD") + (
                    " (OOM first)" if "OOM" in str(r.get("stopped_by")) else
                    " (ENOSPC)" if "ENOSPC" in str(r.get("stopped_by")) else "")
            elif case.startswith("flood-cli"):
                data = f"{r.get('stdout_bytes', 0) / MB:.0f}o+{r.get('stderr_bytes', 0) / MB:.0f}e MB"
                ok = "complete" if r.get("complete") else "INCOMPLETE"
            elif case == "flood-http-run":
                data = f"{r.get('stdout_bytes', 0) / MB:.0f}o+{r.get('stderr_bytes', 0) / MB:.0f}e MB"
                ok = f"http {r.get('http_status')} trunc={r.get('truncated')}"
            elif case == "flood-http-sse":
                data = f"{r.get('stdout_bytes', 0) / MB:.0f}o+{r.get('stderr_bytes', 0) / MB:.0f}e MB"
                ok = "complete" if r.get("complete") else "INCOMPLETE"
            elif case == "files-api":
                data = f"{r.get('files')} files, {r.get('counted_inside')} inside"
                ok = f"w{r.get('write_statuses')} r{r.get('read_statuses')} bad={r.get('read_mismatches')}"
            elif case == "memory-hog":
                ok = "goal met" if r.get("goal_met") else "GOAL MISSED"
            msg = r.get("message") or r.get("error") or r.get("inside") or ""
            rows.append([r.get("backend", ""), case, str(r.get("rc")), str(r.get("wall_s", "")), latency,
                         mb(r.get("cli_peak_rss")), mb(r.get("server_peak_rss")),
                         str(r.get("cgroup_pids_peak") or "-"), mb(r.get("cgroup_mem_peak")),
                         data, ok, msg[:90]])
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(hdr)]
        line = "  ".join(h.ljust(w) for h, w in zip(hdr, widths))
        print(line)
        print("-" * len(line))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("AGENTKERNEL_BIN", DEFAULT_BIN))
    ap.add_argument("--backends", default="native",
                    help="comma-separated: native,docker,podman,gvisor,microvm (default native)")
    ap.add_argument("--cases", default="", help="comma-separated subset of the case names (default all)")
    ap.add_argument("--image", default="busybox")
    ap.add_argument("--flood-mb", type=int, default=3072, help="bytes per flooded stream, in MiB (default 3072)")
    ap.add_argument("--sse-flood-mb", type=int, default=0,
                    help="bytes per stream for /run/stream, in MiB (default: --flood-mb); the debug build streams ~10 MB/s")
    ap.add_argument("--flood-timeout", type=int, default=900, help="seconds per flood case")
    ap.add_argument("--fill-timeout", type=int, default=900, help="seconds per disk-fill case")
    ap.add_argument("--fill-extra-mb", type=int, default=512, help="write up to the limit plus this much")
    ap.add_argument("--disk-limit-mb", type=int, default=DEFAULT_DISK_MB, help="the default profile's disk limit")
    ap.add_argument("--memory-limit-mb", type=int, default=DEFAULT_MEMORY_MB)
    ap.add_argument("--pids-limit", type=int, default=DEFAULT_PIDS)
    ap.add_argument("--bomb-s", type=int, default=20)
    ap.add_argument("--spin-s", type=int, default=20)
    ap.add_argument("--spin-many", type=int, default=200, help="processes of the cpu-spin-many case")
    ap.add_argument("--baseline-s", type=int, default=10)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=1000, help="files per POST (at most 1024)")
    ap.add_argument("--sample-interval", type=float, default=0.1)
    ap.add_argument("--no-pool", action="store_true", help="serve --no-pool")
    ap.add_argument("--foreign-prefix", action="append", default=["chaos-"],
                    help="sandbox names of another harness sharing the machine, left out of the leftover counts (repeatable; default chaos-)")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--keep-home", action="store_true", help="keep the private AGENTKERNEL_HOME")
    a = ap.parse_args()
    a.backends = [b for b in a.backends.split(",") if b]
    a.cases = set(c for c in a.cases.split(",") if c)
    if a.cases:
        a.cases |= {"warmup", "baseline"}
    if a.batch > 1024:
        ap.error("--batch must be at most 1024")
    if os.geteuid() != 0:
        ap.error("run as root (native sandboxes need it)")
    if not os.access(a.bin, os.X_OK):
        ap.error(f"{a.bin} is not an executable: build it first (or pass --bin)")
    Harness(a).main()


if __name__ == "__main__":
    main()
