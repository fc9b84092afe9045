// A server's heartbeat runtime: it registers the server, claims queued runs up to
// its limit, executes them, and runs the sweeps every server shares: lease
// expiry, lost-run recovery, timers and cleanup retries.
//
// Bounds (with the defaults): a lease past expiresAt is expired within
// sweepMs (1 s); a server that dies is noticed after staleSeconds (5 s) without a
// heartbeat, and its runs are finalized by the next sweep of any live server:
// within staleSeconds + sweepMs + heartbeatMs (7 s) of its last heartbeat.
import { randomUUID } from 'node:crypto';
import { hostname as osHostname } from 'node:os';
import { httpAdapter } from '../adapters/http.js';
import { processAdapter } from '../adapters/process.js';
import type { AgentAdapter } from '../adapters/types.js';
import { localDriver } from '../drivers/local.js';
import { signalTree } from '../drivers/process-tree.js';
import { sshDriver } from '../drivers/ssh.js';
import type { DriverRegistry } from '../drivers/types.js';
import type { HeartbeatRun } from '../domain/types.js';
import { createServices, type Services } from '../services/index.js';
import type { Db } from '../db/client.js';
import { executeRun } from './executor.js';

export interface RuntimeOptions {
  services: Services;
  /** The database under `services`: lets the executor group a run's steps into few transactions. */
  db?: Db;
  serverId?: string;
  drivers?: DriverRegistry;
  adapters?: Map<string, AgentAdapter>;
  /** Runs this server executes at once. */
  maxConcurrentRuns?: number;
  /**
   * The server's public URL (BERTH_PUBLIC_URL, else its bound address): what runs call
   * back to, through their driver's callbackUrl. Without one (a runtime embedded with no
   * API, as in tests) PAPERCLIP_API_URL is empty: never a guessed address.
   */
  apiUrl?: string;
  /** Where this process itself reaches the API (serve's bound address), for a driver's tunnel to end at; default apiUrl. */
  localUrl?: string;
  pollMs?: number;
  heartbeatMs?: number;
  sweepMs?: number;
  staleSeconds?: number;
  leaseTtlSeconds?: number;
  cleanupMaxAttempts?: number;
  /** Characters of output kept per run (default 16 Mi). */
  logLimitBytes?: number;
  onError?: (where: string, err: unknown) => void;
  /** Called with each run this server finalized. */
  onRunFinished?: (run: HeartbeatRun) => void;
}

export interface Runtime {
  serverId: string;
  /** Claim queued runs now instead of at the next poll. */
  poke(): void;
  /** Runs executing here now. */
  inFlight(): number;
  /** Stop claiming; give running runs `graceMs`, then cancel them; finalize everything. */
  stop(opts?: { graceMs?: number }): Promise<void>;
}

export function defaultDrivers(): DriverRegistry {
  return new Map([
    ['local', localDriver()],
    ['ssh', sshDriver()],
  ]);
}

/** Close what drivers hold open between runs (the SSH driver's pooled connections). */
export function closeDriverPools(drivers: DriverRegistry): void {
  for (const d of drivers.values()) (d as { close?: () => void }).close?.();
}

export function defaultAdapters(): Map<string, AgentAdapter> {
  return new Map([
    ['process', processAdapter],
    ['http', httpAdapter],
  ]);
}

