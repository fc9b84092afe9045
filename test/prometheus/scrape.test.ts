// A real Prometheus (Debian's, BERTH_TEST_PROMETHEUS: scripts/engines/prometheus.sh) scrapes
// a real `berth serve` every second, with the admin key from a credentials file as an
// operator would configure it, while this test acquires leases (one refused at capacity),
// releases one and runs an agent twice. The counters are then read back through
// Prometheus's own query API (/api/v1/query): each must reach what the test's actions make
// it, from a fresh server. The README's alert rules are loaded too, and must evaluate.
// Prometheus runs on a free port with a data directory of its own
// and is killed at the end. Runs once, on PostgreSQL (the database pool gauges are there).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { distState } from '../../bin/dist-state.mjs';
import { createScratchDatabase } from '../support/db.js';
import { startServeProcess, type ServeProcess } from '../support/serve-process.js';
import { waitFor } from '../support/wait.js';

const repo = join(import.meta.dirname, '../..');

function prometheusBinary(): string {
  const bin = process.env.BERTH_TEST_PROMETHEUS || '/usr/bin/prometheus';
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`no Prometheus at ${bin}: this test needs Debian's prometheus (scripts/engines/prometheus.sh, berth_ensure_prometheus, sets BERTH_TEST_PROMETHEUS)`);
  }
  return bin;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** The README's alert rules: the yaml block that begins `# berth-alerts.yml`. */
function readmeAlertRules(): string {
  const readme = readFileSync(join(repo, 'README.md'), 'utf8');
  const block = /```yaml\n(# berth-alerts\.yml\n[\s\S]*?)```/.exec(readme)?.[1];
  if (!block) throw new Error('README.md has no ```yaml block beginning "# berth-alerts.yml" (Operating Berth)');
  return block;
}

const dir = mkdtempSync(join(tmpdir(), 'berth-prometheus-'));
let scratch: { url: string; drop: () => Promise<void> };
let berth: ServeProcess;
let prom: ChildProcess;
let promUrl = '';
let promOut = '';

beforeAll(async () => {
  const bin = prometheusBinary();
  if (!distState().current) {
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: repo, encoding: 'utf8' });
    if (built.status !== 0) throw new Error(`build failed: ${built.stdout}${built.stderr}`);
  }
  scratch = await createScratchDatabase();
  const home = join(dir, 'home');
  berth = await startServeProcess({ BERTH_HOME: home, DATABASE_URL: scratch.url, BERTH_LOG_LEVEL: 'info' });
  const target = new URL(berth.url).host;

  // What an operator writes (README, "Operating Berth"): the admin key read from a file.
  const port = await freePort();
  promUrl = `http://127.0.0.1:${port}`;
  writeFileSync(join(dir, 'berth-alerts.yml'), readmeAlertRules());
  writeFileSync(
    join(dir, 'prometheus.yml'),
    [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      '  evaluation_interval: 1s',
      'rule_files:',
      `  - ${join(dir, 'berth-alerts.yml')}`,
      'scrape_configs:',
      '  - job_name: berth',
      '    authorization:',
      '      type: Bearer',
      `      credentials_file: ${join(home, 'admin.key')}`,
      '    static_configs:',
      `      - targets: ['${target}']`,
      '',
    ].join('\n'),
  );
  prom = spawn(
    bin,
    [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  prom.stdout!.on('data', (d: Buffer) => (promOut += d.toString()));
  prom.stderr!.on('data', (d: Buffer) => (promOut += d.toString()));
  await waitFor(
    'Prometheus to be ready',
    async () => {
      if (prom.exitCode !== null) throw new Error(`prometheus exited with ${prom.exitCode}:\n${promOut}`);
      return (await fetch(`${promUrl}/-/ready`).catch(() => null))?.ok ?? false;
    },
    60_000,
    100,
  );
  // The target is scraped, and its scrapes succeed (the key is accepted).
  await waitFor('Prometheus to scrape berth serve', async () => (await query('up{job="berth"}')) === 1, 30_000, 200);
});

afterAll(async () => {
  if (prom && prom.exitCode === null && prom.signalCode === null) {
    const gone = new Promise((r) => prom.once('exit', r));
    prom.kill('SIGKILL');
    await gone;
  }
  await berth?.stop();
  await scratch?.drop();
  rmSync(dir, { recursive: true, force: true });
});

