// The HTTP API over a real socket: auth, the error shape, limits, and each
// resource's routes doing what the services do.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryRows } from '../../src/db/client.js';
import { allRoutes } from '../../src/http/routes/index.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { startTestApi, type TestApi } from '../support/http.js';
import { waitFor } from '../support/wait.js';

let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-http-ws-'));

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { runtime: true, workspaceRoot });
  co = await api.company('Acme');
});
afterAll(async () => {
  await api?.close();
  await t?.close();
  rmSync(workspaceRoot, { recursive: true, force: true });
});

const as = (key: string) => ({
  get: (path: string) => api.call('GET', path, { key }),
  post: (path: string, body?: unknown) => api.call('POST', path, { key, ...(body !== undefined ? { body } : {}) }),
  patch: (path: string, body: unknown) => api.call('PATCH', path, { key, body }),
  del: (path: string) => api.call('DELETE', path, { key }),
});

function expectError(r: { status: number; body: any }, status: number, code: string) {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(r.body.error.code).toBe(code);
  expect(typeof r.body.error.message).toBe('string');
}

describe('auth', () => {
  it('answers /health without a key and nothing else', async () => {
    const h = await api.call('GET', '/health', { key: null });
    expect(h.status).toBe(200);
    expect(h.body).toMatchObject({ ok: true, database: t.kind });
    for (const route of allRoutes().filter((r) => r.access !== 'public')) {
      const path = route.path.replace(/:\w+/g, '00000000-0000-4000-8000-000000000000');
      expectError(await api.call(route.method, path, { key: null }), 401, 'unauthorized');
    }
    expectError(await api.call('GET', '/api/openapi.json', { key: null }), 401, 'unauthorized');
  });

  it('refuses malformed, unknown and revoked keys, and company keys on admin routes', async () => {
    expectError(await api.call('GET', '/api/companies', { key: null, headers: { authorization: 'Basic abc' } }), 401, 'unauthorized');
    expectError(await api.call('GET', '/api/companies', { key: 'bk_not-a-real-key' }), 401, 'unauthorized');
    expectError(await api.call('GET', '/api/companies', { key: 'badm_guess' }), 401, 'unauthorized');
    expectError(await as(co.key).post('/api/companies', { name: 'x' }), 403, 'forbidden');

    const extra = await as(co.key).post(`/api/companies/${co.id}/api-keys`, { name: 'ci' });
    expect(extra.status).toBe(201);
    expect(extra.body.apiKey).toMatch(/^bk_/);
    expect((await as(extra.body.apiKey).get(`/api/companies/${co.id}`)).status).toBe(200);
    expect((await as(co.key).del(`/api/api-keys/${extra.body.apiKeyRecord.id}`)).status).toBe(200);
    expectError(await as(extra.body.apiKey).get(`/api/companies/${co.id}`), 401, 'unauthorized');
    // A company cannot revoke its last live key (it would lock itself out); the admin can.
    const own = (await as(co.key).get(`/api/companies/${co.id}/api-keys`)).body.find((k: { revokedAt: string | null }) => k.revokedAt === null);
    expectError(await as(co.key).del(`/api/api-keys/${own.id}`), 409, 'conflict');
    expect((await as(co.key).get(`/api/companies/${co.id}`)).status).toBe(200);
  });

  it('stores keys only as hashes', async () => {
    const rows = await queryRows<{ row: string }>(t.db, sql`SELECT row_to_json(k)::text AS row FROM api_keys k`);
    expect(rows.length).toBeGreaterThan(0);
    for (const r of rows) expect(r.row).not.toContain(co.key);
    const listed = await as(co.key).get(`/api/companies/${co.id}/api-keys`);
    expect(JSON.stringify(listed.body)).not.toContain(co.key);
    expect(listed.body[0].prefix).toBe(co.key.slice(0, 10));
  });
});

