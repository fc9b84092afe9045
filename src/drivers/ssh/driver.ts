// The `ssh` driver: runs on a remote host over SSH (ssh2), in a workspace under the
// environment's remoteWorkspacePath, through one pooled connection per environment.
//
// How a run's process is started (see REMOTE_WRAPPER): the remote command line is a
// fixed wrapper plus the cwd, command and args — never an environment value. The
// environment travels over the channel's stdin as shell-quoted `export` lines that the
// wrapper evaluates before it `exec`s the command. The wrapper runs as the leader of
// its own session and process group (sshd setsid()s every session; `setsid` is used if
// not), reports its pid on stderr, and leaves a watchdog on stdin: when the channel's
// stdin closes (the run ended and we sent EOF, or the connection died), the watchdog
// SIGKILLs the whole group, so nothing the run started outlives it. kill() signals the
// group (and descendants that left it) through a second channel on the same connection,
// because sshd refuses channel signal requests for root logins.
import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { ClientChannel } from 'ssh2';
import { ENV_VAR_NAME_RE } from '../../domain/enums.js';
import { storableText } from '../../domain/text.js';
import type { Lease } from '../../domain/types.js';
import { sshConfigSchema } from './descriptor.js';
import { execCollect, poolKey, SshError, SshPool, type Borrowed, type RemoteForward, type SshConnection, type SshPoolOptions, type SshTarget } from './pool.js';
import type { CallbackRoute, DriverEnvironment, EnvironmentDriver, OutputListener, PreparedWorkspace, ProbeResult, ProcessSpec, StartedProcess } from '../contract.js';

/** Quote for a POSIX shell: one single-quoted word. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

const ENV_NAME = ENV_VAR_NAME_RE;

/**
 * The environment as the wrapper reads it from stdin: a line count, then that many
 * lines of `export NAME='value'` (a value with newlines spans lines; the count is of
 * lines, so the wrapper reads exactly what belongs to it and not a byte more).
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

/**
 * Positional parameters: $1 the marker that prefixes the wrapper's own stderr lines,
 * $2 the cwd, then the command and its args. `read` takes one byte at a time from a
 * pipe, so it never swallows what follows the environment. Fixed text: nothing of a
 * run's environment is ever part of it.
 */
const REMOTE_WRAPPER = `m=$1; d=$2; shift 2
IFS= read -r n || exit 125
s=
while [ "$n" -gt 0 ]; do IFS= read -r l || exit 125; s="$s$l
"; n=$((n-1)); done
eval "$s"; unset s l n
cd -- "$d" 2>/dev/null || { printf '%s spawn-error=cannot enter the working directory %s\\n' "$m" "$d" >&2; exit 126; }
command -v -- "$1" >/dev/null 2>&1 || { printf '%s spawn-error=%s: command not found\\n' "$m" "$1" >&2; exit 127; }
g=; read -r _ _ _ _ g _ </proc/$$/stat 2>/dev/null || g=$(ps -o pgid= -p $$ 2>/dev/null | tr -d ' ')
exec 3<&0
( trap '' INT TERM HUP; while IFS= read -r _; do :; done; kill -KILL -$$ ) <&3 >/dev/null 2>&1 &
exec 3<&-
printf '%s pid=%s\\n' "$m" "$$" >&2
if [ "$g" != "$$" ] && command -v setsid >/dev/null 2>&1; then exec setsid "$@" </dev/null; fi
exec "$@" </dev/null`;

/**
 * Signal a process group and every descendant of its leader that left it. $1 signal,
 * $2 pgid. ps + awk, as every Linux and BSD has them.
 */
const REMOTE_KILL = `sig=$1; g=$2
kids=$(ps -e -o pid= -o ppid= 2>/dev/null | awk -v r="$g" '{ p[NR] = $1; q[NR] = $2 } END { w[r] = 1; c = 1; while (c) { c = 0; for (i = 1; i <= NR; i++) if ((q[i] in w) && !(p[i] in w)) { w[p[i]] = 1; c = 1 } } for (k in w) if (k != r) print k }')
kill -"$sig" -"$g" 2>/dev/null
[ -n "$kids" ] && kill -"$sig" $kids 2>/dev/null
exit 0`;

