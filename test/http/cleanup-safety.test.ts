// No caller can make the server delete anything outside its own lease's workspace (REVIEW
// C-1, C-17): not a company key forging lease metadata at acquire or by PATCH, not a run's
// own token, not a `..` path, not a symlink the agent plants where its workspace was.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTestDb, type TestDb } from '../support/db.js';
import { startTestApi, type TestApi } from '../support/http.js';
import { waitFor } from '../support/wait.js';

const base = mkdtempSync(join(tmpdir(), 'berth-c1-'));
const workspaceRoot = join(base, 'workspaces');
/** What an attacker would like gone: beside the workspace root, and inside it. */
const victimOutside = join(base, 'victim');
const victimInside = join(workspaceRoot, 'victim-of-another-company');
let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };

const as = (key: string) => ({
  get: (p: string) => api.call('GET', p, { key }),
  post: (p: string, body?: unknown) => api.call('POST', p, { key, ...(body === undefined ? {} : { body }) }),
  patch: (p: string, body: unknown) => api.call('PATCH', p, { key, body }),
});

function plantVictims(): void {
  for (const d of [victimOutside, victimInside]) {
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, 'precious.txt'), 'keep me');
  }
}
function victimsIntact(): boolean {
  return existsSync(join(victimOutside, 'precious.txt')) && existsSync(join(victimInside, 'precious.txt'));
}

async function activityOf(leaseId: string): Promise<Array<{ action: string; details: Record<string, unknown> }>> {
  const r = await as(co.key).get(`/api/companies/${co.id}/activity?entityId=${leaseId}`);
  return r.body;
}

async function runAgent(name: string, script: string, extra: Record<string, unknown> = {}): Promise<any> {
  const agent = await as(co.key).post(`/api/companies/${co.id}/agents`, {
    name,
    adapterType: 'process',
    adapterConfig: { command: process.execPath, args: ['--input-type=module', '-e', script], timeoutSec: 30 },
    ...extra,
  });
  expect(agent.status).toBe(201);
  const run = await as(co.key).post(`/api/agents/${agent.body.id}/wakeup`, {});
  expect(run.status).toBe(202);
  return waitFor('the run to end', async () => {
    const r = await as(co.key).get(`/api/heartbeat-runs/${run.body.id}`);
    return r.body.finishedAt ? r.body : null;
  }, 30_000);
}

/** The cleanup sweep has settled the lease (nothing owed any more). */
async function settled(leaseId: string): Promise<any> {
  return waitFor('the lease to owe no cleanup', async () => {
    const l = (await as(co.key).get(`/api/environment-leases/${leaseId}`)).body;
    return l.nextCleanupAt === null && l.cleanupStatus !== 'pending' && l.status !== 'pending_cleanup' && l.status !== 'active' ? l : null;
  }, 15_000);
}

beforeAll(async () => {
  mkdirSync(workspaceRoot, { recursive: true });
  t = await openTestDb();
  api = await startTestApi(t, { runtime: true, workspaceRoot });
  co = await api.company('C1 Co');
});
afterAll(async () => {
  await api?.close();
  await t?.close();
  rmSync(base, { recursive: true, force: true });
});

