// The `local` driver: runs on this machine. A resource is a workspace directory
// `<root>/<resource id>` holding a label file; an execution is a contained process tree
// (cgroup v2, else its own process group) started through the spawner helper. Local
// executions do not survive their server (their output comes through it): no reattach.
// With `isolation: "bubblewrap"` each execution is that tree inside a bubblewrap sandbox
// (bwrap.ts), reaching the server through a relay in its own network namespace.
import { randomUUID } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { berthHome } from '../../db/client.js';
import { UUID_RE } from '../../domain/errors.js';
import {
  LABEL_ENVIRONMENT,
  type CallbackRoute,
  type CleanupReport,
  type DriverEnvironment,
  type EnvironmentDriver,
  type ExecutionHandle,
  type ExitResult,
  type ListedResource,
  type OutputListener,
  type ProcessSpec,
} from '../contract.js';
import { packFrom, unpackInto } from './archive.js';
import { checkBubblewrap, openSandboxNet, sandboxArgs, type IsolationError, type SandboxNet } from './bwrap.js';
import { localConfigSchema, localDescriptor, type LocalConfig } from './descriptor.js';
import { bootId, isSameProcess, processIdentity } from './process-identity.js';
import { signalTree, startLocalProcess, type StartedProcess } from './process-tree.js';

/** The label file in each workspace this driver made: what `list` reads. */
export const LABEL_FILE = '.berth-resource.json';

interface LiveExecution {
  proc: StartedProcess;
  /** Resolves with the sink once `watch` attaches one: output waits for it (backpressure). */
  sink: Promise<OutputListener>;
  attach(sink: OutputListener): void;
  watched: boolean;
}

/** A sandboxed run's way to the server, from callbackUrl (before exec) until the run ends. */
interface SandboxRoute {
  port: number;
  target: { host: string; port: number };
  /** The network namespace (with its relay) exec started the run in. */
  net: SandboxNet | null;
}

function configOf(env: DriverEnvironment): LocalConfig {
  return localConfigSchema.parse(env.secretConfig ?? env.config ?? {});
}

const sandboxed = (cfg: LocalConfig) => cfg.isolation === 'bubblewrap';

