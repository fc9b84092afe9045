// Warm pools on the local driver (prepared workspace directories), on PGlite and on
// PostgreSQL: a pool's config is validated with field-named errors; the refill keeps
// minReady members ready and replaces those older than maxAgeSeconds; a run's acquire claims
// a ready member (warm: true in its lease metadata and its paperclipEnvironment) and its
// ephemeral release destroys it; with no member ready it is cold (warm: false); a setup
// command runs once per member before it is ready, and a failing one is counted.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryRows } from '../src/db/client.js';
import { localDriver } from '../src/drivers/local/driver.js';
import { isBerthError } from '../src/domain/errors.js';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';
import { waitFor } from './support/wait.js';

const root = mkdtempSync(join(tmpdir(), 'berth-pool-'));
let t: TestDb;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
});
afterAll(async () => {
  await t?.close();
  rmSync(root, { recursive: true, force: true });
});

function start(): Promise<Runtime> {
  return startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['local', localDriver({ workspaceRoot: root })]]),
    apiUrl: 'http://127.0.0.1:9',
    pollMs: 50,
    sweepMs: 100,
    heartbeatMs: 200,
    poolRefillMs: 100,
    onError: runtimeErrors.onError,
  });
}

async function members(envId: string, status: string): Promise<Array<{ id: string; created_at: Date }>> {
  return queryRows(t.db, sql`SELECT id, created_at FROM provider_resources WHERE environment_id = ${envId} AND pool_member AND status = ${status} ORDER BY created_at`);
}

async function refused(p: Promise<unknown>): Promise<{ code: string; fields: string[] }> {
  try {
    await p;
  } catch (err) {
    if (!isBerthError(err)) throw err;
    return { code: err.code, fields: (err.fields ?? []).map((f) => f.path) };
  }
  throw new Error('expected a refusal');
}

describe('pool config', () => {
  it('is validated, with errors that name the field, and changed by PATCH', async () => {
    const co = await t.services.companies.create({ name: 'Pool config' });
    const env = await t.services.environments.ensureLocalEnvironment(co.id);
    expect(env.pool).toBeNull();
    const s = t.services.environments;
    expect(await refused(s.update(co.id, env.id, { pool: { minReady: 3, maxReady: 2 } }))).toEqual({ code: 'invalid', fields: ['pool.maxReady'] });
    expect(await refused(s.update(co.id, env.id, { pool: { minReady: -1 } }))).toEqual({ code: 'invalid', fields: ['pool.minReady'] });
    expect(await refused(s.update(co.id, env.id, { pool: { minReady: 1, maxAgeSeconds: 0 } }))).toEqual({ code: 'invalid', fields: ['pool.maxAgeSeconds'] });
    expect(await refused(s.update(co.id, env.id, { pool: { minReady: 1, extra: true } as never }))).toEqual({ code: 'invalid', fields: ['pool.extra'] });
    expect(await refused(s.update(co.id, env.id, { pool: { minReady: 1, setup: { command: '' } } }))).toEqual({ code: 'invalid', fields: ['pool.setup.command'] });
    // Members count toward the capacity: minReady cannot exceed it, set together or apart.
    expect(await refused(s.update(co.id, env.id, { capacity: 2, pool: { minReady: 3 } }))).toEqual({ code: 'invalid', fields: ['pool.minReady'] });
    await s.update(co.id, env.id, { capacity: 2 });
    expect(await refused(s.update(co.id, env.id, { pool: { minReady: 3, maxReady: 4 } }))).toEqual({ code: 'invalid', fields: ['pool.minReady'] });
    const changed = await s.update(co.id, env.id, { pool: { minReady: 2, maxReady: 3, maxAgeSeconds: 600 } });
    expect(changed.pool).toEqual({ minReady: 2, maxReady: 3, maxAgeSeconds: 600 });
    expect(await refused(s.update(co.id, env.id, { capacity: 1 }))).toEqual({ code: 'invalid', fields: ['pool.minReady'] });
    // maxReady defaults to minReady, maxAgeSeconds to an hour.
    expect((await s.update(co.id, env.id, { pool: { minReady: 1 } })).pool).toEqual({ minReady: 1, maxReady: 1, maxAgeSeconds: 3600 });
    expect((await s.update(co.id, env.id, { pool: null })).pool).toBeNull();
    expect((await s.get(co.id, env.id)).pool).toBeNull();
  });

  it('is refused for a driver that cannot make resources ahead of a lease', async () => {
    const co = await t.services.companies.create({ name: 'Pool sandbox' });
    const r = await refused(
      t.services.environments.create(co.id, { name: 'sb', driver: 'sandbox', config: { provider: 'e2b', options: {} }, pool: { minReady: 1 } } as never),
    );
    expect(r).toEqual({ code: 'invalid', fields: ['pool'] });
  });
});

