// What a run on a Kubernetes environment costs through Berth against the cluster's own
// floor, in the same run on the one-node cluster the tests use (scripts/engines/kubernetes.sh):
// a heartbeat run (lease, the pod's Secret and the pod, the wait until its process runs, its
// log followed, the exit code from its status, the pod and Secret deleted, the release)
// against making the same pod directly with @kubernetes/client-node (its Secret, the pod with
// the same spec, its status read every 100 ms as the driver does until it ends, its log, and
// both deleted).
// The pod's process is `cat /proc/uptime` (as quick as `true`, and it says when it ran: the
// pod shares this machine's kernel, so its uptime, 10 ms steps, maps to this clock; busybox's
// date has no %N):
// lease-to-running is invoke (or create) to that stamp, end-to-finalized is the stamp to the
// run's finalize (or to the direct pod's end being seen). Interleaved rounds; then runs per
// second with 4 in flight against 4 direct pods in flight. API requests are counted on both
// sides. Needs BERTH_K8S_API and the rest (scripts/bench.sh starts the cluster).
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { CoreV1Api, KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { openDatabase } from '../src/db/client.js';
import { kubernetesDriver } from '../src/drivers/kubernetes/driver.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { fmt, percentile, startBenchRuntime } from './support.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 10);
const FLIGHT = 4;
const FLIGHT_RUNS = Number(process.env.BENCH_FLIGHT_RUNS ?? 16);
const { BERTH_K8S_API: api, BERTH_K8S_CA: caPath, BERTH_K8S_TOKEN: token, BERTH_K8S_IMAGE: image } = process.env;
const node = process.env.BERTH_K8S_NODE ?? 'localhost';
if (!api || !caPath || !token || !image) throw new Error('bench:k8s needs BERTH_K8S_API, BERTH_K8S_CA, BERTH_K8S_TOKEN and BERTH_K8S_IMAGE: run it with `npm run bench:k8s`');
const ca = readFileSync(caPath, 'utf8');

const uptimeMs = () => Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000;
/** This machine's boot, on the wall clock: an uptime read in a pod plus this is when it was read. */
const bootAt = Date.now() - uptimeMs();
const nowMs = () => Date.now();
const stampOf = (out: string) => {
  const up = Number(out.trim().split(/\s+/)[0]);
  if (!Number.isFinite(up)) throw new Error(`not an uptime: ${JSON.stringify(out)}`);
  return bootAt + up * 1000;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const kc = new KubeConfig();
kc.loadFromOptions({
  clusters: [{ name: 'b', server: api, caData: Buffer.from(ca).toString('base64') }],
  users: [{ name: 'b', token }],
  contexts: [{ name: 'b', cluster: 'b', user: 'b' }],
  currentContext: 'b',
});
const core = kc.makeApiClient(CoreV1Api);
let directOps = 0;

/** The same pod directly: create, read its status every 100 ms until it ends, read its log, delete it. */
async function directPod(): Promise<{ toStart: number; toEnd: number }> {
  const name = `bench-${randomUUID()}`;
  const t0 = nowMs();
  directOps++;
  await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name }, stringData: { BENCH: '1' } } });
  directOps++;
  await core.createNamespacedPod({
    namespace: 'default',
    body: {
      metadata: { name, labels: { app: 'bench' } },
      spec: {
        nodeName: node,
        restartPolicy: 'Never',
        automountServiceAccountToken: false,
        enableServiceLinks: false,
        shareProcessNamespace: true,
        terminationGracePeriodSeconds: 10,
        containers: [{ name: 'run', image, imagePullPolicy: 'Never', command: ['cat'], args: ['/proc/uptime'], workingDir: '/workspace', envFrom: [{ secretRef: { name } }] }],
      },
    },
  });
  let pod: V1Pod;
  for (;;) {
    directOps++;
    pod = await core.readNamespacedPod({ name, namespace: 'default' });
    if (pod.status?.containerStatuses?.[0]?.state?.terminated) break;
    await sleep(100);
  }
  const t1 = nowMs();
  directOps++;
  const log = await core.readNamespacedPodLog({ name, namespace: 'default', container: 'run' });
  directOps++;
  await core.deleteNamespacedPod({ name, namespace: 'default', gracePeriodSeconds: 0 });
  directOps++;
  await core.deleteNamespacedSecret({ name, namespace: 'default' });
  if (pod.status?.containerStatuses?.[0]?.state?.terminated?.exitCode !== 0) throw new Error(`direct pod ${name} failed: ${JSON.stringify(pod.status)}`);
  const stamp = stampOf(String(log));
  return { toStart: stamp - t0, toEnd: t1 - stamp };
}

const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p90: percentile(s, 90) };
};

