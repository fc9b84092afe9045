import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { queryRows } from '../src/db/client.js';
import type { Environment } from '../src/domain/types.js';
import { openTestDb, type TestDb } from './support/db.js';

let t: TestDb;
let companyId: string;
let otherCompanyId: string;
let envCount = 0;

beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Acme' })).id;
  otherCompanyId = (await t.services.companies.create({ name: 'Globex' })).id;
});
afterAll(async () => t?.close());

const leases = () => t.services.leases;

async function newEnv(opts: { capacity?: number | null; company?: string } = {}): Promise<Environment> {
  return t.services.environments.create(opts.company ?? companyId, {
    name: `env-${++envCount}`,
    driver: 'sandbox',
    config: { provider: 'test' },
    capacity: opts.capacity ?? null,
  });
}

async function activityFor(leaseId: string): Promise<string[]> {
  const rows = await queryRows<{ action: string }>(t.db, sql`SELECT action FROM activity_log WHERE entity_id = ${leaseId} ORDER BY id`);
  return rows.map((r) => r.action);
}

async function tableCounts() {
  const [row] = await queryRows(
    t.db,
    sql`SELECT (SELECT count(*)::int FROM environment_leases) AS leases, (SELECT count(*)::int FROM activity_log) AS acts,
               (SELECT coalesce(sum(hashtext(l::text)), 0)::text FROM environment_leases l) AS checksum`,
  );
  return row;
}

