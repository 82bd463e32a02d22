#!/usr/bin/env python3
"""Chaos harness (issue 20): kills agentkernel processes with SIGKILL at random points and
checks what they leave.

Each target is one operation (a CLI command, a request to `serve` or the daemon, or a process a
sandbox depends on) that is started, killed with SIGKILL after a random delay drawn from
[0, 1.2 x the time the operation takes when left alone], and followed by:

1. `agentkernel --version`, the cheapest command there is: whatever the killed process left
   that the next command of any kind removes is gone now (checked: cgroups, network-namespace
   pins, processes, containers, mounts);
2. `agentkernel gc`;
3. the checklist: no leaked mount, cgroup, network-namespace pin, process (sandbox init,
   proxy, supervisor, qemu, pasta), container, temporary file or open fd into the state
   directory; `state.db` passes `PRAGMA integrity_check`; every sandbox the round named is
   either listed and usable (started if stopped, `exec -- true` answers 0) or gone with
   nothing of it left; `audit.jsonl` is valid JSON lines.

bench/chaos.sh starts the services it needs (the test registry and engines) and runs this.
Results: a table on stdout and, with --json, every round's findings.
"""

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = ROOT / "target" / os.environ.get("HOST_TARGET", "x86_64-unknown-linux-gnu") / "debug" / "agentkernel"
BIG_FILE_MB = 48
IMAGE = "busybox"
PULL_IMAGE = "python:3.12-alpine"


