// How an isolated run with no network reaches the server and nothing else: a relay whose
// inside end listens on 127.0.0.1:<port> in the run's own network namespace (a container's,
// a bubblewrap sandbox's) and whose outside end is a unix socket in a directory only this
// server can open. Unix sockets are named by path, not by network namespace, so the relay
// crosses from the isolated network to the server without giving the run any route: the
// only thing listening inside is the relay, and the relay only ever connects to the server.
//
// The inside end is a small node process (relay-main.mjs) started with `nsenter --net` into
// the namespace of a process of the run (needs root, as the engines here do). It is this
// server's child with a parent-death signal, so it never outlives the server, and it holds
// nothing of the run's but the namespace.
//
// A bubblewrap sandbox (../local/bwrap.ts) starts its inside end another way: the first
// process of a fresh network namespace is relay-main.pl (the same contract in Perl, quick
// to start), connecting to an outside end opened with openRelayOutside.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { splice } from './splice.mjs';

const relayMain = fileURLToPath(new URL('./relay-main.mjs', import.meta.url));

export interface NetnsRelayOptions {
  /** A process of the isolated run, on this host: the relay listens in its network namespace. */
  pid: number;
  /** The port the run connects to, on 127.0.0.1 inside its namespace. */
  port: number;
  /** Where the relay leads, as this server reaches it (its own HTTP listener). */
  target: { host: string; port: number };
  /** The inside end: node (relay-main.mjs, the default) or Perl (relay-main.pl: a few ms to start where node takes 50-100). */
  inside?: 'node' | 'perl';
  /** How long the inside end may take to listen (default 5 s). */
  readyTimeoutMs?: number;
  signal?: AbortSignal;
}

export interface NetnsRelay {
  /** http://127.0.0.1:<port>, as the run sees it. */
  url: string;
  port: number;
  /** The inside end's pid (on this host). */
  pid: number;
  /** Stops the relay: both ends, and every connection through it. Never throws; safe to call twice. */
  close(): Promise<void>;
}

export class RelayError extends Error {
  readonly code = 'relay_failed';
}

/** The network namespace a process is in (`net:[inode]`), or null when the process is gone or not ours to read. */
export function networkNamespaceOf(pid: number | 'self'): string | null {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`);
  } catch {
    return null;
  }
}

let swept = false;

/**
 * Socket directories of servers that died without closing their relays (SIGKILL): named
 * `berth-relay-<server pid>-*`, removed once that pid is gone. Once per process.
 */
function sweepDeadServersDirs(): void {
  if (swept) return;
  swept = true;
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^berth-relay-(\d+)-/.exec(name);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') rmSync(join(tmpdir(), name), { recursive: true, force: true });
    }
  }
}

/** The outside end of a relay: a unix socket, as a relay's inside end connects to it. */
export interface RelayOutside {
  socketPath: string;
  /** The connections being carried. */
  carried: Set<net.Socket>;
  /** Ends every connection and removes the socket. Never throws; safe to call twice. */
  close(): Promise<void>;
}

/**
 * The outside end alone: a unix socket in a fresh 0700 directory, each connection carried
 * to the target. For an inside end started some other way than startNetnsRelay (a sandbox
 * whose first process is the relay: ../local/bwrap.ts).
 */
export async function openRelayOutside(target: { host: string; port: number }): Promise<RelayOutside> {
  sweepDeadServersDirs();
  const dir = mkdtempSync(join(tmpdir(), `berth-relay-${process.pid}-`));
  const socketPath = join(dir, 's');
  const carried = new Set<net.Socket>();
  const outside = net.createServer({ pauseOnConnect: true }, (from) => splice(from, { host: target.host, port: target.port }, carried));
  try {
    await new Promise<void>((resolve, reject) => {
      outside.once('error', reject);
      outside.listen(socketPath, () => resolve());
    });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw new RelayError(`relay: cannot listen on ${socketPath}: ${(err as Error).message}`);
  }
  let closed = false;
  return {
    socketPath,
    carried,
    async close() {
      if (closed) return;
      closed = true;
      for (const c of carried) c.destroy();
      await new Promise<void>((resolve) => outside.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The inside end in Perl (perl-base only; the contract of relay-main.mjs): `perl <this> <port> <socket> [nostdin]`. */
export const relayMainPerl = fileURLToPath(new URL('./relay-main.pl', import.meta.url));

export async function startNetnsRelay(opts: NetnsRelayOptions): Promise<NetnsRelay> {
  const { pid, port, target } = opts;
  if (!Number.isInteger(pid) || pid < 1) throw new RelayError(`relay: no process ${pid} to take a network namespace from`);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RelayError(`relay: port ${port} is not 1-65535`);
  const theirs = networkNamespaceOf(pid);
  if (theirs === null) throw new RelayError(`relay: process ${pid} is gone, or its network namespace cannot be read (the relay needs root)`);
  if (theirs === networkNamespaceOf('self')) {
    throw new RelayError(`relay: process ${pid} shares this server's network namespace: it needs no relay, and one would listen on the host`);
  }

  const { socketPath, close: closeOutside } = await openRelayOutside(target);

  // The inside end. setpriv's parent-death signal survives nsenter's exec: if this server
  // dies, the relay dies with it (and its stdin closes as well).
  const child: ChildProcess = spawn(
    'setpriv',
    ['--pdeathsig', 'KILL', 'nsenter', `--net=/proc/${pid}/ns/net`, '--', ...(opts.inside === 'perl' ? ['perl', relayMainPerl] : [process.execPath, relayMain]), String(port), socketPath],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let exited = false;
  const gone = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
    child.once('error', () => {
      exited = true;
      resolve();
    });
  });

  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    if (!exited) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await gone;
      clearTimeout(killer);
    }
    await closeOutside();
  };

  try {
    await new Promise<void>((resolve, reject) => {
      let out = '';
      let err = '';
      const timer = setTimeout(() => fail(`the relay did not listen within ${opts.readyTimeoutMs ?? 5000} ms`), opts.readyTimeoutMs ?? 5000);
      const onAbort = () => fail('aborted');
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      function fail(why: string) {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        reject(new RelayError(`relay into the network of process ${pid}: ${why}${err.trim() ? `: ${err.trim()}` : ''}`));
      }
      if (opts.signal?.aborted) return fail('aborted');
      child.stderr!.setEncoding('utf8').on('data', (d: string) => {
        err = (err + d).slice(-2000);
      });
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (/^ready \d+\n/.test(out)) {
          clearTimeout(timer);
          opts.signal?.removeEventListener('abort', onAbort);
          resolve();
        }
      });
      child.once('error', (e) => fail(`cannot start setpriv/nsenter: ${e.message}`));
      child.once('exit', (code, sig) => {
        // Give stderr a moment to arrive: it says why (no permission, loopback down, port taken).
        setTimeout(() => fail(`it exited (${sig ?? `code ${code}`}) before listening`), 20);
      });
    });
  } catch (e) {
    await close();
    throw e;
  }
  // Once listening, its output is of no interest; draining keeps it from blocking on a full pipe.
  child.stdout!.resume();
  child.stderr!.resume();
  return { url: `http://127.0.0.1:${port}`, port, pid: child.pid!, close };
}
