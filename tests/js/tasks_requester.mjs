// The MCP Tasks extension's requester (@modelcontextprotocol/ext-tasks) on the TypeScript SDK client
// (@modelcontextprotocol/client, 2026-07-28 era), against a real gateway. Driven by tests/test_mcp_tasks.py.
//
//   node tasks_requester.mjs URL complete TOOL ARGS_JSON   -> prints {handleMs, taskId, status, result}
//   node tasks_requester.mjs URL cancel TOOL ARGS_JSON     -> starts a task, cancels it, prints the outcome
//   node tasks_requester.mjs URL outlive TOOL ARGS_JSON    -> prints "task <id>", waits for "go" on stdin,
//                                                             then settles (the test kills the sidecar between)
//   node tasks_requester.mjs URL plain TOOL ARGS_JSON      -> the plain SDK client without the extension
//
// The last line printed is one JSON object; anything else goes to stderr.
import { createInterface } from "node:readline";

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { createTaskSessionFromClient, resultFromTaskOutcome } from "@modelcontextprotocol/ext-tasks/client";

const [url, mode, tool, argsJson] = process.argv.slice(2);
const args = JSON.parse(argsJson ?? "{}");
const PROTOCOL = "2026-07-28";
const clientInfo = { name: "ext-tasks-requester-test", version: "1.0.0" };

// The SDK client's own wire codecs reject task-shaped results, so the requester sends tools/call and
// tasks/* itself through this dispatcher (the package's documented rawDispatch seam): one POST each, with
// the headers the 2026-07-28 Streamable HTTP transport requires.
let nextId = 1;

async function rawDispatch(request) {
  const params = request.params ?? {};
  const message = { jsonrpc: "2.0", id: nextId++, method: request.method, params };
  const headers = {
    "content-type": "application/json",
    accept: "application/json, text/event-stream",
    "mcp-protocol-version": PROTOCOL,
    "mcp-method": request.method,
  };
  const name = params.name ?? params.taskId;
  if (typeof name === "string") headers["mcp-name"] = name;
  const answer = await fetch(url, { method: "POST", headers, body: JSON.stringify(message) });
  const text = await answer.text();
  let reply;
  if (answer.headers.get("content-type")?.startsWith("text/event-stream")) {
    const data = text
      .split(/\r?\n/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).trim())
      .filter((line) => line.length > 0);
    reply = JSON.parse(data[data.length - 1]);
  } else {
    reply = JSON.parse(text);
  }
  return reply.error !== undefined ? { kind: "error", error: reply.error } : { kind: "result", result: reply.result };
}

async function connect() {
  const client = new Client(clientInfo, { versionNegotiation: { mode: { pin: PROTOCOL } } });
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  return client;
}

function waitForGo() {
  return new Promise((resolve) => {
    const lines = createInterface({ input: process.stdin });
    lines.on("line", (line) => {
      if (line.trim() === "go") {
        lines.close();
        resolve();
      }
    });
  });
}

async function main() {
  const client = await connect();
  if (mode === "plain") {
    try {
      const result = await client.callTool({ name: tool, arguments: args });
      return { era: client.getProtocolEra(), result };
    } catch (error) {
      return { era: client.getProtocolEra(), error: { code: error.code, message: error.message, data: error.data } };
    } finally {
      await client.close();
    }
  }
  const session = createTaskSessionFromClient(client, {
    endpointId: url,
    rawDispatch,
    v2RequestFraming: { protocolVersion: PROTOCOL, clientInfo, clientCapabilities: {} },
  });
  try {
    const started = performance.now();
    const execution = await session.callTool(tool, args);
    const handleMs = performance.now() - started;
    const taskId = execution.kind === "task" ? execution.handle.taskId : null;
    if (mode === "cancel") {
      await new Promise((resolve) => setTimeout(resolve, 500));
      await execution.cancel();
      const { outcome } = await execution.settle();
      return { handleMs, taskId, kind: execution.kind, status: outcome.status };
    }
    if (mode === "outlive") {
      console.log(`task ${taskId}`);
      await waitForGo();
    }
    const { outcome } = await execution.settle();
    const answer = { handleMs, taskId, kind: execution.kind, status: outcome.status, statusMessage: outcome.task?.statusMessage };
    if (outcome.status === "completed") answer.result = resultFromTaskOutcome(outcome);
    if (outcome.status === "failed") answer.error = { message: outcome.error.message, code: outcome.error.code };
    return answer;
  } finally {
    await session.close();
  }
}

main().then(
  (answer) => {
    console.log(JSON.stringify(answer));
    process.exit(0);
  },
  (error) => {
    console.error(error?.stack ?? String(error));
    console.log(JSON.stringify({ thrown: String(error?.message ?? error) }));
    process.exit(1);
  },
);
