// Drives the published Node SDK (npm `agentkernel`), unmodified, against our server.
//
// The server's address and key come from AGENTKERNEL_BASE_URL and AGENTKERNEL_API_KEY, as the
// SDK reads them. The first failed check ends the script with exit status 1. Run by
// crates/agentkernel/tests/clients.rs with NODE_PATH pointing at the installed package.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import path from "node:path";

const modules = process.env.AGENTKERNEL_TEST_NODE_MODULES;
const entry = createRequire(path.join(modules, "x.js")).resolve("agentkernel");
const sdk = await import(pathToFileURL(entry.replace(/index\.cjs$/, "index.js")).href);
const { AgentKernel, NotFoundError, ValidationError } = sdk;

function check(name, cond, detail = "") {
  if (!cond) {
    console.error(`FAILED: ${name}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok: ${name}`);
}

async function rejects(promise, type) {
  try {
    await promise;
    return false;
  } catch (e) {
    return e instanceof type;
  }
}

const client = new AgentKernel();
check("health", (await client.health()) === "ok");

const out = await client.run(["sh", "-c", "echo hello; echo oops >&2; exit 3"], { image: "host" });
check("run output", out.output.includes("hello") && out.output.includes("oops"), out);
check("run exit code (our addition)", out.exit_code === 3 && out.stderr === "oops\n", out);

const events = [];
for await (const e of client.runStream(["sh", "-c", "echo one; sleep 1; echo two"], { image: "host" })) {
  events.push(e);
}
const types = events.map((e) => e.type);
const text = events.filter((e) => e.type === "output").map((e) => e.data.data).join("");
check("runStream ends with done", types.at(-1) === "done" && events.at(-1).data.exit_code === 0, events);
check("runStream output in order", text === "one\ntwo\n", text);

const batch = await client.batchRun([{ command: ["echo", "a"] }, { command: ["echo", "b"] }]);
check("batchRun order", batch.results.map((r) => r.output).join("") === "a\nb\n", batch);

const name = `npm-sdk-${Date.now() % 1e8}`;
const info = await client.createSandbox(name, { image: "host" });
check("createSandbox running", info.status === "running" && info.name === name, info);
check("getSandbox", (await client.getSandbox(name)).uuid === info.uuid);
check("getSandboxByUuid", (await client.getSandboxByUuid(info.uuid)).name === name);
check("listSandboxes", (await client.listSandboxes()).some((s) => s.name === name));

const r = await client.execInSandbox(name, ["sh", "-c", "echo $B; pwd"], { env: ["B=7"], workdir: "/tmp" });
check("execInSandbox env and workdir", r.output === "7\n/tmp\n", r);

await client.writeFile(name, "x/y.txt", "hello file");
const f = await client.readFile(name, "x/y.txt");
check("file round trip", f.content === "hello file" && f.encoding === "utf8" && f.size === 10, f);
const bin = Buffer.from([0, 255, 1, 254]);
await client.writeFile(name, "b.bin", bin.toString("base64"), { encoding: "base64" });
const fb = await client.readFile(name, "b.bin");
check("binary file as base64", fb.encoding === "base64" && Buffer.from(fb.content, "base64").equals(bin), fb);
check("writeFiles", (await client.writeFiles(name, { "m.txt": "M", "n/o.txt": "O" })).written === 2);
await client.deleteFile(name, "m.txt");
check("deleteFile", await rejects(client.readFile(name, "m.txt"), NotFoundError));
check("confinement", await rejects(client.readFile(name, "../../../../etc/shadow"), Error));

const d = await client.execDetached(name, ["sh", "-c", "echo bg; exit 6"]);
check("execDetached", typeof d.id === "string" && d.pid > 0, d);
let st = await client.detachedStatus(name, d.id);
for (let i = 0; i < 200 && st.status === "running"; i++) {
  await new Promise((res) => setTimeout(res, 100));
  st = await client.detachedStatus(name, d.id);
}
check("detached exit code", st.status === "failed" && st.exit_code === 6, st);
check("detachedLogs", (await client.detachedLogs(name, d.id)).stdout === "bg\n");
const long = await client.execDetached(name, ["sleep", "30"]);
check("detachedList", (await client.detachedList(name)).some((c) => c.id === long.id));
await client.detachedKill(name, long.id);
st = await client.detachedStatus(name, long.id);
check("detachedKill", st.status === "failed" && st.exit_code === 137, st);

const ttlBox = process.env.AK_TTL_SANDBOX;
const before = (await client.getSandbox(ttlBox)).expires_at;
const extended = await client.extendTtl(ttlBox, { by: "3h" });
check("extendTtl", extended.expires_at > before, { before, extended });
check("extendTtl bad duration", await rejects(client.extendTtl(ttlBox, { by: "later" }), ValidationError));

const logs = await client.getSandboxLogs(name);
check("getSandboxLogs", logs.some((e) => e.event === "sandbox_created"), logs.slice(0, 3));

await client.removeSandbox(name);
check("removeSandbox", await rejects(client.getSandbox(name), NotFoundError));
check("bad name refused", await rejects(client.createSandbox("../x", { image: "host" }), ValidationError));

const bad = new AgentKernel({ apiKey: "wrong-key" });
check("wrong key refused", await rejects(bad.listSandboxes(), sdk.AuthError));
