// Lease acquire+release cycles (with their two activity rows) against the floor
// of the same driver: a raw INSERT ... RETURNING plus an UPDATE of a lease-shaped
// row in a table with only a primary key. Both measured in the same run,
// interleaved, on PGlite and on PostgreSQL, with 1 and 16 clients. Then a page
// of 50 leases of one environment out of 1,000,000 lease rows.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { PGlite } from '@electric-sql/pglite';
import { openDatabase, type Database } from '../src/db/client.js';
import { createServices, type Services } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt, percentile, runConcurrent, type RunStats } from './support.js';
import { withCpu } from './cpu.js';
import { expiryBench } from './expiry.js';

const CYCLES = Number(process.env.BENCH_CYCLES ?? 4000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const MILLION = Number(process.env.BENCH_PAGE_ROWS ?? 1_000_000);
const BACKENDS = (process.env.BENCH_BACKENDS ?? 'postgres,pglite').split(',');

type Exec = (text: string, params: unknown[]) => Promise<{ rows: Array<Record<string, unknown>> }>;

/**
 * Statements sent to PostgreSQL by any pg client of this process (Berth's pool and the
 * floor's), BEGIN and COMMIT included: a round's count over its cycles is the operation
 * count printed beside each ratio (the floor's is 2 per cycle; Berth's counts retries).
 */
let pgStatements = 0;
const pgQuery = pg.Client.prototype.query;
pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  pgStatements++;
  return (pgQuery as (...a: unknown[]) => unknown).apply(this, args);
} as typeof pgQuery;

const FLOOR_TABLE = `CREATE TABLE bench_floor (LIKE environment_leases INCLUDING DEFAULTS); ALTER TABLE bench_floor ADD PRIMARY KEY (id)`;

async function floorCycle(exec: Exec, companyId: string, envId: string): Promise<void> {
  const { rows } = await exec(
    `INSERT INTO bench_floor (company_id, environment_id, heartbeat_run_id, status, lease_policy, fence, expires_at)
     VALUES ($1, $2, $3, 'active', 'ephemeral', 1, now() + interval '60 seconds') RETURNING *`,
    [companyId, envId, randomUUID()],
  );
  await exec(`UPDATE bench_floor SET status = 'released', released_at = now(), updated_at = now() WHERE id = $1`, [rows[0]!.id]);
}

interface Row {
  backend: string;
  clients: number;
  env: string;
  floor: RunStats;
  berth: RunStats;
  /** Statements per cycle (PostgreSQL only). */
  floorStatements?: number;
  berthStatements?: number;
}

async function benchBackend(backend: 'pglite' | 'postgres', database: Database, exec: Exec, rows: Row[]) {
  const s = createServices(database.db);
  const company = await s.companies.create({ name: 'bench' });
  const local = await s.environments.ensureLocalEnvironment(company.id);
  const limited = await s.environments.create(company.id, { name: 'capacity-16', driver: 'sandbox', config: { provider: 'bench' }, capacity: 16 });
  await exec(FLOOR_TABLE.split(';')[0]!, []);
  await exec(FLOOR_TABLE.split(';')[1]!, []);
  const berthCycle = (envId: string) => async () => {
    const { lease } = await s.leases.acquire(company.id, { environmentId: envId, heartbeatRunId: randomUUID(), ttlSeconds: 60 });
    await s.leases.release(company.id, lease.id, { fence: lease.fence });
  };
  // Warm up both paths (connections, plans, JIT).
  await runConcurrent(300, 4, () => floorCycle(exec, company.id, local.id));
  await runConcurrent(300, 4, berthCycle(local.id));
  const cases: Array<{ clients: number; env: string; id: string }> = [
    { clients: 1, env: 'unlimited (Local)', id: local.id },
    { clients: 16, env: 'unlimited (Local)', id: local.id },
    { clients: 16, env: 'capacity 16', id: limited.id },
  ];
  for (const c of cases) {
    const total = c.clients === 1 ? Math.round(CYCLES / 2) : CYCLES;
    const floors: RunStats[] = [];
    const berths: RunStats[] = [];
    const cpu = { floor: { server: 0, client: 0 }, berth: { server: 0, client: 0 }, known: true };
    const statements = { floor: 0, berth: 0 };
    for (let r = 0; r < ROUNDS; r++) {
      let before = pgStatements;
      const f = await withCpu(() => runConcurrent(total, c.clients, () => floorCycle(exec, company.id, local.id)));
      statements.floor += pgStatements - before;
      before = pgStatements;
      const b = await withCpu(() => runConcurrent(total, c.clients, berthCycle(c.id)));
      statements.berth += pgStatements - before;
      floors.push(f.result);
      berths.push(b.result);
      if (f.serverCpu === null || b.serverCpu === null) cpu.known = false;
      cpu.floor.server += f.serverCpu ?? 0;
      cpu.floor.client += f.clientCpu;
      cpu.berth.server += b.serverCpu ?? 0;
      cpu.berth.client += b.clientCpu;
    }
    const perCycle = (x: number) => fmt((x / (total * ROUNDS)) * 1e6, 0);
    const best = (xs: RunStats[]) => xs.reduce((a, b) => (b.perSecond > a.perSecond ? b : a));
    const med = (xs: RunStats[]) => [...xs].sort((a, b) => a.perSecond - b.perSecond)[Math.floor(xs.length / 2)]!;
    const row: Row = { backend, clients: c.clients, env: c.env, floor: med(floors), berth: med(berths) };
    if (backend === 'postgres') {
      row.floorStatements = statements.floor / (total * ROUNDS);
      row.berthStatements = statements.berth / (total * ROUNDS);
    }
    rows.push(row);
    console.log(
      `${backend.padEnd(8)} ${String(c.clients).padStart(2)} clients  ${c.env.padEnd(18)}  floor ${fmt(row.floor.perSecond, 0).padStart(6)}/s  berth ${fmt(row.berth.perSecond, 0).padStart(6)}/s` +
        `  ratio ${fmt(row.berth.perSecond / row.floor.perSecond, 2)}  (median of ${ROUNDS} rounds of ${total} cycles; best ratio ${fmt(best(berths).perSecond / best(floors).perSecond, 2)})`,
    );
    if (backend === 'postgres') {
      console.log(
        `${' '.repeat(42)}CPU µs per cycle, server + client: floor ${cpu.known ? perCycle(cpu.floor.server) : '?'} + ${perCycle(cpu.floor.client)}` +
          `, berth ${cpu.known ? perCycle(cpu.berth.server) : '?'} + ${perCycle(cpu.berth.client)}`,
      );
      console.log(
        `${' '.repeat(42)}statements per cycle: floor ${fmt(row.floorStatements!, 2)} (${statements.floor} in ${total * ROUNDS} cycles)` +
          `, berth ${fmt(row.berthStatements!, 2)} (${statements.berth})`,
      );
    }
  }
}

