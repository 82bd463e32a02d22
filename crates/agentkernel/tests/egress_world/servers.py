"""The world of tests/egress.rs: servers in a network namespace with no uplink.

argv[1] is a JSON object: {"dir": DIR, "trusted_ip": IP, "untrusted_ip": IP, "ipv6": IP6}. DIR holds the
certificates (trusted.pem/key, untrusted.pem/key) and the wheel; every request is appended to
DIR/<tag>.log as one JSON line. Prints "ready" once every socket listens.
"""
import hashlib
import http.server
import json
import os
import socket
import ssl
import sys
import threading

cfg = json.loads(sys.argv[1])
DIR = cfg["dir"]
WHEEL = "akdemo-0.1-py3-none-any.whl"
with open(os.path.join(DIR, WHEEL), "rb") as f:
    WHEEL_BYTES = f.read()
WHEEL_SHA = hashlib.sha256(WHEEL_BYTES).hexdigest()
NPM_DOC = {
    "name": "akdemo",
    "description": "agentkernel npm stub",
    "dist-tags": {"latest": "1.0.0"},
    "versions": {
        "1.0.0": {
            "name": "akdemo",
            "version": "1.0.0",
            "description": "agentkernel npm stub",
            "dist": {
                "tarball": "https://registry.npm.test/akdemo/-/akdemo-1.0.0.tgz",
                "shasum": "0000000000000000000000000000000000000000",
            },
        }
    },
    "time": {"1.0.0": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z"},
}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body, ctype):
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        headers = {k.lower(): v for k, v in self.headers.items()}
        local = self.connection.getsockname()[0]
        entry = {"server": self.server.tag, "local": local, "path": self.path, "headers": headers}
        with open(os.path.join(DIR, self.server.tag + ".log"), "a") as f:
            f.write(json.dumps(entry) + "\n")
        host = headers.get("host", "").split(":")[0]
        if self.path.rstrip("/") == "/simple/akdemo":
            link = f'<a href="/files/{WHEEL}#sha256={WHEEL_SHA}">{WHEEL}</a>'
            self.reply(f"<html><body>{link}</body></html>".encode(), "text/html")
        elif self.path == "/files/" + WHEEL:
            self.reply(WHEEL_BYTES, "application/octet-stream")
        elif host == "registry.npm.test" and self.path.strip("/") == "akdemo":
            self.reply(json.dumps(NPM_DOC).encode(), "application/json")
        else:
            self.reply(json.dumps(entry).encode(), "application/json")


class V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve(tag, addr, port, cert=None):
    cls = V6Server if ":" in addr else http.server.ThreadingHTTPServer
    srv = cls((addr, port), Handler)
    srv.daemon_threads = True
    srv.tag = tag
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(DIR, cert + ".pem"), os.path.join(DIR, cert + ".key"))
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def raw(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)

    def loop():
        while True:
            c, _ = s.accept()
            with open(os.path.join(DIR, "raw.log"), "a") as f:
                f.write("connection\n")
            try:
                c.sendall(b"RAW-BANNER\n")
            finally:
                c.close()

    threading.Thread(target=loop, daemon=True).start()


serve("plain", "0.0.0.0", 80)
serve("plain", cfg["ipv6"], 80)
serve("trusted", cfg["trusted_ip"], 443, "trusted")
serve("untrusted", cfg["untrusted_ip"], 443, "untrusted")
raw(7000)
print("ready", flush=True)
threading.Event().wait()
