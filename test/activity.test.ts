import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { openTestDb, type TestDb } from './support/db.js';

let t: TestDb;
let companyId: string;
beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Audit Co' })).id;
});
afterAll(async () => t?.close());

describe('activity', () => {
  it('pages newest first without gaps or repeats, and filters by entity, run and action', async () => {
    const env = await t.services.environments.create(companyId, { name: 'audited', driver: 'sandbox', config: { provider: 'p' } });
    const runId = randomUUID();
    const leaseIds: string[] = [];
    for (let i = 0; i < 6; i++) {
      const { lease } = await t.services.leases.acquire(companyId, { environmentId: env.id, ...(i < 2 ? { heartbeatRunId: runId } : {}) });
      await t.services.leases.release(companyId, lease.id, { fence: lease.fence });
      leaseIds.push(lease.id);
    }
    const all = await t.services.activity.list(companyId, { limit: 500 });
    expect(all.items).toHaveLength(13); // created + 6 acquired + 6 released
    const paged: number[] = [];
    let before: number | undefined;
    do {
      const page = await t.services.activity.list(companyId, { limit: 4, ...(before ? { before } : {}) });
      paged.push(...page.items.map((a) => a.id));
      before = page.nextBefore ?? undefined;
    } while (before);
    expect(paged).toEqual(all.items.map((a) => a.id));
    expect(paged).toEqual([...paged].sort((a, b) => b - a));

    const byEntity = await t.services.activity.list(companyId, { entityId: leaseIds[3]! });
    expect(byEntity.items.map((a) => a.action)).toEqual(['environment.lease_released', 'environment.lease_acquired']);
    const byRun = await t.services.activity.list(companyId, { runId });
    expect(byRun.items).toHaveLength(4);
    expect(byRun.items.every((a) => a.runId === runId)).toBe(true);
    const byAction = await t.services.activity.list(companyId, { action: 'environment.lease_released', entityType: 'environment_lease' });
    expect(byAction.items).toHaveLength(6);
    await expect(t.services.activity.list(companyId, { runId: 'run-7' })).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'runId' }] });
    await expect(t.services.activity.list(companyId, { limit: 0 })).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'limit' }] });
  });

  it('rejects bad renew, release and metadata input naming the field, changing nothing', async () => {
    const env = await t.services.environments.create(companyId, { name: 'strict', driver: 'sandbox', config: { provider: 'p' } });
    const { lease } = await t.services.leases.acquire(companyId, { environmentId: env.id, ttlSeconds: 60 });
    const cases: Array<[() => Promise<unknown>, string]> = [
      [() => t.services.leases.renew(companyId, lease.id, { ttlSeconds: 10 } as never), 'fence'],
      [() => t.services.leases.renew(companyId, lease.id, { fence: lease.fence, ttlSeconds: -5 }), 'ttlSeconds'],
      [() => t.services.leases.renew(companyId, lease.id, { fence: lease.fence, ttlSeconds: 10 ** 9 }), 'ttlSeconds'],
      [() => t.services.leases.release(companyId, lease.id, { fence: lease.fence, status: 'retained' as never }), 'status'],
      [() => t.services.leases.release(companyId, lease.id, { fence: 'one' as never }), 'fence'],
      [() => t.services.leases.release(companyId, lease.id, { fence: lease.fence, failureReason: 'x'.repeat(5000) }), 'failureReason'],
      [() => t.services.leases.updateMetadata(companyId, lease.id, { fence: lease.fence, metadata: [1, 2] as never }), 'metadata'],
    ];
    for (const [call, field] of cases) {
      const err = await call().catch((e: unknown) => e);
      expect(err, field).toMatchObject({ code: 'invalid' });
      expect((err as { fields: Array<{ path: string }> }).fields.map((f) => f.path)).toContain(field);
    }
    expect(await t.services.leases.get(companyId, lease.id)).toEqual(lease);
  });
});
