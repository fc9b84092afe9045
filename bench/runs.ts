// Overhead of one heartbeat run of a trivial process (`true`) against spawning the
// same process directly, both measured in this run, on PGlite and PostgreSQL; then
// runs per second with 8 runs in flight.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDatabase, type Database } from '../src/db/client.js';
import { localDriver } from '../src/drivers/local/driver.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt, percentile, spawnTrue, startBenchRuntime } from './support.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 200);
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-bench-ws-'));

async function benchBackend(name: string, database: Database): Promise<void> {
  const s = createServices(database.db);
  const bench = await startBenchRuntime({ services: s, db: database.db, drivers: new Map([['local', localDriver({ workspaceRoot })]]) });
  const { runtime } = bench;
  const company = await s.companies.create({ name: `bench ${name}` });
  const agent = await s.agents.create(company.id, { name: 'true', adapterType: 'process', adapterConfig: { command: 'true', args: [] } });
  const runOnce = (agentId: string) => bench.runOnce(company.id, agentId);
  for (let i = 0; i < 10; i++) {
    await runOnce(agent.id);
    await spawnTrue();
  }
  const berth: number[] = [];
  const direct: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    // Interleaved, so both see the same machine.
    const r = await runOnce(agent.id);
    if (r.run.status !== 'succeeded') throw new Error(`run ${r.run.id} ${r.run.status}: ${r.run.error}`);
    berth.push(r.ms);
    direct.push(await spawnTrue());
  }
  berth.sort((a, b) => a - b);
  direct.sort((a, b) => a - b);
  const p = (xs: number[], q: number) => percentile(xs, q);
  console.log(
    `${name.padEnd(8)} ${RUNS} runs of \`true\`: berth p50 ${fmt(p(berth, 50))} ms p99 ${fmt(p(berth, 99))} ms | direct spawn p50 ${fmt(p(direct, 50))} ms p99 ${fmt(p(direct, 99))} ms` +
      ` | overhead p50 ${fmt(p(berth, 50) - p(direct, 50))} ms p99 ${fmt(p(berth, 99) - p(direct, 99))} ms (target p50 <= 15 ms on PostgreSQL)`,
  );

  // Throughput: 8 agents, 8 runs in flight at all times.
  const eight = await Promise.all(
    Array.from({ length: 8 }, (_, i) => s.agents.create(company.id, { name: `true-${i}`, adapterType: 'process', adapterConfig: { command: 'true', args: [] } })),
  );
  const total = Math.max(RUNS, 160);
  let next = 0;
  const started = performance.now();
  await Promise.all(
    eight.map(async (a) => {
      while (next++ < total) await runOnce(a.id);
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  console.log(`${name.padEnd(8)} ${total} runs, 8 in flight: ${fmt(total / seconds)} runs/s (target >= 100)`);
  await runtime.stop({ graceMs: 0 });
}

try {
  const scratch = await createScratchDatabase();
  const pgDb = await openDatabase({ databaseUrl: scratch.url, poolSize: 16 });
  try {
    await benchBackend('postgres', pgDb);
  } finally {
    await pgDb.close();
    await scratch.drop();
  }
  const lite = await openDatabase({ databaseUrl: '', dataDir: 'memory://' });
  await benchBackend('pglite', lite);
  await lite.close();
} finally {
  rmSync(workspaceRoot, { recursive: true, force: true });
}