export function localDriver(opts: { workspaceRoot?: string } = {}): EnvironmentDriver {
  const root = () => opts.workspaceRoot ?? join(berthHome(), 'workspaces');
  /** Executions this process started and nobody has finished watching. */
  const live = new Map<string, LiveExecution>();
  const thisHost = bootId() ?? hostname();
  const host = () => thisHost;
  /** Routes to the server opened for sandboxed runs with no network, by resource id: exec starts their relays. */
  const routes = new Map<string, SandboxRoute>();
  /**
   * One network namespace with its relay held ready per route target, made once a run that
   * took the last one has ended: the relay's start-up (a node process) is neither on the
   * next run's path nor competing with the run that needed it.
   */
  const spares = new Map<string, Promise<SandboxNet>>();
  const spareKey = (bwrap: string, route: SandboxRoute) => `${bwrap}|${route.port}|${route.target.host}|${route.target.port}`;
  const takeNet = async (bwrap: string, route: SandboxRoute): Promise<SandboxNet> => {
    const key = spareKey(bwrap, route);
    const ready = spares.get(key);
    spares.delete(key);
    const spare = ready ? await ready.catch(() => null) : null;
    if (spare?.alive()) return spare;
    void spare?.close();
    return openSandboxNet(route.port, route.target);
  };
  const refill = (bwrap: string, route: SandboxRoute): void => {
    const key = spareKey(bwrap, route);
    if (spares.has(key) || closed) return;
    const next = openSandboxNet(route.port, route.target);
    next.catch(() => spares.get(key) === next && spares.delete(key));
    spares.set(key, next);
  };
  let closed = false;

  /** Stop an execution nobody watches yet: its output is dropped so it can exit, and it is forgotten once it has. */
  const killUnwatched = async (execId: string): Promise<void> => {
    const exe = live.get(execId);
    if (!exe) return;
    exe.proc.kill('SIGKILL');
    exe.watched = true;
    exe.attach(() => 'stop');
    await exe.proc.exited;
    live.delete(execId);
  };

  /**
   * Start `spec` in a bubblewrap sandbox. With no network and a route to the server, the
   * sandbox starts inside a network namespace whose relay already listens (nsenter, then
   * bwrap): its command finds PAPERCLIP_API_URL answering from its first instant.
   */
  async function execSandboxed(cfg: LocalConfig, resourceId: string, spec: ProcessSpec): Promise<ExecutionHandle> {
    const check = await checkBubblewrap();
    const route = (cfg.network ?? 'none') === 'none' ? (routes.get(resourceId) ?? null) : null;
    const net = route ? await takeNet(check.path, route) : null;
    let args: string[];
    try {
      args = sandboxArgs(cfg, spec.cwd, spec.command, spec.args, { joinedNetwork: net !== null });
    } catch (err) {
      await net?.close();
      throw err;
    }
    if (route) route.net = net;
    const id = randomUUID();
    let attach!: (sink: OutputListener) => void;
    const sink = new Promise<OutputListener>((r) => (attach = r));
    // bwrap inherits the run's environment and hands it to the command: no variable is an argument.
    const command = net ? { command: 'nsenter', args: [`--net=${net.nsPath}`, '--', check.path, ...args] } : { command: check.path, args };
    const proc = startLocalProcess({ ...spec, ...command }, async (stream, text) => (await sink)(stream, text));
    live.set(id, { proc, sink, attach, watched: false });
    if (net) void proc.exited.then(() => (refill(check.path, route!), net.close()));
    const pid = await proc.spawned;
    const identity = pid === null ? null : processIdentity(pid);
    return { driver: 'local', host: host(), ref: { execId: id, pid, identity, isolation: 'bubblewrap' } };
  }

  return {
    ...localDescriptor,
    putArchive: (_env, _resource, workspace, dir, archive) => unpackInto(workspace, dir, archive),
    getArchive: (_env, _resource, workspace, path) => packFrom(workspace, path),
    async probe(env) {
      const started = performance.now();
      await mkdir(root(), { recursive: true });
      const details: Record<string, unknown> = { hostname: hostname(), platform: process.platform, workspaceRoot: root() };
      const cfg = configOf(env);
      if (!sandboxed(cfg)) return { ok: true, latencyMs: performance.now() - started, details };
      try {
        const check = await checkBubblewrap();
        details.isolation = { kind: 'bubblewrap', bwrap: check.path, version: check.version, network: cfg.network ?? 'none' };
        return { ok: true, latencyMs: performance.now() - started, details };
      } catch (err) {
        details.isolation = { kind: 'bubblewrap', available: false, errorCode: (err as IsolationError).code ?? 'isolation_unavailable' };
        return { ok: false, latencyMs: performance.now() - started, details, error: (err as Error).message };
      }
    },

    async provision(env, req) {
      const cfg = configOf(env);
      const isolation = sandboxed(cfg) ? { isolation: 'bubblewrap', network: cfg.network ?? 'none' } : {};
      // An agent that names its own working directory gets it as it is: nothing is made, nothing will be removed.
      if (req.cwd) return { resourceId: req.resourceId, providerId: null, state: {}, cwd: req.cwd, details: { hostname: hostname(), cwd: req.cwd, workspaceOwned: false, ...isolation } };
      if (!UUID_RE.test(req.resourceId)) throw new Error(`refusing to provision ${JSON.stringify(req.resourceId)}: not a resource id`);
      const dir = join(root(), req.resourceId);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, LABEL_FILE), `${JSON.stringify(req.labels)}\n`);
      return { resourceId: req.resourceId, providerId: dir, state: { dir }, cwd: dir, details: { hostname: hostname(), cwd: dir, workspaceOwned: true, ...isolation } };
    },

    async exec(env, resource, spec): Promise<ExecutionHandle> {
      const cfg = configOf(env);
      if (sandboxed(cfg)) return execSandboxed(cfg, resource.resourceId, spec);
      const id = randomUUID();
      let attach!: (sink: OutputListener) => void;
      const sink = new Promise<OutputListener>((r) => (attach = r));
      // Output waits until a watcher takes it: the child is paused by the same backpressure.
      const proc = startLocalProcess(spec, async (stream, text) => (await sink)(stream, text));
      live.set(id, { proc, sink, attach, watched: false });
      const pid = await proc.spawned;
      const identity = pid === null ? null : processIdentity(pid);
      return { driver: 'local', host: host(), ref: { execId: id, pid, identity } };
    },

    /**
     * A sandboxed run with no network reaches the server at its own 127.0.0.1:<server's
     * port>, where exec opens a relay in the sandbox's network namespace before its command
     * starts. Any other run gets the server's public URL as it is.
     */
    async callbackUrl(env, server, resource): Promise<CallbackRoute> {
      const direct = { url: server.publicUrl, close: async () => {} };
      const cfg = configOf(env);
      if (!sandboxed(cfg) || (cfg.network ?? 'none') !== 'none') return direct;
      const target = server.localUrl || server.publicUrl;
      if (!target) return direct;
      const t = new URL(target);
      if (t.protocol !== 'http:') return direct;
      const port = Number(t.port || 80);
      const route: SandboxRoute = { port, target: { host: t.hostname.replace(/^\[|\]$/g, ''), port }, net: null };
      routes.set(resource.resourceId, route);
      return {
        url: `http://127.0.0.1:${port}${t.pathname.replace(/\/+$/, '')}`,
        close: async () => {
          if (routes.get(resource.resourceId) === route) routes.delete(resource.resourceId);
          // Not awaited: the sandbox is gone by now, and the relay's exit need not hold up the run's finish.
          void route.net?.close();
        },
      };
    },

    async watch(_env, execution, sink): Promise<ExitResult> {
      const execId = String(execution.ref.execId ?? '');
      const exe = live.get(execId);
      if (!exe) {
        return { exitCode: null, signal: null, error: 'the process is not this server\'s: a local execution cannot be watched after its server is gone', errorCode: 'process_lost' };
      }
      exe.watched = true;
      exe.attach(sink);
      try {
        return await exe.proc.exited;
      } finally {
        live.delete(execId);
      }
    },

    async signal(_env, execution, sig) {
      const signal = sig === 'KILL' ? 'SIGKILL' : 'SIGTERM';
      const execId = String(execution.ref.execId ?? '');
      const exe = live.get(execId);
      if (exe) {
        exe.proc.kill(signal);
        // Killed with nobody watching (its run failed between exec and watch): its output is
        // dropped so it can exit, and it is forgotten once it has.
        if (sig === 'KILL' && !exe.watched) void killUnwatched(execId);
        return;
      }
      // Started by a server that is gone: only a pid that is still the very process recorded
      // (same boot, pid namespace, start time), so a reused pid is never hit.
      const pid = typeof execution.ref.pid === 'number' ? execution.ref.pid : null;
      if (pid !== null && execution.host === host() && isSameProcess(pid, execution.ref.identity)) signalTree(pid, signal);
    },

    async destroy(_env, resource): Promise<CleanupReport> {
      return removeOwnWorkspace(root(), resource.resourceId);
    },

    /** Let go of the network namespaces held ready for sandboxed runs. */
    close() {
      closed = true;
      for (const spare of spares.values()) void spare.then((n) => n.close(), () => {});
      spares.clear();
    },

    async *list(env): AsyncIterable<ListedResource> {
      let names: string[];
      try {
        names = await readdir(root());
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw err;
      }
      for (const name of names) {
        if (!UUID_RE.test(name)) continue;
        const dir = join(root(), name);
        let labels: Record<string, string>;
        try {
          labels = JSON.parse(await readFile(join(dir, LABEL_FILE), 'utf8')) as Record<string, string>;
        } catch {
          continue; // not one of ours (or from before labels): never touched by reconciliation
        }
        if (labels[LABEL_ENVIRONMENT] !== env.id) continue;
        const st = await lstat(dir).catch(() => null);
        yield { providerId: dir, labels, createdAt: st ? st.mtime : null };
      }
    },
  };
}

/**
 * Remove exactly `<root>/<resource id>`: the one directory this driver makes for a resource.
 * The path comes from the id alone (a UUID the database made), resolved against the real
 * root; a symlink there is removed as a link, never followed. An agent's own cwd is never
 * under it, so it is never touched.
 */
export async function removeOwnWorkspace(rootDir: string, resourceId: string): Promise<CleanupReport> {
  if (!UUID_RE.test(resourceId)) throw new Error(`refusing to clean up ${JSON.stringify(resourceId)}: not a resource id`);
  let realRoot: string;
  try {
    realRoot = await realpath(rootDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { nothing: `no workspace root ${rootDir}` };
    throw err;
  }
  const target = join(realRoot, resourceId);
  try {
    await lstat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { nothing: `no workspace ${target}` };
    throw err;
  }
  // rm on a symlink removes the link itself; on a directory, the tree below it (links inside unfollowed).
  await rm(target, { recursive: true, force: true });
  return { removed: target };
}
