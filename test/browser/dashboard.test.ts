// The dashboard in a real browser (Debian's Chromium via playwright-core) against
// a real `berth serve` on the embedded database: sign in, create an environment (a
// bad field shows its message), start a run and watch its log arrive, see its lease
// go from active to released on the timeline, cancel a long run, filter activity, see a
// warm pool on its environment's page and a run that took one of its members.
// A screenshot of each page goes to test-artifacts/screenshots/.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type BerthServer } from '../../src/server/serve.js';
import { createLogger } from '../../src/server/logger.js';
import { launchChromium, SCREENSHOTS } from '../support/browser.js';
import { waitFor } from '../support/wait.js';

const home = mkdtempSync(join(tmpdir(), 'berth-dashboard-'));
let server: BerthServer;
let browser: Browser;
let page: Page;
let companyId: string;
let key: string;
let localId: string;
const agents: Record<string, string> = {};

const shot = (name: string) => page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
const ready = (view: string) => page.waitForSelector(`body[data-ready="${view}"]`, { timeout: 15_000 });

beforeAll(async () => {
  process.env.BERTH_HOME = home;
  delete process.env.DATABASE_URL;
  server = await startServer({ port: 0, announce: false, logger: createLogger({ level: 'warn', pretty: false }) });
  const s = server.services;
  const company = await s.companies.create({ name: 'Dash Co' });
  companyId = company.id;
  key = (await s.apiKeys.create(companyId, { name: 'browser' })).key;
  localId = (await s.environments.ensureLocalEnvironment(companyId)).id;
  const mk = async (name: string, args: string[]) =>
    (agents[name] = (await s.agents.create(companyId, { name, adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', ...args], graceSec: 1 } })).id);
  await mk('talker', ['for i in 1 2 3 4 5; do echo "line $i from the talker"; sleep 0.3; done']);
  await mk('holder', ['echo holding; sleep 3; echo done']);
  await mk('sleeper', ['echo "going to sleep"; sleep 120']);
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
});
afterAll(async () => {
  await browser?.close();
  await server?.stop({ graceMs: 0 });
  rmSync(home, { recursive: true, force: true });
});

describe('dashboard', () => {
  it('signs in with an API key (a wrong key is refused)', async () => {
    await page.goto(`${server.url}/`);
    await ready('signin');
    await page.fill('input[name=key]', 'bk_wrong');
    await page.click('button[type=submit]');
    await page.waitForSelector('#signin-error .banner');
    expect(await page.textContent('#signin-error')).toContain('not accepted');
    await shot('01-sign-in');
    await page.fill('input[name=key]', key);
    await page.click('button[type=submit]');
    await ready('environments');
    expect(await page.textContent('#who')).toBe('Dash Co');
    expect(await page.evaluate(() => sessionStorage.getItem('berth.key'))).toBe(key);
    expect(await page.evaluate(() => localStorage.length)).toBe(0); // kept for this tab's session only
  });

  it('creates an environment; a bad field shows the message the API schema gives', async () => {
    await page.selectOption('select[name=driver]', 'ssh');
    await page.fill('input[name=name]', 'remote');
    await page.fill('[name="config.host"]', 'build.example.com');
    await page.fill('[name="config.port"]', '70000');
    await page.fill('[name="config.username"]', 'agent');
    await page.fill('[name="config.remoteWorkspacePath"]', 'relative/path');
    await page.fill('[name="config.knownHosts"]', 'build.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl');
    await page.click('#env-form button[type=submit]');
    await page.waitForSelector('[data-field="config.port"] .field-error');
    expect(await page.textContent('[data-field="config.port"] .field-error')).toBe('must be 1–65535');
    expect(await page.textContent('[data-field="config.remoteWorkspacePath"] .field-error')).toBe('must be an absolute path');
    await shot('02-environment-form-errors');

    await page.selectOption('select[name=driver]', 'sandbox');
    await page.fill('input[name=name]', 'gpu-pool');
    await page.fill('[name="config.provider"]', 'acme');
    await page.fill('input[name=capacity]', '4');
    await page.click('#env-form button[type=submit]');
    await page.waitForSelector('tr[data-name="gpu-pool"]');
    expect(await page.textContent('tr[data-name="gpu-pool"]')).toContain('sandbox');
    // Deleting Local is refused, with the reason shown.
    page.once('dialog', (d) => void d.accept());
    await page.click('tr[data-name="Local"] button[data-act=delete]');
    await page.waitForSelector('#env-banner .banner.error');
    expect(await page.textContent('#env-banner')).toContain("it is the company's Local environment");
    await page.click('tr[data-name="Local"] button[data-act=probe]');
    await page.waitForFunction(() => document.querySelector('tr[data-name="Local"]')?.textContent?.includes(' ms, '));
    await shot('03-environments');
  });

  it('starts a run and watches its log arrive', async () => {
    await page.goto(`${server.url}/#/runs`);
    await ready('runs');
    await shot('04-runs');
    await page.click(`button[data-run-agent="${agents.talker}"]`);
    await ready('run');
    await page.waitForFunction(() => document.getElementById('log')?.textContent?.includes('line 1 from the talker'));
    const early = await page.textContent('#log');
    expect(early).not.toContain('line 5'); // it arrives while the run goes on
    await page.waitForFunction(() => document.getElementById('log')?.textContent?.includes('line 5 from the talker'));
    await page.waitForSelector('#run-status[data-status="succeeded"]');
    await shot('05-run-log');
  });

  it("shows a run's lease go from active to released on the timeline, live", async () => {
    const run = await server.services.runs.invoke(companyId, agents.holder!, {});
    server.runtime!.poke();
    const leaseId = await waitFor('the lease', async () => (await server.services.runs.get(companyId, run.id)).leaseId, 10_000);
    await page.goto(`${server.url}/#/environments/${localId}`);
    await ready('environment');
    await page.waitForSelector(`rect[data-lease="${leaseId}"][data-status="active"]`);
    const tip = await page.textContent(`rect[data-lease="${leaseId}"] title`);
    expect(tip).toContain(`run ${run.id}`);
    expect(tip).toMatch(/fence \d+/);
    expect(tip).toContain('policy ephemeral');
    await shot('06-timeline-active');
    // No reload: the activity stream updates the bar.
    await page.waitForSelector(`rect[data-lease="${leaseId}"][data-status="released"]`, { timeout: 15_000 });
    expect(await page.textContent(`rect[data-lease="${leaseId}"] title`)).toContain('cleanup success');
    await shot('07-timeline-released');
  });

  it('cancels a long run', async () => {
    await page.goto(`${server.url}/#/runs`);
    await ready('runs');
    await page.click(`button[data-run-agent="${agents.sleeper}"]`);
    await ready('run');
    await page.waitForFunction(() => document.getElementById('log')?.textContent?.includes('going to sleep'));
    await page.click('#cancel-run');
    await page.waitForSelector('#run-status[data-status="cancelled"]', { timeout: 15_000 });
    await shot('08-run-cancelled');
  });

  it('filters the activity feed', async () => {
    await page.goto(`${server.url}/#/activity`);
    await ready('activity');
    await shot('09-activity');
    await page.selectOption('select[name=action]', 'environment.lease_released');
    await page.click('#filters button[type=submit]');
    await ready('activity');
    const actions = await page.$$eval('#feed tr td:nth-child(3)', (tds) => tds.map((td) => td.textContent));
    expect(actions.length).toBeGreaterThanOrEqual(3);
    expect(new Set(actions)).toEqual(new Set(['environment.lease_released']));
    await shot('10-activity-filtered');
    // One entity's history, and one run's.
    await page.goto(`${server.url}/#/activity?entityId=${localId}`);
    await ready('activity');
    const entities = await page.$$eval('#feed tr td:nth-child(4)', (tds) => tds.map((td) => td.textContent));
    expect(entities.length).toBeGreaterThanOrEqual(2); // created, probed
    for (const e of entities) expect(e).toBe(`environment ${localId.slice(0, 8)}`);
    const [run] = await server.services.runs.list(companyId, { limit: 1 });
    await page.goto(`${server.url}/#/activity?runId=${run!.id}`);
    await ready('activity');
    const runs = await page.$$eval('#feed tr td:nth-child(5)', (tds) => tds.map((td) => td.textContent));
    expect(runs.length).toBeGreaterThanOrEqual(3); // queued, lease acquired, lease released, finished
    for (const r of runs) expect(r).toBe(run!.id.slice(0, 8));
  });
  it("shows a warm pool on its environment's page, and a run that claimed a member says warm", async () => {
    const s = server.services;
    await s.environments.update(companyId, localId, { pool: { minReady: 2, maxReady: 2 } });
    server.runtime!.poke();
    await waitFor('two ready members', async () => ((await s.pools.states([localId])).get(localId)?.ready === 2 ? true : null), 15_000);
    await page.goto(`${server.url}/#/environments/${localId}`);
    await ready('environment');
    expect(await page.textContent('#env-pool')).toBe('min 2 ready, max 2 idle, replaced after 3600 s');
    await page.waitForSelector('[data-pool-ready="2"]');
    expect(await page.textContent('#env-pool-state')).toContain('0 claimed');
    await shot('11-environment-pool');

    await page.goto(`${server.url}/#/runs`);
    await ready('runs');
    await page.click(`button[data-run-agent="${agents.holder}"]`);
    await ready('run');
    await page.waitForFunction(() => document.getElementById('log')?.textContent?.includes('holding'));
    await page.waitForFunction(() => document.body.textContent?.includes('warm (pool member)'), undefined, { timeout: 10_000 });
    await shot('12-run-warm');
    // While it holds its member: claimed on the environment's page (the pool refilled behind it).
    await page.goto(`${server.url}/#/environments/${localId}`);
    await ready('environment');
    await page.waitForSelector('[data-pool-claimed="1"]', { timeout: 10_000 });
    await shot('13-environment-pool-claimed');
    await s.environments.update(companyId, localId, { pool: null });
  });
});
