// A run whose server dies while its process runs is adopted by another server when the
// driver can reattach: the new server watches the execution on from the offset the run's
// log reached (nothing lost, nothing twice), enforces its limits, and finishes it. Two
// runtimes on one PostgreSQL database; the first one's server is declared gone while its
// driver's watch hangs, as a dead server's would.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { queryRows } from '../../src/db/client.js';
import type { EnvironmentDriver, ExecutionHandle, ExitResult } from '../../src/drivers/contract.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { startRecoveringRuntime } from '../support/phase-server.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

const root = mkdtempSync(join(tmpdir(), 'berth-resume-'));
let t: TestDb;
let companyId: string;
const runtimes: Runtime[] = [];
const runtimeErrors = collectRuntimeErrors();

/** Executions of the fake provider: they live outside any server, as a remote host's do. */
interface FakeExecution {
  lines: string[];
  exit: ExitResult | null;
  changed: Set<() => void>;
  timer?: NodeJS.Timeout;
}
const provider = new Map<string, FakeExecution>();
const changed = (e: FakeExecution) => {
  for (const f of e.changed) f();
  e.changed.clear();
};

/**
 * A driver with reattach over the fake provider: `exec` starts an execution that prints
 * `line 1..count` one every 50 ms and exits 0; `watch` reads from an offset (the number of
 * lines taken). `hangAfter` makes this instance's watch stop relaying after that many lines
 * and never return, as a server that died would.
 */
function fakeReattachDriver(opts: { hangAfter?: number; count: number }): EnvironmentDriver {
  const local = localDriver({ workspaceRoot: root });
  return {
    ...local,
    capabilities: { ...local.capabilities, reattach: true, hostLocal: false },
    async exec(): Promise<ExecutionHandle> {
      const id = `x${provider.size + 1}`;
      const e: FakeExecution = { lines: [], exit: null, changed: new Set() };
      provider.set(id, e);
      let n = 0;
      e.timer = setInterval(() => {
        if (++n <= opts.count) e.lines.push(`line ${n}\n`);
        else {
          clearInterval(e.timer);
          e.exit = { exitCode: 0, signal: null };
        }
        changed(e);
      }, 50);
      return { driver: 'local', host: 'fake-provider', ref: { id } };
    },
    async watch(_env, execution, sink, o = {}) {
      const e = provider.get(String(execution.ref.id))!;
      let at = Number(o.from ?? 0);
      for (;;) {
        while (at < e.lines.length) {
          if (opts.hangAfter !== undefined && at >= opts.hangAfter) return new Promise<never>(() => {});
          await sink('stdout', e.lines[at]!);
          at++;
          o.onOffset?.(String(at));
        }
        if (e.exit) return e.exit;
        await new Promise<void>((r) => e.changed.add(r));
      }
    },
    async signal(_env, execution, sig) {
      const e = provider.get(String(execution.ref.id));
      if (!e || e.exit) return;
      clearInterval(e.timer);
      e.exit = { exitCode: null, signal: sig === 'KILL' ? 'SIGKILL' : 'SIGTERM' };
      changed(e);
    },
  };
}

beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Resume Co' })).id;
});
afterAll(async () => {
  // The first runtime's watch never returns (it "died"): its stop is not waited for past a few seconds.
  for (const r of runtimes) await Promise.race([r.stop({ graceMs: 0 }).catch(() => {}), new Promise((res) => setTimeout(res, 3000))]);
  await t?.close();
  rmSync(root, { recursive: true, force: true });
});

it('adopts a run whose server died mid-run and finishes it from where its log stopped: every line once, in order', async () => {
  const a = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['local', fakeReattachDriver({ count: 20, hangAfter: 5 })]]),
    apiUrl: 'http://127.0.0.1:9',
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 200,
    // The first server's own errors after it was declared dead are not under test.
    onError: () => {},
  });
  runtimes.push(a);
  const agent = await t.services.agents.create(companyId, { name: 'counter', adapterType: 'process', adapterConfig: { command: 'count', args: [] } });
  const run = await t.services.runs.invoke(companyId, agent.id);
  a.poke();
  // The first server logged five lines (and their offset) before it "died".
  await waitFor('five lines and their offset to be written', async () => {
    const [e] = await queryRows(t.db, sql`SELECT output_offset FROM run_executions WHERE run_id = ${run.id}`);
    return e?.output_offset === '5';
  }, 10_000, 20);
  // Declared gone: the second server's recovery may now take its runs.
  await queryRows(t.db, sql`UPDATE berth_servers SET stopped_at = now() WHERE id = ${a.serverId}`);

  const b = await startRecoveringRuntime(t.services, t.db, new Map([['local', fakeReattachDriver({ count: 20 })]]), runtimeErrors.onError);
  runtimes.push(b);
  const done = await waitFor('the run to be finished by the second server', async () => {
    const r = await t.services.runs.get(companyId, run.id);
    return r.finishedAt ? r : null;
  }, 20_000, 50);
  expect(done, String(done.error)).toMatchObject({ status: 'succeeded', exitCode: 0, serverId: b.serverId });
  const log = await t.services.runs.readLog(companyId, run.id, { limit: 1000 });
  const stdout = log.filter((c) => c.stream === 'stdout').map((c) => c.chunk).join('');
  expect(stdout).toBe(Array.from({ length: 20 }, (_, i) => `line ${i + 1}\n`).join(''));
  const seqs = log.map((c) => c.seq);
  expect(new Set(seqs).size).toBe(seqs.length);
  expect(log.filter((c) => c.stream === 'system').map((c) => c.chunk).join('')).toContain(`resumed by server ${b.serverId}`);
  const lease = await t.services.leases.get(companyId, done.leaseId!);
  expect(lease).toMatchObject({ status: 'released', cleanupStatus: 'success' });
  const [res] = await queryRows(t.db, sql`SELECT status FROM provider_resources WHERE id = ${lease.resourceId}`);
  expect(res!.status).toBe('destroyed');
});
