// Which Node PostgreSQL driver, measured under Berth's own statements: pg (what Berth uses)
// and postgres.js, each with named prepared statements, at 1 and 16 clients, in alternating
// rounds of the same run (the machine is shared: only ratios within one run mean anything).
//
// Two cycles per driver:
// - floor: INSERT ... RETURNING + UPDATE of a lease-shaped row in a table with only a primary key;
// - berth: the exact statements Berth's acquire and release send (captured from one real
//   acquire+release through Berth's services on pg, then replayed: the release's lease id and
//   fence replaced by the ones the replayed acquire returned), audit rows and all.
// Prints cycles/s per driver and cycle, and postgres.js over pg.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import postgres from 'postgres';
import { openDatabase } from '../src/db/client.js';
import { SYSTEM_ACTOR } from '../src/domain/types.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt, runConcurrent, type RunStats } from './support.js';

const CYCLES = Number(process.env.BENCH_CYCLES ?? 3000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CLIENTS = [1, 16];

interface Captured {
  name?: string;
  text: string;
  values: unknown[];
  rows: Array<Record<string, unknown>>;
}

/** Every statement any pg client of this process sends while `capturing`, with its result rows. */
let capturing: Captured[] | null = null;
const pgQuery = pg.Client.prototype.query;
pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  const into = capturing;
  const a0 = args[0] as string | { name?: string; text: string; values?: unknown[] };
  if (into && a0 !== null && a0 !== undefined) {
    const values = (Array.isArray(args[1]) ? args[1] : typeof a0 === 'object' ? a0.values : undefined) ?? [];
    const c: Captured = typeof a0 === 'string' ? { text: a0, values, rows: [] } : { ...(a0.name ? { name: a0.name } : {}), text: a0.text, values, rows: [] };
    into.push(c);
    // pg answers through a callback (the pool's) or a promise: take the rows from either.
    const cbAt = args.findIndex((x) => typeof x === 'function');
    if (cbAt >= 0) {
      const cb = args[cbAt] as (err: unknown, res: { rows?: Array<Record<string, unknown>> }) => void;
      args[cbAt] = (err: unknown, res: { rows?: Array<Record<string, unknown>> }) => {
        c.rows = res?.rows ?? [];
        cb(err, res);
      };
    }
  }
  const out = (pgQuery as (...a: unknown[]) => unknown).apply(this, args);
  if (into && out && typeof (out as Promise<unknown>).then === 'function') {
    const c = into[into.length - 1]!;
    void (out as Promise<{ rows?: Array<Record<string, unknown>> }>).then((r) => (c.rows = r?.rows ?? c.rows), () => {});
  }
  return out;
} as typeof pgQuery;

type Query = (name: string, text: string, values: unknown[]) => Promise<Array<Record<string, unknown>>>;

