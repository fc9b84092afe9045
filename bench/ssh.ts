// Per-run cost of a trivial command (`true`) over SSH against Local, interleaved in one
// run on PostgreSQL: Berth runs on Local, on SSH with the pooled connection and on SSH
// with a fresh connection per use, beside the floors measured the same way: spawning
// `true` here, and exec of `true` over ssh2 on an open connection and on a fresh one
// (what the remote sshd and login shell cost, whoever asks). Then the SSH driver's own
// operations without the server: one run's provision + exec + watch + destroy, watch's
// throughput into a sink that awaits each chunk (its read-ahead stays one chunk), and
// how long another driver (another server) takes to adopt a running execution from its
// handle and offset. The sshd is the tests' private one on 127.0.0.1, with a lean login
// (no ~/.bashrc: this machine's root .bashrc costs ~100 ms per command);
// BENCH_SSH_SHELL=login keeps the full login. BENCH_SSH_DRIVER_ONLY=1: the driver's part alone.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import { openDatabase } from '../src/db/client.js';
import { localDriver } from '../src/drivers/local/driver.js';
import { execCollect, SshPool, type SshTarget } from '../src/drivers/ssh/pool.js';
import { sshDriver } from '../src/drivers/ssh/driver.js';
import { sshDescriptor } from '../src/drivers/ssh/descriptor.js';
import type { DriverEnvironment, EnvironmentDriver } from '../src/drivers/contract.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { startTestSshd } from '../test/support/sshd.js';
import { fmt, percentile, spawnTrue, startBenchRuntime } from './support.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 200);
process.env.BERTH_SECRET_KEY ??= randomBytes(32).toString('hex');
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-bench-ssh-'));

const login = process.env.BENCH_SSH_SHELL === 'login';
const sshd = await startTestSshd({ leanShell: !login });
const scratch = await createScratchDatabase();
const database = await openDatabase({ databaseUrl: scratch.url, poolSize: 16 });
const pooled = sshDriver();
const unpooled = sshDriver({ pooled: false });
// One runtime, one `ssh` driver name: environments whose metadata says `pooled: false`
// go through the unpooled driver.
const pick = (env: DriverEnvironment | null) => (env?.metadata.pooled === false ? unpooled : pooled);
const sshSwitch: EnvironmentDriver = {
  ...sshDescriptor,
  probe: (env, signal) => pick(env).probe(env, signal),
  connect: async (env, signal) => pick(env).connect?.(env, signal),
  provision: (env, req, signal) => pick(env).provision(env, req, signal),
  exec: (env, resource, spec, signal) => pick(env).exec(env, resource, spec, signal),
  watch: (env, exe, sink, o) => pick(env).watch(env, exe, sink, o),
  signal: (env, exe, sig) => pick(env).signal(env, exe, sig),
  destroy: (env, resource, signal) => pick(env).destroy(env, resource, signal),
  list: (env, signal) => pick(env).list!(env, signal),
  callbackUrl: (env, server, resource) => pick(env).callbackUrl!(env, server, resource),
};
const target: SshTarget = { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: sshd.privateKey, knownHosts: sshd.knownHosts, strictHostKeyChecking: true };
const live = new AbortController().signal;

