// What a container run costs through Berth against the engine's own floor, measured in the
// same run on the same engine (a private dockerd and a private Podman service, as the tests
// use): a heartbeat run of `true` in a `docker` environment (lease, container create and
// start, the API relay in its network namespace, the exec, the log, the removal, the
// release) against `docker run --rm --network none IMAGE true` (the docker CLI talking to
// the same engine) and against the same create/start/wait/remove through the Engine API
// with no CLI process. Interleaved rounds, so all three see the same machine; then runs
// per second with 4 in flight against 4 `docker run --rm` in flight. Then the same runs on a
// pooled environment (warm: the container made ahead), against docker run in the same rounds.
// Needs BERTH_TEST_DOCKER_SOCKET / BERTH_TEST_PODMAN_SOCKET / BERTH_TEST_IMAGE (scripts/bench.sh starts the engines).
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import Docker from 'dockerode';
import { openDatabase } from '../src/db/client.js';
import { dockerDriver } from '../src/drivers/docker/driver.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt, percentile, startBenchRuntime } from './support.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
const FLIGHT_RUNS = Number(process.env.BENCH_FLIGHT_RUNS ?? 40);
const image = process.env.BERTH_TEST_IMAGE;
const engines = [
  ['docker', process.env.BERTH_TEST_DOCKER_SOCKET],
  ['podman', process.env.BERTH_TEST_PODMAN_SOCKET],
] as const;
if (!image || engines.some(([, s]) => !s)) throw new Error('bench:containers needs BERTH_TEST_DOCKER_SOCKET, BERTH_TEST_PODMAN_SOCKET and BERTH_TEST_IMAGE: run it with `npm run bench:containers`');

/** `docker run --rm` through the CLI; ms until it exits. */
function cliRun(socket: string): Promise<number> {
  const t = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn('docker', ['-H', `unix://${socket}`, 'run', '--rm', '--network', 'none', image!, 'true'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(performance.now() - t) : reject(new Error(`docker run exited ${code}: ${err.trim()}`))));
  });
}

/** The same through the Engine API (no CLI process): create, start, wait, remove. */
async function apiRun(api: Docker): Promise<number> {
  const t = performance.now();
  const c = await api.createContainer({ Image: image!, Cmd: ['true'], HostConfig: { NetworkMode: 'none' } });
  await c.start();
  const r = (await c.wait()) as { StatusCode: number };
  await c.remove({ force: true, v: true });
  if (r.StatusCode !== 0) throw new Error(`true exited ${r.StatusCode}`);
  return performance.now() - t;
}

const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p90: percentile(s, 90) };
};