describe('acquire', () => {
  it('grants an active lease with every field, a fence, and one activity row', async () => {
    const env = await newEnv();
    const runId = randomUUID();
    const { lease, created } = await leases().acquire(companyId, {
      environmentId: env.id,
      ttlSeconds: 60,
      heartbeatRunId: runId,
      executionWorkspaceId: 'ws-1',
      issueId: 'ISSUE-7',
      metadata: { note: 'hello' },
    });
    expect(created).toBe(true);
    expect(lease).toMatchObject({
      companyId,
      environmentId: env.id,
      status: 'active',
      leasePolicy: 'ephemeral',
      heartbeatRunId: runId,
      executionWorkspaceId: 'ws-1',
      issueId: 'ISSUE-7',
      provider: null,
      providerLeaseId: null,
      driver: null,
      driverState: null,
      metadata: { note: 'hello' },
      releasedAt: null,
      cleanupStatus: null,
    });
    expect(lease.fence).toBeGreaterThan(0);
    const ttl = lease.expiresAt!.getTime() - lease.acquiredAt.getTime();
    expect(ttl).toBeGreaterThan(59_000);
    expect(ttl).toBeLessThan(61_000);
    const acts = await t.services.activity.list(companyId, { entityId: lease.id });
    expect(acts.items).toHaveLength(1);
    expect(acts.items[0]).toMatchObject({ action: 'environment.lease_acquired', entityType: 'environment_lease', runId, details: { environmentId: env.id, fence: lease.fence } });
  });

  it('hands out fences that only grow', async () => {
    const env = await newEnv();
    const fences: number[] = [];
    for (let i = 0; i < 5; i++) {
      const { lease } = await leases().acquire(companyId, { environmentId: env.id });
      fences.push(lease.fence);
      await leases().release(companyId, lease.id, { fence: lease.fence });
    }
    expect([...fences].sort((a, b) => a - b)).toEqual(fences);
    expect(new Set(fences).size).toBe(5);
  });

  it("takes Paperclip's leasePolicy as policy, and refuses the two naming different policies, changing nothing", async () => {
    const env = await newEnv();
    const got = await leases().acquire(companyId, { environmentId: env.id, leasePolicy: 'reuse_by_environment' });
    expect(got.lease.leasePolicy).toBe('reuse_by_environment');
    const same = await leases().acquire(companyId, { environmentId: env.id, leasePolicy: 'ephemeral', policy: 'ephemeral' });
    expect(same.lease.leasePolicy).toBe('ephemeral');
    const before = await tableCounts();
    await expect(leases().acquire(companyId, { environmentId: env.id, leasePolicy: 'ephemeral', policy: 'reuse_by_environment' })).rejects.toMatchObject({
      code: 'invalid',
      fields: [{ path: 'leasePolicy' }],
    });
    expect(await tableCounts()).toEqual(before);
  });

  it('is idempotent per key: a retry returns the same lease and writes nothing', async () => {
    const env = await newEnv();
    const first = await leases().acquire(companyId, { environmentId: env.id, idempotencyKey: 'k-1' });
    const before = await tableCounts();
    const again = await leases().acquire(companyId, { environmentId: env.id, idempotencyKey: 'k-1' });
    expect(again).toMatchObject({ created: false });
    expect(again.lease.id).toBe(first.lease.id);
    expect(await tableCounts()).toEqual(before);
    // Even after release, the key names that lease.
    await leases().release(companyId, first.lease.id, { fence: first.lease.fence });
    const late = await leases().acquire(companyId, { environmentId: env.id, idempotencyKey: 'k-1' });
    expect(late.lease).toMatchObject({ id: first.lease.id, status: 'released' });
    // The same key on another environment is a conflict, not a second lease.
    const env2 = await newEnv();
    await expect(leases().acquire(companyId, { environmentId: env2.id, idempotencyKey: 'k-1' })).rejects.toMatchObject({
      code: 'conflict',
      fields: [{ path: 'idempotencyKey' }],
    });
    // Keys are per company.
    const otherEnv = await newEnv({ company: otherCompanyId });
    const other = await leases().acquire(otherCompanyId, { environmentId: otherEnv.id, idempotencyKey: 'k-1' });
    expect(other.created).toBe(true);
  });

  it('gives a run the lease it already holds on the environment', async () => {
    const env = await newEnv();
    const runId = randomUUID();
    const first = await leases().acquire(companyId, { environmentId: env.id, heartbeatRunId: runId });
    const again = await leases().acquire(companyId, { environmentId: env.id, heartbeatRunId: runId });
    expect(again.created).toBe(false);
    expect(again.lease.id).toBe(first.lease.id);
    const active = await leases().listByEnvironment(companyId, env.id, { status: 'active' });
    expect(active.items).toHaveLength(1);
  });

  it('refuses beyond capacity with capacity_exhausted and grants again after a release', async () => {
    const env = await newEnv({ capacity: 2 });
    const a = await leases().acquire(companyId, { environmentId: env.id });
    await leases().acquire(companyId, { environmentId: env.id });
    await expect(leases().acquire(companyId, { environmentId: env.id })).rejects.toMatchObject({
      code: 'capacity_exhausted',
      details: { capacity: 2, active: 2 },
    });
    await leases().release(companyId, a.lease.id, { fence: a.lease.fence });
    expect((await leases().acquire(companyId, { environmentId: env.id })).created).toBe(true);
  });

  it('treats capacity 0 as taking no leases, and refuses to lower capacity below the active leases', async () => {
    const env = await newEnv({ capacity: 0 });
    await expect(leases().acquire(companyId, { environmentId: env.id })).rejects.toMatchObject({ code: 'capacity_exhausted' });
    await t.services.environments.update(companyId, env.id, { capacity: 2 });
    await leases().acquire(companyId, { environmentId: env.id });
    await leases().acquire(companyId, { environmentId: env.id });
    await expect(t.services.environments.update(companyId, env.id, { capacity: 1 })).rejects.toMatchObject({ code: 'conflict', fields: [{ path: 'capacity' }] });
    await t.services.environments.update(companyId, env.id, { capacity: null });
    expect((await leases().acquire(companyId, { environmentId: env.id })).created).toBe(true);
  });

  it('keeps every active lease of a capacity-limited environment in its own slot below the capacity; the lease does not show it', async () => {
    const env = await newEnv({ capacity: 3 });
    const got = [];
    for (let i = 0; i < 3; i++) got.push(await leases().acquire(companyId, { environmentId: env.id }));
    const slots = await queryRows<{ slot: number | null }>(t.db, sql`SELECT slot FROM environment_leases WHERE environment_id = ${env.id} AND status = 'active' ORDER BY slot`);
    expect(slots.map((r) => r.slot)).toEqual([0, 1, 2]);
    for (const g of got) expect(g.lease).not.toHaveProperty('slot');
  });

  it('lowering capacity moves the leases it keeps below it: a lease in a high slot does not let acquires exceed the new capacity', async () => {
    const env = await newEnv({ capacity: 4 });
    const got = [];
    for (let i = 0; i < 4; i++) got.push(await leases().acquire(companyId, { environmentId: env.id }));
    const [high] = await queryRows<{ id: string }>(t.db, sql`SELECT id FROM environment_leases WHERE environment_id = ${env.id} AND slot = 3`);
    for (const g of got) if (g.lease.id !== high!.id) await leases().release(companyId, g.lease.id, { fence: g.lease.fence });
    await t.services.environments.update(companyId, env.id, { capacity: 1 });
    await expect(leases().acquire(companyId, { environmentId: env.id })).rejects.toMatchObject({ code: 'capacity_exhausted', details: { capacity: 1, active: 1 } });
    const [kept] = await queryRows<{ slot: number }>(t.db, sql`SELECT slot FROM environment_leases WHERE id = ${high!.id}`);
    expect(kept!.slot).toBe(0);
  });

  it('a capacity set on an environment that had none counts the leases granted before it', async () => {
    const env = await newEnv();
    await leases().acquire(companyId, { environmentId: env.id });
    await leases().acquire(companyId, { environmentId: env.id });
    await t.services.environments.update(companyId, env.id, { capacity: 3 });
    await leases().acquire(companyId, { environmentId: env.id });
    await expect(leases().acquire(companyId, { environmentId: env.id })).rejects.toMatchObject({ code: 'capacity_exhausted', details: { capacity: 3, active: 3 } });
  });

  it('a retained lease reactivated on a capacity-limited environment takes a slot, and counts', async () => {
    const env = await newEnv({ capacity: 1 });
    const first = await leases().acquire(companyId, { environmentId: env.id, policy: 'reuse_by_environment' });
    await leases().release(companyId, first.lease.id, { fence: first.lease.fence });
    const again = await leases().acquire(companyId, { environmentId: env.id, policy: 'reuse_by_environment' });
    expect(again).toMatchObject({ reacquired: true, lease: { id: first.lease.id, status: 'active' } });
    await expect(leases().acquire(companyId, { environmentId: env.id })).rejects.toMatchObject({ code: 'capacity_exhausted', details: { capacity: 1, active: 1 } });
    const [row] = await queryRows<{ slot: number | null }>(t.db, sql`SELECT slot FROM environment_leases WHERE id = ${first.lease.id}`);
    expect(row!.slot).toBe(0);
  });

  it('refuses an archived environment', async () => {
    const env = await newEnv();
    await t.services.environments.archive(companyId, env.id);
    await expect(leases().acquire(companyId, { environmentId: env.id })).rejects.toMatchObject({ code: 'environment_archived' });
  });

  it('keeps one active ephemeral lease per execution workspace, taking over an expired holder', async () => {
    const env = await newEnv();
    const holder = await leases().acquire(companyId, { environmentId: env.id, executionWorkspaceId: 'ws', heartbeatRunId: randomUUID(), ttlSeconds: 0.3 });
    const err = await leases().acquire(companyId, { environmentId: env.id, executionWorkspaceId: 'ws', heartbeatRunId: randomUUID() }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'workspace_busy', details: { leaseId: holder.lease.id } });
    // Another workspace on the same environment is fine.
    await leases().acquire(companyId, { environmentId: env.id, executionWorkspaceId: 'ws-other' });
    await new Promise((r) => setTimeout(r, 400));
    const next = await leases().acquire(companyId, { environmentId: env.id, executionWorkspaceId: 'ws', heartbeatRunId: randomUUID() });
    expect(next.created).toBe(true);
    const old = await leases().get(companyId, holder.lease.id);
    expect(old.status).toBe('expired');
    expect(await activityFor(holder.lease.id)).toEqual(['environment.lease_acquired', 'environment.lease_expired']);
  });

  it('caps expiresAt at maxLifetimeSeconds', async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id, ttlSeconds: 3600, maxLifetimeSeconds: 10 });
    expect(lease.expiresAt!.getTime()).toBe(lease.maxExpiresAt!.getTime());
    const renewed = await leases().renew(companyId, lease.id, { fence: lease.fence, ttlSeconds: 3600 });
    expect(renewed.expiresAt!.getTime()).toBe(lease.maxExpiresAt!.getTime());
  });

  it('rejects bad input naming the field, and writes nothing', async () => {
    const env = await newEnv();
    const before = await tableCounts();
    const bad: Array<[unknown, string]> = [
      [{}, 'environmentId'],
      [{ environmentId: 'nope' }, 'environmentId'],
      [{ environmentId: env.id, policy: 'forever' }, 'policy'],
      [{ environmentId: env.id, ttlSeconds: -1 }, 'ttlSeconds'],
      [{ environmentId: env.id, ttlSeconds: 10, expiresAt: new Date() }, 'expiresAt'],
      [{ environmentId: env.id, heartbeatRunId: 'run-1' }, 'heartbeatRunId'],
      [{ environmentId: env.id, idempotencyKey: '' }, 'idempotencyKey'],
      [{ environmentId: env.id, idempotencyKey: 'x'.repeat(201) }, 'idempotencyKey'],
      [{ environmentId: env.id, metadata: 'text' }, 'metadata'],
      [{ environmentId: env.id, owner: 'me' }, 'owner'],
    ];
    for (const [input, field] of bad) {
      const err = await leases().acquire(companyId, input as never).catch((e: unknown) => e);
      expect(err, JSON.stringify(input)).toMatchObject({ code: 'invalid' });
      expect((err as { fields: Array<{ path: string }> }).fields.map((f) => f.path)).toContain(field);
    }
    await expect(leases().acquire(companyId, { environmentId: randomUUID() })).rejects.toMatchObject({ code: 'not_found' });
    expect(await tableCounts()).toEqual(before);
  });
});