describe('driver-owned state', () => {
  it('refuses provider and providerLeaseId from a caller at acquire', async () => {
    const env = await as(co.key).post(`/api/companies/${co.id}/environments`, { name: 'sbx-fields', driver: 'sandbox', config: { provider: 'p' } });
    const r = await as(co.key).post(`/api/environments/${env.body.id}/leases`, { provider: 'docker', providerLeaseId: 'someone-elses-box' });
    expect(r.status).toBe(422);
    expect(r.body.error.fields.map((f: { path: string }) => f.path).sort()).toEqual(['provider', 'providerLeaseId']);
  });

  it('forged metadata at acquire, released with cleanup pending: nothing outside is removed, and the activity says nothing was done', async () => {
    plantVictims();
    const local = (await as(co.key).get(`/api/companies/${co.id}/environments`)).body.find((e: { driver: string }) => e.driver === 'local')
      ?? (await as(co.key).post(`/api/companies/${co.id}/environments`, { name: 'Local', driver: 'local' })).body;
    for (const cwd of [`${workspaceRoot}/../victim`, victimInside, workspaceRoot]) {
      const acq = await as(co.key).post(`/api/environments/${local.id}/leases`, {
        metadata: { preparedBy: 'local', workspaceOwned: true, cwd },
      });
      expect(acq.status).toBe(201);
      const lease = acq.body.lease;
      expect(lease).toMatchObject({ driver: null, driverState: null });
      const rel = await as(co.key).post(`/api/environment-leases/${lease.id}/release`, { fence: lease.fence, cleanupStatus: 'pending' });
      expect(rel.status).toBe(200);
      const done = await settled(lease.id);
      expect(done.cleanupStatus).toBe('success');
      const rows = await activityOf(lease.id);
      const cleanup = rows.find((a) => a.action === 'environment.lease_cleanup_succeeded');
      expect(cleanup?.details).toMatchObject({ driver: null, done: { nothing: 'no driver made resources for this lease' } });
      expect(victimsIntact()).toBe(true);
    }
  });

  it("a run's token forging its own lease's metadata by PATCH and acquiring on another environment: only its own workspace goes", async () => {
    plantVictims();
    const sbx = await as(co.key).post(`/api/companies/${co.id}/environments`, { name: 'sbx-token', driver: 'sandbox', config: { provider: 'p' } });
    const forged = { preparedBy: 'local', workspaceOwned: true, cwd: `${workspaceRoot}/../victim` };
    const script = `
      const api = process.env.PAPERCLIP_API_URL, h = { authorization: 'Bearer ' + process.env.PAPERCLIP_API_KEY, 'content-type': 'application/json' };
      const own = await (await fetch(api + '/api/environment-leases/' + process.env.PAPERCLIP_LEASE_ID, { headers: h })).json();
      const patch = await fetch(api + '/api/environment-leases/' + own.id + '/metadata', { method: 'PATCH', headers: h, body: JSON.stringify({ fence: own.fence, metadata: ${JSON.stringify(forged)} }) });
      const other = await fetch(api + '/api/environments/${sbx.body.id}/leases', { method: 'POST', headers: h,
        body: JSON.stringify({ heartbeatRunId: process.env.PAPERCLIP_RUN_ID, metadata: { preparedBy: 'local', workspaceOwned: true, cwd: ${JSON.stringify(victimInside)} } }) });
      console.log(JSON.stringify({ patch: patch.status, other: other.status, otherLease: (await other.json()).lease?.id }));`;
    const run = await runAgent('forger', script);
    expect(run.status).toBe('succeeded');
    const log = (await as(co.key).get(`/api/heartbeat-runs/${run.id}/log`)).body.chunks.filter((c: { stream: string }) => c.stream === 'stdout').map((c: { chunk: string }) => c.chunk).join('');
    const out = JSON.parse(log);
    expect(out).toMatchObject({ patch: 200, other: 201 });

    const own = await settled(run.leaseId);
    expect(own).toMatchObject({ status: 'released', cleanupStatus: 'success', driver: 'local', metadata: forged });
    expect(own.resourceId).toEqual(expect.any(String));
    expect(own.driverState).toMatchObject({ cwd: join(workspaceRoot, own.resourceId), workspaceOwned: true });
    const other = await settled(out.otherLease);
    expect(other).toMatchObject({ status: 'released', driver: null, cleanupStatus: null });
    expect(victimsIntact()).toBe(true);
    expect(existsSync(join(workspaceRoot, own.resourceId))).toBe(false);
    // The run's own release says what the cleanup removed: its own workspace, nothing else.
    expect(readdirSync(workspaceRoot).sort()).toEqual(['victim-of-another-company']);
  });

  it('a symlink the agent plants where its workspace was is removed as a link: its target stays', async () => {
    plantVictims();
    // The agent replaces its own workspace directory with a link to the victim, then fails,
    // so the cleanup is also retried by the sweep (a failed run's lease owes nothing more).
    const script = `
      import { rmSync, symlinkSync } from 'node:fs';
      const ws = process.env.PAPERCLIP_WORKSPACE;
      process.chdir('/');
      rmSync(ws, { recursive: true, force: true });
      symlinkSync(${JSON.stringify(victimOutside)}, ws);
      console.log('planted');`;
    const run = await runAgent('linker', script);
    expect(run.status).toBe('succeeded');
    const own = await settled(run.leaseId);
    expect(own.cleanupStatus).toBe('success');
    expect(victimsIntact()).toBe(true);
    expect(existsSync(join(workspaceRoot, own.resourceId))).toBe(false);
  });

  it("the expiry sweep of a run's lease cleans its own workspace by its resource record, whatever the metadata says", async () => {
    plantVictims();
    // A lease granted as the executor grants it (driver and resource record written ahead), never provisioned, with forged metadata.
    const local = (await as(co.key).get(`/api/companies/${co.id}/environments`)).body.find((e: { driver: string }) => e.driver === 'local');
    const { lease } = await t.services.leases.acquire(co.id, { environmentId: local.id, ttlSeconds: 0.2, metadata: { preparedBy: 'local', workspaceOwned: true, cwd: victimInside } }, undefined, { driver: 'local', reserveResource: true });
    const ws = join(workspaceRoot, lease.resourceId!);
    mkdirSync(ws);
    writeFileSync(join(ws, 'scratch'), 'x');
    const done = await settled(lease.id);
    expect(done).toMatchObject({ status: 'expired', cleanupStatus: 'success' });
    const cleanup = (await activityOf(lease.id)).find((a) => a.action === 'environment.lease_cleanup_succeeded');
    expect(cleanup?.details).toMatchObject({ driver: 'local', resourceId: lease.resourceId, done: { removed: ws } });
    expect(existsSync(ws)).toBe(false);
    expect(victimsIntact()).toBe(true);
  });
});
