// A run that writes as fast as it can (`yes`) for BENCH_FLOOD_SEC (default 60) against a
// real `berth serve` (PostgreSQL; BENCH_DB=pglite for the embedded database): the RSS
// peaks of the server and its spawner helper (sampled from /proc every 100 ms), and the
// latency of GET /health and of the runs listing during the flood against a baseline
// taken in the same process before it. Targets: server + helper RSS < 250 MB together;
// both requests within 200 ms p99. The stored log must end with the truncation line.
import { spawn } from 'node:child_process';
import nodeHttp from 'node:http';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createScratchDatabase } from '../test/support/db.js';
import { waitFor } from '../test/support/wait.js';
import { fmt, percentile } from './support.js';

const FLOOD_SEC = Number(process.env.BENCH_FLOOD_SEC ?? 60);
const BASELINE_SEC = Number(process.env.BENCH_BASELINE_SEC ?? 10);
const EMBEDDED = process.env.BENCH_DB === 'pglite';

const rssMb = (pid: number): number => {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
};

function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}

/** The server's spawner helper: its child running spawner-main.mjs. */
function helperOf(serverPid: number): number | null {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === serverPid && readFileSync(`/proc/${name}/cmdline`, 'utf8').includes('spawner-main.mjs')) return Number(name);
    } catch {
      /* gone */
    }
  }
  return null;
}

interface Latencies {
  health: number[];
  list: number[];
}

