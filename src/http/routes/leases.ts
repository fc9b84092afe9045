// Leases: acquire on an environment, list an environment's leases, show, renew,
// update metadata, release. A run token may do all of this for its own run only.
import { z } from 'zod';
import { BerthError, isBerthError } from '../../domain/errors.js';
import { LEASE_STATUSES } from '../../domain/enums.js';
import {
  acquireLeaseSchema,
  releaseLeaseSchema,
  renewLeaseSchema,
  updateLeaseMetadataSchema,
  type AcquireLeaseInput,
  type ReleaseLeaseInput,
  type RenewLeaseInput,
  type UpdateLeaseMetadataInput,
  leaseExecSchema,
  parseInput,
} from '../../domain/validators.js';
import { leaseWork, workspaceRelative, type LeaseExecResult } from '../../heartbeat/lease-work.js';
import { defineRoutes, sseWriter, streamFailed, type RouteRequest } from '../route.js';
import { streamSSE } from 'hono/streaming';

const lease = { param: 'leaseId', kind: 'lease' } as const;

/** What the acquire route takes: the acquire input but the environment, which is the path's. */
const { environmentId: _fromPath, ...acquireBodyFields } = acquireLeaseSchema.shape;
const acquireBodySchema = z.strictObject({
  ...acquireBodyFields,
  provision: z.boolean().optional().describe(
    "Make the environment's resource for the lease (a workspace directory, a container...) before answering: what exec and files work in. Released or expired, the resource is destroyed",
  ),
}).meta({ not: { required: ['ttlSeconds', 'expiresAt'] }, description: 'ttlSeconds or expiresAt, not both' });

async function leaseOfRun(r: RouteRequest, runId: string): Promise<boolean> {
  const found = await r.deps.services.leases.get(r.companyId, r.params.leaseId!).catch(() => null);
  return found?.heartbeatRunId === runId;
}

/** The largest archive taken into a workspace, and the largest sent out of one. */
const MAX_ARCHIVE_IN = 64 * 1024 * 1024;
const MAX_ARCHIVE_OUT = 256 * 1024 * 1024;
const filesQuery = z.strictObject({
  /** Required: checked once the lease is found (another company's lease is not found, whatever the query). */
  fence: z.coerce.number().int('must be an integer').positive('must be greater than 0').optional(),
  path: z.string().max(4096, 'must be at most 4096 characters').optional(),
});

/** The files routes' query, once the lease is known to be the caller's: the fence is required. */
async function filesRequest({ deps, companyId, params, query }: RouteRequest): Promise<{ fence: number; path?: string }> {
  await deps.services.leases.get(companyId, params.leaseId!);
  const q = query as { fence?: number; path?: string };
  if (q.fence === undefined) throw new BerthError('invalid', 'invalid query: fence: is required (the lease\'s current fence)', { fields: [{ path: 'fence', message: 'is required' }] });
  return { fence: q.fence, ...(q.path !== undefined ? { path: q.path } : {}) };
}

function fieldError(path: string, message: string): BerthError {
  return new BerthError('invalid', `invalid lease acquire: ${path}: ${message}`, { fields: [{ path, message }] });
}