/** Time the service's own listing (the query an API page runs) over the filled table. */
async function pageBench(exec: Exec, s: Services, companyId: string, rowsTotal: number): Promise<void> {
  const { rows: envs } = await exec(
    `SELECT environment_id, count(*)::int AS n FROM environment_leases WHERE company_id = $1 GROUP BY 1 ORDER BY 2 DESC`,
    [companyId],
  );
  const big = String(envs[0]!.environment_id);
  console.log(`\nPage of 50 leases of one environment (leases.listByEnvironment), ${rowsTotal.toLocaleString('en')} lease rows in the table,`);
  console.log(`${envs.length} environments, the largest holding ${Number(envs[0]!.n).toLocaleString('en')} leases (every fifth query hits it)`);
  const offset = Math.floor(Number(envs[0]!.n) / 2);
  const { rows: mid } = await exec(
    `SELECT to_char(last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts, id FROM environment_leases
     WHERE environment_id = $1 ORDER BY last_used_at DESC, id DESC OFFSET $2 LIMIT 1`,
    [big, offset],
  );
  const deepCursor = Buffer.from(`${mid[0]!.ts}|${mid[0]!.id}`).toString('base64url');
  const cases: Array<{ name: string; filter: (env: string) => { status?: string; cursor?: string; limit: number } }> = [
    { name: 'first page', filter: () => ({ limit: 50 }) },
    { name: 'first page, status released', filter: () => ({ status: 'released', limit: 50 }) },
    { name: `page after ${offset.toLocaleString('en')} rows (cursor)`, filter: () => ({ cursor: deepCursor, limit: 50 }) },
  ];
  for (const c of cases) {
    const lat: number[] = [];
    for (let i = 0; i < 500; i++) {
      const env = c.name.includes('cursor') || i % 5 === 0 ? big : String(envs[1 + (i % (envs.length - 1))]!.environment_id);
      const t = performance.now();
      const page = await s.leases.listByEnvironment(companyId, env, c.filter(env));
      lat.push(performance.now() - t);
      if (page.items.length === 0) throw new Error(`empty page for ${c.name}`);
    }
    lat.sort((a, b) => a - b);
    console.log(`  ${c.name.padEnd(36)} 500 calls  p50 ${fmt(percentile(lat, 50), 2)} ms  p99 ${fmt(percentile(lat, 99), 2)} ms  (target p99 < 20 ms)`);
  }
  const plan = await exec(
    `EXPLAIN SELECT * FROM environment_leases WHERE environment_id = '${big}' AND company_id = '${companyId}'
     AND (last_used_at, id) < ('${mid[0]!.ts}'::timestamptz, '${mid[0]!.id}'::uuid) ORDER BY last_used_at DESC, id DESC LIMIT 51`,
    [],
  );
  console.log('  plan of the cursor page:');
  for (const r of plan.rows) console.log(`    ${String(Object.values(r)[0])}`);
}

