// The test identity provider for jitgate's integration tests: a real OpenID Connect provider
// (node `oidc-provider` 9) with fixed accounts, one confidential client and a few test-only
// control endpoints. Test use only: plain http on 127.0.0.1, in-memory state.
//
//   node tests/idp/idp.mjs --port N [--exit-with-stdin]
//
// --port 0 picks a free port. When it serves, it prints one JSON line to stdout,
// {"issuer":"http://127.0.0.1:PORT","port":PORT}, and serves until killed (or, with
// --exit-with-stdin, until its stdin closes, so it never outlives the test that started it).
// See README.md beside this file for the accounts and the /test/* endpoints.

import {
  createHash, createHmac, createPrivateKey, generateKeyPairSync, randomBytes, randomUUID,
} from 'node:crypto';
import { createServer } from 'node:http';

import * as jose from 'jose';
import Provider from 'oidc-provider';

// Where a start spends its time, to stderr (the tests show it when a start fails): these
// lines are how a start that printed nothing for 30 s was traced to Node's key generation
// (see newRsaKey). performance.now() counts from the process's start, module loading included.
function stage(what) {
  process.stderr.write(`idp: ${what} at ${Math.round(performance.now())} ms\n`);
}
stage('modules loaded');

// ---------------------------------------------------------------------------------------------
// Command line

function parseArgs(argv) {
  const out = { port: 0, exitWithStdin: false };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === '--port') {
      out.port = Number(argv[(i += 1)]);
    } else if (a.startsWith('--port=')) {
      out.port = Number(a.slice('--port='.length));
    } else if (a === '--exit-with-stdin') {
      out.exitWithStdin = true;
    } else {
      fail(`unknown argument ${a}; usage: idp.mjs --port N [--exit-with-stdin]`);
    }
  }
  if (!Number.isInteger(out.port) || out.port < 0 || out.port > 65535) {
    fail('--port needs a number from 0 to 65535');
  }
  return out;
}

