// Work on a lease outside any run, as a sandbox API offers it: a lease acquired with
// `provision: true` gets its environment's resource (a workspace, a container...) made by
// the driver, and its holder can then run commands in it (`exec`) and move files in and out
// (`files.ts`). The same phases as a run's: the grant statement reserves the resource (the
// write-ahead record), the driver provisions it outside any transaction while the lease is
// kept alive, one statement activates it. A server that dies between them leaves a lease
// that expires by its TTL and a resource the GC destroys: nothing that no sweep finds.
import { posix } from 'node:path';
import type { Readable } from 'node:stream';
import { BerthError, isBerthError } from '../domain/errors.js';
import { storableText } from '../domain/text.js';
import { SYSTEM_ACTOR, type Actor, type Lease } from '../domain/types.js';
import type { AcquireLeaseInput } from '../domain/validators.js';
import type { DriverEnvironment, DriverRegistry, EnvironmentDriver, ExitResult, ResourceHandle } from '../drivers/contract.js';
import type { Services } from '../services/index.js';
import type { AcquireResult } from '../services/leases/acquire.js';
import { inheritedVariables } from '../adapters/process.js';
import { withDeadline } from './run/context.js';
import { keepLeaseAlive } from './run/keepalive.js';
import { resourceLabels } from './run/provision.js';

export interface LeaseWorkDeps {
  services: Services;
  drivers: DriverRegistry;
  /** How long a provision may take when the driver says nothing of its own (ms). */
  prepareTimeoutMs?: number;
}

/** What a command on a lease is (validated by the route's schema). */
export interface LeaseExecInput {
  fence: number;
  /** argv: the program, then its arguments. No shell unless the caller names one. */
  command: string[];
  /** A directory inside the workspace, relative to it. */
  cwd?: string;
  env?: Record<string, string>;
  timeoutSeconds?: number;
  /** Bytes of stdout, and of stderr, kept (the rest is counted and dropped). */
  maxOutputBytes?: number;
}

export interface LeaseExecResult {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  /** Bytes dropped past maxOutputBytes, per stream. */
  stdoutTruncatedBytes: number;
  stderrTruncatedBytes: number;
  durationMs: number;
  /** The command could not start, or how it ended is unknown. */
  error?: string;
}

export type ExecOutput = (stream: 'stdout' | 'stderr', text: string) => Promise<void>;

export const EXEC_DEFAULT_OUTPUT_BYTES = 1024 * 1024;
const GRACE_MS = 5_000;

/** A path the caller gives inside the workspace: relative, no `..`, no NUL. Returns it normalised ('' for the workspace itself). */
export function workspaceRelative(path: string | undefined, field: string): string {
  if (path === undefined || path === '' || path === '.') return '';
  const bad = (message: string) => new BerthError('invalid', `${field}: ${message}`, { fields: [{ path: field, message }] });
  if (path.includes('\0')) throw bad('must not contain NUL');
  if (path.startsWith('/')) throw bad('must be relative to the workspace (no leading /)');
  if (path.split('/').includes('..')) throw bad('must stay inside the workspace (no .. component)');
  const norm = posix.normalize(path).replace(/\/+$/, '');
  return norm === '.' ? '' : norm;
}

/** The workspace directory a provisioned lease's resource has (what its driver reported at activation). */
export function workspaceOf(lease: Lease): string {
  const cwd = (lease.driverState as Record<string, unknown> | null)?.cwd;
  if (typeof cwd !== 'string' || cwd === '') throw new BerthError('no_workspace', `lease ${lease.id} has no workspace: its driver reported none`);
  return cwd;
}

/** A driver's failure as an answer (502 driver_failed, its message), not a server error; Berth's own errors pass as they are. */
function driverFailed(what: string): (err: unknown) => never {
  return (err) => {
    if (isBerthError(err)) throw err;
    throw new BerthError('driver_failed', `${what}: ${storableText((err as Error).message ?? String(err)).slice(0, 1000)}`);
  };
}

