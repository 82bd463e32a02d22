"""Helpers of bench/engines.sh (container backends against the Docker CLI).

    python3 bench/engines.py peer-flags INSPECT.json PROFILE.json [--no-seccomp]
        the `docker run` flags that give a container the host configuration agentkernel gave
        its own (read back with `docker inspect`), one per line; the seccomp profile it sent
        inline is written to PROFILE.json (the Docker CLI takes a file and inlines it again)
    python3 bench/engines.py mount INSPECT.json
        the `--mount` flag of agentkernel's executable, as its container has it
    python3 bench/engines.py requests [--text] TRACE
        the Docker Engine API requests one process made, read from its strace (JSON, or a table)
    python3 bench/engines.py report WORK DOC
        writes the "Container backends" section of DOC (docs/benchmarks.md) from WORK, between
        its markers, leaving the rest of the file as it is

A trace is `strace -f -ttt -s 200 -e trace=connect,close,read,write,writev,recvfrom,sendto,
sendmsg,recvmsg -o TRACE CMD…`: every socket that connect(2) opened is followed, so it must start
with the command (not strace -p).
"""
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import textwrap
import time

BEGIN = "<!-- container-backends:begin: written by bench/engines.sh; bench/run.sh keeps it -->"
END = "<!-- container-backends:end -->"

# ---------------------------------------------------------------------------------------------
# peer-flags


def peer_flags(inspect_path, profile_path, seccomp=True):
    """`docker run` flags for the policy part of a container's configuration."""
    with open(inspect_path) as f:
        c = json.load(f)[0]
    h, cfg = c["HostConfig"], c["Config"]
    flags = []
    if h.get("Runtime") not in (None, "", "runc", "oci"):
        flags += ["--runtime", h["Runtime"]]
    if h.get("NetworkMode") and h["NetworkMode"] != "default":
        flags += ["--network", h["NetworkMode"]]
    for cap in h.get("CapDrop") or []:
        flags += ["--cap-drop", cap]
    for cap in h.get("CapAdd") or []:
        flags += ["--cap-add", cap]
    for opt in h.get("SecurityOpt") or []:
        if opt.startswith("seccomp="):
            if not seccomp:
                continue
            value = opt[len("seccomp="):]
            with open(profile_path, "w") as f:
                f.write(value)
            flags += ["--security-opt", f"seccomp={profile_path}"]
        else:
            flags += ["--security-opt", opt]
    if h.get("PidsLimit"):
        flags += ["--pids-limit", str(h["PidsLimit"])]
    if h.get("Memory"):
        flags += ["--memory", f"{h['Memory']}b"]
    if h.get("MemorySwap"):
        flags += ["--memory-swap", f"{h['MemorySwap']}b"]
    if h.get("NanoCpus"):
        flags += ["--cpus", f"{h['NanoCpus'] / 1e9:g}"]
    for u in h.get("Ulimits") or []:
        flags += ["--ulimit", f"{u['Name']}={u['Soft']}:{u['Hard']}"]
    for target, options in (h.get("Tmpfs") or {}).items():
        flags += ["--tmpfs", f"{target}:{options}" if options else target]
    if h.get("ReadonlyRootfs"):
        flags += ["--read-only"]
    if h.get("IpcMode") and h["IpcMode"] not in ("", "shareable"):
        flags += ["--ipc", h["IpcMode"]]
    if cfg.get("User"):
        flags += ["--user", cfg["User"]]
    return flags


def mount_flag(inspect_path):
    with open(inspect_path) as f:
        c = json.load(f)[0]
    for m in c["HostConfig"].get("Mounts") or []:
        if m.get("Target") == "/dev/.agentkernel-init":
            ro = ",readonly" if m.get("ReadOnly") else ""
            return [f"--mount=type=bind,src={m['Source']},dst={m['Target']}{ro}"]
    sys.exit("engines.py: the container has no /dev/.agentkernel-init mount")


