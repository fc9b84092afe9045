// Lease acquire+release over HTTP (a real `berth serve` process on PostgreSQL, 32
// concurrent clients with keep-alive) against the same cycle through the services
// in-process on the same database, interleaved in one run. One cycle = POST acquire
// + POST release (two activity rows).
import { spawn } from 'node:child_process';
import nodeHttp from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDatabase } from '../src/db/client.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase } from '../test/support/db.js';
import { waitFor } from '../test/support/wait.js';
import { fmt, runConcurrent, type RunStats } from './support.js';

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 32);
const CYCLES = Number(process.env.BENCH_CYCLES ?? 3000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

function procCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function main() {
  const scratch = await createScratchDatabase();
  const home = mkdtempSync(join(tmpdir(), 'berth-bench-http-'));
  const server = spawn(process.execPath, ['bin/berth.mjs', 'serve', '--port', '0'], {
    env: { ...process.env, BERTH_HOME: home, DATABASE_URL: scratch.url, BERTH_LOG_LEVEL: 'warn', BERTH_LOG_FORMAT: 'json' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const database = await openDatabase({ databaseUrl: scratch.url, poolSize: 10 });
  try {
    const info = await waitFor('the server', async () => {
      try {
        return JSON.parse(readFileSync(join(home, 'server.json'), 'utf8')) as { url: string; pid: number };
      } catch {
        return null;
      }
    }, 60_000, 100);
    const admin = readFileSync(join(home, 'admin.key'), 'utf8').trim();
    // node:http with keep-alive: a lean client, so the figure is about the server (fetch costs the client ~2x more CPU here).
    const agent = new nodeHttp.Agent({ keepAlive: true, maxSockets: CLIENTS });
    const target = new URL(info.url);
    const post = (path: string, key: string, body: unknown) =>
      new Promise<any>((resolve, reject) => {
        const payload = JSON.stringify(body);
        const req = nodeHttp.request(
          { agent, host: target.hostname, port: target.port, path, method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
          (res) => {
            const parts: Buffer[] = [];
            res.on('data', (d: Buffer) => parts.push(d));
            res.on('end', () => {
              const json = JSON.parse(Buffer.concat(parts).toString('utf8'));
              if ((res.statusCode ?? 500) >= 300) reject(new Error(`${path}: ${res.statusCode} ${JSON.stringify(json)}`));
              else resolve(json);
            });
          },
        );
        req.on('error', reject);
        req.end(payload);
      });
    const created = await post('/api/companies', admin, { name: 'bench' });
    const key: string = created.apiKey;
    const companyId: string = created.company.id;
    const env = await post(`/api/companies/${companyId}/environments`, key, { name: 'pool', driver: 'sandbox', config: { provider: 'bench' } });
    const services = createServices(database.db);

    const overHttp = async () => {
      const { lease } = await post(`/api/environments/${env.id}/leases`, key, { ttlSeconds: 60 });
      await post(`/api/environment-leases/${lease.id}/release`, key, { fence: lease.fence });
    };
    const inProcess = async () => {
      const { lease } = await services.leases.acquire(companyId, { environmentId: env.id, ttlSeconds: 60 });
      await services.leases.release(companyId, lease.id, { fence: lease.fence });
    };
    // Warm both paths (connections, prepared statements, JIT).
    await runConcurrent(300, CLIENTS, overHttp);
    await runConcurrent(300, CLIENTS, inProcess);

    console.log(`Lease acquire+release, ${CLIENTS} concurrent clients, PostgreSQL on loopback; ${ROUNDS} interleaved rounds of ${CYCLES} cycles each\n`);
    const http: RunStats[] = [];
    const local: RunStats[] = [];
    let serverCpu = 0;
    let clientCpuHttp = 0;
    let clientCpuLocal = 0;
    const ownCpu = () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1e6;
    };
    for (let round = 1; round <= ROUNDS; round++) {
      const cpu0 = procCpuSeconds(info.pid);
      const own0 = ownCpu();
      const h = await runConcurrent(CYCLES, CLIENTS, overHttp);
      serverCpu += procCpuSeconds(info.pid) - cpu0;
      const own1 = ownCpu();
      clientCpuHttp += own1 - own0;
      const l = await runConcurrent(CYCLES, CLIENTS, inProcess);
      clientCpuLocal += ownCpu() - own1;
      http.push(h);
      local.push(l);
      console.log(`round ${round}: http ${fmt(h.perSecond, 0).padStart(5)} cycles/s (p50 ${fmt(h.p50, 2)} ms, p99 ${fmt(h.p99, 2)} ms)   in-process ${fmt(l.perSecond, 0).padStart(5)} cycles/s (p50 ${fmt(l.p50, 2)} ms, p99 ${fmt(l.p99, 2)} ms)   ratio ${fmt(h.perSecond / l.perSecond, 2)}`);
    }
    const med = (xs: RunStats[]) => [...xs].sort((a, b) => a.perSecond - b.perSecond)[Math.floor(xs.length / 2)]!;
    const ratios = http.map((h, i) => h.perSecond / local[i]!.perSecond).sort((a, b) => a - b);
    console.log(
      `\nmedian: http ${fmt(med(http).perSecond, 0)} cycles/s, in-process ${fmt(med(local).perSecond, 0)} cycles/s; ratio http/in-process ${fmt(ratios[Math.floor(ratios.length / 2)]!, 2)} (range ${fmt(ratios[0]!, 2)}-${fmt(ratios[ratios.length - 1]!, 2)})`,
    );
    const per = (sec: number) => fmt((sec / (CYCLES * ROUNDS)) * 1e6, 0);
    console.log(`CPU per cycle: over HTTP, server ${per(serverCpu)} µs + client (node:http) ${per(clientCpuHttp)} µs; in-process, the services ${per(clientCpuLocal)} µs`);
    console.log(`(${CYCLES * ROUNDS * 2} HTTP requests and ${CYCLES * ROUNDS * 2} in-process calls measured; this machine has ${(await import('node:os')).cpus().length} cores shared by server, clients and PostgreSQL)`);
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
    await database.close();
    await scratch.drop();
    rmSync(home, { recursive: true, force: true });
  }
}

await main();
