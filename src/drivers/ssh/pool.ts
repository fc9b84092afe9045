// SSH connections for the SSH driver: connect step by step (resolve, TCP connect, host
// key, auth) so a failure names its step, and keep them pooled per environment and
// config: reused across runs, a new one when all channels of the others are busy,
// dropped when they close, closed after idling.
import { createHash } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { connect as tcpConnect, isIP, Socket } from 'node:net';
import { Client, type ClientChannel } from 'ssh2';
import { storableText } from '../../domain/text.js';
import { privateKeyProblem } from './descriptor.js';
import { fingerprintSha256, verifyHostKey } from './known-hosts.js';

export type SshStep = 'resolve' | 'connect' | 'host_key' | 'auth' | 'command' | 'forward';

export class SshError extends Error {
  readonly step: SshStep;
  /** For the executor's run errorCode: `ssh_<step>`. */
  readonly code: string;
  constructor(step: SshStep, message: string) {
    // Messages carry text from the remote and from ssh2: made storable here, once, since they end up in runs, probes and logs.
    super(storableText(message));
    this.name = 'SshError';
    this.step = step;
    this.code = `ssh_${step}`;
  }
}

/** Where and as whom to connect (the environment's config, private key decrypted). */
export interface SshTarget {
  host: string;
  port: number;
  username: string;
  privateKey?: string;
  knownHosts?: string;
  strictHostKeyChecking: boolean;
}

export interface SshPoolOptions {
  /** false: a fresh connection per use, ended after it (for comparison in the benchmark). */
  pooled?: boolean;
  /** A pooled connection with no open channel is closed after this long. Default 30 s. */
  idleMs?: number;
  /** Channels one connection carries before the pool opens another (sshd's MaxSessions defaults to 10). */
  maxChannelsPerConnection?: number;
  /** Resolve + connect + handshake + auth must finish within this. Default 10 s. */
  connectTimeoutMs?: number;
  /** Keepalive probe interval; a connection missing 3 in a row is dropped. Default 5 s. */
  keepaliveMs?: number;
}

export interface SshConnection {
  readonly client: Client;
  readonly target: SshTarget;
  readonly hostKeyFingerprint: string;
  /** Whether the host key was found in knownHosts (false: accepted only because checking is not strict). */
  readonly hostKeyKnown: boolean;
  /** Resolves when the connection has closed, with why when it was not our doing. */
  readonly closed: Promise<string | null>;
  isOpen(): boolean;
  /**
   * Listen on the remote's 127.0.0.1 (a port sshd picks) and carry each connection made
   * to it back over this connection to `to` on this side. Lives until closed or until
   * the connection does.
   */
  forwardBack(to: { host: string; port: number }): Promise<RemoteForward>;
}

export interface RemoteForward {
  /** The port on the remote's 127.0.0.1. */
  remotePort: number;
  /** Stop listening and end the connections it carries; never throws. */
  close(): Promise<void>;
}

/** One use of a connection: give it back with release(). */
export interface Borrowed {
  conn: SshConnection;
  release(): void;
}

class PooledConnection implements SshConnection {
  channels = 0;
  open = true;
  idleTimer: NodeJS.Timeout | undefined;
  endedByUs = false;
  /** Remote port → where its connections go, and the ends of those open now. */
  private readonly forwards = new Map<number, { to: { host: string; port: number }; open: Set<() => void> }>();
  private forwarding = false;
  readonly closed: Promise<string | null>;
  private resolveClosed!: (why: string | null) => void;

  constructor(
    readonly client: Client,
    readonly sock: Socket,
    readonly target: SshTarget,
    readonly hostKeyFingerprint: string,
    readonly hostKeyKnown: boolean,
  ) {
    this.closed = new Promise((r) => (this.resolveClosed = r));
    let lastError: string | null = null;
    client.on('error', (err: Error) => (lastError = err.message));
    client.once('close', () => {
      this.open = false;
      clearTimeout(this.idleTimer);
      this.resolveClosed(this.endedByUs ? null : (lastError ?? 'the server closed the connection'));
    });
  }

  /** Open as far as we can tell: not closed, and its socket still writable (a half-closed one is not). */
  isOpen(): boolean {
    return this.open && this.sock.writable && !this.sock.destroyed;
  }