describe('renew and metadata', () => {
  it('extends expiresAt by the database clock and counts renewals', async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id, ttlSeconds: 5 });
    const renewed = await leases().renew(companyId, lease.id, { fence: lease.fence, ttlSeconds: 120 });
    expect(renewed.renewCount).toBe(1);
    expect(renewed.expiresAt!.getTime()).toBeGreaterThan(lease.expiresAt!.getTime() + 100_000);
    expect(await activityFor(lease.id)).toEqual(['environment.lease_acquired']);
  });

  it('refuses a stale fence, a released lease and an overdue lease', async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id, ttlSeconds: 0.2 });
    await expect(leases().renew(companyId, lease.id, { fence: lease.fence + 1, ttlSeconds: 10 })).rejects.toMatchObject({ code: 'stale_fence' });
    await new Promise((r) => setTimeout(r, 300));
    await expect(leases().renew(companyId, lease.id, { fence: lease.fence, ttlSeconds: 10 })).rejects.toMatchObject({ code: 'lease_expired' });
    await leases().release(companyId, lease.id, { fence: lease.fence });
    await expect(leases().renew(companyId, lease.id, { fence: lease.fence, ttlSeconds: 10 })).rejects.toMatchObject({ code: 'lease_not_active' });
  });

  it('merges or replaces metadata under the fence', async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id, metadata: { a: 1 } });
    expect((await leases().updateMetadata(companyId, lease.id, { fence: lease.fence, metadata: { b: 2 } })).metadata).toEqual({ a: 1, b: 2 });
    expect((await leases().updateMetadata(companyId, lease.id, { fence: lease.fence, metadata: { c: 3 }, replace: true })).metadata).toEqual({ c: 3 });
    await expect(leases().updateMetadata(companyId, lease.id, { fence: lease.fence - 1, metadata: {} })).rejects.toMatchObject({ code: 'stale_fence' });
  });
});