/** The driver alone, no server or database: what its operations cost and carry. */
async function driverBench(): Promise<void> {
  const now = new Date();
  const driverEnv = (metadata: Record<string, unknown>): DriverEnvironment => ({
    id: randomUUID(),
    companyId: randomUUID(),
    name: 'bench',
    description: null,
    driver: 'ssh',
    status: 'active',
    config: {},
    envVars: {},
    metadata,
    capacity: null,
    lastProbe: null,
    createdAt: now,
    updatedAt: now,
    secretConfig: { ...target, remoteWorkspacePath: join(workspaceRoot, 'driver') },
  });
  const envs = { pooled: driverEnv({}), unpooled: driverEnv({ pooled: false }) };
  const oneRun = async (env: DriverEnvironment): Promise<number> => {
    const d = pick(env);
    const t = performance.now();
    const res = await d.provision(env, { resourceId: randomUUID(), leaseId: null, labels: {} }, live);
    const h = await d.exec(env, res, { command: 'true', args: [], cwd: res.cwd, env: {} }, live);
    const exit = await d.watch(env, h, () => {});
    if (exit.exitCode !== 0) throw new Error(`true exited ${JSON.stringify(exit)}`);
    await d.destroy(env, res, live);
    return performance.now() - t;
  };
  const rounds = Math.max(20, Math.round(RUNS / 4));
  const samples = { pooled: [] as number[], unpooled: [] as number[] };
  for (let i = 0; i < 5; i++) for (const e of Object.values(envs)) await oneRun(e);
  for (let i = 0; i < rounds; i++) for (const [k, e] of Object.entries(envs)) samples[k as keyof typeof samples].push(await oneRun(e));
  for (const xs of Object.values(samples)) xs.sort((a, b) => a - b);
  console.log(`SSH driver alone, ${rounds} rounds of provision + exec + watch + destroy of \`true\` (4 remote commands):`);
  for (const [k, xs] of Object.entries(samples)) console.log(`  ${k.padEnd(9)} p50 ${fmt(percentile(xs, 50))} ms  p99 ${fmt(percentile(xs, 99))} ms`);

  // Throughput of watch into a sink that awaits every chunk (a log writer would).
  const env = envs.pooled;
  const res = await pooled.provision(env, { resourceId: randomUUID(), leaseId: null, labels: {} }, live);
  const mb = Number(process.env.BENCH_SSH_WATCH_MB ?? 64);
  const h = await pooled.exec(env, res, { command: 'sh', args: ['-c', `head -c ${mb * 1024 * 1024} /dev/zero | tr '\\0' x`], cwd: res.cwd, env: {} }, live);
  let delivered = 0;
  let maxAhead = 0;
  const before = pooled.stats.watchBytesRead;
  const t = performance.now();
  await pooled.watch(env, h, async (_s, text) => {
    maxAhead = Math.max(maxAhead, pooled.stats.watchBytesRead - before - delivered);
    delivered += text.length;
    await new Promise((r) => setImmediate(r));
  });
  const s = (performance.now() - t) / 1000;
  console.log(`  watch: ${mb} MiB in ${fmt(s, 2)} s = ${fmt(mb / s)} MiB/s into an awaiting sink; most read ahead of it: ${maxAhead} bytes`);

  // Adoption: a fresh driver (another server, no connection yet) picks up an execution
  // that ended while nobody watched, from the offset the first watch reported.
  const adopt: number[] = [];
  for (let i = 0; i < 10; i++) {
    const r = await pooled.provision(env, { resourceId: randomUUID(), leaseId: null, labels: {} }, live);
    const running = await pooled.exec(env, r, { command: 'sh', args: ['-c', 'echo one; sleep 0.2; echo two'], cwd: r.cwd, env: {} }, live);
    let offset = '';
    const first = new AbortController();
    await pooled.watch(env, running, () => first.abort(), { onOffset: (o) => (offset = o), signal: first.signal }).catch(() => {});
    const exitFile = join(String(running.ref.dir), 'exit'); // the bench's sshd is this machine
    while (!existsSync(exitFile)) await new Promise((res) => setTimeout(res, 20));
    const other = sshDriver();
    const t0 = performance.now();
    let rest = '';
    const end = await other.watch(env, running, (_s, text) => void (rest += text), { from: offset });
    adopt.push(performance.now() - t0);
    other.close();
    if (end.exitCode !== 0 || rest !== 'two\n') throw new Error(`adopted run ended ${JSON.stringify(end)} with ${JSON.stringify(rest)}`);
    await pooled.destroy(env, r, live);
  }
  adopt.sort((a, b) => a - b);
  console.log(`  adoption by a fresh driver (connect + watch from the offset to the recorded exit): p50 ${fmt(percentile(adopt, 50))} ms  max ${fmt(adopt.at(-1)!)} ms`);
  await pooled.destroy(env, res, live);
}

/** Everything the bench opened, closed again. */
async function tearDown(): Promise<void> {
  pooled.close();
  unpooled.close();
  await database.close();
  await scratch.drop();
  await sshd.stop();
  rmSync(workspaceRoot, { recursive: true, force: true });
}

if (process.env.BENCH_SSH_DRIVER_ONLY === '1') {
  try {
    await driverBench();
  } finally {
    await tearDown();
  }
  process.exit(0);
}

