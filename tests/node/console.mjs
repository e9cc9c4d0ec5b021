// A person at the Portcullis console: Playwright driving Debian's Chromium
// (headless) against the real gateway. Runs STEPs in one browser context
// and prints one JSON line per step.
//
// Usage: node console.mjs BASE_URL STEP...
//   env CHROMIUM (default /usr/bin/chromium), SPKI (comma-separated
//   base64 SHA-256 of the public keys the browser accepts without a public
//   CA: the gateway's and the identity provider's), SHOTS (a folder for
//   screenshots; none without it)
// Steps:
//   signin-oidc            click "Sign in" and go through the provider
//   signin-saml USER       the sign-in buttons shown; click "Sign in with
//                          SAML" and sign in as USER on the provider's page
//   signin-link URL        open a one-time sign-in link
//   me                     the principal shown, and /api/v1/me's status
//   sessions [FILTER=V]    the rows of the sessions page
//   review TEXT            the pending review whose action contains TEXT:
//                          whether Approve is enabled, and the note shown
//   approve TEXT           approve it (a reason is given); the message shown
//   post-without-csrf TEXT POST approve with the cookie but no CSRF value
//   post-with-csrf TEXT    POST approve from the page's own script
//   storage                what script can read: cookies, local/session storage
//   fetch PATH             the status of a GET from the page's own script
//   audit-verify           the audit page: its rows and the verdict of "Verify"
//   replay ID              the replay page of session ID: the digest line,
//                          the events' types, the rows' cells, or the error
//   explain P G C          the access page: connections listed, and the
//                          answer for principal P in groups G on connection C
//   axe PAGE               axe-core on #/PAGE: serious or critical violations
//   shot NAME              a full-page screenshot (with SHOTS)
//   signout                click Sign out; /api/v1/me's status afterwards
//   mint-token NAME        the tokens page: create a token for agent:NAME;
//                          the secret shown once, and the page's text
//   tokens                 the rows of the tokens page
//   revoke-token TEXT      click Revoke on the token row containing TEXT;
//                          the rows afterwards
//   end-session ID         the sessions page (live only): click End on
//                          session ID; the note shown
//   post-end ID            POST …/sessions/ID/end from the page's own
//                          script (with the CSRF value): status and body

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const [base, ...steps] = process.argv.slice(2);
const spki = (process.env.SPKI || '').split(',').filter(Boolean);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ...(spki.length ? [`--ignore-certificate-errors-spki-list=${spki.join(',')}`] : []),
  ],
});
const context = await browser.newContext();
const page = await context.newPage();
page.setDefaultTimeout(20000);
const out = (v) => console.log(JSON.stringify(v));

async function reviewCard(text) {
  await page.goto(`${base}/ui/#/reviews`);
  const card = page.locator('article.review', { hasText: text }).first();
  await card.waitFor();
  return card;
}

// In the page's own context: the review's id and the CSRF value.
async function reviewId(text) {
  const card = await reviewCard(text);
  return card.getAttribute('data-review');
}

