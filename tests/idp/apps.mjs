// A browser app behind the proxy, in a real browser: headless Chromium (Debian's `chromium`)
// driven by playwright-core. Run by tests/browser.rs against a running proxy whose app `echo`
// forwards to the test upstream (tests/common/upstream.rs), with local users alice (may
// request echo-admin) and bob (approves it).
//
// Environment:
//   PROXY_URL      the proxy's origin (required)
//   APP_URL        the app's origin, e.g. https://echo.localhost:PORT (required)
//   SPKI_PIN       base64 SHA-256 of the proxy's server key; the only certificate accepted
//   ALICE_PASSWORD, BOB_PASSWORD
//   DURATION       what alice asks for (default 20s)
//   CHROMIUM       the browser binary (default /usr/bin/chromium)
//   ARTIFACTS_DIR  where screenshots and HTML dumps go on failure
//
// Scenario: alice opens the app unauthenticated and is sent to the proxy's login; after it,
// the proxy's page says she has no access and offers the request form; she asks for
// echo-admin. Bob opens the request's deep link, logs in and approves. Alice opens the app:
// the page loads through the proxy and its script's WebSocket echoes. When the grant expires
// the WebSocket closes by itself, and the next page load is the request page again.
//
// Prints one JSON line with what it saw and exits 0, or one line saying what failed on stderr
// (then where the screenshots are) and exits 1.

import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const STEP_MS = 15_000;

class Failure extends Error {}
function fail(message) {
  throw new Failure(message);
}
function env(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v;
}

const proxy = env('PROXY_URL');
const app = env('APP_URL');
const pin = env('SPKI_PIN');
const duration = env('DURATION', '20s');
const executablePath = env('CHROMIUM', '/usr/bin/chromium');
const artifacts = env('ARTIFACTS_DIR') ?? mkdtempSync(join(tmpdir(), 'jitgate-apps-'));
const passwords = { alice: env('ALICE_PASSWORD'), bob: env('BOB_PASSWORD') };
if (!proxy || !app || !pin || !passwords.alice || !passwords.bob) {
  process.stderr.write('apps browser test: set PROXY_URL, APP_URL, SPKI_PIN, ALICE_PASSWORD and BOB_PASSWORD\n');
  process.exit(1);
}
const proxyOrigin = new URL(proxy).origin;
const appOrigin = new URL(app).origin;

const pages = {};
const pageErrors = [];
let step = 'start';
let browser;

