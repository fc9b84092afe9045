// A run whose finalization fails does not stay `running` forever (issue point 14): the
// database (a throwaway cluster of this test's own) stops while runs end and starts again;
// every run still ends in a terminal status, with its lease released and no slot held.
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openDatabase, queryRows, type Database } from '../../src/db/client.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { createServices, type Services } from '../../src/services/index.js';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { waitFor } from '../support/wait.js';

let cluster: PgCluster;
let database: Database;
let services: Services;
let runtime: Runtime;
const errors: string[] = [];

beforeAll(async () => {
  cluster = await startPgCluster('berth-restart-');
  database = await openDatabase({ databaseUrl: cluster.url, poolSize: 6 });
  services = createServices(database.db);
  runtime = await startRuntime({
    services,
    db: database.db,
    heartbeatDb: database.heartbeatDb,
    apiUrl: 'http://127.0.0.1:9',
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 200,
    // While the database is away, recovery must not take this live server's runs for lost.
    staleSeconds: 30,
    // The database is away on purpose: these are the errors this test provokes.
    onError: (where, err) => void errors.push(`${where}: ${(err as Error).message}`),
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  // Hangs (the hook times out) if the outage leaked a pool connection: a BEGIN that failed
  // once left its client checked out forever.
  await database?.close();
  cluster?.destroy();
});

it('the database stops for 3 s while 6 runs end: every run ends terminal within 60 s of its return, its lease released', async () => {
  const co = await services.companies.create({ name: 'Restart Co' });
  const agents = await Promise.all(
    [0, 1, 2, 3, 4, 5].map((i) =>
      services.agents.create(co.id, { name: `a${i}`, adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', `sleep ${1 + i * 0.2}; echo done`] } }),
    ),
  );
  const runs = await Promise.all(agents.map((a) => services.runs.invoke(co.id, a.id)));
  runtime.poke();
  await waitFor('every run to start', async () => {
    const all = await Promise.all(runs.map((r) => services.runs.get(co.id, r.id)));
    return all.every((r) => r.status === 'running' && r.leaseId);
  }, 30_000);

  cluster.stop(); // the runs end (1 s to 2 s) while it is down
  await new Promise((r) => setTimeout(r, 3_000));
  cluster.start();

  const ended = await waitFor('every run to be finalized', async () => {
    const all = await Promise.all(runs.map((r) => services.runs.get(co.id, r.id).catch(() => null)));
    return all.every((r) => r && r.finishedAt) ? all : null;
  }, 60_000, 200);
  for (const r of ended) {
    expect(['succeeded', 'failed']).toContain(r!.status);
    const lease = await services.leases.get(co.id, r!.leaseId!);
    expect(lease.status).not.toBe('active');
  }
  const [slots] = await queryRows<{ n: number }>(database.db, sql`SELECT coalesce(sum(running_count), 0)::int AS n FROM agents WHERE company_id = ${co.id}`);
  expect(Number(slots!.n)).toBe(0);
  // The outage was seen by the runtime (the errors this test provokes).
  expect(errors.length).toBeGreaterThan(0);
});
