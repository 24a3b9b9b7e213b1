// The console in a real browser: headless Chromium (Debian's `chromium`) driven by
// playwright-core, two people on two machines (two browser contexts) against a running proxy
// and the test IdP. Run by tests/browser.rs; usable by hand against any running pair:
//
//   PROXY_URL=https://127.0.0.1:PORT SERVER_CERT=DIR/certs/server.pem node tests/idp/browser.mjs
//
// Environment:
//   PROXY_URL      the proxy's origin (required)
//   SPKI_PIN       base64 SHA-256 of the proxy's server certificate's SubjectPublicKeyInfo; the
//                  only certificate Chromium accepts beyond its own trust store
//   SERVER_CERT    or: the server certificate (PEM), to compute SPKI_PIN from
//   CHROMIUM       the browser binary (default /usr/bin/chromium)
//   ARTIFACTS_DIR  where screenshots and HTML dumps go on failure (default: a new temp dir)
//
// Scenario: alice logs in at the IdP from the start page and asks for db-patch; bob opens the
// request by its deep link, logs in (the rd round trip brings him back to it) and approves;
// alice's page, untouched by this script, turns to the active grant by the console's own
// polling. No CSP violation may happen on any page; the session cookie must be locked down.
//
// Prints one JSON line with what it saw and exits 0, or one line saying what failed on stderr
// (then where the screenshots and HTML dumps are) and exits 1.

import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const STEP_MS = 15_000;
const LIVE_MS = 10_000;
const SESSION_COOKIE = '__Host-jitgate';
const ACCOUNTS = {
  alice: { login: 'alice@example.com', password: 'alice-idp-pw' },
  bob: { login: 'bob@example.com', password: 'bob-idp-pw' },
};
const REQUEST = { profile: 'db-patch', reason: 'INC-4411 patch', duration: '1h' };
const APPROVAL_REASON = 'INC-4411 checked with the on-call DBA';

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

function env(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v;
}

/** base64(SHA-256(SubjectPublicKeyInfo DER)): what --ignore-certificate-errors-spki-list takes. */
function spkiPin(pemPath) {
  const cert = new X509Certificate(readFileSync(pemPath));
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(spki).digest('base64');
}

function config() {
  const proxy = env('PROXY_URL') ?? fail('PROXY_URL is not set');
  const pin = env('SPKI_PIN') ?? (env('SERVER_CERT') ? spkiPin(env('SERVER_CERT')) : fail('set SPKI_PIN or SERVER_CERT'));
  if (!/^[A-Za-z0-9+/]{43}=$/.test(pin)) fail(`SPKI_PIN ${JSON.stringify(pin)} is not a base64 SHA-256`);
  return {
    proxy,
    origin: new URL(proxy).origin,
    pin,
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    artifacts: env('ARTIFACTS_DIR') ?? mkdtempSync(join(tmpdir(), 'jitgate-browser-')),
  };
}

let proxy, origin, pin, executablePath, artifacts;
try {
  ({ proxy, origin, pin, executablePath, artifacts } = config());
} catch (e) {
  process.stderr.write(`browser test: ${e.message.split('\n')[0]}\n`);
  process.exit(1);
}

const pages = {}; // name -> Page, for the failure dump
const csp = []; // every CSP violation seen, on any page of any origin
const consoleErrors = []; // every console error, for the report
const pageErrors = []; // uncaught exceptions in page scripts
const failedResponses = []; // every 4xx/5xx answer a page's load got (a missing favicon, say)

let step = 'start';
let browser;

