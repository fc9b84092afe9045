// Per-run cost of a trivial command (`true`) over SSH against Local, interleaved in one
// run on PostgreSQL: Berth runs on Local, on SSH with the pooled connection and on SSH
// with a fresh connection per use, beside the floors measured the same way: spawning
// `true` here, and exec of `true` over ssh2 on an open connection and on a fresh one
// (what the remote sshd and login shell cost, whoever asks). The sshd is the tests'
// private one on 127.0.0.1, with a lean login (no ~/.bashrc: this machine's root
// .bashrc costs ~100 ms per command); BENCH_SSH_SHELL=login keeps the full login.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { openDatabase } from '../src/db/client.js';
import { localDriver } from '../src/drivers/local/driver.js';
import { execCollect, SshPool, type SshTarget } from '../src/drivers/ssh/pool.js';
import { sshDriver } from '../src/drivers/ssh/driver.js';
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
  driver: 'ssh',
  remote: true,
  probe: (env) => pick(env).probe(env),
  connect: async (env) => pick(env).connect?.(env),
  prepareWorkspace: (env, lease, o) => pick(env).prepareWorkspace(env, lease, o),
  startProcess: (env, spec, onOutput) => pick(env).startProcess(env, spec, onOutput),
  cleanup: (env, lease) => pick(env).cleanup(env, lease),
};

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
  const target: SshTarget = { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: sshd.privateKey, knownHosts: sshd.knownHosts, strictHostKeyChecking: true };
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
  console.log('(an SSH run takes 3 channels: mkdir of the workspace, the process, rm -rf of the workspace; the floors take one)');
  rawPool.closeAll();
  await runtime.stop({ graceMs: 0 });
} finally {
  pooled.close();
  unpooled.close();
  await database.close();
  await scratch.drop();
  await sshd.stop();
  rmSync(workspaceRoot, { recursive: true, force: true });
}