function fail(msg) {
  process.stderr.write(`idp: ${msg}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Accounts: the login name is the email (mallory's is not: their email claim is crafted), the
// password is `<localpart>-idp-pw`.

const ACCOUNTS = [
  { login: 'alice@example.com', sub: 'u-alice', email: 'alice@example.com', name: 'Alice Example', groups: ['dba'] },
  { login: 'bob@example.com', sub: 'u-bob', email: 'bob@example.com', name: 'Bob Example', groups: ['dba-leads'] },
  { login: 'carol@example.com', sub: 'u-carol', email: 'carol@example.com', name: 'Carol Example', groups: ['dba-leads'] },
  { login: 'sec@example.com', sub: 'u-sec', email: 'sec@example.com', name: 'Security Officer', groups: ['security'] },
  // A domain the proxy does not allow.
  { login: 'eve@evil.com', sub: 'u-eve', email: 'eve@evil.com', name: 'Eve Evil', groups: ['dba'] },
  // An email claim that ends in an allowed domain but whose real domain is evil.com.
  { login: 'mallory@example.com', sub: 'u-mallory', email: 'a@evil.com@example.com', name: 'Mallory', groups: ['dba'] },
  // Another person at the IdP whose (verified) address was once alice's: a recycled address.
  { login: 'alice.twin@example.com', sub: 'u-alice-twin', email: 'alice@example.com', name: 'Not Alice', groups: ['dba-leads'] },
  { login: 'unverified@example.com', sub: 'u-unverified', email: 'unverified@example.com', name: 'Unverified User', groups: ['dba'], emailVerified: false },
].map((a) => ({ emailVerified: true, password: `${a.login.split('@')[0]}-idp-pw`, ...a }));

const BY_SUB = new Map(ACCOUNTS.map((a) => [a.sub, a]));
const BY_LOGIN = new Map(ACCOUNTS.map((a) => [a.login.toLowerCase(), a]));

function checkPassword(login, password) {
  const account = BY_LOGIN.get(String(login || '').trim().toLowerCase());
  if (!account) return undefined;
  // Constant-time enough for a test IdP: compare digests.
  const h = (s) => createHash('sha256').update(String(s)).digest('hex');
  return h(account.password) === h(password) ? account : undefined;
}

// ---------------------------------------------------------------------------------------------
// The signing key: a new RS256 key pair and kid at every start (a restart rotates the key).

// A new RSA key pair, as PEM text from the generation and a private KeyObject parsed from it.
// Not the KeyObjects generateKeyPairSync returns: in Node 20 they share a lock with the
// generation job, and when the garbage collector runs while such a key is in use (an export
// allocates, and any allocation may collect) the job's destructor waits on the lock its
// caller holds, for ever. The IdP tests hung that way at a start in about 1 run in 8
// (gdb: ~KeyGenJob under ExportJWKRsaKey). Keys parsed from PEM have locks of their own.
function newRsaKey() {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return { privateKey: createPrivateKey(privateKey), publicPem: publicKey };
}

const { privateKey, publicPem: PUBLIC_PEM } = newRsaKey();
const KID = randomUUID();
stage('signing key generated');
const PRIVATE_JWK = { ...privateKey.export({ format: 'jwk' }), kid: KID, alg: 'RS256', use: 'sig' };

// ---------------------------------------------------------------------------------------------
// Tampering with the next ID token (POST /test/tamper).

const TAMPER_MODES = new Set([
  'wrong-nonce', 'wrong-aud', 'wrong-iss', 'expired', 'alg-none',
  'hs256-with-public-key', 'unknown-kid', 'bad-signature', 'no-groups',
]);
let pendingTamper = null;

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const encodePart = (obj) => b64url(JSON.stringify(obj));

async function signRs256(header, claims, key) {
  return new jose.CompactSign(new TextEncoder().encode(JSON.stringify(claims)))
    .setProtectedHeader(header)
    .sign(key);
}

async function tamper(mode, idToken) {
  const header = jose.decodeProtectedHeader(idToken);
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  switch (mode) {
    case 'wrong-nonce':
      return signRs256(header, { ...claims, nonce: `tampered-${randomUUID()}` }, privateKey);
    case 'wrong-aud':
      return signRs256(header, { ...claims, aud: 'someone-else' }, privateKey);
    case 'wrong-iss':
      return signRs256(header, { ...claims, iss: 'http://127.0.0.1:9/not-the-issuer' }, privateKey);
    case 'expired': {
      // Both in the past: issued 3 h ago, expired 2 h ago.
      const shifted = { ...claims, iat: now - 3 * 3600, exp: now - 2 * 3600 };
      if (claims.auth_time !== undefined) shifted.auth_time = now - 3 * 3600;
      return signRs256(header, shifted, privateKey);
    }
    case 'no-groups': {
      const { groups, ...rest } = claims;
      return signRs256(header, rest, privateKey);
    }
    case 'alg-none':
      return `${encodePart({ alg: 'none', typ: header.typ ?? 'JWT' })}.${encodePart(claims)}.`;
    case 'hs256-with-public-key': {
      // Key confusion: an HMAC "signature" keyed with the RSA public key's PEM (SPKI) text,
      // which anyone can fetch. A verifier that lets the token pick the algorithm accepts it.
      const input = `${encodePart({ alg: 'HS256', typ: header.typ ?? 'JWT', kid: header.kid })}.${encodePart(claims)}`;
      return `${input}.${createHmac('sha256', PUBLIC_PEM).update(input).digest('base64url')}`;
    }
    case 'unknown-kid': {
      const { privateKey: other } = newRsaKey();
      return signRs256({ ...header, kid: `unknown-${randomUUID()}` }, claims, other);
    }
    case 'bad-signature': {
      const [h, p, s] = idToken.split('.');
      const sig = Buffer.from(s, 'base64url');
      sig[sig.length - 1] ^= 0x01;
      return `${h}.${p}.${b64url(sig)}`;
    }
    default:
      throw new Error(`unknown tamper mode ${mode}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Small HTML pages (login form, device pages). Field names are what the tests' scripts fill in.

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
})[c]);

function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>
`;
}

function loginPage(uid, { message, login } = {}) {
  return page('Sign in to the test IdP', `${message ? `<p class="error">${esc(message)}</p>\n` : ''}<form method="post" action="/interaction/${esc(uid)}/login">
<label>Email <input type="text" name="login" value="${esc(login)}" autofocus></label>
<label>Password <input type="password" name="password"></label>
<button type="submit">Sign in</button>
</form>
<p><a href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

function sendHtml(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

function sendJson(res, status, value) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Cache-Control', 'no-store');
  res.end(JSON.stringify(value));
}

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// ---------------------------------------------------------------------------------------------
// The provider

