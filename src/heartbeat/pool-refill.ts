// The warm pools' refill (services/pools describes the design): per environment with a pool
// whose driver this server has, retire what is too old or too many, reserve what is missing
// (records first), then make each member through its driver outside any transaction, run
// the pool's setup command in it when there is one, and mark it ready.
import type { DriverEnvironment, DriverRegistry, EnvironmentDriver } from '../drivers/contract.js';
import { storableText } from '../domain/text.js';
import type { Services } from '../services/index.js';
import type { PoolWork, ReservedMember } from '../services/pools/index.js';
import { withDeadline } from './run/context.js';
import { resourceLabels } from './run/provision.js';

export interface PoolRefillOptions {
  services: Services;
  drivers: DriverRegistry;
  serverId: string;
  /** A maker server without a heartbeat for this long is gone: its provisioning members are retired. */
  staleSeconds: number;
  /** A driver's provision that takes longer fails the member (default 300 s). */
  prepareTimeoutMs?: number;
  /** Members made at once by this server. */
  concurrency?: number;
  onError: (where: string, err: unknown) => void;
}

/** Characters of a setup command's output kept (its tail). */
const SETUP_OUTPUT_CHARS = 4000;

export function poolRefiller(o: PoolRefillOptions) {
  const s = o.services;
  const kinds = [...o.drivers.values()].filter((d) => d.capabilities.pool).map((d) => d.kind);
  const prepareMs = o.prepareTimeoutMs ?? 300_000;
  const deadlineSeconds = Math.ceil(prepareMs / 1000) + 3600 + 60;
  let stopping = false;
  /** Whether the last pass found any environment with a pool (idle servers skip most ticks otherwise). */
  let anyPools = true;

  /** Provision one reserved member, set it up, mark it ready; any failure retires it and is counted. */
  async function make(env: DriverEnvironment, drv: EnvironmentDriver, m: ReservedMember, setup: { command: string; timeoutSeconds: number } | undefined): Promise<void> {
    const stop = new AbortController();
    const started = performance.now();
    try {
      const made = await withDeadline(
        drv.provision(env, { resourceId: m.resourceId, leaseId: null, labels: resourceLabels({ resourceId: m.resourceId, leaseId: null, environmentId: m.environmentId, companyId: m.companyId }) }, stop.signal),
        prepareMs,
        'prepare_timeout',
        `provisioning pool member ${m.resourceId} on ${env.name}`,
        stop,
      );
      let ran: Awaited<ReturnType<typeof runSetup>> | undefined;
      if (setup) {
        await s.pools.recordHandle(m.resourceId, made);
        ran = await runSetup(env, drv, made, setup);
      }
      const ready = await s.pools.markReady(m.resourceId, { providerId: made.providerId, state: made.state, cwd: made.cwd, details: made.details }, ran);
      s.metrics.poolMemberMade(ready ? 'ready' : 'retired', (performance.now() - started) / 1000);
    } catch (err) {
      s.metrics.poolMemberMade('failed', (performance.now() - started) / 1000);
      const message = storableText((err as Error).message);
      o.onError(`pool ${m.environmentId}`, err);
      await s.pools.markFailed(m.resourceId, m.environmentId, message).catch((e: unknown) => o.onError(`pool ${m.environmentId}`, e));
    }
  }

  /**
   * The pool's setup command, once in the member, in its working directory, with its own
   * deadline: output kept (tail), a non-zero exit or the deadline fails the member.
   */
  async function runSetup(
    env: DriverEnvironment,
    drv: EnvironmentDriver,
    made: { resourceId: string; providerId: string | null; state: Record<string, unknown>; cwd: string },
    setup: { command: string; timeoutSeconds: number },
  ): Promise<{ exitCode: number | null; output: string; ms: number }> {
    const started = performance.now();
    let output = '';
    const stop = new AbortController();
    // As a run's process gets it: the environment's variables, and on this host only the harmless basics of the server's own.
    const vars: Record<string, string> = {};
    if (drv.capabilities.hostLocal) for (const k of ['PATH', 'HOME', 'USER', 'LANG', 'TMPDIR', 'SHELL']) if (process.env[k] !== undefined) vars[k] = process.env[k]!;
    Object.assign(vars, env.envVars);
    const handle = await drv.exec(env, made, { command: 'sh', args: ['-c', setup.command], cwd: made.cwd, env: vars, deadlineSec: setup.timeoutSeconds }, stop.signal);
    const sink = (_stream: 'stdout' | 'stderr', text: string) => {
      output = (output + text).slice(-SETUP_OUTPUT_CHARS);
    };
    let exit;
    try {
      exit = await withDeadline(drv.watch(env, handle, sink), setup.timeoutSeconds * 1000, 'setup_timeout', `the pool's setup command on ${env.name}`, stop);
    } catch (err) {
      await drv.signal(env, handle, 'KILL').catch(() => {});
      throw Object.assign(new Error(`${(err as Error).message}; output: ${output.slice(-500)}`), { code: 'setup_timeout' });
    }
    const ms = Math.round(performance.now() - started);
    if (exit.exitCode !== 0) {
      const why = exit.spawnError ?? exit.error ?? (exit.signal ? `signal ${exit.signal}` : `exit code ${exit.exitCode}`);
      throw new Error(`the pool's setup command failed (${why}); output: ${output.slice(-500)}`);
    }
    return { exitCode: exit.exitCode, output, ms };
  }

  async function refill(w: PoolWork): Promise<void> {
    const pool = w.pool;
    const needsRetire = w.idle > 0 && (!w.active || pool === null || w.provisioning > 0 || w.stale > 0 || w.idle > pool.maxReady
      || (w.oldestReadySeconds !== null && w.oldestReadySeconds >= pool.maxAgeSeconds));
    if (needsRetire) await s.pools.retire(w.environmentId, { staleSeconds: o.staleSeconds, provisionDeadlineSeconds: deadlineSeconds });
    if (!w.active || pool === null || stopping) return;
    if (w.idle >= pool.minReady && !needsRetire) return;
    const drv = o.drivers.get(w.driver);
    if (!drv) return;
    const reserved = await s.pools.reserve(w.environmentId, o.serverId);
    if (reserved.length === 0) return;
    const env = await s.environments.getWithSecrets(w.companyId, w.environmentId);
    const queue = [...reserved];
    const worker = async () => {
      for (let m = queue.shift(); m !== undefined; m = queue.shift()) await make(env, drv, m, pool.setup);
    };
    await Promise.all(Array.from({ length: Math.min(o.concurrency ?? 4, queue.length) }, worker));
  }

  return {
    /** One pass over every environment with a pool (or members left): what the scheduled task runs. */
    async pass(): Promise<void> {
      if (kinds.length === 0) return;
      const work = await s.pools.work(kinds);
      anyPools = work.length > 0;
      await Promise.all(
        work.map((w) => refill(w).catch((err: unknown) => o.onError(`pool ${w.environmentId}`, err))),
      );
    },
    /** False when the last pass found no pool: the interval then only looks now and then (a pool change wakes it). */
    hasPools: () => anyPools,
    stop(): void {
      stopping = true;
    },
  };
}
