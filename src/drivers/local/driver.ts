// The `local` driver: runs on this machine. A resource is a workspace directory
// `<root>/<resource id>` holding a label file; an execution is a contained process tree
// (cgroup v2, else its own process group) started through the spawner helper. Local
// executions do not survive their server (their output comes through it): no reattach.
import { randomUUID } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { berthHome } from '../../db/client.js';
import { UUID_RE } from '../../domain/errors.js';
import {
  LABEL_ENVIRONMENT,
  type CleanupReport,
  type EnvironmentDriver,
  type ExecutionHandle,
  type ExitResult,
  type ListedResource,
  type OutputListener,
} from '../contract.js';
import { localDescriptor } from './descriptor.js';
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

export function localDriver(opts: { workspaceRoot?: string } = {}): EnvironmentDriver {
  const root = () => opts.workspaceRoot ?? join(berthHome(), 'workspaces');
  /** Executions this process started and nobody has finished watching. */
  const live = new Map<string, LiveExecution>();
  const thisHost = bootId() ?? hostname();
  const host = () => thisHost;

  return {
    ...localDescriptor,
    async probe() {
      const started = performance.now();
      await mkdir(root(), { recursive: true });
      return { ok: true, latencyMs: performance.now() - started, details: { hostname: hostname(), platform: process.platform, workspaceRoot: root() } };
    },

    async provision(_env, req) {
      // An agent that names its own working directory gets it as it is: nothing is made, nothing will be removed.
      if (req.cwd) return { resourceId: req.resourceId, providerId: null, state: {}, cwd: req.cwd, details: { hostname: hostname(), cwd: req.cwd, workspaceOwned: false } };
      if (!UUID_RE.test(req.resourceId)) throw new Error(`refusing to provision ${JSON.stringify(req.resourceId)}: not a resource id`);
      const dir = join(root(), req.resourceId);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, LABEL_FILE), `${JSON.stringify(req.labels)}\n`);
      return { resourceId: req.resourceId, providerId: dir, state: { dir }, cwd: dir, details: { hostname: hostname(), cwd: dir, workspaceOwned: true } };
    },

    async exec(_env, _resource, spec): Promise<ExecutionHandle> {
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
        if (sig === 'KILL' && !exe.watched) {
          exe.watched = true;
          exe.attach(() => 'stop');
          void exe.proc.exited.then(() => live.delete(execId));
        }
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
