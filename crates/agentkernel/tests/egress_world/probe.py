# Probes run inside a sandbox by tests/egress.rs (python3 -c): argv[1] is a JSON list of
# operations; one JSON result per line on stdout.
#   ["get", URL, {headers}, CAFILE or null] -> {"status": N, "body": TEXT}  (status 0: no HTTP)
#   ["dns", NAME]                           -> {"addrs": [...]} or {"error": TEXT}
#   ["raw", IP, PORT]                       -> {"data": TEXT} or {"error": TEXT}
import json, socket, ssl, sys, urllib.error, urllib.request

def get(url, headers, cafile):
    ctx = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            return {"status": r.status, "body": r.read().decode(errors="replace")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode(errors="replace")}
    except Exception as e:
        return {"status": 0, "body": f"{type(e).__name__}: {e}"}

def dns(name):
    try:
        return {"addrs": sorted({a[4][0] for a in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}

def raw(ip, port):
    try:
        s = socket.create_connection((ip, port), timeout=15)
        s.settimeout(15)
        data = s.recv(100)
        return {"data": data.decode(errors="replace")}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}

for op in json.loads(sys.argv[1]):
    if op[0] == "get":
        r = get(op[1], op[2] if len(op) > 2 else {}, op[3] if len(op) > 3 else None)
    elif op[0] == "dns":
        r = dns(op[1])
    else:
        r = raw(op[1], op[2])
    print(json.dumps(r), flush=True)
