// Server processes of their own for adoption tests: a scratch PostgreSQL database, this
// process's services on it, and `scripts/worker.ts` children (the heartbeat runtime with
// every default driver) sharing one secret key and BERTH_HOME. Killed and dropped after the file.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { openDatabase, type Database } from '../../src/db/client.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from './db.js';

export interface WorkerProcess {
  child: ChildProcess;
  serverId: string;
  output: () => string;
}

export interface WorkerProcesses {
  /** This process's services on the scratch database (set in beforeAll). */
  readonly s: Services;
  readonly database: Database;
  start(): Promise<WorkerProcess>;
}

export function workerProcesses(name: string): WorkerProcesses {
  const secretKey = randomBytes(32).toString('hex');
  process.env.BERTH_SECRET_KEY = secretKey;
  const home = mkdtempSync(join(tmpdir(), `berth-${name}-`));
  const children: ChildProcess[] = [];
  let scratch: Awaited<ReturnType<typeof createScratchDatabase>>;
  let database: Database;
  let s: Services;

  beforeAll(async () => {
    scratch = await createScratchDatabase();
    database = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
    s = createServices(database.db);
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await database?.close();
    await scratch?.drop();
    rmSync(home, { recursive: true, force: true });
  });

  return {
    get s() {
      return s;
    },
    get database() {
      return database;
    },
    start() {
      const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/worker.ts'], {
        env: { ...process.env, DATABASE_URL: scratch.url, BERTH_HOME: home, BERTH_SECRET_KEY: secretKey, BERTH_PUBLIC_URL: 'http://127.0.0.1:3710' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      let out = '';
      child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      return new Promise((resolve, reject) => {
        child.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /ready (\S+)/.exec(out);
          if (m) resolve({ child, serverId: m[1]!, output: () => out });
        });
        child.once('exit', (code) => reject(new Error(`worker exited early with ${code}: ${out}`)));
      });
    },
  };
}