describe('release: the state machine', () => {
  it('releases with failure reason, and a second release of any kind returns the final state unchanged', async () => {
    const env = await newEnv();
    for (const status of ['released', 'expired', 'failed'] as const) {
      const { lease } = await leases().acquire(companyId, { environmentId: env.id });
      const first = await leases().release(companyId, lease.id, { fence: lease.fence, status, failureReason: status === 'failed' ? 'exit 3' : undefined, cleanupStatus: 'success' });
      expect(first).toMatchObject({ changed: true, lease: { status, cleanupStatus: 'success' } });
      expect(first.lease.releasedAt).not.toBeNull();
      const snapshot = await leases().get(companyId, lease.id);
      for (const again of ['released', 'expired', 'failed'] as const) {
        const r = await leases().release(companyId, lease.id, { fence: lease.fence, status: again, failureReason: 'overwrite?', cleanupStatus: 'failed' });
        expect(r.changed).toBe(false);
        expect(r.lease.status).toBe(status);
      }
      await leases().releaseForRun(companyId, randomUUID(), { status: 'failed' });
      expect(await leases().get(companyId, lease.id)).toEqual(snapshot);
      expect(await activityFor(lease.id)).toEqual(['environment.lease_acquired', 'environment.lease_released']);
    }
  });

  it('refuses a release with a stale fence', async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id });
    await expect(leases().release(companyId, lease.id, { fence: lease.fence - 1 })).rejects.toMatchObject({ code: 'stale_fence' });
    expect((await leases().get(companyId, lease.id)).status).toBe('active');
  });

  it('retains a reusable lease and hands it to the next acquirer under a greater fence; the old holder is fenced out', async () => {
    const env = await newEnv();
    const first = await leases().acquire(companyId, { environmentId: env.id, policy: 'reuse_by_execution_workspace', executionWorkspaceId: 'checkout-1' });
    const rel = await leases().release(companyId, first.lease.id, { fence: first.lease.fence });
    expect(rel.lease.status).toBe('retained');
    // Another workspace does not get it.
    const otherWs = await leases().acquire(companyId, { environmentId: env.id, policy: 'reuse_by_execution_workspace', executionWorkspaceId: 'checkout-2' });
    expect(otherWs.lease.id).not.toBe(first.lease.id);
    const second = await leases().acquire(companyId, { environmentId: env.id, policy: 'reuse_by_execution_workspace', executionWorkspaceId: 'checkout-1' });
    expect(second).toMatchObject({ created: true, reacquired: true });
    expect(second.lease.id).toBe(first.lease.id);
    expect(second.lease.fence).toBeGreaterThan(first.lease.fence);
    expect(second.lease.status).toBe('active');
    await expect(leases().renew(companyId, first.lease.id, { fence: first.lease.fence, ttlSeconds: 10 })).rejects.toMatchObject({ code: 'stale_fence' });
    await expect(leases().release(companyId, first.lease.id, { fence: first.lease.fence, status: 'failed' })).rejects.toMatchObject({ code: 'stale_fence' });
    expect(await activityFor(first.lease.id)).toEqual(['environment.lease_acquired', 'environment.lease_released', 'environment.lease_reacquired']);
    // A retained lease disposed of for good ends terminal.
    await leases().release(companyId, second.lease.id, { fence: second.lease.fence });
    const final = await leases().release(companyId, second.lease.id, { fence: second.lease.fence, status: 'expired' });
    expect(final.lease.status).toBe('expired');
  });

  it('retains a failed lease under retain_on_failure, but not a succeeded one', async () => {
    const env = await newEnv();
    const a = await leases().acquire(companyId, { environmentId: env.id, policy: 'retain_on_failure' });
    expect((await leases().release(companyId, a.lease.id, { fence: a.lease.fence, status: 'failed', failureReason: 'boom' })).lease).toMatchObject({ status: 'retained', failureReason: 'boom' });
    const b = await leases().acquire(companyId, { environmentId: env.id, policy: 'retain_on_failure' });
    expect((await leases().release(companyId, b.lease.id, { fence: b.lease.fence })).lease.status).toBe('released');
  });

  it('releases every active lease of a run with the outcome, one activity row each', async () => {
    const runId = randomUUID();
    const envA = await newEnv();
    const envB = await newEnv();
    const a = await leases().acquire(companyId, { environmentId: envA.id, heartbeatRunId: runId });
    const b = await leases().acquire(companyId, { environmentId: envB.id, heartbeatRunId: runId });
    const other = await leases().acquire(companyId, { environmentId: envA.id, heartbeatRunId: randomUUID() });
    // Another company cannot release them.
    expect(await leases().releaseForRun(otherCompanyId, runId, { status: 'failed' })).toEqual([]);
    const released = await leases().releaseForRun(companyId, runId, { status: 'failed', failureReason: 'timed out' });
    expect(released.map((l) => l.id).sort()).toEqual([a.lease.id, b.lease.id].sort());
    expect(released.every((l) => l.status === 'failed' && l.failureReason === 'timed out')).toBe(true);
    expect((await leases().get(companyId, other.lease.id)).status).toBe('active');
    expect(await leases().releaseForRun(companyId, runId, { status: 'released' })).toEqual([]);
    expect(await activityFor(a.lease.id)).toEqual(['environment.lease_acquired', 'environment.lease_released']);
  });
});

