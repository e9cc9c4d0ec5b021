// A real MCP client for Portcullis's tests: the official TypeScript SDK's
// Client over Streamable HTTP. It connects to URL with a bearer token,
// then runs each STEP and prints one JSON line per step:
//   list                      -> {"tools": [names]}
//   call NAME JSON_ARGUMENTS  -> the CallToolResult
//
// Usage: node mcp-client.mjs URL TOKEN STEP...
// (trust the gateway's CA with NODE_EXTRA_CA_CERTS).

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, token, ...steps] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: 'portcullis-test-client', version: '1.0.0' });
try {
  await client.connect(transport);
  for (let i = 0; i < steps.length; i++) {
    // A failing step prints {"error": ...} and the next step runs.
    try {
      if (steps[i] === 'list') {
        const r = await client.listTools();
        console.log(JSON.stringify({ tools: r.tools.map((t) => t.name) }));
      } else if (steps[i] === 'call') {
        const name = steps[++i];
        const args = JSON.parse(steps[++i]);
        console.log(JSON.stringify(await client.callTool({ name, arguments: args })));
      } else {
        throw new Error(`unknown step ${steps[i]}`);
      }
    } catch (err) {
      console.log(JSON.stringify({ error: String(err && err.message ? err.message : err) }));
    }
  }
  await client.close();
} catch (err) {
  console.log(JSON.stringify({ client_error: String(err && err.message ? err.message : err) }));
  process.exitCode = 1;
}
