// The guarantees that only a real multi-session database can prove: several pools
// (as several Berth servers would have) hammer one PostgreSQL at once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { openDatabase, type Database } from '../../src/db/client.js';
import { createServices, type Services } from '../../src/services/index.js';
import { isBerthError } from '../../src/domain/errors.js';
import { createScratchDatabase } from '../support/db.js';

let drop: () => Promise<void>;
let url: string;
let servers: Array<{ database: Database; s: Services }> = [];
let probe: pg.Pool;
let companyId: string;

beforeAll(async () => {
  ({ url, drop } = await createScratchDatabase());
  // Two "servers", each with its own pool, opened at once (migrations serialize on an advisory lock).
  const dbs = await Promise.all([openDatabase({ databaseUrl: url, poolSize: 16 }), openDatabase({ databaseUrl: url, poolSize: 16 })]);
  servers = dbs.map((database) => ({ database, s: createServices(database.db) }));
  probe = new pg.Pool({ connectionString: url, max: 2 });
  companyId = (await servers[0]!.s.companies.create({ name: 'Storm Co' })).id;
});

afterAll(async () => {
  await probe?.end();
  for (const { database } of servers) await database.close();
  await drop?.();
});

const server = (i: number) => servers[i % servers.length]!.s;

async function scalar(text: string, params: unknown[] = []): Promise<number> {
  const { rows } = await probe.query(text, params);
  return Number(Object.values(rows[0] as object)[0]);
}

