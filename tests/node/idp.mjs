// A real OpenID provider (panva's certified `oidc-provider`) on loopback,
// for Portcullis's identity tests. It is configured, not imitated: the
// tokens, discovery document, JWKS, device flow and authorization code
// flow are the library's own.
//
// Usage: node idp.mjs --cert CERT --key KEY
//                     [--user alice] [--groups dba,dev] [--cli-client portcullis-cli]
//                     [--audience https://portcullis.test]
//                     [--gateway-client portcullis-gateway --gateway-secret SECRET]
//
// It listens on 127.0.0.1 with an ephemeral port (HTTPS), and prints one
// line `idp: ready issuer=https://127.0.0.1:PORT` when it serves.
//
// Interactions (login and consent) are answered automatically for the
// configured user: the tests play the browser with curl, and what they
// exercise is the protocol, not a login form.

import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    user: { type: 'string', default: 'alice' },
    groups: { type: 'string', default: 'dba' },
    'cli-client': { type: 'string', default: 'portcullis-cli' },
    audience: { type: 'string', default: 'https://portcullis.test' },
    'access-ttl': { type: 'string', default: '600' },
    'gateway-client': { type: 'string' },
    'gateway-secret': { type: 'string' },
  },
});

// Fresh signing keys for every run: ES256 for access tokens, RS256 (the
// OIDC default) for ID tokens.
function signingKey(type, options, alg, kid) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid };
}
const jwks = {
  keys: [
    signingKey('rsa', { modulusLength: 2048 }, 'RS256', `rs-${crypto.randomUUID()}`),
    signingKey('ec', { namedCurve: 'P-256' }, 'ES256', `es-${crypto.randomUUID()}`),
  ],
};
// Progress on stderr (the test's log): a start that stalls shows where.
process.stderr.write('idp: signing keys made\n');
const groups = args.groups.split(',').filter(Boolean);

const server = https.createServer({
  cert: fs.readFileSync(args.cert),
  key: fs.readFileSync(args.key),
});

server.listen(0, '127.0.0.1', () => {
  process.stderr.write('idp: listening\n');
  const { port } = server.address();
  const issuer = `https://127.0.0.1:${port}`;

  const provider = new Provider(issuer, {
    jwks,
    clients: [
      {
        // The CLI's `portcullis login`: a public native client.
        client_id: args['cli-client'],
        token_endpoint_auth_method: 'none',
        application_type: 'native',
        grant_types: [
          'urn:ietf:params:oauth:grant-type:device_code',
          'authorization_code',
          'refresh_token',
        ],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/callback'],
      },
      {
        // A CI job with its own identity (client credentials).
        client_id: 'ci-bot',
        client_secret: 'ci-bot-secret-not-a-canary',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
      // The gateway itself, signing people in for MCP clients (its
      // `[oauth]`): a confidential web client.
      ...(args['gateway-client'] ? [{
        client_id: args['gateway-client'],
        client_secret: args['gateway-secret'],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: ['https://localhost/oauth/callback'],
      }] : []),
    ],
    claims: {
      openid: ['sub'],
      email: ['email'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'groups'],
    conformIdTokenClaims: false,
    ttl: {
      AccessToken: Number(args['access-ttl']),
      ClientCredentials: Number(args['access-ttl']),
      IdToken: Number(args['access-ttl']),
      DeviceCode: 600,
      RefreshToken: 86400,
    },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => args.audience,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'openid offline_access email groups',
          audience: args.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: Number(args['access-ttl']),
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
    async findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return { sub, email: `${sub}@example.test`, groups };
        },
      };
    },
    async extraTokenClaims(_ctx, token) {
      // Human tokens carry the user's groups; client-credentials tokens
      // carry none.
      if (token.accountId) return { groups };
      return undefined;
    },
    interactions: {
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    cookies: { keys: ['portcullis-test-idp-cookie-key'] },
  });
  provider.proxy = false;
  // The gateway listens on an ephemeral port, known only after this
  // provider starts: its callback is allowed on any loopback port.
  const allowed = provider.Client.prototype.redirectUriAllowed;
  provider.Client.prototype.redirectUriAllowed = function (value) {
    if (args['gateway-client'] && this.clientId === args['gateway-client']) {
      return /^https:\/\/(localhost|127\.0\.0\.1):\d+\/oauth\/callback$/.test(value);
    }
    return allowed.call(this, value);
  };

  const callback = provider.callback();
  server.on('request', async (req, res) => {
    if (req.url.startsWith('/interaction/')) {
      try {
        // Log in as the configured user and grant what the client asked
        // for, with no form: the tests exercise the protocol, not a page.
        const details = await provider.interactionDetails(req, res);
        if (details.prompt.name === 'login') {
          await provider.interactionFinished(req, res, {
            login: { accountId: args.user },
          }, { mergeWithLastSubmission: false });
        } else {
          const grant = details.grantId
            ? await provider.Grant.find(details.grantId)
            : new provider.Grant({
              accountId: details.session.accountId,
              clientId: details.params.client_id,
            });
          const missing = details.prompt.details;
          if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
          if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
          for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
            grant.addResourceScope(indicator, scopes.join(' '));
          }
          const grantId = await grant.save();
          await provider.interactionFinished(req, res, {
            consent: { grantId },
          }, { mergeWithLastSubmission: true });
        }
      } catch (err) {
        res.statusCode = 500;
        res.end(String(err));
      }
      return;
    }
    callback(req, res);
  });

  process.stdout.write(`idp: ready issuer=${issuer}\n`);
});

process.on('SIGTERM', () => process.exit(0));