export async function startRuntime(opts: RuntimeOptions): Promise<Runtime> {
  const s = opts.services;
  const serverId = opts.serverId ?? `srv_${randomUUID()}`;
  const host = osHostname();
  const drivers = opts.drivers ?? defaultDrivers();
  const adapters = opts.adapters ?? defaultAdapters();
  const maxRuns = opts.maxConcurrentRuns ?? 16;
  const staleSeconds = opts.staleSeconds ?? 5;
  const onError = opts.onError ?? ((where, err) => console.error(`[berth runtime] ${where}:`, (err as Error).message ?? err));
  const transact = <T>(f: (ts: Services) => Promise<T>): Promise<T> =>
    opts.db ? opts.db.transaction((tx) => f(createServices(tx as unknown as Db))) : f(s);
  const deps = {
    services: s,
    drivers,
    adapters,
    serverId,
    apiUrl: opts.apiUrl ?? '',
    ...(opts.localUrl !== undefined ? { localUrl: opts.localUrl } : {}),
    leaseTtlSeconds: opts.leaseTtlSeconds ?? 30,
    ...(opts.logLimitBytes !== undefined ? { logLimitBytes: opts.logLimitBytes } : {}),
    transact,
  };
  const running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  let stopping = false;
  let claiming = false;
  let claimAgain = false;

  await s.servers.register(serverId, host, process.pid);

  async function claimLoop(): Promise<void> {
    if (claiming) {
      claimAgain = true;
      return;
    }
    claiming = true;
    try {
      do {
        claimAgain = false;
        const full: string[] = [];
        while (!stopping && running.size < maxRuns) {
          const claimed = await s.runs.claimNext(serverId, host, full);
          if (claimed === null) break;
          if ('fullAgentId' in claimed) {
            full.push(claimed.fullAgentId);
            continue;
          }
          launch(claimed);
        }
      } while (claimAgain && !stopping);
    } catch (err) {
      onError('claim', err);
    } finally {
      claiming = false;
    }
  }

  function launch(run: HeartbeatRun): void {
    const abort = new AbortController();
    const done = executeRun(deps, run, abort)
      .then((finished) => void (finished && opts.onRunFinished?.(finished)), (err: unknown) => onError(`run ${run.id}`, err))
      .finally(() => {
        running.delete(run.id);
        void claimLoop();
      });
    running.set(run.id, { abort, done });
  }

  async function heartbeat(): Promise<void> {
    try {
      await s.servers.heartbeat(serverId);
      for (const id of await s.runs.cancelRequested(serverId)) running.get(id)?.abort.abort('cancel');
    } catch (err) {
      onError('heartbeat', err);
    }
  }

  async function sweep(): Promise<void> {
    try {
      await s.leases.expireDue();
      // A lost run and its leases end in one transaction: nobody sees one without the other.
      const lostRuns = await transact(async (ts) => {
        const lost = await ts.runs.finalizeLostRuns({ staleSeconds, exceptServerId: serverId });
        for (const run of lost) {
          await ts.leases.releaseForRun(
            run.companyId,
            run.id,
            { status: 'failed', failureReason: `process_lost: ${run.error ?? 'server stopped'}` },
            { type: 'system', id: serverId },
            { cleanupPending: true },
          );
        }
        return lost;
      });
      // Its server is gone; what it started on this host must not outlive it.
      for (const lost of lostRuns) if (lost.pid !== null && lost.hostname === host) signalTree(lost.pid, 'SIGKILL');
      if (!stopping) await s.runs.invokeDueTimers().then((runs) => runs.length > 0 && void claimLoop());
      await retryCleanups();
    } catch (err) {
      onError('sweep', err);
    }
  }

  async function retryCleanups(): Promise<void> {
    for (const lease of await s.leases.claimDueCleanups({ limit: 20 })) {
      let ok = true;
      let error: string | undefined;
      try {
        // Only resources a driver prepared (the executor records which) need its cleanup;
        // a lease taken through the API alone owes nothing.
        const preparedBy = typeof lease.metadata.preparedBy === 'string' ? lease.metadata.preparedBy : null;
        if (preparedBy !== null) {
          const driver = drivers.get(preparedBy);
          if (!driver) throw new Error(`no ${preparedBy} driver on server ${serverId}`);
          const env = lease.environmentId ? await s.environments.getWithSecrets(lease.companyId, lease.environmentId).catch(() => null) : null;
          await driver.cleanup(env, lease);
        }
      } catch (err) {
        ok = false;
        error = (err as Error).message;
      }
      await s.leases
        .recordCleanupAttempt(lease.companyId, lease.id, { fence: lease.fence, ok, ...(error ? { error } : {}), ...(opts.cleanupMaxAttempts ? { maxAttempts: opts.cleanupMaxAttempts } : {}) })
        .catch((err: unknown) => onError('cleanup', err));
    }
  }

  const timers = [
    setInterval(() => void claimLoop(), opts.pollMs ?? 200),
    setInterval(() => void heartbeat(), opts.heartbeatMs ?? 1000),
    setInterval(() => void sweep(), opts.sweepMs ?? 1000),
  ];
  await sweep(); // runs left `running` by a dead server are finalized at start-up
  void claimLoop();

  return {
    serverId,
    poke: () => void claimLoop(),
    inFlight: () => running.size,
    async stop({ graceMs = 10_000 } = {}) {
      stopping = true;
      for (const t of timers) clearInterval(t);
      while (claiming) await new Promise((r) => setTimeout(r, 10));
      const all = [...running.values()];
      const grace = new Promise((r) => setTimeout(r, graceMs).unref());
      await Promise.race([Promise.all(all.map((r) => r.done)), grace]);
      for (const r of running.values()) r.abort.abort('cancel');
      await Promise.all([...running.values()].map((r) => r.done));
      await s.servers.stop(serverId).catch((err: unknown) => onError('stop', err));
      closeDriverPools(drivers);
    },
  };
}