async function main() {
  const scratch = EMBEDDED ? null : await createScratchDatabase();
  const home = mkdtempSync(join(tmpdir(), 'berth-bench-flood-'));
  const server = spawn(process.execPath, ['bin/berth.mjs', 'serve', '--port', '0'], {
    env: { ...process.env, BERTH_HOME: home, ...(scratch ? { DATABASE_URL: scratch.url } : { DATABASE_URL: '' }), BERTH_LOG_LEVEL: 'warn', BERTH_LOG_FORMAT: 'json' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  try {
    const info = await waitFor('the server', async () => {
      try {
        return JSON.parse(readFileSync(join(home, 'server.json'), 'utf8')) as { url: string; pid: number };
      } catch {
        return null;
      }
    }, 60_000, 100);
    const admin = readFileSync(join(home, 'admin.key'), 'utf8').trim();
    const agent = new nodeHttp.Agent({ keepAlive: true, maxSockets: 4 });
    const target = new URL(info.url);
    const call = (method: string, path: string, key: string, body?: unknown) =>
      new Promise<any>((resolve, reject) => {
        const payload = body === undefined ? '' : JSON.stringify(body);
        const req = nodeHttp.request(
          { agent, host: target.hostname, port: target.port, path, method, headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }) } },
          (res) => {
            const parts: Buffer[] = [];
            res.on('data', (d: Buffer) => parts.push(d));
            res.on('end', () => {
              const text = Buffer.concat(parts).toString('utf8');
              if ((res.statusCode ?? 500) >= 300) reject(new Error(`${method} ${path}: ${res.statusCode} ${text.slice(0, 300)}`));
              else resolve(text ? JSON.parse(text) : null);
            });
          },
        );
        req.on('error', reject);
        req.end(payload);
      });

    const created = await call('POST', '/api/companies', admin, { name: 'flood' });
    const key: string = created.apiKey;
    const companyId: string = created.company.id;
    // Some rows for the listing to page through.
    const quiet = await call('POST', `/api/companies/${companyId}/agents`, key, { name: 'quiet', adapterType: 'process', adapterConfig: { command: 'true' }, maxConcurrentRuns: 4 });
    for (let i = 0; i < 20; i++) await call('POST', `/api/agents/${quiet.id}/wakeup`, key, {});
    const listPath = `/api/companies/${companyId}/heartbeat-runs?limit=50`;

    /** Sample /health and the listing one after the other, each every 50 ms, until `until`. */
    const probe = async (until: () => boolean): Promise<Latencies> => {
      const out: Latencies = { health: [], list: [] };
      while (!until()) {
        let t = performance.now();
        await call('GET', '/health', key);
        out.health.push(performance.now() - t);
        t = performance.now();
        await call('GET', listPath, key);
        out.list.push(performance.now() - t);
        await new Promise((r) => setTimeout(r, 50));
      }
      return out;
    };
    const summary = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return `p50 ${fmt(percentile(s, 50), 1)} ms, p99 ${fmt(percentile(s, 99), 1)} ms, max ${fmt(s[s.length - 1] ?? NaN, 1)} ms (${s.length} requests)`;
    };

    // Baseline: the same server, no flood.
    const b0 = Date.now();
    const baselineRss = rssMb(info.pid);
    const baseline = await probe(() => Date.now() - b0 > BASELINE_SEC * 1000);

    const helperBefore = helperOf(info.pid);
    const baselineHelperRss = helperBefore ? rssMb(helperBefore) : NaN;
    // The run ends on its own after FLOOD_SEC, so its log ends as the flood left it.
    const flooder = await call('POST', `/api/companies/${companyId}/agents`, key, {
      name: 'flooder',
      adapterType: 'process',
      adapterConfig: { command: 'sh', args: ['-c', `timeout ${FLOOD_SEC} yes; exit 0`], timeoutSec: FLOOD_SEC + 600, graceSec: 1 },
    });
    const run = await call('POST', `/api/agents/${flooder.id}/wakeup`, key, {});
    await waitFor('the flood to start', async () => (await call('GET', `/api/heartbeat-runs/${run.id}`, key)).status === 'running', 30_000, 20);
    const helper = await waitFor('the spawner helper', async () => helperOf(info.pid), 10_000, 20);
    const cpu0 = { server: cpuSeconds(info.pid), helper: cpuSeconds(helper) };
    let peak = { server: 0, helper: 0, sum: 0 };
    const sampler = setInterval(() => {
      const s = rssMb(info.pid);
      const h = rssMb(helper);
      peak = { server: Math.max(peak.server, s), helper: Math.max(peak.helper, h), sum: Math.max(peak.sum, s + h) };
    }, 100);
    let runEnded = false;
    const endWatch = (async () => {
      while (!runEnded) {
        const r = await call('GET', `/api/heartbeat-runs/${run.id}`, key);
        if (r.finishedAt) return void (runEnded = true);
        await new Promise((res) => setTimeout(res, 250));
      }
    })();
    const during = await probe(() => runEnded);
    await endWatch;
    const cpu1 = { server: cpuSeconds(info.pid), helper: cpuSeconds(helper) };
    clearInterval(sampler);

    const ended = await call('GET', `/api/heartbeat-runs/${run.id}`, key);
    let chunks: Array<{ seq: number; stream: string; chunk: string }> = [];
    for (let after = 0; ; ) {
      const page = (await call('GET', `/api/heartbeat-runs/${run.id}/log?after=${after}&limit=10000`, key)) as { chunks: typeof chunks; lastSeq: number };
      if (page.chunks.length === 0) break;
      chunks = chunks.concat(page.chunks);
      after = page.lastSeq;
    }
    const stored = chunks.filter((c) => c.stream !== 'system').reduce((n, c) => n + c.chunk.length, 0);
    const truncation = chunks.findIndex((c) => c.stream === 'system' && c.chunk.includes('log truncated'));
    const afterTruncation = truncation < 0 ? [] : chunks.slice(truncation + 1);

    console.log(`Flood: one run of \`yes\` for ${FLOOD_SEC} s against \`berth serve\` on ${EMBEDDED ? 'PGlite (embedded)' : 'PostgreSQL on loopback'}; baseline ${BASELINE_SEC} s without it\n`);
    console.log(`RSS peak during the flood: server ${fmt(peak.server, 0)} MB, helper ${fmt(peak.helper, 0)} MB, together ${fmt(peak.sum, 0)} MB (target < 250); before it server ${fmt(baselineRss, 0)} MB, helper ${fmt(baselineHelperRss, 0)} MB`);
    console.log(`CPU during the flood: server ${fmt(cpu1.server - cpu0.server, 1)} s, helper ${fmt(cpu1.helper - cpu0.helper, 1)} s over the ${FLOOD_SEC} s run`);
    console.log(`GET /health      baseline ${summary(baseline.health)}`);
    console.log(`                 flood    ${summary(during.health)}`);
    console.log(`GET runs listing baseline ${summary(baseline.list)}`);
    console.log(`                 flood    ${summary(during.list)}`);
    console.log(
      `run ${ended.status}; stored ${stored} characters of output in ${chunks.length} chunks; truncation line ${truncation < 0 ? 'MISSING' : `at chunk ${truncation + 1}`}` +
        (afterTruncation.length ? `, then ${afterTruncation.length} system line(s): ${afterTruncation.map((c) => JSON.stringify(c.chunk.trim())).join(' ')}` : ''),
    );
    const ok = peak.sum < 250 && percentile([...during.health].sort((a, b) => a - b), 99) < 200 && percentile([...during.list].sort((a, b) => a - b), 99) < 200 && truncation >= 0;
    console.log(ok ? 'targets met' : 'TARGETS MISSED');
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
    await scratch?.drop();
    rmSync(home, { recursive: true, force: true });
  }
}

await main();
