// Bubblewrap isolation for local runs (`isolation: "bubblewrap"`): each run's process is
// started as `bwrap <sandbox> -- <command>`, so it sees
//   - its workspace read-write, and the system read-only (`--ro-bind / /`);
//   - a private /tmp, /run, /dev and /proc; the server's home, Berth's own directory and
//     any `hiddenPaths` as empty read-only directories;
//   - its own pid namespace (`--unshare-pid`, `--die-with-parent`): when its command ends
//     the namespace's init ends and the kernel kills everything left in it;
//   - no capabilities (`--cap-drop ALL`, and no_new_privs as bwrap always sets);
//   - with network `none` (the default) a network namespace of its own holding only a
//     loopback, where Berth's netns relay (../isolation/netns-relay.ts) listens on the
//     port of PAPERCLIP_API_URL: the run reaches Berth and nothing else.
// The run's variables (secrets among them) reach it through the environment bwrap
// inherits, never as arguments. The sandbox waits, before the command starts, until its
// relay listens: a holder shell reads a line from a FIFO that only the server writes.
import { execFile } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, statSync, closeSync, writeSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { berthHome } from '../../db/client.js';
import { networkNamespaceOf } from '../isolation/netns-relay.js';
import type { LocalConfig } from './descriptor.js';

/** Why a sandboxed run cannot start (the run's errorCode, the probe's error). */
export class IsolationError extends Error {
  constructor(
    readonly code: 'isolation_unavailable' | 'isolation_refused',
    message: string,
  ) {
    super(message);
  }
}

/** The bwrap this server runs: BERTH_BWRAP (a path or a name on PATH), else `bwrap`. */
export function bwrapBinary(): string {
  return process.env.BERTH_BWRAP || 'bwrap';
}

