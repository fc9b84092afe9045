// The `docker` driver: one container per lease on an engine that speaks the Docker Engine
// API (Docker, or Podman's compatible service), through dockerode. The same calls drive both;
// where Podman answers differently (a name conflict is a 500, not a 409; exec sessions are
// gone once their container stops; it attaches to no exited container, and reads whatever
// follows an attach request as stdin) the driver accepts either answer.
//
// A resource is the container `berth-<resource id>`: made and started by provision, labelled
// with Berth's ids, with a workspace volume of its own. Its main process is BOOTSTRAP, which
// waits for a run on its stdin: provision attaches to a fresh container before starting it,
// and the first run on it goes down that stream (its values too: never in the container's
// config) and runs as the container's main process, so a cold run costs no exec, and its
// container has stopped when it ends (its removal is that of a stopped container). Any
// other run (the container's main process is taken, or was started by another server, or
// by a restart of a kept container) is an exec, started through WRAPPER. Either way WRAPPER
// checks the working directory and the command before anything of the agent runs, and
// kills everything in the container at the run's deadline even if no server is watching.
// TERM goes to every process but PID 1 (an exec of `kill -TERM -1`); the container is left
// stopped once the run has ended. KILL kills the container. Destroy removes the container
// and its volume; "no such container" is success. Names and labels come from the resource
// id alone. The engine keeps no log of a container's output (a run's goes to its log).
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { Duplex, Readable } from 'node:stream';
import Docker from 'dockerode';
import { ENV_VAR_NAME_RE } from '../../domain/enums.js';
import { BerthError, UUID_RE } from '../../domain/errors.js';
import { checkedResourceId, DriverError, storedConfig } from '../common.js';
import { storableText } from '../../domain/text.js';
import { networkNamespaceOf, startNetnsRelay } from '../isolation/netns-relay.js';
import {
  LABEL_COMPANY,
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
} from '../contract.js';
import { dockerConfigSchema, dockerDescriptor, parseEndpoint, type DockerConfig, type EngineEndpoint } from './descriptor.js';

/**
 * The container's PID 1. It sleeps; on TERM (or INT) it sends TERM to every other process
 * in the container (`kill -1` from PID 1 of a pid namespace reaches all of them but itself)
 * and exits once none is left, so a stop gives the run its grace and ends with the
 * container stopped; the engine's KILL ends it at once.
 */
export const HOLDER = "trap 'kill -TERM -1 2>/dev/null; while kill -0 -1 2>/dev/null; do sleep 0.05; done; exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/**
 * How a run's command starts in the container: `sh -c WRAPPER berth-exec <marker> <deadline s> <cwd> <command> <args...>`.
 * A cwd or command that is not there is reported on stderr as `<marker> cwd|command` (exit
 * 127) before anything of the agent's runs. Past the deadline (when > 0) everything in the
 * container but its PID 1 is killed, whether or not a server is still watching. The exit
 * status is the command's (a signal death as 128 + n).
 */
function wrapperLines(main: boolean): string[] {
  return [
    'm=$1 d=$2 w=$3; shift 3',
    `cd "$w" 2>/dev/null || { printf '%s cwd\\n' "$m" >&2; exit 127; }`,
    `case $1 in */*) [ -f "$1" ] && [ -x "$1" ] ;; *) command -v "$1" >/dev/null 2>&1 ;; esac || { printf '%s command\\n' "$m" >&2; exit 127; }`,
    main ? '"$@" </dev/null & c=$!' : '"$@" & c=$!',
    // The deadline guard: a subshell that holds none of the exec's pipes (the engine ends the
    // output stream once nothing holds them: a guard holding stderr kept a quick command's
    // stream open for the engine's 2 s timeout), made before the wrapper sets its trap, so a
    // TERM ends it whenever it comes (a subshell keeps the traps it was forked with). Past the
    // deadline it kills everything; the driver knows it from a SIGKILL it did not send, at or
    // after the deadline.
    'g=',
    `if [ "$d" -gt 0 ]; then ( s=; trap 'kill $s 2>/dev/null; exit 0' TERM; sleep "$d" & s=$!; wait $s || exit 0; kill -KILL -1 ) </dev/null >/dev/null 2>&1 & g=$!; fi`,
    "t=; trap 'kill -TERM $c 2>/dev/null; t=1' TERM INT HUP",
    // A wait a signal interrupted (t set) says nothing of the command: wait again while it
    // lives; once it is gone, its own status (127 here: it was already reported, r holds it).
    'while :; do t=; wait $c; r=$?; [ -z "$t" ] && break; kill -0 $c 2>/dev/null && continue; wait $c; q=$?; [ $q -eq 127 ] || r=$q; break; done',
    '[ -z "$g" ] || kill $g 2>/dev/null',
    // As the container's main process its status is a line of its own too: the stream has it before it ends.
    ...(main ? [`printf '%s exit %s\\n' "$m" "$r" >&2`] : []),
    'exit $r',
  ];
}
export const WRAPPER = wrapperLines(false).join('\n');

/**
 * The container's main process (its Entrypoint): it waits for a run on its stdin, which
 * the driver attaches before the start. The run comes as shell lines (`set --` with the
 * wrapper's arguments, `export` of each variable, values single-quoted, a value's line
 * breaks as "$berth_nl") ended by a line `berth-run`; it acknowledges with `<marker> go`
 * on stdout and runs the command as WRAPPER would, as PID 1, so the container stops when
 * the command has ended. The values come through the attach stream: never in the
 * container's config. A stdin that ends first (the server that attached is gone) makes it
 * a HOLDER: runs come as execs.
 */
