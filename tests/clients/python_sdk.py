"""Drives the published Python SDK (PyPI agentkernel-sdk), unmodified, against our server.

The server's address and key come from AGENTKERNEL_BASE_URL and AGENTKERNEL_API_KEY, as the SDK
reads them. Every check asserts what a user of the SDK relies on; the first failure ends the
script with a traceback (exit status 1). Run by crates/agentkernel/tests/clients.rs.
"""

import base64
import os
import time

from agentkernel import AgentKernel
from agentkernel.errors import AgentKernelError, NotFoundError, ValidationError


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok: {name}", flush=True)


def main():
    with AgentKernel() as client:
        check("health", client.health() == "ok")

        # The SDK's RunOutput model keeps `output` only (our exit_code/stdout/stderr additions
        # are dropped by pydantic); the exit code is checked through run_stream below.
        out = client.run(["sh", "-c", "echo hello; echo oops >&2; exit 3"], image="host")
        check("run output", "hello" in out.output and "oops" in out.output, out.output)
        done = list(client.run_stream(["sh", "-c", "exit 3"], image="host"))[-1]
        check("exit code of a failing command", done.data.get("exit_code") == 3, done)

        events = list(
            client.run_stream(["sh", "-c", "echo one; sleep 1; echo two"], image="host")
        )
        types = [e.type for e in events]
        outputs = "".join(e.data.get("data", "") for e in events if e.type == "output")
        check("run_stream ends with done", types[-1] == "done", types)
        check("run_stream exit code", events[-1].data.get("exit_code") == 0, events[-1].data)
        check("run_stream output in order", outputs == "one\ntwo\n", repr(outputs))
        check("run_stream started", "started" in types, types)

        batch = client.batch_run([["echo", "a"], ["sh", "-c", "echo b; exit 1"]])
        check("batch order", [r.output for r in batch.results] == ["a\n", "b\n"], batch)

        backends = client.get_backends()
        native = [b for b in backends.backends if b.backend == "native"]
        check("backends native usable", native and native[0].usable, backends)

        name = f"py-sdk-{int(time.time() * 1000) % 10**8}"
        info = client.create_sandbox(name, image="host", memory_mb=256)
        check("create running", info.status == "running" and info.name == name, info)
        check("get", client.get_sandbox(name).name == name)
        check("get by uuid", client.get_sandbox_by_uuid(info.uuid).name == name)
        check("list", name in [s.name for s in client.list_sandboxes()])

        r = client.exec_in_sandbox(name, ["sh", "-c", "echo $A; pwd"], env=["A=42"], workdir="/tmp")
        check("exec env and workdir", r.output == "42\n/tmp\n", r.output)

        client.write_file(name, "notes/hello.txt", "hi there")
        f = client.read_file(name, "notes/hello.txt")
        check("file utf8 round trip", f.content == "hi there" and f.encoding == "utf8", f)
        blob = bytes(range(256))
        client.write_file(name, "bin.dat", base64.b64encode(blob).decode(), encoding="base64")
        f = client.read_file(name, "bin.dat")
        check(
            "file base64 round trip",
            f.encoding == "base64" and base64.b64decode(f.content) == blob and f.size == 256,
            f,
        )
        w = client.write_files(name, {"a.txt": "A", "d/b.txt": "B"})
        check("write_files", w.written == 2, w)
        r = client.exec_in_sandbox(name, ["cat", "a.txt", "d/b.txt"])
        check("written files visible to exec", r.output == "AB", r.output)
        client.delete_file(name, "a.txt")
        try:
            client.read_file(name, "a.txt")
            check("deleted file gone", False, "read succeeded")
        except NotFoundError:
            check("deleted file gone", True)
        try:
            client.read_file(name, "../../../../etc/shadow")
            check("path confinement", False, "read outside the sandbox succeeded")
        except (NotFoundError, ValidationError, AgentKernelError):
            check("path confinement", True)

        d = client.exec_detached(name, ["sh", "-c", "echo bg; echo bgerr >&2; exit 5"])
        check("detached started", d.status in ("running", "failed") and d.pid > 0, d)
        deadline = time.time() + 20
        while client.detached_status(name, d.id).status == "running" and time.time() < deadline:
            time.sleep(0.1)
        st = client.detached_status(name, d.id)
        check("detached exit code", st.status == "failed" and st.exit_code == 5, st)
        logs = client.detached_logs(name, d.id)
        check("detached logs", logs.stdout == "bg\n" and logs.stderr == "bgerr\n", logs)
        logs = client.detached_logs(name, d.id, stream="stderr")
        check("detached stderr only", logs.stderr == "bgerr\n" and logs.stdout is None, logs)
        long = client.exec_detached(name, ["sleep", "30"])
        check("detached list", {d.id, long.id} <= {c.id for c in client.detached_list(name)})
        client.detached_kill(name, long.id)
        st = client.detached_status(name, long.id)
        check("detached kill", st.status == "failed" and st.exit_code == 137, st)

        logs = client.get_sandbox_logs(name)
        check("sandbox logs", any(e.get("event") == "sandbox_created" for e in logs), logs[:3])

        check("extend without a ttl", client.extend_ttl(name, by="30m") is None)
        ttl_box = os.environ["AK_TTL_SANDBOX"]  # made by the CLI with --ttl 1h
        first = client.extend_ttl(ttl_box, by="2h")
        second = client.extend_ttl(ttl_box, by="1h")
        check("extend a ttl", first and second and second > first, (first, second))
        try:
            client.extend_ttl(ttl_box, by="soon")
            check("bad duration refused", False, "accepted")
        except ValidationError:
            check("bad duration refused", True)

        snap = client.take_snapshot(name, snapshot_name=f"{name}-snap")
        check("take_snapshot", snap.name == f"{name}-snap" and snap.sandbox == name
              and snap.backend == "native" and snap.created_at, snap)
        check("list_snapshots", snap.name in [s.name for s in client.list_snapshots()])
        check("get_snapshot", client.get_snapshot(snap.name).sandbox == name)
        client.write_file(name, "notes/hello.txt", "changed after the snapshot")
        restored = client.restore_snapshot(snap.name)
        check("restore_snapshot makes a running sandbox",
              restored.name == f"{name}-restored" and restored.status == "running", restored)
        f = client.read_file(restored.name, "notes/hello.txt")
        check("the restored sandbox has the files as of the snapshot", f.content == "hi there", f)
        f = client.read_file(name, "notes/hello.txt")
        check("the source keeps its own", f.content == "changed after the snapshot", f)
        try:
            client.delete_snapshot(snap.name)
            check("a snapshot in use is not deleted", False, "deleted")
        except AgentKernelError as e:
            check("a snapshot in use is not deleted", "in use" in str(e), e)
        client.remove_sandbox(restored.name)
        client.delete_snapshot(snap.name)
        try:
            client.get_snapshot(snap.name)
            check("delete_snapshot", False, "still there")
        except NotFoundError:
            check("delete_snapshot", True)
        client.remove_sandbox(name)
        try:
            client.get_sandbox(name)
            check("removed", False, "still there")
        except NotFoundError:
            check("removed", True)

        with client.sandbox(f"{name}-s", image="host") as sb:
            check("session run", sb.run(["echo", "in session"]).output == "in session\n")
        check("session removed", f"{name}-s" not in [s.name for s in client.list_sandboxes()])

        try:
            client.create_sandbox("../escape", image="host")
            check("bad name refused", False, "created")
        except ValidationError:
            check("bad name refused", True)


if __name__ == "__main__":
    main()
