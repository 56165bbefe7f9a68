// OAuth 2.0 provider of the messenger-bridge local stack, with the Live Connect profile.
//
// A real, maintained authorization server (oidc-provider) configured the way Messenger's OAuth
// provider (login.live.com) looked to clients (DESIGN.md §2):
//   authorize  /oauth20_authorize.srf     token   /oauth20_token.srf
//   device     /oauth20_connect.srf       device verification page /oauth20_remoteconnect.srf
//   introspection /oauth20_introspect.srf (RFC 7662; for the XMPP server)
//   revocation    /oauth20_revoke.srf     (RFC 7009)
//   scopes wl.messenger, wl.offline_access, wl.basic, wl.signin (and openid, offline_access)
//   authorization code with PKCE (RFC 7636) required, refresh tokens only when
//   wl.offline_access (or offline_access) was granted, rotated on every use (RFC 9700 §4.14.2),
//   device authorization grant (RFC 8628), opaque access tokens (usable as raw SASL text).
// Sign-in and consent pages are served here (plain HTML forms) and check the seeded accounts
// of deploy/local/seed/accounts.json: login `alice`, password `alicepass`, etc.
//
// Configuration: environment variables (set by deploy/local/stack):
//   OAUTH_PORT (29318), OAUTH_BIND (127.0.0.1), OAUTH_ISSUER, OAUTH_ACCESS_TOKEN_TTL (3600),
//   OAUTH_REFRESH_TOKEN_TTL (14 days), OAUTH_STATE_DIR (persistent store + signing key),
//   OAUTH_SEED_FILE, OAUTH_CLIENT_SECRET (messenger-bridge), OAUTH_PROSODY_SECRET,
//   OAUTH_SMOKE_SECRET, OAUTH_COOKIE_KEY.

import { createServer } from 'node:http';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import Provider from 'oidc-provider';
import { createFileAdapter } from './file_adapter.js';

const env = (name, dflt) => {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (dflt === undefined) throw new Error(`missing environment variable ${name}`);
    return dflt;
  }
  return v;
};

const PORT = Number(env('OAUTH_PORT', '29318'));
const BIND = env('OAUTH_BIND', '127.0.0.1');
const ISSUER = env('OAUTH_ISSUER', `http://${BIND}:${PORT}`);
const ACCESS_TTL = Number(env('OAUTH_ACCESS_TOKEN_TTL', '3600'));
const REFRESH_TTL = Number(env('OAUTH_REFRESH_TOKEN_TTL', String(14 * 24 * 3600)));
const STATE_DIR = env('OAUTH_STATE_DIR');
const SEED = JSON.parse(readFileSync(env('OAUTH_SEED_FILE'), 'utf8'));
const ACCOUNTS = SEED.accounts;

const LIVE_SCOPES = ['wl.messenger', 'wl.offline_access', 'wl.basic', 'wl.signin'];
const OFFLINE_SCOPES = new Set(['wl.offline_access', 'offline_access']);

mkdirSync(STATE_DIR, { recursive: true });

// One signing key per state dir (only used if a client asks for `openid` ID tokens).
function signingKeys() {
  const file = join(STATE_DIR, 'jwks.json');
  if (!existsSync(file)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'stack-1', use: 'sig', alg: 'RS256' };
    writeFileSync(file, JSON.stringify({ keys: [jwk] }), { mode: 0o600 });
  }
  return JSON.parse(readFileSync(file, 'utf8'));
}

const bridgeRedirects = [
  'http://127.0.0.1:29317/login/callback',
  'http://localhost:29317/login/callback',
];

const clients = [
  {
    // The bridge: confidential; client_secret_basic or client_secret_post both work.
    client_id: 'messenger-bridge',
    client_secret: env('OAUTH_CLIENT_SECRET'),
    redirect_uris: bridgeRedirects,
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    // The bridge as a public client (no secret; PKCE), as an operator without a client secret
    // configures it: every token request carries only client_id.
    client_id: 'messenger-bridge-public',
    redirect_uris: bridgeRedirects,
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
  },
  {
    // tests/stack smoke test: confidential too, so it can also introspect and revoke.
    client_id: 'smoke-test',
    client_secret: env('OAUTH_SMOKE_SECRET'),
    redirect_uris: ['http://127.0.0.1:29399/callback'],
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    // The XMPP server: only calls introspection.
    client_id: 'prosody',
    client_secret: env('OAUTH_PROSODY_SECRET'),
    redirect_uris: [],
    grant_types: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  },
];

async function findAccount(_ctx, sub) {
  const account = ACCOUNTS[sub];
  if (!account) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { sub, name: account.fn, nickname: account.nickname, email: account.email };
    },
  };
}

