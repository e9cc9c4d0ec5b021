// The official TypeScript SDK's MCP client signing in the way agents do
// (the MCP authorization model): it connects with no token, follows the
// 401 to the gateway's metadata, registers itself, and sends the person
// to the authorization endpoint. curl plays the person's browser: it
// follows the redirects through the OpenID provider (which signs the
// configured user in) back to the gateway's consent page, and submits
// DECISION there. Then the SDK exchanges the code and runs each STEP.
//
// Usage: node mcp-oauth-client.mjs URL STEP...
//   env BROWSER_CA (PEM bundle trusting the gateway and the provider),
//       BROWSER_JAR (curl's cookie jar), DECISION (allow|deny, default allow),
//       NODE_EXTRA_CA_CERTS (the gateway's CA, for the SDK)
// Steps: list | call NAME JSON_ARGUMENTS
// Prints one JSON line per step, then {"client_id", "tokens", "state_ok"}.

import { execFileSync } from 'node:child_process';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [url, ...steps] = process.argv.slice(2);
// Nothing listens here: the "browser" stops at the redirect and hands the
// code over, as a native client's loopback listener would.
const REDIRECT = 'http://127.0.0.1:9/callback';

function curl(args) {
  return execFileSync('curl', [
    '-sS', '--max-time', '20', '--cacert', process.env.BROWSER_CA,
    '-c', process.env.BROWSER_JAR, '-b', process.env.BROWSER_JAR, ...args,
  ]).toString();
}

// The person's browser: to the consent page, then the decision.
function browse(authorizationUrl) {
  const page = curl(['-L', '--max-redirs', '10', authorizationUrl]);
  const handle = /name="consent" value="([^"]+)"/.exec(page);
  if (!handle) throw new Error(`no consent page: ${page.slice(0, 500)}`);
  const consentUrl = new URL('/oauth/consent', url).toString();
  const back = curl([
    '-o', '/dev/null', '-w', '%{redirect_url}',
    '--data-urlencode', `consent=${handle[1]}`,
    '--data-urlencode', `decision=${process.env.DECISION || 'allow'}`,
    consentUrl,
  ]);
  return new URL(back);
}

class Provider {
  constructor() {
    this.client = undefined;
    this.saved = undefined;
    this.verifier = undefined;
    this.returned = undefined;
    this.sentState = undefined;
  }
  get redirectUrl() { return REDIRECT; }
  get clientMetadata() {
    return {
      client_name: 'Portcullis test agent',
      redirect_uris: [REDIRECT],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  state() { this.sentState = `st-${process.pid}`; return this.sentState; }
  clientInformation() { return this.client; }
  saveClientInformation(c) { this.client = c; }
  tokens() { return this.saved; }
  saveTokens(t) { this.saved = t; }
  saveCodeVerifier(v) { this.verifier = v; }
  codeVerifier() { return this.verifier; }
  async redirectToAuthorization(authorizationUrl) {
    this.returned = browse(authorizationUrl.toString());
  }
}

const provider = new Provider();
const connect = async () => {
  const client = new Client({ name: 'portcullis-oauth-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { authProvider: provider }));
  return client;
};

try {
  let client;
  try {
    client = await connect();
  } catch (err) {
    if (!(err instanceof UnauthorizedError)) throw err;
    const back = provider.returned;
    const error = back.searchParams.get('error');
    if (error) {
      console.log(JSON.stringify({ authorization_error: error, state: back.searchParams.get('state') }));
      process.exit(0);
    }
    const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
    await transport.finishAuth(back.searchParams.get('code'));
    client = await connect();
  }
  for (let i = 0; i < steps.length; i++) {
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
  const back = provider.returned;
  console.log(JSON.stringify({
    client_id: provider.client && provider.client.client_id,
    tokens: provider.saved,
    state_ok: !!back && back.searchParams.get('state') === provider.sentState,
    iss: back && back.searchParams.get('iss'),
  }));
} catch (err) {
  console.log(JSON.stringify({ client_error: String(err && err.message ? err.message : err) }));
  process.exitCode = 1;
}