describe('warm pool on the local driver', () => {
  it('refill keeps minReady ready; a run claims one warm and its release destroys it; the pool refills', async () => {
    const co = await t.services.companies.create({ name: 'Pool runs' });
    const env = await t.services.environments.ensureLocalEnvironment(co.id);
    await t.services.environments.update(co.id, env.id, { pool: { minReady: 2, maxReady: 2 } });
    const runtime = await start();
    try {
      const ready = await waitFor('2 ready members', async () => ((await members(env.id, 'ready')).length === 2 ? members(env.id, 'ready') : null));
      for (const m of ready) expect(existsSync(join(root, m.id))).toBe(true);
      const state = (await t.services.pools.states([env.id])).get(env.id)!;
      expect(state).toMatchObject({ size: 2, ready: 2, provisioning: 0, refillFailures: 0 });
      // Placeholders are nobody's lease: the lease listing does not show them.
      expect((await t.services.leases.listByEnvironment(co.id, env.id)).items).toEqual([]);

      const agent = await t.services.agents.create(co.id, { name: 'pwd', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'pwd'] } });
      const run = await t.services.runs.invoke(co.id, agent.id);
      const done = await waitFor('the run to finish', async () => {
        const r = await t.services.runs.get(co.id, run.id);
        return r.finishedAt ? r : null;
      });
      expect(done.status).toBe('succeeded');
      const pe = done.contextSnapshot.paperclipEnvironment as Record<string, unknown>;
      expect(pe.warm).toBe(true);
      const lease = await t.services.leases.get(co.id, done.leaseId!);
      expect(lease.metadata.warm).toBe(true);
      expect(ready.map((m) => m.id)).toContain(lease.resourceId);
      expect(pe.cwd).toBe(join(root, lease.resourceId!));
      const log = (await t.services.runs.readLog(co.id, run.id)).map((c) => c.chunk).join('');
      expect(log).toContain(join(root, lease.resourceId!));
      // Never back in the pool: destroyed, and the pool is back to two others.
      await waitFor('the claimed member destroyed', async () => {
        const [r] = await queryRows(t.db, sql`SELECT status FROM provider_resources WHERE id = ${lease.resourceId}`);
        return r!.status === 'destroyed';
      });
      expect(existsSync(join(root, lease.resourceId!))).toBe(false);
      const again = await waitFor('the pool refilled', async () => ((await members(env.id, 'ready')).length === 2 ? members(env.id, 'ready') : null));
      expect(again.map((m) => m.id)).not.toContain(lease.resourceId);
      const acts = await t.services.activity.list(co.id, { entityId: lease.id });
      expect(acts.items.find((a) => a.action === 'environment.lease_acquired')?.details).toMatchObject({ warm: true, resourceId: lease.resourceId });
    } finally {
      await runtime.stop({ graceMs: 0 });
      await t.services.environments.update(co.id, env.id, { pool: null });
    }
  });

  it('an acquire with no member ready is cold (warm: false); idempotent acquire returns the same lease', async () => {
    const co = await t.services.companies.create({ name: 'Pool cold' });
    const env = await t.services.environments.ensureLocalEnvironment(co.id);
    await t.services.environments.update(co.id, env.id, { pool: { minReady: 1 } });
    // No runtime: nothing refills, the pool is empty.
    const input = { environmentId: env.id, ttlSeconds: 60, idempotencyKey: 'cold-1' };
    const a = await t.services.leases.acquire(co.id, input, undefined, { driver: 'local', reserveResource: true, warm: true });
    expect(a.warm).toBe(false);
    expect(a.member).toBeUndefined();
    expect(a.lease.metadata.warm).toBe(false);
    const b = await t.services.leases.acquire(co.id, input, undefined, { driver: 'local', reserveResource: true, warm: true });
    expect(b.created).toBe(false);
    expect(b.lease.id).toBe(a.lease.id);
    await t.services.leases.release(co.id, a.lease.id, { fence: a.lease.fence, status: 'released' });
  });

  it("a run on a pool with no member ready yet is cold: warm: false in its paperclipEnvironment and lease", async () => {
    const co = await t.services.companies.create({ name: 'Pool cold run' });
    const env = await t.services.environments.ensureLocalEnvironment(co.id);
    // The member's setup takes a while: the run comes first and finds none ready.
    await t.services.environments.update(co.id, env.id, { pool: { minReady: 1, setup: { command: 'sleep 2', timeoutSeconds: 20 } } });
    const runtime = await start();
    try {
      const agent = await t.services.agents.create(co.id, { name: 'cold', adapterType: 'process', adapterConfig: { command: 'true', args: [] } });
      const run = await t.services.runs.invoke(co.id, agent.id);
      const done = await waitFor('the run to finish', async () => {
        const r = await t.services.runs.get(co.id, run.id);
        return r.finishedAt ? r : null;
      });
      expect(done.status).toBe('succeeded');
      expect((done.contextSnapshot.paperclipEnvironment as Record<string, unknown>).warm).toBe(false);
      const lease = await t.services.leases.get(co.id, done.leaseId!);
      expect(lease.metadata.warm).toBe(false);
      const [res] = await queryRows(t.db, sql`SELECT pool_member FROM provider_resources WHERE id = ${lease.resourceId}`);
      expect(res!.pool_member).toBe(false);
      await waitFor('the member ready after its setup', async () => (await members(env.id, 'ready')).length === 1, 20_000);
    } finally {
      await t.services.environments.update(co.id, env.id, { pool: null });
      await waitFor('the pool drained', async () => (await members(env.id, 'ready')).length === 0);
      await runtime.stop({ graceMs: 0 });
    }
  });

  it('a warm claim is idempotent too, and members count toward the capacity', async () => {
    const co = await t.services.companies.create({ name: 'Pool capacity' });
    const env = await t.services.environments.ensureLocalEnvironment(co.id);
    await t.services.environments.update(co.id, env.id, { capacity: 2, pool: { minReady: 2 } });
    const reserved = await t.services.pools.reserve(env.id, 'srv_test');
    expect(reserved).toHaveLength(2);
    for (const m of reserved) await t.services.pools.markReady(m.resourceId, { providerId: null, state: {}, cwd: '/nowhere', details: { cwd: '/nowhere' } });
    // Both places are held by idle members: an API lease (no resource) is refused for capacity.
    const full = await refused(t.services.leases.acquire(co.id, { environmentId: env.id, ttlSeconds: 60 }));
    expect(full.code).toBe('capacity_exhausted');
    const input = { environmentId: env.id, ttlSeconds: 60, idempotencyKey: 'warm-1' };
    const a = await t.services.leases.acquire(co.id, input, undefined, { driver: 'local', reserveResource: true, warm: true });
    expect(a.warm).toBe(true);
    expect(a.member).toMatchObject({ cwd: '/nowhere' });
    const b = await t.services.leases.acquire(co.id, input, undefined, { driver: 'local', reserveResource: true, warm: true });
    expect(b.created).toBe(false);
    expect(b.lease.id).toBe(a.lease.id);
    expect((await t.services.pools.states([env.id])).get(env.id)).toMatchObject({ size: 1, ready: 1, claimed: 1 });
    // Lowering the capacity to what the active lease holds retires the idle member.
    await t.services.environments.update(co.id, env.id, { pool: null });
    await t.services.environments.update(co.id, env.id, { capacity: 1 });
    expect((await t.services.pools.states([env.id])).get(env.id)).toMatchObject({ size: 0, claimed: 1 });
    await t.services.leases.release(co.id, a.lease.id, { fence: a.lease.fence, status: 'released' });
  });

  it('replaces members older than maxAgeSeconds', async () => {
    const co = await t.services.companies.create({ name: 'Pool age' });
    const env = await t.services.environments.ensureLocalEnvironment(co.id);
    await t.services.environments.update(co.id, env.id, { pool: { minReady: 2, maxAgeSeconds: 1 } });
    const runtime = await start();
    try {
      const first = await waitFor('2 ready members', async () => ((await members(env.id, 'ready')).length === 2 ? members(env.id, 'ready') : null));
      const firstIds = first.map((m) => m.id);
      const later = await waitFor('both replaced', async () => {
        const now = await members(env.id, 'ready');
        return now.length === 2 && now.every((m) => !firstIds.includes(m.id)) ? now : null;
      }, 15_000);
      expect(later).toHaveLength(2);
      await waitFor('the old ones destroyed', async () => {
        const rows = await queryRows(t.db, sql`SELECT status FROM provider_resources WHERE id = ANY (${`{${firstIds.join(',')}}`}::uuid[])`);
        return rows.every((r) => r.status === 'destroyed');
      });
      for (const id of firstIds) expect(existsSync(join(root, id))).toBe(false);
      // Retired members' placeholders are gone, never shown as leases.
      const [{ n }] = (await queryRows(t.db, sql`SELECT count(*)::int AS n FROM environment_leases WHERE environment_id = ${env.id} AND status <> 'pooled'`)) as [{ n: number }];
      expect(n).toBe(0);
    } finally {
      await t.services.environments.update(co.id, env.id, { pool: null });
      await waitFor('the pool drained', async () => (await members(env.id, 'ready')).length === 0);
      await runtime.stop({ graceMs: 0 });
    }
  });

  it('runs the setup command once per member before it is ready (output logged); a failing one is counted', async () => {
    const co = await t.services.companies.create({ name: 'Pool setup' });
    const env = await t.services.environments.ensureLocalEnvironment(co.id);
    await t.services.environments.update(co.id, env.id, { pool: { minReady: 1, setup: { command: 'echo prepared >> setup.txt; echo set-up-output', timeoutSeconds: 20 } } });
    const runtime = await start();
    try {
      const [m] = await waitFor('a ready member', async () => ((await members(env.id, 'ready')).length === 1 ? members(env.id, 'ready') : null));
      expect(readFileSync(join(root, m!.id, 'setup.txt'), 'utf8')).toBe('prepared\n');
      const acts = await t.services.activity.list(co.id, { entityId: env.id, action: 'environment.pool_member_set_up' });
      expect(acts.items[0]?.details).toMatchObject({ resourceId: m!.id, exitCode: 0 });
      expect(String(acts.items[0]?.details.output)).toContain('set-up-output');

      await t.services.environments.update(co.id, env.id, { pool: { minReady: 1, setup: { command: 'echo broken >&2; exit 3', timeoutSeconds: 20 } } });
      // The member set up by the old command is retired by the change (never handed out); its replacement fails its setup.
      const [gone] = await queryRows(t.db, sql`SELECT status FROM provider_resources WHERE id = ${m!.id}`);
      expect(['destroying', 'destroyed']).toContain(gone!.status);
      const a = await t.services.leases.acquire(co.id, { environmentId: env.id, ttlSeconds: 60 }, undefined, { driver: 'local', reserveResource: true, warm: true });
      expect(a.warm).toBe(false);
      const st = await waitFor('a refill failure counted', async () => {
        const s = (await t.services.pools.states([env.id])).get(env.id)!;
        return s.refillFailures > 0 ? s : null;
      });
      expect(st.lastError).toMatch(/exit code 3.*broken/);
      expect(st.lastErrorAt).not.toBeNull();
      runtimeErrors.take(/setup command failed/);
      await t.services.environments.update(co.id, env.id, { pool: null });
      await t.services.leases.release(co.id, a.lease.id, { fence: a.lease.fence, status: 'released' });
      runtimeErrors.take(/setup command failed/);
    } finally {
      await runtime.stop({ graceMs: 0 });
      runtimeErrors.take(/setup command failed/);
    }
  });
});

