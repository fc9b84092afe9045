// Overhead of one heartbeat run of a trivial process (`true`) against spawning the
// same process directly, both measured in this run, on PGlite and PostgreSQL; then
// runs per second with 8 runs in flight. On PostgreSQL also: how long a run queued through
// one server waits before another server claims it (wake-ups against pure polling), and
// how many transactions an idle server commits per second (the same two ways).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import pg from 'pg';
import { openDatabase, queryRows, type Database } from '../src/db/client.js';
import type { HeartbeatRun } from '../src/domain/types.js';
import { startRuntime } from '../src/heartbeat/runtime.js';
import { localDriver } from '../src/drivers/local/driver.js';
import { createServices } from '../src/services/index.js';
import { adminUrl, createScratchDatabase } from '../test/support/db.js';
import { fmt, percentile, spawnTrue, startBenchRuntime } from './support.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 200);
const CLAIM_RUNS = Number(process.env.BENCH_CLAIM_RUNS ?? 100);
const IDLE_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 20);
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-bench-ws-'));

/** Each phase's observed total seconds and count so far (berth_run_phase_duration_seconds, and watch from its own metric if any). */
async function phaseTotals(s: ReturnType<typeof createServices>): Promise<Map<string, { sum: number; count: number }>> {
  const out = new Map<string, { sum: number; count: number }>();
  const metric = s.metrics.registry.getSingleMetric('berth_run_phase_duration_seconds');
  if (!metric) return out;
  for (const v of (await metric.get()).values) {
    const ph = String(v.labels.phase ?? '');
    const cur = out.get(ph) ?? { sum: 0, count: 0 };
    const named = (v as { metricName?: string }).metricName ?? '';
    if (named.endsWith('_sum')) cur.sum = v.value;
    else if (named.endsWith('_count')) cur.count = v.value;
    out.set(ph, cur);
  }
  return out;
}

/**
 * Transactions committed in this database so far (PostgreSQL only: pg_stat_database). Each
 * backend reports its counts late (PostgreSQL 15 flushes an idle backend's statistics within
 * 10 s), so this waits 11 s first: the counts before and after the runs are then complete.
 */
async function commits(database: Database): Promise<number | null> {
  if (database.kind !== 'postgres') return null;
  await new Promise((r) => setTimeout(r, 11_000));
  const [row] = await queryRows<{ n: string }>(database.db, sql`SELECT pg_stat_clear_snapshot(), (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS n`);
  return Number(row?.n ?? 0);
}

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
  const phasesBefore = await phaseTotals(s);
  const commitsBefore = await commits(database);
  for (let i = 0; i < RUNS; i++) {
    // Interleaved, so both see the same machine.
    const r = await runOnce(agent.id);
    if (r.run.status !== 'succeeded') throw new Error(`run ${r.run.id} ${r.run.status}: ${r.run.error}`);
    berth.push(r.ms);
    direct.push(await spawnTrue());
  }
  const commitsAfter = await commits(database);
  const phasesAfter = await phaseTotals(s);
  berth.sort((a, b) => a - b);
  direct.sort((a, b) => a - b);
  const p = (xs: number[], q: number) => percentile(xs, q);
  console.log(
    `${name.padEnd(8)} ${RUNS} runs of \`true\`: berth p50 ${fmt(p(berth, 50))} ms p99 ${fmt(p(berth, 99))} ms | direct spawn p50 ${fmt(p(direct, 50))} ms p99 ${fmt(p(direct, 99))} ms` +
      ` | overhead p50 ${fmt(p(berth, 50) - p(direct, 50))} ms p99 ${fmt(p(berth, 99) - p(direct, 99))} ms (target p50 <= 5 ms)`,
  );

  // Where a run's time goes: the mean of each of Berth's phases (the runtime's own histogram)
  // over these runs, and the transactions the database committed per run (PostgreSQL's
  // counter for the whole database: the idle server's own commits, about 1.5/s over the 11 s
  // wait and the runs, included).
  const phaseMs = (ph: string) => {
    const a = phasesAfter.get(ph) ?? { sum: 0, count: 0 };
    const b = phasesBefore.get(ph) ?? { sum: 0, count: 0 };
    return a.count > b.count ? ((a.sum - b.sum) / (a.count - b.count)) * 1000 : 0;
  };
  const phases = ['place', 'provision', 'start', 'watch', 'finish'].filter((ph) => phasesAfter.has(ph));
  console.log(
    `${name.padEnd(8)} per run (mean of ${RUNS}): ${phases.map((ph) => `${ph} ${fmt(phaseMs(ph))} ms`).join(', ')}` +
      (commitsBefore !== null && commitsAfter !== null ? ` | ${fmt((commitsAfter - commitsBefore) / RUNS)} commits per run (${commitsAfter - commitsBefore} in ${RUNS} runs, pg_stat_database)` : ''),
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
  console.log(`${name.padEnd(8)} ${total} runs, 8 in flight: ${fmt(total / seconds)} runs/s (target >= ${name === 'postgres' ? 200 : 100})`);
  await runtime.stop({ graceMs: 0 });
}

