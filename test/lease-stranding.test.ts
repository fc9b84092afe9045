// Leases never strand (REVIEW C-10, C-11): a retained lease has a retention deadline after
// which its resources are cleaned and it ends; releasing a retained lease cleans up unless
// told to leave the resources; a workspace held by a lease whose run has ended is free.
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryRows } from '../src/db/client.js';
import { DEFAULT_RETENTION_SECONDS } from '../src/services/leases/index.js';
import { openTestDb, type TestDb } from './support/db.js';

let t: TestDb;
let companyId: string;
let n = 0;
const leases = () => t.services.leases;

beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Strand Co' })).id;
});
afterAll(async () => t?.close());

async function env(metadata: Record<string, unknown> = {}) {
  return t.services.environments.create(companyId, { name: `env-${++n}`, driver: 'sandbox', config: { provider: 'test' }, metadata });
}

/** A lease as the executor takes it: a driver will make (or made) resources for it. */
async function driverLease(environmentId: string, policy: 'retain_on_failure' | 'ephemeral' = 'retain_on_failure', extra: Record<string, unknown> = {}) {
  return (await leases().acquire(companyId, { environmentId, policy, ...extra }, undefined, { driver: 'sandbox' })).lease;
}

async function invokeAndEnd(status: 'cancelled' | 'succeeded' | 'failed') {
  const agent = await t.services.agents.create(companyId, { name: `a-${++n}`, adapterType: 'process', adapterConfig: { command: 'true' } });
  const run = await t.services.runs.invoke(companyId, agent.id);
  await queryRows(t.db, sql`UPDATE heartbeat_runs SET status = ${status}, finished_at = now() WHERE id = ${run.id}`);
  return run;
}

describe('retention', () => {
  it('a retained lease gets its deadline from the environment (default 24 h) and is cleaned up and expired when it passes', async () => {
    const byDefault = await env();
    const a = await driverLease(byDefault.id);
    const kept = await leases().release(companyId, a.id, { fence: a.fence, status: 'failed' });
    expect(kept.lease.status).toBe('retained');
    const ms = kept.lease.retainUntil!.getTime() - kept.lease.releasedAt!.getTime();
    expect(Math.abs(ms - DEFAULT_RETENTION_SECONDS * 1000)).toBeLessThan(5_000);

    const short = await env({ retentionSeconds: 0.3 });
    const b = await driverLease(short.id);
    const r = await leases().release(companyId, b.id, { fence: b.fence, status: 'failed' });
    expect(r.lease).toMatchObject({ status: 'retained', cleanupStatus: null, nextCleanupAt: null });
    expect((await leases().expireDue()).map((l) => l.id)).not.toContain(b.id);
    await new Promise((res) => setTimeout(res, 400));
    const swept = await leases().expireDue();
    expect(swept.map((l) => l.id)).toContain(b.id);
    const ended = await leases().get(companyId, b.id);
    expect(ended).toMatchObject({ status: 'expired', cleanupStatus: 'pending', retainUntil: null, failureReason: 'retention ended: its resources are cleaned up' });
    expect(ended.nextCleanupAt).not.toBeNull();
    // The default one is still retained.
    expect((await leases().get(companyId, a.id)).status).toBe('retained');
  });

  it('releasing a retained lease cleans its resources by default, or leaves them when told (skipped)', async () => {
    const e = await env();
    const a = await driverLease(e.id);
    await leases().release(companyId, a.id, { fence: a.fence, status: 'failed' });
    const cleaned = await leases().release(companyId, a.id, { fence: a.fence, status: 'released' });
    expect(cleaned.lease).toMatchObject({ status: 'released', cleanupStatus: 'pending', retainUntil: null });
    expect(cleaned.lease.nextCleanupAt).not.toBeNull();
    expect((await leases().claimDueCleanups({ limit: 1000 })).map((l) => l.id)).toContain(a.id);

    const b = await driverLease(e.id);
    await leases().release(companyId, b.id, { fence: b.fence, status: 'failed' });
    const left = await leases().release(companyId, b.id, { fence: b.fence, status: 'released', cleanupStatus: 'skipped' });
    expect(left.lease).toMatchObject({ status: 'released', cleanupStatus: 'skipped', nextCleanupAt: null });
  });

  it('a lease the API took alone owes nothing when released; one a driver made resources for owes its cleanup', async () => {
    const e = await env();
    const bare = (await leases().acquire(companyId, { environmentId: e.id })).lease;
    expect((await leases().release(companyId, bare.id, { fence: bare.fence })).lease).toMatchObject({ cleanupStatus: null, nextCleanupAt: null });
    const owned = await driverLease(e.id, 'ephemeral');
    const r = await leases().release(companyId, owned.id, { fence: owned.fence });
    expect(r.lease.cleanupStatus).toBe('pending');
  });
});