export const leaseRoutes = () =>
  defineRoutes([
    {
      method: 'GET',
      path: '/api/environments/:id/leases',
      summary: 'Leases of an environment, most recently used first (next page: the X-Next-Cursor header as ?cursor=)',
      tag: 'leases',
      access: 'company',
      owner: { param: 'id', kind: 'environment' },
      query: z.strictObject({
        status: z.enum(LEASE_STATUSES).optional(),
        limit: z.coerce.number().int('must be an integer').min(1, 'must be 1-500').max(500, 'must be 1-500').optional(),
        cursor: z.string().max(200).optional(),
      }),
      returns: 'Lease[]',
      async handle({ deps, companyId, params, query, c }) {
        await deps.services.environments.get(companyId, params.id!); // another company's environment is not found, not empty
        const page = await deps.services.leases.listByEnvironment(companyId, params.id!, query);
        if (page.nextCursor) c.header('x-next-cursor', page.nextCursor);
        return page.items;
      },
    },
    {
      method: 'POST',
      path: '/api/environments/:id/leases',
      summary: 'Acquire a lease (idempotent with idempotencyKey); 201 when granted, 200 when an earlier acquire already holds it',
      tag: 'leases',
      access: 'run',
      owner: { param: 'id', kind: 'environment' },
      body: acquireBodySchema,
      status: 201,
      alsoStatus: [200],
      returns: '{lease, created, reacquired}',
      runOwns: async () => true, // the run's own id is forced into the lease below
      async handle({ deps, companyId, params, body, actor, principal, c }) {
        const input = body as Record<string, unknown>;
        if ('environmentId' in input) throw fieldError('environmentId', 'is given by the path, not the body');
        if (principal.kind === 'run') {
          if (input.heartbeatRunId !== undefined && input.heartbeatRunId !== principal.runId) throw fieldError('heartbeatRunId', 'a run token acquires for its own run only');
          input.heartbeatRunId = principal.runId;
          // A run's idempotency keys are its own: they can never name another run's lease.
          if (typeof input.idempotencyKey === 'string') input.idempotencyKey = `run:${principal.runId}:${input.idempotencyKey}`.slice(0, 200);
        } else if (typeof input.heartbeatRunId === 'string') {
          await deps.services.runs.get(companyId, input.heartbeatRunId).catch((err: unknown) => {
            throw isBerthError(err, 'not_found') ? fieldError('heartbeatRunId', 'no such run in this company') : err;
          });
        }
        const { provision, ...rest } = input;
        if (provision !== undefined && typeof provision !== 'boolean') throw fieldError('provision', 'must be a boolean');
        const acquireInput = { ...rest, environmentId: params.id! } as AcquireLeaseInput;
        const result = provision
          ? await leaseWork(deps).acquireProvisioned(companyId, acquireInput, actor, c.req.raw.signal)
          : await deps.services.leases.acquire(companyId, acquireInput, actor);
        if (principal.kind === 'run' && result.lease.heartbeatRunId !== principal.runId) {
          throw new BerthError('conflict', 'that idempotency key names a lease of another holder');
        }
        return c.json(result, result.created ? 201 : 200);
      },
    },
    {
      method: 'GET',
      path: '/api/environment-leases/:leaseId',
      summary: 'One lease',
      tag: 'leases',
      access: 'run',
      owner: lease,
      returns: 'Lease',
      runOwns: leaseOfRun,
      handle: ({ deps, companyId, params }) => deps.services.leases.get(companyId, params.leaseId!),
    },
    {
      method: 'POST',
      path: '/api/environment-leases/:leaseId/renew',
      summary: 'Extend expiresAt (capped by maxLifetimeSeconds); presents the fence',
      tag: 'leases',
      access: 'run',
      owner: lease,
      body: renewLeaseSchema,
      bodyRequired: true,
      returns: 'Lease',
      runOwns: leaseOfRun,
      handle: ({ deps, companyId, params, body }) => deps.services.leases.renew(companyId, params.leaseId!, body as RenewLeaseInput),
    },
    {
      method: 'PATCH',
      path: '/api/environment-leases/:leaseId/metadata',
      summary: 'Merge into (or replace) the lease metadata; presents the fence',
      tag: 'leases',
      access: 'run',
      owner: lease,
      body: updateLeaseMetadataSchema,
      bodyRequired: true,
      returns: 'Lease',
      runOwns: leaseOfRun,
      handle: ({ deps, companyId, params, body }) => deps.services.leases.updateMetadata(companyId, params.leaseId!, body as UpdateLeaseMetadataInput),
    },
    {
      method: 'POST',
      path: '/api/environment-leases/:leaseId/exec',
      summary:
        "Run a command in a provisioned lease's workspace through its driver; presents the fence. Buffered: {exitCode, signal, timedOut, stdout, stderr, ...}; with stream: true (or Accept: text/event-stream): events `stdout`, `stderr` (data: the text as a JSON string) and `exit` (the result without output)",
      tag: 'leases',
      access: 'run',
      owner: lease,
      body: leaseExecSchema,
      bodyRequired: true,
      returns: 'LeaseExecResult',
      streams: true,
      runOwns: leaseOfRun,
      async handle({ deps, companyId, params, body, actor, c }) {
        await deps.services.leases.get(companyId, params.leaseId!); // another company's lease is not found, whatever the body
        const input = parseInput(leaseExecSchema, body, 'lease command');
        const work = leaseWork(deps);
        const wantsStream = input.stream || (c.req.header('accept') ?? '').includes('text/event-stream');
        if (!wantsStream) return work.exec(companyId, params.leaseId!, input, actor, { signal: c.req.raw.signal });
        // Checked before the stream opens: a refusal is an ordinary error answer, not an event.
        workspaceRelative(input.cwd, 'cwd');
        await work.held(companyId, params.leaseId!, input.fence);
        return streamSSE(c, async (stream) => {
          const out = sseWriter(stream);
          const gone = new AbortController();
          stream.onAbort(() => gone.abort('client gone'));
          const result: LeaseExecResult = await work.exec(companyId, params.leaseId!, input, actor, {
            signal: gone.signal,
            onOutput: (which, text) => out.send([{ event: which, data: JSON.stringify(text) }]),
          });
          const { stdout: _o, stderr: _e, ...ended } = result;
          await out.send([{ event: 'exit', data: JSON.stringify(ended) }]);
        }, streamFailed(deps, `command on lease ${params.leaseId}`));
      },
    },
    {
      method: 'GET',
      path: '/api/environment-leases/:leaseId/files',
      summary:
        "A tar archive of a file or directory of a provisioned lease's workspace (path relative to it; none: all of it); presents the fence. Links are stored as links; a path that resolves outside the workspace is refused",
      tag: 'leases',
      access: 'run',
      owner: lease,
      query: filesQuery,
      returns: 'a tar archive (application/x-tar)',
      produces: 'application/x-tar',
      runOwns: leaseOfRun,
      async handle(req) {
        const { deps, companyId, params, actor, c } = req;
        const q = await filesRequest(req);
        const out = await leaseWork(deps).getFiles(companyId, params.leaseId!, q.fence, q.path, actor, c.req.raw.signal);
        let sent = 0;
        const limited = new ReadableStream<Uint8Array>({
          async start(ctrl) {
            try {
              for await (const chunk of out as AsyncIterable<Buffer>) {
                sent += chunk.length;
                if (sent > MAX_ARCHIVE_OUT) throw new Error(`the archive is larger than ${MAX_ARCHIVE_OUT} bytes`);
                ctrl.enqueue(new Uint8Array(chunk));
              }
              ctrl.close();
            } catch (err) {
              out.destroy();
              ctrl.error(err); // the client sees a cut archive, never a short one passed as whole
            }
          },
          cancel: () => void out.destroy(),
        });
        const name = (q.path ?? '').split('/').filter(Boolean).pop() ?? 'workspace';
        return new Response(limited, { status: 200, headers: { 'content-type': 'application/x-tar', 'content-disposition': `attachment; filename="${name.replace(/[^\w.-]/g, '_')}.tar"` } });
      },
    },
    {
      method: 'POST',
      path: '/api/environment-leases/:leaseId/files',
      summary:
        "Unpack a tar archive (the body, Content-Type: application/x-tar) into a directory of a provisioned lease's workspace (path relative to it; none: its root); presents the fence. Refused whole if any entry is absolute, has a .. component, is a link out of the workspace, or is not a file, directory or symbolic link",
      tag: 'leases',
      access: 'run',
      owner: lease,
      query: filesQuery,
      rawBody: { type: 'application/x-tar', maxBytes: MAX_ARCHIVE_IN, description: 'a tar archive' },
      returns: '{path, files, directories, links, bytes}',
      runOwns: leaseOfRun,
      async handle(req) {
        const { deps, companyId, params, body, actor, c } = req;
        const q = await filesRequest(req);
        const archive = await (body as () => Promise<Buffer>)();
        return leaseWork(deps).putFiles(companyId, params.leaseId!, q.fence, q.path, archive, actor, c.req.raw.signal);
      },
    },
    {
      method: 'POST',
      path: '/api/environment-leases/:leaseId/release',
      summary: 'End the lease (idempotent: a lease already ended is returned unchanged, changed=false); presents the fence',
      tag: 'leases',
      access: 'run',
      owner: lease,
      body: releaseLeaseSchema,
      bodyRequired: true,
      returns: '{lease, changed}',
      runOwns: leaseOfRun,
      handle: ({ deps, companyId, params, body, actor }) => deps.services.leases.release(companyId, params.leaseId!, body as ReleaseLeaseInput, actor),
    },
  ]);