# ---------------------------------------------------------------------------------------------
# requests: an strace of one client, as the API requests it made

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
CALL = re.compile(r"^(\w+)\((\d+),\s*(.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
REQUEST = re.compile(r'"(GET|POST|HEAD|PUT|DELETE) (\S+) HTTP/1\.[01]\\r\\n')
STATUS = re.compile(r'"HTTP/1\.[01] (\d{3})')
RESULT = re.compile(r"\)\s+=\s+(-?\d+)")
WRITES = {"write", "writev", "sendto", "sendmsg"}
READS = {"read", "recvfrom", "recvmsg", "readv"}


def short(path):
    """The path without the API version prefix; ids and container names as placeholders."""
    path = re.sub(r"^/v1\.\d+", "", path)
    path = re.sub(r"[0-9a-f]{64}", "{id}", path)
    return re.sub(r"agentkernel-[A-Za-z0-9_.-]+", "{name}", path)


def parse_trace(lines):
    """{"start", "exit", "requests": [{"method", "path", "status", "send", "headers", "end",
    "conn"}]}: times in seconds since the epoch; `headers` when the status line was read, `end`
    the last read for the request on its connection (a streamed body's or an upgraded stream's
    end: attach, exec start, wait); `conn` numbers connections in connect order."""
    pending = {}  # pid -> (name, time, text) of an <unfinished ...> call
    conns = {}  # fd -> connection number
    current = {}  # connection number -> its requests, oldest first
    requests = []
    start = exit_ = main_pid = None
    next_conn = 0
    for raw in lines:
        m = LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, t, rest = m.group(1), float(m.group(2)), m.group(3)
        if main_pid is None:
            main_pid, start = pid, t
        if rest.startswith("+++ exited") or rest.startswith("+++ killed"):
            if pid == main_pid:
                exit_ = t
            continue
        r = RESUMED.match(rest)
        if r:
            name, t0, text = pending.pop(pid, (r.group(1), t, ""))
            rest = text + r.group(2)
            if name in WRITES:  # a write happened when it was issued, a read when data came
                t = t0
        elif rest.endswith("<unfinished ...>"):
            pending[pid] = (rest.split("(", 1)[0], t, rest[: -len("<unfinished ...>")])
            continue
        c = CALL.match(rest)
        if not c:
            continue
        name, fd, args = c.group(1), int(c.group(2)), c.group(3)
        result = RESULT.search(args)
        ret = int(result.group(1)) if result else None
        if name == "connect":
            if "AF_UNIX" in args or "AF_INET" in args:
                conns[fd] = next_conn
                current[next_conn] = []
                next_conn += 1
            continue
        if name == "close":
            conns.pop(fd, None)
            continue
        if fd not in conns or ret is None or ret < 0:
            continue
        open_ = current[conns[fd]]
        if name in WRITES:
            q = REQUEST.search(args)
            if q:
                req = {"method": q.group(1), "path": short(q.group(2)), "status": None,
                       "send": t, "headers": None, "end": None, "conn": conns[fd]}
                requests.append(req)
                open_.append(req)
        elif name in READS:
            s = STATUS.match(args)
            waiting = [q for q in open_ if q["status"] is None]
            if s and waiting:
                waiting[0]["status"] = int(s.group(1))
                waiting[0]["headers"] = waiting[0]["end"] = t
            else:
                answered = [q for q in open_ if q["status"] is not None]
                if answered:
                    answered[-1]["end"] = t
    return {"start": start, "exit": exit_, "requests": requests}


def trace_text(trace):
    t0 = trace["start"]

    def ms(a, b):
        return f"{(a - b) * 1000:8.1f}" if a is not None and b is not None else "       -"

    out = ["  sent ms answer ms  done ms conn status request"]
    for r in trace["requests"]:
        out.append(f"{ms(r['send'], t0)} {ms(r['headers'], r['send'])} {ms(r['end'], r['send'])} "
                   f"{r['conn']:4} {r['status'] or '-':>6} {r['method']} {r['path']}")
    out.append(f"{ms(trace['exit'], t0)} exit")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# report

ENGINES = {
    "docker": "Docker Engine (runc)",
    "podman": "Podman's Docker-compatible service (runc)",
    "gvisor": "Docker Engine with gVisor (`--runtime runsc`)",
}
# The targets: agentkernel's median over the peer's, docker engine only.
TARGETS = {("docker", "run", 1): 1.1, ("docker", "exec", 1): 1.1}


def sh(cmd, env=None):
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20,
                             env={**os.environ, **(env or {})})
        return out.stdout.strip() or "?"
    except Exception:
        return "?"


def ms(x):
    return f"{x * 1000:.1f}"


def table(results):
    """Every command of one hyperfine run; ratios are agentkernel's median over each row's."""
    ours = results[0]["median"]
    lines = ["| command | median ms | mean ms | min ms | max ms | agentkernel ÷ this |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['command']} | {ms(r['median'])} | {ms(r['mean'])} | {ms(r['min'])} "
                     f"| {ms(r['max'])} | {ours / r['median']:.2f}× |")
    return "\n".join(lines)


