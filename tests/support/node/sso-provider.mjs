// A real OpenID Provider (npm `oidc-provider` v9) for the SSO review tests:
// the organisation's sign-in that human reviewers go through when an
// environment sets `reviews.via = "sso"`. portcullis drives the
// authorization-code flow (PKCE, nonce, state) against it; the test plays
// the browser through the provider's development login and consent pages
// (devInteractions).
//
// Usage: node sso-provider.mjs [PORT]   (PORT, or env PORT; 0 = any free port)
// Listens on 127.0.0.1 with issuer http://127.0.0.1:<port> and prints
// `READY <port>` once it accepts connections.
//
// Client: `portcullis-reviews`, secret `test-only-sso-secret` (client_secret_basic),
// redirect URI https://portcullis.example/reviews/callback.
// Accounts: the login typed on the login page is the account id and its
// email; `groups` come from ACCOUNTS below. `unverified@example.com` has
// `email_verified: false`; `unsaid@example.com`'s token has no
// `email_verified` claim at all. The ID token carries email, email_verified,
// name, preferred_username and groups (scopes `email` and `profile`).
// The signing key is the fixed, test-only RS256 key in ./keys.
import http from 'node:http';
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const keyFile = (name) => JSON.parse(readFileSync(new URL(`./keys/${name}.private.jwk.json`, import.meta.url), 'utf8'));

const requestedPort = Number(process.argv[2] ?? process.env.PORT ?? 0);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  console.error(`invalid port: ${process.argv[2] ?? process.env.PORT}`);
  process.exit(2);
}

const ACCOUNTS = {
  'alice@example.com': { name: 'Alice Reviewer', groups: ['deployers', 'sre'] },
  'bob@example.com': { name: 'Bob Reviewer', groups: ['deployers'] },
  'octocat@example.com': { name: 'The Octocat', groups: ['developers'] },
  'mallory@example.com': { name: 'Mallory Outsider', groups: ['contractors'] },
  'oncall-lead@example.com': { name: 'On-call Lead', groups: ['sre'] },
  'secops@example.com': { name: 'Sec Ops', groups: ['security'] },
  'cto@example.com': { name: 'The CTO', groups: ['leadership'] },
};

const configuration = {
  clients: [
    {
      client_id: 'portcullis-reviews',
      client_secret: 'test-only-sso-secret',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      // REDIRECT_URIS (comma-separated) adds the callbacks of a portcullis
      // on a loopback port, for the tests that drive a real browser.
      redirect_uris: ['https://portcullis.example/reviews/callback', ...(process.env.REDIRECT_URIS ?? '').split(',').filter(Boolean)],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [keyFile('rs256')] },
  cookies: { keys: ['test-only-sso-cookie-key'] },
  features: {
    devInteractions: { enabled: true },
  },
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'groups'],
  },
  // Put the scope-requested claims in the ID token itself (portcullis reads
  // the ID token only; it never calls userinfo).
  conformIdTokenClaims: false,
  findAccount: async (_ctx, id) => ({
    accountId: id,
    claims: async () => {
      const account = ACCOUNTS[id] ?? { name: id, groups: [] };
      const claims = {
        sub: id,
        email: id,
        email_verified: id !== 'unverified@example.com',
        name: account.name,
        preferred_username: id.split('@')[0],
        groups: account.groups,
      };
      if (id === 'unsaid@example.com') delete claims.email_verified;
      return claims;
    },
  }),
};

const server = http.createServer();
server.listen(requestedPort, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, configuration);
  provider.on('server_error', (_ctx, err) => console.error('sso-provider server_error:', err));
  server.on('request', provider.callback());
  console.log(`READY ${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
