// A heartbeat runtime in a child process that stops dead at one phase of a run's start
// (phase-crash-server.ts), for a test to SIGKILL it right there; and the second runtime,
// with quick sweeps, that finds what the dead one left.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Db } from '../../src/db/client.js';
import type { DriverRegistry } from '../../src/drivers/contract.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import type { Services } from '../../src/services/index.js';
import { waitFor } from './wait.js';

const repo = join(import.meta.dirname, '../..');

export interface PhaseServer {
  child: ChildProcess;
  /** Resolves once the server has reached its phase (its marker file exists); fails with its output if it exits first. */
  reached(): Promise<void>;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
}

export function spawnPhaseServer(o: { databaseUrl: string; workspaceRoot: string; phase: string; marker: string }): PhaseServer {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/phase-crash-server.ts'], {
    cwd: repo,
    env: { ...process.env, PHASE_DATABASE_URL: o.databaseUrl, PHASE_WORKSPACE_ROOT: o.workspaceRoot, PHASE_HOLD: o.phase, PHASE_MARKER: o.marker },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d));
  child.stderr!.on('data', (d: Buffer) => (out += d));
  const exited = new Promise((r) => child.once('exit', r));
  return {
    child,
    async reached() {
      await waitFor(`the server to reach ${o.phase}`, async () => existsSync(o.marker) || (child.exitCode !== null && Promise.reject(new Error(out))), 60_000, 20);
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Another server, with sweeps quick enough that a dead server's runs are found in about 2 s. */
export function startRecoveringRuntime(services: Services, db: Db, drivers: DriverRegistry, onError: (where: string, err: unknown) => void): Promise<Runtime> {
  return startRuntime({ services, db, drivers, apiUrl: 'http://127.0.0.1:9', pollMs: 50, sweepMs: 200, heartbeatMs: 200, staleSeconds: 2, onError });
}