/**
 * Server A (claims nothing) queues runs; server B, a database handle of its own on the
 * same PostgreSQL, claims them. Each run's wait is its startedAt (B's claim) minus its
 * createdAt (A's invoke), both the database's clock. With wake-ups, B claims on A's
 * NOTIFY; without, at its 200 ms poll.
 */
async function benchCrossServerClaim(wakeups: boolean): Promise<void> {
  const scratch = await createScratchDatabase();
  const dbA = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  const dbB = await openDatabase({ databaseUrl: scratch.url, poolSize: 8 });
  const waiting = new Map<string, (run: HeartbeatRun) => void>();
  const common = { apiUrl: 'http://127.0.0.1:9', onError: (where: string, err: unknown) => console.error(where, err) };
  const a = createServices(dbA.db);
  const serverA = await startRuntime({ ...common, services: a, db: dbA.db, heartbeatDb: dbA.heartbeatDb, maxConcurrentRuns: 0 });
  const serverB = await startRuntime({
    ...common,
    services: createServices(dbB.db),
    db: dbB.db,
    heartbeatDb: dbB.heartbeatDb,
    drivers: new Map([['local', localDriver({ workspaceRoot })]]),
    ...(wakeups ? { listen: dbB.listen } : {}),
    onRunFinished: (run) => waiting.get(run.id)?.(run),
  });
  try {
    const company = await a.companies.create({ name: 'bench claim' });
    const agent = await a.agents.create(company.id, { name: 'true', adapterType: 'process', adapterConfig: { command: 'true', args: [] } });
    const waits: number[] = [];
    for (let i = 0; i < CLAIM_RUNS + 5; i++) {
      let done!: (run: HeartbeatRun) => void;
      const finished = new Promise<HeartbeatRun>((resolve) => (done = resolve));
      // A pause of random length between runs, so invokes do not fall in step with B's poll.
      await new Promise((r) => setTimeout(r, Math.random() * 200));
      const run = await a.runs.invoke(company.id, agent.id);
      waiting.set(run.id, done);
      const end = await finished;
      waiting.delete(run.id);
      if (end.serverId !== serverB.serverId || !end.startedAt) throw new Error(`run ${end.id} was not claimed by server B`);
      if (i >= 5) waits.push(end.startedAt.getTime() - run.createdAt.getTime());
    }
    waits.sort((x, y) => x - y);
    console.log(
      `postgres claim by another server, ${wakeups ? 'wake-ups (LISTEN/NOTIFY)' : 'polling only (200 ms)'}: ${waits.length} runs invoked via A, claimed by B:` +
        ` invoke->claimed p50 ${fmt(percentile(waits, 50))} ms p99 ${fmt(percentile(waits, 99))} ms${wakeups ? ' (target p50 <= 20 ms)' : ' (baseline)'}`,
    );
  } finally {
    await serverA.stop({ graceMs: 0 });
    await serverB.stop({ graceMs: 0 });
    await dbA.close();
    await dbB.close();
    await scratch.drop();
  }
}

/**
 * Transactions one idle server (no runs, no leases) commits per second: xact_commit of a
 * database only it uses, read from another database. A backend reports its counts when it
 * has been idle a while or disconnects, so the server first idles past the pool's 10 s
 * idle timeout: its start-up connections have gone and reported.
 */
async function benchIdleCommits(wakeups: boolean): Promise<void> {
  const scratch = await createScratchDatabase();
  const name = new URL(scratch.url).pathname.slice(1);
  const database = await openDatabase({ databaseUrl: scratch.url });
  const runtime = await startRuntime({
    services: createServices(database.db),
    db: database.db,
    heartbeatDb: database.heartbeatDb,
    ...(wakeups ? { listen: database.listen } : {}),
    apiUrl: 'http://127.0.0.1:9',
    onError: (where, err) => console.error(where, err),
  });
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  const commits = async () => Number((await admin.query('SELECT xact_commit FROM pg_stat_database WHERE datname = $1', [name])).rows[0].xact_commit);
  try {
    await new Promise((r) => setTimeout(r, 15_000));
    const before = await commits();
    const t = performance.now();
    await new Promise((r) => setTimeout(r, IDLE_SECONDS * 1000));
    const n = (await commits()) - before;
    const seconds = (performance.now() - t) / 1000;
    console.log(
      `postgres idle server, ${wakeups ? 'wake-ups, claim poll 2 s backstop' : 'polling only (claim every 200 ms)'}: ${n} commits in ${fmt(seconds)} s = ${fmt(n / seconds, 2)}/s` +
        `${wakeups ? ' (target <= 1/s)' : ' (baseline)'}`,
    );
  } finally {
    await admin.end();
    await runtime.stop({ graceMs: 0 });
    await database.close();
    await scratch.drop();
  }
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
  for (const wakeups of [true, false]) await benchCrossServerClaim(wakeups);
  for (const wakeups of [true, false]) await benchIdleCommits(wakeups);
  const lite = await openDatabase({ databaseUrl: '', dataDir: 'memory://' });
  await benchBackend('pglite', lite);
  await lite.close();
} finally {
  rmSync(workspaceRoot, { recursive: true, force: true });
}