async function fillLeases(exec: Exec, companyId: string, total: number): Promise<void> {
  // 1,000 environments; one of them holds a fifth of all leases (the worst case for a page).
  await exec(
    `INSERT INTO environments (company_id, name, driver, config) SELECT $1, 'fill-' || g, 'sandbox', '{"provider":"bench"}' FROM generate_series(1, 999) g`,
    [companyId],
  );
  const started = performance.now();
  const chunk = 100_000;
  for (let done = 0; done < total; done += chunk) {
    await exec(
      `INSERT INTO environment_leases (company_id, environment_id, heartbeat_run_id, status, lease_policy, fence, acquired_at, last_used_at, released_at)
       SELECT $1, e.ids[CASE WHEN g % 5 = 0 THEN 1 ELSE 1 + (g % array_length(e.ids, 1)) END],
              gen_random_uuid(), (ARRAY['released','failed','expired','released'])[1 + g % 4], 'ephemeral',
              nextval('environment_lease_fence_seq'), ts, ts, ts
       FROM generate_series($2::int, $3::int) g,
            LATERAL (SELECT now() - (g || ' seconds')::interval AS ts) t,
            (SELECT array_agg(id ORDER BY name) AS ids FROM environments WHERE company_id = $1) e`,
      [companyId, done + 1, Math.min(done + chunk, total)],
    );
  }
  await exec(`ANALYZE environment_leases`, []);
  console.log(`\n(filled ${total.toLocaleString('en')} lease rows in ${fmt((performance.now() - started) / 1000)} s)`);
}

async function main() {
  const rows: Row[] = [];
  console.log(`Lease acquire+release cycles vs the driver's INSERT+UPDATE floor (one cycle = acquire + release, two activity rows)\n`);

  // PostgreSQL
  const scratch = await createScratchDatabase();
  const berthPg = await openDatabase({ databaseUrl: scratch.url, poolSize: 16 });
  const rawPool = new pg.Pool({ connectionString: scratch.url, max: 16 });
  const pgExec: Exec = (text, params) => rawPool.query(text, params);
  try {
    await benchBackend('postgres', berthPg, pgExec, rows);
    // PGlite: one session, so 16 clients only interleave; printed for completeness.
    if (BACKENDS.includes('pglite')) {
    const liteDb = await openDatabase({ databaseUrl: '', dataDir: 'memory://' });
    const liteExec: Exec = async (text, params) => ({ rows: (await (liteDb.db as unknown as { $client: PGlite }).$client.query(text, params)).rows as Array<Record<string, unknown>> });
    await benchBackend('pglite', liteDb, liteExec, rows);
    await liteDb.close();
    }

    if (MILLION > 0) {
      const s = createServices(berthPg.db);
      const company = await s.companies.create({ name: 'page bench' });
      await fillLeases(pgExec, company.id, MILLION);
      await pageBench(pgExec, s, company.id, MILLION);
    }
  } finally {
    await rawPool.end();
    await berthPg.close();
    await scratch.drop();
  }
  console.log('');
  for (const env of ['unlimited', 'capacity 16']) {
    const target = rows.find((r) => r.backend === 'postgres' && r.clients === 16 && r.env.startsWith(env));
    if (!target) continue;
    console.log(`Target: PostgreSQL, 16 clients, ${env.padEnd(11)} >= 0.60 of the floor. Measured: ${fmt(target.berth.perSecond / target.floor.perSecond, 2)}` +
      `  (${fmt(target.berth.perSecond, 0)}/s vs floor ${fmt(target.floor.perSecond, 0)}/s; ${fmt(target.berthStatements!, 2)} statements per cycle vs ${fmt(target.floorStatements!, 2)};` +
      ` p50 ${fmt(target.berth.p50, 2)} ms / p99 ${fmt(target.berth.p99, 2)} ms per cycle vs floor p50 ${fmt(target.floor.p50, 2)} ms / p99 ${fmt(target.floor.p99, 2)} ms)`);
  }
  console.log('\nlatency per cycle (ms):');
  for (const r of rows) {
    console.log(`  ${r.backend.padEnd(8)} ${String(r.clients).padStart(2)} clients ${r.env.padEnd(18)} berth p50 ${fmt(r.berth.p50, 2)} p99 ${fmt(r.berth.p99, 2)} | floor p50 ${fmt(r.floor.p50, 2)} p99 ${fmt(r.floor.p99, 2)}`);
  }
  await expiryBench();
}

await main();
