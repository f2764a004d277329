// Drives the broker's status page in Debian's Chromium, headless, for
// bins/broker/tests/e2e/status_page.rs (which starts the broker and checks the broker's side).
//
//   node status-page.js live  <baseUrl> <token> <outDir>   the operator scenario
//   node status-page.js perf  <baseUrl> <expectedAgents> <outDir>   first render, N agents
//
// Prints one JSON line `RESULT {...}` on success; on failure prints the error, saves
// <outDir>/failure.png and exits 1. The browser never reaches the network: it is started with
// everything that would call home disabled, and the page loads nothing but its own origin.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.KOKINO_CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const T = 20000; // per-step timeout: a loaded CI machine is slow, a broken page never gets there

function log(...a) { console.error(new Date().toISOString(), ...a); }

async function launch() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kokino-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1400, height: 1000 },
    // Timestamps in the screenshots are read by people in many zones; pick one.
    timezoneId: 'UTC',
    locale: 'en-GB',
  });
  // Anything but the broker's own origin is a bug in the page (no CDN, no network).
  const foreign = [];
  context.on('request', (r) => {
    const u = new URL(r.url());
    if (!['127.0.0.1', 'localhost'].includes(u.hostname) && u.protocol !== 'data:') foreign.push(r.url());
  });
  return { context, userDataDir, foreign };
}

async function api(base, token, method, p, body) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(base + p, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { json = text; }
  return { status: r.status, body: json };
}

const row = (page, id) => page.locator(`#agents tbody tr[data-agent="${id}"]`);
const cell = (page, id, n) => row(page, id).locator('th, td').nth(n);

// Opens the confirmation dialog with `open`, checks it, and confirms it.
async function confirmDialog(page, open, expectText) {
  await open();
  const dlg = page.locator('dialog#confirm');
  await dlg.waitFor({ state: 'visible', timeout: T });
  const text = await page.locator('#confirm-text').textContent();
  if (!text.includes(expectText)) throw new Error(`dialog says ${JSON.stringify(text)}, wanted ${expectText}`);
  await page.locator('#confirm-yes').click();
  await dlg.waitFor({ state: 'hidden', timeout: T });
}