async function main(): Promise<void> {
  const scratch = await createScratchDatabase();
  const database = await openDatabase({ databaseUrl: scratch.url });
  const services = createServices(database.db);
  const ops = new Map<string, number>();
  const driver = kubernetesDriver({ onRequest: (what) => ops.set(what, (ops.get(what) ?? 0) + 1) });
  const bench = await startBenchRuntime({ services, db: database.db, drivers: new Map([['kubernetes', driver]]) });
  const company = await services.companies.create({ name: 'bench k8s' });
  console.log(`bench:k8s  ${ROUNDS} interleaved rounds, one node (${node}), PostgreSQL, pod process: cat /proc/uptime`);
  try {
    const env = await services.environments.create(company.id, {
      name: 'bench-k8s',
      driver: 'kubernetes',
      config: { apiServer: api, caCert: ca, token, image, imagePullPolicy: 'Never', nodeName: node },
    } as never);
    const agents = await Promise.all(
      Array.from({ length: FLIGHT }, (_, i) => services.agents.create(company.id, { name: `stamp-${i}`, adapterType: 'process', adapterConfig: { command: 'cat', args: ['/proc/uptime'] }, defaultEnvironmentId: env.id })),
    );
    const berthOnce = async (agentId: string) => {
      const t0 = nowMs();
      const r = await bench.runOnce(company.id, agentId);
      const t1 = nowMs();
      if (r.run.status !== 'succeeded') throw new Error(`run ${r.run.id} ${r.run.status}: ${r.run.errorCode} ${r.run.error}`);
      const log = (await services.runs.readLog(company.id, r.run.id, { limit: 100 })).filter((c) => c.stream === 'stdout').map((c) => c.chunk).join('');
      const stamp = stampOf(log);
      return { toStart: stamp - t0, toEnd: t1 - stamp };
    };
    for (let i = 0; i < 2; i++) {
      await berthOnce(agents[0]!.id);
      await directPod();
    }
    ops.clear();
    directOps = 0;
    const b = { toStart: [] as number[], toEnd: [] as number[] };
    const w = { toStart: [] as number[], toEnd: [] as number[] };
    for (let i = 0; i < ROUNDS; i++) {
      const x = await berthOnce(agents[0]!.id);
      b.toStart.push(x.toStart);
      b.toEnd.push(x.toEnd);
      const y = await directPod();
      w.toStart.push(y.toStart);
      w.toEnd.push(y.toEnd);
    }
    const bs = stats(b.toStart);
    const be = stats(b.toEnd);
    const ws = stats(w.toStart);
    const we = stats(w.toEnd);
    console.log(`lease-to-running:   berth run p50 ${fmt(bs.p50)} ms p90 ${fmt(bs.p90)} | direct pod p50 ${fmt(ws.p50)} ms p90 ${fmt(ws.p90)} | ratio p50 ${fmt(bs.p50 / ws.p50, 2)}`);
    console.log(`end-to-finalized:   berth run p50 ${fmt(be.p50)} ms p90 ${fmt(be.p90)} | direct pod p50 ${fmt(we.p50)} ms p90 ${fmt(we.p90)} | ratio p50 ${fmt(be.p50 / we.p50, 2)}`);
    const bt = stats(b.toStart.map((s, i) => s + b.toEnd[i]!));
    const wt = stats(w.toStart.map((s, i) => s + w.toEnd[i]!));
    console.log(`whole:              berth run p50 ${fmt(bt.p50)} ms | direct pod p50 ${fmt(wt.p50)} ms | ratio p50 ${fmt(bt.p50 / wt.p50, 2)}`);
    // The pods' deletion (cleanup) may still be going on after finalize: the counts settle once the leases are released.
    await sleep(3000);
    const berthOps = [...ops.values()].reduce((a, c) => a + c, 0);
    console.log(`API requests per run: berth ${fmt(berthOps / ROUNDS, 1)} (${[...ops.entries()].map(([k, v]) => `${k} ${fmt(v / ROUNDS, 1)}`).join(', ')}) | direct ${fmt(directOps / ROUNDS, 1)}`);

    let next = 0;
    let t = performance.now();
    await Promise.all(
      agents.map(async (ag) => {
        while (next++ < FLIGHT_RUNS) await berthOnce(ag.id);
      }),
    );
    const berthRate = FLIGHT_RUNS / ((performance.now() - t) / 1000);
    next = 0;
    t = performance.now();
    await Promise.all(
      agents.map(async () => {
        while (next++ < FLIGHT_RUNS) await directPod();
      }),
    );
    const directRate = FLIGHT_RUNS / ((performance.now() - t) / 1000);
    console.log(`${FLIGHT} in flight, ${FLIGHT_RUNS} runs: berth ${fmt(berthRate, 2)} runs/s | direct ${fmt(directRate, 2)} pods/s | ratio ${fmt(berthRate / directRate, 2)}`);
    await sleep(3000);
    const left = [];
    for await (const p of kubernetesDriver().list!(await services.environments.getWithSecrets(company.id, env.id), AbortSignal.timeout(30_000))) left.push(p);
    console.log(`pods of the environment left after the runs: ${left.length}`);
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
