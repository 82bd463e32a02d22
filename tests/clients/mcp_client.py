"""The official MCP Python SDK (PyPI `mcp`) against agentkernel's MCP server, over stdio
(`agentkernel mcp server`) or streamable HTTP (`/mcp` on `agentkernel serve`).

    mcp_client.py stdio AGENTKERNEL_BIN
    mcp_client.py http  BASE_URL          (AGENTKERNEL_API_KEY is sent as a Bearer key)

Prints one "ok: ..." line per check; exits non-zero on the first failure.
"""

import asyncio
import base64
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

TOOLS = {
    # name: (readOnlyHint, destructiveHint, idempotentHint)
    "sandbox_run": (False, False, False),
    "sandbox_create": (False, False, False),
    "sandbox_exec": (False, False, False),
    "sandbox_list": (True, False, True),
    "sandbox_remove": (False, True, False),
    "sandbox_file_write": (False, True, True),
    "sandbox_file_read": (True, False, True),
    "sandbox_start": (False, False, True),
    "sandbox_stop": (False, False, True),
    "sandbox_snapshot": (False, False, False),
    "sandbox_restore": (False, False, False),
}


def check(what, cond, detail=""):
    if not cond:
        raise AssertionError(f"{what}: {detail}")
    print(f"ok: {what}")


def text(res):
    return "".join(c.text for c in res.content if getattr(c, "type", "") == "text")


async def names(s):
    res = await s.call_tool("sandbox_list", {})
    return [b["name"] for b in res.structuredContent["sandboxes"]]


async def refused(s, what, tool, args, needle):
    before = await names(s)
    res = await s.call_tool(tool, args)
    check(f"{what} is refused", res.isError, res)
    check(f"{what}: the message says why", needle in text(res), text(res))
    check(f"{what}: nothing made", await names(s) == before, await names(s))