try {
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i];
    try {
      if (step === 'signin-oidc') {
        await page.goto(`${base}/ui/`);
        await page.click('#signin-link');
        await page.waitForSelector('#principal:not(:empty)');
        out({ step, principal: await page.textContent('#principal') });
      } else if (step === 'signin-saml') {
        const user = steps[++i];
        await page.goto(`${base}/ui/`);
        await page.waitForSelector('#signin:not([hidden])');
        await page.waitForFunction(() => !document.getElementById('signin-saml').hidden
          || !document.getElementById('signin-link').hidden
          || !document.getElementById('signin-none').hidden);
        const buttons = [];
        if (await page.isVisible('#signin-link')) buttons.push('oidc');
        if (await page.isVisible('#signin-saml')) buttons.push('saml');
        await page.click('#signin-saml');
        await page.fill('#user', user);
        await page.click('#signin');
        await page.waitForSelector('#principal:not(:empty)');
        out({ step, buttons, principal: await page.textContent('#principal') });
      } else if (step === 'signin-link') {
        // A link in a browser asks first, naming whom it signs in.
        await page.goto(steps[++i]);
        await page.click('form[action="/ui/link"] button');
        await page.waitForSelector('#principal:not(:empty)');
        out({ step, principal: await page.textContent('#principal') });
      } else if (step === 'me') {
        const status = await page.evaluate(async () => (await fetch('/api/v1/me')).status);
        out({ step, status });
      } else if (step === 'sessions') {
        const filter = steps[i + 1] && steps[i + 1].includes('=') ? steps[++i] : null;
        await page.goto(`${base}/ui/#/sessions`);
        if (filter) {
          const [k, v] = filter.split('=');
          await page.fill(`#filter-${k}`, v);
          await page.click('form.filters button[type=submit]');
        }
        await page.waitForFunction(() => {
          const s = document.getElementById('sessions-status');
          return document.querySelectorAll('#sessions tr').length > 0 || (s && s.textContent);
        });
        await page.waitForTimeout(300);
        const rows = await page.$$eval('#sessions tr', (trs) => trs.map((tr) => {
          const c = [...tr.children].map((td) => td.textContent);
          return { principal: c[1], connection: c[2], protocol: c[3], outcome: c[4] };
        }));
        out({ step, rows });
      } else if (step === 'review') {
        const card = await reviewCard(steps[++i]);
        const approve = card.locator('button.approve');
        out({
          step,
          id: await card.getAttribute('data-review'),
          enabled: await approve.isEnabled(),
          text: await card.textContent(),
        });
      } else if (step === 'approve') {
        const card = await reviewCard(steps[++i]);
        await card.locator('input[name=reason]').fill('looks right');
        await card.locator('button.approve').click();
        // Updated by the server's events: the card leaves "pending".
        await page.waitForFunction((id) => {
          const c = document.querySelector(`article[data-review="${id}"] .state`);
          return c && c.textContent !== 'pending';
        }, await card.getAttribute('data-review'));
        const id = await card.getAttribute('data-review');
        out({ step, id, state: await page.textContent(`article[data-review="${id}"] .state`) });
      } else if (step === 'post-without-csrf' || step === 'post-with-csrf') {
        const id = await reviewId(steps[++i]);
        const withCsrf = step === 'post-with-csrf';
        const r = await page.evaluate(async ([id, withCsrf]) => {
          const headers = { 'content-type': 'application/json' };
          if (withCsrf) headers['x-portcullis-csrf'] = (await (await fetch('/api/v1/me')).json()).csrf;
          const resp = await fetch(`/api/v1/reviews/${id}/approve`, { method: 'POST', headers, body: '{}' });
          return { status: resp.status, body: await resp.text() };
        }, [id, withCsrf]);
        out({ step, id, ...r });
      } else if (step === 'fetch') {
        const p = steps[++i];
        const status = await page.evaluate(async (p) => (await fetch(p)).status, p);
        out({ step, path: p, status });
      } else if (step === 'audit-verify') {
        await page.goto(`${base}/ui/#/audit`);
        await page.waitForSelector('#audit tr');
        await page.click('#audit-verify');
        await page.waitForFunction(() => {
          const v = document.getElementById('audit-verdict');
          return v && v.textContent && !v.textContent.startsWith('Verifying');
        });
        out({
          step,
          rows: await page.$$eval('#audit tr', (r) => r.length),
          verdict: await page.textContent('#audit-verdict'),
        });
      } else if (step === 'replay') {
        const id = steps[++i];
        await page.goto(`${base}/ui/#/replay/${id}?ev=1`);
        await page.waitForSelector('#replay, #replay-error');
        out({
          step,
          error: undefined,
          failed: await page.$eval('#replay-error', (e) => e.textContent).catch(() => null),
          digest: await page.$eval('#replay-digest', (e) => e.textContent).catch(() => null),
          types: await page.$$eval('#replay > li', (l) => l.map((x) => x.dataset.type)),
          text: await page.$eval('#replay', (e) => e.textContent).catch(() => ''),
          current: await page.$eval('#replay li.current', (e) => e.id).catch(() => null),
        });
      } else if (step === 'explain') {
        const [p, g, c] = [steps[++i], steps[++i], steps[++i]];
        await page.goto(`${base}/ui/#/access`);
        await page.waitForSelector('#access-connections tr');
        await page.fill('#explain-principal', p);
        await page.fill('#explain-groups', g);
        await page.fill('#explain-connection', c);
        // Empty the last answer first: a second explain on the same page
        // would otherwise read the first one before the new one arrives.
        await page.evaluate(() => { document.getElementById('explain-answer').textContent = ''; });
        await page.click('#explain button[type=submit]');
        await page.waitForFunction(() => document.getElementById('explain-answer').textContent);
        out({
          step,
          connections: await page.$$eval('#access-connections tr', (r) => r.map((tr) => tr.textContent)),
          answer: await page.textContent('#explain-answer'),
        });
      } else if (step === 'storage') {
        const r = await page.evaluate(() => ({
          cookie: document.cookie,
          local: localStorage.length,
          session: sessionStorage.length,
          html: document.documentElement.outerHTML,
        }));
        out({ step, ...r, url: page.url() });
      } else if (step === 'axe') {
        const which = steps[++i];
        await page.goto(`${base}/ui/#/${which}`);
        await page.waitForTimeout(800);
        // Evaluated by the browser's debugging protocol: the page's own
        // policy (no inline script) stays as it is.
        await page.evaluate(fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8'));
        const result = await page.evaluate(async () => {
          // eslint-disable-next-line no-undef
          const r = await axe.run(document, { resultTypes: ['violations'] });
          return r.violations
            .filter((v) => v.impact === 'serious' || v.impact === 'critical')
            .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
        });
        out({ step, page: which, violations: result });
      } else if (step === 'shot') {
        const name = steps[++i];
        if (process.env.SHOTS) {
          await page.waitForTimeout(500);
          await page.screenshot({ path: path.join(process.env.SHOTS, `${name}.png`), fullPage: true });
        }
        out({ step, name });
      } else if (step === 'mint-token') {
        const agent = steps[++i];
        await page.goto(`${base}/ui/#/tokens`);
        await page.waitForSelector('#token-agent');
        await page.fill('#token-agent', agent);
        await page.click('form.filters button[type=submit]');
        await page.waitForSelector('#token-secret, #token-new .error');
        out({
          step,
          secret: await page.$eval('#token-secret', (e) => e.textContent).catch(() => null),
          text: await page.textContent('#token-new'),
        });
      } else if (step === 'tokens' || step === 'revoke-token') {
        const text = step === 'revoke-token' ? steps[++i] : null;
        await page.goto(`${base}/ui/#/tokens`);
        await page.waitForFunction(() => {
          const s = document.getElementById('tokens-status');
          return document.querySelectorAll('#tokens tr').length > 0 || (s && s.textContent);
        });
        if (text) {
          const row = page.locator('#tokens tr', { hasText: text }).first();
          await row.locator('button.revoke').click();
          await page.waitForFunction((t) => [...document.querySelectorAll('#tokens tr')]
            .some((tr) => tr.textContent.includes(t) && tr.querySelector('.state').textContent === 'revoked'), text);
        }
        const rows = await page.$$eval('#tokens tr', (trs) => trs.map((tr) => {
          const c = [...tr.children].map((td) => td.textContent);
          return { id: tr.dataset.token, principal: c[1], kind: c[2], state: c[5] };
        }));
        out({ step, rows });
      } else if (step === 'end-session') {
        const id = steps[++i];
        await page.goto(`${base}/ui/#/sessions`);
        for (const f of ['principal', 'person', 'connection', 'protocol', 'outcome']) await page.fill(`#filter-${f}`, '');
        await page.check('#filter-live');
        await page.click('form.filters button[type=submit]');
        const row = page.locator(`#sessions tr[data-session="${id}"]`);
        await row.locator('button.end').click();
        await row.locator('[role=status]').filter({ hasText: /\S/ }).waitFor();
        out({ step, note: (await row.locator('[role=status]').textContent()).trim() });
      } else if (step === 'post-end') {
        const id = steps[++i];
        const r = await page.evaluate(async (sid) => {
          const me = await (await fetch('/api/v1/me')).json();
          const resp = await fetch(`/api/v1/sessions/${sid}/end`, {
            method: 'POST',
            headers: { 'x-portcullis-csrf': me.csrf, 'content-type': 'application/json' },
            body: '{}',
          });
          return { status: resp.status, body: await resp.text() };
        }, id);
        out({ step, ...r });
      } else if (step === 'signout') {
        await page.goto(`${base}/ui/`);
        await page.click('#signout');
        await page.waitForSelector('#signin:not([hidden])');
        const status = await page.evaluate(async () => (await fetch('/api/v1/me')).status);
        out({ step, status });
      } else {
        throw new Error(`unknown step ${step}`);
      }
    } catch (err) {
      out({ step, error: String(err && err.message ? err.message : err) });
    }
  }
} finally {
  await browser.close();
}