async function main(): Promise<void> {
  const scratch = await createScratchDatabase();
  const database = await openDatabase({ databaseUrl: scratch.url });
  const services = createServices(database.db);
  const driver = dockerDriver();
  const bench = await startBenchRuntime({ services, db: database.db, drivers: new Map([['docker', driver]]) });
  const company = await services.companies.create({ name: 'bench containers' });
  console.log(`bench:containers  ${ROUNDS} interleaved rounds per engine, image ${image}, PostgreSQL, network none`);
  try {
    for (const [name, socket] of engines) {
      const api = new Docker({ socketPath: socket! });
      const env = await services.environments.create(company.id, { name: `bench-${name}`, driver: 'docker', config: { endpoint: `unix://${socket}`, image } });
      const agents = await Promise.all(
        Array.from({ length: 4 }, (_, i) => services.agents.create(company.id, { name: `true-${name}-${i}`, adapterType: 'process', adapterConfig: { command: 'true', args: [] }, defaultEnvironmentId: env.id })),
      );
      const runOnce = async (agentId: string) => {
        const r = await bench.runOnce(company.id, agentId);
        if (r.run.status !== 'succeeded') throw new Error(`run ${r.run.id} ${r.run.status}: ${r.run.errorCode} ${r.run.error}`);
        return r.ms;
      };
      for (let i = 0; i < 3; i++) {
        await runOnce(agents[0]!.id);
        await cliRun(socket!);
        await apiRun(api);
      }
      const berth: number[] = [];
      const cli: number[] = [];
      const raw: number[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        berth.push(await runOnce(agents[0]!.id));
        cli.push(await cliRun(socket!));
        raw.push(await apiRun(api));
      }
      const b = stats(berth);
      const c = stats(cli);
      const a = stats(raw);
      console.log(
        `${name.padEnd(7)} one at a time: berth run p50 ${fmt(b.p50)} ms p90 ${fmt(b.p90)} | docker run --rm p50 ${fmt(c.p50)} ms p90 ${fmt(c.p90)} | engine API create/start/wait/remove p50 ${fmt(a.p50)} ms p90 ${fmt(a.p90)}`,
      );
      console.log(
        `${name.padEnd(7)}   ratio berth/docker-run p50 ${fmt(b.p50 / c.p50, 2)} (target <= 1.20), berth/engine-API p50 ${fmt(b.p50 / a.p50, 2)}; berth adds p50 ${fmt(b.p50 - c.p50)} ms over docker run`,
      );

      // Where a cold run's time goes: the driver's own operations, timed alone (no database), p50 of ROUNDS/3.
      const steps: Record<string, number[]> = {};
      const denv = { ...env, secretConfig: { ...env.config }, envVars: {} } as unknown as Parameters<typeof driver.provision>[0];
      for (let i = 0; i < Math.max(5, Math.round(ROUNDS / 3)); i++) {
        const resourceId = randomUUID();
        let t = performance.now();
        const lap = (k: string) => {
          const now = performance.now();
          (steps[k] ??= []).push(now - t);
          t = now;
        };
        const made = await driver.provision(denv, { resourceId, leaseId: randomUUID(), labels: {} }, AbortSignal.timeout(60_000));
        lap('provision (create, attach, start, inspect)');
        const res = { resourceId, providerId: made.providerId, state: made.state };
        const route = await driver.callbackUrl!(denv, { publicUrl: 'http://127.0.0.1:9', localUrl: 'http://127.0.0.1:9' }, res);
        lap('relay');
        const h = await driver.exec(denv, res, { command: 'true', args: [], env: {}, cwd: made.cwd }, AbortSignal.timeout(60_000));
        lap(h.ref.main === true ? 'run handed to the main process' : 'exec');
        const ended = await driver.watch(denv, h, () => {});
        lap('watch to its exit');
        await route.close();
        await driver.destroy(denv, res, AbortSignal.timeout(60_000));
        lap('relay close, removal');
        if (ended.exitCode !== 0) throw new Error(`true ended ${JSON.stringify(ended)}`);
      }
      console.log(`${name.padEnd(7)}   driver alone, p50: ${Object.entries(steps).map(([k, v]) => `${k} ${fmt(stats(v).p50)} ms`).join(', ')}`);

      // The same with a warm pool: each run claims a container made ahead (the wait for the
      // refill to have one ready again is outside the timed part), against docker run in the same rounds.
      const pooled = await services.environments.create(company.id, { name: `bench-${name}-pool`, driver: 'docker', config: { endpoint: `unix://${socket}`, image }, pool: { minReady: 1, maxReady: 1 } });
      const pooledAgent = await services.agents.create(company.id, { name: `true-${name}-pool`, adapterType: 'process', adapterConfig: { command: 'true', args: [] }, defaultEnvironmentId: pooled.id });
      const readyMember = async () => {
        for (let i = 0; i < 600 && (await services.pools.states([pooled.id])).get(pooled.id)?.ready !== 1; i++) await new Promise((r) => setTimeout(r, 10));
      };
      const warm: number[] = [];
      const cli2: number[] = [];
      let warmCount = 0;
      for (let i = 0; i < ROUNDS; i++) {
        await readyMember();
        const r = await bench.runOnce(company.id, pooledAgent.id);
        if (r.run.status !== 'succeeded') throw new Error(`run ${r.run.id} ${r.run.status}: ${r.run.errorCode} ${r.run.error}`);
        if ((r.run.contextSnapshot.paperclipEnvironment as { warm?: boolean } | undefined)?.warm === true) warmCount++;
        warm.push(r.ms);
        cli2.push(await cliRun(socket!));
      }
      await services.environments.update(company.id, pooled.id, { pool: null });
      const w = stats(warm);
      const c2 = stats(cli2);
      console.log(
        `${name.padEnd(7)} pooled (${warmCount} of ${ROUNDS} warm): berth run p50 ${fmt(w.p50)} ms p90 ${fmt(w.p90)} | docker run --rm p50 ${fmt(c2.p50)} ms p90 ${fmt(c2.p90)} | ratio p50 ${fmt(w.p50 / c2.p50, 2)} (target <= 1.20)`,
      );

      // 4 in flight: runs per second, against 4 `docker run --rm` in flight.
      let next = 0;
      let t = performance.now();
      await Promise.all(agents.map(async (ag) => {
        while (next++ < FLIGHT_RUNS) await runOnce(ag.id);
      }));
      const berthRate = FLIGHT_RUNS / ((performance.now() - t) / 1000);
      next = 0;
      t = performance.now();
      await Promise.all(agents.map(async () => {
        while (next++ < FLIGHT_RUNS) await cliRun(socket!);
      }));
      const cliRate = FLIGHT_RUNS / ((performance.now() - t) / 1000);
      console.log(`${name.padEnd(7)} 4 in flight, ${FLIGHT_RUNS} each: berth ${fmt(berthRate)} runs/s | docker run --rm ${fmt(cliRate)} runs/s | ratio ${fmt(berthRate / cliRate, 2)}`);
      const left = await api.listContainers({ all: true, filters: { label: [`berth.environment=${env.id}`] } });
      console.log(`${name.padEnd(7)} containers of the environment left after the runs: ${left.length}`);
    }
  } finally {
    await bench.runtime.stop({ graceMs: 0 });
    driver.close?.();
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
