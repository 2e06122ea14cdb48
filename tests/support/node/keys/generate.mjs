// Generates the FIXED, TEST-ONLY signing keys of the local OpenID Provider
// used by portcullis's integration tests. They were generated once and are
// committed so tokens and JWKS are reproducible; never trust them anywhere.
//
// Usage (only to replace them): node generate.mjs
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';

const keys = [
  { name: 'rs256', kid: 'portcullis-test-rs256', alg: 'RS256', type: 'rsa', opts: { modulusLength: 2048 } },
  { name: 'es256', kid: 'portcullis-test-es256', alg: 'ES256', type: 'ec', opts: { namedCurve: 'P-256' } },
  // Never served by the provider: signs tokens with a key portcullis must not know.
  { name: 'rogue-rs256', kid: 'portcullis-test-rogue', alg: 'RS256', type: 'rsa', opts: { modulusLength: 2048 } },
];

for (const { name, kid, alg, type, opts } of keys) {
  const { privateKey, publicKey } = generateKeyPairSync(type, opts);
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
  writeFileSync(`${name}.private.jwk.json`, `${JSON.stringify(jwk, null, 2)}\n`);
  writeFileSync(`${name}.private.pem`, privateKey.export({ format: 'pem', type: 'pkcs8' }));
  writeFileSync(`${name}.public.pem`, publicKey.export({ format: 'pem', type: 'spki' }));
}
