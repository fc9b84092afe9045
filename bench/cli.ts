// CLI start-up: wall time of `berth --help` and of `berth env list` (against a real
// `berth serve` on a throwaway BERTH_HOME, started here) next to bare `node -e 0`,
// interleaved in one run so the machine's load weighs on all three alike.
// BENCH_ROUNDS (default 40) calls of each.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { distState } from '../bin/dist-state.mjs';
import { waitFor } from '../test/support/wait.js';
import { fmt, percentile } from './support.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 40);
const repo = join(import.meta.dirname, '..');
const bin = join(repo, 'bin/berth.mjs');

async function main() {
  if (!distState().current) {
    console.log('dist/ is stale: building it first');
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: repo, stdio: 'inherit' });
    if (built.status !== 0) throw new Error('npm run build failed');
  }
  const home = mkdtempSync(join(tmpdir(), 'berth-bench-cli-'));
  const env = { ...process.env, BERTH_HOME: home, DATABASE_URL: '', BERTH_URL: '', BERTH_API_KEY: '', BERTH_LOG_LEVEL: 'warn', NO_COLOR: '1' };
  const server = spawn(process.execPath, [bin, 'serve', '--demo', '--port', '0'], { env, stdio: ['ignore', 'ignore', 'inherit'], detached: true });
  try {
    await waitFor('the server and its demo credentials', async () => {
      try {
        readFileSync(join(home, 'server.json'));
        readFileSync(join(home, 'credentials.json'));
        return true;
      } catch {
        return null;
      }
    }, 60_000, 100);

    const commands: Array<{ name: string; args: string[] }> = [
      { name: 'node -e 0', args: ['-e', '0'] },
      { name: 'berth --help', args: [bin, '--help'] },
      { name: 'berth env list', args: [bin, 'env', 'list'] },
    ];
    const once = (args: string[]) => {
      const t = performance.now();
      const r = spawnSync(process.execPath, args, { env, encoding: 'utf8' });
      const ms = performance.now() - t;
      if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}: ${r.stderr}`);
      if (r.stderr.includes('running the TypeScript sources')) throw new Error(`berth ran the sources, not dist/: ${r.stderr}`);
      return ms;
    };
    for (const c of commands) once(c.args); // warm the page cache
    const times = new Map(commands.map((c) => [c.name, [] as number[]]));
    for (let i = 0; i < ROUNDS; i++) {
      // Rotate the order each round so none always runs right after another.
      for (let j = 0; j < commands.length; j++) {
        const c = commands[(i + j) % commands.length]!;
        times.get(c.name)!.push(once(c.args));
      }
    }
    const base = [...times.get('node -e 0')!].sort((a, b) => a - b);
    console.log(`CLI start-up, wall time per call (spawnSync), ${ROUNDS} calls of each, interleaved; node ${process.version}, dist/ build, server on PGlite`);
    console.log(`${'command'.padEnd(16)} ${'n'.padStart(4)} ${'p50 ms'.padStart(8)} ${'p90 ms'.padStart(8)} ${'p50/node'.padStart(9)} ${'p90/node'.padStart(9)}`);
    for (const c of commands) {
      const t = [...times.get(c.name)!].sort((a, b) => a - b);
      console.log(
        `${c.name.padEnd(16)} ${String(t.length).padStart(4)} ${fmt(percentile(t, 50)).padStart(8)} ${fmt(percentile(t, 90)).padStart(8)} ` +
          `${fmt(percentile(t, 50) / percentile(base, 50), 2).padStart(9)} ${fmt(percentile(t, 90) / percentile(base, 90), 2).padStart(9)}`,
      );
    }
  } finally {
    try {
      process.kill(-server.pid!, 'SIGTERM');
    } catch {
      /* already gone */
    }
    await new Promise((r) => (server.exitCode !== null ? r(null) : server.once('exit', r)));
    rmSync(home, { recursive: true, force: true });
  }
}

await main();