  forwardBack(to: { host: string; port: number }): Promise<RemoteForward> {
    const where = `${this.target.host}:${this.target.port}`;
    if (!this.forwarding) {
      this.forwarding = true;
      this.client.on('tcp connection', (info, accept, reject) => {
        const f = this.forwards.get(info.destPort);
        if (!f) return reject();
        const ch = accept();
        const sock = tcpConnect({ host: f.to.host, port: f.to.port });
        const end = () => {
          sock.destroy();
          ch.close();
        };
        f.open.add(end);
        sock.once('error', end);
        ch.once('error', end);
        sock.once('close', () => ch.end());
        ch.once('close', () => {
          f.open.delete(end);
          sock.destroy();
        });
        ch.pipe(sock).pipe(ch);
      });
    }
    return new Promise<RemoteForward>((resolve, reject) => {
      const refused = (why: string) =>
        new SshError('forward', `cannot forward a port on ${where} back to Berth for the run's PAPERCLIP_API_URL (sshd needs AllowTcpForwarding yes or remote): ${why}`);
      try {
        this.client.forwardIn('127.0.0.1', 0, (err, remotePort) => {
          if (err) return reject(refused(err.message));
          // Registered here, synchronously: a connection to the port may arrive in the same packet batch.
          const entry = { to, open: new Set<() => void>() };
          this.forwards.set(remotePort, entry);
          let closed = false;
          resolve({
            remotePort,
            close: async () => {
              if (closed) return;
              closed = true;
              this.forwards.delete(remotePort);
              for (const end of [...entry.open]) end();
              if (!this.isOpen()) return;
              await new Promise<void>((r) => {
                const timer = setTimeout(r, 5000); // a peer that does not answer must not hold the run's end
                try {
                  this.client.unforwardIn('127.0.0.1', remotePort, () => (clearTimeout(timer), r()));
                } catch {
                  clearTimeout(timer);
                  r();
                }
              });
            },
          });
        });
      } catch (err) {
        reject(refused((err as Error).message));
      }
    });
  }

  end(): void {
    if (!this.open) return;
    this.endedByUs = true;
    this.client.end();
    // A peer that does not answer our disconnect must not hold the socket.
    setTimeout(() => this.sock.destroy(), 2000).unref();
  }
}

/** Pool key: the environment and everything that decides where and as whom we connect. */
export function poolKey(envId: string, target: SshTarget): string {
  const digest = createHash('sha256').update(JSON.stringify([target.host, target.port, target.username, target.privateKey ?? '', target.knownHosts ?? '', target.strictHostKeyChecking])).digest('hex');
  return `${envId}:${digest.slice(0, 16)}`;
}

/** One use of a connection: counted now, given back once (a second release does nothing); `onLast` runs when no use is left. */
function borrow(conn: PooledConnection, onLast: () => void): Borrowed {
  conn.channels++;
  let released = false;
  return {
    conn,
    release: () => {
      if (released) return;
      released = true;
      if (--conn.channels === 0) onLast();
    },
  };
}

export class SshPool {
  private readonly conns = new Map<string, PooledConnection[]>();
  private readonly pending = new Map<string, Promise<PooledConnection>>();
  readonly pooled: boolean;
  private readonly idleMs: number;
  private readonly maxChannels: number;
  private readonly connectTimeoutMs: number;
  private readonly keepaliveMs: number;

  constructor(opts: SshPoolOptions = {}) {
    this.pooled = opts.pooled ?? true;
    this.idleMs = opts.idleMs ?? 30_000;
    this.maxChannels = opts.maxChannelsPerConnection ?? 8;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    this.keepaliveMs = opts.keepaliveMs ?? 5_000;
  }

  /**
   * A connection for one use (one or more channels in sequence), pooled or fresh.
   * `prefer`: this connection if it is still open and has room (a run's process goes on
   * the connection that carries its callback forward, so the two live and die together).
   */
  async borrow(key: string, target: SshTarget, prefer?: SshConnection): Promise<Borrowed> {
    const preferred = prefer instanceof PooledConnection && prefer.isOpen() ? prefer : null;
    if (!this.pooled) {
      // Unpooled, a connection is ended when its last use is given back.
      const conn = preferred ?? (await connectSsh(target, this.connectTimeoutMs, this.keepaliveMs));
      return borrow(conn, () => conn.end());
    }
    if (preferred && preferred.channels < this.maxChannels && (this.conns.get(key) ?? []).includes(preferred)) return this.lend(preferred);
    for (;;) {
      const live = (this.conns.get(key) ?? []).filter((c) => c.isOpen());
      const free = live.find((c) => c.channels < this.maxChannels);
      if (free) return this.lend(free);
      // One connect at a time per key: the others wait for it and look again.
      const inFlight = this.pending.get(key) ?? this.startConnect(key, target);
      await inFlight;
    }
  }

  private startConnect(key: string, target: SshTarget): Promise<PooledConnection> {
    const p = connectSsh(target, this.connectTimeoutMs, this.keepaliveMs)
      .then((conn) => {
        const list = (this.conns.get(key) ?? []).filter((c) => c.isOpen());
        list.push(conn);
        this.conns.set(key, list);
        void conn.closed.then(() => {
          const now = (this.conns.get(key) ?? []).filter((c) => c !== conn);
          if (now.length > 0) this.conns.set(key, now);
          else this.conns.delete(key);
        });
        this.idle(conn); // nobody holds it until lend()
        return conn;
      })
      .finally(() => this.pending.delete(key));
    this.pending.set(key, p);
    return p;
  }

  private lend(conn: PooledConnection): Borrowed {
    clearTimeout(conn.idleTimer);
    conn.sock.ref();
    return borrow(conn, () => this.idle(conn));
  }