describe('deleting a pooled environment', () => {
  it('is refused while the pool holds members, saying how; once the pool is off and drained it goes', async () => {
    const co = await t.services.companies.create({ name: 'Pool delete' });
    const env = await t.services.environments.create(co.id, { name: 'pooled-ssh', driver: 'ssh', config: { host: 'h.invalid', username: 'u', remoteWorkspacePath: '/w', strictHostKeyChecking: false }, pool: { minReady: 1 } });
    const [m] = await t.services.pools.reserve(env.id, 'srv_test');
    await t.services.pools.markReady(m!.resourceId, { providerId: null, state: {}, cwd: '/w', details: {} });
    const r = await t.services.environments.delete(co.id, env.id).then(() => null, (e: unknown) => e as { code: string; details: { reasons: string[] } });
    expect(r?.code).toBe('conflict');
    expect(r!.details.reasons).toContainEqual(expect.stringMatching(/warm pool holding 1 idle member: set its pool to null/));
    expect(r!.details.reasons.some((x) => /not terminal/.test(x))).toBe(false);
    // The pool off, its member retired (as a refill does) and destroyed (as resource GC does): deletable.
    await t.services.environments.update(co.id, env.id, { pool: null });
    expect(await t.services.pools.retire(env.id, { staleSeconds: 5, provisionDeadlineSeconds: 600 })).toEqual([m!.resourceId]);
    await t.services.resources.recordDestroyAttempt(m!.resourceId, { ok: true });
    await t.services.environments.delete(co.id, env.id);
  });
});

