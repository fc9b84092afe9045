// Nothing a run started outlives it: daemons (setsid, double fork, nohup) and a
// process that ignores SIGTERM are gone when the run ends, however it ends, and when
// the spawner helper dies mid-run (the run then ends process_lost).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { localDriver } from '../src/drivers/local/driver.js';
import { sharedSpawner, Spawner } from '../src/drivers/local/spawner.js';
import type { HeartbeatRun } from '../src/domain/types.js';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { waitFor } from './support/wait.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';

let t: TestDb;
let runtime: Runtime;
let companyId: string;
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-contain-'));
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Containment Co' })).id;
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['local', localDriver({ workspaceRoot })]]),
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    apiUrl: 'http://127.0.0.1:9',
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
  rmSync(workspaceRoot, { recursive: true, force: true });
});

/** `sleep` durations no other process on the machine uses: found by `ps` as markers. */
function markers() {
  const base = `3600.${Date.now() % 1e6}${Math.floor(Math.random() * 1e3)}`;
  return { setsid: `${base}1`, doubleFork: `${base}2`, nohup: `${base}3`, ignoresTerm: `${base}4` };
}

/**
 * A shell script that starts the four escapers, writes `ready` into the workspace, then
 * ends as `ending` says. Each escaper leaves the run's process group (setsid); the double
 * fork's and the TERM-ignorer's parents exit, so they are not even descendants any more.
 */
function escapers(m: ReturnType<typeof markers>, ending: string): string {
  return [
    `setsid sleep ${m.setsid} >/dev/null 2>&1 </dev/null &`,
    `(setsid sh -c 'sleep ${m.doubleFork} >/dev/null 2>&1 </dev/null & exit 0' &)`,
    `nohup setsid sleep ${m.nohup} >/dev/null 2>&1 </dev/null &`,
    `(setsid sh -c 'trap "" TERM HUP INT; sleep ${m.ignoresTerm} & wait' >/dev/null 2>&1 </dev/null &)`,
    'sleep 0.3',
    'echo ready > ready',
    ending,
  ].join('\n');
}

/** Processes (as `ps` shows them, zombies excluded) whose command line holds one of the markers. */
function survivors(m: ReturnType<typeof markers>): string[] {
  const ps = execFileSync('ps', ['-eo', 'pid=,stat=,args='], { encoding: 'utf8' });
  return ps
    .split('\n')
    .filter((l) => Object.values(m).some((v) => l.includes(v)) && !/^\s*\d+\s+Z/.test(l));
}

let agentCount = 0;
async function agentRunning(script: string, extra: Record<string, unknown> = {}) {
  const agent = await t.services.agents.create(companyId, {
    name: `contain-${++agentCount}`,
    adapterType: 'process',
    adapterConfig: { command: 'sh', args: ['-c', script], ...extra } as never,
  });
  const run = await t.services.runs.invoke(companyId, agent.id);
  runtime.poke();
  return run;
}

async function finished(runId: string): Promise<HeartbeatRun> {
  return waitFor(`run ${runId} to finish`, async () => {
    const r = await t.services.runs.get(companyId, runId);
    return r.finishedAt ? r : null;
  }, 30_000);
}

/** Wait until the run's script has started all its escapers (its workspace holds `ready`). */
async function ready(runId: string): Promise<void> {
  await waitFor('the escapers to start', async () => {
    const r = await t.services.runs.get(companyId, runId);
    const cwd = (r.contextSnapshot as { paperclipEnvironment?: { cwd?: string } }).paperclipEnvironment?.cwd;
    return typeof cwd === 'string' && existsSync(join(cwd, 'ready'));
  }, 15_000);
}

describe('nothing a run started outlives it', () => {
  it('on success: setsid daemon, double fork, nohup and a SIGTERM-ignorer are gone once the run is finished', async () => {
    const m = markers();
    const run = await finished((await agentRunning(escapers(m, 'exit 0'))).id);
    expect(run.status).toBe('succeeded');
    expect(survivors(m)).toEqual([]);
  });

  it('on failure (exit 1): all four are gone', async () => {
    const m = markers();
    const run = await finished((await agentRunning(escapers(m, 'exit 1'))).id);
    expect(run).toMatchObject({ status: 'failed', exitCode: 1, errorCode: 'process_failed' });
    expect(survivors(m)).toEqual([]);
  });

  it('on timeout: all four are gone', async () => {
    const m = markers();
    const run = await finished((await agentRunning(escapers(m, 'sleep 60'), { timeoutSec: 1.5, graceSec: 0.3 })).id);
    expect(run).toMatchObject({ status: 'timed_out', errorCode: 'timeout' });
    expect(survivors(m)).toEqual([]);
  });

  it('on cancel: all four are gone', async () => {
    const m = markers();
    const queued = await agentRunning(escapers(m, 'sleep 60'), { graceSec: 0.3 });
    await ready(queued.id);
    await t.services.runs.cancel(companyId, queued.id);
    const run = await finished(queued.id);
    expect(run).toMatchObject({ status: 'cancelled', errorCode: 'cancelled' });
    expect(survivors(m)).toEqual([]);
  });

  it('when the spawner helper is SIGKILLed mid-run: the run ends process_lost and all its processes are gone', async () => {
    const m = markers();
    const queued = await agentRunning(escapers(m, 'sleep 60'));
    await ready(queued.id);
    expect(survivors(m).length).toBeGreaterThanOrEqual(4); // the positive control: they were running
    const helper = sharedSpawner().helperPid;
    expect(helper).not.toBeNull();
    process.kill(helper!, 'SIGKILL');
    const run = await finished(queued.id);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'process_lost' });
    expect(run.error).toContain('spawner helper died');
    expect(survivors(m)).toEqual([]);
    // The next run gets a new helper.
    const after = await finished((await agentRunning('exit 0')).id);
    expect(after.status).toBe('succeeded');
  });

  it('spawning in the server process (BERTH_SPAWNER=off): all four are gone on success', async () => {
    const m = markers();
    process.env.BERTH_SPAWNER = 'off';
    try {
      const run = await finished((await agentRunning(escapers(m, 'exit 0'))).id);
      expect(run.status).toBe('succeeded');
    } finally {
      delete process.env.BERTH_SPAWNER;
    }
    expect(survivors(m)).toEqual([]);
  });

  it('fallback without cgroups (BERTH_CONTAINMENT=group): when the helper dies, the trees it reported are killed and their runs end process_lost', async () => {
    const m = markers();
    process.env.BERTH_CONTAINMENT = 'group'; // read by the helper this Spawner forks
    const spawner = new Spawner();
    try {
      let started: { pid: number | null; cgroup: string | null } | null = null;
      const cwd = mkdtempSync(join(workspaceRoot, 'fallback-'));
      const exited = spawner.start(
        { command: 'sh', args: ['-c', `setsid sleep ${m.setsid} >/dev/null 2>&1 </dev/null & sleep ${m.nohup}`], cwd, env: { PATH: process.env.PATH! } },
        () => {},
        (run) => (started = run),
      );
      const sleeps = () => survivors(m).filter((l) => /^\s*\d+\s+\S+\s+sleep /.test(l)).length;
      await waitFor('both sleeps to run', async () => started !== null && sleeps() === 2);
      expect(started!.cgroup).toBeNull();
      process.kill(spawner.helperPid!, 'SIGKILL');
      expect(await exited).toMatchObject({ exitCode: null, errorCode: 'process_lost' });
      expect(survivors(m)).toEqual([]);
    } finally {
      delete process.env.BERTH_CONTAINMENT;
    }
  });
});
