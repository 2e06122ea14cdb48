// A real OpenID Provider (npm `oidc-provider` v9) for portcullis's
// integration tests: it serves discovery and a JWKS like GitHub Actions' or
// GitLab's issuer does, and mints signed JWTs carrying whatever CI claims the
// test asks for, so the verifier is exercised against a real implementation
// rather than tokens the test suite signed itself.
//
// Usage: node oidc-provider.mjs [PORT]   (PORT, or env PORT; 0 = any free port)
// Listens on 127.0.0.1 with issuer http://127.0.0.1:<port> and prints
// `READY <port>` once it accepts connections.
//
// Minting (client_credentials grant, RFC 8707 resource indicator):
//   POST /token  (HTTP Basic client auth)
//     grant_type=client_credentials
//     resource=<audience>            any absolute URI, or
//                                    urn:portcullis:audience:<percent-encoded audience>
//     test_claims=<JSON object>      claims to put in the token; `sub` too
// Clients: `portcullis-rs256` (RS256) and `portcullis-es256` (ES256), secret
// `test-only-secret`. The signing keys are the fixed, test-only keys in ./keys.
//
// GET /__stats answers {"discovery": n, "jwks": n}: how often each document
// was served, so a test can assert how often the verifier fetched keys.
import http from 'node:http';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const AUDIENCE_URN = 'urn:portcullis:audience:';
const CLIENT_SECRET = 'test-only-secret';
const ES256_CLIENT = 'portcullis-es256';
// Claims the provider itself owns; a test cannot override them by minting.
const RESERVED = new Set(['iss', 'aud', 'exp', 'iat', 'jti', 'client_id', 'scope', 'cnf']);

const keyFile = (name) => JSON.parse(readFileSync(new URL(`./keys/${name}.private.jwk.json`, import.meta.url), 'utf8'));

const requestedPort = Number(process.argv[2] ?? process.env.PORT ?? 0);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  console.error(`invalid port: ${process.argv[2] ?? process.env.PORT}`);
  process.exit(2);
}

const stats = { discovery: 0, jwks: 0 };

function testClaims(ctx) {
  const raw = ctx.oidc?.body?.test_claims;
  if (raw === undefined) return {};
  let claims;
  try {
    claims = JSON.parse(String(raw));
  } catch {
    throw new errors.InvalidRequest('test_claims is not JSON');
  }
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    throw new errors.InvalidRequest('test_claims must be a JSON object');
  }
  return claims;
}

function audienceOf(resourceIndicator) {
  if (resourceIndicator.startsWith(AUDIENCE_URN)) {
    return decodeURIComponent(resourceIndicator.slice(AUDIENCE_URN.length));
  }
  return resourceIndicator;
}

const configuration = {
  clients: [
    {
      client_id: 'portcullis-rs256',
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
    {
      client_id: ES256_CLIENT,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  jwks: { keys: [keyFile('rs256'), keyFile('es256')] },
  cookies: { keys: ['test-only-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (_ctx, resourceIndicator, client) => ({
        scope: 'deploy',
        audience: audienceOf(resourceIndicator),
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: client.clientId === ES256_CLIENT ? 'ES256' : 'RS256' } },
      }),
    },
  },
  extraTokenClaims: async (ctx) => {
    const claims = testClaims(ctx);
    for (const name of RESERVED) delete claims[name];
    return claims;
  },
  formats: {
    customizers: {
      // CI ID tokens are plain JWTs whose `sub` describes the job, not the
      // OAuth client, and carry no OAuth client_id or scope.
      jwt: async (_ctx, token, jwt) => {
        jwt.header = { typ: 'JWT' };
        if (typeof token.extra?.sub === 'string') jwt.payload.sub = token.extra.sub;
        delete jwt.payload.client_id;
        delete jwt.payload.scope;
      },
    },
  },
};

const server = http.createServer();
server.listen(requestedPort, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, configuration);
  provider.use(async (ctx, next) => {
    if (ctx.path === '/__stats') {
      ctx.body = stats;
      return;
    }
    if (ctx.path === '/.well-known/openid-configuration') stats.discovery += 1;
    if (ctx.path === '/jwks') stats.jwks += 1;
    await next();
  });
  provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
  server.on('request', provider.callback());
  console.log(`READY ${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