async function live(base, token, outDir) {
  const result = {};
  const { context, foreign } = await launch();
  const page = context.pages()[0] || await context.newPage();
  const consoleErrors = [];
  // The browser logs every 401 as a failed resource; those are the token steps, expected.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().includes('status of 401')) consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  try {
    // 1. With a token configured the page asks for it, and a wrong one is refused.
    await page.goto(base + '/', { timeout: T });
    await page.locator('#token-form').waitFor({ state: 'visible', timeout: T });
    await page.getByLabel('Bearer token').fill('not-the-token');
    await page.keyboard.press('Enter');
    await page.locator('#token-error').filter({ hasText: 'refused' }).waitFor({ timeout: T });
    log('a wrong token is refused');
    await page.getByLabel('Bearer token').fill(token);
    await page.getByRole('button', { name: 'Connect' }).click();
    await page.locator('#conn').filter({ hasText: 'Live' }).waitFor({ timeout: T });

    // 2. The registered agent is shown, with its type and mode.
    await row(page, 'alpha').waitFor({ timeout: T });
    const alphaType = await cell(page, 'alpha', 1).textContent();
    if (alphaType !== 'claude-code') throw new Error(`alpha's type is shown as ${alphaType}`);
    result.agentShown = true;
    log('agent alpha shown');

    // 3. An execution appears live, with its elapsed time and memory, and finishes.
    const run1 = api(base, token, 'POST', '/agents/alpha/execute', { prompt: 'fake:sleep=3 first' });
    await cell(page, 'alpha', 6).filter({ hasText: /^running/ }).waitFor({ timeout: T });
    // Its memory appears with the first sample, a second after the start.
    await cell(page, 'alpha', 6).filter({ hasText: /^running .* MB/ }).waitFor({ timeout: T });
    const runningText = await cell(page, 'alpha', 6).textContent();
    log('running:', runningText);
    result.runningText = runningText;
    const r1 = await run1;
    if (r1.status !== 200) throw new Error(`first execution: ${r1.status} ${JSON.stringify(r1.body)}`);
    await cell(page, 'alpha', 6).filter({ hasText: 'idle' }).waitFor({ timeout: T });
    const finished = page.locator('#executions tbody tr', { hasText: r1.body.metadata.executionId });
    await finished.filter({ hasText: 'success' }).waitFor({ timeout: T });
    result.finishedRow = (await finished.textContent()).trim();
    log('execution finished on the page:', result.finishedRow);

    // 4. Cancel from the page stops a running execution.
    const run2 = api(base, token, 'POST', '/agents/alpha/execute', { prompt: 'fake:child fake:sleep=60 long' });
    await cell(page, 'alpha', 6).filter({ hasText: /pid \d+/ }).waitFor({ timeout: T });
    result.cancelledPid = Number((await cell(page, 'alpha', 6).textContent()).match(/pid (\d+)/)[1]);
    const cancelButton = row(page, 'alpha').getByRole('button', { name: 'Cancel the execution of alpha' });
    await confirmDialog(page, () => cancelButton.click(), 'Cancel the running execution of agent alpha');
    const r2 = await run2;
    result.cancelStatus = r2.status;
    result.cancelCode = r2.body && r2.body.code;
    await cell(page, 'alpha', 6).filter({ hasText: 'idle' }).waitFor({ timeout: T });
    await page.locator('#executions tbody tr', { hasText: 'cancelled' }).first().waitFor({ timeout: T });
    await page.locator('#notice').filter({ hasText: 'Cancel alpha: done' }).waitFor({ timeout: T });
    log('cancelled from the page:', r2.status, result.cancelCode);

    // 5. The keyboard alone: End session, Escape declines, Enter on Confirm ends the session.
    const endButton = row(page, 'alpha').getByRole('button', { name: 'End the session of alpha' });
    await endButton.focus();
    await page.keyboard.press('Enter');
    await page.locator('dialog#confirm').waitFor({ state: 'visible', timeout: T });
    const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
    if (focused !== 'confirm-no') throw new Error(`the dialog opened with focus on ${focused}, not on the safe button`);
    await page.keyboard.press('Escape');
    await page.locator('#notice').filter({ hasText: 'not done' }).waitFor({ timeout: T });
    const back = await page.evaluate(() => document.activeElement && document.activeElement.getAttribute('aria-label'));
    if (back !== 'End the session of alpha') throw new Error(`focus went to ${back} after the dialog closed`);
    if ((await cell(page, 'alpha', 4).textContent()) === 'none') throw new Error('Escape ended the session');
    await page.keyboard.press('Enter');
    await page.locator('dialog#confirm').waitFor({ state: 'visible', timeout: T });
    await page.keyboard.press('Tab');
    const onYes = await page.evaluate(() => document.activeElement.id);
    if (onYes !== 'confirm-yes') throw new Error(`Tab in the dialog went to ${onYes}`);
    await page.keyboard.press('Enter');
    await cell(page, 'alpha', 4).filter({ hasText: /^none$/ }).waitFor({ timeout: T });
    result.sessionEndedByKeyboard = true;
    log('session ended with the keyboard');

    // 6. A breaker opened by failing runs is shown as OPEN (in words), with the automatic
    //    fallback and its reason when tmux is there; the page's reset closes it.
    for (let i = 0; i < 5; i++) {
      const r = await api(base, token, 'POST', '/agents/flaky/execute', { prompt: 'fake:exit=1' });
      if (r.status !== 502) throw new Error(`failing run ${i}: ${r.status}`);
    }
    const openRow = page.locator('#circuits tbody tr', { hasText: 'flaky' });
    await openRow.filter({ hasText: 'OPEN' }).waitFor({ timeout: T });
    await cell(page, 'flaky', 7).filter({ hasText: 'OPEN' }).waitFor({ timeout: T });
    const tmux = (await api(base, token, 'GET', '/api/status')).body.broker.tmuxAvailable;
    if (tmux) {
      await page.locator('#fallback tbody tr', { hasText: 'circuit breaker opened' }).waitFor({ timeout: T });
      await cell(page, 'flaky', 3).filter({ hasText: 'tmux (fallback' }).waitFor({ timeout: T });
    }
    // The screenshot for the README: a running execution, an open breaker, history.
    const shot = api(base, token, 'POST', '/agents/gamma/execute', { prompt: 'fake:sleep=4 for the picture' });
    await cell(page, 'gamma', 6).filter({ hasText: /\d MB/ }).waitFor({ timeout: T });
    await page.waitForTimeout(1200); // a non-zero elapsed time on the picture
    await page.screenshot({ path: path.join(outDir, 'status-page.png') });
    await confirmDialog(page,
      () => openRow.getByRole('button', { name: 'Reset the agent breaker of flaky' }).click(),
      'Reset the agent breaker of flaky');
    await page.locator('#circuits tbody tr', { hasText: 'flaky' }).waitFor({ state: 'detached', timeout: T });
    await cell(page, 'flaky', 7).filter({ hasText: 'closed' }).waitFor({ timeout: T });
    await page.locator('#notice').filter({ hasText: 'previousState: open' }).waitFor({ timeout: T });
    result.breakerReset = true;
    log('breaker reset from the page');
    await shot;

    // 7. An operator's fallback override is shown with its reason and cleared from the page.
    if (tmux) {
      const f = await api(base, token, 'POST', '/api/fallback/agent/beta/force', { reason: 'maintenance window' });
      if (f.status !== 200) throw new Error(`force: ${f.status} ${JSON.stringify(f.body)}`);
      const fb = page.locator('#fallback tbody tr', { hasText: 'maintenance window' });
      await fb.filter({ hasText: 'an operator' }).waitFor({ timeout: T });
      await confirmDialog(page,
        () => fb.getByRole('button', { name: 'Clear the fallback of agent beta' }).click(),
        'Clear the fallback of agent beta');
      await fb.waitFor({ state: 'detached', timeout: T });
      result.fallbackCleared = true;
      log('fallback cleared from the page');
    } else {
      result.fallbackCleared = 'skipped: tmux is not available';
    }

    // 8. Readable without colour: every state cell says its state in words.
    await page.emulateMedia({ forcedColors: 'active', colorScheme: 'light' });
    const words = await page.locator('#agents tbody tr[data-agent="flaky"] td').allTextContents();
    if (!words.some((w) => w === 'closed')) throw new Error(`no breaker word in ${words}`);
    result.slo = (await page.locator('#slo tbody tr').first().textContent()).trim();
    result.events = await page.locator('#events tbody tr').count();
    result.foreignRequests = foreign;
    result.consoleErrors = consoleErrors;
    if (foreign.length) throw new Error(`the page reached beyond the broker: ${foreign}`);
    if (consoleErrors.length) throw new Error(`console errors: ${consoleErrors}`);
    return result;
  } catch (e) {
    await page.screenshot({ path: path.join(outDir, 'failure.png'), fullPage: true }).catch(() => {});
    fs.writeFileSync(path.join(outDir, 'failure.html'), await page.content().catch(() => ''));
    throw e;
  } finally {
    await context.close();
  }
}