  /** An idle connection neither keeps the process alive nor lives forever. */
  private idle(conn: PooledConnection): void {
    conn.sock.unref();
    clearTimeout(conn.idleTimer);
    conn.idleTimer = setTimeout(() => conn.channels === 0 && conn.end(), this.idleMs);
    conn.idleTimer.unref();
  }

  /** Open pooled connections (for tests and diagnostics). */
  size(): number {
    let n = 0;
    for (const list of this.conns.values()) n += list.filter((c) => c.isOpen()).length;
    return n;
  }

  /** Close every pooled connection (server shutdown). The pool stays usable: a later borrow reconnects. */
  closeAll(): void {
    for (const list of this.conns.values()) for (const c of list) c.end();
    this.conns.clear();
  }
}

/** Resolve, connect, verify the host key, authenticate: each failure an SshError naming its step. */
async function connectSsh(target: SshTarget, timeoutMs: number, keepaliveMs: number): Promise<PooledConnection> {
  const where = `${target.host}:${target.port}`;
  const deadline = Date.now() + timeoutMs;
  let address = target.host;
  if (!isIP(target.host)) {
    try {
      address = (await lookup(target.host)).address;
    } catch (err) {
      throw new SshError('resolve', `cannot resolve ${target.host}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  const sock = new Socket();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new SshError('connect', `cannot connect to ${where}: no answer within ${timeoutMs} ms`));
    }, Math.max(1, deadline - Date.now()));
    sock.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new SshError('connect', `cannot connect to ${where}${address !== target.host ? ` (${address})` : ''}: ${err.code ?? err.message}`));
    });
    sock.connect({ host: address, port: target.port });
  });
  sock.setNoDelay(true);

  const client = new Client();
  let hostKey: { fingerprint: string; known: boolean } | null = null;
  let hostKeyRefusal: string | null = null;
  return new Promise<PooledConnection>((resolve, reject) => {
    const fail = (err: SshError) => {
      client.removeAllListeners('ready');
      sock.destroy();
      reject(err);
    };
    client.once('ready', () => {
      client.removeListener('error', onError);
      resolve(new PooledConnection(client, sock, target, hostKey!.fingerprint, hostKey!.known));
    });
    const onError = (err: Error & { level?: string }) => {
      if (hostKeyRefusal) return fail(new SshError('host_key', hostKeyRefusal));
      if (err.level === 'client-authentication') {
        const why = target.privateKey ? 'the server did not accept the private key' : 'no privateKey is configured';
        return fail(new SshError('auth', `authentication as ${target.username}@${where} failed: ${why}`));
      }
      if (err.level === 'client-timeout') return fail(new SshError('connect', `SSH handshake with ${where} did not finish within ${timeoutMs} ms`));
      fail(new SshError(hostKey ? 'auth' : 'connect', `SSH handshake with ${where} failed: ${err.message}`));
    };
    client.on('error', onError);
    try {
      client.connect({
        sock,
        username: target.username,
        ...(target.privateKey ? { privateKey: target.privateKey } : {}),
        readyTimeout: Math.max(1, deadline - Date.now()),
        keepaliveInterval: keepaliveMs,
        keepaliveCountMax: 3,
        hostVerifier: (key: Buffer) => {
          const verdict = verifyHostKey(target.knownHosts, target.host, target.port, key, target.strictHostKeyChecking);
          hostKey = { fingerprint: fingerprintSha256(key), known: verdict.ok && verdict.known };
          if (!verdict.ok) hostKeyRefusal = `host key verification failed for ${where}: ${verdict.message}`;
          return verdict.ok;
        },
      });
    } catch {
      // ssh2 parses the private key here, synchronously; its message may quote the key's bytes, so it is never passed on.
      const why = target.privateKey ? privateKeyProblem(target.privateKey) : null;
      fail(new SshError('auth', `cannot use config.privateKey for ${target.username}@${where}: ${why ?? 'ssh2 refused it'}`));
    }
  });
}

/** Run a short command on a borrowed connection; its output and exit code. */
export function execCollect(conn: SshConnection, command: string, opts: { stdin?: string; timeoutMs?: number } = {}): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    conn.client.exec(command, (err: Error | undefined, ch: ClientChannel) => {
      if (err) return reject(new SshError('command', `cannot run a command on ${conn.target.host}:${conn.target.port}: ${err.message}`));
      let stdout = '';
      let stderr = '';
      let code: number | null = null;
      let signal: string | null = null;
      const timer = opts.timeoutMs
        ? setTimeout(() => {
            ch.close();
            reject(new SshError('command', `command on ${conn.target.host}:${conn.target.port} did not finish within ${opts.timeoutMs} ms`));
          }, opts.timeoutMs)
        : undefined;
      ch.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
      ch.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
      ch.on('exit', (c: number | null, s?: string) => {
        code = c;
        signal = s ?? null;
      });
      ch.once('close', () => {
        clearTimeout(timer);
        if (code === null && signal === null && !conn.isOpen()) {
          return reject(new SshError('command', `the SSH connection to ${conn.target.host}:${conn.target.port} was lost while a command ran`));
        }
        resolve({ code, signal, stdout, stderr });
      });
      ch.end(opts.stdin ?? '');
    });
  });
}
