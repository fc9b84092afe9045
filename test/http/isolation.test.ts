// Tenant isolation over HTTP: company A's key on every route with company B's ids
// gets 404 and changes nothing of B; nothing of B shows in any listing of A. A run
// token reaches only its own run and leases.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryRows } from '../../src/db/client.js';
import { allRoutes } from '../../src/http/routes/index.js';
import type { RouteDef } from '../../src/http/route.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { routePath, seedCompany, startTestApi, type SeededCompany, type TestApi } from '../support/http.js';
import { waitFor } from '../support/wait.js';

let t: TestDb;
let api: TestApi;
const dir = mkdtempSync(join(tmpdir(), 'berth-iso-'));

/** A body the route would accept, so that only ownership can refuse it. */
function validBody(r: RouteDef): unknown {
  const bodies: Record<string, unknown> = {
    'POST /api/companies/:companyId/environments': { name: 'intruder', driver: 'sandbox', config: { provider: 'p' } },
    'PATCH /api/environments/:id': { name: 'renamed' },
    'POST /api/environments/:id/leases': { ttlSeconds: 60 },
    'POST /api/environment-leases/:leaseId/renew': { fence: 1, ttlSeconds: 60 },
    'PATCH /api/environment-leases/:leaseId/metadata': { fence: 1, metadata: { x: 1 } },
    'POST /api/environment-leases/:leaseId/release': { fence: 1 },
    'POST /api/companies/:companyId/agents': { name: 'intruder', adapterType: 'process', adapterConfig: { command: 'true' } },
    'PATCH /api/agents/:id': { name: 'renamed' },
    'POST /api/companies/:companyId/api-keys': { name: 'intruder' },
  };
  if (!r.body) return undefined;
  return bodies[`${r.method} ${r.path}`] ?? {};
}

/** Every row of the company's tables, as text: what "unchanged" is compared on. */
async function snapshot(companyId: string, exceptRun = '00000000-0000-4000-8000-000000000000'): Promise<string> {
  const rows = await queryRows<{ t: string }>(
    t.db,
    sql`SELECT concat_ws('|',
          (SELECT string_agg(row_to_json(e)::text, ',' ORDER BY id) FROM environments e WHERE company_id = ${companyId}),
          (SELECT string_agg(row_to_json(l)::text, ',' ORDER BY id) FROM environment_leases l WHERE company_id = ${companyId} AND heartbeat_run_id IS DISTINCT FROM ${exceptRun}::uuid),
          (SELECT string_agg(row_to_json(a)::text, ',' ORDER BY id) FROM agents a WHERE company_id = ${companyId}),
          (SELECT string_agg(row_to_json(r)::text, ',' ORDER BY id) FROM heartbeat_runs r WHERE company_id = ${companyId} AND id <> ${exceptRun}::uuid),
          (SELECT string_agg(row_to_json(k)::text, ',' ORDER BY id) FROM (SELECT id, name, revoked_at FROM api_keys WHERE company_id = ${companyId}) k),
          (SELECT count(*)::text FROM activity_log WHERE company_id = ${companyId} AND run_id IS DISTINCT FROM ${exceptRun}::uuid)) AS t`,
  );
  return rows[0]!.t;
}

let A: SeededCompany;
let B: SeededCompany;
beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { runtime: true, workspaceRoot: dir });
  A = await seedCompany(api, 'A');
  B = await seedCompany(api, 'B');
});
afterAll(async () => {
  await api?.close();
  await t?.close();
  rmSync(dir, { recursive: true, force: true });
});

function expectDead(r: { status: number; body: any }) {
  expect(r.status).toBe(401);
  expect(r.body.error.message).toMatch(/no longer valid: run .* is cancelled/);
}

const scoped = () => allRoutes().filter((r) => r.access === 'company' || r.access === 'run');