async function perf(base, expected, outDir) {
  const { context } = await launch();
  const times = [];
  const allRows = [];
  try {
    for (let i = 0; i < 3; i++) {
      const page = await context.newPage();
      await page.goto(base + '/', { timeout: T });
      await page.waitForFunction(() => window.kokinoFirstRenderMs !== undefined, null, { timeout: T });
      const ms = await page.evaluate(() => window.kokinoFirstRenderMs);
      // Where the time went, for the log: navigation timing and the page's own marks.
      const marks = await page.evaluate(() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const out = { htmlDone: nav.responseEnd, domContentLoaded: nav.domContentLoadedEventEnd };
        for (const m of performance.getEntriesByType('mark')) out[m.name.replace('kokino-', '')] = m.startTime;
        for (const k of Object.keys(out)) out[k] = Math.round(out[k] * 10) / 10;
        return out;
      });
      log(`load ${i + 1}: first render ${ms.toFixed(1)} ms`, JSON.stringify(marks));

      // The first render shows the first screen of agents; the others follow between frames.
      await page.waitForFunction(() => window.kokinoAllRowsMs !== undefined, null, { timeout: T });
      const all = await page.evaluate(() => window.kokinoAllRowsMs);
      const rows = await page.locator('#agents tbody tr').count();
      if (rows !== expected) throw new Error(`${rows} agent rows, wanted ${expected}`);
      const count = await page.locator('#agent-count').textContent();
      if (!count.includes(`${expected} registered`)) throw new Error(`the count says ${count}`);
      times.push(Math.round(ms * 10) / 10);
      allRows.push(Math.round(all * 10) / 10);
      if (i === 0) await page.screenshot({ path: path.join(outDir, 'status-page-1000.png') });
      await page.close();
    }
    return { firstRenderMs: times, allRowsMs: allRows, rows: expected };
  } finally {
    await context.close();
  }
}

(async () => {
  const [mode, base, arg, outDir] = process.argv.slice(2);
  fs.mkdirSync(outDir, { recursive: true });
  const result = mode === 'perf' ? await perf(base, Number(arg), outDir) : await live(base, arg, outDir);
  console.log(`RESULT ${JSON.stringify(result)}`);
})().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