export const BOOTSTRAP = [
  "trap 'kill -TERM -1 2>/dev/null; while kill -0 -1 2>/dev/null; do sleep 0.05; done; exit 0' TERM INT",
  'l=; s=',
  'while IFS= read -r l; do [ "$l" = berth-run ] && break; s="$s$l',
  '"; done',
  'if [ "$l" != berth-run ]; then echo berth-idle; while :; do sleep 3600 & wait $!; done; fi',
  'trap - TERM INT',
  'eval "$s"',
  `printf '%s go\\n' "$1"`,
  ...wrapperLines(true),
].join('\n');

/**
 * A value as shell that no line of which is `berth-run`: single-quoted, and a value with
 * line breaks as its lines single-quoted and joined by "$berth_nl" (a newline set once, on
 * lines of its own). No command runs to rebuild it: a value is never any process's argument.
 */
function shellWord(v: string, pre: string[]): string {
  const sq = (x: string) => `'${x.replaceAll("'", `'\\''`)}'`;
  if (!v.includes('\n')) return sq(v);
  if (pre.length === 0) pre.push("berth_nl='\n'");
  return v.split('\n').map(sq).join('"$berth_nl"');
}

/** What BOOTSTRAP reads: the wrapper's arguments and the run's variables, then `berth-run`. */
export function bootstrapInput(args: string[], env: Array<[string, string]>): string {
  const pre: string[] = [];
  const set = `set -- ${args.map((a) => shellWord(a, pre)).join(' ')}`;
  const exports = env.map(([k, v]) => `export ${k}=${shellWord(v, pre)}`);
  return [...pre, set, ...exports, 'berth-run', ''].join('\n');
}

/** The relay's inside end in Perl when this host has it (Debian's perl-base always): it starts in a few ms, node in 50-100. */
const PERL_RELAY = existsSync('/usr/bin/perl');

/** Exit statuses a shell gives for a signal death (128 + n). */
const SIGNAL_BY_NUMBER: Record<number, string> = { 1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 6: 'SIGABRT', 9: 'SIGKILL', 13: 'SIGPIPE', 14: 'SIGALRM', 15: 'SIGTERM' };

interface EngineError {
  statusCode?: number;
  json?: { message?: string } | null;
  message: string;
}

const statusOf = (err: unknown) => (err as EngineError).statusCode;
/** The engine's own message (never a request body: dockerode puts none in its errors). */
const engineMessage = (err: unknown) => storableText(String((err as EngineError).json?.message ?? (err as Error).message ?? err)).slice(0, 500);
const isNoSuchImage = (err: unknown) => statusOf(err) === 404 && /no such image|image not known|not found/i.test(engineMessage(err));
const isNameInUse = (err: unknown) => statusOf(err) === 409 || (statusOf(err) === 500 && /already in use/i.test(engineMessage(err)));

const configOf = (env: DriverEnvironment): DockerConfig => storedConfig(dockerConfigSchema, env, 'docker');

/** A tar archive of empty directories (mode 0755), for the engine to make a target's path. */
async function tarOfDirectories(dirs: string[]): Promise<Buffer> {
  const { Header } = await import('tar');
  const blocks: Buffer[] = [];
  for (const d of dirs) {
    const h = new Header({ path: `${d}/`, type: 'Directory', mode: 0o755, size: 0, mtime: new Date() });
    const block = Buffer.alloc(512);
    h.encode(block, 0);
    blocks.push(block);
  }
  return Buffer.concat([...blocks, Buffer.alloc(1024)]);
}

/** `berth-<resource id>`: the one name this driver gives a resource's container, from the id alone. */
export function containerName(resourceId: string): string {
  return `berth-${checkedResourceId(resourceId).toLowerCase()}`;
}

function describeEndpoint(e: EngineEndpoint): string {
  return 'socketPath' in e ? `unix://${e.socketPath}` : `${e.protocol}://${e.host}:${e.port}`;
}

/** Parsed 8-byte-header frames of an exec's attach stream (stdout 1, stderr 2), delivered with backpressure. */
function pumpFrames(stream: Duplex, onFrame: (kind: number, data: Buffer) => Promise<void> | void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    let busy = false;
    let ended = false;
    let done = false;
    const drain = async () => {
      if (busy || done) return;
      busy = true;
      try {
        while (buf.length >= 8 && buf.length >= 8 + buf.readUInt32BE(4)) {
          const size = buf.readUInt32BE(4);
          const kind = buf[0]!;
          const data = buf.subarray(8, 8 + size);
          buf = buf.subarray(8 + size);
          const p = onFrame(kind, data);
          if (p) {
            stream.pause();
            await p;
          }
        }
      } catch (err) {
        done = true;
        stream.destroy();
        reject(err);
        return;
      } finally {
        busy = false;
      }
      // What is left is less than a frame: all there is once the stream has ended (a cut frame is dropped).
      if (ended) {
        done = true;
        resolve();
      } else if (stream.isPaused()) stream.resume();
    };
    stream.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      void drain();
    });
    const end = () => {
      if (ended) return;
      ended = true;
      void drain();
    };
    stream.once('end', end);
    stream.once('close', end);
    stream.on('error', end);
    stream.resume(); // exec leaves it paused until a watcher takes the output
  });
}

/**
 * Waits on a BOOTSTRAP's stream for its first line: `<marker> go` (true: the run is its main
 * process now) or `berth-idle` (false: its stdin had ended). Whatever follows the line is left
 * on the stream, paused, for the watch.
 */