describe('requests that are wrong', () => {
  it('malformed JSON is 400, a non-object body 422, the wrong media type 415', async () => {
    const path = `/api/companies/${co.id}/environments`;
    expectError(await api.call('POST', path, { key: co.key, raw: '{"name":', headers: { 'content-type': 'application/json' } }), 400, 'invalid_json');
    expectError(await api.call('POST', path, { key: co.key, body: [1, 2] }), 422, 'invalid');
    expectError(await api.call('POST', path, { key: co.key, raw: 'name=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } }), 415, 'unsupported_media_type');
    expectError(await api.call('POST', path, { key: co.key }), 422, 'invalid');
  });

  it('a body over 1 MiB is 413, and nothing is created', async () => {
    const before = (await as(co.key).get(`/api/companies/${co.id}/environments`)).body.length;
    const r = await api.call('POST', `/api/companies/${co.id}/environments`, { key: co.key, body: { name: 'big', driver: 'sandbox', config: { provider: 'x' }, description: 'x'.repeat(1024 * 1024 + 10) } });
    expectError(r, 413, 'payload_too_large');
    expect((await as(co.key).get(`/api/companies/${co.id}/environments`)).body.length).toBe(before);
  });

  it('names the field that is wrong', async () => {
    const r = await as(co.key).post(`/api/companies/${co.id}/environments`, {
      name: 'remote',
      driver: 'ssh',
      config: { host: 'h', port: 70000, username: 'u', remoteWorkspacePath: 'rel', knownHosts: 'h ssh-ed25519 AAAA' },
      colour: 'red',
    });
    expectError(r, 422, 'invalid');
    const paths = r.body.error.fields.map((f: { path: string }) => f.path).sort();
    expect(paths).toEqual(['colour', 'config.port', 'config.remoteWorkspacePath']);
  });

  it('refuses unpaired UTF-16 surrogates (JSON allows them, PostgreSQL does not) instead of failing with a 500', async () => {
    const r = await as(co.key).post(`/api/companies/${co.id}/agents`, {
      name: 'sur',
      adapterType: 'process',
      adapterConfig: { command: '/bin/echo', env: { TOPSECRET: 'hunter2-value', X: 'half \ud800' } },
    });
    expectError(r, 422, 'invalid');
    expect(r.body.error.fields).toEqual([{ path: 'adapterConfig.env.X', message: 'must not contain unpaired UTF-16 surrogates' }]);
    expectError(await as(co.key).post(`/api/companies/${co.id}/environments`, { name: 'x', driver: 'sandbox', config: { provider: 'p' }, metadata: { '\udc00': 1 } }), 422, 'invalid');
  });

  it('logs an unexpected error without the values of the failed query', async () => {
    const { loggableError } = await import('../../src/http/errors.js');
    const err = Object.assign(new Error('Failed query: insert into agents values ($1, $2)\nparams: hunter2-value,other'), {
      name: 'DrizzleQueryError',
      cause: Object.assign(new Error('invalid input syntax for type uuid: "hunter2-value"'), { code: '22P02' }),
    });
    const logged = JSON.stringify(loggableError(err));
    expect(logged).not.toContain('hunter2');
    expect(logged).toContain('22P02');
    expect(logged).toContain('DrizzleQueryError');
  });

  it('refuses a Last-Event-ID out of range (400), not a 500', async () => {
    const run = (await t.services.runs.list(co.id, { limit: 1 }))[0];
    const agent = run ? null : await t.services.agents.create(co.id, { name: 'lei', adapterType: 'process', adapterConfig: { command: 'true' } });
    const runId = run?.id ?? (await t.services.runs.invoke(co.id, agent!.id, {})).id;
    for (const id of ['9007199254740991', '-1', 'abc', '1e3']) {
      expectError(await api.call('GET', `/api/heartbeat-runs/${runId}/log`, { key: co.key, headers: { 'last-event-id': id } }), 400, 'invalid');
    }
    expectError(await api.call('GET', `/api/companies/${co.id}/events`, { key: co.key, headers: { 'last-event-id': '99999999999999999999' } }), 400, 'invalid');
  });

  it('refuses NUL characters, unknown query parameters, and unknown routes', async () => {
    expectError(await as(co.key).post(`/api/companies/${co.id}/environments`, { name: 'a\u0000b', driver: 'sandbox', config: { provider: 'p' } }), 422, 'invalid');
    expectError(await as(co.key).get(`/api/companies/${co.id}/environments?colour=red`), 400, 'invalid');
    expectError(await as(co.key).get(`/api/companies/${co.id}/environments?status=sleeping`), 400, 'invalid');
    expectError(await as(co.key).get(`/api/nothing-here`), 404, 'not_found');
    expectError(await as(co.key).get(`/api/environments/not-a-uuid`), 404, 'not_found');
  });
});

describe('environments and leases', () => {
  let envId: string;
  it('creates, shows, changes, archives and refuses to delete Local', async () => {
    const created = await as(co.key).post(`/api/companies/${co.id}/environments`, {
      name: 'pool',
      driver: 'sandbox',
      config: { provider: 'acme' },
      envVars: { API_TOKEN: 'sekret-value' },
      capacity: 2,
    });
    expect(created.status).toBe(201);
    envId = created.body.id;
    expect(created.body.envVarNames).toEqual(['API_TOKEN']);
    expect(JSON.stringify(created.body)).not.toContain('sekret-value');
    expect((await as(co.key).get(`/api/environments/${envId}`)).body.name).toBe('pool');
    const changed = await as(co.key).patch(`/api/environments/${envId}`, { description: 'the pool', capacity: 3 });
    expect(changed.body).toMatchObject({ description: 'the pool', capacity: 3 });
    const list = await as(co.key).get(`/api/companies/${co.id}/environments?driver=sandbox`);
    expect(list.body.map((e: { id: string }) => e.id)).toEqual([envId]);

    const local = (await t.services.environments.ensureLocalEnvironment(co.id)).id;
    const refused = await as(co.key).del(`/api/environments/${local}`);
    expectError(refused, 409, 'conflict');
    expect(refused.body.error.details.reasons[0]).toMatch(/Local/);
    const probe = await as(co.key).post(`/api/environments/${local}/probe`);
    expect(probe.body).toMatchObject({ ok: true });
    expect((await as(co.key).get(`/api/environments/${local}`)).body.lastProbe).toMatchObject({ ok: true });
  });

  it('acquires (idempotently), renews, releases, refuses a stale fence, pages', async () => {
    const path = `/api/environments/${envId}/leases`;
    const first = await as(co.key).post(path, { idempotencyKey: 'job-1', ttlSeconds: 60 });
    expect(first.status).toBe(201);
    const again = await as(co.key).post(path, { idempotencyKey: 'job-1', ttlSeconds: 60 });
    expect(again.status).toBe(200);
    expect(again.body.lease.id).toBe(first.body.lease.id);
    const lease = first.body.lease;
    expect((await as(co.key).post(`/api/environment-leases/${lease.id}/renew`, { fence: lease.fence, ttlSeconds: 120 })).status).toBe(200);
    expectError(await as(co.key).post(`/api/environment-leases/${lease.id}/renew`, { fence: lease.fence + 1000, ttlSeconds: 120 }), 409, 'stale_fence');
    expect((await as(co.key).patch(`/api/environment-leases/${lease.id}/metadata`, { fence: lease.fence, metadata: { k: 1 } })).body.metadata).toMatchObject({ k: 1 });
    const released = await as(co.key).post(`/api/environment-leases/${lease.id}/release`, { fence: lease.fence });
    expect(released.body).toMatchObject({ changed: true, lease: { status: 'released' } });
    const twice = await as(co.key).post(`/api/environment-leases/${lease.id}/release`, { fence: lease.fence, status: 'failed' });
    expect(twice.body).toMatchObject({ changed: false, lease: { status: 'released' } });
    expectError(await as(co.key).post(path, { environmentId: envId }), 422, 'invalid');

    for (let i = 0; i < 3; i++) await as(co.key).post(path, { ttlSeconds: 60 });
    const page1 = await as(co.key).get(`${path}?limit=2`);
    expect(page1.body).toHaveLength(2);
    const cursor = page1.headers.get('x-next-cursor');
    expect(cursor).toBeTruthy();
    const page2 = await as(co.key).get(`${path}?limit=2&cursor=${encodeURIComponent(cursor!)}`);
    expect(page2.body.length).toBeGreaterThan(0);
    expect(page2.body.map((l: { id: string }) => l.id)).not.toContain(page1.body[0].id);
    expectError(await as(co.key).post(path, { ttlSeconds: 60 }), 409, 'capacity_exhausted');
  });
});

describe('agents and runs', () => {
  const script = `
    const { PAPERCLIP_RUN_ID: run, PAPERCLIP_API_URL: api, PAPERCLIP_API_KEY: key } = process.env;
    const h = { authorization: 'Bearer ' + key, 'content-type': 'application/json' };
    const own = await fetch(api + '/api/heartbeat-runs/' + run, { headers: h });
    const body = await own.json();
    const leaseId = body.contextSnapshot.paperclipEnvironment.leaseId;
    const lease = await fetch(api + '/api/environment-leases/' + leaseId, { headers: h });
    const other = await fetch(api + '/api/heartbeat-runs/' + process.argv[1], { headers: h });
    const envs = await fetch(api + '/api/companies/' + body.companyId + '/environments', { headers: h });
    console.log(JSON.stringify({ own: own.status, lease: lease.status, other: other.status, envs: envs.status }));`;

  it('creates, shows (env by name only), changes, wakes; the run token reaches only its own run', async () => {
    const created = await as(co.key).post(`/api/companies/${co.id}/agents`, {
      name: 'worker',
      adapterType: 'process',
      adapterConfig: { command: process.execPath, args: ['--input-type=module', '-e', script], env: { SECRET_TOKEN: 'hush-hush' } },
    });
    expect(created.status).toBe(201);
    expect(created.body.adapterConfig.envNames).toEqual(['SECRET_TOKEN']);
    expect(JSON.stringify(created.body)).not.toContain('hush-hush');
    const agentId = created.body.id;
    expect((await as(co.key).get(`/api/companies/${co.id}/agents?name=worker`)).body).toHaveLength(1);

    const firstRun = await as(co.key).post(`/api/agents/${agentId}/wakeup`, {});
    expect(firstRun.status).toBe(202);
    await waitFor('the run to finish', async () => ['succeeded', 'failed'].includes((await as(co.key).get(`/api/heartbeat-runs/${firstRun.body.id}`)).body.status), 20_000);
    // The second run asks about the first: another run's id, same company.
    await as(co.key).patch(`/api/agents/${agentId}`, {
      adapterConfig: { command: process.execPath, args: ['--input-type=module', '-e', script, firstRun.body.id], env: { SECRET_TOKEN: 'hush-hush' } },
    });
    const run = await as(co.key).post(`/api/agents/${agentId}/wakeup`, { context: { issue: 'X-1' } });
    await waitFor('the run to finish', async () => (await as(co.key).get(`/api/heartbeat-runs/${run.body.id}`)).body.status === 'succeeded', 20_000);
    const log = await as(co.key).get(`/api/heartbeat-runs/${run.body.id}/log`);
    const out = log.body.chunks.filter((c: { stream: string }) => c.stream === 'stdout').map((c: { chunk: string }) => c.chunk).join('');
    expect(JSON.parse(out)).toEqual({ own: 200, lease: 200, other: 404, envs: 403 });

    // After the run, its token is dead.
    const activity = await as(co.key).get(`/api/companies/${co.id}/activity?runId=${run.body.id}`);
    expect(activity.body.map((a: { action: string }) => a.action)).toContain('environment.lease_acquired');
  });

  it('follows a log live over server-sent events, and cancels a run', async () => {
    const agent = await as(co.key).post(`/api/companies/${co.id}/agents`, {
      name: 'ticker',
      adapterType: 'process',
      adapterConfig: { command: 'sh', args: ['-c', 'for i in 1 2 3; do echo tick $i; sleep 0.2; done; sleep 30'], graceSec: 1 },
    });
    const run = await as(co.key).post(`/api/agents/${agent.body.id}/wakeup`, {});
    const res = await fetch(`${api.url}/api/heartbeat-runs/${run.body.id}/log?follow=true`, { headers: { authorization: `Bearer ${co.key}` } });
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const decoder = new TextDecoder();
    let text = '';
    let cancelled = false;
    for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
      text += decoder.decode(part, { stream: true });
      if (!cancelled && text.includes('tick 3')) {
        cancelled = true;
        const c = await as(co.key).post(`/api/heartbeat-runs/${run.body.id}/cancel`);
        expect(c.status).toBe(200);
      }
    }
    expect(text).toMatch(/event: log\nid: 1\ndata: .*tick 1/);
    expect(text).toContain('event: status');
    const end = /event: end\ndata: (.*)\n/.exec(text);
    expect(JSON.parse(end![1]!)).toMatchObject({ status: 'cancelled' });
    const lease = await as(co.key).get(`/api/environment-leases/${JSON.parse(end![1]!).leaseId}`);
    expect(lease.body.status).toBe('expired');
  });

  it('refuses to delete an agent with a running run, then deletes it', async () => {
    const agent = await as(co.key).post(`/api/companies/${co.id}/agents`, { name: 'sleeper', adapterType: 'process', adapterConfig: { command: 'sleep', args: ['30'], graceSec: 0 } });
    const run = await as(co.key).post(`/api/agents/${agent.body.id}/wakeup`, {});
    await waitFor('the run to start', async () => (await as(co.key).get(`/api/heartbeat-runs/${run.body.id}`)).body.status === 'running');
    expectError(await as(co.key).del(`/api/agents/${agent.body.id}`), 409, 'conflict');
    await as(co.key).post(`/api/heartbeat-runs/${run.body.id}/cancel`);
    await waitFor('the run to be cancelled', async () => (await as(co.key).get(`/api/heartbeat-runs/${run.body.id}`)).body.status === 'cancelled');
    expect((await as(co.key).del(`/api/agents/${agent.body.id}`)).status).toBe(200);
    expectError(await as(co.key).get(`/api/agents/${agent.body.id}`), 404, 'not_found');
  });

  it('shows a run waiting for its full environment as queued with notBefore, until it runs', async () => {
    // A company of its own: its Local environment (one per company) gets one slot.
    const co = await api.company('Waiting Co');
    const local = (await t.services.environments.ensureLocalEnvironment(co.id)).id;
    expect((await as(co.key).patch(`/api/environments/${local}`, { capacity: 1 })).status).toBe(200);
    const holder = await as(co.key).post(`/api/environments/${local}/leases`, { ttlSeconds: 300 });
    expect(holder.status).toBe(201);
    const agent = await as(co.key).post(`/api/companies/${co.id}/agents`, { name: 'waiter', adapterType: 'process', adapterConfig: { command: 'true' } });
    const queued = await as(co.key).post(`/api/agents/${agent.body.id}/wakeup`, {});
    expect(queued.body.notBefore).toBeNull();
    // The one slot is held: the executor puts the run back in the queue, not before a later time.
    const waiting = await waitFor('the run to be requeued', async () => {
      const r = await as(co.key).get(`/api/heartbeat-runs/${queued.body.id}`);
      return r.body.status === 'queued' && r.body.notBefore !== null ? r.body : null;
    }, 20_000);
    expect(Date.parse(waiting.notBefore)).toBeGreaterThan(Date.parse(waiting.createdAt));
    const listed = await as(co.key).get(`/api/companies/${co.id}/heartbeat-runs?agentId=${agent.body.id}`);
    expect(listed.body[0]).toMatchObject({ id: queued.body.id, notBefore: waiting.notBefore });

    await as(co.key).post(`/api/environment-leases/${holder.body.lease.id}/release`, { fence: holder.body.lease.fence });
    await waitFor('the run to succeed once the slot is free', async () => (await as(co.key).get(`/api/heartbeat-runs/${queued.body.id}`)).body.status === 'succeeded', 20_000);
  });

  it('pages activity newest first through X-Next-Cursor', async () => {
    const page1 = await as(co.key).get(`/api/companies/${co.id}/activity?limit=3`);
    expect(page1.body).toHaveLength(3);
    const next = page1.headers.get('x-next-cursor')!;
    const page2 = await as(co.key).get(`/api/companies/${co.id}/activity?limit=3&before=${next}`);
    expect(page2.body[0].id).toBeLessThan(page1.body[2].id);
    const filtered = await as(co.key).get(`/api/companies/${co.id}/activity?action=environment.lease_released&limit=500`);
    expect(filtered.body.length).toBeGreaterThan(0);
    expect(new Set(filtered.body.map((a: { action: string }) => a.action))).toEqual(new Set(['environment.lease_released']));
  });
});

describe('the OpenAPI document', () => {
  it('lists every route with its body schema, made from the zod schemas', async () => {
    const doc = (await as(co.key).get('/api/openapi.json')).body;
    expect(doc.openapi).toBe('3.1.0');
    for (const r of allRoutes()) {
      const op = doc.paths[r.path.replace(/:(\w+)/g, '{$1}')]?.[r.method.toLowerCase()];
      expect(op, `${r.method} ${r.path}`).toBeDefined();
      if (r.body) expect(op.requestBody.content['application/json'].schema, `${r.method} ${r.path}`).toBeTypeOf('object');
    }
    const create = doc.paths['/api/companies/{companyId}/environments'].post.requestBody.content['application/json'].schema;
    const drivers = create.oneOf ?? create.anyOf;
    expect(drivers.map((d: any) => d.properties.driver.const).sort()).toEqual(['docker', 'kubernetes', 'local', 'sandbox', 'slurm', 'ssh']);
  });
});
