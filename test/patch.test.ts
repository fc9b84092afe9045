// A partial PATCH changes only the fields it names: for every PATCH route, each field is
// patched alone and the rest of the stored row (every other column, byte for byte) and of
// the API's answer stays as it was.
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryRows } from '../src/db/client.js';
import { openTestDb, type TestDb } from './support/db.js';
import { startTestApi, type TestApi } from './support/http.js';
import { newPrivateKey } from './support/sshd.js';

let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t);
  co = await api.company('Patch Co');
});
afterAll(async () => {
  await api?.close();
  await t?.close();
});

const call = (method: string, path: string, body?: unknown) => api.call(method, path, { key: co.key, ...(body !== undefined ? { body } : {}) });

/** The row as stored, each column as JSON text, without updated_at and the columns named. */
async function storedRow(table: 'agents' | 'environments' | 'environment_leases', id: string, except: string[]): Promise<Record<string, string>> {
  const [row] = await queryRows<{ j: Record<string, unknown> }>(t.db, sql`SELECT to_jsonb(x) AS j FROM ${sql.identifier(table)} x WHERE id = ${id}`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(row!.j)) if (k !== 'updated_at' && !except.includes(k)) out[k] = JSON.stringify(v);
  return out;
}

function without(body: Record<string, unknown>, except: string[]): string {
  const copy: Record<string, unknown> = { ...body };
  for (const k of ['updatedAt', ...except]) delete copy[k];
  return JSON.stringify(copy);
}

describe('PATCH /api/agents/:id', () => {
  it('changes only the field it names, for each field', async () => {
    const envA = await call('POST', `/api/companies/${co.id}/environments`, { name: 'agents-a', driver: 'ssh', config: { host: 'a.internal', username: 'u', remoteWorkspacePath: '/srv', strictHostKeyChecking: false } });
    const envB = await call('POST', `/api/companies/${co.id}/environments`, { name: 'agents-b', driver: 'ssh', config: { host: 'b.internal', username: 'u', remoteWorkspacePath: '/srv', strictHostKeyChecking: false } });
    expect(envA.status).toBe(201);
    const created = await call('POST', `/api/companies/${co.id}/agents`, {
      name: 'patchy',
      adapterType: 'process',
      adapterConfig: { command: 'true', args: ['x'], env: { TOKEN: 'abc' }, timeoutSec: 77, graceSec: 3 },
      defaultEnvironmentId: envA.body.id,
      maxConcurrentRuns: 4,
      intervalSec: 900,
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    // Each field with a value unlike both its current one and its default.
    const patches: Array<[string, unknown, string]> = [
      ['status', 'paused', 'status'],
      ['status', 'active', 'status'],
      ['name', 'patchy-2', 'name'],
      ['maxConcurrentRuns', 7, 'max_concurrent_runs'],
      ['intervalSec', 1200, 'interval_sec'],
      ['intervalSec', null, 'interval_sec'],
      ['defaultEnvironmentId', envB.body.id, 'default_environment_id'],
      ['defaultEnvironmentId', null, 'default_environment_id'],
      ['adapterConfig', { command: 'false', env: { OTHER: 'x' } }, 'adapter_config'],
    ];
    for (const [field, value, column] of patches) {
      const before = await call('GET', `/api/agents/${id}`);
      const rowBefore = await storedRow('agents', id, [column]);
      const r = await call('PATCH', `/api/agents/${id}`, { [field]: value });
      expect(r.status, `${field}: ${JSON.stringify(r.body)}`).toBe(200);
      const after = await call('GET', `/api/agents/${id}`);
      expect(without(after.body, [field]), `PATCH ${field} alone changed another field`).toBe(without(before.body, [field]));
      expect(await storedRow('agents', id, [column]), `PATCH ${field} alone changed another column`).toEqual(rowBefore);
      expect(without(r.body, [field])).toBe(without(before.body, [field]));
      if (field !== 'adapterConfig') expect(after.body[field]).toEqual(value);
    }
  });
});

describe('PATCH /api/environments/:id', () => {
  it('changes only the field it names, for each field', async () => {
    const created = await call('POST', `/api/companies/${co.id}/environments`, {
      name: 'envy',
      description: 'first',
      driver: 'ssh',
      config: { host: 'h.internal', port: 2200, username: 'u', remoteWorkspacePath: '/srv', privateKey: newPrivateKey(), strictHostKeyChecking: false },
      envVars: { A: '1' },
      metadata: { team: 'x' },
      capacity: 5,
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    const patches: Array<[string, unknown, string, string[]]> = [
      ['name', 'envy-2', 'name', ['name']],
      ['description', null, 'description', ['description']],
      ['description', 'second', 'description', ['description']],
      ['status', 'archived', 'status', ['status']],
      ['status', 'active', 'status', ['status']],
      ['envVars', { B: '2' }, 'env_vars', ['envVarNames']],
      ['metadata', { team: 'y' }, 'metadata', ['metadata']],
      ['capacity', 9, 'capacity', ['capacity']],
      ['capacity', null, 'capacity', ['capacity']],
      ['config', { host: 'g.internal', username: 'u', remoteWorkspacePath: '/srv', strictHostKeyChecking: false }, 'config', ['config']],
    ];
    for (const [field, value, column, shown] of patches) {
      const before = await call('GET', `/api/environments/${id}`);
      const rowBefore = await storedRow('environments', id, [column]);
      const r = await call('PATCH', `/api/environments/${id}`, { [field]: value });
      expect(r.status, `${field}: ${JSON.stringify(r.body)}`).toBe(200);
      const after = await call('GET', `/api/environments/${id}`);
      expect(without(after.body, shown), `PATCH ${field} alone changed another field`).toBe(without(before.body, shown));
      expect(await storedRow('environments', id, [column]), `PATCH ${field} alone changed another column`).toEqual(rowBefore);
    }
  });
});

describe('PATCH /api/environment-leases/:leaseId/metadata', () => {
  it('changes only the metadata', async () => {
    const env = await call('POST', `/api/companies/${co.id}/environments`, { name: 'leasy', driver: 'sandbox', config: { provider: 'p' } });
    const acquired = await call('POST', `/api/environments/${env.body.id}/leases`, {
      ttlSeconds: 3600,
      maxLifetimeSeconds: 7200,
      executionWorkspaceId: 'ws-1',
      issueId: 'issue-1',
      idempotencyKey: 'idem-1',
      metadata: { a: 1 },
    });
    expect(acquired.status, JSON.stringify(acquired.body)).toBe(201);
    const lease = acquired.body.lease as { id: string; fence: number };
    for (const body of [{ metadata: { b: 2 } }, { metadata: { c: 3 }, replace: true }]) {
      const before = await call('GET', `/api/environment-leases/${lease.id}`);
      const rowBefore = await storedRow('environment_leases', lease.id, ['metadata']);
      const r = await call('PATCH', `/api/environment-leases/${lease.id}/metadata`, { fence: lease.fence, ...body });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      const after = await call('GET', `/api/environment-leases/${lease.id}`);
      expect(without(after.body, ['metadata'])).toBe(without(before.body, ['metadata']));
      expect(await storedRow('environment_leases', lease.id, ['metadata'])).toEqual(rowBefore);
    }
    expect((await call('GET', `/api/environment-leases/${lease.id}`)).body.metadata).toEqual({ c: 3 });
  });
});