function acknowledged(stream: Duplex, marker: string, timeoutMs: number): Promise<boolean> {
  return new Promise<boolean>((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    let out: Buffer = Buffer.alloc(0);
    // Stderr that came first (the command's: stdout and stderr are two pipes, not one order), kept for the watch.
    const before: Buffer[] = [];
    const timer = setTimeout(() => finish(new Error(`no answer from the container's main process within ${timeoutMs} ms`)), timeoutMs);
    const finish = (r: boolean | Error, rest?: Buffer) => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('close', onClose);
      stream.off('end', onClose);
      stream.pause();
      if (rest?.length) stream.unshift(rest);
      if (r instanceof Error) reject(r);
      else resolve(r);
    };
    const onClose = () => finish(new Error("the container's main process ended before its run started"));
    const onData = (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      while (buf.length >= 8 && buf.length >= 8 + buf.readUInt32BE(4)) {
        const size = buf.readUInt32BE(4);
        const kind = buf[0]!;
        const frame = buf.subarray(0, 8 + size);
        buf = buf.subarray(8 + size);
        if (kind !== 1) {
          before.push(frame);
          continue;
        }
        out = Buffer.concat([out, frame.subarray(8)]);
        const nl = out.indexOf(0x0a);
        if (nl < 0) continue;
        const line = out.subarray(0, nl).toString('utf8');
        // What came with the line is the command's first output.
        const more = out.subarray(nl + 1);
        const rest = Buffer.concat([...before, ...(more.length ? [frameOf(1, more)] : []), buf]);
        if (line === `${marker} go`) return finish(true, rest);
        if (line === 'berth-idle') return finish(false, rest);
        return finish(new Error(`the container's main process said ${JSON.stringify(line.slice(0, 200))} where it acknowledges a run`));
      }
    };
    stream.on('data', onData);
    stream.once('close', onClose);
    stream.once('end', onClose);
    stream.resume();
  });
}

function frameOf(kind: number, data: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h[0] = kind;
  h.writeUInt32BE(data.length, 4);
  return Buffer.concat([h, data]);
}

interface LiveExec {
  stream: Duplex;
  marker: string;
  signalled: 'TERM' | 'KILL' | null;
  /** The container's main process (BOOTSTRAP), not an exec: its status is its `<marker> exit` line, or the container's. */
  main?: boolean;
}

/** A started container whose BOOTSTRAP waits for its run on the stream this driver attached. */
interface Waiting {
  id: string;
  stream: Duplex;
}

export interface DockerDriverOptions {
  /** Per-request timeout for engine calls other than an exec's stream, ms. Default 60 s. */
  requestTimeoutMs?: number;
}