async function main() {
  step = `launching ${executablePath}`;
  // playwright's launch() gives the browser a fresh --user-data-dir of its own (a temp dir it
  // deletes at close), which --ignore-certificate-errors-spki-list needs to take effect.
  browser = await chromium.launch({
    executablePath,
    headless: true,
    chromiumSandbox: false,
    timeout: STEP_MS,
    // The flags that keep Debian's Chromium quiet and headless in a closed network; `--headless` is added by playwright.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Trust exactly the proxy's server key, nothing else: no ignoreHTTPSErrors.
      `--ignore-certificate-errors-spki-list=${pin}`,
    ],
  });

  const alice = await person(browser, 'alice');
  const bob = await person(browser, 'bob');

  // 1. alice: the start page, the IdP, back on the console, then a request.
  step = 'alice opens the start page';
  const aliceTls = await alice.goto(`${proxy}/`, { waitUntil: 'load' });
  if (!aliceTls || !aliceTls.ok()) fail(`GET / answered ${aliceTls && aliceTls.status()}`);
  await logInAtIdp(alice, 'alice');
  step = 'alice is back on the console';
  await alice.waitForURL((u) => u.origin === origin && u.pathname === '/', { timeout: STEP_MS });
  const aliceName = (await alice.locator('header .who').textContent({ timeout: STEP_MS })).trim();
  if (!aliceName.includes('alice')) fail(`the console's header names ${JSON.stringify(aliceName)}, not alice`);

  step = "alice's session cookie";
  const cookie = (await alice.context().cookies(origin)).find((c) => c.name === SESSION_COOKIE);
  if (!cookie) fail(`no ${SESSION_COOKIE} cookie in alice's browser after the login`);
  if (!cookie.httpOnly) fail(`${SESSION_COOKIE} is not HttpOnly`);
  if (!cookie.secure) fail(`${SESSION_COOKIE} is not Secure`);
  if (cookie.sameSite !== 'Lax') fail(`${SESSION_COOKIE} is SameSite=${cookie.sameSite}, not Lax`);
  if (cookie.path !== '/') fail(`${SESSION_COOKIE} has Path=${cookie.path}, not /`);

  step = 'alice asks for db-patch';
  const form = alice.locator('form.new-request');
  await form.locator('select[name=profile]').selectOption(REQUEST.profile, { timeout: STEP_MS });
  await form.locator('input[name=reason]').fill(REQUEST.reason, { timeout: STEP_MS });
  await form.locator('input[name=duration]').fill(REQUEST.duration, { timeout: STEP_MS });
  await Promise.all([
    alice.waitForURL((u) => u.pathname !== '/' || u.search !== '', { timeout: STEP_MS }),
    form.locator('button[type=submit]').click({ timeout: STEP_MS }),
  ]);
  await alice.waitForLoadState('load');
  await refusedPage(alice);
  const created = new URL(alice.url());
  const m = created.pathname.match(/^\/requests\/([A-Za-z0-9-]+)$/);
  if (!m) fail(`after the request form alice is at ${created.pathname}${created.search}, not /requests/ID`);
  const requestId = m[1];

  step = 'alice sees her pending request';
  const stateBefore = await requestState(alice);
  if (stateBefore !== 'pending') fail(`alice's new request is ${stateBefore}, not pending`);
  const reasonShown = await alice.locator('dl.request dd.reason').textContent({ timeout: STEP_MS });
  if (reasonShown.trim() !== REQUEST.reason) fail(`the request page shows reason ${JSON.stringify(reasonShown)}`);
  if (await grantState(alice, 0) !== null) fail('a grant is shown before anyone approved');

  // From here the script never navigates alice's page: only console.js may reload it.
  let aliceReloads = 0;
  alice.on('framenavigated', (f) => {
    if (f === alice.mainFrame()) aliceReloads += 1;
  });

  // 2. bob: the deep link, the IdP, back at the same request, approve.
  step = "bob opens the request's deep link";
  await bob.goto(`${proxy}/requests/${requestId}`, { waitUntil: 'load' });
  await logInAtIdp(bob, 'bob');
  step = 'bob is back at the request after the login';
  await bob.waitForURL((u) => u.origin === origin && u.pathname === `/requests/${requestId}`, { timeout: STEP_MS });
  const bobLanded = new URL(bob.url()).pathname;
  const bobName = (await bob.locator('header .who').textContent({ timeout: STEP_MS })).trim();
  if (!bobName.includes('bob')) fail(`bob's header names ${JSON.stringify(bobName)}, not bob`);
  if ((await requestState(bob)) !== 'pending') fail(`bob sees the request as ${await requestState(bob)}, not pending`);

  step = 'bob approves';
  const decide = bob.locator('form.decide');
  await decide.locator('input[name=reason]').fill(APPROVAL_REASON, { timeout: STEP_MS });
  const approvedAt = Date.now();
  await Promise.all([
    bob.waitForURL((u) => u.search.includes('done=') || u.pathname !== `/requests/${requestId}`, { timeout: STEP_MS }),
    decide.locator('button.approve').click({ timeout: STEP_MS }),
  ]);
  await bob.waitForLoadState('load');
  await refusedPage(bob);
  const done = new URL(bob.url()).searchParams.get('done');
  if (done !== 'approved') fail(`after Approve bob is at ${bob.url()}, not ?done=approved`);
  const bobSees = await grantState(bob, STEP_MS);
  if (bobSees !== 'active') fail(`bob's page shows the grant as ${bobSees}, not active`);

  // 3. alice's page turns by itself.
  step = "alice's page shows the active grant without the script touching it";
  const seen = await grantState(alice, LIVE_MS).catch(() => null);
  if (seen !== 'active') {
    fail(
      `alice's page did not show an active grant within ${LIVE_MS / 1000} s of the approval ` +
        `(console.js reloaded it ${aliceReloads} time(s); it shows request state ${await requestState(alice).catch(() => '?')})`,
    );
  }
  const liveMs = Date.now() - approvedAt;
  if (aliceReloads < 1) fail("alice's page shows the grant but was never reloaded: this is not the live update");
  const stateAfter = await requestState(alice);
  const grantId = (await grantDd(alice).locator('code').first().textContent({ timeout: STEP_MS })).trim();
  const approvals = (await alice.locator('ul.approvals li').allTextContents()).map((t) => t.replace(/\s+/g, ' ').trim());
  if (!approvals.some((a) => a.includes('bob') && a.includes(APPROVAL_REASON))) {
    fail(`alice's page does not list bob's approval with its reason: ${JSON.stringify(approvals)}`);
  }

  // 4. CSP: nothing refused on any page, ever. Give late reports a moment to arrive.
  step = 'CSP';
  await alice.waitForTimeout(300);
  if (csp.length) fail(`CSP violation(s): ${JSON.stringify(csp)}`);
  if (pageErrors.length) fail(`uncaught page error(s): ${JSON.stringify(pageErrors)}`);
  const broken = failedResponses.filter((r) => new URL(r.url).origin === origin);
  if (broken.length) fail(`the proxy answered page loads with errors: ${JSON.stringify(broken)}`);

  const result = {
    request_id: requestId,
    alice: aliceName,
    bob: bobName,
    request_state_before: stateBefore,
    bob_landed: bobLanded,
    approved: done,
    grant_id: grantId,
    grant_state_seen: seen,
    request_state_after: stateAfter,
    live_update_ms: liveMs,
    live_reloads: aliceReloads,
    approvals,
    session_cookie: { name: cookie.name, httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite, path: cookie.path },
    csp_violations: csp.length,
    console_errors: consoleErrors,
    failed_responses: failedResponses,
    tls: 'spki-pin',
    chromium: browser.version(),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/** A person on their own machine: a browser context (own cookies) with one page. */
async function person(b, name) {
  const context = await b.newContext({ locale: 'en-US' });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  // Violations as the document sees them (init scripts run outside the page's CSP); the
  // binding survives the page's reloads.
  await context.exposeBinding('__jitgateCsp', (_source, v) => csp.push({ who: name, ...v }));
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__jitgateCsp({
        page: e.documentURI,
        directive: e.effectiveDirective,
        blocked: e.blockedURI,
        sample: e.sample,
      });
    });
  });
  const page = await context.newPage();
  pages[name] = page;
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    const entry = { who: name, page: page.url(), text };
    consoleErrors.push(entry);
    if (/Content[- ]Security[- ]Policy/i.test(text)) csp.push({ ...entry, from: 'console' });
  });
  page.on('pageerror', (e) => pageErrors.push({ who: name, page: page.url(), error: String(e) }));
  page.on('response', (r) => {
    if (r.status() >= 400) failedResponses.push({ who: name, status: r.status(), url: r.url() });
  });
  return page;
}

