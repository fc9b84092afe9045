// Warm pools on PostgreSQL, warm against cold measured in the same run, interleaved:
//  1. lease-to-ready: from asking for a run's lease to holding an active lease on a ready
//     resource. Warm = the claim statement + activation; cold = the grant (reserve) + the
//     driver's provision + activation. Local workspaces, and containers on dockerd when
//     BERTH_TEST_DOCKER_SOCKET is set (with `true` executed in the resource after, warm vs
//     cold: the run overhead a pool saves). Target: warm p50 <= 10 ms on PostgreSQL.
//  2. claims per second at 16 clients: warm claim + release cycles against cold grant +
//     release cycles (no driver: the database work alone), with statements per cycle.
// Members are made ahead outside the timed sections, as a refill would.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { openDatabase, type Database } from '../src/db/client.js';
import type { DriverEnvironment, EnvironmentDriver } from '../src/drivers/contract.js';
import { dockerDriver } from '../src/drivers/docker/driver.js';
import { localDriver } from '../src/drivers/local/driver.js';
import { resourceLabels } from '../src/heartbeat/run/provision.js';
import { startRuntime } from '../src/heartbeat/runtime.js';
import type { HeartbeatRun } from '../src/domain/types.js';
import { createServices, type Services } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt, percentile, runConcurrent } from './support.js';

const LATENCY_OPS = Number(process.env.BENCH_POOL_OPS ?? 300);
const CONTAINER_OPS = Number(process.env.BENCH_POOL_CONTAINER_OPS ?? 20);
const CONTAINER_RUNS = Number(process.env.BENCH_POOL_RUNS ?? 10);
// A pool keeps at most 1000 idle members (MAX_POOL_MEMBERS): a round's warm side claims one full pool.
const CLAIM_CYCLES = Math.min(1000, Number(process.env.BENCH_POOL_CLAIMS ?? 1000));
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const TARGET_WARM_P50_MS = 10;

/** Statements sent by every pg client of this process (BEGIN/COMMIT included): the op counts printed. */
let pgStatements = 0;
const pgQuery = pg.Client.prototype.query;
pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  pgStatements++;
  return (pgQuery as (...a: unknown[]) => unknown).apply(this, args);
} as typeof pgQuery;

interface Side {
  lat: number[];
  statements: number;
}

/** Fill the pool of `envId` with `n` ready members: reserved, then made by `drv` (or marked ready with no driver). */
async function prefill(s: Services, env: DriverEnvironment, n: number, drv: EnvironmentDriver | null): Promise<void> {
  await s.environments.update(env.companyId, env.id, { pool: { minReady: n, maxReady: n, maxAgeSeconds: 86_400 } });
  for (;;) {
    const got = await s.pools.reserve(env.id, 'bench', { batch: 64 });
    if (got.length === 0) return;
    await Promise.all(
      got.map(async (m) => {
        if (!drv) return void (await s.pools.markReady(m.resourceId, { providerId: null, state: {}, cwd: '/bench', details: {} }));
        const made = await drv.provision(env, { resourceId: m.resourceId, leaseId: null, labels: resourceLabels({ ...m, leaseId: null }) }, new AbortController().signal);
        await s.pools.markReady(m.resourceId, made);
      }),
    );
  }
}

/** One lease-to-ready, warm or cold; returns what the driver must destroy afterwards and the lease to release. */
async function leaseToReady(s: Services, env: DriverEnvironment, drv: EnvironmentDriver, warm: boolean, i: number) {
  const { lease, member } = await s.leases.acquire(env.companyId, { environmentId: env.id, ttlSeconds: 60, idempotencyKey: `${warm ? 'w' : 'c'}-${i}-${Math.random()}` }, undefined, {
    driver: drv.kind,
    reserveResource: true,
    ...(warm ? { warm: true } : {}),
  });
  if (warm && !member) throw new Error('the pool ran dry: a warm claim fell back to cold');
  const made = member
    ? { resourceId: member.resourceId, providerId: member.providerId, state: member.state, cwd: member.cwd, details: member.details }
    : await drv.provision(env, { resourceId: lease.resourceId!, leaseId: lease.id, labels: resourceLabels({ resourceId: lease.resourceId!, leaseId: lease.id, environmentId: env.id, companyId: env.companyId }) }, new AbortController().signal);
  const active = await s.resources.activate(env.companyId, { leaseId: lease.id, fence: lease.fence, resourceId: made.resourceId, ttlSeconds: 60, providerId: made.providerId, state: made.state, details: made.details });
  return { lease: active, made };
}

