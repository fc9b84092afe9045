// What a run on a Slurm environment costs through Berth against Slurm's own floor, in the
// same run on the same single-node cluster the tests use (scripts/engines/slurm.sh): a
// heartbeat run (lease, sbatch of the lease's job and the wait until it runs, the run's
// file, the output followed from the job's files, Slurm's exit code, scancel/cleanup, the
// release) against `sbatch --wait` of the same job. The job is `date +%s%N` (as quick as
// `true`, and it says when it ran): submit-to-start is invoke (or sbatch) to that stamp,
// end-to-finalize is the stamp to the run's finalize (or sbatch --wait's exit). Interleaved
// rounds; then runs per second with 8 in flight against 8 `sbatch --wait` in flight.
// Needs BERTH_SLURM_CONF and BERTH_SLURM_WORKDIR (scripts/bench.sh starts the cluster).
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { openDatabase } from '../src/db/client.js';
import { slurmDriver } from '../src/drivers/slurm/driver.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt, percentile, startBenchRuntime } from './support.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 10);
const FLIGHT = 8;
const FLIGHT_RUNS = Number(process.env.BENCH_FLIGHT_RUNS ?? 24);
const slurmConf = process.env.BERTH_SLURM_CONF;
const workDir = process.env.BERTH_SLURM_WORKDIR;
const partition = process.env.BERTH_SLURM_PARTITION ?? 'debug';
if (!slurmConf || !workDir) throw new Error('bench:slurm needs BERTH_SLURM_CONF and BERTH_SLURM_WORKDIR: run it with `npm run bench:slurm`');

const nowNs = () => BigInt(Date.now()) * 1_000_000n;
const msBetween = (a: bigint, b: bigint) => Number(b - a) / 1e6;

let seq = 0;
/** `sbatch --wait` of the job: ms from submit to the job's stamp, and from the stamp to sbatch's exit. */
function sbatchWait(): Promise<{ toStart: number; toEnd: number }> {
  const out = join(workDir!, `bench-${process.pid}-${++seq}.out`);
  const t0 = nowNs();
  return new Promise((resolve, reject) => {
    const child = spawn('sbatch', ['--wait', '--quiet', `--partition=${partition}`, '--nodes=1', '--ntasks=1', '--cpus-per-task=1', '--time=10', `--output=${out}`, `--chdir=${workDir}`, '--wrap', 'date +%s%N'], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', SLURM_CONF: slurmConf! },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      const t1 = nowNs();
      if (code !== 0) return reject(new Error(`sbatch --wait exited ${code}: ${err.trim()}`));
      const stamp = BigInt(readFileSync(out, 'utf8').trim());
      rmSync(out, { force: true });
      resolve({ toStart: msBetween(t0, stamp), toEnd: msBetween(stamp, t1) });
    });
  });
}

const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p90: percentile(s, 90) };
};

async function main(): Promise<void> {
  const scratch = await createScratchDatabase();
  const database = await openDatabase({ databaseUrl: scratch.url });
  const services = createServices(database.db);
  const bench = await startBenchRuntime({ services, db: database.db, drivers: new Map([['slurm', slurmDriver()]]) });
  const company = await services.companies.create({ name: 'bench slurm' });
  console.log(`bench:slurm  ${ROUNDS} interleaved rounds, one node (${partition}), PostgreSQL, job: date +%s%N`);
  try {
    const env = await services.environments.create(company.id, { name: 'bench-slurm', driver: 'slurm', config: { slurmConf, workDir, partition, timeLimitMinutes: 10 } } as never);
    const agents = await Promise.all(
      Array.from({ length: FLIGHT }, (_, i) => services.agents.create(company.id, { name: `stamp-${i}`, adapterType: 'process', adapterConfig: { command: 'date', args: ['+%s%N'] }, defaultEnvironmentId: env.id })),
    );
    const berthOnce = async (agentId: string) => {
      const t0 = nowNs();
      const r = await bench.runOnce(company.id, agentId);
      const t1 = nowNs();
      if (r.run.status !== 'succeeded') throw new Error(`run ${r.run.id} ${r.run.status}: ${r.run.errorCode} ${r.run.error}`);
      const log = (await services.runs.readLog(company.id, r.run.id, { limit: 100 })).filter((c) => c.stream === 'stdout').map((c) => c.chunk).join('');
      const stamp = BigInt(log.trim());
      return { toStart: msBetween(t0, stamp), toEnd: msBetween(stamp, t1), total: r.ms };
    };
    for (let i = 0; i < 2; i++) {
      await berthOnce(agents[0]!.id);
      await sbatchWait();
    }
    const b = { toStart: [] as number[], toEnd: [] as number[] };
    const w = { toStart: [] as number[], toEnd: [] as number[] };
    for (let i = 0; i < ROUNDS; i++) {
      const x = await berthOnce(agents[0]!.id);
      b.toStart.push(x.toStart);
      b.toEnd.push(x.toEnd);
      const y = await sbatchWait();
      w.toStart.push(y.toStart);
      w.toEnd.push(y.toEnd);
    }
    const bs = stats(b.toStart);
    const be = stats(b.toEnd);
    const ws = stats(w.toStart);
    const we = stats(w.toEnd);
    console.log(`submit-to-start:  berth run p50 ${fmt(bs.p50)} ms p90 ${fmt(bs.p90)} | sbatch --wait p50 ${fmt(ws.p50)} ms p90 ${fmt(ws.p90)} | ratio p50 ${fmt(bs.p50 / ws.p50, 2)}`);
    console.log(`end-to-finalize:  berth run p50 ${fmt(be.p50)} ms p90 ${fmt(be.p90)} | sbatch --wait p50 ${fmt(we.p50)} ms p90 ${fmt(we.p90)} | ratio p50 ${fmt(be.p50 / we.p50, 2)}`);
    const bt = stats(b.toStart.map((s, i) => s + b.toEnd[i]!));
    const wt = stats(w.toStart.map((s, i) => s + w.toEnd[i]!));
    console.log(`whole:            berth run p50 ${fmt(bt.p50)} ms | sbatch --wait p50 ${fmt(wt.p50)} ms | ratio p50 ${fmt(bt.p50 / wt.p50, 2)}`);

    let next = 0;
    let t = performance.now();
    await Promise.all(agents.map(async (ag) => {
      while (next++ < FLIGHT_RUNS) await berthOnce(ag.id);
    }));
    const berthRate = FLIGHT_RUNS / ((performance.now() - t) / 1000);
    next = 0;
    t = performance.now();
    await Promise.all(agents.map(async () => {
      while (next++ < FLIGHT_RUNS) await sbatchWait();
    }));
    const waitRate = FLIGHT_RUNS / ((performance.now() - t) / 1000);
    console.log(`${FLIGHT} in flight, ${FLIGHT_RUNS} runs: berth ${fmt(berthRate, 2)} runs/s | sbatch --wait ${fmt(waitRate, 2)} runs/s | ratio ${fmt(berthRate / waitRate, 2)}`);
    const left = [];
    for await (const j of slurmDriver().list!(await services.environments.getWithSecrets(company.id, env.id), AbortSignal.timeout(30_000))) left.push(j);
    console.log(`jobs of the environment still active after the runs: ${left.length}`);
  } finally {
    await bench.runtime.stop({ graceMs: 0 });
    await database.close();
    await scratch.drop();
  }
}

// The runtime's timers do not hold the process open: this does, until the benchmark is done.
const hold = setInterval(() => {}, 1000);
try {
  await main();
} finally {
  clearInterval(hold);
}