/** The `[[oidc]]` name of the test IdP at the proxy (IDP_NAME, default corp). */
const IDP_NAME = env('IDP_NAME', 'corp');

/** From the console's login page: the IdP's button, the IdP's form, back to the proxy. */
async function logInAtIdp(page, who) {
  const { login, password } = ACCOUNTS[who];
  step = `${who} follows the login for IdP ${IDP_NAME}`;
  await page.waitForURL((u) => u.origin === origin && u.pathname === '/', { timeout: STEP_MS });
  const button = page.locator(`ul.providers a[href^="/auth/login?idp=${IDP_NAME}&"]`);
  await Promise.all([
    page.waitForURL((u) => u.origin !== origin, { timeout: STEP_MS }),
    button.click({ timeout: STEP_MS }),
  ]);
  step = `${who} logs in at the IdP`;
  await page.locator('input[name=login]').fill(login, { timeout: STEP_MS });
  await page.locator('input[name=password]').fill(password, { timeout: STEP_MS });
  await Promise.all([
    page.waitForURL((u) => u.origin === origin && u.pathname !== '/auth/callback', { timeout: STEP_MS }),
    page.locator('input[name=password]').press('Enter'),
  ]);
  await page.waitForLoadState('load');
  await refusedPage(page);
}

/** A console error page (its `p.error`) where a normal page was expected. */
async function refusedPage(page) {
  const error = page.locator('main p.error');
  if (await error.count()) {
    const title = await page.locator('main h1').first().textContent().catch(() => '');
    fail(`the proxy answered ${page.url()} with its error page "${title.trim()}": ${(await error.first().textContent()).trim()}`);
  }
  const refused = page.locator('main p.notice.refused');
  if (await refused.count()) fail(`the proxy refused at ${page.url()}: ${(await refused.first().textContent()).trim()}`);
}

