// The `ssh` driver: runs on a remote host over SSH (ssh2), in a resource directory under
// the environment's remoteWorkspacePath, through pooled connections per environment.
//
// An execution does not live in an SSH channel: the launcher (remote.ts) starts a runner
// in its own session on the host, detached from the connection, with the command's
// output going to files. So it survives the connection and this server, and `watch`
// (by this server or another one, from the handle and an offset) reads the files back
// over whatever connection is open then. The environment travels over the launcher's
// stdin, never on a command line. The remote side carries its own deadline so nothing
// outlives a run even if no server ever comes back.
import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import type { ClientChannel } from 'ssh2';
import { ENV_VAR_NAME_RE } from '../../domain/enums.js';
import { UUID_RE } from '../../domain/errors.js';
import { checkedResourceId, storedConfig } from '../common.js';
import { storableText } from '../../domain/text.js';
import { sshConfigSchema, sshDescriptor } from './descriptor.js';
import { execCollect, poolKey, SshError, SshPool, type Borrowed, type RemoteForward, type SshPoolOptions, type SshTarget } from './pool.js';
import { DESTROY, LAUNCHER, LIST, PROVISION, RUNNER, SIGNAL, shCommand, shellQuote, WATCH } from './remote.js';
import {
  LABEL_ENVIRONMENT,
  LABEL_LEASE,
  LABEL_RESOURCE,
  type CallbackRoute,
  type CleanupReport,
  type DriverEnvironment,
  type EnvironmentDriver,
  type ExecutionHandle,
  type ExitResult,
  type ListedResource,
  type OutputListener,
  type ProbeResult,
  type ProvisionedResource,
  type ResourceHandle,
  type WatchOptions,
} from '../contract.js';

export { shellQuote } from './remote.js';

const ENV_NAME = ENV_VAR_NAME_RE;

/**
 * The environment as the launcher reads it from stdin: a line count, then that many
 * lines of `export NAME='value'` (a value with newlines spans lines; the count is of
 * lines, so the launcher reads exactly what belongs to it and not a byte more).
 */
export function encodeEnvironment(env: Record<string, string>): string {
  let script = '';
  for (const [k, v] of Object.entries(env)) {
    if (!ENV_NAME.test(k)) throw new Error(`environment variable name ${JSON.stringify(k)} is not valid`);
    if (v.includes('\0')) throw new Error(`environment variable ${k} contains a NUL byte`);
    script += `export ${k}=${shellQuote(v)}\n`;
  }
  const lines = script.length === 0 ? 0 : script.split('\n').length - 1;
  return `${lines}\n${script}`;
}

interface SshEnvConfig extends SshTarget {
  remoteWorkspacePath: string;
}

function configOf(env: DriverEnvironment): SshEnvConfig {
  const c = storedConfig(sshConfigSchema, env, 'ssh');
  return {
    host: c.host,
    port: c.port,
    username: c.username,
    remoteWorkspacePath: c.remoteWorkspacePath.replace(/\/+$/, '') || '/',
    strictHostKeyChecking: c.strictHostKeyChecking,
    ...(c.privateKey !== undefined ? { privateKey: c.privateKey } : {}),
    ...(c.knownHosts !== undefined ? { knownHosts: c.knownHosts } : {}),
  };
}

const where = (c: SshTarget) => `${c.username}@${c.host}:${c.port}`;

/**
 * `<remoteWorkspacePath>/<resource id>`: the one directory this driver makes for a
 * resource, from the id alone (a UUID the server made), so no stored or caller-written
 * path decides what is made or removed.
 */
function resourceDir(cfg: SshEnvConfig, resourceId: string): string {
  return posix.join(cfg.remoteWorkspacePath, checkedResourceId(resourceId));
}

/** The resource's directory, checked against what provision stored: the same host and the same directory. */
function storedResourceDir(cfg: SshEnvConfig, resource: ResourceHandle): string {
  const dir = resourceDir(cfg, resource.resourceId);
  const s = resource.state ?? {};
  if (s.host !== undefined && (s.host !== cfg.host || s.port !== cfg.port)) {
    throw new Error(`resource ${resource.resourceId}: it is on ${String(s.host)}:${String(s.port)}, but the environment now points at ${cfg.host}:${cfg.port}; remove ${dir} there by hand`);
  }
  if ((s.dir !== undefined && s.dir !== dir) || (resource.providerId !== null && resource.providerId !== undefined && resource.providerId !== dir)) {
    throw new Error(`resource ${resource.resourceId}: refusing ${JSON.stringify(s.dir ?? resource.providerId)}: it is not <remoteWorkspacePath>/<resource id> (${dir})`);
  }
  return dir;
}