describe('a workspace held by a lease whose run has ended is free', () => {
  for (const status of ['cancelled', 'succeeded', 'failed'] as const) {
    it(`holder run ${status}, its lease with no TTL: the next acquire expires it and is granted`, async () => {
      const e = await env();
      const holderRun = await invokeAndEnd(status);
      const holder = (await leases().acquire(companyId, { environmentId: e.id, executionWorkspaceId: 'ws', heartbeatRunId: holderRun.id })).lease;
      expect(holder.expiresAt).toBeNull();
      const next = await leases().acquire(companyId, { environmentId: e.id, executionWorkspaceId: 'ws', heartbeatRunId: randomUUID() });
      expect(next.created).toBe(true);
      expect(await leases().get(companyId, holder.id)).toMatchObject({ status: 'expired', failureReason: 'lease expired: its run has ended' });
    });
  }

  it('a holder whose run is still running keeps the workspace: workspace_busy', async () => {
    const e = await env();
    const agent = await t.services.agents.create(companyId, { name: `a-${++n}`, adapterType: 'process', adapterConfig: { command: 'true' } });
    const run = await t.services.runs.invoke(companyId, agent.id);
    const holder = (await leases().acquire(companyId, { environmentId: e.id, executionWorkspaceId: 'ws', heartbeatRunId: run.id })).lease;
    const err = await leases().acquire(companyId, { environmentId: e.id, executionWorkspaceId: 'ws', heartbeatRunId: randomUUID() }).catch((x: unknown) => x);
    expect(err).toMatchObject({ code: 'workspace_busy', details: { leaseId: holder.id } });
  });
});

describe('a reused lease takes its kept resource back', () => {
  const resource = async (id: string) => (await queryRows(t.db, sql`SELECT status, destroy_after FROM provider_resources WHERE id = ${id}`))[0]!;
  const reserve = (environmentId: string) =>
    leases().acquire(companyId, { environmentId, policy: 'reuse_by_environment' }, undefined, { driver: 'sandbox', reserveResource: true });

  it('while the environment is unchanged: the same lease and resource, no longer due for a destroy; after a config change: a new one', async () => {
    const e = await env({ retentionSeconds: 600 });
    const first = (await reserve(e.id)).lease;
    const released = (await leases().release(companyId, first.id, { fence: first.fence })).lease;
    expect(released.status).toBe('retained');
    expect(await resource(first.resourceId!)).toMatchObject({ status: 'draining' });
    expect((await resource(first.resourceId!)).destroy_after).not.toBeNull();

    const again = await reserve(e.id);
    expect(again).toMatchObject({ reacquired: true, lease: { id: first.id, resourceId: first.resourceId, status: 'active' } });
    expect(await resource(first.resourceId!)).toMatchObject({ status: 'provisioning', destroy_after: null });

    await leases().release(companyId, first.id, { fence: again.lease.fence });
    await t.services.environments.update(companyId, e.id, { config: { provider: 'other' } });
    const changed = await reserve(e.id);
    expect(changed.reacquired).toBe(false);
    expect(changed.lease.id).not.toBe(first.id);
    expect(changed.lease.resourceId).not.toBe(first.resourceId);
    // The old one stays kept until its deadline: nothing of it was handed out.
    expect(await leases().get(companyId, first.id)).toMatchObject({ status: 'retained' });
    expect(await resource(first.resourceId!)).toMatchObject({ status: 'draining' });
  });
});