/** The request's state badge on a request page. */
async function requestState(page) {
  const dd = page.locator('dd#request-state');
  return (await dd.locator('span.state').first().textContent({ timeout: STEP_MS })).trim();
}

function grantDd(page) {
  return page.locator('dd#grant');
}

/** The grant's state badge on a request page, waiting up to `ms` for one; null if none. */
async function grantState(page, ms) {
  const badge = grantDd(page).locator('span.state').first();
  if (ms > 0) {
    // Waits across the reloads console.js makes.
    await badge.waitFor({ state: 'visible', timeout: ms }).catch(() => {});
    const active = grantDd(page).locator('span.state.active');
    await active.waitFor({ state: 'visible', timeout: Math.min(ms, 2_000) }).catch(() => {});
  }
  if (!(await badge.count())) return null;
  return (await badge.textContent({ timeout: STEP_MS })).trim();
}

async function dump() {
  const out = [];
  try {
    mkdirSync(artifacts, { recursive: true });
  } catch {
    return out;
  }
  for (const [name, page] of Object.entries(pages)) {
    try {
      const png = join(artifacts, `${name}.png`);
      await page.screenshot({ path: png, fullPage: true, timeout: 5_000 });
      out.push(`screenshot ${png}`);
    } catch (e) {
      out.push(`no screenshot of ${name}: ${String(e).split('\n')[0]}`);
    }
    try {
      const html = join(artifacts, `${name}.html`);
      writeFileSync(html, `<!-- ${page.url()} -->\n${await page.content()}`);
      out.push(`html ${html} (${page.url()})`);
    } catch (e) {
      out.push(`no HTML of ${name}: ${String(e).split('\n')[0]}`);
    }
  }
  return out;
}

const watchdog = setTimeout(() => {
  process.stderr.write(`browser test: stuck at "${step}" for too long (120 s in all)\n`);
  process.exit(1);
}, 120_000);

let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  const why = e instanceof Failure ? e.message : String(e && e.message ? e.message : e).split('\n')[0];
  process.stderr.write(`browser test failed at "${step}": ${why}\n`);
  for (const line of await dump()) process.stderr.write(`  ${line}\n`);
  if (consoleErrors.length) process.stderr.write(`  console errors: ${JSON.stringify(consoleErrors)}\n`);
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
process.exit(code);
