#!/usr/bin/env python3
"""Soak tests (issue 20): many sequential CLI runs, then a server under concurrent load.

    bash bench/soak.sh                                      # 10,000 runs, 10 min x 64 clients
    bash bench/soak.sh --runs 200 --minutes 1 --clients 16  # a short run
    python3 bench/soak.py --bin target/.../agentkernel --parts cli --runs 1000 --json out.json

(a) `--parts cli`: N sequential `agentkernel run --image IMAGE -- true` (default 10,000,
    `--runs`; `--run-args` adds flags, e.g. "--no-network"), each with a timeout. Counts
    failures (exit code other than 0, or the timeout) with their messages, and latency
    percentiles. Every `--check-every` runs, and after the last, it counts what could leak:
    cgroups under agentkernel/ in every hierarchy, mounts naming agentkernel in
    /proc/self/mountinfo, agentkernel processes (CLI, init, helpers), entries in
    AGENTKERNEL_HOME. `--cli-minutes` caps the wall time (the figures then cover the runs done).
(b) `--parts server`: `agentkernel serve` on 127.0.0.1 (a free port), `--clients` threads
    (default 64) for `--minutes` (default 10), each looping over a mix:
      run       POST /run `sh -c "echo soak-$i"`; expects 200, exit 0 and the output
      lifecycle POST /sandboxes, POST /exec, DELETE; expects 200s and exit 0
      files     on the thread's own sandbox (made on first use): POST /files (8 files), GET one
                back and compare; expects 200s
    Every request's status is counted per operation. 429 and 503 (the server's concurrency
    bound, `--max-concurrent`, default 64, or a backend that cannot run) are counted as
    "throttled", separately from failures (anything else that is not the expected answer,
    including client timeouts and connection errors); a throttled client waits Retry-After.
    Every `--sample-s` seconds: the server's VmRSS, open fds (/proc/PID/fd), threads, its
    descendant processes, the host's mount count, agentkernel cgroups, and load; the first
    10% and last 10% of the samples are averaged to show growth. A separate process runs the
    host's `true` every 100 ms throughout (p50/p99/max reported). Afterwards: the clients'
    sandboxes are deleted, the server gets SIGTERM (time to exit recorded), `gc` runs and the
    leftovers are counted as in (a).

Output: a summary on stdout, everything with --json FILE.
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
import subprocess
import sys
import tempfile
import threading
import time

from hostprobe import Sampler, attribute, pct, proc_status  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(REPO, "target/x86_64-unknown-linux-gnu/debug/agentkernel")


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dist(xs):
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": round(pct(xs, 50), 1), "p90": round(pct(xs, 90), 1),
            "p99": round(pct(xs, 99), 1), "max": round(max(xs), 1), "min": round(min(xs), 1),
            "mean": round(sum(xs) / len(xs), 1)}


def cgroups():
    return sorted(d for d in glob.glob("/sys/fs/cgroup/*/agentkernel/*") + glob.glob("/sys/fs/cgroup/agentkernel/*")
                  if os.path.isdir(d))


def mounts_total():
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


def mounts_agentkernel():
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if "agentkernel" in ln and "agentkernel-test-engines" not in ln]


def ppid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def agentkernel_procs(bin_path, exclude=()):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if comm.startswith("agentkernel") or cmd.startswith(bin_path) or "agentkernel-init" in cmd:
            out.append(f"{d} {comm} {cmd[:100]}")
    return out


def descendants(pid):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            pp = ppid_of(d)
            if pp is not None:
                children.setdefault(pp, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def count_files(path):
    n = 0
    for _, dirs, files in os.walk(path):
        n += len(files) + len(dirs)
    return n


class Soak:
    def __init__(self, a):
        self.a = a
        self.bin = os.path.abspath(a.bin)
        self.home = tempfile.mkdtemp(prefix="ak-soak-home-")
        self.cwd = tempfile.mkdtemp(prefix="ak-soak-cwd-")
        self.env = dict(os.environ, AGENTKERNEL_HOME=self.home, AGENTKERNEL_NO_DAEMON="1")
        if not self.env.get("AGENTKERNEL_REGISTRY_MIRROR") and os.environ.get("AGENTKERNEL_TEST_REGISTRY"):
            self.env["AGENTKERNEL_REGISTRY_MIRROR"] = "http://" + os.environ["AGENTKERNEL_TEST_REGISTRY"]
        self.before_cgroups = set(cgroups())
        self.before_names = set(os.path.basename(c) for c in self.before_cgroups)
        self.before_pids = set(int(p) for p in os.listdir("/proc") if p.isdigit())
        self.out = {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bin": self.bin,
                             "bin_mtime": time.ctime(os.path.getmtime(self.bin)), "argv": sys.argv,
                             "cpus": os.cpu_count(), "kernel": os.uname().release, "home": self.home}}

    def ak(self, *args, timeout=120):
        try:
            r = subprocess.run([self.bin, *args], env=self.env, cwd=self.cwd, capture_output=True,
                               text=True, timeout=timeout)
            return r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired:
            return None, "", f"timed out after {timeout}s"

    def foreign(self, sandbox):
        return sandbox in self.before_names or sandbox.startswith(tuple(self.a.foreign_prefix))

    def my_cgroups(self):
        return sorted(c for c in set(cgroups()) - self.before_cgroups if not self.foreign(os.path.basename(c)))

    def my_procs(self, exclude=()):
        """agentkernel processes of this run: not there before it, not of a foreign sandbox,
        not another user's CLI or egress proxy."""
        out = []
        for line in agentkernel_procs(self.bin, exclude):
            pid = int(line.split()[0])
            if pid in self.before_pids:
                continue
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    m = re.search(r"/agentkernel/([^/\n]+)", f.read())
            except OSError:
                m = None
            if m and self.foreign(m.group(1)):
                continue
            cmd = line.split(" ", 2)[2] if line.count(" ") >= 2 else ""
            owner = attribute(pid, self.home, self.bin, cmd)
            if owner == "foreign":
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                state = "?"
            out.append(line + (f" cg={m.group(1)}" if m else "") + f" state={state} owner={owner}")
        return out

    def foreign_count(self):
        """agentkernel CLI processes of another binary (another user of the machine): they sweep
        the same machine-wide cgroup tree."""
        n = 0
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
            except OSError:
                continue
            if os.path.basename(argv0) == "agentkernel" and argv0 != self.bin:
                n += 1
        return n

    def home_breakdown(self):
        out = {}
        for top in sorted(os.listdir(self.home)):
            p = os.path.join(self.home, top)
            out[top] = count_files(p) if os.path.isdir(p) else os.path.getsize(p)
        return out

    def state(self, exclude=()):
        return {"cgroups": len(self.my_cgroups()), "agentkernel_mounts": len(mounts_agentkernel()),
                "processes": len(self.my_procs(exclude)), "home_entries": count_files(self.home)}

    def leftovers(self, exclude=()):
        rc, out, err = self.ak("list", "--json")
        try:
            sandboxes = [s.get("name") for s in json.loads(out or "[]")]
        except ValueError:
            sandboxes = [f"unparsable: rc={rc} {err[:200]}"]
        mine = self.my_cgroups()
        return {"sandboxes": sandboxes, "cgroups": mine[:50], "cgroup_count": len(mine),
                "agentkernel_mounts": mounts_agentkernel()[:50],
                "processes": self.my_procs(exclude)[:50],
                "home_entries": count_files(self.home), "home_breakdown": self.home_breakdown()}

    # ------------------------------------------------------------------ (a)
    def part_cli(self):
        a = self.a
        argv = [self.bin, "run", "--image", a.image, *a.run_args.split(), "--", "true"]
        log(f"(a) {a.runs} x {' '.join(argv[1:])}")
        res = {"command": " ".join(["agentkernel"] + argv[1:]), "runs_asked": a.runs}
        # The image once, outside the measured runs.
        rc, _, err = self.ak("images", "pull", a.image, timeout=600) if a.image != "host" else (0, "", "")
        res["pull_rc"] = rc
        res["before"] = self.state()
        lat, failures, checks = [], {}, []
        fail_n = 0
        s = Sampler()
        t_start = time.time()
        deadline = t_start + a.cli_minutes * 60 if a.cli_minutes else None
        i = 0
        for i in range(1, a.runs + 1):
            t0 = time.perf_counter()
            try:
                r = subprocess.run(argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, timeout=a.run_timeout)
                rc, err = r.returncode, r.stderr
            except subprocess.TimeoutExpired as e:
                rc, err = "timeout", f"no exit after {a.run_timeout}s"
            dt = (time.perf_counter() - t0) * 1000
            lat.append(dt)
            if rc != 0:
                fail_n += 1
                key = f"rc={rc}: " + re.sub(r"\d+", "N", (err or "").strip().splitlines()[-1] if (err or "").strip() else "")[:200]
                f = failures.setdefault(key, {"count": 0, "first_run": i, "example": (err or "")[-600:]})
                f["count"] += 1
            if i % a.check_every == 0 or i == a.runs:
                st = self.state()
                st.update(run=i, elapsed_s=round(time.time() - t_start, 1), failures=fail_n,
                          p50_last=round(pct(lat[-a.check_every:], 50), 1))
                checks.append(st)
                log(f"  {i} runs, {fail_n} failures, p50 {st['p50_last']} ms (last {a.check_every}), "
                    f"cgroups {st['cgroups']}, mounts {st['agentkernel_mounts']}, procs {st['processes']}")
            if deadline and time.time() > deadline:
                log(f"  --cli-minutes reached after {i} runs: stopping")
                break
        res["latency_sampler"] = s.stop()
        res["runs_done"] = i
        res["wall_s"] = round(time.time() - t_start, 1)
        res["runs_per_s"] = round(i / max(res["wall_s"], 0.001), 2)
        res["failures"] = fail_n
        res["failure_kinds"] = failures
        res["latency_ms"] = dist(lat)
        res["latency_first_10pct_ms"] = dist(lat[: max(1, len(lat) // 10)])
        res["latency_last_10pct_ms"] = dist(lat[-max(1, len(lat) // 10):])
        res["checks"] = checks
        time.sleep(1)
        res["after"] = self.leftovers()
        rc, out, err = self.ak("gc")
        res["gc"] = {"rc": rc, "out": (out + err)[-500:]}
        res["after_gc"] = self.leftovers()
        self.out["cli"] = res
        log(f"(a) done: {i} runs, {fail_n} failures, latency {res['latency_ms']}")

    # ------------------------------------------------------------------ (b)
    def start_server(self):
        logf = open(os.path.join(self.home, "serve.log"), "wb")
        args = [self.bin, "serve", "--host", "127.0.0.1", "--port", "0", *self.a.serve_args.split()]
        self.server = subprocess.Popen(args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                       stdout=logf, stderr=logf, start_new_session=True)
        self.server_log = logf.name
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(logf.name, "rb") as f:
                m = re.search(rb"serving the HTTP API on http://127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                return
            if self.server.poll() is not None:
                raise RuntimeError(f"serve exited {self.server.returncode}: {open(logf.name).read()}")
            time.sleep(0.1)
        raise RuntimeError("serve did not print its address")

    def http(self, method, path, body=None, timeout=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or self.a.request_timeout)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            payload = r.read()
            try:
                j = json.loads(payload)
            except ValueError:
                j = {"raw": payload[:300].decode("utf-8", "replace")}
            return r.status, j, r.getheader("Retry-After")
        finally:
            c.close()

    def part_server(self):
        a = self.a
        log(f"(b) serve with {a.clients} clients for {a.minutes} min")
        res = {"clients": a.clients, "minutes": a.minutes, "serve_args": a.serve_args}
        before = self.state()
        res["before"] = before
        self.start_server()
        res["server_pid"] = self.server.pid
        lock = threading.Lock()
        stats = {}   # op -> {"ok": n, "throttled": n, "failed": n, "lat": [...], "statuses": {}}
        errors = {}
        throttles = {}
        stop = threading.Event()
        owned = {}   # thread id -> sandbox name (files op)
        base = {"image": a.image}
        if a.no_network:
            base["no_network"] = True

        def note(op, kind, dt=None, status=None, why=None):
            with lock:
                s = stats.setdefault(op, {"ok": 0, "throttled": 0, "failed": 0, "lat": [], "statuses": {}})
                s[kind] += 1
                if status is not None:
                    s["statuses"][str(status)] = s["statuses"].get(str(status), 0) + 1
                if dt is not None and kind == "ok":
                    s["lat"].append(dt * 1000)
                if kind == "failed":
                    fail_times.append(round(time.time() - t_start, 1))
                if why:
                    k = op + ": " + re.sub(r"[0-9a-f]{6,}|\d+", "N", why)[:200]
                    e = errors.setdefault(k, {"count": 0, "example": why[:500]})
                    e["count"] += 1

        class Throttled(Exception):
            pass

        class Failed(Exception):
            pass

        def call(op, method, path, body=None, expect=200):
            t0 = time.perf_counter()
            try:
                st, j, retry = self.http(method, path, body)
            except Exception as e:
                note(op, "failed", why=f"{type(e).__name__}: {e}")
                raise Failed()
            dt = time.perf_counter() - t0
            if st in (429, 503):
                note(op, "throttled", status=st)
                with lock:
                    k = f"{op} {st}: " + re.sub(r"\d+", "N", str(j.get("error", j)))[:200]
                    throttles[k] = throttles.get(k, 0) + 1
                time.sleep(float(retry or 1))
                raise Throttled()
            if st != expect:
                note(op, "failed", status=st, why=f"status {st}: {j.get('error', j)}")
                raise Failed()
            note(op, "ok", dt, status=st)
            return j.get("data")

        def check(op, cond, why):
            if not cond:
                note(op + "-content", "failed", why=why)
                raise Failed()

        def client(tid):
            rnd = random.Random(tid)
            n = 0
            while not stop.is_set():
                n += 1
                r = rnd.random()
                try:
                    if r < a.mix_run:
                        tok = f"soak-{tid}-{n}"
                        d = call("run", "POST", "/run", dict(base, command=["sh", "-c", f"echo {tok}"]))
                        check("run", d.get("exit_code") == 0 and d.get("stdout") == tok + "\n",
                              f"exit {d.get('exit_code')} stdout {d.get('stdout')!r} stderr {d.get('stderr')!r}")
                    elif r < a.mix_run + a.mix_lifecycle:
                        name = f"soak-{tid}-{n}-{rnd.randrange(1 << 20):x}"
                        call("create", "POST", "/sandboxes", dict(base, name=name))
                        try:
                            d = call("exec", "POST", f"/sandboxes/{name}/exec",
                                     {"command": ["sh", "-c", "echo $((6*7))"]})
                            check("exec", d.get("exit_code") == 0 and d.get("stdout") == "42\n",
                                  f"exit {d.get('exit_code')} stdout {d.get('stdout')!r} stderr {d.get('stderr')!r}")
                        finally:
                            for _ in range(30):
                                try:
                                    call("delete", "DELETE", f"/sandboxes/{name}")
                                    break
                                except Throttled:
                                    continue
                                except Failed:
                                    break
                    else:
                        name = owned.get(tid)
                        if not name:
                            name = f"soak-files-{tid}-{rnd.randrange(1 << 20):x}"
                            call("create", "POST", "/sandboxes", dict(base, name=name))
                            owned[tid] = name
                        files = {f"soak/{n}/f{k}.txt": f"{tid} {n} {k}\n" * (k + 1) for k in range(8)}
                        d = call("files-write", "POST", f"/sandboxes/{name}/files", {"files": files})
                        check("files-write", d.get("written") == 8, f"written {d.get('written')}")
                        k = rnd.randrange(8)
                        d = call("files-read", "GET", f"/sandboxes/{name}/files/soak/{n}/f{k}.txt")
                        check("files-read", d.get("content") == files[f"soak/{n}/f{k}.txt"],
                              f"content {str(d.get('content'))[:80]!r}")
                except (Throttled, Failed):
                    pass
                except Exception as e:  # a harness bug must not silently stop a client
                    note("harness", "failed", why=f"{type(e).__name__}: {e}")

        samples = []
        fail_times = []
        t_start = time.time()

        def sampler():
            t0 = time.time()
            while not stop.is_set():
                pid = self.server.pid
                st = proc_status(pid)
                try:
                    fds = len(os.listdir(f"/proc/{pid}/fd"))
                except OSError:
                    fds = None
                desc = descendants(pid)
                samples.append({"t": round(time.time() - t0, 1), "rss_mb": round(st.get("VmRSS", 0) / 2**20, 1),
                                "hwm_mb": round(st.get("VmHWM", 0) / 2**20, 1), "fds": fds,
                                "threads": st.get("Threads"), "descendants": len(desc),
                                "host_mounts": mounts_total(), "cgroups": len(self.my_cgroups()),
                                "load1": os.getloadavg()[0],
                                "foreign_agentkernel": self.foreign_count()})
                stop.wait(a.sample_s)

        lat_sampler = Sampler()
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
        smp = threading.Thread(target=sampler, daemon=True)
        smp.start()
        for t in threads:
            t.start()
        end = t_start + a.minutes * 60
        while time.time() < end:
            time.sleep(min(30, max(0.1, end - time.time())))
            with lock:
                tot = {op: (s["ok"], s["throttled"], s["failed"]) for op, s in stats.items()}
            log(f"  t={time.time() - t_start:.0f}s {tot} rss={samples[-1]['rss_mb'] if samples else '?'}MB "
                f"fds={samples[-1]['fds'] if samples else '?'}")
        stop.set()
        t_stop = time.time()
        for t in threads:
            t.join(timeout=a.request_timeout + 30)
        res["clients_stopped_s"] = round(time.time() - t_stop, 1)
        res["clients_still_running"] = sum(1 for t in threads if t.is_alive())
        res["wall_s"] = round(time.time() - t_start, 1)
        smp.join(timeout=30)
        res["latency_sampler"] = lat_sampler.stop()
        # The files sandboxes of the clients.
        deleted = {}
        for name in owned.values():
            for _ in range(10):
                try:
                    st, j, _ = self.http("DELETE", f"/sandboxes/{name}")
                except Exception as e:
                    st = f"{type(e).__name__}"
                if st != 429:
                    break
                time.sleep(1)
            deleted[str(st)] = deleted.get(str(st), 0) + 1
        res["owned_sandboxes_deleted"] = deleted
        try:
            st, j, _ = self.http("GET", "/sandboxes")
            res["sandboxes_listed_before_stop"] = [s.get("name") for s in (j.get("data") or [])]
        except Exception as e:
            res["sandboxes_listed_before_stop"] = f"error {e}"
        # Stop the server.
        t0 = time.time()
        self.server.send_signal(signal.SIGTERM)
        try:
            rc = self.server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            rc = f"killed after 120 s: {self.server.wait()}"
        res["server_exit"] = {"rc": rc, "stop_s": round(time.time() - t0, 1)}
        with open(self.server_log, "rb") as f:
            res["server_log_tail"] = f.read()[-3000:].decode("utf-8", "replace")
        time.sleep(1)
        res["after"] = self.leftovers()
        rc, out, err = self.ak("gc")
        res["gc"] = {"rc": rc, "out": (out + err)[-500:]}
        res["after_gc"] = self.leftovers()
        ops = {}
        total = {"ok": 0, "throttled": 0, "failed": 0}
        for op, s in sorted(stats.items()):
            ops[op] = {"ok": s["ok"], "throttled": s["throttled"], "failed": s["failed"],
                       "statuses": s["statuses"], "latency_ms": dist(s["lat"])}
            for k in total:
                total[k] += s[k]
        res["ops"] = ops
        res["totals"] = total
        res["requests_per_s"] = round(sum(total.values()) / max(res["wall_s"], 1), 2)
        res["throttle_reasons"] = throttles
        res["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1]["count"])[:30])
        res["samples"] = samples
        res["failure_times_s"] = fail_times
        # Failures per 10 s window next to the foreign agentkernel processes seen in it.
        windows = {}
        for t in fail_times:
            windows.setdefault(int(t // 10) * 10, [0, 0])[0] += 1
        for x in samples:
            w = windows.setdefault(int(x["t"] // 10) * 10, [0, 0])
            w[1] = max(w[1], x.get("foreign_agentkernel") or 0)
        res["failures_vs_foreign_by_10s"] = {k: v for k, v in sorted(windows.items())}
        k = max(1, len(samples) // 10)

        def avg(xs, key):
            v = [x[key] for x in xs if x.get(key) is not None]
            return round(sum(v) / len(v), 1) if v else None
        keys = ["rss_mb", "fds", "threads", "descendants", "host_mounts", "cgroups", "load1"]
        res["first_10pct"] = {key: avg(samples[:k], key) for key in keys}
        res["last_10pct"] = {key: avg(samples[-k:], key) for key in keys}
        res["max"] = {key: max((x[key] for x in samples if x.get(key) is not None), default=None) for key in keys + ["hwm_mb"]}
        self.out["server"] = res
        log(f"(b) done: {total}; first 10% {res['first_10pct']}; last 10% {res['last_10pct']}")

    def summary(self):
        c = self.out.get("cli")
        if c:
            print("== (a) sequential CLI runs")
            print(f"command: {c['command']}")
            print(f"runs: {c['runs_done']} of {c['runs_asked']} in {c['wall_s']} s ({c['runs_per_s']}/s); failures: {c['failures']}")
            print(f"latency ms: {c['latency_ms']}")
            print(f"  first 10%: {c['latency_first_10pct_ms']}")
            print(f"  last 10%:  {c['latency_last_10pct_ms']}")
            print(f"host `true` during the runs: {c['latency_sampler']}")
            for k, v in c["failure_kinds"].items():
                print(f"  failure x{v['count']} (first at run {v['first_run']}): {k}")
            print(f"before: {c['before']}")
            for label in ("after", "after_gc"):
                x = c[label]
                print(f"{label}: sandboxes {len(x['sandboxes'])}, cgroups {x['cgroup_count']}, "
                      f"agentkernel mounts {len(x['agentkernel_mounts'])}, processes {len(x['processes'])}, "
                      f"home entries {x['home_entries']}")
                print(f"    home: {x['home_breakdown']}")
                for p in x["processes"][:10]:
                    print(f"    process: {p}")
                for g in x["cgroups"][:10]:
                    print(f"    cgroup: {g}")
        s = self.out.get("server")
        if s:
            print(f"== (b) serve, {s['clients']} clients, {s['minutes']} min ({s['wall_s']} s)")
            print(f"requests: {s['totals']} ({s['requests_per_s']}/s)")
            hdr = f"{'op':<16}{'ok':>8}{'throttled':>11}{'failed':>8}  {'p50':>8}{'p99':>9}{'max':>9}  statuses"
            print(hdr)
            for op, o in s["ops"].items():
                l = o["latency_ms"]
                print(f"{op:<16}{o['ok']:>8}{o['throttled']:>11}{o['failed']:>8}  {str(l.get('p50', '-')):>8}"
                      f"{str(l.get('p99', '-')):>9}{str(l.get('max', '-')):>9}  {o['statuses']}")
            for k, v in list(s["errors"].items())[:15]:
                print(f"  error x{v['count']}: {k}")
                print(f"     e.g. {v['example'][:300]}")
            for k, v in s.get("throttle_reasons", {}).items():
                print(f"  throttled x{v}: {k}")
            print(f"first 10% of samples: {s['first_10pct']}")
            print(f"last 10% of samples:  {s['last_10pct']}")
            print(f"max: {s['max']}")
            print(f"host `true` during the load: {s['latency_sampler']}")
            print(f"clients stopped in {s['clients_stopped_s']} s (still running: {s['clients_still_running']}); "
                  f"owned sandboxes deleted: {s['owned_sandboxes_deleted']}; listed before stop: {s['sandboxes_listed_before_stop']}")
            print(f"server exit: {s['server_exit']}")
            for label in ("after", "after_gc"):
                x = s[label]
                print(f"{label}: sandboxes {x['sandboxes']}, cgroups {x['cgroup_count']}, "
                      f"agentkernel mounts {len(x['agentkernel_mounts'])}, processes {len(x['processes'])}, home entries {x['home_entries']}")
                print(f"    home: {x['home_breakdown']}")
                for p in x["processes"][:10]:
                    print(f"    process: {p}")

    def main(self):
        try:
            if "cli" in self.a.parts:
                self.part_cli()
            if "server" in self.a.parts:
                self.part_server()
        finally:
            srv = getattr(self, "server", None)
            if srv and srv.poll() is None:
                srv.send_signal(signal.SIGTERM)
                try:
                    srv.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(srv.pid, signal.SIGKILL)
            self.out["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if self.a.json:
                with open(self.a.json, "w") as f:
                    json.dump(self.out, f, indent=1, default=str)
                log(f"wrote {self.a.json}")
        self.summary()
        if not self.a.keep_home:
            self.ak("gc")
            shutil.rmtree(self.home, ignore_errors=True)
            shutil.rmtree(self.cwd, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("AGENTKERNEL_BIN", DEFAULT_BIN))
    ap.add_argument("--parts", default="cli,server", help="cli, server or both (default)")
    ap.add_argument("--image", default="busybox", help="image of every sandbox (busybox, host, ...)")
    ap.add_argument("--runs", type=int, default=10000, help="(a) sequential CLI runs")
    ap.add_argument("--run-args", default="", help="(a) extra flags for `run`, e.g. --no-network")
    ap.add_argument("--run-timeout", type=int, default=120, help="(a) seconds before a run counts as hung")
    ap.add_argument("--cli-minutes", type=float, default=0, help="(a) stop after this long (0: no cap)")
    ap.add_argument("--check-every", type=int, default=500, help="(a) leak check every N runs")
    ap.add_argument("--clients", type=int, default=64, help="(b) concurrent client threads")
    ap.add_argument("--minutes", type=float, default=10, help="(b) duration")
    ap.add_argument("--sample-s", type=float, default=5, help="(b) server sampling period")
    ap.add_argument("--request-timeout", type=int, default=300, help="(b) client timeout per request")
    ap.add_argument("--serve-args", default="", help="(b) extra flags for `serve`")
    ap.add_argument("--no-network", action="store_true", help="(b) no_network in every request")
    ap.add_argument("--mix", default="0.4,0.3,0.3", help="(b) shares of run, lifecycle, files")
    ap.add_argument("--foreign-prefix", action="append", default=["chaos-"],
                    help="sandbox names of another harness sharing the machine, left out of the leftover counts (repeatable)")
    ap.add_argument("--json")
    ap.add_argument("--keep-home", action="store_true")
    a = ap.parse_args()
    a.parts = set(a.parts.split(","))
    a.mix_run, a.mix_lifecycle, _ = (float(x) for x in a.mix.split(","))
    if os.geteuid() != 0:
        ap.error("run as root")
    if not os.access(a.bin, os.X_OK):
        ap.error(f"{a.bin} is not an executable: build it first (or pass --bin)")
    Soak(a).main()


if __name__ == "__main__":
    main()