export function dockerDriver(opts: DockerDriverOptions = {}): EnvironmentDriver {
  const clients = new Map<string, Docker>();
  const live = new Map<string, LiveExec>();
  /** By container name: containers this driver started whose main process waits for a run (the next exec is it). */
  const waiting = new Map<string, Waiting>();
  /** By container name: containers whose main process ended a run here (the engine may not have put that run away yet). */
  const mainEnded = new Set<string>();
  const dropWaiting = (name: string) => {
    const w = waiting.get(name);
    if (!w) return;
    waiting.delete(name);
    w.stream.destroy();
  };
  const requestTimeoutMs = opts.requestTimeoutMs ?? 60_000;

  function client(cfg: DockerConfig): Docker {
    const key = JSON.stringify([cfg.endpoint, cfg.tls ?? null]);
    let c = clients.get(key);
    if (!c) {
      const e = parseEndpoint(cfg.endpoint);
      if (typeof e === 'string') throw new DriverError('docker_config', `config.endpoint ${e}`);
      c = new Docker('socketPath' in e ? { socketPath: e.socketPath } : { protocol: e.protocol, host: e.host, port: e.port, ...(cfg.tls ?? {}) });
      clients.set(key, c);
    }
    return c;
  }

  const where = (cfg: DockerConfig) => describeEndpoint(parseEndpoint(cfg.endpoint) as EngineEndpoint);

  /** An engine call with a timeout and the caller's signal; failures name what was being done and the engine's answer. */
  async function call<T>(what: string, cfg: DockerConfig, f: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const timeout = AbortSignal.timeout(requestTimeoutMs);
    const s = signal ? AbortSignal.any([signal, timeout]) : timeout;
    try {
      // Calls dockerode cannot abort are raced: the caller stops waiting either way.
      return await new Promise<T>((resolve, reject) => {
        const onAbort = () => reject(s.reason);
        if (s.aborted) return onAbort();
        s.addEventListener('abort', onAbort, { once: true });
        f(s).then(resolve, reject).finally(() => s.removeEventListener('abort', onAbort));
      });
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (timeout.aborted) throw new DriverError('engine_timeout', `${what} on ${where(cfg)}: the engine did not answer within ${requestTimeoutMs} ms`);
      if (err instanceof DriverError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EACCES' || code === 'EHOSTUNREACH' || code === 'ETIMEDOUT') {
        throw new DriverError('engine_unreachable', `${what}: no engine answers at ${where(cfg)} (${code})`);
      }
      throw Object.assign(new DriverError('engine_error', `${what} on ${where(cfg)}: ${engineMessage(err)}`), { statusCode: statusOf(err) });
    }
  }

  /** The resource's container, or null when there is none; refuses one that is not this resource's. */
  async function inspectOwn(cfg: DockerConfig, resourceId: string, signal?: AbortSignal): Promise<Docker.ContainerInspectInfo | null> {
    const name = containerName(resourceId);
    try {
      const info = await call(`inspecting ${name}`, cfg, (s) => client(cfg).getContainer(name).inspect({ abortSignal: s }), signal);
      if (info.Config.Labels?.[LABEL_RESOURCE] !== resourceId) {
        throw new DriverError('resource_mismatch', `container ${name} on ${where(cfg)} is not labelled ${LABEL_RESOURCE}=${resourceId}: not touching it`);
      }
      return info;
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404 || (err instanceof DriverError && err.code === 'engine_error' && /no such container/i.test(err.message))) return null;
      throw err;
    }
  }

  /**
   * Attach to the container's stdin, stdout and stderr (before its start: nothing is missed).
   * The request has an empty body: Podman reads whatever follows the request as stdin.
   */
  async function attach(cfg: DockerConfig, id: string, signal?: AbortSignal): Promise<Duplex> {
    const docker = client(cfg);
    return call(`attaching to ${id.slice(0, 12)}`, cfg, (s) => new Promise<Duplex>((resolve, reject) => {
      (docker.modem as unknown as { dial(o: unknown, cb: (err: unknown, stream: Duplex) => void): void }).dial(
        {
          path: `/containers/${encodeURIComponent(id)}/attach?`,
          method: 'POST',
          isStream: true,
          hijack: true,
          openStdin: false,
          file: Buffer.alloc(0),
          abortSignal: s,
          statusCodes: { 101: true, 200: true, 404: 'no such container', 409: 'conflict', 500: 'server error' },
          options: { _query: { stream: true, stdin: true, stdout: true, stderr: true }, _body: {} },
        },
        (err, stream) => (err ? reject(err) : resolve(stream)),
      );
    }), signal);
  }

  /**
   * Start a container of this driver. One never started before is attached to first: then its
   * first run is its main process. One that has run is started as it is (Podman attaches to
   * no exited container, and one attached again did not always pass on its stdin): its main
   * process finds no run on its stdin and holds the container, and runs are execs.
   */
  async function startAttached(cfg: DockerConfig, name: string, id: string, fresh: boolean, signal?: AbortSignal): Promise<void> {
    dropWaiting(name);
    mainEnded.delete(name);
    const stream = fresh ? await attach(cfg, id, signal).catch(() => null) : null;
    if (stream) {
      stream.on('error', () => {});
      stream.pause();
    }
    try {
      await call(`starting ${name}`, cfg, (s) => client(cfg).getContainer(id).start({ abortSignal: s }), signal);
    } catch (err) {
      // 304: started meanwhile (its main process is someone else's to feed).
      stream?.destroy();
      if ((err as { statusCode?: number }).statusCode !== 304) throw err;
      return;
    }
    if (stream) {
      const w = { id, stream };
      waiting.set(name, w);
      stream.once('close', () => {
        if (waiting.get(name) === w) waiting.delete(name);
      });
    }
  }

  async function ensureImage(cfg: DockerConfig, signal: AbortSignal): Promise<void> {
    const docker = client(cfg);
    try {
      await call(`looking up image ${cfg.image}`, cfg, () => docker.getImage(cfg.image).inspect(), signal);
      return;
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 404) throw err;
    }
    if (cfg.pull !== 'missing') {
      throw new DriverError('image_not_found', `image ${cfg.image} is not on the engine at ${where(cfg)} (and the environment's pull is "never": load it there, or set config.pull to "missing")`);
    }
    const stream = (await call(`pulling ${cfg.image}`, cfg, (s) => docker.pull(cfg.image, { abortSignal: s }), signal)) as NodeJS.ReadableStream;
    await new Promise<void>((resolve, reject) =>
      docker.modem.followProgress(stream, (err: Error | null, out: Array<{ error?: string }>) => {
        const failed = err?.message ?? out?.find((o) => o.error)?.error;
        if (failed) reject(new DriverError('image_not_found', `pulling ${cfg.image} on ${where(cfg)} failed: ${storableText(failed).slice(0, 500)}`));
        else resolve();
      }),
    );
  }

  function createOptions(env: DriverEnvironment, cfg: DockerConfig, resourceId: string, labels: Record<string, string>): Docker.ContainerCreateOptions {
    return {
      name: containerName(resourceId),
      Image: cfg.image,
      Entrypoint: ['/bin/sh', '-c', BOOTSTRAP],
      Cmd: [],
      // Its stdin is where the first run comes (BOOTSTRAP); nothing is kept of its output (a run's goes to its log).
      OpenStdin: true,
      StdinOnce: true,
      AttachStdin: true,
      AttachStdout: true,
      AttachStderr: true,
      Labels: { ...cfg.labels, ...labels, [LABEL_RESOURCE]: resourceId, [LABEL_ENVIRONMENT]: env.id },
      WorkingDir: cfg.workspacePath,
      Volumes: { [cfg.workspacePath]: {} },
      ...(cfg.user ? { User: cfg.user } : {}),
      HostConfig: {
        NetworkMode: cfg.network,
        ...(cfg.runtime !== 'runc' ? { Runtime: cfg.runtime } : {}),
        ...(cfg.memoryMb ? { Memory: cfg.memoryMb * 1024 * 1024, MemorySwap: cfg.memoryMb * 1024 * 1024 } : {}),
        ...(cfg.cpus ? { NanoCpus: Math.round(cfg.cpus * 1e9) } : {}),
        PidsLimit: cfg.pidsLimit,
        ReadonlyRootfs: cfg.readOnlyRootfs,
        ...(cfg.readOnlyRootfs ? { Tmpfs: { '/tmp': 'rw,nosuid,nodev,size=256m' } } : {}),
        CapDrop: ['NET_RAW', 'MKNOD', 'AUDIT_WRITE', 'SYS_CHROOT', 'SETFCAP'],
        SecurityOpt: ['no-new-privileges'],
        Init: false,
        LogConfig: { Type: 'none', Config: {} },
      },
    };
  }

  function provisioned(cfg: DockerConfig, resourceId: string, info: Docker.ContainerInspectInfo): ProvisionedResource {
    const name = containerName(resourceId);
    return {
      resourceId,
      providerId: info.Id,
      state: { endpoint: cfg.endpoint, container: info.Id, name },
      cwd: cfg.workspacePath,
      details: {
        engine: where(cfg),
        container: name,
        containerId: info.Id,
        image: cfg.image,
        imageId: info.Image,
        runtime: cfg.runtime,
        network: cfg.network,
        cwd: cfg.workspacePath,
        workspaceOwned: true,
        providerLeaseId: `docker://${name}`,
      },
    };
  }

  /** The resource's container as the handle names it: from this environment's engine, labelled with this resource. */
  function storedName(cfg: DockerConfig, resource: ResourceHandle): string {
    const name = containerName(resource.resourceId);
    const s = resource.state ?? {};
    if (s.endpoint !== undefined && s.endpoint !== cfg.endpoint) {
      throw new DriverError('resource_mismatch', `resource ${resource.resourceId}: its container is on ${String(s.endpoint)}, but the environment now points at ${cfg.endpoint}; remove ${name} there by hand`);
    }
    return name;
  }

  function execRef(exe: ExecutionHandle): { execId: string; container: string; marker: string; deadlineSec: number; startedAt: number; main: boolean } | { spawnError: string } {
    if (exe.driver !== 'docker') throw new Error(`not a docker execution (driver ${JSON.stringify(exe.driver)})`);
    const r = exe.ref ?? {};
    if (typeof r.spawnError === 'string') return { spawnError: r.spawnError };
    const { execId, container, marker, deadlineSec } = r as Record<string, unknown>;
    if (typeof execId !== 'string' || !/^[0-9a-f]{12,128}$/i.test(execId) || typeof container !== 'string' || !/^berth-[0-9a-f-]{36}$/.test(container) || typeof marker !== 'string') {
      throw new Error(`not an execution handle this driver made: ${JSON.stringify(r).slice(0, 300)}`);
    }
    return { execId, container, marker, deadlineSec: typeof deadlineSec === 'number' ? deadlineSec : 0, startedAt: typeof r.startedAt === 'number' ? r.startedAt : 0, main: r.main === true };
  }

  return {
    ...dockerDescriptor,
    close() {
      for (const l of live.values()) l.stream.destroy();
      live.clear();
      for (const name of [...waiting.keys()]) dropWaiting(name);
      clients.clear();
    },

    async probe(env): Promise<ProbeResult> {
      const started = performance.now();
      let cfg: DockerConfig;
      try {
        cfg = configOf(env);
      } catch (err) {
        return { ok: false, latencyMs: 0, error: (err as Error).message, details: { step: 'config' } };
      }
      const details: Record<string, unknown> = { engine: where(cfg), image: cfg.image };
      try {
        const v = await call('asking the engine its version', cfg, () => client(cfg).version());
        details.version = v.Version;
        details.apiVersion = v.ApiVersion;
        details.product = (v.Components ?? []).some((c) => /podman/i.test(c.Name)) ? 'podman' : 'docker';
        if (cfg.runtime !== 'runc') {
          const info = (await call('asking the engine its runtimes', cfg, () => client(cfg).info())) as { Runtimes?: Record<string, unknown> };
          details.runtimes = Object.keys(info.Runtimes ?? {});
          if (!Object.hasOwn(info.Runtimes ?? {}, cfg.runtime)) {
            return { ok: false, latencyMs: performance.now() - started, error: `the engine at ${where(cfg)} has no runtime ${cfg.runtime} (it has ${(details.runtimes as string[]).join(', ') || 'none'})`, details: { ...details, step: 'runtime' } };
          }
        }
        try {
          const img = await call(`looking up image ${cfg.image}`, cfg, () => client(cfg).getImage(cfg.image).inspect());
          details.imagePresent = true;
          details.imageId = img.Id;
        } catch (err) {
          if ((err as { statusCode?: number }).statusCode !== 404) throw err;
          details.imagePresent = false;
          if (cfg.pull !== 'missing') {
            return { ok: false, latencyMs: performance.now() - started, error: `image ${cfg.image} is not on the engine at ${where(cfg)} (image_not_found; pull is "never")`, details: { ...details, step: 'image' } };
          }
        }
        return { ok: true, latencyMs: performance.now() - started, details };
      } catch (err) {
        return { ok: false, latencyMs: performance.now() - started, error: (err as Error).message, details: { ...details, step: 'engine' } };
      }
    },

    /**
     * Create and start `berth-<resource id>`. Idempotent: a container of that name with this
     * resource's label is the resource (started again if it was stopped: a reused lease).
     */
    async provision(env, req, signal): Promise<ProvisionedResource> {
      const cfg = configOf(env);
      const name = containerName(req.resourceId);
      const docker = client(cfg);
      const labels: Record<string, string> = { ...req.labels, [LABEL_RESOURCE]: req.resourceId, [LABEL_ENVIRONMENT]: env.id };
      if (req.leaseId) labels[LABEL_LEASE] = req.leaseId;
      // The common case is a new container: created first (the image is looked up, or pulled,
      // only when the engine says it has none), started by the id the create returned, and
      // inspected once when running. Three engine calls; a retry of the same provision (after a
      // crash or a timeout) finds its container by name and adopts it.
      let id: string | null = null;
      let info: Docker.ContainerInspectInfo | null = null;
      const create = () => call(`creating ${name}`, cfg, (s) => docker.createContainer({ ...createOptions(env, cfg, req.resourceId, labels), abortSignal: s } as Docker.ContainerCreateOptions), signal);
      try {
        id = (await create()).id;
      } catch (err) {
        if (isNameInUse(err)) {
          info = await inspectOwn(cfg, req.resourceId, signal);
          if (!info) throw new DriverError('engine_error', `${name} on ${where(cfg)} is said to exist but the engine does not find it`);
          id = info.Id;
        } else if (isNoSuchImage(err)) {
          await ensureImage(cfg, signal);
          id = (await create()).id;
        } else {
          throw err;
        }
      }
      if (!info?.State.Running) {
        await startAttached(cfg, name, id, info === null || info.State.Status === 'created', signal);
        info = await inspectOwn(cfg, req.resourceId, signal);
        if (!info) throw new DriverError('engine_error', `${name} on ${where(cfg)} was started but the engine does not find it`);
      }
      return provisioned(cfg, req.resourceId, info);
    },

    async exec(env, resource, spec, signal): Promise<ExecutionHandle> {
      const cfg = configOf(env);
      const name = storedName(cfg, resource);
      const deadlineSec = spec.deadlineSec ?? 0;
      if (!Number.isInteger(deadlineSec) || deadlineSec < 0) throw new Error(`deadlineSec must be a whole number of seconds, not ${deadlineSec}`);
      const envList: string[] = [];
      for (const [k, v] of Object.entries(spec.env)) {
        if (!ENV_VAR_NAME_RE.test(k)) throw new Error(`environment variable name ${JSON.stringify(k)} is not valid`);
        if (v.includes('\0')) throw new Error(`environment variable ${k} contains a NUL byte`);
        envList.push(`${k}=${v}`);
      }
      const startedAt = Date.now();
      const marker = `berth-${randomBytes(6).toString('hex')}`;
      const args = [marker, String(deadlineSec), spec.cwd, spec.command, ...spec.args];
      const ref = { container: name, marker, ...(deadlineSec > 0 ? { deadlineSec, startedAt } : {}) };
      // The container's main process waits for its first run (provision attached to it): the
      // run goes down its stdin, with no engine call. Otherwise an exec; when the container has
      // stopped (its last run was its main process) it is started again first, unattached.
      const asMain = async (w: Waiting): Promise<ExecutionHandle | null> => {
        waiting.delete(name);
        w.stream.write(bootstrapInput(args, Object.entries(spec.env)));
        let ok: boolean;
        try {
          ok = await acknowledged(w.stream, marker, requestTimeoutMs);
        } catch (err) {
          w.stream.destroy();
          throw new DriverError('engine_error', `starting ${spec.command} in ${name}: ${(err as Error).message}`);
        }
        if (!ok) {
          w.stream.destroy();
          return null;
        }
        w.stream.on('error', () => {});
        live.set(w.id, { stream: w.stream, marker, signalled: null, main: true });
        return { driver: 'docker', host: where(cfg), ref: { execId: w.id, ...ref, main: true } };
      };
      const w = waiting.get(name);
      if (w && !w.stream.destroyed) {
        const h = await asMain(w);
        if (h) return h;
      }
      if (mainEnded.delete(name)) {
        // The container stopped with its last run: once the engine says so (Podman takes a
        // moment, and an exec meanwhile goes to a container on its way out), started again.
        for (let i = 0; i < 250; i++) {
          const info = await inspectOwn(cfg, resource.resourceId, signal);
          if (!info) break;
          if (!info.State.Running) {
            await startAttached(cfg, name, info.Id, false, signal);
            break;
          }
          await new Promise((r) => setTimeout(r, 20));
        }
      }
      const container = client(cfg).getContainer(name);
      // The values travel in the exec's create body (its Env), never in its command line.
      const create = () => call(`starting ${spec.command} in ${name}`, cfg, (s) =>
        container.exec({
          Cmd: ['/bin/sh', '-c', WRAPPER, 'berth-exec', ...args],
          Env: envList,
          AttachStdin: false,
          AttachStdout: true,
          AttachStderr: true,
          Tty: false,
          ...(cfg.user ? { User: cfg.user } : {}),
          abortSignal: s,
        } as Docker.ExecCreateOptions),
        signal,
      );
      // Stopped: started again, and the exec made again. Podman may still be putting away the
      // last run: it takes the exec's create and refuses its start, or a start then is a no-op
      // (the container is stopped after it); asked again, shortly.
      const stopped = (err: unknown) => statusOf(err) === 409 || /is not running|not running|container state improper|is stopped/i.test((err as Error).message);
      let ex!: Docker.Exec;
      let stream: Duplex | null = null;
      for (let attempt = 0; !stream; attempt++) {
        try {
          ex = await create();
          stream = (await call(`starting ${spec.command} in ${name}`, cfg, (s) => ex.start({ hijack: true, stdin: false, abortSignal: s } as Docker.ExecStartOptions), signal)) as Duplex;
        } catch (err) {
          if (attempt >= 20 || !stopped(err)) throw err;
          const info = await inspectOwn(cfg, resource.resourceId, signal);
          if (!info) throw err;
          if (!info.State.Running) await startAttached(cfg, name, info.Id, false, signal);
          if (attempt > 0) await new Promise((r) => setTimeout(r, 25));
        }
      }
      stream.pause(); // output waits for a watcher (backpressure reaches the process)
      stream.on('error', () => {}); // a reset before anyone watches: the watch sees the stream end
      live.set(ex.id, { stream, marker, signalled: null });
      return { driver: 'docker', host: where(cfg), ref: { execId: ex.id, ...ref } };
    },

    async watch(env, exe, sink: OutputListener): Promise<ExitResult> {
      const cfg = configOf(env);
      const ref = execRef(exe);
      if ('spawnError' in ref) return { exitCode: null, signal: null, spawnError: ref.spawnError };
      const l = live.get(ref.execId);
      if (!l) {
        return { exitCode: null, signal: null, error: "the run's output stream belongs to the server that started it: a container run cannot be watched after its server is gone", errorCode: 'process_lost' };
      }
      let stopped = false;
      let discarded = 0;
      let first = true;
      let spawnError: string | null = null;
      let deadline = false;
      let exitLine: number | null = null;
      const decoders = { stdout: new TextDecoder('utf-8'), stderr: new TextDecoder('utf-8') };
      const deliver = async (stream: 'stdout' | 'stderr', text: string) => {
        if (!text) return;
        if (stopped) {
          discarded += Buffer.byteLength(text);
          return;
        }
        if ((await sink(stream, text)) === 'stop') stopped = true;
      };
      try {
        await pumpFrames(l.stream, (kind, data) => {
          const stream = kind === 2 ? 'stderr' : 'stdout';
          if (kind === 2 && data.includes(l.marker)) {
            // The wrapper's own lines: a cwd or command that is not there (before the agent ran), or its deadline.
            const lines = data.toString('utf8').split('\n');
            const rest: string[] = [];
            for (const line of lines) {
              if (line === `${l.marker} cwd` && first) spawnError = `no such directory in ${ref.container}`;
              else if (line === `${l.marker} command` && first) spawnError = `no such command in ${ref.container}`;
              else if (line === `${l.marker} deadline`) deadline = true;
              else if (l.main && line.startsWith(`${l.marker} exit `)) exitLine = Number(line.slice(l.marker.length + 6));
              else rest.push(line);
            }
            first = false;
            return deliver(stream, decoders[stream].decode(Buffer.from(rest.join('\n')), { stream: true }));
          }
          first = false;
          if (stopped) {
            discarded += data.length;
            return;
          }
          return deliver(stream, decoders[stream].decode(data, { stream: true }));
        });
        for (const s of ['stdout', 'stderr'] as const) await deliver(s, decoders[s].decode());
      } finally {
        live.delete(ref.execId);
        if (l.main) mainEnded.add(ref.container);
      }
      // Stopped by a signal or its deadline: the container is left stopped (what else it held dies with it).
      if (l.signalled || deadline) {
        await call(`stopping ${ref.container}`, cfg, (s) => client(cfg).getContainer(ref.container).kill({ signal: 'SIGKILL', abortSignal: s })).catch(() => {});
      }
      const extra: Partial<ExitResult> = discarded > 0 ? { discardedBytes: discarded } : {};
      if (spawnError) return { exitCode: null, signal: null, spawnError };
      // The stream ends as the process does; the engine may take a moment more to have its status.
      let status: number | null = Number.isInteger(exitLine) ? exitLine : null;
      for (let i = 0; l.main && status === null && i < 100; i++) {
        // The main process ended without its line (killed): the container's own status, once it has stopped.
        const info = await call(`inspecting ${ref.container}`, cfg, (s) => client(cfg).getContainer(ref.execId).inspect({ abortSignal: s })).catch(() => null);
        if (!info) break;
        if (!info.State.Running) {
          if (!l.signalled) status = info.State.ExitCode;
          break;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      for (let i = 0; !l.main && i < 100; i++) {
        try {
          const ei = await call('reading the exec status', cfg, (s) => client(cfg).getExec(ref.execId).inspect({ abortSignal: s }));
          if (!ei.Running && typeof ei.ExitCode === 'number') {
            status = ei.ExitCode;
            break;
          }
        } catch {
          break; // gone with its container (Podman forgets exec sessions of a stopped container)
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      if (status === null) {
        if (l.signalled) return { exitCode: null, signal: l.signalled === 'KILL' ? 'SIGKILL' : 'SIGTERM', ...extra };
        return { exitCode: null, signal: null, ...extra, error: `the process in ${ref.container} ended without an exit status (its container stopped or was removed outside Berth)`, errorCode: 'process_lost' };
      }
      const sig = status > 128 ? SIGNAL_BY_NUMBER[status - 128] : undefined;
      const ended = sig ? { exitCode: null, signal: sig } : { exitCode: status, signal: null };
      // The guard's SIGKILL (none of Berth's): the deadline passed.
      if (!deadline && sig === 'SIGKILL' && !l.signalled && ref.deadlineSec > 0 && ref.startedAt > 0 && Date.now() - ref.startedAt >= ref.deadlineSec * 1000) deadline = true;
      if (deadline) {
        await call(`stopping ${ref.container}`, cfg, (s) => client(cfg).getContainer(ref.container).kill({ signal: 'SIGKILL', abortSignal: s })).catch(() => {});
        return { ...ended, ...extra, error: `the process passed its deadline of ${ref.deadlineSec} s in ${ref.container} and was killed there`, errorCode: 'timeout' };
      }
      return { ...ended, ...extra };
    },

    /**
     * TERM: every process in the container but its PID 1 gets it, from a process of the
     * container (`kill -1`), so the run has its grace and its last output still comes
     * through; the container is stopped once the run has ended. KILL: the container is killed.
     */
    async signal(env, exe, sig) {
      const cfg = configOf(env);
      const ref = execRef(exe);
      if ('spawnError' in ref) return;
      const l = live.get(ref.execId);
      if (l) l.signalled = sig;
      const notRunning = (err: unknown) => statusOf(err) === 404 || statusOf(err) === 409 || /not running|no such container|can only kill running/i.test((err as Error).message);
      const container = client(cfg).getContainer(ref.container);
      try {
        if (sig === 'KILL') {
          await call(`killing ${ref.container}`, cfg, (s) => container.kill({ signal: 'SIGKILL', abortSignal: s }));
          return;
        }
        const ex = await call(`sending SIGTERM in ${ref.container}`, cfg, (s) =>
          container.exec({ Cmd: ['/bin/sh', '-c', 'kill -TERM -1 2>/dev/null; exit 0'], AttachStdout: true, AttachStderr: true, ...(cfg.user ? { User: cfg.user } : {}), abortSignal: s } as Docker.ExecCreateOptions),
        );
        const stream = (await call(`sending SIGTERM in ${ref.container}`, cfg, (s) => ex.start({ hijack: true, stdin: false, abortSignal: s } as Docker.ExecStartOptions))) as Duplex;
        await pumpFrames(stream, () => {});
      } catch (err) {
        // Gone, or not running: nothing to signal.
        if (notRunning(err)) return;
        throw err;
      }
    },

    /** A kept resource (retained or reused lease): its container stopped (PID 1 ends what is left, then the engine kills), not removed. */
    async suspend(env, resource, signal) {
      const cfg = configOf(env);
      const info = await inspectOwn(cfg, resource.resourceId, signal);
      if (!info || !info.State.Running) return;
      try {
        await call(`stopping ${info.Name.replace(/^\//, '')}`, cfg, (s) => client(cfg).getContainer(info.Id).stop({ t: 5, abortSignal: s } as Docker.ContainerStopOptions), signal);
      } catch (err) {
        // 304: stopped meanwhile; 404: gone (a later provision makes it again, a destroy finds nothing).
        const code = (err as { statusCode?: number }).statusCode;
        if (code !== 304 && code !== 404 && !/no such container/i.test((err as Error).message)) throw err;
      }
    },

    /**
     * Files into the workspace through the engine's archive API (the container running or
     * stopped). The engine resolves paths inside the container: its root is the boundary. The
     * directories of `dir` are made first by an archive of their own (the engine needs the target to exist).
     */
    async putArchive(env, resource, workspace, dir, archive, signal) {
      const cfg = configOf(env);
      const info = await inspectOwn(cfg, resource.resourceId, signal);
      if (!info) throw new DriverError('docker_gone', `the container of resource ${resource.resourceId} is gone`);
      const container = client(cfg).getContainer(info.Id);
      if (dir !== '') {
        const parts = dir.split('/');
        const dirs = await tarOfDirectories(parts.map((_, i) => parts.slice(0, i + 1).join('/')));
        await call(`making ${dir} in ${info.Name}`, cfg, (s) => container.putArchive(dirs, { path: workspace, abortSignal: s } as never), signal);
      }
      await call(`unpacking into ${info.Name}`, cfg, (s) => container.putArchive(archive, { path: dir === '' ? workspace : `${workspace}/${dir}`, abortSignal: s } as never), signal);
    },

    async getArchive(env, resource, workspace, path, signal) {
      const cfg = configOf(env);
      const info = await inspectOwn(cfg, resource.resourceId, signal);
      if (!info) throw new DriverError('docker_gone', `the container of resource ${resource.resourceId} is gone`);
      const container = client(cfg).getContainer(info.Id);
      try {
        // The workspace itself: its entries by name (`path: dir/.` packs the directory's contents).
        return (await call(`reading ${path || '.'} of ${info.Name}`, cfg, (s) => container.getArchive({ path: path === '' ? `${workspace}/.` : `${workspace}/${path}`, abortSignal: s } as never), signal)) as unknown as Readable;
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode === 404) throw new BerthError('not_found', `path ${path} not found in the workspace`);
        throw err;
      }
    },

    async destroy(env, resource, signal): Promise<CleanupReport> {
      const cfg = configOf(env);
      const name = storedName(cfg, resource);
      dropWaiting(name);
      mainEnded.delete(name);
      const info = await inspectOwn(cfg, resource.resourceId, signal);
      if (!info) return { nothing: `no container ${name} on ${where(cfg)}` };
      try {
        await call(`removing ${name}`, cfg, (s) => client(cfg).getContainer(info.Id).remove({ force: true, v: true, abortSignal: s }), signal);
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode === 404 || /no such container/i.test((err as Error).message)) return { nothing: `no container ${name} on ${where(cfg)}` };
        throw err;
      }
      return { removed: `${where(cfg)}:${name}` };
    },

    async *list(env, signal): AsyncIterable<ListedResource> {
      const cfg = configOf(env);
      const found = await call('listing containers', cfg, (s) => client(cfg).listContainers({ all: true, filters: { label: [`${LABEL_ENVIRONMENT}=${env.id}`] }, abortSignal: s } as Docker.ContainerListOptions), signal);
      for (const c of found) {
        const labels = c.Labels ?? {};
        // The engine filtered; checked again here, so a filter an engine ignores lists nothing of another environment.
        if (labels[LABEL_ENVIRONMENT] !== env.id || !UUID_RE.test(labels[LABEL_RESOURCE] ?? '')) continue;
        if (env.companyId && labels[LABEL_COMPANY] !== undefined && labels[LABEL_COMPANY] !== env.companyId) continue;
        yield { providerId: c.Id, labels, createdAt: typeof c.Created === 'number' ? new Date(c.Created * 1000) : null };
      }
    },

    /**
     * With network `none` the container has only its loopback: the run's API URL is a relay
     * Berth opens in the container's network namespace (netns-relay.ts) to this server, so
     * the agent reaches Berth and nothing else. That needs the engine on this host (its
     * processes visible here); another network gets the server's public URL as it is.
     */
    async callbackUrl(env, server, resource): Promise<CallbackRoute> {
      const direct = { url: server.publicUrl, close: async () => {} };
      const cfg = configOf(env);
      const target = server.localUrl || server.publicUrl;
      if (cfg.network !== 'none' || !target) return direct;
      const t = new URL(target);
      if (t.protocol !== 'http:') return direct;
      const info = await inspectOwn(cfg, resource.resourceId);
      const pid = info?.State.Pid ?? 0;
      if (!pid || networkNamespaceOf(pid) === null) {
        throw new DriverError('callback_unreachable', `the container ${containerName(resource.resourceId)} has network none and its engine (${where(cfg)}) is not on this host: Berth cannot open its route to the API there (give the environment a network, or run the engine beside the server)`);
      }
      const port = Number(t.port || 80);
      const relay = await startNetnsRelay({ pid, port, inside: PERL_RELAY ? 'perl' : 'node', target: { host: t.hostname.replace(/^\[|\]$/g, ''), port } });
      return { url: `http://127.0.0.1:${relay.port}${t.pathname.replace(/\/+$/, '')}`, close: () => relay.close() };
    },
  };
}