async function runTrue(drv: EnvironmentDriver, env: DriverEnvironment, made: { resourceId: string; providerId: string | null; state: Record<string, unknown>; cwd: string }): Promise<void> {
  const h = await drv.exec(env, made, { command: 'true', args: [], cwd: made.cwd, env: {} }, new AbortController().signal);
  const exit = await drv.watch(env, h, () => {});
  if (exit.exitCode !== 0) throw new Error(`true exited ${JSON.stringify(exit)}`);
}

async function latencyBench(s: Services, env: DriverEnvironment, drv: EnvironmentDriver, ops: number, withTrue: boolean): Promise<{ warm: Side; cold: Side; warmTrue: number[]; coldTrue: number[] }> {
  const warm: Side = { lat: [], statements: 0 };
  const cold: Side = { lat: [], statements: 0 };
  const warmTrue: number[] = [];
  const coldTrue: number[] = [];
  const perRound = Math.ceil(ops / ROUNDS);
  for (let round = 0; round < ROUNDS; round++) {
    await prefill(s, env, perRound, drv);
    // Interleaved: one warm, one cold, each released (and its resource destroyed) outside the timing.
    for (let i = 0; i < perRound; i++) {
      for (const isWarm of [true, false]) {
        const side = isWarm ? warm : cold;
        const before = pgStatements;
        const t = performance.now();
        const { lease, made } = await leaseToReady(s, env, drv, isWarm, round * perRound + i);
        side.lat.push(performance.now() - t);
        side.statements += pgStatements - before;
        if (withTrue) {
          const t2 = performance.now();
          await runTrue(drv, env, made);
          (isWarm ? warmTrue : coldTrue).push(performance.now() - t2 + side.lat[side.lat.length - 1]!);
        }
        await s.leases.release(env.companyId, lease.id, { fence: lease.fence, status: 'released', cleanupStatus: 'success' });
        await drv.destroy(env, made, new AbortController().signal);
      }
    }
  }
  return { warm, cold, warmTrue, coldTrue };
}

function line(name: string, side: Side): string {
  const lat = [...side.lat].sort((a, b) => a - b);
  return `  ${name.padEnd(6)} ${String(lat.length).padStart(5)} ops  p50 ${fmt(percentile(lat, 50), 2).padStart(7)} ms  p99 ${fmt(percentile(lat, 99), 2).padStart(7)} ms  ${fmt(side.statements / lat.length, 1)} statements/op`;
}
const p50 = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50);

/**
 * Whole runs of `true` through the heartbeat runtime (invoke -> finished: claim, lease, the
 * container, exec, release and its destroy), on a pooled and an unpooled environment of the
 * same engine and image, interleaved; before each run the pool is back to full, so no refill
 * runs during a timed run.
 */