const configuration = {
  adapter: createFileAdapter(join(STATE_DIR, 'store.json')),
  clients,
  findAccount,
  jwks: signingKeys(),
  cookies: { keys: [env('OAUTH_COOKIE_KEY')] },
  scopes: ['openid', 'offline_access', ...LIVE_SCOPES],
  claims: { openid: ['sub'], 'wl.basic': ['name', 'nickname'], 'wl.signin': ['email'] },
  responseTypes: ['code'],
  pkce: { required: () => true },
  routes: {
    authorization: '/oauth20_authorize.srf',
    token: '/oauth20_token.srf',
    device_authorization: '/oauth20_connect.srf',
    code_verification: '/oauth20_remoteconnect.srf',
    introspection: '/oauth20_introspect.srf',
    revocation: '/oauth20_revoke.srf',
    userinfo: '/v5.0/me',
    jwks: '/jwks',
    end_session: '/oauth20_logout.srf',
  },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    introspection: {
      enabled: true,
      // Any confidential client (the XMPP server, the bridge, the smoke test) may introspect.
      allowedPolicy: async (_ctx, client) => client.clientAuthMethod !== 'none',
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
    },
    userinfo: { enabled: true },
  },
  issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && [...OFFLINE_SCOPES].some((s) => code.scopes.has(s)),
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: ACCESS_TTL,
    AuthorizationCode: 600,
    DeviceCode: 600,
    Grant: REFRESH_TTL,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: REFRESH_TTL,
    Session: 14 * 24 * 3600,
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Sign-in error', `<p id="error">${esc(out.error)}: ${esc(out.error_description || '')}</p>`);
  },
};

const provider = new Provider(ISSUER, configuration);
provider.proxy = false;

// ---- sign-in and consent pages ------------------------------------------------------------

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:26em;margin:3em auto}input,button{font-size:1em;margin:.3em 0;padding:.3em}</style>
</head><body><h1>${esc(title)}</h1>${body}<p><small>messenger-bridge local stack — test accounts only</small></p></body></html>`;
}

function loginPage(uid, client, error) {
  return page('Sign in', `<p>Sign in to continue to <b>${esc(client?.clientId)}</b>.</p>
${error ? `<p id="error" style="color:#b00">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label>Account<br><input name="login" id="login" autofocus required></label><br>
<label>Password<br><input name="password" id="password" type="password" required></label><br>
<button type="submit" id="submit">Sign in</button></form>`);
}

function consentPage(uid, client, scopes) {
  const items = scopes.map((s) => `<li>${esc(s)}</li>`).join('');
  return page('Allow access?', `<p><b>${esc(client?.clientId)}</b> asks for:</p><ul id="scopes">${items}</ul>
<form method="post" action="/interaction/${esc(uid)}/confirm"><button type="submit" id="allow">Yes</button></form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button type="submit" id="deny">No</button></form>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16384) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, html) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(html);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  const { prompt, params } = details;
  const client = await provider.Client.find(params.client_id);

  if (req.method === 'GET') {
    if (prompt.name === 'login') return send(res, 200, loginPage(uid, client));
    const scopes = String(params.scope || '').split(' ').filter(Boolean);
    return send(res, 200, consentPage(uid, client, scopes));
  }

  if (action === 'login') {
    const form = await readForm(req);
    const login = String(form.get('login') || '').trim().toLowerCase();
    const account = ACCOUNTS[login];
    if (!account || form.get('password') !== account.password) {
      return send(res, 200, loginPage(uid, client, 'Wrong account name or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
  }

  if (action === 'confirm') {
    await readForm(req);
    const { grantId, session } = details;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details.missingOIDCScope;
    if (missing) grant.addOIDCScope(missing.join(' '));
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const id = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId: id } }, { mergeWithLastSubmission: true });
  }

  if (action === 'abort') {
    await readForm(req);
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'The user denied access',
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 404, page('Not found', ''));
}

const callback = provider.callback();

const server = createServer(async (req, res) => {
  const url = new URL(req.url, ISSUER);
  const m = url.pathname.match(/^\/interaction\/([\w-]+)(?:\/(login|confirm|abort))?$/);
  try {
    if (url.pathname === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      return res.end('ok\n');
    }
    if (m) return await interaction(req, res, m[1], m[2]);
    return callback(req, res);
  } catch (err) {
    console.error(`oauth-provider: ${req.method} ${url.pathname}: ${err.stack || err}`);
    if (!res.headersSent) send(res, 400, page('Sign-in error', `<p id="error">${esc(err.message)}</p>`));
    else res.end();
  }
});

provider.on('server_error', (_ctx, err) => console.error('oauth-provider server_error:', err));

server.listen(PORT, BIND, () => {
  console.log(`oauth-provider: listening on ${BIND}:${PORT}, issuer ${ISSUER}, access token TTL ${ACCESS_TTL}s`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  // Every store write is synchronous, so there is nothing to flush: exit at once.
  process.on(sig, () => process.exit(0));
}