/** One instant query through Prometheus's HTTP API: the value of its single series, or null when there is none. */
async function query(promql: string): Promise<number | null> {
  const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(promql)}`);
  const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: Array<{ value: [number, string] }> } };
  if (body.status !== 'success') throw new Error(`query ${promql} failed: ${body.error}`);
  const result = body.data!.result;
  if (result.length === 0) return null;
  if (result.length > 1) throw new Error(`query ${promql} gave ${result.length} series; the test asks for one`);
  return Number(result[0]!.value[1]);
}

/** Waits until Prometheus, scraping, holds `expected` for `promql` (fails with the last value it held). */
async function expectQuery(promql: string, expected: number | ((v: number) => boolean)): Promise<void> {
  let last: number | null = null;
  const ok = (v: number | null) => v !== null && (typeof expected === 'number' ? v === expected : expected(v));
  try {
    await waitFor(`Prometheus to hold ${promql}`, async () => ok((last = await query(promql))), 30_000, 250);
  } catch {
    throw new Error(`Prometheus holds ${promql} = ${last}, expected ${typeof expected === 'number' ? expected : expected.toString()}\nprometheus output:\n${promOut.slice(-4000)}`);
  }
}

describe('a real Prometheus scraping berth serve', () => {
  it('loads the README\'s three alert rules, and each evaluates without error', async () => {
    type Rule = { name: string; health: string; lastError?: string; lastEvaluation: string };
    const rules = await waitFor('the alert rules to be evaluated', async () => {
      const body = (await (await fetch(`${promUrl}/api/v1/rules?type=alert`)).json()) as { data: { groups: Array<{ rules: Rule[] }> } };
      const all = body.data.groups.flatMap((g) => g.rules);
      return all.length === 3 && all.every((r) => !r.lastEvaluation.startsWith('0001')) ? all : null;
    }, 30_000, 250);
    expect(rules.map((r) => r.name).sort()).toEqual(['BerthCleanupFailing', 'BerthLeasesStuck', 'BerthQueueStalled']);
    for (const r of rules) expect({ name: r.name, health: r.health, lastError: r.lastError ?? '' }).toEqual({ name: r.name, health: 'ok', lastError: '' });
  });

  it('sees the counters move as leases and runs happen', async () => {
    const co = (await berth.call('POST', '/api/companies', { body: { name: 'Scraped' } })).body;
    const key = co.apiKey as string;
    const companyId = co.company.id as string;
    const env = (await berth.call('POST', `/api/companies/${companyId}/environments`, { key, body: { name: 'two-slots', driver: 'sandbox', config: { provider: 'p' }, capacity: 2 } })).body.id as string;

    // Two leases granted, a third refused at capacity, the first released.
    const a = (await berth.call('POST', `/api/environments/${env}/leases`, { key, body: { ttlSeconds: 3600 } })).body.lease;
    expect((await berth.call('POST', `/api/environments/${env}/leases`, { key, body: { ttlSeconds: 3600 } })).status).toBe(201);
    expect((await berth.call('POST', `/api/environments/${env}/leases`, { key, body: { ttlSeconds: 3600 } })).body.error.code).toBe('capacity_exhausted');
    expect((await berth.call('POST', `/api/environment-leases/${a.id}/release`, { key, body: { fence: a.fence } })).status).toBe(200);

    await expectQuery(`berth_leases{environment_id="${env}",status="active"}`, 1);
    await expectQuery('berth_lease_acquire_refusals_total{reason="capacity_exhausted"}', 1);
    await expectQuery('sum(berth_http_requests_total{method="POST",route="/api/environments/:id/leases"})', 3);
    await expectQuery('berth_http_requests_total{method="POST",route="/api/environments/:id/leases",status="409"}', 1);

    // Two runs of one agent, each printing a known line.
    const agent = (await berth.call('POST', `/api/companies/${companyId}/agents`, { key, body: { name: 'echo', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo scraped-by-prometheus'] } } })).body.id as string;
    for (let i = 0; i < 2; i++) {
      const run = (await berth.call('POST', `/api/agents/${agent}/wakeup`, { key, body: {} })).body.id as string;
      await waitFor('the run to succeed', async () => (await berth.call('GET', `/api/heartbeat-runs/${run}`, { key })).body.status === 'succeeded', 30_000);
    }

    await expectQuery('berth_runs_queued_total{source="on_demand"}', 2);
    await expectQuery(`berth_runs_finished_total{status="succeeded",agent_id="${agent}"}`, 2);
    await expectQuery('berth_run_claim_latency_seconds_count', 2);
    await expectQuery('berth_run_overhead_seconds_count', 2);
    await expectQuery('berth_run_phase_duration_seconds_count{phase="provision"}', 2);
    await expectQuery('berth_run_log_bytes_total{stream="stdout"}', (v) => v >= 2 * 'scraped-by-prometheus\n'.length);
    // Leases: two by the API and one per run granted; the released one and the runs' ended released.
    await expectQuery('berth_lease_acquire_duration_seconds_count{outcome="granted"}', 4);
    await expectQuery('berth_leases_ended_total{status="released"}', 3);
    await expectQuery('berth_lease_lifetime_seconds_count{status="released"}', 3);
    await expectQuery('berth_cleanup_attempts_total{target="resource",result="success"}', 2);
    await expectQuery('sum(berth_runs{status=~"queued|running"})', 0);
    await expectQuery('berth_runs_oldest_queued_age_seconds', 0);
    // The server's own work, and its database pools (PostgreSQL).
    await expectQuery('sum(berth_task_duration_seconds_count{task="heartbeat"})', (v) => v > 0);
    await expectQuery('berth_db_pool_max{pool="main"}', 10);
    await expectQuery('berth_database_up', 1);
    await expectQuery('berth_info{database="postgres"}', 1);
    // PromQL over what was scraped: the acquire rate over the last minute is above zero.
    await expectQuery('sum(increase(berth_lease_acquire_duration_seconds_count[1m]))', (v) => v > 0);
  });
  it('sees a warm pool fill, a run claim one of its members, and the pool refill', async () => {
    const co = (await berth.call('POST', '/api/companies', { body: { name: 'Scraped pools' } })).body;
    const key = co.apiKey as string;
    const companyId = co.company.id as string;
    const listed = (await berth.call('GET', `/api/companies/${companyId}/environments`, { key })).body;
    const envs = (Array.isArray(listed) ? listed : listed.items) as Array<{ id: string; driver: string }>;
    let env = envs.find((e) => e.driver === 'local')?.id;
    if (!env) env = (await berth.call('POST', `/api/companies/${companyId}/environments`, { key, body: { name: 'local', driver: 'local', config: {} } })).body.id as string;
    expect((await berth.call('PATCH', `/api/environments/${env}`, { key, body: { pool: { minReady: 2, maxReady: 2 } } })).status).toBe(200);
    await expectQuery(`berth_pool_members{environment_id="${env}",state="ready"}`, 2);
    await expectQuery(`berth_pool_members{environment_id="${env}",state="claimed"}`, 0);
    await expectQuery(`berth_pool_refill_failures{environment_id="${env}"}`, 0);

    const agent = (await berth.call('POST', `/api/companies/${companyId}/agents`, { key, body: { name: 'pooled', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'sleep 30'] }, defaultEnvironmentId: env } })).body.id as string;
    const run = (await berth.call('POST', `/api/agents/${agent}/wakeup`, { key, body: {} })).body.id as string;
    await waitFor('the pooled run to start', async () => (await berth.call('GET', `/api/heartbeat-runs/${run}`, { key })).body.status === 'running', 30_000);
    await expectQuery(`berth_pool_members{environment_id="${env}",state="claimed"}`, 1);
    await expectQuery('berth_pool_claims_total{result="warm"}', 1);
    // Refilled behind the claim: two ready again, beside the claimed one.
    await expectQuery(`berth_pool_members{environment_id="${env}",state="ready"}`, 2);
    await expectQuery('berth_pool_members_made_total{result="ready"}', 3);
    expect((await berth.call('POST', `/api/heartbeat-runs/${run}/cancel`, { key })).status).toBeLessThan(300);
    await expectQuery(`berth_pool_members{environment_id="${env}",state="claimed"}`, 0);
    expect((await berth.call('PATCH', `/api/environments/${env}`, { key, body: { pool: null } })).status).toBe(200);
    // The pool off and its members retired: the environment's series are gone.
    await expectQuery(`sum(berth_pool_members{environment_id="${env}"}) or vector(0)`, 0);
  });
});
