// A real Paperclip server (@paperclipai/server from npm, installed next to the paperclipai CLI
// by scripts/engines/paperclip.sh) as a child process on Node 24: its own PAPERCLIP_HOME, an
// external PostgreSQL database (its migrations applied at start), a free loopback port, and
// `local_trusted` mode, where the API answers as the local board operator without a login.
// Its whole output is kept; it fails with that output if it exits before it is ready.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { waitFor } from './wait.js';

export interface PaperclipPaths {
  cli: string;
  node: string;
  server: string;
}

/** Paperclip's CLI, Node 24 and the server's entry script; fails naming what is missing. */
export function paperclipPaths(): PaperclipPaths {
  const cli = process.env.BERTH_TEST_PAPERCLIP_CLI ?? '';
  const node = process.env.BERTH_TEST_NODE24 ?? '';
  // The CLI is node_modules/paperclipai/dist/index.js; the server is its dependency in the same tree.
  const server = cli ? join(cli, '../../../@paperclipai/server/dist/index.js') : '';
  try {
    accessSync(cli, constants.R_OK);
    accessSync(node, constants.X_OK);
    accessSync(server, constants.R_OK);
  } catch {
    throw new Error(
      `no Paperclip server (BERTH_TEST_PAPERCLIP_CLI=${cli || 'unset'}, BERTH_TEST_NODE24=${node || 'unset'}, server ${server || 'unknown'}): this test needs scripts/engines/paperclip.sh (berth_ensure_paperclip)`,
    );
  }
  return { cli, node, server };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface PaperclipServer {
  child: ChildProcess;
  url: string;
  output(): string;
  call<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T; text: string }>;
  /** Send a signal and wait for the exit. */
  kill(signal: NodeJS.Signals): Promise<void>;
}

export async function startPaperclipServer(o: { home: string; databaseUrl: string; paths?: PaperclipPaths }): Promise<PaperclipServer> {
  const paths = o.paths ?? paperclipPaths();
  const port = await freePort();
  const child = spawn(paths.node, [paths.server], {
    cwd: o.home,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: o.home,
      PAPERCLIP_HOME: join(o.home, 'paperclip'),
      DATABASE_URL: o.databaseUrl,
      HOST: '127.0.0.1',
      PORT: String(port),
      SERVE_UI: 'false',
      PAPERCLIP_DEPLOYMENT_MODE: 'local_trusted',
      PAPERCLIP_MIGRATION_AUTO_APPLY: 'true',
      PAPERCLIP_DB_BACKUP_ENABLED: 'false',
      PAPERCLIP_ANNOUNCEMENTS_ENABLED: 'false',
      // Runs in a sandbox environment need the host to mint run tokens.
      PAPERCLIP_AGENT_JWT_SECRET: randomBytes(32).toString('hex'),
      NO_COLOR: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const call: PaperclipServer['call'] = async (method, path, body) => {
    const res = await fetch(`${url}/api${path}`, {
      method,
      headers: body !== undefined ? { 'content-type': 'application/json' } : {},
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(120_000),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON */
    }
    return { status: res.status, body: parsed as never, text };
  };
  await waitFor(
    'the Paperclip server to be ready',
    async () => {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`the Paperclip server exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${out}`);
      }
      try {
        const h = await call('GET', '/health');
        return h.status === 200 && h.body?.startupRecovery?.phase === 'ready' ? true : null;
      } catch {
        return null;
      }
    },
    90_000,
    250,
  ).catch((err: Error) => {
    child.kill('SIGKILL');
    throw new Error(`${err.message}\n--- Paperclip server output ---\n${out}`);
  });
  return {
    child,
    url,
    output: () => out,
    call,
    async kill(signal) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}
