// The Berth sandbox provider: Paperclip's environment-driver hooks, each one Berth API
// call (or a few). A Paperclip lease is a Berth lease:
//
// - acquireLease takes a lease on the configured Berth environment with an idempotency key
//   made from Paperclip's environment and run ids, so a retried acquire (the answer lost, the
//   worker restarted) gets the same Berth lease, never a second one;
// - while Paperclip holds it, a timer in this worker renews it every ttlSeconds/3 with its
//   fence (Paperclip never renews a lease itself). If the worker dies the renewals stop and
//   Berth expires the lease after its TTL: no lease outlives its holder by more than that;
// - releaseLease / destroyLease stop the timer, release the lease with its fence, and return
//   a termination receipt only once Berth says the lease has ended and owes no cleanup
//   (cleanupStatus `success`, or none owed: a lease taken through Berth's API alone has no
//   `driver`, so Berth made nothing for it to clean up). A failed or unfinished cleanup is an
//   error, never a receipt;
// - the lease is acquired with `provision: true`: Berth's driver makes the environment's
//   resource for it (a workspace directory, a container...), and the release above waits for
//   Berth to have destroyed it;
// - realizeWorkspace answers with that workspace (the directory Berth's driver reported);
//   execute runs the command there through Berth's POST /api/environment-leases/:id/exec
//   with the lease's fence (stdin, which that route does not take, reaches the command
//   through a variable read by `sh`, never on a command line; a stdin larger than a variable
//   holds goes through a file in the workspace, written piece by piece).
import type {
  PluginEnvironmentAcquireLeaseParams,
  PluginEnvironmentDestroyLeaseParams,
  PluginEnvironmentExecuteParams,
  PluginEnvironmentExecuteResult,
  PluginEnvironmentLease,
  PluginEnvironmentProbeParams,
  PluginEnvironmentProbeResult,
  PluginEnvironmentRealizeWorkspaceParams,
  PluginEnvironmentRealizeWorkspaceResult,
  PluginEnvironmentReleaseLeaseParams,
  PluginEnvironmentResumeLeaseParams,
  PluginEnvironmentTerminationReceipt,
  PluginEnvironmentValidateConfigParams,
  PluginEnvironmentValidationResult,
} from '@paperclipai/plugin-sdk';
import { randomUUID } from 'node:crypto';
import { berth, BerthError, getLease, resolveEnvironment, type BerthLease } from './berth.js';
import { checkConfig, requireConfig, type BerthPluginConfig } from './config.js';

export const DRIVER_KEY = 'berth';