describe('tenant isolation', () => {
  it("company A's key on every route with B's ids: 404, and B is unchanged", async () => {
    const before = await snapshot(B.id);
    const routes = scoped().filter((r) => r.path.includes(':'));
    expect(routes.length).toBeGreaterThanOrEqual(20);
    for (const r of routes) {
      const body = validBody(r);
      const res = await api.call(r.method, routePath(r, B), { key: A.key, ...(body !== undefined ? { body } : {}) });
      expect(res.status, `${r.method} ${r.path}: ${JSON.stringify(res.body)}`).toBe(404);
      expect(res.body.error.code).toBe('not_found');
      expect(JSON.stringify(res.body)).not.toContain('"name":"sandbox"');
    }
    expect(await snapshot(B.id)).toBe(before);
  });

  it('the same calls with A\'s own ids succeed (so the 404s above are about ownership)', async () => {
    for (const r of scoped().filter((x) => x.method === 'GET' && x.path !== '/api/agents/me')) {
      const res = await api.call(r.method, routePath(r, A), { key: A.key, headers: { accept: 'application/json' }, headersOnly: r.streams === true });
      // The seeded lease has no workspace: its files are refused for that, not for ownership.
      const own = r.path === '/api/environment-leases/:leaseId/files' ? 422 : 200;
      expect(res.status, `${r.method} ${r.path}: ${JSON.stringify(res.body)}`).toBe(own);
    }
    // The caller's own agent: a company key is no agent (the run-token test reads it).
    const me = await api.call('GET', '/api/agents/me', { key: A.key });
    expect(me.status).toBe(401);
    expect(me.body.message).toMatch(/run's own token/);
  });

  it("nothing of B appears in any listing of A", async () => {
    const bIds = [B.id, B.env, B.lease, B.agent, B.run, B.apiKey];
    const listings = scoped().filter((r) => r.method === 'GET' && r.path !== '/api/companies/:companyId/events');
    for (const r of listings) {
      const res = await api.call('GET', routePath(r, A), { key: A.key });
      const text = JSON.stringify(res.body);
      for (const id of bIds) expect(text, `${r.path} leaks ${id}`).not.toContain(id);
    }
    // The live feed, from the beginning: A's rows only.
    const abort = new AbortController();
    const res = await fetch(`${api.url}/api/companies/${A.id}/events?after=0`, { headers: { authorization: `Bearer ${A.key}` }, signal: abort.signal });
    let feed = '';
    const decoder = new TextDecoder();
    setTimeout(() => abort.abort(), 1500);
    try {
      for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) feed += decoder.decode(part, { stream: true });
    } catch {
      /* aborted */
    }
    expect(feed).toContain(`"entityId":"${A.env}"`);
    for (const id of bIds) expect(feed, `the feed leaks ${id}`).not.toContain(id);
    const companies = await api.call('GET', '/api/companies', { key: A.key });
    expect(companies.body.map((c: { id: string }) => c.id)).toEqual([A.id]);
  });

  it('a run token reaches only its own run and its leases', async () => {
    const tokenFile = join(dir, 'token');
    const agent = (await api.call('POST', `/api/companies/${A.id}/agents`, {
      key: A.key,
      body: { name: 'holder', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', `printf %s "$PAPERCLIP_API_KEY" > ${tokenFile}; sleep 60`], graceSec: 0 } },
    })).body.id;
    const run = (await api.call('POST', `/api/agents/${agent}/wakeup`, { key: A.key, body: {} })).body.id;
    const token = await waitFor('the run token', async () => {
      try {
        return readFileSync(tokenFile, 'utf8') || null;
      } catch {
        return null;
      }
    });
    const own = (await api.call('GET', `/api/heartbeat-runs/${run}`, { key: token })).body;
    expect(own.id).toBe(run);
    const ownLease = await api.call('GET', `/api/environment-leases/${own.leaseId}`, { key: token });
    expect(ownLease.status).toBe(200);

    const before = await snapshot(A.id, run);
    // Another run of the same company (A.run) and its objects: every route.
    for (const r of scoped()) {
      const body = validBody(r);
      const res = await api.call(r.method, routePath(r, A), { key: token, ...(body !== undefined ? { body } : {}) });
      if (r.access === 'company') {
        expect(res.status, `${r.method} ${r.path}`).toBe(403);
      } else if (r.path === '/api/agents/me') {
        // Its own agent, whoever else's ids the loop uses.
        expect(res.status).toBe(200);
        expect(res.body.id).toBe(own.agentId);
        expect(res.body.id).not.toBe(A.agent);
        expect(res.body.runId).toBe(run);
      } else if (r.method === 'POST' && r.path === '/api/environments/:id/leases') {
        // A run may take leases, for itself only: asking for another run's is refused.
        const other = await api.call('POST', routePath(r, A), { key: token, body: { ttlSeconds: 60, heartbeatRunId: A.run } });
        expect(other.status).toBe(422);
        if (res.status === 201) await api.call('POST', `/api/environment-leases/${res.body.lease.id}/release`, { key: token, body: { fence: res.body.lease.fence } });
        expect(res.body.lease?.heartbeatRunId).toBe(run);
      } else {
        expect(res.status, `${r.method} ${r.path}: ${JSON.stringify(res.body)}`).toBe(404);
      }
    }
    // Only the run's own lease changes were written (one acquire and one release): the rest of A is as it was.
    expect(await snapshot(A.id, run)).toBe(before);
    expect((await api.call('GET', `/api/heartbeat-runs/${A.run}`, { key: token })).status).toBe(404);
    expect((await api.call('GET', `/api/environment-leases/${A.lease}`, { key: token })).status).toBe(404);
    // Another run's idempotency key does not hand over that run's lease.
    const runLease = await t.services.leases.acquire(A.id, { environmentId: A.env, heartbeatRunId: A.run, idempotencyKey: 'shared-key', ttlSeconds: 600 });
    const borrowed = await api.call('POST', `/api/environments/${A.env}/leases`, { key: token, body: { idempotencyKey: 'shared-key', ttlSeconds: 60 } });
    expect(borrowed.body.lease?.id).not.toBe(runLease.lease.id);
    expect(JSON.stringify(borrowed.body)).not.toContain(runLease.lease.id);
    if (borrowed.status === 201) await api.call('POST', `/api/environment-leases/${borrowed.body.lease.id}/release`, { key: token, body: { fence: borrowed.body.lease.fence } });
    await t.services.leases.release(A.id, runLease.lease.id, { fence: runLease.lease.fence });
    const byRunKey = await api.call('POST', `/api/environments/${A.env}/leases`, { key: token, body: { idempotencyKey: `run:${A.run}`, ttlSeconds: 60 } });
    expect(JSON.stringify(byRunKey.body)).not.toContain(`"heartbeatRunId":"${A.run}"`);
    if (byRunKey.status === 201) await api.call('POST', `/api/environment-leases/${byRunKey.body.lease.id}/release`, { key: token, body: { fence: byRunKey.body.lease.fence } });

    await api.call('POST', `/api/heartbeat-runs/${run}/cancel`, { key: A.key });
    await waitFor('the holder to stop', async () => (await api.call('GET', `/api/heartbeat-runs/${run}`, { key: A.key })).body.status === 'cancelled');
    // The moment its run has ended, the token is refused.
    expectDead(await api.call('GET', `/api/heartbeat-runs/${run}`, { key: token }));
  });
});
