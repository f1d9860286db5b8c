// A real OpenID Provider (oidc-provider) for Weir's tests, on 127.0.0.1:$PORT.
// Device-code grant enabled; interactions log in the account the test names
// (GET /test/device?user_code=...&account=alice drives the user's side of the device flow).
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { generateKeyPair, exportJWK } from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(process.env.ACCOUNTS || '{"alice":{"email":"alice@example.com","groups":["dba"]}}');
const keysFile = process.env.KEYS_FILE;

async function keys() {
  if (keysFile && existsSync(keysFile)) return JSON.parse(readFileSync(keysFile, 'utf8'));
  const out = [];
  for (const [alg, kid] of [['RS256', `rs-${Date.now()}`], ['ES256', `es-${Date.now()}`], ['EdDSA', `ed-${Date.now()}`]]) {
    const { privateKey } = await generateKeyPair(alg, { extractable: true, crv: alg === 'EdDSA' ? 'Ed25519' : undefined });
    const jwk = await exportJWK(privateKey);
    out.push({ ...jwk, kid, alg, use: 'sig' });
  }
  const set = { keys: out };
  if (keysFile) writeFileSync(keysFile, JSON.stringify(set));
  return set;
}

const form = (action, fields) => `<!DOCTYPE html><form method="post" action="${action}">` +
  Object.entries(fields).map(([k, v]) => `<input type="hidden" name="${k}" value="${v}">`).join('') + '</form>';

const provider = new Provider(issuer, {
  jwks: await keys(),
  // `weir` is the gateway's audience; `other` is some other application of the same IdP.
  // With REDIRECT_URIS (comma-separated), `weir` is also a public authorization-code client
  // redirecting there: the console's sign-in (PKCE is then required).
  clients: ['weir', 'other'].map((client_id) => {
    const redirects = client_id === 'weir' ? (process.env.REDIRECT_URIS || '').split(',').filter(Boolean) : [];
    return {
      client_id, token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token', ...(redirects.length ? ['authorization_code'] : [])],
      response_types: redirects.length ? ['code'] : [], redirect_uris: redirects,
      id_token_signed_response_alg: process.env.ID_TOKEN_ALG || 'RS256',
    };
  }),
  scopes: ['openid', 'email', 'groups', 'offline_access'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  features: { devInteractions: { enabled: false }, deviceFlow: { enabled: true,
    userCodeInputSource: async (ctx, f) => { ctx.body = `<!DOCTYPE html>${f}`; },
    userCodeConfirmSource: async (ctx, f, client, info, userCode) => { ctx.body = `<!DOCTYPE html>${f}<p>code ${userCode}</p>`; },
    successSource: async (ctx) => { ctx.body = 'device-flow-done'; },
  } },
  ttl: { IdToken: Number(process.env.ID_TOKEN_TTL || 3600), AccessToken: 3600, DeviceCode: 600, RefreshToken: 86400, Grant: 86400, Interaction: 600, Session: 86400 },
  issueRefreshToken: async () => true,
  findAccount: async (ctx, id) => {
    const a = accounts[id];
    if (!a) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, email: a.email, email_verified: true, groups: a.groups || [] }) };
  },
  pkce: { required: (ctx, client) => client.redirectUris && client.redirectUris.length > 0 },
  // Scope claims (email, groups) go into the ID token itself: Weir reads them there.
  conformIdTokenClaims: false,
});

let nextAccount = null;
provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (m) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    let result;
    if (details.prompt.name === 'login') {
      result = { login: { accountId: nextAccount } };
    } else {
      const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      grant.addOIDCScope(details.params.scope || 'openid');
      result = { consent: { grantId: await grant.save() } };
    }
    await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
    return;
  }
  if (ctx.path === '/test/account') {
    // The next interactive sign-in (the authorization-code flow) logs in this account.
    nextAccount = ctx.query.account;
    ctx.body = 'ok';
    return;
  }
  if (ctx.path === '/test/device') {
    nextAccount = ctx.query.account;
    ctx.body = await driveDevice(String(ctx.query.user_code));
    return;
  }
  await next();
});

// The user's side of the device flow, as a browser would do it, against this server.
async function driveDevice(userCode) {
  const jar = new Map();
  const cookie = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const keep = (res) => { for (const c of res.headers.getSetCookie()) { const [kv] = c.split(';'); const i = kv.indexOf('='); jar.set(kv.slice(0, i), kv.slice(i + 1)); } };
  let res = await fetch(`${issuer}/device?user_code=${encodeURIComponent(userCode)}`, { headers: { cookie: cookie() }, redirect: 'manual' });
  keep(res);
  const html = await res.text();
  const xsrf = html.match(/name="xsrf" value="([^"]+)"/)?.[1];
  if (!xsrf) return `no xsrf in: ${html.slice(0, 300)}`;
  res = await fetch(`${issuer}/device`, { method: 'POST', headers: { cookie: cookie(), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ xsrf, user_code: userCode, confirm: 'yes' }), redirect: 'manual' });
  keep(res);
  for (let hops = 0; hops < 20 && res.status >= 300 && res.status < 400; hops++) {
    const loc = new URL(res.headers.get('location'), issuer);
    res = await fetch(loc, { headers: { cookie: cookie() }, redirect: 'manual' });
    keep(res);
  }
  return await res.text();
}

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
