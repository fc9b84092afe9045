// The `local` driver: runs on this machine, in a workspace under BERTH_HOME.
import { lstat, mkdir, realpath, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { berthHome } from '../../db/client.js';
import { UUID_RE } from '../../domain/errors.js';
import type { Lease } from '../../domain/types.js';
import { startLocalProcess } from './process-tree.js';
import type { CleanupReport, DriverEnvironment, EnvironmentDriver, PreparedWorkspace } from '../contract.js';

export function localDriver(opts: { workspaceRoot?: string } = {}): EnvironmentDriver {
  const root = () => opts.workspaceRoot ?? join(berthHome(), 'workspaces');
  return {
    driver: 'local',
    async probe() {
      const started = performance.now();
      await mkdir(root(), { recursive: true });
      return { ok: true, latencyMs: performance.now() - started, details: { hostname: hostname(), platform: process.platform, workspaceRoot: root() } };
    },
    async prepareWorkspace(_env: DriverEnvironment, lease: Lease, o: { cwd?: string }): Promise<PreparedWorkspace> {
      if (o.cwd) return { cwd: o.cwd, details: { hostname: hostname(), cwd: o.cwd, workspaceOwned: false } };
      const cwd = join(root(), lease.id);
      await mkdir(cwd, { recursive: true });
      return { cwd, details: { hostname: hostname(), cwd, workspaceOwned: true } };
    },
    startProcess(_env, spec, onOutput) {
      return startLocalProcess(spec, onOutput);
    },
    async cleanup(_env, lease): Promise<CleanupReport> {
      return removeOwnWorkspace(root(), lease.id);
    },
  };
}

/**
 * Remove exactly `<root>/<lease id>`: the one directory this driver makes for a lease.
 * The path comes from the lease id alone (a UUID the database made), resolved against the
 * real root; a symlink there is removed as a link, never followed. An agent's own cwd is
 * never under it, so it is never touched.
 */
export async function removeOwnWorkspace(rootDir: string, leaseId: string): Promise<CleanupReport> {
  if (!UUID_RE.test(leaseId)) throw new Error(`refusing to clean up lease ${JSON.stringify(leaseId)}: not a lease id`);
  let realRoot: string;
  try {
    realRoot = await realpath(rootDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { nothing: `no workspace root ${rootDir}` };
    throw err;
  }
  const target = join(realRoot, leaseId);
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
