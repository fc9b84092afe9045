// Dashboard page timings in a real browser (Debian's Chromium): with 1,000 leases
// and 1,000 runs in the database, each page is loaded afresh N times and timed from
// navigation start to the moment its data is on screen (the page's own ready mark).
// Run on the embedded database (the quick-start path) and on PostgreSQL.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { queryRows } from '../src/db/client.js';
import { createLogger } from '../src/server/logger.js';
import { startServer } from '../src/server/serve.js';
import { createScratchDatabase } from '../test/support/db.js';
import { launchChromium } from '../test/support/browser.js';
import { fmt, percentile } from './support.js';

const LOADS = Number(process.env.BENCH_LOADS ?? 15);
const ROWS = Number(process.env.BENCH_ROWS ?? 1000);
const TARGET_MS = 300;

async function benchOne(label: string, databaseUrl: string | undefined): Promise<boolean> {
  const home = mkdtempSync(join(tmpdir(), 'berth-bench-dash-'));
  process.env.BERTH_HOME = home;
  const server = await startServer({ port: 0, announce: false, runtime: false, logger: createLogger({ level: 'warn', pretty: false }), ...(databaseUrl ? { databaseUrl } : {}) });
  const browser = await launchChromium();
  let ok = true;
  try {
    const s = server.services;
    const company = await s.companies.create({ name: 'Bench Co' });
    const { key } = await s.apiKeys.create(company.id, {});
    const local = await s.environments.ensureLocalEnvironment(company.id);
    const agent = await s.agents.create(company.id, { name: 'bench', adapterType: 'process', adapterConfig: { command: 'true' } });
    const seeded = performance.now();
    for (let i = 0; i < ROWS; i++) {
      const { lease } = await s.leases.acquire(company.id, { environmentId: local.id, ttlSeconds: 600 });
      await s.leases.release(company.id, lease.id, { fence: lease.fence, ...(i % 7 === 0 ? { status: 'failed', failureReason: 'bench failure' } : {}) });
    }
    await queryRows(
      server.database.db,
      sql`INSERT INTO heartbeat_runs (company_id, agent_id, status, invocation_source, started_at, finished_at, exit_code, created_at)
          SELECT ${company.id}, ${agent.id}, CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 'on_demand',
                 now() - make_interval(secs => g * 10), now() - make_interval(secs => g * 10 - 1), CASE WHEN g % 10 = 0 THEN 1 ELSE 0 END,
                 now() - make_interval(secs => g * 10)
          FROM generate_series(1, ${ROWS}) g`,
    );
    const [run] = await s.runs.list(company.id, { limit: 1 });
    await s.runs.appendLog(run!.id, Array.from({ length: 200 }, (_, i) => ({ seq: i + 1, ts: new Date(), stream: 'stdout' as const, chunk: `log line ${i + 1}\n` })));
    console.log(`${label}: seeded ${ROWS} leases (with ${ROWS * 2} activity rows) and ${ROWS} runs in ${fmt((performance.now() - seeded) / 1000)} s`);

    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    await page.goto(`${server.url}/#/signin`);
    await page.evaluate(([k, c]) => {
      sessionStorage.setItem('berth.key', k!);
      sessionStorage.setItem('berth.company', c!);
    }, [key, JSON.stringify(company)]);
    const pages: Array<[string, string, string]> = [
      ['environments', '#/environments', 'environments'],
      [`environment (timeline of 200 of ${ROWS} leases)`, `#/environments/${local.id}`, 'environment'],
      [`runs (100 of ${ROWS})`, '#/runs', 'runs'],
      ['run (200 log lines)', `#/runs/${run!.id}`, 'run'],
      ['activity (50 rows)', '#/activity', 'activity'],
    ];
    for (const [name, hash, view] of pages) {
      const times: number[] = [];
      for (let i = 0; i < LOADS + 2; i++) {
        await page.goto('about:blank');
        await page.goto(`${server.url}/${hash}`);
        await page.waitForSelector(`body[data-ready="${view}"]`, { timeout: 10_000 });
        const ms = await page.evaluate(() => (window as unknown as { __berthReady: { ms: number } }).__berthReady.ms);
        if (i >= 2) times.push(ms); // the first two loads warm the server and the browser cache
      }
      times.sort((a, b) => a - b);
      const p50 = percentile(times, 50);
      const max = times[times.length - 1]!;
      if (max >= TARGET_MS) ok = false;
      console.log(`  ${name.padEnd(44)} ${LOADS} loads  p50 ${fmt(p50, 0).padStart(4)} ms  max ${fmt(max, 0).padStart(4)} ms  ${max < TARGET_MS ? 'under' : 'OVER'} ${TARGET_MS} ms`);
    }
  } finally {
    await browser.close();
    await server.stop({ graceMs: 0 });
    rmSync(home, { recursive: true, force: true });
  }
  return ok;
}

console.log(`Dashboard pages, ready = navigation start to the page's data on screen (measured in Chromium with performance.now()), loopback\n`);
const lite = await benchOne('PGlite', undefined);
const scratch = await createScratchDatabase();
let pgOk = false;
try {
  pgOk = await benchOne('PostgreSQL', scratch.url);
} finally {
  await scratch.drop();
}
console.log(`\nevery page under ${TARGET_MS} ms: PGlite ${lite ? 'yes' : 'no'}, PostgreSQL ${pgOk ? 'yes' : 'no'}`);
