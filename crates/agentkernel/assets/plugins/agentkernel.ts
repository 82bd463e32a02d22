// agentkernel plugin for OpenCode, installed by `agentkernel plugin install opencode`.
//
// Each OpenCode session gets its own persistent agentkernel sandbox, created when the session
// starts and removed when it is deleted. The `sandbox_exec` tool runs commands in it, and
// `sandbox_run` runs a command in a throwaway sandbox. Both talk to the agentkernel HTTP API:
// start it with `agentkernel serve` (AGENTKERNEL_BASE_URL, default http://127.0.0.1:18888;
// AGENTKERNEL_API_KEY when the server requires a key).
import { type Plugin, tool } from "@opencode-ai/plugin"

const BASE_URL = (process.env.AGENTKERNEL_BASE_URL ?? "http://127.0.0.1:18888").replace(/\/+$/, "")
const API_KEY = process.env.AGENTKERNEL_API_KEY

interface ExecResult {
  output?: string
  exit_code?: number
  stdout?: string
  stderr?: string
}

async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { "Content-Type": "application/json" }
  if (API_KEY) headers["Authorization"] = `Bearer ${API_KEY}`
  let res: Response
  try {
    res = await fetch(`${BASE_URL}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  } catch (e) {
    throw new Error(`agentkernel is not reachable at ${BASE_URL}: start it with \`agentkernel serve\` (${e})`)
  }
  const envelope = (await res.json().catch(() => ({}))) as { success?: boolean; data?: T; error?: string }
  if (!res.ok || envelope.success === false) {
    throw new Error(`agentkernel ${method} ${path}: HTTP ${res.status}: ${envelope.error ?? res.statusText}`)
  }
  return envelope.data as T
}

function format(r: ExecResult): string {
  const out = r.stdout ?? r.output ?? ""
  const err = r.stderr ? `\n[stderr]\n${r.stderr}` : ""
  return `${out}${err}\n[exit code ${r.exit_code ?? 0}]`
}

// Sandbox names: letters, digits, _ . - and at most 63 characters.
function sandboxName(sessionID: string): string {
  return `opencode-${sessionID.replace(/[^a-zA-Z0-9_.-]/g, "-")}`.slice(0, 63)
}

export const AgentkernelPlugin: Plugin = async () => {
  const sandboxes = new Map<string, string>()

  async function sandboxFor(sessionID: string): Promise<string> {
    const known = sandboxes.get(sessionID)
    if (known) return known
    const name = sandboxName(sessionID)
    try {
      await api("POST", "/sandboxes", { name, labels: { agent: "opencode" } })
    } catch (e) {
      // 409: it exists already (an earlier run of this session); use it.
      if (!String(e).includes("HTTP 409")) throw e
    }
    sandboxes.set(sessionID, name)
    return name
  }

  return {
    event: async ({ event }) => {
      const info = (event.properties as { info?: { id?: string } } | undefined)?.info
      if (!info?.id) return
      if (event.type === "session.created") {
        await sandboxFor(info.id).catch(() => undefined)
      } else if (event.type === "session.deleted") {
        const name = sandboxes.get(info.id) ?? sandboxName(info.id)
        sandboxes.delete(info.id)
        await api("DELETE", `/sandboxes/${encodeURIComponent(name)}`).catch(() => undefined)
      }
    },
    tool: {
      sandbox_exec: tool({
        description:
          "Run a shell command in this session's isolated agentkernel sandbox (state persists between calls). Use it for untrusted code, package installs, builds and tests.",
        args: {
          command: tool.schema.string().describe("Shell command, run with sh -c"),
          workdir: tool.schema.string().optional().describe("Working directory inside the sandbox"),
        },
        async execute(args, context) {
          const name = await sandboxFor(context.sessionID)
          const r = await api<ExecResult>("POST", `/sandboxes/${encodeURIComponent(name)}/exec`, {
            command: ["sh", "-c", args.command],
            workdir: args.workdir,
          })
          return format(r)
        },
      }),
      sandbox_run: tool({
        description: "Run a shell command in a throwaway agentkernel sandbox, removed afterwards.",
        args: {
          command: tool.schema.string().describe("Shell command, run with sh -c"),
          image: tool.schema.string().optional().describe("Image, e.g. python:3.12-alpine"),
          profile: tool.schema
            .enum(["permissive", "moderate", "restrictive"])
            .optional()
            .describe("Security profile (default moderate)"),
        },
        async execute(args) {
          const r = await api<ExecResult>("POST", "/run", {
            command: ["sh", "-c", args.command],
            image: args.image,
            profile: args.profile,
          })
          return format(r)
        },
      }),
    },
  }
}
