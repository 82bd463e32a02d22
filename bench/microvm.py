"""Micro-VM benchmarks (docs/microvm.md), measured in one run; results in the "Micro-VM"
section of docs/benchmarks.md (between its markers, the rest of the file kept).

    bash bench/microvm.sh              # builds the release binaries, then runs this

Targets (issue 18), medians, here under TCG: cold boot to first output <= 900 ms; exec round
trip in a running VM <= 10 ms; PSS per idle VM <= 30 MiB. The floor beside them: the same
kernel booted by bare QEMU (same machine type and command line) to a static /init that prints
one line, with no agentkernel, no disks and no agent.
"""
import os, platform, shutil, statistics, subprocess, sys, tempfile, time

AK = sys.argv[1]
RUNS = int(os.environ.get("RUNS", "10"))
doc = "docs/benchmarks.md"
BEGIN = "<!-- microvm:begin (bench/microvm.sh writes this section) -->"
END = "<!-- microvm:end -->"
home = tempfile.mkdtemp(prefix="ak-vmbench-")
env = dict(os.environ, AGENTKERNEL_HOME=home, AGENTKERNEL_NO_DAEMON="1")
IMAGE = ["-B", "microvm", "--image", "busybox:latest", "--no-network"]
KERNEL = os.environ["AGENTKERNEL_KERNEL"]