async function runOverhead(s: Services, database: Database, drv: EnvironmentDriver, companyId: string, config: Record<string, unknown>): Promise<{ warm: number[]; cold: number[]; warmFlags: boolean[] }> {
  const finished = new Map<string, (r: HeartbeatRun) => void>();
  const runtime = await startRuntime({
    services: s,
    db: database.db,
    drivers: new Map([[drv.kind, drv]]),
    apiUrl: 'http://127.0.0.1:9',
    localUrl: 'http://127.0.0.1:9',
    poolRefillMs: 50,
    onRunFinished: (r) => finished.get(r.id)?.(r),
    onError: (where, err) => console.error(where, err),
  });
  try {
    const pooled = await s.environments.create(companyId, { name: 'runs-pooled', driver: 'docker', config, pool: { minReady: 1, maxReady: 1 } } as never);
    const plain = await s.environments.create(companyId, { name: 'runs-cold', driver: 'docker', config } as never);
    const agentOn = async (envId: string, name: string) => (await s.agents.create(companyId, { name, adapterType: 'process', adapterConfig: { command: 'true', args: [] }, defaultEnvironmentId: envId, maxConcurrentRuns: 1 })).id;
    const wa = await agentOn(pooled.id, 'true-warm');
    const ca = await agentOn(plain.id, 'true-cold');
    const poolFull = async () => {
      for (;;) {
        const st = (await s.pools.states([pooled.id])).get(pooled.id);
        if (st && st.ready === 1) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const once = async (agentId: string): Promise<{ ms: number; run: HeartbeatRun }> => {
      const t = performance.now();
      let done!: (r: HeartbeatRun) => void;
      const ended = new Promise<HeartbeatRun>((r) => (done = r));
      const run = await s.runs.invoke(companyId, agentId);
      finished.set(run.id, done);
      runtime.poke();
      const r = await ended;
      finished.delete(run.id);
      if (r.status !== 'succeeded') throw new Error(`run ${r.id} ${r.status}: ${r.error}`);
      return { ms: performance.now() - t, run: r };
    };
    const warm: number[] = [];
    const cold: number[] = [];
    const warmFlags: boolean[] = [];
    for (let i = 0; i < CONTAINER_RUNS + 1; i++) {
      await poolFull();
      const w = await once(wa);
      await poolFull();
      const c = await once(ca);
      if (i === 0) continue; // warm-up
      warm.push(w.ms);
      warmFlags.push((w.run.contextSnapshot.paperclipEnvironment as Record<string, unknown>).warm === true);
      cold.push(c.ms);
    }
    await s.environments.update(companyId, pooled.id, { pool: null });
    return { warm, cold, warmFlags };
  } finally {
    await runtime.stop({ graceMs: 0 });
  }
}

async function main(): Promise<void> {
  const scratch = await createScratchDatabase();
  const database: Database = await openDatabase({ databaseUrl: scratch.url, poolSize: 20 });
  const root = mkdtempSync(join(tmpdir(), 'berth-bench-pools-'));
  const s = createServices(database.db);
  try {
    const co = await s.companies.create({ name: 'bench pools' });
    const local = await s.environments.getWithSecrets(co.id, (await s.environments.ensureLocalEnvironment(co.id)).id);
    const ld = localDriver({ workspaceRoot: root });
    // Warm-up (connections, plans).
    await latencyBench(s, local, ld, 30, false);

    console.log(`Warm pools on PostgreSQL: lease-to-ready (acquire -> active lease on a ready resource), warm vs cold, interleaved, ${ROUNDS} rounds\n`);
    console.log('local workspaces (a prepared directory; cold = grant + mkdir + activate):');
    const l = await latencyBench(s, local, ld, LATENCY_OPS, false);
    console.log(line('warm', l.warm));
    console.log(line('cold', l.cold));
    const warmP50 = p50(l.warm.lat);
    console.log(`  cold/warm p50 ${fmt(p50(l.cold.lat) / warmP50, 2)}x`);
    console.log(`  Target: warm p50 <= ${TARGET_WARM_P50_MS} ms. Measured: ${fmt(warmP50, 2)} ms ${warmP50 <= TARGET_WARM_P50_MS ? '(met)' : '(NOT met)'}`);

    const socket = process.env.BERTH_TEST_DOCKER_SOCKET;
    const image = process.env.BERTH_TEST_IMAGE;
    if (socket && image) {
      const dd = dockerDriver();
      try {
        const ct = await s.environments.create(co.id, { name: 'containers', driver: 'docker', config: { endpoint: `unix://${socket}`, image } } as never);
        const env = await s.environments.getWithSecrets(co.id, ct.id);
        await latencyBench(s, env, dd, 4, false);
        console.log(`\ncontainers on dockerd (${image}; cold = grant + create/start container + activate), then \`true\` executed in it:`);
        const c = await latencyBench(s, env, dd, CONTAINER_OPS, true);
        console.log(line('warm', c.warm));
        console.log(line('cold', c.cold));
        console.log(`  cold/warm p50 ${fmt(p50(c.cold.lat) / p50(c.warm.lat), 1)}x`);
        console.log(`  lease-to-ready + \`true\` in it: warm p50 ${fmt(p50(c.warmTrue), 1)} ms, cold p50 ${fmt(p50(c.coldTrue), 1)} ms (cold/warm ${fmt(p50(c.coldTrue) / p50(c.warmTrue), 2)}x)`);
        const r = await runOverhead(s, database, dd, co.id, { endpoint: `unix://${socket}`, image });
        const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
        console.log(`\nruns of \`true\` in containers through the runtime (invoke -> finished), ${r.warm.length} each, interleaved:`);
        console.log(`  warm   p50 ${fmt(p50(r.warm), 1).padStart(7)} ms  p99 ${fmt(percentile(sorted(r.warm), 99), 1).padStart(7)} ms  (${r.warmFlags.filter(Boolean).length} of ${r.warm.length} warm)`);
        console.log(`  cold   p50 ${fmt(p50(r.cold), 1).padStart(7)} ms  p99 ${fmt(percentile(sorted(r.cold), 99), 1).padStart(7)} ms`);
        console.log(`  cold/warm p50 ${fmt(p50(r.cold) / p50(r.warm), 2)}x; a warm run saves ${fmt(p50(r.cold) - p50(r.warm), 0)} ms at p50`);
        console.log('  (a warm run claims its container and wakes the refill, which makes the replacement on the same engine while the run executes; a cold run has no refill beside it)');
      } finally {
        dd.close?.();
      }
    } else {
      console.log('\ncontainers: not measured (BERTH_TEST_DOCKER_SOCKET and BERTH_TEST_IMAGE unset: no engine given)');
    }

    // Claims per second: 16 clients, the database work alone (members marked ready with no driver).
    console.log(`\nclaims per second, 16 clients, ${CLAIM_CYCLES} cycles per side per round (cycle = acquire + release, no driver):`);
    const bare = await s.environments.create(co.id, { name: 'bare', driver: 'ssh', config: { host: 'bench.invalid', username: 'u', remoteWorkspacePath: '/w', strictHostKeyChecking: false } });
    const env = await s.environments.getWithSecrets(co.id, bare.id);
    let n = 0;
    const cycle = (warm: boolean, sides: { ok: number; cold: number }) => async () => {
      const r = await s.leases.acquire(co.id, { environmentId: env.id, ttlSeconds: 60, idempotencyKey: `q-${n++}` }, undefined, { driver: 'ssh', reserveResource: true, ...(warm ? { warm: true } : {}) });
      if (warm && !r.warm) sides.cold++;
      else sides.ok++;
      await s.leases.release(co.id, r.lease.id, { fence: r.lease.fence, status: 'released', cleanupStatus: 'success' });
    };
    const results = { warm: [] as number[], cold: [] as number[], warmSt: 0, coldSt: 0, fellBack: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      await prefill(s, env, CLAIM_CYCLES, null);
      for (const warm of [true, false]) {
        const sides = { ok: 0, cold: 0 };
        const before = pgStatements;
        const st = await runConcurrent(CLAIM_CYCLES, 16, cycle(warm, sides));
        (warm ? results.warm : results.cold).push(st.perSecond);
        if (warm) {
          results.warmSt += pgStatements - before;
          results.fellBack += sides.cold;
        } else results.coldSt += pgStatements - before;
      }
      await s.environments.update(co.id, env.id, { pool: null });
    }
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    console.log(`  warm claim + release: ${fmt(med(results.warm), 0).padStart(6)} cycles/s (median of ${ROUNDS}: ${results.warm.map((x) => fmt(x, 0)).join(', ')})  ${fmt(results.warmSt / (CLAIM_CYCLES * ROUNDS), 1)} statements/cycle${results.fellBack ? `, ${results.fellBack} fell back to cold` : ''}`);
    console.log(`  cold grant + release: ${fmt(med(results.cold), 0).padStart(6)} cycles/s (median of ${ROUNDS}: ${results.cold.map((x) => fmt(x, 0)).join(', ')})  ${fmt(results.coldSt / (CLAIM_CYCLES * ROUNDS), 1)} statements/cycle`);
    console.log(`  warm/cold ${fmt(med(results.warm) / med(results.cold), 2)}`);
  } finally {
    await database.close();
    await scratch.drop();
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
