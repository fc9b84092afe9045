// A server's heartbeat runtime: it registers the server, claims queued runs up to its
// limit, executes them, and runs the maintenance every server shares as named tasks
// (scheduler.ts): lease expiry, lost-run recovery, orphaned runs, timers, cleanup retries
// and retention.
//
// Wake-ups: a run queued anywhere (invoke, a requeue with no delay, a timer) notifies the
// runs channel in its own statement (db/notify.ts); this server listens and claims at once.
// The claim poll (pollMs, 2 s) is only the backstop for a lost notification, and a
// listener that reconnects does one claim pass. Without a listener the poll claims every
// 200 ms, as the only way to find work.
//
// Idle cost: the heartbeat statement also checks what each sweep would find (services/due.ts)
// and the sweeps run only when it finds something, so an idle server commits one statement
// per heartbeat (plus its share of the gate 'one' retention once a minute).
//
// Bounds (with the defaults): a lease past expiresAt is seen by the next due-check of any
// server (every heartbeatMs, 1 s) and expired at once: within 1 s plus the time to write it
// (the sweep takes batches of 2,000 until none is due). A server that dies is noticed
// after staleSeconds (5 s) without a heartbeat, and its runs are finalized at the next
// due-check of any live server: within staleSeconds + heartbeatMs (6 s, under the 7 s
// stated before) of its last heartbeat, plus the write. A due-check that fails or is late
// (more than 3 heartbeats old) is not trusted: the sweeps then run at each of their own
// ticks (sweepMs, 1 s) as if everything were due. The heartbeat runs on a connection of
// its own where the database has several (PostgreSQL), so a busy pool cannot make this
// server look dead.
import { randomUUID } from 'node:crypto';
import { hostname as osHostname } from 'node:os';
import { httpAdapter } from '../adapters/http.js';
import { processAdapter } from '../adapters/process.js';
import type { AgentAdapter } from '../adapters/types.js';
import { defaultDrivers } from '../drivers/registry.js';
import type { DriverEnvironment, DriverRegistry } from '../drivers/contract.js';
import type { AdoptedRun, HeartbeatRun, Lease } from '../domain/types.js';
import { storableText } from '../domain/text.js';
import { createServices, type Services } from '../services/index.js';
import { serverRegistry } from '../services/runs.js';
import { EXPIRE_BATCH } from '../services/leases/index.js';
import type { RetentionPolicy } from '../services/retention.js';
import type { Db } from '../db/client.js';
import { executeRun, resumeRun, withDeadline, type ExecutorDeps } from './run/index.js';
import type { ResourceToDestroy } from '../services/resources/index.js';
import { createScheduler } from './scheduler.js';
import { CANCELS_CHANNEL, RUNS_CHANNEL, type Listen, type Listener } from '../db/notify.js';
import { dueService, type DueCheck } from '../services/due.js';
import { POOLS_CHANNEL } from '../db/notify.js';
import { poolRefiller } from './pool-refill.js';