def ak(*args, check=True):
    r = subprocess.run([AK, *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"agentkernel {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


def first_output(argv):
    """Seconds from spawning `argv` to its first byte on stdout, and to its exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.read(1)
    first = time.perf_counter() - t0
    p.stdout.read()
    p.wait()
    return first, time.perf_counter() - t0


def tsc_khz():
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    return None


def newc(entries):
    """A newc cpio archive of (name, mode, data); /dev/console is char 5:1."""
    out = b""
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        rdev = (5, 1) if name == "dev/console" else (0, 0)
        n = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(n), 0]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        out += hdr + n + b"\0" * ((4 - (len(hdr) + len(n)) % 4) % 4)
        out += data + b"\0" * ((4 - len(data) % 4) % 4)
    return out


def bare_qemu_boot(tmp):
    """The floor: bare QEMU, the same kernel and command line, a static /init marker."""
    src = os.path.join(tmp, "init.c")
    with open(src, "w") as f:
        f.write('#include <stdio.h>\n#include <unistd.h>\n#include <sys/reboot.h>\n'
                'int main(){puts("AK-BENCH-MARKER");fflush(stdout);reboot(RB_AUTOBOOT);return 0;}\n')
    subprocess.run(["gcc", "-static", "-Os", "-o", os.path.join(tmp, "init"), src], check=True)
    cpio = os.path.join(tmp, "initrd.cpio")
    with open(cpio, "wb") as f:
        f.write(newc([("dev", 0o040755, b""), ("dev/console", 0o020600, b""),
                      ("init", 0o100755, open(os.path.join(tmp, "init"), "rb").read())]))
    khz = tsc_khz()
    append = "console=ttyS0 reboot=t panic=-1 quiet" + (f" tsc_early_khz={khz} tsc=reliable" if khz else "")
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "tcg", "-m", "576", "-smp", "1",
            "-no-reboot", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-append", append, "-kernel", KERNEL, "-initrd", cpio]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = None
    for line in p.stdout:
        if "AK-BENCH-MARKER" in line and seen is None:
            seen = time.perf_counter() - t0
    p.wait()
    return seen


def pss_kib(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def vmm_pids():
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"qemu-system-x86_64") and home.encode() in b" ".join(cmd):
            out.append(int(pid))
    return out


tmp = tempfile.mkdtemp(prefix="ak-vmbench-floor-")
try:
    # Warm: the image disk, the initramfs, the accelerator probe and the template are made once.
    ak("run", *IMAGE, "--", "true")
    cold_first, cold_total, clone_first, clone_total, floor = [], [], [], [], []
    cold = ["env", "AGENTKERNEL_VM_CLONES=0", AK, "run", *IMAGE, "--", "echo", "hi"]
    for _ in range(RUNS):
        f, t = first_output(cold)
        cold_first.append(f)
        cold_total.append(t)
        f, t = first_output([AK, "run", *IMAGE, "--", "echo", "hi"])
        clone_first.append(f)
        clone_total.append(t)
        floor.append(bare_qemu_boot(tmp))
    ak("create", "v", *IMAGE)
    ak("start", "v")
    ak("create", "n", "-B", "native", "--image", "busybox:latest", "--no-network")
    ak("start", "n")
    rtt, native_rtt = [], []
    for _ in range(RUNS * 3):
        t0 = time.perf_counter()
        ak("exec", "v", "--", "true")
        rtt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ak("exec", "n", "--", "true")
        native_rtt.append(time.perf_counter() - t0)
    # The guest's own share of a round trip: fork and exec of `true` inside it, timed there.
    inside = ak("exec", "v", "--", "sh", "-c",
                "s=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done; "
                "e=$(cut -d' ' -f1 /proc/uptime); echo $s $e").stdout.split()
    guest_exec_ms = (float(inside[1]) - float(inside[0])) * 1000 / 20
    ak("remove", "v")
    # Memory of idle clones: five throwaway VMs idling in `sleep`, after a second to settle.
    idle = []
    for i in range(5):
        p = subprocess.Popen([AK, "run", *IMAGE, "--", "sh", "-c", "echo up; sleep 120"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdout.readline()
        idle.append(p)
    time.sleep(2)
    pss = [pss_kib(p) for p in vmm_pids()]
    for p in idle:
        p.kill()
        p.wait()
finally:
    for name in ["v", "n"]:
        ak("remove", name, check=False)
    ak("gc", check=False)
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)

med = statistics.median
ms = lambda s: f"{s * 1000:.0f}"
rows = [
    ("cold boot to first output: `AGENTKERNEL_VM_CLONES=0 run -B microvm … -- echo hi`, spawn to first stdout byte", ms(med(cold_first)), "≤ 900"),
    ("… the whole cold `run` (boot, command, teardown)", ms(med(cold_total)), ""),
    ("floor: bare QEMU, same kernel and machine, static /init printing one line", ms(med([f for f in floor if f])), ""),
    ("clone restore to first command: `run -B microvm … -- echo hi` (a clone of the template), spawn to first stdout byte", ms(med(clone_first)), "≤ 150"),
    ("… the whole clone `run`", ms(med(clone_total)), ""),
    ("exec round trip in a running VM: `exec v -- true` (a CLI process each)", f"{med(rtt) * 1000:.1f}", "≤ 10"),
    ("… of which fork and exec of `true` inside the guest (timed there, mean of 20)", f"{guest_exec_ms:.1f}", ""),
    ("peer: the same `exec … true` into a native sandbox", f"{med(native_rtt) * 1000:.1f}", ""),
    (f"PSS per idle clone (QEMU of a throwaway VM running `sleep`, mean of {len(pss)})", f"{statistics.mean(pss) / 1024:.1f} MiB" if pss else "n/a", "≤ 30 MiB"),
]
table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
section = f"""{BEGIN}
## Micro-VM
`bash bench/microvm.sh`, {platform.node()}, QEMU `-M microvm` under TCG (this machine's /dev/kvm
boots no stock kernel), release build, medians of {RUNS} runs ({RUNS * 3} execs), all in one run.

| measure | median ms | target |
|---|---:|---|
{table}
{END}
"""
old = open(doc).read() if os.path.exists(doc) else ""
start, end = old.find("<!-- microvm:begin"), old.find(END)
if start >= 0 and end > start:
    new = old[:start] + section + old[end + len(END) + 1:]
else:
    new = old.rstrip("\n") + "\n\n" + section
with open(doc + ".tmp", "w") as f:
    f.write(new)
os.replace(doc + ".tmp", doc)
print(section)