try {
  const s = createServices(database.db);
  const bench = await startBenchRuntime({
    services: s,
    db: database.db,
    drivers: new Map([
      ['local', localDriver({ workspaceRoot: join(workspaceRoot, 'local') })],
      ['ssh', sshSwitch],
    ]),
  });
  const { runtime } = bench;
  const company = await s.companies.create({ name: 'bench ssh' });
  const sshEnv = (name: string, metadata: Record<string, unknown>) =>
    s.environments.create(company.id, { name, driver: 'ssh', config: { ...target, remoteWorkspacePath: join(workspaceRoot, 'remote') }, metadata });
  const [local, sshPooled, sshFresh] = [await s.environments.ensureLocalEnvironment(company.id), await sshEnv('ssh pooled', {}), await sshEnv('ssh unpooled', { pooled: false })];
  const agentOn = (envId: string, name: string) =>
    s.agents.create(company.id, { name, adapterType: 'process', adapterConfig: { command: 'true', args: [] }, defaultEnvironmentId: envId });
  const agents = { local: await agentOn(local.id, 'local'), pooled: await agentOn(sshPooled.id, 'pooled'), unpooled: await agentOn(sshFresh.id, 'unpooled') };

  const runOnce = async (agentId: string): Promise<number> => {
    const { ms, run } = await bench.runOnce(company.id, agentId);
    if (run.status !== 'succeeded') throw new Error(`run ${run.id} ${run.status}: ${run.error}`);
    return ms;
  };
  const rawPool = new SshPool();
  const rawFresh = new SshPool({ pooled: false });
  const rawExec = async (pool: SshPool): Promise<number> => {
    const t = performance.now();
    const b = await pool.borrow('raw', target);
    try {
      const r = await execCollect(b.conn, 'true');
      if (r.code !== 0) throw new Error(`raw exec exited ${r.code}`);
    } finally {
      b.release();
    }
    return performance.now() - t;
  };

  const series = {
    'Berth run, Local': () => runOnce(agents.local.id),
    'Berth run, SSH pooled': () => runOnce(agents.pooled.id),
    'Berth run, SSH unpooled': () => runOnce(agents.unpooled.id),
    'spawn `true` here': spawnTrue,
    'ssh2 exec, open conn': () => rawExec(rawPool),
    'ssh2 connect + exec': () => rawExec(rawFresh),
  };
  const samples = Object.fromEntries(Object.keys(series).map((k) => [k, [] as number[]])) as Record<keyof typeof series, number[]>;
  for (let i = 0; i < 10; i++) for (const f of Object.values(series)) await f(); // warm-up
  const started = performance.now();
  for (let i = 0; i < RUNS; i++) {
    // Interleaved, so every series sees the same machine.
    for (const [name, f] of Object.entries(series)) samples[name as keyof typeof series].push(await f());
  }
  const seconds = (performance.now() - started) / 1000;
  for (const xs of Object.values(samples)) xs.sort((a, b) => a - b);
  const p = (name: keyof typeof series, q: number) => percentile(samples[name], q);

  console.log(`bench:ssh — ${RUNS} interleaved rounds of \`true\` (PostgreSQL, loopback sshd ${sshd.host}:${sshd.port}, ${login ? "root's full login shell (.bashrc)" : 'lean login shell (no .bashrc)'}, ${fmt(seconds)} s)`);
  console.log(`${'series'.padEnd(26)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)}`);
  for (const name of Object.keys(series) as Array<keyof typeof series>) console.log(`${name.padEnd(26)} ${fmt(p(name, 50)).padStart(8)} ${fmt(p(name, 99)).padStart(8)}`);
  const ratio = (a: keyof typeof series, b: keyof typeof series, q: number) => fmt(p(a, q) / p(b, q), 2);
  console.log(`SSH pooled / Local:    p50 ${ratio('Berth run, SSH pooled', 'Berth run, Local', 50)}x  p99 ${ratio('Berth run, SSH pooled', 'Berth run, Local', 99)}x`);
  console.log(`SSH unpooled / Local:  p50 ${ratio('Berth run, SSH unpooled', 'Berth run, Local', 50)}x  p99 ${ratio('Berth run, SSH unpooled', 'Berth run, Local', 99)}x`);
  console.log(`SSH unpooled / pooled: p50 ${ratio('Berth run, SSH unpooled', 'Berth run, SSH pooled', 50)}x  p99 ${ratio('Berth run, SSH unpooled', 'Berth run, SSH pooled', 99)}x`);
  const over = (a: keyof typeof series, b: keyof typeof series) => `p50 ${fmt(p(a, 50) - p(b, 50))} ms p99 ${fmt(p(a, 99) - p(b, 99))} ms`;
  console.log(`Berth's own cost over its floor: Local ${over('Berth run, Local', 'spawn `true` here')} | SSH pooled ${over('Berth run, SSH pooled', 'ssh2 exec, open conn')} | SSH unpooled ${over('Berth run, SSH unpooled', 'ssh2 connect + exec')}`);
  console.log('(an SSH run takes 4 channels: provision, exec, watch, destroy; the floors take one)');
  await driverBench();
  rawPool.closeAll();
  await runtime.stop({ graceMs: 0 });
} finally {
  await tearDown();
}
