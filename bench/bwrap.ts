// Per-run overhead of bubblewrap isolation on local runs: a heartbeat run of `true` in a
// local environment with `isolation: "bubblewrap"` (network host, and network none with
// its relay to the server) against the same run with no isolation and against a bare
// spawn of `true`, all four measured in this run, interleaved so each sees the same
// machine, on PostgreSQL. Also a bare `bwrap ... true` without Berth, to show what the
// sandbox itself costs. Target: bubblewrap adds at most +10 ms p50 over the un-isolated run.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDatabase } from '../src/db/client.js';
import { localDriver } from '../src/drivers/local/driver.js';
import { sandboxArgs } from '../src/drivers/local/bwrap.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt, percentile, spawnTrue, startBenchRuntime } from './support.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 100);
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-bench-bwrap-'));

/** `bwrap <the sandbox Berth makes> true`, spawned directly: the sandbox's own cost. */
function spawnBwrapTrue(cwd: string): Promise<number> {
  const args = sandboxArgs({ isolation: 'bubblewrap', network: 'host' }, cwd, 'true', []);
  const t = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn('bwrap', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(performance.now() - t) : reject(new Error(`bwrap true exited ${code}`))));
  });
}

const scratch = await createScratchDatabase();
const database = await openDatabase({ databaseUrl: scratch.url, poolSize: 16 });
try {
  const s = createServices(database.db);
  const local = localDriver({ workspaceRoot });
  const bench = await startBenchRuntime({ services: s, db: database.db, drivers: new Map([['local', local]]) });
  // One local environment per company: one company per variant.
  const variant = async (name: string, config: Record<string, unknown>) => {
    const company = await s.companies.create({ name: `bench bwrap ${name}` });
    const env = await s.environments.create(company.id, { name, driver: 'local', config } as never);
    const agent = await s.agents.create(company.id, { name: `true-${name}`, adapterType: 'process', adapterConfig: { command: 'true', args: [] }, defaultEnvironmentId: env.id });
    return { name, run: () => bench.runOnce(company.id, agent.id), ms: [] as number[] };
  };
  const variants = [
    await variant('none', {}),
    await variant('bwrap-host', { isolation: 'bubblewrap', network: 'host' }),
    await variant('bwrap-none', { isolation: 'bubblewrap', network: 'none' }),
  ];
  const bare: number[] = [];
  const bareBwrap: number[] = [];
  const once = async (record: boolean) => {
    for (const v of variants) {
      const r = await v.run();
      if (r.run.status !== 'succeeded') throw new Error(`${v.name}: run ${r.run.id} ${r.run.status}: ${r.run.error} (${r.run.errorCode})`);
      if (record) v.ms.push(r.ms);
    }
    const a = await spawnTrue();
    const b = await spawnBwrapTrue(workspaceRoot);
    if (record) bare.push(a), bareBwrap.push(b);
  };
  for (let i = 0; i < 10; i++) await once(false);
  for (let i = 0; i < RUNS; i++) await once(true);
  await bench.runtime.stop({ graceMs: 0 });
  local.close?.();

  const sorted = (xs: number[]) => [...xs].sort((x, y) => x - y);
  const p = (xs: number[], q: number) => percentile(sorted(xs), q);
  const line = (label: string, xs: number[]) => `${label.padEnd(34)} p50 ${fmt(p(xs, 50)).padStart(6)} ms  p95 ${fmt(p(xs, 95)).padStart(6)} ms`;
  console.log(`${RUNS} of each, interleaved (PostgreSQL, after 10 warm-up rounds; load average ${loadavg().map((l) => fmt(l, 2)).join(' ')}):`);
  console.log(line('bare spawn of `true`', bare));
  console.log(line('bare `bwrap <sandbox> true`', bareBwrap));
  const base = variants[0]!;
  console.log(line('berth run, local, isolation none', base.ms));
  for (const v of variants.slice(1)) {
    const d50 = p(v.ms, 50) - p(base.ms, 50);
    const d95 = p(v.ms, 95) - p(base.ms, 95);
    console.log(
      `${line(`berth run, local, ${v.name}`, v.ms)}  | vs isolation none: +${fmt(d50)} ms p50 (x${fmt(p(v.ms, 50) / p(base.ms, 50), 2)}), +${fmt(d95)} ms p95` +
        ` | target <= +10 ms p50: ${d50 <= 10 ? 'met' : 'NOT met'}`,
    );
  }
  console.log(`berth overhead without isolation: +${fmt(p(base.ms, 50) - p(bare, 50))} ms p50 over a bare spawn; the sandbox alone: +${fmt(p(bareBwrap, 50) - p(bare, 50))} ms p50`);
} finally {
  await database.close();
  await scratch.drop();
  rmSync(workspaceRoot, { recursive: true, force: true });
}