describe('cleanup', () => {
  it('a failed cleanup leaves the lease pending_cleanup; a later success ends it in its release status', async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id });
    const r = await leases().release(companyId, lease.id, { fence: lease.fence, status: 'released', cleanupStatus: 'failed' });
    expect(r.lease).toMatchObject({ status: 'pending_cleanup', releaseStatus: 'released', cleanupStatus: 'failed', cleanupAttempts: 1 });
    expect(r.lease.nextCleanupAt).not.toBeNull();
    // A repeated release does not move it.
    expect((await leases().release(companyId, lease.id, { fence: lease.fence })).changed).toBe(false);
    const failedAgain = await leases().recordCleanupAttempt(companyId, lease.id, { fence: lease.fence, ok: false, error: 'rm: busy' });
    expect(failedAgain).toMatchObject({ status: 'pending_cleanup', cleanupAttempts: 2, lastCleanupError: 'rm: busy' });
    const done = await leases().recordCleanupAttempt(companyId, lease.id, { fence: lease.fence, ok: true });
    expect(done).toMatchObject({ status: 'released', cleanupStatus: 'success', nextCleanupAt: null, releaseStatus: null });
    await expect(leases().recordCleanupAttempt(companyId, lease.id, { fence: lease.fence, ok: true })).rejects.toMatchObject({ code: 'conflict' });
    expect(await activityFor(lease.id)).toEqual([
      'environment.lease_acquired',
      'environment.lease_released',
      'environment.lease_cleanup_failed',
      'environment.lease_cleanup_succeeded',
    ]);
  });

  it('gives up visibly after the last attempt: failed, with the reason', async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id });
    await leases().release(companyId, lease.id, { fence: lease.fence, status: 'released', cleanupStatus: 'failed' });
    await leases().recordCleanupAttempt(companyId, lease.id, { fence: lease.fence, ok: false, error: 'e2', maxAttempts: 3 });
    const last = await leases().recordCleanupAttempt(companyId, lease.id, { fence: lease.fence, ok: false, error: 'e3', maxAttempts: 3 });
    expect(last).toMatchObject({ status: 'failed', cleanupStatus: 'failed', nextCleanupAt: null, cleanupAttempts: 3 });
    expect(last.failureReason).toContain('cleanup gave up after 3 attempts: e3');
    const acts = await t.services.activity.list(companyId, { entityId: lease.id, action: 'environment.lease_cleanup_failed' });
    expect(acts.items[0]!.details).toMatchObject({ gaveUp: true, attempt: 3 });
    expect(acts.items[1]!.details).toMatchObject({ gaveUp: false, attempt: 2 });
  });

  it('claims due cleanups once: a second claim skips them until the claim lapses', async () => {
    const env = await newEnv();
    // As the executor takes it: the driver that will make its resources is recorded with it.
    const { lease } = await leases().acquire(companyId, { environmentId: env.id, ttlSeconds: 0.1 }, undefined, { driver: 'local' });
    await new Promise((r) => setTimeout(r, 200));
    await leases().expireDue();
    const claimed = await leases().claimDueCleanups({ limit: 1000 });
    expect(claimed.map((l) => l.id)).toContain(lease.id);
    expect((await leases().claimDueCleanups({ limit: 1000 })).map((l) => l.id)).not.toContain(lease.id);
    const cleaned = await leases().recordCleanupAttempt(companyId, lease.id, { fence: lease.fence, ok: true });
    expect(cleaned).toMatchObject({ status: 'expired', cleanupStatus: 'success', nextCleanupAt: null });
  });
});

