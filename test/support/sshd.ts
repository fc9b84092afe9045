// A private sshd for tests and benchmarks: its own host key, user key, config and a
// free port on 127.0.0.1, root login by key only. Never the system's sshd. Missing
// sshd is an error (the test command installs it), never a skip.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { descendantsOf } from '../../src/drivers/local/process-tree.js';
import { waitFor } from './wait.js';

export const SSHD_BIN = '/usr/sbin/sshd';

export interface TestSshd {
  host: string;
  port: number;
  username: string;
  /** OpenSSH private key (the user's), for the environment's config. */
  privateKey: string;
  /** `[127.0.0.1]:port <host key>`: the known_hosts line for this server. */
  knownHosts: string;
  /** SHA256:... of the host key, as OpenSSH prints it. */
  hostKeyFingerprint: string;
  /** A known_hosts line naming this server with some other host key (a changed key). */
  wrongKnownHosts: string;
  /** A key this server does not accept. */
  unauthorizedPrivateKey: string;
  /** A key this server accepts, but only to run a forced command that fails (exit 7). */
  forcedCommandPrivateKey: string;
  dir: string;
  /** The listening sshd's pid (null while stopped). */
  pid(): number | null;
  /** sshd processes serving connections now (the listener's descendants). */
  sessionPids(): number[];
  /** One sshd process per open connection (the listener's children). */
  connectionPids(): number[];
  /** Stop listening; live connections go on (sshd's per-connection processes are not the listener). */
  stopListening(): Promise<void>;
  /** Listen again on the same port with the same keys. */
  start(): Promise<void>;
  /** Stop the listener and every connection, and remove its files. */
  stop(): Promise<void>;
}

/**
 * A fresh OpenSSH ed25519 private key from ssh-keygen. Not ssh2's generateKeyPairSync:
 * about 1 key in 200 it makes has a 31-byte public key (a leading zero byte dropped),
 * which ssh2 itself then cannot parse.
 */
export function newKeyPair(): { privateKey: string; publicKey: string } {
  const dir = mkdtempSync(join(tmpdir(), 'berth-key-'));
  try {
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'berth-test', '-f', join(dir, 'k')], { stdio: 'ignore' });
    return { privateKey: readFileSync(join(dir, 'k'), 'utf8'), publicKey: readFileSync(join(dir, 'k.pub'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const newPrivateKey = (): string => newKeyPair().privateKey;

/** A TCP port nobody listens on now (for a server to take, or for a refused connection). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** True once something on host:port speaks SSH (sends its `SSH-2.0-` banner). */
function speaksSsh(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.setTimeout(1000, () => done(false));
    s.once('data', (d) => done(d.toString().startsWith('SSH-')));
    s.once('error', () => done(false));
  });
}

export interface TestSshdOptions {
  /**
   * Keep bash from reading ~/.bashrc in SSH sessions (Debian's bash does for shells sshd
   * starts, unless SHLVL says it is nested): a lean remote login, so a benchmark measures
   * Berth rather than this machine's root .bashrc (pyenv init here: ~100 ms per command).
   */
  leanShell?: boolean;
  /**
   * Let clients forward ports from this server back to them (default true), as runs'
   * callback tunnels need: `remote` only (all Berth asks for), on loopback only.
   */
  allowTcpForwarding?: boolean;
}

export async function startTestSshd(opts: TestSshdOptions = {}): Promise<TestSshd> {
  if (!existsSync(SSHD_BIN)) {
    throw new Error(`${SSHD_BIN} is missing: the SSH tests need OpenSSH's server. Run them with \`npm test\`, which installs Debian's openssh-server.`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'berth-sshd-'));
  const keygen = (file: string) => execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'berth-test', '-f', join(dir, file)], { stdio: 'ignore' });
  for (const k of ['host_key', 'other_host_key', 'user_key', 'unauthorized_key', 'forced_key']) keygen(k);
  writeFileSync(
    join(dir, 'authorized_keys'),
    `${readFileSync(join(dir, 'user_key.pub'), 'utf8')}command="echo forced >&2; exit 7",no-pty ${readFileSync(join(dir, 'forced_key.pub'), 'utf8')}`,
  );
  // sshd refuses to start without its privilege-separation directory.
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const port = await freePort();
  const config = join(dir, 'sshd_config');
  writeFileSync(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host_key')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      `AllowTcpForwarding ${opts.allowTcpForwarding === false ? 'no' : 'remote'}`,
      'GatewayPorts no',
      'X11Forwarding no',
      'PrintMotd no',
      // Benchmarks open connections back to back, and runs many channels on one.
      'MaxStartups 100:30:200',
      'MaxSessions 64',
      'LogLevel ERROR',
      ...(opts.leanShell ? ['SetEnv SHLVL=1'] : []),
      '',
    ].join('\n'),
  );
  let proc: ChildProcess | null = null;
  let stderr = '';

  async function start(): Promise<void> {
    const child = spawn(SSHD_BIN, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (d) => (stderr += d));
    proc = child;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    await Promise.race([
      waitFor(`sshd on 127.0.0.1:${port}`, () => speaksSsh(port), 15_000, 50),
      exited.then(() => {
        throw new Error(`sshd exited at start: ${stderr.trim()}`);
      }),
    ]);
  }

  const sessionPids = () => (proc?.pid ? descendantsOf(proc.pid).filter((p) => readComm(p) === 'sshd') : []);
  /** Connections still served after their listener stopped: no longer its descendants, so remembered here. */
  const orphans = new Set<number>();

  async function stopListening(): Promise<void> {
    for (const pid of sessionPids()) orphans.add(pid);
    const p = proc;
    proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await exited;
  }

  await start();
  const hostPub = readFileSync(join(dir, 'host_key.pub'), 'utf8').trim().split(/\s+/);
  const otherHostPub = readFileSync(join(dir, 'other_host_key.pub'), 'utf8').trim().split(/\s+/);
  const fingerprint = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', join(dir, 'host_key.pub')], { encoding: 'utf8' }).split(/\s+/)[1]!;
  return {
    host: '127.0.0.1',
    port,
    username: 'root',
    privateKey: readFileSync(join(dir, 'user_key'), 'utf8'),
    knownHosts: `[127.0.0.1]:${port} ${hostPub[0]} ${hostPub[1]}\n`,
    hostKeyFingerprint: fingerprint,
    wrongKnownHosts: `[127.0.0.1]:${port} ${otherHostPub[0]} ${otherHostPub[1]}\n`,
    unauthorizedPrivateKey: readFileSync(join(dir, 'unauthorized_key'), 'utf8'),
    forcedCommandPrivateKey: readFileSync(join(dir, 'forced_key'), 'utf8'),
    dir,
    pid: () => proc?.pid ?? null,
    sessionPids,
    connectionPids: () => sessionPids().filter((p) => parentOf(p) === proc?.pid),
    stopListening,
    start,
    async stop() {
      // The connections first: they outlive the listener.
      await stopListening();
      for (const pid of orphans) {
        if (readComm(pid) !== 'sshd') continue;
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function parentOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

function readComm(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}
