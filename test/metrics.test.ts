// GET /metrics: what a server counts moves with what happens through it (leases granted,
// refused, released and expired, runs queued, claimed and finished, cleanups, requests), the
// database gauges follow the database, each server has its own registry, and the scrape
// needs the admin key unless the server was told to make it public.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricsPublicFromEnv } from '../src/server/serve.js';
import { openTestDb, type TestDb } from './support/db.js';
import { startTestApi, type TestApi } from './support/http.js';
import { hasSample, parseMetrics, sampleSum, type Sample } from './support/metrics-text.js';
import { waitFor } from './support/wait.js';

let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { runtime: true });
  co = await api.company('Metrics');
});
afterAll(async () => {
  await api?.close();
  await t?.close();
});

async function scrape(on: TestApi = api): Promise<Sample[]> {
  const r = await on.call('GET', '/metrics');
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseMetrics(r.body as string);
}

/** Scrapes until `f` holds: the database gauges are read at most once a second. */
async function scrapeUntil(what: string, f: (s: Sample[]) => boolean): Promise<Sample[]> {
  return waitFor(what, async () => {
    const s = await scrape();
    return f(s) ? s : null;
  });
}

const call = (method: string, path: string, body?: unknown) => api.call(method, path, { key: co.key, ...(body !== undefined ? { body } : {}) });