describe('expiry sweep', () => {
  it('expires leases past expiresAt with one activity row each, and leaves the others', async () => {
    const env = await newEnv();
    const due = await Promise.all([1, 2, 3].map(() => leases().acquire(companyId, { environmentId: env.id, ttlSeconds: 0.1 }, undefined, { driver: 'local' })));
    // Taken through the API alone: no driver made anything for it, so it owes no cleanup.
    const bare = await leases().acquire(companyId, { environmentId: env.id, ttlSeconds: 0.1 });
    const live = await leases().acquire(companyId, { environmentId: env.id, ttlSeconds: 60 });
    const forever = await leases().acquire(companyId, { environmentId: env.id });
    await new Promise((r) => setTimeout(r, 250));
    const expired = await leases().expireDue();
    const ids = expired.map((l) => l.id);
    for (const d of due) expect(ids).toContain(d.lease.id);
    expect(ids).not.toContain(live.lease.id);
    expect(ids).not.toContain(forever.lease.id);
    for (const d of due) {
      const l = await leases().get(companyId, d.lease.id);
      expect(l).toMatchObject({ status: 'expired', cleanupStatus: 'pending' });
      expect(await activityFor(d.lease.id)).toEqual(['environment.lease_acquired', 'environment.lease_expired']);
    }
    expect(await leases().get(companyId, bare.lease.id)).toMatchObject({ status: 'expired', cleanupStatus: null, nextCleanupAt: null });
    expect((await leases().expireDue()).map((l) => l.id)).not.toContain(due[0]!.lease.id);
  });
});