/** What an ssh ExecutionHandle's ref holds. */
export type SshExecutionRef =
  | { pgid: number; startTime: string; dir: string; deadlineSec?: number }
  | { spawnError: string };

const EXEC_DIR_RE = /^\/(?:[^/]+\/)*[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\/\.berth\/exec-[0-9a-f]{16}$/i;

/** The handle's ref, checked: made by exec for this environment's host, under its remoteWorkspacePath. */
function refOf(cfg: SshEnvConfig, exe: ExecutionHandle): SshExecutionRef {
  if (exe.driver !== 'ssh') throw new Error(`not an ssh execution (driver ${JSON.stringify(exe.driver)})`);
  if (exe.host !== where(cfg)) throw new Error(`the execution is on ${String(exe.host)}, but the environment now points at ${where(cfg)}`);
  const r = exe.ref ?? {};
  if (typeof r.spawnError === 'string') return { spawnError: r.spawnError };
  const { pgid, startTime, dir, deadlineSec } = r as Record<string, unknown>;
  const root = cfg.remoteWorkspacePath === '/' ? '' : cfg.remoteWorkspacePath;
  if (
    typeof pgid !== 'number' || !Number.isInteger(pgid) || pgid < 2 ||
    typeof startTime !== 'string' || !/^[A-Za-z0-9_:.-]{1,64}$/.test(startTime) ||
    typeof dir !== 'string' || !EXEC_DIR_RE.test(dir) || posix.dirname(posix.dirname(posix.dirname(dir))) !== (root || '/')
  ) {
    throw new Error(`not an execution handle this driver made: ${JSON.stringify(r).slice(0, 300)}`);
  }
  return { pgid, startTime, dir, ...(typeof deadlineSec === 'number' ? { deadlineSec } : {}) };
}

/** Offsets as `watch` reports them: "<stdout bytes>:<stderr bytes>" delivered so far. */
function parseOffset(from: string | undefined): { out: number; err: number } {
  if (from === undefined || from === '') return { out: 0, err: 0 };
  const m = /^(\d{1,15}):(\d{1,15})$/.exec(from);
  if (!m) throw new Error(`not an ssh output offset: ${JSON.stringify(from)} (expected "<stdout bytes>:<stderr bytes>")`);
  return { out: Number(m[1]), err: Number(m[2]) };
}

/** Bytes at the end of `b` that start a UTF-8 character not complete in `b` (0–3). */
function incompleteUtf8Tail(b: Buffer): number {
  for (let back = 1; back <= Math.min(3, b.length); back++) {
    const byte = b[b.length - back]!;
    if ((byte & 0xc0) === 0x80) continue; // a continuation byte: look further back
    const need = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

/** Exit statuses a shell gives for a signal death (128 + n), for the signals numbered alike on Linux and the BSDs. */
const SIGNAL_BY_NUMBER: Record<number, string> = { 1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 6: 'SIGABRT', 9: 'SIGKILL', 13: 'SIGPIPE', 14: 'SIGALRM', 15: 'SIGTERM' };

class ChannelLost extends Error {}

/** Sequential reads of a channel's stdout: lines and exact byte counts. */
class FrameReader {
  private bufs: Buffer[] = [];
  private size = 0;
  private ended = false;
  private wake: (() => void) | null = null;
  constructor(ch: ClientChannel, onBytes: (n: number) => void) {
    ch.on('data', (d: Buffer) => {
      onBytes(d.length);
      this.bufs.push(d);
      this.size += d.length;
      this.wake?.();
    });
    ch.once('close', () => {
      this.ended = true;
      this.wake?.();
    });
  }
  private take(n: number): Buffer {
    const all = this.bufs.length === 1 ? this.bufs[0]! : Buffer.concat(this.bufs);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.bufs = rest.length ? [rest] : [];
    this.size = rest.length;
    return out;
  }
  /** Stop waiting now (an aborted watch): sshd confirms a channel's close only once the remote script has gone. */
  end(): void {
    this.ended = true;
    this.wake?.();
  }
  private async until(ok: () => boolean): Promise<boolean> {
    while (!ok()) {
      if (this.ended) return false;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
    return true;
  }
  /** The next line without its newline; null when the channel closed first. */
  async line(): Promise<string | null> {
    let nl = -1;
    const found = await this.until(() => {
      if (this.bufs.length > 1) this.bufs = [Buffer.concat(this.bufs)];
      nl = this.bufs.length ? this.bufs[0]!.indexOf(10) : -1;
      return nl >= 0;
    });
    if (!found) return null;
    return this.take(nl + 1).subarray(0, nl).toString('utf8');
  }
  async bytes(n: number): Promise<Buffer | null> {
    return (await this.until(() => this.size >= n)) ? Buffer.from(this.take(n)) : null;
  }
}

export interface SshDriverOptions extends SshPoolOptions {
  /** Bytes of one stream `watch` reads per request: what it reads ahead of a sink that waits. Default 64 KiB. */
  watchChunkBytes?: number;
  /** The longest the remote side of `watch` waits between looks for new output while there is none, ms. Default 200. */
  watchPollMs?: number;
  /** After `watch` loses its connection, how long it tries to watch again before the run is lost, ms. Default 30 s. */
  reconnectMs?: number;
  /** ...and how many times at most. Default 5. */
  reconnectTries?: number;
}

export interface SshDriver extends EnvironmentDriver {
  readonly pool: SshPool;
  /** What `watch` has read over SSH (frames included), for tests and benchmarks. */
  readonly stats: { watchBytesRead: number };
  /** Close every pooled connection (shutdown). Executions go on on their hosts. */
  close(): void;
}

export function sshDriver(opts: SshDriverOptions = {}): SshDriver {
  const pool = new SshPool(opts);
  const chunkBytes = opts.watchChunkBytes ?? 64 * 1024;
  const pollMs = String(Math.max(10, Math.round(opts.watchPollMs ?? 200)));
  const reconnectMs = opts.reconnectMs ?? 30_000;
  const reconnectTries = opts.reconnectTries ?? 5;
  const stats = { watchBytesRead: 0 };
  const borrow = (env: DriverEnvironment, cfg: SshEnvConfig) => pool.borrow(poolKey(env.id, cfg), cfg);

  /**
   * Run f on a pooled connection. A pooled connection may have died since its last use
   * without our having heard yet: if f fails and the connection turns out closed, f is
   * tried once more on a fresh one (every f here is idempotent: mkdir, rm -rf, kill, reads).
   */
  async function onConnection<T>(env: DriverEnvironment, cfg: SshEnvConfig, f: (b: Borrowed) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const b = await borrow(env, cfg);
      try {
        return await f(b);
      } catch (err) {
        if (attempt > 1 || b.conn.isOpen() || !pool.pooled) throw err;
      } finally {
        b.release();
      }
    }
  }

  /** A short remote script's result; a failure names what was being done. */
  async function runScript(env: DriverEnvironment, cfg: SshEnvConfig, what: string, script: string, args: string[], o: { stdin?: string; timeoutMs?: number } = {}) {
    const r = await onConnection(env, cfg, (b) => execCollect(b.conn, shCommand(script, args), { timeoutMs: o.timeoutMs ?? 30_000, ...(o.stdin !== undefined ? { stdin: o.stdin } : {}) }));
    if (r.code !== 0) throw new SshError('command', `${what} on ${where(cfg)} failed (exit ${r.code ?? r.signal}): ${r.stderr.trim().slice(0, 500)}`);
    return r;
  }

  /** A channel running `command`, with the same one retry when the pooled connection was dead (no channel opened: nothing ran). */
  async function openChannel(env: DriverEnvironment, cfg: SshEnvConfig, command: string): Promise<{ b: Borrowed; ch: ClientChannel }> {
    for (let attempt = 1; ; attempt++) {
      const b = await borrow(env, cfg);
      try {
        const ch = await new Promise<ClientChannel>((resolve, reject) => b.conn.client.exec(command, (err: Error | undefined, ch: ClientChannel) => (err ? reject(err) : resolve(ch))));
        return { b, ch };
      } catch (err) {
        b.release();
        if (attempt > 1 || b.conn.isOpen() || !pool.pooled) throw new SshError('command', `cannot open a channel on ${where(cfg)}: ${(err as Error).message}`);
      }
    }
  }

  const withCode = (message: string, err: unknown) => Object.assign(new Error(`${message}: ${(err as Error).message}`), { code: err instanceof SshError ? err.code : ((err as { code?: string }).code ?? 'ssh_error') });

  /**
   * One watch over one channel, from `at`. Resolves with how the execution ended; throws
   * ChannelLost when the channel or connection went away first (the caller watches again).
   */
  async function watchOnce(
    env: DriverEnvironment,
    cfg: SshEnvConfig,
    ref: { pgid: number; startTime: string; dir: string; deadlineSec?: number },
    at: { out: number; err: number; stopped: boolean; discarded: number; progressed: boolean },
    sink: OutputListener,
    report: () => void,
    signal: AbortSignal | undefined,
  ): Promise<ExitResult> {
    const marker = `berth:${randomBytes(6).toString('hex')}`;
    let opened: { b: Borrowed; ch: ClientChannel };
    try {
      opened = await openChannel(env, cfg, shCommand(WATCH, [marker, ref.dir, String(ref.pgid), ref.startTime, String(at.out), String(at.err), String(chunkBytes), pollMs]));
    } catch (err) {
      throw new ChannelLost((err as Error).message);
    }
    const { b, ch } = opened;
    const reader = new FrameReader(ch, (n) => (stats.watchBytesRead += n));
    const onAbort = () => {
      reader.end();
      ch.close();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    ch.stderr.resume(); // a login script's noise; nothing of ours goes there
    // A chunk may end inside a UTF-8 character: its first bytes wait for the rest, uncounted in the offset until delivered.
    const carry: Record<'stdout' | 'stderr', Buffer> = { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
    const deliver = async (stream: 'stdout' | 'stderr', text: string) => {
      if (!text || at.stopped) return;
      if ((await sink(stream, text)) === 'stop') at.stopped = true;
    };
    const lost = (why: string) => new ChannelLost(b.conn.isOpen() ? why : `the SSH connection to ${where(cfg)} was lost`);
    try {
      for (;;) {
        const l = await reader.line();
        if (signal?.aborted) throw signal.reason;
        if (l === null) throw lost('the watch channel closed before the execution ended');
        if (l === `${marker} ready`) break;
      }
      for (;;) {
        const l = await reader.line();
        if (signal?.aborted) throw signal.reason;
        if (l === null) throw lost('the watch channel closed before the execution ended');
        if (l === '.') continue;
        const [kind, a, c] = l.split(' ');
        if (kind === 'O' || kind === 'E') {
          const n = Number(a);
          const data = await reader.bytes(n);
          if (signal?.aborted) throw signal.reason;
          if (data === null) throw lost('the watch channel closed in the middle of a chunk');
          const stream = kind === 'O' ? 'stdout' : 'stderr';
          const field = kind === 'O' ? 'out' : 'err';
          if (at.stopped) {
            at.discarded += n;
            at[field] += n;
          } else {
            const whole = carry[stream].length ? Buffer.concat([carry[stream], data]) : data;
            const keep = incompleteUtf8Tail(whole);
            carry[stream] = Buffer.from(whole.subarray(whole.length - keep));
            const text = whole.subarray(0, whole.length - keep).toString('utf8');
            at[field] += whole.length - keep; // delivered now: the earlier carry and this chunk, less the new carry
            await deliver(stream, text);
            if (at.stopped) {
              at.discarded += carry.stdout.length + carry.stderr.length;
              at.out += carry.stdout.length;
              at.err += carry.stderr.length;
              carry.stdout = Buffer.alloc(0);
              carry.stderr = Buffer.alloc(0);
            }
          }
          at.progressed = true;
          report();
          if (signal?.aborted) throw signal.reason;
          ch.write(at.stopped ? 'S\n' : 'A\n');
          continue;
        }
        if (kind === 'K') {
          const out = Number(a);
          const err = Number(c);
          at.discarded += Math.max(0, out - at.out) + Math.max(0, err - at.err);
          at.out = Math.max(at.out, out);
          at.err = Math.max(at.err, err);
          at.progressed = true;
          report();
          continue;
        }
        if (kind === 'X') {
          // Whatever a chunk's end kept back is all there will be: given as it is (a broken character).
          for (const s of ['stdout', 'stderr'] as const) {
            const rest = carry[s];
            if (!rest.length) continue;
            carry[s] = Buffer.alloc(0);
            if (at.stopped) at.discarded += rest.length;
            else await deliver(s, rest.toString('utf8'));
            at[s === 'stdout' ? 'out' : 'err'] += rest.length;
          }
          report();
          const status = Number(a);
          const extra: Partial<ExitResult> = at.discarded > 0 ? { discardedBytes: at.discarded } : {};
          const sig = status > 128 ? SIGNAL_BY_NUMBER[status - 128] : undefined;
          const ended = sig ? { exitCode: null, signal: sig } : { exitCode: Number.isInteger(status) ? status : null, signal: null };
          if (c === 'deadline') {
            return { ...ended, ...extra, error: `the process passed its deadline of ${ref.deadlineSec ?? '?'} s on ${where(cfg)} and was killed there`, errorCode: 'timeout' };
          }
          return { ...ended, ...extra };
        }
        if (kind === 'L') {
          return {
            exitCode: null,
            signal: null,
            ...(at.discarded > 0 ? { discardedBytes: at.discarded } : {}),
            error: `the process on ${where(cfg)} is gone without an exit status (killed from outside Berth, or its host restarted)`,
            errorCode: 'process_lost',
          };
        }
        throw lost(`unexpected output from the watch script: ${JSON.stringify(l.slice(0, 100))}`);
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      ch.close();
      b.release();
    }
  }

  return {
    ...sshDescriptor,
    pool,
    stats,
    close: () => pool.closeAll(),

    async probe(env): Promise<ProbeResult> {
      const started = performance.now();
      let cfg: SshEnvConfig;
      try {
        cfg = configOf(env);
      } catch (err) {
        return { ok: false, latencyMs: 0, error: storableText((err as Error).message), details: { step: 'config' } };
      }
      const base = { host: cfg.host, port: cfg.port, username: cfg.username };
      // A fresh connection, never a pooled one: the probe answers whether a run could connect now.
      const fresh = new SshPool({ pooled: false, ...(opts.connectTimeoutMs ? { connectTimeoutMs: opts.connectTimeoutMs } : {}) });
      let b: Borrowed | null = null;
      try {
        b = await fresh.borrow('probe', cfg);
        const connectedMs = performance.now() - started;
        const t = performance.now();
        const r = await execCollect(b.conn, 'uname -srm; echo ok', { timeoutMs: 10_000 });
        const commandMs = performance.now() - t;
        const lines = r.stdout.trim().split('\n');
        if (r.code !== 0 || lines[lines.length - 1] !== 'ok') {
          throw new SshError('command', `probe command on ${where(cfg)} failed (exit ${r.code ?? r.signal}): ${r.stderr.trim().slice(0, 500)}`);
        }
        return {
          ok: true,
          latencyMs: performance.now() - started,
          details: {
            ...base,
            system: storableText(lines.slice(0, -1).join('\n')),
            hostKeyFingerprint: b.conn.hostKeyFingerprint,
            hostKeyKnown: b.conn.hostKeyKnown,
            connectMs: Math.round(connectedMs * 10) / 10,
            commandMs: Math.round(commandMs * 10) / 10,
          },
        };
      } catch (err) {
        const step = err instanceof SshError ? err.step : 'connect';
        return { ok: false, latencyMs: performance.now() - started, error: storableText((err as Error).message), details: { ...base, step } };
      } finally {
        b?.release();
      }
    },

    async connect(env) {
      // Unpooled, a connection opened now would be closed again before it could be used.
      if (!pool.pooled) return;
      const b = await borrow(env, configOf(env));
      b.release();
    },

    /**
     * `<remoteWorkspacePath>/<resource id>` with its label file. An agent's own cwd is only
     * checked (it must exist); the resource directory is made either way, as the home of
     * the run's output files, so they are never written into an agent's own directory.
     */
    async provision(env, req, signal): Promise<ProvisionedResource> {
      const cfg = configOf(env);
      const dir = resourceDir(cfg, req.resourceId);
      signal.throwIfAborted();
      const labels: Record<string, string> = { ...req.labels, [LABEL_RESOURCE]: req.resourceId, [LABEL_ENVIRONMENT]: env.id };
      if (req.leaseId) labels[LABEL_LEASE] = req.leaseId;
      try {
        await runScript(env, cfg, `making ${dir}`, PROVISION, [cfg.remoteWorkspacePath, dir, req.cwd ?? ''], { stdin: `${JSON.stringify(labels)}\n` });
      } catch (err) {
        throw withCode(`cannot provision the workspace ${dir} on ${where(cfg)}`, err);
      }
      const cwd = req.cwd ?? dir;
      return {
        resourceId: req.resourceId,
        providerId: dir,
        state: { host: cfg.host, port: cfg.port, username: cfg.username, dir },
        cwd,
        details: {
          host: cfg.host,
          port: cfg.port,
          username: cfg.username,
          remoteWorkspacePath: cfg.remoteWorkspacePath,
          cwd,
          workspaceOwned: req.cwd === undefined,
          providerLeaseId: `ssh://${where(cfg)}${dir}`,
        },
      };
    },

    async exec(env, resource, spec, signal): Promise<ExecutionHandle> {
      const cfg = configOf(env);
      const dir = storedResourceDir(cfg, resource);
      const deadlineSec = spec.deadlineSec ?? 0;
      if (!Number.isInteger(deadlineSec) || deadlineSec < 0) throw new Error(`deadlineSec must be a whole number of seconds, not ${deadlineSec}`);
      const stdin = encodeEnvironment(spec.env);
      const name = `exec-${randomBytes(8).toString('hex')}`;
      const marker = `berth:${randomBytes(6).toString('hex')}`;
      signal.throwIfAborted();
      // Once the launcher has its stdin the process may be running: from there exec finishes, so its handle is not lost.
      const { b, ch } = await openChannel(env, cfg, shCommand(LAUNCHER, [marker, RUNNER, dir, name, spec.cwd, String(deadlineSec), spec.command, ...spec.args]));
      let stdout = '';
      let stderr = '';
      const ended: { code: number | null } = { code: null };
      try {
        await new Promise<void>((resolve) => {
          ch.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
          ch.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
          ch.on('exit', (code: number | null) => (ended.code = code));
          ch.once('close', () => resolve());
          ch.end(stdin);
        });
      } finally {
        b.release();
      }
      const mine = (text: string, what: string) => {
        const line = text.split('\n').find((l) => l.startsWith(`${marker} ${what}=`));
        return line === undefined ? null : line.slice(marker.length + what.length + 2);
      };
      const host = where(cfg);
      const started = mine(stdout, 'pid');
      const m = started === null ? null : /^(\d+) start=(\S+)$/.exec(started);
      if (m) {
        return { driver: 'ssh', host, ref: { pgid: Number(m[1]), startTime: m[2]!, dir: `${dir}/.berth/${name}`, ...(deadlineSec > 0 ? { deadlineSec } : {}) } };
      }
      const spawnError = mine(stderr, 'spawn-error');
      if (spawnError !== null) return { driver: 'ssh', host, ref: { spawnError: storableText(spawnError) } };
      const error = mine(stderr, 'error') ?? mine(stdout, 'error');
      const why = error ?? (ended.code === null && !b.conn.isOpen() ? 'the SSH connection was lost while the process started' : `the launcher ended (exit ${ended.code}) without starting it: ${stderr.trim().slice(0, 500)}`);
      throw new SshError('command', `cannot start ${spec.command} on ${host}: ${why}`);
    },

    async watch(env, exe, sink, o: WatchOptions = {}): Promise<ExitResult> {
      const cfg = configOf(env);
      const ref = refOf(cfg, exe);
      if ('spawnError' in ref) return { exitCode: null, signal: null, spawnError: ref.spawnError };
      const at = { ...parseOffset(o.from), stopped: false, discarded: 0, progressed: false };
      const report = () => o.onOffset?.(`${at.out}:${at.err}`);
      let lostAt: number | null = null;
      let tries = 0;
      for (;;) {
        o.signal?.throwIfAborted();
        at.progressed = false;
        try {
          return await watchOnce(env, cfg, ref, at, sink, report, o.signal);
        } catch (err) {
          if (o.signal?.aborted) throw o.signal.reason;
          if (!(err instanceof ChannelLost)) throw err;
          if (at.progressed) {
            lostAt = null;
            tries = 0;
          }
          lostAt ??= Date.now();
          tries++;
          const waited = Date.now() - lostAt;
          if (tries > reconnectTries || waited >= reconnectMs) {
            return {
              exitCode: null,
              signal: null,
              ...(at.discarded > 0 ? { discardedBytes: at.discarded } : {}),
              error: `lost the connection to ${where(cfg)} while the process ran, and could not watch it again (${tries} tries in ${Math.round(waited / 1000)} s): ${err.message}`,
              errorCode: 'process_lost',
            };
          }
          const pause = Math.min(200 * 2 ** (tries - 1), Math.max(0, reconnectMs - waited));
          await new Promise<void>((resolve, reject) => {
            const t = setTimeout(resolve, pause);
            o.signal?.addEventListener('abort', () => (clearTimeout(t), reject(o.signal!.reason)), { once: true });
          });
        }
      }
    },

    async signal(env, exe, sig) {
      const cfg = configOf(env);
      const ref = refOf(cfg, exe);
      if ('spawnError' in ref) return;
      await runScript(env, cfg, `sending SIG${sig} to the remote process group ${ref.pgid}`, SIGNAL, [sig, String(ref.pgid), ref.startTime, ref.dir], { timeoutMs: 15_000 });
    },

    async destroy(env, resource, signal): Promise<CleanupReport> {
      const cfg = configOf(env);
      const dir = storedResourceDir(cfg, resource);
      signal.throwIfAborted();
      const r = await runScript(env, cfg, `rm -rf ${dir}`, DESTROY, [dir], { timeoutMs: 60_000 });
      return r.stdout.trim() === 'gone' ? { nothing: `no directory ${dir} on ${where(cfg)}` } : { removed: `${where(cfg)}:${dir}` };
    },

    async *list(env, signal): AsyncIterable<ListedResource> {
      const cfg = configOf(env);
      signal.throwIfAborted();
      const r = await runScript(env, cfg, `listing ${cfg.remoteWorkspacePath}`, LIST, [cfg.remoteWorkspacePath], { timeoutMs: 60_000 });
      for (const line of r.stdout.split('\n')) {
        const [name, mtime, json] = line.split('\t');
        if (!name || !UUID_RE.test(name) || json === undefined) continue;
        let labels: Record<string, string>;
        try {
          const parsed = JSON.parse(json) as unknown;
          if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) continue;
          labels = Object.fromEntries(Object.entries(parsed).filter((e): e is [string, string] => typeof e[1] === 'string'));
        } catch {
          continue;
        }
        if (labels[LABEL_ENVIRONMENT] !== env.id) continue;
        const t = Number(mtime);
        yield { providerId: posix.join(cfg.remoteWorkspacePath, name), labels, createdAt: mtime && Number.isFinite(t) ? new Date(t * 1000) : null };
      }
    },

    /**
     * A port on the remote's 127.0.0.1 forwarded back over the environment's connection
     * to this server's own address: the run's PAPERCLIP_API_URL is http://127.0.0.1:<that
     * port>, which works wherever the host sits (a private network, behind NAT). Only
     * the remote's loopback listens (sshd's GatewayPorts no), for this run alone; it is
     * removed when the run ends.
     */
    async callbackUrl(env, server): Promise<CallbackRoute> {
      const target = server.localUrl || server.publicUrl;
      const direct = { url: server.publicUrl, close: async () => {} };
      if (!target) return direct; // no API to reach
      const t = new URL(target);
      // TLS names a host: re-addressed as 127.0.0.1 its certificate would not match, so such a URL is given as it is.
      if (t.protocol !== 'http:') return direct;
      const cfg = configOf(env);
      const to = { host: t.hostname.replace(/^\[|\]$/g, ''), port: Number(t.port || 80) };
      let b: Borrowed;
      let fwd: RemoteForward;
      for (let attempt = 1; ; attempt++) {
        b = await borrow(env, cfg);
        try {
          fwd = await b.conn.forwardBack(to);
          break;
        } catch (err) {
          b.release();
          // As in onConnection: a pooled connection that died unnoticed gets one more try on a fresh one.
          if (attempt > 1 || b.conn.isOpen() || !pool.pooled) throw err;
        }
      }
      const held = b;
      return {
        url: `http://127.0.0.1:${fwd.remotePort}${t.pathname.replace(/\/+$/, '')}`,
        close: async () => {
          await fwd.close();
          held.release();
        },
      };
    },
  };
}
