"""What the soak and abuse harnesses both measure on the host: the latency of a host `true`
(in a separate process, so a harness's own threads never delay it), a process's memory and
threads, and whose agentkernel process a process is on a machine others use too."""

import json
import math
import signal
import subprocess
import sys

SAMPLER = r"""
import json, os, signal, sys, time
iv = float(sys.argv[1]); out = []; stop = [False]
signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
env = {"PATH": "/usr/bin:/bin"}
nxt = time.monotonic()
while not stop[0]:
    t = time.perf_counter()
    pid = os.posix_spawn("/bin/true", ["true"], env)
    os.waitpid(pid, 0)
    out.append(round((time.perf_counter() - t) * 1000, 3))
    nxt += iv
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
    else:
        nxt = time.monotonic()
json.dump(out, sys.stdout)
"""


def pct(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


class Sampler:
    """A separate process (so the harness's own threads and GIL never delay it) that runs
    `true` every interval and reports the wall times when it gets SIGTERM."""

    def __init__(self, interval=0.1):
        self.p = subprocess.Popen([sys.executable, "-c", SAMPLER, str(interval)],
                                  stdout=subprocess.PIPE, text=True)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        out, _ = self.p.communicate(timeout=30)
        xs = json.loads(out or "[]")
        return {"n": len(xs), "p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99),
                "max_ms": max(xs) if xs else None,
                "over_50ms": sum(1 for x in xs if x > 50)}


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
                elif k == "Threads":
                    out[k] = int(v)
    except (OSError, ValueError):
        pass
    return out


def attribute(pid, home, bin_path, cmd):
    """Whose agentkernel process this is, on a machine others use too: "mine" when its command
    line names this run's binary or home, or its mount namespace shows the home (a sandbox's
    overlay lower layers live there); "foreign" when its mounts are readable and do not; else
    "unknown" (a zombie has no mounts to read)."""
    if cmd.startswith(bin_path) or home in cmd:
        return "mine"
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    if home in text:
        return "mine"
    return "foreign" if text else "unknown"
