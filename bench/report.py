"""Formats hyperfine JSON exports from bench/run.sh as docs/benchmarks.md."""
import json, os, platform, subprocess, sys

work = sys.argv[1]

def load(name):
    with open(os.path.join(work, name)) as f:
        return json.load(f)["results"]

def ms(x):
    return f"{x * 1000:.2f}"

def table(results, baseline_index):
    base = results[baseline_index]["median"]
    lines = ["| command | median ms | mean ms | min ms | max ms | ratio to baseline |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['command']} | {ms(r['median'])} | {ms(r['mean'])} | {ms(r['min'])} | {ms(r['max'])} | {r['median'] / base:.2f}× |")
    return "\n".join(lines)

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"

run, net, exe, cli = load("run.json"), load("net.json"), load("exec.json"), load("cli.json")
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
print(f"""# Benchmarks

Start-up cost of the native backend against the tools people use for the same job, measured
side by side in one run. Regenerate with `bash bench/run.sh` (writes this file).

## Method
- hyperfine `-N` (no shell), {run[0]['times'].__len__()} runs after 10 warm-ups per command; medians.
- Every tool gets the same busybox-static root directory; every command is `true`, so what is
  measured is the sandbox's creation and teardown.
- agentkernel is the release build; each run is a fresh CLI process (start-up, state, sandbox).
- Machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}.

## `run`: a new sandbox per command (no network)
Baseline: `bwrap --unshare-all --ro-bind DIR / true`. agentkernel additionally mounts an overlay
with a private tmpfs upper layer, a fresh /proc, /sys, /dev and /tmp, creates cgroups with
memory/pids limits, applies seccomp, Landlock and capability drops, and removes the cgroups
afterwards.

{table(run, 2)}

## `run` with outbound network
agentkernel's moderate profile starts pasta (user-mode networking) per sandbox; bwrap here
shares the host's network namespace, which isolates nothing.

{table(net, 1)}

## `exec` into a running sandbox
Baseline: `nsenter -t PID -a true` into the same sandbox's init.

{table(exe, 1)}

## What the CLI itself costs

{table(cli, 2)}
""")