describe('GET /metrics', () => {
  it('needs the admin key: none is 401, a company key 403', async () => {
    expect((await api.call('GET', '/metrics', { key: null })).status).toBe(401);
    const forbidden = await api.call('GET', '/metrics', { key: co.key });
    expect(forbidden.status).toBe(403);
    expect(forbidden.body.error.code).toBe('forbidden');
    expect((await api.call('GET', '/metrics', { key: 'bak_not-a-key' })).status).toBe(401);
  });

  it('answers without a key when the server makes it public (BERTH_METRICS_PUBLIC=1), and refuses a malformed setting', async () => {
    const open = await startTestApi(t, { metricsPublic: true });
    try {
      const r = await open.call('GET', '/metrics', { key: null });
      expect(r.status).toBe(200);
      expect(r.body).toContain('# TYPE berth_leases gauge');
    } finally {
      await open.close();
    }
    expect(metricsPublicFromEnv({ BERTH_METRICS_PUBLIC: '1' })).toBe(true);
    expect(metricsPublicFromEnv({ BERTH_METRICS_PUBLIC: '0' })).toBe(false);
    expect(metricsPublicFromEnv({})).toBe(false);
    expect(() => metricsPublicFromEnv({ BERTH_METRICS_PUBLIC: 'yes' })).toThrow(/BERTH_METRICS_PUBLIC must be 1 .* or 0/);
  });

  it('counts leases granted, refused at capacity, released and expired; the gauge follows the database', async () => {
    const env = (await call('POST', `/api/companies/${co.id}/environments`, { name: 'one-slot', driver: 'sandbox', config: { provider: 'p' }, capacity: 1 })).body.id as string;
    const before = await scrape();
    const granted0 = sampleSum(before, 'berth_lease_acquire_duration_seconds_count', { outcome: 'granted' });

    const first = await call('POST', `/api/environments/${env}/leases`, { ttlSeconds: 3600 });
    expect(first.status).toBe(201);
    const refused = await call('POST', `/api/environments/${env}/leases`, { ttlSeconds: 3600 });
    expect(refused.body.error.code).toBe('capacity_exhausted');

    let s = await scrapeUntil('the active lease in the gauge', (x) => sampleSum(x, 'berth_leases', { environment_id: env, status: 'active' }) === 1);
    expect(sampleSum(s, 'berth_lease_acquire_duration_seconds_count', { outcome: 'granted' })).toBe(granted0 + 1);
    expect(sampleSum(s, 'berth_lease_acquire_refusals_total', { reason: 'capacity_exhausted' })).toBe(1);
    expect(sampleSum(s, 'berth_lease_acquire_duration_seconds_count', { outcome: 'refused' })).toBe(1);
    expect(sampleSum(s, 'berth_leases', { environment_id: env, status: 'retained' })).toBe(0);
    // Requests by their route's template: no environment id in a label but environment_id's own.
    expect(sampleSum(s, 'berth_http_requests_total', { method: 'POST', route: '/api/environments/:id/leases', status: '201' })).toBeGreaterThanOrEqual(1);
    expect(sampleSum(s, 'berth_http_requests_total', { method: 'POST', route: '/api/environments/:id/leases', status: '409' })).toBe(1);
    expect(sampleSum(s, 'berth_http_request_duration_seconds_count', { method: 'POST', route: '/api/environments/:id/leases' })).toBeGreaterThanOrEqual(2);
    expect(s.some((x) => Object.values(x.labels).some((v) => v.includes(first.body.lease.id)))).toBe(false);

    const lease = first.body.lease;
    const ended0 = sampleSum(s, 'berth_leases_ended_total', { status: 'released' });
    expect((await call('POST', `/api/environment-leases/${lease.id}/release`, { fence: lease.fence })).status).toBe(200);
    s = await scrapeUntil('the released lease out of the gauge', (x) => sampleSum(x, 'berth_leases', { environment_id: env, status: 'active' }) === 0);
    expect(sampleSum(s, 'berth_leases_ended_total', { status: 'released' })).toBe(ended0 + 1);
    expect(sampleSum(s, 'berth_lease_lifetime_seconds_count', { status: 'released' })).toBe(ended0 + 1);

    // A lease that is not renewed is expired by the sweep: counted, with how late.
    const short = (await call('POST', `/api/environments/${env}/leases`, { ttlSeconds: 1 })).body.lease;
    await waitFor('the lease to expire', async () => (await call('GET', `/api/environment-leases/${short.id}`)).body.status === 'expired');
    s = await scrape();
    expect(sampleSum(s, 'berth_leases_expired_total', { kind: 'ttl' })).toBe(1);
    expect(sampleSum(s, 'berth_lease_expiry_lag_seconds_count', { kind: 'ttl' })).toBe(1);
    expect(sampleSum(s, 'berth_leases_ended_total', { status: 'expired' })).toBe(1);
    expect(sampleSum(s, 'berth_task_duration_seconds_count', { task: 'expire-leases', result: 'ok' })).toBeGreaterThanOrEqual(1);
  });

  it('counts a cleanup the caller says failed: the lease waits in pending_cleanup, then the sweep records its attempt', async () => {
    const env = (await call('POST', `/api/companies/${co.id}/environments`, { name: 'cleanup', driver: 'sandbox', config: { provider: 'p' } })).body.id as string;
    const lease = (await call('POST', `/api/environments/${env}/leases`, { ttlSeconds: 3600 })).body.lease;
    const before = sampleSum(await scrape(), 'berth_cleanup_attempts_total', { target: 'lease', result: 'success' });
    const r = await call('POST', `/api/environment-leases/${lease.id}/release`, { fence: lease.fence, cleanupStatus: 'failed' });
    expect(r.body.lease.status).toBe('pending_cleanup');
    let s = await scrapeUntil('the pending cleanup in the gauge', (x) => sampleSum(x, 'berth_leases', { environment_id: env, status: 'pending_cleanup' }) === 1);
    expect(sampleSum(s, 'berth_leases_ended_total', { status: 'pending_cleanup' })).toBeGreaterThanOrEqual(1);
    await waitFor('the cleanup sweep', async () => (await call('GET', `/api/environment-leases/${lease.id}`)).body.status === 'released', 20_000);
    s = await scrapeUntil('the cleaned lease out of the gauge', (x) => sampleSum(x, 'berth_leases', { environment_id: env, status: 'pending_cleanup' }) === 0);
    expect(sampleSum(s, 'berth_cleanup_attempts_total', { target: 'lease', result: 'success' })).toBe(before + 1);
  });

  it('counts runs queued, claimed and finished by status and agent; queue depth and age while one waits', async () => {
    const agent = (await call('POST', `/api/companies/${co.id}/agents`, { name: 'sleeper', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo hello-metrics; sleep 30'] }, maxConcurrentRuns: 1 })).body.id as string;
    const first = (await call('POST', `/api/agents/${agent}/wakeup`, {})).body.id as string;
    await waitFor('the first run to start', async () => (await call('GET', `/api/heartbeat-runs/${first}`)).body.status === 'running');
    const second = (await call('POST', `/api/agents/${agent}/wakeup`, {})).body.id as string;
    // One runs, one waits for the agent's only slot.
    let s = await scrapeUntil('one run queued and one running', (x) => sampleSum(x, 'berth_runs', { status: 'queued' }) === 1 && sampleSum(x, 'berth_runs', { status: 'running' }) === 1);
    s = await scrapeUntil('the queued run to age', (x) => sampleSum(x, 'berth_runs_oldest_queued_age_seconds') > 0);
    expect(sampleSum(s, 'berth_runs_queued_total', { source: 'on_demand' })).toBe(2);
    expect(sampleSum(s, 'berth_run_claim_latency_seconds_count')).toBe(1);
    expect(sampleSum(s, 'berth_run_phase_duration_seconds_count', { phase: 'place' })).toBe(1);
    expect(sampleSum(s, 'berth_run_phase_duration_seconds_count', { phase: 'start' })).toBe(1);
    await waitFor('the first run\'s output', async () => sampleSum(await scrape(), 'berth_run_log_bytes_total', { stream: 'stdout' }) >= 'hello-metrics\n'.length);

    const leasesEnded = (x: Sample[]) => ['released', 'failed', 'expired'].reduce((n, status) => n + sampleSum(x, 'berth_leases_ended_total', { status }), 0);
    const ended0 = leasesEnded(s);
    await call('POST', `/api/heartbeat-runs/${second}/cancel`);
    await call('POST', `/api/heartbeat-runs/${first}/cancel`);
    await waitFor('the first run to end', async () => (await call('GET', `/api/heartbeat-runs/${first}`)).body.status === 'cancelled');
    s = await scrapeUntil('no run left', (x) => sampleSum(x, 'berth_runs', { status: 'running' }) === 0 && sampleSum(x, 'berth_runs', { status: 'queued' }) === 0);
    expect(sampleSum(s, 'berth_runs_finished_total', { status: 'cancelled', agent_id: agent })).toBe(2);
    expect(sampleSum(s, 'berth_runs_oldest_queued_age_seconds')).toBe(0);
    expect(sampleSum(s, 'berth_run_phase_duration_seconds_count', { phase: 'finish' })).toBe(1);
    expect(sampleSum(s, 'berth_run_overhead_seconds_count')).toBe(1);
    // The run's lease ended with it (the cancelled queued run had none), and its resource was destroyed.
    expect(leasesEnded(s)).toBe(ended0 + 1);
    expect(sampleSum(s, 'berth_cleanup_attempts_total', { target: 'resource', result: 'success' })).toBeGreaterThanOrEqual(1);
    // Never a run id in a label.
    expect(s.some((x) => Object.values(x.labels).some((v) => v === first || v === second))).toBe(false);
  });

  it('shows each warm pool: members by state, warm and cold claims, members made and refill failures', async () => {
    // Its own company: a company has at most one local environment.
    const pc = await api.company('Metrics pools');
    const call = (method: string, path: string, body?: unknown) => api.call(method, path, { key: pc.key, ...(body !== undefined ? { body } : {}) });
    const created = await call('POST', `/api/companies/${pc.id}/environments`, { name: 'pooled', driver: 'local', config: {}, pool: { minReady: 2, maxReady: 2 } });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const env = created.body.id as string;
    const made0 = sampleSum(await scrape(), 'berth_pool_members_made_total', { result: 'ready' });
    let s = await scrapeUntil('two ready members in the gauge', (x) => sampleSum(x, 'berth_pool_members', { environment_id: env, state: 'ready' }) === 2);
    expect(sampleSum(s, 'berth_pool_members', { environment_id: env, state: 'claimed' })).toBe(0);
    expect(hasSample(s, 'berth_pool_members', { environment_id: env, state: 'provisioning' })).toBe(true);
    expect(sampleSum(s, 'berth_pool_members_made_total', { result: 'ready' })).toBe(made0 + 2);
    expect(sampleSum(s, 'berth_pool_member_make_duration_seconds_count', { result: 'ready' })).toBe(made0 + 2);
    expect(sampleSum(s, 'berth_pool_refill_failures', { environment_id: env })).toBe(0);
    const warm0 = sampleSum(s, 'berth_pool_claims_total', { result: 'warm' });

    // A run holding its member: claimed while it runs.
    const agent = (await call('POST', `/api/companies/${pc.id}/agents`, { name: 'pooled-sleeper', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'sleep 30'] }, defaultEnvironmentId: env })).body.id as string;
    const run = (await call('POST', `/api/agents/${agent}/wakeup`, {})).body.id as string;
    await waitFor('the pooled run to start', async () => (await call('GET', `/api/heartbeat-runs/${run}`)).body.status === 'running');
    s = await scrapeUntil('one member claimed', (x) => sampleSum(x, 'berth_pool_members', { environment_id: env, state: 'claimed' }) === 1);
    expect(sampleSum(s, 'berth_pool_claims_total', { result: 'warm' })).toBe(warm0 + 1);
    await call('POST', `/api/heartbeat-runs/${run}/cancel`);
    await waitFor('the pooled run to end', async () => (await call('GET', `/api/heartbeat-runs/${run}`)).body.status === 'cancelled');

    // A setup that fails: counted on the environment and by the server that made the member.
    const failed0 = sampleSum(s, 'berth_pool_members_made_total', { result: 'failed' });
    expect((await call('PATCH', `/api/environments/${env}`, { pool: { minReady: 1, maxReady: 1, setup: { command: 'exit 4', timeoutSeconds: 10 } } })).status).toBe(200);
    s = await scrapeUntil('a refill failure in the gauge', (x) => sampleSum(x, 'berth_pool_refill_failures', { environment_id: env }) >= 1);
    expect(sampleSum(s, 'berth_pool_members_made_total', { result: 'failed' })).toBeGreaterThan(failed0);
    expect((await call('PATCH', `/api/environments/${env}`, { pool: null })).status).toBe(200);
    // The pool is off: its environment leaves the failures gauge, and its members drain away.
    s = await scrapeUntil('the pool gone from the gauges', (x) => !hasSample(x, 'berth_pool_refill_failures', { environment_id: env }) && sampleSum(x, 'berth_pool_members', { environment_id: env }) === 0);
    for (let i = api.runtimeErrors.length - 1; i >= 0; i--) if (/setup command failed/.test(api.runtimeErrors[i]!)) api.runtimeErrors.splice(i, 1);
  });

  it('names a request no route matched (unmatched), and counts the maintenance tasks', async () => {
    expect((await api.call('GET', '/api/no-such-route/123')).status).toBe(404);
    const s = await scrape();
    expect(sampleSum(s, 'berth_http_requests_total', { method: 'GET', route: '(unmatched)', status: '404' })).toBeGreaterThanOrEqual(1);
    expect(hasSample(s, 'berth_http_requests_total', { route: '/api/no-such-route/123' })).toBe(false);
    expect(sampleSum(s, 'berth_task_duration_seconds_count', { task: 'heartbeat', result: 'ok' })).toBeGreaterThan(0);
    expect(sampleSum(s, 'berth_database_up')).toBe(1);
  });

  it('keeps one registry per server: another server in this process counts only its own', async () => {
    const t2 = await openTestDb();
    const other = await startTestApi(t2);
    try {
      const co2 = await other.company('Other');
      const env = (await other.call('POST', `/api/companies/${co2.id}/environments`, { body: { name: 'e', driver: 'sandbox', config: { provider: 'p' } } })).body.id as string;
      const mine = sampleSum(await scrape(), 'berth_lease_acquire_duration_seconds_count', { outcome: 'granted' });
      expect((await other.call('POST', `/api/environments/${env}/leases`, { key: co2.key, body: { ttlSeconds: 60 } })).status).toBe(201);
      const theirs = await other.call('GET', '/metrics');
      expect(sampleSum(parseMetrics(theirs.body as string), 'berth_lease_acquire_duration_seconds_count', { outcome: 'granted' })).toBe(1);
      expect(sampleSum(await scrape(), 'berth_lease_acquire_duration_seconds_count', { outcome: 'granted' })).toBe(mine);
    } finally {
      await other.close();
      await t2.close();
    }
  });
});