export function leaseWork(deps: LeaseWorkDeps) {
  const s = deps.services;

  async function driverFor(companyId: string, environmentId: string): Promise<{ env: DriverEnvironment; drv: EnvironmentDriver }> {
    const env = (await s.environments.getWithSecrets(companyId, environmentId)) as DriverEnvironment;
    const drv = deps.drivers.get(env.driver);
    if (!drv) throw new BerthError('no_driver', `this server has no ${env.driver} driver: environment ${env.name} cannot provision a workspace`);
    return { env, drv };
  }

  /**
   * The lease and the resource it holds, checked for a holder's command: active, the fence
   * current, provisioned (its resource leased). The environment comes as it is now.
   */
  async function held(companyId: string, leaseId: string, fence: number): Promise<{ lease: Lease; resource: ResourceHandle; env: DriverEnvironment; drv: EnvironmentDriver }> {
    const lease = await s.leases.get(companyId, leaseId);
    if (lease.fence !== fence) throw new BerthError('stale_fence', `lease ${lease.id} is held under fence ${lease.fence}; fence ${fence} is stale`);
    if (lease.status !== 'active') throw new BerthError('lease_not_active', `lease ${lease.id} is ${lease.status}`, { details: { status: lease.status } });
    if (!lease.resourceId) {
      throw new BerthError('no_workspace', `lease ${lease.id} has no workspace: acquire it with provision: true to run commands or move files in it`);
    }
    const res = await s.resources.get(lease.resourceId);
    if (res.status !== 'leased') {
      throw new BerthError('no_workspace', `lease ${lease.id}'s workspace is ${res.status === 'provisioning' ? 'still being made' : res.status}`, { details: { resourceStatus: res.status } });
    }
    const { env, drv } = await driverFor(companyId, lease.environmentId!);
    return { lease, resource: { resourceId: res.id, providerId: res.providerId, state: (res.state ?? {}) as Record<string, unknown> }, env, drv };
  }

  return {
    /**
     * Acquire with the environment's resource made for the lease. An acquire that finds an
     * earlier one's lease (same idempotency key) returns it as it is: that acquire provisions
     * it. A provision that fails releases the lease `failed` (its resource goes to the GC).
     */
    async acquireProvisioned(companyId: string, input: AcquireLeaseInput, actor: Actor, signal?: AbortSignal): Promise<AcquireResult> {
      const { env, drv } = await driverFor(companyId, input.environmentId);
      const r = await s.leases.acquire(companyId, input, actor, { driver: env.driver, reserveResource: true });
      if (!r.created) return r;
      const lease = r.lease;
      const resourceId = lease.resourceId!;
      const ttlSeconds = lease.expiresAt ? Math.max(1, Math.round((lease.expiresAt.getTime() - lease.acquiredAt.getTime()) / 1000)) : null;
      const stop = new AbortController();
      const onAbort = () => stop.abort(signal?.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      const alive = ttlSeconds === null ? null : keepLeaseAlive({
        renew: () => s.leases.renew(companyId, lease.id, { fence: lease.fence, ttlSeconds }),
        everyMs: Math.max(1000, (ttlSeconds * 1000) / 3),
        onLost: (err) => stop.abort(err),
        onTransient: () => {},
      });
      try {
        const made = await withDeadline(
          drv.provision(env, { resourceId, leaseId: lease.id, labels: resourceLabels({ resourceId, leaseId: lease.id, environmentId: env.id, companyId }) }, stop.signal),
          drv.provisionTimeoutMs?.(env) ?? deps.prepareTimeoutMs ?? 300_000,
          'prepare_timeout',
          `making the workspace of lease ${lease.id} on ${env.name}`,
          stop,
        );
        alive?.stop();
        const providerLeaseId = typeof made.details.providerLeaseId === 'string' ? made.details.providerLeaseId : made.providerId;
        const active = await s.resources.activate(companyId, {
          leaseId: lease.id, fence: lease.fence, resourceId, ttlSeconds, providerId: made.providerId, state: made.state,
          details: { ...made.details, cwd: made.cwd }, providerLeaseId,
        });
        return { ...r, lease: active };
      } catch (err) {
        alive?.stop();
        const why = storableText((err as Error).message).slice(0, 2000);
        if (isBerthError(err) && ['stale_fence', 'lease_not_active'].includes(err.code)) throw err;
        await s.leases
          .release(companyId, lease.id, { fence: lease.fence, status: 'failed', failureReason: `provisioning failed: ${why}` }, SYSTEM_ACTOR)
          .catch(() => {}); // not released: it expires by its TTL and its resource is destroyed then
        throw new BerthError('provision_failed', `could not make the workspace of lease ${lease.id} on ${env.name}: ${why}`, { details: { leaseId: lease.id } });
      } finally {
        signal?.removeEventListener('abort', onAbort);
      }
    },

    held,

    /**
     * Run one command in a provisioned lease's workspace through its driver: output kept up
     * to maxOutputBytes per stream (or handed to `onOutput` as it comes, with backpressure),
     * SIGTERM at the timeout and SIGKILL after a grace, and one activity row on the lease
     * naming the program and how it ended (never its arguments or variables).
     */
    async exec(companyId: string, leaseId: string, input: LeaseExecInput, actor: Actor, opts: { onOutput?: ExecOutput; signal?: AbortSignal } = {}): Promise<LeaseExecResult> {
      const rel = workspaceRelative(input.cwd, 'cwd');
      const { lease, resource, env, drv } = await held(companyId, leaseId, input.fence);
      const root = workspaceOf(lease);
      const cwd = rel === '' ? root : posix.join(root, rel);
      const timeoutSec = input.timeoutSeconds ?? 60;
      const cap = input.maxOutputBytes ?? EXEC_DEFAULT_OUTPUT_BYTES;
      const vars = inheritedVariables(drv.capabilities.hostLocal);
      Object.assign(vars, env.envVars, input.env ?? {}, { PAPERCLIP_LEASE_ID: lease.id, PAPERCLIP_ENVIRONMENT_ID: env.id, PAPERCLIP_WORKSPACE: root });
      const started = performance.now();
      const stop = new AbortController();
      const [command, ...args] = input.command as [string, ...string[]];
      const handle = await withDeadline(
        drv.exec(env, resource, { command, args, cwd, env: vars, deadlineSec: timeoutSec + Math.ceil(GRACE_MS / 1000) + 30, fresh: true }, stop.signal),
        120_000,
        'exec_timeout',
        `starting ${command.slice(0, 200)} on ${env.name}`,
        stop,
      ).catch(driverFailed(`starting ${command.slice(0, 200)} on ${env.name}`));
      const out = { stdout: '', stderr: '' };
      const kept = { stdout: 0, stderr: 0 };
      const dropped = { stdout: 0, stderr: 0 };
      const sink = async (stream: 'stdout' | 'stderr', text: string) => {
        if (opts.onOutput) return opts.onOutput(stream, text);
        const bytes = Buffer.byteLength(text);
        if (kept[stream] + bytes <= cap) {
          out[stream] += text;
          kept[stream] += bytes;
          return;
        }
        const room = cap - kept[stream];
        if (room > 0) {
          const part = Buffer.from(text).subarray(0, room).toString('utf8').replace(/\uFFFD$/, '');
          out[stream] += part;
          kept[stream] += Buffer.byteLength(part);
        }
        dropped[stream] += bytes - Math.max(0, room);
      };
      let timedOut = false;
      let killTimer: NodeJS.Timeout | undefined;
      const kill = () => {
        void drv.signal(env, handle, 'TERM').catch(() => {});
        killTimer ??= setTimeout(() => void drv.signal(env, handle, 'KILL').catch(() => {}), GRACE_MS);
      };
      const timer = setTimeout(() => ((timedOut = true), kill()), timeoutSec * 1000);
      const onAbort = () => kill();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      let exit: ExitResult;
      try {
        exit = await drv.watch(env, handle, sink);
      } catch (err) {
        exit = { exitCode: null, signal: null, error: `watching the command failed: ${(err as Error).message}` };
      } finally {
        clearTimeout(timer);
        clearTimeout(killTimer);
        opts.signal?.removeEventListener('abort', onAbort);
      }
      const error = exit.spawnError ? `could not start ${command.slice(0, 200)}: ${exit.spawnError}` : exit.error;
      const result: LeaseExecResult = {
        exitCode: exit.exitCode,
        signal: exit.signal,
        timedOut,
        stdout: out.stdout,
        stderr: out.stderr,
        stdoutTruncatedBytes: dropped.stdout,
        stderrTruncatedBytes: dropped.stderr + (exit.discardedBytes ?? 0),
        durationMs: Math.round(performance.now() - started),
        ...(error ? { error: storableText(error) } : {}),
      };
      await s.resources
        .recordLeaseCommand(companyId, lease.id, actor, {
          program: command.slice(0, 200),
          argCount: args.length,
          cwd: rel,
          envNames: Object.keys(input.env ?? {}),
          exitCode: result.exitCode,
          signal: result.signal,
          timedOut,
          durationMs: result.durationMs,
          ...(result.error ? { error: result.error.slice(0, 500) } : {}),
        })
        .catch(() => {});
      return result;
    },

    /**
     * Unpack a tar archive into `dir` (relative) of a provisioned lease's workspace, after
     * checking every entry; one activity row (the directory, counts and bytes).
     */
    async putFiles(companyId: string, leaseId: string, fence: number, dir: string | undefined, archive: Buffer, actor: Actor, signal?: AbortSignal): Promise<ArchiveSummary & { path: string }> {
      const rel = workspaceRelative(dir, 'path');
      const { lease, resource, env, drv } = await held(companyId, leaseId, fence);
      if (!drv.putArchive) throw new BerthError('not_supported', `the ${env.driver} driver cannot move files into a workspace in this version of Berth`);
      const sum = await checkArchive(archive, rel);
      const stop = new AbortController();
      signal?.addEventListener('abort', () => stop.abort(signal.reason), { once: true });
      await withDeadline(drv.putArchive(env, resource, workspaceOf(lease), rel, archive, stop.signal), 120_000, 'files_timeout', `unpacking files on ${env.name}`, stop).catch(
        driverFailed(`unpacking files on ${env.name}`),
      );
      await s.resources.recordLeaseCommand(companyId, lease.id, actor, { direction: 'in', path: rel, ...sum }, 'files').catch(() => {});
      return { path: rel, ...sum };
    },

    /** A tar archive of `path` (relative; '' for all) of a provisioned lease's workspace; one activity row. */
    async getFiles(companyId: string, leaseId: string, fence: number, path: string | undefined, actor: Actor, signal?: AbortSignal): Promise<Readable> {
      const rel = workspaceRelative(path, 'path');
      const { lease, resource, env, drv } = await held(companyId, leaseId, fence);
      if (!drv.getArchive) throw new BerthError('not_supported', `the ${env.driver} driver cannot read files from a workspace in this version of Berth`);
      const stop = new AbortController();
      signal?.addEventListener('abort', () => stop.abort(signal.reason), { once: true });
      const out = await withDeadline(drv.getArchive(env, resource, workspaceOf(lease), rel, stop.signal), 120_000, 'files_timeout', `reading files on ${env.name}`, stop).catch(
        driverFailed(`reading files on ${env.name}`),
      );
      await s.resources.recordLeaseCommand(companyId, lease.id, actor, { direction: 'out', path: rel }, 'files').catch(() => {});
      return out;
    },
  };
}
export type LeaseWork = ReturnType<typeof leaseWork>;

/** What an archive sent into a workspace holds, once checked. */
export interface ArchiveSummary {
  files: number;
  directories: number;
  links: number;
  /** Bytes of file content. */
  bytes: number;
}

const ENTRY_TYPES = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink']);
/** Headers that describe the next entry or the archive, not files. */
const META_TYPES = new Set(['ExtendedHeader', 'GlobalExtendedHeader', 'NextFileHasLongPath', 'NextFileHasLongLinkpath', 'OldExtendedHeader']);

/**
 * Check a tar archive before any of it reaches a workspace: every name relative with no
 * `..`, every link relative and resolving inside the workspace from where it is, and only
 * files, directories and symbolic links (no hard links, devices or fifos). Throws `invalid`
 * naming the first entry refused.
 */
export async function checkArchive(archive: Buffer, dir: string): Promise<ArchiveSummary> {
  const { Parser } = await import('tar');
  const sum: ArchiveSummary = { files: 0, directories: 0, links: 0, bytes: 0 };
  let refused: string | null = null;
  const refuse = (name: string, why: string) => void (refused ??= `${name.slice(0, 200)}: ${why}`);
  await new Promise<void>((resolve, reject) => {
    const p = new Parser({
      strict: true,
      onReadEntry: (e) => {
        const name = String(e.path);
        e.resume();
        if (META_TYPES.has(e.type)) return;
        if (!ENTRY_TYPES.has(e.type)) return refuse(name, `${e.type === 'Link' ? 'hard links are' : `${e.type} entries are`} not accepted`);
        if (name.includes('\0') || name === '') return refuse(name || '(empty)', 'is not a file name');
        if (name.startsWith('/')) return refuse(name, 'is an absolute path');
        if (name.split('/').includes('..')) return refuse(name, 'leaves the workspace (a .. component)');
        if (e.type === 'SymbolicLink') {
          const target = String(e.linkpath ?? '');
          if (target.startsWith('/')) return refuse(name, `is a link to an absolute path (${target.slice(0, 200)})`);
          // Where the link points, from the workspace root: it must not climb above it.
          const from = posix.join(dir, posix.dirname(name), target); // normalised by join
          if (from.startsWith('..')) return refuse(name, `is a link out of the workspace (${target.slice(0, 200)})`);
          sum.links++;
        } else if (e.type === 'Directory') sum.directories++;
        else {
          sum.files++;
          sum.bytes += Number(e.size ?? 0);
        }
      },
    });
    p.on('error', (err: Error) => reject(new BerthError('invalid', `the body is not a tar archive: ${err.message.slice(0, 200)}`)));
    p.on('warn', (_code: string, message: string) => refuse('(archive)', String(message).slice(0, 200)));
    p.on('end', resolve);
    p.end(archive);
  });
  if (refused) throw new BerthError('invalid', `the archive was refused: ${refused}`, { fields: [{ path: '(body)', message: refused }] });
  return sum;
}
