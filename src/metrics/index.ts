// What a server counts, in the Prometheus text format (GET /metrics). One registry per
// server instance (several servers may share a process: the tests start many), created with
// its services: the services and the heartbeat record into it through the functions below,
// and the HTTP layer renders it. Nothing here reads the database: the gauges of what the
// database holds (leases, queued runs) come from a snapshot source the server sets, read
// once per scrape.
//
// Labels are bounded: statuses, reasons, phases, task and route names, environment and
// agent ids (configuration, not traffic). Never a lease or run id.
//
// Counters are recorded when the statement that did the thing returns. Inside a transaction
// that then fails to commit and is tried again (the end of a run while the database is
// away), the same end may be counted twice: counters may overcount an outage, never miss.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** What the database holds now, for the gauges: read at scrape time (services/stats.ts). */
export interface DatabaseSnapshot {
  /** Leases not yet ended, by environment and status (active, retained, pending_cleanup); every active environment appears. */
  leases: Array<{ environmentId: string; status: string; count: number }>;
  /** Active leases past their expiresAt that no sweep has expired yet. */
  leasesPastExpiry: number;
  /** Runs not yet finished, by status (queued, running). */
  runs: Array<{ status: string; count: number }>;
  /** Seconds since the oldest queued run was queued (0 when none is). */
  oldestQueuedSeconds: number;
  /** Provider resources not yet destroyed, by status. */
  resources: Array<{ status: string; count: number }>;
  /** Warm-pool members by environment and state (ready, provisioning, claimed); every pooled environment shows all three. */
  poolMembers: Array<{ environmentId: string; state: string; count: number }>;
  /** Refill failures recorded on each pooled environment (its pool_status: they survive restarts). */
  poolRefillFailures: Array<{ environmentId: string; count: number }>;
}

/** A connection pool's state (PostgreSQL; PGlite has none). */
export interface PoolStats {
  pool: string;
  total: number;
  idle: number;
  waiting: number;
  max: number;
}

export type AcquireOutcome = 'granted' | 'reacquired' | 'existing';
export type ExpiryKind = 'ttl' | 'retention' | 'holder_gone';
export type RunPhase = 'place' | 'provision' | 'start' | 'finish';

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const LONG_BUCKETS = [0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600];
const LAG_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300];
const PHASE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
/** A snapshot younger than this is reused: several scrapers cost the database one read. */
const SNAPSHOT_MIN_MS = 1_000;

/** Seconds between two instants, never negative (clock skew, rounding). */
export function secondsBetween(from: Date | null | undefined, to: Date | null | undefined): number | null {
  if (!from || !to) return null;
  return Math.max(0, (to.getTime() - from.getTime()) / 1000);
}