class Harness:
    def __init__(self, binary: Path, backend: str, work: Path, rng: random.Random):
        self.bin = str(binary)
        self.backend = backend
        self.work = work
        self.rng = rng
        self.home = work / "home"
        self.tmp = work / "tmp"
        self.home.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            AGENTKERNEL_HOME=str(self.home),
            TMPDIR=str(self.tmp),
            AGENTKERNEL_NO_DAEMON="1",
        )
        self.home_hash = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:16]
        self.docker_host = {
            "docker": os.environ.get("AGENTKERNEL_TEST_DOCKER_HOST"),
            "gvisor": os.environ.get("AGENTKERNEL_TEST_DOCKER_HOST"),
            "podman": os.environ.get("AGENTKERNEL_TEST_PODMAN_HOST"),
        }.get(backend)
        if self.docker_host:
            self.env["CONTAINER_HOST" if backend == "podman" else "DOCKER_HOST"] = self.docker_host
        self.big = work / "big.bin"
        if not self.big.exists():
            with open(self.big, "wb") as f:
                f.write(os.urandom(1 << 20) * BIG_FILE_MB)
        self.keep_pids: set[int] = set()  # servers of this harness, alive on purpose
        # Groups other users of this machine made (the harness is meant to run alone, but a
        # test or benchmark may run beside it): taken at each round's start, never counted.
        self.foreign: set[str] = set()

    # ---- running agentkernel ------------------------------------------------------------
    def ak(self, *args, timeout=180, check=False, env=None, stdin=None):
        e = self.env if env is None else env
        p = subprocess.run([self.bin, *args], env=e, capture_output=True, text=True,
                           timeout=timeout, stdin=stdin if stdin is not None else subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError(f"agentkernel {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-400:]}")
        return p

    def spawn(self, *args, env=None):
        return subprocess.Popen([self.bin, *args], env=self.env if env is None else env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def b(self):
        # The micro-VM's guests and gVisor's containers have no network yet: refused otherwise.
        if self.backend in ("microvm", "gvisor"):
            return ["-B", self.backend, "--no-network"]
        return ["-B", self.backend]

    def body(self) -> dict:
        """The backend fields of an HTTP create or run."""
        return {"backend": self.backend, "no_network": self.backend in ("microvm", "gvisor")}

    def listed(self) -> dict:
        p = self.ak("list", "--json", check=True)
        return {s["name"]: s for s in json.loads(p.stdout or "[]")}

    # ---- what exists on the host --------------------------------------------------------
    def records(self):
        """name -> runtime (instance, pid, ...) of every stored sandbox, read from state.db."""
        db = self.home / "state.db"
        if not db.exists():
            return {}
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("select name, runtime from sandboxes").fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            con.close()
        return {name: json.loads(rt) if rt else {} for name, rt in rows}

    def cgroups(self) -> set[str]:
        """The agentkernel groups that are this state directory's: a group with processes is
        when one of them carries AGENTKERNEL_HOME=this home in its environment (a sandbox's
        init is a clone of the agentkernel process that booted it); an empty one is unless it
        was there, or belonged to another user of the machine, when the round began."""
        groups: dict[str, set[int]] = {}
        base = Path("/sys/fs/cgroup")
        for hier in [base, *[p for p in base.iterdir() if p.is_dir()]]:
            d = hier / "agentkernel"
            if d.is_dir():
                for e in d.iterdir():
                    if e.is_dir():
                        procs = groups.setdefault(e.name, set())
                        try:
                            procs.update(int(x) for x in (e / "cgroup.procs").read_text().split())
                        except OSError:
                            pass
        marker = f"AGENTKERNEL_HOME={self.home}\0".encode()
        ours = set()
        for gid, procs in groups.items():
            if not procs:
                if gid not in self.foreign:
                    ours.add(gid)
                continue
            for pid in procs:
                try:
                    if marker in Path(f"/proc/{pid}/environ").read_bytes() + b"\0":
                        ours.add(gid)
                        break
                except OSError:
                    pass
            else:
                self.foreign.add(gid)
        return ours

    def pins(self) -> set[str]:
        d = self.home / "netns"
        return {e.name for e in d.iterdir()} if d.is_dir() else set()

    def mounts(self) -> list[str]:
        home = str(self.home)
        with open("/proc/self/mountinfo") as f:
            return [l.split()[4] for l in f if home in l or str(self.tmp) in l]

    def processes(self) -> dict[int, str]:
        """Every process this harness's agentkernel may have made: its binary (sandbox inits,
        proxies, supervisors, helpers), pasta and qemu started for this state directory, and
        whatever runs in a native sandbox's cgroup."""
        mine = {}
        ids = self.cgroups()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                exe = os.readlink(entry / "exe")
            except OSError:
                exe = ""
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cg = (entry / "cgroup").read_text()
            except OSError:
                continue
            ours = (exe.startswith(self.bin) and str(self.home) in cmd + exe) or any(
                f"/agentkernel/{i}" in cg for i in ids
            )
            ours = ours or (("pasta" in exe or "qemu" in exe) and str(self.home) in cmd)
            if not ours and exe.startswith(self.bin):
                try:
                    ours = str(self.home) in (entry / "environ").read_bytes().decode(errors="replace")
                except OSError:
                    pass
            if ours and pid != os.getpid():
                mine[pid] = cmd.strip()[:160] or exe
        return mine

    def fds_into_home(self, allowed: set[int]) -> list[str]:
        found = []
        home = str(self.home)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in allowed:
                continue
            try:
                for fd in (entry / "fd").iterdir():
                    try:
                        t = os.readlink(fd)
                    except OSError:
                        continue
                    if t.startswith(home):
                        found.append(f"pid {entry.name} fd {fd.name} -> {t}")
            except OSError:
                continue
        return found

    def containers(self) -> list[str]:
        if not self.docker_host:
            return []
        p = subprocess.run(["docker", "-H", self.docker_host, "ps", "-a", "--format", "{{.Names}} {{.Label \"agentkernel.sandbox\"}}",
                            "--filter", f"label=agentkernel.home={self.home_hash}"], capture_output=True, text=True, timeout=60)
        return [l for l in p.stdout.splitlines() if l.strip()]

    def temp_files(self) -> list[str]:
        """Temporary files: anything left in the TMPDIR agentkernel was given, and names of
        temporary files and directories inside the state directory."""
        left = [str(p) for p in self.tmp.iterdir()]
        for dirpath, dirnames, filenames in os.walk(self.home):
            rel = os.path.relpath(dirpath, self.home)
            # A sandbox's own files and an unpacked layer's are theirs (an image has a /tmp).
            if rel.startswith(("sandboxes/", "images/layers/")) and rel.count("/") >= 1:
                dirnames[:] = []
                continue
            for n in dirnames + filenames:
                low = n.lower()
                if low.startswith(".tmp") or low.endswith(".tmp") or ".partial" in low or low.startswith("tmp"):
                    left.append(os.path.join(dirpath, n))
        return left

    # ---- the checklist ------------------------------------------------------------------
    def live_instances(self) -> tuple[set[str], set[int]]:
        instances, pids = set(), set()
        listed = self.listed()
        recs = self.records()
        for name, s in listed.items():
            if s.get("status") == "running":
                rt = recs.get(name) or {}
                if rt.get("instance"):
                    instances.add(rt["instance"])
                if s.get("pid"):
                    pids.add(int(s["pid"]))
        return instances, pids

    def leaks(self) -> list[str]:
        found = []
        instances, init_pids = self.live_instances()
        for cg in sorted(self.cgroups() - instances):
            found.append(f"cgroup agentkernel/{cg}")
        for pin in sorted(self.pins() - instances):
            found.append(f"network namespace pin {pin}")
        live_names = {n for n, s in self.listed().items() if s.get("status") == "running"}
        for m in self.mounts():
            if not any(i in m for i in instances):
                found.append(f"mount {m}")
        procs = self.processes()
        allowed = set(self.keep_pids)
        for pid, cmd in procs.items():
            if pid in allowed or pid in init_pids:
                continue
            try:
                cg = Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue
            if any(f"/agentkernel/{i}" in cg for i in instances):
                continue
            # A running sandbox's proxy or supervisor names it in its arguments.
            if any(f" {n} " in f" {cmd} " for n in live_names):
                continue
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = Path(f"/proc/{pid}/wchan").read_text()
            except (OSError, IndexError):
                state = wchan = "?"
            if state == "Z":
                continue  # exited; its parent has not reaped it yet
            if "__egress-proxy" in cmd:
                init = cmd.split()[-2]
                try:
                    istate = Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    icg = Path(f"/proc/{init}/cgroup").read_text().splitlines()[0]
                    wchan += f", its init {init} is {istate} in {icg}"
                except (OSError, IndexError):
                    wchan += f", its init {init} is gone"
            found.append(f"process {pid} ({state}, {wchan}): {cmd}")
        allowed |= set(procs)
        found += [f"fd {f}" for f in self.fds_into_home(allowed)]
        listed = self.listed()
        for c in self.containers():
            parts = c.split()
            if len(parts) < 2 or parts[1] not in listed:
                found.append(f"container {c}")
        sandboxes = self.home / "sandboxes"
        if sandboxes.is_dir():
            for d in sandboxes.iterdir():
                if d.name not in listed:
                    found.append(f"sandbox directory {d.name}")
        found += [f"temporary {t}" for t in self.temp_files()]
        return found

    def integrity(self) -> list[str]:
        problems = []
        db = self.home / "state.db"
        if db.exists():
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                r = [row[0] for row in con.execute("pragma integrity_check")]
            finally:
                con.close()
            if r != ["ok"]:
                problems.append(f"state.db integrity_check: {r[:3]}")
        audit = self.home / "audit.jsonl"
        if audit.exists():
            data = audit.read_bytes()
            if data and not data.endswith(b"\n"):
                problems.append("audit.jsonl does not end with a newline")
            for i, line in enumerate(data.splitlines(), 1):
                try:
                    json.loads(line)
                except ValueError:
                    problems.append(f"audit.jsonl line {i} is not JSON: {line[:80]!r}")
                    break
        return problems

    def usable(self, names: list[str], remove: bool) -> tuple[list[str], int, int]:
        """Every named sandbox is listed and usable, or gone; returns problems, how many were
        kept and how many gone."""
        problems, kept, gone = [], 0, 0
        listed = self.listed()
        for name in names:
            if name not in listed:
                gone += 1
                if (self.home / "sandboxes" / name).exists():
                    problems.append(f"{name}: not listed, but its directory is left")
                continue
            kept += 1
            if listed[name]["status"] != "running":
                p = self.ak("start", name)
                if p.returncode != 0:
                    problems.append(f"{name}: listed, start exits {p.returncode}: {p.stderr.strip()[-300:]}")
                    continue
            p = self.ak("exec", name, "--", "true")
            if p.returncode != 0:
                problems.append(f"{name}: listed, exec true exits {p.returncode}: {p.stderr.strip()[-300:]}")
            if remove:
                p = self.ak("remove", name)
                if p.returncode != 0:
                    problems.append(f"{name}: remove exits {p.returncode}: {p.stderr.strip()[-300:]}")
        return problems, kept, gone

    def wait_gone(self, pids: set[int], seconds=5.0):
        end = time.time() + seconds
        while time.time() < end:
            if not any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
                return
            time.sleep(0.02)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


# ---- targets ---------------------------------------------------------------------------
# Each target is (prepare, action, names): prepare makes what the action needs (untimed);
# action starts the operation and returns the process to kill (and, for server targets, runs
# the load); names are the sandboxes whose fate the round checks.

class Target:
    name = ""
    keep_sandboxes = False  # the round's sandboxes outlive it (the next round reuses them)

    def __init__(self, h: Harness):
        self.h = h
        self.i = 0

    def prepare(self):
        pass

    def start(self) -> subprocess.Popen:
        raise NotImplementedError

    def victim(self, proc: subprocess.Popen) -> int:
        return proc.pid

    def names(self) -> list[str]:
        return []

    def after(self):
        pass

    def finish(self):
        pass


class Run(Target):
    name = "run"

    def start(self):
        net = [] if self.i % 2 == 0 or "--no-network" in self.h.b() else ["--no-network"]
        return self.h.spawn("run", *self.h.b(), "--image", IMAGE, *net, "--", "sh", "-c",
                            "echo start; sleep 0.2; echo end")


class Create(Target):
    name = "create"

    def start(self):
        return self.h.spawn("create", f"chaos-c{self.i}", *self.h.b(), "--image", IMAGE)

    def names(self):
        return [f"chaos-c{self.i}"]


class Start(Target):
    name = "start"

    def prepare(self):
        self.sb = f"chaos-s{self.i}"
        self.h.ak("create", self.sb, *self.h.b(), "--image", IMAGE, check=True)

    def start(self):
        return self.h.spawn("start", self.sb)

    def names(self):
        return [self.sb]


class Persistent(Target):
    """Targets that act on one long-lived running sandbox."""
    keep_sandboxes = True
    sb = ""

    def prepare(self):
        self.sb = f"chaos-{self.name}"
        listed = self.h.listed()
        if self.sb not in listed:
            self.h.ak("create", self.sb, *self.h.b(), "--image", IMAGE, check=True)
        if listed.get(self.sb, {}).get("status") != "running":
            self.h.ak("start", self.sb, check=True)

    def names(self):
        return [self.sb]

    def finish(self):
        self.h.ak("remove", self.sb)


class Exec(Persistent):
    name = "exec"

    def start(self):
        return self.h.spawn("exec", self.sb, "--", "sh", "-c", "echo x > /tmp/mark; sleep 0.3; echo done")


class CopyIn(Persistent):
    name = "cp-in"

    def start(self):
        return self.h.spawn("cp", str(self.h.big), f"{self.sb}:/workspace/big.bin")


class CopyOut(Persistent):
    name = "cp-out"

    def prepare(self):
        super().prepare()
        if self.i == 0:
            self.h.ak("cp", str(self.h.big), f"{self.sb}:/workspace/big.bin", check=True)
        self.out = self.h.work / f"out-{self.i}.bin"

    def start(self):
        return self.h.spawn("cp", f"{self.sb}:/workspace/big.bin", str(self.out))

    def after(self):
        # A copy out the kill interrupted may leave its destination: that is the user's file.
        if self.out.exists():
            size = self.out.stat().st_size
            if size not in (0, BIG_FILE_MB << 20):
                self.h.partial_copies = getattr(self.h, "partial_copies", 0) + 1
            self.out.unlink()


class Pull(Target):
    name = "pull"

    def start(self):
        return self.h.spawn("images", "pull", "--quiet", PULL_IMAGE)

    def after(self):
        # The image must be usable: the next pull completes and a run works.
        p = self.h.ak("images", "pull", "--quiet", PULL_IMAGE)
        if p.returncode != 0:
            self.h.extra.append(f"pull after the kill exits {p.returncode}: {p.stderr.strip()[-300:]}")
        p = self.h.ak("run", *self.h.b(), "--no-network", "--image", PULL_IMAGE, "--", "python3", "-c", "print(1)")
        if p.returncode != 0 or p.stdout.strip() != "1":
            self.h.extra.append(f"run of the pulled image exits {p.returncode}: {p.stderr.strip()[-300:]}")


class Server(Target):
    """`serve` (or the daemon) killed while clients send create/exec/run/remove."""
    name = "serve"
    clients = 6

    def start(self):
        self.port = free_port()
        proc = subprocess.Popen([self.h.bin, "serve", "--port", str(self.port)], env=self.h.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/health", 30)
        self.made: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(k,), daemon=True) for k in range(self.clients)]
        for t in self.threads:
            t.start()
        return proc

    def call(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def client(self, k):
        n = 0
        while not self.stop.is_set():
            name = f"chaos-srv{self.i}-{k}-{n}"
            n += 1
            try:
                if k % 3 == 0:
                    self.call("POST", "/run", {"command": ["sh", "-c", "echo hi"], "image": IMAGE,
                                               **self.h.body()})
                else:
                    self.made.append(name)
                    self.call("POST", "/sandboxes", {"name": name, "image": IMAGE, **self.h.body()})
                    self.call("POST", f"/sandboxes/{name}/exec", {"command": ["true"]})
                    self.call("DELETE", f"/sandboxes/{name}")
            except Exception:
                return  # the server is gone

    def names(self):
        return list(self.made)

    def after(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


class BootHelper(Server):
    """The boot helper of `serve` killed while sandboxes boot; the server must go on serving."""
    name = "boot-helper"

    def prepare(self):
        self.proc = Server.start(self)
        self.h.keep_pids.add(self.proc.pid)
        # The helper exists once the server has booted a sandbox.
        deadline = time.time() + 30
        while time.time() < deadline and not self.helper():
            time.sleep(0.05)

    def helper(self):
        for pid in descendants(self.proc.pid):
            try:
                if b"__boot-helper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                pass
        return None

    def start(self):
        return self.proc

    def victim(self, proc):
        # A helper lives for one boot (a few milliseconds): the first one seen is killed
        # after a random part of that.
        deadline = time.time() + 10
        while time.time() < deadline:
            pid = self.helper()
            if pid:
                time.sleep(self.h.rng.uniform(0, 0.005))
                return pid
            time.sleep(0.001)
        return 0

    def after(self):
        # The server serves after its helper died: a create, exec and remove succeed.
        name = f"chaos-bh-after{self.i}"
        try:
            self.call("POST", "/sandboxes", {"name": name, "image": IMAGE, **self.h.body()})
            self.call("POST", f"/sandboxes/{name}/exec", {"command": ["true"]})
            self.call("DELETE", f"/sandboxes/{name}")
        except Exception as e:
            self.h.extra.append(f"the server failed after its boot helper was killed: {e}")
        super().after()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.h.keep_pids.discard(self.proc.pid)


class Daemon(Target):
    """The daemon (warm pools on a Unix socket) killed while `run`s go through it."""
    name = "daemon"

    def start(self):
        env = dict(self.h.env)
        env.pop("AGENTKERNEL_NO_DAEMON", None)
        self.env = env
        proc = subprocess.Popen([self.h.bin, "daemon", "start"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline and not (self.h.home / "daemon.sock").exists():
            time.sleep(0.02)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(3)]
        for t in self.threads:
            t.start()
        return proc

    def client(self):
        while not self.stop.is_set():
            subprocess.run([self.h.bin, "run", "--image", IMAGE, "--", "true"], env=self.env,
                           capture_output=True, timeout=120)

    def after(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


class Supervisor(Persistent):
    """A running sandbox's own processes killed: its init (native), its VMM (micro-VM), its
    egress proxy, a detached command's supervisor. The sandbox must be usable or stopped and
    startable afterwards."""
    name = "supervisor"

    def start(self):
        kind = self.i % 3
        if kind == 2:
            self.h.ak("exec", "-d", self.sb, "--", "sleep", "30")
        return None

    def victim(self, proc):
        kind = self.i % 3
        listed = self.h.listed().get(self.sb, {})
        pid = listed.get("pid")
        procs = self.h.processes()
        if kind == 0:
            return int(pid or 0)
        word = "__egress-proxy" if kind == 1 else "__detached"
        for p, cmd in procs.items():
            if word in cmd and self.sb in cmd:
                return p
        return int(pid or 0)


TARGETS = {t.name: t for t in [Run, Create, Start, Exec, CopyIn, CopyOut, Pull, Server, BootHelper, Daemon, Supervisor]}
CONTAINER_TARGETS = ["run", "create", "start", "exec", "cp-in", "cp-out", "serve"]
MICROVM_TARGETS = ["run", "create", "start", "exec", "supervisor"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


def calibrate(t: Target) -> float:
    """How long the operation takes when nobody kills it (seconds)."""
    t.prepare()
    start = time.time()
    proc = t.start()
    if proc is None or isinstance(t, BootHelper):
        duration = 0.5
    elif isinstance(t, (Server, Daemon)):
        time.sleep(2.0)  # the load runs; the kill comes somewhere in the next 2.4 s
        duration = 2.0
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    else:
        proc.wait(timeout=300)
        duration = time.time() - start
        # A target whose operation fails anyway would test nothing.
        if proc.returncode != 0:
            raise RuntimeError(f"its operation exits {proc.returncode} when nobody kills it")
    t.after()
    return max(duration, 0.05)


def settle(h: Harness) -> tuple[list[str], float]:
    """What leaks once the kernel is done tearing down (at most 10 s, a command each 0.5 s),
    and how long that took."""
    start = time.time()
    leaks = h.leaks()
    while leaks and time.time() - start < 10:
        time.sleep(0.5)
        h.ak("--version")
        leaks = h.leaks()
    return leaks, round(time.time() - start, 2)


def round_(h: Harness, t: Target, duration: float) -> dict:
    h.extra = []
    h.foreign = set()
    h.foreign = h.cgroups() - h.live_instances()[0]  # this home's leftovers were reported
    t.prepare()
    proc = t.start()
    delay = h.rng.uniform(0, 1.2 * duration)
    time.sleep(delay)
    victim = t.victim(proc)
    family = descendants(victim) | {victim} if victim else set()
    if victim:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc is not None and victim == proc.pid:
        proc.wait(timeout=60)
    h.wait_gone(family)
    t.after()
    # Whatever the next command of any kind removes.
    h.ak("--version", check=True)
    before_gc = [l for l in h.leaks() if l.startswith(("cgroup", "network namespace", "process", "container", "mount"))]
    gc = h.ak("gc")
    problems = list(h.extra)
    if gc.returncode != 0:
        problems.append(f"gc exits {gc.returncode}: {gc.stderr.strip()[-300:]}")
    names = t.names()
    fate, kept, gone = h.usable(names, remove=not t.keep_sandboxes)
    problems += fate
    # The kernel tears a pid and network namespace down after its last process was killed,
    # which waits for RCU grace periods (seconds on a loaded machine): a dying init keeps its
    # group busy and its proxy waiting meanwhile. What is still there after 10 s and another
    # command is a leak.
    leaks, settled = settle(h)
    problems += leaks
    problems += h.integrity()
    return {"target": t.name, "iteration": t.i, "delay_s": round(delay, 3), "killed": bool(victim),
            "left_for_gc": before_gc, "settled_s": settled, "problems": problems, "kept": kept, "gone": gone,
            "gc": gc.stdout.strip().splitlines()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.environ.get("AGENTKERNEL_BIN", str(DEFAULT_BIN)))
    ap.add_argument("--backends", default="native")
    ap.add_argument("--targets", default="", help="comma-separated; default: all the backend supports")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--json", help="write every round here")
    ap.add_argument("--keep-going", action="store_true", help="go on after a round with problems")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"chaos: seed {args.seed}, {args.iterations} iterations per target", flush=True)
    results, summary = [], []
    for backend in args.backends.split(","):
        if backend == "native":
            names = list(TARGETS)
        elif backend == "microvm":
            names = MICROVM_TARGETS
        else:
            names = CONTAINER_TARGETS
        if args.targets:
            names = [n for n in args.targets.split(",") if n in names]
        for name in names:
            work = Path(tempfile.mkdtemp(prefix=f"chaos-{backend}-{name}-"))
            h = Harness(Path(args.binary), backend, work, rng)
            t = TARGETS[name](h)
            try:
                duration = calibrate(t)
            except Exception as e:
                print(f"{backend:8} {name:12} could not run: {e}", flush=True)
                summary.append((backend, name, 0, 0, 0, 0, 0, 0, f"could not run: {e}"))
                for sandbox in h.listed():
                    h.ak("remove", sandbox)
                subprocess.run(["rm", "-rf", str(work)], check=False)
                continue
            rounds = failures = left = kept = gone = 0
            slowest = 0.0
            first_problem = ""
            for i in range(args.iterations):
                t.i = i + 1
                try:
                    r = round_(h, t, duration)
                except Exception as e:
                    r = {"target": name, "iteration": t.i, "problems": [f"harness: {e!r}"], "left_for_gc": [], "kept": 0, "gone": 0}
                r["backend"] = backend
                results.append(r)
                rounds += 1
                left += bool(r["left_for_gc"])
                slowest = max(slowest, r.get("settled_s", 0))
                kept += r["kept"]
                gone += r["gone"]
                if r["problems"]:
                    failures += 1
                    first_problem = first_problem or "; ".join(r["problems"][:3])
                    print(f"  {backend} {name} #{t.i} (killed after {r.get('delay_s')} s): {r['problems'][:5]}", flush=True)
                    if not args.keep_going:
                        break
            t.finish()
            # Everything this target made goes; then nothing of this state directory may be
            # left on the host.
            for sandbox in h.listed():
                h.ak("remove", sandbox)
            h.ak("gc")
            final = [l for l in settle(h)[0] if not l.startswith("temporary")]
            if final:
                failures += 1
                first_problem = first_problem or "after removing everything: " + "; ".join(final[:3])
                print(f"  {backend} {name}: after removing everything: {final[:5]}", flush=True)
            summary.append((backend, name, round(duration, 2), rounds, failures, left, f"{kept}/{gone}", slowest, first_problem))
            print(f"{backend:8} {name:12} {duration:6.2f}s {rounds:4} rounds {failures:3} failed "
                  f"{left:3} left something for the next command or gc; sandboxes kept/gone {kept}/{gone}; "
                  f"slowest teardown {slowest:.1f} s", flush=True)
            subprocess.run(["rm", "-rf", str(work)], check=False)
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "summary": summary, "rounds": results}, indent=1))
    bad = sum(s[4] for s in summary) + sum(1 for s in summary if s[3] == 0)
    print(f"chaos: {sum(s[3] for s in summary)} rounds, {bad} with problems")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
