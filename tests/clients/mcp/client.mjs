// An MCP client for Weir's tests, on the official TypeScript SDK (npm @modelcontextprotocol/sdk),
// over Streamable HTTP:  node client.mjs URL TOKEN
// Same line protocol as ../python/mcp_client.py: one JSON request per stdin line
// ({"tool", "args"} or {"list": true}), one JSON answer per stdout line
// ({"is_error", "text", "structured"}, {"tools": [...]}, or {"exception"}).
import readline from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token] = process.argv.slice(2);

async function answer(request) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: "weir-tests", version: "0.0.0" });
  await client.connect(transport);
  try {
    if (request.list) {
      const listed = await client.listTools();
      return { tools: listed.tools.map((t) => ({ name: t.name, annotations: t.annotations ?? null })) };
    }
    const r = await client.callTool({ name: request.tool, arguments: request.args ?? {} });
    const text = (r.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("");
    return { is_error: Boolean(r.isError), text, structured: r.structuredContent ?? null };
  } finally {
    await client.close();
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let out;
  try {
    out = await answer(JSON.parse(line));
  } catch (e) {
    out = { exception: String(e && e.stack ? e.stack : e) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