async function main() {
  step = `launching ${executablePath}`;
  browser = await chromium.launch({
    executablePath,
    headless: true,
    chromiumSandbox: false,
    timeout: STEP_MS,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // The app's host name is served by the proxy on this machine.
      '--host-resolver-rules=MAP *.localhost 127.0.0.1',
      `--ignore-certificate-errors-spki-list=${pin}`,
    ],
  });
  const alice = await person('alice');
  const bob = await person('bob');

  // 1. alice opens the app, logs in at the proxy, lands on its request page.
  step = 'alice opens the app unauthenticated';
  await alice.goto(`${app}/ui`, { waitUntil: 'load' });
  const loginUrl = new URL(alice.url());
  if (loginUrl.origin !== proxyOrigin || loginUrl.pathname !== '/') fail(`alice was sent to ${alice.url()}, not the proxy's login`);
  await logIn(alice, 'alice');
  step = "alice lands on the proxy's page for the app";
  await alice.waitForURL((u) => u.origin === proxyOrigin && u.pathname === '/apps/echo', { timeout: STEP_MS });
  const title = (await alice.locator('main h1').first().textContent()).trim();
  if (title !== 'No access to echo yet') fail(`the request page says ${JSON.stringify(title)}`);

  step = 'alice asks for echo-admin from that page';
  const form = alice.locator('form.new-request');
  await form.locator('select[name=profile]').selectOption('echo-admin');
  await form.locator('input[name=reason]').fill('INC-5150 fix the dashboard');
  await form.locator('input[name=duration]').fill(duration);
  await Promise.all([
    alice.waitForURL((u) => u.pathname.startsWith('/requests/'), { timeout: STEP_MS }),
    form.locator('button[type=submit]').click(),
  ]);
  const requestId = new URL(alice.url()).pathname.split('/')[2];

  step = 'alice opens the app while the request waits';
  await alice.goto(`${app}/ui`, { waitUntil: 'load' });
  if (new URL(alice.url()).pathname !== '/apps/echo') fail(`before approval alice reached ${alice.url()}`);

  // 2. bob approves on the deep link.
  step = "bob opens the request's deep link";
  await bob.goto(`${proxy}/requests/${requestId}`, { waitUntil: 'load' });
  await logIn(bob, 'bob');
  await bob.waitForURL((u) => u.origin === proxyOrigin && u.pathname === `/requests/${requestId}`, { timeout: STEP_MS });
  step = 'bob approves';
  const decide = bob.locator('form.decide');
  await decide.locator('input[name=reason]').fill('checked');
  await Promise.all([
    bob.waitForURL((u) => u.search.includes('done='), { timeout: STEP_MS }),
    decide.locator('button.approve').click(),
  ]);
  const done = new URL(bob.url()).searchParams.get('done');
  if (done !== 'approved') fail(`after Approve bob is at ${bob.url()}`);

  // 3. alice reaches the app; its WebSocket echoes.
  step = 'alice opens the app with her grant';
  await alice.goto(`${app}/ui`, { waitUntil: 'load' });
  if (new URL(alice.url()).origin !== appOrigin) fail(`with a grant alice is at ${alice.url()}`);
  const heading = (await alice.locator('h1').first().textContent()).trim();
  if (heading !== 'echo app') fail(`the app page says ${JSON.stringify(heading)}`);
  step = "the app's WebSocket opens and echoes";
  await alice.locator('#echo', { hasText: 'hello' }).waitFor({ timeout: STEP_MS });
  const wsState = (await alice.locator('#ws').textContent()).trim();
  if (wsState !== 'open') fail(`the WebSocket is ${wsState}`);
  const appCookie = (await alice.context().cookies(appOrigin)).find((c) => c.name === '__Host-jitgate-app');
  if (!appCookie || !appCookie.httpOnly || !appCookie.secure || appCookie.sameSite !== 'Lax') {
    fail(`the app cookie is not locked down: ${JSON.stringify(appCookie)}`);
  }
  const proxyCookieOnApp = (await alice.context().cookies(appOrigin)).some((c) => c.name === '__Host-jitgate');

  // 4. The grant expires: the WebSocket closes by itself, the next load is the request page.
  step = 'the WebSocket closes when the grant expires';
  await alice.locator('#ws', { hasText: 'closed' }).waitFor({ timeout: 90_000 });
  const closedAt = await alice.evaluate(() => window.__closedAt);
  step = 'alice reloads the app after the expiry';
  await alice.goto(`${app}/ui`, { waitUntil: 'load' });
  const after = new URL(alice.url());
  if (after.origin !== proxyOrigin || after.pathname !== '/apps/echo') fail(`after the expiry alice reached ${alice.url()}`);

  if (pageErrors.length) fail(`uncaught page error(s): ${JSON.stringify(pageErrors)}`);
  process.stdout.write(
    `${JSON.stringify({
      request_id: requestId,
      approved: done,
      ws_echo: 'hello',
      ws_closed_at_ms: closedAt,
      after_expiry: after.pathname,
      app_cookie: { httpOnly: appCookie.httpOnly, secure: appCookie.secure, sameSite: appCookie.sameSite, path: appCookie.path },
      proxy_cookie_on_app: proxyCookieOnApp,
      chromium: browser.version(),
    })}\n`,
  );
}

async function person(name) {
  const context = await browser.newContext({ locale: 'en-US' });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  const page = await context.newPage();
  pages[name] = page;
  page.on('pageerror', (e) => pageErrors.push({ who: name, page: page.url(), error: String(e) }));
  return page;
}

/** The proxy's local-user login form, then back where the login was asked for. */
async function logIn(page, who) {
  step = `${who} logs in at the proxy`;
  const form = page.locator('form.login');
  await form.locator('input[name=user]').fill(who);
  await form.locator('input[name=password]').fill(passwords[who]);
  await Promise.all([
    page.waitForURL((u) => u.pathname !== '/' || u.origin !== proxyOrigin, { timeout: STEP_MS }),
    form.locator('button[type=submit]').click(),
  ]);
  await page.waitForLoadState('load');
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
      const html = join(artifacts, `${name}.html`);
      writeFileSync(html, `<!-- ${page.url()} -->\n${await page.content()}`);
      out.push(`html ${html} (${page.url()})`);
    } catch (e) {
      out.push(`no dump of ${name}: ${String(e).split('\n')[0]}`);
    }
  }
  return out;
}

const watchdog = setTimeout(() => {
  process.stderr.write(`apps browser test: stuck at "${step}" for too long (150 s in all)\n`);
  process.exit(1);
}, 150_000);

let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  const why = e instanceof Failure ? e.message : String(e && e.message ? e.message : e).split('\n')[0];
  process.stderr.write(`apps browser test failed at "${step}": ${why}\n`);
  for (const line of await dump()) process.stderr.write(`  ${line}\n`);
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
process.exit(code);
