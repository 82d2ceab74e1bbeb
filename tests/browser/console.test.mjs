// End-to-end test of the web console in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is downloaded).
//
// Against the real server: run by bin/trustring/tests/console.rs, which starts `trustring
// serve` and SIPp devices, sets CONSOLE_URL / CONSOLE_TOKEN / CONSOLE_HANDSHAKE, waits for the
// line "CONSOLE-READY" on this script's stdout (logged in, live feed open), then makes a
// forked call and creates the file CONSOLE_HANDSHAKE/call-done (or call-failed) when SIPp has
// finished.
// Without CONSOLE_URL: against mock-server.mjs, which plays a scripted call (`npm test`).
//
// Environment: CONSOLE_URL, CONSOLE_TOKEN, CONSOLE_HANDSHAKE (directory), CONSOLE_SCREENSHOT
// (PNG to write), CHROMIUM_PATH (default /usr/bin/chromium).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startMock } from './mock-server.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// As root and on a closed network: no sandbox, and none of Chromium's own connections.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const WAIT_CALL_MS = 45_000;

const log = (...a) => console.log('[console.test]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) for CONSOLE_HANDSHAKE/call-done; fails on call-failed. */
async function waitForCallDone(dir, limitMs) {
  const t0 = Date.now();
  while (Date.now() - t0 < limitMs) {
    if (existsSync(join(dir, 'call-failed'))) {
      throw new Error(`the test driver says the call failed: ${readFileSync(join(dir, 'call-failed'), 'utf8')}`);
    }
    if (existsSync(join(dir, 'call-done'))) return;
    await sleep(100);
  }
  throw new Error(`no call-done in ${dir} after ${limitMs} ms`);
}

test('web console: login, live forked call, ladder, CDRs', { timeout: 150_000 }, async () => {
  const mock = process.env.CONSOLE_URL ? null : await startMock();
  const base = (process.env.CONSOLE_URL || mock.url).replace(/\/$/, '');
  const token = process.env.CONSOLE_TOKEN || mock.token;
  log(`console at ${base}/console (${mock ? 'mock server' : 'real server'})`);

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
  let playing = null;
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, deviceScaleFactor: 1 });
    context.setDefaultTimeout(15_000);
    const page = await context.newPage();
    const pageErrors = [];
    const consoleErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
      // A 401 for the wrong token (on purpose) and for /favicon.ico are expected resource
      // errors; anything else (a CSP violation, an exception) is a failure.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) consoleErrors.push(m.text());
    });

    // 1. The page and its headers.
    const res = await page.goto(`${base}/console`);
    assert.equal(res.status(), 200);
    const headers = res.headers();
    assert.match(headers['content-security-policy'] || '', /^default-src 'self'/);
    assert.equal(headers['cache-control'], 'no-store');
    await page.locator('#login-form').waitFor();
    log('page loaded, login form shown');

    // 2. A wrong token is refused, on the page.
    await page.fill('#token', 'not-the-token');
    await page.click('#login-submit');
    await page.locator('#login-error').filter({ hasText: '401' }).waitFor();
    assert.equal(await page.locator('#app').isVisible(), false);
    log('wrong token refused');

    // 3. The right one logs in; it is kept in sessionStorage and never in the URL.
    await page.fill('#token', token);
    await page.click('#login-submit');
    await page.locator('#app').waitFor();
    assert.equal(await page.locator('#login').isVisible(), false);
    assert.ok(!page.url().includes(token), `token in URL ${page.url()}`);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('trustring.console.token')), token);
    assert.equal(await page.evaluate(() => localStorage.length), 0);
    await page.locator('#stream-status[data-state="live"], #stream-status[data-state="unavailable"]').waitFor();
    if ((await page.locator('#stream-status').getAttribute('data-state')) !== 'live') {
      assert.fail(`the live call feed is not available: ${await page.locator('#calls-note').textContent()}`);
    }
    log('logged in, live feed open');

    // Every branch state the page shows, as it shows it (proves the updates are live), and a
    // marker that a reload would wipe.
    await page.evaluate(() => {
      window.__noReload = true;
      window.__seen = new Set();
      const body = document.getElementById('calls-body');
      new MutationObserver(() => {
        for (const b of body.querySelectorAll('.branch')) window.__seen.add(b.dataset.state);
      }).observe(body, { subtree: true, childList: true, attributes: true });
    });

    // 4. The call happens now.
    console.log('CONSOLE-READY');
    if (mock) playing = mock.playCall();

    const row = page
      .locator('tr.call', { has: page.locator('.branch[data-state="answered"]') })
      .filter({ has: page.locator('.branch[data-state="cancelled"]') });
    await row.first().waitFor({ timeout: WAIT_CALL_MS });
    assert.equal(await row.count(), 1, 'one call row with an answered and a cancelled branch');
    assert.equal(await row.locator('.branch').count(), 2, 'two branches');
    const callId = await row.getAttribute('data-call-id');
    const seen = await page.evaluate(() => [...window.__seen]);
    assert.ok(seen.includes('ringing'), `branches were seen ringing before the answer (seen: ${seen})`);
    assert.equal(await page.evaluate(() => window.__noReload), true, 'the page was not reloaded');
    log(`call ${callId}: branches answered + cancelled (states seen: ${seen.join(', ')})`);

    // 5. Its ladder: an SVG with a lane per peer and the INVITE, the 200 and the CANCEL.
    await row.locator('button.open-ladder').click();
    const ladder = page.locator('#ladder-wrap svg.ladder');
    await ladder.waitFor();
    await page.waitForFunction(() => {
      const labels = [...document.querySelectorAll('#ladder-wrap svg.ladder .msg')].map((g) => g.dataset.label);
      return labels.includes('INVITE') && labels.some((l) => l.startsWith('200')) && labels.includes('CANCEL');
    }, null, { timeout: 10_000 });
    const svgText = await ladder.textContent();
    for (const want of ['INVITE', '200 OK', 'CANCEL', 'trustring']) assert.ok(svgText.includes(want), `ladder shows ${want}`);
    assert.ok(/\+\d+\.\d ms/.test(svgText), 'ladder shows times in ms since the first message');
    assert.ok((await ladder.locator('.lane').count()) >= 4, 'caller, server and two branch lanes');
    assert.ok(svgText.includes('Call completed elsewhere'), "the CANCEL's Reason is shown as a note");
    log('ladder drawn');

    // 6. The call ends (the driver's SIPp finished), the row says so, and the ladder has the BYE.
    if (mock) await playing;
    else await waitForCallDone(process.env.CONSOLE_HANDSHAKE, 60_000);
    await page.locator(`tr.call[data-state="ended"][data-call-id="${callId}"]`).waitFor({ timeout: 15_000 });
    await page.waitForFunction(() => [...document.querySelectorAll('#ladder-wrap svg.ladder .msg')].some((g) => g.dataset.label === 'BYE'), null, { timeout: 10_000 });
    assert.equal(await page.evaluate(() => window.__noReload), true, 'the page was not reloaded');
    await page.mouse.move(0, 0);
    if (process.env.CONSOLE_SCREENSHOT) {
      await page.screenshot({ path: process.env.CONSOLE_SCREENSHOT, fullPage: true });
      log(`screenshot: ${process.env.CONSOLE_SCREENSHOT}`);
    }

    // 7. CDRs: the call's record and the billing totals.
    await page.click('nav.tabs button[data-tab="cdrs"]');
    const record = page.locator(`tr.cdr[data-call-id="${callId}"]`);
    const t0 = Date.now();
    while (!(await record.count()) && Date.now() - t0 < 15_000) {
      await sleep(500);
      await page.click('#cdr-apply');
    }
    assert.equal(await record.count(), 1, 'the call has one CDR');
    assert.equal(await page.locator('tr.cdr').count(), 1, 'one record in all');
    await page.locator('tr.total[data-entity="acme"]').waitFor();
    // The entity filter: another entity has no record.
    await page.fill('#cdr-entity', 'no-such-entity');
    await page.click('#cdr-apply');
    await page.locator('#cdr-note').filter({ hasText: 'No record' }).waitFor();
    assert.equal(await page.locator('tr.cdr').count(), 0);
    await page.click('#cdr-clear');
    await record.waitFor();
    log('CDR listed with totals; filter works');

    // 7b. Paging: the console asks for one page (newest first) and follows the cursor with
    // "Older records". Here the server answers as if the call's record were followed by an
    // older page holding one more record.
    const asked = [];
    let shown = null;
    const isCdrs = (url) => url.pathname === '/api/v1/cdrs';
    await page.route(isCdrs, async (route) => {
      const url = new URL(route.request().url());
      asked.push(url.searchParams);
      const response = await route.fetch();
      const body = await response.json();
      if (!url.searchParams.has('after')) {
        shown = body.records[0];
        body.next = shown.id;
      } else {
        assert.equal(url.searchParams.get('after'), String(shown.id));
        assert.equal(body.totals, null, 'totals come with the first page only');
        body.records = [{ ...shown, id: shown.id - 1, call_id: 'older-page-call' }];
        body.next = null;
      }
      await route.fulfill({ response, json: body });
    });
    await page.click('#cdr-apply');
    await page.locator('#cdr-older:not([hidden])').waitFor();
    await page.click('#cdr-older');
    await page.locator('tr.cdr[data-call-id="older-page-call"]').waitFor();
    assert.equal(await page.locator('tr.cdr').count(), 2, 'the older page is appended');
    assert.equal(await page.locator('tr.cdr').nth(1).getAttribute('data-call-id'), 'older-page-call');
    await page.locator('#cdr-older[hidden]').waitFor({ state: 'attached' });
    assert.equal(await page.locator('tr.total[data-entity="acme"]').count(), 1, 'totals kept');
    const first = asked.find((p) => !p.has('after'));
    assert.equal(first.get('order'), 'desc');
    assert.ok(Number(first.get('limit')) >= 1 && Number(first.get('limit')) <= 1000, String(first));
    await page.unroute(isCdrs);
    await page.click('#cdr-apply');
    // The button is hidden already: wait for the reloaded list itself, not for the button.
    await page.waitForFunction(() => document.querySelectorAll('tr.cdr').length === 1);
    assert.equal(await page.locator('tr.cdr').count(), 1);
    log('CDR paging: one page, then the older one by its cursor');

    // 8. Registrations per subscriber: alice has her two devices.
    await page.click('nav.tabs button[data-tab="registrations"]');
    await page.locator('.sub[data-user="alice"][data-count="2"]').waitFor();
    assert.equal(await page.locator('.sub[data-user="alice"] tr.reg').count(), 2);
    log('registrations shown');

    // 9. Pools and phones render (counts, or a clear "not available").
    await page.click('nav.tabs button[data-tab="phones"]');
    await page.locator('#pool-counts .count, #pool-note:not([hidden])').first().waitFor();
    await page.locator('#devices-body tr.device, #devices-note:not([hidden])').first().waitFor();
    if (mock) {
      // On/off and revoke (two clicks) against the mock's phone.
      const dev = page.locator('tr.device').first();
      await dev.locator('button.toggle').click();
      await page.locator('tr.device[data-service="off"]').waitFor();
      await page.locator('tr.device select.reason').selectOption('lost');
      await page.locator('tr.device button.revoke').click();
      await page.locator('tr.device button.revoke').click();
      await page.locator('tr.device[data-status="revoked"]').waitFor();
    }
    log('pools and phones shown');

    // 9b. An enrolment code for alice: the URI to hand over (code + key fingerprint) and its QR.
    await page.fill('#enrol-user', 'alice');
    await page.click('#enrol-submit');
    await page.locator('#enrol-result:not([hidden]) svg.qr').waitFor();
    const uri = await page.locator('#enrol-uri').textContent();
    assert.match(uri, /^trustring-enrol:\/\/[^?]+\?code=[0-9A-Z-]+&fp=sha256:[0-9a-f]{64}$/);
    log('enrolment URI and QR code shown');

    // 10. Log out: the token is gone, and the page shows nothing any more.
    await page.click('#logout');
    await page.locator('#login-form').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('trustring.console.token')), null);
    assert.equal(await page.locator('tr.call').count(), 0);

    // 11. Logging in again after the call: it is listed from GET /api/v1/calls and its ladder
    // is fetched from GET /api/v1/calls/{id}/trace.
    await page.fill('#token', token);
    await page.click('#login-submit');
    await page.click('nav.tabs button[data-tab="calls"]');
    const again = page.locator(`tr.call[data-call-id="${callId}"]`);
    await again.waitFor();
    await again.locator('.branch[data-state="answered"]').waitFor();
    await again.locator('.branch[data-state="cancelled"]').waitFor();
    await again.locator('button.open-ladder').click();
    await page.waitForFunction(() => {
      const labels = [...document.querySelectorAll('#ladder-wrap svg.ladder .msg')].map((g) => g.dataset.label);
      return labels.includes('INVITE') && labels.includes('CANCEL') && labels.includes('BYE');
    }, null, { timeout: 10_000 });
    log('after a new login: the call listed and its ladder fetched');
    await page.click('#logout');
    await page.locator('#login-form').waitFor();

    assert.deepEqual(pageErrors, [], 'no script error');
    assert.deepEqual(consoleErrors, [], 'no console error (CSP violations included)');
    log('done');
  } finally {
    await browser.close();
    if (playing) await playing.catch(() => {});
    if (mock) await mock.close();
  }
});
