// The `local` driver: runs on this machine, in a workspace under BERTH_HOME.
import { mkdir, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { berthHome } from '../db/client.js';
import type { Lease } from '../domain/types.js';
import { startLocalProcess } from './process-tree.js';
import type { DriverEnvironment, EnvironmentDriver, PreparedWorkspace } from './types.js';

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
    async cleanup(_env, lease) {
      // Only a workspace Berth made for this lease is removed; an agent's own cwd is not.
      if (lease.metadata.workspaceOwned === true && typeof lease.metadata.cwd === 'string' && lease.metadata.cwd.startsWith(root())) {
        await rm(lease.metadata.cwd, { recursive: true, force: true });
      }
    },
  };
}
