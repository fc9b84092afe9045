// Output cannot exhaust the server: a run's output flows with backpressure (a child
// whose output is not taken blocks), and once its log is capped the output stops
// crossing to the server (the stored log ends with the truncation line).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { localDriver } from '../src/drivers/local/driver.js';
import type { EnvironmentDriver } from '../src/drivers/contract.js';
import { startLocalProcess } from '../src/drivers/local/process-tree.js';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { waitFor } from './support/wait.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';

const CAP = 50_000;
let t: TestDb;
let runtime: Runtime;
let companyId: string;
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-logcap-'));
const runtimeErrors = collectRuntimeErrors();
/** Characters of run output that reached the server's listener, over all runs. */
let delivered = 0;

// The local driver, counting what its processes' output delivers to the server.
const local = localDriver({ workspaceRoot });
const counting: EnvironmentDriver = {
  ...local,
  watch(env, execution, sink, o) {
    return local.watch(env, execution, (stream, text) => {
      delivered += text.length;
      return sink(stream, text);
    }, o);
  },
};

beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Log Cap Co' })).id;
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['local', counting]]),
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    logLimitChars: CAP,
    apiUrl: 'http://127.0.0.1:9',
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
  rmSync(workspaceRoot, { recursive: true, force: true });
});

async function runToEnd(script: string) {
  const agent = await t.services.agents.create(companyId, { name: `flood-${Date.now()}`, adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', script] } as never });
  const run = await t.services.runs.invoke(companyId, agent.id);
  runtime.poke();
  return waitFor(`run ${run.id} to finish`, async () => {
    const r = await t.services.runs.get(companyId, run.id);
    return r.finishedAt ? r : null;
  }, 60_000);
}

describe('the run log cap', () => {
  for (const mode of ['helper', 'in-process'] as const) {
    it(`(${mode}) keeps exactly the cap, ends with the truncation line, and stops relaying: 20 MB written, little of it crosses`, async () => {
      if (mode === 'in-process') process.env.BERTH_SPAWNER = 'off';
      delivered = 0;
      try {
        const run = await runToEnd(`head -c 20000000 /dev/zero | tr '\\0' x; echo done`);
        expect(run.status).toBe('succeeded');
        const chunks = await t.services.runs.readLog(companyId, run.id, { limit: 10_000 });
        const stdout = chunks.filter((c) => c.stream === 'stdout').map((c) => c.chunk).join('');
        expect(stdout.length).toBe(CAP);
        expect(stdout).toBe('x'.repeat(CAP));
        const last = chunks[chunks.length - 1]!;
        expect(last.stream).toBe('system');
        expect(last.chunk).toContain(`[log truncated: this run's output passed ${CAP} characters]`);
        // What crossed to the server: the cap and at most a chunk in flight per stream, not the 20 MB.
        expect(delivered).toBeGreaterThanOrEqual(CAP);
        expect(delivered).toBeLessThan(CAP + 1_000_000);
      } finally {
        delete process.env.BERTH_SPAWNER;
      }
    });
  }
});

describe('backpressure from the child', () => {
  for (const mode of ['helper', 'in-process'] as const) {
    it(`(${mode}) a child whose output is not taken blocks; once taken, all of it arrives in order`, async () => {
      if (mode === 'in-process') process.env.BERTH_SPAWNER = 'off';
      const dir = mkdtempSync(join(workspaceRoot, 'bp-'));
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      let text = '';
      try {
        // 2,000 lines of 1,001 bytes; the count of lines written so far goes to a file.
        const script = 'i=0; while [ $i -lt 2000 ]; do printf "%01000d\\n" $i; i=$((i+1)); echo $i > count; done';
        const proc = startLocalProcess({ command: 'sh', args: ['-c', script], cwd: dir, env: { PATH: process.env.PATH! } }, (_s, chunk) => {
          text += chunk;
          return held; // nothing is taken until released
        });
        await proc.spawned;
        await waitFor('the child to start writing', async () => existsSync(join(dir, 'count')));
        await new Promise((r) => setTimeout(r, 1500));
        // The pipe (64 KiB) and one read buffer fill, then the child blocks in write().
        const written = Number(readFileSync(join(dir, 'count'), 'utf8').trim() || '0');
        expect(written).toBeLessThan(400);
        release();
        const exit = await proc.exited;
        expect(exit).toMatchObject({ exitCode: 0 });
        const lines = text.trim().split('\n');
        expect(lines.length).toBe(2000);
        expect(lines.every((l, i) => l === String(i).padStart(1000, '0'))).toBe(true);
      } finally {
        release();
        delete process.env.BERTH_SPAWNER;
      }
    });
  }
});