export function createMetrics(opts: { processMetrics?: boolean } = {}) {
  const registry = new Registry();
  const registers = [registry];
  if (opts.processMetrics) collectDefaultMetrics({ register: registry });

  // ---- leases ----
  const leases = new Gauge({ name: 'berth_leases', help: 'Leases not yet ended, by environment and status (read from the database at scrape time).', labelNames: ['environment_id', 'status'], registers });
  const leasesPastExpiry = new Gauge({ name: 'berth_leases_past_expiry', help: 'Active leases past their expiresAt that no sweep has expired yet (read at scrape time).', registers });
  const acquireSeconds = new Histogram({ name: 'berth_lease_acquire_duration_seconds', help: 'Time to acquire a lease, by outcome (granted, reacquired, existing, refused).', labelNames: ['outcome'], buckets: LATENCY_BUCKETS, registers });
  const acquireRefusals = new Counter({ name: 'berth_lease_acquire_refusals_total', help: 'Acquires refused, by reason (capacity_exhausted, workspace_busy, environment_archived, not_found, invalid, conflict, error).', labelNames: ['reason'], registers });
  const leasesEnded = new Counter({ name: 'berth_leases_ended_total', help: 'Leases that ended (left active, but to retained), by the status they took.', labelNames: ['status'], registers });
  const leaseLifetime = new Histogram({ name: 'berth_lease_lifetime_seconds', help: 'From a lease\'s grant to its end, by the status it took.', labelNames: ['status'], buckets: LONG_BUCKETS, registers });
  const leasesExpired = new Counter({ name: 'berth_leases_expired_total', help: 'Leases the sweeps expired, by why (ttl: past expiresAt, retention: past retainUntil, holder_gone: its run ended).', labelNames: ['kind'], registers });
  const expiryLag = new Histogram({ name: 'berth_lease_expiry_lag_seconds', help: 'From when a lease was due (expiresAt, retainUntil) to when it was expired.', labelNames: ['kind'], buckets: LAG_BUCKETS, registers });
  const cleanupAttempts = new Counter({ name: 'berth_cleanup_attempts_total', help: 'Cleanup attempts (target resource: a driver destroy, resource GC included; lease: a lease with no resource record), by result.', labelNames: ['target', 'result'], registers });
  const cleanupGaveUp = new Counter({ name: 'berth_cleanup_given_up_total', help: 'Cleanups given up after their last attempt (the resource is lost, its lease failed).', labelNames: ['target'], registers });
  const orphansDestroyed = new Counter({ name: 'berth_orphan_resources_destroyed_total', help: 'Provider objects under Berth\'s labels with no record, destroyed by reconciliation.', registers });
  const resources = new Gauge({ name: 'berth_resources', help: 'Provider resources not yet destroyed, by status (read at scrape time).', labelNames: ['status'], registers });

  // ---- warm pools ----
  const poolMembers = new Gauge({ name: 'berth_pool_members', help: 'Warm-pool members by environment and state (ready: idle and claimable, provisioning: being made, claimed: taken by a lease still active) (read at scrape time).', labelNames: ['environment_id', 'state'], registers });
  const poolRefillFailures = new Gauge({ name: 'berth_pool_refill_failures', help: 'Refill failures recorded on each pooled environment since its pool was set (read at scrape time; kept in the database, so not reset by a restart).', labelNames: ['environment_id'], registers });
  const poolClaims = new Counter({ name: 'berth_pool_claims_total', help: 'Acquires on pooled environments, by result (warm: a ready member taken, cold: none was ready, provisioned).', labelNames: ['result'], registers });
  const poolMembersMade = new Counter({ name: 'berth_pool_members_made_total', help: 'Pool members this server made (provision and setup), by result (ready; failed: its provision or setup; retired while being made).', labelNames: ['result'], registers });
  const poolMemberSeconds = new Histogram({ name: 'berth_pool_member_make_duration_seconds', help: 'Time to make a pool member ready (provision and setup), by result.', labelNames: ['result'], buckets: PHASE_BUCKETS, registers });

  // ---- runs ----
  const runs = new Gauge({ name: 'berth_runs', help: 'Runs not yet finished, by status (read at scrape time).', labelNames: ['status'], registers });
  const oldestQueued = new Gauge({ name: 'berth_runs_oldest_queued_age_seconds', help: 'Age of the oldest queued run, 0 when none is (read at scrape time).', registers });
  const runsQueued = new Counter({ name: 'berth_runs_queued_total', help: 'Runs queued, by invocation source.', labelNames: ['source'], registers });
  const runsFinished = new Counter({ name: 'berth_runs_finished_total', help: 'Runs finished, by status and agent.', labelNames: ['status', 'agent_id'], registers });
  const claimLatency = new Histogram({ name: 'berth_run_claim_latency_seconds', help: 'From when a run could be claimed (queued, or its notBefore) to its claim by a server.', buckets: LAG_BUCKETS, registers });
  const phaseSeconds = new Histogram({ name: 'berth_run_phase_duration_seconds', help: 'Time in each of Berth\'s own phases of a run (place, provision, start, finish).', labelNames: ['phase'], buckets: PHASE_BUCKETS, registers });
  const overhead = new Histogram({ name: 'berth_run_overhead_seconds', help: 'Time a run spent in Berth rather than in the agent: its phases together (runs that started).', buckets: PHASE_BUCKETS, registers });
  const logBytes = new Counter({ name: 'berth_run_log_bytes_total', help: 'Bytes of run output stored, by stream.', labelNames: ['stream'], registers });

  // ---- maintenance tasks ----
  const taskSeconds = new Histogram({ name: 'berth_task_duration_seconds', help: 'Duration of each run of a maintenance task (sweeps, claim, heartbeat...), by task and result.', labelNames: ['task', 'result'], buckets: PHASE_BUCKETS, registers });
  const taskOverruns = new Counter({ name: 'berth_task_overruns_total', help: 'Task runs still going at their deadline (reported and left behind).', labelNames: ['task'], registers });

  // ---- HTTP ----
  const httpRequests = new Counter({ name: 'berth_http_requests_total', help: 'HTTP requests, by method, route template and status.', labelNames: ['method', 'route', 'status'], registers });
  const httpSeconds = new Histogram({ name: 'berth_http_request_duration_seconds', help: 'HTTP request latency (to the response headers), by method and route template.', labelNames: ['method', 'route'], buckets: LATENCY_BUCKETS, registers });

  const info = new Gauge({ name: 'berth_info', help: 'Always 1: the server\'s version and database kind as labels.', labelNames: ['version', 'database'], registers });

  // ---- the database ----
  const databaseUp = new Gauge({ name: 'berth_database_up', help: '1 when the scrape\'s read of the database succeeded, else 0.', registers });
  const poolConnections = new Gauge({ name: 'berth_db_pool_connections', help: 'Connections of a database pool, by state (in_use, idle) (PostgreSQL).', labelNames: ['pool', 'state'], registers });
  const poolWaiting = new Gauge({ name: 'berth_db_pool_waiting', help: 'Queries waiting for a connection of a database pool (PostgreSQL).', labelNames: ['pool'], registers });
  const poolMax = new Gauge({ name: 'berth_db_pool_max', help: 'The size limit of a database pool (PostgreSQL).', labelNames: ['pool'], registers });

  let snapshotSource: (() => Promise<DatabaseSnapshot>) | null = null;
  let poolSource: (() => PoolStats[]) | null = null;
  let lastSnapshot = -Infinity;
  let refreshing: Promise<void> | null = null;

  function applySnapshot(s: DatabaseSnapshot): void {
    leases.reset();
    for (const l of s.leases) leases.set({ environment_id: l.environmentId, status: l.status }, l.count);
    leasesPastExpiry.set(s.leasesPastExpiry);
    runs.reset();
    for (const st of ['queued', 'running']) runs.set({ status: st }, 0);
    for (const r of s.runs) runs.set({ status: r.status }, r.count);
    oldestQueued.set(s.oldestQueuedSeconds);
    resources.reset();
    for (const r of s.resources) resources.set({ status: r.status }, r.count);
    poolMembers.reset();
    for (const m of s.poolMembers) poolMembers.set({ environment_id: m.environmentId, state: m.state }, m.count);
    poolRefillFailures.reset();
    for (const f of s.poolRefillFailures) poolRefillFailures.set({ environment_id: f.environmentId }, f.count);
  }

  async function refresh(): Promise<void> {
    if (poolSource) {
      for (const p of poolSource()) {
        poolConnections.set({ pool: p.pool, state: 'in_use' }, p.total - p.idle);
        poolConnections.set({ pool: p.pool, state: 'idle' }, p.idle);
        poolWaiting.set({ pool: p.pool }, p.waiting);
        poolMax.set({ pool: p.pool }, p.max);
      }
    }
    if (!snapshotSource || performance.now() - lastSnapshot < SNAPSHOT_MIN_MS) return;
    refreshing ??= snapshotSource()
      .then(
        (s) => {
          applySnapshot(s);
          databaseUp.set(1);
        },
        () => {
          // What the gauges said is no longer known: they are dropped, not left stale.
          leases.reset();
          runs.reset();
          resources.reset();
          poolMembers.reset();
          poolRefillFailures.reset();
          databaseUp.set(0);
        },
      )
      .finally(() => {
        lastSnapshot = performance.now();
        refreshing = null;
      });
    await refreshing;
  }

  return {
    registry,
    contentType: registry.contentType,
    /** The text a scrape gets: the database's gauges read first (at most once a second). */
    async render(): Promise<string> {
      await refresh();
      return registry.metrics();
    },
    /** Where the gauges of what the database holds come from (the server's services). */
    observeDatabase(source: () => Promise<DatabaseSnapshot>): void {
      snapshotSource = source;
    },
    /** What this server is (berth_info). */
    describeServer(version: string, database: string): void {
      info.reset();
      info.set({ version, database }, 1);
    },
    /** Where the pool gauges come from (PostgreSQL). */
    observePools(source: () => PoolStats[]): void {
      poolSource = source;
    },

    leaseAcquired(outcome: AcquireOutcome, seconds: number): void {
      acquireSeconds.observe({ outcome }, seconds);
    },
    leaseRefused(reason: string, seconds: number): void {
      acquireSeconds.observe({ outcome: 'refused' }, seconds);
      acquireRefusals.inc({ reason });
    },
    /** A lease left active (to anything but retained): its lifetime, from its grant to now. */
    leaseEnded(status: string, lifetimeSeconds: number | null): void {
      leasesEnded.inc({ status });
      if (lifetimeSeconds !== null) leaseLifetime.observe({ status }, lifetimeSeconds);
    },
    leaseExpired(kind: ExpiryKind, lagSeconds: number | null): void {
      leasesExpired.inc({ kind });
      if (lagSeconds !== null && kind !== 'holder_gone') expiryLag.observe({ kind }, lagSeconds);
    },
    cleanupAttempt(target: 'lease' | 'resource', ok: boolean, gaveUp: boolean): void {
      cleanupAttempts.inc({ target, result: ok ? 'success' : 'failure' });
      if (gaveUp) cleanupGaveUp.inc({ target });
    },
    orphanDestroyed(): void {
      orphansDestroyed.inc();
    },

    /** An acquire on a pooled environment: a ready member taken (warm) or provisioned (cold). */
    poolClaim(warm: boolean): void {
      poolClaims.inc({ result: warm ? 'warm' : 'cold' });
    },
    /** A member this server made: ready, failed (provision or setup), or retired while it was being made. */
    poolMemberMade(result: 'ready' | 'failed' | 'retired', seconds: number): void {
      poolMembersMade.inc({ result });
      poolMemberSeconds.observe({ result }, seconds);
    },

    runQueued(source: string): void {
      runsQueued.inc({ source });
    },
    runClaimed(waitSeconds: number | null): void {
      if (waitSeconds !== null) claimLatency.observe(waitSeconds);
    },
    runFinished(status: string, agentId: string): void {
      runsFinished.inc({ status, agent_id: agentId });
    },
    runPhase(phase: RunPhase, seconds: number): void {
      phaseSeconds.observe({ phase }, seconds);
    },
    runOverhead(seconds: number): void {
      overhead.observe(seconds);
    },
    logBytes(stream: string, bytes: number): void {
      if (bytes > 0) logBytes.inc({ stream }, bytes);
    },

    taskRan(task: string, ok: boolean, seconds: number): void {
      taskSeconds.observe({ task, result: ok ? 'ok' : 'error' }, seconds);
    },
    taskOverran(task: string): void {
      taskOverruns.inc({ task });
    },

    /** One HTTP request: `route` is its template (`/api/leases/:leaseId`), never its path. */
    httpRequest(method: string, route: string, status: number, seconds: number): void {
      const m = HTTP_METHODS.has(method) ? method : 'other';
      httpRequests.inc({ method: m, route, status: String(status) });
      httpSeconds.observe({ method: m, route }, seconds);
    },
  };
}
export type Metrics = ReturnType<typeof createMetrics>;