export interface DriverLogger {
  info(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
}

export interface BerthDriverOptions {
  logger?: DriverLogger;
  /** How long release waits for Berth's cleanup before it gives up without a receipt. */
  cleanupWaitMs?: number;
  /** How often release reads the lease while its cleanup is pending. */
  cleanupPollMs?: number;
}

/** What the plugin keeps in Paperclip's lease metadata (and reads back on resume and release). */
export interface BerthLeaseMetadata {
  berthUrl: string;
  berthEnvironmentId: string;
  berthLeaseId: string;
  fence: number;
  ttlSeconds: number;
  idempotencyKey: string;
  /** False when Berth answered with the lease an earlier acquire with this key already holds. */
  created: boolean;
  /**
   * The workspace Berth's driver made for the lease. Paperclip's server reads this key of the
   * lease metadata as the directory its adapter's commands run in; without it they run in /tmp,
   * which is outside the workspace and refused by execute.
   */
  remoteCwd?: string;
}

/** The idempotency key of a Paperclip run's lease on a Paperclip environment. */
export function idempotencyKeyFor(environmentId: string, runId: string): string {
  return `paperclip:${environmentId}:${runId}`.slice(0, 200);
}

interface Held {
  timer: NodeJS.Timeout;
  config: BerthPluginConfig;
  fence: number;
  renewals: number;
}

const ENDED_CODES = new Set(['lease_not_active', 'lease_expired', 'stale_fence', 'not_found']);

export function createBerthDriver(options: BerthDriverOptions = {}) {
  const log: DriverLogger = options.logger ?? { info: () => {}, warn: () => {} };
  const cleanupWaitMs = options.cleanupWaitMs ?? 120_000;
  const cleanupPollMs = options.cleanupPollMs ?? 250;
  const held = new Map<string, Held>();

  function stopRenewing(leaseId: string): void {
    const h = held.get(leaseId);
    if (!h) return;
    clearInterval(h.timer);
    held.delete(leaseId);
  }

  function startRenewing(config: BerthPluginConfig, lease: BerthLease): void {
    stopRenewing(lease.id);
    const everyMs = Math.max(1000, Math.floor((config.ttlSeconds * 1000) / 3));
    const h: Held = { config, fence: lease.fence, renewals: 0, timer: setInterval(() => void renew(), everyMs) };
    // The timer alone never keeps the worker alive: a worker that is going away lets the lease expire.
    h.timer.unref();
    held.set(lease.id, h);
    let inFlight = false;
    async function renew(): Promise<void> {
      if (inFlight || held.get(lease.id) !== h) return;
      inFlight = true;
      try {
        const renewed = await berth<BerthLease>(config, 'POST', `/api/environment-leases/${encodeURIComponent(lease.id)}/renew`, {
          fence: h.fence,
          ttlSeconds: config.ttlSeconds,
        });
        h.renewals += 1;
        if (renewed.status !== 'active') {
          log.warn('Berth lease is no longer active; renewals stop', { berthLeaseId: lease.id, status: renewed.status });
          stopRenewing(lease.id);
        }
      } catch (err) {
        if (err instanceof BerthError && ENDED_CODES.has(err.code)) {
          log.warn('Berth lease ended; renewals stop', { berthLeaseId: lease.id, code: err.code });
          stopRenewing(lease.id);
        } else {
          // Unreachable or refused for a passing reason: try again next tick, the TTL is the bound.
          log.warn('renewing the Berth lease failed; trying again', { berthLeaseId: lease.id, error: (err as Error).message });
        }
      } finally {
        inFlight = false;
      }
    }
  }

  function leaseMetadata(config: BerthPluginConfig, lease: BerthLease, key: string, created: boolean): BerthLeaseMetadata {
    return {
      berthUrl: config.berthUrl,
      berthEnvironmentId: lease.environmentId,
      berthLeaseId: lease.id,
      fence: lease.fence,
      ttlSeconds: config.ttlSeconds,
      idempotencyKey: key,
      created,
      ...(typeof lease.driverState?.cwd === 'string' && lease.driverState.cwd !== '' ? { remoteCwd: lease.driverState.cwd } : {}),
    };
  }

  /** Wait until Berth's lease has ended and owes no cleanup; throw if its cleanup failed or did not finish in time. */
  async function settled(config: BerthPluginConfig, leaseId: string): Promise<BerthLease> {
    const deadline = Date.now() + cleanupWaitMs;
    for (;;) {
      const lease = await getLease(config, leaseId);
      const ended = lease.status === 'released' || lease.status === 'expired' || lease.status === 'failed';
      if (ended && (lease.cleanupStatus === 'success' || (lease.cleanupStatus === null && lease.driver === null))) return lease;
      if (lease.cleanupStatus === 'failed' && lease.status !== 'pending_cleanup') {
        throw new Error(`Berth lease ${leaseId} ended ${lease.status} but its cleanup failed (${lease.cleanupAttempts ?? 0} attempts): no termination receipt`);
      }
      if (lease.cleanupStatus === 'skipped') {
        throw new Error(`Berth lease ${leaseId} ended with its cleanup skipped: its resources were left in place, no termination receipt`);
      }
      if (lease.status === 'retained' || lease.status === 'active') {
        throw new Error(`Berth lease ${leaseId} is ${lease.status}, not ended: no termination receipt`);
      }
      if (Date.now() >= deadline) {
        throw new Error(
          `Berth lease ${leaseId} is ${lease.status} with cleanup ${lease.cleanupStatus ?? 'none'} after ${Math.round(cleanupWaitMs / 1000)} s (${lease.cleanupAttempts ?? 0} attempts): no termination receipt yet`,
        );
      }
      await new Promise((r) => setTimeout(r, cleanupPollMs));
    }
  }

  async function end(
    params: PluginEnvironmentReleaseLeaseParams,
    state: PluginEnvironmentTerminationReceipt['state'],
  ): Promise<PluginEnvironmentTerminationReceipt | void> {
    const config = requireConfig(params.config);
    const leaseId = params.providerLeaseId;
    if (!leaseId) return; // nothing was acquired: there is nothing to end
    stopRenewing(leaseId);
    const meta = params.leaseMetadata as Partial<BerthLeaseMetadata> | undefined;
    const fence = typeof meta?.fence === 'number' ? meta.fence : (await getLease(config, leaseId)).fence;
    const body: Record<string, unknown> = { fence, status: 'released' };
    if (state === 'destroyed') body.failureReason = params.cancelActiveWork ? 'destroyed by Paperclip (active work cancelled)' : 'destroyed by Paperclip';
    const released = await berth<{ lease: BerthLease; changed: boolean }>(config, 'POST', `/api/environment-leases/${encodeURIComponent(leaseId)}/release`, body);
    log.info('Berth lease released', { berthLeaseId: leaseId, status: released.lease.status, changed: released.changed });
    const final = await settled(config, leaseId);
    log.info('Berth lease ended and owes no cleanup', { berthLeaseId: leaseId, status: final.status, cleanupStatus: final.cleanupStatus, driver: final.driver });
    return { providerLeaseId: leaseId, state };
  }

  /** The Berth lease behind a Paperclip lease, active, with the workspace Berth's driver made for it. */
  async function workspaceLease(config: BerthPluginConfig, lease: PluginEnvironmentLease, what: string): Promise<{ lease: BerthLease; cwd: string }> {
    const id = lease.providerLeaseId;
    if (!id) throw new Error(`${what}: the Paperclip lease names no Berth lease (providerLeaseId)`);
    const held = await getLease(config, id);
    if (held.status !== 'active') throw new Error(`${what}: Berth lease ${held.id} is ${held.status}`);
    const cwd = held.driverState?.cwd;
    if (typeof cwd !== 'string' || cwd === '') {
      throw new Error(`${what}: Berth lease ${held.id} has no workspace (it was acquired without provision: true, or its environment's driver made none)`);
    }
    return { lease: held, cwd };
  }

  /**
   * Where a command starts, relative to the workspace (Berth's exec takes only such a path), or
   * ROOT_CWD for the filesystem root: Paperclip's adapters run their probes (`command -v claude`)
   * with cwd `/`, a directory every host has. Any other directory outside the workspace is refused.
   */
  function relativeCwd(workspace: string, cwd: string | undefined): string | typeof ROOT_CWD | undefined {
    if (cwd === undefined || cwd === '' || cwd === workspace) return undefined;
    if (cwd === '/') return ROOT_CWD;
    if (!cwd.startsWith('/')) return cwd;
    const root = workspace.endsWith('/') ? workspace : `${workspace}/`;
    if (!cwd.startsWith(root)) throw new Error(`execute: cwd ${cwd} is outside the lease's workspace ${workspace}`);
    return cwd.slice(root.length);
  }

  const ROOT_CWD = Symbol('root');

  /** stdin reaches the command through a variable `sh` reads (Berth's exec route takes none), capped at Berth's limit for one variable (65536 characters). */
  const STDIN_MAX = 64 * 1024;

  /** stdin cut into pieces of at most STDIN_MAX bytes, never inside a surrogate pair. */
  function stdinPieces(stdin: string): string[] {
    const pieces: string[] = [];
    const chars = /^[\x00-\x7f]*$/.test(stdin) ? STDIN_MAX : Math.floor(STDIN_MAX / 3);
    for (let i = 0; i < stdin.length; ) {
      let end = Math.min(stdin.length, i + chars);
      const last = stdin.charCodeAt(end - 1);
      if (end < stdin.length && last >= 0xd800 && last <= 0xdbff) end -= 1;
      pieces.push(stdin.slice(i, end));
      i = end;
    }
    return pieces;
  }

  return {
    driverKey: DRIVER_KEY,

    /** Leases this worker is renewing (for tests and diagnostics). */
    renewing(): Array<{ berthLeaseId: string; renewals: number }> {
      return [...held.entries()].map(([berthLeaseId, h]) => ({ berthLeaseId, renewals: h.renewals }));
    },

    /** Stop every renewal timer (the worker is shutting down); the leases expire after their TTL. */
    stopAll(): void {
      for (const id of [...held.keys()]) stopRenewing(id);
    },

    async onValidateConfig(params: PluginEnvironmentValidateConfigParams): Promise<PluginEnvironmentValidationResult> {
      const checked = checkConfig(params.config);
      if (!checked.config) return { ok: false, errors: checked.errors, ...(checked.warnings.length ? { warnings: checked.warnings } : {}) };
      return { ok: true, normalizedConfig: { ...checked.config }, ...(checked.warnings.length ? { warnings: checked.warnings } : {}) };
    },

    async onProbe(params: PluginEnvironmentProbeParams): Promise<PluginEnvironmentProbeResult> {
      const checked = checkConfig(params.config);
      if (!checked.config) return { ok: false, summary: 'invalid Berth provider config', diagnostics: checked.errors.map((message) => ({ severity: 'error', message })) };
      const config = checked.config;
      try {
        const env = await resolveEnvironment(config);
        const probe = await berth<{ ok: boolean; summary?: string; error?: string; latencyMs?: number; driver?: string }>(
          config,
          'POST',
          `/api/environments/${encodeURIComponent(env.id)}/probe`,
          {},
        );
        const summary = `Berth environment ${env.name} (${env.driver}, ${env.status}): ${probe.ok ? 'probe ok' : 'probe failed'}${probe.summary ? `: ${probe.summary}` : ''}${probe.error ? `: ${probe.error}` : ''}`;
        return {
          ok: probe.ok && env.status !== 'archived',
          summary,
          metadata: { berthEnvironmentId: env.id, berthDriver: env.driver, berthStatus: env.status },
          ...(env.status === 'archived' ? { diagnostics: [{ severity: 'error' as const, message: `Berth environment ${env.name} is archived` }] } : {}),
        };
      } catch (err) {
        const code = err instanceof BerthError ? err.code : undefined;
        return { ok: false, summary: (err as Error).message, diagnostics: [{ severity: 'error', message: (err as Error).message, ...(code ? { code } : {}) }] };
      }
    },

    async onAcquireLease(params: PluginEnvironmentAcquireLeaseParams): Promise<PluginEnvironmentLease> {
      const config = requireConfig(params.config);
      if (!params.runId) throw new Error('acquireLease needs Paperclip\'s run id: it is the lease\'s idempotency key');
      const env = await resolveEnvironment(config);
      const key = idempotencyKeyFor(params.environmentId, params.runId);
      const body: Record<string, unknown> = {
        policy: 'ephemeral',
        provision: true,
        ttlSeconds: config.ttlSeconds,
        idempotencyKey: key,
        metadata: {
          paperclip: {
            companyId: params.companyId,
            environmentId: params.environmentId,
            runId: params.runId,
            ...(params.agentId ? { agentId: params.agentId } : {}),
            ...(params.issueId ? { issueId: params.issueId } : {}),
            ...(params.executionWorkspaceId ? { executionWorkspaceId: params.executionWorkspaceId } : {}),
            ...(params.adapterType ? { adapterType: params.adapterType } : {}),
          },
        },
      };
      if (params.issueId) body.issueId = params.issueId;
      if (params.requestedExpiresAt) {
        // Bound the lease at Paperclip's deadline: Berth never renews past acquiredAt + maxLifetimeSeconds.
        const left = Math.floor((Date.parse(params.requestedExpiresAt) - Date.now()) / 1000);
        if (!Number.isFinite(left) || left < 1) throw new Error(`requestedExpiresAt ${params.requestedExpiresAt} is not in the future`);
        body.maxLifetimeSeconds = left;
        body.ttlSeconds = Math.min(config.ttlSeconds, left);
      }
      const { lease, created } = await berth<{ lease: BerthLease; created: boolean; reacquired?: boolean }>(
        config,
        'POST',
        `/api/environments/${encodeURIComponent(env.id)}/leases`,
        body,
      );
      if (lease.status !== 'active') {
        throw new Error(`the Berth lease of this run (${lease.id}, key ${key}) has already ended: ${lease.status}`);
      }
      startRenewing(config, lease);
      log.info(created ? 'Berth lease acquired' : 'Berth lease of this run acquired again', { berthLeaseId: lease.id, fence: lease.fence });
      return { providerLeaseId: lease.id, expiresAt: lease.expiresAt, metadata: { ...leaseMetadata(config, lease, key, created) } };
    },

    async onResumeLease(params: PluginEnvironmentResumeLeaseParams): Promise<PluginEnvironmentLease> {
      const config = requireConfig(params.config);
      const lease = await getLease(config, params.providerLeaseId);
      if (lease.status !== 'active') throw new Error(`Berth lease ${lease.id} is ${lease.status}: it cannot be resumed`);
      const renewed = await berth<BerthLease>(config, 'POST', `/api/environment-leases/${encodeURIComponent(lease.id)}/renew`, {
        fence: lease.fence,
        ttlSeconds: config.ttlSeconds,
      });
      startRenewing(config, renewed);
      const meta = params.leaseMetadata as Partial<BerthLeaseMetadata> | undefined;
      const key = typeof meta?.idempotencyKey === 'string' ? meta.idempotencyKey : (lease.idempotencyKey ?? '');
      return { providerLeaseId: lease.id, expiresAt: renewed.expiresAt, metadata: { ...leaseMetadata(config, renewed, key, false), resumed: true } };
    },

    onReleaseLease(params: PluginEnvironmentReleaseLeaseParams): Promise<PluginEnvironmentTerminationReceipt | void> {
      return end(params, 'stopped');
    },

    onDestroyLease(params: PluginEnvironmentDestroyLeaseParams): Promise<PluginEnvironmentTerminationReceipt | void> {
      return end(params, 'destroyed');
    },

    async onRealizeWorkspace(params: PluginEnvironmentRealizeWorkspaceParams): Promise<PluginEnvironmentRealizeWorkspaceResult> {
      const config = requireConfig(params.config);
      const { lease, cwd } = await workspaceLease(config, params.lease, 'realizeWorkspace');
      return { cwd, metadata: { berthLeaseId: lease.id, berthDriver: lease.driver, ...(params.workspace.mode ? { mode: params.workspace.mode } : {}) } };
    },

    async onExecute(params: PluginEnvironmentExecuteParams): Promise<PluginEnvironmentExecuteResult> {
      const config = requireConfig(params.config);
      const { lease, cwd: workspace } = await workspaceLease(config, params.lease, 'execute');
      let command = [params.command, ...(params.args ?? [])];
      const env: Record<string, string> = { ...(params.env ?? {}) };
      if (params.stdin !== undefined && params.stdin !== '') {
        if (Buffer.byteLength(params.stdin) <= STDIN_MAX) {
          env.BERTH_PLUGIN_STDIN = params.stdin;
          command = ['sh', '-c', 'printf %s "$BERTH_PLUGIN_STDIN" | { unset BERTH_PLUGIN_STDIN; exec "$@"; }', 'berth-stdin', ...command];
        } else {
          // Larger than one variable can hold (Paperclip uploads files in base64 pieces of up to
          // 4 MiB): appended to a file in the workspace piece by piece, one exec each, then read
          // by the command and removed whatever it exits with. Its name starts with
          // `.paperclip-upload-`, which Paperclip's workspace sync keeps when it empties the workspace.
          const file = `${workspace.replace(/\/+$/, '')}/.paperclip-upload-berth-stdin-${randomUUID()}`;
          for (const piece of stdinPieces(params.stdin)) {
            const wrote = await berth<{ exitCode: number | null; stderr: string; error?: string }>(
              config,
              'POST',
              `/api/environment-leases/${encodeURIComponent(lease.id)}/exec`,
              { fence: lease.fence, command: ['sh', '-c', 'printf %s "$BERTH_PLUGIN_STDIN" >> "$1"', 'berth-stdin', file], env: { BERTH_PLUGIN_STDIN: piece }, timeoutSeconds: 60 },
              120_000,
            );
            if (wrote.exitCode !== 0) throw new Error(`execute: writing stdin into the workspace failed (exit ${wrote.exitCode}): ${wrote.error ?? wrote.stderr}`);
          }
          command = ['sh', '-c', 'f=$1; shift; "$@" < "$f"; s=$?; rm -f -- "$f"; exit $s', 'berth-stdin', file, ...command];
        }
      }
      let rel = relativeCwd(workspace, params.cwd);
      if (rel === ROOT_CWD) {
        // Started in the workspace, the command moves to / before it runs (the path is a fixed string, nothing Paperclip sent).
        command = ['sh', '-c', 'cd / && exec "$@"', 'berth-cwd', ...command];
        rel = undefined;
      }
      const timeoutSeconds = params.timeoutMs !== undefined ? Math.min(86_400, Math.max(1, Math.ceil(params.timeoutMs / 1000))) : undefined;
      // The exec route answers when the command ends: its own timeout, plus time to stop it, bounds the wait.
      const result = await berth<{ exitCode: number | null; signal: string | null; timedOut: boolean; stdout: string; stderr: string; durationMs: number; error?: string; stdoutTruncatedBytes: number; stderrTruncatedBytes: number }>(
        config,
        'POST',
        `/api/environment-leases/${encodeURIComponent(lease.id)}/exec`,
        { fence: lease.fence, command, env, ...(rel !== undefined ? { cwd: rel } : {}), ...(timeoutSeconds !== undefined ? { timeoutSeconds } : {}) },
        ((timeoutSeconds ?? 60) + 60) * 1000,
      );
      return {
        exitCode: result.exitCode,
        signal: result.signal,
        timedOut: result.timedOut,
        stdout: result.stdout,
        stderr: result.error ? `${result.stderr}${result.stderr && !result.stderr.endsWith('\n') ? '\n' : ''}${result.error}\n` : result.stderr,
        metadata: { berthLeaseId: lease.id, durationMs: result.durationMs, stdoutTruncatedBytes: result.stdoutTruncatedBytes, stderrTruncatedBytes: result.stderrTruncatedBytes },
      };
    },
  };
}

export type BerthDriver = ReturnType<typeof createBerthDriver>;
