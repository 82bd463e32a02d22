"""Snapshot benchmarks (docs/snapshots.md), measured in one run; results in the "Snapshots"
section of docs/benchmarks.md (between its markers, the rest of the file kept).

    bash bench/snapshots.sh            # builds the release binary, then runs this (~3 min)

Targets (issue 17), medians: `snapshot take` of a sandbox that wrote 100 MB in 10,000 files
<= 1 s with its processes frozen <= 50 ms; `sandbox fork --count 100` of it <= 2 s in all; the
first `exec` in a restored or forked sandbox <= 1.2x the first `exec` in a fresh one.
"""
import json, os, platform, shutil, statistics, subprocess, sys, tempfile, time

AK = sys.argv[1]
RUNS = int(os.environ.get("RUNS", "5"))
BACKEND = os.environ.get("BACKEND", "native")
doc = "docs/benchmarks.md"
BEGIN = "<!-- snapshots:begin (bench/snapshots.sh writes this section) -->"
END = "<!-- snapshots:end -->"
home = tempfile.mkdtemp(prefix="ak-snapbench-")
env = dict(os.environ, AGENTKERNEL_HOME=home, AGENTKERNEL_NO_DAEMON="1")
IMAGE = ["--image", "busybox:latest", "--no-network", "-B", BACKEND]


def ak(*args, check=True):
    r = subprocess.run([AK, *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"agentkernel {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


def timed(*args):
    t = time.perf_counter()
    r = ak(*args)
    return time.perf_counter() - t, r


def med(xs):
    return statistics.median(xs)


def source_upper():
    """The upper directory of the native sandbox `src`, through the descriptor its init keeps
    (the bench's data marks it: /data/d99/f99)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fds = f"/proc/{pid}/fd"
        try:
            entries = os.listdir(fds)
        except OSError:
            continue
        for fd in entries:
            upper = f"{fds}/{fd}/upper"
            if os.path.exists(f"{upper}/data/d99/f99") and os.path.isdir(f"{fds}/{fd}/work"):
                return upper
    return None


try:
    ak("create", "src", *IMAGE)
    ak("start", "src")
    # 100 MB in 10,000 files of 10 KB, and a process that keeps writing while snapshots are taken.
    ak("exec", "src", "--", "sh", "-c",
       "mkdir -p /data && cd /data && i=0; while [ $i -lt 100 ]; do mkdir d$i; j=0; "
       "while [ $j -lt 100 ]; do dd if=/dev/zero of=d$i/f$j bs=10k count=1 2>/dev/null; j=$((j+1)); done; i=$((i+1)); done")
    ak("exec", "-d", "src", "--", "sh", "-c", "while true; do date >> /data/log; usleep 1000; done")
    take, frozen, peer = [], [], []
    upper = source_upper() if BACKEND == "native" else None
    for i in range(RUNS):
        if upper:
            # The peer doing the same work: coreutils copying the same files from the same
            # place (the sandbox's upper directory), in the same run, interleaved.
            dst = os.path.join(home, "cp-peer")
            subprocess.run(["sync"])
            t0 = time.perf_counter()
            subprocess.run(["cp", "-a", upper, dst], check=True)
            peer.append(time.perf_counter() - t0)
            shutil.rmtree(dst)
            subprocess.run(["sync"])
        t, r = timed("snapshot", "take", "src", "--name", f"t{i}", "--json")
        meta = json.loads(r.stdout)
        take.append(t)
        frozen.append(meta["frozen_ms"] / 1000)
        size = meta["size_bytes"]
        if i < RUNS - 1:
            ak("snapshot", "delete", f"t{i}")
    keep = f"t{RUNS - 1}"

    fork = []
    for i in range(max(1, RUNS // 2)):
        t, _ = timed("sandbox", "fork", "src", "--count", "100", "--name-prefix", f"k{i}")
        fork.append(t)
        for n in range(1, 101):
            ak("remove", f"k{i}-{n}")

    def first_exec(make):
        xs = []
        for i in range(RUNS * 2):
            name = make(i)
            t, _ = timed("exec", name, "--", "true")
            xs.append(t)
            ak("remove", name)
        return xs

    def fresh(i):
        ak("create", f"fresh{i}", *IMAGE)
        ak("start", f"fresh{i}")
        return f"fresh{i}"

    def restored(i):
        ak("snapshot", "restore", keep, "--as", f"rest{i}")
        return f"rest{i}"

    def forked(i):
        ak("sandbox", "fork", "src", "--name-prefix", f"fk{i}")
        return f"fk{i}-1"

    first_fresh = first_exec(fresh)
    first_restored = first_exec(restored)
    first_forked = first_exec(forked)
finally:
    ak("sandbox", "clean", "--all", check=False)
    shutil.rmtree(home, ignore_errors=True)

ms = lambda s: f"{s * 1000:.1f}"
rows = [
    ("`snapshot take` of a sandbox that wrote 100 MB in 10,000 files (a writer running)", ms(med(take)), "≤ 1000"),
    ("… its processes frozen (`frozen_ms`)", ms(med(frozen)), "≤ 50"),
    *([("peer: `cp -a` of the same files from the same upper directory (after `sync`)", ms(med(peer)), "")] if peer else []),
    ("`sandbox fork --count 100` of it, copies started", ms(med(fork)), "≤ 2000"),
    ("first `exec … true` in a fresh sandbox (`create` + `start`)", ms(med(first_fresh)), ""),
    ("first `exec … true` in a restored sandbox", f"{ms(med(first_restored))} ({med(first_restored) / med(first_fresh):.2f}×)", "≤ 1.2×"),
    ("first `exec … true` in a forked sandbox", f"{ms(med(first_forked))} ({med(first_forked) / med(first_fresh):.2f}×)", "≤ 1.2×"),
]
table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
where = os.environ.get("BENCH_FS_NOTE", "the state directory in $TMPDIR on the host's disk")
section = f"""{BEGIN}
## Snapshots
`bash bench/snapshots.sh`, {platform.node()}, {where}, backend {BACKEND}, medians of {RUNS} takes,
{max(1, RUNS // 2)} forks of 100 and {RUNS * 2} first execs each, all in one run. The snapshot
holds {size / 1e6:.0f} MB on disk (what the sandbox wrote, with its file-system overhead).

| measure | median ms | target |
|---|---:|---|
{table}
{END}
"""
old = open(doc).read() if os.path.exists(doc) else ""
start, end = old.find("<!-- snapshots:begin"), old.find(END)
if start >= 0 and end > start:
    new = old[:start] + section + old[end + len(END) + 1:]
else:
    new = old.rstrip("\n") + "\n\n" + section
with open(doc + ".tmp", "w") as f:
    f.write(new)
os.replace(doc + ".tmp", doc)
print(section)