export interface RuntimeOptions {
  services: Services;
  /** The database under `services`: lets the executor group a run's steps into few transactions. */
  db?: Db;
  /** A connection of its own for the server heartbeat (PostgreSQL): never queued behind run work. */
  heartbeatDb?: Db;
  serverId?: string;
  drivers?: DriverRegistry;
  adapters?: Map<string, AgentAdapter>;
  /** Runs this server executes at once. */
  maxConcurrentRuns?: number;
  /** PAPERCLIP_API_URL: where runs reach this server. */
  apiUrl: string;
  /** Where this process itself reaches the API (serve's bound address), for a driver's tunnel to end at; default apiUrl. */
  localUrl?: string;
  /**
   * Wake-ups (Database.listen): a run queued by any server is claimed here at once. Without
   * them the claim poll is the only way to find work.
   */
  listen?: Listen;
  /** The claim poll: default 2 s with wake-ups (a backstop, skipped while the due-check finds nothing claimable), 200 ms without. */
  pollMs?: number;
  /** The heartbeat and due-check (services/due.ts). */
  heartbeatMs?: number;
  /** Each sweep's own tick, used when the due-check is not to be trusted (it failed, or is late). */
  sweepMs?: number;
  staleSeconds?: number;
  leaseTtlSeconds?: number;
  cleanupMaxAttempts?: number;
  /** Cleanups run at once by this server's sweep. */
  cleanupConcurrency?: number;
  /** One cleanup that takes longer counts as failed (and is retried with backoff). */
  cleanupTimeoutMs?: number;
  /** Reconciliation interval (driver `list` against resource records). */
  reconcileMs?: number;
  /** An object a provider holds under Berth's labels with no record is destroyed once older than this (s). */
  orphanResourceGraceSeconds?: number;
  /** Warm pools' refill interval (a claim or a pool change wakes it at once); default 5 s. */
  poolRefillMs?: number;
  /** Test seam: called between the phases of each run (see ExecutorDeps.onPhase). */
  onPhase?: ExecutorDeps['onPhase'];
  /** A run held `running` here that this server no longer executes is finalized after this (s). */
  orphanGraceSeconds?: number;
  /** Characters of output kept per run (default 16 Mi). */
  logLimitChars?: number;
  /** Old rows pruned every minute (servers gone a day; run logs and activity only when set). */
  retention?: RetentionPolicy;
  /** Where the runtime reports what went wrong in its own work (not a run's failure). */
  onError: (where: string, err: unknown) => void;
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

export { defaultDrivers };

/** Close what drivers hold open between runs (the SSH driver's pooled connections). */
export function closeDriverPools(drivers: DriverRegistry): void {
  for (const d of drivers.values()) (d as { close?: () => void }).close?.();
}

export function defaultAdapters(): Map<string, AgentAdapter> {
  return new Map<string, AgentAdapter>([
    ['process', processAdapter],
    ['http', httpAdapter],
  ]);
}

/** Expire due leases in batches until none is left (or `budgetMs` is spent): the bound holds under a burst. */
export async function expireAllDue(s: Services, budgetMs = 5_000): Promise<number> {
  const until = Date.now() + budgetMs;
  let total = 0;
  for (;;) {
    const n = (await s.leases.expireDue({ limit: EXPIRE_BATCH })).length;
    total += n;
    if (n < EXPIRE_BATCH || Date.now() >= until) return total;
  }
}

export async function startRuntime(opts: RuntimeOptions): Promise<Runtime> {
  const s = opts.services;
  const serverId = opts.serverId ?? `srv_${randomUUID()}`;
  const host = osHostname();
  const drivers = opts.drivers ?? defaultDrivers();
  const adapters = opts.adapters ?? defaultAdapters();
  const maxRuns = opts.maxConcurrentRuns ?? 16;
  const staleSeconds = opts.staleSeconds ?? 5;
  const sweepMs = opts.sweepMs ?? 1000;
  const cleanupTimeoutMs = opts.cleanupTimeoutMs ?? 120_000;
  const { onError } = opts;
  const servers = opts.heartbeatDb ? serverRegistry(opts.heartbeatDb) : s.servers;
  const transact = <T>(f: (ts: Services) => Promise<T>): Promise<T> =>
    opts.db ? opts.db.transaction((tx) => f(createServices(tx as unknown as Db, s.metrics))) : f(s);
  const deps = {
    services: s,
    drivers,
    adapters,
    serverId,
    apiUrl: opts.apiUrl,
    ...(opts.localUrl !== undefined ? { localUrl: opts.localUrl } : {}),
    leaseTtlSeconds: opts.leaseTtlSeconds ?? 30,
    cleanupTimeoutMs,
    ...(opts.logLimitChars !== undefined ? { logLimitChars: opts.logLimitChars } : {}),
    ...(opts.onPhase ? { onPhase: opts.onPhase } : {}),
    transact,
    wakePools: () => wakePools(),
  };
  const running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  let stopping = false;
  let claiming = false;
  let claimAgain = false;
  /**
   * The last claim pass found the queue empty, with no run held back (no agent full, this
   * server not at its limit): a run ending here then frees nothing a queued run waits for, so
   * it starts no claim of its own. A run queued later wakes the loop (LISTEN/NOTIFY, the poll
   * as the backstop).
   */
  let queueEmpty = false;

  await servers.register(serverId, host, process.pid);

  async function claimLoop(): Promise<void> {
    if (claiming) {
      claimAgain = true;
      return;
    }
    claiming = true;
    try {
      do {
        claimAgain = false;
        queueEmpty = false;
        const full: string[] = [];
        while (!stopping && running.size < maxRuns) {
          const claimed = await s.runs.claimNext(serverId, host, full);
          if (claimed === null) {
            queueEmpty = full.length === 0;
            break;
          }
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

  function launch(run: HeartbeatRun, adopted?: AdoptedRun): void {
    const abort = new AbortController();
    const done = (adopted ? resumeRun(deps, adopted, abort) : executeRun(deps, run, abort))
      .then((finished) => void (finished && opts.onRunFinished?.(finished)), (err: unknown) => onError(`run ${run.id}`, err))
      .finally(() => {
        running.delete(run.id);
        if (!queueEmpty || claiming) void claimLoop();
      });
    running.set(run.id, { abort, done });
  }

  /** Cancels asked for (by any server) of runs executing here. */
  async function checkCancels(): Promise<void> {
    if (running.size === 0) return;
    for (const id of await s.runs.cancelRequested(serverId)) running.get(id)?.abort.abort('cancel');
  }

  /** Drivers here whose executions outlive their server: their runs are adopted, not lost. */
  const reattachable = [...drivers.values()].filter((d) => d.capabilities.reattach).map((d) => d.kind);

  /**
   * Runs of servers that died. Those whose execution a driver here can reattach to are
   * adopted (watched on from where their log stopped); the rest are finalized process_lost
   * with their leases in one transaction, and what they started is stopped through their
   * driver (a local pid only if it is still the very process recorded).
   */
  async function recoverLostRuns(): Promise<void> {
    // Adopted whatever this server's own limit: watching a run that already executes costs
    // little here, and a run not adopted now would be finalized (and killed) just below.
    if (!stopping) {
      for (const a of await s.runs.adoptLostRuns(serverId, reattachable, { staleSeconds })) {
        if (running.has(a.run.id)) continue;
        launch(a.run, a);
      }
    }
    const lostRuns = await transact(async (ts) => {
      const lost = await ts.runs.finalizeLostRuns({ staleSeconds, exceptServerId: serverId });
      for (const run of lost) {
        await ts.leases.releaseForRun(
          run.companyId,
          run.id,
          { status: 'failed', failureReason: `process_lost: ${run.error ?? 'server stopped'}` },
          { type: 'system', id: serverId },
        );
      }
      return lost;
    });
    if (lostRuns.length === 0) return;
    const byRun = new Map(lostRuns.map((r) => [r.id, r]));
    const executions = await s.runs.executionsOf([...byRun.keys()]);
    // A run recorded by an earlier Berth (a local pid and who it is, no execution record): the local driver's own handle for it.
    for (const r of lostRuns) {
      if (r.pid === null || !r.processIdentity || executions.some((e) => e.runId === r.id)) continue;
      const bootId = (r.processIdentity as { bootId?: unknown }).bootId;
      executions.push({ runId: r.id, execution: { driver: 'local', host: typeof bootId === 'string' ? bootId : null, ref: { pid: r.pid, identity: r.processIdentity } } });
    }
    for (const e of executions) {
      const drv = drivers.get(e.execution.driver);
      const run = byRun.get(e.runId);
      if (!drv || !run) continue;
      const env = run.environmentId ? await s.environments.getWithSecrets(run.companyId, run.environmentId).catch(() => null) : null;
      if (env || drv.capabilities.hostLocal) await drv.signal((env ?? {}) as DriverEnvironment, e.execution, 'KILL').catch((err: unknown) => onError(`recover ${run.id}`, err));
    }
  }

  async function finalizeOrphans(): Promise<void> {
    const orphans = await s.runs.finalizeOrphans(serverId, [...running.keys()], { graceSeconds: opts.orphanGraceSeconds ?? 30 });
    for (const run of orphans) {
      await s.leases.releaseForRun(run.companyId, run.id, { status: 'failed', failureReason: `execution_lost: ${run.error ?? ''}` }, { type: 'system', id: serverId });
      onError(`run ${run.id}`, new Error(`run ${run.id} was still running here with no execution: finalized failed (execution_lost)`));
    }
  }

  const driverKinds = [...drivers.keys()];
  const claimSeconds = Math.ceil(cleanupTimeoutMs / 1000) + 30;

  /** Run `work` over `items`, `concurrency` at a time. */
  async function pool<T>(items: T[], work: (item: T) => Promise<void>): Promise<void> {
    const queue = [...items];
    const worker = async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await work(item);
    };
    await Promise.all(Array.from({ length: Math.min(opts.cleanupConcurrency ?? 4, queue.length) }, worker));
  }

  /**
   * Resource GC: resources owed a destroy, of drivers this server has (a server without a
   * driver never burns the retry budget of rows it cannot serve), each destroyed with a
   * deadline and the attempt recorded with its lease. Then leases with no resource record
   * that were left pending_cleanup by their caller.
   */
  async function collectGarbage(): Promise<void> {
    // A claim outlasts the destroy's own deadline: no other server takes it while it runs.
    await pool(await s.resources.claimDue(driverKinds, { limit: 50, claimSeconds }), destroyOne);
    await pool(await s.leases.claimDueCleanups({ limit: 50, claimSeconds }), cleanBareLease);
  }

  async function destroyOne(r: ResourceToDestroy): Promise<void> {
    let ok = true;
    let error: string | undefined;
    let done: Record<string, unknown> = {};
    try {
      const driver = drivers.get(r.driver);
      if (!driver) throw new Error(`no ${r.driver} driver on server ${serverId}`);
      const env = { ...r.environment, companyId: r.companyId, envVars: {} } as unknown as DriverEnvironment;
      const stop = new AbortController();
      done = { ...(await withDeadline(driver.destroy(env, { resourceId: r.id, providerId: r.providerId, state: r.state }, stop.signal), cleanupTimeoutMs, 'cleanup_timeout', `destroying resource ${r.id}`, stop)) };
    } catch (err) {
      ok = false;
      error = storableText((err as Error).message);
    }
    await s.resources
      .recordDestroyAttempt(r.id, { ok, done, ...(error ? { error } : {}), ...(opts.cleanupMaxAttempts ? { maxAttempts: opts.cleanupMaxAttempts } : {}) })
      .catch((err: unknown) => onError('resource-gc', err));
  }

  /** A lease whose caller reported its own cleanup failed: no driver made anything, so there is nothing to retry. */
  async function cleanBareLease(lease: Lease): Promise<void> {
    const done = { nothing: lease.driver === null ? 'no driver made resources for this lease' : `lease of driver ${lease.driver} has no resource record` };
    await s.leases
      .recordCleanupAttempt(lease.companyId, lease.id, { fence: lease.fence, ok: true, done, ...(opts.cleanupMaxAttempts ? { maxAttempts: opts.cleanupMaxAttempts } : {}) })
      .catch((err: unknown) => onError('cleanup', err));
  }

  /**
   * Reconciliation: what each environment's provider holds under Berth's labels (drivers that
   * can list) against the resource records. An object with no live record, older than the
   * grace period, is destroyed, with one activity row; records are never trusted from labels
   * alone: the object's own environment label must be this environment.
   */
  async function reconcile(): Promise<void> {
    const graceMs = (opts.orphanResourceGraceSeconds ?? 300) * 1000;
    for (const env of await s.environments.listActiveForDrivers(driverKinds.filter((k) => drivers.get(k)!.list))) {
      const drv = drivers.get(env.driver)!;
      const stop = new AbortController();
      const timer = setTimeout(() => stop.abort(new Error('reconcile deadline')), 60_000);
      try {
        const live = await s.resources.liveIds(env.id);
        for await (const obj of drv.list!(env, stop.signal)) {
          const id = obj.labels['berth.resource'];
          if (!id || live.has(id)) continue;
          if (obj.createdAt && Date.now() - obj.createdAt.getTime() < graceMs) continue;
          // Not live now, and re-checked: a record written since the list began keeps it.
          if ((await s.resources.liveIds(env.id)).has(id)) continue;
          const done = await drv.destroy(env, { resourceId: id, providerId: obj.providerId, state: {} }, stop.signal);
          await s.resources.recordOrphanDestroyed(env.companyId, env.id, { providerId: obj.providerId, labels: obj.labels, done: { ...done } });
        }
      } catch (err) {
        onError(`reconcile ${env.id}`, err);
      } finally {
        clearTimeout(timer);
      }
    }
  }

  // Each task skips a tick while its last run is still going: nothing piles up.
  // What the last due-check found (it runs with the heartbeat); a sweep whose flag is off
  // skips its tick. A check older than three heartbeats is not trusted: then every sweep
  // runs at its tick, as if all were due.
  const heartbeatMs = opts.heartbeatMs ?? 1000;
  const dueChecks = opts.heartbeatDb ? dueService(opts.heartbeatDb) : s.due;
  let due: DueCheck | null = null;
  let dueAt = -Infinity;
  const dueFresh = () => due !== null && performance.now() - dueAt < 3 * heartbeatMs + 500;
  const needs = (flag: keyof DueCheck) => () => !dueFresh() || due![flag];

  const gateDb = opts.db ?? opts.heartbeatDb;
  const scheduler = createScheduler({ ...(gateDb ? { db: gateDb } : {}), serverId, onError, metrics: s.metrics });
  // Gate 'one' needs the database under the services; without it, every server runs them.
  const one = gateDb ? ('one' as const) : ('any' as const);
  const sweepDeadline = 60_000;
  const wakeups = opts.listen !== undefined;

  // Gates, and why:
  // - claim, heartbeat, cancels, orphaned-runs: 'any'. Each is about this server itself
  //   (its slots, its liveness, its runs).
  // - expire-leases, cleanups: 'any'. Their statements share the work out (SKIP LOCKED, and a
  //   cleanup is claimed before it runs), so under a burst every server helps; idle, the
  //   due-check keeps them from running at all, so a gate would only add a statement.
  // - recover-runs: 'any'. Any live server may finalize a dead one's runs (SKIP LOCKED gives
  //   each to one), and a gate would put a winner's interval between a death and its
  //   recovery; the due-check keeps it from running while nothing is lost.
  // - timers: 'one'. invokeDueTimers already gives each agent's tick to one server; the gate
  //   keeps every server from sending the same update each second while a timer is due.
  // - retention: 'one'. Pruning is the same work whichever server does it, once a minute.
  scheduler.every('claim', opts.pollMs ?? (wakeups ? 2_000 : 200), { gate: 'any', ...(wakeups ? { when: needs('claimable') } : {}) }, () => claimLoop());
  // Its own task (and connection): nothing that waits for the pool may delay it. The sweeps
  // its due-check finds work for run at once: the bounds above count from this check.
  scheduler.every('heartbeat', heartbeatMs, { gate: 'any', timeoutMs: 10_000 }, async () => {
    const at = performance.now();
    const found = await dueChecks.heartbeat(serverId, { staleSeconds, drivers: driverKinds });
    due = found;
    dueAt = at;
    if (stopping) return;
    const wake: [keyof DueCheck, string][] = [
      ['leases', 'expire-leases'],
      ['lostRuns', 'recover-runs'],
      ['timers', 'timers'],
      ['cleanups', 'resource-gc'],
      ['cancels', 'cancels'],
    ];
    for (const [flag, task] of wake) if (found[flag]) void scheduler.get(task).runNow();
  });
  scheduler.every('cancels', heartbeatMs, { gate: 'any', timeoutMs: sweepDeadline, when: needs('cancels') }, checkCancels);
  scheduler.every('expire-leases', sweepMs, { gate: 'any', timeoutMs: sweepDeadline, when: needs('leases') }, () => expireAllDue(s));
  scheduler.every('recover-runs', sweepMs, { gate: 'any', timeoutMs: sweepDeadline, when: needs('lostRuns') }, recoverLostRuns);
  scheduler.every('orphaned-runs', Math.max(sweepMs, 5_000), { gate: 'any', timeoutMs: sweepDeadline, when: needs('ownRunning') }, finalizeOrphans);
  scheduler.every('timers', sweepMs, { gate: one, timeoutMs: sweepDeadline, when: needs('timers') }, async () => {
    if (!stopping && (await s.runs.invokeDueTimers()).length > 0) void claimLoop();
  });
  // A cleanup's own deadline is cleanupTimeoutMs; the sweep runs several, a batch at a time.
  scheduler.every('resource-gc', sweepMs, { gate: 'any', timeoutMs: cleanupTimeoutMs + sweepDeadline, when: needs('cleanups') }, collectGarbage);
  // One server per interval compares each provider with the records (gate 'one').
  scheduler.every('reconcile', opts.reconcileMs ?? 60_000, { gate: one, timeoutMs: 5 * sweepDeadline }, reconcile);
  // Warm pools: every server with the driver refills (gate 'any'): reserve statements take the
  // pool's advisory lock, so two servers never fill one gap twice. A claim (any server's:
  // POOLS_CHANNEL) or this server's own wakes it at once; a wake while a pass runs makes
  // another pass after it. With wake-ups and no pool anywhere it looks only once a minute
  // (a pool set anywhere notifies).
  const refiller = poolRefiller({ services: s, drivers, serverId, staleSeconds, onError });
  let refilling = false;
  let refillAgain = false;
  let lastPoolLook = 0;
  const poolRefillMs = opts.poolRefillMs ?? 5_000;
  scheduler.every('pool-refill', poolRefillMs, {
    gate: 'any',
    timeoutMs: 5 * sweepDeadline + 300_000,
    // Without wake-ups a new pool is only found by looking: every tick then.
    when: () => !wakeups || refiller.hasPools() || performance.now() - lastPoolLook >= 60_000,
  }, async () => {
    refilling = true;
    try {
      do {
        refillAgain = false;
        lastPoolLook = performance.now();
        await refiller.pass();
      } while (refillAgain && !stopping);
    } finally {
      refilling = false;
    }
  });
  function wakePools(): void {
    if (stopping) return;
    if (refilling) refillAgain = true;
    else void scheduler.get('pool-refill').runNow();
  }
  scheduler.every('retention', 60_000, { gate: one, timeoutMs: 5 * sweepDeadline }, () => s.retention.prune(opts.retention ?? {}));

  // Runs left `running` by a dead server are finalized at start-up; the first due-check
  // comes before them, so the first ticks are already skipped when nothing is due.
  await scheduler.get('heartbeat').runNow();
  for (const name of ['expire-leases', 'recover-runs'] as const) await scheduler.get(name).runNow();

  let listener: Listener | null = null;
  if (opts.listen) {
    listener = await opts.listen({
      onNotify: (channel, payload) => {
        if (stopping) return;
        if (channel === RUNS_CHANNEL) void claimLoop();
        else if (channel === POOLS_CHANNEL) wakePools();
        else if (channel === CANCELS_CHANNEL && payload === serverId) void scheduler.get('cancels').runNow();
      },
      // Listening (again): what was notified meanwhile may be lost, so look once.
      onListening: () => {
        if (stopping) return;
        void claimLoop();
        wakePools();
        void scheduler.get('cancels').runNow();
      },
      onError: (err) => onError('wake-ups', err),
    });
  }
  void claimLoop();
  wakePools();

  return {
    serverId,
    poke: () => void claimLoop(),
    inFlight: () => running.size,
    async stop({ graceMs = 10_000 } = {}) {
      stopping = true;
      refiller.stop();
      await listener?.close().catch((err: unknown) => onError('wake-ups', err));
      scheduler.stop();
      while (claiming) await new Promise((r) => setTimeout(r, 10));
      const all = [...running.values()];
      const grace = new Promise((r) => setTimeout(r, graceMs).unref());
      await Promise.race([Promise.all(all.map((r) => r.done)), grace]);
      // Past the grace period: a run whose driver can reattach is handed over (the next server
      // adopts it); any other is cancelled.
      for (const r of running.values()) r.abort.abort('handoff');
      await Promise.all([...running.values()].map((r) => r.done));
      await scheduler.idle();
      await servers.stop(serverId).catch((err: unknown) => onError('stop', err));
      closeDriverPools(drivers);
    },
  };
}
