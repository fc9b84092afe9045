// Warm pool claims under concurrency, on PostgreSQL, with two servers (each its own
// connection pool and heartbeat runtime refilling the same pool): 64 claimers against a
// pool of 8 ready members and a capacity of 8. No member is claimed twice, never more than
// 8 leases are active (sampled throughout), every refusal is capacity_exhausted; the two
// refills together never keep more than maxReady idle nor exceed the capacity.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openDatabase, type Database } from '../../src/db/client.js';
import { isBerthError } from '../../src/domain/errors.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

const root = mkdtempSync(join(tmpdir(), 'berth-pool-claims-'));
let drop: () => Promise<void>;
let servers: Array<{ database: Database; s: Services; runtime: Runtime }> = [];
let probe: pg.Pool;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  let url: string;
  ({ url, drop } = await createScratchDatabase());
  const dbs = await Promise.all([openDatabase({ databaseUrl: url, poolSize: 16 }), openDatabase({ databaseUrl: url, poolSize: 16 })]);
  servers = await Promise.all(
    dbs.map(async (database, i) => {
      const s = createServices(database.db);
      const runtime = await startRuntime({
        services: s,
        db: database.db,
        heartbeatDb: database.heartbeatDb,
        listen: database.listen,
        serverId: `srv_pool_${i}`,
        drivers: new Map([['local', localDriver({ workspaceRoot: root })]]),
        apiUrl: 'http://127.0.0.1:9',
        sweepMs: 100,
        heartbeatMs: 200,
        poolRefillMs: 100,
        onError: runtimeErrors.onError,
      });
      return { database, s, runtime };
    }),
  );
  probe = new pg.Pool({ connectionString: url, max: 2 });
});
afterAll(async () => {
  for (const { runtime } of servers) await runtime.stop({ graceMs: 0 });
  await probe?.end();
  for (const { database } of servers) await database.close();
  await drop?.();
  rmSync(root, { recursive: true, force: true });
});

async function scalar(text: string, params: unknown[] = []): Promise<number> {
  const { rows } = await probe.query(text, params);
  return Number(Object.values(rows[0] as object)[0]);
}

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
    async stop() {
      running = false;
      await done;
      return seen;
    },
  };
}

const ready = (envId: string) => scalar(`SELECT count(*) FROM provider_resources WHERE environment_id = $1 AND pool_member AND status = 'ready'`, [envId]);

it('64 claimers on two servers against 8 ready members and capacity 8: 8 warm leases, distinct members, 56 capacity_exhausted', async () => {
  const s = servers[0]!.s;
  const co = await s.companies.create({ name: 'Pool storm' });
  const env = await s.environments.ensureLocalEnvironment(co.id);
  // Both servers refill one pool: together they never keep more than maxReady idle.
  const idle = sampler(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status = 'pooled'`, [env.id]);
  await s.environments.update(co.id, env.id, { capacity: 8, pool: { minReady: 8, maxReady: 8 } });
  await waitFor('8 ready members', async () => (await ready(env.id)) === 8, 30_000);
  const idleSeen = await idle.stop();
  expect(Math.max(...idleSeen)).toBe(8);
  const memberIds = (await probe.query(`SELECT id FROM provider_resources WHERE environment_id = $1 AND pool_member AND status = 'ready'`, [env.id])).rows.map((r) => String(r.id));
  expect(new Set(memberIds).size).toBe(8);

  for (let round = 0; round < 2; round++) {
    const active = sampler(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status = 'active'`, [env.id]);
    const held = sampler(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status IN ('active', 'pooled')`, [env.id]);
    const results = await Promise.allSettled(
      Array.from({ length: 64 }, (_, i) =>
        servers[i % 2]!.s.leases.acquire(co.id, { environmentId: env.id, ttlSeconds: 120, idempotencyKey: `r${round}-c${i}` }, undefined, { driver: 'local', reserveResource: true, warm: true }),
      ),
    );
    const activeSeen = await active.stop();
    const heldSeen = await held.stop();
    const granted = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const refusals = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    expect(granted).toHaveLength(8);
    expect(granted.every((g) => g.warm === true && g.lease.metadata.warm === true)).toBe(true);
    const claimedMembers = granted.map((g) => g.lease.resourceId);
    expect(new Set(claimedMembers).size).toBe(8);
    if (round === 0) expect(new Set(claimedMembers)).toEqual(new Set(memberIds));
    expect(refusals).toHaveLength(56);
    for (const e of refusals) expect(isBerthError(e, 'capacity_exhausted'), String(e)).toBe(true);
    expect(Math.max(...activeSeen)).toBeLessThanOrEqual(8);
    expect(Math.max(...heldSeen)).toBeLessThanOrEqual(8);
    // In the database: each member is held by exactly one lease, the one it was handed to.
    expect(await scalar(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status = 'active'`, [env.id])).toBe(8);
    expect(await scalar(
      `SELECT count(*) FROM provider_resources p JOIN environment_leases l ON l.resource_id = p.id
       WHERE p.environment_id = $1 AND p.status = 'leased' AND p.lease_id = l.id AND l.status = 'active'`, [env.id])).toBe(8);
    // The refill cannot add members: every place is held by an active lease.
    await new Promise((r) => setTimeout(r, 500));
    expect(await scalar(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status = 'pooled'`, [env.id])).toBe(0);

    // Ephemeral release destroys each claimed member; the two refills restore 8 new ones.
    const refill = sampler(`SELECT count(*) FROM environment_leases WHERE environment_id = $1 AND status IN ('active', 'pooled')`, [env.id]);
    for (const g of granted) await s.leases.release(co.id, g.lease.id, { fence: g.lease.fence, status: 'released' });
    await waitFor('the claimed members destroyed', async () =>
      (await scalar(`SELECT count(*) FROM provider_resources WHERE id = ANY ($1::uuid[]) AND status = 'destroyed'`, [claimedMembers])) === 8, 30_000);
    await waitFor('8 new ready members', async () => (await ready(env.id)) === 8, 30_000);
    expect(Math.max(...(await refill.stop()))).toBeLessThanOrEqual(8);
    const dirs = readdirSync(root).filter((d) => /^[0-9a-f-]{36}$/.test(d));
    for (const id of claimedMembers) expect(dirs).not.toContain(id);
  }
});