def summary(work, engines):
    lines = ["| engine | agentkernel | median ms | peer (same engine, same run) | median ms | ratio | target |",
             "|---|---|---:|---|---:|---:|---|"]
    for engine in engines:
        for kind in ("run", "exec"):
            results = load(work, f"{engine}-{kind}.json")
            if not results:
                continue
            ours = results[0]
            for i, peer in enumerate(results[1:], 1):
                ratio = ours["median"] / peer["median"]
                target = TARGETS.get((engine, kind, i))
                verdict = (f"≤ {target}×: {'met' if ratio <= target else '**not met**'}"
                           if target else "informational")
                lines.append(f"| {engine} | `{kind}` | {ms(ours['median'])} | {peer['command']} "
                             f"| {ms(peer['median'])} | {ratio:.2f}× | {verdict} |")
    return "\n".join(lines)


def wrap(text, indent=""):
    return textwrap.fill(text, width=96, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def bullet(text, level=0):
    pad = "  " * level
    return textwrap.fill(text, width=96, initial_indent=pad + "- ", subsequent_indent=pad + "  ",
                         break_long_words=False, break_on_hyphens=False)


def load(work, name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["results"]


def requests_table(work, label):
    """The requests of one traced command, the most common sequence over its traced runs:
    median time sent (after the process started), answered and done (after sent)."""
    traces = []
    i = 0
    while os.path.exists(p := os.path.join(work, f"trace-{label}-{i}.json")):
        with open(p) as f:
            traces.append(json.load(f))
        i += 1
    if not traces:
        return None, 0, 0
    keys = [tuple((r["method"], r["path"]) for r in t["requests"]) for t in traces]
    common = max(set(keys), key=keys.count)
    runs = [t for t, k in zip(traces, keys) if k == common]
    med = lambda xs: statistics.median(xs) * 1000 if xs else float("nan")
    lines = ["| # | request | conn | sent at ms | answer ms | done ms |", "|---:|---|---:|---:|---:|---:|"]
    for n, (method, path) in enumerate(common):
        rs = [t["requests"][n] for t in runs]
        sent = med([r["send"] - t["start"] for r, t in zip(rs, runs)])
        answer = med([r["headers"] - r["send"] for r in rs if r["headers"]])
        done = med([r["end"] - r["send"] for r in rs if r["end"]])
        lines.append(f"| {n + 1} | `{method} {path}` | {rs[0]['conn']} | {sent:.1f} | {answer:.1f} | {done:.1f} |")
    last = med([max(r["end"] or r["send"] for r in t["requests"]) - t["start"] for t in runs])
    exit_ = med([t["exit"] - t["start"] for t in runs if t["exit"]])
    lines.append(f"| | last answer → exit: {exit_ - last:.1f} ms | | | | exit at {exit_:.1f} |")
    conns = len({r["conn"] for r in runs[0]["requests"]})
    return "\n".join(lines), len(runs), conns


def report(work, doc):
    meta = {}
    meta_path = os.path.join(work, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    engines = [e for e in ENGINES if load(work, f"{e}-run.json")]
    first = load(work, f"{engines[0]}-run.json") if engines else None
    runs = len(first[0]["times"]) if first else 0
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    flags = {}
    for e in engines:
        p = os.path.join(work, f"{e}-policy.txt")
        text = open(p).read() if os.path.exists(p) else ""
        flags[e] = re.sub(r"seccomp=\S+", "seccomp=PROFILE.json", text).split()

    method = [
        f"hyperfine `-N` (no shell), {runs} runs after {meta.get('warmup', '?')} warm-ups per "
        "command; medians. hyperfine runs all of one command's runs before the next command's, so "
        "a change in the machine's load during an invocation shifts the commands unequally. Every "
        "command is `true`, and the image, `busybox:latest` from the test registry, is already in "
        "each engine's store: what is measured is the container's creation, start, wait and "
        "removal (`run`), or one exec in a running container (`exec`).",
        "Engines: the hermetic test engines (`scripts/test-engines.sh`, "
        f"[test-engines.md](test-engines.md)): dockerd {meta.get('dockerd', '?')} (containerd, "
        f"runc), Podman {meta.get('podman', '?')} through its Docker-compatible service (runc), "
        f"and the same dockerd with runsc ({meta.get('runsc', '?')}) for gvisor, each on its own "
        "unix socket on this host.",
        "agentkernel: the release build with a fresh state directory; "
        "`run -B ENGINE --image busybox:latest --no-network -- true` (the moderate profile "
        "without network), and `exec NAME -- true` into a sandbox made with "
        "`create NAME -B ENGINE --image busybox:latest --no-network` and `start NAME`. It reaches "
        "dockerd through `DOCKER_HOST` and Podman through `CONTAINER_HOST`.",
        f"Peers: the Docker CLI {meta.get('cli', '?')} as `docker -H <the same socket>` (its "
        "containers also carry a label, so that the script can remove any it leaves):",
    ]
    peers = [
        "**defaults**: `docker run --rm --network none busybox:latest true` (gvisor: with "
        "`--runtime runsc`), the peer of the issue's target.",
        "**same policy**: also the host configuration agentkernel gives its own container, read "
        "back from the engine with `docker inspect` (flags under each engine below; "
        "`PROFILE.json` is the seccomp profile agentkernel sent inline). Podman's compatibility "
        "API reports a container's configuration in its own terms, so podman gets the docker "
        "sandbox's flags, without the seccomp profile (Podman's default profile applies): the "
        "Docker CLI sends a profile's content, which Podman 4.3 refuses "
        "([test-engines.md](test-engines.md)), and agentkernel hands Podman a path instead.",
        "**same container**: also agentkernel's executable mounted read-only at "
        "`/dev/.agentkernel-init`, running `true` under its `__container-run` role as agentkernel "
        "runs every command (gvisor: with `--seccomp deny`): the container agentkernel creates, "
        "so what differs is the client.",
        "`exec`: `docker exec CONTAINER true` into the sandbox's own container, and "
        "`docker exec CONTAINER /dev/.agentkernel-init __container-run -- true`, the command "
        "agentkernel execs there.",
    ]
    after = [
        f"Machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}; load average "
        f"{meta.get('load_before', '?')} before and {meta.get('load_after', '?')} after. Measured "
        f"{meta.get('date', time.strftime('%Y-%m-%d'))}.",
        "Ratios are agentkernel's median over the peer's. The issue's targets (docker) are "
        "`run` ≤ 1.1× `docker run --rm IMG true` and `exec` ≤ 1.1× `docker exec`; podman and "
        "gvisor are informational.",
    ]
    out = [BEGIN, "## Container backends", "",
           wrap("`run` and `exec` on the docker, podman and gvisor backends against the Docker "
                "CLI driving the same engine, side by side in one hyperfine invocation per "
                "comparison. Regenerate with `bash bench/engines.sh` (writes this section only; "
                "`bench/run.sh` writes the others)."), "",
           "### Method"]
    out += [bullet(b) for b in method] + [bullet(b, 1) for b in peers] + [bullet(b) for b in after]
    out += ["", "### Summary", "", summary(work, engines), ""]
    for engine in engines:
        out += [f"### {engine}: {ENGINES[engine]}", ""]
        if flags.get(engine):
            out += [wrap("Same-policy flags: `" + " ".join(flags[engine]) + "`."), ""]
        for kind in ("run", "exec"):
            results = load(work, f"{engine}-{kind}.json")
            if results:
                out += [f"`{kind}`:", "", table(results), ""]
    intro = False
    for engine in engines:
        traced = [(f"{engine}-{label}", title) for label, title in [
            ("ak-run", f"`agentkernel run -B {engine} --image busybox:latest --no-network -- true`"),
            ("docker-run", "`docker run --rm "
             + ("--runtime runsc " if engine == "gvisor" else "")
             + "--network none busybox:latest true`"),
            ("ak-exec", "`agentkernel exec NAME -- true`"),
            ("docker-exec", "`docker exec CONTAINER true`")]
            if os.path.exists(os.path.join(work, f"trace-{engine}-{label}-0.json"))]
        if not traced:
            continue
        if not intro:
            intro = True
            out += ["### Engine API requests",
                    wrap("Each client under `strace -f -ttt` (`bench/engines.py requests` reads "
                         f"the trace), {meta.get('trace_runs', '?')} runs each, medians over the "
                         "runs that made the most common sequence. strace slows every system call, "
                         "so compare these times with each other, not with the tables above. *sent "
                         "at*: after the process started (execve); *answer*: until the response's "
                         "status line; *done*: until the last byte read for it (a streamed body or "
                         "an upgraded stream: attach, exec start, wait); *conn*: the connection it "
                         "went on (a new number for every connect); the last row: from the last "
                         "byte read to the process's exit."), ""]
        out += [f"#### {engine}", ""]
        for label, title in traced:
            text, n, conns = requests_table(work, label)
            out += [f"{title} ({n} runs, {conns} connections):", "", text, ""]
    out.append(END)
    section = "\n".join(out) + "\n"

    old = open(doc).read() if os.path.exists(doc) else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + section + (("\n" + tail) if tail else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + section
    tmp = doc + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, doc)


def main(argv):
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "peer-flags":
        print("\n".join(peer_flags(args[0], args[1], seccomp="--no-seccomp" not in args)))
    elif cmd == "mount":
        print("\n".join(mount_flag(args[0])))
    elif cmd == "requests":
        with open(args[-1]) as f:
            trace = parse_trace(f)
        print(trace_text(trace) if "--text" in args else json.dumps(trace, indent=1))
    elif cmd == "report":
        report(args[0], args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
