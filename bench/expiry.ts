// Expiry under a burst: N leases (default 10,000) fall due at the same second, and the
// sweep (expireAllDue: batches of 2,000 until none is due, one activity row each) ends them
// all. Measured on PostgreSQL against a floor in the same run: one bare UPDATE of the same
// rows' status in a copy of the table, with no activity rows. Prints the sweep's time, the
// latest lease's lateness (released_at - expires_at, the database's clock) with the sweep
// interval of 1 s added as the worst case, and the ratio to the floor.
import pg from 'pg';
import { openDatabase } from '../src/db/client.js';
import { expireAllDue } from '../src/heartbeat/runtime.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt } from './support.js';

const N = Number(process.env.BENCH_EXPIRY_LEASES ?? 10_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SWEEP_MS = 1000;

export async function expiryBench(): Promise<void> {
  const scratch = await createScratchDatabase();
  const database = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  const raw = new pg.Pool({ connectionString: scratch.url, max: 2 });
  try {
    const s = createServices(database.db);
    const company = await s.companies.create({ name: 'expiry bench' });
    const env = await s.environments.create(company.id, { name: 'burst', driver: 'sandbox', config: { provider: 'bench' } });
    await raw.query('CREATE TABLE bench_expiry_floor (LIKE environment_leases INCLUDING DEFAULTS INCLUDING INDEXES)');
    console.log(`\nExpiry: ${N.toLocaleString('en')} leases due at the same instant (half owe a driver cleanup), ${ROUNDS} rounds, PostgreSQL`);
    for (let round = 1; round <= ROUNDS; round++) {
      // Both tables get the same N active leases, due 1 s from now.
      for (const table of ['environment_leases', 'bench_expiry_floor']) {
        await raw.query(
          `INSERT INTO ${table} (company_id, environment_id, status, lease_policy, driver, fence, expires_at, metadata)
           SELECT $1, $2, 'active', 'ephemeral', CASE WHEN g % 2 = 0 THEN 'local' END, nextval('environment_lease_fence_seq'),
                  now() + interval '1 second', '{}'::jsonb
           FROM generate_series(1, $3) g`,
          [company.id, env.id, N],
        );
      }
      await new Promise((r) => setTimeout(r, 1200));

      let t = performance.now();
      await raw.query(`UPDATE bench_expiry_floor SET status = 'expired', released_at = now() WHERE status = 'active' AND expires_at <= now()`);
      const floorMs = performance.now() - t;

      const started = ((await raw.query(`SELECT clock_timestamp() AS started`)).rows[0] as { started: Date }).started;
      t = performance.now();
      const expired = await expireAllDue(s, 60_000);
      const sweepMs = performance.now() - t;
      // The sweep's own span by the database's clock: from its start to the last lease it ended.
      const [span] = (await raw.query(
        `SELECT count(*)::int AS n, extract(epoch FROM max(released_at) - $2::timestamptz) * 1000 AS ms
         FROM environment_leases WHERE status = 'expired' AND company_id = $1 AND released_at >= $2::timestamptz`,
        [company.id, started],
      )).rows as Array<{ n: number; ms: number }>;
      const bound = SWEEP_MS + Number(span!.ms);
      console.log(
        `  round ${round}: ${expired.toLocaleString('en')} leases expired (${span!.n.toLocaleString('en')} rows, one activity row each) in ${fmt(sweepMs)} ms` +
          ` | floor (bare UPDATE, no audit) ${fmt(floorMs)} ms | ratio ${fmt(sweepMs / floorMs, 2)}x` +
          ` | worst lateness = sweep interval ${SWEEP_MS} ms + ${fmt(Number(span!.ms))} ms = ${fmt(bound)} ms (target <= 2000: ${bound <= 2000 ? 'met' : 'NOT met'})`,
      );
      await raw.query(`DELETE FROM environment_leases WHERE company_id = $1`, [company.id]);
      await raw.query(`DELETE FROM bench_expiry_floor`);
    }
  } finally {
    await raw.end();
    await database.close();
    await scratch.drop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await expiryBench();