describe('listing', () => {
  it('pages leases of an environment, most recently used first, filtered by status', async () => {
    const env = await newEnv();
    const made: string[] = [];
    for (let i = 0; i < 7; i++) made.push((await leases().acquire(companyId, { environmentId: env.id })).lease.id);
    const [l0] = made;
    const lease0 = await leases().get(companyId, l0!);
    await leases().release(companyId, l0!, { fence: lease0.fence }); // now the most recently used
    const seen: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await leases().listByEnvironment(companyId, env.id, { limit: 3, ...(cursor ? { cursor } : {}) });
      seen.push(...page.items.map((l) => l.id));
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    expect(seen).toHaveLength(7);
    expect(seen[0]).toBe(l0);
    expect(new Set(seen).size).toBe(7);
    expect(seen.slice(1)).toEqual(made.slice(1).reverse());
    const released = await leases().listByEnvironment(companyId, env.id, { status: 'released' });
    expect(released.items.map((l) => l.id)).toEqual([l0]);
    await expect(leases().listByEnvironment(companyId, env.id, { cursor: 'garbage' })).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'cursor' }] });
    await expect(leases().listByEnvironment(otherCompanyId, env.id)).rejects.toMatchObject({ code: 'not_found' });
  });

  it('lists leases whose status a newer Berth wrote', async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id });
    await queryRows(t.db, sql`UPDATE environment_leases SET status = 'quarantined', lease_policy = 'sticky' WHERE id = ${lease.id}`);
    const page = await leases().listByEnvironment(companyId, env.id);
    expect(page.items[0]).toMatchObject({ status: 'unknown', leasePolicy: 'unknown', unknownValues: { status: 'quarantined', leasePolicy: 'sticky' } });
    // A status it does not know is not one it may leave: release changes nothing.
    const r = await leases().release(companyId, lease.id, { fence: lease.fence });
    expect(r.changed).toBe(false);
  });
});

describe('tenant isolation', () => {
  it("answers not_found for every lease operation with another company's ids", async () => {
    const env = await newEnv();
    const { lease } = await leases().acquire(companyId, { environmentId: env.id, heartbeatRunId: randomUUID() });
    const before = await tableCounts();
    const o = otherCompanyId;
    await expect(leases().acquire(o, { environmentId: env.id })).rejects.toMatchObject({ code: 'not_found' });
    await expect(leases().get(o, lease.id)).rejects.toMatchObject({ code: 'not_found' });
    await expect(leases().renew(o, lease.id, { fence: lease.fence, ttlSeconds: 5 })).rejects.toMatchObject({ code: 'not_found' });
    await expect(leases().updateMetadata(o, lease.id, { fence: lease.fence, metadata: { x: 1 } })).rejects.toMatchObject({ code: 'not_found' });
    await expect(leases().release(o, lease.id, { fence: lease.fence })).rejects.toMatchObject({ code: 'not_found' });
    await expect(leases().recordCleanupAttempt(o, lease.id, { fence: lease.fence, ok: true })).rejects.toMatchObject({ code: 'not_found' });
    await expect(leases().listByEnvironment(o, env.id)).rejects.toMatchObject({ code: 'not_found' });
    expect((await t.services.activity.list(o)).items.map((a) => a.entityId)).not.toContain(lease.id);
    expect(await tableCounts()).toEqual(before);
    expect((await leases().get(companyId, lease.id)).status).toBe('active');
  });
});