/** Sample a query every few ms until stopped; returns every value seen. */
function sampler(text: string, params: unknown[]) {
  const seen: number[] = [];
  let running = true;
  const done = (async () => {
    while (running) {
      seen.push(await scalar(text, params));
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  return {
    seen,
    async stop() {
      running = false;
      await done;
      return seen;
    },
  };
}

describe('on PostgreSQL under concurrency', () => {
  it('50 concurrent ensureLocalEnvironment calls give exactly one Local', async () => {
    const c = await server(0).companies.create({ name: 'Race Co' });
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => server(i).environments.ensureLocalEnvironment(c.id)));
    expect(new Set(results.map((e) => e.id)).size).toBe(1);
    expect(await scalar(`SELECT count(*) FROM environments WHERE company_id = $1 AND driver = 'local'`, [c.id])).toBe(1);
    expect(await scalar(`SELECT count(*) FROM activity_log WHERE company_id = $1 AND action = 'environment.created'`, [c.id])).toBe(1);
  });

  it('64 concurrent acquirers never hold more than capacity 3, and every refusal says capacity_exhausted', async () => {
    const env = await server(0).environments.create(companyId, { name: 'cap-3', driver: 'sandbox', config: { provider: 't' }, capacity: 3 });
    const watch = sampler(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status = 'active'`, [env.id]);
    let granted = 0;
    const refusals: unknown[] = [];
    const fences: number[] = [];
    // Each worker tries a few times and releases what it gets, so the slots turn over during the storm.
    await Promise.all(
      Array.from({ length: 64 }, async (_, i) => {
        for (let round = 0; round < 4; round++) {
          try {
            const { lease } = await server(i).leases.acquire(companyId, { environmentId: env.id, heartbeatRunId: randomUUID() });
            granted++;
            fences.push(lease.fence);
            await new Promise((r) => setTimeout(r, 3));
            if (round < 3) await server(i + 1).leases.release(companyId, lease.id, { fence: lease.fence });
          } catch (err) {
            refusals.push(err);
          }
        }
      }),
    );
    const seen = await watch.stop();
    expect(seen.length).toBeGreaterThan(5);
    expect(Math.max(...seen)).toBeLessThanOrEqual(3);
    expect(await scalar(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status = 'active'`, [env.id])).toBeLessThanOrEqual(3);
    expect(granted).toBeGreaterThan(3);
    expect(refusals.length).toBeGreaterThan(0);
    for (const err of refusals) expect(isBerthError(err, 'capacity_exhausted'), String(err)).toBe(true);
    expect(new Set(fences).size).toBe(fences.length);
    // One activity row per grant and per release.
    const leases = await scalar(`SELECT count(*) FROM environment_leases WHERE environment_id = $1`, [env.id]);
    expect(leases).toBe(granted);
    const acts = await scalar(
      `SELECT count(*) FROM activity_log a JOIN environment_leases l ON a.entity_id = l.id::text WHERE l.environment_id = $1`,
      [env.id],
    );
    const releasedCount = await scalar(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status = 'released'`, [env.id]);
    expect(acts).toBe(granted + releasedCount);
  });

  it('capacity changes and acquires are ordered: while capacity is 3, no snapshot shows more than 3 active', async () => {
    const env = await server(0).environments.create(companyId, { name: 'cap-toggle', driver: 'sandbox', config: { provider: 't' } });
    const violations: string[] = [];
    let running = true;
    const checker = (async () => {
      while (running) {
        const { rows } = await probe.query(
          `SELECT e.capacity, (SELECT count(*)::int FROM environment_leases l WHERE l.environment_id = e.id AND l.status = 'active') AS active
           FROM environments e WHERE e.id = $1`,
          [env.id],
        );
        const r = rows[0] as { capacity: number | null; active: number };
        if (r.capacity !== null && r.active > r.capacity) violations.push(`${r.active} active under capacity ${r.capacity}`);
        await new Promise((res) => setTimeout(res, 1));
      }
    })();
    const toggler = (async () => {
      for (let i = 0; i < 40; i++) {
        await server(i)
          .environments.update(companyId, env.id, { capacity: i % 2 === 0 ? 3 : null })
          .catch((err: unknown) => {
            if (!isBerthError(err, 'conflict')) throw err; // refused: more than 3 active right now
          });
        await new Promise((res) => setTimeout(res, 5));
      }
    })();
    // The checker stops however the storm ends (a storm that throws must not leave it polling a closed pool).
    await Promise.all([
      toggler,
      ...Array.from({ length: 24 }, async (_, i) => {
        for (let round = 0; round < 15; round++) {
          try {
            const { lease } = await server(i).leases.acquire(companyId, { environmentId: env.id });
            await new Promise((res) => setTimeout(res, 2));
            await server(i).leases.release(companyId, lease.id, { fence: lease.fence });
          } catch (err) {
            if (!isBerthError(err, 'capacity_exhausted')) throw err;
          }
        }
      }),
    ]).finally(() => (running = false));
    await checker;
    expect(violations).toEqual([]);
  });

  it('64 acquirers on two servers, new and reactivated leases, never hold more than capacity 3 nor share a slot', async () => {
    const env = await server(0).environments.create(companyId, { name: 'cap-3-slots', driver: 'sandbox', config: { provider: 't' }, capacity: 3 });
    // One snapshot per sample: the active leases, their distinct slots, and any slot outside [0, 3).
    const samples: Array<{ active: number; slots: number; outside: number }> = [];
    let running = true;
    const watch = (async () => {
      while (running) {
        const { rows } = await probe.query(
          `SELECT count(*)::int AS active, count(DISTINCT slot)::int AS slots,
                  count(*) FILTER (WHERE slot IS NULL OR slot < 0 OR slot >= 3)::int AS outside
           FROM environment_leases WHERE environment_id = $1 AND status = 'active'`,
          [env.id],
        );
        samples.push(rows[0] as { active: number; slots: number; outside: number });
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
    let granted = 0;
    let reacquired = 0;
    const refusals: unknown[] = [];
    await Promise.all(
      Array.from({ length: 64 }, async (_, i) => {
        // Half take reusable leases, so releases leave retained leases that later acquires reactivate.
        const policy = i % 2 === 0 ? 'reuse_by_environment' : 'ephemeral';
        for (let round = 0; round < 6; round++) {
          try {
            const got = await server(i + round).leases.acquire(companyId, { environmentId: env.id, heartbeatRunId: randomUUID(), policy });
            granted++;
            if (got.reacquired) reacquired++;
            await new Promise((r) => setTimeout(r, 2));
            await server(i + round + 1).leases.release(companyId, got.lease.id, { fence: got.lease.fence });
          } catch (err) {
            refusals.push(err);
          }
        }
      }),
    ).finally(() => (running = false));
    await watch;
    expect(samples.length).toBeGreaterThan(5);
    expect(Math.max(...samples.map((x) => x.active))).toBeLessThanOrEqual(3);
    expect(samples.filter((x) => x.slots !== x.active || x.outside > 0)).toEqual([]);
    expect(Math.max(...samples.map((x) => x.active))).toBeGreaterThan(0);
    expect(granted).toBeGreaterThan(3);
    expect(reacquired).toBeGreaterThan(0);
    expect(refusals.length).toBeGreaterThan(0);
    for (const err of refusals) expect(isBerthError(err, 'capacity_exhausted'), String(err)).toBe(true);
  });

  it('lowering and raising capacity while acquirers hold high slots never lets active exceed capacity', async () => {
    const env = await server(0).environments.create(companyId, { name: 'cap-lower', driver: 'sandbox', config: { provider: 't' }, capacity: 8 });
    const violations: string[] = [];
    let samples = 0;
    let running = true;
    const checker = (async () => {
      while (running) {
        const { rows } = await probe.query(
          `SELECT e.capacity, count(l.id)::int AS active, count(l.id) FILTER (WHERE l.slot IS NULL OR l.slot >= e.capacity)::int AS unslotted
           FROM environments e LEFT JOIN environment_leases l ON l.environment_id = e.id AND l.status = 'active'
           WHERE e.id = $1 GROUP BY e.capacity`,
          [env.id],
        );
        const r = rows[0] as { capacity: number; active: number; unslotted: number };
        samples++;
        if (r.active > r.capacity) violations.push(`${r.active} active under capacity ${r.capacity}`);
        // What keeps the count within the capacity: every active lease holds a slot below it.
        if (r.unslotted > 0) violations.push(`${r.unslotted} active leases without a slot below capacity ${r.capacity}`);
        await new Promise((res) => setTimeout(res, 1));
      }
    })();
    const capacities = [8, 2, 6, 1, 8, 3, 7, 2, 5, 1, 8, 4];
    let applied = 0;
    let lowered = 0;
    const changer = (async () => {
      for (let i = 0; i < 72; i++) {
        const capacity = capacities[i % capacities.length]!;
        const before = await scalar(`SELECT capacity FROM environments WHERE id = $1`, [env.id]);
        await server(i)
          .environments.update(companyId, env.id, { capacity })
          .then(() => {
            applied++;
            if (capacity < before) lowered++;
          })
          .catch((err: unknown) => {
            if (!isBerthError(err, 'conflict')) throw err; // refused: more active than that right now
          });
        await new Promise((res) => setTimeout(res, 6));
      }
    })();
    let granted = 0;
    let stop = false;
    // Few enough acquirers, with pauses, that the active count often drops to a lowered
    // capacity while the leases still held sit in slots above it.
    await Promise.all([
      changer.finally(() => (stop = true)),
      ...Array.from({ length: 8 }, async (_, i) => {
        for (let round = 0; !stop && round < 400; round++) {
          try {
            const { lease } = await server(i).leases.acquire(companyId, { environmentId: env.id });
            granted++;
            await new Promise((res) => setTimeout(res, 2 + ((i + round) % 7)));
            await server(i + 1).leases.release(companyId, lease.id, { fence: lease.fence });
          } catch (err) {
            if (!isBerthError(err, 'capacity_exhausted')) throw err;
          }
          await new Promise((res) => setTimeout(res, (i * 3 + round) % 6));
        }
      }),
    ]).finally(() => (running = false));
    await checker;
    expect(samples).toBeGreaterThan(5);
    expect(violations).toEqual([]);
    expect(granted).toBeGreaterThan(8);
    expect(lowered).toBeGreaterThan(0);
    expect(applied).toBeGreaterThan(lowered);
  });

  it('a capacity change waits for an in-flight unlimited acquire and counts its leases', async () => {
    // An acquire on an unlimited environment holds FOR KEY SHARE on the environment row
    // until it commits; a capacity change must wait for it, not count around it.
    const env = await server(0).environments.create(companyId, { name: 'cap-wait', driver: 'sandbox', config: { provider: 't' } });
    const inflight = new pg.Client({ connectionString: url });
    await inflight.connect();
    try {
      await inflight.query('BEGIN');
      await inflight.query('SELECT 1 FROM environments WHERE id = $1 FOR KEY SHARE', [env.id]);
      for (let i = 0; i < 5; i++) {
        await inflight.query(
          `INSERT INTO environment_leases (company_id, environment_id, status, lease_policy, fence)
           VALUES ($1, $2, 'active', 'ephemeral', nextval('environment_lease_fence_seq'))`,
          [companyId, env.id],
        );
      }
      let settled = false;
      const update = server(1)
        .environments.update(companyId, env.id, { capacity: 3 })
        .then(
          () => 'applied',
          (err: unknown) => (isBerthError(err, 'conflict') ? 'conflict' : String(err)),
        )
        .finally(() => (settled = true));
      await new Promise((r) => setTimeout(r, 300));
      expect(settled).toBe(false);
      await inflight.query('COMMIT');
      expect(await update).toBe('conflict');
      expect(await scalar(`SELECT count(*) FROM environments WHERE id = $1 AND capacity IS NULL`, [env.id])).toBe(1);
    } finally {
      await inflight.end();
    }
  });

  it('ensureLocalEnvironment racing hand-made local environments under other names leaves one local', async () => {
    const c = await server(0).companies.create({ name: 'Local Race Co' });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 40 }, (_, i) =>
        i % 2 === 0
          ? server(i).environments.ensureLocalEnvironment(c.id)
          : server(i).environments.create(c.id, { name: `Hand-made ${i}`, driver: 'local' }),
      ),
    );
    expect(await scalar(`SELECT count(*) FROM environments WHERE company_id = $1 AND driver = 'local'`, [c.id])).toBe(1);
    const ids = new Set(outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value.id] : [])));
    expect(ids.size).toBe(1);
    for (const o of outcomes) if (o.status === 'rejected') expect(isBerthError(o.reason, 'conflict'), String(o.reason)).toBe(true);
  });

  it('racing retries with one idempotency key give one lease and one activity row', async () => {
    const env = await server(0).environments.create(companyId, { name: 'idem', driver: 'sandbox', config: { provider: 't' }, capacity: 1 });
    const key = `retry-${randomUUID()}`;
    const results = await Promise.all(
      Array.from({ length: 32 }, (_, i) => server(i).leases.acquire(companyId, { environmentId: env.id, idempotencyKey: key, ttlSeconds: 60 })),
    );
    expect(new Set(results.map((r) => r.lease.id)).size).toBe(1);
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(await scalar(`SELECT count(*) FROM environment_leases WHERE idempotency_key = $1`, [key])).toBe(1);
    expect(await scalar(`SELECT count(*) FROM activity_log WHERE entity_id = $1`, [results[0]!.lease.id])).toBe(1);
  });

  it('one run racing for one environment holds one lease', async () => {
    const env = await server(0).environments.create(companyId, { name: 'one-run', driver: 'sandbox', config: { provider: 't' } });
    const runId = randomUUID();
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => server(i).leases.acquire(companyId, { environmentId: env.id, heartbeatRunId: runId })));
    expect(new Set(results.map((r) => r.lease.id)).size).toBe(1);
    expect(await scalar(`SELECT count(*) FROM environment_leases WHERE heartbeat_run_id = $1`, [runId])).toBe(1);
  });

  it('one execution workspace racing from many runs holds one ephemeral lease; the rest are workspace_busy', async () => {
    const env = await server(0).environments.create(companyId, { name: 'ws-race', driver: 'sandbox', config: { provider: 't' } });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 24 }, (_, i) => server(i).leases.acquire(companyId, { environmentId: env.id, executionWorkspaceId: 'checkout', heartbeatRunId: randomUUID() })),
    );
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    for (const o of outcomes) if (o.status === 'rejected') expect(isBerthError(o.reason, 'workspace_busy')).toBe(true);
  });

  it('a retained lease raced for by 16 acquirers goes to exactly one, under a new fence; the old holder is fenced out', async () => {
    const env = await server(0).environments.create(companyId, { name: 'reuse', driver: 'sandbox', config: { provider: 't' } });
    const first = await server(0).leases.acquire(companyId, { environmentId: env.id, policy: 'reuse_by_environment' });
    await server(0).leases.release(companyId, first.lease.id, { fence: first.lease.fence });
    const results = await Promise.all(
      Array.from({ length: 16 }, (_, i) => server(i).leases.acquire(companyId, { environmentId: env.id, policy: 'reuse_by_environment', heartbeatRunId: randomUUID() })),
    );
    const winners = results.filter((r) => r.reacquired);
    expect(winners).toHaveLength(1);
    expect(winners[0]!.lease.id).toBe(first.lease.id);
    expect(winners[0]!.lease.fence).toBeGreaterThan(first.lease.fence);
    expect(new Set(results.map((r) => r.lease.fence)).size).toBe(16);
    const stale = await Promise.allSettled([
      server(0).leases.renew(companyId, first.lease.id, { fence: first.lease.fence, ttlSeconds: 5 }),
      server(1).leases.release(companyId, first.lease.id, { fence: first.lease.fence, status: 'failed' }),
    ]);
    for (const s of stale) expect(s.status === 'rejected' && isBerthError(s.reason, 'stale_fence')).toBe(true);
    expect((await server(0).leases.get(companyId, first.lease.id)).status).toBe('active');
  });

  it('racing releases, run finalizers and sweeps end each lease exactly once, with one activity row', async () => {
    const env = await server(0).environments.create(companyId, { name: 'race-end', driver: 'sandbox', config: { provider: 't' } });
    const made = await Promise.all(
      Array.from({ length: 40 }, (_, i) => server(i).leases.acquire(companyId, { environmentId: env.id, heartbeatRunId: randomUUID(), ttlSeconds: 0.2 })),
    );
    await new Promise((r) => setTimeout(r, 250));
    const statuses = ['released', 'failed', 'expired'] as const;
    await Promise.all(
      made.flatMap(({ lease }, i) => [
        server(i).leases.release(companyId, lease.id, { fence: lease.fence, status: statuses[i % 3]! }),
        server(i + 1).leases.release(companyId, lease.id, { fence: lease.fence, status: statuses[(i + 1) % 3]! }),
        server(i).leases.releaseForRun(companyId, lease.heartbeatRunId!, { status: 'failed', failureReason: 'finalizer' }),
        server(i + 1).leases.expireDue(),
      ]),
    );
    for (const { lease } of made) {
      const endings = await scalar(
        `SELECT count(*) FROM activity_log WHERE entity_id = $1 AND action IN ('environment.lease_released', 'environment.lease_expired')`,
        [lease.id],
      );
      expect(endings).toBe(1);
    }
    expect(await scalar(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status = 'active'`, [env.id])).toBe(0);
  });

  it('two sweepers expire each due lease once, with one activity row each', async () => {
    const env = await server(0).environments.create(companyId, { name: 'sweep', driver: 'sandbox', config: { provider: 't' } });
    const made = await Promise.all(Array.from({ length: 60 }, (_, i) => server(i).leases.acquire(companyId, { environmentId: env.id, ttlSeconds: 0.1 })));
    await new Promise((r) => setTimeout(r, 200));
    const [a, b] = await Promise.all([server(0).leases.expireDue({ limit: 1000 }), server(1).leases.expireDue({ limit: 1000 })]);
    const ids = [...a!, ...b!].map((l) => l.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const { lease } of made) expect(ids).toContain(lease.id);
    expect(
      await scalar(`SELECT count(*) FROM activity_log WHERE action = 'environment.lease_expired' AND entity_id = ANY($1::text[])`, [made.map((m) => m.lease.id)]),
    ).toBe(60);
  });
});