function configuration() {
  return {
    clients: [{
      client_id: 'jitgate',
      client_secret: 'jitgate-test-secret',
      client_name: 'jitgate',
      application_type: 'web',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      id_token_signed_response_alg: 'RS256',
      // Placeholders: the proxy's real port is only known later, see redirectUriAllowed below.
      redirect_uris: ['https://127.0.0.1:45678/auth/callback'],
      post_logout_redirect_uris: ['https://127.0.0.1:45678/'],
    }],
    jwks: { keys: [PRIVATE_JWK] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    // The requested scopes' claims go into the ID token itself, not only to userinfo.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    // Issue a refresh token whenever the client may use one (not only for offline_access).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AuthorizationCode: 60,
      IdToken: 3600,
      AccessToken: 3600,
      DeviceCode: 600,
      RefreshToken: 24 * 3600,
      Interaction: 3600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
    },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          ctx.body = page('Sign out of the test IdP?', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.body = page('Signed out', '<p>You are signed out of the test IdP.</p>');
        },
      },
      deviceFlow: {
        enabled: true,
        userCodeInputSource: async (ctx, form, _out, err) => {
          let msg = '<p>Enter the code displayed on your device</p>';
          if (err) msg = `<p class="error">${esc(err.userCode || err.name === 'NoCodeError'
            ? 'The code you entered is incorrect. Try again'
            : `There was an error processing your request (${err.name}: ${err.message})`)}</p>`;
          ctx.body = page('Device sign-in', `${msg}
${form}
<button type="submit" form="op.deviceInputForm">Continue</button>`);
        },
        userCodeConfirmSource: async (ctx, form, client, _deviceInfo, userCode) => {
          ctx.body = page('Confirm device', `<p>${esc(client.clientName || client.clientId)} asks to sign in. Check that your device shows <code>${esc(userCode)}</code>.</p>
${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
        },
        successSource: async (ctx) => {
          ctx.body = page('Device signed in', '<p id="device-success">Your device is signed in; you can close this page.</p>');
        },
      },
    },
    findAccount: async (_ctx, sub) => {
      const a = BY_SUB.get(sub);
      // A disabled account is gone for the IdP: logins fail and refresh grants are refused.
      if (!a || a.disabled) return undefined;
      return {
        accountId: a.sub,
        claims: async () => ({
          sub: a.sub, email: a.email, email_verified: a.emailVerified, name: a.name, groups: a.groups,
        }),
      };
    },
    // No consent page: the grant covers whatever OpenID scopes and claims the client asks for.
    loadExistingGrant: async (ctx) => {
      const { client, session } = ctx.oidc;
      const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
      let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      if (!grant || grant.accountId !== session.accountId || grant.clientId !== client.clientId) {
        grant = new ctx.oidc.provider.Grant({ accountId: session.accountId, clientId: client.clientId });
      }
      const scopes = [...ctx.oidc.requestParamOIDCScopes];
      if (scopes.length) grant.addOIDCScope(scopes.join(' '));
      const claims = [...ctx.oidc.requestParamClaims];
      if (claims.length) grant.addOIDCClaims(claims);
      await grant.save();
      return grant;
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Test IdP error', Object.entries(out)
        .map(([k, v]) => `<pre><strong>${esc(k)}</strong>: ${esc(v)}</pre>`).join('\n'));
    },
  };
}

function isLoopbackHttps(value, pathOk) {
  let url;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  return url.protocol === 'https:'
    && (url.hostname === '127.0.0.1' || url.hostname === 'localhost')
    && url.port !== ''
    && url.username === '' && url.password === '' && url.hash === ''
    && pathOk(url);
}

function buildProvider(issuer) {
  const provider = new Provider(issuer, configuration());

  // The one test-only loosening: the proxy under test listens on a random port, unknown when
  // this IdP starts, so its callback (https://127.0.0.1:<any port>/auth/callback, or localhost)
  // and its post-logout targets (https://127.0.0.1:<any port>/...) are accepted besides the
  // registered URIs. A real deployment registers exact URIs.
  const { redirectUriAllowed, postLogoutRedirectUriAllowed } = provider.Client.prototype;
  provider.Client.prototype.redirectUriAllowed = function allowed(value) {
    return redirectUriAllowed.call(this, value)
      || isLoopbackHttps(value, (u) => u.pathname === '/auth/callback' && u.search === '');
  };
  provider.Client.prototype.postLogoutRedirectUriAllowed = function allowed(value) {
    return postLogoutRedirectUriAllowed.call(this, value)
      || isLoopbackHttps(value, (u) => u.hostname === '127.0.0.1');
  };

  // POST /test/tamper: rewrite the id_token of the next authorization_code token response.
  provider.use(async (ctx, next) => {
    await next();
    if (
      pendingTamper
      && ctx.path === '/token'
      && ctx.status === 200
      && ctx.oidc?.params?.grant_type === 'authorization_code'
      && typeof ctx.body?.id_token === 'string'
    ) {
      const mode = pendingTamper;
      pendingTamper = null;
      ctx.body = { ...ctx.body, id_token: await tamper(mode, ctx.body.id_token) };
      process.stderr.write(`idp: tampered the id_token: ${mode}\n`);
    }
  });

  return provider;
}

// ---------------------------------------------------------------------------------------------
// Routes served next to the provider: the login interaction and the test controls.

async function interaction(provider, req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login|\/abort)?$/);
  if (!m) return sendHtml(res, 404, page('Not found', ''));
  const [, uid, action] = m;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    return sendHtml(res, 400, page('Test IdP error', `<pre>${esc(e.message)}</pre>`));
  }
  if (details.uid !== uid) return sendHtml(res, 400, page('Test IdP error', '<pre>interaction mismatch</pre>'));

  if (action === '/abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  const { prompt, params, session, grantId } = details;
  if (prompt.name === 'consent') {
    // Only when the client insists (prompt=consent): grant what is missing without a page.
    let grant = grantId ? await provider.Grant.find(grantId) : undefined;
    if (!grant) grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const id = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId: id } }, { mergeWithLastSubmission: true });
  }
  if (prompt.name !== 'login') {
    return sendHtml(res, 501, page('Test IdP error', `<pre>prompt ${esc(prompt.name)} is not implemented</pre>`));
  }

  if (req.method === 'GET' && !action) {
    return sendHtml(res, 200, loginPage(uid, { login: params.login_hint }));
  }
  if (req.method === 'POST' && action === '/login') {
    const form = new URLSearchParams(await readBody(req));
    const account = checkPassword(form.get('login'), form.get('password'));
    if (!account) {
      return sendHtml(res, 401, loginPage(uid, { message: 'Invalid email or password.', login: form.get('login') }));
    }
    return provider.interactionFinished(req, res, {
      login: { accountId: account.sub, amr: ['pwd'] },
    }, { mergeWithLastSubmission: false });
  }
  return sendHtml(res, 405, page('Method not allowed', ''));
}

async function testControl(req, res, url) {
  if (url.pathname === '/test/health' && req.method === 'GET') {
    return sendJson(res, 200, { ok: true, kid: KID, public_key_pem: PUBLIC_PEM });
  }
  if (url.pathname === '/test/tamper' && req.method === 'POST') {
    let mode;
    try {
      ({ mode } = JSON.parse(await readBody(req)));
    } catch {
      return sendJson(res, 400, { error: 'body must be JSON {"mode": M}' });
    }
    if (mode === 'off' || mode === null) {
      pendingTamper = null;
      return sendJson(res, 200, { mode: null });
    }
    if (!TAMPER_MODES.has(mode)) {
      return sendJson(res, 400, { error: `unknown mode ${mode}`, modes: [...TAMPER_MODES] });
    }
    pendingTamper = mode;
    return sendJson(res, 200, { mode });
  }
  // POST /test/account: change an account the way an IdP admin would, e.g.
  // {"login": "alice@example.com", "groups": ["dba", "security"]} or {"login": …, "disabled": true}.
  if (url.pathname === '/test/account' && req.method === 'POST') {
    let change;
    try {
      change = JSON.parse(await readBody(req));
    } catch {
      return sendJson(res, 400, { error: 'body must be JSON {"login": L, "groups"?: [...], "disabled"?: bool}' });
    }
    const account = BY_LOGIN.get(String(change.login || '').toLowerCase());
    if (!account) return sendJson(res, 404, { error: `no account ${change.login}` });
    if (Array.isArray(change.groups)) account.groups = change.groups.map(String);
    if (typeof change.disabled === 'boolean') account.disabled = change.disabled;
    return sendJson(res, 200, { login: account.login, groups: account.groups, disabled: !!account.disabled });
  }
  return sendJson(res, 404, { error: 'no such test endpoint' });
}

// ---------------------------------------------------------------------------------------------

const args = parseArgs(process.argv.slice(2));
let provider = null;
let providerCallback = null;

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  let handled;
  if (!provider) {
    handled = Promise.resolve(sendJson(res, 503, { error: 'starting' }));
  } else if (url.pathname.startsWith('/test/')) {
    handled = testControl(req, res, url);
  } else if (url.pathname.startsWith('/interaction/')) {
    handled = interaction(provider, req, res, url);
  } else {
    providerCallback(req, res);
    return;
  }
  handled.catch((e) => {
    process.stderr.write(`idp: ${req.method} ${url.pathname}: ${e.stack || e}\n`);
    if (!res.headersSent) sendHtml(res, 500, page('Test IdP error', `<pre>${esc(e.message)}</pre>`));
    else res.end();
  });
});

server.on('error', (e) => fail(`cannot listen on 127.0.0.1:${args.port}: ${e.message}`));
server.listen(args.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  stage(`listening on ${port}`);
  provider = buildProvider(issuer);
  provider.on('server_error', (_ctx, e) => process.stderr.write(`idp: server_error: ${e.stack || e}\n`));
  providerCallback = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
  stage('serving');
});

if (args.exitWithStdin) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
