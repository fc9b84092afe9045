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
//     port of PAPERCLIP_API_URL: the run reaches Berth and nothing else. The namespace and
//     its relay are made before the run starts (openSandboxNet; the driver keeps one
//     ready), so the command starts with its route open and the relay's start-up is not
//     on the run's path; the relay's inside end is in Perl and starts in a few ms.
// The run's variables (secrets among them) reach it through the environment bwrap
// inherits, never as arguments.
import { execFile } from 'node:child_process';
import { closeSync, openSync, readlinkSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { berthHome } from '../../db/client.js';
import { networkNamespaceOf, openRelayOutside, relayMainPerl } from '../isolation/netns-relay.js';
import { startLocalProcess } from './process-tree.js';
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

/**
 * A network namespace made ahead of a sandbox that has no network: only a loopback, where
 * Berth's relay to the server already listens. A sandbox joins it (nsenter, then bwrap
 * without --unshare-net), so its command starts with its route to Berth open. Each is
 * used by one run only, then closed. Its only process is the relay's inside end itself
 * (`unshare --net perl relay-main.pl`, which brings up its loopback), started through the
 * spawner helper like a run (its cgroup, and it dies with this server), connecting to an
 * outside end in this server (openRelayOutside). The namespace is named by a file descriptor of
 * this server's, never by a pid that could be reused.
 */
export interface SandboxNet {
  /** nsenter's `--net=` path: this server's descriptor of the namespace. */
  nsPath: string;
  /** False once its relay has ended (killed, or its spawner helper died): a spare in that state is of no use. */
  alive(): boolean;
  /** Stops the relay. Never throws; safe to call twice. */
  close(): Promise<void>;
}

export async function openSandboxNet(port: number, target: { host: string; port: number }, readyTimeoutMs = 5000): Promise<SandboxNet> {
  const outside = await openRelayOutside(target);
  let out = '';
  let stderr = '';
  let listening!: () => void;
  const ready = new Promise<void>((r) => (listening = r));
  const proc = startLocalProcess(
    {
      // A network namespace of its own (unshare, util-linux), its loopback brought up by the relay.
      command: 'unshare',
      args: ['--net', '--', 'perl', relayMainPerl, String(port), outside.socketPath, 'nostdin', 'lo-up'],
      cwd: '/',
      env: { PATH: process.env.PATH || '/usr/sbin:/usr/bin:/sbin:/bin' },
    },
    (stream, text) => {
      if (stream === 'stderr') stderr = (stderr + text).slice(-1000);
      else if (/^ready \d+\n/.test((out += text))) listening();
    },
  );
  let fd: number | null = null;
  let closed = false;
  let exited = false;
  void proc.exited.then(() => (exited = true));
  const close = async () => {
    if (closed) return;
    closed = true;
    proc.kill('SIGKILL');
    if (fd !== null) closeSync(fd);
    await outside.close();
  };
  try {
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      ready.then(() => 'ready' as const),
      proc.exited.then((e) => `it exited (${e.spawnError ?? e.signal ?? `code ${e.exitCode}`})`),
      new Promise<string>((r) => (timer = setTimeout(() => r(`it did not listen within ${readyTimeoutMs} ms`), readyTimeoutMs))),
    ]);
    clearTimeout(timer);
    if (outcome !== 'ready') throw new IsolationError('isolation_unavailable', `the relay for a sandbox with no network could not start: ${outcome}${stderr.trim() ? `: ${stderr.trim()}` : ''}`);
    // The relay is unshare's exec: the process said ready from inside its namespace.
    const pid = await proc.spawned;
    if (pid === null) throw new IsolationError('isolation_unavailable', 'the relay for a sandbox with no network ended before its namespace could be taken');
    fd = openSync(`/proc/${pid}/ns/net`, 'r');
    if (readlinkSync(`/proc/self/fd/${fd}`) === networkNamespaceOf('self')) throw new IsolationError('isolation_unavailable', "the sandbox's network namespace turned out to be this server's");
  } catch (err) {
    await close();
    throw err;
  }
  return { nsPath: `/proc/${process.pid}/fd/${fd}`, alive: () => !exited && !closed, close };
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

/** bwrap's arguments for one run: the sandbox, then the command. */
export function sandboxArgs(cfg: LocalConfig, cwd: string, command: string, args: string[], opts: { joinedNetwork?: boolean } = {}): string[] {
  const workspace = resolve(cwd);
  if (workspace === '/') throw new IsolationError('isolation_refused', 'a sandboxed run cannot have / as its working directory: it would make the whole system writable');
  const out = [...BASE_FLAGS];
  // Network none: a namespace of its own, unless it was started inside one made for it (openSandboxNet).
  if ((cfg.network ?? 'none') === 'none' && !opts.joinedNetwork) out.push('--unshare-net');
  out.push('--ro-bind', '/', '/', '--dev', '/dev', '--proc', '/proc', '--tmpfs', '/tmp');
  // Parents before children: a tmpfs over a parent would hide a child mounted first.
  const hidden = [...new Set([...defaultHiddenPaths(), ...(cfg.hiddenPaths ?? [])].map((p) => resolve(p)))]
    .filter((p) => p !== '/' && p !== '/tmp' && kindOf(p) !== null)
    .sort((a, b) => a.length - b.length);
  const hiddenDirs = hidden.filter((p) => kindOf(p) === 'dir');
  // A directory becomes an empty tmpfs (made read-only below); a file, /dev/null bound where nothing can read it (nodev).
  for (const h of hidden) out.push(...(hiddenDirs.includes(h) ? ['--tmpfs', h] : ['--ro-bind', '/dev/null', h]));
  for (const p of cfg.readOnlyPaths ?? []) out.push('--ro-bind', resolve(p), resolve(p));
  for (const p of cfg.writablePaths ?? []) out.push('--bind', resolve(p), resolve(p));
  out.push('--bind', workspace, workspace);
  // Made read-only last: the binds above needed their mount points made in them.
  for (const h of hiddenDirs) out.push('--remount-ro', h);
  out.push('--chdir', workspace, '--');
  out.push(command, ...args);
  return out;
}