const shCommand = (script: string, args: string[]) => `exec sh -c ${shellQuote(script)} berth ${args.map(shellQuote).join(' ')}`;

interface SshEnvConfig extends SshTarget {
  remoteWorkspacePath: string;
}

function configOf(env: DriverEnvironment): SshEnvConfig {
  const parsed = sshConfigSchema.safeParse(env.secretConfig);
  // Issue messages only, never values: a stored key that no longer parses must not be quoted.
  if (!parsed.success) throw Object.assign(new Error(`environment ${env.id} has an invalid ssh config: ${parsed.error.issues.map((i) => `config.${i.path.join('.')}: ${i.message}`).join('; ')}`), { code: 'ssh_config' });
  const c = parsed.data;
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

export interface SshDriverOptions extends SshPoolOptions {
  /** After the leader exits, how long the channel may stay open (a grandchild holding stdout) before the group is killed from outside. */
  drainMs?: number;
}

export interface SshDriver extends EnvironmentDriver {
  readonly pool: SshPool;
  /** Close every pooled connection (shutdown). */
  close(): void;
}

export function sshDriver(opts: SshDriverOptions = {}): SshDriver {
  const pool = new SshPool(opts);
  const drainMs = opts.drainMs ?? 2000;
  const borrow = (env: DriverEnvironment, cfg: SshEnvConfig, prefer?: SshConnection) => pool.borrow(poolKey(env.id, cfg), cfg, prefer);
  /** The connection carrying each open callback forward, by pool key and the URL it gave the run. */
  const forwardedOn = new Map<string, SshConnection>();
  const where = (c: SshEnvConfig) => `${c.username}@${c.host}:${c.port}`;

  /**
   * Run f on a pooled connection. A pooled connection may have died since its last use
   * without our having heard yet: if f fails and the connection turns out closed, f is
   * tried once more on a fresh one (every f here is idempotent: mkdir -p, rm -rf, kill).
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

  /** A channel running `command`, with the same one retry when the pooled connection was dead (no channel opened: nothing ran). */
  async function openChannel(env: DriverEnvironment, cfg: SshEnvConfig, command: string, prefer?: SshConnection): Promise<{ b: Borrowed; ch: ClientChannel }> {
    for (let attempt = 1; ; attempt++) {
      const b = await borrow(env, cfg, attempt === 1 ? prefer : undefined);
      try {
        const ch = await new Promise<ClientChannel>((resolve, reject) =>
          b.conn.client.exec(command, (err: Error | undefined, ch: ClientChannel) => (err ? reject(err) : resolve(ch))),
        );
        return { b, ch };
      } catch (err) {
        b.release();
        if (attempt > 1 || b.conn.isOpen() || !pool.pooled) throw new SshError('command', `cannot open a channel on ${where(cfg)}: ${(err as Error).message}`);
      }
    }
  }

  return {
    driver: 'ssh',
    remote: true,
    pool,
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

    async prepareWorkspace(env, lease: Lease, o: { cwd?: string }): Promise<PreparedWorkspace> {
      const cfg = configOf(env);
      const base = { host: cfg.host, port: cfg.port, username: cfg.username, remoteWorkspacePath: cfg.remoteWorkspacePath };
      const cwd = o.cwd ?? posix.join(cfg.remoteWorkspacePath, lease.id);
      const owned = o.cwd === undefined;
      try {
        await onConnection(env, cfg, async (b) => {
          // An agent's own cwd must exist already; a workspace Berth owns is made here.
          const r = await execCollect(b.conn, owned ? `mkdir -p -- ${shellQuote(cwd)}` : `cd -- ${shellQuote(cwd)}`, { timeoutMs: 30_000 });
          if (r.code !== 0) throw new SshError('command', `${owned ? 'mkdir' : 'cd'} ${cwd} failed (exit ${r.code ?? r.signal}): ${r.stderr.trim().slice(0, 500)}`);
        });
      } catch (err) {
        const e = new Error(`cannot prepare the workspace ${cwd} on ${where(cfg)}: ${(err as Error).message}`);
        throw Object.assign(e, { code: err instanceof SshError ? err.code : 'ssh_error' });
      }
      return {
        cwd,
        details: { ...base, cwd, workspaceOwned: owned, providerLeaseId: `ssh://${cfg.username}@${cfg.host}:${cfg.port}${cwd}` },
      };
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
      const url = `http://127.0.0.1:${fwd.remotePort}${t.pathname.replace(/\/+$/, '')}`;
      const key = `${poolKey(env.id, cfg)} ${url}`;
      forwardedOn.set(key, b.conn);
      const held = b;
      return {
        url,
        close: async () => {
          if (forwardedOn.get(key) === held.conn) forwardedOn.delete(key);
          await fwd.close();
          held.release();
        },
      };
    },

    startProcess(env, spec, onOutput): StartedProcess {
      return startRemoteProcess(env, spec, onOutput);
    },

    async cleanup(env, lease) {
      // The server's own record of what prepareWorkspace made; never the caller's metadata.
      const m = lease.driverState ?? {};
      if (m.workspaceOwned !== true) return { nothing: "the run used its agent's own cwd, which is never removed" };
      const root = typeof m.remoteWorkspacePath === 'string' ? m.remoteWorkspacePath : null;
      const cwd = typeof m.cwd === 'string' ? m.cwd : null;
      // Only exactly <remoteWorkspacePath>/<lease id>, as prepareWorkspace made it.
      if (!root || !cwd || !root.startsWith('/') || root.split('/').includes('..') || cwd !== posix.join(root, lease.id)) {
        throw new Error(`lease ${lease.id}: refusing to remove ${JSON.stringify(cwd)}: it is not <remoteWorkspacePath>/<lease id>`);
      }
      if (!env) throw new Error(`lease ${lease.id}: its ssh environment is gone or unreadable; cannot remove ${cwd} on ${m.host}:${m.port}`);
      const cfg = configOf(env);
      if (cfg.host !== m.host || cfg.port !== m.port) {
        throw new Error(`lease ${lease.id}: its workspace is on ${m.host}:${m.port}, but the environment now points at ${cfg.host}:${cfg.port}; remove ${cwd} there by hand`);
      }
      await onConnection(env, cfg, async (b) => {
        const r = await execCollect(b.conn, `rm -rf -- ${shellQuote(cwd)}`, { timeoutMs: 60_000 });
        if (r.code !== 0) throw new SshError('command', `rm -rf ${cwd} on ${where(cfg)} failed (exit ${r.code ?? r.signal}): ${r.stderr.trim().slice(0, 500)}`);
      });
      return { removed: `${where(cfg)}:${cwd}` };
    },
  };

  function startRemoteProcess(env: DriverEnvironment, spec: ProcessSpec, onOutput: OutputListener): StartedProcess {
    let pgid: number | null = null;
    let pendingSignal: 'SIGTERM' | 'SIGKILL' | null = null;
    let opened: { b: Borrowed; ch: ClientChannel };
    let channel: ClientChannel | null = null;
    let resolveSpawned!: (pid: number | null) => void;
    const spawned = new Promise<number | null>((r) => (resolveSpawned = r));
    let cfg: SshEnvConfig | null = null;

    const signalGroup = (signal: 'SIGTERM' | 'SIGKILL'): void => {
      if (pgid === null || !cfg) return;
      const c = cfg;
      const g = pgid;
      void onConnection(env, c, (b) => execCollect(b.conn, shCommand(REMOTE_KILL, [signal.replace(/^SIG/, ''), String(g)]), { timeoutMs: 15_000 })).catch((err: unknown) =>
        onOutput('stderr', `berth: could not send ${signal} to the remote process group ${g} on ${where(c)}: ${(err as Error).message}\n`),
      );
    };

    const exited = (async (): Promise<{ exitCode: number | null; signal: string | null; spawnError?: string; error?: string; errorCode?: string }> => {
      let stdin: string;
      const marker = `berth:${randomBytes(6).toString('hex')}`;
      try {
        cfg = configOf(env);
        stdin = encodeEnvironment(spec.env);
        // On the connection carrying the run's callback forward, if it has one.
        const via = spec.env.PAPERCLIP_API_URL ? forwardedOn.get(`${poolKey(env.id, cfg)} ${spec.env.PAPERCLIP_API_URL}`) : undefined;
        opened = await openChannel(env, cfg, shCommand(REMOTE_WRAPPER, [marker, spec.cwd, spec.command, ...spec.args]), via);
      } catch (err) {
        resolveSpawned(null);
        return { exitCode: null, signal: null, spawnError: (err as Error).message };
      }
      const { b, ch } = opened;
      const c = cfg;
      try {
        return await new Promise((resolve) => {
          channel = ch;
          let exit: { code: number | null; signal: string | null } | null = null;
          let spawnError: string | null = null;
          let drainTimer: NodeJS.Timeout | undefined;
          const out = new StringDecoder('utf8');
          const errDecoder = new StringDecoder('utf8');
          // stderr until the wrapper's pid line: the wrapper's own lines are taken out,
          // anything else (a login script's noise) passes through.
          let preamble: string | null = '';
          const onStderr = (text: string) => {
            if (preamble === null) return text && onOutput('stderr', text);
            preamble += text;
            let nl: number;
            while (preamble !== null && (nl = preamble.indexOf('\n')) >= 0) {
              const line = preamble.slice(0, nl);
              const rest = preamble.slice(nl + 1);
              if (line.startsWith(`${marker} pid=`)) {
                pgid = Number(line.slice(marker.length + 5));
                resolveSpawned(pgid);
                if (pendingSignal) signalGroup(pendingSignal);
                preamble = null;
                if (rest) onOutput('stderr', rest);
                return;
              }
              if (line.startsWith(`${marker} spawn-error=`)) spawnError = storableText(line.slice(marker.length + 13));
              else onOutput('stderr', `${line}\n`);
              preamble = rest;
            }
          };
          ch.on('data', (d: Buffer) => {
            const t = out.write(d);
            if (t) onOutput('stdout', t);
          });
          ch.stderr.on('data', (d: Buffer) => onStderr(errDecoder.write(d)));
          ch.on('exit', (code: number | null, signal?: string) => {
            exit = { code, signal: signal ?? null };
            // EOF on stdin: the watchdog kills what is left of the group. If it cannot
            // (a TERM took it), the group is killed from outside after drainMs.
            ch.end();
            drainTimer = setTimeout(() => {
              const g = pgid;
              if (g !== null) signalGroup('SIGKILL');
              setTimeout(() => ch.close(), 1000).unref();
            }, drainMs);
          });
          ch.once('close', () => {
            clearTimeout(drainTimer);
            const rest = out.end();
            if (rest) onOutput('stdout', rest);
            const errRest = errDecoder.end();
            if (errRest) onStderr(errRest);
            if (preamble) onOutput('stderr', preamble);
            resolveSpawned(null); // no-op once the pid was reported
            if (spawnError !== null) return resolve({ exitCode: null, signal: null, spawnError });
            if (exit) return resolve({ exitCode: exit.code, signal: exit.signal });
            // The channel closed without an exit status: the connection died under the run
            // (the wrapper's watchdog then kills the remote group when sshd closes its stdin).
            const why = b.conn.isOpen() ? 'the channel closed without an exit status' : 'the SSH connection was lost';
            resolve({ exitCode: null, signal: null, error: `${why} (${where(c)}) while the process ran`, errorCode: 'ssh_connection_lost' });
          });
          ch.write(stdin);
        });
      } finally {
        b.release();
      }
    })();

    return {
      spawned,
      exited,
      kill(signal) {
        if (pgid !== null) return signalGroup(signal);
        pendingSignal = signal;
        // Not started yet: a SIGKILL before the pid is known closes the channel, and the watchdog does the rest.
        if (signal === 'SIGKILL' && channel) (channel as ClientChannel).close();
      },
    };
  }
}
