"""Writes bench/egress.sh's results as the "Egress" section of docs/benchmarks.md (between its
markers), keeping the rest of the file as it is.

    python3 bench/egress_report.py WORK DIRECT_S PROXIED_S CONCURRENT_OK RSS_KB PSS_KB PRIVATE_DIRTY_KB
"""
import glob, json, os, platform, statistics, sys

work, direct, proxied, concurrent, rss, pss, private = sys.argv[1:8]
doc = "docs/benchmarks.md"
BEGIN = "<!-- egress:begin (bench/egress.sh writes this section) -->"
END = "<!-- egress:end -->"

pooled = {}
for path in sorted(glob.glob(os.path.join(work, "egress-run-*.json"))):
    for r in json.load(open(path))["results"]:
        pooled.setdefault(r["command"], []).extend(r["times"])
rows = []
base = statistics.median(pooled["agentkernel run --no-network"])
for command, times in pooled.items():
    med = statistics.median(times)
    rows.append(f"| {command} | {med * 1000:.2f} | {statistics.fmean(times) * 1000:.2f} | {min(times) * 1000:.2f} | {max(times) * 1000:.2f} | {med / base:.2f}× |")
direct, proxied = float(direct), float(proxied)
gib = 1024 ** 3
section = f"""{BEGIN}
## Egress (the proxy every networked sandbox goes through)
`bash bench/egress.sh`, {platform.node()}, {len(next(iter(pooled.values())))} runs per command in
rounds. "The internet" is a network namespace the script makes, joined by a veth pair with no
uplink; names resolve through `AGENTKERNEL_RESOLVE`.

Start-up of `run … -- true` on a busybox root, by network mode (target: ≤ 1.5× `--no-network`):

| command | median ms | mean ms | min ms | max ms | ratio to --no-network |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

| measure | result | target |
|---|---|---|
| 1 GiB download, host's curl direct | {direct:.2f} s ({gib / direct / 1e6:.0f} MB/s) | |
| the same through the proxy (`run --image host --allow-host`) | {proxied:.2f} s ({gib / proxied / 1e6:.0f} MB/s): {direct / proxied * 100:.0f}% of direct | ≥ 80% |
| 200 concurrent connections through one proxy (python threads, `urllib`) | {concurrent.strip()} of 200 answered | 200 |
| what one more idle networked sandbox adds (its proxy process, mean of 10) | PSS {int(pss) / 1024:.2f} MiB (private dirty {int(private) / 1024:.2f} MiB; RSS {int(rss) / 1024:.1f} MiB counts the shared executable whole) | ≤ 2 MiB |

A throwaway `run` has no proxy process: its proxy is a thread of the CLI for the command's
lifetime. The direct download includes no proxy hop; the proxied one includes the sandbox's
redirect and a second TCP connection on the host, so it is the fair "with the proxy versus
without" comparison for the same client and server.
{END}
"""
old = open(doc).read() if os.path.exists(doc) else ""
start, end = old.find("<!-- egress:begin"), old.find(END)
if start >= 0 and end > start:
    new = old[:start] + section + old[end + len(END) + 1:]
else:
    new = old.rstrip("\n") + "\n\n" + section
with open(doc + ".tmp", "w") as f:
    f.write(new)
os.replace(doc + ".tmp", doc)
print(section)