describe('members made under an older environment', () => {
  it('a member made before a config change is never claimed and is retired; new variables or setup retire ready members', async () => {
    const co = await t.services.companies.create({ name: 'Pool config change' });
    const ssh = { host: 'h.invalid', username: 'u', remoteWorkspacePath: '/w', strictHostKeyChecking: false };
    const env = await t.services.environments.create(co.id, { name: 'pooled-ssh', driver: 'ssh', config: ssh, pool: { minReady: 2 } });
    const made = await t.services.pools.reserve(env.id, 'srv_test');
    for (const m of made) await t.services.pools.markReady(m.resourceId, { providerId: null, state: {}, cwd: '/w', details: {} });
    await t.services.environments.update(co.id, env.id, { config: { ...ssh, remoteWorkspacePath: '/elsewhere' } });
    // Not handed out: the claim falls back to cold.
    const a = await t.services.leases.acquire(co.id, { environmentId: env.id, ttlSeconds: 60 }, undefined, { driver: 'ssh', reserveResource: true, warm: true });
    expect(a.warm).toBe(false);
    expect(made.map((m) => m.resourceId)).not.toContain(a.lease.resourceId);
    expect(new Set(await t.services.pools.retire(env.id, { staleSeconds: 5, provisionDeadlineSeconds: 600 }))).toEqual(new Set(made.map((m) => m.resourceId)));
    // Members made under the new config are claimed; new variables retire the ready ones in the same change.
    const fresh = await t.services.pools.reserve(env.id, 'srv_test');
    expect(fresh).toHaveLength(2);
    await t.services.pools.markReady(fresh[0]!.resourceId, { providerId: null, state: {}, cwd: '/elsewhere', details: {} });
    const b = await t.services.leases.acquire(co.id, { environmentId: env.id, ttlSeconds: 60 }, undefined, { driver: 'ssh', reserveResource: true, warm: true });
    expect(b.warm).toBe(true);
    expect(b.lease.resourceId).toBe(fresh[0]!.resourceId);
    await t.services.pools.markReady(fresh[1]!.resourceId, { providerId: null, state: {}, cwd: '/elsewhere', details: {} });
    await t.services.environments.update(co.id, env.id, { envVars: { NEW: '1' } });
    expect((await t.services.pools.states([env.id])).get(env.id)).toMatchObject({ size: 0, ready: 0, claimed: 1 });
    const [{ status }] = (await queryRows(t.db, sql`SELECT status FROM provider_resources WHERE id = ${fresh[1]!.resourceId}`)) as [{ status: string }];
    expect(status).toBe('destroying');
    for (const l of [a.lease, b.lease]) await t.services.leases.release(co.id, l.id, { fence: l.fence, status: 'released' });
  });
});