async def drive(s, transport):
    init = await s.initialize()
    check("initialize names the server", init.serverInfo.name == "agentkernel", init.serverInfo)

    tools = {t.name: t for t in (await s.list_tools()).tools}
    check("the nine tools are listed", set(tools) == set(TOOLS), sorted(tools))
    for name, (ro, destructive, idempotent) in TOOLS.items():
        a = tools[name].annotations
        check(
            f"{name} annotations match the risk table",
            (a.readOnlyHint, a.destructiveHint, a.idempotentHint) == (ro, destructive, idempotent)
            and a.title,
            a,
        )
    run_props = tools["sandbox_run"].inputSchema["properties"]
    for p in ["command", "profile", "compatibility_mode", "network", "cwd", "env", "timeout_ms", "image"]:
        check(f"sandbox_run takes {p}", p in run_props, sorted(run_props))
    check("sandbox_run requires command", tools["sandbox_run"].inputSchema.get("required") == ["command"],
          tools["sandbox_run"].inputSchema)

    base = {"image": "host", "network": False}

    # run: exit code, stdout and stderr, env
    res = await s.call_tool("sandbox_run", {**base, "command": ["sh", "-c", "echo out $GREETING; echo err >&2"],
                                            "env": {"GREETING": "hello"}, "profile": "moderate",
                                            "compatibility_mode": "native"})
    sc = res.structuredContent
    check("run succeeds", not res.isError and sc["exit_code"] == 0, res)
    check("run: stdout and stderr apart", sc["stdout"] == "out hello\n" and sc["stderr"] == "err\n", sc)
    check("run: readable text", "out hello" in text(res) and "exit code: 0" in text(res), text(res))

    res = await s.call_tool("sandbox_run", {**base, "command": ["sh", "-c", "echo bad >&2; exit 3"]})
    check("a failed command is isError with its exit code",
          res.isError and res.structuredContent["exit_code"] == 3 and res.structuredContent["stderr"] == "bad\n", res)

    res = await s.call_tool("sandbox_run", {**base, "command": ["cat", "/proc/net/dev"]})
    check("network false: only loopback", not res.isError and "eth" not in res.structuredContent["stdout"]
          and "lo:" in res.structuredContent["stdout"], res)

    res = await s.call_tool("sandbox_run", {**base, "command": ["sleep", "5"], "timeout_ms": 500})
    check("a timeout kills the command and says so",
          res.isError and res.structuredContent["timed_out"] and "was killed" in text(res), res)

    res = await s.call_tool("sandbox_run", {**base, "command": ["no-such-command-xyz"]})
    check("a missing command is exit 127", res.isError and res.structuredContent["exit_code"] == 127, res)

    await refused(s, "compatibility_mode claud", "sandbox_run",
                  {**base, "command": ["true"], "compatibility_mode": "claud"}, "unknown compatibility mode")
    await refused(s, "image --volume=/:/host", "sandbox_run",
                  {"command": ["true"], "image": "--volume=/:/host", "network": False}, "--volume=/:/host")
    await refused(s, "unknown profile", "sandbox_run",
                  {**base, "command": ["true"], "profile": "yolo"}, "yolo")

    cwd_res = await s.call_tool("sandbox_run", {**base, "command": ["pwd"], "cwd": "/tmp"})
    check(
        "cwd is the working directory inside the sandbox",
        not cwd_res.isError and (cwd_res.structuredContent or {}).get("stdout") == "/tmp\n",
        cwd_res,
    )
    bad_cwd = await s.call_tool("sandbox_run", {**base, "command": ["pwd"], "cwd": "relative/dir"})
    check("a relative cwd is refused", bad_cwd.isError, bad_cwd)

    # persistent sandboxes
    box = f"mcp-{transport}"
    await refused(s, "name ../../x", "sandbox_create", {**base, "name": "../../x"}, "../../x")
    await refused(s, "create with image --volume=/:/host", "sandbox_create",
                  {"name": "volbox", "image": "--volume=/:/host", "network": False}, "--volume=/:/host")

    res = await s.call_tool("sandbox_create", {**base, "name": box})
    check("create makes a running sandbox", not res.isError and res.structuredContent["status"] == "running", res)
    check("list shows it", box in await names(s))

    res = await s.call_tool("sandbox_exec", {"name": box, "command": ["sh", "-c", "echo $X; pwd; exit 4"],
                                             "env": {"X": "y"}, "workdir": "/tmp"})
    check("exec: exit code and output", res.isError and res.structuredContent["exit_code"] == 4
          and res.structuredContent["stdout"] == "y\n/tmp\n", res)

    res = await s.call_tool("sandbox_file_write", {"name": box, "path": "notes/a.txt", "content": "héllo\n"})
    check("file write", not res.isError and res.structuredContent["path"] == "/workspace/notes/a.txt", res)
    res = await s.call_tool("sandbox_file_read", {"name": box, "path": "/workspace/notes/a.txt"})
    check("file read (text)", res.structuredContent["content"] == "héllo\n"
          and res.structuredContent["encoding"] == "utf8", res)
    res = await s.call_tool("sandbox_exec", {"name": box, "command": ["cat", "notes/a.txt"]})
    check("the sandbox sees the written file", res.structuredContent["stdout"] == "héllo\n", res)

    blob = bytes(range(256))
    res = await s.call_tool("sandbox_file_write", {"name": box, "path": "/tmp/blob.bin",
                                                   "content": base64.b64encode(blob).decode(), "encoding": "base64"})
    check("binary write", not res.isError and res.structuredContent["size"] == 256, res)
    res = await s.call_tool("sandbox_file_read", {"name": box, "path": "/tmp/blob.bin"})
    check("binary read comes back as base64", res.structuredContent["encoding"] == "base64"
          and base64.b64decode(res.structuredContent["content"]) == blob, res)

    # `..` is resolved inside the sandbox's root, as on the HTTP API: it never leads out.
    marker = f"mcp-dotdot-{os.getpid()}"
    for bad in [f"../../../tmp/{marker}", f"/workspace/../../../tmp/{marker}", f"/../../tmp/{marker}"]:
        res = await s.call_tool("sandbox_file_write", {"name": box, "path": bad, "content": bad})
        check(f"write {bad} lands inside the sandbox", not res.isError
              and res.structuredContent["path"].endswith(marker), res)
        check(f"write {bad} made nothing on the host", not os.path.exists(f"/tmp/{marker}"), res)
        res = await s.call_tool("sandbox_file_read", {"name": box, "path": f"/tmp/{marker}"})
        check(f"read back what {bad} wrote", not res.isError and res.structuredContent["content"] == bad, res)
    res = await s.call_tool("sandbox_file_read", {"name": box, "path": "a\u0000b"})
    check("a path with a NUL byte is refused", res.isError, res)
    res = await s.call_tool("sandbox_exec", {"name": box, "command": ["ls", "/tmp"]})
    check("the writes stayed in the sandbox's /tmp", sorted(res.structuredContent["stdout"].split()) == sorted(["blob.bin", marker]), res)
    res = await s.call_tool("sandbox_file_read", {"name": "../../x", "path": "a"})
    check("a file tool with name ../../x is refused", res.isError and "../../x" in text(res), res)

    res = await s.call_tool("sandbox_stop", {"name": box})
    check("stop", not res.isError and res.structuredContent["was_running"] is True, res)
    res = await s.call_tool("sandbox_exec", {"name": box, "command": ["true"]})
    check("exec on a stopped sandbox says so", res.isError and "not running" in text(res), res)
    res = await s.call_tool("sandbox_start", {"name": box})
    check("start", not res.isError and res.structuredContent["started"] is True, res)
    res = await s.call_tool("sandbox_file_read", {"name": box, "path": "notes/a.txt"})
    check("files survive stop and start", res.structuredContent["content"] == "héllo\n", res)

    snap = f"{box}-snap"
    res = await s.call_tool("sandbox_snapshot", {"sandbox": box, "name": snap})
    check("snapshot of a running sandbox", not res.isError and res.structuredContent["name"] == snap, res)
    res = await s.call_tool("sandbox_file_write", {"name": box, "path": "notes/a.txt", "content": "changed\n"})
    check("write after the snapshot", not res.isError, res)
    res = await s.call_tool("sandbox_restore", {"snapshot": snap, "as": f"{box}-r"})
    check("restore makes a running sandbox", not res.isError and res.structuredContent["status"] == "running", res)
    res = await s.call_tool("sandbox_file_read", {"name": f"{box}-r", "path": "notes/a.txt"})
    check("the restored sandbox has the files as of the snapshot",
          not res.isError and res.structuredContent["content"] == "héllo\n", res)
    res = await s.call_tool("sandbox_restore", {"snapshot": "no-such-snapshot"})
    check("restoring an unknown snapshot says so", res.isError and "no snapshot named" in text(res), res)
    res = await s.call_tool("sandbox_remove", {"name": f"{box}-r"})
    check("remove the restored sandbox", not res.isError, res)

    res = await s.call_tool("sandbox_remove", {"name": box})
    check("remove", not res.isError and res.structuredContent["removed"] is True, res)
    check("list no longer shows it", box not in await names(s))
    res = await s.call_tool("sandbox_remove", {"name": box})
    check("removing it again says no such sandbox", res.isError and "no sandbox named" in text(res), res)


async def main():
    transport, target = sys.argv[1], sys.argv[2]
    if transport == "stdio":
        params = StdioServerParameters(command=target, args=["mcp", "server"], env=dict(os.environ))
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await drive(s, transport)
    else:
        headers = {"Authorization": f"Bearer {os.environ['AGENTKERNEL_API_KEY']}"}
        async with streamablehttp_client(f"{target}/mcp", headers=headers) as (r, w, _):
            async with ClientSession(r, w) as s:
                await drive(s, transport)


asyncio.run(main())