/** The flags every sandbox gets; the namespace check uses the same. */
const BASE_FLAGS = ['--die-with-parent', '--new-session', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--cap-drop', 'ALL'];

export interface BwrapCheck {
  path: string;
  version: string;
}

/** Binaries proven to make a sandbox, by name: checked once per server process, failures never cached. */
const proven = new Map<string, BwrapCheck>();

function run(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; error?: NodeJS.ErrnoException }> {
  return new Promise((done) => {
    execFile(cmd, args, { timeout: 10_000, encoding: 'utf8' }, (error, stdout, stderr) => {
      const e = error as (NodeJS.ErrnoException & { code?: unknown }) | null;
      done({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, stdout, stderr, ...(e && typeof e.code === 'string' ? { error: e } : {}) });
    });
  });
}

/**
 * Whether bwrap is here and can make the namespaces a sandbox needs (pid, ipc, uts and
 * network: where bwrap runs unprivileged, user namespaces too). Throws isolation_unavailable
 * saying which is missing.
 */
export async function checkBubblewrap(): Promise<BwrapCheck> {
  const bin = bwrapBinary();
  const known = proven.get(bin);
  if (known) return known;
  const v = await run(bin, ['--version']);
  if (v.error) {
    throw new IsolationError(
      'isolation_unavailable',
      v.error.code === 'ENOENT'
        ? `bubblewrap is not installed: no ${JSON.stringify(bin)} ${bin.includes('/') ? 'there' : 'on PATH'} (install Debian's bubblewrap package, or set BERTH_BWRAP to its path)`
        : `bubblewrap (${bin}) cannot be run: ${v.error.message}`,
    );
  }
  const t = await run(bin, [...BASE_FLAGS, '--unshare-net', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', '--', 'true']);
  if (t.code !== 0) {
    const why = (t.stderr || t.error?.message || `exit ${t.code}`).trim().slice(0, 500);
    throw new IsolationError(
      'isolation_unavailable',
      `bubblewrap (${bin}) cannot create a sandbox here: ${why} (it needs user namespaces where it runs unprivileged: see kernel.unprivileged_userns_clone and user.max_user_namespaces; inside a container, one allowed to make namespaces)`,
    );
  }
  const check = { path: bin, version: v.stdout.trim() || 'unknown' };
  proven.set(bin, check);
  return check;
}

/** Where the holder in the sandbox finds the server's go-ahead. */
const SYNC_MOUNT = '/tmp/.berth-sync';

/** The directory of a sandbox's FIFO: made before the spawn, removed once the run is over. */
export interface SandboxSync {
  dir: string;
  /** Tell the holder to exec the command (its relay listens). */
  go(): void;
  /** Close the FIFO (a holder still waiting reads end of file and exits 1) and remove the directory. */
  close(): void;
}

/** A FIFO in a fresh 0700 directory, held open read-write by this server, so neither side ever blocks on opening it. */
export async function makeSync(): Promise<SandboxSync> {
  const dir = mkdtempSync(join(tmpdir(), `berth-bwrap-${process.pid}-`));
  const fifo = join(dir, 'go');
  const made = await run('mkfifo', ['-m', '0600', fifo]);
  if (made.code !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new IsolationError('isolation_unavailable', `cannot make the sandbox's FIFO ${fifo}: ${(made.stderr || made.error?.message || '').trim()}`);
  }
  const fd = openSync(fifo, 'r+');
  let open = true;
  return {
    dir,
    go() {
      if (open) writeSync(fd, 'go\n');
    },
    close() {
      if (!open) return;
      open = false;
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const kindOf = (p: string): 'dir' | 'file' | null => {
  try {
    return statSync(p).isDirectory() ? 'dir' : 'file';
  } catch {
    return null;
  }
};

/** Hidden by default: the server's home, Berth's own files (its database, its keys), and /run (the host's service sockets). */
export function defaultHiddenPaths(): string[] {
  return [homedir(), berthHome(), '/run'];
}

/**
 * bwrap's arguments for one run: the sandbox, then the command. With `sync`, the command
 * is started by a holder shell once the server writes its go-ahead to the FIFO.
 */
export function sandboxArgs(cfg: LocalConfig, cwd: string, command: string, args: string[], sync: SandboxSync | null): string[] {
  const workspace = resolve(cwd);
  if (workspace === '/') throw new IsolationError('isolation_refused', 'a sandboxed run cannot have / as its working directory: it would make the whole system writable');
  const out = [...BASE_FLAGS];
  if ((cfg.network ?? 'none') === 'none') out.push('--unshare-net');
  out.push('--ro-bind', '/', '/', '--dev', '/dev', '--proc', '/proc', '--tmpfs', '/tmp');
  // Parents before children: a tmpfs over a parent would hide a child mounted first.
  const hidden = [...new Set([...defaultHiddenPaths(), ...(cfg.hiddenPaths ?? [])].map((p) => resolve(p)))]
    .filter((p) => p !== '/' && p !== '/tmp' && kindOf(p) !== null)
    .sort((a, b) => a.length - b.length);
  const hiddenDirs = hidden.filter((p) => kindOf(p) === 'dir');
  // A directory becomes an empty tmpfs (made read-only below); a file, an empty one.
  for (const h of hidden) out.push(...(hiddenDirs.includes(h) ? ['--tmpfs', h] : ['--ro-bind', '/dev/null', h]));
  for (const p of cfg.readOnlyPaths ?? []) out.push('--ro-bind', resolve(p), resolve(p));
  for (const p of cfg.writablePaths ?? []) out.push('--bind', resolve(p), resolve(p));
  out.push('--bind', workspace, workspace);
  if (sync) out.push('--ro-bind', sync.dir, SYNC_MOUNT);
  // Made read-only last: the binds above needed their mount points made in them.
  for (const h of hiddenDirs) out.push('--remount-ro', h);
  out.push('--chdir', workspace, '--');
  if (sync) out.push('/bin/sh', '-c', `read -r _ < ${SYNC_MOUNT}/go && exec "$@"`, 'berth-sandbox', command, ...args);
  else out.push(command, ...args);
  return out;
}

/**
 * The sandbox's first process (its pid namespace's init, on this host's pid numbering):
 * the child of bwrap that is in a network namespace other than this server's. Waits for
 * bwrap to make it (a few ms); null if bwrap exits first or `timeoutMs` passes.
 */
export async function sandboxInit(bwrapPid: number, timeoutMs = 5000): Promise<number | null> {
  const own = networkNamespaceOf('self');
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    let children: number[];
    try {
      children = readFileSync(`/proc/${bwrapPid}/task/${bwrapPid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return null; // bwrap is gone
    }
    for (const c of children) {
      const ns = networkNamespaceOf(c);
      if (ns !== null && ns !== own) return c;
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  return null;
}
