// A real `berth serve` child process on a BERTH_HOME of the test's own: its whole output
// kept (the server log), its URL read from the banner, its admin key from BERTH_HOME.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './wait.js';

const repo = join(import.meta.dirname, '../..');

export interface ServeProcess {
  child: ChildProcess;
  url: string;
  adminKey: string;
  /** Everything the process wrote, stdout and stderr. */
  output(): string;
  call<T = any>(method: string, path: string, opts?: { key?: string; body?: unknown }): Promise<{ status: number; body: T; text: string }>;
  /** SIGTERM, then wait for the exit. */
  stop(): Promise<number | null>;
}

function spawnServe(env: Record<string, string>): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, ['bin/berth.mjs', 'serve', '--port', '0', '--grace', '1'], {
    cwd: repo,
    env: { ...process.env, DATABASE_URL: '', BERTH_SECRET_KEY: '', BERTH_LOG_FORMAT: 'json', BERTH_LOG_LEVEL: 'debug', NO_COLOR: '1', TEST_DATABASE_URL: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => out, exited };
}

/** Start a server; fails with its output if it exits first. */
export async function startServeProcess(env: Record<string, string> & { BERTH_HOME: string }): Promise<ServeProcess> {
  const { child, output, exited } = spawnServe(env);
  let exitCode: number | null | undefined;
  void exited.then((c) => (exitCode = c));
  const url = await waitFor(
    'berth serve to print its URL',
    async () => {
      if (exitCode !== undefined) throw new Error(`berth serve exited with ${exitCode} before serving:\n${output()}`);
      return /Berth is serving at (http:\/\/[^\s]+)/.exec(output())?.[1] ?? null;
    },
    60_000,
    50,
  );
  const adminKey = readFileSync(join(env.BERTH_HOME, 'admin.key'), 'utf8').trim();
  return {
    child,
    url,
    adminKey,
    output,
    async call(method, path, o = {}) {
      const headers: Record<string, string> = { authorization: `Bearer ${o.key ?? adminKey}` };
      if (o.body !== undefined) headers['content-type'] = 'application/json';
      const res = await fetch(`${url}${path}`, { method, headers, ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}) });
      const text = await res.text();
      let body: unknown = text;
      try {
        body = text ? JSON.parse(text) : null;
      } catch {
        /* not JSON */
      }
      return { status: res.status, body: body as never, text };
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Start a server that must refuse to start: its exit code and output. */
export async function serveMustFail(env: Record<string, string> & { BERTH_HOME: string }, ms = 60_000): Promise<{ code: number | null; output: string }> {
  const { child, output, exited } = spawnServe(env);
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  const code = await exited;
  clearTimeout(timer);
  return { code, output: output() };
}