async function main() {
  const scratch = await createScratchDatabase();
  const database = await openDatabase({ databaseUrl: scratch.url, poolSize: 16 });
  try {
    const s = createServices(database.db);
    const company = await s.companies.create({ name: 'drivers' });
    const env = await s.environments.ensureLocalEnvironment(company.id);

    // One real cycle through Berth's services, its statements captured.
    capturing = [];
    const got = await s.leases.acquire(company.id, { environmentId: env.id, ttlSeconds: 300 }, SYSTEM_ACTOR);
    const acquireStatements = capturing.filter((c) => !/^(BEGIN|COMMIT|ROLLBACK)/i.test(c.text));
    capturing = [];
    await s.leases.release(company.id, got.lease.id, { fence: got.lease.fence }, SYSTEM_ACTOR);
    const releaseStatements = capturing.filter((c) => !/^(BEGIN|COMMIT|ROLLBACK)/i.test(c.text));
    capturing = null;
    await new Promise((r) => setTimeout(r, 50)); // the captured results settle
    if (acquireStatements.length !== 1 || releaseStatements.length !== 1) {
      throw new Error(`expected one acquire and one release statement, captured ${acquireStatements.length} and ${releaseStatements.length}: the bench needs updating`);
    }
    const acq = acquireStatements[0]!;
    const rel = releaseStatements[0]!;
    const idAt = rel.values.findIndex((v) => v === got.lease.id);
    const fenceAt = rel.values.findIndex((v) => Number(v) === got.lease.fence && typeof v !== 'boolean');
    if (idAt < 0 || fenceAt < 0) throw new Error('the release statement does not take the lease id and fence as parameters: the bench needs updating');
    const leaseOf = (rows: Array<Record<string, unknown>>) => {
      const row = rows.find((r) => r.id !== undefined && r.fence !== undefined);
      if (!row) throw new Error(`the acquire returned no lease row: ${JSON.stringify(rows).slice(0, 300)}`);
      return { id: String(row.id), fence: Number(row.fence) };
    };

    const setup = new pg.Client({ connectionString: scratch.url });
    await setup.connect();
    await setup.query(`CREATE TABLE bench_floor (LIKE environment_leases INCLUDING DEFAULTS); ALTER TABLE bench_floor ADD PRIMARY KEY (id)`);
    await setup.end();
    const floorInsert = `INSERT INTO bench_floor (company_id, environment_id, heartbeat_run_id, status, lease_policy, fence, expires_at)
      VALUES ($1, $2, $3, 'active', 'ephemeral', 1, now() + interval '60 seconds') RETURNING id`;
    const floorUpdate = `UPDATE bench_floor SET status = 'released', released_at = now(), updated_at = now() WHERE id = $1`;

    const pgPool = new pg.Pool({ connectionString: scratch.url, max: 16 });
    const pj = postgres(scratch.url, { max: 16, prepare: true, onnotice: () => {} });
    const drivers: Record<string, Query> = {
      pg: async (name, text, values) => (await pgPool.query({ name, text, values })).rows,
      'postgres.js': async (_name, text, values) => [...(await pj.unsafe(text, values as never[], { prepare: true }))] as Array<Record<string, unknown>>,
    };
    const cycles: Record<string, (q: Query) => Promise<void>> = {
      floor: async (q) => {
        const rows = await q('bench.floor.insert', floorInsert, [company.id, env.id, randomUUID()]);
        await q('bench.floor.update', floorUpdate, [rows[0]!.id]);
      },
      berth: async (q) => {
        const lease = leaseOf(await q(acq.name ?? 'bench.acquire', acq.text, acq.values));
        const values = [...rel.values];
        values[idAt] = lease.id;
        values[fenceAt] = lease.fence;
        await q(rel.name ?? 'bench.release', rel.text, values);
      },
    };
    // Warm every statement on every connection's first use; the replayed releases must have released every lease.
    for (const q of Object.values(drivers)) for (const c of Object.values(cycles)) await runConcurrent(200, 16, () => c(q));
    const left = await pgPool.query(`SELECT count(*)::int AS n FROM environment_leases WHERE status = 'active'`);
    if (left.rows[0].n !== 0) throw new Error(`${left.rows[0].n} leases are still active after the warm-up: the replayed release does not release (the bench needs updating)`);

    console.log(`PostgreSQL drivers under Berth's statements: ${CYCLES} cycles x ${ROUNDS} rounds, alternating; median round`);
    console.log(`captured: acquire "${acq.name ?? '(unnamed)'}" (${acq.values.length} parameters), release "${rel.name ?? '(unnamed)'}" (${rel.values.length} parameters)`);
    console.log(`${'clients'.padEnd(8)} ${'cycle'.padEnd(6)} ${'pg /s'.padStart(9)} ${'postgres.js /s'.padStart(15)} ${'ratio'.padStart(6)}  p50 ms (pg / postgres.js)`);
    for (const clients of CLIENTS) {
      for (const [cycleName, cycle] of Object.entries(cycles)) {
        const runs: Record<string, RunStats[]> = { pg: [], 'postgres.js': [] };
        for (let r = 0; r < ROUNDS; r++) {
          for (const [dname, q] of r % 2 === 0 ? Object.entries(drivers) : Object.entries(drivers).reverse()) {
            runs[dname]!.push(await runConcurrent(CYCLES, clients, () => cycle(q)));
          }
        }
        const med = (xs: RunStats[]) => [...xs].sort((a, b) => a.perSecond - b.perSecond)[Math.floor(xs.length / 2)]!;
        const a = med(runs.pg!);
        const b = med(runs['postgres.js']!);
        console.log(
          `${String(clients).padEnd(8)} ${cycleName.padEnd(6)} ${fmt(a.perSecond, 0).padStart(9)} ${fmt(b.perSecond, 0).padStart(15)} ${fmt(b.perSecond / a.perSecond, 2).padStart(6)}  ${fmt(a.p50, 2)} / ${fmt(b.p50, 2)}`,
        );
      }
    }
    console.log('ratio: postgres.js cycles/s over pg cycles/s in the same rounds (> 1: postgres.js is faster)');
    await pgPool.end();
    await pj.end();
  } finally {
    await database.close();
    await scratch.drop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
