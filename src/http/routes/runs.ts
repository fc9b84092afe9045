// Heartbeat runs: list, show, cancel, and the log, as JSON pages or followed live
// over server-sent events. A run token may read and cancel its own run.
import { streamSSE } from 'hono/streaming';
import { z } from 'zod';
import { RUN_STATUSES, TERMINAL_RUN_STATUSES } from '../../domain/enums.js';
import type { HeartbeatRun } from '../../domain/types.js';
import { RUN_PAGE_MAX } from '../../domain/validators.js';
import { HttpError } from '../errors.js';
import { defineRoutes, lastEventId, sseWriter, streamFailed, type RouteRequest } from '../route.js';

const run = { param: 'id', kind: 'run' } as const;
const ownRun = async (r: RouteRequest, runId: string) => r.params.id === runId;
const isTerminal = (status: string) => (TERMINAL_RUN_STATUSES as readonly string[]).includes(status);
const LOG_PAGE = 1000;

function followLog(r: RouteRequest, startAfter: number): Response {
  const { deps, companyId, params, c } = r;
  const runId = params.id!;
  const pollMs = deps.logPollMs ?? 150;
  return streamSSE(c, async (stream) => {
    const out = sseWriter(stream);
    let after = startAfter;
    let lastStatus: string | null = null;
    const drain = async () => {
      for (;;) {
        const chunks = await deps.services.runs.readLog(companyId, runId, { afterSeq: after, limit: LOG_PAGE });
        await out.send(chunks.map((ch) => ({ event: 'log', id: ch.seq, data: JSON.stringify(ch) })));
        if (chunks.length > 0) after = chunks[chunks.length - 1]!.seq;
        if (chunks.length < LOG_PAGE) return;
      }
    };
    while (!stream.aborted) {
      await drain();
      const current: HeartbeatRun = await deps.services.runs.get(companyId, runId);
      if (current.status !== lastStatus) {
        lastStatus = current.status;
        await out.send([{ event: 'status', data: JSON.stringify(current) }]);
      }
      if (isTerminal(current.status)) {
        await drain(); // the executor writes the last output before it finalizes
        await out.send([{ event: 'end', data: JSON.stringify(current) }]);
        return;
      }
      await out.pingIfQuiet();
      await stream.sleep(pollMs);
    }
  }, streamFailed(deps, `log of run ${runId}`));
}

export const runRoutes = () =>
  defineRoutes([
    {
      method: 'GET',
      path: '/api/companies/:companyId/heartbeat-runs',
      summary: 'Runs of a company, newest first (next page: the X-Next-Cursor header as ?cursor=)',
      tag: 'runs',
      access: 'company',
      query: z.strictObject({
        agentId: z.uuid('must be a UUID').optional(),
        status: z.enum(RUN_STATUSES).optional(),
        limit: z.coerce.number().int('must be an integer').min(1, `must be 1-${RUN_PAGE_MAX}`).max(RUN_PAGE_MAX, `must be 1-${RUN_PAGE_MAX}`).optional(),
        cursor: z.string().max(200).optional(),
      }),
      returns: 'HeartbeatRun[]',
      async handle({ deps, companyId, query, c }) {
        const page = await deps.services.runs.listPage(companyId, query);
        if (page.nextCursor) c.header('x-next-cursor', page.nextCursor);
        return page.items;
      },
    },
    {
      method: 'GET',
      path: '/api/heartbeat-runs/:id',
      summary: 'One run, with its contextSnapshot (paperclipEnvironment)',
      tag: 'runs',
      access: 'run',
      owner: run,
      runOwns: ownRun,
      returns: 'HeartbeatRun',
      handle: ({ deps, companyId, params }) => deps.services.runs.get(companyId, params.id!),
    },
    {
      method: 'POST',
      path: '/api/heartbeat-runs/:id/cancel',
      summary: 'Cancel: a queued run never starts; a running one is stopped (SIGTERM to its tree, SIGKILL after graceSec)',
      tag: 'runs',
      access: 'run',
      owner: run,
      runOwns: ownRun,
      returns: 'HeartbeatRun',
      handle: ({ deps, companyId, params, actor }) => deps.services.runs.cancel(companyId, params.id!, actor),
    },
    {
      method: 'GET',
      path: '/api/heartbeat-runs/:id/log',
      summary:
        'The run log after seq `after`. With follow=true (or Accept: text/event-stream): server-sent events `log` (one chunk, id = seq), `status` (the run when its status changes) and `end` (the finished run); Last-Event-ID resumes',
      tag: 'runs',
      access: 'run',
      owner: run,
      runOwns: ownRun,
      streams: true,
      query: z.strictObject({
        after: z.coerce.number().int('must be an integer').min(0, 'must be 0 or more').max(2_147_483_647).optional(),
        limit: z.coerce.number().int('must be an integer').min(1, 'must be 1-10000').max(10_000, 'must be 1-10000').optional(),
        follow: z.enum(['true', 'false', '1', '0']).optional(),
        // Paperclip's read by byte offset of its NDJSON log (src/domain/paperclip.ts).
        offset: z.coerce.number().int('must be an integer').min(0, 'must be 0 or more').max(Number.MAX_SAFE_INTEGER).optional(),
        limitBytes: z.coerce.number().int('must be an integer').min(1, 'must be 1-1048576').max(1_048_576, 'must be 1-1048576').optional(),
      }),
      returns: '{run, chunks, lastSeq}, an event stream, or with offset/limitBytes {runId, store, content, nextOffset, endOffset}',
      async handle(r) {
        const { deps, companyId, params, query, c } = r;
        if (query.offset !== undefined || query.limitBytes !== undefined) {
          if (query.after !== undefined || query.follow !== undefined) {
            throw new HttpError(400, 'invalid', 'offset/limitBytes (a read by byte offset) and after/follow (by seq) do not mix', [{ path: 'offset', message: 'not with after or follow' }]);
          }
          const page = await deps.services.runs.readLogBytes(companyId, params.id!, { offset: (query.offset as number | undefined) ?? 0, limitBytes: (query.limitBytes as number | undefined) ?? 65_536 });
          c.header('cache-control', 'no-store');
          return { runId: params.id!, store: 'berth', logRef: params.id!, ...page };
        }
        const after = lastEventId(c, 2_147_483_647) ?? (query.after as number | undefined) ?? 0;
        const follow = query.follow === 'true' || query.follow === '1' || (query.follow === undefined && (c.req.header('accept') ?? '').includes('text/event-stream'));
        if (follow) {
          await deps.services.runs.get(companyId, params.id!); // not found before any stream starts
          return followLog(r, after);
        }
        // readLog answers not_found for another company's run; the run is read after its log,
        // so a finished status means the log is complete.
        const chunks = await deps.services.runs.readLog(companyId, params.id!, { afterSeq: after, limit: (query.limit as number | undefined) ?? LOG_PAGE });
        const current = await deps.services.runs.get(companyId, params.id!);
        return { run: current, chunks, lastSeq: chunks.length > 0 ? chunks[chunks.length - 1]!.seq : after };
      },
    },
  ]);
